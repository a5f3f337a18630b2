//! Issuing a command: once per Idempotency-Key, durable in the log before it is
//! acknowledged.
//!
//! The command id of a keyed request is derived from the key and its scope (the token's
//! name), so every retry names the same command. The request's row in
//! `ipp_command_requests` is locked while the command is appended: a concurrent retry
//! with the same key waits for it and then finds it appended, so the log gets the command
//! once (should a crash between the broker's ack and the commit append it twice, the
//! consumer records it once all the same: its ledger row is keyed by the command id).

use chrono::{DateTime, Utc};
use ipp_schemas::{command::command_id_for_key, trace::TraceContext, Command};
use rdkafka::error::KafkaError;
use sqlx::PgPool;
use uuid::Uuid;

use super::{log::CommandLog, request::CommandRequest};

/// The command a request stands for.
#[derive(Debug, Clone)]
pub struct Issued {
    pub command: Command,
    /// An earlier request with the same key had already appended it.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The key already names a command with other fields.
    #[error(
        "Idempotency-Key {key:?} was already used for another request (command {command_id}: {existing}); \
         use a new key for a new command"
    )]
    KeyReused {
        key: String,
        command_id: Uuid,
        existing: String,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker did not acknowledge the command: nothing was accepted.
    #[error("the command log is unavailable: {0}")]
    Log(#[from] KafkaError),
}

/// Makes `request` a command in the log, once per `idempotency_key` within `scope`.
pub async fn issue(
    pool: &PgPool,
    log: &CommandLog,
    scope: &str,
    idempotency_key: Option<&str>,
    request: &CommandRequest,
    trace: &TraceContext,
) -> Result<Issued, IssueError> {
    let command_id = match idempotency_key {
        Some(key) => command_id_for_key(scope, key),
        None => Uuid::new_v4(),
    };
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "INSERT INTO ipp_command_requests (command_id, scope, idempotency_key, order_id, kind, \
             amount, reference, description) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        command_id,
        scope,
        idempotency_key,
        request.order_id,
        request.kind.as_str(),
        request.amount,
        request.reference,
        request.description,
    )
    .execute(&mut *tx)
    .await?;
    let stored = sqlx::query!(
        "SELECT order_id, kind, amount, reference, description, created_at, appended_at \
         FROM ipp_command_requests WHERE command_id = $1 FOR UPDATE",
        command_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    let existing = CommandRequest {
        order_id: stored.order_id,
        kind: request.kind,
        amount: stored.amount,
        reference: stored.reference,
        description: stored.description,
    };
    if stored.kind != request.kind.as_str() || existing != *request {
        return Err(IssueError::KeyReused {
            key: idempotency_key.unwrap_or_default().to_owned(),
            command_id,
            existing: describe(&stored.kind, &existing),
        });
    }
    let command = command(
        command_id,
        scope,
        idempotency_key,
        request,
        stored.created_at,
    );
    if stored.appended_at.is_some() {
        tx.commit().await?;
        return Ok(Issued {
            command,
            replayed: true,
        });
    }
    // Dropping `tx` on an error rolls the row back: a retry appends afresh.
    log.append(&command, trace).await?;
    sqlx::query!(
        "UPDATE ipp_command_requests SET appended_at = now() WHERE command_id = $1",
        command_id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Issued {
        command,
        replayed: false,
    })
}

fn command(
    command_id: Uuid,
    scope: &str,
    idempotency_key: Option<&str>,
    request: &CommandRequest,
    issued_at: DateTime<Utc>,
) -> Command {
    Command {
        command_id,
        order_id: request.order_id,
        kind: request.kind,
        amount: request.amount,
        reference: request.reference.clone(),
        description: request.description.clone(),
        issued_by: scope.to_owned(),
        idempotency_key: idempotency_key.map(str::to_owned),
        issued_at,
    }
}

/// What a key already stands for: `kind` as stored (`request.kind` is the new one's).
fn describe(kind: &str, request: &CommandRequest) -> String {
    let mut text = format!("{kind} of order {}", request.order_id);
    if let Some(amount) = request.amount {
        text.push_str(&format!(", amount {amount}"));
    }
    for (field, value) in [
        ("reference", &request.reference),
        ("description", &request.description),
    ] {
        if let Some(value) = value {
            text.push_str(&format!(", {field} {value:?}"));
        }
    }
    text
}
