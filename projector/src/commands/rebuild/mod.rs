//! `ipp-projector rebuild`: rebuild the read models from the start of the log into a
//! shadow schema while the live projector keeps serving, then swap atomically.
//!
//! 1. The shadow schema (`ipp_rebuild`) is dropped, created and migrated; a consumer
//!    with an explicit assignment (never the live group, never committed) reads the
//!    topic from the low watermarks and applies batches with the live projector's own
//!    engine, keeping its offsets in the shadow's `ipp_projector_offsets` under the
//!    live group's name.
//! 2. Once the shadow is within `--swap-lag` records of the high watermarks, one
//!    transaction takes `ACCESS EXCLUSIVE` locks on the live tables (in the order the
//!    live projector takes them, so no deadlock; its next batch waits), reads the live
//!    offsets, applies whatever the shadow still lacks up to them, and moves the live
//!    tables to `ipp_previous` and the shadow's into the live schema. Readers wait a
//!    moment, then see the new tables: never a mix, never a missing table.
//! 3. Handover: the live offsets are now the shadow's, which are at or past what the
//!    live projector had committed. The live projector re-reads and locks the stored
//!    offsets in every batch and skips records below them; its in-memory copy is only
//!    used to place a new assignment and can only be behind the table. So nothing is
//!    lost and nothing is applied twice. PostgreSQL re-plans the live projector's
//!    cached statements against the moved tables (the tables it names are resolved
//!    again through its `search_path`).
//!
//! Poison records: the shadow skips them like the live projector, and the swapped-in
//! offsets pass them, so the live projector will never park those it had not reached.
//! The rebuild keeps every record it skipped that the dead-letter topic does not hold
//! (by `dlq-source-topic/partition/offset`, read before the swap and again under its
//! locks) and parks them in the swap transaction, before the commit: after a swap every
//! skipped record is in the dead-letter topic, and none that was there already is
//! parked again. `--dry-run` parks nothing (the live projector still will).
//!
//! A rebuild never swaps in a partial history: it refuses (nothing changed) when a
//! partition of the topic has lost its oldest records (its low watermark is above 0:
//! retention deleted segments, or records were deleted) or when the shadow would hold
//! fewer events than the live table, unless `--allow-truncated-history` says the loss
//! is known and accepted. The low watermarks are checked before the shadow is built
//! and again inside the swap transaction.
//!
//! The orders model (`orders`) is rebuilt beside the sessions in the same shadow and
//! swapped in the same transaction, its view with its tables; it keeps no offsets, so
//! the swap catches it up to the high watermarks of its three topics read under the
//! locks.
//!
//! `--rollback` swaps `ipp_previous` back the same way, after catching it up to the
//! live offsets. `--dry-run` builds the shadow up to exactly the live offsets and
//! reports rows added, changed and missing. Rebuild writes only the projector's
//! tables: it never touches `ipp_actions` and never calls Order Management.

mod diff;
mod follower;
mod orders;
mod report;
mod swap;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use ipp_service::DatabaseArgs;
use sqlx::PgPool;
use tracing::{info, warn};

use self::{
    diff::dry_run, follower::Follower, orders::OrdersFollower, swap::complete_history, swap::swap,
};
use crate::{commands::progress::Progress, config::Config, schema, Error};

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RebuildArgs {
    /// Build the shadow and report the rows added, changed and missing versus the live
    /// tables; swap nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object per line on stdout (progress, then the result) instead of a
    /// progress bar and a text report.
    #[arg(long)]
    pub json: bool,
    /// Swap the previous version (kept by the last rebuild) back in.
    #[arg(long, conflicts_with = "dry_run")]
    pub rollback: bool,
    /// With --dry-run: keep the shadow schema for inspection instead of dropping it.
    #[arg(long, requires = "dry_run")]
    pub keep_shadow: bool,
    /// Schema the rebuild is built in.
    #[arg(long, env = "PROJECTOR_REBUILD_SCHEMA", default_value = "ipp_rebuild")]
    pub shadow_schema: String,
    /// Schema keeping the replaced tables for --rollback.
    #[arg(
        long,
        env = "PROJECTOR_PREVIOUS_SCHEMA",
        default_value = "ipp_previous"
    )]
    pub previous_schema: String,
    /// Swap once the shadow is at most this many records behind the high watermarks.
    #[arg(long, default_value_t = 200)]
    pub swap_lag: i64,
    /// Longest time, in milliseconds, the live tables stay locked for the final
    /// catch-up; past it the swap is abandoned and tried again.
    #[arg(long, default_value_t = 10_000)]
    pub max_lock_ms: u64,
    /// Longest wait, in milliseconds, for the locks on the live tables (a long query
    /// or batch holding them); past it the swap is tried again later.
    #[arg(long, default_value_t = 5_000)]
    pub lock_wait_ms: u64,
    /// Give up after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub timeout_secs: u64,
    /// Swap even though the topic has lost its oldest records (a partition's low
    /// watermark is above 0) or the rebuilt tables hold fewer events than the live ones:
    /// the history is knowingly truncated, and what the log no longer holds is dropped
    /// from the read models.
    #[arg(long, conflicts_with = "rollback")]
    pub allow_truncated_history: bool,
}

