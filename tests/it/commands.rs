//! Money commands end to end: the commands API of `ipp-actions` (in-process, or a child
//! process to SIGKILL), a real broker, real PostgreSQL and the Order Management simulator.
//! Every test checks the command's state AND the effects the simulator applied.

use std::time::Duration;

use ipp_tests::{
    actions::{finalized, Fixture},
    commands::{with_api, CommandsClient},
    eventually::eventually,
    unique_name,
};
use serde_json::{json, Value};
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(60);

/// The simulator's view of an order: amounts and the effects applied to it.
async fn sim_order(fx: &Fixture, order: Uuid) -> Value {
    fx.sim.get(&format!("/_sim/orders/{order}")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn on_command_capture_partial_then_the_rest_then_refunds_each_once() {
    let fx = Fixture::new(1, |_| {}).await;
    let finals = finalized(1);
    let order = finals[0].order_id.unwrap();
    let authorized = ipp_om_sim::authorized_amount_for(&order);
    fx.produce(&finals).await;
    let actions = fx.start_actions(&unique_name("actions"), |config| {
        with_api(config);
        config.capture_policy = Some(ipp_actions::CapturePolicy::OnCommand);
    });
    let api = CommandsClient::new(&actions.url());
    // Under on-command the finalized session is recorded, and nothing is captured.
    fx.wait_for_count("skipped", 1, SETTLE).await;

    let first = api
        .issue(
            order,
            "captures",
            "cap-1",
            Some(&json!({"amount": 1000, "reference": "handover-1"})),
        )
        .await;
    let state = api.settled(first, SETTLE).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    assert_eq!(state["captured_amount"], 1000);
    assert!(
        state["capture_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{state}"
    );
    // The rest: a capture without an amount takes what remains authorized.
    let rest = api.issue(order, "captures", "cap-2", None).await;
    let state = api.settled(rest, SETTLE).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    assert_eq!(state["captured_amount"], authorized - 1000);

    let mut refunds = Vec::new();
    for (key, amount) in [("ref-1", 100), ("ref-2", 250)] {
        refunds.push(
            api.issue(order, "refunds", key, Some(&json!({"amount": amount})))
                .await,
        );
    }
    for id in &refunds {
        let state = api.settled(*id, SETTLE).await;
        assert_eq!(state["status"], "succeeded", "{state}");
        assert!(state["refund_id"].as_str().is_some(), "{state}");
    }
    // The rest of what was captured: refunded in full.
    let full = api
        .issue(
            order,
            "refunds",
            "ref-3",
            Some(&json!({"amount": authorized - 350})),
        )
        .await;
    assert_eq!(api.settled(full, SETTLE).await["status"], "succeeded");
    let beyond = api
        .issue(order, "refunds", "ref-4", Some(&json!({"amount": 1})))
        .await;
    let state = api.settled(beyond, SETTLE).await;
    assert_eq!(state["error_code"], "REFUND_NOT_ALLOWED", "{state}");

    let order_now = sim_order(&fx, order).await;
    assert_eq!(order_now["captured_amount"], authorized, "{order_now}");
    assert_eq!(order_now["refunded_amount"], authorized, "{order_now}");
    assert_eq!(order_now["effects"]["captures"], 2, "{order_now}");
    assert_eq!(order_now["effects"]["refunds"], 3, "{order_now}");

    // Each command was sent with its own key, derived from its id: the documented
    // UUIDv5 of "{kind}:{command_id}:{order_id}" in the ledger's namespace.
    let namespace: Uuid = ipp_tests::actions::KEY_NAMESPACE.parse().unwrap();
    let calls = fx.calls().await;
    for (id, kind, suffix) in [
        (first, "capture", "/captures"),
        (refunds[0], "refund", "/refunds"),
    ] {
        let key = Uuid::new_v5(&namespace, format!("{kind}:{id}:{order}").as_bytes()).to_string();
        let sent = calls
            .iter()
            .filter(|c| c["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
            .filter(|c| c["idempotency_key"] == json!(key))
            .count();
        assert_eq!(sent, 1, "{kind} {id} with key {key}: {calls:?}");
    }
    actions.stop().await;
}

/// The command ids of `answers`, which must all be 202 for one and the same command.
fn one_command(answers: &[ipp_tests::commands::Answer]) -> Uuid {
    let ids: std::collections::HashSet<Uuid> = answers
        .iter()
        .map(|a| {
            assert_eq!(a.status, reqwest::StatusCode::ACCEPTED, "{a:?}");
            a.command_id()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one key, one command: {ids:?}");
    ids.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_idempotency_key_posted_20_times_at_once_is_one_command_and_one_refund() {
    let fx = Fixture::new(1, |_| {}).await;
    let finals = finalized(1);
    let order = finals[0].order_id.unwrap();
    fx.produce(&finals).await;
    let actions = fx.start_actions(&unique_name("actions"), with_api);
    // The automatic capture (on-finalized, the default) first.
    fx.wait_for_count("succeeded", 1, SETTLE).await;
    let api = CommandsClient::new(&actions.url());
    let body = json!({"amount": 700, "reference": "return-77"});
    let path = format!("/v1/orders/{order}/refunds");
    let posts = (0..20).map(|_| api.post(&path, Some("refund-77"), Some(&body)));
    let answers = futures::future::join_all(posts).await;
    let id = one_command(&answers);
    // The requests with the key were serialized: the log got the command once.
    assert_eq!(fx.commands_in_log().len(), 1);
    let state = api.settled(id, SETTLE).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    assert_eq!(state["refunded_amount"], 700);
    let order_now = sim_order(&fx, order).await;
    assert_eq!(order_now["effects"]["refunds"], 1, "{order_now}");
    assert_eq!(order_now["refunded_amount"], 700, "{order_now}");
    // And once more afterwards: the same command, with its outcome, nothing new.
    let again = api.post(&path, Some("refund-77"), Some(&body)).await;
    assert_eq!(again.command_id(), id);
    assert_eq!(again.body["status"], "succeeded", "{:?}", again.body);
    assert_eq!(fx.commands_in_log().len(), 1);
    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_end_failed_with_oms_code_in_the_dlq_and_the_commands_behind_them_succeed() {
    let fx = Fixture::new(1, |_| {}).await;
    let finals = finalized(1);
    let order = finals[0].order_id.unwrap();
    let authorized = ipp_om_sim::authorized_amount_for(&order);
    let unknown = Uuid::new_v4();
    fx.sim
        .put(&format!("/_sim/orders/{unknown}"), json!({"missing": true}))
        .await;
    fx.produce(&finals).await;
    let actions = fx.start_actions(&unique_name("actions"), with_api);
    fx.wait_for_count("succeeded", 1, SETTLE).await;
    let api = CommandsClient::new(&actions.url());

    // In this order on the order's partition: each refusal ends its command, not the
    // ones behind it.
    let too_much = api
        .issue(
            order,
            "refunds",
            "r-too-much",
            Some(&json!({"amount": authorized + 1})),
        )
        .await;
    let cancel = api.issue(order, "cancel", "c-after-capture", None).await;
    let capture_more = api
        .issue(order, "captures", "c-more", Some(&json!({"amount": 1})))
        .await;
    let refund = api
        .issue(order, "refunds", "r-ok", Some(&json!({"amount": 100})))
        .await;
    let nowhere = api
        .issue(
            unknown,
            "refunds",
            "r-unknown",
            Some(&json!({"amount": 100})),
        )
        .await;
    let nowhere_capture = api.issue(unknown, "captures", "c-unknown", None).await;

    for (id, code) in [
        (too_much, "REFUND_NOT_ALLOWED"),
        (cancel, "CANCEL_NOT_ALLOWED"),
        (capture_more, "CAPTURE_NOT_ALLOWED"),
        (nowhere, "NO_SUCH_ORDER"),
        (nowhere_capture, "NO_SUCH_ORDER"),
    ] {
        let state = api.settled(id, SETTLE).await;
        assert_eq!(state["status"], "failed", "{state}");
        assert_eq!(state["error_code"], code, "{state}");
        assert!(
            state["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(code)),
            "{state}"
        );
    }
    let state = api.settled(refund, SETTLE).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    let order_now = sim_order(&fx, order).await;
    assert_eq!(order_now["refunded_amount"], 100, "{order_now}");
    assert_eq!(order_now["status"], "CAPTURED", "{order_now}");
    assert_eq!(order_now["effects"]["cancels"], 0, "{order_now}");

    // Each failure is in ipp.actions.dlq once, with OM's code.
    fx.wait_for_dlq_records(5, "the five refused commands parked")
        .await;
    let parked: Vec<Value> = ipp_tests::kafka::read_topic(&fx.brokers, &fx.dlq_topic)
        .iter()
        .map(|r| serde_json::from_slice(&r.value).expect("a failed action"))
        .collect();
    let mut parked_ids: Vec<String> = parked
        .iter()
        .map(|p| p["command_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    parked_ids.sort();
    let mut expected: Vec<String> = [too_much, cancel, capture_more, nowhere, nowhere_capture]
        .iter()
        .map(Uuid::to_string)
        .collect();
    expected.sort();
    assert_eq!(parked_ids, expected);
    assert!(
        parked.iter().all(|p| p["error_code"].is_string()),
        "{parked:?}"
    );

    // The command line shows the order's commands, in order.
    let list = fx
        .cli(
            &unique_name("cli"),
            &["command", "list", &order.to_string(), "--json"],
        )
        .await
        .success();
    let listed: Vec<Value> = list
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json lines"))
        .collect();
    let listed_ids: Vec<String> = listed
        .iter()
        .map(|c| c["command_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed_ids,
        [too_much, cancel, capture_more, refund]
            .map(|id| id.to_string())
            .to_vec()
    );
    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partly_captured_order_gets_only_the_remainder_captured() {
    let fx = Fixture::new(1, |_| {}).await;
    let finals = finalized(1);
    let order = finals[0].order_id.unwrap();
    // Captured in part already (by the POS, the Portal, anybody): 400 of 1000.
    fx.sim
        .put(
            &format!("/_sim/orders/{order}"),
            json!({"order_amount": 1000, "captured_amount": 400}),
        )
        .await;
    fx.produce(&finals).await;
    let actions = fx.start_actions(&unique_name("actions"), |config| {
        with_api(config);
        config.capture_policy = Some(ipp_actions::CapturePolicy::OnCommand);
    });
    fx.wait_for_count("skipped", 1, SETTLE).await;
    let api = CommandsClient::new(&actions.url());
    let id = api.issue(order, "captures", "rest", None).await;
    let state = api.settled(id, SETTLE).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    assert_eq!(state["captured_amount"], 600, "{state}");
    let order_now = sim_order(&fx, order).await;
    assert_eq!(order_now["captured_amount"], 1000, "{order_now}");
    assert_eq!(order_now["status"], "CAPTURED", "{order_now}");
    assert_eq!(order_now["effects"]["captures"], 1, "{order_now}");
    // Nothing remains: another capture of the rest fails, it does not capture twice.
    let again = api.issue(order, "captures", "rest-again", None).await;
    let state = api.settled(again, SETTLE).await;
    assert_eq!(state["status"], "failed", "{state}");
    assert!(
        state["reason"]
            .as_str()
            .unwrap()
            .contains("already captured"),
        "{state}"
    );
    assert_eq!(sim_order(&fx, order).await["effects"]["captures"], 1);
    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_answer_without_remaining_authorized_amount_is_retried_then_parked_never_skipped()
{
    let fx = Fixture::new(1, |_| {}).await;
    let finals = finalized(2);
    let (automatic, commanded) = (finals[0].order_id.unwrap(), finals[1].order_id.unwrap());
    for order in [automatic, commanded] {
        fx.sim
            .put(
                &format!("/_sim/orders/{order}"),
                json!({"omit_fields": ["remaining_authorized_amount"]}),
            )
            .await;
    }
    fx.produce(&finals[..1]).await;
    // The test is about the end of the retries: two attempts instead of fifty.
    let actions = fx.start_actions(&unique_name("actions"), |config| {
        with_api(config);
        config.max_attempts = 2;
    });
    let api = CommandsClient::new(&actions.url());
    let id = api.issue(commanded, "captures", "cap", None).await;
    let state = api.settled(id, SETTLE).await;
    assert_eq!(state["status"], "failed", "{state}");
    assert!(
        state["reason"]
            .as_str()
            .unwrap()
            .contains("retries exhausted"),
        "{state}"
    );
    assert!(
        state["last_error"]
            .as_str()
            .unwrap()
            .contains("remaining_authorized_amount"),
        "{state}"
    );
    fx.wait_for_count("failed", 2, SETTLE).await;
    let rows = fx.ledger().await;
    let row = rows
        .iter()
        .find(|r| r.order_id == automatic)
        .expect("the automatic capture");
    assert_eq!(row.status, "failed", "{row:?}");
    fx.wait_for_dlq_records(2, "both captures parked").await;
    for order in [automatic, commanded] {
        let order_now = sim_order(&fx, order).await;
        assert_eq!(order_now["effects"]["captures"], 0, "{order_now}");
    }
    actions.stop().await;
}

/// One order's story and what the simulator must show at the end.
struct Story {
    order: Uuid,
    commands: Vec<(&'static str, String, Option<Value>)>,
    captures: u64,
    refunds: u64,
    cancels: u64,
    releases: u64,
    status: &'static str,
}

fn stories(n: usize, finals: &[ipp_tests::actions::Event]) -> Vec<Story> {
    finals
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, event)| {
            let order = event.order_id.unwrap();
            let key = |what: &str| format!("{what}-{order}");
            match i % 3 {
                // Capture in two parts, then two refunds.
                0 => Story {
                    order,
                    commands: vec![
                        ("captures", key("c1"), Some(json!({"amount": 500}))),
                        ("captures", key("c2"), None),
                        ("refunds", key("r1"), Some(json!({"amount": 100}))),
                        ("refunds", key("r2"), Some(json!({"amount": 200}))),
                    ],
                    captures: 2,
                    refunds: 2,
                    cancels: 0,
                    releases: 0,
                    status: "CAPTURED",
                },
                // Nothing handed over: void it.
                1 => Story {
                    order,
                    commands: vec![("cancel", key("x"), None)],
                    captures: 0,
                    refunds: 0,
                    cancels: 1,
                    releases: 0,
                    status: "CANCELLED",
                },
                // Part of the goods: capture it, release the rest.
                _ => Story {
                    order,
                    commands: vec![
                        ("captures", key("c1"), Some(json!({"amount": 300}))),
                        ("release-remaining-authorization", key("rel"), None),
                    ],
                    captures: 1,
                    refunds: 0,
                    cancels: 0,
                    releases: 1,
                    status: "CAPTURED",
                },
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_moves_money_once_through_duplicates_sigkill_faults_and_a_replay() {
    // 30 % 5xx and 10 % 429 on every route; another 10 % of requests are applied and then
    // answered only 3 s later: the window between Kustom's effect and our ledger update
    // that the SIGKILL below aims at.
    let fx = Fixture::new(2, |sim| {
        sim.faults.fail_rate = 0.3;
        sim.faults.rate_limit_rate = 0.1;
        sim.faults.hang_rate = 0.1;
        sim.faults.hang_ms = 3000;
        sim.faults.fault_after_effect_rate = 1.0;
        sim.seed = 14;
    })
    .await;
    let finals = finalized(24);
    fx.produce(&finals).await;
    let stories = stories(24, &finals);
    let group = unique_name("actions");
    let configure = |config: &mut ipp_actions::Config| {
        with_api(config);
        config.capture_policy = Some(ipp_actions::CapturePolicy::OnCommand);
        // A killed member does not leave its group: a short session gives the restarted
        // one the partitions back quickly.
        ipp_tests::inprocess::add_properties(
            &mut config.kafka.properties,
            &["session.timeout.ms=6000", "heartbeat.interval.ms=1000"],
        );
    };
    let mut actions = fx.start_actions_process(&group, configure);
    let api = CommandsClient::new(&actions.url());

    // Every command twice with its key (a client retrying a POST it timed out on).
    let mut ids = Vec::new();
    for story in &stories {
        for (what, key, body) in &story.commands {
            let path = format!("/v1/orders/{}/{what}", story.order);
            let first = api.post(&path, Some(key), body.as_ref()).await;
            let again = api.post(&path, Some(key), body.as_ref()).await;
            ids.push(one_command(&[first, again]));
        }
    }
    // And every record of the commands topic once more in the log, as a producer retry
    // or an operator's re-publication would leave it.
    let logged = fx.commands_in_log();
    assert_eq!(logged.len(), ids.len(), "one record per command");
    let producer = ipp_tests::produce::Producer::new(&fx.brokers, &fx.commands_topic);
    for record in &logged {
        producer
            .send_raw(
                record.key.as_deref(),
                Some(&record.value),
                rdkafka::message::OwnedHeaders::new(),
            )
            .await;
    }

    // SIGKILL while a command's effect is applied but its answer not yet recorded.
    let pending_with_effect = || async {
        let calls = fx.calls().await;
        let hung: Vec<String> = calls
            .iter()
            .filter(|c| c["fault"] == json!("hang") && c["after_effect"] == json!(true))
            .filter(|c| c["method"] == json!("POST"))
            .filter_map(|c| c["idempotency_key"].as_str().map(str::to_owned))
            .collect();
        let pending: Vec<String> = sqlx::query_scalar(
            "SELECT idempotency_key::text FROM ipp_actions WHERE status = 'pending' AND command_id IS NOT NULL",
        )
        .fetch_all(&fx.pool)
        .await
        .unwrap_or_default();
        hung.iter().filter(|k| pending.contains(k)).count()
    };
    eventually(
        Duration::from_secs(90),
        "a command applied by Kustom but not yet recorded in the ledger",
        || async { pending_with_effect().await > 0 },
    )
    .await;
    actions.kill();
    assert!(
        pending_with_effect().await > 0,
        "the kill missed the window"
    );

    let restarted = fx.start_actions(&group, configure);
    let api = CommandsClient::new(&restarted.url());
    for id in &ids {
        let state = api.settled(*id, Duration::from_secs(180)).await;
        assert_eq!(state["status"], "succeeded", "{state}");
    }
    let check = |stats: Value| {
        assert_eq!(stats["captures_applied"], 24, "{stats}");
        assert_eq!(stats["refunds_applied"], 16, "{stats}");
        assert_eq!(stats["cancels_applied"], 8, "{stats}");
        assert_eq!(stats["releases_applied"], 8, "{stats}");
    };
    let stats = fx.sim.get("/_sim/stats").await;
    check(stats.clone());
    for status in ["429", "500", "503"] {
        assert!(
            stats["by_status"][status].as_u64() > Some(0),
            "no {status} injected: {stats}"
        );
    }
    // Redeliveries are duplicates, never parked as conflicts.
    assert!(ipp_tests::kafka::read_topic(&fx.brokers, &fx.dlq_topic).is_empty());
    for story in &stories {
        let order = sim_order(&fx, story.order).await;
        let effects = &order["effects"];
        assert_eq!(effects["captures"], story.captures, "{order}");
        assert_eq!(effects["refunds"], story.refunds, "{order}");
        assert_eq!(effects["cancels"], story.cancels, "{order}");
        assert_eq!(effects["releases"], story.releases, "{order}");
        assert_eq!(order["status"], story.status, "{order}");
    }

    // A replay of both topics by a fresh consumer group on the same ledger: every record
    // is a duplicate, nothing is sent.
    let replay = fx.start_actions(&unique_name("replay"), with_api);
    let records = (fx.commands_in_log().len() + finals.len()) as f64;
    eventually(
        Duration::from_secs(60),
        "the replay consumed both topics",
        || async {
            replay
                .metric("ipp_actions_records_total", "outcome=\"duplicate\"")
                .await
                >= records
        },
    )
    .await;
    // Give the replay's worker a moment in which it could act, were anything due.
    tokio::time::sleep(Duration::from_secs(2)).await;
    check(fx.sim.get("/_sim/stats").await);
    assert_eq!(fx.count("pending").await, 0);
    replay.stop().await;
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_waits_for_the_orders_pending_capture_and_runs_after_it() {
    // Order Management is down: the automatic capture stays pending, retried.
    let fx = Fixture::new(1, |sim| sim.faults.fail_rate = 1.0).await;
    let finals = finalized(1);
    let order = finals[0].order_id.unwrap();
    fx.produce(&finals).await;
    let actions = fx.start_actions(&unique_name("actions"), with_api);
    let capture_attempts = || async {
        sqlx::query_scalar::<_, i32>("SELECT attempts FROM ipp_actions WHERE action = 'capture'")
            .fetch_one(&fx.pool)
            .await
            .unwrap_or(0) // until the service has migrated and recorded it
    };
    eventually(SETTLE, "the capture retried in the ledger", || async {
        capture_attempts().await >= 2
    })
    .await;
    let api = CommandsClient::new(&actions.url());
    let refund = api
        .issue(
            order,
            "refunds",
            "after-capture",
            Some(&json!({"amount": 100})),
        )
        .await;
    // Several more capture attempts go by: the refund is never sent meanwhile.
    let attempts = capture_attempts().await;
    eventually(SETTLE, "two more capture attempts", || async {
        capture_attempts().await >= attempts + 2
    })
    .await;
    let refunds_sent = |calls: &[Value]| {
        calls
            .iter()
            .filter(|c| c["path"].as_str().is_some_and(|p| p.ends_with("/refunds")))
            .count()
    };
    assert_eq!(
        refunds_sent(&fx.calls().await),
        0,
        "a refund was sent before its capture"
    );
    let state = api.command(refund).await.body;
    assert_eq!(state["status"], "pending", "{state}");
    assert_eq!(state["attempts"], 0, "{state}");

    fx.sim.put("/_sim/faults", json!({})).await;
    let state = api.settled(refund, SETTLE).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    let order_now = sim_order(&fx, order).await;
    assert_eq!(order_now["status"], "CAPTURED", "{order_now}");
    assert_eq!(order_now["refunded_amount"], 100, "{order_now}");
    // In the call log the refund comes after the capture that Kustom applied.
    let calls = fx.calls().await;
    let position = |suffix: &str, status: u64| {
        calls
            .iter()
            .position(|c| {
                c["path"].as_str().is_some_and(|p| p.ends_with(suffix)) && c["status"] == status
            })
            .unwrap_or_else(|| panic!("no {suffix} answered {status}"))
    };
    assert!(position("/captures", 201) < position("/refunds", 201));
    assert_eq!(refunds_sent(&calls), 1);
    actions.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_issues_a_command_once_per_key_and_shows_its_outcome() {
    let fx = Fixture::new(1, |_| {}).await;
    let finals = finalized(1);
    let order = finals[0].order_id.unwrap().to_string();
    fx.produce(&finals).await;
    let group = unique_name("actions");
    let actions = fx.start_actions(&group, |_| {});
    fx.wait_for_count("succeeded", 1, SETTLE).await;
    let issue = [
        "command",
        "issue",
        "refund",
        &order,
        "--amount",
        "250",
        "--reference",
        "rma-9",
        "--idempotency-key",
        "cli-key-1",
        "--wait-secs",
        "60",
        "--json",
    ];
    let first = fx.cli(&group, &issue).await.success();
    let first: Value = serde_json::from_str(first.stdout.trim()).expect("json");
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["refunded_amount"], 250, "{first}");
    assert_eq!(first["reference"], "rma-9", "{first}");
    // Issued again (an operator re-running the command): the same command, no new refund.
    let again = fx.cli(&group, &issue).await.success();
    let again: Value = serde_json::from_str(again.stdout.trim()).expect("json");
    assert_eq!(again["command_id"], first["command_id"]);
    assert_eq!(fx.commands_in_log().len(), 1);
    let id = first["command_id"].as_str().unwrap();
    let shown = fx.cli(&group, &["command", "show", id]).await.success();
    assert!(
        shown.stdout.contains(id) && shown.stdout.contains("succeeded"),
        "{}",
        shown.stdout
    );
    // A refund without an amount is refused before anything is appended.
    let refused = fx
        .cli(&group, &["command", "issue", "refund", &order])
        .await;
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("needs an `amount`"),
        "{}",
        refused.stderr
    );
    assert_eq!(fx.commands_in_log().len(), 1);
    assert_eq!(
        sim_order(&fx, finals[0].order_id.unwrap()).await["effects"]["refunds"],
        1
    );
    actions.stop().await;
}
