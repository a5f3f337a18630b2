//! The Kafka side of the projector.
//!
//! Offset strategy: PostgreSQL is the source of truth for consumed offsets. Each batch
//! runs in one transaction that (1) locks the rows of `ipp_projector_offsets` for the
//! batch's partitions, (2) skips every record below the stored `next_offset` of its
//! partition, (3) stores the events and refolds their sessions, (4) moves `next_offset`
//! past the batch, (5) parks poison records in the dead-letter topic and waits for the
//! broker's acknowledgement; then it commits. A crash anywhere before the commit leaves
//! read models and offsets as they were, so the batch is replayed whole; a crash
//! between (5) and the commit may park the same poison record twice, never zero times.
//!
//! Where consumption starts: the rebalance callback is synchronous and must not block,
//! so it never queries PostgreSQL. It assigns each partition at the offset in an
//! in-memory copy of `ipp_projector_offsets` (loaded at startup, refreshed after every
//! commit and while idle), or from the beginning when none is stored. That copy can
//! only lag behind the table, never lead it, so the worst case is re-reading records
//! that step (2) then skips: nothing is applied twice and nothing is skipped. The lock
//! in step (1) also serializes two consumers that briefly hold the same partition
//! during a rebalance. The offsets are also given to Kafka, committed once a second,
//! for monitoring tools (lag dashboards), but are never read.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ipp_schemas::{EventParseError, KustomEvent, RecordHeaders};
use rdkafka::{
    consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer},
    error::KafkaError,
    message::{Message, OwnedHeaders, OwnedMessage},
    statistics::Statistics,
    types::RDKafkaRespErr,
    ClientContext, Offset, TopicPartitionList,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    config::Config,
    dlq::DeadLetters,
    engine::Engine,
    http::Health,
    session::SessionEvent,
    statistics::AutoAnalyze,
    store::{self, NewEvent},
    Error,
};

/// The `client.id` of the projector's Kafka clients.
pub const CLIENT_ID: &str = "ipp-projector";

/// How long leaving the consumer group may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Next offset to apply per partition, as last read from or written to PostgreSQL.
type OffsetCache = Arc<Mutex<HashMap<i32, i64>>>;

/// The consumer context: assigns partitions at the stored offsets, reports lag.
pub struct ProjectorContext {
    topic: String,
    offsets: OffsetCache,
    health: Arc<Health>,
}

impl ProjectorContext {
    fn cached(&self) -> HashMap<i32, i64> {
        self.offsets.lock().expect("offset cache poisoned").clone()
    }
}

impl ClientContext for ProjectorContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let cached = self.cached();
        for (partition, stats) in &topic.partitions {
            if *partition < 0 || !stats.desired || stats.hi_offset < 0 {
                continue;
            }
            let applied = cached
                .get(partition)
                .copied()
                .unwrap_or(0)
                .max(stats.lo_offset);
            self.health
                .metrics
                .partition_lag
                .with_label_values(&[&self.topic, &partition.to_string()])
                .set((stats.hi_offset - applied).max(0));
        }
    }
}

impl ConsumerContext for ProjectorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let cached = self.cached();
                let assigned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                for (topic, partition) in &assigned {
                    let start = match cached.get(partition) {
                        Some(next) if *topic == self.topic => Offset::Offset(*next),
                        _ => Offset::Beginning,
                    };
                    info!(%topic, partition, offset = ?start, "partition assigned");
                    if let Err(e) = tpl.set_partition_offset(topic, *partition, start) {
                        error!(%topic, partition, error = &e as &dyn std::error::Error, "cannot set start offset");
                    }
                }
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                for e in tpl.elements() {
                    info!(
                        topic = e.topic(),
                        partition = e.partition(),
                        "partition revoked"
                    );
                    let _ = self
                        .health
                        .metrics
                        .partition_lag
                        .remove_label_values(&[e.topic(), &e.partition().to_string()]);
                }
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                error!(error = ?other, "rebalance error, dropping the assignment");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            error!(
                error = &e as &dyn std::error::Error,
                "applying the rebalance failed"
            );
        }
    }
}

