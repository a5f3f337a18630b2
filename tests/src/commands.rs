//! The commands API as the tests talk to it: a configured token, a client that sends
//! exactly what a test asks (headers, raw bodies), and what the log and the ledger hold.

use std::time::Duration;

use reqwest::{header::HeaderMap, Client, Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use crate::{actions::Fixture, eventually::eventually, kafka};

/// The token the tests configure, as `ACTIONS_API_TOKENS` takes it: `NAME:TOKEN`.
pub const TOKEN_ENTRY: &str = "backoffice:test-token-backoffice-0123456789";
/// Its name: the scope of its Idempotency-Keys.
pub const TOKEN_NAME: &str = "backoffice";
/// What a client sends after `Bearer `.
pub const TOKEN: &str = "test-token-backoffice-0123456789";

/// `config` with the commands API on (the test token).
pub fn with_api(config: &mut ipp_actions::Config) {
    config.api_tokens = vec![ipp_service::Secret::new(TOKEN_ENTRY)];
}

/// An answer: status, headers, and the body as JSON (`Null` when it is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The `error` code of a refusal.
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }

    pub fn command_id(&self) -> Uuid {
        let id = self.body["command_id"].as_str();
        let id = id.unwrap_or_else(|| panic!("no command_id in {self:?}"));
        id.parse().expect("a uuid")
    }
}

/// A client of one ipp-actions' commands API.
pub struct CommandsClient {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub client: Client,
}

impl CommandsClient {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            client: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    /// Sends `method path` with exactly `headers` and `body`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("a body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A well-formed POST with the test token and, when given, an Idempotency-Key.
    pub async fn post(&self, path: &str, key: Option<&str>, body: Option<&Value>) -> Answer {
        let bearer = format!("Bearer {TOKEN}");
        let mut headers = vec![("authorization", bearer.as_str())];
        if let Some(key) = key {
            headers.push(("idempotency-key", key));
        }
        let body = body.map(|b| serde_json::to_vec(b).expect("json"));
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        self.send(Method::POST, path, &headers, body).await
    }

    /// `POST /v1/orders/{order}/{what}` (`captures`, `refunds`, `cancel`,
    /// `release-remaining-authorization`), expecting 202; the command id.
    pub async fn issue(&self, order: Uuid, what: &str, key: &str, body: Option<&Value>) -> Uuid {
        let answer = self
            .post(&format!("/v1/orders/{order}/{what}"), Some(key), body)
            .await;
        assert_eq!(
            answer.status,
            StatusCode::ACCEPTED,
            "{what} of {order}: {answer:?}"
        );
        answer.command_id()
    }

    /// A cancel of a fresh order with a fresh key, expecting 202: the API still works
    /// after a refusal. The command id.
    pub async fn assert_still_accepts(&self) -> Uuid {
        let key = Uuid::new_v4().to_string();
        self.issue(Uuid::new_v4(), "cancel", &key, None).await
    }

    /// `GET /v1/commands/{id}` with the test token.
    pub async fn command(&self, id: Uuid) -> Answer {
        let bearer = format!("Bearer {TOKEN}");
        self.send(
            Method::GET,
            &format!("/v1/commands/{id}"),
            &[("authorization", bearer.as_str())],
            None,
        )
        .await
    }

    /// Waits until command `id` is no longer pending; its state.
    pub async fn settled(&self, id: Uuid, within: Duration) -> Value {
        eventually(within, &format!("command {id} settled"), || async {
            let answer = self.command(id).await;
            answer.status == StatusCode::OK
                && answer.body["status"]
                    .as_str()
                    .is_some_and(|s| s != "pending")
        })
        .await;
        self.command(id).await.body
    }
}

impl Fixture {
    /// The records of the commands topic.
    pub fn commands_in_log(&self) -> Vec<kafka::Record> {
        kafka::read_topic(&self.brokers, &self.commands_topic)
    }

    /// Rows of `ipp_command_requests`: what the API accepted or is accepting.
    pub async fn command_requests(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM ipp_command_requests")
            .fetch_one(&self.pool)
            .await
            // Not 0 on an error: a refusal test would pass without looking.
            .expect("count ipp_command_requests")
    }

    /// Asserts a refusal left no trace: nothing in the commands topic, no request row.
    pub async fn assert_nothing_issued(&self, what: &str) {
        let log = self.commands_in_log();
        assert!(
            log.is_empty(),
            "{what}: {} command(s) in the log",
            log.len()
        );
        assert_eq!(
            self.command_requests().await,
            0,
            "{what}: a row in ipp_command_requests"
        );
    }
}

/// Asserts `answer` is the refusal `status` `code` with a message containing `says`.
pub fn assert_refused(answer: &Answer, status: StatusCode, code: &str, says: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.error(), code, "{answer:?}");
    let message = answer.body["message"].as_str().unwrap_or_default();
    assert!(
        message.to_lowercase().contains(&says.to_lowercase()),
        "the message should say {says:?}: {answer:?}"
    );
}
