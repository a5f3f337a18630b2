//! Records in the IPP topic that a consumer cannot use, each written as ingest (or
//! another producer) would have written it, with a good record after each one: the
//! projector and ipp-actions each park what they cannot use in their own dead-letter
//! topic, with its provenance and a reason, the original value, key and headers byte for
//! byte; everything else is applied (the read model equals a clean pass, every finalized
//! order is captured once), and `dlq list` names each parked record with its reason.
//! The rebuild and replay cases are in `ops_rebuild.rs` and `ops_replay.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use chrono::{DateTime, TimeZone, Utc};
use ipp_schemas::{
    dlq::header as dlq,
    record::header::{self, ROUTE_ERROR},
    RecordHeaders,
};
use ipp_tests::{
    cli,
    db::TestDatabase,
    eventually::eventually,
    inprocess::{actions_config, projector_config, OrderManagement, TestActions},
    kafka::{self, Record},
    om_sim::OmSim,
    process::ChildConfig,
    produce::{ipp_body, unroutable, Producer},
    projector::{assert_clean_pass, clean_pass, wait_for_offsets, Projector, CREATED, FINALIZED},
    unique_name,
};
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::{json, Value};
use uuid::Uuid;

const API_KEY: &str = "kco_test_poison";
const MERCHANT: &str = "M1";
/// The projector's `PROJECTOR_MAX_PAYLOAD_BYTES` here (the default is 1 MiB, more than
/// ingest's 256 KiB body limit lets through): this test is about that setting too.
const MAX_PAYLOAD: usize = 64 * 1024;
/// The `dlq-*` headers every parked record carries after its original headers.
const DLQ_HEADERS: [&str; 6] = [
    dlq::SOURCE_TOPIC,
    dlq::SOURCE_PARTITION,
    dlq::SOURCE_OFFSET,
    dlq::ERROR,
    dlq::FAILED_AT,
    dlq::SERVICE,
];

/// What one consumer must do with a record.
#[derive(Debug, Clone)]
enum Expect {
    /// Parked, with a `dlq-error` that contains this.
    Parked(String),
    /// Used (projected; recorded or passed over by ipp-actions): never parked.
    Used,
}

use Expect::Used;

fn parked(reason: impl Into<String>) -> Expect {
    Expect::Parked(reason.into())
}

/// One record of the matrix.
struct Case {
    name: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: OwnedHeaders,
    projector: Expect,
    actions: Expect,
    /// A finalized order ipp-actions must capture.
    captures: Option<Uuid>,
    /// One more header after `headers`, its name raw bytes (not UTF-8).
    raw_header: Option<(&'static [u8], &'static [u8])>,
}

impl Case {
    /// A body as ingest stores one it routed: key and headers from the body.
    fn ingested(name: &'static str, body: Vec<u8>, projector: Expect, actions: Expect) -> Self {
        let route = ipp_schemas::Route::parse(&body).expect("routes");
        Self {
            name,
            key: Some(route.key().as_bytes().to_vec()),
            headers: Producer::headers_for(&body).to_kafka(),
            value: Some(body),
            projector,
            actions,
            captures: None,
            raw_header: None,
        }
    }

    /// A signed body ingest could not route, as it stores one (`ipp-route-error`).
    fn unroutable(name: &'static str, body: Vec<u8>, code: &'static str) -> Self {
        let (key, headers) = unroutable(&body);
        Self {
            name,
            key: Some(key),
            value: Some(body),
            headers,
            projector: parked(format!("(ipp-route-error): {code}: ")),
            actions: parked(format!("(ipp-route-error): {code}: ")),
            captures: None,
            raw_header: None,
        }
    }

    /// Any record another producer could have written.
    fn raw(
        name: &'static str,
        key: &str,
        value: Option<Vec<u8>>,
        headers: OwnedHeaders,
        projector: Expect,
        actions: Expect,
    ) -> Self {
        Self {
            name,
            key: Some(key.as_bytes().to_vec()),
            value,
            headers,
            projector,
            actions,
            captures: None,
            raw_header: None,
        }
    }

