//! The group consumer: batches records and applies them through the engine, with the
//! offset strategy of [`super`].

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use ipp_schemas::trace::TraceContext;
use ipp_service::{
    probe::Readiness,
    traces::{Kind, Span},
};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
    Offset, TopicPartitionList,
};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::rebalance::{OffsetCache, ProjectorContext};
use crate::{
    config::{Config, CLIENT_ID},
    dead_letters::DeadLetters,
    engine::{BatchOutcome, Engine, EngineMode, Retry},
    kafka::consumed::ConsumedRecord,
    metrics::Metrics,
    store::{offsets, statistics::AutoAnalyze},
    Error,
};

/// The lane that applies the records of `partition`: the same one for as long as the
/// process runs, so a partition's records are applied in order.
fn lane_of(partition: i32, lanes: usize) -> usize {
    usize::try_from(partition).unwrap_or(0) % lanes
}

/// Lanes whose current batch failed and is being retried. The projector is ready only
/// while there are none, so one lane's commits do not hide another lane's failures.
#[derive(Debug, Default)]
struct FailingLanes(AtomicUsize);

impl FailingLanes {
    /// Counts `lane` (its own flag) as failing, once however often its batch fails.
    fn failed(&self, lane: &AtomicBool) {
        if !lane.swap(true, Ordering::AcqRel) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// `lane` committed a batch; whether no lane is failing now.
    fn committed(&self, lane: &AtomicBool) -> bool {
        if lane.swap(false, Ordering::AcqRel) {
            self.0.fetch_sub(1, Ordering::AcqRel) == 1
        } else {
            self.0.load(Ordering::Acquire) == 0
        }
    }
}

/// How long leaving the consumer group may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Projector {
    config: Config,
    pool: PgPool,
    metrics: Arc<Metrics>,
    ready: Readiness,
    consumer: StreamConsumer<ProjectorContext>,
    dead_letters: DeadLetters,
    offsets: OffsetCache,
    statistics: Arc<AutoAnalyze>,
    failing_lanes: FailingLanes,
}

impl Projector {
    pub async fn new(
        config: Config,
        pool: PgPool,
        metrics: Arc<Metrics>,
        ready: Readiness,
    ) -> Result<Self, Error> {
        let stored = offsets::load(&pool, &config.group, &config.ipp_topic).await?;
        let offsets: OffsetCache = Arc::new(Mutex::new(stored));
        let context = ProjectorContext {
            topic: config.ipp_topic.clone(),
            offsets: offsets.clone(),
            metrics: metrics.clone(),
        };
        let mut settings = vec![
            ("group.id", config.group.as_str()),
            ("statistics.interval.ms", "5000"),
        ];
        settings.extend_from_slice(ipp_service::kafka::GROUP_CONSUMER);
        let client = ipp_service::kafka::client_config(&config.kafka, CLIENT_ID, &settings);
        let consumer: StreamConsumer<ProjectorContext> = client.create_with_context(context)?;
        let dead_letters = DeadLetters::new(&config)?;
        Ok(Self {
            config,
            pool,
            metrics,
            ready,
            consumer,
            dead_letters,
            offsets,
            statistics: Arc::new(AutoAnalyze::default()),
            failing_lanes: FailingLanes::default(),
        })
    }

