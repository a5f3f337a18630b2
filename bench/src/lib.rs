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
pub mod system;

use std::{collections::BTreeMap, path::PathBuf, sync::Mutex};

pub use config::Config;
use config::Sizes;
use report::{Figure, Machine, Report};
use system::CpuShare;

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

    /// A new topic of `bench.config.partitions` partitions (`prefix` and a unique
    /// suffix) holding `bodies`, written as ingest writes them.
    pub async fn prefilled_topic(
        &self,
        prefix: &str,
        bodies: &[Vec<u8>],
    ) -> anyhow::Result<String> {
        let topic = infra::create_topic(self.brokers(), prefix, self.config.partitions).await?;
        progress(&format!("prefilling {topic} with {} records", bodies.len()));
        let slices: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        infra::prefill(self.brokers(), &topic, &slices).await?;
        Ok(topic)
    }

    /// Records the service's peak RSS so far (call right before stopping it).
    pub fn note_memory(&self, service: &infra::Service) {
        let mut peaks = self.peaks.lock().expect("peaks lock");
        let mut note = |name: &str, mb: f64| {
            let entry = peaks.entry(name.to_owned()).or_insert(0.0);
            *entry = entry.max(mb);
        };
        if let Ok(mb) = service.peak_rss_mb() {
            note(&service.name, mb);
        }
        // PostgreSQL's footprint at the same moment: its processes share memory, so
        // their proportional set sizes add up to what it holds.
        if let Some(mb) = infra::postgres_pss_mb() {
            note(POSTGRES, mb);
        }
    }

    fn memory_figures(&self) -> Vec<Figure> {
        let peaks = self.peaks.lock().expect("peaks lock");
        let targets = [
            ("ipp-ingest", Some(50.0)),
            ("ipp-projector", Some(100.0)),
            ("ipp-actions", Some(50.0)),
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
            .chain(self.neighbours_memory(&peaks))
            .collect()
    }

    /// The broker's and PostgreSQL's memory, beside the services' (no target: not ours).
    fn neighbours_memory(&self, peaks: &BTreeMap<String, f64>) -> Vec<Figure> {
        let mut figures = Vec::new();
        let broker = std::env::var("BENCH_BROKER_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            .and_then(|pid| infra::peak_rss_mb_of(pid).ok());
        if let Some(mb) = broker {
            figures.push(Figure::bounded(
                "memory_broker",
                "Peak RSS Kafka broker",
                mb,
                "MiB",
                None,
                "VmHWM of the broker's JVM (BENCH_BROKER_PID, set by scripts/bench) at the end \
                 of the run; its heap is capped by scripts/kafka-broker"
                    .into(),
            ));
        }
        if let Some(&mb) = peaks.get(POSTGRES) {
            figures.push(Figure::bounded(
                "memory_postgres",
                "PostgreSQL memory",
                mb,
                "MiB",
                None,
                "The sum of the proportional set sizes (Pss, /proc/PID/smaps_rollup) of every \
                 postgres process, sampled whenever a service is stopped; the highest sample \
                 (shared buffers counted once)"
                    .into(),
            ));
        }
        figures
    }
}

/// Writes records to a topic of its own before any figure: a broker just started runs
/// its first seconds on an interpreted, unwarmed JVM, and the first figure would pay
/// for it.
async fn warm_up_broker(bench: &Bench) -> anyhow::Result<()> {
    let n = if bench.config.smoke { 200 } else { 50_000 };
    progress(&format!("warming up the broker with {n} records"));
    let bodies: Vec<Vec<u8>> = figures::ingest::deliveries(n, 5)
        .into_iter()
        .map(|d| d.body)
        .collect();
    let topic = bench.prefilled_topic("bench_warmup", &bodies).await?;
    // The prefill sends few, large produce requests; webhooks make many small ones, and
    // consumers fetch. Both paths run a while here, so that no figure measures the
    // broker's JIT compiling them (a run that started with freshness saw ingest's Kafka
    // acks average 38 ms, against 3 ms on a broker that had been running for an hour).
    progress("warming up the broker's produce path (small requests) and fetch path");
    let small = figures::ingest::deliveries(n / 2, 6);
    figures::ingest::producer_ceiling(bench, &small, 8).await?;
    figures::projector::bare_consumer(bench, &topic, n).await?;
    Ok(())
}

/// The key of PostgreSQL's samples among the services' peaks.
const POSTGRES: &str = "postgres";

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
    // Each group's figures carry what the machine's CPUs did meanwhile.
    let mut record =
        |name: &str, (result, cpu): (anyhow::Result<Vec<Figure>>, CpuShare)| match result {
            Ok(measured) => figures.extend(measured.into_iter().map(|f| f.with_machine_cpu(cpu))),
            Err(e) => {
                progress(&format!("{name} FAILED: {e:#}"));
                errors.push(format!("{name}: {e:#}"));
            }
        };
    // Freshness, the figure most sensitive to the broker's state, runs first, on a
    // fresh broker; each group starts after a CHECKPOINT, so none pays for the previous
    // one's writes.
    let server = bench.config.database_url.clone();
    let uses_broker = ["freshness", "ingest", "catchup", "growth", "actions"]
        .iter()
        .any(|group| bench.config.runs(group));
    if uses_broker {
        let warmed = system::during(warm_up_broker(&bench)).await;
        record("broker warm-up", (warmed.0.map(|()| Vec::new()), warmed.1));
    }
    if bench.config.runs("freshness") {
        infra::checkpoint(&server).await;
        record(
            "freshness",
            system::during(figures::freshness::run(&bench)).await,
        );
    }
    if bench.config.runs("ingest") {
        infra::checkpoint(&server).await;
        record("ingest", system::during(figures::ingest::run(&bench)).await);
    }
    if bench.config.runs("catchup") {
        infra::checkpoint(&server).await;
        record(
            "catchup",
            system::during(figures::projector::catch_up(&bench)).await,
        );
    }
    if bench.config.runs("apply") {
        infra::checkpoint(&server).await;
        record(
            "apply",
            system::during(figures::projector::apply_engine(&bench)).await,
        );
    }
    if bench.config.runs("growth") {
        infra::checkpoint(&server).await;
        record(
            "growth",
            system::during(async { figures::projector::growth(&bench).await.map(|f| vec![f]) })
                .await,
        );
    }
    if bench.config.runs("actions") {
        infra::checkpoint(&server).await;
        record(
            "actions",
            system::during(figures::actions::run(&bench)).await,
        );
    }
    // The table keeps the order.
    const ORDER: [&str; 6] = [
        "ingest_",
        "projector_catchup",
        "projector_apply",
        "projector_growth",
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
