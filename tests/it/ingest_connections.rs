//! ipp-ingest against bad requests below the webhook: bodies too large or lying about
//! their length, clients too slow or gone, idle connections, unknown paths and methods.
//! Each case gets its status (and a JSON error code when an answer is possible), nothing
//! is appended, and the service keeps serving. Raw connections write what an HTTP client
//! would not.

use std::time::{Duration, Instant};

use ipp_tests::{
    eventually::eventually,
    fixture,
    ingest::{request_head, Ingest, Options, RawConnection, RawResponse},
    json_of,
};
use serde_json::json;

/// A timeout short enough for a test and long enough for a loaded machine.
const SHORT_TIMEOUT_MS: u64 = 1000;

/// Upper bound on how late a timeout may fire on a loaded machine.
const SLACK: Duration = Duration::from_secs(5);

fn good_body() -> Vec<u8> {
    fixture("session-created.json")
}

/// A good webhook is still answered 200 and is the only record.
async fn only_a_good_webhook_is_stored(ingest: &Ingest) {
    let good = good_body();
    assert_eq!(
        ingest.post_signed(&good).await.status(),
        200,
        "still serving"
    );
    let records = ingest.ipp_records();
    assert_eq!(records.len(), 1, "only the good webhook: {records:?}");
    assert_eq!(records[0].value, good);
    assert!(ingest.other_records().is_empty());
}

fn assert_error(response: &RawResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.head);
    assert_eq!(response.json()["error"], code, "{}", response.head);
}

/// A padded, otherwise good body of `size` bytes.
fn body_of_size(size: usize) -> Vec<u8> {
    let mut body = json!({"id": "kevt_pad", "type": "order.created", "data": {"pad": ""}})
        .to_string()
        .into_bytes();
    let padding = size.saturating_sub(body.len());
    let at = body.len() - 3; // inside the pad string
    body.splice(at..at, std::iter::repeat_n(b'x', padding));
    body
}

// --- Body size and framing -------------------------------------------------------------

#[tokio::test]
async fn body_over_the_limit_is_refused_by_its_content_length() {
    let ingest = Ingest::start_with(Options::default(), |c| c.max_body_bytes = 2048).await;
    let body = body_of_size(3000);
    let response = ingest.post_signed(&body).await;
    assert_eq!(response.status(), 413);
    assert_eq!(json_of(response).await["error"], "body_too_large");
    only_a_good_webhook_is_stored(&ingest).await;
}

#[tokio::test]
async fn body_over_the_limit_sent_chunked_is_cut_off() {
    let ingest = Ingest::start_with(Options::default(), |c| c.max_body_bytes = 2048).await;
    let body = body_of_size(5000);
    let signed = ingest.sign(&body);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let mut request = reqwest::Client::new()
        .post(format!("{}/webhooks/kustom", ingest.url))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)));
    for (name, value) in signed.headers() {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(json_of(response).await["error"], "body_too_large");
    only_a_good_webhook_is_stored(&ingest).await;
}

/// `Content-Length` under the limit, more bytes sent: ingest reads what was declared,
/// whose signature does not match; the rest is no request at all.
#[tokio::test]
async fn content_length_smaller_than_the_body_sent() {
    let ingest = Ingest::start().await;
    let body = good_body();
    let signed = ingest.sign(&body);
    let mut connection = ingest.connect().await;
    let mut request = request_head(&signed, Some(body.len() / 2)).into_bytes();
    request.extend_from_slice(&body);
    assert!(connection.send(&request).await);
    let response = connection.response(SLACK).await.expect("an answer");
    assert_error(&response, 401, "invalid_signature");
    assert_eq!(response.json()["reason"], "no_match");
    only_a_good_webhook_is_stored(&ingest).await;
}

/// `Content-Length` larger than what comes before the client stops sending: 400.
#[tokio::test]
async fn content_length_larger_than_the_body_sent() {
    let ingest = Ingest::start().await;
    let body = good_body();
    let signed = ingest.sign(&body);
    let mut connection = ingest.connect().await;
    let mut request = request_head(&signed, Some(body.len() + 100)).into_bytes();
    request.extend_from_slice(&body);
    assert!(connection.send(&request).await);
    connection.finish_sending().await;
    let response = connection.response(SLACK).await.expect("an answer");
    assert_error(&response, 400, "unreadable_body");
    only_a_good_webhook_is_stored(&ingest).await;
}

