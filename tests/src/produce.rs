//! Writing records exactly as ipp-ingest does (value = raw body, key = session id for
//! `ipp.*` events or the event id otherwise, headers = `RecordHeaders::to_kafka()`),
//! and building event bodies.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ipp_schemas::{record::format_timestamp, RecordHeaders, Route};
use rdkafka::{
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
    ClientConfig,
};
use uuid::Uuid;

pub struct Producer {
    producer: FutureProducer,
    pub topic: String,
}

impl Producer {
    pub fn new(brokers: &str, topic: &str) -> Self {
        Self::compressing(brokers, topic, "none")
    }

    /// A producer whose batches are compressed with `codec` (`none`, `gzip`, `snappy`,
    /// `lz4`, `zstd`), as another system writing to the log might.
    pub fn compressing(brokers: &str, topic: &str, codec: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "ipp-tests")
            .set("allow.auto.create.topics", "false")
            .set("acks", "all")
            .set("compression.type", codec)
            .set("message.timeout.ms", "30000")
            .create()
            .expect("producer");
        Self {
            producer,
            topic: topic.to_owned(),
        }
    }

    /// The headers ingest would write for `body`, received now.
    pub fn headers_for(body: &[u8]) -> RecordHeaders {
        let route = Route::parse(body).expect("body routes like ingest would accept it");
        RecordHeaders {
            event_id: route.event_id,
            event_type: route.event_type,
            merchant_id: route.merchant_id,
            webhook_id: format!("msg_{}", Uuid::new_v4().simple()),
            webhook_timestamp: Utc::now().timestamp().to_string(),
            received_at: Utc::now(),
        }
    }

    /// Produces `body` as ingest would and returns `(partition, offset)`.
    pub async fn send_event(&self, body: &[u8]) -> (i32, i64) {
        let route = Route::parse(body).expect("body routes like ingest would accept it");
        let headers = Self::headers_for(body);
        self.send_raw(Some(route.key().as_bytes()), Some(body), headers.to_kafka())
            .await
    }

    /// Produces any record (for poison records) and returns `(partition, offset)`.
    pub async fn send_raw(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> (i32, i64) {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        let delivery = self
            .producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {}: {e}", self.topic));
        (delivery.partition, delivery.offset)
    }

    /// Produces many bodies as ingest would: all enqueued at once, then every delivery
    /// awaited. Order within a key (a session) is the order of `bodies`. Returns the
    /// next offset after the last record written, per partition.
    pub async fn send_events(&self, bodies: &[Vec<u8>]) -> std::collections::BTreeMap<i32, i64> {
        let mut ends = std::collections::BTreeMap::new();
        for (partition, offset) in self.send_events_at(bodies).await {
            let end = ends.entry(partition).or_insert(0);
            *end = (*end).max(offset + 1);
        }
        ends
    }

    /// Like [`Producer::send_events`], returning where each body was written.
    pub async fn send_events_at(&self, bodies: &[Vec<u8>]) -> Vec<(i32, i64)> {
        let mut deliveries = Vec::with_capacity(bodies.len());
        for body in bodies {
            let route = Route::parse(body).expect("body routes like ingest would accept it");
            let headers = Self::headers_for(body).to_kafka();
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                .key(route.key().as_bytes())
                .payload(body.as_slice())
                .headers(headers);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((e, returned)) => {
                        assert!(
                            matches!(
                                e,
                                rdkafka::error::KafkaError::MessageProduction(
                                    rdkafka::types::RDKafkaErrorCode::QueueFull
                                )
                            ),
                            "produce to {}: {e}",
                            self.topic
                        );
                        record = returned;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
        let mut positions = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let delivered = delivery
                .await
                .expect("delivery future")
                .unwrap_or_else(|(e, _)| panic!("produce to {}: {e}", self.topic));
            positions.push((delivered.partition, delivered.offset));
        }
        positions
    }
}

/// An `ipp.*` webhook body in Kustom's envelope.
pub fn ipp_body(
    event_id: &str,
    event_type: &str,
    merchant_id: &str,
    session_id: Uuid,
    timestamp: DateTime<Utc>,
    order_id: Option<Uuid>,
    failure_reason: Option<&str>,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": event_id,
        "merchant_id": merchant_id,
        "timestamp": format_timestamp(timestamp),
        "type": event_type,
        "data": {
            "session_id": session_id,
            "order_id": order_id,
            "failure_reason": failure_reason,
        },
    }))
    .expect("json")
}
