//! Dead letters and retries, as an operator runs them: the real service binaries and
//! their `dlq list|show|redrive` and `retry` subcommands against a real broker, real
//! PostgreSQL and (for ipp-actions) the Order Management simulator.

use std::{collections::HashMap, ops::Deref, time::Duration};

use chrono::Utc;
use ipp_schemas::dlq::header as dlq;
use ipp_tests::{
    actions::{Actions, Fixture},
    cli,
    eventually::eventually,
    inprocess::{projector_config, TestProjector},
    kafka,
    process::ChildConfig,
    produce, unique_name,
    wiring::Wiring,
};
use serde_json::{json, Value};
use uuid::Uuid;

const MERCHANT: &str = "DM11917000";
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

fn body(event_type: &str, session: Uuid, order: Option<Uuid>) -> (String, Vec<u8>) {
    let id = format!("kevt_{}", Uuid::new_v4().simple());
    let body = produce::ipp_body(&id, event_type, MERCHANT, session, Utc::now(), order, None);
    (id, body)
}

/// Runs a one-shot command of `binary` off the async runtime.
async fn run_cli(binary: &'static str, args: &[&str], env: &[(&str, String)]) -> cli::Output {
    cli::run_async(binary, args, env, CLI_TIMEOUT).await
}

/// Asserts the `outcome` of each line of a `dlq redrive --json` run, in order.
fn assert_outcomes(lines: &[Value], expected: &[&str]) {
    let outcomes: Vec<&Value> = lines.iter().map(|l| &l["outcome"]).collect();
    let expected: Vec<Value> = expected.iter().map(|o| json!(o)).collect();
    assert_eq!(outcomes, expected.iter().collect::<Vec<_>>(), "{lines:?}");
}

/// The high watermark sum of a topic: how many records it holds.
fn record_count(brokers: &str, topic: &str) -> usize {
    kafka::read_topic(brokers, topic).len()
}

// ---------------------------------------------------------------------------------------
// ipp-actions: retry and redrive of failed actions.

/// The actions fixture with one consumer group, as its operator commands see it.
struct ActionsFixture {
    fx: Fixture,
    group: String,
}

impl Deref for ActionsFixture {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.fx
    }
}

impl ActionsFixture {
    async fn new() -> Self {
        Self {
            fx: Fixture::new(1, |_| {}).await,
            group: unique_name("actions"),
        }
    }

    /// ipp-actions in-process, retrying quickly.
    fn start_actions(&self) -> Actions {
        self.fx.start_actions(&self.group, |config| {
            // What these tests ran with before they shared the actions fixture's
            // settings: the production values where they set none.
            config.connect_timeout_ms = 3_000;
            config.inplace_max_delay_ms = 5_000;
            config.lease_ms = 300_000;
        })
    }

    async fn cli(&self, args: &[&str]) -> cli::Output {
        self.fx.cli(&self.group, args).await
    }

    /// Runs `ipp-actions args…` (with `--json`); asserts success, returns its lines.
    async fn cli_json(&self, args: &[&str]) -> Vec<Value> {
        self.cli(args).await.success().json_lines()
    }

