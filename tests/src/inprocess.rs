//! The services in the test's own process: each one's `run(config, listener, shutdown)`
//! on a listener already bound to `127.0.0.1:0` (so the address is known before the
//! service starts and no other process can take the port), with a typed `Config` built
//! here, so that a renamed setting breaks the build rather than the test.
//!
//! Each service gets a small runtime of its own: a test that blocks its thread (reading
//! a topic back, a blocking HTTP call) cannot stall the service it is testing.

use std::{future::Future, net::SocketAddr, sync::Once, time::Duration};

use clap::Parser;
use ipp_service::{DatabaseArgs, DatabaseUrl, KafkaArgs, KafkaProperty, Listeners, Secret};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long [`TestService::stop`] waits for `run` to return. Services drain within
/// their own shutdown timeouts; this only catches a hang.
const STOP_WITHIN: Duration = Duration::from_secs(60);

/// Installs, once per test process, a tracing subscriber for the in-process services:
/// the test writer (shown when a test fails), filtered by `RUST_LOG`, `warn` otherwise.
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// One service running in-process. Dropping it cancels the service and abandons its
/// runtime; [`TestService::stop`] is the graceful way, and says how `run` ended.
pub struct TestService<E> {
    pub name: &'static str,
    /// Where the service listens (HTTP).
    pub addr: SocketAddr,
    /// Its admin address, when the configuration set one.
    pub admin_addr: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub join: Option<JoinHandle<Result<(), E>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// A service under test: in-process, or a child process for the tests that signal it.
pub enum Running<E> {
    InProcess(TestService<E>),
    /// Listening on `addr`, the address it logged.
    Process {
        service: crate::process::Service,
        addr: SocketAddr,
    },
}

impl<E: std::error::Error + Send + 'static> Running<E> {
    pub fn url(&self) -> String {
        match self {
            Self::InProcess(service) => service.url(),
            Self::Process { addr, .. } => format!("http://{addr}"),
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self {
            Self::InProcess(service) => service.is_running(),
            Self::Process { service, .. } => service.is_running(),
        }
    }

    /// The `/metrics` text, or the error of a service that does not answer (yet).
    pub async fn metrics(&self) -> reqwest::Result<String> {
        reqwest::get(format!("{}/metrics", self.url()))
            .await?
            .text()
            .await
    }

    /// The sum of one Prometheus metric's samples whose line contains `labels` (all of
    /// them when empty); 0 while the service does not answer.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self.metrics().await.unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Stops it gracefully (SIGTERM for a process) and asserts it ended well (exit 0).
    pub async fn stop(self) {
        match self {
            Self::InProcess(service) => service.stop().await,
            Self::Process { mut service, .. } => {
                let name = service.name.clone();
                let status =
                    tokio::task::spawn_blocking(move || service.terminate(Duration::from_secs(30)))
                        .await
                        .expect("terminate");
                assert!(
                    status.success(),
                    "{name}: graceful shutdown exits 0, got {status}"
                );
            }
        }
    }

    /// SIGKILLs the process. A killed consumer's group membership lives on until its
    /// session expires; the next member is assigned its partitions then.
    pub fn kill(&mut self) {
        let Self::Process { service, .. } = self else {
            panic!("only a child process can be SIGKILLed");
        };
        service.signal("KILL");
        service.wait(Duration::from_secs(10));
    }
}

pub type TestIngest = TestService<ipp_ingest::StartError>;
pub type TestProjector = TestService<ipp_projector::Error>;
pub type TestActions = TestService<ipp_actions::Error>;
pub type TestOmSim = TestService<std::io::Error>;

impl<E: std::error::Error + Send + 'static> TestService<E> {
    /// On a port of its own, and on `admin` too when there is one (port 0: see
    /// [`TestService::admin_addr`]).
    fn start<F, Fut>(name: &'static str, admin: Option<SocketAddr>, run: F) -> Self
    where
        F: FnOnce(Listeners, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        Self::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0)), admin, run)
    }

    /// On `addr`: a port a client was already told about (see [`crate::ReservedPort`]).
    /// The listeners are bound here, before the service starts, as `main` does.
    fn start_at<F, Fut>(
        name: &'static str,
        addr: SocketAddr,
        admin: Option<SocketAddr>,
        run: F,
    ) -> Self
    where
        F: FnOnce(Listeners, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        init_logs();
        let bind = |addr: SocketAddr| {
            let listener =
                std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            listener
                .set_nonblocking(true)
                .expect("non-blocking listener");
            listener
        };
        let public = bind(addr);
        let admin = admin.map(bind);
        let addr = public.local_addr().expect("local addr");
        let admin_addr = admin.as_ref().map(|l| l.local_addr().expect("local addr"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("service runtime");
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let join = runtime.spawn(async move {
            // Registered with this runtime's reactor, which drives the service.
            let tokio_listener = |l: std::net::TcpListener| {
                tokio::net::TcpListener::from_std(l).expect("tokio listener")
            };
            let listeners = Listeners {
                public: tokio_listener(public),
                admin: admin.map(tokio_listener),
            };
            let result = run(listeners, token).await;
            // Said at once: a test waiting for the service's effects would otherwise
            // only time out.
            if let Err(error) = &result {
                eprintln!("{name} ended with an error: {}", chain(error));
            }
            result
        });
        Self {
            name,
            addr,
            admin_addr,
            shutdown,
            join: Some(join),
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether `run` has not returned yet.
    pub fn is_running(&self) -> bool {
        self.join.as_ref().is_some_and(|join| !join.is_finished())
    }

    /// Cancels the service (what SIGTERM does in `main`) and waits, bounded, for `run`
    /// to return; its error, or a panic, fails the test.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Err(error) = self.finish(STOP_WITHIN).await {
            panic!("{} ended with an error: {}", self.name, chain(&error));
        }
    }

    /// Waits, bounded, for `run` to return by itself (without cancelling it), e.g. a
    /// service that must refuse to start; returns its result.
    pub async fn exited(mut self, within: Duration) -> Result<(), E> {
        self.finish(within).await
    }

    async fn finish(&mut self, within: Duration) -> Result<(), E> {
        let join = self.join.take().expect("awaited once");
        let joined = tokio::time::timeout(within, join)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within {within:?}", self.name));
        match joined {
            Ok(result) => result,
            Err(error) => panic!("{} panicked: {error}", self.name),
        }
    }
}

impl<E> Drop for TestService<E> {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime blocks, which async code may not do.
            runtime.shutdown_background();
        }
    }
}

