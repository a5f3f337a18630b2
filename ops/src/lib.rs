#![doc = include_str!("../README.md")]
//! ipp-ops: the operator commands that `ipp-projector` and `ipp-actions` share.
//!
//! - [`dlq`]: read a dead-letter topic (explicit partition assignment from the low to the
//!   high watermark, never a consumer group), filter, print (`dlq list`, `dlq show`);
//! - [`redrive`]: put parked records back (`dlq redrive`) with a loop guard: the
//!   `dlq-redrive-count` header and the `ipp_dlq_redrives` table;
//! - [`status`]: watermarks, checkpoints and lag per partition, DLQ sizes;
//! - [`output`]: aligned text tables and JSON on stdout.
//!
//! The services own their CLIs and their tables; this crate owns the argument types
//! ([`args`]), so both binaries take the same flags, and `ipp_dlq_redrives` with its
//! migrations numbered 3001+ ([`migrate`]). It knows no service's tables: ipp-actions
//! re-queues its own failed actions through [`redrive::ActionLedger`].

pub mod args;
pub mod dlq;
pub mod error;
pub mod kafka;
pub mod output;
pub mod redrive;
pub mod redrives;
pub mod status;

pub use args::{DlqCommand, StatusArgs};
pub use error::Error;

use ipp_service::DatabaseUrl;
use sqlx::PgPool;

/// Applies the ops migrations (3001+). Versions of the services (1001+, 2001+) in the
/// shared `_sqlx_migrations` table are ignored, as they ignore these.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    accept_3001_before_the_move(pool, &migrator).await?;
    migrator.run(pool).await?;
    Ok(())
}

/// SHA-384 (sqlx's checksum) of 3001_ops.sql as it was while it also created
/// `ipp_action_retries`, before that table moved to ipp-actions' own migrations.
pub const OPS_3001_BEFORE_THE_MOVE: &str = "198e84ef96b158e1f1feb751dd42357e679fd7e76105fdd3ac7a624d26caeb45ee960f41c3d06d3c7ced5c82a7616404";

/// A database that applied the earlier 3001 has every table the current one creates
/// (and ipp-actions' 2002 finds `ipp_action_retries` there), so its recorded checksum is
/// brought up to date instead of failing the migration as "modified".
async fn accept_3001_before_the_move(
    pool: &PgPool,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), Error> {
    let Some(current) = migrator.iter().find(|m| m.version == 3001) else {
        return Ok(());
    };
    if !table_exists(pool, "_sqlx_migrations").await? {
        return Ok(());
    }
    sqlx::query!(
        "UPDATE _sqlx_migrations SET checksum = $1 \
         WHERE version = 3001 AND encode(checksum, 'hex') = $2",
        current.checksum.as_ref(),
        OPS_3001_BEFORE_THE_MOVE,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Where a command finds its tables: the service's `DATABASE_URL` and, for the
/// projector, its `PROJECTOR_SCHEMA` (set as every connection's `search_path`, as the
/// projector itself does).
#[derive(Debug, Clone)]
pub struct Database {
    pub url: DatabaseUrl,
    pub schema: Option<String>,
}

impl Database {
    pub fn new(url: &DatabaseUrl) -> Self {
        Self {
            url: url.clone(),
            schema: None,
        }
    }

    pub fn in_schema(url: &DatabaseUrl, schema: &str) -> Self {
        Self {
            url: url.clone(),
            schema: Some(schema.to_owned()),
        }
    }
}

/// A small pool for a one-shot command.
pub async fn connect(database: &Database) -> Result<PgPool, Error> {
    Ok(
        ipp_service::postgres::connect_for_command(&database.url, database.schema.as_deref())
            .await?,
    )
}

/// Whether a table exists (a dry run must not create the ops tables to look at them).
pub async fn table_exists(pool: &PgPool, table: &str) -> Result<bool, Error> {
    let found = sqlx::query_scalar!("SELECT to_regclass($1)::text", table)
        .fetch_one(pool)
        .await?;
    Ok(found.is_some())
}

/// What an operator command's error says about how the command ends.
pub trait CommandFailure: std::error::Error {
    /// 2 for a usage or configuration error, 1 for everything else.
    fn exit_code(&self) -> i32;

    /// The reader of the output went away (`… | head`), which is not an error of the
    /// command.
    fn is_broken_pipe(&self) -> bool;
}

/// Ends an operator command of either binary: exit 0, or print the error with its
/// causes on stderr and exit with its code. Operators get one line, not a backtrace.
pub fn exit<E: CommandFailure>(program: &str, result: Result<(), E>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) if e.is_broken_pipe() => std::process::exit(0),
        Err(e) => {
            eprintln!("{program}: error: {}", ipp_service::error_chain(&e));
            std::process::exit(e.exit_code())
        }
    }
}
