//! Keeping claims alive, and knowing when one can no longer be proven.
//!
//! A claim lasts one lease (`ACTIONS_LEASE_MS`) by the database's clock, and [`Leases::run`]
//! renews every claim this worker holds, in one statement, every quarter lease. A worker
//! that dies stops renewing, so its actions are due again one lease after the last
//! renewal, whatever the clocks of the replicas say.
//!
//! The other side of it: a worker must stop working on an action before anybody else may
//! take it. Each claim carries a local deadline on the monotonic clock: the instant the
//! last successful claim or renewal statement was *sent* (the database's `now()` can only
//! be later), plus the lease minus a quarter lease of margin for clock drift and
//! scheduling. Past it, or once a renewal reports the claim gone, [`Hold::check`] refuses
//! and [`Hold::lost`] resolves, and the attempt is abandoned while the database still
//! says it is ours. Every write of the attempt is guarded by the claim's token as well
//! (see `ledger`), so a worker that was frozen past all of this cannot overwrite or
//! duplicate the new owner's outcome; a request it had already sent is covered by the
//! idempotency key.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::PgPool;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::ledger;

/// The claims this worker holds, and their renewal.
pub struct Leases {
    pool: PgPool,
    lease: Duration,
    /// Claim token → the sender of its local deadline; dropped when the claim is lost.
    held: Mutex<HashMap<Uuid, watch::Sender<Instant>>>,
}

/// Why a worker may no longer act on a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the claim on this action was lost (its lease could not be renewed in time)")]
pub struct Lost;

impl Leases {
    pub fn new(pool: PgPool, lease: Duration) -> Arc<Self> {
        Arc::new(Self {
            pool,
            lease,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How often the claims are renewed: a renewal may fail twice before the margin.
    pub fn renew_every(&self) -> Duration {
        self.lease / 4
    }

    /// How long after sending a successful claim or renewal this worker may act on it.
    fn valid_for(&self) -> Duration {
        self.lease - self.lease / 4
    }

    /// Starts holding the claim `token`, made by a statement sent at `sent`.
    pub fn hold(self: &Arc<Self>, token: Uuid, sent: Instant) -> Hold {
        let (deadline, receiver) = watch::channel(sent + self.valid_for());
        self.held
            .lock()
            .expect("leases lock")
            .insert(token, deadline);
        Hold {
            token,
            deadline: receiver,
            leases: self.clone(),
        }
    }

    /// Renews the held claims every [`Leases::renew_every`] until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.renew_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.renew_once().await;
        }
    }

    /// One renewal of every held claim. A claim the database did not renew is lost at
    /// once; after a failed statement every deadline stays where it was.
    async fn renew_once(&self) {
        let tokens: Vec<Uuid> = self
            .held
            .lock()
            .expect("leases lock")
            .keys()
            .copied()
            .collect();
        if tokens.is_empty() {
            return;
        }
        let sent = Instant::now();
        let renewed = match ledger::renew(&self.pool, &tokens, self.lease).await {
            Ok(renewed) => renewed,
            Err(e) => {
                warn!(error = %e, claims = tokens.len(), "renewing claims failed; retrying before they run out");
                return;
            }
        };
        let deadline = sent + self.valid_for();
        let mut held = self.held.lock().expect("leases lock");
        for token in &renewed {
            if let Some(sender) = held.get(token) {
                sender.send_replace(deadline);
            }
        }
        let lost: Vec<Uuid> = tokens
            .into_iter()
            .filter(|t| !renewed.contains(t) && held.contains_key(t))
            .collect();
        for token in lost {
            // Dropping the sender is what tells the holder. Its attempt may also just have
            // ended (its outcome releases the claim): the holder logs what matters.
            held.remove(&token);
            debug!(claim = %token, "claim not renewed");
        }
        debug!(renewed = renewed.len(), "claims renewed");
    }
}

/// This worker's hold on one claimed action; released when dropped.
pub struct Hold {
    token: Uuid,
    deadline: watch::Receiver<Instant>,
    leases: Arc<Leases>,
}

impl Hold {
    pub fn token(&self) -> Uuid {
        self.token
    }

    /// Whether this worker may still act on the action: call before every step that has
    /// an effect outside the process.
    pub fn check(&self) -> Result<(), Lost> {
        let closed = self.deadline.has_changed().is_err();
        if closed || Instant::now() >= *self.deadline.borrow() {
            return Err(Lost);
        }
        Ok(())
    }

    /// Resolves once this worker may no longer act on the action: its local deadline
    /// passed without a renewal, or a renewal found the claim gone.
    pub async fn lost(&self) {
        let mut deadlines = self.deadline.clone();
        loop {
            let deadline = *deadlines.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    if self.check().is_err() {
                        return;
                    }
                }
                changed = deadlines.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.leases
            .held
            .lock()
            .expect("leases lock")
            .remove(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(lease: Duration) -> Arc<Leases> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://unused@127.0.0.1:1/unused")
            .expect("lazy pool");
        Leases::new(pool, lease)
    }

    #[tokio::test]
    async fn a_hold_ends_a_quarter_lease_before_the_lease() {
        let leases = leases(Duration::from_millis(400));
        let sent = Instant::now();
        let hold = leases.hold(Uuid::new_v4(), sent);
        assert_eq!(hold.check(), Ok(()));
        hold.lost().await;
        assert!(sent.elapsed() >= Duration::from_millis(300));
        assert_eq!(hold.check(), Err(Lost));
    }

    #[tokio::test]
    async fn a_renewal_moves_the_deadline_and_a_claim_not_renewed_is_lost_at_once() {
        let leases = leases(Duration::from_secs(3600));
        let token = Uuid::new_v4();
        let hold = leases.hold(token, Instant::now());
        let later = Instant::now() + Duration::from_secs(7200);
        leases.held.lock().unwrap()[&token].send_replace(later);
        assert_eq!(*hold.deadline.borrow(), later);
        assert_eq!(hold.check(), Ok(()));

        // What `renew_once` does with a token the database did not renew.
        leases.held.lock().unwrap().remove(&token);
        assert_eq!(hold.check(), Err(Lost));
        tokio::time::timeout(Duration::from_secs(5), hold.lost())
            .await
            .expect("lost at once, not at the deadline");
    }

    #[tokio::test]
    async fn dropping_a_hold_stops_its_renewal() {
        let leases = leases(Duration::from_secs(4));
        let hold = leases.hold(Uuid::new_v4(), Instant::now());
        assert_eq!(leases.held.lock().unwrap().len(), 1);
        drop(hold);
        assert!(leases.held.lock().unwrap().is_empty());
    }
}
