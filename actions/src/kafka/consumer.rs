//! The Kafka side: turns finalized sessions into ledger rows.
//!
//! Offset strategy: at-least-once. `enable.auto.offset.store=false`; an offset is stored
//! only once the record's effect is durable (its ledger row committed, or the record
//! written to the DLQ), and librdkafka's auto commit commits stored offsets; shutdown
//! commits them once more synchronously. A record seen again after a crash or a
//! rebalance finds its row already there (`ON CONFLICT DO NOTHING`), so redelivery, replay
//! and a fresh consumer group never create a second action. This loop never calls Order
//! Management: the worker pool does, so a slow or failing order cannot hold a partition.
//!
//! It consumes three topics. On `ipp.events` only finalized events make a row (the
//! automatic capture, or a `skipped` row under the on-command capture policy); every other
//! `ipp.*` type, unknown ones included, is passed over. On the commands topic every
//! command makes one row, whatever its redeliveries. On the Kustom events topic
//! (`kustom.events`) every order event (`capture.created`, `refund.created`, `dispute.*`)
//! makes one `observe` row per event id, a read of the order; other types are passed over.
//! A record it cannot use (marked `ipp-route-error` by ingest, not a parseable `ipp.*`
//! event, an order event that does not name its order or its capture, refund or dispute,
//! a row PostgreSQL refuses) is parked in the DLQ with the reason, and the partition goes
//! on.

use std::{sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use ipp_kafka_headers::HeadersCopy;
use ipp_schemas::{
    dlq::route_error_reason,
    observation::OrderEvent,
    record::{header, header_str},
    trace::TraceContext,
    Command, CommandKind, IppEvent, IppEventKind,
};
use ipp_service::{
    error_chain,
    probe::Readiness,
    traces::{Kind, Span},
};
use prometheus::IntGaugeVec;
use rdkafka::{
    consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer},
    message::{BorrowedMessage, Message},
    ClientContext, Statistics,
};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{client_config, dead_letters::DeadLetters, CLIENT_ID};
use crate::{
    config::{CapturePolicy, Config},
    ledger::{self, CommandFields, NewAction},
    metrics::Metrics,
    Error,
};

