//! Starting the service binaries with the environment they need and waiting until they
//! listen, and waiting for what they do to settle.

use std::{collections::HashMap, time::Duration};

use serde_json::Value;
use uuid::Uuid;

pub use crate::eventually::eventually;
use crate::{
    free_port,
    process::{wait_for_tcp, Service},
};

/// Starts `binary` with `env` plus `http_var` set to `127.0.0.1:<a free port>`, and
/// waits up to `within` until it listens there. Returns the service and the port.
pub fn spawn_listening(
    binary: &str,
    env: &[(&str, String)],
    http_var: &'static str,
    within: Duration,
) -> (Service, u16) {
    let port = free_port();
    let mut all = env.to_vec();
    all.push((http_var, format!("127.0.0.1:{port}")));
    let service = Service::spawn(binary, &[], &all);
    wait_for_tcp(port, within);
    (service, port)
}

/// A running Order Management simulator (`ipp-om-sim`).
pub struct OmSim {
    pub service: Service,
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub url: String,
    http: reqwest::Client,
}

impl OmSim {
    /// Starts `ipp-om-sim` accepting `api_key`, with `extra` environment (fault
    /// settings), and waits up to `within` until it listens.
    pub fn start(api_key: &str, extra: &[(&str, String)], within: Duration) -> Self {
        let mut env = vec![("OM_SIM_API_KEY", api_key.to_owned())];
        env.extend(extra.iter().cloned());
        let (service, port) = spawn_listening("ipp-om-sim", &env, "OM_SIM_LISTEN", within);
        Self {
            service,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    /// GETs `path` (e.g. `/_sim/stats`) from the simulator; asserts a 2xx, returns the JSON.
    pub async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("simulator answers");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("json")
    }

    /// PUTs `body` to `path` (e.g. `/_sim/orders/<id>`, `/_sim/faults`); asserts a 2xx.
    pub async fn put(&self, path: &str, body: Value) {
        let response = self
            .http
            .put(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("simulator answers");
        assert!(
            response.status().is_success(),
            "PUT {path}: {}",
            response.status()
        );
    }

    /// Captures the simulator applied, per order.
    pub async fn captures_by_order(&self) -> HashMap<Uuid, u64> {
        let stats = self.get("/_sim/stats").await;
        stats["captures_by_order"]
            .as_object()
            .expect("captures_by_order")
            .iter()
            .map(|(k, v)| (k.parse().expect("uuid"), v.as_u64().expect("count")))
            .collect()
    }
}

/// The environment `ipp-projector` (the service or a one-shot command) needs: the
/// broker, the event topic and its DLQ topic, the database and the consumer group.
pub fn projector_env(
    brokers: &str,
    topic: &str,
    dlq_topic: &str,
    database_url: &str,
    group: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("IPP_TOPIC", topic.to_owned()),
        ("IPP_DLQ_TOPIC", dlq_topic.to_owned()),
        ("DATABASE_URL", database_url.to_owned()),
        ("PROJECTOR_GROUP", group.to_owned()),
    ]
}

/// Where `ipp-actions` sends its captures: the Order Management API and its key.
#[derive(Clone, Copy)]
pub struct OrderManagement<'a> {
    pub url: &'a str,
    pub api_key: &'a str,
}

/// The environment `ipp-actions` (the service or a one-shot command) needs: the
/// broker, the event topic and its DLQ topic, the database, the consumer group and
/// the Order Management API.
pub fn actions_env(
    brokers: &str,
    topic: &str,
    dlq_topic: &str,
    database_url: &str,
    group: &str,
    om: OrderManagement<'_>,
) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("IPP_TOPIC", topic.to_owned()),
        ("ACTIONS_DLQ_TOPIC", dlq_topic.to_owned()),
        ("DATABASE_URL", database_url.to_owned()),
        ("ACTIONS_GROUP", group.to_owned()),
        ("KUSTOM_API_URL", om.url.to_owned()),
        ("KUSTOM_API_KEY", om.api_key.to_owned()),
    ]
}

/// What one test's services share, all fresh: an event topic, its DLQ topic and a
/// database.
pub struct Wiring {
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    pub database_url: String,
    pub database: crate::db::TestDatabase,
}

impl Wiring {
    /// Creates an `ipp_events…` topic with `partitions` partitions, a one-partition DLQ
    /// topic named after `dlq_prefix`, and an empty database.
    pub async fn create(partitions: i32, dlq_prefix: &str) -> Self {
        let brokers = crate::kafka::brokers();
        let topic = crate::kafka::create_topic(&brokers, "ipp_events", partitions).await;
        let dlq_topic = crate::kafka::create_topic(&brokers, dlq_prefix, 1).await;
        let database = crate::db::fresh_database().await;
        Self {
            brokers,
            topic,
            dlq_topic,
            database_url: database.url().to_owned(),
            database,
        }
    }
}
