//! The commands topic's producer: a command is acknowledged only once the broker has it
//! (acks=all, idempotent producer), exactly like a webhook in ingest.

use std::{sync::Arc, time::Duration};

use ipp_schemas::{
    record::kafka_header,
    trace::{TraceContext, TRACEPARENT},
    Command,
};
use rdkafka::{
    error::KafkaError,
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord},
};

use crate::config::Config;

pub struct CommandLog {
    producer: Arc<FutureProducer>,
    topic: String,
    timeout: Duration,
}

impl CommandLog {
    pub fn new(config: &Config) -> Result<Self, KafkaError> {
        let timeout = config.api_produce_timeout().max(Duration::from_millis(1));
        let message_timeout = timeout.as_millis().to_string();
        let producer = crate::kafka::client_config(
            config,
            &[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("message.timeout.ms", &message_timeout),
            ],
        )
        .create()?;
        Ok(Self {
            producer: Arc::new(producer),
            topic: config.commands_topic.clone(),
            timeout,
        })
    }

    /// Appends `command`, keyed by its order id, with the `traceparent` of `trace` (the
    /// request's span, which the command's Order Management calls continue); `Ok` once
    /// the broker acknowledged it.
    pub async fn append(&self, command: &Command, trace: &TraceContext) -> Result<(), KafkaError> {
        let key = command.order_id.to_string();
        let value = command.to_json();
        let traceparent = trace.to_header();
        let headers = OwnedHeaders::new().insert(kafka_header(TRACEPARENT, &traceparent));
        self.producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(&key)
                    .payload(&value)
                    .headers(headers),
                self.timeout,
            )
            .await
            .map(drop)
            .map_err(|(e, _)| e)
    }

    /// Waits up to `timeout` for what is still queued.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        use rdkafka::producer::Producer;
        self.producer.flush(timeout)
    }
}
