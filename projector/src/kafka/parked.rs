//! Which `ipp.events` records the projector's dead-letter topic already holds, by their
//! source position (`dlq-source-topic`, `-partition`, `-offset` of records whose
//! `dlq-service` is ipp-projector): what a rebuild checks before it parks the poison
//! records it skipped, so that nothing is parked twice by it. Read with an explicit
//! assignment, never a group.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use ipp_kafka_headers::CopyHeaders;
use ipp_schemas::{
    dlq::{header as dlq, DlqService},
    record::header_str,
};
use rdkafka::{consumer::StreamConsumer, message::Message};

use super::reader;
use crate::{config::Config, kafka::consumed::ConsumedRecord, Error};

/// Longest wait for the next record while the topic holds more.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ParkedIndex {
    consumer: StreamConsumer,
    dlq_topic: String,
    source_topic: String,
    /// The next dead-letter offset to read, per partition.
    read_to: BTreeMap<i32, i64>,
    /// `(partition, offset)` in the source topic.
    parked: HashSet<(i32, i64)>,
}

impl ParkedIndex {
    /// An index of `config`'s dead-letter topic, empty until [`ParkedIndex::refresh`].
    pub fn new(config: &Config) -> Result<Self, Error> {
        Ok(Self {
            consumer: reader::consumer(config, "rebuild-dlq")?,
            dlq_topic: config.dlq_topic.clone(),
            source_topic: config.ipp_topic.clone(),
            read_to: BTreeMap::new(),
            parked: HashSet::new(),
        })
    }

    /// Reads what the dead-letter topic gained since the last call, up to its high
    /// watermarks now: everything whose broker acknowledgement came before this call.
    pub async fn refresh(&mut self) -> Result<(), Error> {
        let partitions = reader::partitions(&self.consumer, &self.dlq_topic)?;
        let marks = reader::watermarks(&self.consumer, &self.dlq_topic, &partitions)?;
        let mut starts = BTreeMap::new();
        let mut ends = BTreeMap::new();
        for (partition, (low, high)) in marks {
            let from = self.read_to.get(&partition).copied().unwrap_or(0).max(low);
            if from < high {
                starts.insert(partition, from);
                ends.insert(partition, high);
            }
        }
        if starts.is_empty() {
            return Ok(());
        }
        reader::assign(&self.consumer, &self.dlq_topic, &starts)?;
        while !ends.is_empty() {
            let message = tokio::time::timeout(READ_TIMEOUT, self.consumer.recv())
                .await
                .map_err(|_| {
                    Error::Operation(format!(
                        "no record from the dead-letter topic {} for {}s with partitions {:?} unread",
                        self.dlq_topic,
                        READ_TIMEOUT.as_secs(),
                        ends.keys().collect::<Vec<_>>()
                    ))
                })??;
            let partition = message.partition();
            let Some(&end) = ends.get(&partition) else {
                continue;
            };
            // Records seen before (a fetch of an earlier call) are harmless: a set.
            if let Some(source) = source_of(&message, &self.source_topic) {
                self.parked.insert(source);
            }
            let next = self.read_to.entry(partition).or_insert(0);
            *next = (*next).max(message.offset() + 1);
            if *next >= end {
                ends.remove(&partition);
            }
        }
        Ok(())
    }

    /// Whether the dead-letter topic holds `message` (as of the last refresh).
    pub fn contains(&self, message: &ConsumedRecord) -> bool {
        message.topic() == self.source_topic
            && self
                .parked
                .contains(&(message.partition(), message.offset()))
    }

    /// Records that `message` was parked just now.
    pub fn insert(&mut self, message: &ConsumedRecord) {
        if message.topic() == self.source_topic {
            self.parked.insert((message.partition(), message.offset()));
        }
    }
}

/// Where in `source_topic` the projector's dead letter `dead_letter` came from. Read off
/// the consumer's buffer: nothing of a dead letter is kept but where it came from.
fn source_of(dead_letter: &impl CopyHeaders, source_topic: &str) -> Option<(i32, i64)> {
    // A copy, not rdkafka's reads: those panic on a header name that is not UTF-8.
    let headers = dead_letter.copy_headers()?;
    let text = |name| header_str(&headers, name).ok().flatten();
    if text(dlq::SERVICE).as_deref() != Some(DlqService::Projector.as_str())
        || text(dlq::SOURCE_TOPIC).as_deref() != Some(source_topic)
    {
        return None;
    }
    let partition = text(dlq::SOURCE_PARTITION)?.parse().ok()?;
    let offset = text(dlq::SOURCE_OFFSET)?.parse().ok()?;
    Some((partition, offset))
}
