//! Merging facts into `ipp_order_facts`, `ipp_order_operations` and `ipp_order_disputes`.
//! Every column keeps the least, or the latest by a total order (time, then id), of what
//! was merged into it, so a fact merged twice, or facts merged in any order, leave the
//! same row (see migrations/1002_orders.sql).

use std::{
    collections::{btree_map::Entry, BTreeMap},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::facts::{Fact, Listed, OperationKind};
use crate::Error;

/// Merges `facts` in one transaction. No facts, no transaction: most IPP events carry
/// none, and an empty transaction would still cost two round trips.
///
/// The facts are reduced in memory to one per row, the one the row's rule keeps, and
/// each kind is merged in one statement: a statement per fact was a round trip each,
/// and the orders model took twice as long as the sessions to catch up on a log.
///
/// Each statement takes its rows' locks in key order. Two consumers whose batches share
/// an order (its facts come from three topics, so from any partition) can still meet in
/// a cycle across statements, as they could across the one-by-one statements before:
/// PostgreSQL aborts one (SQLSTATE 40P01) and the caller merges that batch again. (An
/// advisory lock per order taken first would rule the cycle out, but it also made the
/// rebuild's swap wait for the live consumer, which waits for the swap's table locks.)
pub async fn merge(pool: &PgPool, facts: &[Fact]) -> Result<(), Error> {
    if facts.is_empty() {
        return Ok(());
    }
    let mut reduced = Reduced::default();
    for fact in facts {
        reduced.add(fact);
    }
    let mut tx = pool.begin().await?;
    merge_finalized(&mut tx, &reduced.finalized).await?;
    merge_reported(&mut tx, &reduced.reported).await?;
    merge_made(&mut tx, &reduced.made).await?;
    merge_read(&mut tx, &reduced.read).await?;
    merge_listed(&mut tx, &reduced.listed).await?;
    merge_disputes(&mut tx, &reduced.disputes).await?;
    tx.commit().await?;
    Ok(())
}

/// Rows keyed by one operation of an order.
type OperationKey<'a> = (Uuid, OperationKind, &'a str);

/// One fact per row: the one the row would keep had the facts been merged one by one
/// in this order (a later fact replaces an earlier one only if the row's rule strictly
/// prefers it, as the statements' `WHERE` does).
#[derive(Default)]
struct Reduced<'a> {
    finalized: BTreeMap<Uuid, Finalized<'a>>,
    /// The earliest report: least (at, event id).
    reported: BTreeMap<OperationKey<'a>, (DateTime<Utc>, &'a str)>,
    made: BTreeMap<OperationKey<'a>, Made<'a>>,
    read: BTreeMap<Uuid, Read<'a>>,
    listed: BTreeMap<OperationKey<'a>, ListedRow>,
    disputes: BTreeMap<(Uuid, &'a str), DisputeRow<'a>>,
}

struct Finalized<'a> {
    session_id: Uuid,
    merchant_id: Option<&'a str>,
    at: DateTime<Utc>,
    event_id: &'a str,
}

struct Made<'a> {
    action: &'a str,
    command_id: Option<Uuid>,
    amount: Option<i64>,
    at: DateTime<Utc>,
}

struct Read<'a> {
    /// (at, read id): the order keeps the greatest.
    latest: (DateTime<Utc>, Uuid),
    status: Option<&'a str>,
    currency: Option<&'a str>,
    authorized_amount: Option<i64>,
    captured_amount: Option<i64>,
    refunded_amount: Option<i64>,
    remaining_authorized_amount: Option<i64>,
}

/// What the reads listing one operation leave in its row: the earliest read's time,
/// and the amount of the latest by (time, read id).
struct ListedRow {
    first_at: DateTime<Utc>,
    latest: (DateTime<Utc>, Uuid),
    amount: Option<i64>,
}

/// What a dispute's events leave in its row: the earliest event's time, and the status
/// of the latest by (time, event id).
struct DisputeRow<'a> {
    opened_at: DateTime<Utc>,
    latest: (DateTime<Utc>, &'a str),
    status: Option<&'a str>,
}

