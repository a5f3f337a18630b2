//! `--dry-run`: the shadow built up to exactly the live offsets, then compared with the
//! live tables row by row (rows added, changed and missing). Its SQL is built at run
//! time: it names the live and shadow schemas (checked by `schema::validate`).

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use sqlx::{PgPool, Row};

use super::{follower::Follower, RebuildArgs};
use crate::{commands::progress::Progress, config::Config, schema, store::offsets, Error};

/// One table's differences, rebuilt versus live.
#[derive(Debug, serde::Serialize)]
pub(super) struct TableDiff {
    pub(super) table: &'static str,
    pub(super) live_rows: i64,
    pub(super) rebuilt_rows: i64,
    pub(super) added: i64,
    pub(super) changed: i64,
    pub(super) missing: i64,
    pub(super) examples: Vec<Value>,
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

pub(super) async fn dry_run(
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
        let targets: BTreeMap<i32, i64> = offsets::load(admin, &config.group, &config.ipp_topic)
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
    let tables = schema::qualified_tables(live);
    sqlx::query(&format!("LOCK TABLE {tables} IN SHARE MODE"))
        .execute(&mut *tx)
        .await?;
    let targets: BTreeMap<i32, i64> = offsets::load(&mut *tx, &config.group, &config.ipp_topic)
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
