//! `/healthz`, `/readyz` and `/metrics` (ipp_service's probes over the projector's
//! readiness and metrics).

use std::{sync::Arc, time::Duration};

use axum::Router;
use ipp_service::probe::{Probe, Readiness};
use sqlx::PgPool;

use crate::metrics::Metrics;

/// What the probes report on.
pub struct ProbeState {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    /// Migrated, subscribed, and the last batch (if any) committed.
    pub ready: Readiness,
}

impl Probe for ProbeState {
    /// Not ready while PostgreSQL does not answer, also when no record arrives that
    /// would find out (an idle projector has no failed batch to say so).
    async fn ready(&self) -> Result<(), String> {
        let ping = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query_scalar!("SELECT 1 AS ping").fetch_one(&self.pool),
        )
        .await;
        if !matches!(ping, Ok(Ok(_))) {
            return Err("database unreachable".into());
        }
        if self.ready.get() {
            Ok(())
        } else {
            Err("not ready".into())
        }
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }
}

pub fn router(state: ProbeState) -> Router {
    ipp_service::probe::router(Arc::new(state), ipp_service::probe::Routes::All)
}
