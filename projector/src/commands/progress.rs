//! How the long-running commands (rebuild, replay) show progress, and write their
//! output on stdout.

#![allow(
    clippy::print_stdout,
    reason = "the commands' --json progress is their output on stdout"
)]

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::Error;

/// Progress on stderr (a bar when it is a terminal) or as JSON lines on stdout.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    json: bool,
    started: Instant,
    last_json: Option<Instant>,
}

impl Progress {
    pub(crate) fn new(json: bool, label: &str) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} records, {per_sec}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(label.to_owned());
            bar
        });
        Self {
            bar,
            json,
            started: Instant::now(),
            last_json: None,
        }
    }

    pub(crate) fn update(&mut self, phase: &str, done: u64, lag: i64) -> Result<(), Error> {
        if let Some(bar) = &self.bar {
            bar.set_length(done + lag.max(0) as u64);
            bar.set_position(done);
        }
        if self.json
            && self
                .last_json
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_json = Some(Instant::now());
            let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
            let rate = done as f64 / elapsed;
            let eta = (rate > 0.0).then(|| (lag.max(0) as f64 / rate).round());
            emit(&json!({
                "phase": phase,
                "records": done,
                "lag": lag.max(0),
                "events_per_second": (rate * 10.0).round() / 10.0,
                "eta_seconds": eta,
                "elapsed_seconds": (elapsed * 10.0).round() / 10.0,
            }))?;
        }
        Ok(())
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One JSON object on stdout, the commands' output.
pub(crate) fn emit(value: &Value) -> Result<(), Error> {
    ipp_ops::output::write_json_lines([value.clone()]).map_err(Error::Output)
}

/// One line of text on stdout, the commands' output.
pub(crate) fn text(line: &str) -> Result<(), Error> {
    ipp_ops::output::write_line(line).map_err(Error::Output)
}
