//! The whole pipeline as child processes, for the tests that SIGKILL services:
//! ipp-ingest, ipp-projector and ipp-actions (the Order Management simulator
//! in-process) on fresh topics and a fresh database. The simulator posts its signed
//! Kustom webhooks (`capture.created`, `refund.created`, …) to ingest, as Kustom does,
//! so the orders read model is fed by the real chain: ingest's other-events topic,
//! ipp-actions' reads of the order, its observations, the projector.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use chrono::Utc;
use ipp_service::{KafkaArgs, KafkaPropertiesFile, ListenArgs};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::{
    db::{self, TestDatabase},
    ingest::post_webhook,
    inprocess::{
        actions_config, commands_topic_of, ingest_config, observations_topic_of, om_sim_config,
        om_sim_posting_to, projector_config, OrderManagement,
    },
    kafka,
    om_sim::OmSim,
    process::{wait_for_tcp, ChildConfig, Service},
    produce::ipp_body,
    projector::FINALIZED,
    signer::Signer,
    unique_name, ReservedPort,
};

pub const API_KEY: &str = "kco_test_e2e";

/// How the services reach a broker the harness itself reaches otherwise: the
/// bootstrap servers of another listener and the `KAFKA_PROPERTIES_FILE` for it (e.g.
/// SASL_SSL credentials), instead of the test's broker as is.
#[derive(Debug, Clone)]
pub struct ServicesKafka {
    pub brokers: String,
    pub properties_file: PathBuf,
}

pub struct Processes {
    /// Where the harness creates the topics and reads them back.
    pub brokers: String,
    /// Where the services go, when not to `brokers`.
    pub services_kafka: Option<ServicesKafka>,
    pub ipp_topic: String,
    pub other_topic: String,
    pub secret: String,
    /// Ingest's port, the same across its restart (the senders keep their URL), kept
    /// from every other socket meanwhile.
    ingest_port: ReservedPort,
    pub sim_url: String,
    pub projector_group: String,
    pub actions_group: String,
    pub ipp_dlq: String,
    pub actions_dlq: String,
    pub sim: OmSim,
    /// Added to every service's environment (e.g. the `OTEL_*` variables of span export).
    pub service_env: Vec<(&'static str, String)>,
    /// Last: dropped after the services that use it.
    pub database: TestDatabase,
}

impl Processes {
    /// Ingest's port, the same across its restart: the senders keep their URL.
    pub fn ingest_port(&self) -> u16 {
        self.ingest_port.port()
    }

    /// `http://127.0.0.1:<ingest's port>`, without a trailing slash.
    pub fn ingest_url(&self) -> String {
        format!("http://{}", self.ingest_port.addr())
    }

    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like [`Processes::start`], with the simulator's configuration adjusted (its
    /// webhook delivery already points at ingest).
    pub async fn start_with(adjust_sim: impl FnOnce(&mut ipp_om_sim::Config)) -> Self {
        Self::start_on(kafka::brokers(), None, adjust_sim).await
    }

    /// Like [`Processes::start_with`] on a broker of the test's own: the harness creates
    /// the topics through `brokers`, the services use `services_kafka` when given.
    pub async fn start_on(
        brokers: String,
        services_kafka: Option<ServicesKafka>,
        adjust_sim: impl FnOnce(&mut ipp_om_sim::Config),
    ) -> Self {
        let secret = Signer::random_secret();
        let ingest_port = ReservedPort::new();
        let webhook_url = format!("http://{}/webhooks/kustom", ingest_port.addr());
        let mut sim_config = om_sim_posting_to(om_sim_config(API_KEY), &webhook_url, &secret);
        adjust_sim(&mut sim_config);
        let sim = OmSim::start_with(sim_config);
        let ipp_topic = kafka::create_topic(&brokers, "e2e_ipp", 4).await;
        kafka::create_named_topic(&brokers, &commands_topic_of(&ipp_topic), 4).await;
        kafka::create_named_topic(&brokers, &observations_topic_of(&ipp_topic), 4).await;
        Self {
            ipp_topic,
            other_topic: kafka::create_topic(&brokers, "e2e_other", 2).await,
            ipp_dlq: kafka::create_topic(&brokers, "e2e_ipp_dlq", 1).await,
            actions_dlq: kafka::create_topic(&brokers, "e2e_actions_dlq", 1).await,
            database: db::fresh_database().await,
            secret,
            ingest_port,
            sim_url: sim.url.clone(),
            projector_group: unique_name("e2e_projector"),
            actions_group: unique_name("e2e_actions"),
            brokers,
            services_kafka,
            sim,
            service_env: Vec::new(),
        }
    }