    fn capturing(mut self, order: Uuid) -> Self {
        self.captures = Some(order);
        self
    }

    fn with_raw_header(mut self, name: &'static [u8], value: &'static [u8]) -> Self {
        self.raw_header = Some((name, value));
        self
    }
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 5, 18, 30, 0).unwrap()
}

/// An `ipp.*` body with `data` and `extra` envelope fields as given.
fn body_with(id: &str, event_type: &str, data: Value, extra: Value) -> Vec<u8> {
    let mut body = json!({
        "id": id,
        "merchant_id": MERCHANT,
        "timestamp": "2026-06-05T18:30:00.123456789Z",
        "type": event_type,
    });
    body["data"] = data;
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    serde_json::to_vec(&body).unwrap()
}

/// Ingest-like headers with `event_id`/`event_type` as given.
fn headers_of(event_id: &str, event_type: &str) -> OwnedHeaders {
    RecordHeaders {
        event_id: event_id.into(),
        event_type: event_type.into(),
        merchant_id: Some(MERCHANT.into()),
        webhook_id: format!("msg_{}", Uuid::new_v4().simple()),
        webhook_timestamp: "1780000000".into(),
        received_at: at(),
    }
    .to_kafka()
}

/// Headers as a list of byte strings, for the cases that need a malformed one.
fn headers_from(pairs: &[(&str, &[u8])]) -> OwnedHeaders {
    pairs
        .iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(*value),
            })
        })
}

