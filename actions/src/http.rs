//! The HTTP server: the commands API (`api/`), `/healthz`, `/readyz`, `/metrics`, and a
//! JSON answer for any other path (404) or method (405).

use std::{sync::Arc, time::Duration};

use axum::Router;
use ipp_service::probe::Readiness;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{api, metrics::Metrics};

pub struct AppState {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub consumer_ready: Readiness,
}

/// The API when `api` is given (tokens are configured), else an answer saying it is off;
/// `probes` says whether `/metrics` is here or on the admin address.
pub fn router(
    state: Arc<AppState>,
    api: Option<Arc<api::Api>>,
    probes: ipp_service::probe::Routes,
) -> Router {
    let api = match api {
        Some(api) => api::router(api),
        None => api::disabled(),
    };
    ipp_service::http::with_json_fallbacks(api.merge(ipp_service::probe::router(state, probes)))
}

/// Serves the API and the probes on `listener`, and the probes alone on `admin` when
/// there is one (which then has `/metrics`), until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    admin: Option<TcpListener>,
    state: AppState,
    api: Option<Arc<api::Api>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(state);
    let probes = match admin {
        Some(_) => ipp_service::probe::Routes::HealthOnly,
        None => ipp_service::probe::Routes::All,
    };
    let main = axum::serve(listener, router(state.clone(), api, probes))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    match admin {
        Some(admin) => {
            let admin = ipp_service::probe::serve_admin(admin, state, shutdown);
            let (main, admin) = tokio::join!(main, admin);
            main.and(admin)
        }
        None => main.await,
    }
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
