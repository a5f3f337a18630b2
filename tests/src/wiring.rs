//! What one test's services share, all fresh: an event topic, ipp-actions' topics beside
//! it (commands, Kustom events, observations), its DLQ topic and a database.

use crate::db::TestDatabase;

pub struct Wiring {
    pub brokers: String,
    pub topic: String,
    /// ipp-actions' commands topic ([`crate::inprocess::commands_topic_of`] `topic`).
    pub commands_topic: String,
    /// The Kustom events topic ipp-actions reads ([`crate::inprocess::kustom_topic_of`]).
    pub kustom_topic: String,
    /// ipp-actions' observations topic ([`crate::inprocess::observations_topic_of`]).
    pub observations_topic: String,
    pub dlq_topic: String,
    /// Dropped with the wiring: keep it for as long as services use it.
    pub database: TestDatabase,
}

impl Wiring {
    /// Creates an `ipp_events…` topic and ipp-actions' topics beside it with `partitions`
    /// partitions each, a one-partition DLQ topic named after `dlq_prefix`, and an empty
    /// database.
    pub async fn create(partitions: i32, dlq_prefix: &str) -> Self {
        let brokers = crate::kafka::brokers();
        let topic = crate::kafka::create_topic(&brokers, "ipp_events", partitions).await;
        crate::kafka::create_actions_topics(&brokers, &topic, partitions).await;
        let [commands_topic, kustom_topic, observations_topic] =
            crate::inprocess::actions_topics_of(&topic);
        let dlq_topic = crate::kafka::create_topic(&brokers, dlq_prefix, 1).await;
        let database = TestDatabase::create().await;
        Self {
            brokers,
            topic,
            commands_topic,
            kustom_topic,
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
