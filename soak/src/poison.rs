//! Deliberately unusable records, produced straight to the event topic during the load
//! (as a buggy or foreign producer would), so that the dead-letter topics have something
//! to explain. Each value carries a marker, `soak-poison-<n>`, that no webhook body has.

use std::time::Duration;

use chrono::Utc;
use ipp_schemas::{topics, RecordHeaders};
use rdkafka::{
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
    ClientConfig,
};
use serde::Serialize;
use uuid::Uuid;

pub const MARKER: &str = "soak-poison-";

/// One injected record and where the broker put it.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    pub marker: String,
    pub kind: &'static str,
    pub partition: i32,
    pub offset: i64,
}

const KINDS: [&str; 4] = [
    "truncated_json",
    "session_id_not_a_uuid",
    "data_not_an_object",
    "finalized_without_order_id",
];

/// The value and key of poison record `n`.
fn poison(n: usize) -> (&'static str, String, Vec<u8>) {
    let kind = KINDS[n % KINDS.len()];
    let marker = format!("{MARKER}{n}");
    let session = Uuid::new_v4();
    let value = match kind {
        "truncated_json" => format!(
            r#"{{"id":"kevt_{marker}","type":"ipp.session.finalized","data":{{"session_id":"{session}","order_id":"#
        ),
        "session_id_not_a_uuid" => format!(
            r#"{{"id":"kevt_{marker}","merchant_id":"DM-soak","timestamp":"2026-06-05T08:00:00Z","type":"ipp.session.created","data":{{"session_id":"{marker}"}}}}"#
        ),
        "data_not_an_object" => format!(
            r#"{{"id":"kevt_{marker}","merchant_id":"DM-soak","timestamp":"2026-06-05T08:00:00Z","type":"ipp.session.activated","data":"{marker}"}}"#
        ),
        _ => format!(
            r#"{{"id":"kevt_{marker}","merchant_id":"DM-soak","timestamp":"2026-06-05T08:00:00Z","type":"ipp.session.finalized","data":{{"session_id":"{session}"}}}}"#
        ),
    };
    (kind, session.to_string(), value.into_bytes())
}

pub struct PoisonProducer {
    producer: FutureProducer,
}

impl PoisonProducer {
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "ipp-soak-poison")
            .set("allow.auto.create.topics", "false")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Longer than any broker outage of the run: a record that timed out might
            // still be in the log, and then nobody could explain it.
            .set("message.timeout.ms", "600000")
            .create()?;
        Ok(Self { producer })
    }

    /// Produces poison record `n` to `ipp.events` with the headers ingest would write.
    pub async fn inject(&self, n: usize) -> anyhow::Result<Injected> {
        let (kind, key, value) = poison(n);
        let marker = format!("{MARKER}{n}");
        let headers = RecordHeaders {
            event_id: format!("kevt_{marker}"),
            event_type: "ipp.session.created".into(),
            merchant_id: Some("DM-soak".into()),
            webhook_id: format!("msg_{marker}"),
            webhook_timestamp: Utc::now().timestamp().to_string(),
            received_at: Utc::now(),
        };
        let record = FutureRecord::to(topics::IPP_EVENTS)
            .key(key.as_bytes())
            .payload(value.as_slice())
            .headers(headers.to_kafka());
        let delivered = self
            .producer
            .send(record, Timeout::After(Duration::from_secs(600)))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce poison record {n}: {e}"))?;
        Ok(Injected {
            marker,
            kind,
            partition: delivered.partition,
            offset: delivered.offset,
        })
    }
}

/// Injects `count` records evenly over `window`.
pub async fn run(brokers: String, count: usize, window: Duration) -> anyhow::Result<Vec<Injected>> {
    let producer = PoisonProducer::new(&brokers)?;
    let mut injected = Vec::with_capacity(count);
    let gap = window.div_f64(count.max(1) as f64 + 1.0);
    for n in 0..count {
        tokio::time::sleep(gap).await;
        injected.push(producer.inject(n).await?);
    }
    Ok(injected)
}
