//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::Router;

use crate::metrics::Metrics;

/// What the HTTP endpoints report on.
pub struct Health {
    pub metrics: Metrics,
    /// Migrated, subscribed, and the last batch (if any) committed.
    ready: AtomicBool,
}

impl Health {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            ready: AtomicBool::new(false),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Ready when migrated, subscribed, and the last batch (if any) committed.
impl ipp_service::probe::Probe for Health {
    async fn ready(&self) -> Result<(), String> {
        if self.is_ready() {
            Ok(())
        } else {
            Err("not ready".into())
        }
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }
}

pub fn router(health: Arc<Health>) -> Router {
    ipp_service::probe::router(health)
}
