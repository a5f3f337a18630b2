//! What a rebuild prints at the end: the dry run's differences, or what was swapped.

use std::{collections::HashMap, time::Instant};

use serde_json::{json, Value};

use super::{diff::TableDiff, RebuildArgs};
use crate::{
    commands::progress::{emit, text},
    engine::Totals,
    Error,
};

pub(super) fn dry_run(
    args: &RebuildArgs,
    diffs: &[TableDiff],
    started: Instant,
    shadow: &str,
) -> Result<(), Error> {
    let elapsed = started.elapsed().as_secs_f64();
    if args.json {
        return emit(&json!({
            "phase": "dry_run",
            "tables": diffs,
            "identical": diffs.iter().all(|d| d.added + d.changed + d.missing == 0),
            "shadow_kept": args.keep_shadow.then_some(shadow),
            "elapsed_seconds": (elapsed * 10.0).round() / 10.0,
        }));
    }
    text("dry run: rebuilt read models versus the live tables (nothing swapped)")?;
    text(&format!(
        "{:<22} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "table", "live", "rebuilt", "added", "changed", "missing"
    ))?;
    for d in diffs {
        text(&format!(
            "{:<22} {:>10} {:>10} {:>8} {:>8} {:>8}",
            d.table, d.live_rows, d.rebuilt_rows, d.added, d.changed, d.missing
        ))?;
    }
    for d in diffs {
        for example in &d.examples {
            text(&format!("  {}", describe(d.table, example)))?;
        }
    }
    if args.keep_shadow {
        text(&format!("the rebuilt tables are kept in schema {shadow}"))?;
    }
    Ok(())
}

/// One example difference on one line: `ipp_sessions changed <key>: status created -> finalized`.
fn describe(table: &str, example: &Value) -> String {
    let kind = example["difference"].as_str().unwrap_or_default();
    let key = example["key"].as_str().unwrap_or_default();
    let (live, rebuilt) = (&example["live"], &example["rebuilt"]);
    let columns: Vec<String> = match (live.as_object(), rebuilt.as_object()) {
        (Some(l), Some(r)) => l
            .iter()
            .filter(|(column, value)| r.get(*column) != Some(*value))
            .map(|(column, value)| {
                format!(
                    "{column} {value} -> {}",
                    r.get(column).unwrap_or(&Value::Null)
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    if columns.is_empty() {
        format!("{table} {kind} {key}")
    } else {
        format!("{table} {kind} {key}: {}", columns.join(", "))
    }
}

/// What was swapped in (or back), and where the replaced version is kept.
pub(super) fn swapped(
    args: &RebuildArgs,
    live: &str,
    totals: &Totals,
    poison_parked: u64,
    orders: Option<(u64, u64)>,
    counts: &HashMap<String, i64>,
    elapsed: f64,
) -> Result<(), Error> {
    let previous = args.previous_schema.as_str();
    let phase = if args.rollback {
        "rolled_back"
    } else {
        "swapped"
    };
    if args.json {
        emit(&json!({
            "phase": phase,
            "schema": live,
            "previous_schema": previous,
            "records_read": totals.records,
            "events_applied": totals.applied,
            "duplicates": totals.duplicates,
            "poison_skipped": totals.poison,
            "poison_parked": poison_parked,
            "rows": counts,
            // Null when the orders model was not part of the swap.
            "orders": orders.map(|(records, skipped)| json!({
                "records_read": records,
                "unusable_skipped": skipped,
            })),
            "elapsed_seconds": (elapsed * 10.0).round() / 10.0,
        }))
    } else {
        let what = if args.rollback {
            "rolled back: the previous version is live again"
        } else {
            "rebuilt and swapped in"
        };
        text(&format!(
            "{what} ({live}): ipp_events {} rows, ipp_sessions {} rows; {} records read, {} events applied, {} duplicates, {} poison records skipped ({poison_parked} of them parked by this rebuild, the others were in the dead-letter topic already), in {elapsed:.1}s",
            counts["ipp_events"], counts["ipp_sessions"], totals.records, totals.applied, totals.duplicates, totals.poison
        ))?;
        match orders {
            Some((records, skipped)) => text(&format!(
                "orders: ipp_order_facts {} rows, ipp_order_operations {} rows, ipp_order_disputes {} rows; {records} records read, {skipped} unusable skipped (the live orders consumer parks them)",
                counts["ipp_order_facts"], counts["ipp_order_operations"], counts["ipp_order_disputes"]
            ))?,
            None => text("orders: not part of this swap (the live orders model is unchanged)")?,
        }
        text(&format!(
            "the replaced version is kept in schema {previous}: `ipp-projector rebuild --rollback` swaps it back"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_changed_row_by_its_changed_columns() {
        let example = json!({
            "difference": "changed", "key": "s1",
            "live": {"status": "created", "event_count": 3},
            "rebuilt": {"status": "finalized", "event_count": 3},
        });
        assert_eq!(
            describe("ipp_sessions", &example),
            "ipp_sessions changed s1: status \"created\" -> \"finalized\""
        );
        let added = json!({"difference": "added", "key": "s2", "live": null, "rebuilt": {}});
        assert_eq!(describe("ipp_sessions", &added), "ipp_sessions added s2");
    }
}