/// How long the final commit and leaving the group may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ActionConsumer {
    consumer: StreamConsumer<LagContext>,
    topic: String,
    commands_topic: String,
    kustom_topic: String,
    /// Not consumed: awaited, so that the service is not ready before it can publish.
    observations_topic: String,
    capture_policy: CapturePolicy,
    pool: PgPool,
    dlq: Arc<DeadLetters>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl ActionConsumer {
    pub fn new(
        config: &Config,
        pool: PgPool,
        dlq: Arc<DeadLetters>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Result<Self, Error> {
        let mut settings = vec![("group.id", config.group.as_str())];
        settings.extend_from_slice(ipp_service::kafka::GROUP_CONSUMER);
        // The statistics carry each partition's lag (see `LagContext`).
        settings.push(("statistics.interval.ms", "5000"));
        // An offset is stored only once the record's effect is durable.
        let client = client_config(config, &settings);
        let consumer = client.create_with_context(LagContext {
            partition_lag: metrics.partition_lag.clone(),
        })?;
        Ok(Self {
            consumer,
            topic: config.ipp_topic.clone(),
            commands_topic: config.commands_topic.clone(),
            kustom_topic: config.kustom_topic.clone(),
            observations_topic: config.observations_topic.clone(),
            capture_policy: config.capture_policy(),
            pool,
            dlq,
            metrics,
            wake,
        })
    }

    /// Consumes until `shutdown`. Subscribes only once every topic it reads or writes
    /// exists (events, commands, Kustom events, observations, dead letters): not ready
    /// until then.
    pub async fn run(self, ready: Readiness, shutdown: CancellationToken) {
        let topics = vec![
            self.topic.clone(),
            self.commands_topic.clone(),
            self.kustom_topic.clone(),
            self.observations_topic.clone(),
            self.dlq.topic().to_owned(),
        ];
        if !ipp_service::kafka::wait_for_topics(self.dlq.producer(), topics, &shutdown).await {
            return;
        }
        let subscribed = [&self.topic, &self.commands_topic, &self.kustom_topic];
        if let Err(e) = self.consumer.subscribe(&subscribed.map(String::as_str)) {
            error!(error = %e, topics = ?subscribed, "cannot subscribe");
            return;
        }
        info!(topic = %self.topic, commands_topic = %self.commands_topic, kustom_topic = %self.kustom_topic, "consuming");
        ready.set(true);
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    warn!(error = %e, "kafka consume error");
                    if ipp_service::kafka::is_lost_connection_report(&e) {
                        continue;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            if !self.handle(&message, &shutdown).await {
                // Interrupted before the record was durable: its offset is not stored, so
                // it is consumed again after the restart.
                break;
            }
            if let Err(e) = self.consumer.store_offset_from_message(&message) {
                // The partition was revoked meanwhile; its new owner reads the record again.
                debug!(error = %e, partition = message.partition(), offset = message.offset(), "offset not stored");
            }
        }
        ready.set(false);
        let consumer = self.consumer;
        let close = move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored since the last auto commit, or no assignment: fine.
                debug!(error = %e, "final offset commit");
            }
            drop(consumer); // leaves the group
        };
        ipp_service::kafka::close_within(close, CLOSE_TIMEOUT, CLIENT_ID).await;
        info!("consumer stopped");
    }

    /// Makes the record's effect durable. Returns false only when shutdown interrupted it.
    async fn handle(&self, message: &BorrowedMessage<'_>, shutdown: &CancellationToken) -> bool {
        // This record's span, a child of the one that wrote it; the action's Order
        // Management calls are its children in turn (its context goes into the ledger).
        // Copied once, through ipp-kafka-headers: rdkafka's own reads panic on a header
        // name that is not UTF-8.
        let headers = HeadersCopy::of_message(message);
        let headers = headers.as_ref();
        let record_trace = TraceContext::of_record(headers);
        let own_trace = record_trace.map(|parent| parent.child());
        let mut span = match (&own_trace, &record_trace) {
            (Some(own), Some(parent)) => {
                Span::start("process record", Kind::Consumer, own, Some(parent))
            }
            _ => Span::none(),
        };
        if span.is_recording() {
            span.attribute("messaging.destination.name", message.topic().to_owned());
            let partition = message.partition().to_string();
            span.attribute("messaging.destination.partition.id", partition);
            span.attribute("messaging.kafka.offset", message.offset());
        }
        let new = if message.topic() == self.commands_topic {
            self.command_action(message)
        } else if message.topic() == self.kustom_topic {
            self.observe_action(message, headers)
        } else {
            self.event_action(message, headers)
        };
        let new = match new {
            Ok(Some(new)) => NewAction {
                traceparent: own_trace.map(|own| own.to_header()),
                ..new
            },
            Ok(None) => {
                self.metrics.records.with_label_values(&["ignored"]).inc();
                return true;
            }
            Err(reason) => return self.park(message, headers, &reason, shutdown).await,
        };
        let recorded = (|| ledger::record(&self.pool, &new))
            .retry(forever())
            .when(|e| !is_rejected_data(e))
            .notify(|e, d| error!(error = %e, retry_in = ?d, "ledger write failed; retrying"));
        let inserted = tokio::select! {
            _ = shutdown.cancelled() => return false,
            inserted = recorded => inserted,
        };
        let inserted = match inserted {
            Ok(inserted) => inserted,
            // Only an error retrying cannot fix ends the retries (e.g. a NUL character in
            // the event id): the record is parked and the partition goes on.
            Err(e) => {
                let reason = format!("rejected by PostgreSQL: {}", error_chain(&e));
                return self.park(message, headers, &reason, shutdown).await;
            }
        };
        if new.command.is_none() {
            if let Some(merchant_id) = &new.merchant_id {
                // Also on a redelivery: a crash may have come between the two writes.
                let adopted = (|| ledger::adopt_account(&self.pool, new.order_id, merchant_id))
                    .retry(forever())
                    .when(|e| !is_rejected_data(e))
                    .notify(
                        |e, d| error!(error = %e, retry_in = ?d, "ledger write failed; retrying"),
                    );
                let adopted = tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    adopted = adopted => adopted,
                };
                match adopted {
                    Ok(0) => {}
                    Ok(n) => {
                        info!(order_id = %new.order_id, merchant_id, commands = n, "commands of the order took its account");
                        self.wake.notify_one();
                    }
                    Err(e) => {
                        warn!(error = %e, order_id = %new.order_id, "could not give the order's commands its account")
                    }
                }
            }
        }
        if inserted {
            info!(
                order_id = %new.order_id,
                action = %new.action,
                session_id = ?new.session_id,
                event_id = %new.event_id,
                skipped = new.skip_reason.is_some(),
                "action recorded"
            );
            self.metrics.records.with_label_values(&["recorded"]).inc();
            self.wake.notify_one();
            return true;
        }
        if let Some(fields) = &new.command {
            // Redelivered, replayed, or appended twice by a client's retry: all the same
            // command. Another command under an id already taken is parked, not dropped.
            let conflict = tokio::select! {
                _ = shutdown.cancelled() => return false,
                conflict = self.command_conflict(&new, fields) => conflict,
            };
            if let Some(reason) = conflict {
                return self.park(message, headers, &reason, shutdown).await;
            }
        }
        debug!(order_id = %new.order_id, action = %new.action, "action already recorded");
        self.metrics.records.with_label_values(&["duplicate"]).inc();
        true
    }

    /// The row a finalized session makes; `None` for every other event.
    fn event_action(
        &self,
        message: &BorrowedMessage<'_>,
        headers: Option<&HeadersCopy>,
    ) -> Result<Option<NewAction>, String> {
        // A body ingest could not route is parked with ingest's reason, even if it parses.
        if let Some(reason) = route_error_reason(headers) {
            return Err(reason);
        }
        let event =
            IppEvent::parse(message.payload().unwrap_or_default()).map_err(|e| e.to_string())?;
        if event.kind != IppEventKind::SessionFinalized {
            return Ok(None);
        }
        let order_id = event
            .order_id()
            .expect("parse guarantees finalized events name their order");
        let merchant_id =
            event.envelope.merchant_id.clone().or_else(|| {
                headers.and_then(|h| header_str(h, header::MERCHANT_ID).ok().flatten())
            });
        Ok(Some(NewAction {
            order_id,
            action: ledger::CAPTURE.to_owned(),
            kind: CommandKind::Capture.into(),
            session_id: Some(event.session_id()),
            merchant_id,
            event_id: event.id().to_owned(),
            event_type: None,
            command: None,
            source_topic: message.topic().to_owned(),
            source_partition: message.partition(),
            source_offset: message.offset(),
            skip_reason: (self.capture_policy == CapturePolicy::OnCommand)
                .then(|| "capture policy on-command: the merchant captures by command".to_owned()),
            traceparent: None,
        }))
    }

    /// The `observe` row of a Kustom order event; `None` for every other type. Read
    /// leniently: only the envelope's `id`, `type` and `merchant_id` and the ids of
    /// `data` are looked at.
    fn observe_action(
        &self,
        message: &BorrowedMessage<'_>,
        headers: Option<&HeadersCopy>,
    ) -> Result<Option<NewAction>, String> {
        if let Some(reason) = route_error_reason(headers) {
            return Err(reason);
        }
        let event: Value = serde_json::from_slice(message.payload().unwrap_or_default())
            .map_err(|e| format!("not a Kustom event: {e}"))?;
        let text = |field: &str| {
            event
                .get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
        };
        let event_type = text("type").ok_or("a Kustom event without a type")?;
        let order_event =
            OrderEvent::from_parts(event_type, event.get("data").unwrap_or(&Value::Null))?;
        let Some(order_event) = order_event else {
            return Ok(None);
        };
        let event_id = text("id").ok_or_else(|| format!("{event_type} without an event id"))?;
        let merchant_id = text("merchant_id")
            .map(str::to_owned)
            .or_else(|| headers.and_then(|h| header_str(h, header::MERCHANT_ID).ok().flatten()));
        Ok(Some(NewAction::observe(
            order_event.order_id(),
            event_id,
            event_type,
            merchant_id,
            message.topic(),
            message.partition(),
            message.offset(),
        )))
    }

    /// The row of a command record.
    fn command_action(&self, message: &BorrowedMessage<'_>) -> Result<Option<NewAction>, String> {
        let command = Command::parse(message.payload().unwrap_or_default())
            .map_err(|e| format!("unusable command: {e}"))?;
        Ok(Some(NewAction::command(
            &command,
            message.topic(),
            message.partition(),
            message.offset(),
        )))
    }

    /// Why a command record whose id the ledger already holds is not a redelivery of
    /// that command; `None` when it is.
    async fn command_conflict(&self, new: &NewAction, fields: &CommandFields) -> Option<String> {
        let recorded = (|| ledger::recorded_command(&self.pool, fields.command_id))
            .retry(forever())
            .notify(|e, d| error!(error = %e, retry_in = ?d, "ledger read failed; retrying"))
            .await
            .ok()
            .flatten()?;
        let (order_id, kind, recorded) = recorded;
        let same = order_id == new.order_id && kind == new.kind.as_str() && recorded == *fields;
        (!same).then(|| {
            format!(
                "command id {} is already recorded for another command ({kind} of order {order_id})",
                fields.command_id
            )
        })
    }

    /// Parks a record this service cannot use in its dead-letter topic, retrying until
    /// the broker acknowledged it. Returns false only when shutdown interrupted it.
    async fn park(
        &self,
        message: &BorrowedMessage<'_>,
        headers: Option<&HeadersCopy>,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        warn!(
            partition = message.partition(),
            offset = message.offset(),
            error = %reason,
            "record cannot be used: to the dlq"
        );
        let parked = (|| self.dlq.unusable(message, headers, reason))
            .retry(forever())
            .notify(|e, _| error!(error = %e, "dlq write failed; retrying"));
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = parked => {
                self.metrics.records.with_label_values(&["dlq"]).inc();
                true
            }
        }
    }
}

