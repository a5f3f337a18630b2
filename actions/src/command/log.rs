//! The commands topic's producer: a command is acknowledged only once the broker has it
//! (acks=all, idempotent producer), exactly like a webhook in ingest.

use std::{sync::Arc, time::Duration};

use ipp_schemas::Command;
use rdkafka::{
    error::KafkaError,
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

    /// Appends `command`, keyed by its order id; `Ok` once the broker acknowledged it.
    pub async fn append(&self, command: &Command) -> Result<(), KafkaError> {
        let key = command.order_id.to_string();
        let value = command.to_json();
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&value),
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
