//! An in-process `ipp-ingest` with topics and webhook secrets of its own, and the
//! requests the tests send it.

use ipp_ingest::Config;

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
}

/// What [`Ingest::start_with`] creates around the service.
pub struct Options {
    pub brokers: String,
    /// The ipp topic's name, when it is not one created for the test.
    pub ipp_topic: Option<String>,
    /// How many webhook secrets ingest accepts.
    pub secrets: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            brokers: kafka::brokers(),
            ipp_topic: None,
            secrets: 1,
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
        let service = TestIngest::spawn(config.clone());
        Self {
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

    pub async fn post_signed(&self, body: &[u8]) -> reqwest::Response {
        let signed = self.signer().sign(body);
        self.post(body, Some(&signed)).await
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
