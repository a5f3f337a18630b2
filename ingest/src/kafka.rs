//! The Kafka side: appending a webhook body to the log and waiting for the broker's
//! acknowledgement. acks=all plus the idempotent producer is what makes a 200 mean
//! "stored"; `message.timeout.ms` bounds how long a request can wait for it.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use ipp_service::{kafka::TopicsUnavailable, KafkaArgs};
use prometheus::IntCounter;
use rdkafka::{
    error::KafkaError,
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
    ClientConfig,
};

use crate::place::Topic;

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("kafka did not acknowledge the record: {0}")]
    Kafka(#[source] KafkaError),
    #[error("kafka did not acknowledge the record within {0:?}")]
    TimedOut(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerConfigError {
    #[error("could not create the kafka producer: {0}")]
    Create(#[source] KafkaError),
    #[error("KAFKA_PROPERTIES sets {key}={value}, which would weaken what a 200 means: {why}")]
    Weakening {
        key: String,
        value: String,
        why: &'static str,
    },
}

/// The producer settings a 200 relies on. A `KAFKA_PROPERTIES` entry may repeat them but
/// not weaken them: ingest refuses to start rather than acknowledge what a broker could
/// lose (acks below all), store twice or out of order on a retry (no idempotence), or
/// reorder (more in flight than idempotence keeps in order).
const DURABILITY: &[(&str, &str)] = &[("acks", "all"), ("enable.idempotence", "true")];

/// Batches are compressed (cheaply: JSON webhooks shrink several times); consumers
/// read lz4, zstd, gzip and snappy alike. An operator may choose another codec with
/// `KAFKA_PROPERTIES=compression.type=...`.
pub const COMPRESSION: &str = "lz4";

/// librdkafka keeps order and exactly-once per partition with idempotence for up to
/// five requests in flight per connection.
const MAX_IN_FLIGHT_WITH_IDEMPOTENCE: u32 = 5;

fn check_properties(kafka: &KafkaArgs) -> Result<(), ProducerConfigError> {
    for (key, value) in kafka.properties() {
        let weakening = |why| ProducerConfigError::Weakening {
            key: key.to_owned(),
            value: value.to_owned(),
            why,
        };
        let normalized = value.trim().to_ascii_lowercase();
        match key {
            "acks" | "request.required.acks" if !matches!(normalized.as_str(), "all" | "-1") => {
                return Err(weakening(
                    "a 200 means every in-sync replica has the record (acks=all)",
                ));
            }
            "enable.idempotence" if normalized != "true" => {
                return Err(weakening(
                    "the idempotent producer keeps retries from storing a record twice or out of order",
                ));
            }
            "max.in.flight.requests.per.connection" | "max.in.flight"
                if normalized
                    .parse::<u32>()
                    .map_or(true, |n| n > MAX_IN_FLIGHT_WITH_IDEMPOTENCE) =>
            {
                return Err(weakening(
                    "the idempotent producer keeps order for at most 5 requests in flight",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub partition: i32,
    pub offset: i64,
}

pub struct EventLog {
    client_config: ClientConfig,
    // Replaced only after a fatal error (see `replace_if_fatal`).
    producer: RwLock<Arc<FutureProducer>>,
    ipp_topic: String,
    other_topic: String,
    timeout: Duration,
    replacements: IntCounter,
}

impl EventLog {
    pub fn new(
        kafka: &KafkaArgs,
        ipp_topic: String,
        other_topic: String,
        timeout: Duration,
        replacements: IntCounter,
    ) -> Result<Self, ProducerConfigError> {
        check_properties(kafka)?;
        let timeout_ms = timeout.as_millis().max(1).to_string();
        let mut settings = DURABILITY.to_vec();
        settings.extend([
            ("message.timeout.ms", timeout_ms.as_str()),
            ("request.timeout.ms", timeout_ms.as_str()),
            ("linger.ms", "2"),
            ("compression.type", COMPRESSION),
        ]);
        let client_config = ipp_service::kafka::client_config(kafka, "ipp-ingest", &settings);
        let producer = client_config
            .create()
            .map_err(ProducerConfigError::Create)?;
        Ok(Self {
            client_config,
            producer: RwLock::new(Arc::new(producer)),
            ipp_topic,
            other_topic,
            timeout,
            replacements,
        })
    }

    pub fn topic_name(&self, topic: Topic) -> &str {
        match topic {
            Topic::Ipp => &self.ipp_topic,
            Topic::Other => &self.other_topic,
        }
    }

    fn producer(&self) -> Arc<FutureProducer> {
        self.producer.read().expect("producer lock").clone()
    }

    /// Appends `body` as is and resolves once the broker acknowledged it. A record
    /// without a key goes to a partition of librdkafka's choosing.
    pub async fn append(
        &self,
        topic: Topic,
        key: Option<&str>,
        body: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Appended, AppendError> {
        let producer = self.producer();
        let mut record = FutureRecord::to(self.topic_name(topic))
            .payload(body)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        let send = producer.send(record, Timeout::After(self.timeout));
        let result = tokio::time::timeout(self.timeout + Duration::from_secs(1), send).await;
        match result {
            Ok(Ok(delivery)) => Ok(Appended {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _message))) => {
                self.replace_if_fatal(&producer);
                Err(AppendError::Kafka(error))
            }
            // librdkafka fails a delivery after message.timeout.ms; the outer guard only
            // catches a report that never comes.
            Err(_) => {
                self.replace_if_fatal(&producer);
                Err(AppendError::TimedOut(self.timeout))
            }
        }
    }

    /// After a failed delivery, replaces the producer only if librdkafka reports a fatal
    /// error, after which that instance can never produce again (for example a broker
    /// that fenced its producer id). Anything else, a broker outage and timed-out
    /// records included, the idempotent producer recovers from by itself (it bumps its
    /// epoch and resets the sequence numbers), so the same producer is kept.
    fn replace_if_fatal(&self, failed: &Arc<FutureProducer>) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut current = self.producer.write().expect("producer lock");
        if !Arc::ptr_eq(&current, failed) {
            return; // another request already replaced it
        }
        tracing::error!(?code, %reason, "fatal kafka producer error; replacing the producer");
        match self.client_config.create::<FutureProducer>() {
            Ok(producer) => {
                self.replacements.inc();
                let old = std::mem::replace(&mut *current, Arc::new(producer));
                // Dropping a producer waits for its queue: keep that off the async workers.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(error) => tracing::error!(%error, "could not recreate the kafka producer"),
        }
    }

    /// Whether the broker answers and both topics exist (at most 2 s per topic).
    pub async fn check_topics(&self) -> Result<(), TopicsUnavailable> {
        const WITHIN: Duration = Duration::from_secs(2);
        let producer = self.producer();
        let topics = [self.ipp_topic.clone(), self.other_topic.clone()];
        tokio::task::spawn_blocking(move || {
            ipp_service::kafka::check_topics(producer.client(), &topics, WITHIN)
        })
        .await
        .unwrap_or_else(|e| panic!("topic check panicked: {e}"))
    }

    /// Waits for every queued record to be delivered (or to fail) within `within`.
    pub async fn flush(&self, within: Duration) -> Result<(), KafkaError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(within))
            .await
            .unwrap_or(Ok(()))
    }
}