/// `Content-Length` larger than what is sent, and the client waits: 408 after the body
/// read timeout.
#[tokio::test]
async fn content_length_larger_than_the_body_then_silence() {
    let ingest = Ingest::start_with(Options::default(), |c| {
        c.body_read_timeout_ms = SHORT_TIMEOUT_MS;
    })
    .await;
    let body = good_body();
    let signed = ingest.sign(&body);
    let mut connection = ingest.connect().await;
    let mut request = request_head(&signed, Some(body.len() + 100)).into_bytes();
    request.extend_from_slice(&body);
    let started = Instant::now();
    assert!(connection.send(&request).await);
    let response = connection
        .response(Duration::from_millis(SHORT_TIMEOUT_MS) + SLACK)
        .await
        .expect("an answer");
    assert_error(&response, 408, "request_timeout");
    assert!(started.elapsed() >= Duration::from_millis(SHORT_TIMEOUT_MS * 9 / 10));
    only_a_good_webhook_is_stored(&ingest).await;
}

// --- Slow and vanished clients ------------------------------------------------------------

/// A body trickling in one byte a second gets 408 once the body read timeout is over.
#[tokio::test]
async fn slow_body_one_byte_a_second_gets_408() {
    let ingest = Ingest::start_with(Options::default(), |c| {
        c.body_read_timeout_ms = SHORT_TIMEOUT_MS;
    })
    .await;
    let body = good_body();
    let signed = ingest.sign(&body);
    let mut connection = ingest.connect().await;
    let started = Instant::now();
    assert!(
        connection
            .send(request_head(&signed, Some(body.len())).as_bytes())
            .await
    );
    let mut answer = None;
    for byte in &body {
        if !connection.send(&[*byte]).await {
            break;
        }
        if let Ok(response) =
            tokio::time::timeout(Duration::from_secs(1), connection.next_response()).await
        {
            answer = response;
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(SHORT_TIMEOUT_MS) + SLACK,
            "still reading a slow body after {:?}",
            started.elapsed()
        );
    }
    let response = answer.expect("an answer before the connection closed");
    assert_error(&response, 408, "request_timeout");
    only_a_good_webhook_is_stored(&ingest).await;
}

/// Headers trickling in one byte a second: the connection is closed, unanswered, once
/// the header read timeout is over.
#[tokio::test]
async fn slow_headers_one_byte_a_second_are_cut_off() {
    let ingest = Ingest::start_with(Options::default(), |c| {
        c.header_read_timeout_ms = SHORT_TIMEOUT_MS;
    })
    .await;
    let body = good_body();
    let head = request_head(&ingest.sign(&body), Some(body.len()));
    let mut connection = ingest.connect().await;
    let started = Instant::now();
    let mut closed = None;
    for byte in head.as_bytes() {
        if !connection.send(&[*byte]).await {
            break;
        }
        if let Some(received) = connection.closed_within(Duration::from_secs(1)).await {
            closed = Some(received);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(SHORT_TIMEOUT_MS) + SLACK,
            "still reading slow headers after {:?}",
            started.elapsed()
        );
    }
    let received = closed.unwrap_or_default();
    assert!(
        started.elapsed() < Duration::from_millis(SHORT_TIMEOUT_MS) + SLACK,
        "closed after {:?}",
        started.elapsed()
    );
    assert!(
        received.is_empty(),
        "closed without an answer, got {}",
        String::from_utf8_lossy(&received)
    );
    only_a_good_webhook_is_stored(&ingest).await;
}

/// A client that vanishes (a reset) in the middle of its body: the request is no longer
/// counted in flight, and nothing is stored.
#[tokio::test]
async fn in_flight_gauge_comes_back_down_when_the_client_vanishes_mid_body() {
    let ingest = Ingest::start().await;
    let body = good_body();
    let signed = ingest.sign(&body);
    let mut connection = ingest.connect().await;
    let mut request = request_head(&signed, Some(body.len())).into_bytes();
    request.extend_from_slice(&body[..body.len() / 2]);
    assert!(connection.send(&request).await);
    eventually(
        Duration::from_secs(10),
        "the request is in flight",
        || async { ingest.metric("ipp_ingest_in_flight_requests", "").await == 1.0 },
    )
    .await;
    connection.reset();
    eventually(
        Duration::from_secs(10),
        "the in-flight gauge is back to 0",
        || async { ingest.metric("ipp_ingest_in_flight_requests", "").await == 0.0 },
    )
    .await;
    only_a_good_webhook_is_stored(&ingest).await;
}

// --- Idle connections -------------------------------------------------------------------

