//! `dlq show P:O`: one parked record in full.

use serde_json::Value;

use super::{read_one, DlqSource};
use crate::{args::ShowArgs, output, Error};

/// `dlq show`.
pub async fn show(source: &DlqSource, args: &ShowArgs) -> Result<(), Error> {
    let record = read_one(source, args.record).await?;
    if args.json {
        return output::json_lines([record.full()]);
    }
    let full = record.full();
    let mut text = String::new();
    for field in [
        "position",
        "parked_at",
        "service",
        "source_topic",
        "source_partition",
        "source_offset",
        "event_id",
        "event_type",
        "session_id",
        "order_id",
        "redrive_count",
        "error",
        "timestamp",
        "key",
    ] {
        let value = match &full[field] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        text.push_str(&format!("{field:<17} {value}\n"));
    }
    text.push_str("headers:\n");
    for (key, value) in &record.headers {
        let value = value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "(null)".into());
        text.push_str(&format!("  {key}: {value}\n"));
    }
    text.push_str("value:\n");
    match (&full["value_json"], &full["value"]) {
        (Value::Null, Value::String(raw)) => text.push_str(raw),
        (Value::Null, _) => text.push_str("(null)"),
        (parsed, _) => text.push_str(&serde_json::to_string_pretty(parsed).unwrap_or_default()),
    }
    output::line(&text)
}
