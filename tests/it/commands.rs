//! Money commands end to end: the commands API of `ipp-actions` (in-process, or a child
//! process to SIGKILL), a real broker, real PostgreSQL and the Order Management simulator.
//! Every test checks the command's state AND the effects the simulator applied.

use std::time::Duration;

use ipp_tests::{
    actions::{finalized, Fixture},
    commands::{with_api, CommandsClient},
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
    let order_now = sim_order(&fx, order).await;
    assert_eq!(order_now["captured_amount"], authorized, "{order_now}");
    assert_eq!(order_now["refunded_amount"], 350, "{order_now}");
    assert_eq!(order_now["effects"]["captures"], 2, "{order_now}");
    assert_eq!(order_now["effects"]["refunds"], 2, "{order_now}");
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
    fx.wait_for_dlq_records(4, "the four refused commands parked")
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
    let mut expected: Vec<String> = [too_much, cancel, nowhere, nowhere_capture]
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
        [too_much, cancel, refund].map(|id| id.to_string()).to_vec()
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
