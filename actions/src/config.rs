//! Configuration: every setting is a flag and an environment variable; `--help` is the reference.

use std::{path::PathBuf, time::Duration};

use clap::ValueEnum;
use ipp_schemas::topics;
use ipp_service::{
    AdminListenArgs, AdminListens, DatabaseArgs, KafkaArgs, ListenArgs, Listens, LogArgs, Secret,
};

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub listen: ListenArgs<Actions>,

    #[command(flatten)]
    pub admin_listen: AdminListenArgs<Actions>,

    /// Topic of ipp.* events (written by ipp-ingest).
    #[arg(long, env = "IPP_TOPIC", default_value = topics::IPP_EVENTS, global = true)]
    pub ipp_topic: String,

    /// Dead-letter topic: actions that failed for good, and records that could not be parsed.
    #[arg(long, env = "ACTIONS_DLQ_TOPIC", default_value = topics::IPP_ACTIONS_DLQ, global = true)]
    pub dlq_topic: String,

    /// Topic of money commands (capture, refund, cancel, release), keyed by order id:
    /// the commands API appends to it, this service executes what it holds.
    #[arg(long, env = "ACTIONS_COMMANDS_TOPIC", default_value = topics::IPP_COMMANDS, global = true)]
    pub commands_topic: String,

    /// Topic of observations (keyed by order id): this service appends the outcome of
    /// every settled action and what Order Management answered to reads of orders, the
    /// orders read model's source (decision 0019).
    #[arg(long, env = "ACTIONS_OBSERVATIONS_TOPIC", default_value = topics::IPP_OBSERVATIONS, global = true)]
    pub observations_topic: String,

    /// Topic of the other Kustom events (written by ipp-ingest, its KUSTOM_OTHER_TOPIC):
    /// `capture.created`, `refund.created`, `dispute.created` and `dispute.updated`
    /// prompt a read of the order, published as an observation; other types are passed
    /// over.
    #[arg(long, env = "ACTIONS_KUSTOM_TOPIC", default_value = topics::KUSTOM_EVENTS, global = true)]
    pub kustom_topic: String,

    /// Consumer group of this service.
    #[arg(
        long,
        env = "ACTIONS_GROUP",
        default_value = "ipp-actions",
        global = true
    )]
    pub group: String,

    /// When to capture: `on-finalized` captures what remains authorized as soon as a
    /// session is finalized; `on-command` captures only when the merchant says so (a
    /// capture command, once the goods are handed over). [default: on-finalized]
    #[arg(long, env = "ACTIONS_CAPTURE_POLICY", value_enum, global = true)]
    pub capture_policy: Option<CapturePolicy>,

    /// Deprecated, use ACTIONS_CAPTURE_POLICY (`capture` is on-finalized, `none` is
    /// on-command). Still honoured in this release.
    #[arg(long, env = "ACTIONS_ON_FINALIZED", value_enum, global = true)]
    pub on_finalized: Option<OnFinalized>,

    /// Bearer tokens of the commands API (`/v1/...`), comma-separated, each `NAME:TOKEN`
    /// or just `TOKEN` (named `default`). Any of them is accepted, which is how rotation
    /// works: give the new token the old one's name, so that Idempotency-Keys (scoped by
    /// the name) keep their meaning across the rotation. Compared in constant time, never
    /// logged. Without tokens the commands API is off. Or ACTIONS_API_TOKENS_FILE: a file
    /// holding them.
    #[arg(
        long = "api-token",
        env = "ACTIONS_API_TOKENS",
        value_name = "NAME:TOKEN",
        value_delimiter = ',',
        value_parser = Secret::non_empty,
        hide_env_values = true,
        global = true
    )]
    pub api_tokens: Vec<Secret>,

    /// How long a command may take to be acknowledged by Kafka before the request gets
    /// 503, in milliseconds.
    #[arg(
        long,
        env = "ACTIONS_API_PRODUCE_TIMEOUT_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub api_produce_timeout_ms: u64,

    /// Retry-After (seconds) sent with the commands API's 503 answers.
    #[arg(
        long,
        env = "ACTIONS_API_RETRY_AFTER_SECS",
        default_value_t = 5,
        global = true
    )]
    pub api_retry_after_secs: u64,

    /// Base URL of the Kustom API (production: https://api.kustom.co).
    #[arg(
        long,
        env = "KUSTOM_API_URL",
        default_value = "https://api.playground.kustom.co",
        global = true
    )]
    pub kustom_api_url: String,

    /// Kustom API key, sent as `Authorization: Basic <key>`. Or KUSTOM_API_KEY_FILE: a
    /// file holding it. Never logged.
    #[arg(
        long,
        env = "KUSTOM_API_KEY",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub kustom_api_key: Secret,

    /// The accounts file (TOML) of a deployment serving several Kustom accounts: an
    /// action is sent with the `api_key` of its order's account (`[accounts.<merchant_id>]`),
    /// or with KUSTOM_API_KEY when the file gives that account none; with neither it waits,
    /// never using another account's key. `[api_tokens.<name>]` entries (`token`,
    /// `accounts`) are commands API tokens limited to those accounts' orders. ipp-ingest
    /// reads the same file. See the README, "Several accounts".
    #[arg(
        long = "accounts-file",
        env = "KUSTOM_ACCOUNTS_FILE",
        value_name = "PATH",
        global = true
    )]
    pub accounts_file: Option<PathBuf>,

    /// Timeout of one Order Management request, in milliseconds.
    #[arg(
        long,
        env = "ACTIONS_HTTP_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub http_timeout_ms: u64,

    /// Connect timeout towards Order Management, in milliseconds.
    #[arg(
        long,
        env = "ACTIONS_CONNECT_TIMEOUT_MS",
        default_value_t = 3_000,
        global = true
    )]
    pub connect_timeout_ms: u64,

    /// Most actions in flight at once, across all partitions.
    #[arg(long, env = "ACTIONS_CONCURRENCY", default_value_t = 32, global = true)]
    pub concurrency: usize,

    /// Order Management requests per second per Kustom account (the order's
    /// `merchant_id`), shared by every worker of this process; every request takes a
    /// token, in-place retries too. 0: no limit. Kustom limits each account (Klarna
    /// documents 200/s in production, 50/s in the playground); the default leaves half of
    /// production's for the Portal, a POS and other systems on the same account. With
    /// several replicas, give each the account's budget divided by their number.
    /// [default: 100]
    #[arg(
        long,
        env = "ACTIONS_OM_RATE_LIMIT",
        value_name = "REQUESTS_PER_SEC",
        value_parser = requests_per_second,
        global = true
    )]
    pub om_rate_limit: Option<f64>,

    /// Tokens an account's bucket holds: how many requests may go at once after a quiet
    /// spell, before the pace of ACTIONS_OM_RATE_LIMIT.
    #[arg(
        long,
        env = "ACTIONS_OM_RATE_BURST",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub om_rate_burst: u32,

    /// Deprecated, use ACTIONS_OM_RATE_LIMIT (per account; the same with one account).
    /// Still honoured in this release.
    #[arg(
        long,
        env = "ACTIONS_MAX_CALLS_PER_SEC",
        value_parser = requests_per_second,
        global = true
    )]
    pub max_calls_per_sec: Option<f64>,

    /// In-place retries of one call (5xx, 429, timeouts, connection errors) before the
    /// action is put back in the ledger for later.
    #[arg(
        long,
        env = "ACTIONS_INPLACE_RETRIES",
        default_value_t = 3,
        global = true
    )]
    pub inplace_retries: usize,

    /// First in-place retry delay, in milliseconds (doubles each time, with jitter).
    #[arg(
        long,
        env = "ACTIONS_INPLACE_MIN_DELAY_MS",
        default_value_t = 200,
        global = true
    )]
    pub inplace_min_delay_ms: u64,

    /// Longest in-place retry delay, in milliseconds. A Retry-After longer than this ends
    /// the in-place retries: the action waits in the ledger instead.
    #[arg(
        long,
        env = "ACTIONS_INPLACE_MAX_DELAY_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub inplace_max_delay_ms: u64,

    /// First delay before an action that exhausted its in-place retries is tried again,
    /// in milliseconds (doubles with every attempt, with jitter).
    #[arg(
        long,
        env = "ACTIONS_RETRY_MIN_DELAY_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub retry_min_delay_ms: u64,

    /// Longest delay between two attempts of one action, in milliseconds.
    #[arg(
        long,
        env = "ACTIONS_RETRY_MAX_DELAY_MS",
        default_value_t = 600_000,
        global = true
    )]
    pub retry_max_delay_ms: u64,

    /// Attempts of one action (each with its in-place retries) before it becomes `failed`.
    #[arg(
        long,
        env = "ACTIONS_MAX_ATTEMPTS",
        default_value_t = 50,
        global = true
    )]
    pub max_attempts: i32,

    /// Time since the action was recorded after which it stops being retried and becomes
    /// `failed`, in seconds. Keep it well under 24 h: Kustom honours an idempotency key for
    /// about a day.
    #[arg(long, env = "ACTIONS_MAX_RETRY_SECS", default_value_t = 6 * 3600, global = true)]
    pub max_retry_secs: u64,

    /// How long a claim on an action lasts unless renewed, in milliseconds, by the
    /// database's clock. A worker renews its claims every quarter lease while it works and
    /// abandons an attempt it could not renew within three quarters, before anybody else
    /// may take it; the claims of a crashed worker are free after at most one lease. An
    /// attempt may take longer than the lease (slow Order Management, in-place retries).
    #[arg(
        long,
        env = "ACTIONS_LEASE_MS",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(1_000..=86_400_000),
        global = true
    )]
    pub lease_ms: u64,

    /// How often the worker looks for due actions when nothing woke it up, in milliseconds.
    #[arg(
        long,
        env = "ACTIONS_POLL_INTERVAL_MS",
        default_value_t = 1_000,
        global = true
    )]
    pub poll_interval_ms: u64,

    /// On SIGTERM, how long in-flight actions may take to finish, in seconds.
    #[arg(
        long,
        env = "ACTIONS_SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 20,
        global = true
    )]
    pub shutdown_timeout_secs: u64,

    /// Apply the ledger migrations at start-up (and in `ipp-actions retry`). With false
    /// the service only checks that they are applied and refuses to start otherwise:
    /// migrations are then a separate step (`ipp-actions migrate`, as the role owning the
    /// tables), and the service may run as a role that owns nothing.
    #[arg(long, env = "ACTIONS_MIGRATE", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub migrate: bool,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CapturePolicy {
    /// Capture what remains authorized as soon as the session is finalized.
    OnFinalized,
    /// Capture only on a capture command; a finalized session is recorded `skipped`.
    OnCommand,
}

