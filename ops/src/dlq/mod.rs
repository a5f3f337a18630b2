//! Dead-letter topics: reading them (explicit partition assignment from the low to the
//! high watermark, never a consumer group), a parked record ([`DlqRecord`]), and the
//! `dlq list` and `dlq show` commands.

mod list;
mod record;
mod show;

pub use self::{list::list, record::DlqRecord, show::show};
use crate::{
    args::RecordRef,
    kafka::{self, KafkaSettings},
    Error,
};

/// Where a command finds the dead letters of one service.
#[derive(Debug, Clone)]
pub struct DlqSource {
    pub kafka: KafkaSettings,
    pub topic: String,
}

/// Every parked record, oldest offset first per partition.
pub async fn read(source: &DlqSource) -> Result<Vec<DlqRecord>, Error> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || {
        let consumer = source.kafka.reader()?;
        kafka::read_all(&consumer, &source.topic, DlqRecord::from_message)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
}

/// One parked record.
pub async fn read_one(source: &DlqSource, at: RecordRef) -> Result<DlqRecord, Error> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || {
        let consumer = source.kafka.reader()?;
        kafka::partitions(&consumer, &source.topic)?;
        let found = kafka::read_one(
            &consumer,
            &source.topic,
            at.partition,
            at.offset,
            DlqRecord::from_message,
        )?;
        found.ok_or(Error::NoSuchRecord {
            topic: source.topic.clone(),
            partition: at.partition,
            offset: at.offset,
        })
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
}
