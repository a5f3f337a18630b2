#![doc = include_str!("../README.md")]
//! `ipp-om-sim`: a local simulator of the Kustom Order Management API for tests, demos
//! and benchmarks. Orders are AUTHORIZED on first reference (or seeded), the documented
//! 403s are enforced, `Klarna-Idempotency-Key` gives one effect per key, every call is
//! recorded, and faults (5xx, 429, latency, hangs, dropped connections) are injected from
//! a seeded RNG.

pub mod config;
mod error;
mod http;
mod limits;
mod orders;
mod reply;
mod sim;
mod webhooks;

use std::{sync::Arc, time::Duration};

use hyper::{body::Incoming, server::conn::http1, Request};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::{Config, Faults, Limits, SimAccount};
pub use orders::authorized_amount_for;
pub use webhooks::{retry_delay, WebhookArgs};

use crate::sim::Sim;

/// How long open connections get to finish once shutdown starts; a hanging request is
/// cut off after it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Serves the simulator on `listener` until `shutdown` is cancelled. Refuses to start
/// (`InvalidInput`) with fault rates that are not fractions, limits that are no limits, or
/// webhook settings that cannot work (a destination without a valid secret). Webhooks are
/// delivered by a task of their own, stopped with the server.
///
/// A hand-written accept loop rather than `axum::serve`: each connection gets a token
/// that a request can cancel to close the connection without an answer. HTTP/1 only, so
/// a dropped connection takes exactly one request with it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let invalid = |reason| std::io::Error::new(std::io::ErrorKind::InvalidInput, reason);
    config
        .faults
        .validate()
        .and_then(|()| config.limits.validate())
        .map_err(invalid)?;
    let (webhooks, deliveries) =
        webhooks::Webhooks::new(&config.webhooks, config.seed).map_err(invalid)?;
    let sim = Arc::new(Sim::new(&config, webhooks));
    let deliveries = deliveries.map(|deliveries| tokio::spawn(deliveries.run(shutdown.clone())));
    let router = http::router(sim);
    let connections = TaskTracker::new();
    tracing::info!(
        addr = %listener.local_addr()?,
        faults = ?config.faults,
        limits = ?config.limits,
        webhook_url = config.webhooks.url.as_deref(),
        seed = config.seed,
        "order management simulator listening"
    );

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let drop_token = CancellationToken::new();
        let service = TowerToHyperService::new(router.clone());
        let control = http::ConnControl(drop_token.clone());
        let per_request = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(control.clone());
            hyper::service::Service::call(&service, request)
        });
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), per_request);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                }
                // Dropping the connection future closes the socket mid-request.
                () = drop_token.cancelled() => tracing::debug!(%peer, "connection dropped"),
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
                }
            }
        });
    }

    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE * 2, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at shutdown");
    }
    if let Some(deliveries) = deliveries {
        // Cancelled with the server: undelivered events go with the rest of the state.
        let _ = deliveries.await;
    }
    tracing::info!("order management simulator stopped");
    Ok(())
}
