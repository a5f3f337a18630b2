//! The observations topic's producer (`ipp.observations`, keyed by order id): what
//! ipp-actions learnt from Order Management, appended for the orders read model
//! (decision 0019). acks=all and an idempotent producer: a record counts as published
//! only once every in-sync replica has it.

use std::time::Duration;

use ipp_schemas::observation::Observation;
use rdkafka::{
    error::KafkaError,
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
};

use super::client_config;
use crate::config::Config;

/// How long one record may take to be acknowledged.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ObservationLog {
    producer: FutureProducer,
    topic: String,
}

impl ObservationLog {
    pub fn new(config: &Config) -> Result<Self, KafkaError> {
        let timeout = DELIVERY_TIMEOUT.as_millis().to_string();
        let producer = client_config(
            config,
            &[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("message.timeout.ms", &timeout),
            ],
        )
        .create()?;
        Ok(Self {
            producer,
            topic: config.observations_topic.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Appends `observations`, all enqueued at once; returns, in the same order, whether
    /// the broker acknowledged each.
    pub async fn append(&self, observations: &[Observation]) -> Vec<Result<(), KafkaError>> {
        let records: Vec<(String, String)> = observations
            .iter()
            .map(|o| {
                let value = serde_json::to_string(o).expect("an observation serializes");
                (o.order_id.to_string(), value)
            })
            .collect();
        let mut deliveries = Vec::with_capacity(records.len());
        for (key, value) in &records {
            let mut record = FutureRecord::to(&self.topic).key(key).payload(value);
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break Ok(delivery),
                    // The local queue is full: let deliveries drain, then enqueue again.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => break Err(e),
                }
            };
            deliveries.push(delivery);
        }
        let mut results = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let result = match delivery {
                Ok(future) => match future.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_cancelled) => Err(KafkaError::Canceled),
                },
                Err(e) => Err(e),
            };
            results.push(result);
        }
        results
    }
}
