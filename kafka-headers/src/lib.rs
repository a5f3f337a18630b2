//! A consumed record's headers, copied out of librdkafka without trusting their names.
//!
//! Kafka header names are bytes on the wire. Java clients only write UTF-8, but any
//! other producer can write a name that is not, and rdkafka's `Headers::try_get` (under
//! `iter`, `get` and every lookup by name) unwraps the name's UTF-8 conversion: one such
//! record panicked the projector and ipp-actions, again after each restart, and stopped
//! its partition. [`HeadersCopy::of_message`] reads the names as bytes through
//! librdkafka's C API, the only unsafe code in the workspace, and replaces what is not
//! UTF-8 with U+FFFD. No header name ipp-pipeline reads or writes can then match one,
//! so such a header is carried along (into a dead letter, lossily) and otherwise
//! ignored, like any other unknown header.
//!
//! The copy is also cheaper than rdkafka's `OwnedMessage`: `detach` copies the headers
//! into a new librdkafka list, one C allocation per header, and dropping it frees them
//! one by one (17 % of the projector's CPU in a catch-up). Here a record's headers are
//! three buffers, filled in one pass.

use std::{ffi::CStr, ops::Range, ptr};

use rdkafka::{
    bindings as rdsys,
    message::{BorrowedMessage, Header, Headers, Message, OwnedMessage},
};

/// A message whose headers can be copied into a [`HeadersCopy`].
pub trait CopyHeaders {
    fn copy_headers(&self) -> Option<HeadersCopy>;
}

impl CopyHeaders for BorrowedMessage<'_> {
    fn copy_headers(&self) -> Option<HeadersCopy> {
        HeadersCopy::of_message(self)
    }
}

/// For messages built in code (tests, fuzzing): their names are strings already. (An
/// `OwnedMessage` detached from a consumed record with a name that is not UTF-8 would
/// still panic in rdkafka; nothing here detaches one.)
impl CopyHeaders for OwnedMessage {
    fn copy_headers(&self) -> Option<HeadersCopy> {
        self.headers().map(HeadersCopy::of)
    }
}

/// A record's headers, in order: the names back to back in one string, the values in
/// one buffer, and where each header's parts lie in them.
#[derive(Debug, Clone, Default)]
pub struct HeadersCopy {
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

impl HeadersCopy {
    /// The headers of a consumed record, `None` if it has none. A name that is not
    /// UTF-8 is kept with U+FFFD for each invalid sequence.
    #[allow(unsafe_code)]
    pub fn of_message(message: &BorrowedMessage<'_>) -> Option<Self> {
        let mut list: *mut rdsys::rd_kafka_headers_t = ptr::null_mut();
        // SAFETY: `message.ptr()` is the live librdkafka message `message` borrows. On
        // success `list` points to the headers the message owns, which outlive this
        // function's use of them (the message is borrowed for all of it).
        let err = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut list) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || list.is_null() {
            return None; // RD_KAFKA_RESP_ERR__NOENT: no headers
        }
        // SAFETY: `list` is a valid header list (above).
        let count = unsafe { rdsys::rd_kafka_header_cnt(list) };
        let mut copy = Self::with_capacity(count);
        for idx in 0..count {
            let mut name: *const std::os::raw::c_char = ptr::null();
            let mut value: *const std::os::raw::c_void = ptr::null();
            let mut size = 0usize;
            // SAFETY: `list` is valid and the out-pointers point to live locals.
            let err = unsafe {
                rdsys::rd_kafka_header_get_all(list, idx, &mut name, &mut value, &mut size)
            };
            if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                break;
            }
            // SAFETY: librdkafka keeps each name NUL-terminated, and each value `size`
            // bytes long, for as long as the list lives; both are copied here.
            let (name, value) = unsafe {
                (
                    CStr::from_ptr(name).to_bytes(),
                    (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast(), size)),
                )
            };
            copy.push(name, value);
        }
        Some(copy)
    }

    /// A copy of headers whose names are already strings (rdkafka's `OwnedHeaders`, or
    /// another copy).
    pub fn of(headers: &impl Headers) -> Self {
        let mut copy = Self::with_capacity(headers.count());
        for header in headers.iter() {
            copy.push(header.key.as_bytes(), header.value);
        }
        copy
    }

    fn with_capacity(count: usize) -> Self {
        Self {
            spans: Vec::with_capacity(count),
            ..Self::default()
        }
    }

    fn push(&mut self, name: &[u8], value: Option<&[u8]>) {
        let name_start = self.names.len();
        self.names.push_str(&String::from_utf8_lossy(name));
        let value = value.map(|value| {
            let start = self.values.len();
            self.values.extend_from_slice(value);
            start..self.values.len()
        });
        self.spans.push(HeaderSpan {
            name: name_start..self.names.len(),
            value,
        });
    }
}

