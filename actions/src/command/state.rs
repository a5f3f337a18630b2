//! What became of a command: the `ipp_commands` view (the ledger's row once recorded,
//! else what the API accepted).

use chrono::{DateTime, Utc};
use ipp_schemas::Command;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A command and its state, as `GET /v1/commands/{id}` and `ipp-actions command show`
/// present it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandState {
    pub command_id: Uuid,
    pub order_id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub amount: Option<i64>,
    pub reference: Option<String>,
    pub description: Option<String>,
    pub issued_by: Option<String>,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// Whether ipp-actions has recorded it in its ledger yet.
    pub recorded: bool,
    pub attempts: i32,
    pub capture_id: Option<String>,
    pub captured_amount: Option<i64>,
    pub refund_id: Option<String>,
    pub refunded_amount: Option<i64>,
    /// Order Management's `error_code` of a refusal.
    pub error_code: Option<String>,
    /// Why it failed, in a line.
    pub reason: Option<String>,
    /// The last error, with Order Management's message.
    pub last_error: Option<String>,
    pub last_status_code: Option<i32>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl CommandState {
    /// A command just appended to the log: pending, not yet recorded, as `find` would
    /// show it until the consumer records it.
    pub fn accepted(command: &Command) -> Self {
        Self {
            command_id: command.command_id,
            order_id: command.order_id,
            kind: command.kind.as_str().to_owned(),
            amount: command.amount,
            reference: command.reference.clone(),
            description: command.description.clone(),
            issued_by: Some(command.issued_by.clone()),
            status: "pending".to_owned(),
            recorded: false,
            attempts: 0,
            capture_id: None,
            captured_amount: None,
            refund_id: None,
            refunded_amount: None,
            error_code: None,
            reason: None,
            last_error: None,
            last_status_code: None,
            created_at: Some(command.issued_at),
            updated_at: Some(command.issued_at),
        }
    }

    pub fn is_pending(&self) -> bool {
        self.status == "pending"
    }
}

/// One command; `None` when nothing by that id was accepted or recorded.
pub async fn find(pool: &PgPool, command_id: Uuid) -> Result<Option<CommandState>, sqlx::Error> {
    sqlx::query_as!(
        CommandState,
        r#"SELECT command_id AS "command_id!", order_id AS "order_id!", kind AS "kind!",
             amount, reference, description, issued_by, status AS "status!",
             recorded AS "recorded!", attempts AS "attempts!", capture_id, captured_amount,
             refund_id, refunded_amount, error_code, reason, last_error, last_status_code,
             created_at, updated_at
         FROM ipp_commands WHERE command_id = $1"#,
        command_id,
    )
    .fetch_optional(pool)
    .await
}

/// An order's commands, in the order they were recorded (then accepted).
pub async fn for_order(pool: &PgPool, order_id: Uuid) -> Result<Vec<CommandState>, sqlx::Error> {
    sqlx::query_as!(
        CommandState,
        r#"SELECT command_id AS "command_id!", order_id AS "order_id!", kind AS "kind!",
             amount, reference, description, issued_by, status AS "status!",
             recorded AS "recorded!", attempts AS "attempts!", capture_id, captured_amount,
             refund_id, refunded_amount, error_code, reason, last_error, last_status_code,
             created_at, updated_at
         FROM ipp_commands WHERE order_id = $1 ORDER BY seq NULLS LAST, created_at"#,
        order_id,
    )
    .fetch_all(pool)
    .await
}
