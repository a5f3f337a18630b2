//! Planner statistics for tables that grow fast.
//!
//! PostgreSQL plans `session_id = ANY($1)` from the table's statistics. Autovacuum
//! analyzes a table only once a minute at best, so a table that fills from empty (a
//! new deployment catching up, a rebuild, a replay into a new schema) runs for that
//! minute on estimates made for an empty table: sequential scans per batch, a catch-up
//! that slows as the table grows. The engine therefore analyzes the read models' lookup
//! column itself each time the events it applied double (10 000, 20 000, 40 000, …), in the
//! background: a handful of `ANALYZE` runs over any catch-up, none in a steady state.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use sqlx::PgPool;
use tracing::{debug, warn};

/// Events applied before the first `ANALYZE`.
pub const FIRST_ANALYZE_AFTER: u64 = 10_000;

/// Counts applied events and analyzes the read models when they double.
#[derive(Debug)]
pub struct AutoAnalyze {
    applied: AtomicU64,
    next_analyze: AtomicU64,
    /// Set while an `ANALYZE` runs, so slow ones never pile up.
    running: Arc<AtomicBool>,
}

impl Default for AutoAnalyze {
    fn default() -> Self {
        Self::starting_after(FIRST_ANALYZE_AFTER)
    }
}

impl AutoAnalyze {
    pub fn starting_after(first: u64) -> Self {
        Self {
            applied: AtomicU64::new(0),
            next_analyze: AtomicU64::new(first.max(1)),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Notes `events` newly stored through `pool`; starts a background `ANALYZE` of the
    /// read models when the total reaches the next threshold.
    pub fn note_applied(&self, events: u64, pool: &PgPool) {
        if !self.due(events) || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = pool.clone();
        let running = self.running.clone();
        tokio::spawn(async move {
            // Only the columns the engine's plans depend on: statistics of the payload
            // (jsonb) are the expensive part, and autovacuum computes them later anyway.
            match sqlx::query!("ANALYZE ipp_events (session_id), ipp_sessions (session_id)")
                .execute(&pool)
                .await
            {
                Ok(_) => debug!("read models analyzed"),
                Err(e) => warn!(
                    error = &e as &dyn std::error::Error,
                    "ANALYZE of the read models failed; autovacuum will do it later"
                ),
            }
            running.store(false, Ordering::Release);
        });
    }

    /// Whether adding `events` crosses the threshold, which then doubles.
    fn due(&self, events: u64) -> bool {
        let applied = self.applied.fetch_add(events, Ordering::AcqRel) + events;
        let next = self.next_analyze.load(Ordering::Acquire);
        applied >= next
            && self
                .next_analyze
                .compare_exchange(next, applied * 2, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyzes_each_time_the_applied_events_double() {
        let statistics = AutoAnalyze::starting_after(100);
        let due: Vec<u64> = (1..=100u64)
            .filter(|_| statistics.due(10))
            .map(|batch| batch * 10)
            .collect();
        assert_eq!(due, [100, 200, 400, 800]);
    }
}
