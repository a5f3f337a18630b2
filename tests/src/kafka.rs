//! The broker side of the tests: which broker, fresh topics, and reading a topic back.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::{
    admin::{
        AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
    },
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    message::{Headers, Message},
    ClientConfig, TopicPartitionList,
};

/// The broker the test command started: `IPP_TEST_KAFKA_BROKERS` (`KAFKA_BROKERS` when
/// unset). scripts/test sets the former only, so that the services' own settings
/// (`KAFKA_BROKERS`), which parsing reads from the environment, stay unset.
pub fn brokers() -> String {
    std::env::var("IPP_TEST_KAFKA_BROKERS")
        .or_else(|_| std::env::var("KAFKA_BROKERS"))
        .expect(
            "IPP_TEST_KAFKA_BROKERS is not set: run the suite with scripts/test, which starts a broker",
        )
}

/// Creates a topic with a unique name and returns the name.
pub async fn create_topic(brokers: &str, prefix: &str, partitions: i32) -> String {
    let name = crate::unique_name(prefix);
    create_named_topic(brokers, &name, partitions).await;
    name
}

pub async fn create_named_topic(brokers: &str, name: &str, partitions: i32) {
    create_named_topic_with(brokers, name, partitions, &[]).await;
}

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "ipp-tests")
        .create()
        .expect("admin client")
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

/// Creates `name` with topic-level `configs` (e.g. `("segment.ms", "500")`).
pub async fn create_named_topic_with(
    brokers: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let admin = admin(brokers);
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let results = admin
        .create_topics([&topic], &admin_options())
        .await
        .expect("create_topics request");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("create topic {topic}: {code}"));
    }
}

/// Replaces the topic-level configuration of `name` with `configs` (what is not named
/// goes back to the broker's default).
pub async fn set_topic_configs(brokers: &str, name: &str, configs: &[(&str, &str)]) {
    let mut config = AlterConfig::new(ResourceSpecifier::Topic(name));
    for (key, value) in configs {
        config = config.set(key, value);
    }
    let results = admin(brokers)
        .alter_configs([&config], &admin_options())
        .await
        .expect("alter_configs request");
    for result in results {
        result.unwrap_or_else(|(resource, code)| panic!("alter {resource:?}: {code}"));
    }
}

/// A client for metadata and watermark requests, which never create a topic.
fn metadata_client(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "ipp-tests")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("consumer")
}

/// `(low, high)` watermarks of one partition.
pub fn watermarks(brokers: &str, topic: &str, partition: i32) -> (i64, i64) {
    let consumer = metadata_client(brokers);
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks")
}

/// Whether the broker knows `topic` (asking never creates it).
pub fn topic_exists(brokers: &str, topic: &str) -> bool {
    let consumer = metadata_client(brokers);
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

/// One record as read back from the broker.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp (milliseconds since the epoch), when the broker gave one.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::str::from_utf8(v).expect("header is UTF-8"))
    }

    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .map(|k| std::str::from_utf8(k).expect("key is UTF-8"))
    }
}

/// Every record of a topic, up to the high watermarks at the time of the call.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "ipp-tests")
        .set("allow.auto.create.topics", "false")
        .set("group.id", crate::unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    let mut ends = std::collections::HashMap::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            assignment
                .add_partition_offset(topic, partition, rdkafka::Offset::Offset(low))
                .unwrap();
            remaining += high - low;
            ends.insert(partition, high);
        }
    }
    let mut records = Vec::new();
    if remaining == 0 {
        return records;
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    while records.len() < remaining as usize {
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic}: {} of {remaining}",
            records.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("consume");
        if message.offset() >= ends[&message.partition()] {
            continue;
        }
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// An Apache Kafka broker of the test's own (`scripts/kafka-broker`), for tests that
/// stop and restart the broker or need broker settings of their own.
pub struct OwnBroker {
    pub port: u16,
    data_dir: PathBuf,
    settings: Vec<String>,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl OwnBroker {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A broker with extra `KEY=VALUE` broker properties (over scripts/kafka-broker's).
    pub fn start_with(settings: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut broker = Self {
            port: crate::free_port(),
            data_dir: dir.path().join("kafka"),
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            _dir: dir,
        };
        broker.restart();
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the broker: a crash, as far as its clients can tell.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port with the same data directory, and waits until it
    /// accepts connections (it opens its client port last, once started).
    pub fn restart(&mut self) {
        self.stop();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka-broker");
        let log_path = self.data_dir.with_extension("log");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("broker log file");
        let mut child = Command::new(script)
            .arg(&self.data_dir)
            .arg(self.port.to_string())
            .args(&self.settings)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("scripts/kafka-broker");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = child.try_wait().expect("try_wait");
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "the test's Kafka broker did not listen on port {} ({exited:?}):\n{}",
                    self.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // What the broker said helps to understand a failed test.
            let log = std::fs::read_to_string(self.data_dir.with_extension("log"));
            let log = log.unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- the test's Kafka broker, last lines of its log ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