/// The deprecated `ACTIONS_ON_FINALIZED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnFinalized {
    Capture,
    None,
}

impl OnFinalized {
    fn policy(self) -> CapturePolicy {
        match self {
            Self::Capture => CapturePolicy::OnFinalized,
            Self::None => CapturePolicy::OnCommand,
        }
    }
}

/// What ACTIONS_OM_RATE_LIMIT is unless set.
pub const DEFAULT_OM_RATE_LIMIT: f64 = 100.0;

fn requests_per_second(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if rate >= 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!(
            "{value:?} is not a number of requests per second (0 or more; 0: no limit)"
        )),
    }
}

impl Config {
    /// Order Management requests per second per account (0: no limit):
    /// ACTIONS_OM_RATE_LIMIT, else the deprecated ACTIONS_MAX_CALLS_PER_SEC, else 100.
    /// Call [`Config::check`] first.
    pub fn om_rate_limit(&self) -> f64 {
        self.om_rate_limit
            .or(self.max_calls_per_sec)
            .unwrap_or(DEFAULT_OM_RATE_LIMIT)
    }

    /// The capture policy: ACTIONS_CAPTURE_POLICY, else the deprecated
    /// ACTIONS_ON_FINALIZED, else on-finalized. Call [`Config::check`] first.
    pub fn capture_policy(&self) -> CapturePolicy {
        self.capture_policy
            .or(self.on_finalized.map(OnFinalized::policy))
            .unwrap_or(CapturePolicy::OnFinalized)
    }

