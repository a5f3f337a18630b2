//! What the operator commands print on stdout: aligned tables for people, JSON for scripts.
#![allow(
    clippy::print_stdout,
    reason = "these helpers are the commands' output on stdout"
)]

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::Error;

/// A text table whose columns are as wide as their widest cell.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(Vec::from(cells));
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut text = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    pub fn print(&self) -> Result<(), Error> {
        let mut out = std::io::stdout().lock();
        out.write_all(self.render().as_bytes())?;
        out.flush()?;
        Ok(())
    }
}

/// One JSON object per line.
pub fn json_lines(values: impl IntoIterator<Item = Value>) -> Result<(), Error> {
    Ok(write_json_lines(values)?)
}

/// A line of text (a trailing newline is added when missing).
pub fn line(text: &str) -> Result<(), Error> {
    Ok(write_line(text)?)
}

/// [`json_lines`] for commands with an error type of their own.
pub fn write_json_lines(values: impl IntoIterator<Item = Value>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for value in values {
        serde_json::to_writer(&mut out, &value).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// [`line`] for commands with an error type of their own.
pub fn write_line(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()
}

pub fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".into())
}

pub fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

/// At most `max` characters, on one line, `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Seconds as `1h02m`, `3m05s` or `4.2s`.
pub fn age(seconds: Option<f64>) -> String {
    let Some(s) = seconds else {
        return "-".into();
    };
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(["A", "LONGER"]);
        table.row(["wide cell".into(), "x".into()]);
        assert_eq!(table.render(), "A          LONGER\nwide cell  x\n");
    }

    #[test]
    fn truncates_on_one_line() {
        assert_eq!(truncate("ab\ncd", 10), "ab cd");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(age(Some(75.0)), "1m15s");
    }
}
