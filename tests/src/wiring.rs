//! What one test's services share, all fresh: an event topic, its commands, other-events
//! and observations topics, its DLQ topic and a database.

use crate::db::TestDatabase;

pub struct Wiring {
    pub brokers: String,
    pub topic: String,
    /// ipp-actions' commands topic ([`crate::inprocess::commands_topic_of`] `topic`).
    pub commands_topic: String,
    /// Kustom's other events ([`crate::inprocess::other_topic_of`] `topic`).
    pub other_topic: String,
    /// ipp-actions' observations ([`crate::inprocess::observations_topic_of`] `topic`).
    pub observations_topic: String,
    pub dlq_topic: String,
    /// Dropped with the wiring: keep it for as long as services use it.
    pub database: TestDatabase,
}

impl Wiring {
    /// Creates an `ipp_events…` topic and its commands, other-events and observations
    /// topics with `partitions` partitions each, a one-partition DLQ topic named after `dlq_prefix`, and an empty database.
    pub async fn create(partitions: i32, dlq_prefix: &str) -> Self {
        let brokers = crate::kafka::brokers();
        let topic = crate::kafka::create_topic(&brokers, "ipp_events", partitions).await;
        let commands_topic = crate::inprocess::commands_topic_of(&topic);
        crate::kafka::create_named_topic(&brokers, &commands_topic, partitions).await;
        let other_topic = crate::inprocess::other_topic_of(&topic);
        crate::kafka::create_named_topic(&brokers, &other_topic, partitions).await;
        let observations_topic = crate::inprocess::observations_topic_of(&topic);
        crate::kafka::create_named_topic(&brokers, &observations_topic, partitions).await;
        let dlq_topic = crate::kafka::create_topic(&brokers, dlq_prefix, 1).await;
        let database = TestDatabase::create().await;
        Self {
            brokers,
            topic,
            commands_topic,
            other_topic,
            observations_topic,
            dlq_topic,
            database,
        }
    }

    /// The projector of consumer group `group` on this wiring (see
    /// [`crate::inprocess::projector_config`]).
    pub fn projector_config(&self, group: &str) -> ipp_projector::Config {
        crate::inprocess::projector_config(
            &self.brokers,
            &self.topic,
            &self.dlq_topic,
            self.database.url(),
            group,
        )
    }
}
