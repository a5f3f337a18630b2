//! `ipp-projector reconcile`: the orders that are not in sync with Kustom, and why.

use ipp_ops::{output, Error};
use serde_json::json;

use super::dlq::database;
use crate::{config::Config, orders::report};

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ReconcileArgs {
    /// Only orders in this state (repeat for several): `mismatch`,
    /// `awaiting_confirmation`, `in_sync`. [default: mismatch and awaiting_confirmation]
    #[arg(long = "state", value_name = "STATE", value_parser = clap::builder::PossibleValuesParser::new(report::STATES))]
    pub states: Vec<String>,

    /// Every order, whatever its state.
    #[arg(long, conflicts_with = "states")]
    pub all: bool,

    /// Most orders listed.
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,

    /// One JSON object per line: a summary, then one per order.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, args: &ReconcileArgs) -> Result<(), Error> {
    let pool = ipp_ops::connect(&database(config)).await?;
    if !ipp_ops::table_exists(&pool, "ipp_order_facts").await? {
        return Err(Error::Usage(
            "this database has no orders read model (ipp_order_facts): is DATABASE_URL the \
             projector's database, and has ipp-projector migrated it?"
                .into(),
        ));
    }
    let states: Vec<String> = match (args.all, args.states.is_empty()) {
        (true, _) => Vec::new(),
        (false, true) => vec!["mismatch".into(), "awaiting_confirmation".into()],
        (false, false) => args.states.clone(),
    };
    let counts = report::counts(&pool).await?;
    let orders = report::orders(&pool, &states, args.limit).await?;
    pool.close().await;

    if args.json {
        let summary = json!({
            "orders_by_state": as_object(&counts.by_state),
            "mismatches_by_rule": as_object(&counts.mismatches_by_rule),
            "listed": orders.len(),
        });
        let rows = orders
            .iter()
            .map(|o| serde_json::to_value(o).expect("a report serializes"));
        return output::json_lines(std::iter::once(summary).chain(rows));
    }
    let mut text = String::from("orders by reconciliation state:");
    for (state, n) in &counts.by_state {
        text.push_str(&format!("  {state} {n}"));
    }
    text.push('\n');
    let broken: Vec<String> = counts
        .mismatches_by_rule
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(rule, n)| format!("  {rule} {n}"))
        .collect();
    if !broken.is_empty() {
        text.push_str(&format!("mismatches by rule:{}\n", broken.concat()));
    }
    if orders.is_empty() {
        text.push_str("nothing to report\n");
        return output::line(&text);
    }
    output::line(&text)?;
    let mut table = output::Table::new([
        "ORDER",
        "MERCHANT",
        "STATE",
        "CAPTURED (KUSTOM/LEDGER)",
        "REFUNDED (KUSTOM/LEDGER)",
        "REASON",
    ]);
    for order in &orders {
        table.row([
            order.order_id.to_string(),
            output::opt(order.merchant_id.as_deref()),
            order.state.clone(),
            format!(
                "{}/{}",
                output::opt(order.captured_amount),
                order.ledger_captured_amount
            ),
            format!(
                "{}/{}",
                output::opt(order.refunded_amount),
                order.ledger_refunded_amount
            ),
            output::truncate(order.reason.as_deref().unwrap_or("-"), 120),
        ]);
    }
    table.print()
}

/// `[(name, n)]` as a JSON object `{name: n}`, in order.
fn as_object(counts: &[(&str, i64)]) -> serde_json::Map<String, serde_json::Value> {
    counts
        .iter()
        .map(|(name, n)| ((*name).to_owned(), json!(n)))
        .collect()
}