/// An error and its causes on one line.
pub use ipp_service::error_chain as chain;

impl TestIngest {
    pub fn spawn(config: ipp_ingest::Config) -> Self {
        Self::spawn_with_clock(config, ipp_ingest::Clock::system())
    }

    /// On `addr`, for a client that posted there before ingest started.
    pub fn spawn_at(addr: SocketAddr, config: ipp_ingest::Config) -> Self {
        Self::start_at(
            "ipp-ingest",
            addr,
            config.admin_listen.addr,
            move |listeners, shutdown| ipp_ingest::run(config, listeners, shutdown),
        )
    }

    /// With `clock` for the signature's timestamp tolerance (a fixed one checks its edges).
    pub fn spawn_with_clock(config: ipp_ingest::Config, clock: ipp_ingest::Clock) -> Self {
        Self::start(
            "ipp-ingest",
            config.admin_listen.addr,
            move |listeners, shutdown| {
                ipp_ingest::run_with_clock(config, listeners, shutdown, clock)
            },
        )
    }
}

impl TestProjector {
    pub fn spawn(config: ipp_projector::Config) -> Self {
        Self::start("ipp-projector", None, move |listeners, shutdown| {
            ipp_projector::run(config, listeners.public, shutdown)
        })
    }
}

impl TestActions {
    pub fn spawn(config: ipp_actions::Config) -> Self {
        Self::start(
            "ipp-actions",
            config.admin_listen.addr,
            move |listeners, shutdown| ipp_actions::run(config, listeners, shutdown),
        )
    }
}

