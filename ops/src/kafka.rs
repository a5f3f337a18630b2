//! Reading topics for operators: explicit partition assignment, watermarks, a group's
//! committed offsets. Nothing here joins a consumer group or commits an offset.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::{BorrowedMessage, Message},
    ClientConfig, Offset, TopicPartitionList,
};

use ipp_service::{kafka::TopicsUnavailable, KafkaArgs};

use crate::Error;

const TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the broker: the service's own `KAFKA_BROKERS` and `KAFKA_PROPERTIES`,
/// and the `client.id` of the command (e.g. `ipp-projector-ops`).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub kafka: KafkaArgs,
    pub client_id: String,
}

impl KafkaSettings {
    pub fn client(&self) -> ClientConfig {
        ipp_service::kafka::client_config(&self.kafka, &self.client_id, &[])
    }

    /// A consumer that is only ever assigned partitions explicitly, and says when it
    /// reached the end of one.
    pub fn reader(&self) -> Result<BaseConsumer, Error> {
        Ok(
            ipp_service::kafka::assign_only_config(&self.kafka, &self.client_id)
                .set("enable.partition.eof", "true")
                .create()?,
        )
    }

    /// A consumer carrying `group` only to ask for its committed offsets.
    pub fn group_reader(&self, group: &str) -> Result<BaseConsumer, Error> {
        Ok(self
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()?)
    }
}

/// Low and high watermark of one partition: `high - low` records are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Watermarks {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

impl Watermarks {
    pub fn size(&self) -> i64 {
        (self.high - self.low).max(0)
    }
}

/// The partitions of `topic`, sorted.
pub fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, Error> {
    ipp_service::kafka::partitions(consumer.client(), topic, TIMEOUT).map_err(|e| match e {
        TopicsUnavailable::Broker(e) => Error::Kafka(e),
        TopicsUnavailable::Missing(_) => Error::NoSuchTopic(topic.to_owned()),
    })
}

pub fn watermarks(consumer: &BaseConsumer, topic: &str) -> Result<Vec<Watermarks>, Error> {
    let partitions = partitions(consumer, topic)?;
    Ok(
        ipp_service::kafka::watermarks(consumer.client(), topic, &partitions, TIMEOUT)?
            .into_iter()
            .map(|(partition, (low, high))| Watermarks {
                partition,
                low,
                high,
            })
            .collect(),
    )
}

/// Every record of `topic` between the watermarks read at the start of the call, in
/// (partition, offset) order, each as `copy` makes it off the consumer's buffer.
pub fn read_all<T>(
    consumer: &BaseConsumer,
    topic: &str,
    copy: impl Fn(&BorrowedMessage<'_>) -> T,
) -> Result<Vec<T>, Error> {
    let marks = watermarks(consumer, topic)?;
    let ranges: Vec<(i32, i64, i64)> = marks
        .iter()
        .filter(|m| m.high > m.low)
        .map(|m| (m.partition, m.low, m.high))
        .collect();
    read_ranges(consumer, topic, &ranges, copy)
}

/// The records `[from, to)` of each `(partition, from, to)`, each as `copy` makes it.
pub fn read_ranges<T>(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[(i32, i64, i64)],
    copy: impl Fn(&BorrowedMessage<'_>) -> T,
) -> Result<Vec<T>, Error> {
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut expected = 0;
    for &(partition, from, to) in ranges {
        if to > from {
            assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
            ends.insert(partition, to);
            expected += to - from;
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut open: BTreeMap<i32, i64> = ends.iter().map(|(p, e)| (*p, *e)).collect();
    while !open.is_empty() {
        if Instant::now() >= deadline {
            return Err(Error::ReadTimeout {
                topic: topic.to_owned(),
                read: records.len(),
                expected,
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(message)) => {
                let partition = message.partition();
                let end = ends.get(&partition).copied().unwrap_or(0);
                if message.offset() < end {
                    records.push(((partition, message.offset()), copy(&message)));
                }
                if message.offset() + 1 >= end {
                    open.remove(&partition);
                }
            }
        }
    }
    consumer.unassign()?;
    records.sort_by_key(|(position, _)| *position);
    Ok(records.into_iter().map(|(_, record)| record).collect())
}

/// The record at `partition:offset`, if the topic still holds it.
pub fn read_one<T>(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
    copy: impl Fn(&BorrowedMessage<'_>) -> T,
) -> Result<Option<T>, Error> {
    let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
    if offset < low || offset >= high {
        return Ok(None);
    }
    let range = [(partition, offset, offset + 1)];
    let records = read_ranges(consumer, topic, &range, |m| (m.offset(), copy(m)))?;
    Ok(records
        .into_iter()
        .find(|(at, _)| *at == offset)
        .map(|(_, record)| record))
}

/// The committed offset of `group` on each partition (`None`: nothing committed).
pub fn committed(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, Option<i64>>, Error> {
    let consumer = settings.group_reader(group)?;
    let mut tpl = TopicPartitionList::new();
    for &partition in partitions {
        tpl.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(tpl, TIMEOUT)?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect())
}
