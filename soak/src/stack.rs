//! The whole pipeline as processes on 127.0.0.1: a broker of the soak's own (its data
//! directory kept across restarts), the topics, a database of its own, ipp-om-sim,
//! ipp-ingest, ipp-projector and ipp-actions. The ports others are told (the broker's,
//! ingest's, the simulator's) are reserved for the whole run, so a restarted service
//! comes back where its clients look for it; the projector and ipp-actions, which nobody
//! calls, listen on port 0.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context};
use ipp_schemas::topics;
use ipp_service::ListenArgs;
use ipp_tests::{
    inprocess::{actions_config, ingest_config, om_sim_config, projector_config, OrderManagement},
    kafka,
    process::ChildConfig,
    signer::Signer,
    ReservedPort,
};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::Mutex;

use crate::process::{wait_for_port, Process, Spec};

pub const API_KEY: &str = "kco_test_soak";
/// The schema and consumer group of the clean pass (a fresh projector over the whole log
/// after the run), and the dead-letter topic it parks the poison in once more.
/// The live consumer groups (the services' defaults).
pub const PROJECTOR_GROUP: &str = "ipp-projector";
pub const ACTIONS_GROUP: &str = "ipp-actions";
/// Partitions of `ipp.events`.
pub const IPP_PARTITIONS: i32 = 4;
pub const CLEAN_SCHEMA: &str = "soak_clean";
pub const CLEAN_GROUP: &str = "ipp-soak-clean-pass";
pub const CLEAN_DLQ: &str = "soak.clean.dlq";
/// How long a broker gets to listen after a (re)start: a SIGKILLed one recovers its logs.
pub const BROKER_START_WITHIN: Duration = Duration::from_secs(120);

/// The services the chaos kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Ingest,
    Projector,
    Actions,
}

impl Service {
    pub const ALL: [Self; 3] = [Self::Ingest, Self::Projector, Self::Actions];

    pub fn name(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Projector => "projector",
            Self::Actions => "actions",
        }
    }
}

pub struct Stack {
    pub brokers: String,
    pub broker_port: u16,
    pub broker: Arc<Mutex<Process>>,
    pub om_sim: Mutex<Process>,
    pub ingest: Arc<Mutex<Process>>,
    pub projector: Arc<Mutex<Process>>,
    pub actions: Arc<Mutex<Process>>,
    pub ingest_port: u16,
    pub sim_url: String,
    pub secret: String,
    pub database: Database,
    log_dir: PathBuf,
    bin_dir: PathBuf,
    /// The broker's, ingest's and the simulator's ports, which the others are told and
    /// which each keeps across its restarts: kept from every other socket meanwhile.
    _reserved: [ReservedPort; 3],
}

