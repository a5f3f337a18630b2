//! What the fault tests share (`it/failover.rs`, `it/db_outage.rs`): the pipeline
//! in-process on brokers and a database the test controls, a steady stream of signed
//! webhooks whose every answer is recorded, and the checks of the end state (the log
//! holds every acknowledged body byte for byte, the read model is exact, every finalized
//! session is captured exactly once).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use ipp_loadgen::{Delivery, WebhookSigner, Workload, WorkloadSpec};
use reqwest::StatusCode;
use sqlx::{postgres::PgPoolOptions, PgPool, Row};
use tokio::{sync::Semaphore, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    inprocess::{
        actions_config, commands_topic_of, ingest_config, observations_topic_of, projector_config,
        OrderManagement, TestActions, TestIngest, TestProjector,
    },
    kafka::{self, Record},
    om_sim::OmSim,
    pipeline::assert_sessions,
    signer::Signer,
    unique_name,
};

const API_KEY: &str = "kco_test_faults";

/// ipp-ingest, ipp-projector, ipp-actions and the Order Management simulator in-process,
/// with their settings' defaults apart from where the brokers and the database are.
pub struct Stack {
    pub brokers: String,
    pub ipp_topic: String,
    pub other_topic: String,
    pub secret: String,
    pub ingest: TestIngest,
    pub projector: TestProjector,
    pub actions: TestActions,
    pub sim: OmSim,
}

impl Stack {
    /// Creates the topics (`replication` replicas each) and starts the services on
    /// `brokers` and `database_url`.
    pub async fn start(brokers: &str, replication: i32, database_url: &str) -> Self {
        let topic = |prefix: &str| unique_name(&format!("faults_{prefix}"));
        let (ipp_topic, other_topic) = (topic("ipp"), topic("other"));
        let (ipp_dlq, actions_dlq) = (topic("ipp_dlq"), topic("actions_dlq"));
        let commands_topic = commands_topic_of(&ipp_topic);
        let observations_topic = observations_topic_of(&ipp_topic);
        for (name, partitions) in [
            (&ipp_topic, 6),
            (&commands_topic, 2),
            (&observations_topic, 2),
            (&other_topic, 2),
            (&ipp_dlq, 1),
            (&actions_dlq, 1),
        ] {
            kafka::create_replicated_topic(brokers, name, partitions, replication, &[]).await;
        }
        let secret = Signer::random_secret();
        let sim = OmSim::start(API_KEY);
        let ingest = TestIngest::spawn(ingest_config(
            brokers,
            &ipp_topic,
            &other_topic,
            std::slice::from_ref(&secret),
        ));
        let mut projector = projector_config(
            brokers,
            &ipp_topic,
            &ipp_dlq,
            database_url,
            &unique_name("faults_projector"),
        );
        // The Kustom events ingest writes.
        projector.kustom_topic = other_topic.clone();
        let projector = TestProjector::spawn(projector);
        let mut actions = actions_config(
            brokers,
            &ipp_topic,
            &actions_dlq,
            database_url,
            &unique_name("faults_actions"),
            OrderManagement {
                url: &sim.url,
                api_key: API_KEY,
            },
        );
        // The Kustom events ingest writes.
        actions.kustom_topic = other_topic.clone();
        let actions = TestActions::spawn(actions);
        Self {
            brokers: brokers.to_owned(),
            ipp_topic,
            other_topic,
            secret,
            ingest,
            projector,
            actions,
            sim,
        }
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/webhooks/kustom", self.ingest.url())
    }

    /// A workload of `sessions` sessions generated from `seed`, posted to this stack's
    /// ingest by a [`WebhookStream`] at `per_second`, at most `in_flight` at a time (a
    /// delivery is given up after five minutes); returns once `warm_up` deliveries were
    /// answered 200.
    pub async fn stream_workload(
        &self,
        sessions: usize,
        seed: u64,
        per_second: f64,
        in_flight: usize,
        warm_up: usize,
    ) -> (Workload, Arc<Vec<Delivery>>, WebhookStream) {
        let workload = Workload::generate(&WorkloadSpec {
            sessions,
            seed,
            ..WorkloadSpec::default()
        });
        let deliveries = Arc::new(workload.deliveries.clone());
        let stream = WebhookStream::start(
            self.webhook_url(),
            &self.secret,
            deliveries.clone(),
            per_second,
            in_flight,
            Duration::from_secs(300),
        );
        stream
            .wait_acknowledged(warm_up, Duration::from_secs(60))
            .await;
        (workload, deliveries, stream)
    }

    /// The status of the projector's and ipp-actions' `/readyz` (`None`: no answer).
    pub async fn readiness(&self) -> (Option<StatusCode>, Option<StatusCode>) {
        let (projector, actions) = (self.projector.url(), self.actions.url());
        tokio::join!(readyz(&projector), readyz(&actions))
    }

