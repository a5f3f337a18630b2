//! ipp-ingest against bad input, one test per case (the matrix is in the book,
//! docs/src/services/ingest.md#bad-input). A request that is not properly signed gets
//! its status and JSON error code and nothing is appended; a signed body that cannot be
//! routed is stored anyway, once, byte for byte, flagged with `ipp-route-error`. After
//! each case a good webhook is still answered 200 and stored.
//!
//! Ingest's clock is fixed (at the real time the test starts), so that the timestamp
//! tolerance's edges are tested exactly, never racing the clock.

use ipp_ingest::Clock;
use ipp_schemas::{record::header, RecordHeaders};
use ipp_tests::{
    fixture,
    ingest::{Ingest, Options},
    json_of,
    kafka::Record,
    signer::{Signed, Signer},
};
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::{json, Value};

/// `INGEST_SIGNATURE_TOLERANCE_SECS`: its default, which the harness sets.
const TOLERANCE: i64 = 300;

/// An ingest whose clock reads the time the test started, with the default settings.
async fn start() -> Ingest {
    start_with(|_| {}).await
}

async fn start_with(configure: impl FnOnce(&mut ipp_ingest::Config)) -> Ingest {
    let options = Options {
        clock: Clock::fixed(chrono::Utc::now().timestamp()),
        ..Options::default()
    };
    Ingest::start_with(options, |config| {
        assert_eq!(config.signature_tolerance_secs, TOLERANCE as u64);
        configure(config);
    })
    .await
}

/// The webhook sent after every bad case: it must still be stored.
fn good_body() -> Vec<u8> {
    fixture("session-created.json")
}

type Headers = Vec<(&'static str, Vec<u8>)>;

fn headers_of(signed: &Signed) -> Headers {
    signed
        .headers()
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect()
}

/// `signed`'s headers with `name` replaced by `value`.
fn replaced(signed: &Signed, name: &str, value: impl Into<Vec<u8>>) -> Headers {
    let value = value.into();
    headers_of(signed)
        .into_iter()
        .map(|(n, v)| {
            if n == name {
                (n, value.clone())
            } else {
                (n, v)
            }
        })
        .collect()
}

fn without(signed: &Signed, name: &str) -> Headers {
    headers_of(signed)
        .into_iter()
        .filter(|(n, _)| *n != name)
        .collect()
}

/// `signed`'s headers with `name` sent a second time.
fn doubled(signed: &Signed, name: &'static str) -> Headers {
    let mut headers = headers_of(signed);
    let value = headers.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    headers.push((name, value));
    headers
}

/// POSTs `body` with exactly `headers`, in order, duplicates included.
async fn post_with(ingest: &Ingest, body: &[u8], headers: &Headers) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/webhooks/kustom", ingest.url))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        let value = http::HeaderValue::from_bytes(value).expect("a header value reqwest sends");
        request = request.header(*name, value);
    }
    request.send().await.expect("request")
}