impl Headers for HeadersCopy {
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

/// Produces one record whose header names are raw bytes, which rdkafka's safe API
/// (names are `&str`) cannot write: what another producer may put in a topic. The
/// record is queued; the caller flushes `producer`, and its context's `delivery` gets
/// the outcome.
#[cfg(feature = "raw-producer")]
#[allow(unsafe_code)]
pub fn produce_with_raw_names<C: rdkafka::producer::ProducerContext<DeliveryOpaque = ()>>(
    producer: &rdkafka::producer::BaseProducer<C>,
    topic: &str,
    key: &[u8],
    value: &[u8],
    headers: &[(&[u8], &[u8])],
) -> rdkafka::error::KafkaResult<()> {
    use std::{ffi::CString, os::raw::c_int};

    use rdkafka::{error::KafkaError, producer::Producer, types::RDKafkaErrorCode};

    let topic = CString::new(topic)
        .map_err(|_| KafkaError::MessageProduction(RDKafkaErrorCode::InvalidArgument))?;
    // SAFETY: creates an empty list; it is freed below unless librdkafka takes it.
    let list = unsafe { rdsys::rd_kafka_headers_new(headers.len()) };
    for (name, value) in headers {
        // SAFETY: `list` is valid; librdkafka copies `name` and `value` (with their
        // lengths, so the name's bytes are taken as they are).
        unsafe {
            rdsys::rd_kafka_header_add(
                list,
                name.as_ptr().cast(),
                name.len() as isize,
                value.as_ptr().cast(),
                value.len() as isize,
            );
        }
    }
    use rdsys::rd_kafka_vtype_t as V;
    // SAFETY: each tag is followed by the argument types librdkafka's RD_KAFKA_V_*
    // macros pass for it, and the list ends with RD_KAFKA_VTYPE_END. MSG_F_COPY makes
    // librdkafka copy the key and value before this returns.
    let err = unsafe {
        rdsys::rd_kafka_producev(
            producer.client().native_ptr(),
            V::RD_KAFKA_VTYPE_TOPIC as c_int,
            topic.as_ptr(),
            V::RD_KAFKA_VTYPE_KEY as c_int,
            key.as_ptr().cast::<std::os::raw::c_void>(),
            key.len(),
            V::RD_KAFKA_VTYPE_VALUE as c_int,
            value.as_ptr().cast::<std::os::raw::c_void>(),
            value.len(),
            V::RD_KAFKA_VTYPE_MSGFLAGS as c_int,
            rdsys::RD_KAFKA_MSG_F_COPY as c_int,
            V::RD_KAFKA_VTYPE_HEADERS as c_int,
            list,
            V::RD_KAFKA_VTYPE_END as c_int,
        )
    };
    if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(()) // librdkafka owns `list` now
    } else {
        // SAFETY: on failure the list is still ours.
        unsafe { rdsys::rd_kafka_headers_destroy(list) };
        Err(KafkaError::MessageProduction(err.into()))
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::OwnedHeaders;

    use super::*;

    fn all(headers: &impl Headers) -> Vec<(String, Option<Vec<u8>>)> {
        headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect()
    }

    #[test]
    fn a_copy_reads_like_the_original() {
        let original = OwnedHeaders::new()
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

        let copy = HeadersCopy::of(&original);

        assert_eq!(all(&copy), all(&original));
        assert_eq!(copy.count(), 4);
        assert!(copy.try_get(4).is_none());
        assert_eq!(copy.get(1).value, None);
        assert_eq!(copy.get(2).value, Some(&b""[..]));
    }

    #[test]
    fn a_name_that_is_not_utf8_is_kept_with_replacement_characters() {
        let mut copy = HeadersCopy::default();
        copy.push(b"ok", Some(b"1"));
        copy.push(b"bad\xff\xfename", Some(b"\xff"));
        copy.push(b"after", None);

        assert_eq!(
            all(&copy),
            vec![
                ("ok".to_owned(), Some(b"1".to_vec())),
                ("bad\u{fffd}\u{fffd}name".to_owned(), Some(b"\xff".to_vec())),
                ("after".to_owned(), None),
            ]
        );
    }
}
