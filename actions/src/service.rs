//! The service: migrate, serve the probes, consume and work until shut down.

use std::{sync::Arc, time::Duration};

use ipp_service::{probe::Readiness, Listeners};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    api,
    command::CommandLog,
    config::Config,
    http,
    kafka::{self, consumer, dead_letters::DeadLetters, observations::ObservationLog},
    ledger, metrics, om, publisher, retry, worker, Error,
};

/// PostgreSQL connections of the commands API, apart from the service's.
const API_DB_CONNECTIONS: u32 = 4;

/// Applies the ledger migrations and returns.
pub async fn migrate(config: &Config) -> Result<(), Error> {
    let pool = ipp_service::postgres::connect(&config.database, None).await?;
    ledger::migrate(&pool).await?;
    info!("ledger migrations applied");
    Ok(())
}

/// Runs the service on `listeners` until `shutdown`: stop consuming and claiming, let
/// in-flight actions finish (bounded), commit offsets, return.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let Listeners {
        public: listener,
        admin,
    } = listeners;
    config.check().map_err(Error::Config)?;
    if config.max_calls_per_sec.is_some() {
        warn!("ACTIONS_MAX_CALLS_PER_SEC is deprecated: set ACTIONS_OM_RATE_LIMIT instead (per account)");
    }
    let pool = ipp_service::postgres::connect(&config.database, None).await?;
    if config.migrate {
        ledger::migrate(&pool).await?;
    } else {
        // Migrations are a separate step: refuse to run on a ledger older than this code.
        let missing =
            ipp_service::postgres::unapplied_migrations(&pool, &ledger::migrator()).await?;
        if !missing.is_empty() {
            return Err(Error::Config(format!(
                "the ledger lacks migrations {missing:?} of this version and ACTIONS_MIGRATE \
                 is false: run `ipp-actions migrate` as the role that owns the tables first"
            )));
        }
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let dead_letters = Arc::new(DeadLetters::new(&config)?);
    let accounts = ipp_service::Accounts::load_optional(config.accounts_file.as_deref())
        .map_err(|e| Error::Config(e.to_string()))?;
    let om = om::OmClients::new(
        &config.kustom_api_url,
        &config.kustom_api_key,
        &accounts,
        config.http_timeout(),
        config.connect_timeout(),
    )
    .map_err(|e| Error::Config(format!("http client: {e}")))?;
    if !om.has_keys() {
        warn!("no KUSTOM_API_KEY and no api_key in an accounts file: every action waits for one");
    } else if !accounts.is_empty() {
        info!(accounts = %accounts, "calling Order Management with the key of each order's account");
    }
    let tokens = api::Tokens::new(&config.api_tokens, &accounts).map_err(Error::Config)?;
    let api = if tokens.is_empty() {
        info!("no ACTIONS_API_TOKENS: the commands API is off");
        None
    } else {
        // A pool of its own: a burst of API requests (each holds a connection while its
        // command is appended) can then never starve the worker's lease renewals.
        let api_database = ipp_service::DatabaseArgs {
            max_connections: API_DB_CONNECTIONS,
            ..config.database.clone()
        };
        Some(Arc::new(api::Api {
            pool: ipp_service::postgres::connect(&api_database, None).await?,
            log: CommandLog::new(&config)?,
            tokens,
            metrics: metrics.clone(),
            retry_after_secs: config.api_retry_after_secs,
        }))
    };
    let wake = Arc::new(Notify::new());
    let settled = Arc::new(Notify::new());
    let publisher = publisher::Publisher {
        pool: pool.clone(),
        log: ObservationLog::new(&config)?,
        metrics: metrics.clone(),
        poll_interval: config.poll_interval(),
    };
    let consumer_ready = Readiness::default();
    let consumer = consumer::ActionConsumer::new(
        &config,
        pool.clone(),
        dead_letters.clone(),
        metrics.clone(),
        wake.clone(),
    )?;
    let worker = Arc::new(worker::Worker {
        pool: pool.clone(),
        om,
        policy: retry::RetryPolicy::from_config(&config),
        dlq: dead_letters,
        metrics: metrics.clone(),
        rate_limits: worker::rate::RateLimits::new(config.om_rate_limit(), config.om_rate_burst),
        concurrency: config.concurrency,
        lease: config.lease(),
        poll_interval: config.poll_interval(),
        shutdown_timeout: config.shutdown_timeout(),
        settled: settled.clone(),
    });

    // The bound address, which differs from the setting's with port 0.
    info!(listen = %listener.local_addr()?, "ipp-actions listening");
    // The operations server outlives the rest so that /metrics works during shutdown.
    let http_stop = CancellationToken::new();
    if let Some(admin) = &admin {
        info!(admin_listen = %admin.local_addr()?, "serving /metrics on the admin address");
    }
    let http = tokio::spawn(http::serve(
        listener,
        admin,
        http::AppState {
            pool: pool.clone(),
            metrics: metrics.clone(),
            consumer_ready: consumer_ready.clone(),
        },
        api.clone(),
        http_stop.clone(),
    ));
    let gauges = tokio::spawn(update_gauges(
        pool.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let dead_letter_size = tokio::spawn(ipp_service::kafka::watch_topic_size(
        config.kafka.clone(),
        format!("{}-dlq-size", kafka::CLIENT_ID),
        config.dlq_topic.clone(),
        metrics.dead_letter_records.clone(),
        shutdown.clone(),
    ));
    info!(
        topic = %config.ipp_topic,
        group = %config.group,
        capture_policy = ?config.capture_policy(),
        commands_topic = %config.commands_topic,
        kustom_topic = %config.kustom_topic,
        observations_topic = %config.observations_topic,
        commands_api = api.is_some(),
        kustom_api_url = %config.kustom_api_url,
        om_rate_limit = config.om_rate_limit(),
        om_rate_burst = config.om_rate_burst,
        "ipp-actions started"
    );
    let consuming = tokio::spawn(consumer.run(consumer_ready, shutdown.clone()));
    let working = tokio::spawn(worker.run(wake, shutdown.clone()));
    // Stopped only after the worker: what it settles while stopping is published too.
    let stop_publishing = CancellationToken::new();
    let publishing = tokio::spawn(publisher.run(settled, stop_publishing.clone()));
    let (consumed, worked) = tokio::join!(consuming, working);
    stop_publishing.cancel();
    let published = publishing.await;
    for joined in [consumed, worked, published] {
        if let Err(e) = joined {
            warn!(error = %e, "task ended abnormally");
        }
    }
    let _ = gauges.await;
    let _ = dead_letter_size.await;
    http_stop.cancel();
    match http.await {
        Ok(result) => result?,
        Err(e) => warn!(error = %e, "http server task ended abnormally"),
    }
    if let Some(api) = &api {
        if let Err(e) = api.log.flush(config.shutdown_timeout()) {
            warn!(error = %e, "command producer flush incomplete at shutdown");
        }
        api.pool.close().await;
    }
    pool.close().await;
    info!("ipp-actions stopped");
    Ok(())
}

/// Pending actions and the age of the oldest, and the outbox's backlog, refreshed every
/// few seconds.
async fn update_gauges(
    pool: sqlx::PgPool,
    metrics: Arc<metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match ledger::pending_stats(&pool).await {
            Ok(pending) => {
                metrics.pending.set(pending.count);
                metrics
                    .oldest_pending_seconds
                    .set(pending.oldest_age_seconds);
                metrics
                    .oldest_pending_created
                    .set(pending.oldest_created.unwrap_or(pending.now));
            }
            Err(e) => warn!(error = %e, "reading pending actions failed"),
        }
        match ledger::outbox::unpublished_count(&pool).await {
            Ok(count) => metrics.unpublished.set(count),
            Err(e) => warn!(error = %e, "reading unpublished observations failed"),
        }
    }
}