/// The answer is `status` with `{"error": error, "message": ...}` (and `reason`, for a
/// 401); then a good webhook is stored, and it is the only record.
async fn assert_refused(
    ingest: &Ingest,
    response: reqwest::Response,
    status: u16,
    error: &str,
    reason: Option<&str>,
) {
    assert_eq!(response.status(), status);
    let answer = json_of(response).await;
    assert_eq!(answer["error"], error, "{answer}");
    assert!(
        answer["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer}"
    );
    if let Some(reason) = reason {
        assert_eq!(answer["reason"], reason, "{answer}");
    }
    only_the_good_webhook_after(ingest, 0).await;
}

/// Posts a good webhook: 200, and the IPP topic holds `before` records then it; the
/// other topic is empty. Returns the IPP topic's records.
async fn only_the_good_webhook_after(ingest: &Ingest, before: usize) -> Vec<Record> {
    let good = good_body();
    let response = ingest.post_signed(&good).await;
    assert_eq!(response.status(), 200, "the service keeps serving");
    let records = ingest.ipp_records();
    assert_eq!(records.len(), before + 1, "records: {records:?}");
    assert!(
        records
            .iter()
            .any(|r| r.value == good && r.header(header::ROUTE_ERROR).is_none()),
        "the good webhook is stored, unflagged"
    );
    assert!(
        ingest.other_records().is_empty(),
        "nothing on the other topic"
    );
    records
}

/// What the flagged record must be keyed by.
enum Key<'a> {
    EventId(&'a str),
    WebhookId,
}

/// A signed `body` is answered 200 with `route_error: code` and stored once, on the IPP
/// topic, byte for byte, keyed by `key`, with the route-error header and ingest's
/// usual headers (which consumers can read); then a good webhook still is.
async fn assert_stored_flagged(ingest: &Ingest, body: &[u8], code: &str, key: Key<'_>) {
    let signed = ingest.sign(body);
    let response = ingest.post(body, Some(&signed)).await;
    assert_stored_flagged_answer(ingest, response, body, &signed, code, key).await;
}

async fn assert_stored_flagged_answer(
    ingest: &Ingest,
    response: reqwest::Response,
    body: &[u8],
    signed: &Signed,
    code: &str,
    key: Key<'_>,
) {
    assert_eq!(response.status(), 200, "a signed body is never refused");
    let answer = json_of(response).await;
    assert_eq!(answer["status"], "stored", "{answer}");
    assert_eq!(answer["route_error"], code, "{answer}");
    assert_eq!(answer["topic"], ingest.ipp_topic.as_str(), "{answer}");
    let records = only_the_good_webhook_after(ingest, 1).await;
    let record = records
        .iter()
        .find(|r| r.partition == answer["partition"] && r.offset == answer["offset"])
        .expect("the record at the answered position");
    assert_eq!(record.value, body, "stored byte for byte");
    let reason = record.header(header::ROUTE_ERROR).expect("flagged");
    assert!(
        reason.starts_with(&format!("{code}: ")) && reason.len() > code.len() + 2,
        "{reason}"
    );
    let expected_key = match key {
        Key::EventId(id) => {
            assert_eq!(answer["event_id"], id);
            assert_eq!(record.header(header::EVENT_ID), Some(id));
            id.to_owned()
        }
        Key::WebhookId => {
            assert_eq!(answer["event_id"], Value::Null);
            assert_eq!(record.header(header::EVENT_ID), Some(""));
            signed.webhook_id.clone()
        }
    };
    assert_eq!(record.key_str(), Some(expected_key.as_str()));
    assert_eq!(
        record.header(header::WEBHOOK_ID),
        Some(signed.webhook_id.as_str())
    );
    let headers = record
        .headers
        .iter()
        .fold(OwnedHeaders::new(), |all, (k, v)| {
            all.insert(Header {
                key: k.as_str(),
                value: Some(v.as_slice()),
            })
        });
    RecordHeaders::from_kafka(&headers).expect("consumers read the usual headers");
}

// --- Signature headers: 401 invalid_signature, with a reason; nothing stored --------

/// Each case: the headers sent with a good body signed at ingest's clock.
macro_rules! refused_signature {
    ($($name:ident: |$signed:ident| $headers:expr => $reason:literal;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let ingest = start().await;
            let body = good_body();
            let $signed = ingest.sign(&body);
            let headers: Headers = $headers;
            let response = post_with(&ingest, &body, &headers).await;
            assert_refused(&ingest, response, 401, "invalid_signature", Some($reason)).await;
        }
    )*};
}

