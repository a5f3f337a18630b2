//! W3C Trace Context (`traceparent`) carried through the log, so that one payment can be
//! followed from the webhook to the Order Management call.
//!
//! ipp-ingest continues the caller's `traceparent` (or starts a trace) and writes its own
//! span's context in the record's `traceparent` header, beside the body (which stays byte
//! for byte); ipp-actions handles the record in a child span, keeps that span's context in
//! the action's ledger row and sends a child of it on every Order Management request
//! (`ipp_service::traces` exports these spans). A malformed
//! `traceparent` is never an error: the record starts a trace of its own.

use uuid::Uuid;

/// The header name, in HTTP requests and in Kafka records alike.
pub const TRACEPARENT: &str = "traceparent";

/// A span's place in a trace: `00-{trace id}-{span id}-{flags}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

/// The `sampled` flag: a trace this pipeline starts is recorded.
const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// A new trace, with its first span.
    pub fn new_root() -> Self {
        Self {
            trace_id: Uuid::new_v4().as_u128(),
            span_id: new_span_id(),
            flags: SAMPLED,
        }
    }

    /// A span of the same trace whose parent is this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// A span that continues `traceparent` (a child of it) when it is valid, else starts
    /// a trace; with the parent it continued, if any.
    pub fn continue_or_start(traceparent: Option<&str>) -> (Self, Option<Self>) {
        let parent = traceparent.and_then(Self::parse);
        let own = parent.map_or_else(Self::new_root, |parent| parent.child());
        (own, parent)
    }

    /// Parses a `traceparent` value. Version `00` must be exactly its four fields; a
    /// later version may add fields after them (the specification's rule). Ids of all
    /// zeros, upper-case hex and version `ff` are invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut fields = value.split('-');
        let version = fields.next()?;
        let trace_id = fields.next()?;
        let span_id = fields.next()?;
        let flags = fields.next()?;
        let rest_allowed = version != "00";
        if fields.next().is_some() && !rest_allowed {
            return None;
        }
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2)
            || version == "ff"
            || !hex(trace_id, 32)
            || !hex(span_id, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        let context = Self {
            trace_id: u128::from_str_radix(trace_id, 16).ok()?,
            span_id: u64::from_str_radix(span_id, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (context.trace_id != 0 && context.span_id != 0).then_some(context)
    }

    /// The `traceparent` value (version `00`).
    pub fn to_header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The trace id as 32 lower-case hex digits (what tracing tools search by).
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The `traceparent` header of a Kafka record: the span that wrote it. `None` when
    /// absent or invalid (a record older than the header, or written by another tool).
    pub fn of_record(headers: Option<&impl rdkafka::message::Headers>) -> Option<Self> {
        let value = crate::record::header_str(headers?, TRACEPARENT).ok()??;
        Self::parse(&value)
    }

    /// The trace id's 128 bits, for an exporter.
    pub fn trace_id_bits(&self) -> u128 {
        self.trace_id
    }

    /// The span id's 64 bits, for an exporter.
    pub fn span_id_bits(&self) -> u64 {
        self.span_id
    }

    /// Whether the caller asked for the trace to be recorded (the `sampled` flag).
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

fn new_span_id() -> u64 {
    loop {
        // 64 random bits of a v4 UUID (never all zeros, which would be invalid).
        let id = Uuid::new_v4().as_u64_pair().1;
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_specifications_example() {
        let context = TraceContext::parse(VALID).unwrap();
        assert_eq!(context.to_header(), VALID);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id(), "00f067aa0ba902b7");
    }

    #[test]
    fn a_child_keeps_the_trace_and_the_flags_with_a_new_span() {
        let parent = TraceContext::parse(VALID).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.span_id(), parent.span_id());
        assert!(child.to_header().ends_with("-01"));
        let (continued, continued_from) = TraceContext::continue_or_start(Some(VALID));
        assert_eq!(continued.trace_id(), parent.trace_id());
        assert_ne!(continued.span_id(), parent.span_id());
        assert_eq!(continued_from, Some(parent));
    }

    #[test]
    fn invalid_values_start_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
            let (started, parent) = TraceContext::continue_or_start(Some(bad));
            assert_eq!(parent, None, "{bad}");
            assert_ne!(started.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(TraceContext::parse(&started.to_header()).is_some());
        }
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        let context = TraceContext::parse(later).unwrap();
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
