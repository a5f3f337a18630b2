//! The operations server: `/healthz`, `/readyz`, `/metrics`.

use std::{sync::Arc, time::Duration};

use axum::Router;
use ipp_service::probe::Readiness;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub struct AppState {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub consumer_ready: Readiness,
}

pub fn router(state: AppState) -> Router {
    ipp_service::probe::router(Arc::new(state))
}

pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Ready when the ledger answers and the consumer is running.
impl ipp_service::probe::Probe for AppState {
    async fn ready(&self) -> Result<(), String> {
        let db = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query_scalar!("SELECT 1 AS ping").fetch_one(&self.pool),
        )
        .await;
        if !matches!(db, Ok(Ok(_))) {
            return Err("database unreachable".into());
        }
        if !self.consumer_ready.get() {
            return Err("consumer not running".into());
        }
        Ok(())
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }
}