refused_signature! {
    missing_webhook_id: |signed| without(&signed, "webhook-id") => "missing_header";
    missing_webhook_timestamp: |signed| without(&signed, "webhook-timestamp") => "missing_header";
    missing_webhook_signature: |signed| without(&signed, "webhook-signature") => "missing_header";
    empty_webhook_signature: |signed| replaced(&signed, "webhook-signature", "") => "missing_header";
    // Both copies are valid: a duplicated signature header is refused all the same.
    duplicated_webhook_signature: |signed| doubled(&signed, "webhook-signature") => "duplicate_header";
    duplicated_webhook_id: |signed| doubled(&signed, "webhook-id") => "duplicate_header";
    duplicated_webhook_timestamp: |signed| doubled(&signed, "webhook-timestamp") => "duplicate_header";
    oversized_webhook_signature: |signed| replaced(
        &signed,
        "webhook-signature",
        format!("{} {}", "v2,x".repeat(300), signed.signature),
    ) => "header_too_long";
    oversized_webhook_id: |signed| replaced(&signed, "webhook-id", "m".repeat(300)) => "header_too_long";
    non_ascii_webhook_signature: |signed| replaced(
        &signed,
        "webhook-signature",
        [signed.signature.as_bytes(), b" v1,\xe9t\xe9"].concat(),
    ) => "malformed_header";
    v1_entry_empty_after_the_comma: |signed| replaced(&signed, "webhook-signature", "v1,") => "malformed_signature";
    v1_entry_not_base64: |signed| replaced(&signed, "webhook-signature", "v1,!!not*base64!!") => "malformed_signature";
    v1_entry_of_the_wrong_length: |signed| replaced(
        &signed,
        "webhook-signature",
        // Valid base64 of 30 bytes: two short of an HMAC-SHA256.
        format!("v1,{}", signed.signature.trim_start_matches("v1,").get(..40).unwrap()),
    ) => "malformed_signature";
    only_other_schemes: |signed| replaced(
        &signed,
        "webhook-signature",
        signed.signature.replace("v1,", "v2,") + " v1a,AAAA",
    ) => "no_v1_signature";
    // At most 16 entries are looked at: the good one, 17th, is never reached.
    too_many_signature_entries: |signed| replaced(
        &signed,
        "webhook-signature",
        format!("{}{}", "v1,AAAA ".repeat(16), signed.signature),
    ) => "too_many_signatures";
    signed_with_an_unknown_secret: |signed| {
        let stranger = Signer::new(&Signer::random_secret());
        let theirs = stranger.sign_at(&signed.webhook_id, signed.timestamp, &good_body());
        headers_of(&theirs)
    } => "no_match";
    signed_for_another_webhook_id: |signed| replaced(&signed, "webhook-id", "msg_other") => "no_match";
    timestamp_not_numeric: |signed| replaced(&signed, "webhook-timestamp", "yesterday") => "malformed_timestamp";
    timestamp_negative: |signed| replaced(
        &signed,
        "webhook-timestamp",
        format!("-{}", signed.timestamp),
    ) => "malformed_timestamp";
    timestamp_with_a_plus_sign: |signed| replaced(
        &signed,
        "webhook-timestamp",
        format!("+{}", signed.timestamp),
    ) => "malformed_timestamp";
    timestamp_beyond_any_date: |signed| replaced(
        &signed,
        "webhook-timestamp",
        "99999999999999999999",
    ) => "malformed_timestamp";
}

#[tokio::test]
async fn a_tampered_body_is_refused() {
    let ingest = start().await;
    let body = good_body();
    let signed = ingest.sign(&body);
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] = b' ';
    let response = ingest.post(&tampered, Some(&signed)).await;
    assert_refused(
        &ingest,
        response,
        401,
        "invalid_signature",
        Some("no_match"),
    )
    .await;
}

#[tokio::test]
async fn a_valid_entry_among_malformed_and_foreign_ones_is_accepted() {
    let ingest = start().await;
    let body = good_body();
    let signed = ingest.sign(&body);
    let headers = replaced(
        &signed,
        "webhook-signature",
        format!("v1, v1,!! v1,AAAA v2,xyz {}", signed.signature),
    );
    let response = post_with(&ingest, &body, &headers).await;
    assert_eq!(response.status(), 200);
    let records = ingest.ipp_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, body);
}

// --- Timestamps at and beyond the tolerance, against a fixed clock -------------------

/// A good body signed `offset` seconds from ingest's clock.
async fn post_at_offset(ingest: &Ingest, offset: i64) -> reqwest::Response {
    let body = good_body();
    let signed = ingest
        .signer()
        .sign_at("msg_edge", ingest.clock.now() + offset, &body);
    ingest.post(&body, Some(&signed)).await
}

