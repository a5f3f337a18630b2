//! The Order Management simulator, over HTTP, as `ipp-actions` sees it: in-process on
//! its own port (a child process for the SIGTERM test). Faithfulness (auth, amounts, the documented 403s), idempotency keys
//! (one effect per key, also under concurrency and after faults that follow the effect)
//! and fault injection switched at run time.

use std::time::Duration;

use base64::Engine as _;
use ipp_service::ListenArgs;
use ipp_tests::{
    inprocess::om_sim_config,
    om_sim::{assert_error, effects, error_code, new_order, OmSim, SimApi},
    process::Service,
};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const KEY: &str = "kco_test_om_sim_tests";

#[tokio::test]
async fn authorization_is_required() {
    let sim = OmSim::start(KEY);
    let order = new_order();
    let url = sim.order_url(&order);

    let none = sim.client.get(&url).send().await.unwrap();
    assert_error(none, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;

    let wrong = sim
        .client
        .get(&url)
        .header("Authorization", "Basic kco_test_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let wrong_pair = sim
        .client
        .post(format!("{url}/captures"))
        .basic_auth("merchant", Some("kco_test_wrong"))
        .json(&json!({ "captured_amount": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_pair.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sim.captures(&order).await, 0);

    // Both documented forms: the bare key, and base64(<any user>:<key>).
    let bare = sim
        .client
        .get(&url)
        .header("Authorization", format!("Basic {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::OK);
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{KEY}"));
    let encoded = sim
        .client
        .get(&url)
        .header("Authorization", format!("Basic {pair}"))
        .send()
        .await
        .unwrap();
    assert_eq!(encoded.status(), StatusCode::OK);

    let statuses: Vec<u64> = sim
        .calls()
        .await
        .iter()
        .map(|c| c["status"].as_u64().expect("status"))
        .collect();
    assert_eq!(statuses, [401, 401, 401, 200, 200]);
}

#[tokio::test]
async fn full_capture_then_another_capture_is_not_allowed() {
    let sim = OmSim::start(KEY);
    let order_id = Uuid::new_v4();
    let order = order_id.to_string();
    let amount = ipp_om_sim::authorized_amount_for(&order_id);

    let response = sim.get_order(&order).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["order_id"], order.as_str());
    assert_eq!(body["status"], "AUTHORIZED");
    assert_eq!(body["order_amount"], amount);
    assert_eq!(body["original_order_amount"], amount);
    assert_eq!(body["remaining_authorized_amount"], amount);
    assert_eq!(body["captured_amount"], 0);
    assert_eq!(body["refunded_amount"], 0);
    assert_eq!(body["purchase_currency"], "EUR");

    let response = sim.capture(&order, amount, Some("key-1")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let capture: Value = response.json().await.unwrap();
    let capture_id = capture["capture_id"].as_str().expect("capture_id");
    assert!(
        location.ends_with(&format!("/orders/{order}/captures/{capture_id}")),
        "location {location}"
    );

    let body: Value = sim.get_order(&order).await.json().await.unwrap();
    assert_eq!(body["status"], "CAPTURED");
    assert_eq!(body["captured_amount"], amount);
    assert_eq!(body["remaining_authorized_amount"], 0);
    assert_eq!(body["captures"][0]["capture_id"], capture_id);
    assert_eq!(body["captures"][0]["reference"], "session-1");

    let again = sim.capture(&order, 1, Some("key-2")).await;
    assert_error(again, StatusCode::FORBIDDEN, "CAPTURE_NOT_ALLOWED").await;
    assert_eq!(sim.captures(&order).await, 1);

    // A part capture, then more than what remains.
    let other_id = Uuid::new_v4();
    let other = other_id.to_string();
    let other_amount = ipp_om_sim::authorized_amount_for(&other_id);
    assert_eq!(
        sim.capture(&other, 100, None).await.status(),
        StatusCode::CREATED
    );
    let body: Value = sim.get_order(&other).await.json().await.unwrap();
    assert_eq!(body["status"], "PART_CAPTURED");
    assert_eq!(body["remaining_authorized_amount"], other_amount - 100);
    let too_much = sim.capture(&other, other_amount - 99, None).await;
    assert_error(too_much, StatusCode::FORBIDDEN, "CAPTURE_NOT_ALLOWED").await;

    // Malformed input and unknown orders get the documented codes.
    let zero = sim.capture(&other, 0, None).await;
    assert_eq!(zero.status(), StatusCode::BAD_REQUEST);
    let bad_id = sim.get_order("not-a-uuid").await;
    assert_error(bad_id, StatusCode::BAD_REQUEST, "INVALID_ORDER_ID").await;
    let missing = new_order();
    sim.seed(&missing, json!({ "missing": true })).await;
    let response = sim.get_order(&missing).await;
    assert_error(response, StatusCode::NOT_FOUND, "NO_SUCH_ORDER").await;
    let response = sim.capture(&missing, 1, None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let stats = sim.stats().await;
    assert_eq!(stats["captures_applied"], 2);
    assert_eq!(stats["captures_by_order"][&order], 1);
    assert_eq!(stats["captures_by_order"][&other], 1);
}

#[tokio::test]
async fn same_key_returns_the_first_response_with_one_effect() {
    let sim = OmSim::start(KEY);
    let order = new_order();

    let first = sim.capture(&order, 100, Some("same-key")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_location = first.headers()["location"].clone();
    let first_body: Value = first.json().await.unwrap();

    // Only the key counts, not the body.
    let second = sim.capture(&order, 250, Some("same-key")).await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["location"], first_location);
    let second_body: Value = second.json().await.unwrap();
    assert_eq!(second_body, first_body);

    let state = sim.sim_order(&order).await;
    assert_eq!(effects(&state, "captures"), 1);
    assert_eq!(state["captured_amount"], 100);
    let replayed: Vec<bool> = sim
        .calls()
        .await
        .iter()
        .map(|c| c["replayed"].as_bool().unwrap())
        .collect();
    assert_eq!(replayed, [false, true]);

    // A different key is a different capture.
    assert_eq!(
        sim.capture(&order, 50, Some("other-key")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(sim.captures(&order).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_make_one_effect() {
    let sim = OmSim::start(KEY);
    let order = new_order();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..24 {
        // A client each, so that the requests really travel on separate connections.
        let request = sim.capture_request(&Client::new(), &order, 300, Some("concurrent-key"));
        tasks.spawn(async move {
            let response = request.send().await.expect("capture");
            let status = response.status();
            let body: Value = response.json().await.expect("body");
            (status, body["capture_id"].as_str().map(str::to_owned))
        });
    }
    let mut capture_ids = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (status, capture_id) = result.expect("task");
        assert_eq!(status, StatusCode::CREATED);
        capture_ids.push(capture_id.expect("capture_id"));
    }
    assert_eq!(capture_ids.len(), 24);
    assert!(capture_ids.iter().all(|id| *id == capture_ids[0]));

    let state = sim.sim_order(&order).await;
    assert_eq!(effects(&state, "captures"), 1);
    assert_eq!(state["captured_amount"], 300);
    let stats = sim.stats().await;
    assert_eq!(stats["captures_by_order"][&order], 1);
    assert_eq!(stats["replays"], 23);
}

#[tokio::test]
async fn cancelled_orders_and_refunds_follow_the_documented_rules() {
    let sim = OmSim::start(KEY);

    let seeded = new_order();
    sim.seed(&seeded, json!({ "status": "CANCELLED" })).await;
    let response = sim.capture(&seeded, 1, Some("cancelled-1")).await;
    assert_error(response, StatusCode::FORBIDDEN, "CAPTURE_NOT_ALLOWED").await;

    for status in ["EXPIRED", "CLOSED"] {
        let order = new_order();
        sim.seed(&order, json!({ "status": status })).await;
        let response = sim.capture(&order, 1, None).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{status}");
    }

    // Cancel through the API, then capture.
    let order = new_order();
    let response = sim.post(&order, "cancel", json!({})).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let body: Value = sim.get_order(&order).await.json().await.unwrap();
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(body["remaining_authorized_amount"], 0);
    let response = sim.capture(&order, 1, None).await;
    assert_error(response, StatusCode::FORBIDDEN, "CAPTURE_NOT_ALLOWED").await;

    // An order with captures cannot be cancelled; refunds are bounded by what was captured.
    let order = new_order();
    assert_eq!(
        sim.capture(&order, 500, None).await.status(),
        StatusCode::CREATED
    );
    let response = sim.post(&order, "cancel", json!({})).await;
    assert_error(response, StatusCode::FORBIDDEN, "CANCEL_NOT_ALLOWED").await;
    let response = sim
        .post(&order, "refunds", json!({ "refunded_amount": 501 }))
        .await;
    assert_error(response, StatusCode::FORBIDDEN, "REFUND_NOT_ALLOWED").await;
    let response = sim
        .post(&order, "refunds", json!({ "refunded_amount": 200 }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let refund: Value = response.json().await.unwrap();
    assert!(refund["refund_id"].is_string());

    // Releasing the rest of a part-captured order ends it as CAPTURED.
    let response = sim
        .post(&order, "release-remaining-authorization", json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let body: Value = sim.get_order(&order).await.json().await.unwrap();
    assert_eq!(body["status"], "CAPTURED");
    assert_eq!(body["remaining_authorized_amount"], 0);
    assert_eq!(body["refunded_amount"], 200);

    let state = sim.sim_order(&order).await;
    assert_eq!(effects(&state, "captures"), 1);
    assert_eq!(effects(&state, "refunds"), 1);
    assert_eq!(effects(&state, "cancels"), 0);
}

#[tokio::test]
async fn rate_limited_requests_carry_retry_after_and_have_no_effect() {
    let mut config = om_sim_config(KEY);
    config.faults.rate_limit_rate = 1.0;
    config.faults.retry_after_secs = 7;
    let sim = OmSim::start_with(config);
    let order = new_order();

    let response = sim.get_order(&order).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(error_code(response).await, "TOO_MANY_REQUESTS");

    let response = sim.capture(&order, 10, Some("limited")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(sim.captures(&order).await, 0);

    // The 429 stored nothing under the key: the retry is a first attempt.
    sim.set_faults(json!({})).await;
    let response = sim.capture(&order, 10, Some("limited")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(sim.captures(&order).await, 1);
    let last = sim.calls().await.pop().expect("a call");
    assert_eq!(last["replayed"], false);
}

#[tokio::test]
async fn an_account_over_its_rate_limit_gets_429_with_retry_after_and_the_limit_changes_at_run_time(
) {
    let mut config = om_sim_config(KEY);
    // One token per 10 s: the burst is all a test this short can spend.
    config.limits.account_rate_limit = 0.1;
    config.limits.account_rate_burst = Some(3);
    let sim = OmSim::start_with(config);
    let order = new_order();
    for _ in 0..3 {
        assert_eq!(sim.get_order(&order).await.status(), StatusCode::OK);
    }
    let response = sim.capture(&order, 10, Some("over-the-limit")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((9..=10).contains(&retry_after), "{retry_after}");
    assert_eq!(error_code(response).await, "TOO_MANY_REQUESTS");
    assert_eq!(
        sim.captures(&order).await,
        0,
        "a refused request has no effect"
    );
    // Unauthenticated requests are no account's: 401, not 429.
    let anonymous = sim.client.get(sim.order_url(&order)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let stats = sim.stats().await;
    assert_eq!(stats["rate_limited"], json!(1));
    assert_eq!(stats["by_status"]["429"], json!(1));
    let last = sim.calls().await.into_iter().rev().nth(1).expect("the 429");
    assert_eq!(last["fault"], json!("account_limit"));

    // Raised at run time: a full bucket of the new size, and the key was not used up.
    sim.put(
        "/_sim/limits",
        json!({"account_rate_limit": 1000, "account_rate_burst": 50}),
    )
    .await;
    assert_eq!(
        sim.control_json("/_sim/limits").await,
        json!({"account_rate_limit": 1000.0, "account_rate_burst": 50})
    );
    let response = sim.capture(&order, 10, Some("over-the-limit")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(sim.captures(&order).await, 1);

    for bad in [
        json!({"account_rate_limit": -1}),
        json!({"account_rate_burst": 0}),
        json!({"rate": 5}),
    ] {
        let response = sim
            .control(reqwest::Method::PUT, "/_sim/limits", Some(bad.clone()))
            .await;
        assert_error(response, StatusCode::BAD_REQUEST, "BAD_VALUE").await;
    }
    // Off again: no limit at all.
    sim.put("/_sim/limits", json!({})).await;
    for _ in 0..100 {
        assert_eq!(sim.get_order(&order).await.status(), StatusCode::OK);
    }
    assert_eq!(sim.stats().await["rate_limited"], json!(1));
}

#[tokio::test]
async fn a_retry_after_set_as_text_is_sent_as_it_is_and_unprintable_text_is_refused() {
    let sim = OmSim::start(KEY);
    let order = new_order();
    for value in ["1e30", "0.5", "Fri, 31 Dec 9999 23:59:59 GMT"] {
        sim.set_faults(json!({"rate_limit_rate": 1.0, "retry_after": value}))
            .await;
        let response = sim.get_order(&order).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], value);
    }
    let response = sim
        .control(
            reqwest::Method::PUT,
            "/_sim/faults",
            Some(json!({"rate_limit_rate": 1.0, "retry_after": "1\r\nX-Evil: 1"})),
        )
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "BAD_VALUE").await;
    assert_eq!(
        sim.faults().await["retry_after"],
        json!("Fri, 31 Dec 9999 23:59:59 GMT")
    );
}

#[tokio::test]
async fn fail_rate_one_answers_only_5xx_without_effects() {
    let mut config = om_sim_config(KEY);
    config.faults.fail_rate = 1.0;
    config.seed = 7;
    let sim = OmSim::start_with(config);
    let order = new_order();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let response = sim.capture(&order, 10, Some(&format!("fail-{i}"))).await;
        let status = response.status();
        assert!(
            status == StatusCode::INTERNAL_SERVER_ERROR
                || status == StatusCode::SERVICE_UNAVAILABLE,
            "got {status}"
        );
        let code = error_code(response).await;
        assert!(
            code == "INTERNAL_SERVER_ERROR" || code == "TEMPORARILY_UNAVAILABLE",
            "{code}"
        );
        seen.insert(status.as_u16());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [500, 503]);
    let state = sim.sim_order(&order).await;
    assert_eq!(effects(&state, "captures"), 0);
    assert_eq!(state["captured_amount"], 0);
    assert_eq!(sim.stats().await["captures_applied"], 0);

    // Nothing was stored under those keys either.
    sim.set_faults(json!({ "fail_rate": 0.0 })).await;
    let response = sim.capture(&order, 10, Some("fail-0")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(sim.captures(&order).await, 1);
}

#[tokio::test]
async fn dropped_connections_before_and_after_the_effect() {
    let sim = OmSim::start(KEY);

    // Before the effect: no answer, no capture; the retry captures.
    let order = new_order();
    sim.set_faults(json!({ "drop_rate": 1.0 })).await;
    let error = sim
        .capture_request(&sim.client, &order, 100, Some("drop-before"))
        .send()
        .await
        .expect_err("the connection is dropped");
    assert!(!error.is_status() && !error.is_timeout(), "{error}");
    assert_eq!(sim.captures(&order).await, 0);
    sim.set_faults(json!({})).await;
    let response = sim.capture(&order, 100, Some("drop-before")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(sim.captures(&order).await, 1);

    // After the effect: the capture happened; the retry with the same key returns it.
    let order = new_order();
    sim.set_faults(json!({ "drop_rate": 1.0, "fault_after_effect_rate": 1.0 }))
        .await;
    sim.capture_request(&sim.client, &order, 100, Some("drop-after"))
        .send()
        .await
        .expect_err("the connection is dropped");
    let applied = sim.the_only_capture_id(&order).await;

    sim.set_faults(json!({})).await;
    let response = sim.capture(&order, 100, Some("drop-after")).await;
    sim.assert_capture_replayed(response, &applied, &order)
        .await;

    let calls = sim.calls().await;
    let dropped: Vec<&Value> = calls.iter().filter(|c| c["fault"] == "drop").collect();
    assert_eq!(dropped.len(), 2);
    assert!(dropped.iter().all(|c| c["status"].is_null()));
    let last = calls.last().unwrap();
    assert_eq!(last["idempotency_key"], "drop-after");
    assert_eq!(last["replayed"], true);
    assert_eq!(last["status"], 201);
    assert_eq!(sim.stats().await["dropped"], 2);
}

#[tokio::test]
async fn hangs_before_and_after_the_effect() {
    let sim = OmSim::start(KEY);
    let impatient = Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();

    // Before the effect: the client times out and nothing happened.
    let order = new_order();
    sim.set_faults(json!({ "hang_rate": 1.0, "hang_ms": 30000 }))
        .await;
    let error = sim
        .capture_request(&impatient, &order, 100, Some("hang-before"))
        .send()
        .await
        .expect_err("the request hangs");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(sim.captures(&order).await, 0);

    // After the effect: the client times out, the capture happened once, and the retry
    // with the same key gets the original 201.
    let order = new_order();
    sim.set_faults(json!({ "hang_rate": 1.0, "hang_ms": 30000, "fault_after_effect_rate": 1.0 }))
        .await;
    let error = sim
        .capture_request(&impatient, &order, 100, Some("hang-after"))
        .send()
        .await
        .expect_err("the request hangs");
    assert!(error.is_timeout(), "{error}");
    let applied = sim.the_only_capture_id(&order).await;

    sim.set_faults(json!({})).await;
    let response = sim
        .capture_request(&impatient, &order, 100, Some("hang-after"))
        .send()
        .await
        .expect("answered once the faults are off");
    sim.assert_capture_replayed(response, &applied, &order)
        .await;

    let calls = sim.calls().await;
    let hung: Vec<&Value> = calls.iter().filter(|c| c["fault"] == "hang").collect();
    assert_eq!(hung.len(), 2);
    assert!(hung.iter().all(|c| c["status"].is_null()));
    assert_eq!(hung[1]["after_effect"], true);
}

#[tokio::test]
async fn faults_switch_at_run_time() {
    let sim = OmSim::start(KEY);
    let order = new_order();
    assert_eq!(sim.get_order(&order).await.status(), StatusCode::OK);

    // An outage...
    sim.set_faults(json!({ "fail_rate": 1.0 })).await;
    let faults = sim.faults().await;
    assert_eq!(faults["fail_rate"], 1.0);
    assert_eq!(faults["drop_rate"], 0.0);
    for _ in 0..5 {
        assert!(sim.get_order(&order).await.status().is_server_error());
    }

    // ...and the recovery.
    sim.set_faults(json!({ "fail_rate": 0.0 })).await;
    assert_eq!(sim.get_order(&order).await.status(), StatusCode::OK);

    // Latency applies to every request (a lower bound: a sleep is never shorter).
    sim.set_faults(json!({ "latency_ms": 300 })).await;
    let started = std::time::Instant::now();
    assert_eq!(sim.get_order(&order).await.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Invalid settings are refused and change nothing.
    for bad in [json!({ "fail_rate": 1.5 }), json!({ "fail_rates": 0.5 })] {
        let response = sim
            .control(reqwest::Method::PUT, "/_sim/faults", Some(bad))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let faults = sim.faults().await;
    assert_eq!(faults["latency_ms"], 300);

    // The call log can be cleared; the counters keep counting.
    let response = sim
        .control(reqwest::Method::DELETE, "/_sim/calls", None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(sim.calls().await.is_empty());
    let stats = sim.stats().await;
    assert_eq!(stats["requests"], 8);
    assert_eq!(stats["by_status"]["200"], 3);
}

#[tokio::test]
async fn sigterm_stops_promptly_even_with_a_hanging_request() {
    let mut config = om_sim_config(KEY);
    config.listen = ListenArgs::new("127.0.0.1:0".parse().unwrap());
    let mut service = Service::start(&config, &[]);
    let addr = service.listen_addr(Duration::from_secs(10));
    let sim = SimApi::new(&format!("http://{addr}"), KEY);
    sim.set_faults(json!({ "hang_rate": 1.0, "hang_ms": 60000 }))
        .await;
    let hanging = sim.capture_request(&sim.client, &new_order(), 1, Some("hang"));
    let request = tokio::spawn(hanging.send());

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sim.calls().await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.signal("TERM");
    let status = tokio::task::spawn_blocking(move || service.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let answer = request.await.unwrap();
    assert!(answer.is_err(), "the hanging request got {answer:?}");
}
