//! The `ipp_actions` ledger: every action this service takes, and how it ended.
//!
//! The row is written before anything else happens, and every later step (the idempotency
//! key, that a capture was requested and for how much, its outcome) is written before or
//! right after the call it describes, so a crash at any point leaves enough to resume
//! without moving money twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ipp_schemas::{Command, CommandKind};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub mod outbox;
pub mod requeue;

#[cfg(test)]
mod claim_tests;

/// Namespace of the idempotency keys: `key = UUIDv5(IDEMPOTENCY_NAMESPACE,
/// "{action}:{order_id}")` (UUIDv5 of the URL
/// `https://github.com/ipp-pipeline/ipp-pipeline/ipp-actions`).
pub const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x3d14a510_fabd_52f4_8d78_27913cea6615);

/// The action of an order's automatic capture (one per order). A command's action is
/// `{kind}:{command_id}` ([`command_action`]).
pub const CAPTURE: &str = "capture";

/// The ledger action of a command: one row, and one idempotency key, per command.
pub fn command_action(kind: CommandKind, command_id: Uuid) -> String {
    format!("{kind}:{command_id}")
}

/// The kind of the ledger's `observe` rows: a read of the order prompted by a Kustom
/// event, which moves no money.
pub const OBSERVE: &str = "observe";

/// The ledger action of the read prompted by the Kustom event `event_id`: one row per
/// event, whatever its redeliveries.
pub fn observe_action(event_id: &str) -> String {
    format!("{OBSERVE}:{event_id}")
}

/// What a ledger row does: one of the money operations, or a read of the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Money(CommandKind),
    Observe,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Money(kind) => kind.as_str(),
            Self::Observe => OBSERVE,
        }
    }

    /// The kind of a row's `kind` column; `None` for one this version does not know.
    pub fn parse(value: &str) -> Option<Self> {
        if value == OBSERVE {
            return Some(Self::Observe);
        }
        CommandKind::parse(value).map(Self::Money)
    }
}

impl From<CommandKind> for ActionKind {
    fn from(kind: CommandKind) -> Self {
        Self::Money(kind)
    }
}

/// The deterministic `Klarna-Idempotency-Key` of an action on an order.
pub fn idempotency_key(action: &str, order_id: Uuid) -> Uuid {
    Uuid::new_v5(
        &IDEMPOTENCY_NAMESPACE,
        format!("{action}:{order_id}").as_bytes(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Succeeded,
    Skipped,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }
}

/// What the consumer knows when it records an action.
#[derive(Debug, Clone)]
pub struct NewAction {
    pub order_id: Uuid,
    pub action: String,
    pub kind: ActionKind,
    /// The finalized session of an automatic capture.
    pub session_id: Option<Uuid>,
    pub merchant_id: Option<String>,
    /// The webhook's event id, or a command's id.
    pub event_id: String,
    /// The Kustom event's type, for an `observe` row.
    pub event_type: Option<String>,
    pub command: Option<CommandFields>,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// `Skipped` with a reason when the policy says to take no action.
    pub skip_reason: Option<String>,
    /// The record's `traceparent` header: the trace its Order Management calls join.
    pub traceparent: Option<String>,
}

/// What a command adds to its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFields {
    pub command_id: Uuid,
    pub amount: Option<i64>,
    pub reference: Option<String>,
    pub description: Option<String>,
    pub issued_by: String,
}

impl NewAction {
    /// The row of a command read from the commands topic.
    pub fn command(command: &Command, topic: &str, partition: i32, offset: i64) -> Self {
        Self {
            order_id: command.order_id,
            action: command_action(command.kind, command.command_id),
            kind: command.kind.into(),
            session_id: None,
            merchant_id: None,
            event_id: command.command_id.to_string(),
            event_type: None,
            command: Some(CommandFields {
                command_id: command.command_id,
                amount: command.amount,
                reference: command.reference.clone(),
                description: command.description.clone(),
                issued_by: command.issued_by.clone(),
            }),
            source_topic: topic.to_owned(),
            source_partition: partition,
            source_offset: offset,
            skip_reason: None,
            traceparent: None,
        }
    }

