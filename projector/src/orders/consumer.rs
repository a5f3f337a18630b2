//! The orders model's consumer: its own group over the IPP events, Kustom's other
//! events and the observations. Facts merge idempotently, so it needs no offsets in
//! PostgreSQL: it stores a batch's offsets in Kafka only once the batch's transaction
//! committed, and whatever a crash makes it read again merges to the same rows.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Offset, TopicPartitionList,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    facts::{self, Fact},
    report, store, OrdersConfig,
};
use crate::{
    config::CLIENT_ID, dead_letters::DeadLetters, kafka::consumed::ConsumedRecord,
    metrics::Metrics, Error,
};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most records merged in one transaction.
const BATCH_SIZE: usize = 500;
/// This consumer reads three topics (24 partitions by default) and merges more slowly
/// than the sessions model reads, so behind a backlog its fetch buffers stay full. At the
/// sessions consumer's 256 KiB per partition they held about 35 MB of the projector's
/// 111-118 MB peak in a 100,000-record catch-up; at 64 KiB the peak was 80-83 MB (the
/// sessions model alone: 69-70 MB), at about the same rate (BENCHMARKS.md, 12-08).
const FETCH_BYTES_PER_PARTITION: &str = "65536";
/// Between two refreshes of the orders-by-state gauge.
const GAUGE_EVERY: Duration = Duration::from_secs(10);

pub struct OrdersProjector {
    topics: OrdersConfig,
    pool: PgPool,
    metrics: Arc<Metrics>,
    consumer: StreamConsumer,
    dead_letters: Arc<DeadLetters>,
}

impl OrdersProjector {
    pub fn new(
        config: &crate::Config,
        orders: OrdersConfig,
        pool: PgPool,
        metrics: Arc<Metrics>,
        dead_letters: Arc<DeadLetters>,
    ) -> Result<Self, Error> {
        let group = orders.group.clone();
        let mut settings = vec![("group.id", group.as_str())];
        settings.extend(
            ipp_service::kafka::GROUP_CONSUMER
                .iter()
                .filter(|(key, _)| *key != "fetch.message.max.bytes"),
        );
        settings.push(("fetch.message.max.bytes", FETCH_BYTES_PER_PARTITION));
        let client = ipp_service::kafka::client_config(&config.kafka, CLIENT_ID, &settings);
        Ok(Self {
            topics: orders,
            pool,
            metrics,
            consumer: client.create()?,
            dead_letters,
        })
    }

    /// Merges until `shutdown`. Waits for its topics first; the session projector's
    /// readiness does not depend on them.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        store::set_confirmation_timeout(&self.pool, self.topics.confirmation_timeout).await?;
        let topics = vec![
            self.topics.ipp_topic.clone(),
            self.topics.kustom_topic.clone(),
            self.topics.observations_topic.clone(),
        ];
        let producer = self.dead_letters.producer();
        if !ipp_service::kafka::wait_for_topics(producer, topics.clone(), &shutdown).await {
            return Ok(());
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&names)?;
        info!(group = %self.topics.group, topics = ?names, "orders projection subscribed");
        let result = self.consume(&shutdown).await;
        let consumer = self.consumer;
        ipp_service::kafka::close_within(move || drop(consumer), CLOSE_TIMEOUT, CLIENT_ID).await;
        info!("orders projection stopped");
        result
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), Error> {
        let mut gauge_at = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            let batch = self.next_batch(shutdown).await;
            if !batch.is_empty() {
                self.apply(&batch, shutdown).await?;
            }
            if gauge_at.elapsed() >= GAUGE_EVERY {
                gauge_at = tokio::time::Instant::now();
                self.refresh_gauge().await;
            }
        }
        Ok(())
    }

    /// A first record (waiting at most a second), then whatever else has arrived.
    async fn next_batch(&self, shutdown: &CancellationToken) -> Vec<ConsumedRecord> {
        let mut batch = Vec::new();
        let first = tokio::select! {
            () = shutdown.cancelled() => return batch,
            received = tokio::time::timeout(Duration::from_secs(1), self.consumer.recv()) => received,
        };
        match first {
            Ok(Ok(message)) => batch.push(ConsumedRecord::copy_of(&message)),
            Ok(Err(e)) => {
                warn!(
                    error = &e as &dyn std::error::Error,
                    "kafka receive error (orders)"
                );
                if !ipp_service::kafka::is_lost_connection_report(&e) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                return batch;
            }
            Err(_idle) => return batch,
        }
        while batch.len() < BATCH_SIZE {
            match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push(ConsumedRecord::copy_of(&message)),
                _ => break,
            }
        }
        batch
    }

    /// Decodes, parks what cannot be read, merges the rest in one transaction (retried
    /// until it commits or the service stops), then stores the offsets.
    async fn apply(
        &self,
        batch: &[ConsumedRecord],
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let mut facts: Vec<Fact> = Vec::new();
        let mut poison: Vec<(&ConsumedRecord, String)> = Vec::new();
        for message in batch {
            let source = self.topics.source(message.topic());
            match facts::decode(source, message.payload().unwrap_or_default()) {
                Ok(decoded) => facts.extend(decoded),
                Err(reason) => poison.push((message, format!("orders: {reason}"))),
            }
        }
        let mut delay = Duration::from_millis(100);
        // Parked once: a retry after a failed merge must not park the same records again.
        let mut parked = poison.is_empty();
        loop {
            let mut attempt = Ok(());
            if !parked {
                attempt = self.dead_letters.send_all(&poison).await;
                parked = attempt.is_ok();
            }
            let merged = match attempt {
                Ok(()) => store::merge(&self.pool, &facts).await,
                Err(e) => Err(e),
            };
            match merged {
                Ok(()) => break,
                Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                    self.metrics.batch_failures.inc();
                    warn!(error = %e.chain(), ?delay, "orders batch failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                // Shutting down: the batch is read again by whoever takes the partitions.
                Err(_) if shutdown.is_cancelled() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.metrics.dead_letters.inc_by(poison.len() as u64);
        self.metrics.order_facts.inc_by(facts.len() as u64);
        self.store_offsets(batch);
        debug!(
            records = batch.len(),
            facts = facts.len(),
            parked = poison.len(),
            "orders batch merged"
        );
        Ok(())
    }

    fn store_offsets(&self, batch: &[ConsumedRecord]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for message in batch {
            let entry = next
                .entry((message.topic(), message.partition()))
                .or_insert(0);
            *entry = (*entry).max(message.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if tpl
                .add_partition_offset(topic, partition, Offset::Offset(offset))
                .is_err()
            {
                return;
            }
        }
        // Fails for a partition revoked meanwhile: its new owner reads it again.
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            debug!(
                error = &e as &dyn std::error::Error,
                "orders offset store failed"
            );
        }
    }

    async fn refresh_gauge(&self) {
        match report::counts(&self.pool).await {
            Ok(counts) => {
                for (state, orders) in counts.by_state {
                    self.metrics
                        .orders_by_state
                        .with_label_values(&[state])
                        .set(orders);
                }
                for (rule, orders) in counts.mismatches_by_rule {
                    self.metrics
                        .order_mismatches
                        .with_label_values(&[rule])
                        .set(orders);
                }
            }
            Err(e) => debug!(
                error = &e as &dyn std::error::Error,
                "orders gauge refresh failed"
            ),
        }
    }
}
