//! The projector's settings: every one a flag and an environment variable; `--help` is
//! the reference. The settings every service shares come from `ipp_service::args`.

use ipp_service::{DatabaseArgs, KafkaArgs, ListenArgs, Listens, LogArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub listen: ListenArgs<Projector>,

    /// Topic of IPP events to project.
    #[arg(long, env = "IPP_TOPIC", default_value = ipp_schemas::topics::IPP_EVENTS, global = true)]
    pub ipp_topic: String,

    /// Dead-letter topic for records that cannot be projected.
    #[arg(long, env = "IPP_DLQ_TOPIC", default_value = ipp_schemas::topics::IPP_EVENTS_DLQ, global = true)]
    pub dlq_topic: String,

    /// PostgreSQL schema of the live read models (`rebuild` swaps tables in and out of it).
    #[arg(
        long,
        env = "PROJECTOR_SCHEMA",
        default_value = "public",
        global = true
    )]
    pub schema: String,

    /// Consumer group; also the key of the offsets stored in PostgreSQL.
    #[arg(
        long,
        env = "PROJECTOR_GROUP",
        default_value = "ipp-projector",
        global = true
    )]
    pub group: String,

    /// Most records applied in one database transaction.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = 2000, global = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,

    /// Longest wait, in milliseconds, for a batch to fill once its first record arrived.
    /// With 0 a batch is what has already arrived: the freshest read models, and under
    /// load batches still grow by themselves while the previous one commits.
    #[arg(
        long,
        env = "PROJECTOR_BATCH_WAIT_MS",
        default_value_t = 0,
        global = true
    )]
    pub batch_wait_ms: u64,

    /// Batches the live projector applies at once, each in its own transaction on its own
    /// connection (rebuild and replay apply one at a time): the assigned partitions are
    /// split among the lanes (partition modulo lanes), so each partition keeps its order.
    /// One PostgreSQL connection applies on one core; a second lane lets the database work
    /// on one batch while the other is decoded and sent (1: one batch at a time). Keep it
    /// below DATABASE_MAX_CONNECTIONS.
    #[arg(long, env = "PROJECTOR_APPLY_LANES", default_value_t = DEFAULT_APPLY_LANES, global = true,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub apply_lanes: u32,

    /// Largest record value, in bytes, that is projected; a larger one is parked in the
    /// dead-letter topic, to be redriven once the limit is raised (0: no limit). Ingest
    /// already refuses bodies over INGEST_MAX_BODY_BYTES (256 KiB by default).
    #[arg(
        long,
        env = "PROJECTOR_MAX_PAYLOAD_BYTES",
        default_value_t = 1024 * 1024,
        global = true
    )]
    pub max_payload_bytes: usize,

    /// Keep the orders read model (`ipp_orders`): each order's amounts and its
    /// reconciliation with Kustom, from the IPP events, Kustom's other events and
    /// ipp-actions' observations.
    #[arg(long, env = "PROJECTOR_ORDERS", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub orders: bool,

    /// Consumer group of the orders read model (its offsets are Kafka's: see the docs).
    #[arg(
        long,
        env = "PROJECTOR_ORDERS_GROUP",
        default_value = "ipp-projector-orders",
        global = true
    )]
    pub orders_group: String,

    /// Topic of every Kustom event other than ipp.* (written by ipp-ingest): capture,
    /// refund and dispute events reconcile the orders.
    #[arg(long, env = "KUSTOM_OTHER_TOPIC", default_value = ipp_schemas::topics::KUSTOM_EVENTS, global = true)]
    pub kustom_topic: String,

    /// Topic of ipp-actions' observations (our calls' outcomes, Order Management's
    /// answers), keyed by order id.
    #[arg(long, env = "IPP_OBSERVATIONS_TOPIC", default_value = ipp_schemas::topics::IPP_OBSERVATIONS, global = true)]
    pub observations_topic: String,

    /// How long a capture or refund we made may stay unconfirmed by Kustom (no webhook,
    /// not listed by Order Management) before its order turns `mismatch`, in seconds.
    /// Judged when `ipp_orders` is read: a change needs no rebuild.
    #[arg(
        long,
        env = "PROJECTOR_ORDERS_CONFIRMATION_TIMEOUT_SECS",
        default_value_t = 600,
        global = true
    )]
    pub orders_confirmation_timeout_secs: u64,

    /// Apply the read models' migrations at start-up. With false the projector only
    /// checks that they are applied and refuses to start otherwise: migrations are then a
    /// separate step (`ipp-projector migrate`, as the role owning the tables), and the
    /// service may run as a role that owns nothing.
    #[arg(long, env = "PROJECTOR_MIGRATE", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub migrate: bool,

    #[command(flatten)]
    pub log: LogArgs,
}

/// The `client.id` of the projector's Kafka clients (the commands' readers add their
/// purpose: `ipp-projector-rebuild`, ...).
pub const CLIENT_ID: &str = "ipp-projector";

/// Lanes of the live projector unless PROJECTOR_APPLY_LANES says otherwise: two keep the
/// database busy while the projector prepares the next batch (a catch-up of 100,000
/// records on 2 cores went from about 47k to 52-64k records/s; BENCHMARKS.md).
pub const DEFAULT_APPLY_LANES: u32 = 2;

/// ipp-projector's address: the probes.
#[derive(Debug, Clone, Copy)]
pub struct Projector;

impl Listens for Projector {
    const ENV: &'static str = "PROJECTOR_HTTP";
    const DEFAULT: &'static str = "0.0.0.0:9101";
    const SERVES: &'static str = "/healthz, /readyz, /metrics";
}

/// Renamed settings, as (old, new); the old names still work.
pub const RENAMED_ENV: &[(&str, &str)] =
    &[("PROJECTOR_DB_CONNECTIONS", "DATABASE_MAX_CONNECTIONS")];