    /// The `observe` row of a Kustom order event (`event_id` of type `event_type`, about
    /// `order_id`) read from the Kustom events topic.
    pub fn observe(
        order_id: Uuid,
        event_id: &str,
        event_type: &str,
        merchant_id: Option<String>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Self {
        Self {
            order_id,
            action: observe_action(event_id),
            kind: ActionKind::Observe,
            session_id: None,
            merchant_id,
            event_id: event_id.to_owned(),
            event_type: Some(event_type.to_owned()),
            command: None,
            source_topic: topic.to_owned(),
            source_partition: partition,
            source_offset: offset,
            skip_reason: None,
            traceparent: None,
        }
    }
}

/// One ledger row, as the worker sees it.
#[derive(Debug, Clone)]
pub struct Action {
    pub order_id: Uuid,
    pub action: String,
    /// `capture`, `refund`, `cancel`, `release_remaining_authorization` or `observe`.
    pub kind: String,
    pub command_id: Option<Uuid>,
    pub reference: Option<String>,
    pub description: Option<String>,
    pub session_id: Option<Uuid>,
    pub merchant_id: Option<String>,
    pub event_id: String,
    pub attempts: i32,
    pub idempotency_key: Uuid,
    pub requested_amount: Option<i64>,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub created_at: DateTime<Utc>,
    /// The token of this worker's claim: every write of the attempt is guarded by it.
    pub claim_token: Uuid,
    /// The trace of the record the action came from (see [`NewAction::traceparent`]).
    pub traceparent: Option<String>,
}

/// How an attempt ended, as written to the row.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub reason: Option<String>,
    pub capture_id: Option<String>,
    pub captured_amount: Option<i64>,
    pub refund_id: Option<String>,
    pub refunded_amount: Option<i64>,
    /// Order Management's `error_code` of a refusal.
    pub error_code: Option<String>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    /// What an `observe` row read: the order's JSON as Order Management answered it.
    pub observation: Option<Value>,
}

/// Applies the ledger migrations (numbered 2001+). The projector owns 1001+ in the same
/// database with its own migrator, so each ignores the other's versions; sqlx's advisory
/// lock serializes them.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}

/// The ledger's migrations, embedded; applied versions it does not know are ignored.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!();
    migrator.set_ignore_missing(true);
    migrator
}

/// Records an action once; a second call for the same (order, action), or the same
/// command id, changes nothing. Returns whether a row was created.
pub async fn record(pool: &PgPool, new: &NewAction) -> Result<bool, sqlx::Error> {
    let status = if new.skip_reason.is_some() {
        Status::Skipped
    } else {
        Status::Pending
    };
    let command = new.command.as_ref();
    // A command's amount is fixed from the start: every attempt sends that amount.
    let amount = command.and_then(|c| c.amount);
    // A command names no account: it takes its order's, when a finalized session (or an
    // earlier command that got it) is recorded; else `adopt_account` fills it later.
    let result = sqlx::query!(
        "INSERT INTO ipp_actions (order_id, action, kind, session_id, merchant_id, event_id, \
             status, reason, idempotency_key, source_topic, source_partition, source_offset, \
             command_id, requested_amount, reference, description, issued_by, event_type, \
             traceparent) \
         VALUES ($1, $2, $3, $4, \
             coalesce($5, (SELECT o.merchant_id FROM ipp_actions o \
                           WHERE o.order_id = $1 AND o.merchant_id IS NOT NULL \
                           ORDER BY o.seq LIMIT 1)), \
             $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
         ON CONFLICT DO NOTHING",
        new.order_id,
        new.action,
        new.kind.as_str(),
        new.session_id,
        new.merchant_id,
        new.event_id,
        status.as_str(),
        new.skip_reason,
        idempotency_key(&new.action, new.order_id),
        new.source_topic,
        new.source_partition,
        new.source_offset,
        command.map(|c| c.command_id),
        amount,
        command.and_then(|c| c.reference.clone()),
        command.and_then(|c| c.description.clone()),
        command.map(|c| c.issued_by.clone()),
        new.event_type,
        new.traceparent,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Gives the order's actions that name no account yet (commands recorded before its
/// finalized session) the account `merchant_id`, and makes those waiting for a key due
/// now. An action some worker holds keeps its lease (`next_attempt_at` is its end).
/// Returns how many rows it changed.
pub async fn adopt_account(
    pool: &PgPool,
    order_id: Uuid,
    merchant_id: &str,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        "UPDATE ipp_actions SET merchant_id = $2, updated_at = now(), \
             next_attempt_at = CASE WHEN status = 'pending' AND claim_token IS NULL \
                                    THEN least(next_attempt_at, now()) \
                                    ELSE next_attempt_at END \
         WHERE order_id = $1 AND merchant_id IS NULL",
        order_id,
        merchant_id,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// The account of an order: the `merchant_id` of its first action that names one (its
/// finalized session's), `None` while none does.
pub async fn account_of(pool: &PgPool, order_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT merchant_id AS "merchant_id!" FROM ipp_actions
         WHERE order_id = $1 AND merchant_id IS NOT NULL ORDER BY seq LIMIT 1"#,
        order_id,
    )
    .fetch_optional(pool)
    .await
}

/// What the ledger already holds for `command_id`: the fields a command record fixes, to
/// tell a redelivery (the same fields) from a different command under a reused id.
pub async fn recorded_command(
    pool: &PgPool,
    command_id: Uuid,
) -> Result<Option<(Uuid, String, CommandFields)>, sqlx::Error> {
    let row = sqlx::query!(
        // A capture command without an amount gets the decided amount recorded later
        // (with capture_requested_at): that is not the command's amount.
        r#"SELECT order_id, kind, command_id AS "command_id!",
             CASE WHEN capture_requested_at IS NULL THEN requested_amount END AS amount,
             reference, description, issued_by AS "issued_by!"
         FROM ipp_actions WHERE command_id = $1"#,
        command_id,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        (
            r.order_id,
            r.kind,
            CommandFields {
                command_id: r.command_id,
                amount: r.amount,
                reference: r.reference,
                description: r.description,
                issued_by: r.issued_by,
            },
        )
    }))
}