impl Stack {
    /// Starts everything and waits until ingest listens.
    pub async fn start(
        out: &Path,
        bin_dir: &Path,
        database_server: &str,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let log_dir = out.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let broker_reserved = ReservedPort::new();
        let broker_port = broker_reserved.port();
        let brokers = format!("127.0.0.1:{broker_port}");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka-broker");
        let broker = Process::new(
            Spec {
                name: "kafka",
                program: script.into(),
                args: vec![
                    out.join("kafka-data").display().to_string(),
                    broker_port.to_string(),
                ],
                env: Vec::new(),
                clean_env: false,
            },
            &log_dir,
        );
        let broker = Arc::new(Mutex::new(broker));
        start_broker(&mut *broker.lock().await, broker_port).await?;
        for (topic, partitions) in [
            (topics::IPP_EVENTS, IPP_PARTITIONS),
            (topics::KUSTOM_EVENTS, 2),
            (topics::IPP_COMMANDS, IPP_PARTITIONS),
            (topics::IPP_OBSERVATIONS, IPP_PARTITIONS),
            (topics::IPP_EVENTS_DLQ, 1),
            (topics::IPP_ACTIONS_DLQ, 1),
            (CLEAN_DLQ, 1),
        ] {
            kafka::create_named_topic_with(
                &brokers,
                topic,
                partitions,
                &[
                    ("retention.ms", "-1"),
                    ("retention.bytes", "-1"),
                    ("cleanup.policy", "delete"),
                ],
            )
            .await;
        }

        let database = Database::create(database_server).await?;
        let secret = Signer::random_secret();
        let (ingest_reserved, sim_reserved) = (ReservedPort::new(), ReservedPort::new());
        let (ingest_port, sim_port) = (ingest_reserved.port(), sim_reserved.port());
        let sim_url = format!("http://127.0.0.1:{sim_port}");

        let mut sim = om_sim_config(API_KEY);
        sim.listen = loopback(sim_port);
        sim.seed = seed;
        let mut ingest = ingest_config(
            &brokers,
            topics::IPP_EVENTS,
            topics::KUSTOM_EVENTS,
            std::slice::from_ref(&secret),
        );
        ingest.listen = loopback(ingest_port);
        let mut projector = projector_config(
            &brokers,
            topics::IPP_EVENTS,
            topics::IPP_EVENTS_DLQ,
            &database.url,
            PROJECTOR_GROUP,
        );
        projector.listen = loopback(0);
        projector.kustom_topic = topics::KUSTOM_EVENTS.to_owned();
        projector.observations_topic = topics::IPP_OBSERVATIONS.to_owned();
        let mut actions = actions_config(
            &brokers,
            topics::IPP_EVENTS,
            topics::IPP_ACTIONS_DLQ,
            &database.url,
            ACTIONS_GROUP,
            OrderManagement {
                url: &sim_url,
                api_key: API_KEY,
            },
        );
        actions.listen = loopback(0);
        actions.commands_topic = topics::IPP_COMMANDS.to_owned();
        actions.kustom_topic = topics::KUSTOM_EVENTS.to_owned();
        actions.observations_topic = topics::IPP_OBSERVATIONS.to_owned();

        let spec = |name: &'static str,
                    program: &str,
                    args: &[&str],
                    env: Vec<(&'static str, String)>| Spec {
            name,
            program: bin_dir.join(program),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env,
            clean_env: true,
        };
        // Migrations once, one after the other, before the services race to them.
        for (binary, env) in [
            (ipp_projector::Config::BINARY, projector.env()),
            (ipp_actions::Config::BINARY, actions.env()),
        ] {
            let mut migrate = Process::new(spec("migrate", binary, &["migrate"], env), &log_dir);
            migrate.start()?;
            let status = migrate.wait_exit(Duration::from_secs(120)).await;
            if !status.is_some_and(|s| s.success()) {
                bail!(
                    "{binary} migrate failed ({status:?}):\n{}",
                    migrate.log_tail(20)
                );
            }
        }
        let om_sim = Process::new(
            spec("om-sim", ipp_om_sim::Config::BINARY, &[], sim.env()),
            &log_dir,
        );
        let stack = Self {
            broker,
            broker_port,
            om_sim: Mutex::new(om_sim),
            ingest: shared(Process::new(
                spec("ingest", ipp_ingest::Config::BINARY, &[], ingest.env()),
                &log_dir,
            )),
            projector: shared(Process::new(
                spec(
                    "projector",
                    ipp_projector::Config::BINARY,
                    &[],
                    projector.env(),
                ),
                &log_dir,
            )),
            actions: shared(Process::new(
                spec("actions", ipp_actions::Config::BINARY, &[], actions.env()),
                &log_dir,
            )),
            brokers,
            ingest_port,
            sim_url,
            secret,
            database,
            log_dir,
            bin_dir: bin_dir.to_owned(),
            _reserved: [broker_reserved, ingest_reserved, sim_reserved],
        };
        stack.om_sim.lock().await.start()?;
        if !wait_for_port(sim_port, Duration::from_secs(60)).await {
            bail!("ipp-om-sim did not listen on {sim_port}");
        }
        for service in Service::ALL {
            stack.service(service).lock().await.start()?;
        }
        if !wait_for_port(ingest_port, Duration::from_secs(60)).await {
            bail!("ipp-ingest did not listen on {ingest_port}");
        }
        Ok(stack)
    }

