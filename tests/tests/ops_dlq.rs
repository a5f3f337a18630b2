//! Dead letters and retries, as an operator runs them: the real service binaries and
//! their `dlq list|show|redrive` and `retry` subcommands against a real broker, real
//! PostgreSQL and (for ipp-actions) the Order Management simulator.

use std::{
    collections::HashMap,
    future::Future,
    time::{Duration, Instant},
};

use chrono::Utc;
use ipp_schemas::record::dlq;
use ipp_tests::{cli, db, free_port, kafka, process::Service, produce, unique_name};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const MERCHANT: &str = "DM11917000";
const API_KEY: &str = "kco_test_ops_suite";
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `check` until it holds; fails the test with `what` after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn body(event_type: &str, session: Uuid, order: Option<Uuid>) -> (String, Vec<u8>) {
    let id = format!("kevt_{}", Uuid::new_v4().simple());
    let body = produce::ipp_body(&id, event_type, MERCHANT, session, Utc::now(), order, None);
    (id, body)
}

/// Runs a one-shot command of `binary` off the async runtime.
async fn run_cli(binary: &'static str, args: &[&str], env: &[(&str, String)]) -> cli::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        cli::run(binary, &args, &env, CLI_TIMEOUT)
    })
    .await
    .expect("cli task")
}

/// The high watermark sum of a topic: how many records it holds.
fn record_count(brokers: &str, topic: &str) -> usize {
    kafka::read_topic(brokers, topic).len()
}

// ---------------------------------------------------------------------------------------
// ipp-actions: retry and redrive of failed actions.

struct ActionsFixture {
    brokers: String,
    topic: String,
    dlq_topic: String,
    database_url: String,
    pool: PgPool,
    _sim: Service,
    sim_url: String,
    http: reqwest::Client,
}

impl ActionsFixture {
    async fn new() -> Self {
        let brokers = kafka::brokers();
        let topic = kafka::create_topic(&brokers, "ipp_events", 1).await;
        let dlq_topic = kafka::create_topic(&brokers, "ipp_actions_dlq", 1).await;
        let database_url = db::fresh_database().await;
        let pool = PgPool::connect(&database_url).await.expect("connect");
        let port = free_port();
        let sim = Service::spawn(
            "ipp-om-sim",
            &[],
            &[
                ("OM_SIM_LISTEN", format!("127.0.0.1:{port}")),
                ("OM_SIM_API_KEY", API_KEY.to_owned()),
            ],
        );
        ipp_tests::process::wait_for_tcp(port, Duration::from_secs(20));
        Self {
            brokers,
            topic,
            dlq_topic,
            database_url,
            pool,
            _sim: sim,
            sim_url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("IPP_TOPIC", self.topic.clone()),
            ("ACTIONS_DLQ_TOPIC", self.dlq_topic.clone()),
            ("DATABASE_URL", self.database_url.clone()),
            ("ACTIONS_GROUP", "ops-actions".to_owned()),
            ("KUSTOM_API_URL", self.sim_url.clone()),
            ("KUSTOM_API_KEY", API_KEY.to_owned()),
        ]
    }

    fn start_actions(&self) -> Service {
        let port = free_port();
        let mut env = self.env();
        env.extend([
            ("ACTIONS_HTTP", format!("127.0.0.1:{port}")),
            ("ACTIONS_HTTP_TIMEOUT_MS", "1000".to_owned()),
            ("ACTIONS_INPLACE_MIN_DELAY_MS", "50".to_owned()),
            ("ACTIONS_RETRY_MIN_DELAY_MS", "200".to_owned()),
            ("ACTIONS_RETRY_MAX_DELAY_MS", "2000".to_owned()),
            ("ACTIONS_POLL_INTERVAL_MS", "200".to_owned()),
            ("ACTIONS_SHUTDOWN_TIMEOUT_SECS", "5".to_owned()),
        ]);
        let service = Service::spawn("ipp-actions", &[], &env);
        ipp_tests::process::wait_for_tcp(port, Duration::from_secs(30));
        service
    }

