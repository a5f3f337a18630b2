//! `ipp-projector replay` against the running pipeline: three bursts of signed webhooks
//! separated by pauses; the middle window (taken from the records' own timestamps, read
//! back from the topic) is replayed as JSON Lines and CSV, filtered, and projected into
//! an analyst's schema. The export holds exactly the records whose timestamps fall in
//! the window, byte-identical to what ingest stored; the analyst's schema equals the
//! live projection of the same events; and Order Management sees no call. Poison
//! records in a replayed range are named on stderr and parked by no one but the live
//! projector.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, Utc};
use ipp_loadgen::{Workload, WorkloadSpec};
use ipp_tests::pipeline::Pipeline;
use ipp_tests::{
    cli,
    kafka::{self, Record},
    process::ChildConfig,
    produce::{ipp_body, Producer},
    unique_name,
    wiring::Wiring,
};
use serde_json::Value;

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn body_json(record: &Record) -> Value {
    serde_json::from_slice(&record.value).expect("stored body is JSON")
}

/// `(partition, offset)` of the JSON Lines export.
fn positions(lines: &[Value]) -> BTreeSet<(i64, i64)> {
    lines
        .iter()
        .map(|l| {
            (
                l["partition"].as_i64().unwrap(),
                l["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Runs `ipp-projector replay --from <from> --to <to> <extra…>`; asserts it succeeded.
async fn replay(pipeline: &Pipeline, from: &str, to: &str, extra: &[&str]) -> cli::Output {
    let mut args = vec!["replay", "--from", from, "--to", to];
    args.extend_from_slice(extra);
    pipeline.projector_cli(&args).await.success()
}

/// The single bigint `sql` selects.
async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_exports_exactly_a_time_range_and_projects_it_into_a_schema() {
    let mut pipeline = Pipeline::start("replay").await;
    let bursts: Vec<Workload> = (0..3)
        .map(|i| {
            Workload::generate(&WorkloadSpec {
                sessions: 25,
                seed: 6100 + i,
                ..WorkloadSpec::default()
            })
        })
        .collect();
    for (i, burst) in bursts.iter().enumerate() {
        if i > 0 {
            // Only to separate the bursts' record timestamps; the windows themselves are
            // taken from the timestamps read back below.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        pipeline.send(&burst.deliveries, 8).await;
    }
    pipeline.settle(&bursts.iter().collect::<Vec<_>>()).await;

    // The middle window: from the first to just past the last record of burst 2.
    let records = kafka::read_topic(&pipeline.brokers, &pipeline.topic);
    let middle_bodies: BTreeSet<&[u8]> = bursts[1]
        .deliveries
        .iter()
        .filter(|d| d.is_ipp())
        .map(|d| d.body.as_slice())
        .collect();
    let middle_times: Vec<i64> = records
        .iter()
        .filter(|r| middle_bodies.contains(r.value.as_slice()))
        .map(|r| r.timestamp_ms.expect("records have timestamps"))
        .collect();
    let from_ms = *middle_times.iter().min().unwrap();
    let to_ms = *middle_times.iter().max().unwrap() + 1;
    let expected: BTreeMap<(i64, i64), &Record> = records
        .iter()
        .filter(|r| r.timestamp_ms.is_some_and(|t| t >= from_ms && t < to_ms))
        .map(|r| ((i64::from(r.partition), r.offset), r))
        .collect();
    // The pauses separated the bursts: the window is burst 2, all of it.
    assert_eq!(expected.len(), middle_times.len(), "window = burst 2");
    assert!(expected.len() < records.len());
    let (from, to) = (rfc3339(from_ms), rfc3339(to_ms));

    pipeline.clear_sim_calls().await;
    let ledger = pipeline.ledger().await;

    // JSON Lines on stdout: exactly the window, byte-identical.
    let out = replay(&pipeline, &from, &to, &[]).await;
    // Started from the broker's offsets-for-times answer, not from offset 0: besides
    // the window, at most the first record past it on each partition was read.
    let read: usize = out
        .stderr
        .split(" records read")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary on stderr: {}", out.stderr));
    assert!(
        read <= expected.len() + 3,
        "read {read} records for a window of {}: {}",
        expected.len(),
        out.stderr
    );
    let lines = out.json_lines();
    assert_eq!(
        lines.len(),
        expected.len(),
        "one line per record in the window"
    );
    assert_eq!(positions(&lines), expected.keys().copied().collect());
    for line in &lines {
        let key = (
            line["partition"].as_i64().unwrap(),
            line["offset"].as_i64().unwrap(),
        );
        let record = expected[&key];
        let raw = line["raw"].as_str().expect("raw");
        assert_eq!(raw.as_bytes(), record.value.as_slice(), "raw of {key:?}");
        assert!(
            middle_bodies.contains(raw.as_bytes()),
            "a body that was sent"
        );
        assert_eq!(line["event"], body_json(record));
        assert_eq!(line["topic"], pipeline.topic.as_str());
        assert_eq!(
            line["received_at"].as_str(),
            record.header("ipp-received-at"),
            "received_at of {key:?}"
        );
        assert_eq!(
            line["timestamp"].as_str(),
            Some(rfc3339(record.timestamp_ms.unwrap()).as_str())
        );
    }

    // CSV to a file: the same rows.
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("window.csv");
    replay(
        &pipeline,
        &from,
        &to,
        &["--format", "csv", "--output", csv_path.to_str().unwrap()],
    )
    .await;
    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header,
        [
            "topic",
            "partition",
            "offset",
            "record_timestamp",
            "received_at",
            "event_id",
            "event_type",
            "merchant_id",
            "session_id",
            "order_id",
            "raw"
        ]
    );
    let mut csv_positions = BTreeSet::new();
    for row in reader.records() {
        let row = row.unwrap();
        let key: (i64, i64) = (row[1].parse().unwrap(), row[2].parse().unwrap());
        let record = expected
            .get(&key)
            .unwrap_or_else(|| panic!("csv row outside the window: {key:?}"));
        assert_eq!(row[10].as_bytes(), record.value.as_slice());
        let body = body_json(record);
        assert_eq!(&row[5], body["id"].as_str().unwrap());
        assert_eq!(&row[6], body["type"].as_str().unwrap());
        assert_eq!(&row[8], body["data"]["session_id"].as_str().unwrap());
        assert!(csv_positions.insert(key), "row {key:?} twice");
    }
    assert_eq!(csv_positions, expected.keys().copied().collect());

    // Filters: merchant, event type, session.
    let sample = body_json(expected.values().next().unwrap());
    let merchant = sample["merchant_id"].as_str().unwrap().to_owned();
    let session = sample["data"]["session_id"].as_str().unwrap().to_owned();
    for (flag, value, field) in [
        ("--merchant", merchant.as_str(), "merchant_id"),
        ("--event-type", "ipp.session.created", "type"),
        ("--session", session.as_str(), "session_id"),
    ] {
        let out = replay(&pipeline, &from, &to, &[flag, value]).await;
        let want: BTreeSet<(i64, i64)> = expected
            .iter()
            .filter(|(_, r)| {
                let body = body_json(r);
                let got = if field == "session_id" {
                    body["data"]["session_id"].clone()
                } else {
                    body[field].clone()
                };
                got.as_str() == Some(value)
            })
            .map(|(k, _)| *k)
            .collect();
        assert!(!want.is_empty(), "{flag} selects something");
        assert_eq!(positions(&out.json_lines()), want, "{flag} {value}");
    }

    // Into a schema: equals the live projection of the same events.
    let into_schema = ["--into-schema", "analyst_window"];
    let out = replay(&pipeline, &from, &to, &into_schema).await;
    assert!(out.stdout.is_empty(), "nothing exported: {}", out.stdout);
    let pool = &pipeline.pool;
    let sessions = count(pool, "SELECT count(*) FROM analyst_window.ipp_sessions").await;
    assert_eq!(sessions as usize, bursts[1].sessions.len());
    let equal_sessions = count(
        pool,
        "SELECT count(*) FROM analyst_window.ipp_sessions a JOIN public.ipp_sessions l USING (session_id)
         WHERE (to_jsonb(a) - 'updated_at') = (to_jsonb(l) - 'updated_at')",
    )
    .await;
    assert_eq!(
        equal_sessions, sessions,
        "analyst sessions equal the live rows"
    );
    let analyst_events = "SELECT count(*) FROM analyst_window.ipp_events";
    let events = count(pool, analyst_events).await;
    let equal_events = count(
        pool,
        "SELECT count(*) FROM analyst_window.ipp_events a JOIN public.ipp_events l USING (event_id)
         WHERE to_jsonb(a) = to_jsonb(l)",
    )
    .await;
    let distinct_middle: BTreeSet<&str> = bursts[1]
        .deliveries
        .iter()
        .filter(|d| d.is_ipp())
        .map(|d| d.event_id.as_str())
        .collect();
    assert_eq!(events as usize, distinct_middle.len());
    assert_eq!(equal_events, events, "analyst events equal the live rows");
    // Replaying the same range again changes nothing.
    replay(&pipeline, &from, &to, &into_schema).await;
    let again = count(pool, analyst_events).await;
    assert_eq!(again, events);

    // A range with nothing in it, past the last record.
    let end = records.iter().filter_map(|r| r.timestamp_ms).max().unwrap();
    let out = replay(
        &pipeline,
        &rfc3339(end + 60_000),
        &rfc3339(end + 120_000),
        &[],
    )
    .await;
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    // None of it reached Order Management or the actions ledger.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pipeline.sim_calls().await, Vec::<Value>::new());
    assert_eq!(pipeline.ledger().await, ledger);
    pipeline.assert_running();
}

/// `replay --into-schema` projects what it can and names each poison record of the range
/// on stderr, with its position and reason. It parks nothing: it writes to an analyst's
/// sink, and the live projector (or a rebuild) parks what it cannot project.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_into_a_schema_names_the_poison_records_it_skips_and_parks_nothing() {
    let wiring = Wiring::create(1, "ipp_dlq").await;
    let producer = Producer::new(&wiring.brokers, &wiring.topic);
    let body = |n: u32| {
        ipp_body(
            &format!("kevt_{}_{n}", uuid::Uuid::new_v4().simple()),
            "ipp.session.created",
            "M1",
            uuid::Uuid::new_v4(),
            Utc::now(),
            None,
            None,
        )
    };
    producer.send_event(&body(1)).await;
    let truncated = b"{\"id\":\"kevt_truncated\",\"type\":".to_vec();
    let headers = Producer::headers_for(&body(0)).to_kafka();
    let (_, truncated_at) = producer
        .send_raw(Some(b"k-truncated"), Some(&truncated), headers)
        .await;
    let (_, unroutable_at) = producer.send_unroutable(b"[1,2]").await;
    producer.send_event(&body(2)).await;

    let env = wiring.projector_config(&unique_name("projector")).env();
    let args = [
        "replay",
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "2100-01-01T00:00:00Z",
        "--into-schema",
        "analyst_poison",
    ];
    let out = cli::run_async("ipp-projector", &args, &env, Duration::from_secs(60))
        .await
        .success();
    let topic = &wiring.topic;
    for line in [
        format!(
            "replay: poison record {topic}[0]@{truncated_at} not projected: body is not a valid Kustom event envelope"
        ),
        format!(
            "replay: poison record {topic}[0]@{unroutable_at} not projected: ingest could not route this body (ipp-route-error): not_an_object: "
        ),
        "2 events stored, 0 duplicates, 2 poison records skipped".to_owned(),
    ] {
        assert!(out.stderr.contains(&line), "{line:?} in\n{}", out.stderr);
    }
    let pool = wiring.database.pool().await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM analyst_poison.ipp_events").await,
        2
    );
    assert!(
        kafka::read_topic(&wiring.brokers, &wiring.dlq_topic).is_empty(),
        "a replay parks nothing"
    );
}
