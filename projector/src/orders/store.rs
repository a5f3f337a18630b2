//! Merging facts into `ipp_order_facts`, `ipp_order_operations` and `ipp_order_disputes`.
//! Every column keeps the least, or the latest by a total order (time, then id), of what
//! was merged into it, so a fact merged twice, or facts merged in any order, leave the
//! same row (see migrations/1002_orders.sql).

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};

use super::facts::{Fact, Listed};
use crate::Error;

/// Merges `facts` in one transaction. Facts are applied in a fixed order (by order id)
/// so that two consumers merging overlapping batches during a rebalance take their row
/// locks in the same order. No facts, no transaction: most IPP events carry none, and
/// an empty transaction would still cost two round trips.
pub async fn merge(pool: &PgPool, facts: &mut [Fact]) -> Result<(), Error> {
    if facts.is_empty() {
        return Ok(());
    }
    facts.sort_by_key(Fact::order_id);
    let mut tx = pool.begin().await?;
    for fact in facts.iter() {
        merge_one(&mut tx, fact).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn merge_one(tx: &mut Transaction<'_, Postgres>, fact: &Fact) -> Result<(), Error> {
    match fact {
        Fact::Finalized {
            order_id,
            session_id,
            merchant_id,
            at,
            event_id,
        } => {
            sqlx::query!(
                "INSERT INTO ipp_order_facts AS f
                     (order_id, session_id, merchant_id, finalized_at, finalized_event_id)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (order_id) DO UPDATE SET
                     session_id = excluded.session_id,
                     merchant_id = excluded.merchant_id,
                     finalized_at = excluded.finalized_at,
                     finalized_event_id = excluded.finalized_event_id,
                     updated_at = now()
                 WHERE f.finalized_at IS NULL
                    OR (excluded.finalized_at, excluded.finalized_event_id)
                       < (f.finalized_at, f.finalized_event_id)",
                order_id,
                session_id,
                merchant_id.as_deref(),
                at,
                event_id,
            )
            .execute(&mut **tx)
            .await?;
        }
        Fact::Reported {
            order_id,
            kind,
            operation_id,
            at,
            event_id,
        } => {
            sqlx::query!(
                "INSERT INTO ipp_order_operations AS o
                     (order_id, kind, operation_id, reported_at, reported_event_id)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (order_id, kind, operation_id) DO UPDATE SET
                     reported_at = excluded.reported_at,
                     reported_event_id = excluded.reported_event_id
                 WHERE o.reported_at IS NULL
                    OR (excluded.reported_at, excluded.reported_event_id)
                       < (o.reported_at, o.reported_event_id)",
                order_id,
                kind.as_str(),
                operation_id,
                at,
                event_id,
            )
            .execute(&mut **tx)
            .await?;
        }
        Fact::Dispute {
            order_id,
            dispute_id,
            status,
            at,
            event_id,
        } => {
            sqlx::query!(
                "INSERT INTO ipp_order_disputes AS d
                     (order_id, dispute_id, status, opened_at, event_at, event_id)
                 VALUES ($1, $2, $3, $4, $4, $5)
                 ON CONFLICT (order_id, dispute_id) DO UPDATE SET
                     opened_at = LEAST(d.opened_at, excluded.opened_at),
                     status = CASE WHEN (excluded.event_at, excluded.event_id) > (d.event_at, d.event_id)
                                   THEN excluded.status ELSE d.status END,
                     event_id = CASE WHEN (excluded.event_at, excluded.event_id) > (d.event_at, d.event_id)
                                     THEN excluded.event_id ELSE d.event_id END,
                     event_at = GREATEST(d.event_at, excluded.event_at)",
                order_id,
                dispute_id,
                status.as_deref(),
                at,
                event_id,
            )
            .execute(&mut **tx)
            .await?;
        }
        Fact::Made {
            order_id,
            kind,
            operation_id,
            action,
            command_id,
            amount,
            at,
        } => {
            sqlx::query!(
                "INSERT INTO ipp_order_operations AS o
                     (order_id, kind, operation_id, action, command_id, our_amount, made_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (order_id, kind, operation_id) DO UPDATE SET
                     action = excluded.action,
                     command_id = excluded.command_id,
                     our_amount = excluded.our_amount,
                     made_at = excluded.made_at
                 WHERE o.action IS NULL OR excluded.action < o.action",
                order_id,
                kind.as_str(),
                operation_id,
                action,
                *command_id,
                *amount,
                at,
            )
            .execute(&mut **tx)
            .await?;
        }
        Fact::Read {
            order_id,
            read_id,
            at,
            status,
            currency,
            authorized_amount,
            captured_amount,
            refunded_amount,
            remaining_authorized_amount,
            listed,
        } => {
            sqlx::query!(
                "INSERT INTO ipp_order_facts AS f
                     (order_id, read_at, read_id, om_status, currency, authorized_amount,
                      captured_amount, refunded_amount, remaining_authorized_amount)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (order_id) DO UPDATE SET
                     read_at = excluded.read_at,
                     read_id = excluded.read_id,
                     om_status = excluded.om_status,
                     currency = excluded.currency,
                     authorized_amount = excluded.authorized_amount,
                     captured_amount = excluded.captured_amount,
                     refunded_amount = excluded.refunded_amount,
                     remaining_authorized_amount = excluded.remaining_authorized_amount,
                     updated_at = now()
                 WHERE f.read_at IS NULL OR (excluded.read_at, excluded.read_id) > (f.read_at, f.read_id)",
                order_id,
                at,
                read_id,
                status.as_deref(),
                currency.as_deref(),
                *authorized_amount,
                *captured_amount,
                *refunded_amount,
                *remaining_authorized_amount,
            )
            .execute(&mut **tx)
            .await?;
            for Listed {
                kind,
                operation_id,
                amount,
            } in listed
            {
                sqlx::query!(
                    "INSERT INTO ipp_order_operations AS o
                         (order_id, kind, operation_id, listed_at, listed_amount,
                          listed_read_at, listed_read_id)
                     VALUES ($1, $2, $3, $4, $5, $4, $6)
                     ON CONFLICT (order_id, kind, operation_id) DO UPDATE SET
                         listed_at = LEAST(o.listed_at, excluded.listed_at),
                         listed_amount = CASE
                             WHEN o.listed_read_at IS NULL
                               OR (excluded.listed_read_at, excluded.listed_read_id)
                                  > (o.listed_read_at, o.listed_read_id)
                             THEN excluded.listed_amount ELSE o.listed_amount END,
                         listed_read_id = CASE
                             WHEN o.listed_read_at IS NULL
                               OR (excluded.listed_read_at, excluded.listed_read_id)
                                  > (o.listed_read_at, o.listed_read_id)
                             THEN excluded.listed_read_id ELSE o.listed_read_id END,
                         listed_read_at = GREATEST(o.listed_read_at, excluded.listed_read_at)",
                    order_id,
                    kind.as_str(),
                    operation_id,
                    at,
                    *amount,
                    read_id,
                )
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    Ok(())
}

/// Writes the confirmation timeout the `ipp_orders` view judges by.
pub async fn set_confirmation_timeout(pool: &PgPool, timeout: Duration) -> Result<(), Error> {
    let seconds = timeout.as_secs_f64();
    sqlx::query!(
        "UPDATE ipp_orders_settings SET confirmation_timeout = make_interval(secs => $1)",
        seconds,
    )
    .execute(pool)
    .await?;
    Ok(())
}