impl RebuildArgs {
    /// Whether the swapped-in version must hold the whole history: a rebuild does unless
    /// the operator accepted a truncated one; a rollback swaps back what was live before.
    fn checks_history(&self) -> bool {
        !self.rollback && !self.allow_truncated_history
    }
}

/// Session-level advisory lock key: one rebuild (or rollback) at a time per database.
const REBUILD_LOCK: i64 = 0x6970_705f_7265_6275; // "ipp_rebu"
/// Scratch schema used inside the swap transaction only.
const HOLD_SCHEMA: &str = "ipp_rebuild_swap";

/// `ipp-projector rebuild`.
pub async fn run(config: &Config, args: &RebuildArgs) -> Result<(), Error> {
    let live = config.schema.as_str();
    let shadow = args.shadow_schema.as_str();
    let previous = args.previous_schema.as_str();
    for name in [live, shadow, previous] {
        schema::validate(name)?;
    }
    if live == shadow
        || live == previous
        || shadow == previous
        || [live, shadow, previous].contains(&HOLD_SCHEMA)
    {
        return Err(Error::Config(
            "the live, rebuild and previous schemas must be three different schemas".into(),
        ));
    }
    let admin_database = DatabaseArgs {
        max_connections: 3,
        ..config.database.clone()
    };
    let admin = schema::connect(&admin_database, live).await?;
    // One rebuild at a time: held by this connection until the command ends.
    let mut guard = admin.acquire().await?;
    let locked = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_lock($1) AS "locked!""#,
        REBUILD_LOCK
    )
    .fetch_one(&mut *guard)
    .await?;
    if !locked {
        return Err(Error::Operation(
            "another rebuild or rollback is running on this database".into(),
        ));
    }
    if !schema::has_tables(&admin, live).await? {
        return Err(Error::Operation(format!(
            "schema {live} has no read models yet: run `ipp-projector migrate` (or the projector) first"
        )));
    }

    let source = if args.rollback {
        if !schema::has_tables(&admin, previous).await? {
            return Err(Error::Operation(format!(
                "nothing to roll back to: schema {previous} has no previous version"
            )));
        }
        previous
    } else {
        // Runtime SQL: schema names are identifiers (checked by `schema::validate`).
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
            .execute(&admin)
            .await?;
        shadow
    };
    let pool = schema::connect(&config.database, source).await?;
    if !args.rollback {
        schema::prepare(&pool, shadow).await?;
    }

    let started = Instant::now();
    let mut follower = Follower::new(config, &pool).await?;
    // The orders model is rebuilt and swapped with the sessions when the projector builds
    // it and both sides hold it (a previous version from before migration 1002 does not:
    // a rollback to it leaves the live orders model as it is).
    let with_orders = config.orders
        && schema::has_orders(&admin, live).await?
        && schema::has_orders(&admin, source).await?;
    if config.orders && !with_orders {
        warn!(
            source,
            "the orders model is not part of this swap: {source} has no orders tables"
        );
    }
    let mut orders = match with_orders {
        true => Some(OrdersFollower::new(config, &pool)?),
        false => None,
    };
    if args.checks_history() {
        let mut checked = complete_history(&config.ipp_topic, &follower.lows()?);
        if let Some(orders) = &orders {
            for (topic, lows) in orders.lows_by_topic()? {
                checked = checked.and_then(|()| complete_history(&topic, &lows));
            }
        }
        if let Err(refused) = checked {
            drop(follower);
            drop(orders);
            return Err(discard(&admin, pool, shadow, refused).await);
        }
    }
    let label = if args.rollback {
        "catching up the previous version"
    } else {
        "rebuilding"
    };
    let mut progress = Progress::new(args.json, label);
    info!(source, live, topic = %config.ipp_topic, "rebuild started");
    let deadline =
        (args.timeout_secs > 0).then(|| Instant::now() + Duration::from_secs(args.timeout_secs));
    let check_deadline = || match deadline {
        Some(d) if Instant::now() >= d => Err(Error::Operation(format!(
            "gave up after {}s (--timeout-secs)",
            args.timeout_secs
        ))),
        _ => Ok(()),
    };

    if args.dry_run {
        let result = dry_run(
            config,
            args,
            &admin,
            &mut follower,
            orders.as_mut(),
            &mut progress,
            &check_deadline,
        )
        .await;
        progress.finish();
        drop(follower);
        pool.close().await;
        if !args.keep_shadow {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
                .execute(&admin)
                .await?;
        }
        let report = result?;
        return report::dry_run(args, &report, started, shadow);
    }

    // Catch up until close to the high watermarks, then try to swap.
    let mut highs = follower.highs()?;
    let mut orders_highs = orders.as_ref().map(|o| o.highs()).transpose()?;
    let mut checked = Instant::now();
    let mut attempts = 0u32;
    loop {
        check_deadline()?;
        let mut applied = follower.step(None, Duration::from_millis(300)).await?;
        if let Some(orders) = orders.as_mut() {
            applied += orders.step(Duration::from_millis(50)).await?;
        }
        if checked.elapsed() >= Duration::from_millis(500) || applied == 0 {
            highs = follower.highs()?;
            orders_highs = orders.as_ref().map(|o| o.highs()).transpose()?;
            checked = Instant::now();
        }
        let orders_lag = match (&orders, &orders_highs) {
            (Some(orders), Some(highs)) => orders.lag(highs),
            _ => 0,
        };
        let lag = follower.lag(&highs);
        progress.update("catching_up", follower.totals.records, lag + orders_lag)?;
        if lag > args.swap_lag || orders_lag > args.swap_lag {
            continue;
        }
        attempts += 1;
        match swap(config, args, &admin, &mut follower, orders.as_mut(), source).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(refused @ Error::TruncatedHistory(_)) => {
                drop(follower);
                return Err(discard(&admin, pool, shadow, refused).await);
            }
            Err(e) => return Err(e),
        }
        if attempts >= 10 {
            return Err(Error::Operation(
                "could not swap in 10 attempts (the live tables stayed busy, or the shadow could not catch up while they were locked): raise --lock-wait-ms or --max-lock-ms".into(),
            ));
        }
    }
    progress.finish();
    let (totals, poison_parked) = (follower.totals, follower.poison_parked);
    let orders_read = orders.as_ref().map(|o| (o.records, o.skipped));
    drop(follower);
    drop(orders);
    pool.close().await;
    if !args.rollback {
        // Only its `_sqlx_migrations` is left.
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
            .execute(&admin)
            .await?;
    }
    let counts = row_counts(&admin, live, orders_read.is_some()).await?;
    let elapsed = started.elapsed().as_secs_f64();
    report::swapped(
        args,
        live,
        &totals,
        poison_parked,
        orders_read,
        &counts,
        elapsed,
    )?;
    drop(guard);
    Ok(())
}

/// Drops the shadow of a refused rebuild (closing its pool first) and returns the
/// refusal, or the error that kept the shadow from being dropped.
async fn discard(admin: &PgPool, pool: PgPool, shadow: &str, refused: Error) -> Error {
    pool.close().await;
    match sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
        .execute(admin)
        .await
    {
        Ok(_) => refused,
        Err(e) => e.into(),
    }
}

async fn row_counts(
    pool: &PgPool,
    schema_name: &str,
    with_orders: bool,
) -> Result<HashMap<String, i64>, Error> {
    let mut counts = HashMap::new();
    let mut tables = vec!["ipp_events", "ipp_sessions"];
    if with_orders {
        tables.extend([
            "ipp_order_facts",
            "ipp_order_operations",
            "ipp_order_disputes",
        ]);
    }
    for table in tables {
        // Runtime SQL: a schema-qualified name (the schema was validated).
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema_name}.{table}"))
            .fetch_one(pool)
            .await?;
        counts.insert(table.to_owned(), n);
    }
    Ok(counts)
}
