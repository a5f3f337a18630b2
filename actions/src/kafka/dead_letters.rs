//! The dead-letter topic (`ipp.actions.dlq`): actions that failed for good, and consumed
//! records this service cannot use (unparseable, unroutable, refused by PostgreSQL).
//! Every record carries the `dlq-*` headers.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use ipp_kafka_headers::HeadersCopy;
use ipp_schemas::{
    dlq::{header as dlq, DlqService, FailedActionRecord, FailedStatus},
    record::{format_timestamp, kafka_header},
};
use rdkafka::{
    error::KafkaError,
    message::{BorrowedMessage, Headers, Message, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};

use super::client_config;
use crate::{
    config::Config,
    ledger::{Action, Outcome},
};

const SERVICE: &str = DlqService::Actions.as_str();

pub struct DeadLetters {
    producer: Arc<FutureProducer>,
    topic: String,
}

impl DeadLetters {
    /// The producer, for metadata requests (the topic checks) off the async workers.
    pub fn producer(&self) -> Arc<FutureProducer> {
        self.producer.clone()
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn new(config: &Config) -> Result<Self, KafkaError> {
        let producer = client_config(
            config,
            &[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("message.timeout.ms", "30000"),
            ],
        )
        .create()?;
        Ok(Self {
            producer: Arc::new(producer),
            topic: config.dlq_topic.clone(),
        })
    }

    /// Parks an action that ended `failed`. Value: a JSON description of the action and
    /// why it failed; key: the order id.
    pub async fn failed_action(
        &self,
        action: &Action,
        reason: &str,
        outcome: &Outcome,
    ) -> Result<(), KafkaError> {
        let value = serde_json::to_string(&FailedActionRecord {
            order_id: action.order_id,
            action: action.action.clone(),
            session_id: action.session_id,
            command_id: action.command_id,
            kind: Some(action.kind.clone()),
            error_code: outcome.error_code.clone(),
            merchant_id: action.merchant_id.clone(),
            event_id: action.event_id.clone(),
            status: FailedStatus::Failed,
            reason: reason.to_owned(),
            attempts: action.attempts,
            idempotency_key: action.idempotency_key,
            requested_amount: action.requested_amount,
            last_status_code: outcome.last_status_code,
            last_error: outcome.last_error.clone(),
            created_at: action.created_at,
            failed_at: Utc::now(),
        })
        .expect("a failed action serializes");
        let key = action.order_id.to_string();
        let failed_at = format_timestamp(Utc::now());
        let partition = action.source_partition.map(|p| p.to_string());
        let offset = action.source_offset.map(|o| o.to_string());
        let mut headers = OwnedHeaders::new()
            .insert(kafka_header(dlq::SERVICE, SERVICE))
            .insert(kafka_header(dlq::ERROR, reason))
            .insert(kafka_header(dlq::FAILED_AT, &failed_at))
            .insert(kafka_header(
                ipp_schemas::record::header::EVENT_ID,
                &action.event_id,
            ));
        if let Some(topic) = &action.source_topic {
            headers = headers.insert(kafka_header(dlq::SOURCE_TOPIC, topic));
        }
        if let Some(partition) = &partition {
            headers = headers.insert(kafka_header(dlq::SOURCE_PARTITION, partition));
        }
        if let Some(offset) = &offset {
            headers = headers.insert(kafka_header(dlq::SOURCE_OFFSET, offset));
        }
        self.send(
            FutureRecord::to(&self.topic)
                .key(&key)
                .payload(&value)
                .headers(headers),
        )
        .await
    }

    /// Parks a consumed record this service cannot use: original key, value and headers
    /// (`original`, copied from it; a name that was not UTF-8 holds U+FFFD), plus where it
    /// came from and why.
    pub async fn unusable(
        &self,
        message: &BorrowedMessage<'_>,
        original: Option<&HeadersCopy>,
        error: &str,
    ) -> Result<(), KafkaError> {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let failed_at = format_timestamp(Utc::now());
        let mut headers = OwnedHeaders::new();
        if let Some(original) = original {
            for header in original.iter() {
                headers = headers.insert(rdkafka::message::Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let headers = headers
            .insert(kafka_header(dlq::SOURCE_TOPIC, message.topic()))
            .insert(kafka_header(dlq::SOURCE_PARTITION, &partition))
            .insert(kafka_header(dlq::SOURCE_OFFSET, &offset))
            .insert(kafka_header(dlq::ERROR, error))
            .insert(kafka_header(dlq::FAILED_AT, &failed_at))
            .insert(kafka_header(dlq::SERVICE, SERVICE));
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        self.send(record).await
    }

    async fn send<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<(), KafkaError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}
