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
//! A rebuild never swaps in a partial history: it refuses (nothing changed) when a
//! partition of the topic has lost its oldest records (its low watermark is above 0:
//! retention deleted segments, or records were deleted) or when the shadow would hold
//! fewer events than the live table, unless `--allow-truncated-history` says the loss
//! is known and accepted. The low watermarks are checked before the shadow is built
//! and again inside the swap transaction.
//!
//! `--rollback` swaps `ipp_previous` back the same way, after catching it up to the
//! live offsets. `--dry-run` builds the shadow up to exactly the live offsets and
//! reports rows added, changed and missing. Rebuild writes only the projector's
//! tables: it never touches `ipp_actions` and never calls Order Management.

#![allow(
    clippy::print_stdout,
    reason = "the command's report and --json progress are its output on stdout"
)]

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io::{IsTerminal, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ipp_service::DatabaseArgs;
use rdkafka::{
    consumer::StreamConsumer,
    message::{Message, OwnedMessage},
};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use tracing::info;

use crate::{
    config::Config,
    engine::{Engine, Totals},
    log_reader, schema,
    statistics::AutoAnalyze,
    store, Error,
};

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

/// Reads the topic into one schema through the engine, from the schema's own stored
/// offsets (or the low watermarks).
struct Follower<'a> {
    consumer: StreamConsumer,
    engine: Engine<'a>,
    topic: String,
    partitions: Vec<i32>,
    /// Next offset to apply per partition.
    positions: BTreeMap<i32, i64>,
    /// Records read but held back by a limit (dry run), in order.
    pending: VecDeque<OwnedMessage>,
    batch_size: usize,
    /// Longest wait for the next record once a batch has its first one.
    batch_wait: Duration,
    totals: Totals,
}

impl<'a> Follower<'a> {
    async fn new(config: &'a Config, pool: &'a PgPool) -> Result<Self, Error> {
        let topic = config.ipp_topic.clone();
        let consumer = log_reader::consumer(config, "rebuild")?;
        let partitions = log_reader::partitions(&consumer, &topic)?;
        let marks = log_reader::watermarks(&consumer, &topic, &partitions)?;
        let stored = store::load_offsets(pool, &config.group, &topic).await?;
        let positions: BTreeMap<i32, i64> = marks
            .iter()
            .map(|(&p, &(low, _))| (p, stored.get(&p).copied().unwrap_or(0).max(low)))
            .collect();
        log_reader::assign(&consumer, &topic, &positions)?;
        Ok(Self {
            consumer,
            engine: Engine {
                pool,
                topic: &config.ipp_topic,
                group: Some(&config.group),
                max_payload_bytes: config.max_payload_bytes,
                dead_letters: None,
                statistics: Arc::new(AutoAnalyze::default()),
            },
            topic,
            partitions,
            positions,
            pending: VecDeque::new(),
            batch_size: config.batch_size as usize,
            batch_wait: Duration::from_millis(config.batch_wait_ms.clamp(10, 200)),
            totals: Totals::default(),
        })
    }

    /// The low watermarks now, per partition.
    fn lows(&self) -> Result<BTreeMap<i32, i64>, Error> {
        Ok(
            log_reader::watermarks(&self.consumer, &self.topic, &self.partitions)?
                .into_iter()
                .map(|(p, (low, _))| (p, low))
                .collect(),
        )
    }

    fn highs(&self) -> Result<BTreeMap<i32, i64>, Error> {
        Ok(
            log_reader::watermarks(&self.consumer, &self.topic, &self.partitions)?
                .into_iter()
                .map(|(p, (_, high))| (p, high))
                .collect(),
        )
    }

    fn lag(&self, targets: &BTreeMap<i32, i64>) -> i64 {
        targets
            .iter()
            .map(|(p, t)| (t - self.positions.get(p).copied().unwrap_or(0)).max(0))
            .sum()
    }

