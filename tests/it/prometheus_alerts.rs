//! A real Prometheus (Debian's `prometheus`, which scripts/test installs with promtool)
//! scrapes the three services, run as child processes, and evaluates the shipped
//! alert rules (`deploy/prometheus/alerts.yml`) with their expressions as they are and
//! only their `for:` shortened to seconds. The projector is killed under load: its
//! `/metrics` is gone, yet ProjectorLagging fires from ingest's acknowledged offsets and
//! the projector's last position, and ServiceDown names it. Once it is back, both
//! resolve.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use chrono::Utc;
use ipp_service::ListenArgs;
use ipp_tests::{
    eventually::eventually,
    ingest::post_webhook,
    process::{wait_for_tcp, Service},
    processes::Processes,
    produce::ipp_body,
    projector::CREATED,
    signer::Signer,
    ReservedPort,
};
use serde_json::Value;
use uuid::Uuid;

const RULES: &str = include_str!("../../deploy/prometheus/alerts.yml");
const DASHBOARD: &str = include_str!("../../deploy/grafana/dashboards/ipp-pipeline.json");

/// Each query of the Grafana dashboard, with its panel's title.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().expect("title").to_owned();
            queries.push((title, target["expr"].as_str().expect("expr").to_owned()));
        }
    }
    queries
}

/// What the test shortens `for:` to: the rules' durations are minutes.
const FOR: &str = "2s";

struct Prometheus {
    child: Child,
    url: String,
    client: reqwest::Client,
    dir: tempfile::TempDir,
    /// Prometheus' port, kept from other sockets until it is dropped.
    _port: ReservedPort,
}

