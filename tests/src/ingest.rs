//! An in-process `ipp-ingest` with topics and webhook secrets of its own, and the
//! requests the tests send it: through an HTTP client, or written by hand on a raw
//! connection for what an HTTP client will not send (a lying `Content-Length`, a body
//! cut off, a byte a second).

use std::{net::SocketAddr, time::Duration};

use ipp_ingest::{Clock, Config};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    inprocess::{ingest_config, TestIngest},
    kafka::{self, Record},
    signer::{Signed, Signer},
};

/// One ingest with its own topics and secrets.
pub struct Ingest {
    pub service: TestIngest,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub brokers: String,
    pub ipp_topic: String,
    pub other_topic: String,
    pub secrets: Vec<String>,
    /// The clock ingest checks `webhook-timestamp` against.
    pub clock: Clock,
}

/// What [`Ingest::start_with`] creates around the service.
pub struct Options {
    pub brokers: String,
    /// The ipp topic's name, when it is not one created for the test.
    pub ipp_topic: Option<String>,
    /// How many webhook secrets ingest accepts.
    pub secrets: usize,
    /// The clock ingest checks `webhook-timestamp` against: fixed for the tests of the
    /// tolerance's edges.
    pub clock: Clock,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            brokers: kafka::brokers(),
            ipp_topic: None,
            secrets: 1,
            clock: Clock::system(),
        }
    }
}

impl Ingest {
    pub async fn start() -> Self {
        Self::start_with(Options::default(), |_| {}).await
    }

    /// Creates the topics and secrets of `options` and starts ingest on them, after
    /// `configure` changed whatever else the test needs.
    pub async fn start_with(options: Options, configure: impl FnOnce(&mut Config)) -> Self {
        let (config, secrets) = Self::config(&options).await;
        let mut config = config;
        configure(&mut config);
        let service = TestIngest::spawn_with_clock(config.clone(), options.clock);
        Self {
            clock: options.clock,
            url: service.url(),
            service,
            brokers: options.brokers,
            ipp_topic: config.ipp_topic,
            other_topic: config.other_topic,
            secrets,
        }
    }

    /// Fresh topics (unless `options` names the ipp topic) and secrets, and the config of
    /// an ingest on them.
    pub async fn config(options: &Options) -> (Config, Vec<String>) {
        let ipp_topic = match &options.ipp_topic {
            Some(name) => name.clone(),
            None => kafka::create_topic(&options.brokers, "ipp_events", 4).await,
        };
        let other_topic = kafka::create_topic(&options.brokers, "kustom_events", 2).await;
        let secrets: Vec<String> = (0..options.secrets)
            .map(|_| Signer::random_secret())
            .collect();
        let config = ingest_config(&options.brokers, &ipp_topic, &other_topic, &secrets);
        (config, secrets)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = reqwest::get(format!("{}/metrics", self.url)).await;
        response
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn signer(&self) -> Signer {
        Signer::new(&self.secrets[0])
    }

    /// Signs `body` with the first secret at what ingest's clock reads now.
    pub fn sign(&self, body: &[u8]) -> Signed {
        let webhook_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        self.signer().sign_at(&webhook_id, self.clock.now(), body)
    }

    pub async fn post_signed(&self, body: &[u8]) -> reqwest::Response {
        let signed = self.sign(body);
        self.post(body, Some(&signed)).await
    }

    /// The value of an unlabelled metric (a gauge), or of the sum of a metric's samples
    /// whose labels contain `labels`.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Opens a raw connection to ingest.
    pub async fn connect(&self) -> RawConnection {
        RawConnection::open(self.service.addr).await
    }

    pub async fn post(&self, body: &[u8], signed: Option<&Signed>) -> reqwest::Response {
        post_webhook(&self.url, body, signed).await
    }

    pub fn ipp_records(&self) -> Vec<Record> {
        kafka::read_topic(&self.brokers, &self.ipp_topic)
    }

    pub fn other_records(&self) -> Vec<Record> {
        kafka::read_topic(&self.brokers, &self.other_topic)
    }

    pub fn nothing_stored(&self) {
        assert!(
            self.ipp_records().is_empty(),
            "something reached the ipp topic"
        );
        assert!(
            self.other_records().is_empty(),
            "something reached the other topic"
        );
    }
}

/// POSTs `body` as JSON to `<base_url>/webhooks/kustom` with the headers of `signed`.
pub async fn post_webhook(
    base_url: &str,
    body: &[u8],
    signed: Option<&Signed>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{base_url}/webhooks/kustom"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in signed.map(Signed::headers).into_iter().flatten() {
        request = request.header(name, value);
    }
    request.send().await.expect("request")
}

/// The head of `POST /webhooks/kustom` with the headers of `signed`, declaring
/// `content_length` (none: the caller adds its own framing headers), ending with the
/// blank line.
pub fn request_head(signed: &Signed, content_length: Option<usize>) -> String {
    let mut head = String::from(
        "POST /webhooks/kustom HTTP/1.1\r\nhost: ingest\r\ncontent-type: application/json\r\n",
    );
    if let Some(length) = content_length {
        head.push_str(&format!("content-length: {length}\r\n"));
    }
    for (name, value) in signed.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// One HTTP/1.1 connection written and read by hand.
pub struct RawConnection {
    stream: TcpStream,
    received: Vec<u8>,
}

/// What came back on a [`RawConnection`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to ingest");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            received: Vec::new(),
        }
    }

    /// Writes `bytes`; `false` when the server has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Closes the sending half: the server reads the end of the stream.
    pub async fn finish_sending(&mut self) {
        self.stream
            .shutdown()
            .await
            .expect("shutdown the write half");
    }

    /// Reads one response (framed by its `content-length`) within `within`; `None` if
    /// the server closed the connection before answering. A response that does not come
    /// within `within` fails the test.
    pub async fn response(&mut self, within: Duration) -> Option<RawResponse> {
        let read = tokio::time::timeout(within, self.next_response()).await;
        read.unwrap_or_else(|_| panic!("no response within {within:?}"))
    }

    /// The next response, however long it takes (cancel-safe: bytes read are kept); `None`
    /// if the server closed the connection first.
    pub async fn next_response(&mut self) -> Option<RawResponse> {
        loop {
            if let Some(response) = self.parse_response() {
                return Some(response);
            }
            let mut buffer = [0u8; 4096];
            match self.stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.received.extend_from_slice(&buffer[..n]),
            }
        }
    }

    fn parse_response(&mut self) -> Option<RawResponse> {
        let end = self.received.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.received[..end]).into_owned();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if self.received.len() < end + length {
            return None;
        }
        let body = self.received[end..end + length].to_vec();
        self.received.drain(..end + length);
        Some(RawResponse { status, head, body })
    }

    /// If the server closes the connection (end of stream, or a reset) within `within`,
    /// what it sent before (not yet read as a response).
    pub async fn closed_within(&mut self, within: Duration) -> Option<Vec<u8>> {
        let closed = async {
            let mut buffer = [0u8; 4096];
            loop {
                match self.stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.received.extend_from_slice(&buffer[..n]),
                }
            }
        };
        tokio::time::timeout(within, closed).await.ok()?;
        Some(std::mem::take(&mut self.received))
    }

    /// Drops the connection with a reset, as a client that crashed or lost its network.
    pub fn reset(self) {
        // Deprecated because a non-zero linger blocks on drop; zero does not.
        #[allow(deprecated)]
        self.stream
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(self.stream);
    }
}
