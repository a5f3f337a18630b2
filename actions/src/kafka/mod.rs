//! ipp-actions' Kafka side: the group consumer that records actions in the ledger
//! ([`consumer`]), the dead-letter producer ([`dead_letters`]) and the observations
//! producer ([`observations`]).

pub mod consumer;
pub mod dead_letters;
pub mod observations;

use rdkafka::ClientConfig;

use crate::config::Config;

/// The `client.id` of the service's Kafka clients.
pub const CLIENT_ID: &str = "ipp-actions";

/// A client of the service: `settings`, then the operator's `KAFKA_PROPERTIES`.
pub(crate) fn client_config(config: &Config, settings: &[(&str, &str)]) -> ClientConfig {
    ipp_service::kafka::client_config(&config.kafka, CLIENT_ID, settings)
}