    /// Asserts that no service stopped: nothing was restarted to recover.
    pub fn assert_running(&self) {
        assert!(self.ingest.is_running(), "ipp-ingest stopped");
        assert!(self.projector.is_running(), "ipp-projector stopped");
        assert!(self.actions.is_running(), "ipp-actions stopped");
    }

    /// Asserts that the log holds every acknowledged body, byte for byte, on the topic
    /// its type routes to, and nothing that was not sent: no 200 without its record.
    pub fn assert_log_holds(&self, deliveries: &[Delivery], answers: &Answers) {
        let stored = |topic: &str| -> BTreeSet<Vec<u8>> {
            kafka::read_topic(&self.brokers, topic)
                .into_iter()
                .map(|r: Record| r.value)
                .collect()
        };
        let (ipp, other) = (stored(&self.ipp_topic), stored(&self.other_topic));
        let acknowledged = answers.acknowledged();
        for &index in &acknowledged {
            let delivery = &deliveries[index];
            let topic = if delivery.is_ipp() { &ipp } else { &other };
            assert!(
                topic.contains(&delivery.body),
                "{} was answered 200 but is not in the log",
                delivery.event_id
            );
        }
        let sent: BTreeSet<&Vec<u8>> = deliveries.iter().map(|d| &d.body).collect();
        for body in ipp.iter().chain(&other) {
            assert!(
                sent.contains(body),
                "a record nobody sent: {}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

async fn readyz(base_url: &str) -> Option<StatusCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let response = client.get(format!("{base_url}/readyz")).send().await;
    response.ok().map(|r| r.status())
}

/// One HTTP attempt at delivering a webhook, as the sender saw it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Index into the deliveries.
    pub delivery: usize,
    pub sent_at: Instant,
    pub answered_at: Instant,
    /// `None`: no HTTP answer (connection refused, timeout).
    pub status: Option<u16>,
    pub retry_after: Option<String>,
}

/// Every answer of a stream, in the order they came.
#[derive(Debug, Clone, Default)]
pub struct Answers(pub Vec<Answer>);

impl Answers {
    /// The deliveries that got a 200.
    pub fn acknowledged(&self) -> BTreeSet<usize> {
        self.0
            .iter()
            .filter(|a| a.status == Some(200))
            .map(|a| a.delivery)
            .collect()
    }

    /// The answers to requests sent at or after `from` and answered before `until`.
    pub fn within(&self, from: Instant, until: Instant) -> Vec<&Answer> {
        self.0
            .iter()
            .filter(|a| a.sent_at >= from && a.answered_at < until)
            .collect()
    }

    /// How many answers of each status (`0`: no answer).
    pub fn by_status(answers: &[&Answer]) -> BTreeMap<u16, usize> {
        let mut counts = BTreeMap::new();
        for answer in answers {
            *counts.entry(answer.status.unwrap_or(0)).or_default() += 1;
        }
        counts
    }

    /// The longest time a request took to be answered 200 among those sent in the window.
    pub fn slowest_200(answers: &[&Answer]) -> Duration {
        answers
            .iter()
            .filter(|a| a.status == Some(200))
            .map(|a| a.answered_at - a.sent_at)
            .max()
            .unwrap_or_default()
    }
}

/// Signed webhooks posted at a steady rate in the background, like Kustom: each
/// delivery is sent again (same message id, signed anew) until it is answered 200.
pub struct WebhookStream {
    hurry: CancellationToken,
    answers: Arc<Mutex<Answers>>,
    acknowledged: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    pub total: usize,
}

/// How long the sender waits before delivering again after anything but a 200. Kustom
/// waits longer and honours `Retry-After`; the tests keep the stream dense instead.
const REDELIVER_AFTER: Duration = Duration::from_millis(250);

impl WebhookStream {
    /// Starts posting `deliveries` to `url` at `per_second`, at most `in_flight` at a
    /// time; a delivery still without its 200 after `give_up_after` is abandoned (the
    /// test's checks then fail).
    pub fn start(
        url: String,
        secret: &str,
        deliveries: Arc<Vec<Delivery>>,
        per_second: f64,
        in_flight: usize,
        give_up_after: Duration,
    ) -> Self {
        let signer = WebhookSigner::new(secret).expect("secret");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        let hurry = CancellationToken::new();
        let answers = Arc::new(Mutex::new(Answers::default()));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let total = deliveries.len();
        let task = tokio::spawn({
            let (hurry, answers, acknowledged) =
                (hurry.clone(), answers.clone(), acknowledged.clone());
            async move {
                let slots = Arc::new(Semaphore::new(in_flight.max(1)));
                let interval = Duration::from_secs_f64(1.0 / per_second);
                let started = tokio::time::Instant::now();
                let mut senders = tokio::task::JoinSet::new();
                for index in 0..deliveries.len() {
                    if !hurry.is_cancelled() {
                        let due = started + interval * index as u32;
                        tokio::select! {
                            () = tokio::time::sleep_until(due) => {}
                            () = hurry.cancelled() => {}
                        }
                    }
                    let slot = slots.clone().acquire_owned().await.expect("open");
                    let deliver = Delivering {
                        client: client.clone(),
                        url: url.clone(),
                        signer: signer.clone(),
                        deliveries: deliveries.clone(),
                        index,
                        answers: answers.clone(),
                        acknowledged: acknowledged.clone(),
                        give_up_at: Instant::now() + give_up_after,
                    };
                    senders.spawn(async move {
                        deliver.run().await;
                        drop(slot);
                    });
                }
                while senders.join_next().await.is_some() {}
            }
        });
        Self {
            hurry,
            answers,
            acknowledged,
            task,
            total,
        }
    }

    /// How many deliveries were answered 200 so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `count` deliveries were answered 200.
    pub async fn wait_acknowledged(&self, count: usize, within: Duration) {
        let count = count.min(self.total);
        crate::eventually::eventually(within, &format!("{count} deliveries answered 200"), || {
            let done = self.acknowledged() >= count;
            async move { done }
        })
        .await;
    }

    /// Every answer so far.
    pub fn answers(&self) -> Answers {
        self.answers.lock().expect("answers").clone()
    }

    /// Stops pacing: the rest is sent as fast as `in_flight` allows.
    pub fn hurry(&self) {
        self.hurry.cancel();
    }

    /// Sends the rest without pacing and waits (bounded) until every delivery was
    /// answered 200 or abandoned; returns every answer.
    pub async fn finish(self, within: Duration) -> Answers {
        self.hurry();
        tokio::time::timeout(within, self.task)
            .await
            .unwrap_or_else(|_| panic!("the webhook stream did not finish within {within:?}"))
            .expect("the webhook stream panicked");
        let answers = self.answers.lock().expect("answers").clone();
        answers
    }
}

/// One delivery, sent until it is answered 200.
struct Delivering {
    client: reqwest::Client,
    url: String,
    signer: WebhookSigner,
    deliveries: Arc<Vec<Delivery>>,
    index: usize,
    answers: Arc<Mutex<Answers>>,
    acknowledged: Arc<AtomicUsize>,
    give_up_at: Instant,
}

impl Delivering {
    async fn run(self) {
        let delivery = &self.deliveries[self.index];
        loop {
            let request = self.signer.post(&self.client, &self.url, delivery);
            let sent_at = Instant::now();
            let response = request.send().await;
            let (status, retry_after) = match &response {
                Ok(r) => (
                    Some(r.status().as_u16()),
                    r.headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                ),
                Err(_) => (None, None),
            };
            self.answers.lock().expect("answers").0.push(Answer {
                delivery: self.index,
                sent_at,
                answered_at: Instant::now(),
                status,
                retry_after,
            });
            if status == Some(200) {
                self.acknowledged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if Instant::now() >= self.give_up_at {
                return;
            }
            tokio::time::sleep(REDELIVER_AFTER).await;
        }
    }
}

/// A small pool on the test's database, for the checks.
pub async fn pool(database_url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(database_url)
        .await
        .unwrap_or_else(|e| panic!("connect {database_url}: {e}"))
}

/// The read model equals what `workload` implies, and every finalized session was
/// captured exactly once (the simulator's count) and `succeeded` in the ledger.
pub async fn assert_exact_and_captured_once(pool: &PgPool, workload: &Workload, sim: &OmSim) {
    assert_sessions(pool, "ipp_sessions", &workload.sessions).await;
    let finalized: BTreeMap<Uuid, Uuid> =
        workload.finalized_orders().map(|(s, o)| (o, s)).collect();
    let captures = sim.captures_by_order().await;
    for (order, session) in &finalized {
        assert_eq!(
            captures.get(order),
            Some(&1),
            "captures of order {order} (session {session})"
        );
    }
    assert_eq!(
        captures.len(),
        finalized.len(),
        "only finalized orders are captured"
    );
    let ledger = sqlx::query("SELECT status, count(*) AS n FROM ipp_actions GROUP BY status")
        .fetch_all(pool)
        .await
        .expect("ledger");
    let ledger: BTreeMap<String, i64> = ledger
        .iter()
        .map(|r| (r.get("status"), r.get("n")))
        .collect();
    assert_eq!(
        ledger,
        BTreeMap::from([("succeeded".to_owned(), finalized.len() as i64)]),
        "the ledger"
    );
}
