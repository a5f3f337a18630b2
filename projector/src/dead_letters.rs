//! The dead-letter topic: records that can never be projected, parked with their
//! provenance so an operator can inspect, fix and redrive them.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use ipp_schemas::{
    dlq::{header as dlq, DlqService},
    record::format_timestamp,
};
use rdkafka::{
    message::{Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};

use crate::{config::Config, kafka::consumed::ConsumedRecord, Error};

const SERVICE: &str = DlqService::Projector.as_str();

pub struct DeadLetters {
    producer: Arc<FutureProducer>,
    topic: String,
}

impl DeadLetters {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let client = ipp_service::kafka::client_config(
            &config.kafka,
            crate::config::CLIENT_ID,
            &[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("message.timeout.ms", "30000"),
            ],
        );
        Ok(Self {
            producer: Arc::new(client.create()?),
            topic: config.dlq_topic.clone(),
        })
    }

    /// The producer, for metadata requests (the topic checks) off the async workers.
    pub fn producer(&self) -> Arc<FutureProducer> {
        self.producer.clone()
    }

    /// Produces every record and waits until the broker has acknowledged all of them.
    /// The caller advances its stored offset only after this returns `Ok`.
    pub async fn send_all(&self, records: &[(&ConsumedRecord, String)]) -> Result<(), Error> {
        let failed_at = format_timestamp(Utc::now());
        let mut pending = Vec::with_capacity(records.len());
        for (message, error) in records {
            let partition = message.partition().to_string();
            let offset = message.offset().to_string();
            let mut headers = OwnedHeaders::new();
            if let Some(original) = message.headers() {
                for header in original.iter() {
                    headers = headers.insert(Header {
                        key: header.key,
                        value: header.value,
                    });
                }
            }
            for (key, value) in [
                (dlq::SOURCE_TOPIC, message.topic()),
                (dlq::SOURCE_PARTITION, partition.as_str()),
                (dlq::SOURCE_OFFSET, offset.as_str()),
                (dlq::ERROR, error.as_str()),
                (dlq::FAILED_AT, failed_at.as_str()),
                (dlq::SERVICE, SERVICE),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            let delivery =
                self.producer
                    .send_result(record)
                    .map_err(|(source, _)| Error::DeadLetter {
                        partition: message.partition(),
                        offset: message.offset(),
                        source,
                    })?;
            pending.push((message.partition(), message.offset(), delivery));
        }
        for (partition, offset, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => {
                    return Err(Error::DeadLetter {
                        partition,
                        offset,
                        source,
                    })
                }
                // The producer was dropped before delivering: treat as not delivered.
                Err(_canceled) => {
                    return Err(Error::DeadLetter {
                        partition,
                        offset,
                        source: rdkafka::error::KafkaError::Canceled,
                    })
                }
            }
        }
        Ok(())
    }

    /// Waits (bounded) for anything still in flight, at shutdown. On a blocking thread:
    /// ipp-projector's one thread also serves the probes and the orders model meanwhile.
    pub async fn flush(&self) {
        use rdkafka::producer::Producer;
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    }
}
