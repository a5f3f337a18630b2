//! `/healthz`, `/readyz` and `/metrics` (ipp_service's probes over the projector's
//! readiness and metrics).

use std::sync::Arc;

use axum::Router;
use ipp_service::probe::{Probe, Readiness};

use crate::metrics::Metrics;

/// What the probes report on.
pub struct ProbeState {
    pub metrics: Arc<Metrics>,
    /// Migrated, subscribed, and the last batch (if any) committed.
    pub ready: Readiness,
}

impl Probe for ProbeState {
    async fn ready(&self) -> Result<(), String> {
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
    ipp_service::probe::router(Arc::new(state))
}