impl Prometheus {
    /// Scrapes each `(job, port)` every second and evaluates the rules every second;
    /// returns once it is ready (it answers 503 while it loads).
    async fn start(targets: &[(&str, u16)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("alerts.yml"), shortened_for(RULES)).expect("rules");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - alerts.yml\nscrape_configs:\n",
        );
        for (job, port) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("config");
        let reserved = ReservedPort::new();
        let port = reserved.port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's `prometheus` package; scripts/test installs it)");
        let prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            dir,
            _port: reserved,
        };
        eventually(Duration::from_secs(30), "Prometheus is ready", || async {
            let ready = prometheus
                .client
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await;
            ready.is_ok_and(|r| r.status().is_success())
        })
        .await;
        prometheus
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = self
            .client
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .expect("Prometheus answers");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["status"], "success", "{path}: {body}");
        body["data"].clone()
    }

    /// The instant vector of `promql`, as (labels, value).
    async fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let data = self.api("query", &[("query", promql)]).await;
        data["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|sample| {
                let value = sample["value"][1].as_str().expect("value").parse().unwrap();
                (sample["metric"].clone(), value)
            })
            .collect()
    }

    /// The alerts pending or firing now.
    async fn alerts(&self) -> Vec<Value> {
        let data = self.api("alerts", &[]).await;
        data["alerts"].as_array().expect("alerts").clone()
    }

    async fn firing(&self, alertname: &str, label: (&str, &str)) -> bool {
        self.alerts().await.iter().any(|alert| {
            alert["labels"]["alertname"] == alertname
                && alert["labels"][label.0] == label.1
                && alert["state"] == "firing"
        })
    }

    async fn active(&self, alertname: &str) -> bool {
        self.alerts()
            .await
            .iter()
            .any(|alert| alert["labels"]["alertname"] == alertname)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rules with every `for:` set to [`FOR`], the expressions untouched.
fn shortened_for(rules: &str) -> String {
    rules
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for:") {
            Some(_) => format!(
                "{}for: {FOR}",
                &line[..line.len() - line.trim_start().len()]
            ),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Posts `count` signed `ipp.session.created` webhooks, 16 at a time, each of a session
/// of its own (spread over the topic's partitions); asserts every 200.
async fn post_sessions(stack: &Processes, count: usize) {
    let base = stack.ingest_url();
    let signer = Signer::new(&stack.secret);
    let senders = 16;
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let (base, signer) = (base.clone(), signer.clone());
        let share = count / senders + usize::from(sender < count % senders);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let event_id = format!("kevt_prom_{}", Uuid::new_v4().simple());
                let body = ipp_body(
                    &event_id,
                    CREATED,
                    "merchant-prom",
                    Uuid::new_v4(),
                    Utc::now(),
                    None,
                    None,
                );
                let signed = signer.sign(&body);
                let response = post_webhook(&base, &body, Some(&signed)).await;
                assert_eq!(response.status(), 200, "{event_id}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender");
    }
}

fn on_port<C: ipp_tests::process::ChildConfig>(config: &C) -> Service {
    Service::start(config, &[])
}

fn projector(stack: &Processes, port: u16) -> Service {
    let mut config = stack.projector_config();
    config.listen = ListenArgs::new(SocketAddr::from(([127, 0, 0, 1], port)));
    let service = on_port(&config);
    wait_for_tcp(port, Duration::from_secs(30));
    service
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_pages_for_a_projector_killed_under_load() {
    let stack = Processes::start().await;
    let _ingest = stack.ingest();
    let projector_reserved = ReservedPort::new();
    let projector_port = projector_reserved.port();
    let mut projector_service = projector(&stack, projector_port);
    let actions_reserved = ReservedPort::new();
    let actions_port = actions_reserved.port();
    let mut actions_config = stack.actions_config();
    actions_config.listen = ListenArgs::new(SocketAddr::from(([127, 0, 0, 1], actions_port)));
    let _actions = on_port(&actions_config);
    wait_for_tcp(actions_port, Duration::from_secs(30));

    let prometheus = Prometheus::start(&[
        ("ipp-ingest", stack.ingest_port()),
        ("ipp-projector", projector_port),
        ("ipp-actions", actions_port),
    ])
    .await;
    eventually(
        Duration::from_secs(60),
        "Prometheus scrapes all three",
        || async {
            let up = prometheus.query("up == 1").await;
            up.len() == 3
        },
    )
    .await;

    // Healthy: what ingest stored, the projector applied, and Prometheus saw both; three
    // of the orders captured.
    post_sessions(&stack, 197).await;
    for _ in 0..3 {
        stack.finalize("merchant-prom", Uuid::new_v4()).await;
    }
    eventually(
        Duration::from_secs(60),
        "the captures are scraped",
        || async {
            let captured = prometheus
                .query(r#"sum(ipp_actions_om_calls_total{endpoint="capture"})"#)
                .await;
            matches!(&captured[..], [(_, n)] if *n == 3.0)
        },
    )
    .await;
    let topic = stack.ipp_topic.clone();
    let applied = format!("sum(ipp_projector_partition_next_offset{{topic=\"{topic}\"}})");
    let stored = format!("sum(ipp_ingest_partition_high_offset{{topic=\"{topic}\"}})");
    eventually(Duration::from_secs(60), "the projector's position is scraped", || async {
        let applied = prometheus.query(&applied).await;
        let stored = prometheus.query(&stored).await;
        matches!((&applied[..], &stored[..]), ([(_, a)], [(_, s)]) if *a == 200.0 && *s == 200.0)
    })
    .await;
    assert!(
        !prometheus.active("ProjectorLagging").await && !prometheus.active("ServiceDown").await,
        "nothing to page about yet: {:?}",
        prometheus.alerts().await
    );
    // Every query of the dashboard is valid PromQL on these metrics and shows data,
    // but for series that only exist once something goes wrong.
    let only_on_trouble =
        [r#"sum(rate(ipp_ingest_produce_duration_seconds_count{result="error"}[5m]))"#];
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    // Some series come from refreshes (the orders gauge every 10 s, librdkafka's
    // statistics every 5 s): they may not be scraped yet, so ask again until 30 s pass.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let empty = loop {
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            if prometheus.query(expr).await.is_empty() && !only_on_trouble.contains(&expr.as_str())
            {
                empty.push(format!("{title}: {expr}"));
            }
        }
        if empty.is_empty() || tokio::time::Instant::now() > deadline {
            break empty;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        empty.is_empty(),
        "dashboard queries without data: {empty:#?}"
    );

    // The projector dies; webhooks keep coming, more than the rule's 1000 records.
    projector_service.kill();
    post_sessions(&stack, 1500).await;
    eventually(
        Duration::from_secs(60),
        "ProjectorLagging fires",
        || async {
            prometheus
                .firing("ProjectorLagging", ("topic", topic.as_str()))
                .await
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "ServiceDown names the projector",
        || async {
            prometheus
                .firing("ServiceDown", ("service", "ipp-projector"))
                .await
        },
    )
    .await;
    // Every record posted since the kill, though the projector exports nothing now.
    let summary = format!("ipp-projector is 1500 records behind on {topic}");
    eventually(
        Duration::from_secs(30),
        "the summary counts the lag",
        || async {
            prometheus.alerts().await.iter().any(|alert| {
                alert["labels"]["alertname"] == "ProjectorLagging"
                    && alert["annotations"]["summary"] == summary.as_str()
            })
        },
    )
    .await;

    // Back up: it catches up, and both alerts resolve.
    let _projector = projector(&stack, projector_port);
    eventually(Duration::from_secs(90), "both alerts resolve", || async {
        !prometheus.active("ProjectorLagging").await && !prometheus.active("ServiceDown").await
    })
    .await;
    let applied = prometheus.query(&applied).await;
    assert_eq!(applied[0].1, 1700.0, "{}", prometheus.log());
}