/// Takes up to `limit` due actions for this worker: each gets `attempts + 1`, a fresh
/// `claim_token` and a lease (`next_attempt_at` moves `lease` ahead of the database's
/// clock), so no other worker or replica takes it meanwhile. An action whose order has an
/// earlier action still pending waits for it: an order's actions run one at a time, in
/// the order they were recorded. Reads (`observe` rows) are exempt both ways: they move
/// no money, so they wait behind nothing and hold nothing back. The worker keeps the lease
/// with [`renew`]; if it dies, the action is due again when the lease runs out.
pub async fn claim_due(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Action>, sqlx::Error> {
    sqlx::query_as!(
        Action,
        // `merchant_id`: a command recorded while its order's session was being recorded
        // by another consumer may have missed the account; it is taken here at the latest.
        r#"UPDATE ipp_actions a SET attempts = a.attempts + 1, claim_token = gen_random_uuid(),
             next_attempt_at = now() + make_interval(secs => $2), updated_at = now(),
             merchant_id = coalesce(a.merchant_id,
                 (SELECT o.merchant_id FROM ipp_actions o
                  WHERE o.order_id = a.order_id AND o.merchant_id IS NOT NULL
                  ORDER BY o.seq LIMIT 1))
         FROM (SELECT d.order_id, d.action FROM ipp_actions d
               WHERE d.status = 'pending' AND d.next_attempt_at <= now()
                 AND (d.kind = 'observe'
                      OR NOT EXISTS (SELECT 1 FROM ipp_actions e
                                     WHERE e.order_id = d.order_id AND e.status = 'pending'
                                       AND e.seq < d.seq AND e.kind <> 'observe'))
               ORDER BY d.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
         WHERE a.order_id = due.order_id AND a.action = due.action
         RETURNING a.order_id, a.action, a.kind, a.command_id, a.reference, a.description,
             a.session_id, a.merchant_id, a.event_id,
             a.attempts, a.idempotency_key, a.requested_amount,
             a.source_topic, a.source_partition, a.source_offset, a.created_at,
             a.claim_token AS "claim_token!", a.traceparent"#,
        limit,
        lease.as_secs_f64(),
    )
    .fetch_all(pool)
    .await
}

/// Extends the leases of the claims `tokens` by `lease` from the database's `now()`;
/// returns the tokens it renewed. A claim whose lease already ran out, that another
/// worker took over or whose action ended is not renewed: its holder has lost it.
pub async fn renew(
    pool: &PgPool,
    tokens: &[Uuid],
    lease: Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"UPDATE ipp_actions SET next_attempt_at = now() + make_interval(secs => $2)
         WHERE claim_token = ANY($1) AND status = 'pending' AND next_attempt_at > now()
         RETURNING claim_token AS "claim_token!""#,
        tokens,
        lease.as_secs_f64(),
    )
    .fetch_all(pool)
    .await
}

/// Makes the coming capture durable before it is sent: from now on every retry sends the
/// same request (same key, same amount), never a fresh decision. Returns the amount to
/// send (the first one recorded, should an earlier attempt have been first), or `None`
/// when the claim `token` no longer holds the action: then nothing may be sent.
pub async fn capture_requested(
    pool: &PgPool,
    order_id: Uuid,
    action: &str,
    token: Uuid,
    amount: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"UPDATE ipp_actions SET capture_requested_at = coalesce(capture_requested_at, now()),
             requested_amount = coalesce(requested_amount, $4), updated_at = now()
         WHERE order_id = $1 AND action = $2 AND claim_token = $3 AND status = 'pending'
         RETURNING requested_amount AS "requested_amount!""#,
        order_id,
        action,
        token,
        amount,
    )
    .fetch_optional(pool)
    .await
}

