//! The figures of a run, printed as a table and written as JSON.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    chaos::{Planned, Tally},
    checks::{CaptureFigures, DlqFigures, LedgerFigures, LogFigures, ReadModelFigures, Violation},
};

#[derive(Debug, Default, Serialize)]
pub struct Webhooks {
    /// Deliveries of the workload (redeliveries of the same event included).
    pub scheduled: usize,
    /// Of those, redeliveries of an event already delivered (same body, same webhook id).
    pub redeliveries: usize,
    pub requests: u64,
    pub answered_200: usize,
    pub answered_5xx: u64,
    pub answered_4xx: usize,
    pub transport_errors: u64,
    /// Deliveries that never got a 200 before the senders gave up.
    pub never_acknowledged: usize,
    /// Deliveries that needed more than one request.
    pub retried: usize,
    pub late_starts: usize,
    pub rate_per_sec: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Durations {
    pub setup_secs: f64,
    pub load_secs: f64,
    pub drain_secs: f64,
    pub clean_pass_secs: f64,
    pub total_secs: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub minutes: f64,
    pub started_at: String,
    pub database: String,
    pub sessions: BTreeMap<&'static str, usize>,
    pub webhooks: Webhooks,
    pub chaos: Tally,
    pub log: LogFigures,
    pub read_models: ReadModelFigures,
    pub captures: CaptureFigures,
    pub ledger: LedgerFigures,
    pub dead_letters: DlqFigures,
    pub drained: bool,
    pub durations: Durations,
    pub violation_count: usize,
    pub violations: Vec<Violation>,
    pub schedule: Vec<Planned>,
}

impl Summary {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &self.webhooks;
        let c = &self.chaos;
        let _ = writeln!(
            out,
            "\nipp-soak: {:.1} minute(s), seed {}, database {}",
            self.minutes, self.seed, self.database
        );
        let _ = writeln!(out, "  sessions         {:?}", self.sessions);
        let _ = writeln!(
            out,
            "  webhooks         {} scheduled ({} redeliveries) at {:.1}/s, {} requests: {} answered 200, {} 5xx, {} 4xx, {} transport errors; {} retried, {} never acknowledged, {} late starts",
            w.scheduled, w.redeliveries, w.rate_per_sec, w.requests, w.answered_200, w.answered_5xx, w.answered_4xx, w.transport_errors, w.retried, w.never_acknowledged, w.late_starts
        );
        let _ = writeln!(
            out,
            "  kills            {:?} ({} skipped: already down); unexpected exits {:?}",
            c.kills, c.kills_skipped, c.unexpected_exits
        );
        let _ = writeln!(
            out,
            "  broker restarts  {} SIGKILL, {} SIGTERM; OM fault windows {} ({:.0} s in all)",
            c.broker_restarts_kill, c.broker_restarts_term, c.om_fault_windows, c.om_fault_seconds
        );
        let _ = writeln!(
            out,
            "  log              ipp.events {} records, kustom.events {}, {} duplicate copies; {} acknowledged bodies checked",
            self.log.ipp_records, self.log.other_records, self.log.duplicate_records, self.log.acknowledged_checked
        );
        let r = &self.read_models;
        let _ = writeln!(
            out,
            "  read models      live {} sessions / {} events, clean pass {} / {}, differing {} / {}; {} sessions checked against the workload",
            r.live_sessions, r.live_events, r.clean_sessions, r.clean_events, r.sessions_differing, r.events_differing, r.sessions_checked_against_workload
        );
        let m = &self.captures;
        let _ = writeln!(
            out,
            "  captures         {} finalized orders: {} captured once, {} failed with a reason; {} effective captures, {} idempotent replays, {} OM requests {:?}",
            m.finalized_orders, m.captured_once, m.failed_explained, m.captures_applied, m.idempotent_replays, m.om_requests, m.om_by_status
        );
        let _ = writeln!(out, "  ledger           {:?}", self.ledger.by_status);
        let d = &self.dead_letters;
        let _ = writeln!(
            out,
            "  dead letters     {} poison injected; ipp.events.dlq {}, ipp.actions.dlq {} ({} failed actions), {} parked again",
            d.poison_injected, d.projector_dead_letters, d.actions_dead_letters, d.failed_actions_parked, d.parked_again
        );
        let t = &self.durations;
        let _ = writeln!(
            out,
            "  durations        setup {:.0} s, load {:.0} s, drain {:.0} s{}, clean pass {:.0} s, total {:.0} s",
            t.setup_secs, t.load_secs, t.drain_secs, if self.drained { "" } else { " (NOT settled)" }, t.clean_pass_secs, t.total_secs
        );
        for error in &c.errors {
            let _ = writeln!(out, "  chaos error      {error}");
        }
        let _ = writeln!(out, "  violations       {}", self.violation_count);
        for v in &self.violations {
            let _ = writeln!(out, "    [{}] {}", v.invariant, v.detail);
        }
        out
    }
}
