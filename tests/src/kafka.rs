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

/// Creates the topics ipp-actions needs beside the event topic `topic` (commands, Kustom
/// events, observations: [`crate::inprocess::actions_topics_of`]), `partitions` each.
pub async fn create_actions_topics(brokers: &str, topic: &str, partitions: i32) {
    for name in crate::inprocess::actions_topics_of(topic) {
        create_named_topic(brokers, &name, partitions).await;
    }
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
    create_replicated_topic(brokers, name, partitions, 1, configs).await;
}

/// Creates `name` with `replication` replicas of each partition (at most the number of
/// brokers) and topic-level `configs`.
pub async fn create_replicated_topic(
    brokers: &str,
    name: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, &str)],
) {
    let admin = admin(brokers);
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
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
        // rdkafka's own reads would panic on a name that is not UTF-8 (the poison cases).
        let headers = ipp_kafka_headers::HeadersCopy::of_message(&message)
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

/// One `scripts/kafka-broker` child process with its data directory and log file: a
/// single broker, or one node of a [`KafkaCluster`].
struct BrokerProcess {
    port: u16,
    /// Every port it listens on that the harness chose, kept from other sockets across
    /// its restarts.
    _reserved: Vec<crate::ReservedPort>,
    data_dir: PathBuf,
    /// What comes before DATA_DIR (`--heap`, `--cluster` …) and after PORT (settings).
    options: Vec<String>,
    settings: Vec<String>,
    child: Option<Child>,
}

impl BrokerProcess {
    fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    /// Starts the script; [`BrokerProcess::wait_listening`] waits for it.
    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "broker on port {} already runs",
            self.port
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka-broker");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("broker log file");
        let child = Command::new(script)
            .args(&self.options)
            .arg(&self.data_dir)
            .arg(self.port.to_string())
            .args(&self.settings)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("scripts/kafka-broker");
        self.child = Some(child);
    }

    /// Whether the broker accepts connections (it opens its client port last, once
    /// started); panics with its last log lines if it exited.
    fn listening(&mut self) -> bool {
        if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            return true;
        }
        let child = self.child.as_mut().expect("spawned");
        if let Some(exited) = child.try_wait().expect("try_wait") {
            self.child = None;
            panic!(
                "the test's Kafka broker on port {} exited ({exited}):\n{}",
                self.port,
                self.log_tail(30)
            );
        }
        false
    }

    fn not_listening(&mut self, within: Duration) -> ! {
        self.kill();
        panic!(
            "the test's Kafka broker did not listen on port {} within {within:?}:\n{}",
            self.port,
            self.log_tail(30)
        );
    }

    /// Waits (blocking) until the broker accepts connections.
    fn wait_listening(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.listening() {
            if Instant::now() > deadline {
                self.not_listening(within);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the broker accepts connections, without blocking the runtime.
    async fn listening_within(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.listening() {
            if Instant::now() > deadline {
                self.not_listening(within);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the broker: a crash, as far as its clients can tell.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, a controlled shutdown (leadership moves away first); SIGKILL if it still
    /// runs after `within`. Returns whether it exited by itself.
    async fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// What a broker said helps to understand a failed test.
fn print_log_if_panicking(broker: &BrokerProcess, what: &str) {
    if std::thread::panicking() {
        eprintln!("--- {what}, last lines of its log ---");
        eprintln!("{}", broker.log_tail(60));
    }
}

/// How long a broker may take to start on a loaded machine.
const BROKER_START: Duration = Duration::from_secs(90);

/// An Apache Kafka broker of the test's own (`scripts/kafka-broker`), for tests that
/// stop and restart the broker or need broker settings of their own.
pub struct OwnBroker {
    pub port: u16,
    broker: BrokerProcess,
    /// The data directory's parent: the broker's log, and its keys if it has any.
    dir: tempfile::TempDir,
}

impl OwnBroker {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A broker with extra `KEY=VALUE` broker properties (over scripts/kafka-broker's).
    pub fn start_with(settings: &[&str]) -> Self {
        let settings = settings.iter().map(|s| (*s).to_owned()).collect();
        Self::start_in(
            tempfile::tempdir().expect("tempdir"),
            Vec::new(),
            settings,
            Vec::new(),
        )
    }

    /// A broker whose data directory is `dir/kafka`, with scripts/kafka-broker's
    /// `options` and `settings`.
    fn start_in(
        dir: tempfile::TempDir,
        options: Vec<String>,
        settings: Vec<String>,
        mut reserved: Vec<crate::ReservedPort>,
    ) -> Self {
        let client_port = crate::ReservedPort::new();
        let port = client_port.port();
        reserved.push(client_port);
        let mut broker = Self {
            port,
            broker: BrokerProcess {
                port,
                _reserved: reserved,
                data_dir: dir.path().join("kafka"),
                options,
                settings,
                child: None,
            },
            dir,
        };
        broker.restart();
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the broker: a crash, as far as its clients can tell.
    pub fn stop(&mut self) {
        self.broker.kill();
    }

    /// Starts (again) on the same port with the same data directory, and waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        self.broker.kill();
        self.broker.spawn();
        self.broker.wait_listening(Duration::from_secs(60));
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.broker.kill();
        print_log_if_panicking(&self.broker, "the test's Kafka broker");
    }
}

/// The SCRAM mechanism of [`SaslSslBroker`]'s listener.
pub const SCRAM_MECHANISM: &str = "SCRAM-SHA-512";

/// A broker of the test's own with a second client listener, SASL_SSL with
/// SCRAM-SHA-512, as a managed Kafka offers: TLS with a self-signed certificate for
/// 127.0.0.1 and localhost (made with the JDK's keytool; its PEM is the clients'
/// `ssl.ca.location`) and one SCRAM user, created when the log is formatted
/// (`scripts/kafka-broker --scram-user`). The PLAINTEXT listener stays for the
/// controller-side and for the harness's own admin clients (topics, reading back).
pub struct SaslSslBroker {
    broker: OwnBroker,
    pub sasl_ssl_port: u16,
    /// The broker's certificate (PEM), what clients trust.
    pub ca_pem: PathBuf,
}

impl SaslSslBroker {
    /// Starts it with `username` / `password` as its SCRAM user.
    pub fn start(username: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let keystore = dir.path().join("broker.p12");
        let ca_pem = dir.path().join("broker.pem");
        let keystore_password = crate::unique_name("keystore");
        keytool(&[
            "-genkeypair",
            "-alias",
            "broker",
            "-keyalg",
            "EC",
            "-groupname",
            "secp256r1",
            "-validity",
            "30",
            "-dname",
            "CN=localhost",
            // librdkafka verifies the broker's name (ssl.endpoint.identification.algorithm
            // is https by default): the address the clients dial must be in the SAN.
            "-ext",
            "SAN=ip:127.0.0.1,dns:localhost",
            "-storetype",
            "PKCS12",
            "-keystore",
            &keystore.display().to_string(),
            "-storepass",
            &keystore_password,
        ]);
        keytool(&[
            "-exportcert",
            "-rfc",
            "-alias",
            "broker",
            "-keystore",
            &keystore.display().to_string(),
            "-storepass",
            &keystore_password,
            "-file",
            &ca_pem.display().to_string(),
        ]);
        let sasl_ssl_reserved = crate::ReservedPort::new();
        let sasl_ssl_port = sasl_ssl_reserved.port();
        let options = vec![
            "--listener".to_owned(),
            format!("SASL_SSL://127.0.0.1:{sasl_ssl_port}"),
            "--scram-user".to_owned(),
            format!("{username}:{password}"),
        ];
        let listener = "listener.name.sasl_ssl";
        let settings = vec![
            format!("{listener}.sasl.enabled.mechanisms={SCRAM_MECHANISM}"),
            format!(
                "{listener}.scram-sha-512.sasl.jaas.config=\
                 org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            format!("{listener}.ssl.keystore.location={}", keystore.display()),
            format!("{listener}.ssl.keystore.password={keystore_password}"),
            format!("{listener}.ssl.keystore.type=PKCS12"),
        ];
        let broker = OwnBroker::start_in(dir, options, settings, vec![sasl_ssl_reserved]);
        // Every listener opens at the end of start-up: the PLAINTEXT one did already.
        crate::process::wait_for_tcp(sasl_ssl_port, Duration::from_secs(10));
        Self {
            broker,
            sasl_ssl_port,
            ca_pem,
        }
    }

    /// The SASL_SSL listener's bootstrap address, all the services are given.
    pub fn sasl_ssl_brokers(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_ssl_port)
    }

    /// The PLAINTEXT listener, for the harness's admin clients (topics, reading back).
    pub fn plaintext_brokers(&self) -> String {
        self.broker.brokers()
    }

    /// Writes a `KAFKA_PROPERTIES_FILE` for the SASL_SSL listener with these credentials
    /// and returns its path.
    pub fn client_properties_file(&self, username: &str, password: &str) -> PathBuf {
        let path = self
            .broker
            .dir
            .path()
            .join(format!("{}.properties", crate::unique_name("client")));
        let text = format!(
            "# The services' Kafka settings for the test's SASL_SSL listener.\n\
             security.protocol=SASL_SSL\n\
             sasl.mechanisms={SCRAM_MECHANISM}\n\
             sasl.username={username}\n\
             sasl.password={password}\n\
             ssl.ca.location={}\n",
            self.ca_pem.display()
        );
        std::fs::write(&path, text).expect("write the client properties");
        path
    }
}

/// Runs the JDK's keytool quietly; panics with its output if it fails.
fn keytool(args: &[&str]) {
    let output = Command::new("keytool")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("keytool (the JDK's, beside java)");
    assert!(
        output.status.success(),
        "keytool {} failed:\n{}{}",
        args[0],
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Each node's JVM heap: three of them share a small machine with the services.
const CLUSTER_NODE_HEAP: &str = "320m";

/// A cluster of Apache Kafka nodes of the test's own on 127.0.0.1, each broker and
/// controller, the controllers one quorum of all nodes (`scripts/kafka-broker
/// --cluster`): with three, topics are created at replication factor 3 with
/// `min.insync.replicas=2` and the internal topics are replicated 3 times too. Nodes
/// are numbered from 1 (their `node.id`); dropped, every node is killed.
pub struct KafkaCluster {
    nodes: Vec<BrokerProcess>,
    /// Kept (not removed) when the test fails, for the nodes' whole logs.
    dir: Option<tempfile::TempDir>,
}

/// One partition as the cluster's metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub topic: String,
    pub partition: i32,
    /// The leader's node id, -1 without one.
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl KafkaCluster {
    /// Starts `nodes` nodes at once (a quorum needs a majority of them to start) and
    /// waits until each accepts connections.
    pub async fn start(nodes: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster_id = {
            let bytes: [u8; 16] = rand::random();
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
        };
        // Each node's controller port (its voter's) and client port.
        let mut ports: Vec<[crate::ReservedPort; 2]> = (1..=nodes)
            .map(|_| [crate::ReservedPort::new(), crate::ReservedPort::new()])
            .collect();
        let voters: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, [controller, _])| format!("{}@127.0.0.1:{}", i + 1, controller.port()))
            .collect();
        let voters = voters.join(",");
        let mut cluster = Self {
            nodes: (1..=nodes)
                .zip(ports.drain(..))
                .map(|(node, [controller, client])| BrokerProcess {
                    port: client.port(),
                    _reserved: vec![controller, client],
                    data_dir: dir.path().join(format!("node-{node}")),
                    options: [
                        "--heap",
                        CLUSTER_NODE_HEAP,
                        "--cluster",
                        &cluster_id,
                        "--node",
                        &node.to_string(),
                        "--voters",
                        &voters,
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                    settings: Vec::new(),
                    child: None,
                })
                .collect(),
            dir: Some(dir),
        };
        for node in &mut cluster.nodes {
            node.spawn();
        }
        for node in &mut cluster.nodes {
            node.listening_within(BROKER_START).await;
        }
        cluster
    }

    /// The bootstrap list: every node, running or not.
    pub fn brokers(&self) -> String {
        let addresses: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        addresses.join(",")
    }

    pub fn node_ids(&self) -> std::ops::RangeInclusive<i32> {
        1..=self.nodes.len() as i32
    }

    fn node(&mut self, id: i32) -> &mut BrokerProcess {
        let index = usize::try_from(id - 1).expect("node ids start at 1");
        &mut self.nodes[index]
    }

    /// SIGKILLs node `id` (a crash); returns once the process is gone.
    pub fn kill(&mut self, id: i32) {
        self.node(id).kill();
    }

    /// Stops node `id` with SIGTERM (a controlled shutdown) and waits for the exit;
    /// panics if it took longer than `within`.
    pub async fn terminate(&mut self, id: i32, within: Duration) {
        let exited = self.node(id).terminate(within).await;
        assert!(
            exited,
            "node {id} did not stop within {within:?} of SIGTERM"
        );
    }

    /// Starts nodes `ids` again (same ports, same data) at once and waits until each
    /// listens: a node that lost its quorum starts only once a majority is back.
    pub async fn restart(&mut self, ids: &[i32]) {
        for &id in ids {
            self.node(id).spawn();
        }
        for &id in ids {
            self.node(id).listening_within(BROKER_START).await;
        }
    }

    pub fn is_running(&mut self, id: i32) -> bool {
        self.node(id).is_running()
    }

    /// Every partition of every topic (the internal ones included), from the metadata
    /// of whichever node answers.
    pub async fn partitions(&self) -> Result<Vec<PartitionState>, rdkafka::error::KafkaError> {
        let brokers = self.brokers();
        tokio::task::spawn_blocking(move || partition_states(&brokers))
            .await
            .expect("metadata request panicked")
    }

    /// The node that leads the most partitions (the lowest id of a tie), and how many.
    pub async fn busiest_leader(&self) -> (i32, usize) {
        let partitions = self.partitions().await.expect("cluster metadata");
        self.node_ids()
            .map(|id| (id, partitions.iter().filter(|p| p.leader == id).count()))
            .max_by_key(|&(id, led)| (led, -id))
            .expect("nodes")
    }

    /// Waits until every partition has a leader and all its replicas in sync (a
    /// restarted node has caught up); panics with the laggards after `within`.
    pub async fn wait_fully_replicated(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let lagging = self.partitions().await.map(|partitions| {
                partitions
                    .into_iter()
                    .filter(|p| p.leader < 0 || p.isr.len() < p.replicas.len())
                    .collect::<Vec<_>>()
            });
            if lagging.as_ref().is_ok_and(Vec::is_empty) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not fully replicated after {within:?}: {lagging:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Every partition the metadata of `brokers` names (blocking).
fn partition_states(brokers: &str) -> Result<Vec<PartitionState>, rdkafka::error::KafkaError> {
    let metadata = metadata_client(brokers).fetch_metadata(None, Duration::from_secs(5))?;
    let mut states = Vec::new();
    for topic in metadata.topics() {
        for partition in topic.partitions() {
            states.push(PartitionState {
                topic: topic.name().to_owned(),
                partition: partition.id(),
                leader: partition.leader(),
                replicas: partition.replicas().to_vec(),
                isr: partition.isr().to_vec(),
            });
        }
    }
    states.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(states)
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        for (index, node) in self.nodes.iter().enumerate() {
            print_log_if_panicking(node, &format!("Kafka node {}", index + 1));
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!(
                    "kept the cluster's data and logs (node-N.log) in {}",
                    kept.display()
                );
            }
        }
    }
}
