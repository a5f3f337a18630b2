//! The swap: one transaction that locks the live tables, catches the source up to the
//! live offsets, checks the history is complete, parks the poison records the source
//! skipped that nobody parked, and moves the tables between schemas
//! (the only place, with [`super::diff`], where schema names go into SQL: they were
//! validated by `schema::validate`).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use sqlx::{PgPool, Row};
use tracing::info;

use super::{follower::Follower, orders::OrdersFollower, RebuildArgs, HOLD_SCHEMA};
use crate::{config::Config, schema, Error};

/// The atomic swap. `Ok(false)`: the source could not catch up within
/// `--max-lock-ms` while the live tables were locked; nothing changed.
pub(super) async fn swap(
    config: &Config,
    args: &RebuildArgs,
    admin: &PgPool,
    follower: &mut Follower<'_>,
    mut orders: Option<&mut OrdersFollower<'_>>,
    source: &str,
) -> Result<bool, Error> {
    let live = config.schema.as_str();
    let previous = args.previous_schema.as_str();
    // The relations this swap moves: the sessions model's, and the orders model's with
    // its view when the rebuild covers it.
    let mut tables: Vec<&str> = schema::TABLES.to_vec();
    if orders.is_some() {
        tables.extend(schema::ORDERS_TABLES);
    }
    // Most of the dead-letter topic is read here, before anything is locked.
    follower.forget_parked().await?;
    let mut tx = admin.begin().await?;
    // The live projector locks ipp_projector_offsets first, then ipp_events and
    // ipp_sessions: the same order here means its batch in flight commits first and
    // its next one waits for us. The orders tables come after (see ORDERS_TABLES).
    let locked_tables = schema::qualified(live, &lock_order(orders.is_some()));
    // Readers queue behind a waiting lock request: do not wait long for a long query
    // or a stuck batch, try again later instead. (Runtime SQL: SET takes no parameters.)
    sqlx::query(&format!("SET LOCAL lock_timeout = {}", args.lock_wait_ms))
        .execute(&mut *tx)
        .await?;
    let locked = sqlx::query(&format!(
        "LOCK TABLE {locked_tables} IN ACCESS EXCLUSIVE MODE"
    ))
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
    sqlx::query!("SET LOCAL lock_timeout = 0")
        .execute(&mut *tx)
        .await?;
    // Runtime SQL from here on where a schema name is in the text (see the module header).
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
    // The live orders consumer cannot merge now: whatever it merged came from below the
    // high watermarks of this moment, and the rebuilt orders tables reach them.
    if let Some(orders) = orders.as_deref_mut() {
        let highs = orders.highs()?;
        let remaining =
            Duration::from_millis(args.max_lock_ms).saturating_sub(lock_started.elapsed());
        if !orders.catch_up(&highs, remaining).await? {
            tx.rollback().await?;
            info!("the rebuilt orders did not reach the log's end in time, retrying the swap");
            return Ok(false);
        }
        // The live setting (PROJECTOR_ORDERS_CONFIRMATION_TIMEOUT_SECS) stays.
        sqlx::query(&format!(
            "UPDATE {source}.ipp_orders_settings
             SET confirmation_timeout = (SELECT confirmation_timeout FROM {live}.ipp_orders_settings)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    let source_tables = schema::qualified(source, &lock_order(orders.is_some()));
    sqlx::query(&format!(
        "LOCK TABLE {source_tables} IN ACCESS EXCLUSIVE MODE"
    ))
    .execute(&mut *tx)
    .await?;
    if args.checks_history() {
        // Retention may have deleted a segment while the shadow was built.
        let mut checked = complete_history(&config.ipp_topic, &follower.lows()?);
        if let Some(orders) = orders.as_deref() {
            for (topic, lows) in orders.lows_by_topic()? {
                checked = checked.and_then(|()| complete_history(&topic, &lows));
            }
        }
        let checked = match checked {
            Ok(()) => no_fewer_events(&mut tx, live, source).await,
            refused => refused,
        };
        if let Err(refused) = checked {
            tx.rollback().await?;
            return Err(refused);
        }
    }
    // Every record the swapped-in offsets pass is applied or in the dead-letter topic.
    // An error here drops the transaction: nothing is swapped.
    follower.park_skipped().await?;
    // Privileges granted on the live tables (a read-only role for analysts, a BI
    // tool, the services' roles) go with the name, not with the rebuilt tables: grant
    // them there too.
    let mut relations = tables.clone();
    if orders.is_some() {
        relations.push(schema::ORDERS_VIEW);
    }
    let mut statements: Vec<String> = sqlx::query_scalar!(
        r#"SELECT format('GRANT %s ON %I.%I TO %s%s', a.privilege_type, $2::text, c.relname,
                       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
                       CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) AS "grant!"
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN LATERAL aclexplode(c.relacl) a
         LEFT JOIN pg_roles r ON r.oid = a.grantee
         WHERE n.nspname = $1 AND c.relname = ANY($3) AND a.grantee <> c.relowner"#,
        live,
        source,
        relations.as_slice() as &[&str],
    )
    .fetch_all(&mut *tx)
    .await?;
    statements.extend([
        format!("CREATE SCHEMA {HOLD_SCHEMA}"),
        format!("CREATE SCHEMA IF NOT EXISTS {previous}"),
    ]);
    // Each view moves with the tables it reads (it binds them by OID, not by name), and
    // an older previous version's view goes before the tables it depends on.
    let view = orders.is_some().then_some(schema::ORDERS_VIEW);
    let moves = |from: &str, to: &str| {
        let mut moved: Vec<String> = tables
            .iter()
            .map(|table| format!("ALTER TABLE {from}.{table} SET SCHEMA {to}"))
            .collect();
        moved.extend(view.map(|v| format!("ALTER VIEW {from}.{v} SET SCHEMA {to}")));
        moved
    };
    statements.extend(moves(live, HOLD_SCHEMA));
    statements.extend(moves(source, live));
    statements.extend(view.map(|v| format!("DROP VIEW IF EXISTS {previous}.{v}")));
    for table in &tables {
        statements.push(format!("DROP TABLE IF EXISTS {previous}.{table}"));
    }
    statements.extend(moves(HOLD_SCHEMA, previous));
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

/// The relations a swap locks, in the order that cannot deadlock: the session
/// projector's tables in its own order, then the orders view before its tables. A
/// reader of `ipp_orders` (the projector's gauge, a dashboard) holds the view while it
/// waits for the tables: taking the view first lets it finish before we take them.
/// (Locking a view also locks the tables it reads, in the same mode.)
pub(super) fn lock_order(with_orders: bool) -> Vec<&'static str> {
    let mut relations = schema::TABLES.to_vec();
    if with_orders {
        relations.push(schema::ORDERS_VIEW);
        relations.extend(schema::ORDERS_TABLES);
    }
    relations
}

/// Refuses a history that does not start at offset 0 on every partition.
pub(super) fn complete_history(topic: &str, lows: &BTreeMap<i32, i64>) -> Result<(), Error> {
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