/// A value over `PROJECTOR_MAX_PAYLOAD_BYTES` (0: no limit) is parked: an operator
/// raises the limit and redrives it (`ipp-projector dlq redrive`).
pub(crate) fn within_limit(message: &OwnedMessage, max_payload_bytes: usize) -> Result<(), String> {
    let size = message.payload().map_or(0, <[u8]>::len);
    if max_payload_bytes > 0 && size > max_payload_bytes {
        return Err(format!(
            "record value is {size} bytes, over PROJECTOR_MAX_PAYLOAD_BYTES ({max_payload_bytes})"
        ));
    }
    Ok(())
}

/// Why a record cannot be projected; it goes to the dead-letter topic.
pub(crate) fn decode(message: &OwnedMessage) -> Result<NewEvent, String> {
    let empty = OwnedHeaders::new();
    let headers = RecordHeaders::from_kafka(message.headers().unwrap_or(&empty))
        .map_err(|e| e.to_string())?;
    let body = message.payload().ok_or("record has no value")?;
    let payload = std::str::from_utf8(body)
        .map_err(|_| "record value is not UTF-8".to_owned())?
        .to_owned();
    // Valid JSON, but PostgreSQL text and jsonb cannot hold a NUL character.
    if payload.contains("\\u0000") {
        return Err("event contains \\u0000, which PostgreSQL cannot store".into());
    }
    let event = match KustomEvent::parse(body).map_err(|e: EventParseError| e.to_string())? {
        KustomEvent::Ipp(event) => event,
        KustomEvent::Other(envelope) => {
            return Err(format!("not an ipp.* event: type {}", envelope.event_type))
        }
    };
    if headers.event_id != event.id() {
        return Err(format!(
            "header kustom-event-id {} does not match the body's id {}",
            headers.event_id,
            event.id()
        ));
    }
    let session_id = event.session_id();
    let envelope = event.envelope;
    Ok(NewEvent {
        session_id,
        event: SessionEvent {
            event_id: envelope.id,
            event_type: envelope.event_type,
            merchant_id: envelope.merchant_id,
            order_id: envelope.data.order_id,
            failure_reason: envelope.data.failure_reason,
            occurred_at: envelope.timestamp,
        },
        received_at: headers.received_at,
        kafka_partition: message.partition(),
        kafka_offset: message.offset(),
        payload,
    })
}

pub struct Projector {
    config: Config,
    pool: PgPool,
    health: Arc<Health>,
    consumer: StreamConsumer<ProjectorContext>,
    dead_letters: DeadLetters,
    offsets: OffsetCache,
    statistics: Arc<AutoAnalyze>,
}

impl Projector {
    pub async fn new(config: Config, pool: PgPool, health: Arc<Health>) -> Result<Self, Error> {
        let stored = store::load_offsets(&pool, &config.group, &config.ipp_topic).await?;
        let offsets: OffsetCache = Arc::new(Mutex::new(stored));
        let context = ProjectorContext {
            topic: config.ipp_topic.clone(),
            offsets: offsets.clone(),
            health: health.clone(),
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
            health,
            consumer,
            dead_letters,
            offsets,
            statistics: Arc::new(AutoAnalyze::default()),
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
        self.health.set_ready(true);
        let result = self.consume(&shutdown).await;
        self.health.set_ready(false);
        self.dead_letters.flush();
        // Leaves the group now rather than after the session timeout. The offsets that
        // count are in PostgreSQL, so an abandoned close loses nothing.
        let consumer = self.consumer;
        ipp_service::kafka::close_within(move || drop(consumer), CLOSE_TIMEOUT, CLIENT_ID).await;
        info!("projector stopped");
        result
    }

    /// Applies batch after batch; the next batch is gathered (and topped up once the
    /// previous one committed) while the previous one is in PostgreSQL, so the
    /// database and the broker work at the same time. A record gathered early for a
    /// partition that is revoked meanwhile is harmless: the stored offsets decide.
    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), Error> {
        let mut batch = Vec::new();
        while !shutdown.is_cancelled() {
            if batch.is_empty() {
                batch = self.next_batch(shutdown).await;
                continue;
            }
            let (applied, mut next) = tokio::join!(
                self.apply_with_retries(&batch, shutdown),
                self.next_batch(shutdown)
            );
            applied?;
            if !next.is_empty() {
                self.gather(&mut next, tokio::time::Instant::now()).await;
            }
            batch = next;
        }
        Ok(())
    }

