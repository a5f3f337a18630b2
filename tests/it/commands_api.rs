//! The commands API's bad-input matrix, one case a test: what each refusal answers
//! (status, `error`, a message that says why), that it appended nothing to the commands
//! topic and stored no request, and that a good request right after is still accepted.
//! The idempotency and token-scope rules are here too. In-process `ipp-actions`, a real
//! broker and real PostgreSQL.

use std::time::Duration;

use ipp_service::Secret;
use ipp_tests::{
    actions::{Actions, Fixture},
    commands::{assert_refused, with_api, Answer, CommandsClient, TOKEN},
    eventually::eventually,
    kafka, unique_name,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// 2^53, the largest amount.
const MAX_AMOUNT: i64 = 9_007_199_254_740_992;

struct Setup {
    fx: Fixture,
    actions: Actions,
    api: CommandsClient,
}

/// A fixture and `ipp-actions` with the commands API on (the test token), after
/// `configure`.
async fn setup_with(configure: impl FnOnce(&mut ipp_actions::Config)) -> Setup {
    let fx = Fixture::new(1, |_| {}).await;
    let actions = fx.start_actions(&unique_name("actions"), |config| {
        with_api(config);
        configure(config);
    });
    let api = CommandsClient::new(&actions.url());
    Setup { fx, actions, api }
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn json_headers(bearer: &str) -> Vec<(&str, &str)> {
    vec![
        ("authorization", bearer),
        ("content-type", "application/json"),
    ]
}

fn key() -> String {
    Uuid::new_v4().to_string()
}

impl Setup {
    /// `answer` is the refusal `status` `code` saying `says`; it left nothing behind, and
    /// a good request right after is accepted, the only command there is then.
    async fn assert_harmless_refusal(
        &self,
        answer: &Answer,
        status: StatusCode,
        code: &str,
        says: &str,
    ) {
        assert_refused(answer, status, code, says);
        self.fx.assert_nothing_issued(code).await;
        let good = self.api.assert_still_accepts().await;
        let log = self.fx.commands_in_log();
        assert_eq!(log.len(), 1, "after the good request: {log:?}");
        assert_eq!(self.fx.command_requests().await, 1);
        assert_eq!(self.api.command(good).await.status, StatusCode::OK);
    }

    async fn refund(&self, body: &[u8]) -> Answer {
        let bearer = bearer();
        let order = Uuid::new_v4();
        self.api
            .send(
                Method::POST,
                &format!("/v1/orders/{order}/refunds"),
                &json_headers(&bearer),
                Some(body.to_vec()),
            )
            .await
    }

    /// A refund with `body` is refused as invalid_request, the message saying `says`.
    async fn assert_refund_invalid(&self, body: &str, says: &str) {
        let answer = self.refund(body.as_bytes()).await;
        self.assert_harmless_refusal(
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            says,
        )
        .await;
    }

    async fn stop(self) {
        self.actions.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// Routes and ids.

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_route_under_v1_is_404_not_found() {
    let s = setup().await;
    let order = Uuid::new_v4();
    let bearer = bearer();
    let answer = s
        .api
        .send(
            Method::POST,
            &format!("/v1/orders/{order}/voids"),
            &json_headers(&bearer),
            Some(b"{}".to_vec()),
        )
        .await;
    s.assert_harmless_refusal(&answer, StatusCode::NOT_FOUND, "not_found", "voids")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_on_a_post_route_is_405_method_not_allowed() {
    let s = setup().await;
    let order = Uuid::new_v4();
    let bearer = bearer();
    let answer = s
        .api
        .send(
            Method::GET,
            &format!("/v1/orders/{order}/captures"),
            &[("authorization", bearer.as_str())],
            None,
        )
        .await;
    s.assert_harmless_refusal(
        &answer,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "GET",
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_id_that_is_not_a_uuid_is_400_invalid_order_id() {
    let s = setup().await;
    let answer = s
        .api
        .post("/v1/orders/order-42/captures", Some(&key()), None)
        .await;
    s.assert_harmless_refusal(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_order_id",
        "order-42",
    )
    .await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Authentication.

/// A 401 challenges for a bearer token and never echoes what was sent.
fn assert_unauthorized(answer: &Answer, sent: Option<&str>) {
    assert_eq!(
        answer.headers.get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..]),
        "{answer:?}"
    );
    if let Some(sent) = sent {
        let whole = format!("{:?} {}", answer.headers, answer.body);
        assert!(!whole.contains(sent), "the 401 shows the token: {whole}");
        assert!(!whole.contains(TOKEN), "the 401 shows our token: {whole}");
    }
}

async fn capture_with(s: &Setup, authorization: Option<&str>) -> Answer {
    let order = Uuid::new_v4();
    let mut headers = vec![("content-type", "application/json")];
    if let Some(authorization) = authorization {
        headers.push(("authorization", authorization));
    }
    s.api
        .send(
            Method::POST,
            &format!("/v1/orders/{order}/captures"),
            &headers,
            Some(b"{}".to_vec()),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_authorization_is_401_unauthorized() {
    let s = setup().await;
    let answer = capture_with(&s, None).await;
    assert_unauthorized(&answer, None);
    s.assert_harmless_refusal(&answer, StatusCode::UNAUTHORIZED, "unauthorized", "missing")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_token_is_401_unauthorized_and_not_echoed() {
    let s = setup().await;
    let guess = "guessed-token-5f2c9a7e1b";
    let answer = capture_with(&s, Some(&format!("Bearer {guess}"))).await;
    assert_unauthorized(&answer, Some(guess));
    s.assert_harmless_refusal(&answer, StatusCode::UNAUTHORIZED, "unauthorized", "unknown")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_basic_scheme_is_401_unauthorized_even_with_our_token() {
    let s = setup().await;
    let answer = capture_with(&s, Some(&format!("Basic {TOKEN}"))).await;
    assert_unauthorized(&answer, Some(TOKEN));
    s.assert_harmless_refusal(&answer, StatusCode::UNAUTHORIZED, "unauthorized", "Bearer")
        .await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Refund amounts.

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_without_an_amount_is_422() {
    let s = setup().await;
    s.assert_refund_invalid(r#"{"reference": "r-1"}"#, "amount")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_of_zero_is_422() {
    let s = setup().await;
    s.assert_refund_invalid(r#"{"amount": 0}"#, "between 1 and")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_negative_refund_is_422() {
    let s = setup().await;
    s.assert_refund_invalid(r#"{"amount": -500}"#, "between 1 and")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fractional_refund_is_422() {
    let s = setup().await;
    s.assert_refund_invalid(r#"{"amount": 5.5}"#, "whole number")
        .await;
    s.stop().await;
}

/// 5.0 is a whole value but not a whole number of minor units as JSON writes them.
#[tokio::test(flavor = "multi_thread")]
async fn a_refund_of_5_point_0_is_422() {
    let s = setup().await;
    s.assert_refund_invalid(r#"{"amount": 5.0}"#, "whole number")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_above_2_pow_53_is_422() {
    let s = setup().await;
    s.assert_refund_invalid(r#"{"amount": 9007199254740993}"#, "between 1 and")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_amount_as_a_string_is_422() {
    let s = setup().await;
    s.assert_refund_invalid(r#"{"amount": "500"}"#, "must be a number")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_of_exactly_2_pow_53_is_accepted_as_sent() {
    let s = setup().await;
    let answer = s.refund(br#"{"amount": 9007199254740992}"#).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    assert_eq!(answer.body["amount"], json!(MAX_AMOUNT), "{answer:?}");
    let log = s.fx.commands_in_log();
    assert_eq!(log.len(), 1, "{log:?}");
    let record: Value = serde_json::from_slice(&log[0].value).expect("the command record is JSON");
    assert_eq!(record["amount"], json!(MAX_AMOUNT), "{record}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Strict bodies.

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_field_is_422() {
    let s = setup().await;
    s.assert_refund_invalid(r#"{"amount": 500, "currency": "EUR"}"#, "`currency`")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_with_an_amount_is_422() {
    let s = setup().await;
    let order = Uuid::new_v4();
    let answer = s
        .api
        .post(
            &format!("/v1/orders/{order}/cancel"),
            Some(&key()),
            Some(&json!({"amount": 500})),
        )
        .await;
    s.assert_harmless_refusal(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "`amount`",
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_one_byte_over_16_kib_is_413() {
    let s = setup().await;
    // Valid JSON, so only its size can be the reason.
    let mut body = br#"{"amount": 500, "description": ""#.to_vec();
    let tail = br#""}"#;
    body.resize(16 * 1024 + 1 - tail.len(), b'x');
    body.extend_from_slice(tail);
    assert_eq!(body.len(), 16 * 1024 + 1);
    let answer = s.refund(&body).await;
    s.assert_harmless_refusal(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "16384",
    )
    .await;
    s.stop().await;
}

/// The limit is 16 KiB exactly: a body of that size is read (JSON padded with spaces).
#[tokio::test(flavor = "multi_thread")]
async fn a_body_of_exactly_16_kib_is_accepted() {
    let s = setup().await;
    let mut body = br#"{"amount": 500"#.to_vec();
    body.resize(16 * 1024 - 1, b' ');
    body.push(b'}');
    let answer = s.refund(&body).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    assert_eq!(answer.body["amount"], 500, "{answer:?}");
    assert_eq!(s.fx.commands_in_log().len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_body_sent_as_text_plain_is_415() {
    let s = setup().await;
    let order = Uuid::new_v4();
    let bearer = bearer();
    let answer = s
        .api
        .send(
            Method::POST,
            &format!("/v1/orders/{order}/refunds"),
            &[
                ("authorization", bearer.as_str()),
                ("content-type", "text/plain"),
            ],
            Some(br#"{"amount": 500}"#.to_vec()),
        )
        .await;
    s.assert_harmless_refusal(
        &answer,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "application/json",
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn application_json_with_a_charset_is_accepted() {
    let s = setup().await;
    let order = Uuid::new_v4();
    let bearer = bearer();
    let answer = s
        .api
        .send(
            Method::POST,
            &format!("/v1/orders/{order}/refunds"),
            &[
                ("authorization", bearer.as_str()),
                ("content-type", "Application/JSON; charset=utf-8"),
            ],
            Some(br#"{"amount": 500}"#.to_vec()),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    assert_eq!(s.fx.commands_in_log().len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_is_not_json_is_400_invalid_json() {
    let s = setup().await;
    let answer = s.refund(b"amount=500").await;
    s.assert_harmless_refusal(&answer, StatusCode::BAD_REQUEST, "invalid_json", "not JSON")
        .await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Idempotency-Key.

async fn cancel_with_key(s: &Setup, key: &str) -> Answer {
    let order = Uuid::new_v4();
    s.api
        .post(&format!("/v1/orders/{order}/cancel"), Some(key), None)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_of_256_characters_is_400() {
    let s = setup().await;
    let answer = cancel_with_key(&s, &"k".repeat(256)).await;
    s.assert_harmless_refusal(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
        "longer than 255",
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_with_a_space_inside_is_400() {
    let s = setup().await;
    let answer = cancel_with_key(&s, "order 17").await;
    s.assert_harmless_refusal(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
        "without spaces",
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_of_255_characters_is_accepted() {
    let s = setup().await;
    let key = "k".repeat(255);
    let answer = cancel_with_key(&s, &key).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    let log = s.fx.commands_in_log();
    assert_eq!(log.len(), 1, "{log:?}");
    let record: Value = serde_json::from_slice(&log[0].value).expect("the command record is JSON");
    assert_eq!(record["idempotency_key"], json!(key), "{record}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_idempotency_key_is_400() {
    let s = setup().await;
    let answer = cancel_with_key(&s, "").await;
    s.assert_harmless_refusal(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
        "empty",
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_with_a_different_body_is_422_idempotency_key_reused() {
    let s = setup().await;
    let order = Uuid::new_v4();
    let path = format!("/v1/orders/{order}/refunds");
    let first = s
        .api
        .post(&path, Some("refund-1"), Some(&json!({"amount": 500})))
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    let other = s
        .api
        .post(&path, Some("refund-1"), Some(&json!({"amount": 600})))
        .await;
    assert_refused(
        &other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "refund-1",
    );
    // Only the first is in the log, and it is the first's amount.
    let log = s.fx.commands_in_log();
    assert_eq!(log.len(), 1, "{log:?}");
    let record: Value = serde_json::from_slice(&log[0].value).expect("the command record is JSON");
    assert_eq!(record["command_id"], first.body["command_id"], "{record}");
    assert_eq!(record["amount"], 500, "{record}");
    assert_eq!(s.fx.command_requests().await, 1);
    s.api.assert_still_accepts().await;
    assert_eq!(s.fx.commands_in_log().len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_with_the_same_body_is_the_same_command_once() {
    let s = setup().await;
    let order = Uuid::new_v4();
    let body = json!({"amount": 500, "reference": "r-1"});
    let first = s.api.issue(order, "refunds", "refund-1", Some(&body)).await;
    let again = s
        .api
        .post(
            &format!("/v1/orders/{order}/refunds"),
            Some("refund-1"),
            Some(&body),
        )
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{again:?}");
    assert_eq!(again.command_id(), first);
    assert_eq!(
        again.headers.get("location").map(|v| v.to_str().unwrap()),
        Some(format!("/v1/commands/{first}").as_str())
    );
    assert_eq!(s.fx.commands_in_log().len(), 1);
    assert_eq!(s.fx.command_requests().await, 1);
    s.stop().await;
}

async fn cancel_as(s: &Setup, token: &str, order: Uuid, key: &str) -> Answer {
    let bearer = format!("Bearer {token}");
    s.api
        .send(
            Method::POST,
            &format!("/v1/orders/{order}/cancel"),
            &[("authorization", bearer.as_str()), ("idempotency-key", key)],
            None,
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_from_two_token_names_is_two_commands() {
    let s = setup_with(|config| {
        config.api_tokens = vec![Secret::new("a:tok-a"), Secret::new("b:tok-b")];
    })
    .await;
    let order = Uuid::new_v4();
    let from_a = cancel_as(&s, "tok-a", order, "cancel-1").await;
    let from_b = cancel_as(&s, "tok-b", order, "cancel-1").await;
    assert_eq!(from_a.status, StatusCode::ACCEPTED, "{from_a:?}");
    assert_eq!(from_b.status, StatusCode::ACCEPTED, "{from_b:?}");
    assert_ne!(from_a.command_id(), from_b.command_id());
    assert_eq!(from_a.body["issued_by"], "a", "{from_a:?}");
    assert_eq!(from_b.body["issued_by"], "b", "{from_b:?}");
    assert_eq!(s.fx.commands_in_log().len(), 2);
    assert_eq!(s.fx.command_requests().await, 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tokens_of_one_name_share_its_keys_across_a_rotation() {
    let s = setup_with(|config| {
        config.api_tokens = vec![Secret::new("pos:tok-old"), Secret::new("pos:tok-new")];
    })
    .await;
    let order = Uuid::new_v4();
    let before = cancel_as(&s, "tok-old", order, "cancel-1").await;
    let after = cancel_as(&s, "tok-new", order, "cancel-1").await;
    assert_eq!(before.status, StatusCode::ACCEPTED, "{before:?}");
    assert_eq!(after.status, StatusCode::ACCEPTED, "{after:?}");
    assert_eq!(before.command_id(), after.command_id());
    assert_eq!(s.fx.commands_in_log().len(), 1);
    assert_eq!(s.fx.command_requests().await, 1);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Reading commands.

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_command_is_404_no_such_command() {
    let s = setup().await;
    let id = Uuid::new_v4();
    let answer = s.api.command(id).await;
    s.assert_harmless_refusal(
        &answer,
        StatusCode::NOT_FOUND,
        "no_such_command",
        &id.to_string(),
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_id_that_is_not_a_uuid_is_400_invalid_command_id() {
    let s = setup().await;
    let bearer = bearer();
    let answer = s
        .api
        .send(
            Method::GET,
            "/v1/commands/not-a-uuid",
            &[("authorization", bearer.as_str())],
            None,
        )
        .await;
    s.assert_harmless_refusal(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_command_id",
        "not-a-uuid",
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_a_command_without_a_token_is_401() {
    let s = setup().await;
    let id = s.api.assert_still_accepts().await;
    let answer = s
        .api
        .send(Method::GET, &format!("/v1/commands/{id}"), &[], None)
        .await;
    assert_refused(&answer, StatusCode::UNAUTHORIZED, "unauthorized", "missing");
    assert_unauthorized(&answer, None);
    assert!(answer.body.get("command_id").is_none(), "{answer:?}");
    assert_eq!(s.api.command(id).await.status, StatusCode::OK);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// The API off, the log down.

#[tokio::test(flavor = "multi_thread")]
async fn without_tokens_the_api_is_off_and_the_probes_answer() {
    let s = setup_with(|config| config.api_tokens.clear()).await;
    let order = Uuid::new_v4();
    let answer = s
        .api
        .post(&format!("/v1/orders/{order}/cancel"), Some(&key()), None)
        .await;
    assert_refused(
        &answer,
        StatusCode::NOT_FOUND,
        "commands_api_off",
        "ACTIONS_API_TOKENS",
    );
    let read = s.api.command(Uuid::new_v4()).await;
    assert_refused(
        &read,
        StatusCode::NOT_FOUND,
        "commands_api_off",
        "ACTIONS_API_TOKENS",
    );
    let health = s.api.send(Method::GET, "/healthz", &[], None).await;
    assert_eq!(health.status, StatusCode::OK, "{health:?}");
    assert!(s.fx.commands_in_log().is_empty());
    s.stop().await;
}

/// The broker refuses the command (the topic takes no record that large): 503 with
/// Retry-After, the request row rolled back; once the broker takes records again, the
/// same request is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_that_refuses_the_command_is_503_log_unavailable_and_stores_nothing() {
    let s = setup_with(|config| config.api_retry_after_secs = 7).await;
    let topic = &s.fx.commands_topic;
    kafka::set_topic_configs(&s.fx.brokers, topic, &[("max.message.bytes", "16")]).await;
    let order = Uuid::new_v4();
    let path = format!("/v1/orders/{order}/refunds");
    let body = json!({"amount": 500});
    let answer = s.api.post(&path, Some("refund-1"), Some(&body)).await;
    assert_refused(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "log_unavailable",
        "try again",
    );
    assert_eq!(
        answer.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"7"[..]),
        "{answer:?}"
    );
    s.fx.assert_nothing_issued("log_unavailable").await;

    kafka::set_topic_configs(&s.fx.brokers, topic, &[("max.message.bytes", "1048588")]).await;
    let retried = s.api.post(&path, Some("refund-1"), Some(&body)).await;
    assert_eq!(retried.status, StatusCode::ACCEPTED, "{retried:?}");
    assert_eq!(s.fx.commands_in_log().len(), 1);
    assert_eq!(s.fx.command_requests().await, 1);
    s.stop().await;
}

/// A child process, for its output: neither a rejected token, nor the configured one,
/// nor one sent with the wrong scheme shows in the answers or the service's logs, while
/// the logs do show the requests were served.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_never_show_in_the_answers_or_the_logs() {
    let fx = Fixture::new(1, |_| {}).await;
    let actions = fx.start_actions_process(&unique_name("actions"), with_api);
    let api = CommandsClient::new(&actions.url());
    let guess = "guessed-token-5f2c9a7e1b";
    let s = Setup { fx, actions, api };
    for authorization in [format!("Bearer {guess}"), format!("Basic {TOKEN}")] {
        let answer = capture_with(&s, Some(&authorization)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
        assert_unauthorized(&answer, Some(guess));
    }
    let accepted = s.api.assert_still_accepts().await;
    let Actions::Process { service, .. } = &s.actions else {
        unreachable!("started as a process")
    };
    // The child's output is read by a thread of its own: the line may come a moment
    // after the answer.
    let accepted_id = accepted.to_string();
    eventually(
        Duration::from_secs(10),
        "the accepted command is logged (else the logs prove nothing)",
        || async { service.logs().contains(&accepted_id) },
    )
    .await;
    let logs = service.logs();
    assert!(!logs.contains(guess), "the logs show a rejected token");
    assert!(!logs.contains(TOKEN), "the logs show the configured token");
    s.stop().await;
}
