//! Where consumption starts after a rebalance: at the cached stored offsets (see the
//! offset strategy in [`super`]). The callback is synchronous and must not block, so it
//! never queries PostgreSQL. It also reports each partition's lag from librdkafka's
//! statistics.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    statistics::Statistics,
    types::RDKafkaRespErr,
    ClientContext, Offset, TopicPartitionList,
};
use tracing::{error, info};

use crate::metrics::Metrics;

/// Next offset to apply per partition, as last read from or written to PostgreSQL.
pub(super) type OffsetCache = Arc<Mutex<HashMap<i32, i64>>>;

/// The consumer context: assigns partitions at the stored offsets, reports lag.
pub struct ProjectorContext {
    pub(super) topic: String,
    pub(super) offsets: OffsetCache,
    pub(super) metrics: Arc<Metrics>,
}

impl ProjectorContext {
    pub(super) fn cached(&self) -> HashMap<i32, i64> {
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
            let label = [self.topic.as_str(), &partition.to_string()];
            self.metrics
                .partition_lag
                .with_label_values(&label)
                .set((stats.hi_offset - applied).max(0));
            self.metrics
                .partition_next_offset
                .with_label_values(&label)
                .set(applied);
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
                    let label = [e.topic(), &e.partition().to_string()];
                    let _ = self.metrics.partition_lag.remove_label_values(&label);
                    let _ = self
                        .metrics
                        .partition_next_offset
                        .remove_label_values(&label);
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