/// The matrix: every case once, `run` making its ids unique.
fn cases(run: &str) -> Vec<Case> {
    let id = |name: &str| format!("kevt_{run}_{name}");
    let session = || Uuid::new_v4().to_string();
    let ipp = |name: &str, event_type: &str| {
        body_with(
            &id(name),
            event_type,
            json!({"session_id": session()}),
            json!({}),
        )
    };
    let finalized = |name: &str, order: Uuid, extra: Value| {
        body_with(
            &id(name),
            FINALIZED,
            json!({"session_id": session(), "order_id": order}),
            extra,
        )
    };
    let unknown_session = Uuid::new_v4();
    let (over, under) = (Uuid::new_v4(), Uuid::new_v4());
    let truncated = format!(
        r#"{{"id":"{}","type":"ipp.session.created","data":{{"session_id":"{}"#,
        id("truncated"),
        session()
    );
    let envelope = "not a valid Kustom event envelope";
    let raw_name_order = Uuid::new_v4();
    vec![
        // rdkafka panics reading such a name: both services used to stop here, again
        // after each restart. The header is unknown, so the record is used.
        Case::ingested(
            "a finalized event with a header name that is not UTF-8",
            finalized("rawname", raw_name_order, json!({})),
            Used,
            Used,
        )
        .capturing(raw_name_order)
        .with_raw_header(b"x-trace-\xff\xfe", b"1"),
        // Parked for its body; the dead letter keeps the name with U+FFFD.
        Case::raw(
            "truncated JSON with a header name that is not UTF-8",
            &session(),
            Some(
                truncated
                    .replace("truncated", "truncated_rawname")
                    .into_bytes(),
            ),
            headers_of(&id("truncated_rawname"), CREATED),
            parked(envelope),
            parked(envelope),
        )
        .with_raw_header(b"\xc3(", b""),
        Case::unroutable(
            "truncated JSON, stored by ingest as unroutable",
            truncated.clone().into_bytes(),
            "invalid_json",
        ),
        Case::raw(
            "truncated JSON from another producer",
            &session(),
            Some(truncated.replace("truncated", "truncated_raw").into_bytes()),
            headers_of(&id("truncated_raw"), CREATED),
            parked(envelope),
            parked(envelope),
        ),
        Case::unroutable(
            "data.session_id a number",
            body_with(
                &id("number"),
                CREATED,
                json!({"session_id": 12345}),
                json!({}),
            ),
            "invalid_session_id",
        ),
        Case::unroutable(
            "data a string",
            body_with(&id("string"), CREATED, json!("session"), json!({})),
            "data_not_an_object",
        ),
        Case::unroutable(
            "an ipp.* event without a session id, keyed by its event id",
            body_with(&id("nosession"), CREATED, json!({}), json!({})),
            "missing_session_id",
        ),
        Case::unroutable(
            "a JSON array, with empty event id and type headers",
            b"[1,2,3]".to_vec(),
            "not_an_object",
        ),
        Case::unroutable(
            "a non-UTF-8 body, stored by ingest as unroutable",
            b"{\"id\":\"kevt_\xff\xfe\"}".to_vec(),
            "not_utf8",
        ),
        Case::ingested(
            "a timestamp that is not a date",
            body_with(
                &id("when"),
                CREATED,
                json!({"session_id": session()}),
                json!({"timestamp": "half past six"}),
            ),
            parked(envelope),
            parked(envelope),
        ),
        Case::ingested(
            "a session id that is not a UUID",
            body_with(
                &id("notuuid"),
                CREATED,
                json!({"session_id": "sess-not-a-uuid"}),
                json!({}),
            ),
            parked("invalid data"),
            parked("invalid data"),
        ),
        Case::raw(
            "empty event id and type headers without a route error",
            &session(),
            Some(ipp("emptyhdr", "ipp.session.activated")),
            headers_of("", ""),
            parked(r#"header kustom-event-id "" does not match the body's id"#),
            Used,
        ),
        Case::raw(
            "no headers at all",
            &session(),
            Some(ipp("nohdr", CREATED)),
            OwnedHeaders::new(),
            parked("record has no `ipp-received-at` header"),
            Used,
        ),
        Case::raw(
            "a received-at header that is not a timestamp",
            &session(),
            Some(ipp("badtime", CREATED)),
            headers_from(&[
                (header::EVENT_ID, id("badtime").as_bytes()),
                (header::EVENT_TYPE, CREATED.as_bytes()),
                (header::WEBHOOK_ID, b"msg_badtime".as_slice()),
                (header::WEBHOOK_TIMESTAMP, b"1780000000".as_slice()),
                (header::RECEIVED_AT, b"yesterday".as_slice()),
            ]),
            parked("record header `ipp-received-at` is not an RFC 3339 timestamp: yesterday"),
            Used,
        ),
        Case::raw(
            "a header that is not UTF-8",
            &session(),
            Some(ipp("badutf8hdr", CREATED)),
            headers_from(&[
                (header::EVENT_ID, id("badutf8hdr").as_bytes()),
                (header::EVENT_TYPE, CREATED.as_bytes()),
                (header::WEBHOOK_ID, b"msg_\xff\xfe".as_slice()),
                (header::WEBHOOK_TIMESTAMP, b"1780000000".as_slice()),
                (header::RECEIVED_AT, b"2026-06-05T18:30:00Z".as_slice()),
            ]),
            parked("record header `webhook-id` is not valid UTF-8"),
            Used,
        ),
        Case::raw(
            "a non-UTF-8 value from another producer",
            &session(),
            Some(b"{\"id\":\"kevt_\xff\xfe\",\"type\":\"ipp.session.created\"}".to_vec()),
            headers_of(&id("badutf8"), CREATED),
            parked("record value is not UTF-8"),
            parked(envelope),
        ),
        Case::raw(
            "a record without a value",
            &session(),
            None,
            headers_of(&id("novalue"), CREATED),
            parked("record has no value"),
            parked(envelope),
        ),
        {
            let order = Uuid::new_v4();
            Case::ingested(
                "a NUL character in a finalized event's merchant id",
                finalized("nul", order, json!({"merchant_id": "M\u{0}1"})),
                parked("event contains \\u0000, which PostgreSQL cannot store"),
                parked("rejected by PostgreSQL: "),
            )
        },
        Case::ingested(
            "an escaped backslash before u0000 is text, not a NUL",
            body_with(
                &id("backslash"),
                "ipp.payment.failed",
                json!({"session_id": session(), "failure_reason": "C:\\u0000dir"}),
                json!({}),
            ),
            Used,
            Used,
        ),
        Case::ingested(
            "an unknown ipp.* type after the session's created event",
            body_with(
                &id("unknown_created"),
                CREATED,
                json!({"session_id": unknown_session}),
                json!({}),
            ),
            Used,
            Used,
        ),
        Case::ingested(
            "an unknown ipp.* type",
            body_with(
                &id("unknown"),
                "ipp.session.paused",
                json!({"session_id": unknown_session, "pause_reason": "lunch"}),
                json!({"timestamp": "2026-06-05T18:31:00Z"}),
            ),
            Used,
            Used,
        ),
        Case::ingested(
            "a finalized event over PROJECTOR_MAX_PAYLOAD_BYTES",
            finalized(
                "over",
                over,
                json!({"notes": "x".repeat(MAX_PAYLOAD + 1000)}),
            ),
            parked(format!("over PROJECTOR_MAX_PAYLOAD_BYTES ({MAX_PAYLOAD})")),
            Used,
        )
        .capturing(over),
        Case::ingested(
            "a large finalized event under the limit",
            finalized(
                "under",
                under,
                json!({"notes": "y".repeat(MAX_PAYLOAD - 1000)}),
            ),
            Used,
            Used,
        )
        .capturing(under),
    ]
}

/// The cases `pick` says are parked: each with its offset and reason.
fn parked_cases<'a>(
    cases: &'a [Case],
    offsets: &[i64],
    pick: fn(&Case) -> &Expect,
) -> Vec<(&'a Case, i64, &'a str)> {
    cases
        .iter()
        .zip(offsets)
        .filter_map(|(case, &offset)| match pick(case) {
            Expect::Parked(reason) => Some((case, offset, reason.as_str())),
            Used => None,
        })
        .collect()
}