impl TestOmSim {
    pub fn spawn(config: ipp_om_sim::Config) -> Self {
        Self::start("ipp-om-sim", None, move |listeners, shutdown| {
            ipp_om_sim::run(config, listeners.public, shutdown)
        })
    }
}

// --- Typed configurations --------------------------------------------------------------
//
// The defaults come from each service's own clap definition. Parsing also reads the
// environment (scripts/test exports KAFKA_BROKERS, for one), so every setting a test
// depends on is set here explicitly.

/// `ipp-projector`'s `Config` is flattened into its CLI; this parses it alone.
#[derive(Parser)]
struct ProjectorDefaults {
    #[command(flatten)]
    config: ipp_projector::Config,
}

fn kafka(brokers: &str) -> KafkaArgs {
    KafkaArgs {
        brokers: brokers.to_owned(),
        properties: test_properties(),
        properties_file: None,
    }
}

/// The database settings of a test service: `url`, the other settings the defaults.
pub fn database(url: &str) -> DatabaseArgs {
    DatabaseArgs {
        url: url.parse::<DatabaseUrl>().expect("database url"),
        max_connections: 10,
    }
}

/// `IPP_TEST_KAFKA_PROPERTIES` (comma-separated `key=value`) adds librdkafka settings to
/// every service a test starts (e.g. `debug=cgrp` when chasing a rebalance).
pub fn test_properties() -> Vec<KafkaProperty> {
    std::env::var("IPP_TEST_KAFKA_PROPERTIES")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.parse().expect("IPP_TEST_KAFKA_PROPERTIES: key=value"))
        .collect()
}

/// Adds `key=value` librdkafka settings to `properties`.
pub fn add_properties(properties: &mut Vec<KafkaProperty>, pairs: &[&str]) {
    for pair in pairs {
        properties.push(pair.parse().expect("key=value"));
    }
}

/// `ipp-ingest` on `brokers`, writing to `ipp_topic` and `other_topic`, accepting
/// signatures made with any of `secrets`.
pub fn ingest_config(
    brokers: &str,
    ipp_topic: &str,
    other_topic: &str,
    secrets: &[String],
) -> ipp_ingest::Config {
    let mut config = ipp_ingest::Config::try_parse_from(["ipp-ingest"]).expect("defaults");
    config.kafka = kafka(brokers);
    config.ipp_topic = ipp_topic.to_owned();
    config.other_topic = other_topic.to_owned();
    config.webhook_secrets = secrets.iter().map(Secret::new).collect();
    config.accounts_file = None;
    config.insecure_skip_verify = false;
    config.signature_tolerance_secs = 300;
    config.max_body_bytes = 256 * 1024;
    config.header_read_timeout_ms = 10_000;
    config.body_read_timeout_ms = 10_000;
    config.max_connections = 1000;
    config.produce_timeout_ms = 5000;
    config.shutdown_timeout_secs = 30;
    config
}

/// `ipp-projector` projecting `topic` into `database_url` as consumer group `group`,
/// parking poison records in `dlq_topic`, in the `public` schema.
pub fn projector_config(
    brokers: &str,
    topic: &str,
    dlq_topic: &str,
    database_url: &str,
    group: &str,
) -> ipp_projector::Config {
    let mut config = ProjectorDefaults::try_parse_from(["ipp-projector"])
        .expect("defaults")
        .config;
    config.kafka = kafka(brokers);
    config.database = database(database_url);
    config.ipp_topic = topic.to_owned();
    config.dlq_topic = dlq_topic.to_owned();
    config.group = group.to_owned();
    config.schema = "public".to_owned();
    config.batch_size = 2000;
    config.batch_wait_ms = 0;
    config.max_payload_bytes = 1024 * 1024;
    config.orders_group = format!("{group}-orders");
    config.kustom_topic = kustom_topic_of(topic);
    config.observations_topic = observations_topic_of(topic);
    config
}