    /// Settings that contradict each other.
    pub fn check(&self) -> Result<(), String> {
        if let (Some(policy), Some(old)) = (self.capture_policy, self.on_finalized) {
            if old.policy() != policy {
                return Err(format!(
                    "ACTIONS_CAPTURE_POLICY={} contradicts the deprecated ACTIONS_ON_FINALIZED={}: \
                     set only ACTIONS_CAPTURE_POLICY",
                    policy.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default(),
                    old.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default(),
                ));
            }
        }
        if let (Some(limit), Some(old)) = (self.om_rate_limit, self.max_calls_per_sec) {
            if limit != old {
                return Err(format!(
                    "ACTIONS_OM_RATE_LIMIT={limit} contradicts the deprecated \
                     ACTIONS_MAX_CALLS_PER_SEC={old}: set only ACTIONS_OM_RATE_LIMIT"
                ));
            }
        }
        Ok(())
    }

    pub fn api_produce_timeout(&self) -> Duration {
        Duration::from_millis(self.api_produce_timeout_ms)
    }
    pub fn http_timeout(&self) -> Duration {
        Duration::from_millis(self.http_timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

/// ipp-actions' address: the probes.
#[derive(Debug, Clone, Copy)]
pub struct Actions;

impl Listens for Actions {
    const ENV: &'static str = "ACTIONS_HTTP";
    const DEFAULT: &'static str = "0.0.0.0:9102";
    const SERVES: &'static str = "the commands API (/v1/...), /healthz, /readyz, /metrics";
}

impl AdminListens for Actions {
    const ENV: &'static str = "ACTIONS_ADMIN_LISTEN";
}
