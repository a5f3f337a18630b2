//! `ipp-projector rebuild` of the orders model, fed by the real chain (the simulator's
//! webhooks into ingest, ipp-actions' reads, its observations): orders rows damaged by
//! hand are reported by `--dry-run` and restored by a rebuild, which swaps the fact
//! tables and the `ipp_orders` view together (the view reads the new tables), keeps the
//! live confirmation timeout, and leaves the live orders consumer merging into the new
//! tables; `--rollback` brings the previous tables back, caught up with the log.

use std::time::Duration;

use ipp_tests::{
    cli, eventually::eventually, orders::orders_tables, process::ChildConfig, processes::Processes,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const MERCHANT: &str = "DM00000000";
const WAIT: Duration = Duration::from_secs(90);
/// A non-default confirmation timeout, which the swap must keep.
const TIMEOUT_SECS: u64 = 1234;

async fn state_of(pool: &PgPool, order: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT reconciliation_state FROM ipp_orders WHERE order_id = $1")
        .bind(order)
        .fetch_optional(pool)
        .await
        .expect("ipp_orders")
}

/// Waits until `order` is captured once (an order without operations is `in_sync`
/// from its finalized event on) and in sync.
async fn wait_until_captured_in_sync(pool: &PgPool, order: Uuid) {
    eventually(WAIT, &format!("{order} captured, in sync"), || async {
        let captured: Option<bool> = sqlx::query_scalar(
            "SELECT reconciliation_state = 'in_sync' AND cardinality(capture_ids) = 1
             FROM ipp_orders WHERE order_id = $1",
        )
        .bind(order)
        .fetch_optional(pool)
        .await
        .expect("ipp_orders");
        captured == Some(true)
    })
    .await;
}

async fn has_facts(pool: &PgPool, order: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ipp_order_facts WHERE order_id = $1)")
        .bind(order)
        .fetch_one(pool)
        .await
        .expect("ipp_order_facts")
}

async fn execute(pool: &PgPool, sql: &str, order: Uuid) -> u64 {
    sqlx::query(sql)
        .bind(order)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows_affected()
}

