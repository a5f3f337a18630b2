//! `ipp-actions command issue|show|list`: money commands from the command line, for
//! operators. `issue` goes through the same path as the API (checked, once per
//! `--idempotency-key` within the `cli` scope, in the log before it is reported), with
//! the service's settings.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use ipp_ops::{
    output::{self, Table},
    Database, Error,
};
use ipp_schemas::{trace::TraceContext, CommandKind};
use uuid::Uuid;

use crate::{
    command::{self, CommandLog, CommandRequest, CommandState},
    config::Config,
};

/// The Idempotency-Key scope of commands issued from the command line.
pub const CLI_SCOPE: &str = "cli";

#[derive(Debug, Clone, Subcommand)]
pub enum CommandCommand {
    /// Issue a command: capture, refund, cancel or release-remaining-authorization.
    Issue(IssueArgs),
    /// Show one command and what became of it.
    Show {
        command_id: Uuid,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List an order's commands, oldest first.
    List {
        order_id: Uuid,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Capture,
    Refund,
    Cancel,
    ReleaseRemainingAuthorization,
}

impl From<Kind> for CommandKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Capture => Self::Capture,
            Kind::Refund => Self::Refund,
            Kind::Cancel => Self::Cancel,
            Kind::ReleaseRemainingAuthorization => Self::ReleaseRemainingAuthorization,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// What to do.
    #[arg(value_enum)]
    pub kind: Kind,
    pub order_id: Uuid,
    /// Minor units: required for a refund; a capture without it captures what remains.
    #[arg(long)]
    pub amount: Option<i64>,
    #[arg(long)]
    pub reference: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// The same key always names the same command: issuing it again changes nothing.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait up to this many seconds for the outcome (0: report it accepted and return).
    #[arg(long, default_value_t = 0)]
    pub wait_secs: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, command: &CommandCommand) -> Result<(), Error> {
    let pool = ipp_ops::connect(&Database::new(&config.database.url)).await?;
    let result = match command {
        CommandCommand::Issue(args) => issue(config, &pool, args).await,
        CommandCommand::Show { command_id, json } => {
            let state = command::state::find(&pool, *command_id)
                .await?
                .ok_or_else(|| Error::Usage(format!("no command {command_id}")))?;
            print(&[state], *json)
        }
        CommandCommand::List { order_id, json } => {
            let states = command::state::for_order(&pool, *order_id).await?;
            print(&states, *json)
        }
    };
    pool.close().await;
    result
}

async fn issue(config: &Config, pool: &sqlx::PgPool, args: &IssueArgs) -> Result<(), Error> {
    let request = CommandRequest::new(
        args.order_id,
        CommandKind::from(args.kind),
        args.amount,
        args.reference.clone(),
        args.description.clone(),
    )
    .map_err(Error::Usage)?;
    let log = CommandLog::new(config)?;
    let issued = command::issue(
        pool,
        &log,
        CLI_SCOPE,
        args.idempotency_key.as_deref(),
        &request,
        &TraceContext::new_root(),
    )
    .await
    .map_err(|e| match e {
        command::IssueError::Database(db) => Error::Database(db),
        command::IssueError::Log(kafka) => Error::Kafka(kafka),
        reused @ command::IssueError::KeyReused { .. } => Error::Usage(reused.to_string()),
    })?;
    let command_id = issued.command.command_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        let state = command::state::find(pool, command_id).await?;
        let settled = state.as_ref().is_some_and(|s| !s.is_pending());
        if settled || tokio::time::Instant::now() >= deadline {
            return match state {
                Some(state) => print(&[state], args.json),
                None => output::line(&format!("{command_id} accepted")),
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print(states: &[CommandState], json: bool) -> Result<(), Error> {
    if json {
        return output::json_lines(
            states
                .iter()
                .map(|s| serde_json::to_value(s).unwrap_or_default()),
        );
    }
    let mut table = Table::new(["COMMAND", "TYPE", "AMOUNT", "STATUS", "RESULT"]);
    for state in states {
        let result = match state.status.as_str() {
            "succeeded" => state
                .capture_id
                .as_ref()
                .map(|id| format!("capture_id {id}"))
                .or(state.refund_id.as_ref().map(|id| format!("refund_id {id}")))
                .unwrap_or_else(|| "done".into()),
            "failed" => format!(
                "{}: {}",
                state.error_code.as_deref().unwrap_or("failed"),
                state
                    .last_error
                    .as_deref()
                    .or(state.reason.as_deref())
                    .unwrap_or("-")
            ),
            _ if !state.recorded => "accepted, not yet recorded".into(),
            _ => format!("attempts {}", state.attempts),
        };
        table.row([
            state.command_id.to_string(),
            state.kind.clone(),
            state.amount.map_or("-".into(), |a| a.to_string()),
            state.status.clone(),
            output::truncate(&result, 100),
        ]);
    }
    table.print()
}