/// Where `ipp-actions` sends its captures: the Order Management API and its key.
#[derive(Debug, Clone, Copy)]
pub struct OrderManagement<'a> {
    pub url: &'a str,
    pub api_key: &'a str,
}

/// The commands topic that goes with the test's event topic `topic`.
pub fn commands_topic_of(topic: &str) -> String {
    format!("{topic}.commands")
}

/// The observations topic (what ipp-actions appends) that goes with the event topic
/// `topic`.
pub fn observations_topic_of(topic: &str) -> String {
    format!("{topic}.observations")
}

/// The Kustom events topic (ingest's other topic) ipp-actions reads by default beside
/// the event topic `topic`; a stack whose ingest writes its own other topic points
/// `kustom_topic` there instead.
pub fn kustom_topic_of(topic: &str) -> String {
    format!("{topic}.kustom")
}

/// Every topic ipp-actions needs beside `topic` and its DLQ: commands, Kustom events,
/// observations. Create them with the stack's other topics ([`crate::kafka::create_actions_topics`]).
pub fn actions_topics_of(topic: &str) -> [String; 3] {
    [
        commands_topic_of(topic),
        kustom_topic_of(topic),
        observations_topic_of(topic),
    ]
}

/// `ipp-actions` consuming `topic`, its commands topic and its Kustom events topic, and
/// appending to its observations topic ([`actions_topics_of`], which the caller creates
/// with its other topics) as consumer group `group`, its ledger in
/// `database_url`, failed actions to `dlq_topic`, capturing through `om`. Retry and
/// timeout settings are the production defaults; tests shorten what they need.
pub fn actions_config(
    brokers: &str,
    topic: &str,
    dlq_topic: &str,
    database_url: &str,
    group: &str,
    om: OrderManagement<'_>,
) -> ipp_actions::Config {
    let mut config = ipp_actions::cli::Cli::try_parse_from(["ipp-actions"])
        .expect("defaults")
        .config;
    config.capture_policy = Some(ipp_actions::CapturePolicy::OnFinalized);
    config.on_finalized = None;
    config.kafka = kafka(brokers);
    config.database = database(database_url);
    config.ipp_topic = topic.to_owned();
    config.commands_topic = commands_topic_of(topic);
    config.kustom_topic = kustom_topic_of(topic);
    config.observations_topic = observations_topic_of(topic);
    config.dlq_topic = dlq_topic.to_owned();
    config.group = group.to_owned();
    config.kustom_api_url = om.url.to_owned();
    config.kustom_api_key = Secret::new(om.api_key);
    config.accounts_file = None;
    config.migrate = true;
    config
}

/// `config` with another capture policy.
pub fn with_capture_policy(
    mut config: ipp_actions::Config,
    policy: ipp_actions::CapturePolicy,
) -> ipp_actions::Config {
    config.capture_policy = Some(policy);
    config
}

/// The Order Management simulator accepting `api_key`, with no faults.
pub fn om_sim_config(api_key: &str) -> ipp_om_sim::Config {
    let mut config = ipp_om_sim::Config::try_parse_from(["ipp-om-sim"]).expect("defaults");
    config.api_key = Secret::new(api_key);
    config.accounts = Vec::new();
    config.faults = ipp_om_sim::Faults::default();
    config.seed = 1;
    config.merchant_id = "DM00000000".to_owned();
    config.webhooks.url = None;
    config.webhooks.secret = None;
    config.webhooks.duplicate_rate = 0.0;
    config.webhooks.delay_ms = 0;
    config.webhooks.delay_jitter_ms = 0;
    config
}

/// `config` posting its webhooks to `url` (e.g. ingest's `/webhooks/kustom`), signed
/// with `secret`; the other delivery settings are the defaults.
pub fn om_sim_posting_to(
    mut config: ipp_om_sim::Config,
    url: &str,
    secret: &str,
) -> ipp_om_sim::Config {
    config.webhooks.url = Some(url.to_owned());
    config.webhooks.secret = Some(Secret::new(secret));
    config
}