/// Ends an action (`succeeded`, `skipped` or `failed`) held by the claim `token`.
/// Returns false, writing nothing, when the claim no longer holds it (another worker
/// took it over: its outcome is the one that counts).
pub async fn finish(
    pool: &PgPool,
    order_id: Uuid,
    action: &str,
    token: Uuid,
    status: Status,
    outcome: &Outcome,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        "UPDATE ipp_actions SET status = $4, reason = $5, \
             capture_id = coalesce($6, capture_id), captured_amount = coalesce($7, captured_amount), \
             refund_id = coalesce($8, refund_id), refunded_amount = coalesce($9, refunded_amount), \
             error_code = $10, last_status_code = coalesce($11, last_status_code), \
             last_error = $12, observation = coalesce($13, observation), claim_token = NULL, \
             published_at = NULL, updated_at = now() \
         WHERE order_id = $1 AND action = $2 AND claim_token = $3 AND status = 'pending'",
        order_id,
        action,
        token,
        status.as_str(),
        outcome.reason,
        outcome.capture_id,
        outcome.captured_amount,
        outcome.refund_id,
        outcome.refunded_amount,
        outcome.error_code,
        outcome.last_status_code,
        outcome.last_error,
        outcome.observation,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Leaves an action held by the claim `token` `pending`, due again after `delay`, and
/// releases the claim. Returns false, writing nothing, when the claim no longer holds it.
pub async fn reschedule(
    pool: &PgPool,
    order_id: Uuid,
    action: &str,
    token: Uuid,
    delay: Duration,
    last_status_code: Option<i32>,
    last_error: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        "UPDATE ipp_actions SET next_attempt_at = now() + make_interval(secs => $4), \
             last_status_code = coalesce($5, last_status_code), last_error = $6, \
             claim_token = NULL, updated_at = now() \
         WHERE order_id = $1 AND action = $2 AND claim_token = $3 AND status = 'pending'",
        order_id,
        action,
        token,
        delay.as_secs_f64(),
        last_status_code,
        last_error,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Pending money actions (reads left out: they are not money) and the age of the oldest,
/// in seconds.
pub async fn pending_stats(pool: &PgPool) -> Result<PendingStats, sqlx::Error> {
    let stats = sqlx::query!(
        r#"SELECT count(*) AS "count!",
                  extract(epoch FROM min(created_at))::float8 AS oldest_created,
                  extract(epoch FROM now() - min(created_at))::float8 AS oldest_age,
                  extract(epoch FROM now())::float8 AS "now!"
         FROM ipp_actions WHERE status = 'pending' AND kind <> 'observe'"#,
    )
    .fetch_one(pool)
    .await?;
    Ok(PendingStats {
        count: stats.count,
        oldest_created: stats.oldest_created,
        oldest_age_seconds: stats.oldest_age.unwrap_or(0.0),
        now: stats.now,
    })
}

/// The money actions waiting in the ledger (reads of orders left out).
#[derive(Debug, Clone, Copy)]
pub struct PendingStats {
    pub count: i64,
    /// `created_at` of the oldest, in seconds since the epoch; `None` when none waits.
    pub oldest_created: Option<f64>,
    /// Its age, 0 when none waits.
    pub oldest_age_seconds: f64,
    /// The database's clock, in seconds since the epoch, when it answered.
    pub now: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_the_documented_url_uuid() {
        let expected = Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            b"https://github.com/ipp-pipeline/ipp-pipeline/ipp-actions",
        );
        assert_eq!(IDEMPOTENCY_NAMESPACE, expected);
    }

    #[test]
    fn keys_are_deterministic_and_distinct() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        assert_eq!(idempotency_key(CAPTURE, a), idempotency_key(CAPTURE, a));
        assert_ne!(idempotency_key(CAPTURE, a), idempotency_key(CAPTURE, b));
        assert_ne!(idempotency_key(CAPTURE, a), idempotency_key("refund", a));
    }
}
