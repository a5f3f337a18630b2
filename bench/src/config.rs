//! Configuration: every setting is a flag and an environment variable.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ipp-bench",
    version,
    about = "Measures each stage of the pipeline next to its ceiling, in the same run.",
    long_about = "Measures each stage of the pipeline (ingest, projector catch-up, projector apply \
engine, end-to-end freshness, actions, memory) next to a ceiling measured in the same run on the \
same broker and database, and prints value, ceiling, ratio and target. Spawns the real service \
binaries from --bin-dir. scripts/bench starts a private broker and runs this with release binaries."
)]
pub struct Config {
    /// Tiny sizes: checks that every figure is produced (CI), measures nothing meaningful.
    #[arg(long)]
    pub smoke: bool,

    /// Where results.md, results.json and the services' logs go.
    #[arg(long, env = "BENCH_OUT", default_value = "target/bench")]
    pub out: PathBuf,

    /// Directory holding ipp-ingest, ipp-projector, ipp-actions and ipp-om-sim
    /// (default: the directory of this executable).
    #[arg(long, env = "IPP_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Kafka bootstrap servers (a broker nobody else is loading, ideally).
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// A PostgreSQL URL allowed to CREATE DATABASE; every figure gets a fresh database.
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Partitions of the benchmark's ipp topics (8, as the production guide suggests).
    #[arg(long, env = "BENCH_PARTITIONS", default_value_t = 8)]
    pub partitions: i32,

    /// Webhook requests per ingest run (each concurrency); default 30000, smoke 200.
    #[arg(long)]
    pub ingest_requests: Option<usize>,

    /// Events prefilled for the projector catch-up and apply figures; default 100000, smoke 400.
    #[arg(long)]
    pub catchup_events: Option<usize>,

    /// Events prefilled for the large run of the growth figure (its small run has
    /// --catchup-events); default 1000000, smoke 2000.
    #[arg(long)]
    pub growth_events: Option<usize>,

    /// Fixed rate for the freshness figure, events per second; default 2000, smoke 50.
    #[arg(long)]
    pub freshness_rate: Option<u32>,

    /// How long the freshness load lasts, seconds; default 20, smoke 3.
    #[arg(long)]
    pub freshness_secs: Option<u64>,

    /// Finalized sessions for the actions figure; default 3000, smoke 60.
    #[arg(long)]
    pub actions_sessions: Option<usize>,

    /// Events per transaction in the apply-engine figure (the projector's default batch size).
    #[arg(long, default_value_t = 2000)]
    pub apply_batch: usize,

    /// Simulated Order Management latency, milliseconds.
    #[arg(long, default_value_t = 50)]
    pub om_latency_ms: u64,

    /// ipp-actions' Order Management rate limit per account (ACTIONS_OM_RATE_LIMIT),
    /// requests per second: its default unless set; 0 measures the in-flight bound alone.
    #[arg(long, default_value_t = ipp_actions::config::DEFAULT_OM_RATE_LIMIT)]
    pub om_rate_limit: f64,

    /// ipp-actions' in-flight bound (ACTIONS_CONCURRENCY).
    #[arg(long, default_value_t = 32)]
    pub actions_concurrency: usize,

    /// librdkafka consumer property KEY=VALUE given to every consumer of the run (the bare
    /// consumer, ipp-projector, ipp-actions through KAFKA_PROPERTIES). Repeatable.
    #[arg(
        long = "consumer-property",
        env = "BENCH_CONSUMER_PROPERTIES",
        value_delimiter = ','
    )]
    pub consumer_properties: Vec<String>,

    /// librdkafka producer property KEY=VALUE given to ipp-ingest (KAFKA_PROPERTIES) and to
    /// the raw producer of its ceiling alike, to try producer tuning. Repeatable.
    #[arg(
        long = "producer-property",
        env = "BENCH_PRODUCER_PROPERTIES",
        value_delimiter = ','
    )]
    pub producer_properties: Vec<String>,

    /// Run only these figure groups (comma-separated): ingest, catchup (projector
    /// catch-up), apply (projector apply engine, needs no broker), growth (catch-up of
    /// --growth-events beside --catchup-events), freshness, actions.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = ["ingest", "catchup", "apply", "growth", "freshness", "actions"]
    )]
    pub only: Vec<String>,

    /// Keep the benchmark databases instead of dropping them at the end of each figure.
    #[arg(long)]
    pub keep_databases: bool,
}

/// The sizes a run uses, from the flags and `--smoke`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sizes {
    pub ingest_requests: usize,
    pub concurrencies: Vec<usize>,
    pub catchup_events: usize,
    pub growth_events: usize,
    pub freshness_rate: u32,
    pub freshness_secs: u64,
    pub actions_sessions: usize,
}

impl Config {
    pub fn sizes(&self) -> Sizes {
        let pick = |flag: Option<usize>, full: usize, smoke: usize| {
            flag.unwrap_or(if self.smoke { smoke } else { full })
        };
        Sizes {
            ingest_requests: pick(self.ingest_requests, 30_000, 200),
            concurrencies: vec![64, 256],
            catchup_events: pick(self.catchup_events, 100_000, 400),
            growth_events: pick(self.growth_events, 1_000_000, 2000),
            freshness_rate: self
                .freshness_rate
                .unwrap_or(if self.smoke { 50 } else { 2000 }),
            freshness_secs: self
                .freshness_secs
                .unwrap_or(if self.smoke { 3 } else { 20 }),
            actions_sessions: pick(self.actions_sessions, 3000, 60),
        }
    }

    /// `KAFKA_PROPERTIES` for a consuming service: the consumer properties.
    pub fn kafka_properties(&self) -> String {
        self.consumer_properties.join(",")
    }

    pub fn runs(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.bin_dir.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(ToOwned::to_owned))
                .unwrap_or_else(|| PathBuf::from("."))
        })
    }
}
