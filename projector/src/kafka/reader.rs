//! Reading `ipp.events` for the one-shot commands (`rebuild`, `replay`): explicit
//! partition assignment, a throwaway group id that is never committed, so the live
//! consumer group is never touched.

use std::{collections::BTreeMap, time::Duration};

use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Offset, TopicPartitionList,
};

use ipp_service::kafka::TopicsUnavailable;

use crate::{config::Config, Error};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer that is only ever `assign`ed: no subscription, no commits.
pub fn consumer(config: &Config, purpose: &str) -> Result<StreamConsumer, Error> {
    let client_id = format!("{}-{purpose}", crate::config::CLIENT_ID);
    Ok(ipp_service::kafka::assign_only_config(&config.kafka, &client_id).create()?)
}

pub fn partitions(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i32>, Error> {
    ipp_service::kafka::partitions(consumer.client(), topic, TIMEOUT).map_err(|e| match e {
        TopicsUnavailable::Broker(e) => Error::Kafka(e),
        missing @ TopicsUnavailable::Missing(_) => Error::Operation(missing.to_string()),
    })
}

/// `(low, high)` watermarks per partition.
pub fn watermarks(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, (i64, i64)>, Error> {
    Ok(ipp_service::kafka::watermarks(
        consumer.client(),
        topic,
        partitions,
        TIMEOUT,
    )?)
}

/// Assigns each partition at its start offset.
pub fn assign(
    consumer: &StreamConsumer,
    topic: &str,
    starts: &BTreeMap<i32, i64>,
) -> Result<(), Error> {
    let mut tpl = TopicPartitionList::new();
    for (&partition, &offset) in starts {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    consumer.assign(&tpl)?;
    Ok(())
}

/// The first offset whose record timestamp is at or after `at_ms`, per partition
/// (the broker's ListOffsets by time). `None`: the broker says no such record.
pub fn offsets_for_time(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
    at_ms: i64,
) -> Result<BTreeMap<i32, Option<i64>>, Error> {
    let mut tpl = TopicPartitionList::new();
    for &partition in partitions {
        tpl.add_partition_offset(topic, partition, Offset::Offset(at_ms))?;
    }
    let found = consumer.offsets_for_times(tpl, TIMEOUT)?;
    Ok(found
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect())
}