async fn assert_stored_once(ingest: &Ingest, response: reqwest::Response) {
    assert_eq!(response.status(), 200);
    let records = ingest.ipp_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, good_body());
}

#[tokio::test]
async fn timestamp_exactly_the_tolerance_in_the_past_is_accepted() {
    let ingest = start().await;
    let response = post_at_offset(&ingest, -TOLERANCE).await;
    assert_stored_once(&ingest, response).await;
}

#[tokio::test]
async fn timestamp_one_second_past_the_tolerance_is_refused() {
    let ingest = start().await;
    let response = post_at_offset(&ingest, -TOLERANCE - 1).await;
    assert_refused(
        &ingest,
        response,
        401,
        "invalid_signature",
        Some("timestamp_too_old"),
    )
    .await;
}

#[tokio::test]
async fn timestamp_exactly_the_tolerance_in_the_future_is_accepted() {
    let ingest = start().await;
    let response = post_at_offset(&ingest, TOLERANCE).await;
    assert_stored_once(&ingest, response).await;
}

#[tokio::test]
async fn timestamp_one_second_beyond_the_future_tolerance_is_refused() {
    let ingest = start().await;
    let response = post_at_offset(&ingest, TOLERANCE + 1).await;
    assert_refused(
        &ingest,
        response,
        401,
        "invalid_signature",
        Some("timestamp_in_future"),
    )
    .await;
}

#[tokio::test]
async fn timestamp_far_in_the_future_is_refused() {
    let ingest = start().await;
    // 2100-01-01, properly signed.
    let body = good_body();
    let signed = ingest.signer().sign_at("msg_2100", 4_102_444_800, &body);
    let response = ingest.post(&body, Some(&signed)).await;
    assert_refused(
        &ingest,
        response,
        401,
        "invalid_signature",
        Some("timestamp_in_future"),
    )
    .await;
}

// --- Unsigned: refused whatever the content ------------------------------------------

#[tokio::test]
async fn an_unsigned_unusable_body_is_refused_not_stored() {
    let ingest = start().await;
    let response = ingest.post(b"[1,2,3]", None).await;
    assert_refused(
        &ingest,
        response,
        401,
        "invalid_signature",
        Some("missing_header"),
    )
    .await;
}

// --- Signed but unusable content: stored once, flagged --------------------------------

macro_rules! stored_flagged {
    ($($name:ident: $body:expr => $code:literal, $key:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let ingest = start().await;
            let body: Vec<u8> = $body;
            assert_stored_flagged(&ingest, &body, $code, $key).await;
        }
    )*};
}

fn json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

const SESSION: &str = "c749c48d-df11-4ae3-8e5f-2c8491b16214";

