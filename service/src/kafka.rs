//! What every Kafka client of the services starts from, and the check that the topics a
//! service needs exist. Topics are created by the operator (or `scripts/run`) with their
//! partition counts and retention; a client never creates one by accident.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::{
    client::{Client, ClientContext},
    error::KafkaError,
    producer::{FutureProducer, Producer},
    types::RDKafkaErrorCode,
    ClientConfig,
};
use tokio_util::sync::CancellationToken;

use crate::args::KafkaArgs;

/// The settings of one librdkafka client: `bootstrap.servers`, a `client.id` naming the
/// service (what broker logs, quotas and ACLs see), no topic auto-creation, then the
/// client's own `settings`, then the operator's `KAFKA_PROPERTIES_FILE` and
/// `KAFKA_PROPERTIES` (in that order), which win over everything before them except
/// the [`PROTECTED`] keys a client sets itself.
pub fn client_config(
    kafka: &KafkaArgs,
    client_id: &str,
    settings: &[(&str, &str)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", client_id)
        // A missing or mistyped topic must be an error, not a new one-partition topic
        // (librdkafka's producers ask the broker to auto-create by default).
        .set("allow.auto.create.topics", "false");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    for (key, value) in kafka.properties() {
        if PROTECTED.contains(&key) && settings.iter().any(|(own, _)| *own == key) {
            tracing::warn!(
                key,
                client_id,
                "KAFKA_PROPERTIES(_FILE) may not change {key}: ignored"
            );
            continue;
        }
        config.set(key, value);
    }
    config
}

/// Settings an offset strategy depends on: when a client sets one, `KAFKA_PROPERTIES`
/// cannot change it (storing offsets before the effect is durable would lose records).
pub const PROTECTED: &[&str] = &["enable.auto.offset.store"];

/// A consumer that is only ever `assign`ed partitions: it never joins a group nor
/// commits, so it cannot disturb the services' groups. librdkafka wants a group id
/// anyway; a unique one is never registered with the broker.
pub fn assign_only_config(kafka: &KafkaArgs, client_id: &str) -> ClientConfig {
    let group = format!("{client_id}-{}", uuid::Uuid::new_v4().simple());
    client_config(
        kafka,
        client_id,
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
        ],
    )
}

/// A consumer of a group that stores each record's offset itself, once the record's
/// effect is durable, and lets librdkafka commit what was stored once a second. The
/// `cooperative-sticky` assignor makes rebalances incremental: a member joining or
/// leaving moves only the partitions that change hands, the others keep flowing.
pub const GROUP_CONSUMER: &[(&str, &str)] = &[
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("enable.auto.commit", "true"),
    ("auto.commit.interval.ms", "1000"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    // librdkafka prefetches until each partition holds 100000 records by default: behind
    // a long backlog that was 90 MB of the projector's 230 MB peak, for no throughput (a
    // batch is 2000 records). 1000 per partition still keeps every batch full.
    ("queued.min.messages", "1000"),
    // Once a partition holds that many, librdkafka postpones its next fetch by this long
    // (1000 ms by default): behind a backlog every partition empties within 200 ms, then
    // waited the rest of the second. A catch-up ran at 29k records/s with the default
    // and at 50k with 10 ms.
    ("fetch.queue.backoff.ms", "10"),
    // Each fetch asks for at most this much per partition (librdkafka: 1 MiB). The
    // responses' buffers live in librdkafka's allocator until their last record is
    // consumed: 1 MiB per partition held a 300,000-record catch-up at about 150 MiB of
    // the projector's memory, 256 KiB at about 95 MiB, at no lower rate. A larger record
    // still comes through: the broker returns at least one record per partition.
    ("fetch.message.max.bytes", "262144"),
];

/// Why a service's topics cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopicsUnavailable {
    #[error("no broker answered a metadata request: {0}")]
    Broker(#[source] KafkaError),
    #[error("topic {} does not exist on the broker: create it with its partitions and retention (README: topics)", .0.join(", "))]
    Missing(Vec<String>),
}

/// Checks that every topic of `topics` exists (blocking; at most `timeout` per topic).
pub fn check_topics<C: ClientContext>(
    client: &Client<C>,
    topics: &[impl AsRef<str>],
    timeout: Duration,
) -> Result<(), TopicsUnavailable> {
    let mut missing = Vec::new();
    for topic in topics {
        match partitions(client, topic.as_ref(), timeout) {
            Ok(_) => {}
            Err(TopicsUnavailable::Missing(mut topic)) => missing.append(&mut topic),
            Err(broker) => return Err(broker),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(TopicsUnavailable::Missing(missing))
    }
}

/// The partitions of `topic`, sorted, for a reader that assigns them itself.
pub fn partitions<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, TopicsUnavailable> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(TopicsUnavailable::Broker)?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(TopicsUnavailable::Missing(vec![topic.to_owned()]));
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// The `(low, high)` watermarks of each of `partitions`: `high - low` records are stored.
pub fn watermarks<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
    partitions
        .iter()
        .map(|&p| Ok((p, client.fetch_watermarks(topic, p, timeout)?)))
        .collect()
}

/// How often [`watch_topic_size`] measures its topic.
pub const TOPIC_SIZE_EVERY: Duration = Duration::from_secs(30);

/// Keeps `gauge{topic}` at the number of records stored in `topic` (high minus low
/// watermark, summed over its partitions), asking the brokers every
/// [`TOPIC_SIZE_EVERY`] from a client of its own that never joins a group. A topic that
/// cannot be read keeps its last value (logged at debug). Runs until `shutdown`; spawn
/// it.
pub async fn watch_topic_size(
    kafka: KafkaArgs,
    client_id: String,
    topic: String,
    gauge: prometheus::IntGaugeVec,
    shutdown: CancellationToken,
) {
    let reader: rdkafka::consumer::BaseConsumer =
        match assign_only_config(&kafka, &client_id).create() {
            Ok(reader) => reader,
            Err(error) => {
                tracing::warn!(%error, %topic, "cannot create the client that measures the topic");
                return;
            }
        };
    let reader = Arc::new(reader);
    let mut tick = tokio::time::interval(TOPIC_SIZE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (reader, name) = (reader.clone(), topic.clone());
        let size = tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            topic_size(reader.client(), &name)
        })
        .await;
        match size {
            Ok(Ok(records)) => gauge.with_label_values(&[&topic]).set(records),
            Ok(Err(error)) => tracing::debug!(%error, %topic, "topic size unknown for now"),
            Err(error) => tracing::debug!(%error, %topic, "topic size task failed"),
        }
    }
}