fn diff_of<'a>(report: &'a Value, table: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .and_then(|tables| tables.iter().find(|t| t["table"] == table))
        .unwrap_or_else(|| panic!("{table} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_restores_the_orders_model_from_the_log_and_rollback_brings_it_back() {
    let processes = Processes::start().await;
    let _ingest = processes.ingest();
    let mut projector =
        processes.projector_with(|c| c.orders_confirmation_timeout_secs = TIMEOUT_SECS);
    let _actions = processes.actions();
    let pool = processes.database.pool().await;

    // Captured orders, one refunded, one captured in the Portal before its session.
    let orders: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let portal = orders[4];
    let response = processes
        .sim
        .outside(&portal.to_string(), "captures", json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    for &order in &orders {
        processes.finalize(MERCHANT, order).await;
    }
    for &order in &orders[..4] {
        wait_until_captured_in_sync(&pool, order).await;
    }
    let refunded = orders[0].to_string();
    let env = processes.actions_config().env();
    let args = [
        "command",
        "issue",
        "refund",
        &refunded,
        "--amount",
        "250",
        "--wait-secs",
        "60",
        "--json",
    ];
    let issued = cli::run_async("ipp-actions", &args, &env, WAIT)
        .await
        .success();
    let issued: Value = serde_json::from_str(issued.stdout.trim()).expect("json");
    assert_eq!(issued["status"], "succeeded", "{issued}");
    eventually(WAIT, "the refund confirmed, the Portal's capture flagged", || async {
        let refunds: Option<i64> = sqlx::query_scalar(
            "SELECT refunded_amount FROM ipp_orders WHERE order_id = $1 AND reconciliation_state = 'in_sync'",
        )
        .bind(orders[0])
        .fetch_optional(&pool)
        .await
        .unwrap()
        .flatten();
        refunds == Some(250) && state_of(&pool, portal).await.as_deref() == Some("mismatch")
    })
    .await;
    let before = orders_tables(&pool).await;

    // Damage: an order's facts gone, an amount changed, a refund's row gone.
    let changed = orders[1];
    let deleted = orders[2];
    assert_eq!(
        execute(
            &pool,
            "UPDATE ipp_order_facts SET captured_amount = captured_amount + 1 WHERE order_id = $1",
            changed
        )
        .await,
        1
    );
    assert_eq!(
        execute(
            &pool,
            "DELETE FROM ipp_order_facts WHERE order_id = $1",
            deleted
        )
        .await,
        1
    );
    assert_eq!(
        execute(
            &pool,
            "DELETE FROM ipp_order_operations WHERE order_id = $1 AND kind = 'refund'",
            orders[0]
        )
        .await,
        1
    );
    assert_ne!(orders_tables(&pool).await, before);

    let projector_env = processes.projector_config().env();
    let rebuild = |args: &'static [&'static str]| {
        let env = projector_env.clone();
        async move {
            let mut all = vec!["rebuild", "--json"];
            all.extend_from_slice(args);
            let output = cli::run_async("ipp-projector", &all, &env, Duration::from_secs(120))
                .await
                .success();
            output.json_lines().pop().expect("a result line")
        }
    };

    // A dry run names the damage and changes nothing.
    let report = rebuild(&["--dry-run"]).await;
    let facts = diff_of(&report, "ipp_order_facts");
    assert_eq!(
        (&facts["added"], &facts["changed"], &facts["missing"]),
        (&json!(1), &json!(1), &json!(0)),
        "{report}"
    );
    let operations = diff_of(&report, "ipp_order_operations");
    assert_eq!(
        (&operations["added"], &operations["changed"]),
        (&json!(1), &json!(0)),
        "{report}"
    );
    assert_eq!(
        diff_of(&report, "ipp_order_disputes")["added"],
        0,
        "{report}"
    );
    assert!(!has_facts(&pool, deleted).await, "nothing swapped");

    // The rebuild swaps in the tables one clean pass over the log gives.
    let swapped = rebuild(&[]).await;
    assert_eq!(swapped["phase"], "swapped", "{swapped}");
    assert!(
        swapped["orders"]["records_read"].as_u64().unwrap() > 0,
        "{swapped}"
    );
    assert_eq!(
        orders_tables(&pool).await,
        before,
        "the view reads the rebuilt tables"
    );
    let timeout: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM confirmation_timeout)::float8 FROM ipp_orders_settings",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(timeout, TIMEOUT_SECS as f64, "the live setting kept");
    let view_schema: String = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_depend d
         JOIN pg_rewrite r ON r.oid = d.objid
         JOIN pg_class t ON t.oid = d.refobjid AND t.relname = 'ipp_order_facts'
         JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE r.ev_class = 'public.ipp_orders'::regclass LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(view_schema, "public", "the live view reads the live tables");

    // The live orders consumer goes on, into the rebuilt tables.
    let later = Uuid::new_v4();
    processes.finalize(MERCHANT, later).await;
    wait_until_captured_in_sync(&pool, later).await;

    // The previous (damaged) version comes back, caught up with the log: the order
    // finalized since is there, the deleted rows merged again, the edited amount kept.
    let rolled_back = rebuild(&["--rollback"]).await;
    assert_eq!(rolled_back["phase"], "rolled_back", "{rolled_back}");
    assert_eq!(state_of(&pool, later).await.as_deref(), Some("in_sync"));
    assert!(has_facts(&pool, deleted).await);
    let tampered: i64 =
        sqlx::query_scalar("SELECT captured_amount FROM ipp_order_facts WHERE order_id = $1")
            .bind(changed)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        tampered,
        ipp_om_sim::authorized_amount_for(&changed) + 1,
        "the previous tables, as they were"
    );
    assert!(projector.is_running(), "the live projector carried on");
    projector.signal("TERM");
    assert!(projector.wait(Duration::from_secs(30)).success());
}
