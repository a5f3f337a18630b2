//! The chaos soak, short: `ipp-soak --minutes 2` (what `scripts/soak` runs for longer)
//! with its own broker (which it restarts), its own database and every service as a
//! process. The driver checks the invariants itself and exits 1 on a violation; this
//! test also asserts that the chaos really happened and that the figures add up, so a
//! soak that silently did nothing cannot pass.

use std::{process::Command, time::Instant};

use ipp_tests::process::bin_path;
use serde_json::Value;

#[test]
fn two_minutes_of_kills_restarts_and_faults_break_no_invariant() {
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let status = Command::new(bin_path("ipp-soak"))
        .args(["--minutes", "2", "--poison", "8", "--drain-secs", "150"])
        .arg("--out")
        .arg(out.path())
        .env("IPP_BIN_DIR", bin_path("ipp-ingest").parent().unwrap())
        .status()
        .expect("run ipp-soak");
    eprintln!("ipp-soak --minutes 2 took {:?}", started.elapsed());
    let summary = std::fs::read(out.path().join("summary.json")).expect("summary.json");
    let summary: Value = serde_json::from_slice(&summary).unwrap();
    assert_eq!(
        summary["violations"],
        Value::Array(vec![]),
        "violations (logs in {})",
        out.keep().display()
    );
    assert!(
        status.success(),
        "ipp-soak exits 0 without violations: {status}"
    );

    let figure = |path: &str| {
        summary
            .pointer(path)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{path} in {summary}"))
    };
    for service in ["ingest", "projector", "actions"] {
        assert!(
            figure(&format!("/chaos/kills/{service}")) >= 1,
            "{service} was killed"
        );
    }
    assert!(figure("/chaos/broker_restarts_kill") >= 1);
    assert!(figure("/chaos/broker_restarts_term") >= 1);
    assert!(figure("/chaos/om_fault_windows") >= 1);
    assert!(figure("/webhooks/answered_200") > 1000, "load was sent");
    assert!(figure("/webhooks/redeliveries") > 0);
    assert_eq!(
        figure("/log/acknowledged_checked"),
        figure("/webhooks/answered_200")
    );
    assert!(figure("/captures/finalized_orders") > 0);
    assert_eq!(
        figure("/captures/captured_once") + figure("/captures/failed_explained"),
        figure("/captures/finalized_orders")
    );
    assert_eq!(figure("/dead_letters/poison_injected"), 8);
    assert!(figure("/dead_letters/projector_dead_letters") >= 8);
    assert!(figure("/read_models/live_sessions") > 0);
    assert_eq!(
        figure("/read_models/live_sessions"),
        figure("/read_models/clean_sessions")
    );
    assert_eq!(
        figure("/read_models/live_events"),
        figure("/read_models/clean_events")
    );
}
