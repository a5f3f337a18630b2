//! Several Kustom accounts in one deployment, from one accounts file: ipp-ingest verifies
//! each webhook with the secrets of the account its `merchant_id` names (and only
//! those), ipp-actions calls Order Management with the key of each order's account (the
//! simulator records which account each call came from), and a commands API token
//! limited to one account neither commands nor reads another account's orders.

use std::{path::PathBuf, time::Duration};

use ipp_service::Secret;
use ipp_tests::{
    actions::Fixture,
    commands::{self, Answer, CommandsClient},
    eventually::eventually,
    inprocess::{ingest_config, TestActions, TestIngest},
    kafka,
    signer::Signer,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const ACCOUNT_A: &str = "DM_ACCOUNT_A";
const ACCOUNT_B: &str = "DM_ACCOUNT_B";
const KEY_A: &str = "kco_test_account_a";
const KEY_B: &str = "kco_test_account_b";
/// The commands API token the accounts file limits to account A.
const STORE_A_TOKEN: &str = "test-token-store-a-0123456789";

/// Two accounts with their own secrets and keys, in a fresh accounts file, and the
/// simulator knowing both keys (and a third, its default account's, that nobody uses).
struct Accounts {
    fixture: Fixture,
    other_topic: String,
    secret_a: String,
    secret_b: String,
    file: PathBuf,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Accounts {
    async fn new() -> Self {
        let fixture = Fixture::new(2, |sim| {
            sim.accounts = vec![
                ipp_om_sim::SimAccount::new(ACCOUNT_A, KEY_A),
                ipp_om_sim::SimAccount::new(ACCOUNT_B, KEY_B),
            ];
        })
        .await;
        let other_topic = kafka::create_topic(&fixture.brokers, "kustom_other", 1).await;
        let (secret_a, secret_b) = (Signer::random_secret(), Signer::random_secret());
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("accounts.toml");
        let text = format!(
            "[accounts.{ACCOUNT_A}]\nwebhook_secrets = [\"{secret_a}\"]\napi_key = \"{KEY_A}\"\n\n\
             [accounts.{ACCOUNT_B}]\nwebhook_secrets = [\"{secret_b}\"]\napi_key = \"{KEY_B}\"\n\n\
             [api_tokens.store-a]\ntoken = \"{STORE_A_TOKEN}\"\naccounts = [\"{ACCOUNT_A}\"]\n"
        );
        std::fs::write(&file, text).expect("write the accounts file");
        Self {
            fixture,
            other_topic,
            secret_a,
            secret_b,
            file,
            _dir: dir,
            client: reqwest::Client::new(),
        }
    }

    /// ipp-ingest with the accounts file and `default_secrets` (KUSTOM_WEBHOOK_SECRETS).
    fn ingest(&self, default_secrets: &[String]) -> TestIngest {
        let mut config = ingest_config(
            &self.fixture.brokers,
            &self.fixture.topic,
            &self.other_topic,
            default_secrets,
        );
        config.accounts_file = Some(self.file.clone());
        TestIngest::spawn(config)
    }

    /// ipp-actions with the accounts file and no default key: each order must be sent
    /// with its own account's key.
    fn actions(&self, configure: impl FnOnce(&mut ipp_actions::Config)) -> TestActions {
        let config = self.fixture.actions_config("accounts", |config| {
            config.kustom_api_key = Secret::new("");
            config.accounts_file = Some(self.file.clone());
            configure(config);
        });
        TestActions::spawn(config)
    }

    /// Posts `body` signed with `secret`; the status and the JSON answer.
    async fn post(&self, ingest: &TestIngest, body: &[u8], secret: &str) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("{}/webhooks/kustom", ingest.url()))
            .body(body.to_vec());
        for (name, value) in Signer::new(secret).sign(body).headers() {
            request = request.header(name, value);
        }
        let response = request.send().await.expect("ingest answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The simulator's calls on `order`, with the account each came from.
    async fn calls_of(&self, order: Uuid) -> Vec<Value> {
        let calls = self.fixture.calls().await;
        calls
            .into_iter()
            .filter(|c| {
                c["path"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&order.to_string())
            })
            .collect()
    }

    /// Every call on `order` came with `account`'s key, and one of them captured.
    async fn assert_captured_as(&self, order: Uuid, account: &str) {
        let calls = self.calls_of(order).await;
        assert!(
            calls.iter().any(|c| c["method"] == "POST"
                && c["path"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("/captures")
                && c["status"] == 201),
            "{order} captured: {calls:#?}"
        );
        for call in &calls {
            assert_eq!(call["account"], json!(account), "{order}: {call}");
        }
        let captures = self.fixture.sim.captures_by_order().await;
        assert_eq!(captures.get(&order), Some(&1), "captures of {order}");
        let row = merchant_of_rows(&self.fixture, order).await;
        assert!(
            row.iter().all(|m| m.as_deref() == Some(account)),
            "ledger rows of {order} name {account}: {row:?}"
        );
    }
}

/// A finalized session's webhook naming `merchant` (none when `None`).
fn finalized(merchant: Option<&str>, order: Uuid) -> Vec<u8> {
    let mut body = json!({
        "id": format!("kevt_{}", Uuid::new_v4().simple()),
        "timestamp": "2026-06-05T18:00:00Z",
        "type": "ipp.session.finalized",
        "data": {"session_id": Uuid::new_v4(), "order_id": order, "failure_reason": null}
    });
    if let Some(merchant) = merchant {
        body["merchant_id"] = json!(merchant);
    }
    body.to_string().into_bytes()
}

async fn merchant_of_rows(fixture: &Fixture, order: Uuid) -> Vec<Option<String>> {
    sqlx::query_scalar("SELECT merchant_id FROM ipp_actions WHERE order_id = $1")
        .bind(order)
        .fetch_all(&fixture.pool)
        .await
        .expect("ledger rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_each_captured_with_its_own_key_and_a_webhook_signed_by_the_other_refused() {
    let deployment = Accounts::new().await;
    let ingest = deployment.ingest(&[]);
    let actions = deployment.actions(|_| {});
    let (order_a, order_b) = (Uuid::new_v4(), Uuid::new_v4());
    let (secret_a, secret_b) = (&deployment.secret_a, &deployment.secret_b);

    let (status, answer) = deployment
        .post(&ingest, &finalized(Some(ACCOUNT_A), order_a), secret_a)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "A's webhook with A's secret: {answer}"
    );
    let (status, answer) = deployment
        .post(&ingest, &finalized(Some(ACCOUNT_B), order_b), secret_b)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "B's webhook with B's secret: {answer}"
    );

    // Each refusal is 401 with its reason, and appends nothing.
    let forged = Uuid::new_v4();
    let not_in_file = Uuid::new_v4();
    let no_account = Uuid::new_v4();
    let refused = [
        (
            "A's webhook signed with B's secret",
            finalized(Some(ACCOUNT_A), forged),
            secret_b,
            "no_match",
        ),
        (
            "an account not in the file, no default secrets",
            finalized(Some("DM_OTHER"), not_in_file),
            secret_a,
            "unknown_account",
        ),
        (
            "no merchant_id, no default secrets",
            finalized(None, no_account),
            secret_a,
            "unknown_account",
        ),
    ];
    for (what, body, secret, reason) in &refused {
        let (status, answer) = deployment.post(&ingest, body, secret).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {answer}");
        assert_eq!(answer["error"], "invalid_signature", "{what}: {answer}");
        assert_eq!(answer["reason"], json!(reason), "{what}: {answer}");
    }
    let stored = kafka::read_topic(&deployment.fixture.brokers, &deployment.fixture.topic);
    assert_eq!(
        stored.len(),
        2,
        "only the two accepted webhooks are in the log"
    );
    assert!(kafka::read_topic(&deployment.fixture.brokers, &deployment.other_topic).is_empty());

    let fixture = &deployment.fixture;
    fixture
        .wait_for_status(order_a, "succeeded", "A's order captured")
        .await;
    fixture
        .wait_for_status(order_b, "succeeded", "B's order captured")
        .await;
    deployment.assert_captured_as(order_a, ACCOUNT_A).await;
    deployment.assert_captured_as(order_b, ACCOUNT_B).await;
    for order in [forged, not_in_file, no_account] {
        assert!(
            deployment.calls_of(order).await.is_empty(),
            "{order} never sent"
        );
        assert_eq!(
            fixture.status_of(order).await,
            "",
            "{order} not in the ledger"
        );
    }

    // What another account sees of A's order: nothing (as a real other account would).
    let response = deployment
        .client
        .get(fixture.sim.order_url(&order_a.to_string()))
        .basic_auth("merchant", Some(KEY_B))
        .send()
        .await
        .expect("simulator answers");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error_code"], "NO_SUCH_ORDER", "{body}");

    actions.stop().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_not_in_the_file_fall_back_to_the_default_secrets() {
    let deployment = Accounts::new().await;
    let default_secret = Signer::random_secret();
    let ingest = deployment.ingest(std::slice::from_ref(&default_secret));

    // Not in the file, or naming none: the default secrets verify it.
    for body in [
        finalized(Some("DM_OTHER"), Uuid::new_v4()),
        finalized(None, Uuid::new_v4()),
    ] {
        let (status, answer) = deployment.post(&ingest, &body, &default_secret).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    // An account of the file: only its own secrets, not the default ones.
    let body = finalized(Some(ACCOUNT_A), Uuid::new_v4());
    let (status, answer) = deployment.post(&ingest, &body, &default_secret).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer["reason"], "no_match", "{answer}");
    let (status, answer) = deployment.post(&ingest, &body, &deployment.secret_a).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let stored = kafka::read_topic(&deployment.fixture.brokers, &deployment.fixture.topic);
    assert_eq!(stored.len(), 3);
    ingest.stop().await;
}

/// A request with the store token of account A.
async fn as_store(api: &CommandsClient, method: Method, path: &str) -> Answer {
    let bearer = format!("Bearer {STORE_A_TOKEN}");
    let headers = [("authorization", bearer.as_str())];
    api.send(method, path, &headers, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_limited_to_account_a_cannot_command_or_read_account_b_orders() {
    let deployment = Accounts::new().await;
    let actions = deployment.actions(|config| {
        config.capture_policy = Some(ipp_actions::CapturePolicy::OnCommand);
        commands::with_api(config);
    });
    let fixture = &deployment.fixture;
    let api = CommandsClient::new(&actions.url());
    let (order_a, order_b) = (Uuid::new_v4(), Uuid::new_v4());
    fixture
        .producer
        .send_events(&[
            finalized(Some(ACCOUNT_A), order_a),
            finalized(Some(ACCOUNT_B), order_b),
        ])
        .await;
    fixture
        .wait_for_status(order_a, "skipped", "A's session recorded")
        .await;
    fixture
        .wait_for_status(order_b, "skipped", "B's session recorded")
        .await;

    // Its own account's order: commanded, and captured with A's key.
    let answer = as_store(
        &api,
        Method::POST,
        &format!("/v1/orders/{order_a}/captures"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    let command_a = answer.command_id();
    let settled = api.settled(command_a, Duration::from_secs(30)).await;
    assert_eq!(settled["status"], "succeeded", "{settled}");
    deployment.assert_captured_as(order_a, ACCOUNT_A).await;
    let log_before = fixture.commands_in_log().len();

    // B's order and an order nobody knows get the same answer, and nothing is appended.
    let unknown = Uuid::new_v4();
    for order in [order_b, unknown] {
        let answer = as_store(&api, Method::POST, &format!("/v1/orders/{order}/captures")).await;
        commands::assert_refused(&answer, StatusCode::NOT_FOUND, "no_such_order", "no order");
        let answer = as_store(&api, Method::GET, &format!("/v1/orders/{order}/commands")).await;
        commands::assert_refused(&answer, StatusCode::NOT_FOUND, "no_such_order", "no order");
    }
    assert_eq!(
        fixture.commands_in_log().len(),
        log_before,
        "nothing appended"
    );

    // The unlimited token commands B's order, captured with B's key; the store token
    // cannot see that command, as if it did not exist.
    let command_b = api.issue(order_b, "captures", "capture-b", None).await;
    let settled = api.settled(command_b, Duration::from_secs(30)).await;
    assert_eq!(settled["status"], "succeeded", "{settled}");
    deployment.assert_captured_as(order_b, ACCOUNT_B).await;
    let answer = as_store(&api, Method::GET, &format!("/v1/commands/{command_b}")).await;
    commands::assert_refused(
        &answer,
        StatusCode::NOT_FOUND,
        "no_such_command",
        "no command",
    );
    let answer = as_store(&api, Method::GET, &format!("/v1/commands/{command_a}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = as_store(&api, Method::GET, &format!("/v1/orders/{order_a}/commands")).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(
        answer.body["commands"].as_array().map(Vec::len),
        Some(1),
        "{answer:?}"
    );
    assert_eq!(api.command(command_b).await.status, StatusCode::OK);

    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_before_its_session_waits_for_the_account_then_uses_its_key() {
    let deployment = Accounts::new().await;
    let actions = deployment.actions(|config| {
        config.capture_policy = Some(ipp_actions::CapturePolicy::OnCommand);
        commands::with_api(config);
    });
    let fixture = &deployment.fixture;
    let api = CommandsClient::new(&actions.url());
    let order = Uuid::new_v4();

    // No session yet, no default key: the command waits, saying why, and sends nothing.
    let command = api.issue(order, "captures", "early-capture", None).await;
    eventually(
        Duration::from_secs(30),
        "the command waits for a key",
        || async {
            let last_error: Option<String> = sqlx::query_scalar(
                "SELECT last_error FROM ipp_actions WHERE command_id = $1 AND status = 'pending'",
            )
            .bind(command)
            .fetch_optional(&fixture.pool)
            .await
            .ok()
            .flatten()
            .flatten();
            last_error.is_some_and(|e| e.contains("account is not known"))
        },
    )
    .await;
    assert!(
        deployment.calls_of(order).await.is_empty(),
        "nothing sent without a key"
    );

    // Its finalized session names account B: the command takes it and B's key.
    fixture
        .producer
        .send_events(&[finalized(Some(ACCOUNT_B), order)])
        .await;
    let settled = api.settled(command, Duration::from_secs(30)).await;
    assert_eq!(settled["status"], "succeeded", "{settled}");
    deployment.assert_captured_as(order, ACCOUNT_B).await;
    actions.stop().await;
}
