//! `/healthz`, `/readyz` and `/metrics`, the same on every service: alive is "the
//! process answers", ready is the service's own check (503 with the reason), metrics are
//! the service's registry in Prometheus' text format.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};

/// What a service reports on its probes.
pub trait Probe: Send + Sync + 'static {
    /// `Ok` when the service can do its work, else why not (the body of the 503).
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send;

    /// The metrics in Prometheus' text format (see [`crate::ServiceMetrics::render`]).
    fn metrics(&self) -> String;
}

/// Which of the probe routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `/healthz`, `/readyz` and `/metrics`.
    All,
    /// `/healthz` and `/readyz`: `/metrics` is on the admin address.
    HealthOnly,
}

/// The probe routes over `probe`; merge the service's own routes into it.
pub fn router<P: Probe>(probe: Arc<P>, routes: Routes) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<P>));
    let router = match routes {
        Routes::All => router.route("/metrics", get(metrics::<P>)),
        Routes::HealthOnly => router,
    };
    router.with_state(probe)
}

/// The admin server (`<SERVICE>_ADMIN_LISTEN`): every probe route, nothing else, until
/// `shutdown`.
pub async fn serve_admin<P: Probe>(
    listener: tokio::net::TcpListener,
    probe: Arc<P>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let router = crate::http::with_json_fallbacks(router(probe, Routes::All));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn readyz<P: Probe>(State(probe): State<Arc<P>>) -> impl IntoResponse {
    match probe.ready().await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics<P: Probe>(State(probe): State<Arc<P>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        probe.metrics(),
    )
}

/// A readiness flag shared between the part of a service that knows (its consumer)
/// and its `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