/// Each dead letter of `service` in `dead_letters` is one of `expected` (its case, its
/// offset in the source topic, the reason), once, with the original value, key and
/// headers byte for byte, then the `dlq-*` headers.
fn assert_parked(
    service: &str,
    topic: &str,
    dead_letters: &[Record],
    source: &BTreeMap<i64, Record>,
    expected: &[(&Case, i64, &str)],
) {
    for (case, offset, reason) in expected {
        let name = case.name;
        let found: Vec<&Record> = dead_letters
            .iter()
            .filter(|r| r.header(dlq::SOURCE_OFFSET) == Some(offset.to_string().as_str()))
            .collect();
        assert_eq!(found.len(), 1, "{service}: {name}: parked once");
        let parked = found[0];
        let original = &source[offset];
        assert_eq!(parked.value, original.value, "{service}: {name}: value");
        assert_eq!(parked.key, original.key, "{service}: {name}: key");
        let (kept, added) = parked.headers.split_at(original.headers.len());
        assert_eq!(
            kept,
            original.headers.as_slice(),
            "{service}: {name}: headers"
        );
        let added: BTreeSet<&str> = added.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(added, BTreeSet::from(DLQ_HEADERS), "{service}: {name}");
        assert_eq!(
            parked.headers.len(),
            original.headers.len() + DLQ_HEADERS.len()
        );
        assert_eq!(parked.header(dlq::SOURCE_TOPIC), Some(topic));
        assert_eq!(parked.header(dlq::SOURCE_PARTITION), Some("0"));
        assert_eq!(parked.header(dlq::SERVICE), Some(service));
        let failed_at = parked.header(dlq::FAILED_AT).expect("dlq-failed-at");
        DateTime::parse_from_rfc3339(failed_at).expect("dlq-failed-at is RFC 3339");
        let error = parked.header(dlq::ERROR).expect("dlq-error");
        assert!(
            error.contains(reason),
            "{service}: {name}: {error:?} should contain {reason:?}"
        );
        if original.headers.iter().any(|(k, _)| k == ROUTE_ERROR) {
            let route_error = original.header(ROUTE_ERROR).expect("UTF-8");
            assert_eq!(
                error,
                format!("ingest could not route this body (ipp-route-error): {route_error}"),
                "{service}: {name}: ingest's reason, as it gave it"
            );
        }
    }
    assert_eq!(
        dead_letters.len(),
        expected.len(),
        "{service} parked exactly the expected records"
    );
}

