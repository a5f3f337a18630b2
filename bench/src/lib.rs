#![doc = include_str!("../README.md")]
//! `ipp-bench`: each stage of the pipeline measured next to its ceiling, in the same run,
//! on the same broker and database (figures on shared machines drift, ratios hold).
//!
//! Every figure spawns the real release binaries as processes, with its own topics and
//! its own fresh database. See the README (Benchmarks) for what each figure means.

pub mod config;
pub mod figures;
pub mod infra;
pub mod load;
pub mod report;

use std::{collections::BTreeMap, path::PathBuf, sync::Mutex};

pub use config::Config;
use config::Sizes;
use report::{Figure, Machine, Report};

/// Progress for the person watching (stderr; stdout carries the table).
pub fn progress(message: &str) {
    eprintln!("[{}] {message}", chrono::Utc::now().format("%H:%M:%S"));
}

/// What every figure needs.
pub struct Bench {
    pub config: Config,
    pub sizes: Sizes,
    pub bin_dir: PathBuf,
    pub logs: PathBuf,
    /// Peak RSS (MiB) per service, the highest seen across figures.
    peaks: Mutex<BTreeMap<String, f64>>,
}

impl Bench {
    pub fn new(config: Config) -> Self {
        Self {
            sizes: config.sizes(),
            bin_dir: config.bin_dir(),
            logs: infra::logs_dir(&config.out),
            config,
            peaks: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn brokers(&self) -> &str {
        &self.config.kafka_brokers
    }

    pub fn spawn(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<infra::Service> {
        infra::Service::spawn(&self.bin_dir, &self.logs, name, args, env)
    }

    /// Records the service's peak RSS so far (call right before stopping it).
    pub fn note_memory(&self, service: &infra::Service) {
        if let Ok(mb) = service.peak_rss_mb() {
            let mut peaks = self.peaks.lock().expect("peaks lock");
            let entry = peaks.entry(service.name.clone()).or_insert(0.0);
            *entry = entry.max(mb);
        }
    }

    fn memory_figures(&self) -> Vec<Figure> {
        let peaks = self.peaks.lock().expect("peaks lock");
        let targets = [
            ("ipp-ingest", Some(50.0)),
            ("ipp-projector", Some(100.0)),
            ("ipp-actions", None),
        ];
        targets
            .iter()
            .filter(|(service, _)| peaks.contains_key(*service))
            .map(|(service, target)| {
                let value = peaks[*service];
                Figure::bounded(
                    &format!("memory_{}", service.trim_start_matches("ipp-")),
                    &format!("Peak RSS {service}"),
                    value,
                    "MiB",
                    *target,
                    format!(
                        "VmHWM from /proc/PID/status just before each {service} process is \
                         stopped; the highest over every figure that ran it"
                    ),
                )
            })
            .collect()
    }
}

/// Runs every figure, writes `results.md` and `results.json` under `--out`.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    let bench = Bench::new(config);
    let machine = Machine::probe();
    let started_at = chrono::Utc::now().to_rfc3339();
    std::fs::create_dir_all(&bench.logs)?;
    progress(&format!(
        "ipp-bench{}: binaries from {}, broker {}, sizes {:?}",
        if bench.config.smoke { " --smoke" } else { "" },
        bench.bin_dir.display(),
        bench.brokers(),
        bench.sizes
    ));
    let mut figures = Vec::new();
    let mut errors = Vec::new();
    let mut record = |name: &str, result: anyhow::Result<Vec<Figure>>| match result {
        Ok(mut measured) => figures.append(&mut measured),
        Err(e) => {
            progress(&format!("{name} FAILED: {e:#}"));
            errors.push(format!("{name}: {e:#}"));
        }
    };
    // Freshness, the figure most sensitive to the broker's state, runs first, on a
    // fresh broker; each group starts after a CHECKPOINT, so none pays for the previous
    // one's writes.
    let server = bench.config.database_url.clone();
    if bench.config.runs("freshness") {
        infra::checkpoint(&server).await;
        record("freshness", figures::freshness::run(&bench).await);
    }
    if bench.config.runs("ingest") {
        infra::checkpoint(&server).await;
        record("ingest", figures::ingest::run(&bench).await);
    }
    if bench.config.runs("catchup") {
        infra::checkpoint(&server).await;
        record(
            "catchup",
            figures::projector::catch_up(&bench).await.map(|f| vec![f]),
        );
    }
    if bench.config.runs("apply") {
        infra::checkpoint(&server).await;
        record(
            "apply",
            figures::projector::apply_engine(&bench)
                .await
                .map(|f| vec![f]),
        );
    }
    if bench.config.runs("actions") {
        infra::checkpoint(&server).await;
        record("actions", figures::actions::run(&bench).await);
    }
    // The table keeps the order.
    const ORDER: [&str; 5] = [
        "ingest_",
        "projector_catchup",
        "projector_apply",
        "freshness_",
        "actions_",
    ];
    figures.sort_by_key(|f| ORDER.iter().position(|p| f.id.starts_with(p)));
    figures.extend(bench.memory_figures());
    let report = Report {
        smoke: bench.config.smoke,
        started_at,
        finished_at: chrono::Utc::now().to_rfc3339(),
        machine,
        sizes: bench.sizes.clone(),
        figures,
        errors,
    };
    report.write(&bench.config.out)?;
    Ok(report)
}