    async fn seed(&self, order: Uuid, seed: Value) {
        self.sim.put(&format!("/_sim/orders/{order}"), seed).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_actions_are_retried_or_redriven_once_after_the_fix_and_capture_once() {
    let fx = ActionsFixture::new().await;
    let retried = Uuid::new_v4();
    let redriven = Uuid::new_v4();
    let healthy = Uuid::new_v4();
    for order in [retried, redriven] {
        fx.seed(order, json!({"status": "CANCELLED"})).await;
    }
    let producer = produce::Producer::new(&fx.brokers, &fx.topic);
    let mut sessions = HashMap::new();
    for order in [retried, redriven, healthy] {
        let session = Uuid::new_v4();
        sessions.insert(order, session);
        let (_, event) = body("ipp.session.finalized", session, Some(order));
        producer.send_event(&event).await;
    }
    let actions = fx.start_actions();
    eventually(
        Duration::from_secs(60),
        "two failed, one captured",
        || async {
            fx.status_of(retried).await == "failed"
                && fx.status_of(redriven).await == "failed"
                && fx.status_of(healthy).await == "succeeded"
        },
    )
    .await;
    fx.wait_for_dlq_records(2, "two failed actions parked")
        .await;

    // `dlq list --json`: both failed actions, with provenance and the error.
    let listed = fx.cli_json(&["dlq", "list", "--json"]).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let mut positions = HashMap::new();
    for line in &listed {
        let order: Uuid = line["order_id"]
            .as_str()
            .expect("order id")
            .parse()
            .unwrap();
        assert!(order == retried || order == redriven, "{line}");
        assert_eq!(line["event_type"], json!("action:capture"));
        assert_eq!(line["service"], json!("ipp-actions"));
        assert_eq!(line["source_topic"], json!(fx.topic));
        assert!(line["source_offset"].is_i64(), "{line}");
        assert!(
            line["error"].as_str().unwrap().contains("CANCELLED"),
            "{line}"
        );
        assert_eq!(line["redrive_count"], json!(0));
        positions.insert(order, line["position"].as_str().unwrap().to_owned());
    }
    let filtered = fx
        .cli_json(&["dlq", "list", "--json", "--order", &retried.to_string()])
        .await;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["order_id"], json!(retried.to_string()));

    // The cause is fixed: the orders are authorized again.
    for order in [retried, redriven] {
        fx.seed(order, json!({"status": "AUTHORIZED"})).await;
    }

    // retry --dry-run changes nothing.
    let dry = fx
        .cli_json(&[
            "retry",
            "--order",
            &retried.to_string(),
            "--dry-run",
            "--json",
        ])
        .await;
    assert_eq!(dry[0]["count"], json!(1), "{dry:?}");
    assert_eq!(
        dry[0]["requeued"][0]["order_id"],
        json!(retried.to_string())
    );
    assert_eq!(fx.status_of(retried).await, "failed");

    // retry: captured once.
    let out = fx
        .cli(&["retry", "--order", &retried.to_string()])
        .await
        .success();
    assert!(
        out.stdout.contains("re-queued 1 failed action(s)"),
        "{}",
        out.stdout
    );
    fx.wait_for_status(retried, "succeeded", "the retried order captured")
        .await;
    assert_eq!(fx.sim.captures_by_order().await.get(&retried), Some(&1));

    // A succeeded action is never re-queued.
    let out = fx
        .cli(&[
            "retry",
            "--order",
            &healthy.to_string(),
            "--order",
            &retried.to_string(),
        ])
        .await
        .success();
    assert!(
        out.stdout.contains("re-queued 0 failed action(s)"),
        "{}",
        out.stdout
    );
    assert_eq!(fx.status_of(healthy).await, "succeeded");

    // Redriving the other failed action's dead letter: dry run first.
    let dry = fx
        .cli_json(&[
            "dlq",
            "redrive",
            &positions[&redriven],
            "--dry-run",
            "--json",
        ])
        .await;
    assert_eq!(dry.len(), 1);
    assert_eq!(dry[0]["outcome"], json!("would-redrive"), "{dry:?}");
    assert_eq!(fx.status_of(redriven).await, "failed");
    let done = fx
        .cli_json(&["dlq", "redrive", &positions[&redriven], "--json"])
        .await;
    assert_eq!(done[0]["outcome"], json!("redriven"), "{done:?}");
    assert_eq!(done[0]["redrive_count"], json!(1));
    fx.wait_for_status(redriven, "succeeded", "the redriven order captured")
        .await;

    // Everything again: nothing moves. The retried order's record has nothing to do, the
    // redriven one was redriven already.
    let again = fx.cli_json(&["dlq", "redrive", "--all", "--json"]).await;
    let outcome = |order: Uuid| {
        again
            .iter()
            .find(|l| l["position"] == json!(positions[&order]))
            .map(|l| l["outcome"].clone())
    };
    assert_eq!(outcome(retried), Some(json!("nothing-to-do")), "{again:?}");
    assert_eq!(
        outcome(redriven),
        Some(json!("already-redriven")),
        "{again:?}"
    );
    let out = fx.cli(&["retry", "--all"]).await.success();
    assert!(
        out.stdout.contains("re-queued 0 failed action(s)"),
        "{}",
        out.stdout
    );

    // Each order captured exactly once; the retries are audited.
    let captures = fx.sim.captures_by_order().await;
    for order in [retried, redriven, healthy] {
        assert_eq!(captures.get(&order), Some(&1), "captures of {order}");
        assert_eq!(fx.status_of(order).await, "succeeded");
    }
    let audit: Vec<(Uuid, String, Option<String>)> =
        sqlx::query_as("SELECT order_id, via, previous_reason FROM ipp_action_retries ORDER BY id")
            .fetch_all(&fx.pool)
            .await
            .expect("audit rows");
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0].0, retried);
    assert_eq!(audit[0].1, "ipp-actions retry");
    assert_eq!(audit[1].0, redriven);
    assert!(audit[1].1.starts_with("dlq redrive"), "{audit:?}");
    assert!(audit
        .iter()
        .all(|a| a.2.as_deref().is_some_and(|r| r.contains("CANCELLED"))));

    // A record ipp-actions cannot parse: redriven, parked again with its count, then
    // refused by the loop guard.
    producer
        .send_raw(
            Some(b"garbage"),
            Some(b"{not json"),
            rdkafka::message::OwnedHeaders::new(),
        )
        .await;
    fx.wait_for_dlq_records(3, "the garbage record parked")
        .await;
    let garbage = fx.cli_json(&["dlq", "redrive", "0:2", "--json"]).await;
    assert_eq!(garbage[0]["outcome"], json!("redriven"), "{garbage:?}");
    fx.wait_for_dlq_records(4, "the copy parked again").await;
    let parked = kafka::read_topic(&fx.brokers, &fx.dlq_topic);
    assert_eq!(parked[3].value, b"{not json");
    assert_eq!(parked[3].header(dlq::REDRIVE_COUNT), Some("1"));
    assert_eq!(parked[3].header(dlq::SOURCE_OFFSET), Some("4"));
    let guarded = fx
        .cli_json(&["dlq", "redrive", "0:3", "--max-redrives", "1", "--json"])
        .await;
    assert_eq!(guarded[0]["outcome"], json!("refused"), "{guarded:?}");
    assert_eq!(record_count(&fx.brokers, &fx.topic), 5);

    actions.stop().await;
}

