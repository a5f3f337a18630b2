//! `--dry-run`: the shadow built up to exactly the live offsets, then compared with the
//! live tables row by row (rows added, changed and missing). Its SQL is built at run
//! time: it names the live and shadow schemas (checked by `schema::validate`).

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use sqlx::{PgPool, Row};

use super::{follower::Follower, orders::OrdersFollower, swap::lock_order, RebuildArgs};
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

/// The orders model's fact tables, compared when the rebuild covers it (the view is
/// computed from them). Operations and disputes are keyed by their composite keys.
const COMPARED_ORDERS: [(&str, &str, &str); 3] = [
    ("ipp_order_facts", "order_id::text", "'{updated_at}'"),
    (
        "ipp_order_operations",
        "order_id::text || ' ' || kind || ' ' || operation_id",
        "'{}'",
    ),
    (
        "ipp_order_disputes",
        "order_id::text || ' ' || dispute_id",
        "'{}'",
    ),
];

pub(super) async fn dry_run(
    config: &Config,
    args: &RebuildArgs,
    admin: &PgPool,
    follower: &mut Follower<'_>,
    mut orders: Option<&mut OrdersFollower<'_>>,
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
    let tables = schema::qualified(live, &lock_order(orders.is_some()));
    sqlx::query(&format!("LOCK TABLE {tables} IN SHARE MODE"))
        .execute(&mut *tx)
        .await?;
    // The orders tables keep no offsets: the rebuilt ones reach the log's end of this
    // moment. A live orders consumer that lags shows its lag as rows added.
    if let Some(orders) = orders.as_deref_mut() {
        let highs = orders.highs()?;
        let within = Duration::from_millis(args.max_lock_ms.max(30_000));
        if !orders.catch_up(&highs, within).await? {
            return Err(Error::Operation(
                "the rebuilt orders could not reach the log's end".into(),
            ));
        }
    }
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
    let compared = COMPARED.iter().chain(
        orders
            .is_some()
            .then_some(COMPARED_ORDERS.iter())
            .into_iter()
            .flatten(),
    );
    for &(table, key, ignored) in compared {
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
