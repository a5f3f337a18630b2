//! Where a replay's selected events go: JSON Lines or CSV, on stdout or in a file.

use std::{
    fs::File,
    io::{BufWriter, Write},
};

use chrono::{DateTime, SecondsFormat, Utc};
use ipp_schemas::record::header;
use rdkafka::message::Headers;
use serde_json::json;

use super::{
    select::{record_time, Fields},
    Format, ReplayArgs,
};
use crate::{kafka::consumed::ConsumedRecord, Error};

fn rfc3339_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn header_value(message: &ConsumedRecord, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

pub(super) enum Sink {
    None,
    Jsonl(Box<dyn Write>),
    Csv(Box<csv::Writer<Box<dyn Write>>>),
}

impl Sink {
    pub(super) fn open(args: &ReplayArgs) -> Result<Self, Error> {
        if args.into_schema.is_some() && args.output.is_none() {
            return Ok(Self::None);
        }
        let out: Box<dyn Write> = match &args.output {
            Some(path) => Box::new(BufWriter::new(File::create(path).map_err(Error::Output)?)),
            None => Box::new(BufWriter::new(std::io::stdout())),
        };
        Ok(match args.format {
            Format::Jsonl => Self::Jsonl(out),
            Format::Csv => {
                let mut writer = csv::Writer::from_writer(out);
                writer
                    .write_record([
                        "topic",
                        "partition",
                        "offset",
                        "record_timestamp",
                        "received_at",
                        "event_id",
                        "event_type",
                        "merchant_id",
                        "session_id",
                        "order_id",
                        "raw",
                    ])
                    .map_err(csv_error)?;
                Self::Csv(Box::new(writer))
            }
        })
    }

    pub(super) fn write(&mut self, message: &ConsumedRecord, fields: &Fields) -> Result<(), Error> {
        let raw = String::from_utf8_lossy(message.payload().unwrap_or_default());
        let timestamp = record_time(message).map(rfc3339_ms);
        let received_at = header_value(message, header::RECEIVED_AT);
        match self {
            Self::None => Ok(()),
            Self::Jsonl(out) => {
                let line = json!({
                    "topic": message.topic(),
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "timestamp": timestamp,
                    "received_at": received_at,
                    "event": &fields.event,
                    "raw": raw,
                });
                writeln!(out, "{line}").map_err(Error::Output)
            }
            Self::Csv(writer) => writer
                .write_record([
                    message.topic(),
                    &message.partition().to_string(),
                    &message.offset().to_string(),
                    timestamp.as_deref().unwrap_or_default(),
                    received_at.as_deref().unwrap_or_default(),
                    fields.event_id.as_deref().unwrap_or_default(),
                    fields.event_type.as_deref().unwrap_or_default(),
                    fields.merchant_id.as_deref().unwrap_or_default(),
                    fields.session_id.as_deref().unwrap_or_default(),
                    fields.order_id.as_deref().unwrap_or_default(),
                    &raw,
                ])
                .map_err(csv_error),
        }
    }

    pub(super) fn finish(self) -> Result<(), Error> {
        match self {
            Self::None => Ok(()),
            Self::Jsonl(mut out) => out.flush().map_err(Error::Output),
            Self::Csv(mut writer) => writer.flush().map_err(Error::Output),
        }
    }
}

fn csv_error(e: csv::Error) -> Error {
    Error::Output(std::io::Error::other(e))
}
