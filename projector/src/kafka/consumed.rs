//! A record taken off the consumer: [`ConsumedRecord`] owns what a `BorrowedMessage`
//! points into, so batches can outlive the consumer's buffers. Why not rdkafka's
//! `OwnedMessage`: see [`HeadersCopy`], which also keeps a header name that is not UTF-8
//! from panicking the projector.

use ipp_kafka_headers::{CopyHeaders, HeadersCopy};
use rdkafka::{message::Message, Timestamp};

/// A consumed record with its key, value and headers copied out of librdkafka.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: Timestamp,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<HeadersCopy>,
}

impl ConsumedRecord {
    /// Copies `message` (a `BorrowedMessage` off the consumer, or any other).
    pub fn copy_of<M: Message + CopyHeaders>(message: &M) -> Self {
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message.copy_headers(),
        }
    }

    // The accessors of rdkafka's `Message`, which it does not implement: the trait has
    // an `unsafe fn`, and the projector forbids unsafe code.

    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    pub fn headers(&self) -> Option<&HeadersCopy> {
        self.headers.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};

    use super::*;

    #[test]
    fn a_copy_reads_like_the_original() {
        // One header: how headers are copied is ipp-kafka-headers' test.
        let headers = OwnedHeaders::new().insert(Header {
            key: "kustom-event-id",
            value: Some("evt-1"),
        });
        let original = OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"session".to_vec()),
            "ipp.events".into(),
            Timestamp::CreateTime(1_700_000_000_000),
            3,
            42,
            Some(headers),
        );

        let copy = ConsumedRecord::copy_of(&original);

        assert_eq!(copy.topic(), "ipp.events");
        assert_eq!(copy.partition(), 3);
        assert_eq!(copy.offset(), 42);
        assert_eq!(copy.timestamp(), original.timestamp());
        assert_eq!(copy.key(), Some(&b"session"[..]));
        assert_eq!(copy.payload(), Some(&b"{}"[..]));
        let copied = copy.headers().unwrap();
        assert_eq!(copied.count(), 1);
        let header = copied.get(0);
        assert_eq!(
            (header.key, header.value),
            ("kustom-event-id", Some(&b"evt-1"[..]))
        );
    }

    #[test]
    fn a_record_without_headers_has_none() {
        let original = OwnedMessage::new(
            None,
            None,
            "ipp.events".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        );
        let copy = ConsumedRecord::copy_of(&original);
        assert!(copy.headers().is_none());
        assert_eq!(copy.payload(), None);
        assert_eq!(copy.key(), None);
    }
}