impl<'a> Reduced<'a> {
    fn add(&mut self, fact: &'a Fact) {
        match fact {
            Fact::Finalized {
                order_id,
                session_id,
                merchant_id,
                at,
                event_id,
            } => {
                let new = Finalized {
                    session_id: *session_id,
                    merchant_id: merchant_id.as_deref(),
                    at: *at,
                    event_id,
                };
                // The earliest finalization: least (at, event id).
                keep(&mut self.finalized, *order_id, new, |new, old| {
                    (new.at, new.event_id) < (old.at, old.event_id)
                });
            }
            Fact::Reported {
                order_id,
                kind,
                operation_id,
                at,
                event_id,
            } => {
                let key = (*order_id, *kind, operation_id.as_str());
                keep(&mut self.reported, key, (*at, event_id), |new, old| {
                    new < old
                });
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
                let key = (*order_id, *kind, operation_id.as_str());
                let new = Made {
                    action,
                    command_id: *command_id,
                    amount: *amount,
                    at: *at,
                };
                // The least action key.
                keep(&mut self.made, key, new, |new, old| new.action < old.action);
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
                let read = (*at, *read_id);
                let new = Read {
                    latest: read,
                    status: status.as_deref(),
                    currency: currency.as_deref(),
                    authorized_amount: *authorized_amount,
                    captured_amount: *captured_amount,
                    refunded_amount: *refunded_amount,
                    remaining_authorized_amount: *remaining_authorized_amount,
                };
                keep(&mut self.read, *order_id, new, |new, old| {
                    new.latest > old.latest
                });
                for Listed {
                    kind,
                    operation_id,
                    amount,
                } in listed
                {
                    let key = (*order_id, *kind, operation_id.as_str());
                    let new = ListedRow {
                        first_at: *at,
                        latest: read,
                        amount: *amount,
                    };
                    fold(&mut self.listed, key, new, |row, new| {
                        row.first_at = row.first_at.min(new.first_at);
                        if new.latest > row.latest {
                            row.latest = new.latest;
                            row.amount = new.amount;
                        }
                    });
                }
            }
            Fact::Dispute {
                order_id,
                dispute_id,
                status,
                at,
                event_id,
            } => {
                let new = DisputeRow {
                    opened_at: *at,
                    latest: (*at, event_id),
                    status: status.as_deref(),
                };
                fold(
                    &mut self.disputes,
                    (*order_id, dispute_id),
                    new,
                    |row, new| {
                        row.opened_at = row.opened_at.min(new.opened_at);
                        if new.latest > row.latest {
                            row.latest = new.latest;
                            row.status = new.status;
                        }
                    },
                );
            }
        }
    }
}

/// Inserts `new` under `key`, or replaces what is there if `prefers(new, old)`.
fn keep<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, new: V, prefers: impl Fn(&V, &V) -> bool) {
    fold(map, key, new, |old, new| {
        if prefers(&new, old) {
            *old = new;
        }
    });
}

/// Inserts `new` under `key`, or folds it into what is there with `merge(old, new)`.
fn fold<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, new: V, merge: impl FnOnce(&mut V, V)) {
    match map.entry(key) {
        Entry::Vacant(slot) => {
            slot.insert(new);
        }
        Entry::Occupied(mut slot) => merge(slot.get_mut(), new),
    }
}

/// The key columns of rows keyed by operation: order ids, kinds, operation ids.
fn operation_keys<'a, V>(
    rows: &BTreeMap<OperationKey<'a>, V>,
) -> (Vec<Uuid>, Vec<&'static str>, Vec<&'a str>) {
    let orders = rows.keys().map(|k| k.0).collect();
    let kinds = rows.keys().map(|k| k.1.as_str()).collect();
    let operations = rows.keys().map(|k| k.2).collect();
    (orders, kinds, operations)
}

/// One column of `rows`' values.
fn column<V, T>(rows: &BTreeMap<impl Ord, V>, f: impl Fn(&V) -> T) -> Vec<T> {
    rows.values().map(f).collect()
}

