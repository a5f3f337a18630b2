//! The operator subcommands of `ipp-actions`: `dlq list|show|redrive` (on
//! `ipp.actions.dlq`), `retry` (re-queue failed actions) and `status`. They run once and
//! exit; output goes to stdout (a table, or JSON with `--json`), logs to stderr. The
//! shared machinery lives in the `ipp-ops` crate.

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args};
use ipp_ops::{
    args::StatusArgs,
    dlq::DlqSource,
    kafka::KafkaSettings,
    ledger::{self, Selection},
    output::{self, Table},
    status, Database, DlqCommand, Error,
};
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::config::Config;

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

fn kafka(config: &Config) -> KafkaSettings {
    KafkaSettings {
        kafka: config.kafka.clone(),
        client_id: "ipp-actions-ops".to_owned(),
    }
}

/// `ipp-actions dlq …`.
pub async fn dlq(config: &Config, command: &DlqCommand) -> Result<(), Error> {
    let source = DlqSource {
        kafka: kafka(config),
        topic: config.dlq_topic.clone(),
    };
    match command {
        DlqCommand::List(args) => {
            ipp_ops::dlq::list(&source, &Database::new(&config.database.url), args).await
        }
        DlqCommand::Show(args) => ipp_ops::dlq::show(&source, args).await,
        DlqCommand::Redrive(args) => {
            ipp_ops::redrive::run(&source, &Database::new(&config.database.url), args).await
        }
    }
}

/// `ipp-actions retry`: `failed` → `pending` (due now, attempts 0, reason cleared and
/// kept in `ipp_action_retries`). `succeeded` and `skipped` rows are never touched, and
/// the row keeps its idempotency key, so an order is never captured twice.
pub async fn retry(config: &Config, args: &RetryArgs) -> Result<(), Error> {
    let selection = Selection {
        all: args.all,
        orders: args.orders.clone(),
        merchant: args.merchant.clone(),
        action: None,
    };
    let pool = ipp_ops::connect(&Database::new(&config.database.url)).await?;
    let rows = if args.dry_run {
        let mut conn = pool.acquire().await?;
        ledger::failed(&mut conn, &selection).await?
    } else {
        ipp_ops::migrate(&pool).await?;
        let mut tx = pool.begin().await?;
        let rows = ledger::requeue(&mut tx, &selection, "ipp-actions retry").await?;
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

/// `ipp-actions status`.
pub async fn status(config: &Config, args: &StatusArgs) -> Result<(), Error> {
    let kafka = kafka(config);
    let marks = status::watermarks(&kafka, &config.ipp_topic).await?;
    let committed = status::committed(
        &kafka,
        &config.group,
        &config.ipp_topic,
        marks.iter().map(|m| m.partition).collect(),
    )
    .await?;
    let partitions = status::partitions(&marks, &committed);
    let pool = ipp_ops::connect(&Database::new(&config.database.url)).await?;
    let ledger_exists = ipp_ops::table_exists(&pool, "ipp_actions").await?;
    let mut counts = serde_json::Map::new();
    for state in ["pending", "succeeded", "skipped", "failed"] {
        counts.insert(state.into(), json!(0));
    }
    let mut oldest_pending: Option<f64> = None;
    let mut newest_action: Option<DateTime<Utc>> = None;
    if ledger_exists {
        for row in sqlx::query("SELECT status, count(*) AS n FROM ipp_actions GROUP BY status")
            .fetch_all(&pool)
            .await?
        {
            let state: String = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            counts.insert(state, json!(n));
        }
        oldest_pending = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - min(created_at))::float8 \
             FROM ipp_actions WHERE status = 'pending'",
        )
        .fetch_one(&pool)
        .await?;
        newest_action = sqlx::query_scalar("SELECT max(created_at) FROM ipp_actions")
            .fetch_one(&pool)
            .await?;
    }
    let dlq = status::dlq(&kafka, &config.dlq_topic, Some(&pool)).await?;
    pool.close().await;
    let newest_age = newest_action.map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0);

    if args.json {
        return output::json_lines([json!({
            "service": "ipp-actions",
            "topic": config.ipp_topic,
            "group": config.group,
            "checkpoint_source": "kafka committed offsets of the group",
            "partitions": partitions,
            "total_lag": status::total_lag(&partitions),
            "ledger_exists": ledger_exists,
            "actions": counts,
            "oldest_pending_age_seconds": oldest_pending,
            "newest_action_at": newest_action,
            "newest_action_age_seconds": newest_age,
            "dlq": dlq,
        })]);
    }
    let mut text = format!(
        "ipp-actions  topic {}  group {}  (checkpoint: the group's committed offsets)\n",
        config.ipp_topic, config.group
    );
    text.push_str(&status::partitions_table(&partitions));
    text.push_str(&format!(
        "total lag       {}\n",
        status::total_lag(&partitions)
    ));
    let count = |s: &str| counts.get(s).cloned().unwrap_or(json!(0));
    text.push_str(&format!(
        "actions         pending {}  succeeded {}  skipped {}  failed {}\n",
        count("pending"),
        count("succeeded"),
        count("skipped"),
        count("failed"),
    ));
    text.push_str(&status::age_line("oldest pending", oldest_pending));
    text.push('\n');
    text.push_str(&status::age_line("newest action", newest_age));
    text.push('\n');
    text.push_str(&status::dlq_line(&dlq));
    output::line(&text)
}