    pub fn service(&self, service: Service) -> &Arc<Mutex<Process>> {
        match service {
            Service::Ingest => &self.ingest,
            Service::Projector => &self.projector,
            Service::Actions => &self.actions,
        }
    }

    pub fn webhook_url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/kustom", self.ingest_port)
    }

    /// A fresh projector over the whole log into [`CLEAN_SCHEMA`], as a process.
    pub fn clean_pass_projector(&self) -> Process {
        let mut config = projector_config(
            &self.brokers,
            topics::IPP_EVENTS,
            CLEAN_DLQ,
            &self.database.url,
            CLEAN_GROUP,
        );
        config.schema = CLEAN_SCHEMA.to_owned();
        config.listen = loopback(0);
        config.kustom_topic = topics::KUSTOM_EVENTS.to_owned();
        config.observations_topic = topics::IPP_OBSERVATIONS.to_owned();
        Process::new(
            Spec {
                name: "clean-pass",
                program: self.bin_dir.join(ipp_projector::Config::BINARY),
                args: Vec::new(),
                env: config.env(),
                clean_env: true,
            },
            &self.log_dir,
        )
    }

    /// Stops everything: the services first (SIGTERM, they finish their batches), the
    /// broker last.
    pub async fn stop(&self) {
        for process in [&self.ingest, &self.projector, &self.actions] {
            let mut process = process.lock().await;
            if process.is_running() {
                let _ = process.signal(crate::process::Signal::Term);
                process.wait_exit(Duration::from_secs(30)).await;
            }
        }
        let mut sim = self.om_sim.lock().await;
        if sim.is_running() {
            let _ = sim.signal(crate::process::Signal::Term);
            sim.wait_exit(Duration::from_secs(10)).await;
        }
        let mut broker = self.broker.lock().await;
        if broker.is_running() {
            let _ = broker.signal(crate::process::Signal::Term);
            broker.wait_exit(Duration::from_secs(60)).await;
        }
    }
}

/// `127.0.0.1:port` as any service's listen setting.
fn loopback<S>(port: u16) -> ListenArgs<S> {
    ListenArgs::new(SocketAddr::from(([127, 0, 0, 1], port)))
}

fn shared(process: Process) -> Arc<Mutex<Process>> {
    Arc::new(Mutex::new(process))
}

/// (Re)starts the broker and waits until it listens.
pub async fn start_broker(broker: &mut Process, port: u16) -> anyhow::Result<()> {
    broker.start()?;
    if wait_for_port(port, BROKER_START_WITHIN).await {
        return Ok(());
    }
    bail!(
        "the broker did not listen on {port} within {BROKER_START_WITHIN:?}:\n{}",
        broker.log_tail(30)
    )
}

/// The soak's own database on the PostgreSQL server.
pub struct Database {
    pub name: String,
    pub url: String,
    server: String,
}

impl Database {
    async fn create(server: &str) -> anyhow::Result<Self> {
        let name = format!(
            "ipp_soak_{}_{}",
            chrono::Utc::now().format("%Y%m%d%H%M%S"),
            std::process::id()
        );
        let mut conn = PgConnection::connect(server)
            .await
            .with_context(|| format!("connect to {server}"))?;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .context("create the soak's database")?;
        let _ = conn.close().await;
        let (base, _) = server
            .rsplit_once('/')
            .context("the database server URL has no path")?;
        Ok(Self {
            url: format!("{base}/{name}"),
            name,
            server: server.to_owned(),
        })
    }

    pub async fn drop_it(&self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.server).await?;
        conn.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await?;
        let _ = conn.close().await;
        Ok(())
    }
}
