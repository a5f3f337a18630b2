//! The soak's settings: every one a flag, with a default that works on a laptop.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ipp-soak",
    version,
    about = "The chaos soak: the whole pipeline as processes under open-loop signed webhooks, \
with random SIGKILLs of every service, broker restarts and Order Management faults, then the \
invariants checked.",
    long_about = "The chaos soak: ipp-ingest, ipp-projector, ipp-actions, ipp-om-sim and an \
Apache Kafka broker of its own (scripts/kafka-broker, data kept across restarts) as processes on \
127.0.0.1, with a database of its own on the PostgreSQL server. For --minutes it sends signed \
webhooks at a fixed rate whatever the answers, produces a few unusable records straight to the \
topic, SIGKILLs each service at random times (restarted after a random delay), restarts the \
broker (SIGKILL and SIGTERM) and switches Order Management faults on and off. Then it drains \
(bounded) and checks: the log holds every acknowledged body byte for byte, the read models \
equal a clean pass over the log, one capture per finalized order, the ledger settled, every \
dead letter explained. Summary on stdout and in OUT/summary.json; exit 1 on any violation."
)]
pub struct Args {
    /// How long the load and the faults last, in minutes (fractions allowed).
    #[arg(long, default_value_t = 20.0)]
    pub minutes: f64,

    /// Webhooks sent per second, on schedule whatever the answers (open loop).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,

    /// Seed of the workload and of the fault schedule (random when unset; printed, so a
    /// run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Unusable records produced straight to the event topic over the run (each one must
    /// end up in the projector's dead-letter topic).
    #[arg(long, default_value_t = 12)]
    pub poison: usize,

    /// The longest wait, in seconds, after the load for the pipeline to settle (senders'
    /// last retries, the consumers catching up, the ledger settling).
    #[arg(long, default_value_t = 240)]
    pub drain_secs: u64,

    /// Where the services' logs, the broker's data and summary.json go (emptied first).
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,

    /// The PostgreSQL server; the soak creates a database of its own there.
    #[arg(
        long,
        env = "TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_server: String,

    /// Keep the soak's database afterwards (it is kept anyway when a violation is found).
    #[arg(long)]
    pub keep_database: bool,

    /// Where ipp-ingest, ipp-projector, ipp-actions and ipp-om-sim are (default: next to
    /// this binary).
    #[arg(long, env = "IPP_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
}

impl Args {
    pub fn load_secs(&self) -> f64 {
        (self.minutes * 60.0).max(10.0)
    }
}