    /// Reads one batch (waiting up to `wait` for its first record) and applies the
    /// records below `limit` (all without a limit); returns how many were applied.
    async fn step(
        &mut self,
        limit: Option<&BTreeMap<i32, i64>>,
        wait: Duration,
    ) -> Result<usize, Error> {
        let allowed = |m: &OwnedMessage| {
            limit.is_none_or(|l| m.offset() < l.get(&m.partition()).copied().unwrap_or(0))
        };
        let mut batch = Vec::new();
        let mut held = VecDeque::new();
        for message in self.pending.drain(..) {
            // Per partition, the allowed records are a prefix of the held ones.
            if allowed(&message) && batch.len() < self.batch_size {
                batch.push(message);
            } else {
                held.push_back(message);
            }
        }
        self.pending = held;
        if batch.is_empty() {
            let deadline = tokio::time::Instant::now() + wait;
            let mut first = true;
            while batch.len() < self.batch_size {
                let until = if first {
                    deadline
                } else {
                    tokio::time::Instant::now() + self.batch_wait
                };
                match tokio::time::timeout_at(until, self.consumer.recv()).await {
                    Ok(Ok(message)) => {
                        let message = message.detach();
                        let blocked = self
                            .pending
                            .iter()
                            .any(|m| m.partition() == message.partition());
                        if !blocked && allowed(&message) {
                            first = false;
                            batch.push(message);
                        } else {
                            self.pending.push_back(message);
                        }
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => break,
                }
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let totals = self.engine.apply_isolating(&batch).await?;
        self.totals.records += totals.records;
        self.totals.applied += totals.applied;
        self.totals.duplicates += totals.duplicates;
        self.totals.stale += totals.stale;
        self.totals.poison += totals.poison;
        for message in &batch {
            let position = self.positions.entry(message.partition()).or_insert(0);
            *position = (*position).max(message.offset() + 1);
        }
        Ok(batch.len())
    }

    /// Applies until every partition is at or past `targets` (exactly at them with
    /// `exact`), or fails after `within`.
    async fn catch_up(
        &mut self,
        targets: &BTreeMap<i32, i64>,
        exact: bool,
        within: Duration,
    ) -> Result<bool, Error> {
        let deadline = Instant::now() + within;
        while self.lag(targets) > 0 {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.step(exact.then_some(targets), Duration::from_millis(200))
                .await?;
        }
        Ok(true)
    }
}

/// Progress on stderr (a bar when it is a terminal) or as JSON lines on stdout.
struct Progress {
    bar: Option<ProgressBar>,
    json: bool,
    started: Instant,
    last_json: Option<Instant>,
}

impl Progress {
    fn new(json: bool, label: &str) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} records, {per_sec}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(label.to_owned());
            bar
        });
        Self {
            bar,
            json,
            started: Instant::now(),
            last_json: None,
        }
    }

    fn update(&mut self, phase: &str, done: u64, lag: i64) -> Result<(), Error> {
        if let Some(bar) = &self.bar {
            bar.set_length(done + lag.max(0) as u64);
            bar.set_position(done);
        }
        if self.json
            && self
                .last_json
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_json = Some(Instant::now());
            let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
            let rate = done as f64 / elapsed;
            let eta = (rate > 0.0).then(|| (lag.max(0) as f64 / rate).round());
            emit(&json!({
                "phase": phase,
                "records": done,
                "lag": lag.max(0),
                "events_per_second": (rate * 10.0).round() / 10.0,
                "eta_seconds": eta,
                "elapsed_seconds": (elapsed * 10.0).round() / 10.0,
            }))?;
        }
        Ok(())
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn emit(value: &Value) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}").map_err(Error::Output)?;
    out.flush().map_err(Error::Output)
}

