//! The orders read model fed by the real chain, every service a child process: the
//! simulator applies captures and refunds (ours, or made outside the API as in the
//! Portal) and posts its signed webhooks to ingest; ipp-actions reads each order those
//! events name and appends the answer as an observation; the projector reconciles.
//! Refunds with every webhook delivered twice end in sync with exact amounts; an
//! operation made outside the pipeline is recorded, flagged and never repeated; a
//! capture Kustom never confirms turns `mismatch` after the configured time.

use std::time::Duration;

use ipp_tests::{
    cli,
    eventually::eventually,
    process::{ChildConfig, Service},
    processes::Processes,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// The simulator's account: its webhooks name it, and so do the sessions here.
const MERCHANT: &str = "DM00000000";
const WAIT: Duration = Duration::from_secs(90);

struct Chain {
    processes: Processes,
    pool: PgPool,
    services: Vec<Service>,
}

impl Chain {
    /// The three services, the simulator's webhooks adjusted by `sim` and the
    /// projector's settings by `projector`.
    async fn start(
        sim: impl FnOnce(&mut ipp_om_sim::Config),
        projector: impl FnOnce(&mut ipp_projector::Config),
    ) -> Self {
        let processes = Processes::start_with(sim).await;
        let services = vec![
            processes.ingest(),
            processes.projector_with(projector),
            processes.actions(),
        ];
        let pool = processes.database.pool().await;
        Self {
            processes,
            pool,
            services,
        }
    }

    async fn finalize(&self, order: Uuid) {
        self.processes.finalize(MERCHANT, order).await;
    }

    /// `ipp-actions args…` with the live ipp-actions' settings; asserts its success.
    async fn actions_cli(&self, args: &[&str]) -> cli::Output {
        let env = self.processes.actions_config().env();
        cli::run_async("ipp-actions", args, &env, WAIT)
            .await
            .success()
    }

    /// Refunds `amount` of `order` through a command, and waits until it succeeded.
    async fn refund(&self, order: Uuid, amount: i64) {
        let order = order.to_string();
        let amount = amount.to_string();
        let output = self
            .actions_cli(&[
                "command",
                "issue",
                "refund",
                &order,
                "--amount",
                &amount,
                "--wait-secs",
                "60",
                "--json",
            ])
            .await;
        let answer: Value = serde_json::from_str(output.stdout.trim()).expect("json");
        assert_eq!(answer["status"], "succeeded", "refund of {order}: {answer}");
    }

    /// `order`'s row of `ipp_orders` as JSON, once `ready` holds for it.
    async fn order_when(&self, order: Uuid, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        eventually(WAIT, &format!("{order}: {what}"), || async {
            self.order(order).await.is_some_and(|row| ready(&row))
        })
        .await;
        self.order(order).await.expect("row")
    }

    async fn order(&self, order: Uuid) -> Option<Value> {
        ipp_tests::orders::order_row(&self.pool, order).await
    }

    /// The ledger's money actions for `order`: (kind, status).
    async fn money_actions(&self, order: Uuid) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT kind, status FROM ipp_actions
             WHERE order_id = $1 AND kind <> 'observe' ORDER BY seq",
        )
        .bind(order)
        .fetch_all(&self.pool)
        .await
        .expect("ipp_actions")
    }

    fn assert_running(&mut self) {
        for service in &mut self.services {
            assert!(service.is_running(), "{} died", service.name);
        }
    }
}

fn state(row: &Value) -> &str {
    row["reconciliation_state"].as_str().unwrap_or_default()
}

