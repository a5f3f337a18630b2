//! `ipp-actions` end to end: a real broker, real PostgreSQL and the Order Management
//! simulator over HTTP, in-process; a child process for SIGKILL and SIGTERM. Every test
//! checks the ledger AND the effects the simulator counted.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use chrono::DateTime;
use ipp_schemas::{dlq::header as dlq, record::header};
use ipp_service::Secret;
use ipp_tests::{
    actions::{
        assert_retry_after_respected, expected_key, finalized, product_defaults, Event, Fixture,
        Row,
    },
    eventually::eventually,
    inprocess::add_properties,
    kafka,
    produce::Producer,
    unique_name,
};
use serde_json::{json, Value};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Tests.

/// With `ACTIONS_ADMIN_LISTEN`, `/metrics` leaves the commands API's listener for the
/// admin address; the new names, the lag per partition and the former names are there.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_to_the_admin_address_with_lag_per_partition() {
    let fx = Fixture::new(2, |_| {}).await;
    let finals = finalized(3);
    fx.produce(&finals).await;
    // Port 0: the harness binds it before the service starts and says which it got.
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let actions = fx.start_actions(&unique_name("actions"), |config| {
        config.admin_listen = ipp_service::AdminListenArgs::new(Some(any_port));
    });
    let ipp_tests::actions::Actions::InProcess(service) = &actions else {
        unreachable!("start_actions runs it in-process")
    };
    let admin = service.admin_addr.expect("an admin address was set");
    fx.wait_for_count("succeeded", 3, Duration::from_secs(60))
        .await;
    let get = |url: String| async move { reqwest::get(url).await.expect("GET") };
    assert_eq!(
        get(format!("{}/metrics", actions.url())).await.status(),
        404
    );
    assert_eq!(
        get(format!("{}/healthz", actions.url())).await.status(),
        200
    );
    let metrics = || async {
        get(format!("http://{admin}/metrics"))
            .await
            .text()
            .await
            .unwrap()
    };
    // librdkafka's statistics come every 5 s: each of the two partitions, all consumed.
    eventually(
        Duration::from_secs(30),
        "every partition's lag is 0",
        || async {
            let text = metrics().await;
            // The events topic only (its commands topic's name starts with the same).
            let of_topic = format!("topic=\"{}\"", fx.topic);
            let lags: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("ipp_actions_partition_lag{") && l.contains(&of_topic))
                .collect();
            lags.len() == 2 && lags.iter().all(|l| l.ends_with(" 0"))
        },
    )
    .await;
    let text = metrics().await;
    for wanted in [
        "ipp_actions_build_info{version=",
        "\nipp_actions_finished_total{status=\"succeeded\"} 3",
        // The former name, kept for one release.
        "\nactions_finished_total{status=\"succeeded\"} 3",
        "\nipp_actions_oldest_pending_created_timestamp_seconds ",
        "\nprocess_cpu_seconds_total ",
    ] {
        assert!(text.contains(wanted), "{wanted} missing: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn finalized_session_is_captured_once_with_a_deterministic_key_other_types_are_not() {
    let fx = Fixture::new(1, |_| {}).await;
    // Non-finalized events first, on the one partition, each with an order id that must
    // not be touched: by the time the finalized ones are done, these were consumed.
    let mut untouched = Vec::new();
    for event_type in [
        "ipp.session.created",
        "ipp.session.activated",
        "ipp.session.cancelled",
        "ipp.payment.failed",
    ] {
        let event = Event::new(event_type, Uuid::new_v4(), Some(Uuid::new_v4()));
        untouched.push(event.order_id.unwrap());
        fx.produce(std::slice::from_ref(&event)).await;
    }
    let mut finals = finalized(3);
    finals.push(Event::new(
        "ipp.payment.finalized",
        Uuid::new_v4(),
        Some(Uuid::new_v4()),
    ));
    fx.produce(&finals).await;
    let actions = fx.start_actions(&unique_name("actions"), |_| {});

    fx.wait_for_count("succeeded", 4, Duration::from_secs(60))
        .await;
    fx.assert_captured_once(&finals).await;
    assert_eq!(
        fx.ledger().await.len(),
        4,
        "only finalized sessions get a row"
    );
    assert_eq!(
        actions.metric("ipp_actions_records_total", "ignored").await,
        4.0
    );

    let by_order = fx.sim.captures_by_order().await;
    assert_eq!(by_order.len(), 4, "{by_order:?}");
    for order_id in &untouched {
        assert!(!by_order.contains_key(order_id));
    }
    // Every call the simulator saw: a GET and a POST per order, the POST with the key.
    let calls = fx.calls().await;
    for event in &finals {
        let order_id = event.order_id.unwrap();
        let posts: Vec<&Value> = calls
            .iter()
            .filter(|c| {
                c["method"] == "POST" && c["path"].as_str().unwrap().contains(&order_id.to_string())
            })
            .collect();
        assert_eq!(posts.len(), 1, "{posts:?}");
        assert_eq!(
            posts[0]["idempotency_key"],
            json!(expected_key(order_id).to_string())
        );
        assert_eq!(posts[0]["status"], json!(201));
    }
    for order_id in &untouched {
        assert!(!calls
            .iter()
            .any(|c| c["path"].as_str().unwrap().contains(&order_id.to_string())));
    }
    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_and_a_full_replay_by_a_fresh_group_still_capture_once() {
    let fx = Fixture::new(3, |_| {}).await;
    let finals = finalized(20);
    for _ in 0..5 {
        fx.produce(&finals).await;
    }
    let first = fx.start_actions(&unique_name("actions"), |_| {});
    eventually(
        Duration::from_secs(90),
        "20 succeeded, 80 duplicates seen",
        || async {
            fx.count("succeeded").await == 20
                && first.metric("ipp_actions_records_total", "duplicate").await == 80.0
        },
    )
    .await;
    fx.assert_captured_once(&finals).await;
    first.stop().await;

    // The whole topic again, from the beginning, by a new consumer group.
    let replay = fx.start_actions(&unique_name("actions_replay"), |_| {});
    eventually(
        Duration::from_secs(90),
        "all 100 records replayed as duplicates",
        || async {
            replay
                .metric("ipp_actions_records_total", "duplicate")
                .await
                == 100.0
        },
    )
    .await;
    replay.stop().await;

    assert_eq!(fx.ledger().await.len(), 20);
    fx.assert_captured_once(&finals).await;
    let stats = fx.sim.get("/_sim/stats").await;
    assert_eq!(stats["captures_applied"], json!(20));
    let posts = fx
        .calls()
        .await
        .iter()
        .filter(|c| c["method"] == "POST")
        .count();
    assert_eq!(posts, 20, "no POST after the replay");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_5xx_429_and_timeouts_every_order_succeeds_once_and_retry_after_is_respected() {
    let retry_after = 1;
    let fx = Fixture::new(3, |sim| {
        sim.faults.fail_rate = 0.3;
        sim.faults.rate_limit_rate = 0.1;
        sim.faults.retry_after_secs = retry_after;
        sim.faults.hang_rate = 0.05;
        sim.faults.hang_ms = 2500;
        sim.faults.drop_rate = 0.03;
        sim.faults.fault_after_effect_rate = 0.5;
        sim.seed = 4;
    })
    .await;
    let finals = finalized(100);
    fx.produce(&finals).await;
    let actions = fx.start_actions(&unique_name("actions"), |_| {});
    fx.wait_until_all_recorded(100, Duration::from_secs(180))
        .await;
    assert_eq!(
        fx.count("succeeded").await,
        100,
        "{:?}",
        fx.unfinished().await
    );
    fx.assert_captured_once(&finals).await;
    assert_eq!(fx.count("failed").await, 0);

    let calls = fx.calls().await;
    let count = |pred: &dyn Fn(&Value) -> bool| calls.iter().filter(|c| pred(c)).count();
    assert!(
        count(&|c| c["status"] == json!(429)) > 0,
        "no 429 was injected"
    );
    assert!(count(&|c| c["status"].as_u64().is_some_and(|s| s >= 500)) > 0);
    assert!(
        count(&|c| c["fault"] == json!("hang")) > 0,
        "no timeout was injected"
    );
    assert!(
        count(&|c| c["replayed"] == json!(true)) > 0,
        "no lost capture answer was replayed"
    );
    let checked = assert_retry_after_respected(&calls, retry_after);
    assert!(checked > 0, "no retry after a 429 to check");
    assert!(actions.metric("ipp_actions_om_retries_total", "").await > 0.0);
    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_run_then_restart_captures_every_order_once() {
    // A fifth of the captures are applied and then answered only 3 s later (within the
    // 10 s client timeout): the window between Kustom's effect and our bookkeeping that
    // the kill below aims at. It must be wide against scheduling on a loaded machine:
    // with 900 ms the captures seen unrecorded just before the kill could all be
    // recorded by the time it landed, and the test missed its window.
    let fx = Fixture::new(3, |sim| {
        sim.faults.latency_ms = 100;
        sim.faults.hang_rate = 0.2;
        sim.faults.hang_ms = 3000;
        sim.faults.fault_after_effect_rate = 1.0;
        sim.seed = 11;
    })
    .await;
    let finals = finalized(300);
    fx.produce(&finals).await;
    let group = unique_name("actions");
    // A killed member does not leave its group: a short session lets the restarted one
    // get the partitions back quickly.
    let short_session = |config: &mut ipp_actions::Config| {
        add_properties(
            &mut config.kafka.properties,
            &["session.timeout.ms=6000", "heartbeat.interval.ms=1000"],
        );
    };
    let mut actions = fx.start_actions_process(&group, |config| {
        config.concurrency = 8;
        short_session(config);
    });
    eventually(
        Duration::from_secs(90),
        "a capture applied by Kustom but not yet recorded in the ledger",
        || async {
            fx.count("succeeded").await >= 20 && !fx.unrecorded_captures().await.is_empty()
        },
    )
    .await;
    actions.kill();
    let unrecorded = fx.unrecorded_captures().await;
    assert!(!unrecorded.is_empty(), "the kill missed the window");
    assert!(
        fx.count("succeeded").await < 300,
        "the kill came after the run ended"
    );

    let restarted = fx.start_actions(&group, short_session);
    fx.wait_until_all_recorded(300, Duration::from_secs(120))
        .await;
    assert_eq!(
        fx.count("succeeded").await,
        300,
        "{:?}",
        fx.unfinished().await
    );
    // Exactly one capture per order, and the ledger holds the capture ids of those whose
    // answer the kill swallowed (Kustom replayed them for the same key).
    fx.assert_captured_once(&finals).await;
    let stats = fx.sim.get("/_sim/stats").await;
    assert_eq!(stats["captures_applied"], json!(300));
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_4xx_fails_to_the_dlq_without_blocking_others_and_captured_orders_are_skipped() {
    let fx = Fixture::new(1, |_| {}).await;
    let missing = Event::finalized();
    let cancelled = Event::finalized();
    let captured = Event::finalized();
    let refused = Event::finalized();
    let amount = 12_345;
    fx.sim
        .put(
            &format!("/_sim/orders/{}", missing.order_id.unwrap()),
            json!({"missing": true}),
        )
        .await;
    fx.sim
        .put(
            &format!("/_sim/orders/{}", cancelled.order_id.unwrap()),
            json!({"status": "CANCELLED"}),
        )
        .await;
    fx.sim
        .put(
            &format!("/_sim/orders/{}", captured.order_id.unwrap()),
            json!({"status": "CAPTURED", "order_amount": amount, "captured_amount": amount}),
        )
        .await;
    // The bad ones first on the single partition, then healthy orders behind them, and a
    // record that is not an event at all.
    fx.produce(&[missing.clone(), cancelled.clone(), captured.clone()])
        .await;
    fx.produce_raw("garbage", b"{not json").await;
    // Money remains authorized, but Kustom refuses the capture itself: 403 CAPTURE_NOT_ALLOWED.
    fx.sim
        .put(
            &format!("/_sim/orders/{}", refused.order_id.unwrap()),
            json!({"refuse_captures": true}),
        )
        .await;
    fx.produce(std::slice::from_ref(&refused)).await;
    let healthy = finalized(10);
    fx.produce(&healthy).await;
    let actions = fx.start_actions(&unique_name("actions"), |_| {});
    eventually(Duration::from_secs(60), "every action ended", || async {
        fx.count("succeeded").await == 10
            && fx.count("failed").await == 3
            && fx.count("skipped").await == 1
    })
    .await;
    fx.assert_captured_once(&healthy).await;

    let ledger: HashMap<Uuid, Row> = fx
        .ledger()
        .await
        .into_iter()
        .map(|r| (r.order_id, r))
        .collect();
    let row = &ledger[&missing.order_id.unwrap()];
    assert_eq!(row.status, "failed");
    assert_eq!(row.last_status_code, Some(404));
    assert!(
        row.reason.as_deref().unwrap().contains("NO_SUCH_ORDER"),
        "{row:?}"
    );
    let row = &ledger[&cancelled.order_id.unwrap()];
    assert_eq!(row.status, "failed");
    assert!(
        row.reason.as_deref().unwrap().contains("CANCELLED"),
        "{row:?}"
    );
    let row = &ledger[&refused.order_id.unwrap()];
    assert_eq!(row.status, "failed", "{row:?}");
    assert_eq!(row.last_status_code, Some(403));
    assert!(
        row.reason
            .as_deref()
            .unwrap()
            .contains("CAPTURE_NOT_ALLOWED"),
        "{row:?}"
    );
    let row = &ledger[&captured.order_id.unwrap()];
    assert_eq!(row.status, "skipped", "{row:?}");
    assert_eq!(row.capture_id, None);

    let by_order = fx.sim.captures_by_order().await;
    for event in [&missing, &cancelled, &captured, &refused] {
        assert!(!by_order.contains_key(&event.order_id.unwrap()));
    }
    let posts: HashSet<String> = fx
        .calls()
        .await
        .iter()
        .filter(|c| c["method"] == "POST")
        .map(|c| c["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        posts.len(),
        11,
        "only healthy orders and the refused one were POSTed: {posts:?}"
    );

    // The DLQ: the three failed actions, and the unparseable record with its origin.
    let mut dlq_records = Vec::new();
    eventually(Duration::from_secs(30), "4 DLQ records", || {
        dlq_records = kafka::read_topic(&fx.brokers, &fx.dlq_topic);
        std::future::ready(dlq_records.len() >= 4)
    })
    .await;
    assert_eq!(dlq_records.len(), 4);
    for event in [&missing, &cancelled, &refused] {
        let order_id = event.order_id.unwrap().to_string();
        let record = dlq_records
            .iter()
            .find(|r| r.key_str() == Some(order_id.as_str()))
            .unwrap_or_else(|| panic!("no DLQ record for {order_id}"));
        assert_eq!(record.header(dlq::SERVICE), Some("ipp-actions"));
        assert_eq!(record.header(header::EVENT_ID), Some(event.id.as_str()));
        assert!(record.header(dlq::ERROR).is_some());
        let value: Value = serde_json::from_slice(&record.value).unwrap();
        assert_eq!(value["order_id"], json!(order_id));
        assert_eq!(value["session_id"], json!(event.session_id.to_string()));
        assert_eq!(value["status"], json!("failed"));
        assert!(value["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    let garbage = dlq_records
        .iter()
        .find(|r| r.key_str() == Some("garbage"))
        .expect("the unparseable record is in the DLQ");
    assert_eq!(garbage.value, b"{not json");
    assert_eq!(garbage.header(dlq::SOURCE_TOPIC), Some(fx.topic.as_str()));
    assert_eq!(garbage.header(dlq::SOURCE_OFFSET), Some("3"));
    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_longer_than_in_place_retries_leaves_actions_pending_then_all_succeed() {
    let fx = Fixture::new(3, |sim| {
        sim.faults.fail_rate = 1.0;
    })
    .await;
    let before = finalized(30);
    fx.produce(&before).await;
    let actions = fx.start_actions(&unique_name("actions"), |_| {});
    // Every action went past its in-place retries and back to the ledger at least twice.
    eventually(
        Duration::from_secs(60),
        "30 pending actions retried from the ledger",
        || async {
            let rows = fx.ledger().await;
            rows.len() == 30
                && rows
                    .iter()
                    .all(|r| r.status == "pending" && r.attempts >= 2)
        },
    )
    .await;
    // The partition keeps flowing during the outage.
    let during = finalized(30);
    fx.produce(&during).await;
    eventually(
        Duration::from_secs(60),
        "60 actions recorded and retried from the ledger during the outage",
        || async {
            let rows = fx.ledger().await;
            rows.len() == 60
                && rows
                    .iter()
                    .all(|r| r.status == "pending" && r.attempts >= 2)
        },
    )
    .await;
    assert!(fx.sim.captures_by_order().await.is_empty());
    assert!(actions.metric("ipp_actions_rescheduled_total", "").await >= 60.0);

    fx.sim.put("/_sim/faults", json!({})).await;
    // After the recovery.
    fx.wait_for_count("succeeded", 60, Duration::from_secs(90))
        .await;
    let all: Vec<Event> = before.into_iter().chain(during).collect();
    fx.assert_captured_once(&all).await;
    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deprecated_policy_none_records_skipped_actions_and_calls_nothing() {
    let fx = Fixture::new(1, |_| {}).await;
    let finals = finalized(5);
    fx.produce(&finals).await;
    let actions = fx.start_actions(&unique_name("actions"), |config| {
        // ACTIONS_ON_FINALIZED=none, as deployments before ACTIONS_CAPTURE_POLICY set it.
        config.capture_policy = None;
        config.on_finalized = Some(ipp_actions::OnFinalized::None);
    });
    fx.wait_for_count("skipped", 5, Duration::from_secs(60))
        .await;
    // The worker has had every chance to pick them up: still nothing called.
    actions.stop().await;
    for row in fx.ledger().await {
        assert_eq!(row.status, "skipped");
        assert!(row.reason.as_deref().unwrap().contains("policy"));
        assert_eq!(row.attempts, 0);
    }
    assert_eq!(fx.sim.get("/_sim/stats").await["requests"], json!(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_longer_than_in_place_retries_waits_in_the_ledger() {
    let retry_after = 3;
    let fx = Fixture::new(1, |sim| {
        sim.faults.rate_limit_rate = 0.3;
        sim.faults.retry_after_secs = retry_after;
        sim.seed = 7;
    })
    .await;
    let finals = finalized(20);
    fx.produce(&finals).await;
    // In-place delays stop at 2 s: a 3 s Retry-After sends the action back to the ledger,
    // for 3 s: the longest ledger delay (a cap on Retry-After too) is above it.
    let actions = fx.start_actions(&unique_name("actions"), |config| {
        config.retry_max_delay_ms = 10_000;
    });
    fx.wait_for_count("succeeded", 20, Duration::from_secs(120))
        .await;
    fx.assert_captured_once(&finals).await;
    let checked = assert_retry_after_respected(&fx.calls().await, retry_after);
    assert!(checked > 0, "no retry after a 429 to check");
    assert!(
        actions
            .metric("ipp_actions_rescheduled_total", "cause=\"429\"")
            .await
            > 0.0
    );
    assert_eq!(
        actions.metric("ipp_actions_om_retries_total", "").await,
        0.0
    );
    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_api_key_keeps_actions_pending_until_the_key_is_fixed() {
    let fx = Fixture::new(1, |_| {}).await;
    let finals = finalized(5);
    fx.produce(&finals).await;
    let group = unique_name("actions");
    let wrong = fx.start_actions(&group, |config| {
        config.kustom_api_key = Secret::new("kco_test_wrong");
    });
    eventually(
        Duration::from_secs(60),
        "5 actions refused with 401 and retried from the ledger",
        || async {
            let rows = fx.ledger().await;
            rows.len() == 5
                && rows.iter().all(|r| {
                    r.status == "pending" && r.attempts >= 2 && r.last_status_code == Some(401)
                })
        },
    )
    .await;
    wrong.stop().await;
    assert!(fx.sim.captures_by_order().await.is_empty());
    assert!(kafka::read_topic(&fx.brokers, &fx.dlq_topic).is_empty());

    let fixed = fx.start_actions(&group, |_| {});
    fx.wait_for_count("succeeded", 5, Duration::from_secs(60))
        .await;
    fx.assert_captured_once(&finals).await;
    fixed.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deprecated_calls_per_second_setting_still_limits_order_management_calls() {
    let fx = Fixture::new(1, |_| {}).await;
    let finals = finalized(30);
    fx.produce(&finals).await;
    let actions = fx.start_actions(&unique_name("actions"), |config| {
        config.om_rate_limit = None;
        config.max_calls_per_sec = Some(20.0);
    });
    fx.wait_for_count("succeeded", 30, Duration::from_secs(60))
        .await;
    fx.assert_captured_once(&finals).await;
    let calls = fx.calls().await;
    assert_eq!(calls.len(), 60, "a GET and a POST per order");
    let at = |c: &Value| DateTime::parse_from_rfc3339(c["at"].as_str().unwrap()).unwrap();
    // 60 calls at 20 per second, the first 10 (the default burst) at once: the last
    // cannot leave less than 50 intervals of 50 ms after the first.
    let span = at(&calls[59]) - at(&calls[0]);
    assert!(
        span >= chrono::Duration::milliseconds(2300),
        "60 calls took only {span}"
    );
    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_run_exits_cleanly_and_leaves_no_action_leased() {
    let fx = Fixture::new(1, |sim| {
        sim.faults.latency_ms = 300;
    })
    .await;
    let finals = finalized(60);
    fx.produce(&finals).await;
    let group = unique_name("actions");
    let settings = |config: &mut ipp_actions::Config| {
        config.concurrency = 8;
        config.lease_ms = 600_000;
    };
    let actions = fx.start_actions_process(&group, settings);
    eventually(Duration::from_secs(60), "some captures done", || async {
        fx.count("succeeded").await >= 8
    })
    .await;
    actions.stop().await; // SIGTERM, then exit status 0 asserted
    assert!(
        fx.count("succeeded").await < 60,
        "the run ended before SIGTERM"
    );
    // In-flight actions were finished or handed back: none is held by a lease of the
    // stopped process (which would block it for ten minutes).
    let leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ipp_actions \
         WHERE status = 'pending' AND next_attempt_at > now() + interval '1 minute'",
    )
    .fetch_one(&fx.pool)
    .await
    .unwrap();
    assert_eq!(leased, 0);

    let restarted = fx.start_actions(&group, settings);
    fx.wait_for_count("succeeded", 60, Duration::from_secs(60))
        .await;
    fx.assert_captured_once(&finals).await;
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_the_ledger_without_working_one_action_twice() {
    let fx = Fixture::new(3, |sim| {
        sim.faults.latency_ms = 50;
    })
    .await;
    let finals = finalized(200);
    fx.produce(&finals).await;
    let group = unique_name("actions");
    let settings = |config: &mut ipp_actions::Config| config.concurrency = 4;
    let a = fx.start_actions(&group, settings);
    let b = fx.start_actions(&group, settings);
    fx.wait_until_all_recorded(200, Duration::from_secs(120))
        .await;
    assert_eq!(
        fx.count("succeeded").await,
        200,
        "{:?}",
        fx.unfinished().await
    );
    fx.assert_captured_once(&finals).await;
    // Claims are exclusive: one GET and one POST per order, however many replicas.
    let calls = fx.calls().await;
    let posts = calls.iter().filter(|c| c["method"] == "POST").count();
    let gets = calls.iter().filter(|c| c["method"] == "GET").count();
    assert_eq!((gets, posts), (200, 200));
    let (by_a, by_b) = (
        a.metric("ipp_actions_om_calls_total", "capture").await,
        b.metric("ipp_actions_om_calls_total", "capture").await,
    );
    assert_eq!(by_a + by_b, 200.0);
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "both replicas worked: {by_a} + {by_b}"
    );
    a.stop().await;
    b.stop().await;
}

/// Cooperative rebalancing under flow: a third replica joins while finalized sessions
/// keep arriving, takes partitions of its own, and leaves again; every order is still
/// recorded and captured exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_third_replica_joining_and_leaving_while_records_flow_captures_each_order_once() {
    let fx = Fixture::new(6, |sim| {
        sim.faults.latency_ms = 20;
    })
    .await;
    let finals = finalized(400);
    let group = unique_name("actions");
    let a = fx.start_actions(&group, |_| {});
    let b = fx.start_actions(&group, |_| {});

    let mut chunks = finals.chunks(4);
    // Produces the next chunk, 200 ms apart; false once every event is produced.
    let mut produce_next = async || {
        let Some(chunk) = chunks.next() else {
            return false;
        };
        fx.produce(chunk).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        true
    };
    const LASTS: &str = "the workload lasts until the third replica left";
    for _ in 0..3 {
        assert!(produce_next().await, "{LASTS}");
    }
    let c = fx.start_actions(&group, |_| {});
    let joined = Instant::now();
    while c.metric("ipp_actions_records_total", "recorded").await == 0.0 {
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "the third replica was given no partition within 60 s"
        );
        assert!(produce_next().await, "{LASTS}");
    }
    for _ in 0..3 {
        assert!(produce_next().await, "{LASTS}");
    }
    c.stop().await;
    while produce_next().await {}

    fx.wait_until_all_recorded(finals.len(), Duration::from_secs(120))
        .await;
    assert_eq!(
        fx.count("succeeded").await,
        finals.len() as i64,
        "{:?}",
        fx.unfinished().await
    );
    fx.assert_captured_once(&finals).await;
    a.stop().await;
    b.stop().await;
}

/// A topic that does not exist keeps ipp-actions not ready, and asking for it never
/// creates it; once an operator creates it, the service starts consuming by itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_topic_keeps_actions_not_ready_and_is_never_created() {
    let mut fx = Fixture::new(1, |_| {}).await;
    fx.topic = unique_name("ipp_events_not_created_yet");
    // The commands topic is missing too: it is as necessary as the event topic.
    fx.commands_topic = unique_name("ipp_commands_not_created_yet");
    // And the observations topic, which it only writes.
    fx.observations_topic = unique_name("ipp_observations_not_created_yet");
    let actions = fx.start_actions(&unique_name("actions"), |_| {});
    let readyz = format!("{}/readyz", actions.url());
    for _ in 0..10 {
        let status = reqwest::get(&readyz).await.expect("readyz").status();
        assert_eq!(status, 503, "ready without its topic");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for topic in [&fx.topic, &fx.commands_topic, &fx.observations_topic] {
        assert!(
            !kafka::topic_exists(&fx.brokers, topic),
            "ipp-actions created {topic}"
        );
    }

    kafka::create_named_topic(&fx.brokers, &fx.topic, 1).await;
    // Still not ready: the commands topic is missing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = reqwest::get(&readyz).await.expect("readyz").status();
    assert_eq!(status, 503, "ready without its commands topic");
    kafka::create_named_topic(&fx.brokers, &fx.commands_topic, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = reqwest::get(&readyz).await.expect("readyz").status();
    assert_eq!(status, 503, "ready without its observations topic");
    kafka::create_named_topic(&fx.brokers, &fx.observations_topic, 1).await;
    fx.producer = Producer::new(&fx.brokers, &fx.topic);
    let finals = finalized(3);
    fx.produce(&finals).await;
    fx.wait_until_all_recorded(3, Duration::from_secs(60)).await;
    fx.assert_captured_once(&finals).await;
    let status = reqwest::get(&readyz).await.expect("readyz").status();
    assert_eq!(status, 200);
    actions.stop().await;
}

/// Which instance takes over the claims of a SIGKILLed one.
#[derive(Clone, Copy, PartialEq)]
enum Survivor {
    /// Started after the kill.
    Restarted,
    /// Already running next to it when it was killed.
    AlreadyRunning,
}

/// A killed ipp-actions holds 32 claims mid-attempt, under Order Management faults; the
/// survivor captures every one of them, exactly once, within 30 s of the kill. With the
/// product's lease, concurrency and timeouts (the retry delays are the suite's short ones).
async fn a_killed_worker_holds_no_capture_back(survivor: Survivor) {
    // Phase 1: calls slow enough (3 s each) that no action finishes before the kill, so the
    // killed process dies holding every claim, as in the reported run. 5xx and 429 all along.
    let faults = |latency_ms: u64| {
        json!({
            "latency_ms": latency_ms,
            "fail_rate": 0.2,
            "rate_limit_rate": 0.1,
            "retry_after_secs": 1,
        })
    };
    let fx = Fixture::new(3, |sim| sim.seed = 13).await;
    fx.sim.put("/_sim/faults", faults(3000)).await;
    let finals = finalized(32);
    fx.produce(&finals).await;
    let defaults = product_defaults();
    let as_shipped = |config: &mut ipp_actions::Config| {
        config.lease_ms = defaults.lease_ms;
        config.concurrency = defaults.concurrency;
        config.http_timeout_ms = defaults.http_timeout_ms;
        config.connect_timeout_ms = defaults.connect_timeout_ms;
    };
    let group = unique_name("actions");
    let mut killed = fx.start_actions_process(&group, as_shipped);
    eventually(
        Duration::from_secs(60),
        "32 actions claimed by the first instance",
        || async { fx.claimed().await == 32 },
    )
    .await;
    let running = (survivor == Survivor::AlreadyRunning).then(|| {
        let second = fx.start_actions(&group, as_shipped);
        (second.url(), second)
    });
    if let Some((url, _)) = &running {
        eventually(
            Duration::from_secs(30),
            "the second instance is up",
            || async {
                reqwest::get(format!("{url}/healthz"))
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
    }
    killed.kill();
    let killed_at = Instant::now();
    // Phase 2: the same 5xx and 429, at a latency that lets the survivor's work fit the
    // 30 s, so that what is measured is how soon the claims come free.
    fx.sim.put("/_sim/faults", faults(300)).await;
    let rows = fx.ledger().await;
    assert_eq!(
        fx.count("succeeded").await,
        0,
        "an action ended before the kill"
    );
    assert!(
        rows.iter()
            .all(|r| r.status == "pending" && r.attempts == 1),
        "{rows:?}"
    );
    assert_eq!(
        fx.claimed().await,
        32,
        "the kill came after a claim was given up"
    );

    let survivor = match running {
        Some((_, second)) => second,
        None => fx.start_actions(&group, as_shipped),
    };
    eventually(
        Duration::from_secs(30).saturating_sub(killed_at.elapsed()),
        "all 32 captured within 30 s of the kill",
        || async { fx.count("succeeded").await == 32 },
    )
    .await;
    eprintln!(
        "32 claims of a killed worker captured {:?} after the kill",
        killed_at.elapsed()
    );
    fx.assert_captured_once(&finals).await;
    let stats = fx.sim.get("/_sim/stats").await;
    assert_eq!(stats["captures_applied"], json!(32));
    for row in fx.ledger().await {
        assert!(row.attempts >= 2, "taken over after the kill: {row:?}");
    }
    let calls = fx.calls().await;
    assert!(
        calls.iter().any(|c| c["status"] == json!(429)),
        "no 429 was injected"
    );
    assert!(
        calls
            .iter()
            .any(|c| c["status"].as_u64().is_some_and(|s| s >= 500)),
        "no 5xx was injected"
    );
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_with_32_actions_claimed_a_restarted_instance_captures_each_once_within_30_s() {
    a_killed_worker_holds_no_capture_back(Survivor::Restarted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_with_32_actions_claimed_a_running_second_instance_captures_each_once_within_30_s()
{
    a_killed_worker_holds_no_capture_back(Survivor::AlreadyRunning).await;
}

/// Every Order Management call takes longer than the whole lease; the claim is renewed
/// meanwhile, so the second replica never takes an action the first one is working on.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_slower_than_the_lease_keeps_its_claim_and_no_replica_runs_an_action_twice() {
    let defaults = product_defaults();
    let fx = Fixture::new(1, |sim| {
        sim.faults.latency_ms = defaults.lease_ms + 1000;
    })
    .await;
    let finals = finalized(6);
    fx.produce(&finals).await;
    let group = unique_name("actions");
    let as_shipped = |config: &mut ipp_actions::Config| {
        config.lease_ms = defaults.lease_ms;
        config.http_timeout_ms = defaults.http_timeout_ms;
    };
    let a = fx.start_actions(&group, as_shipped);
    let b = fx.start_actions(&group, as_shipped);
    fx.wait_until_all_recorded(6, Duration::from_secs(90)).await;
    fx.assert_captured_once(&finals).await;
    for row in fx.ledger().await {
        assert_eq!(row.attempts, 1, "claimed twice: {row:?}");
    }
    let calls = fx.calls().await;
    for event in &finals {
        let order = event.order_id.unwrap().to_string();
        let methods: Vec<&str> = calls
            .iter()
            .filter(|c| c["path"].as_str().unwrap().contains(&order))
            .map(|c| c["method"].as_str().unwrap())
            .collect();
        assert_eq!(methods, ["GET", "POST"], "calls for {order}");
    }
    a.stop().await;
    b.stop().await;
}

/// 429s whose `Retry-After` asks for a wait no `Duration` or PostgreSQL interval can
/// hold, spelled three ways: the worker neither panics nor waits for it; it retries after
/// its longest ledger delay and captures once the rate limit is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_retry_after_neither_panics_nor_stalls_the_worker_and_the_capture_follows() {
    let fx = Fixture::new(1, |_| {}).await;
    let finals = finalized(3);
    fx.produce(&finals).await;
    let mut actions = fx.start_actions_process(&unique_name("actions"), |_| {});
    for retry_after in [
        "1e30",
        "18446744073709551616",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ] {
        fx.sim
            .put(
                "/_sim/faults",
                json!({"rate_limit_rate": 1.0, "retry_after": retry_after}),
            )
            .await;
        // Two more attempts: at least one of them wholly under this Retry-After.
        let target = fx
            .ledger()
            .await
            .iter()
            .map(|r| r.attempts)
            .max()
            .unwrap_or(0)
            + 2;
        // Rescheduled with the 429 written down (the delay fit the ledger), and taken up
        // again after the suite's 2 s longest delay, not after centuries.
        eventually(
            Duration::from_secs(30),
            &format!("3 actions refused with 429 (Retry-After {retry_after}) and retried"),
            || async {
                let rows = fx.ledger().await;
                rows.len() == 3
                    && rows.iter().all(|r| {
                        r.status == "pending"
                            && r.attempts >= target
                            && r.last_status_code == Some(429)
                    })
            },
        )
        .await;
    }
    assert!(fx.sim.captures_by_order().await.is_empty());

    fx.sim.put("/_sim/faults", json!({})).await;
    fx.wait_for_count("succeeded", 3, Duration::from_secs(30))
        .await;
    fx.assert_captured_once(&finals).await;
    assert!(actions.is_running(), "ipp-actions exited");
    let ipp_tests::actions::Actions::Process { service, .. } = &actions else {
        unreachable!("started as a process");
    };
    let logs = service.logs();
    assert!(!logs.contains("panicked"), "a worker panicked:\n{logs}");
    actions.stop().await;
}

/// A worker frozen (SIGSTOP) in the middle of its attempts, past its lease: another
/// instance takes the actions over and captures them; when the frozen one wakes up
/// (SIGCONT) it sends nothing more to Order Management and writes nothing to the ledger,
/// and counts every attempt it gave up.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_worker_that_wakes_up_after_its_lease_sends_and_writes_nothing() {
    let fx = Fixture::new(1, |sim| sim.faults.latency_ms = 3000).await;
    let finals = finalized(8);
    fx.produce(&finals).await;
    let defaults = product_defaults();
    let as_shipped = |config: &mut ipp_actions::Config| {
        config.lease_ms = defaults.lease_ms;
        config.http_timeout_ms = defaults.http_timeout_ms;
    };
    let group = unique_name("actions");
    let frozen = fx.start_actions_process(&group, as_shipped);
    let ipp_tests::actions::Actions::Process { service, .. } = &frozen else {
        unreachable!("started as a process");
    };
    eventually(Duration::from_secs(60), "8 actions claimed", || async {
        fx.claimed().await == 8
    })
    .await;
    service.signal("STOP");
    fx.sim.put("/_sim/faults", json!({})).await;
    let taker = fx.start_actions(&group, as_shipped);
    fx.wait_for_count("succeeded", 8, Duration::from_secs(30))
        .await;
    fx.assert_captured_once(&finals).await;
    let ledger_before = format!("{:?}", fx.ledger().await);

    let woken_at = chrono::Utc::now();
    service.signal("CONT");
    eventually(
        Duration::from_secs(30),
        "the woken worker gave up its attempts",
        || async {
            frozen.metrics().await.is_ok()
                && frozen.metric("ipp_actions_in_flight", "").await == 0.0
        },
    )
    .await;
    let late: Vec<Value> = fx
        .calls()
        .await
        .into_iter()
        .filter(|c| DateTime::parse_from_rfc3339(c["at"].as_str().unwrap()).unwrap() >= woken_at)
        .collect();
    assert!(
        late.is_empty(),
        "calls after the stale worker woke up: {late:?}"
    );
    assert_eq!(format!("{:?}", fx.ledger().await), ledger_before);
    fx.assert_captured_once(&finals).await;
    for row in fx.ledger().await {
        assert_eq!(row.attempts, 2, "claimed by both, run by one: {row:?}");
    }
    assert!(service.logs().contains("claim lost"), "{}", service.logs());
    assert_eq!(
        frozen.metric("ipp_actions_claims_lost_total", "").await,
        8.0
    );
    taker.stop().await;
    frozen.stop().await;
}