/// Two hundred connections opened and left idle: others are still answered at once, and
/// the idle ones are closed after the header read timeout.
#[tokio::test]
async fn idle_connections_neither_block_others_nor_stay_open() {
    const IDLE: usize = 200;
    let timeout = Duration::from_secs(4);
    let ingest = Ingest::start_with(Options::default(), |c| {
        c.header_read_timeout_ms = timeout.as_millis() as u64;
    })
    .await;
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(ingest.connect().await);
    }
    let good = good_body();
    let response = ingest.post_signed(&good).await;
    assert_eq!(response.status(), 200);
    assert!(
        opened.elapsed() < timeout,
        "answered only after {:?}, when idle connections may have been closed",
        opened.elapsed()
    );
    for (n, connection) in idle.iter_mut().enumerate() {
        let left = (opened + timeout + SLACK).saturating_duration_since(Instant::now());
        let received = connection.closed_within(left).await;
        assert_eq!(
            received.as_deref(),
            Some(&[][..]),
            "idle connection {n} closed, unanswered, after the timeout"
        );
    }
    assert!(opened.elapsed() >= timeout * 9 / 10, "closed too early");
    let records = ingest.ipp_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, good);
}

/// `INGEST_MAX_CONNECTIONS` idle connections hold every slot: the next request waits in
/// the backlog until they time out, and is then answered.
#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    const LIMIT: usize = 3;
    let ingest = Ingest::start_with(Options::default(), |c| {
        c.max_connections = LIMIT;
        c.header_read_timeout_ms = SHORT_TIMEOUT_MS;
    })
    .await;
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..LIMIT {
        idle.push(ingest.connect().await);
    }
    // Let the server accept them, so that they hold its slots.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = tokio::time::timeout(
        Duration::from_millis(SHORT_TIMEOUT_MS) + SLACK,
        ingest.post_signed(&good_body()),
    )
    .await
    .expect("answered once the idle connections timed out");
    assert_eq!(response.status(), 200);
    assert!(
        opened.elapsed() >= Duration::from_millis(SHORT_TIMEOUT_MS / 2),
        "answered after {:?}: the limit did not hold",
        opened.elapsed()
    );
    assert_eq!(ingest.ipp_records().len(), 1);
}

// --- Header section, paths and methods ---------------------------------------------------

/// A header section over 16 KiB: hyper answers 431 (no body) before any handler runs.
#[tokio::test]
async fn oversized_header_section_gets_431() {
    let ingest = Ingest::start().await;
    let body = good_body();
    let signed = ingest.sign(&body);
    let mut request = reqwest::Client::new()
        .post(format!("{}/webhooks/kustom", ingest.url))
        .header("x-padding", "p".repeat(20 * 1024))
        .body(body.clone());
    for (name, value) in signed.headers() {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("an answer");
    assert_eq!(response.status(), 431);
    only_a_good_webhook_is_stored(&ingest).await;
}

#[tokio::test]
async fn wrong_method_gets_405_json() {
    let ingest = Ingest::start().await;
    let response = reqwest::get(format!("{}/webhooks/kustom", ingest.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let allow = response
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(allow.as_deref(), Some("POST"));
    let answer = json_of(response).await;
    assert_eq!(answer["error"], "method_not_allowed");
    assert!(answer["message"].as_str().unwrap().contains("GET"));
    only_a_good_webhook_is_stored(&ingest).await;
}

#[tokio::test]
async fn wrong_path_gets_404_json() {
    let ingest = Ingest::start().await;
    let body = good_body();
    let signed = ingest.sign(&body);
    let mut request = reqwest::Client::new()
        .post(format!("{}/webhooks/kustom/extra", ingest.url))
        .body(body.clone());
    for (name, value) in signed.headers() {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 404);
    let answer = json_of(response).await;
    assert_eq!(answer["error"], "not_found");
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("/webhooks/kustom/extra"));
    only_a_good_webhook_is_stored(&ingest).await;
}

#[tokio::test]
async fn raw_connection_helper_reads_a_good_answer() {
    // The raw connection itself, on a good request: so that the cases above fail for
    // their own reasons only.
    let ingest = Ingest::start().await;
    let body = good_body();
    let mut connection: RawConnection = ingest.connect().await;
    let mut request = request_head(&ingest.sign(&body), Some(body.len())).into_bytes();
    request.extend_from_slice(&body);
    assert!(connection.send(&request).await);
    let response = connection.response(SLACK).await.expect("an answer");
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.json()["status"], "stored");
}
