//! `ipp-actions` under test: topics, a database and the simulator of its own, the
//! service in-process or as a child process, and what the tests check (the ledger and
//! the effects the simulator counted).

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use chrono::{DateTime, Utc};
use clap::Parser;
use ipp_service::ListenArgs;
use rdkafka::message::OwnedHeaders;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    cli,
    db::TestDatabase,
    eventually::eventually,
    inprocess::{actions_config, om_sim_config, OrderManagement, Running, TestActions},
    kafka,
    om_sim::OmSim,
    process::{ChildConfig, Service},
    produce::Producer,
    wiring::Wiring,
};

pub const API_KEY: &str = "kco_test_actions_suite";
/// UUIDv5 of the URL https://github.com/ipp-pipeline/ipp-pipeline/ipp-actions, the
/// documented namespace of the idempotency keys.
pub const KEY_NAMESPACE: &str = "3d14a510-fabd-52f4-8d78-27913cea6615";

pub fn expected_key(order_id: Uuid) -> Uuid {
    let namespace = Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        b"https://github.com/ipp-pipeline/ipp-pipeline/ipp-actions",
    );
    assert_eq!(namespace.to_string(), KEY_NAMESPACE);
    Uuid::new_v5(&namespace, format!("capture:{order_id}").as_bytes())
}

// ---------------------------------------------------------------------------------------
// Fixture: broker topics, a fresh database, the simulator, the service.

pub struct Fixture {
    pub brokers: String,
    pub topic: String,
    pub commands_topic: String,
    pub kustom_topic: String,
    pub observations_topic: String,
    pub dlq_topic: String,
    pub pool: PgPool,
    pub sim: OmSim,
    pub producer: Producer,
    /// Last: dropped after the services that use it.
    pub database: TestDatabase,
}

impl Fixture {
    /// Fresh topics (`partitions` partitions) and database, and the simulator with the
    /// settings `sim` makes (faults, seed).
    pub async fn new(partitions: i32, sim: impl FnOnce(&mut ipp_om_sim::Config)) -> Self {
        let Wiring {
            brokers,
            topic,
            commands_topic,
            kustom_topic,
            observations_topic,
            dlq_topic,
            database,
            ..
        } = Wiring::create(partitions, "ipp_actions_dlq").await;
        let pool = database.pool().await;
        let mut sim_config = om_sim_config(API_KEY);
        sim(&mut sim_config);
        let sim = OmSim::start_with(sim_config);
        let producer = Producer::new(&brokers, &topic);
        Self {
            brokers,
            topic,
            commands_topic,
            kustom_topic,
            observations_topic,
            dlq_topic,
            pool,
            sim,
            producer,
            database,
        }
    }

    /// `ipp-actions` of `group` with short retry settings (the lease is the product's),
    /// after `configure` changed what the test needs.
    pub fn actions_config(
        &self,
        group: &str,
        configure: impl FnOnce(&mut ipp_actions::Config),
    ) -> ipp_actions::Config {
        let mut config = actions_config(
            &self.brokers,
            &self.topic,
            &self.dlq_topic,
            self.database.url(),
            group,
            OrderManagement {
                url: &self.sim.url,
                api_key: API_KEY,
            },
        );
        // The fixture's own (a test may point `topic` elsewhere and keep this one).
        config.commands_topic = self.commands_topic.clone();
        config.kustom_topic = self.kustom_topic.clone();
        config.observations_topic = self.observations_topic.clone();
        config.http_timeout_ms = 1000;
        config.connect_timeout_ms = 500;
        config.inplace_retries = 3;
        config.inplace_min_delay_ms = 50;
        config.inplace_max_delay_ms = 2000;
        config.retry_min_delay_ms = 200;
        config.retry_max_delay_ms = 2000;
        config.poll_interval_ms = 200;
        config.shutdown_timeout_secs = 5;
        configure(&mut config);
        config
    }

    /// Starts `ipp-actions` in-process (see [`Fixture::actions_config`]).
    pub fn start_actions(
        &self,
        group: &str,
        configure: impl FnOnce(&mut ipp_actions::Config),
    ) -> Actions {
        Actions::InProcess(TestActions::spawn(self.actions_config(group, configure)))
    }

    /// Starts `ipp-actions` as a child process, for the tests that signal it, on port 0:
    /// its address is the one it logs.
    pub fn start_actions_process(
        &self,
        group: &str,
        configure: impl FnOnce(&mut ipp_actions::Config),
    ) -> Actions {
        let mut config = self.actions_config(group, configure);
        config.listen = ListenArgs::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut service = Service::start(&config, &[]);
        let addr = service.listen_addr(Duration::from_secs(30));
        Actions::Process { service, addr }
    }

