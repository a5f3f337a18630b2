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