fn topic_size<C: ClientContext>(client: &Client<C>, topic: &str) -> Result<i64, String> {
    let timeout = Duration::from_secs(5);
    let partitions = partitions(client, topic, timeout).map_err(|e| e.to_string())?;
    let marks = watermarks(client, topic, &partitions, timeout).map_err(|e| e.to_string())?;
    Ok(marks.values().map(|(low, high)| high - low).sum())
}

/// Waits until every topic of `topics` exists, asking through `producer` every 2 s (on
/// a blocking thread) and logging why not, at once and then every 30 s. Returns
/// `false` when `shutdown` came first.
pub async fn wait_for_topics(
    producer: Arc<FutureProducer>,
    topics: Vec<String>,
    shutdown: &CancellationToken,
) -> bool {
    let topics = Arc::new(topics);
    let mut last_logged: Option<Instant> = None;
    loop {
        let (producer, topics) = (producer.clone(), topics.clone());
        let checked = tokio::task::spawn_blocking(move || {
            check_topics(producer.client(), &topics, Duration::from_secs(5))
        })
        .await
        .unwrap_or_else(|e| panic!("topic check panicked: {e}"));
        match checked {
            Ok(()) => {
                if last_logged.is_some() {
                    tracing::info!("the topics exist now");
                }
                return true;
            }
            Err(error) => {
                if last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
                    tracing::error!(%error, "waiting for the topics (not ready meanwhile)");
                    last_logged = Some(Instant::now());
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Runs `close` (a consumer's final commit and its drop, which leaves the group) on a
/// thread of its own and waits for it at most `within`. librdkafka 2.12 can wait for
/// ever in a consumer's close when the member is in the middle of a cooperative
/// rebalance: the commit of the revoked partitions never completes
/// (confluentinc/librdkafka#4792, fixed in 2.14.1, which rust-rdkafka does not ship
/// yet). Past the deadline the close is abandoned; that is safe for every consumer
/// here: what its offsets cover is already durable, a record read again is applied
/// once, and the broker drops the member when its session times out.
pub async fn close_within(close: impl FnOnce() + Send + 'static, within: Duration, what: &str) {
    let (done, closed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            close();
            let _ = done.send(());
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, what, "no thread to close the kafka consumer on");
        return;
    }
    if tokio::time::timeout(within, closed).await.is_err() {
        tracing::warn!(
            what,
            ?within,
            "the kafka consumer did not close in time (librdkafka mid-rebalance); leaving it"
        );
    }
}

/// A consumer's report that it lost its broker connections (`AllBrokersDown`,
/// `BrokerTransportFailure`). librdkafka queues one per reconnect attempt while the
/// broker is away, ahead of the assignment it gets once the broker is back: a consumer
/// that pauses after each (as it should after other errors, which repeat at once)
/// would not consume again for minutes.
pub fn is_lost_connection_report(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure
        )
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    fn kafka(properties: &[&str]) -> KafkaArgs {
        let mut argv = vec!["test", "--kafka-brokers", "broker:9092"];
        for property in properties {
            argv.extend(["--kafka-property", property]);
        }
        Cli::try_parse_from(argv).unwrap().kafka
    }

    #[test]
    fn operator_properties_win_except_an_offset_strategy_the_client_set() {
        let config = client_config(
            &kafka(&[
                "enable.auto.offset.store=true",
                "acks=1",
                "security.protocol=SASL_SSL",
            ]),
            "ipp-test",
            &[("enable.auto.offset.store", "false"), ("acks", "all")],
        );
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("acks"), Some("1"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("bootstrap.servers"), Some("broker:9092"));
        assert_eq!(config.get("client.id"), Some("ipp-test"));
        assert_eq!(config.get("allow.auto.create.topics"), Some("false"));
    }

    #[test]
    fn a_client_that_does_not_set_a_protected_key_takes_the_operators() {
        let config = client_config(&kafka(&["enable.auto.offset.store=false"]), "x", &[]);
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
    }

    #[test]
    fn assign_only_readers_never_commit_and_get_a_group_of_their_own() {
        let args = kafka(&["enable.auto.commit=true"]);
        let (a, b) = (
            assign_only_config(&args, "ipp-ops"),
            assign_only_config(&args, "ipp-ops"),
        );
        assert_eq!(a.get("enable.auto.offset.store"), Some("false"));
        assert_ne!(a.get("group.id"), b.get("group.id"));
        assert!(a.get("group.id").unwrap().starts_with("ipp-ops-"));
    }
}