fn text(line: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").map_err(Error::Output)
}

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
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(REBUILD_LOCK)
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
    if args.checks_history() {
        if let Err(refused) = complete_history(&config.ipp_topic, &follower.lows()?) {
            drop(follower);
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
        return report_dry_run(args, &report, started, shadow);
    }

    // Catch up until close to the high watermarks, then try to swap.
    let mut highs = follower.highs()?;
    let mut checked = Instant::now();
    let mut attempts = 0u32;
    loop {
        check_deadline()?;
        let applied = follower.step(None, Duration::from_millis(300)).await?;
        if checked.elapsed() >= Duration::from_millis(500) || applied == 0 {
            highs = follower.highs()?;
            checked = Instant::now();
        }
        let lag = follower.lag(&highs);
        progress.update("catching_up", follower.totals.records, lag)?;
        if lag > args.swap_lag {
            continue;
        }
        attempts += 1;
        match swap(config, args, &admin, &mut follower, source).await {
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
    let totals = follower.totals;
    drop(follower);
    pool.close().await;
    if !args.rollback {
        // Only its `_sqlx_migrations` is left.
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
            .execute(&admin)
            .await?;
    }
    let counts = row_counts(&admin, live).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let phase = if args.rollback {
        "rolled_back"
    } else {
        "swapped"
    };
    if args.json {
        emit(&json!({
            "phase": phase,
            "schema": live,
            "previous_schema": previous,
            "records_read": totals.records,
            "events_applied": totals.applied,
            "duplicates": totals.duplicates,
            "poison_skipped": totals.poison,
            "rows": counts,
            "elapsed_seconds": (elapsed * 10.0).round() / 10.0,
        }))?;
    } else {
        let what = if args.rollback {
            "rolled back: the previous version is live again"
        } else {
            "rebuilt and swapped in"
        };
        text(&format!(
            "{what} ({live}): ipp_events {} rows, ipp_sessions {} rows; {} records read, {} events applied, {} duplicates, {} poison records skipped, in {elapsed:.1}s",
            counts["ipp_events"], counts["ipp_sessions"], totals.records, totals.applied, totals.duplicates, totals.poison
        ))?;
        text(&format!(
            "the replaced version is kept in schema {previous}: `ipp-projector rebuild --rollback` swaps it back"
        ))?;
    }
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

async fn row_counts(pool: &PgPool, schema_name: &str) -> Result<HashMap<String, i64>, Error> {
    let mut counts = HashMap::new();
    for table in ["ipp_events", "ipp_sessions"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema_name}.{table}"))
            .fetch_one(pool)
            .await?;
        counts.insert(table.to_owned(), n);
    }
    Ok(counts)
}

/// The atomic swap. `Ok(false)`: the source could not catch up within
/// `--max-lock-ms` while the live tables were locked; nothing changed.
async fn swap(
    config: &Config,
    args: &RebuildArgs,
    admin: &PgPool,
    follower: &mut Follower<'_>,
    source: &str,
) -> Result<bool, Error> {
    let live = config.schema.as_str();
    let previous = args.previous_schema.as_str();
    let mut tx = admin.begin().await?;
    // The live projector locks ipp_projector_offsets first, then ipp_events and
    // ipp_sessions: the same order here means its batch in flight commits first and
    // its next one waits for us.
    let tables = schema::TABLES
        .iter()
        .map(|t| format!("{live}.{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    // Readers queue behind a waiting lock request: do not wait long for a long query
    // or a stuck batch, try again later instead.
    sqlx::query(&format!("SET LOCAL lock_timeout = {}", args.lock_wait_ms))
        .execute(&mut *tx)
        .await?;
    let locked = sqlx::query(&format!("LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut *tx)
        .await;
    match locked {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
            info!("the live tables stayed busy for --lock-wait-ms, retrying the swap");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    sqlx::query("SET LOCAL lock_timeout = 0")
        .execute(&mut *tx)
        .await?;
    let live_offsets: BTreeMap<i32, i64> = sqlx::query(&format!(
        "SELECT partition, next_offset FROM {live}.ipp_projector_offsets
         WHERE consumer_group = $1 AND topic = $2"
    ))
    .bind(&config.group)
    .bind(&config.ipp_topic)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let lock_started = Instant::now();
    if !follower
        .catch_up(
            &live_offsets,
            false,
            Duration::from_millis(args.max_lock_ms),
        )
        .await?
    {
        tx.rollback().await?;
        info!("the rebuild did not reach the live offsets in time, retrying the swap");
        return Ok(false);
    }
    let source_tables = schema::TABLES
        .iter()
        .map(|t| format!("{source}.{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(&format!(
        "LOCK TABLE {source_tables} IN ACCESS EXCLUSIVE MODE"
    ))
    .execute(&mut *tx)
    .await?;
    if args.checks_history() {
        // Retention may have deleted a segment while the shadow was built.
        let checked = complete_history(&config.ipp_topic, &follower.lows()?);
        let checked = match checked {
            Ok(()) => no_fewer_events(&mut tx, live, source).await,
            refused => refused,
        };
        if let Err(refused) = checked {
            tx.rollback().await?;
            return Err(refused);
        }
    }
    // Privileges granted on the live tables (a read-only role for analysts, a BI
    // tool) go with the name, not with the rebuilt tables: grant them there too.
    let mut statements: Vec<String> = sqlx::query_scalar(
        "SELECT format('GRANT %s ON %I.%I TO %s%s', a.privilege_type, $2::text, c.relname,
                       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
                       CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN LATERAL aclexplode(c.relacl) a
         LEFT JOIN pg_roles r ON r.oid = a.grantee
         WHERE n.nspname = $1 AND c.relname = ANY($3) AND a.grantee <> c.relowner",
    )
    .bind(live)
    .bind(source)
    .bind(schema::TABLES.as_slice())
    .fetch_all(&mut *tx)
    .await?;
    statements.extend([
        format!("CREATE SCHEMA {HOLD_SCHEMA}"),
        format!("CREATE SCHEMA IF NOT EXISTS {previous}"),
    ]);
    for table in schema::TABLES {
        statements.push(format!(
            "ALTER TABLE {live}.{table} SET SCHEMA {HOLD_SCHEMA}"
        ));
    }
    for table in schema::TABLES {
        statements.push(format!("ALTER TABLE {source}.{table} SET SCHEMA {live}"));
    }
    for table in schema::TABLES {
        statements.push(format!("DROP TABLE IF EXISTS {previous}.{table}"));
    }
    for table in schema::TABLES {
        statements.push(format!(
            "ALTER TABLE {HOLD_SCHEMA}.{table} SET SCHEMA {previous}"
        ));
    }
    statements.push(format!("DROP SCHEMA {HOLD_SCHEMA}"));
    for statement in &statements {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    info!(
        locked_ms = lock_started.elapsed().as_millis() as u64,
        ?live_offsets,
        "swapped"
    );
    Ok(true)
}

/// Refuses a history that does not start at offset 0 on every partition.
fn complete_history(topic: &str, lows: &BTreeMap<i32, i64>) -> Result<(), Error> {
    let truncated: Vec<String> = lows
        .iter()
        .filter(|(_, &low)| low > 0)
        .map(|(partition, low)| format!("partition {partition} starts at offset {low}"))
        .collect();
    if truncated.is_empty() {
        return Ok(());
    }
    Err(Error::TruncatedHistory(format!(
        "refusing to rebuild from a truncated log: topic {topic} has lost its oldest records \
         ({}; the low watermark is above 0: retention.ms or retention.bytes deleted segments, \
         or records were deleted), so the rebuilt read models would miss them. The event log \
         needs retention.ms=-1 (or tiered storage). Nothing was changed; pass \
         --allow-truncated-history to rebuild from what the log still holds",
        truncated.join(", ")
    )))
}

/// Refuses a rebuilt `ipp_events` that holds fewer events than the live one: the log no
/// longer has some of what the live tables were built from.
async fn no_fewer_events(
    tx: &mut sqlx::PgConnection,
    live: &str,
    rebuilt: &str,
) -> Result<(), Error> {
    let count = |schema_name: &str| format!("SELECT count(*) FROM {schema_name}.ipp_events");
    let live_events: i64 = sqlx::query_scalar(&count(live)).fetch_one(&mut *tx).await?;
    let rebuilt_events: i64 = sqlx::query_scalar(&count(rebuilt))
        .fetch_one(&mut *tx)
        .await?;
    if rebuilt_events >= live_events {
        return Ok(());
    }
    Err(Error::TruncatedHistory(format!(
        "refusing to swap: the rebuilt ipp_events holds {rebuilt_events} events, fewer than \
         the live table's {live_events}, so the log no longer holds part of the history the \
         read models were built from. Nothing was changed; pass --allow-truncated-history \
         to swap in what the log still holds"
    )))
}

/// One table's differences, rebuilt versus live.
#[derive(Debug, serde::Serialize)]
struct TableDiff {
    table: &'static str,
    live_rows: i64,
    rebuilt_rows: i64,
    added: i64,
    changed: i64,
    missing: i64,
    examples: Vec<Value>,
}

/// Contract columns compared: everything but `updated_at` (when the projector wrote
/// the row) and, for events, where the first stored copy was read (`kafka_*`,
/// `received_at`), which may name another copy of a duplicate.
const COMPARED: [(&str, &str, &str); 2] = [
    ("ipp_sessions", "session_id", "'{updated_at}'"),
    (
        "ipp_events",
        "event_id",
        "'{kafka_partition,kafka_offset,received_at}'",
    ),
];

async fn dry_run(
    config: &Config,
    args: &RebuildArgs,
    admin: &PgPool,
    follower: &mut Follower<'_>,
    progress: &mut Progress,
    check_deadline: &dyn Fn() -> Result<(), Error>,
) -> Result<Vec<TableDiff>, Error> {
    let live = config.schema.as_str();
    let shadow = args.shadow_schema.as_str();
    // Build up to the live offsets (never past them, so both sides hold the same records).
    loop {
        check_deadline()?;
        let targets: BTreeMap<i32, i64> =
            store::load_offsets(admin, &config.group, &config.ipp_topic)
                .await?
                .into_iter()
                .collect();
        let lag = follower.lag(&targets);
        progress.update("catching_up", follower.totals.records, lag)?;
        if lag <= args.swap_lag.max(1) {
            break;
        }
        follower
            .step(Some(&targets), Duration::from_millis(300))
            .await?;
    }
    // Freeze the live tables for writers (readers go on), reach exactly their offsets, compare.
    let mut tx = admin.begin().await?;
    let tables = schema::TABLES
        .iter()
        .map(|t| format!("{live}.{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(&format!("LOCK TABLE {tables} IN SHARE MODE"))
        .execute(&mut *tx)
        .await?;
    let targets: BTreeMap<i32, i64> =
        store::load_offsets(&mut *tx, &config.group, &config.ipp_topic)
            .await?
            .into_iter()
            .collect();
    if !follower
        .catch_up(
            &targets,
            true,
            Duration::from_millis(args.max_lock_ms.max(30_000)),
        )
        .await?
    {
        return Err(Error::Operation(
            "the rebuild could not reach the live offsets".into(),
        ));
    }
    progress.update("comparing", follower.totals.records, 0)?;
    let mut diffs = Vec::new();
    for (table, key, ignored) in COMPARED {
        let row = sqlx::query(&format!(
            "WITH l AS (SELECT {key} AS k, to_jsonb(t) - {ignored}::text[] AS doc FROM {live}.{table} t),
                  s AS (SELECT {key} AS k, to_jsonb(t) - {ignored}::text[] AS doc FROM {shadow}.{table} t)
             SELECT (SELECT count(*) FROM l), (SELECT count(*) FROM s),
                    count(*) FILTER (WHERE l.k IS NULL),
                    count(*) FILTER (WHERE l.k IS NOT NULL AND s.k IS NOT NULL AND l.doc <> s.doc),
                    count(*) FILTER (WHERE s.k IS NULL)
             FROM l FULL JOIN s ON l.k = s.k"
        ))
        .fetch_one(&mut *tx)
        .await?;
        let examples: Vec<Value> = sqlx::query_scalar(&format!(
            "WITH l AS (SELECT {key} AS k, to_jsonb(t) - {ignored}::text[] AS doc FROM {live}.{table} t),
                  s AS (SELECT {key} AS k, to_jsonb(t) - {ignored}::text[] AS doc FROM {shadow}.{table} t)
             SELECT jsonb_build_object(
                        'difference', CASE WHEN l.k IS NULL THEN 'added'
                                           WHEN s.k IS NULL THEN 'missing' ELSE 'changed' END,
                        'key', COALESCE(l.k::text, s.k::text),
                        'live', l.doc, 'rebuilt', s.doc)
             FROM l FULL JOIN s ON l.k = s.k
             WHERE l.doc IS DISTINCT FROM s.doc
             ORDER BY COALESCE(l.k::text, s.k::text) LIMIT 5"
        ))
        .fetch_all(&mut *tx)
        .await?;
        diffs.push(TableDiff {
            table,
            live_rows: row.try_get(0)?,
            rebuilt_rows: row.try_get(1)?,
            added: row.try_get(2)?,
            changed: row.try_get(3)?,
            missing: row.try_get(4)?,
            examples,
        });
    }
    tx.rollback().await?;
    Ok(diffs)
}

fn report_dry_run(
    args: &RebuildArgs,
    diffs: &[TableDiff],
    started: Instant,
    shadow: &str,
) -> Result<(), Error> {
    let elapsed = started.elapsed().as_secs_f64();
    if args.json {
        return emit(&json!({
            "phase": "dry_run",
            "tables": diffs,
            "identical": diffs.iter().all(|d| d.added + d.changed + d.missing == 0),
            "shadow_kept": args.keep_shadow.then_some(shadow),
            "elapsed_seconds": (elapsed * 10.0).round() / 10.0,
        }));
    }
    text("dry run: rebuilt read models versus the live tables (nothing swapped)")?;
    text(&format!(
        "{:<14} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "table", "live", "rebuilt", "added", "changed", "missing"
    ))?;
    for d in diffs {
        text(&format!(
            "{:<14} {:>10} {:>10} {:>8} {:>8} {:>8}",
            d.table, d.live_rows, d.rebuilt_rows, d.added, d.changed, d.missing
        ))?;
    }
    for d in diffs {
        for example in &d.examples {
            text(&format!("  {}", describe(d.table, example)))?;
        }
    }
    if args.keep_shadow {
        text(&format!("the rebuilt tables are kept in schema {shadow}"))?;
    }
    Ok(())
}

/// One example difference on one line: `ipp_sessions changed <key>: status created -> finalized`.
fn describe(table: &str, example: &Value) -> String {
    let kind = example["difference"].as_str().unwrap_or_default();
    let key = example["key"].as_str().unwrap_or_default();
    let (live, rebuilt) = (&example["live"], &example["rebuilt"]);
    let columns: Vec<String> = match (live.as_object(), rebuilt.as_object()) {
        (Some(l), Some(r)) => l
            .iter()
            .filter(|(column, value)| r.get(*column) != Some(*value))
            .map(|(column, value)| {
                format!(
                    "{column} {value} -> {}",
                    r.get(column).unwrap_or(&Value::Null)
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    if columns.is_empty() {
        format!("{table} {kind} {key}")
    } else {
        format!("{table} {kind} {key}: {}", columns.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_changed_row_by_its_changed_columns() {
        let example = json!({
            "difference": "changed", "key": "s1",
            "live": {"status": "created", "event_count": 3},
            "rebuilt": {"status": "finalized", "event_count": 3},
        });
        assert_eq!(
            describe("ipp_sessions", &example),
            "ipp_sessions changed s1: status \"created\" -> \"finalized\""
        );
        let added = json!({"difference": "added", "key": "s2", "live": null, "rebuilt": {}});
        assert_eq!(describe("ipp_sessions", &added), "ipp_sessions added s2");
    }
}