stored_flagged! {
    empty_body: Vec::new() => "empty_body", Key::WebhookId;
    invalid_utf8: b"{\"id\":\"kevt_\xff\xfe\",\"type\":\"order.created\"}".to_vec() => "not_utf8", Key::WebhookId;
    not_json: b"{not json".to_vec() => "invalid_json", Key::WebhookId;
    truncated_json: good_body()[..40].to_vec() => "invalid_json", Key::WebhookId;
    raw_nul_byte: b"{\"id\":\"kevt_nul\",\x00\"type\":\"order.created\"}".to_vec() => "invalid_json", Key::WebhookId;
    json_array: b"[1,2]".to_vec() => "not_an_object", Key::WebhookId;
    json_number: b"42".to_vec() => "not_an_object", Key::WebhookId;
    json_string: b"\"ipp.session.created\"".to_vec() => "not_an_object", Key::WebhookId;
    json_null: b"null".to_vec() => "not_an_object", Key::WebhookId;
    deeply_nested_json: {
        let depth = ipp_schemas::route::MAX_NESTING + 1;
        format!(r#"{{"id":"kevt_deep","type":"order.created","data":{}{}}}"#, "[".repeat(depth), "]".repeat(depth)).into_bytes()
    } => "too_deeply_nested", Key::WebhookId;
    nested_beyond_the_parser: format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes()
        => "too_deeply_nested", Key::WebhookId;
    no_id: json_bytes(&json!({"type": "ipp.session.created", "data": {"session_id": SESSION}}))
        => "missing_id", Key::WebhookId;
    id_a_number: json_bytes(&json!({"id": 17, "type": "ipp.session.created", "data": {"session_id": SESSION}}))
        => "invalid_id", Key::WebhookId;
    id_an_object: json_bytes(&json!({"id": {"value": "kevt_1"}, "type": "order.created"}))
        => "invalid_id", Key::WebhookId;
    no_type: json_bytes(&json!({"id": "kevt_notype", "data": {"session_id": SESSION}}))
        => "missing_type", Key::EventId("kevt_notype");
    type_an_array: json_bytes(&json!({"id": "kevt_typearray", "type": ["ipp.session.created"], "data": {"session_id": SESSION}}))
        => "invalid_type", Key::EventId("kevt_typearray");
    ipp_event_without_session_id: json_bytes(&json!({"id": "kevt_nosession", "type": "ipp.session.created", "data": {"order_id": null}}))
        => "missing_session_id", Key::EventId("kevt_nosession");
    ipp_event_without_data: json_bytes(&json!({"id": "kevt_nodata", "type": "ipp.session.created"}))
        => "missing_session_id", Key::EventId("kevt_nodata");
    ipp_event_whose_data_is_not_an_object: json_bytes(&json!({"id": "kevt_dataarray", "type": "ipp.session.finalized", "data": [SESSION]}))
        => "data_not_an_object", Key::EventId("kevt_dataarray");
    ipp_event_whose_session_id_is_a_number: json_bytes(&json!({"id": "kevt_sessionnumber", "type": "ipp.session.created", "data": {"session_id": 12}}))
        => "invalid_session_id", Key::EventId("kevt_sessionnumber");
}

/// `--insecure-skip-verify` follows the same content policy: stored and flagged.
#[tokio::test]
async fn insecure_mode_stores_and_flags_unusable_bodies_too() {
    let ingest = start_with(|config| {
        config.insecure_skip_verify = true;
        config.webhook_secrets.clear();
    })
    .await;
    let body = b"[\"not an event\"]".to_vec();
    // Its headers are recorded as sent, signature or not.
    let signed = ingest.sign(&body);
    let response = ingest.post(&body, Some(&signed)).await;
    assert_stored_flagged_answer(
        &ingest,
        response,
        &body,
        &signed,
        "not_an_object",
        Key::WebhookId,
    )
    .await;
}

// --- Signed and routable, however odd --------------------------------------------------

#[tokio::test]
async fn escaped_nul_characters_are_routed_as_usual() {
    let ingest = start().await;
    let body = format!(
        r#"{{"id":"kevt_escaped_nul","merchant_id":"M1","type":"ipp.payment.failed","data":{{"session_id":"{SESSION}","failure_reason":"a\u0000b"}}}}"#
    )
    .into_bytes();
    assert!(body.windows(6).any(|w| w == br"\u0000"));
    let response = ingest.post_signed(&body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await.get("route_error"), None);
    let records = ingest.ipp_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, body);
    assert_eq!(records[0].key_str(), Some(SESSION));
    assert_eq!(records[0].header(header::ROUTE_ERROR), None);
}

/// The last of duplicate keys counts for routing (as in serde_json); the body is stored
/// as sent, both keys included.
#[tokio::test]
async fn duplicate_keys_route_by_the_last_and_are_stored_as_sent() {
    let ingest = start().await;
    let body = br#"{"id":"kevt_first","type":"order.created","id":"kevt_last","data":{}}"#;
    let response = ingest.post_signed(body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["event_id"], "kevt_last");
    let records = ingest.other_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, body);
    assert_eq!(records[0].key_str(), Some("kevt_last"));
    assert_eq!(records[0].header(header::EVENT_ID), Some("kevt_last"));
    assert!(ingest.ipp_records().is_empty());
}
