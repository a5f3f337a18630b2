//! The pipeline the rebuild and replay tests run against: ipp-ingest, the live
//! ipp-projector, ipp-actions and the Order Management simulator in-process on fresh
//! topics and a fresh database, fed with signed webhooks from `ipp_loadgen`. The
//! operator commands under test (`rebuild`, `replay`) run as child processes.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use ipp_loadgen::{send_all, Delivery, ExpectedSession, WebhookSigner, Workload};
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::{
    cli,
    db::TestDatabase,
    inprocess::{
        actions_config, commands_topic_of, ingest_config, observations_topic_of, projector_config,
        OrderManagement, TestActions, TestIngest, TestProjector,
    },
    kafka,
    om_sim::OmSim,
    process::ChildConfig,
    signer::Signer,
    unique_name,
};

const API_KEY: &str = "kco_test_rebuild";

pub struct Pipeline {
    pub brokers: String,
    pub topic: String,
    pub other_topic: String,
    pub dlq: String,
    pub actions_dlq: String,
    pub database_url: String,
    pub secret: String,
    pub sim_url: String,
    pub projector_group: String,
    pub actions_group: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub ingest: TestIngest,
    pub projector: TestProjector,
    pub actions: TestActions,
    /// The live ipp-actions' configuration, which its operator commands share.
    pub actions_config: ipp_actions::Config,
    pub sim: OmSim,
    /// Last: dropped after the services that use it.
    pub database: TestDatabase,
}

impl Pipeline {
    pub async fn start(prefix: &str) -> Self {
        let brokers = kafka::brokers();
        let database = TestDatabase::create().await;
        let database_url = database.url().to_owned();
        let pool = database.pool().await;
        let topic = kafka::create_topic(&brokers, &format!("{prefix}_ipp"), 3).await;
        kafka::create_named_topic(&brokers, &commands_topic_of(&topic), 3).await;
        kafka::create_named_topic(&brokers, &observations_topic_of(&topic), 3).await;
        let other_topic = kafka::create_topic(&brokers, &format!("{prefix}_other"), 1).await;
        let dlq = kafka::create_topic(&brokers, &format!("{prefix}_dlq"), 1).await;
        let actions_dlq = kafka::create_topic(&brokers, &format!("{prefix}_adlq"), 1).await;
        let secret = Signer::random_secret();
        let projector_group = unique_name(&format!("{prefix}_projector"));
        let actions_group = unique_name(&format!("{prefix}_actions"));

        let sim = OmSim::start(API_KEY);
        let sim_url = sim.url.clone();
        let ingest = TestIngest::spawn(ingest_config(
            &brokers,
            &topic,
            &other_topic,
            std::slice::from_ref(&secret),
        ));
        let mut projector_config =
            projector_config(&brokers, &topic, &dlq, &database_url, &projector_group);
        projector_config.batch_wait_ms = 20;
        // The Kustom events ingest writes, for the orders model.
        projector_config.kustom_topic = other_topic.clone();
        let projector = TestProjector::spawn(projector_config);
        let mut actions_config = actions_config(
            &brokers,
            &topic,
            &actions_dlq,
            &database_url,
            &actions_group,
            OrderManagement {
                url: &sim_url,
                api_key: API_KEY,
            },
        );
        actions_config.retry_min_delay_ms = 200;
        // The Kustom events ingest writes.
        actions_config.kustom_topic = other_topic.clone();
        let actions = TestActions::spawn(actions_config.clone());
        Self {
            brokers,
            topic,
            other_topic,
            dlq,
            actions_dlq,
            database_url,
            secret,
            sim_url,
            projector_group,
            actions_group,
            pool,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("client"),
            ingest,
            projector,
            actions,
            actions_config,
            sim,
            database,
        }
    }

    /// The live projector's configuration, which the operator commands share.
    pub fn projector_config(&self) -> ipp_projector::Config {
        let mut config = projector_config(
            &self.brokers,
            &self.topic,
            &self.dlq,
            &self.database_url,
            &self.projector_group,
        );
        config.kustom_topic = self.other_topic.clone();
        config
    }

    /// Runs `ipp-projector args…` to completion (at most 180 s) off the async runtime.
    pub async fn projector_cli(&self, args: &[&str]) -> cli::Output {
        self.projector_cli_with(args, &[]).await
    }

