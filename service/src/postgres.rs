//! Connecting to PostgreSQL: the same options, bounds and start-up patience for every
//! process.

use std::{str::FromStr, time::Duration};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};

use crate::{args::DatabaseArgs, secret::DatabaseUrl};

/// How long a connection may wait for a free slot in the pool before the query fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a service waits for a database that is still starting (the usual case when
/// a whole stack starts at once).
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// A service's pool: up to `max_connections`, each connection's `search_path` set to
/// `search_path` when given (the projector keeps its tables in `PROJECTOR_SCHEMA`).
/// Refused connections are retried for up to 30 seconds.
pub async fn connect(
    database: &DatabaseArgs,
    search_path: Option<&str>,
) -> Result<PgPool, sqlx::Error> {
    connect_with(
        &database.url,
        search_path,
        database.max_connections,
        STARTUP_PATIENCE,
    )
    .await
}

/// A small pool for a one-shot operator command, which fails at once when the
/// database is not there: an operator wants to know now.
pub async fn connect_for_command(
    url: &DatabaseUrl,
    search_path: Option<&str>,
) -> Result<PgPool, sqlx::Error> {
    connect_with(url, search_path, 2, Duration::ZERO).await
}

async fn connect_with(
    url: &DatabaseUrl,
    search_path: Option<&str>,
    max_connections: u32,
    patience: Duration,
) -> Result<PgPool, sqlx::Error> {
    let mut options = PgConnectOptions::from_str(url.expose())?;
    if options.get_application_name().is_none() {
        options = options.application_name(&program_name());
    }
    if let Some(schema) = search_path {
        options = options.options([("search_path", schema)]);
    }
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let attempt = PgPoolOptions::new()
            // One connection for the work and one for probes and gauges, at least.
            .max_connections(max_connections.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(sqlx::Error::Io(e))
                if is_transient(&e) && tokio::time::Instant::now() < deadline =>
            {
                let e = sqlx::Error::Io(e);
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "postgresql not reachable yet, retrying"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a connection failure may pass by itself (the server is starting, restarting,
/// or not reachable yet), so that waiting makes sense. A TLS failure (a certificate
/// the root does not sign, a name that does not match: `InvalidData`) never passes:
/// it is reported at once.
fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | AddrNotAvailable
            | TimedOut
            | UnexpectedEof
            | BrokenPipe
            | NotFound
            | Interrupted
            | HostUnreachable
            | NetworkUnreachable
    )
}

/// The versions of `migrator` that the database `pool` reaches (through its
/// `search_path`) has not applied, in order: all of them when it has no
/// `_sqlx_migrations` table. What a service started without migrating (its role owns
/// nothing) checks, so that it refuses to run on tables older than its code.
pub async fn unapplied_migrations(
    pool: &PgPool,
    migrator: &sqlx::migrate::Migrator,
) -> Result<Vec<i64>, sqlx::Error> {
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = match has_table {
        true => {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(pool)
                .await?
        }
        false => Vec::new(),
    };
    Ok(migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
        .map(|m| m.version)
        .collect())
}

/// The name our connections show in `pg_stat_activity.application_name` and in the
/// server's logs, unless the URL sets its own (`?application_name=…`): the program's
/// (`ipp-projector`, `ipp-actions`), so that a DBA tells the services apart.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ipp-pipeline".to_owned())
}