    /// Produces records exactly as ipp-ingest writes them: raw body, key = session id,
    /// the ingest headers.
    pub async fn produce(&self, events: &[Event]) {
        let bodies: Vec<Vec<u8>> = events.iter().map(Event::body).collect();
        self.producer.send_events(&bodies).await;
    }

    pub async fn produce_raw(&self, key: &str, body: &[u8]) {
        self.producer
            .send_raw(Some(key.as_bytes()), Some(body), OwnedHeaders::new())
            .await;
    }

    pub async fn calls(&self) -> Vec<Value> {
        self.sim
            .get("/_sim/calls")
            .await
            .as_array()
            .expect("calls")
            .clone()
    }

    pub async fn ledger(&self) -> Vec<Row> {
        sqlx::query_as(
            "SELECT order_id, session_id, merchant_id, status, attempts, idempotency_key, \
                 capture_id, captured_amount, reason, last_status_code \
             FROM ipp_actions ORDER BY order_id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default()
    }

    /// Orders the simulator captured whose ledger row is still pending: a capture request
    /// was sent and applied, but its answer has not been recorded.
    pub async fn unrecorded_captures(&self) -> Vec<Uuid> {
        let captured = self.sim.captures_by_order().await;
        let requested: Vec<Uuid> = sqlx::query_scalar(
            "SELECT order_id FROM ipp_actions \
             WHERE status = 'pending' AND capture_requested_at IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        requested
            .into_iter()
            .filter(|o| captured.contains_key(o))
            .collect()
    }

    /// Rows that did not succeed, for assertion messages.
    pub async fn unfinished(&self) -> Vec<Row> {
        let mut rows = self.ledger().await;
        rows.retain(|r| r.status != "succeeded");
        rows
    }

    /// Waits until exactly `n` actions have `status`; fails the test after `within`.
    pub async fn wait_for_count(&self, status: &str, n: i64, within: Duration) {
        eventually(within, &format!("{n} {status} actions"), || async {
            self.count(status).await == n
        })
        .await;
    }

    /// Waits until the ledger holds `n` actions and none is pending; fails after `within`.
    pub async fn wait_until_all_recorded(&self, n: usize, within: Duration) {
        eventually(
            within,
            &format!("{n} actions recorded and none pending"),
            || async { self.ledger().await.len() == n && self.count("pending").await == 0 },
        )
        .await;
    }

    /// Pending actions a worker holds a claim on whose lease has not run out.
    pub async fn claimed(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM ipp_actions WHERE status = 'pending' \
             AND claim_token IS NOT NULL AND next_attempt_at > now()",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap_or(0)
    }

    pub async fn count(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM ipp_actions WHERE status = $1")
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .unwrap_or(0)
    }

    /// Runs the operator command `ipp-actions args…` as a child process, with the
    /// configuration of consumer group `group`.
    pub async fn cli(&self, group: &str, args: &[&str]) -> cli::Output {
        let env = self.actions_config(group, |_| {}).env();
        cli::run_async("ipp-actions", args, &env, Duration::from_secs(60)).await
    }

    /// Waits (up to 30 s) until the DLQ topic holds `n` records.
    pub async fn wait_for_dlq_records(&self, n: usize, what: &str) {
        eventually(Duration::from_secs(30), what, || {
            std::future::ready(kafka::read_topic(&self.brokers, &self.dlq_topic).len() == n)
        })
        .await;
    }

    /// Waits (up to 30 s) until the order's action has `status`.
    pub async fn wait_for_status(&self, order: Uuid, status: &str, what: &str) {
        eventually(Duration::from_secs(30), what, || async {
            self.status_of(order).await == status
        })
        .await;
    }

    /// The status of the order's action ("" while there is none).
    pub async fn status_of(&self, order: Uuid) -> String {
        sqlx::query_scalar("SELECT status FROM ipp_actions WHERE order_id = $1")
            .bind(order)
            .fetch_optional(&self.pool)
            .await
            // Before ipp-actions migrated, the table does not exist yet.
            .unwrap_or(None)
            .unwrap_or_default()
    }

    /// Each order captured exactly once in the simulator, for its authorized amount, and
    /// its ledger row `succeeded` with that capture's id and the deterministic key.
    pub async fn assert_captured_once(&self, finalized: &[Event]) {
        let by_order = self.sim.captures_by_order().await;
        let ledger: HashMap<Uuid, Row> = self
            .ledger()
            .await
            .into_iter()
            .map(|r| (r.order_id, r))
            .collect();
        for event in finalized {
            let order_id = event.order_id.expect("finalized events have an order");
            assert_eq!(by_order.get(&order_id), Some(&1), "captures of {order_id}");
            let order = self.sim.get(&format!("/_sim/orders/{order_id}")).await;
            let amount = ipp_om_sim::authorized_amount_for(&order_id);
            assert_eq!(order["captured_amount"], json!(amount), "{order}");
            assert_eq!(order["effects"]["captures"], json!(1), "{order}");
            let capture = &order["captures"][0];
            assert_eq!(capture["reference"], json!(event.session_id.to_string()));
            let row = ledger.get(&order_id).expect("ledger row");
            assert_eq!(row.status, "succeeded", "{row:?}");
            assert_eq!(row.session_id, Some(event.session_id));
            assert_eq!(row.idempotency_key, expected_key(order_id));
            assert_eq!(row.captured_amount, Some(amount));
            assert_eq!(row.capture_id.as_deref(), capture["capture_id"].as_str());
            assert_eq!(row.merchant_id.as_deref(), Some(MERCHANT));
        }
    }
}

/// `ipp-actions`' defaults, for the tests that must run with what the product ships.
pub fn product_defaults() -> ipp_actions::Config {
    ipp_actions::cli::Cli::try_parse_from(["ipp-actions"])
        .expect("defaults")
        .config
}

/// A running `ipp-actions`.
pub type Actions = Running<ipp_actions::Error>;

#[derive(Debug, sqlx::FromRow)]
#[allow(dead_code, reason = "fields are printed in assertion messages")]
pub struct Row {
    pub order_id: Uuid,
    /// `None` for a command.
    pub session_id: Option<Uuid>,
    pub merchant_id: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub idempotency_key: Uuid,
    pub capture_id: Option<String>,
    pub captured_amount: Option<i64>,
    pub reason: Option<String>,
    pub last_status_code: Option<i32>,
}

// ---------------------------------------------------------------------------------------
// Events.

pub const MERCHANT: &str = "DM11917000";

#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event_type: &'static str,
    pub session_id: Uuid,
    pub order_id: Option<Uuid>,
    pub timestamp: DateTime<Utc>,
}

impl Event {
    pub fn new(event_type: &'static str, session_id: Uuid, order_id: Option<Uuid>) -> Self {
        Self {
            id: format!("kevt_{}", Uuid::new_v4().simple()),
            event_type,
            session_id,
            order_id,
            timestamp: Utc::now(),
        }
    }