/// PostgreSQL refused the row itself (a data exception such as a NUL character, a
/// constraint, a size limit): the same insert would fail forever.
fn is_rejected_data(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(e) = e else {
        return false;
    };
    let code = e.code().unwrap_or_default();
    // 23505 cannot come from `ON CONFLICT DO NOTHING` on the key; retry it anyway.
    (code.starts_with("22") || code.starts_with("23") || code.starts_with("54")) && code != "23505"
}

/// Retries that only shutdown ends: nothing may be skipped.
fn forever() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// Exports each assigned partition's lag from librdkafka's statistics: the high
/// watermark minus the offset stored once a record's effect is durable (what a restart
/// resumes from), so a record in the works counts as not consumed yet.
pub struct LagContext {
    partition_lag: IntGaugeVec,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, partition_stats) in &stats.partitions {
                let label = [topic.as_str(), &partition.to_string()];
                if *partition < 0 || !partition_stats.desired {
                    // Revoked, or librdkafka's internal partition: not ours to report.
                    let _ = self.partition_lag.remove_label_values(&label);
                    continue;
                }
                let lag = partition_lag(
                    partition_stats.consumer_lag_stored,
                    partition_stats.hi_offset,
                    partition_stats.lo_offset,
                    partition_stats.committed_offset,
                );
                if let Some(lag) = lag {
                    self.partition_lag.with_label_values(&label).set(lag);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// A partition's lag from librdkafka's statistics: `consumer_lag_stored` once this
/// consumer stored an offset there; before that (an empty partition, or nothing read
/// since the start), what lies between where it starts (the committed offset, else the
/// earliest, as `auto.offset.reset` says) and the end. `None` while the end is unknown.
fn partition_lag(stored_lag: i64, end: i64, earliest: i64, committed: i64) -> Option<i64> {
    if stored_lag >= 0 {
        return Some(stored_lag);
    }
    let start = if committed >= 0 { committed } else { earliest };
    (end >= 0 && start >= 0).then(|| (end - start).max(0))
}

#[cfg(test)]
mod tests {
    use super::partition_lag;

    /// librdkafka's "unknown": an offset or a lag of -1 (or -1001 for offsets).
    const UNKNOWN: i64 = -1;
    const INVALID_OFFSET: i64 = -1001;

    #[test]
    fn a_stored_offset_gives_librdkafkas_lag() {
        assert_eq!(partition_lag(7, 100, 0, 50), Some(7));
        assert_eq!(partition_lag(0, 100, 0, 100), Some(0));
    }

    #[test]
    fn an_empty_partition_has_no_lag_before_anything_is_stored() {
        assert_eq!(partition_lag(UNKNOWN, 0, 0, INVALID_OFFSET), Some(0));
    }

    #[test]
    fn before_the_first_record_the_lag_counts_from_the_committed_offset_else_the_earliest() {
        assert_eq!(partition_lag(UNKNOWN, 100, 20, 60), Some(40));
        assert_eq!(partition_lag(UNKNOWN, 100, 20, INVALID_OFFSET), Some(80));
    }

    #[test]
    fn an_unknown_end_is_no_figure() {
        assert_eq!(partition_lag(UNKNOWN, UNKNOWN, 0, INVALID_OFFSET), None);
        assert_eq!(partition_lag(UNKNOWN, 10, UNKNOWN, INVALID_OFFSET), None);
    }
}
