#![doc = include_str!("../README.md")]
//! The plumbing every ipp-pipeline service shares, kept in one place so that all of them
//! are configured, connect, log, probe, stop and allocate the same way.

pub mod accounts;
pub mod args;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod postgres;
pub mod probe;
pub mod properties_file;
pub mod reserved_port;
pub mod secret;
pub mod secret_files;
pub mod telemetry;
pub mod traces;

pub use accounts::{Account, Accounts, AccountsError, LimitedToken};
pub use args::{
    AdminListenArgs, AdminListens, DatabaseArgs, KafkaArgs, ListenArgs, Listeners, Listens, LogArgs,
};
pub use metrics::{Renamed, ServiceMetrics};
pub use properties_file::KafkaPropertiesFile;
pub use reserved_port::ReservedPort;
pub use secret::{DatabaseUrl, KafkaProperty, Secret};
pub use telemetry::LogFormat;

use tokio_util::sync::CancellationToken;

/// mimalloc for every binary that links this crate (the services, and the benchmark that
/// runs the projector's store in-process). With glibc's allocator, freeing each batch's
/// large buffers set off `malloc_consolidate` over the many small row allocations: about
/// 15 % of the projector's CPU when catching up. mimalloc v2, not v3 (the crate's
/// default): v3 keeps freed pages for a second before it returns them (its
/// `purge_delay`), and the projector's peak RSS in a catch-up was 110 MiB with v3
/// against 84-87 MiB with v2, at the same rate (ipp-actions' rose from 36 to 42-44 MiB,
/// ipp-ingest's from 29 to 30-32 MiB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Waits for the first SIGTERM or SIGINT (Ctrl-C), logs `what_happens_next`, and cancels
/// `shutdown`. Spawn it once from `main`; the service drains when the token fires.
pub async fn cancel_on_signal(shutdown: CancellationToken, what_happens_next: &'static str) {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received: {what_happens_next}"),
                _ = term.recv() => tracing::info!("SIGTERM received: {what_happens_next}"),
            }
        }
        Err(error) => {
            tracing::warn!(%error, "no SIGTERM handler; only Ctrl-C stops the service");
            let _ = ctrl_c.await;
            tracing::info!("SIGINT received: {what_happens_next}");
        }
    }
    shutdown.cancel();
}

/// An error's message followed by each of its causes, `: `-separated: one line for an
/// operator or a log field.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
