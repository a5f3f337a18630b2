#![doc = include_str!("../README.md")]
//! `ipp-ingest`: signed Kustom webhooks in, raw records in Kafka out.

pub mod clock;
pub mod config;
mod error;
mod http;
mod kafka;
mod metrics;
mod place;
mod server;
pub mod verify;

use std::sync::Arc;

use ipp_service::Listeners;
use tokio_util::sync::CancellationToken;

pub use clock::Clock;
pub use config::Config;
/// The producer's compression codec, which the benchmark's raw-producer ceiling uses too.
pub use kafka::COMPRESSION;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no webhook secrets configured: set KUSTOM_WEBHOOK_SECRETS or KUSTOM_ACCOUNTS_FILE, or pass --insecure-skip-verify for local experiments")]
    NoSecrets,
    #[error(transparent)]
    Accounts(#[from] ipp_service::AccountsError),
    #[error(transparent)]
    InvalidSecret(#[from] verify::InvalidSecret),
    #[error(transparent)]
    Producer(#[from] kafka::ProducerConfigError),
    #[error("http server failed")]
    Serve(#[source] std::io::Error),
}

/// The default secrets and those of every account of the accounts file that has some.
fn verifier(
    config: &Config,
    accounts: &ipp_service::Accounts,
) -> Result<verify::Verifier, StartError> {
    let defaults = config.webhook_secrets.iter().map(|s| s.expose());
    let mut verifier = verify::Verifier::new(defaults, config.signature_tolerance_secs)?;
    let mut named = Vec::new();
    for (merchant_id, account) in accounts.iter() {
        if !account.webhook_secrets.is_empty() {
            let secrets = account.webhook_secrets.iter().map(|s| s.expose());
            verifier = verifier.with_account(merchant_id, secrets)?;
            named.push(merchant_id);
        }
    }
    if !verifier.has_secrets() {
        return Err(StartError::NoSecrets);
    }
    if !named.is_empty() {
        tracing::info!(
            accounts = %named.join(","),
            default_secrets = !config.webhook_secrets.is_empty(),
            "verifying webhooks with the secrets of the account they name"
        );
    }
    Ok(verifier)
}

/// Serves until `shutdown` fires, then stops accepting, lets in-flight requests finish
/// and flushes the producer.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    run_with_clock(config, listeners, shutdown, Clock::system()).await
}

/// [`run`], comparing `webhook-timestamp` with `clock` (tests fix it to check the
/// tolerance's edges).
pub async fn run_with_clock(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    clock: Clock,
) -> Result<(), StartError> {
    let Listeners {
        public: listener,
        admin,
    } = listeners;
    let verifier = if config.insecure_skip_verify {
        tracing::warn!(
            "signature verification is OFF (--insecure-skip-verify): anyone can post events"
        );
        None
    } else {
        let accounts = ipp_service::Accounts::load_optional(config.accounts_file.as_deref())?;
        Some(verifier(&config, &accounts)?)
    };
    let metrics = metrics::Metrics::new();
    let log = kafka::EventLog::new(
        &config.kafka,
        config.ipp_topic.clone(),
        config.other_topic.clone(),
        config.produce_timeout(),
        metrics.producer_replacements.clone(),
    )?;
    // Not fatal: the topics may be created after ingest starts; /readyz says 503 and
    // why until they exist, and requests get 503 meanwhile.
    if let Err(error) = log.check_topics().await {
        tracing::error!(%error, "the event log is not usable yet");
    }
    let state = Arc::new(http::AppState {
        log,
        verifier,
        clock,
        metrics,
        max_body_bytes: config.max_body_bytes,
        body_read_timeout: config.body_read_timeout(),
        retry_after_secs: config.retry_after_secs,
    });
    tracing::info!(
        listen = %listener.local_addr().map_err(StartError::Serve)?,
        brokers = %config.kafka.brokers,
        ipp_topic = %config.ipp_topic,
        other_topic = %config.other_topic,
        "ipp-ingest listening"
    );
    let limits = server::Limits {
        header_read_timeout: config.header_read_timeout(),
        max_connections: config.max_connections,
    };
    // The admin server outlives the drain and the flush, so that /metrics shows them.
    let admin_stop = CancellationToken::new();
    let admin = match admin {
        Some(admin) => {
            tracing::info!(admin_listen = %admin.local_addr().map_err(StartError::Serve)?, "serving /metrics on the admin address");
            Some(tokio::spawn(ipp_service::probe::serve_admin(
                admin,
                state.clone(),
                admin_stop.clone(),
            )))
        }
        None => None,
    };
    let probes = match &admin {
        Some(_) => ipp_service::probe::Routes::HealthOnly,
        None => ipp_service::probe::Routes::All,
    };
    let server = server::serve(
        listener,
        http::router(state.clone(), probes),
        limits,
        shutdown.clone(),
    );
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(config.shutdown_timeout()).await;
    };
    tokio::select! {
        () = server => {}
        () = drain_deadline => tracing::warn!("in-flight requests did not finish in time"),
    }
    if let Err(error) = state.log.flush(config.shutdown_timeout()).await {
        tracing::warn!(%error, "producer flush incomplete at shutdown");
    }
    admin_stop.cancel();
    if let Some(admin) = admin {
        match admin.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "admin server failed"),
            Err(error) => tracing::warn!(%error, "admin server task ended abnormally"),
        }
    }
    tracing::info!("ipp-ingest stopped");
    Ok(())
}
