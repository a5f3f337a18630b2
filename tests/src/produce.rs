//! Writing records exactly as ipp-ingest does (value = raw body, key = session id for
//! `ipp.*` events or the event id otherwise, headers = `RecordHeaders::to_kafka()`;
//! a signed body it cannot route as [`unroutable`] says), and building event bodies.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ipp_schemas::{
    record::{format_timestamp, header::ROUTE_ERROR},
    RecordHeaders, Route,
};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
    ClientConfig,
};
use uuid::Uuid;

pub struct Producer {
    producer: FutureProducer,
    config: ClientConfig,
    pub topic: String,
}

impl Producer {
    pub fn new(brokers: &str, topic: &str) -> Self {
        Self::compressing(brokers, topic, "none")
    }

    /// A producer whose batches are compressed with `codec` (`none`, `gzip`, `snappy`,
    /// `lz4`, `zstd`), as another system writing to the log might.
    pub fn compressing(brokers: &str, topic: &str, codec: &str) -> Self {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "ipp-tests")
            .set("allow.auto.create.topics", "false")
            .set("acks", "all")
            .set("compression.type", codec)
            .set("message.timeout.ms", "30000");
        Self {
            producer: config.create().expect("producer"),
            config,
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

    /// Produces a signed body ingest cannot route as ingest stores it ([`unroutable`]),
    /// on this producer's topic; returns `(partition, offset)`.
    pub async fn send_unroutable(&self, body: &[u8]) -> (i32, i64) {
        let (key, headers) = unroutable(body);
        self.send_raw(Some(&key), Some(body), headers).await
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

    /// Produces a record whose headers are `headers`, then one header named with raw
    /// bytes that need not be UTF-8, as another producer may write one (rdkafka's own API
    /// only takes `&str` names); returns `(partition, offset)`.
    pub async fn send_with_raw_name(
        &self,
        key: &[u8],
        value: &[u8],
        headers: &OwnedHeaders,
        (raw_name, raw_value): (&[u8], &[u8]),
    ) -> (i32, i64) {
        use rdkafka::{
            message::Headers,
            producer::{BaseProducer, DeliveryResult, Producer as _, ProducerContext},
            ClientContext, Message,
        };
        #[derive(Default)]
        struct Delivered(std::sync::Mutex<Option<Result<(i32, i64), String>>>);
        impl ClientContext for Delivered {}
        impl ProducerContext for Delivered {
            type DeliveryOpaque = ();
            fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
                let outcome = match result {
                    Ok(m) => Ok((m.partition(), m.offset())),
                    Err((e, _)) => Err(e.to_string()),
                };
                *self.0.lock().unwrap() = Some(outcome);
            }
        }
        let producer: BaseProducer<Delivered> = self
            .config
            .create_with_context(Delivered::default())
            .expect("producer");
        let mut all: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|h| (h.key.as_bytes(), h.value.unwrap_or_default()))
            .collect();
        all.push((raw_name, raw_value));
        ipp_kafka_headers::produce_with_raw_names(&producer, &self.topic, key, value, &all)
            .unwrap_or_else(|e| panic!("produce to {}: {e}", self.topic));
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .flush(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("flush to {topic}: {e}"));
            let delivered = producer.context().0.lock().unwrap().take();
            delivered
                .expect("a delivery report after the flush")
                .unwrap_or_else(|e| panic!("produce to {topic}: {e}"))
        })
        .await
        .expect("the produce task")
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

/// The key and headers ingest writes for a signed body it cannot route (not JSON, not
/// an object, no string `id`/`type`, an `ipp.*` event without a string
/// `data.session_id`): key = the body's string `id`, else the webhook id; the
/// `kustom-event-id`/`-type` headers = the body's strings, else empty; and
/// `ipp-route-error: CODE: message`. Panics for a body that routes.
pub fn unroutable(body: &[u8]) -> (Vec<u8>, OwnedHeaders) {
    let error = Route::parse(body).expect_err("a body ingest cannot route");
    let object = serde_json::from_slice::<serde_json::Value>(body).ok();
    let string = |field: &str| {
        object
            .as_ref()
            .and_then(|o| o.get(field))
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let webhook_id = format!("msg_{}", Uuid::new_v4().simple());
    let headers = RecordHeaders {
        event_id: string("id").unwrap_or_default(),
        event_type: string("type").unwrap_or_default(),
        merchant_id: string("merchant_id"),
        webhook_id: webhook_id.clone(),
        webhook_timestamp: Utc::now().timestamp().to_string(),
        received_at: Utc::now(),
    };
    let reason = error.header_value();
    let headers = headers.to_kafka().insert(Header {
        key: ROUTE_ERROR,
        value: Some(reason.as_str()),
    });
    let key = string("id").unwrap_or(webhook_id);
    (key.into_bytes(), headers)
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