    /// Points a service's Kafka settings at [`Processes::services_kafka`], if any.
    fn connect(&self, kafka: &mut KafkaArgs) {
        if let Some(services) = &self.services_kafka {
            kafka.brokers = services.brokers.clone();
            kafka.properties_file = Some(
                KafkaPropertiesFile::read(&services.properties_file)
                    .expect("the services' Kafka properties file"),
            );
        }
    }

    /// `config`'s binary as a child process (these tests SIGKILL them) on port 0,
    /// logging warnings and the line that gives its address (`listening`, of
    /// `service_target`), which is returned with it.
    pub fn spawn_on_port_0<C: ChildConfig>(
        &self,
        config: &C,
        service_target: &str,
    ) -> (Service, SocketAddr) {
        let mut env = self.env_of(config);
        env.push(("RUST_LOG", format!("warn,{service_target}=info")));
        let mut service = Service::spawn_watched(C::BINARY, &[], &env);
        let addr = service.listen_addr(Duration::from_secs(30));
        (service, addr)
    }

    /// The environment that runs `config`, with [`Processes::service_env`].
    fn env_of<C: ChildConfig>(&self, config: &C) -> Vec<(&'static str, String)> {
        let mut env = config.env();
        env.extend(self.service_env.iter().cloned());
        env
    }

    pub fn ingest(&self) -> Service {
        let env = self.env_of(&self.ingest_config());
        let service = Service::spawn_watched(ipp_ingest::Config::BINARY, &[], &env);
        wait_for_tcp(self.ingest_port(), Duration::from_secs(20));
        service
    }

    /// ipp-ingest's configuration, on [`Processes::ingest_port`].
    pub fn ingest_config(&self) -> ipp_ingest::Config {
        let mut config = ingest_config(
            &self.brokers,
            &self.ipp_topic,
            &self.other_topic,
            std::slice::from_ref(&self.secret),
        );
        config.listen = ListenArgs::new(self.ingest_port.addr());
        config.max_body_bytes = 16384;
        self.connect(&mut config.kafka);
        config
    }

    pub fn projector(&self) -> Service {
        self.projector_with(|_| {})
    }

    /// ipp-projector with its configuration adjusted (e.g. the confirmation timeout).
    pub fn projector_with(&self, adjust: impl FnOnce(&mut ipp_projector::Config)) -> Service {
        let mut config = self.projector_config();
        adjust(&mut config);
        self.spawn_on_port_0(&config, "ipp_projector::service").0
    }

    /// The projector's configuration: its orders consumer reads ingest's other topic,
    /// where the simulator's webhooks land.
    pub fn projector_config(&self) -> ipp_projector::Config {
        let mut config = projector_config(
            &self.brokers,
            &self.ipp_topic,
            &self.ipp_dlq,
            self.database.url(),
            &self.projector_group,
        );
        config.listen = ListenArgs::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.kustom_topic = self.other_topic.clone();
        self.connect(&mut config.kafka);
        config
    }

    pub fn actions(&self) -> Service {
        self.actions_with(|_| {})
    }

    /// ipp-actions with its configuration adjusted.
    pub fn actions_with(&self, adjust: impl FnOnce(&mut ipp_actions::Config)) -> Service {
        let mut config = self.actions_config();
        adjust(&mut config);
        self.spawn_on_port_0(&config, "ipp_actions::service").0
    }

    /// ipp-actions' configuration; its operator commands (`command issue …`) share it.
    pub fn actions_config(&self) -> ipp_actions::Config {
        let mut config = actions_config(
            &self.brokers,
            &self.ipp_topic,
            &self.actions_dlq,
            self.database.url(),
            &self.actions_group,
            OrderManagement {
                url: &self.sim_url,
                api_key: API_KEY,
            },
        );
        config.listen = ListenArgs::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.retry_min_delay_ms = 200;
        // The Kustom events ingest writes.
        config.kustom_topic = self.other_topic.clone();
        self.connect(&mut config.kafka);
        config
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/webhooks/kustom", self.ingest_url())
    }

    /// Posts a signed `ipp.session.finalized` of `merchant` for `order` to ingest (a
    /// session of its own); asserts its 200.
    pub async fn finalize(&self, merchant: &str, order: Uuid) {
        let event_id = format!("kevt_fin_{}", order.simple());
        let body = ipp_body(
            &event_id,
            FINALIZED,
            merchant,
            Uuid::new_v4(),
            Utc::now(),
            Some(order),
            None,
        );
        let signed = Signer::new(&self.secret).sign(&body);
        let response = post_webhook(&self.ingest_url(), &body, Some(&signed)).await;
        assert_eq!(response.status(), StatusCode::OK, "finalized {order}");
    }
}