    /// Waits for a first record, then gathers more until the batch is full or the
    /// batch wait is over. Empty when shutting down or idle for a second.
    async fn next_batch(&self, shutdown: &CancellationToken) -> Vec<OwnedMessage> {
        let mut batch = Vec::new();
        let first = tokio::select! {
            () = shutdown.cancelled() => return batch,
            received = tokio::time::timeout(Duration::from_secs(1), self.consumer.recv()) => received,
        };
        match first {
            Ok(Ok(message)) => batch.push(message.detach()),
            Ok(Err(e)) => {
                self.receive_error(&e).await;
                return batch;
            }
            Err(_idle) => {
                self.refresh_offsets().await;
                return batch;
            }
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.batch_wait_ms);
        self.gather(&mut batch, deadline).await;
        batch
    }

    /// Adds records to `batch` until it is full or `deadline` passes; records already
    /// received are taken even when the deadline is over.
    async fn gather(&self, batch: &mut Vec<OwnedMessage>, deadline: tokio::time::Instant) {
        while batch.len() < self.config.batch_size as usize {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message.detach()),
                Ok(Err(e)) => {
                    self.receive_error(&e).await;
                    break;
                }
                Err(_deadline) => break,
            }
        }
    }

    async fn receive_error(&self, e: &KafkaError) {
        warn!(error = e as &dyn std::error::Error, "kafka receive error");
        // Errors such as a missing topic repeat at once: do not spin on them.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// Picks up offsets other replicas committed, so a later assignment starts closer.
    async fn refresh_offsets(&self) {
        match store::load_offsets(&self.pool, &self.config.group, &self.config.ipp_topic).await {
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

    /// Applies a batch, retrying with backoff while the database or broker is down. A
    /// batch PostgreSQL rejects is split in halves until the record at fault is alone;
    /// that record is then dead-lettered with the database's error.
    async fn apply_with_retries(
        &self,
        batch: &[OwnedMessage],
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let mut work: Vec<(&[OwnedMessage], Option<String>)> = vec![(batch, None)];
        while let Some((part, rejected)) = work.pop() {
            let mut delay = Duration::from_millis(100);
            let mut attempt = 1u32;
            loop {
                let started = Instant::now();
                match self.apply(part, rejected.as_deref()).await {
                    Ok(()) => {
                        self.health
                            .metrics
                            .batch_seconds
                            .observe(started.elapsed().as_secs_f64());
                        self.health.set_ready(true);
                        break;
                    }
                    Err(e) if rejected.is_none() && e.is_rejected_data() => {
                        warn!(
                            error = %e.chain(),
                            records = part.len(),
                            "postgresql rejected the batch, isolating the record at fault"
                        );
                        if part.len() > 1 {
                            let (first, second) = part.split_at(part.len() / 2);
                            // Last in, first out: `first` runs next, keeping offset order.
                            work.push((second, None));
                            work.push((first, None));
                        } else {
                            work.push((
                                part,
                                Some(format!("rejected by PostgreSQL: {}", e.chain())),
                            ));
                        }
                        break;
                    }
                    Err(e) if e.is_retryable() => {
                        self.health.metrics.batch_failures.inc();
                        self.health.set_ready(false);
                        error!(
                            error = %e.chain(),
                            attempt,
                            records = part.len(),
                            "batch failed and was rolled back, retrying"
                        );
                        tokio::select! {
                            // Nothing of this batch was committed: whoever owns the
                            // partitions next replays it from the stored offsets.
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(10));
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Applies one batch in one transaction (see the comment at the top of this file
    /// and [`Engine::apply`], shared with `rebuild` and `replay --into-schema`).
    /// With `rejected`, every record still due is dead-lettered with that reason.
    async fn apply(&self, batch: &[OwnedMessage], rejected: Option<&str>) -> Result<(), Error> {
        let engine = Engine {
            pool: &self.pool,
            topic: &self.config.ipp_topic,
            group: Some(&self.config.group),
            max_payload_bytes: self.config.max_payload_bytes,
            dead_letters: Some(&self.dead_letters),
            statistics: self.statistics.clone(),
        };
        let outcome = engine.apply(batch, rejected).await?;

        let metrics = &self.health.metrics;
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
            records = batch.len(),
            applied = outcome.applied.len(),
            sessions = outcome.sessions,
            dead_letters = outcome.poison,
            stale = outcome.stale,
            transaction_ms = outcome.transaction.as_secs_f64() * 1e3,
            read_ms = outcome.timings.read.as_secs_f64() * 1e3,
            insert_ms = outcome.timings.insert.as_secs_f64() * 1e3,
            fold_ms = outcome.timings.fold.as_secs_f64() * 1e3,
            "batch committed"
        );
        self.remember_offsets(outcome.all_offsets.into_iter());
        self.commit_to_kafka(&outcome.next);
        Ok(())
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
    use super::*;
    use chrono::Utc;
    use rdkafka::Timestamp;

    const ACTIVATED: &str = r#"{"id":"kevt_1","merchant_id":"M1","timestamp":"2026-06-05T18:37:41.232733416Z","type":"ipp.session.activated","data":{"session_id":"c749c48d-df11-4ae3-8e5f-2c8491b16214","order_id":null,"failure_reason":null}}"#;

    fn headers(event_id: &str) -> OwnedHeaders {
        RecordHeaders {
            event_id: event_id.into(),
            event_type: "ipp.session.activated".into(),
            merchant_id: Some("M1".into()),
            webhook_id: "msg_1".into(),
            webhook_timestamp: "1780000000".into(),
            received_at: Utc::now(),
        }
        .to_kafka()
    }

    fn message(value: &str, headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            Some(value.as_bytes().to_vec()),
            Some(b"key".to_vec()),
            "ipp.events".into(),
            Timestamp::NotAvailable,
            3,
            42,
            headers,
        )
    }

    #[test]
    fn decodes_an_ingest_record() {
        let event = decode(&message(ACTIVATED, Some(headers("kevt_1")))).unwrap();
        assert_eq!(event.event.event_id, "kevt_1");
        assert_eq!(event.kafka_partition, 3);
        assert_eq!(event.kafka_offset, 42);
        assert_eq!(
            event.event.occurred_at.timestamp_subsec_nanos(),
            232_733_416
        );
        assert_eq!(event.payload, ACTIVATED);
    }

    #[test]
    fn poison_records_say_why() {
        let cases = [
            (message(ACTIVATED, None), "ipp-received-at"),
            (
                message(ACTIVATED, Some(headers("kevt_2"))),
                "does not match",
            ),
            (message("{not json", Some(headers("kevt_1"))), "envelope"),
            (
                message(
                    &ACTIVATED.replace("c749c48d-", "zz"),
                    Some(headers("kevt_1")),
                ),
                "invalid data",
            ),
            (
                message(
                    &ACTIVATED.replace("ipp.session.activated", "ipp.session.finalized"),
                    Some(headers("kevt_1")),
                ),
                "no order_id",
            ),
            (
                message(
                    &ACTIVATED.replace("ipp.session.activated", "order.created"),
                    Some(headers("kevt_1")),
                ),
                "not an ipp.* event",
            ),
            (
                message(
                    &ACTIVATED.replace("\"M1\"", "\"M\\u0000\""),
                    Some(headers("kevt_1")),
                ),
                "\\u0000",
            ),
        ];
        for (record, reason) in cases {
            let error = decode(&record).unwrap_err();
            assert!(error.contains(reason), "{error} should mention {reason}");
        }
    }
}
