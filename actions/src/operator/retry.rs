//! `ipp-actions retry`: re-queue failed actions (all, by order or by merchant) after
//! fixing their cause.

use clap::{ArgGroup, Args};
use ipp_ops::{
    output::{self, Table},
    Database, Error,
};
use serde_json::json;
use uuid::Uuid;

use crate::{
    config::Config,
    ledger::{
        self,
        requeue::{self, Selection},
    },
};

/// `ipp-actions retry`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[command(group(ArgGroup::new("which").required(true).multiple(true).args(["all", "orders", "merchant"])))]
pub struct RetryArgs {
    /// Every failed action.
    #[arg(long, conflicts_with_all = ["orders", "merchant"])]
    pub all: bool,
    /// The failed action of this order (repeatable).
    #[arg(long = "order", value_name = "ORDER_ID")]
    pub orders: Vec<Uuid>,
    /// Every failed action of this merchant.
    #[arg(long)]
    pub merchant: Option<String>,
    /// Print what would be re-queued and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ipp-actions retry`: `failed` → `pending` (due now, attempts 0, reason cleared and
/// kept in `ipp_action_retries`). `succeeded` and `skipped` rows are never touched, and
/// the row keeps its idempotency key, so an order is never captured twice.
pub async fn run(config: &Config, args: &RetryArgs) -> Result<(), Error> {
    let selection = Selection {
        all: args.all,
        orders: args.orders.clone(),
        merchant: args.merchant.clone(),
        action: None,
    };
    let pool = ipp_ops::connect(&Database::new(&config.database.url)).await?;
    let rows = if args.dry_run {
        let mut conn = pool.acquire().await?;
        requeue::failed(&mut conn, &selection).await?
    } else {
        // The audit table `ipp_action_retries` is one of the ledger's migrations (applied
        // here unless migrations are a separate step: ACTIONS_MIGRATE=false).
        if config.migrate {
            ledger::migrate(&pool).await?;
        }
        let mut tx = pool.begin().await?;
        let rows = requeue::requeue(&mut tx, &selection, "ipp-actions retry").await?;
        tx.commit().await?;
        rows
    };
    pool.close().await;
    let verb = if args.dry_run {
        "would re-queue"
    } else {
        "re-queued"
    };
    if args.json {
        return output::json_lines([json!({
            "dry_run": args.dry_run,
            "requeued": rows,
            "count": rows.len(),
        })]);
    }
    let mut table = Table::new([
        "ORDER",
        "ACTION",
        "MERCHANT",
        "ATTEMPTS",
        "CAPTURE SENT",
        "PREVIOUS REASON",
    ]);
    for row in &rows {
        table.row([
            row.order_id.to_string(),
            row.action.clone(),
            row.merchant_id.clone().unwrap_or_else(|| "-".into()),
            row.previous_attempts.to_string(),
            if row.capture_requested { "yes" } else { "no" }.to_owned(),
            output::truncate(row.previous_reason.as_deref().unwrap_or("-"), 80),
        ]);
    }
    if !rows.is_empty() {
        table.print()?;
    }
    output::line(&format!("{verb} {} failed action(s)", rows.len()))
}