    async fn cli(&self, args: &[&str]) -> cli::Output {
        run_cli("ipp-actions", args, &self.env()).await
    }

    async fn seed(&self, order: Uuid, seed: Value) {
        let response = self
            .http
            .put(format!("{}/_sim/orders/{order}", self.sim_url))
            .json(&seed)
            .send()
            .await
            .expect("simulator answers");
        assert!(response.status().is_success(), "seed {order}");
    }

    async fn captures_by_order(&self) -> HashMap<Uuid, u64> {
        let stats: Value = self
            .http
            .get(format!("{}/_sim/stats", self.sim_url))
            .send()
            .await
            .expect("simulator answers")
            .json()
            .await
            .expect("json");
        stats["captures_by_order"]
            .as_object()
            .expect("captures_by_order")
            .iter()
            .map(|(k, v)| (k.parse().expect("uuid"), v.as_u64().expect("count")))
            .collect()
    }

    async fn status_of(&self, order: Uuid) -> String {
        sqlx::query_scalar("SELECT status FROM ipp_actions WHERE order_id = $1")
            .bind(order)
            .fetch_optional(&self.pool)
            .await
            .expect("ledger query")
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_actions_are_retried_or_redriven_once_after_the_fix_and_capture_once() {
    let fx = ActionsFixture::new().await;
    let retried = Uuid::new_v4();
    let redriven = Uuid::new_v4();
    let healthy = Uuid::new_v4();
    for order in [retried, redriven] {
        fx.seed(order, json!({"status": "CANCELLED"})).await;
    }
    let producer = produce::Producer::new(&fx.brokers, &fx.topic);
    let mut sessions = HashMap::new();
    for order in [retried, redriven, healthy] {
        let session = Uuid::new_v4();
        sessions.insert(order, session);
        let (_, event) = body("ipp.session.finalized", session, Some(order));
        producer.send_event(&event).await;
    }
    let mut actions = fx.start_actions();
    eventually(
        Duration::from_secs(60),
        "two failed, one captured",
        || async {
            fx.status_of(retried).await == "failed"
                && fx.status_of(redriven).await == "failed"
                && fx.status_of(healthy).await == "succeeded"
        },
    )
    .await;
    eventually(Duration::from_secs(30), "two failed actions parked", || {
        std::future::ready(record_count(&fx.brokers, &fx.dlq_topic) == 2)
    })
    .await;

    // `dlq list --json`: both failed actions, with provenance and the error.
    let listed = fx
        .cli(&["dlq", "list", "--json"])
        .await
        .success()
        .json_lines();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let mut positions = HashMap::new();
    for line in &listed {
        let order: Uuid = line["order_id"]
            .as_str()
            .expect("order id")
            .parse()
            .unwrap();
        assert!(order == retried || order == redriven, "{line}");
        assert_eq!(line["event_type"], json!("action:capture"));
        assert_eq!(line["service"], json!("ipp-actions"));
        assert_eq!(line["source_topic"], json!(fx.topic));
        assert!(line["source_offset"].is_i64(), "{line}");
        assert!(
            line["error"].as_str().unwrap().contains("CANCELLED"),
            "{line}"
        );
        assert_eq!(line["redrive_count"], json!(0));
        positions.insert(order, line["position"].as_str().unwrap().to_owned());
    }
    let filtered = fx
        .cli(&["dlq", "list", "--json", "--order", &retried.to_string()])
        .await
        .success()
        .json_lines();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["order_id"], json!(retried.to_string()));

    // The cause is fixed: the orders are authorized again.
    for order in [retried, redriven] {
        fx.seed(order, json!({"status": "AUTHORIZED"})).await;
    }

    // retry --dry-run changes nothing.
    let dry = fx
        .cli(&[
            "retry",
            "--order",
            &retried.to_string(),
            "--dry-run",
            "--json",
        ])
        .await
        .success()
        .json_lines();
    assert_eq!(dry[0]["count"], json!(1), "{dry:?}");
    assert_eq!(
        dry[0]["requeued"][0]["order_id"],
        json!(retried.to_string())
    );
    assert_eq!(fx.status_of(retried).await, "failed");

    // retry: captured once.
    let out = fx
        .cli(&["retry", "--order", &retried.to_string()])
        .await
        .success();
    assert!(
        out.stdout.contains("re-queued 1 failed action(s)"),
        "{}",
        out.stdout
    );
    eventually(
        Duration::from_secs(30),
        "the retried order captured",
        || async { fx.status_of(retried).await == "succeeded" },
    )
    .await;
    assert_eq!(fx.captures_by_order().await.get(&retried), Some(&1));

    // A succeeded action is never re-queued.
    let out = fx
        .cli(&[
            "retry",
            "--order",
            &healthy.to_string(),
            "--order",
            &retried.to_string(),
        ])
        .await
        .success();
    assert!(
        out.stdout.contains("re-queued 0 failed action(s)"),
        "{}",
        out.stdout
    );
    assert_eq!(fx.status_of(healthy).await, "succeeded");

    // Redriving the other failed action's dead letter: dry run first.
    let dry = fx
        .cli(&[
            "dlq",
            "redrive",
            &positions[&redriven],
            "--dry-run",
            "--json",
        ])
        .await
        .success()
        .json_lines();
    assert_eq!(dry.len(), 1);
    assert_eq!(dry[0]["outcome"], json!("would-redrive"), "{dry:?}");
    assert_eq!(fx.status_of(redriven).await, "failed");
    let done = fx
        .cli(&["dlq", "redrive", &positions[&redriven], "--json"])
        .await
        .success()
        .json_lines();
    assert_eq!(done[0]["outcome"], json!("redriven"), "{done:?}");
    assert_eq!(done[0]["redrive_count"], json!(1));
    eventually(
        Duration::from_secs(30),
        "the redriven order captured",
        || async { fx.status_of(redriven).await == "succeeded" },
    )
    .await;

    // Everything again: nothing moves. The retried order's record has nothing to do, the
    // redriven one was redriven already.
    let again = fx
        .cli(&["dlq", "redrive", "--all", "--json"])
        .await
        .success()
        .json_lines();
    let outcome = |order: Uuid| {
        again
            .iter()
            .find(|l| l["position"] == json!(positions[&order]))
            .map(|l| l["outcome"].clone())
    };
    assert_eq!(outcome(retried), Some(json!("nothing-to-do")), "{again:?}");
    assert_eq!(
        outcome(redriven),
        Some(json!("already-redriven")),
        "{again:?}"
    );
    let out = fx.cli(&["retry", "--all"]).await.success();
    assert!(
        out.stdout.contains("re-queued 0 failed action(s)"),
        "{}",
        out.stdout
    );

    // Each order captured exactly once; the retries are audited.
    let captures = fx.captures_by_order().await;
    for order in [retried, redriven, healthy] {
        assert_eq!(captures.get(&order), Some(&1), "captures of {order}");
        assert_eq!(fx.status_of(order).await, "succeeded");
    }
    let audit: Vec<(Uuid, String, Option<String>)> =
        sqlx::query_as("SELECT order_id, via, previous_reason FROM ipp_action_retries ORDER BY id")
            .fetch_all(&fx.pool)
            .await
            .expect("audit rows");
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0].0, retried);
    assert_eq!(audit[0].1, "ipp-actions retry");
    assert_eq!(audit[1].0, redriven);
    assert!(audit[1].1.starts_with("dlq redrive"), "{audit:?}");
    assert!(audit
        .iter()
        .all(|a| a.2.as_deref().is_some_and(|r| r.contains("CANCELLED"))));

    actions.signal("TERM");
    assert!(actions.wait(Duration::from_secs(30)).success());
}
