//! The service: migrate, serve the probes, project until shut down.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use ipp_service::probe::Readiness;

use crate::{
    config::{Config, CLIENT_ID},
    dead_letters::DeadLetters,
    http::{self, ProbeState},
    kafka::consumer::Projector,
    metrics::Metrics,
    orders::{OrdersConfig, OrdersProjector},
    schema, Error,
};

/// Connects to PostgreSQL with bounded waits, every connection's `search_path` set
/// to `PROJECTOR_SCHEMA`. A database that is still starting (the usual case when
/// everything starts together) gets up to 30 seconds.
pub async fn connect(config: &Config) -> Result<PgPool, Error> {
    schema::connect(&config.database, &config.schema).await
}

/// `ipp-projector migrate`.
pub async fn migrate(config: &Config) -> Result<(), Error> {
    let pool = connect(config).await?;
    schema::prepare(&pool, &config.schema).await?;
    info!(schema = %config.schema, "migrations applied");
    pool.close().await;
    Ok(())
}

/// Migrates, serves HTTP on `listener`, and projects until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let pool = connect(&config).await?;
    match config.migrate {
        true => schema::prepare(&pool, &config.schema).await?,
        false => schema::require_migrated(&pool, &config.schema).await?,
    }
    let metrics = Arc::new(Metrics::new());
    let ready = Readiness::default();
    let probes = ProbeState {
        pool: pool.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
    };

    // The bound address, which differs from the setting's with port 0.
    info!(listen = %listener.local_addr().map_err(Error::Http)?, "ipp-projector listening");
    let http_shutdown = CancellationToken::new();
    let server = axum::serve(listener, http::router(probes))
        .with_graceful_shutdown(http_shutdown.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });

    // The orders model runs beside the sessions; either failing for good stops both.
    let stop = shutdown.child_token();
    let dead_letter_size = tokio::spawn(ipp_service::kafka::watch_topic_size(
        config.kafka.clone(),
        format!("{CLIENT_ID}-dlq-size"),
        config.dlq_topic.clone(),
        metrics.dead_letter_records.clone(),
        stop.clone(),
    ));
    let orders = match config.orders {
        true => {
            let orders = OrdersProjector::new(
                &config,
                OrdersConfig::from_config(&config),
                pool.clone(),
                metrics.clone(),
                Arc::new(DeadLetters::new(&config)?),
            )?;
            let stop = stop.clone();
            Some(tokio::spawn(async move {
                let result = orders.run(stop.clone()).await;
                stop.cancel();
                result
            }))
        }
        false => None,
    };
    let projector = Projector::new(config, pool.clone(), metrics, ready).await?;
    let result = projector.run(stop.clone()).await;
    stop.cancel();
    let _ = dead_letter_size.await;
    let orders_result = match orders {
        Some(task) => task
            .await
            .unwrap_or_else(|e| Err(Error::Operation(format!("the orders task failed: {e}")))),
        None => Ok(()),
    };

    http_shutdown.cancel();
    let served = server
        .await
        .map_err(|e| Error::Http(std::io::Error::other(e)))?;
    pool.close().await;
    result?;
    orders_result?;
    served.map_err(Error::Http)
}