    /// Consumes until `shutdown`; the batch in progress is finished and committed first.
    /// Subscribes only once the event topic and the dead-letter topic exist (not ready
    /// until then).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let topics = vec![self.config.ipp_topic.clone(), self.config.dlq_topic.clone()];
        let producer = self.dead_letters.producer();
        if !ipp_service::kafka::wait_for_topics(producer, topics, &shutdown).await {
            return Ok(());
        }
        self.consumer.subscribe(&[&self.config.ipp_topic])?;
        info!(topic = %self.config.ipp_topic, group = %self.config.group, "projector subscribed");
        self.ready.set(true);
        let result = self.consume(&shutdown).await;
        self.ready.set(false);
        self.dead_letters.flush().await;
        // Leaves the group now rather than after the session timeout. The offsets that
        // count are in PostgreSQL, so an abandoned close loses nothing.
        let consumer = self.consumer;
        ipp_service::kafka::close_within(move || drop(consumer), CLOSE_TIMEOUT, CLIENT_ID).await;
        info!("projector stopped");
        result
    }

    /// Hands each record to the lane of its partition and applies batch after batch in
    /// every lane (see `PROJECTOR_APPLY_LANES`). A lane's next batch gathers in its queue
    /// while its previous one is in PostgreSQL, and the lanes' transactions run side by
    /// side, so the database, the broker and the decoding work at the same time. A
    /// record gathered early for a partition that is revoked meanwhile is harmless: the
    /// stored offsets decide.
    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), Error> {
        let engine = Engine::new(
            &self.pool,
            &self.config.ipp_topic,
            EngineMode::Live {
                group: &self.config.group,
                dead_letters: &self.dead_letters,
            },
            self.config.max_payload_bytes,
            self.statistics.clone(),
        );
        let (queues, lanes): (Vec<_>, Vec<_>) = (0..self.config.apply_lanes.max(1))
            .map(|_| mpsc::channel(self.config.batch_size as usize))
            .unzip();
        let lanes = lanes
            .into_iter()
            .map(|records| self.lane(&engine, records, shutdown));
        tokio::try_join!(
            self.dispatch(queues, shutdown),
            futures::future::try_join_all(lanes)
        )?;
        Ok(())
    }

    /// Receives records and queues each in its partition's lane; refreshes the offsets
    /// cache after a second without records.
    async fn dispatch(
        &self,
        lanes: Vec<mpsc::Sender<ConsumedRecord>>,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                received = tokio::time::timeout(Duration::from_secs(1), self.consumer.recv()) => received,
            };
            let message = match received {
                Ok(Ok(message)) => ConsumedRecord::copy_of(&message),
                Ok(Err(e)) => {
                    self.receive_error(&e).await;
                    continue;
                }
                Err(_idle) => {
                    self.refresh_offsets().await;
                    continue;
                }
            };
            let lane = &lanes[lane_of(message.partition(), lanes.len())];
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                // Closed only when its lane stopped, which ends the consumer anyway.
                sent = lane.send(message) => if sent.is_err() { return Ok(()) },
            }
        }
    }

    /// Applies the records of one lane: waits for a first record, then takes what is
    /// queued up to a full batch (waiting up to `PROJECTOR_BATCH_WAIT_MS` for more).
    async fn lane(
        &self,
        engine: &Engine<'_>,
        mut records: mpsc::Receiver<ConsumedRecord>,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let batch_size = self.config.batch_size as usize;
        let mut batch = Vec::with_capacity(batch_size);
        let failing = AtomicBool::new(false);
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                first = records.recv() => first,
            };
            let Some(first) = first else { return Ok(()) };
            batch.push(first);
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(self.config.batch_wait_ms);
            while batch.len() < batch_size {
                match tokio::time::timeout_at(deadline, records.recv()).await {
                    Ok(Some(message)) => batch.push(message),
                    Ok(None) | Err(_) => break,
                }
            }
            self.apply(engine, &batch, &failing, shutdown).await?;
            batch.clear();
        }
    }

    async fn receive_error(&self, e: &KafkaError) {
        warn!(error = e as &dyn std::error::Error, "kafka receive error");
        // Errors such as a missing topic repeat at once: do not spin on them.
        if !ipp_service::kafka::is_lost_connection_report(e) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Picks up offsets other replicas committed, so a later assignment starts closer.
    async fn refresh_offsets(&self) {
        match offsets::load(&self.pool, &self.config.group, &self.config.ipp_topic).await {
            Ok(stored) => self.remember_offsets(stored.into_iter()),
            Err(e) => debug!(
                error = &e as &dyn std::error::Error,
                "offset refresh failed"
            ),
        }
    }

    fn remember_offsets(&self, offsets: impl Iterator<Item = (i32, i64)>) {
        let mut cache = self.offsets.lock().expect("offset cache poisoned");
        for (partition, next) in offsets {
            let entry = cache.entry(partition).or_insert(next);
            *entry = (*entry).max(next);
        }
    }

    /// Applies a batch (see [`Engine::apply_isolating`]), retrying with backoff while
    /// the database or the broker is down (not ready meanwhile).
    async fn apply(
        &self,
        engine: &Engine<'_>,
        batch: &[ConsumedRecord],
        failing: &AtomicBool,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let on_failure = |_: &Error, _attempt: u32| {
            self.metrics.batch_failures.inc();
            self.failing_lanes.failed(failing);
            self.ready.set(false);
        };
        let retry = Retry::UntilShutdown {
            shutdown,
            on_failure: &on_failure,
        };
        // One span per batch, linked to the span that wrote each record (each webhook
        // is a trace of its own). The links are only read when spans are exported.
        let links = batch
            .iter()
            .filter_map(|message| TraceContext::of_record(message.headers()));
        let mut span = Span::linked("apply batch", Kind::Consumer, links);
        if span.is_recording() {
            span.attribute("messaging.destination.name", self.config.ipp_topic.clone());
            span.attribute("messaging.batch.message_count", batch.len() as i64);
        }
        engine
            .apply_isolating(batch, retry, |outcome| self.committed(outcome, failing))
            .await
    }

    /// Reports a committed batch and remembers where it left the offsets.
    fn committed(&self, outcome: BatchOutcome, failing: &AtomicBool) {
        let metrics = &self.metrics;
        metrics.batch_seconds.observe(outcome.elapsed.as_secs_f64());
        metrics.dead_letters.inc_by(outcome.poison as u64);
        metrics.stale_records.inc_by(outcome.stale);
        metrics.duplicate_events.inc_by(outcome.duplicates);
        for (event_type, received_at) in &outcome.applied {
            metrics
                .events_applied
                .with_label_values(&[event_type])
                .inc();
            metrics.applied_received_at(*received_at);
        }
        debug!(
            records = outcome.records,
            applied = outcome.applied.len(),
            sessions = outcome.sessions,
            dead_letters = outcome.poison,
            stale = outcome.stale,
            transaction_ms = outcome.transaction.as_secs_f64() * 1e3,
            read_ms = outcome.timings.read.as_secs_f64() * 1e3,
            insert_ms = outcome.timings.insert.as_secs_f64() * 1e3,
            fold_ms = outcome.timings.fold.as_secs_f64() * 1e3,
            write_ms = outcome.timings.write.as_secs_f64() * 1e3,
            "batch committed"
        );
        if self.failing_lanes.committed(failing) {
            self.ready.set(true);
        }
        self.remember_offsets(outcome.all_offsets.into_iter());
        self.commit_to_kafka(&outcome.next);
    }

    /// Informational only: lets Kafka tooling show the group's progress. librdkafka's
    /// auto commit sends what is stored here once a second (and on a rebalance or
    /// close), rather than one commit request per batch.
    fn commit_to_kafka(&self, next: &BTreeMap<i32, i64>) {
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in next {
            if tpl
                .add_partition_offset(&self.config.ipp_topic, *partition, Offset::Offset(*offset))
                .is_err()
            {
                return;
            }
        }
        // Fails for a partition no longer assigned, which is not a problem here.
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            debug!(
                error = &e as &dyn std::error::Error,
                "informational kafka offset store failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::{lane_of, FailingLanes};

    #[test]
    fn ready_only_once_every_failing_lane_committed_again() {
        let lanes = FailingLanes::default();
        let (first, second) = (AtomicBool::new(false), AtomicBool::new(false));
        assert!(lanes.committed(&first), "nothing failed yet");
        lanes.failed(&first);
        lanes.failed(&first); // retried: still one failing lane
        lanes.failed(&second);
        assert!(!lanes.committed(&second), "the first lane still retries");
        assert!(!lanes.committed(&second));
        assert!(
            lanes.committed(&first),
            "both committed since their failures"
        );
        lanes.failed(&second);
        assert!(
            !lanes.committed(&first),
            "a healthy lane's commit hides nothing"
        );
    }

    #[test]
    fn a_partition_always_goes_to_the_same_lane_and_the_lanes_share_the_partitions() {
        let lanes: Vec<usize> = (0..8).map(|partition| lane_of(partition, 3)).collect();
        assert_eq!(lanes, [0, 1, 2, 0, 1, 2, 0, 1]);
        assert!((0..8).all(|partition| lane_of(partition, 1) == 0));
        // librdkafka's "no partition" (-1) never indexes out of range.
        assert_eq!(lane_of(-1, 2), 0);
    }
}
