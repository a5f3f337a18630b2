//! Rows of `ipp_events` and `ipp_sessions` in PostgreSQL's binary `COPY` format.
//!
//! Binary spares PostgreSQL the parsing of timestamps, UUIDs and numbers, most of the
//! cost of loading a session row. Every value is encoded as sqlx encodes it for the
//! `INSERT` path (timestamps as whole microseconds since 2000-01-01, cut toward zero),
//! so both paths store the same bytes.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use sqlx::{postgres::PgCopyIn, PgConnection};

use crate::{record::NewEvent, session::SessionRow, Error};

/// The OID of `text`, the element type of `ipp_sessions.anomalies`.
const TEXT_OID: i32 = 25;
/// The only `jsonb` binary format version.
const JSONB_VERSION: u8 = 1;

/// The columns of `ipp_events` that [`events`] writes, in its order (checked against the
/// migrations by `projector/tests/copy_columns.rs`).
pub const EVENT_COLUMNS: [&str; 11] = [
    "event_id",
    "event_type",
    "merchant_id",
    "session_id",
    "order_id",
    "failure_reason",
    "occurred_at",
    "received_at",
    "kafka_partition",
    "kafka_offset",
    "payload",
];

/// The columns of `ipp_sessions` that [`sessions`] writes, in its order (checked against
/// the migrations by `projector/tests/copy_columns.rs`).
pub const SESSION_COLUMNS: [&str; 14] = [
    "session_id",
    "merchant_id",
    "status",
    "order_id",
    "created_at",
    "activated_at",
    "finalized_at",
    "cancelled_at",
    "failed_attempts",
    "last_failure_reason",
    "last_event_id",
    "last_event_at",
    "event_count",
    "anomalies",
];

/// The `COPY` data of `events`, in the order of [`EVENT_COLUMNS`].
pub(super) fn events(events: &[&NewEvent]) -> Vec<u8> {
    let mut rows = Rows::new(events.iter().map(|e| e.payload.len() + 200).sum());
    for e in events {
        rows.start_row(EVENT_COLUMNS.len());
        rows.text(Some(&e.event.event_id));
        rows.text(Some(&e.event.event_type));
        rows.text(e.event.merchant_id.as_deref());
        rows.uuid(Some(e.session_id));
        rows.uuid(e.event.order_id);
        rows.text(e.event.failure_reason.as_deref());
        rows.timestamp(Some(e.event.occurred_at));
        rows.timestamp(Some(e.received_at));
        rows.int4(e.kafka_partition);
        rows.int8(e.kafka_offset);
        rows.jsonb(&e.payload);
    }
    rows.finish()
}

/// The `COPY` data of session rows, in the order of [`SESSION_COLUMNS`].
pub(super) fn sessions(sessions: &[SessionRow]) -> Vec<u8> {
    let mut rows = Rows::new(sessions.len() * 300);
    for s in sessions {
        rows.start_row(SESSION_COLUMNS.len());
        rows.uuid(Some(s.session_id));
        rows.text(s.merchant_id.as_deref());
        rows.text(Some(s.status.as_str()));
        rows.uuid(s.order_id);
        rows.timestamp(s.created_at);
        rows.timestamp(s.activated_at);
        rows.timestamp(s.finalized_at);
        rows.timestamp(s.cancelled_at);
        rows.int4(s.failed_attempts);
        rows.text(s.last_failure_reason.as_deref());
        rows.text(Some(&s.last_event_id));
        rows.timestamp(Some(s.last_event_at));
        rows.int4(s.event_count);
        rows.text_array(&s.anomalies);
    }
    rows.finish()
}

/// `COPY`s `rows` (made by [`events`] or [`sessions`]) into `table`, whose `columns`
/// are one of the lists above.
pub(super) async fn copy_rows(
    conn: &mut PgConnection,
    table: &str,
    columns: &[&str],
    rows: &[u8],
) -> Result<(), Error> {
    send_rows(conn, table, columns, rows).await?.finish().await
}

/// Starts a `COPY` of `rows` into `table` and sends them all, without waiting for
/// PostgreSQL to store them: the caller may work on something else meanwhile, then
/// calls [`Sent::finish`]. The only SQL here made at run time, from constants.
pub(super) async fn send_rows<'c>(
    conn: &'c mut PgConnection,
    table: &str,
    columns: &[&str],
    rows: &[u8],
) -> Result<Sent<'c>, Error> {
    let columns = columns.join(", ");
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({columns}) FROM STDIN WITH (FORMAT binary)"
        ))
        .await?;
    for chunk in rows.chunks(1 << 20) {
        if let Err(e) = copy.send(chunk).await {
            copy.abort("sending the rows failed").await.ok();
            return Err(e.into());
        }
    }
    Ok(Sent(copy))
}