/// `dlq list --json` names every parked record, by source position, with its reason.
fn assert_listed(service: &str, topic: &str, listed: &[Value], expected: &[(&Case, i64, &str)]) {
    let by_offset: BTreeMap<i64, &Value> = listed
        .iter()
        .map(|line| (line["source_offset"].as_i64().expect("source_offset"), line))
        .collect();
    assert_eq!(
        by_offset.len(),
        listed.len(),
        "{service}: one line per record"
    );
    assert_eq!(
        by_offset.keys().copied().collect::<BTreeSet<_>>(),
        expected
            .iter()
            .map(|(_, offset, _)| *offset)
            .collect::<BTreeSet<i64>>(),
        "{service}: dlq list names every parked record"
    );
    for (case, offset, reason) in expected {
        let line = by_offset[offset];
        assert_eq!(line["service"], service, "{}", case.name);
        assert_eq!(line["source_topic"], topic, "{}", case.name);
        assert_eq!(line["source_partition"], 0, "{}", case.name);
        let error = line["error"].as_str().expect("error");
        assert!(error.contains(reason), "{service}: {}: {error}", case.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_poison_case_is_parked_with_its_reason_by_both_consumers_and_the_partition_flows() {
    let brokers = kafka::brokers();
    // One partition: every good record comes after every poison record before it.
    let topic = kafka::create_topic(&brokers, "ipp_events_poison", 1).await;
    let projector_dlq = kafka::create_topic(&brokers, "ipp_events_dlq", 1).await;
    let actions_dlq = kafka::create_topic(&brokers, "ipp_actions_dlq", 1).await;
    kafka::create_actions_topics(&brokers, &topic, 1).await;
    let database = TestDatabase::create().await;
    let pool = database.pool().await;
    let sim = OmSim::start(API_KEY);
    let run = Uuid::new_v4().simple().to_string();

    // Each case, then a finalized event of a session of its own.
    let producer = Producer::new(&brokers, &topic);
    let cases = cases(&run);
    let mut case_offsets = Vec::with_capacity(cases.len());
    let (mut projected, mut projected_at) = (Vec::new(), Vec::new());
    let mut orders = BTreeSet::new();
    let mut end = 0;
    for (i, case) in cases.iter().enumerate() {
        let at_case = match case.raw_header {
            Some(raw) => {
                let key = case.key.as_deref().expect("a raw-name case has a key");
                let value = case.value.as_deref().expect("a raw-name case has a value");
                producer
                    .send_with_raw_name(key, value, &case.headers, raw)
                    .await
            }
            None => {
                producer
                    .send_raw(
                        case.key.as_deref(),
                        case.value.as_deref(),
                        case.headers.clone(),
                    )
                    .await
            }
        };
        case_offsets.push(at_case.1);
        if matches!(case.projector, Used) {
            projected.push(case.value.clone().expect("a projected case has a value"));
            projected_at.push(at_case);
        }
        orders.extend(case.captures);
        let order = Uuid::new_v4();
        let good = ipp_body(
            &format!("kevt_{run}_good_{i}"),
            FINALIZED,
            MERCHANT,
            Uuid::new_v4(),
            at(),
            Some(order),
            None,
        );
        let at_good = producer.send_event(&good).await;
        projected.push(good);
        projected_at.push(at_good);
        orders.insert(order);
        end = at_good.1 + 1;
    }

    let group = unique_name("projector");
    let mut config = projector_config(&brokers, &topic, &projector_dlq, database.url(), &group);
    config.max_payload_bytes = MAX_PAYLOAD;
    let projector_env = config.env();
    let mut projector = Projector::spawn(config);
    let config = actions_config(
        &brokers,
        &topic,
        &actions_dlq,
        database.url(),
        &unique_name("actions"),
        OrderManagement {
            url: &sim.url,
            api_key: API_KEY,
        },
    );
    let actions_env = config.env();
    let actions = TestActions::spawn(config);

    let parked_by_projector = parked_cases(&cases, &case_offsets, |case| &case.projector);
    let parked_by_actions = parked_cases(&cases, &case_offsets, |case| &case.actions);

    wait_for_offsets(
        &pool,
        &group,
        &topic,
        &BTreeMap::from([(0, end)]),
        Duration::from_secs(60),
        &mut [&mut projector],
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "ipp-actions captured every finalized order and parked its poison records",
        || async {
            let settled: i64 =
                sqlx::query_scalar("SELECT count(*) FROM ipp_actions WHERE status = 'succeeded'")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
            settled == orders.len() as i64
                && kafka::read_topic(&brokers, &actions_dlq).len() >= parked_by_actions.len()
        },
    )
    .await;
    assert!(actions.is_running(), "ipp-actions is still running");

    // The dead letters, against the records as the broker holds them.
    let source: BTreeMap<i64, Record> = kafka::read_topic(&brokers, &topic)
        .into_iter()
        .map(|r| (r.offset, r))
        .collect();
    let projector_letters = kafka::read_topic(&brokers, &projector_dlq);
    assert_parked(
        "ipp-projector",
        &topic,
        &projector_letters,
        &source,
        &parked_by_projector,
    );
    let actions_letters = kafka::read_topic(&brokers, &actions_dlq);
    assert_parked(
        "ipp-actions",
        &topic,
        &actions_letters,
        &source,
        &parked_by_actions,
    );
    // The raw names are in the log as written (read here with U+FFFD, as the services
    // read them); the parked one's dead letters hold them so (`assert_parked`).
    for (case, offset) in cases.iter().zip(&case_offsets) {
        let Some((name, _)) = case.raw_header else {
            continue;
        };
        assert!(std::str::from_utf8(name).is_err(), "{}", case.name);
        let replaced = String::from_utf8_lossy(name);
        assert!(
            source[offset].headers.iter().any(|(k, _)| *k == replaced),
            "{}: {:?}",
            case.name,
            source[offset].headers
        );
    }
    let keyed_by_event_id = format!("kevt_{run}_nosession");
    for letters in [&projector_letters, &actions_letters] {
        assert!(
            letters
                .iter()
                .any(|r| r.key_str() == Some(keyed_by_event_id.as_str())),
            "the event without a session id is keyed by its event id"
        );
    }

    // Everything else was applied: the read model equals a clean pass over it...
    assert_clean_pass(&pool, &clean_pass(&projected, &projected_at)).await;
    let unknown: (String, i32, String) = sqlx::query_as(
        "SELECT s.status, s.event_count, s.last_event_id FROM ipp_sessions s
         JOIN ipp_events e USING (session_id) WHERE e.event_type = 'ipp.session.paused'",
    )
    .fetch_one(&pool)
    .await
    .expect("the unknown type is stored with its session");
    assert_eq!(
        unknown,
        ("created".to_owned(), 2, format!("kevt_{run}_unknown")),
        "an unknown type is kept and counted, and changes no status"
    );
    // ...and every finalized order ipp-actions could read was captured, once.
    let ledger: BTreeSet<Uuid> = sqlx::query_scalar("SELECT order_id FROM ipp_actions")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(ledger, orders, "one ledger row per finalized order");
    let captures = sim.captures_by_order().await;
    assert_eq!(
        captures.keys().copied().collect::<BTreeSet<_>>(),
        orders,
        "captured orders"
    );
    assert!(captures.values().all(|&n| n == 1), "{captures:?}");

    // `dlq list` shows each parked record with its reason.
    let list = ["dlq", "list", "--json"];
    let within = Duration::from_secs(60);
    let listed = cli::run_async("ipp-projector", &list, &projector_env, within)
        .await
        .success()
        .json_lines();
    assert_listed("ipp-projector", &topic, &listed, &parked_by_projector);
    let listed = cli::run_async("ipp-actions", &list, &actions_env, within)
        .await
        .success()
        .json_lines();
    assert_listed("ipp-actions", &topic, &listed, &parked_by_actions);

    let metrics = projector.metrics().await.expect("GET /metrics");
    let dead_letters = format!(
        "ipp_projector_dead_letters_total {}",
        parked_by_projector.len()
    );
    assert!(metrics.contains(&dead_letters), "{metrics}");
    projector.stop().await;
    actions.stop().await;
}
