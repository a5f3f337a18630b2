//! The HTTP server: hyper under the axum router, with the bounds `axum::serve` does not
//! set. A client has `header_read_timeout` to send its headers (so a connection left
//! idle, or one that sends its headers a byte a second, is closed), the header section
//! is at most [`MAX_HEADER_BYTES`] (hyper answers 431 beyond), and at most
//! `max_connections` connections are served at once (more wait in the listen backlog).
//! The body's own timeout is the handler's (`http.rs`), so that it can answer 408.

use std::{io, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

/// The largest header section hyper reads: Kustom sends a few
/// hundred bytes; beyond this, hyper answers 431 before any handler runs.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` until `shutdown` fires, then stops accepting and waits for every
/// connection to finish its request (idle ones are closed at once).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    // HTTP/1 only: with both, hyper waits for a first byte to tell which, and a
    // connection that sends none would never time out. HTTP/2 ends at the load balancer.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        // A client that closes its sending side after the request still gets the answer.
        .half_close(true);
    let connections = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    wait_after_accept_error(&error).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // Clients that hang up or time out: theirs, not ours.
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// An error about one connection is that client's; anything else (out of file
/// descriptors) gets a pause, so that the loop does not spin.
async fn wait_after_accept_error(error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
