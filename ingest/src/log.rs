//! The Kafka side: appending a webhook body to the log and waiting for the broker's
//! acknowledgement. acks=all plus the idempotent producer is what makes a 200 mean
//! "stored"; `message.timeout.ms` bounds how long a request can wait for it.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use ipp_schemas::{RecordHeaders, Route};
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
    ClientConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("kafka did not acknowledge the record: {0}")]
    Kafka(#[source] KafkaError),
    #[error("kafka did not acknowledge the record within {0:?}")]
    TimedOut(Duration),
}

#[derive(Debug, thiserror::Error)]
#[error("could not create the kafka producer: {0}")]
pub struct ProducerConfigError(#[source] KafkaError);

/// Where an appended record landed.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub partition: i32,
    pub offset: i64,
}

pub struct EventLog {
    client_config: ClientConfig,
    // Replaced when the broker keeps refusing it (see `recover_after`).
    producer: RwLock<Arc<FutureProducer>>,
    ipp_topic: String,
    other_topic: String,
    timeout: Duration,
}

impl EventLog {
    pub fn new(
        brokers: &str,
        extra_properties: &[(String, String)],
        ipp_topic: String,
        other_topic: String,
        timeout: Duration,
    ) -> Result<Self, ProducerConfigError> {
        let timeout_ms = timeout.as_millis().max(1).to_string();
        let mut client_config = ClientConfig::new();
        client_config
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", &timeout_ms)
            .set("request.timeout.ms", &timeout_ms)
            .set("linger.ms", "2")
            .set("client.id", "ipp-ingest");
        for (key, value) in extra_properties {
            client_config.set(key, value);
        }
        let producer = client_config.create().map_err(ProducerConfigError)?;
        Ok(Self {
            client_config,
            producer: RwLock::new(Arc::new(producer)),
            ipp_topic,
            other_topic,
            timeout,
        })
    }

    pub fn topic_for(&self, route: &Route) -> &str {
        if route.is_ipp() {
            &self.ipp_topic
        } else {
            &self.other_topic
        }
    }

    fn producer(&self) -> Arc<FutureProducer> {
        self.producer.read().expect("producer lock").clone()
    }

    /// Appends `body` as is and resolves once the broker acknowledged it.
    pub async fn append(
        &self,
        route: &Route,
        body: &[u8],
        headers: &RecordHeaders,
    ) -> Result<Appended, AppendError> {
        let producer = self.producer();
        let record = FutureRecord::to(self.topic_for(route))
            .key(route.key())
            .payload(body)
            .headers(headers.to_kafka());
        // librdkafka fails the delivery after message.timeout.ms; the outer timeout only
        // guards against a report that never comes.
        let send = producer.send(record, Timeout::After(self.timeout));
        let result = tokio::time::timeout(self.timeout + Duration::from_secs(1), send).await;
        match result {
            Ok(Ok(delivery)) => Ok(Appended {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _message))) => {
                if error.rdkafka_error_code() != Some(RDKafkaErrorCode::QueueFull) {
                    self.replace(&producer, &error);
                }
                Err(AppendError::Kafka(error))
            }
            // The record may still be in flight: the producer is as suspect as after a
            // failed delivery (a loaded machine can report later than the outer guard).
            Err(_) => {
                let error = AppendError::TimedOut(self.timeout);
                self.replace(&producer, &error);
                Err(error)
            }
        }
    }

    /// After a failed or timed-out delivery, start over with a new producer (a new producer id).
    /// An idempotent producer whose records timed out keeps sequence numbers the broker
    /// never saw; Apache Kafka recovers from that by an epoch bump, but tansu's storage
    /// panics on it and stops serving (seen with tansu 0.6.0). A fresh producer is
    /// always safe. Only the current producer is replaced, and a producer fails only after
    /// the produce timeout, so this happens at most once per timeout even under load.
    fn replace(&self, failed: &Arc<FutureProducer>, error: &dyn std::fmt::Display) {
        let mut current = self.producer.write().expect("producer lock");
        if !Arc::ptr_eq(&current, failed) {
            return; // another request already replaced it
        }
        tracing::warn!(%error, "delivery failed; replacing the kafka producer");
        match self.client_config.create::<FutureProducer>() {
            Ok(producer) => {
                let old = std::mem::replace(&mut *current, Arc::new(producer));
                // Dropping a producer waits for its queue: keep that off the async workers.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(error) => tracing::error!(%error, "could not recreate the kafka producer"),
        }
    }

    /// Whether a broker answers a metadata request within `within`.
    pub async fn is_reachable(&self, within: Duration) -> bool {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, within).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Waits for every queued record to be delivered (or to fail) within `within`.
    pub async fn flush(&self, within: Duration) -> Result<(), KafkaError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(within))
            .await
            .unwrap_or(Ok(()))
    }
}
