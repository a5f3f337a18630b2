//! A record taken off the consumer: [`ConsumedRecord`] owns what a `BorrowedMessage`
//! points into, so batches can outlive the consumer's buffers.
//!
//! Why not rdkafka's `OwnedMessage`: its `detach` copies the headers into a new
//! librdkafka list, one C allocation per header, and dropping it frees them one by one.
//! In a catch-up that copy and its destruction were 17 % of the projector's CPU. Here a
//! record's headers are three buffers, filled in one pass.

use std::ops::Range;

use rdkafka::{
    message::{Header, Headers, Message},
    Timestamp,
};

/// A consumed record with its key, value and headers copied out of librdkafka.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: Timestamp,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<ConsumedHeaders>,
}

impl ConsumedRecord {
    /// Copies `message` (a `BorrowedMessage` off the consumer, or any other).
    pub fn copy_of<M: Message>(message: &M) -> Self {
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message.headers().map(ConsumedHeaders::copy_of),
        }
    }

    // The accessors of rdkafka's `Message`, which it does not implement: the trait has
    // an `unsafe fn`, and the workspace forbids unsafe code.

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

    pub fn headers(&self) -> Option<&ConsumedHeaders> {
        self.headers.as_ref()
    }
}

/// A record's headers, in order: the names back to back in one string, the values in
/// one buffer, and where each header's parts lie in them.
#[derive(Debug, Clone, Default)]
pub struct ConsumedHeaders {
    names: String,
    values: Vec<u8>,
    spans: Vec<HeaderSpan>,
}

#[derive(Debug, Clone)]
struct HeaderSpan {
    name: Range<usize>,
    /// `None`: a header without a value, which Kafka tells apart from an empty one.
    value: Option<Range<usize>>,
}

impl ConsumedHeaders {
    fn copy_of<H: Headers>(headers: &H) -> Self {
        let mut copy = Self {
            spans: Vec::with_capacity(headers.count()),
            ..Self::default()
        };
        for header in headers.iter() {
            let name_start = copy.names.len();
            copy.names.push_str(header.key);
            let value = header.value.map(|value| {
                let start = copy.values.len();
                copy.values.extend_from_slice(value);
                start..copy.values.len()
            });
            copy.spans.push(HeaderSpan {
                name: name_start..copy.names.len(),
                value,
            });
        }
        copy
    }
}

impl Headers for ConsumedHeaders {
    fn count(&self) -> usize {
        self.spans.len()
    }

    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        let span = self.spans.get(idx)?;
        Some(Header {
            key: &self.names[span.name.clone()],
            value: span.value.clone().map(|value| &self.values[value]),
        })
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedHeaders, OwnedMessage};

    use super::*;

    fn all(headers: &impl Headers) -> Vec<(String, Option<Vec<u8>>)> {
        headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect()
    }

    #[test]
    fn a_copy_reads_like_the_original() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "kustom-event-id",
                value: Some("evt-1"),
            })
            .insert(Header {
                key: "no-value",
                value: None::<&[u8]>,
            })
            .insert(Header {
                key: "empty",
                value: Some(""),
            })
            .insert(Header {
                key: "kustom-event-id",
                value: Some("evt-2"),
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
        assert_eq!(all(copied), all(original.headers().unwrap()));
        assert_eq!(copied.count(), 4);
        assert!(copied.try_get(4).is_none());
        assert_eq!(copied.get(1).value, None);
        assert_eq!(copied.get(2).value, Some(&b""[..]));
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
