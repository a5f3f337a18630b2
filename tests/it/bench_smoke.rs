//! The benchmark in CI: `ipp-bench --smoke` (tiny sizes) must finish and emit every
//! figure with its value, its ceiling where the issue defines one, and the ratio.
//! Never a timed pass/fail: no assertion here looks at how fast anything was.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ipp_tests::{db, kafka, process::bin_path};
use serde_json::Value;

/// Figures with a ceiling measured in the same run and a target.
const WITH_CEILING: &[&str] = &[
    "ingest_c64_throughput",
    "ingest_c64_p99",
    "ingest_c64_cpu",
    "ingest_c256_throughput",
    "ingest_c256_p99",
    "ingest_c256_cpu",
    "projector_catchup",
    "projector_apply",
    "projector_growth",
    "actions_throughput",
];
/// Figures reported beside a ceiling, with no target of their own.
const BESIDE_CEILING: &[&str] = &[
    "ingest_c64_vs_http",
    "ingest_c64_cpu_parts",
    "ingest_c64_cpu_parts_at_rate",
    "ingest_c256_vs_http",
    "ingest_c256_cpu_parts",
    "ingest_c256_cpu_parts_at_rate",
    "projector_catchup_orders",
    "projector_apply_vs_batched_copy",
];
/// Figures the issue lists without a ceiling (PostgreSQL's memory: the test runs as
/// root, as CI does, so every process's /proc entry is readable).
const WITHOUT_CEILING: &[&str] = &[
    "freshness_p50",
    "freshness_p99",
    "memory_ingest",
    "memory_projector",
    "memory_actions",
    "memory_postgres",
];

#[test]
fn smoke_run_emits_every_figure_with_ceiling_and_ratio() {
    let out = tempfile::tempdir().expect("tempdir");
    let bench = bin_path("ipp-bench");
    let bin_dir: PathBuf = bench.parent().expect("bin dir").to_owned();
    let mut child = Command::new(&bench)
        .arg("--smoke")
        .arg("--out")
        .arg(out.path())
        .arg("--bin-dir")
        .arg(&bin_dir)
        .env("KAFKA_BROKERS", kafka::brokers())
        .env("BENCH_DATABASE_URL", db::server_url())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn ipp-bench");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ipp-bench --smoke did not finish within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "ipp-bench --smoke failed: {status}");

    let json = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let report: Value = serde_json::from_str(&json).expect("results.json is JSON");
    assert_eq!(report["smoke"], true);
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(0));
    let figures = report["figures"].as_array().expect("figures");
    let figure = |id: &str| {
        figures
            .iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("figure {id} missing from results.json"))
    };
    for id in WITH_CEILING {
        let f = figure(id);
        let value = f["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{id}: no value"));
        let ceiling = f["ceiling"]
            .as_f64()
            .unwrap_or_else(|| panic!("{id}: no ceiling"));
        let ratio = f["ratio"]
            .as_f64()
            .unwrap_or_else(|| panic!("{id}: no ratio"));
        assert!(
            value > 0.0 && ceiling > 0.0,
            "{id}: {value} against {ceiling}"
        );
        assert!(
            (ratio - value / ceiling).abs() < 1e-9,
            "{id}: ratio {ratio}"
        );
        assert!(f["target"].as_f64().is_some(), "{id}: no target");
        assert!(f["met"].is_boolean(), "{id}: met is not yes/no");
    }
    for id in BESIDE_CEILING {
        let f = figure(id);
        let ratio = f["ratio"]
            .as_f64()
            .unwrap_or_else(|| panic!("{id}: no ratio"));
        assert!(ratio > 0.0, "{id}: ratio {ratio}");
        assert!(f["target"].is_null() && f["met"].is_null(), "{id}");
    }
    for id in WITHOUT_CEILING {
        let f = figure(id);
        let value = f["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{id}: no value"));
        assert!(value > 0.0, "{id}: {value}");
        assert!(f["ceiling"].is_null() && f["ratio"].is_null(), "{id}");
    }
    assert_eq!(
        figures.len(),
        WITH_CEILING.len() + BESIDE_CEILING.len() + WITHOUT_CEILING.len()
    );

    let markdown = std::fs::read_to_string(out.path().join("results.md")).expect("results.md");
    for f in figures {
        let name = f["name"].as_str().expect("name");
        assert!(markdown.contains(name), "results.md lacks {name}");
    }
}