fn ids(row: &Value, column: &str) -> usize {
    row[column].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_with_every_webhook_delivered_twice_end_in_sync_with_exact_amounts() {
    let mut chain = Chain::start(|sim| sim.webhooks.duplicate_rate = 1.0, |_| {}).await;
    let orders: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for &order in &orders {
        chain.finalize(order).await;
    }
    // None on the first order, one on the second, two on the others.
    let refunds = |i: usize| -> Vec<i64> { (0..i.min(2)).map(|r| 100 + 10 * r as i64).collect() };
    for &order in &orders {
        chain
            .order_when(order, "captured and in sync", |row| {
                state(row) == "in_sync" && ids(row, "capture_ids") == 1
            })
            .await;
    }
    for (i, &order) in orders.iter().enumerate() {
        for amount in refunds(i) {
            chain.refund(order, amount).await;
        }
    }
    for (i, &order) in orders.iter().enumerate() {
        let refunded: i64 = refunds(i).iter().sum();
        let authorized = ipp_om_sim::authorized_amount_for(&order);
        let row = chain
            .order_when(order, "refunds confirmed", |row| {
                ids(row, "refund_ids") == refunds(i).len() && state(row) == "in_sync"
            })
            .await;
        assert_eq!(row["merchant_id"], MERCHANT);
        assert_eq!(row["authorized_amount"], authorized, "{row}");
        assert_eq!(row["captured_amount"], authorized, "{row}");
        assert_eq!(row["ledger_captured_amount"], authorized, "{row}");
        assert_eq!(row["refunded_amount"], refunded, "{row}");
        assert_eq!(row["ledger_refunded_amount"], refunded, "{row}");
        assert_eq!(row["external_operations"], json!([]), "{row}");
        assert!(row["last_confirmed_at"].is_string(), "{row}");
    }
    // Every webhook came twice, and each event was read once.
    let webhooks = chain.processes.sim.webhooks().await;
    let events = webhooks["events"].as_array().expect("events").len();
    let operations: usize =
        orders.len() + (0..orders.len()).map(|i| refunds(i).len()).sum::<usize>();
    assert_eq!(
        events, operations,
        "one event per capture and refund: {webhooks}"
    );
    assert_eq!(webhooks["duplicates"], events as u64, "{webhooks}");
    let reads: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ipp_actions WHERE kind = 'observe' AND status = 'succeeded'",
    )
    .fetch_one(&chain.pool)
    .await
    .unwrap();
    assert_eq!(reads, events as i64, "one read per event, not per delivery");
    chain.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_made_outside_the_pipeline_are_recorded_flagged_and_never_repeated() {
    let mut chain = Chain::start(|_| {}, |_| {}).await;
    let sim = &chain.processes.sim;

    // Captured in full in the Portal before its session finalized: our automatic
    // capture reads the order, finds nothing left, and captures nothing.
    let portal_captured = Uuid::new_v4();
    let response = sim
        .outside(&portal_captured.to_string(), "captures", json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    chain.finalize(portal_captured).await;
    let row = chain
        .order_when(portal_captured, "the Portal's capture flagged", |row| {
            state(row) == "mismatch"
                && row["session_id"].is_string()
                && row["last_read_at"].is_string()
        })
        .await;
    let authorized = ipp_om_sim::authorized_amount_for(&portal_captured);
    assert_eq!(row["captured_amount"], authorized, "{row}");
    assert_eq!(row["ledger_captured_amount"], 0, "{row}");
    assert_eq!(ids(&row, "external_operations"), 1, "{row}");
    let reason = row["reconciliation_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not made by this pipeline"), "{reason}");
    assert_eq!(row["mismatch_rule"], "not_made_by_this_pipeline");

    // Ours, then refunded in the Portal: the refund is recorded, flagged, not ours.
    let portal_refunded = Uuid::new_v4();
    chain.finalize(portal_refunded).await;
    chain
        .order_when(portal_refunded, "our capture in sync", |row| {
            state(row) == "in_sync" && ids(row, "capture_ids") == 1
        })
        .await;
    let response = sim
        .outside(
            &portal_refunded.to_string(),
            "refunds",
            json!({ "refunded_amount": 250 }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let row = chain
        .order_when(portal_refunded, "the Portal's refund flagged", |row| {
            state(row) == "mismatch"
                && row["refunded_amount"] != 0
                && !row["refunded_amount"].is_null()
        })
        .await;
    assert_eq!(row["refunded_amount"], 250, "{row}");
    assert_eq!(row["ledger_refunded_amount"], 0, "{row}");
    assert_eq!(
        row["ledger_captured_amount"], row["captured_amount"],
        "{row}"
    );
    let external = row["external_operations"].as_array().unwrap();
    assert_eq!(external.len(), 1, "{row}");
    assert!(
        external[0].as_str().unwrap().starts_with("refund "),
        "{row}"
    );

    // The finalized events delivered again change nothing: never captured by us twice,
    // nor at all where the Portal did it.
    chain.finalize(portal_captured).await;
    chain.finalize(portal_refunded).await;
    let captures = sim.captures_by_order().await;
    assert_eq!(captures.get(&portal_captured), Some(&1), "{captures:?}");
    assert_eq!(captures.get(&portal_refunded), Some(&1), "{captures:?}");
    assert_eq!(
        chain.money_actions(portal_captured).await,
        [("capture".to_owned(), "skipped".to_owned())]
    );
    assert_eq!(
        chain.money_actions(portal_refunded).await,
        [("capture".to_owned(), "succeeded".to_owned())]
    );

    // The operator report lists both, with their reasons.
    let env = chain.processes.projector_config().env();
    let report = cli::run_async("ipp-projector", &["reconcile", "--json"], &env, WAIT)
        .await
        .success();
    let lines = report.json_lines();
    assert_eq!(
        lines[0]["orders_by_state"]["mismatch"], 2,
        "{}",
        report.stdout
    );
    let listed: Vec<&str> = lines[1..]
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    for order in [portal_captured, portal_refunded] {
        assert!(listed.contains(&order.to_string().as_str()), "{listed:?}");
    }
    chain.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_kustom_never_confirms_turns_mismatch_after_the_confirmation_timeout() {
    // The setting under test: 15 s instead of 10 min.
    let mut chain = Chain::start(
        |_| {},
        |projector| projector.orders_confirmation_timeout_secs = 15,
    )
    .await;
    let sim = &chain.processes.sim;
    let suppressed = sim
        .control(
            reqwest::Method::PUT,
            "/_sim/webhooks",
            Some(json!({ "suppressed": true })),
        )
        .await;
    assert_eq!(suppressed.status(), StatusCode::OK);
    let order = Uuid::new_v4();
    chain.finalize(order).await;

    let row = chain
        .order_when(order, "our capture awaits Kustom", |row| {
            state(row) != "in_sync" && ids(row, "capture_ids") == 1
        })
        .await;
    assert_eq!(state(&row), "awaiting_confirmation", "{row}");
    assert_eq!(row["last_confirmed_at"], Value::Null, "{row}");
    let row = chain
        .order_when(order, "unconfirmed past the timeout", |row| {
            state(row) == "mismatch"
        })
        .await;
    let reason = row["reconciliation_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not confirmed by Kustom"), "{reason}");
    assert_eq!(row["mismatch_rule"], "not_confirmed");
    assert_eq!(
        sim.webhooks().await["suppressed_events"],
        1,
        "Kustom never sent it"
    );
    assert_eq!(chain.money_actions(order).await.len(), 1);
    chain.assert_running();
}