    pub fn finalized() -> Self {
        Self::new(
            "ipp.session.finalized",
            Uuid::new_v4(),
            Some(Uuid::new_v4()),
        )
    }

    pub fn body(&self) -> Vec<u8> {
        let failure = (self.event_type == "ipp.payment.failed").then_some("DECLINED");
        json!({
            "id": self.id,
            "merchant_id": MERCHANT,
            "timestamp": ipp_schemas::record::format_timestamp(self.timestamp),
            "type": self.event_type,
            "data": {
                "session_id": self.session_id,
                "order_id": self.order_id,
                "failure_reason": failure,
            }
        })
        .to_string()
        .into_bytes()
    }
}

pub fn finalized(n: usize) -> Vec<Event> {
    (0..n).map(|_| Event::finalized()).collect()
}

/// After every 429, the next call for the same order came no sooner than Retry-After
/// (timestamps are the simulator's arrival times). Returns how many retries it checked.
pub fn assert_retry_after_respected(calls: &[Value], retry_after: u64) -> usize {
    let retry_after = i64::try_from(retry_after).expect("seconds");
    let mut by_order: HashMap<String, Vec<&Value>> = HashMap::new();
    for call in calls {
        let path = call["path"].as_str().unwrap();
        let order = path.split('/').nth(4).unwrap_or_default().to_owned();
        by_order.entry(order).or_default().push(call);
    }
    let at = |c: &Value| DateTime::parse_from_rfc3339(c["at"].as_str().unwrap()).unwrap();
    let mut checked = 0;
    for order_calls in by_order.values() {
        for pair in order_calls.windows(2) {
            if pair[0]["status"] == json!(429) {
                let gap = at(pair[1]) - at(pair[0]);
                assert!(
                    gap >= chrono::Duration::seconds(retry_after),
                    "retried {gap} after a 429 with Retry-After {retry_after}: {pair:?}"
                );
                checked += 1;
            }
        }
    }
    checked
}
