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

use super::{follower::Follower, RebuildArgs, HOLD_SCHEMA};
use crate::{config::Config, schema, Error};

/// The atomic swap. `Ok(false)`: the source could not catch up within
/// `--max-lock-ms` while the live tables were locked; nothing changed.
pub(super) async fn swap(
    config: &Config,
    args: &RebuildArgs,
    admin: &PgPool,
    follower: &mut Follower<'_>,
    source: &str,
) -> Result<bool, Error> {
    let live = config.schema.as_str();
    let previous = args.previous_schema.as_str();
    // Most of the dead-letter topic is read here, before anything is locked.
    follower.forget_parked().await?;
    let mut tx = admin.begin().await?;
    // The live projector locks ipp_projector_offsets first, then ipp_events and
    // ipp_sessions: the same order here means its batch in flight commits first and
    // its next one waits for us.
    let tables = schema::qualified_tables(live);
    // Readers queue behind a waiting lock request: do not wait long for a long query
    // or a stuck batch, try again later instead. (Runtime SQL: SET takes no parameters.)
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
    let source_tables = schema::qualified_tables(source);
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
    // Every record the swapped-in offsets pass is applied or in the dead-letter topic.
    // An error here drops the transaction: nothing is swapped.
    follower.park_skipped().await?;
    // Privileges granted on the live tables (a read-only role for analysts, a BI
    // tool) go with the name, not with the rebuilt tables: grant them there too.
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
        schema::TABLES.as_slice() as &[&str],
    )
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