    /// Like [`Pipeline::projector_cli`] with more environment (e.g. `RUST_LOG`).
    pub async fn projector_cli_with(
        &self,
        args: &[&str],
        extra_env: &[(&'static str, &str)],
    ) -> cli::Output {
        let mut env = self.projector_config().env();
        env.extend(extra_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        cli::run_async("ipp-projector", args, &env, Duration::from_secs(180)).await
    }

    /// Runs `ipp-actions args…` (an operator command) to completion, at most 180 s.
    pub async fn actions_cli(&self, args: &[&str]) -> cli::Output {
        let env = self.actions_config.env();
        cli::run_async("ipp-actions", args, &env, Duration::from_secs(180)).await
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/webhooks/kustom", self.ingest.url())
    }

    /// Posts deliveries (signed) and asserts every one got its 200.
    pub async fn send(&self, deliveries: &[Delivery], concurrency: usize) {
        let signer = WebhookSigner::new(&self.secret).expect("secret");
        let report = send_all(
            &self.client,
            &self.webhook_url(),
            &signer,
            deliveries,
            concurrency,
            Duration::from_secs(60),
        )
        .await;
        assert!(report.gave_up.is_empty(), "deliveries refused: {report:?}");
    }

    /// Waits until the live projector stored every IPP event of `workloads` and
    /// ipp-actions settled every finalized order.
    pub async fn settle(&self, workloads: &[&Workload]) {
        settle(&self.pool, workloads, Duration::from_secs(180)).await;
    }

    pub async fn sim_calls(&self) -> Vec<Value> {
        self.client
            .get(format!("{}/_sim/calls", self.sim_url))
            .send()
            .await
            .expect("GET /_sim/calls")
            .json()
            .await
            .expect("calls json")
    }

    pub async fn clear_sim_calls(&self) {
        let status = self
            .client
            .delete(format!("{}/_sim/calls", self.sim_url))
            .send()
            .await
            .expect("DELETE /_sim/calls")
            .status();
        assert!(status.is_success(), "DELETE /_sim/calls: {status}");
    }

    /// The whole `ipp_actions` ledger, one JSON text per row, in a stable order.
    pub async fn ledger(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT to_jsonb(a)::text FROM ipp_actions a ORDER BY order_id, action")
            .fetch_all(&self.pool)
            .await
            .expect("ledger")
    }

    pub fn assert_running(&mut self) {
        assert!(self.ingest.is_running(), "ipp-ingest died");
        assert!(self.projector.is_running(), "ipp-projector died");
        assert!(self.actions.is_running(), "ipp-actions died");
        assert!(self.sim.service.is_running(), "ipp-om-sim died");
    }
}

/// The rows of `table` (e.g. `ipp_sessions` or `ipp_previous.ipp_sessions`) restricted to
/// the expected sessions equal what the workloads imply, and there are no others.
pub async fn assert_sessions(
    pool: &PgPool,
    table: &str,
    expected: &BTreeMap<Uuid, ExpectedSession>,
) {
    let rows = sqlx::query(&format!(
        "SELECT session_id, merchant_id, status, order_id, failed_attempts, event_count FROM {table}"
    ))
    .fetch_all(pool)
    .await
    .expect("sessions");
    assert_eq!(rows.len(), expected.len(), "{table}: one row per session");
    for row in rows {
        let session: Uuid = row.get("session_id");
        let want = expected
            .get(&session)
            .unwrap_or_else(|| panic!("{table}: unexpected session {session}"));
        assert_eq!(
            row.get::<String, _>("status"),
            want.status,
            "{table} {session}"
        );
        assert_eq!(
            row.get::<Option<Uuid>, _>("order_id"),
            want.order_id,
            "{table} {session}"
        );
        assert_eq!(
            row.get::<i32, _>("failed_attempts"),
            want.failed_attempts,
            "{table} {session}"
        );
        assert_eq!(
            row.get::<i32, _>("event_count"),
            want.event_count,
            "{table} {session}"
        );
        assert_eq!(
            row.get::<Option<String>, _>("merchant_id").as_deref(),
            Some(want.merchant_id.as_str()),
            "{table} {session}"
        );
    }
}

/// Waits until the projector stored every IPP event of `workloads` (no more) and
/// ipp-actions settled every finalized order; panics with the progress after `within`.
pub async fn settle(pool: &PgPool, workloads: &[&Workload], within: Duration) {
    let events: BTreeSet<&str> = workloads
        .iter()
        .flat_map(|w| w.deliveries.iter())
        .filter(|d| d.is_ipp())
        .map(|d| d.event_id.as_str())
        .collect();
    let finalized: usize = workloads.iter().map(|w| w.finalized_orders().count()).sum();
    let deadline = Instant::now() + within;
    loop {
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_events")
            .fetch_one(pool)
            .await
            .unwrap_or(0);
        // Settled and its outcome published: the ledger row then stays as it is.
        let settled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ipp_actions
             WHERE status <> 'pending' AND kind <> 'observe' AND published_at IS NOT NULL",
        )
        .fetch_one(pool)
        .await
        .unwrap_or(0);
        if applied == events.len() as i64 && settled == finalized as i64 {
            return;
        }
        assert!(
            applied <= events.len() as i64,
            "more events than sent: {applied} > {}",
            events.len()
        );
        assert!(
            Instant::now() < deadline,
            "not settled after {within:?}: {applied}/{} events, {settled}/{finalized} actions",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