/// A `COPY` whose rows are all sent.
pub(super) struct Sent<'c>(PgCopyIn<&'c mut PgConnection>);

impl Sent<'_> {
    /// Ends the `COPY` and waits until PostgreSQL has stored its rows (or refused them).
    async fn finish(self) -> Result<(), Error> {
        self.0.finish().await?;
        Ok(())
    }
}

/// [`Sent::finish`], when a `COPY` was sent; taking the option whole ends the borrow
/// of the connection here.
pub(super) async fn finish(sent: Option<Sent<'_>>) -> Result<(), Error> {
    match sent {
        Some(sent) => sent.finish().await,
        None => Ok(()),
    }
}

/// A binary `COPY` stream being written.
struct Rows(Vec<u8>);

impl Rows {
    fn new(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity + 32);
        out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        out.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        out.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        Self(out)
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }

    fn start_row(&mut self, fields: usize) {
        let fields = i16::try_from(fields).expect("a row has fewer than 2^15 columns");
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn value(&mut self, bytes: &[u8]) {
        self.length(bytes.len());
        self.0.extend_from_slice(bytes);
    }

    fn length(&mut self, length: usize) {
        let length = i32::try_from(length).expect("a value of a batch is under 2 GiB");
        self.0.extend_from_slice(&length.to_be_bytes());
    }

    fn text(&mut self, value: Option<&str>) {
        match value {
            Some(text) => self.value(text.as_bytes()),
            None => self.null(),
        }
    }

    fn uuid(&mut self, value: Option<Uuid>) {
        match value {
            Some(uuid) => self.value(uuid.as_bytes()),
            None => self.null(),
        }
    }

    fn timestamp(&mut self, value: Option<DateTime<Utc>>) {
        match value {
            Some(at) => self.value(&micros_since_2000(at).to_be_bytes()),
            None => self.null(),
        }
    }

    fn int4(&mut self, value: i32) {
        self.value(&value.to_be_bytes());
    }

    fn int8(&mut self, value: i64) {
        self.value(&value.to_be_bytes());
    }

    fn jsonb(&mut self, json: &str) {
        self.length(json.len() + 1);
        self.0.push(JSONB_VERSION);
        self.0.extend_from_slice(json.as_bytes());
    }

    /// A one-dimensional `text[]` (an empty array has no dimensions).
    fn text_array(&mut self, items: &[String]) {
        let dimensions = i32::from(!items.is_empty());
        let mut array = Vec::with_capacity(20 + items.iter().map(|i| i.len() + 4).sum::<usize>());
        array.extend_from_slice(&dimensions.to_be_bytes());
        array.extend_from_slice(&0i32.to_be_bytes()); // no NULL elements
        array.extend_from_slice(&TEXT_OID.to_be_bytes());
        if !items.is_empty() {
            let count = i32::try_from(items.len()).expect("few anomalies");
            array.extend_from_slice(&count.to_be_bytes());
            array.extend_from_slice(&1i32.to_be_bytes()); // lower bound
            for item in items {
                let length = i32::try_from(item.len()).expect("short anomaly codes");
                array.extend_from_slice(&length.to_be_bytes());
                array.extend_from_slice(item.as_bytes());
            }
        }
        self.value(&array);
    }
}

/// What sqlx sends for a `timestamptz`: microseconds since 2000-01-01 UTC, the
/// sub-microsecond part cut toward zero.
fn micros_since_2000(at: DateTime<Utc>) -> i64 {
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("2000-01-01 is a date")
        .and_utc();
    (at - epoch).num_microseconds().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn timestamps_are_cut_to_microseconds_like_sqlx() {
        assert_eq!(
            micros_since_2000(at("2000-01-01T00:00:01.000001999Z")),
            1_000_001
        );
        // Before 2000 the cut is toward zero, that is upward in time.
        assert_eq!(micros_since_2000(at("1999-12-31T23:59:59.999999999Z")), 0);
    }

    #[test]
    fn arrays_carry_dimensions_only_when_not_empty() {
        let mut rows = Rows(Vec::new());
        rows.text_array(&[]);
        assert_eq!(rows.0, [0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25]);
        let mut rows = Rows(Vec::new());
        rows.text_array(&["ab".into()]);
        assert_eq!(
            rows.0,
            [
                0, 0, 0, 26, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 25, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0,
                2, b'a', b'b'
            ]
        );
    }
}