// ---------------------------------------------------------------------------------------
// ipp-projector: a record parked for a fixable reason, redriven after the fix.

/// A finalized event whose body is about 4 KiB (an unknown field the projector stores).
fn big_finalized(session: Uuid, order: Uuid) -> (String, Vec<u8>) {
    let id = format!("kevt_{}", Uuid::new_v4().simple());
    let body = json!({
        "id": id,
        "merchant_id": MERCHANT,
        "timestamp": ipp_schemas::record::format_timestamp(Utc::now()),
        "type": "ipp.session.finalized",
        "data": {
            "session_id": session,
            "order_id": order,
            "failure_reason": null,
            "receipt_note": "x".repeat(4096),
        },
    });
    (id, serde_json::to_vec(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn projector_dead_letter_is_applied_once_after_the_fix_and_the_loop_guard_holds() {
    let wiring = Wiring::create(2, "ipp_events_dlq").await;
    let (brokers, topic, dlq_topic) = (
        wiring.brokers.clone(),
        wiring.topic.clone(),
        wiring.dlq_topic.clone(),
    );
    let pool = wiring.database.pool().await;
    let config = wiring.projector_config(&unique_name("projector"));
    let env = config.env();
    let start = |max_payload: Option<usize>| {
        let mut config = config.clone();
        if let Some(max) = max_payload {
            config.max_payload_bytes = max;
        }
        TestProjector::spawn(config)
    };
    // A `--json` command of ipp-projector that must succeed: its lines.
    let cli_json = |args: &'static [&'static str]| {
        let env = &env;
        async move {
            run_cli("ipp-projector", args, env)
                .await
                .success()
                .json_lines()
        }
    };
    let count_events = |event_id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ipp_events WHERE event_id = $1")
                .bind(event_id)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };

    // A session whose finalized event is over the (mis)configured payload limit.
    let producer = produce::Producer::new(&brokers, &topic);
    let session = Uuid::new_v4();
    let order = Uuid::new_v4();
    let (_, created) = body("ipp.session.created", session, None);
    let (_, activated) = body("ipp.session.activated", session, None);
    producer.send_events(&[created, activated]).await;
    let (big_id, big) = big_finalized(session, order);
    let (source_partition, source_offset) = producer.send_event(&big).await;
    let others: Vec<Vec<u8>> = (0..5)
        .map(|_| body("ipp.session.created", Uuid::new_v4(), None).1)
        .collect();
    producer.send_events(&others).await;

    let projector = start(Some(2048));
    eventually(
        Duration::from_secs(60),
        "7 events applied, 1 parked",
        || async {
            let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_events")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            applied == 7 && record_count(&brokers, &dlq_topic) == 1
        },
    )
    .await;
    assert_eq!(count_events(big_id.clone()).await, 0);

    // list and show: provenance and error.
    let listed = cli_json(&["dlq", "list", "--json"]).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let first = &listed[0];
    assert_eq!(first["source_topic"], json!(topic));
    assert_eq!(first["source_partition"], json!(source_partition));
    assert_eq!(first["source_offset"], json!(source_offset));
    assert_eq!(first["service"], json!("ipp-projector"));
    assert_eq!(first["event_id"], json!(big_id));
    assert_eq!(first["event_type"], json!("ipp.session.finalized"));
    assert_eq!(first["session_id"], json!(session.to_string()));
    assert_eq!(first["redrive_count"], json!(0));
    let error = first["error"].as_str().expect("error");
    assert!(error.contains("PROJECTOR_MAX_PAYLOAD_BYTES"), "{error}");
    let d0 = first["position"].as_str().unwrap().to_owned();
    let shown = run_cli("ipp-projector", &["dlq", "show", &d0, "--json"], &env)
        .await
        .success()
        .json_lines();
    assert_eq!(
        shown[0]["value"],
        json!(String::from_utf8(big.clone()).unwrap())
    );
    assert_eq!(shown[0]["error"], json!(error));
    let header_keys: Vec<&str> = shown[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["key"].as_str().unwrap())
        .collect();
    for key in [
        "kustom-event-id",
        "ipp-received-at",
        dlq::SOURCE_OFFSET,
        dlq::ERROR,
    ] {
        assert!(header_keys.contains(&key), "{key} in {header_keys:?}");
    }
    let text = run_cli("ipp-projector", &["dlq", "show", &d0], &env)
        .await
        .success()
        .stdout;
    assert!(
        text.contains(&format!("{}: {source_offset}", dlq::SOURCE_OFFSET)),
        "{text}"
    );
    assert!(
        text.contains("\"receipt_note\""),
        "pretty JSON value: {text}"
    );

    // --dry-run changes nothing: no record produced, no ops table created.
    let topic_records = record_count(&brokers, &topic);
    let dry = cli_json(&["dlq", "redrive", "--all", "--dry-run", "--json"]).await;
    assert_eq!(dry.len(), 1);
    assert_eq!(dry[0]["outcome"], json!("would-redrive"), "{dry:?}");
    assert_eq!(dry[0]["redrive_count"], json!(1));
    assert_eq!(record_count(&brokers, &topic), topic_records);
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('ipp_dlq_redrives')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(table, None, "a dry run creates nothing");

    // Redriven before the fix: parked again, and the copy keeps its redrive count.
    let done = cli_json(&["dlq", "redrive", "--all", "--json"]).await;
    assert_eq!(done[0]["outcome"], json!("redriven"), "{done:?}");
    assert_eq!(record_count(&brokers, &topic), topic_records + 1);
    eventually(Duration::from_secs(60), "the copy parked again", || {
        std::future::ready(record_count(&brokers, &dlq_topic) == 2)
    })
    .await;
    let parked = kafka::read_topic(&brokers, &dlq_topic);
    let again = &parked[1];
    assert_eq!(
        again.header(dlq::REDRIVE_COUNT),
        Some("1"),
        "count carried over"
    );
    assert_eq!(again.header(dlq::SOURCE_TOPIC), Some(topic.as_str()));
    assert_eq!(
        done[0]["target"],
        json!(format!(
            "{topic}[{}]@{}",
            again.header(dlq::SOURCE_PARTITION).unwrap(),
            again.header(dlq::SOURCE_OFFSET).unwrap()
        ))
    );
    assert_eq!(again.value, big);
    assert_eq!(count_events(big_id.clone()).await, 0);

    // The fix: restart with the default limit.
    projector.stop().await;
    let projector = start(None);

    // Loop guard: at --max-redrives 1 the re-parked copy is refused; the first record
    // was redriven already.
    let guarded = cli_json(&["dlq", "redrive", "--all", "--max-redrives", "1", "--json"]).await;
    assert_outcomes(&guarded, &["already-redriven", "refused"]);
    assert_eq!(record_count(&brokers, &topic), topic_records + 1);

    // Redriven after the fix: applied exactly once.
    let done = cli_json(&["dlq", "redrive", "--all", "--json"]).await;
    assert_outcomes(&done, &["already-redriven", "redriven"]);
    assert_eq!(done[1]["redrive_count"], json!(2));
    eventually(
        Duration::from_secs(60),
        "the redriven event applied",
        || {
            let count = count_events(big_id.clone());
            async move { count.await == 1 }
        },
    )
    .await;
    let (status, stored_order): (String, Option<Uuid>) =
        sqlx::query_as("SELECT status, order_id FROM ipp_sessions WHERE session_id = $1")
            .bind(session)
            .fetch_one(&pool)
            .await
            .expect("session row");
    assert_eq!(status, "finalized");
    assert_eq!(stored_order, Some(order));

    // Everything again: nothing is produced.
    let topic_records = record_count(&brokers, &topic);
    let again = cli_json(&["dlq", "redrive", "--all", "--json"]).await;
    assert!(
        again
            .iter()
            .all(|l| l["outcome"] == json!("already-redriven")),
        "{again:?}"
    );
    assert_eq!(record_count(&brokers, &topic), topic_records);
    let redrives: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_dlq_redrives")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(redrives, 2);

    // A record whose count reached the maximum is refused even when named, until --force.
    let dlq_producer = produce::Producer::new(&brokers, &dlq_topic);
    let mut headers = produce::Producer::headers_for(&big).to_kafka();
    for (key, value) in [
        (dlq::SOURCE_TOPIC, topic.as_str()),
        (dlq::SOURCE_PARTITION, "0"),
        (dlq::SOURCE_OFFSET, "0"),
        (dlq::ERROR, "crafted"),
        (dlq::SERVICE, "ipp-projector"),
        (dlq::REDRIVE_COUNT, "3"),
    ] {
        headers = headers.insert(ipp_schemas::record::kafka_header(key, value));
    }
    let (p, o) = dlq_producer
        .send_raw(Some(session.to_string().as_bytes()), Some(&big), headers)
        .await;
    let crafted = format!("{p}:{o}");
    let refused = run_cli(
        "ipp-projector",
        &["dlq", "redrive", &crafted, "--json"],
        &env,
    )
    .await
    .success()
    .json_lines();
    assert_eq!(refused[0]["outcome"], json!("refused"), "{refused:?}");
    assert_eq!(refused[0]["redrive_count"], json!(3));
    assert_eq!(record_count(&brokers, &topic), topic_records);
    let forced = run_cli(
        "ipp-projector",
        &["dlq", "redrive", &crafted, "--force", "--json"],
        &env,
    )
    .await
    .success()
    .json_lines();
    assert_eq!(forced[0]["outcome"], json!("redriven"), "{forced:?}");
    assert_eq!(forced[0]["redrive_count"], json!(4));
    assert_eq!(record_count(&brokers, &topic), topic_records + 1);
    let copies = kafka::read_topic(&brokers, &topic);
    let last = copies
        .iter()
        .filter(|r| r.header(dlq::REDRIVE_COUNT) == Some("4"))
        .collect::<Vec<_>>();
    assert_eq!(last.len(), 1);
    assert!(
        last[0]
            .headers
            .iter()
            .all(|(k, _)| k == dlq::REDRIVE_COUNT || !k.starts_with("dlq-")),
        "only the count among the dlq-* headers: {:?}",
        last[0].headers
    );
    // The duplicate is absorbed: still one stored copy of the event.
    eventually(
        Duration::from_secs(60),
        "the projector read the forced copy",
        || async {
            let applied: Option<i64> = sqlx::query_scalar(
                "SELECT sum(next_offset)::bigint FROM ipp_projector_offsets WHERE topic = $1",
            )
            .bind(&topic)
            .fetch_one(&pool)
            .await
            .unwrap_or(None);
            applied == Some(topic_records as i64 + 1)
        },
    )
    .await;
    assert_eq!(count_events(big_id.clone()).await, 1);

    projector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_operators_redriving_at_once_produce_each_copy_once() {
    let wiring = Wiring::create(2, "ipp_events_dlq").await;
    let (brokers, topic, dlq_topic) = (
        wiring.brokers.clone(),
        wiring.topic.clone(),
        wiring.dlq_topic.clone(),
    );
    // The operator's command line: the default consumer group.
    let env = projector_config(
        &brokers,
        &topic,
        &dlq_topic,
        wiring.database.url(),
        "ipp-projector",
    )
    .env();
    // Five parked records, as the projector writes them.
    let dlq_producer = produce::Producer::new(&brokers, &dlq_topic);
    let mut ids = Vec::new();
    for offset in 0..5 {
        let session = Uuid::new_v4();
        let (id, event) = body("ipp.session.created", session, None);
        let mut headers = produce::Producer::headers_for(&event).to_kafka();
        let offset = offset.to_string();
        for (key, value) in [
            (dlq::SOURCE_TOPIC, topic.as_str()),
            (dlq::SOURCE_PARTITION, "0"),
            (dlq::SOURCE_OFFSET, offset.as_str()),
            (dlq::ERROR, "parked by the test"),
            (dlq::SERVICE, "ipp-projector"),
        ] {
            headers = headers.insert(ipp_schemas::record::kafka_header(key, value));
        }
        dlq_producer
            .send_raw(Some(session.to_string().as_bytes()), Some(&event), headers)
            .await;
        ids.push(id);
    }

    let (first, second) = tokio::join!(
        run_cli(
            "ipp-projector",
            &["dlq", "redrive", "--all", "--json"],
            &env
        ),
        run_cli(
            "ipp-projector",
            &["dlq", "redrive", "--all", "--json"],
            &env
        ),
    );
    let mut outcomes: Vec<String> = first
        .success()
        .json_lines()
        .into_iter()
        .chain(second.success().json_lines())
        .map(|l| l["outcome"].as_str().unwrap().to_owned())
        .collect();
    outcomes.sort();
    let mut expected = vec!["already-redriven".to_owned(); 5];
    expected.extend(vec!["redriven".to_owned(); 5]);
    assert_eq!(outcomes, expected);

    let copies = kafka::read_topic(&brokers, &topic);
    let mut copied: Vec<String> = copies
        .iter()
        .map(|r| r.header("kustom-event-id").unwrap().to_owned())
        .collect();
    copied.sort();
    ids.sort();
    assert_eq!(copied, ids, "each parked record re-produced exactly once");
    assert!(copies
        .iter()
        .all(|r| r.header(dlq::REDRIVE_COUNT) == Some("1")));
    let pool = wiring.database.pool().await;
    let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(
        "SELECT dlq_offset, target_offset FROM ipp_dlq_redrives ORDER BY dlq_offset",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|(_, target)| target.is_some()), "{rows:?}");
}