async fn merge_finalized(
    tx: &mut Transaction<'_, Postgres>,
    rows: &BTreeMap<Uuid, Finalized<'_>>,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = rows.keys().copied().collect();
    sqlx::query!(
        "INSERT INTO ipp_order_facts AS f
             (order_id, session_id, merchant_id, finalized_at, finalized_event_id)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[])
         ON CONFLICT (order_id) DO UPDATE SET
             session_id = excluded.session_id,
             merchant_id = excluded.merchant_id,
             finalized_at = excluded.finalized_at,
             finalized_event_id = excluded.finalized_event_id,
             updated_at = now()
         WHERE f.finalized_at IS NULL
            OR (excluded.finalized_at, excluded.finalized_event_id)
               < (f.finalized_at, f.finalized_event_id)",
        &orders[..],
        &column(rows, |r| r.session_id)[..],
        &column(rows, |r| r.merchant_id)[..] as &[Option<&str>],
        &column(rows, |r| r.at)[..],
        &column(rows, |r| r.event_id)[..] as &[&str],
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn merge_reported(
    tx: &mut Transaction<'_, Postgres>,
    rows: &BTreeMap<OperationKey<'_>, (DateTime<Utc>, &str)>,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (orders, kinds, operations) = operation_keys(rows);
    sqlx::query!(
        "INSERT INTO ipp_order_operations AS o
             (order_id, kind, operation_id, reported_at, reported_event_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
         ON CONFLICT (order_id, kind, operation_id) DO UPDATE SET
             reported_at = excluded.reported_at,
             reported_event_id = excluded.reported_event_id
         WHERE o.reported_at IS NULL
            OR (excluded.reported_at, excluded.reported_event_id)
               < (o.reported_at, o.reported_event_id)",
        &orders[..],
        &kinds[..] as &[&str],
        &operations[..] as &[&str],
        &column(rows, |r| r.0)[..],
        &column(rows, |r| r.1)[..] as &[&str],
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn merge_made(
    tx: &mut Transaction<'_, Postgres>,
    rows: &BTreeMap<OperationKey<'_>, Made<'_>>,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (orders, kinds, operations) = operation_keys(rows);
    sqlx::query!(
        "INSERT INTO ipp_order_operations AS o
             (order_id, kind, operation_id, action, command_id, our_amount, made_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[],
                              $6::int8[], $7::timestamptz[])
         ON CONFLICT (order_id, kind, operation_id) DO UPDATE SET
             action = excluded.action,
             command_id = excluded.command_id,
             our_amount = excluded.our_amount,
             made_at = excluded.made_at
         WHERE o.action IS NULL OR excluded.action < o.action",
        &orders[..],
        &kinds[..] as &[&str],
        &operations[..] as &[&str],
        &column(rows, |m| m.action)[..] as &[&str],
        &column(rows, |m| m.command_id)[..] as &[Option<Uuid>],
        &column(rows, |m| m.amount)[..] as &[Option<i64>],
        &column(rows, |m| m.at)[..],
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn merge_read(
    tx: &mut Transaction<'_, Postgres>,
    rows: &BTreeMap<Uuid, Read<'_>>,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = rows.keys().copied().collect();
    sqlx::query!(
        "INSERT INTO ipp_order_facts AS f
             (order_id, read_at, read_id, om_status, currency, authorized_amount,
              captured_amount, refunded_amount, remaining_authorized_amount)
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::uuid[], $4::text[],
                              $5::text[], $6::int8[], $7::int8[], $8::int8[], $9::int8[])
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
        &orders[..],
        &column(rows, |r| r.latest.0)[..],
        &column(rows, |r| r.latest.1)[..],
        &column(rows, |r| r.status)[..] as &[Option<&str>],
        &column(rows, |r| r.currency)[..] as &[Option<&str>],
        &column(rows, |r| r.authorized_amount)[..] as &[Option<i64>],
        &column(rows, |r| r.captured_amount)[..] as &[Option<i64>],
        &column(rows, |r| r.refunded_amount)[..] as &[Option<i64>],
        &column(rows, |r| r.remaining_authorized_amount)[..] as &[Option<i64>],
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn merge_listed(
    tx: &mut Transaction<'_, Postgres>,
    rows: &BTreeMap<OperationKey<'_>, ListedRow>,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (orders, kinds, operations) = operation_keys(rows);
    sqlx::query!(
        "INSERT INTO ipp_order_operations AS o
             (order_id, kind, operation_id, listed_at, listed_amount,
              listed_read_at, listed_read_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[],
                              $5::int8[], $6::timestamptz[], $7::uuid[])
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
        &orders[..],
        &kinds[..] as &[&str],
        &operations[..] as &[&str],
        &column(rows, |r| r.first_at)[..],
        &column(rows, |r| r.amount)[..] as &[Option<i64>],
        &column(rows, |r| r.latest.0)[..],
        &column(rows, |r| r.latest.1)[..],
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn merge_disputes(
    tx: &mut Transaction<'_, Postgres>,
    rows: &BTreeMap<(Uuid, &str), DisputeRow<'_>>,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = rows.keys().map(|k| k.0).collect();
    let disputes: Vec<&str> = rows.keys().map(|k| k.1).collect();
    sqlx::query!(
        "INSERT INTO ipp_order_disputes AS d
             (order_id, dispute_id, status, opened_at, event_at, event_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[],
                              $5::timestamptz[], $6::text[])
         ON CONFLICT (order_id, dispute_id) DO UPDATE SET
             opened_at = LEAST(d.opened_at, excluded.opened_at),
             status = CASE WHEN (excluded.event_at, excluded.event_id) > (d.event_at, d.event_id)
                           THEN excluded.status ELSE d.status END,
             event_id = CASE WHEN (excluded.event_at, excluded.event_id) > (d.event_at, d.event_id)
                             THEN excluded.event_id ELSE d.event_id END,
             event_at = GREATEST(d.event_at, excluded.event_at)",
        &orders[..],
        &disputes[..] as &[&str],
        &column(rows, |r| r.status)[..] as &[Option<&str>],
        &column(rows, |r| r.opened_at)[..],
        &column(rows, |r| r.latest.0)[..],
        &column(rows, |r| r.latest.1)[..] as &[&str],
    )
    .execute(&mut **tx)
    .await?;
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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, second).unwrap()
    }

    fn finalized(order_id: Uuid, second: u32, event_id: &str) -> Fact {
        Fact::Finalized {
            order_id,
            session_id: Uuid::new_v4(),
            merchant_id: Some(event_id.to_owned()),
            at: at(second),
            event_id: event_id.to_owned(),
        }
    }

    fn made(order_id: Uuid, action: &str, amount: i64) -> Fact {
        Fact::Made {
            order_id,
            kind: OperationKind::Capture,
            operation_id: "cap-1".into(),
            action: action.into(),
            command_id: None,
            amount: Some(amount),
            at: at(0),
        }
    }

    #[test]
    fn each_row_keeps_the_fact_its_rule_prefers_and_the_first_of_a_tie() {
        let order = Uuid::new_v4();
        let facts = [
            finalized(order, 5, "evt-b"),
            finalized(order, 3, "evt-z"), // earlier: replaces
            finalized(order, 3, "evt-a"), // same time, lesser id: replaces
            finalized(order, 3, "evt-a"), // a duplicate: the first stays
            finalized(order, 9, "evt-0"),
            made(order, "capture:2", 200),
            made(order, "capture:1", 100), // the least action key
            made(order, "capture:3", 300),
        ];
        let mut reduced = Reduced::default();
        facts.iter().for_each(|f| reduced.add(f));

        assert_eq!(reduced.finalized.len(), 1);
        let kept = &reduced.finalized[&order];
        assert_eq!((kept.at, kept.event_id), (at(3), "evt-a"));
        let Fact::Finalized { session_id, .. } = &facts[2] else {
            unreachable!()
        };
        assert_eq!(
            kept.session_id, *session_id,
            "the first of the tie, with its columns"
        );
        let (_, made) = reduced.made.iter().next().expect("one operation");
        assert_eq!((made.action, made.amount), ("capture:1", Some(100)));
    }

    fn read(order_id: Uuid, second: u32, amount: i64) -> Fact {
        Fact::Read {
            order_id,
            read_id: Uuid::new_v4(),
            at: at(second),
            status: Some(format!("read at {second}")),
            currency: None,
            authorized_amount: None,
            captured_amount: Some(amount),
            refunded_amount: None,
            remaining_authorized_amount: None,
            listed: vec![Listed {
                kind: OperationKind::Capture,
                operation_id: "cap-1".into(),
                amount: Some(amount),
            }],
        }
    }

    #[test]
    fn a_listed_operation_keeps_the_earliest_read_time_and_the_latest_reads_amount() {
        let order = Uuid::new_v4();
        let facts = [read(order, 5, 100), read(order, 3, 50), read(order, 4, 70)];
        let mut reduced = Reduced::default();
        facts.iter().for_each(|f| reduced.add(f));

        let kept = &reduced.read[&order];
        assert_eq!(kept.latest.0, at(5));
        assert_eq!(
            (kept.status, kept.captured_amount),
            (Some("read at 5"), Some(100)),
            "the latest read is the order's, with its columns"
        );
        let listed = reduced.listed.values().next().expect("one operation");
        assert_eq!(listed.first_at, at(3));
        assert_eq!((listed.latest.0, listed.amount), (at(5), Some(100)));
    }

    fn dispute(order_id: Uuid, second: u32, event_id: &str, status: &str) -> Fact {
        Fact::Dispute {
            order_id,
            dispute_id: "d-1".into(),
            status: Some(status.into()),
            at: at(second),
            event_id: event_id.into(),
        }
    }

    #[test]
    fn a_dispute_keeps_its_earliest_time_and_the_latest_events_status() {
        let order = Uuid::new_v4();
        let facts = [
            dispute(order, 4, "evt-b", "under_review"),
            dispute(order, 2, "evt-a", "opened"),
            dispute(order, 6, "evt-c", "won"),
            dispute(order, 6, "evt-c", "lost"), // a tie: the first stays
        ];
        let mut reduced = Reduced::default();
        facts.iter().for_each(|f| reduced.add(f));

        assert_eq!(reduced.disputes.len(), 1);
        let row = &reduced.disputes[&(order, "d-1")];
        assert_eq!(row.opened_at, at(2));
        assert_eq!((row.latest, row.status), ((at(6), "evt-c"), Some("won")));
    }
}
