//! The shipped Prometheus alert rules (`deploy/prometheus/alerts.yml`, unit tested by
//! promtool in scripts/test) name only metrics the services really export: after a
//! workload through the pipeline, every metric a rule uses is in some service's
//! `/metrics`. A rule on a renamed or misspelt metric would never fire.

use std::{collections::BTreeSet, time::Duration};

use ipp_loadgen::{Workload, WorkloadSpec};
use ipp_tests::{eventually::eventually, pipeline::Pipeline};

const RULES: &str = include_str!("../../deploy/prometheus/alerts.yml");

/// The metric names in the rules' expressions: words starting with a service's prefix.
fn metrics_in_rules() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in RULES.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with("description:") || line.starts_with("summary:")
        {
            continue;
        }
        let mut word = String::new();
        for c in line.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
                continue;
            }
            if ["ipp_ingest_", "ipp_projector_", "ipp_actions_"]
                .iter()
                .any(|p| word.starts_with(p))
            {
                names.insert(word.clone());
            }
            word.clear();
        }
    }
    names
}

/// The metric families `/metrics` of `url` exports (histograms also as their series).
async fn exported(client: &reqwest::Client, url: &str) -> BTreeSet<String> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_count", "_sum", "_bucket"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alert_rules_use_is_exported() {
    let wanted = metrics_in_rules();
    assert!(
        wanted.len() >= 10,
        "the rules name their metrics: {wanted:?}"
    );
    let pipeline = Pipeline::start("alert_rules").await;
    let workload = Workload::generate(&WorkloadSpec {
        sessions: 20,
        seed: 1616,
        ..WorkloadSpec::default()
    });
    pipeline.send(&workload.deliveries, 4).await;
    pipeline.settle(&[&workload]).await;

    let urls = [
        pipeline.ingest.url(),
        pipeline.projector.url(),
        pipeline.actions.url(),
    ];
    // Gauges refreshed on a timer (lag every 5 s, orders every 10 s) appear on their
    // first refresh.
    eventually(
        Duration::from_secs(60),
        "every metric of the rules exported",
        || async {
            let mut all = BTreeSet::new();
            for url in &urls {
                all.extend(exported(&pipeline.client, url).await);
            }
            let missing: Vec<&String> = wanted.iter().filter(|m| !all.contains(*m)).collect();
            if !missing.is_empty() {
                eprintln!("not exported yet: {missing:?}");
            }
            missing.is_empty()
        },
    )
    .await;
}
