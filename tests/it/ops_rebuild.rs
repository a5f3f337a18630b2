//! `ipp-projector rebuild` against the running pipeline: a dry run reports a
//! hand-edited row and swaps nothing; a rebuild under a steady webhook load swaps in
//! tables equal to a clean pass while a reader never sees a missing table or a count
//! going down, and the live projector carries on; `--rollback` brings the previous
//! version back; and none of it calls Order Management or touches `ipp_actions`. A
//! rebuild parks the poison records it passes that nobody parked, and only those.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use ipp_loadgen::{Workload, WorkloadSpec};
use ipp_schemas::dlq::header as dlq;
use ipp_tests::{
    inprocess::{kustom_topic_of, observations_topic_of, projector_config, TestProjector},
    kafka,
    pipeline::{assert_sessions, Pipeline},
    process::ChildConfig,
};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const SENTINEL: &str = "SENTINEL: edited by hand";

async fn sentinel_in(pool: &sqlx::PgPool, table: &str, session: Uuid) -> Option<String> {
    sqlx::query_scalar(&format!(
        "SELECT last_failure_reason FROM {table} WHERE session_id = $1"
    ))
    .bind(session)
    .fetch_one(pool)
    .await
    .expect("sentinel row")
}

async fn schema_exists(pool: &sqlx::PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("pg_namespace")
}

/// What a reader saw while it counted `ipp_sessions` in a loop.
#[derive(Debug, Default)]
struct ReaderLog {
    queries: u64,
    errors: Vec<String>,
    decreases: Vec<(i64, i64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_under_load_swaps_atomically_hands_over_and_rolls_back() {
    let mut pipeline = Pipeline::start("rebuild").await;
    let first = Workload::generate(&WorkloadSpec {
        sessions: 60,
        seed: 611,
        ..WorkloadSpec::default()
    });
    let second = Workload::generate(&WorkloadSpec {
        sessions: 60,
        seed: 612,
        ..WorkloadSpec::default()
    });
    let third = Workload::generate(&WorkloadSpec {
        sessions: 20,
        seed: 613,
        ..WorkloadSpec::default()
    });
    pipeline.send(&first.deliveries, 8).await;
    pipeline.settle(&[&first]).await;

    // A hand edit the log does not explain: a rebuild must drop it.
    let sentinel = *first.sessions.keys().next().expect("a session");
    let edited =
        sqlx::query("UPDATE ipp_sessions SET last_failure_reason = $1 WHERE session_id = $2")
            .bind(SENTINEL)
            .bind(sentinel)
            .execute(&pipeline.pool)
            .await
            .expect("sentinel update")
            .rows_affected();
    assert_eq!(edited, 1);

    // No load: the dry run reports exactly the edited row as changed and swaps nothing.
    pipeline.clear_sim_calls().await;
    let ledger_before = pipeline.ledger().await;
    let out = pipeline
        .projector_cli(&["rebuild", "--dry-run", "--json"])
        .await
        .success();
    let lines = out.json_lines();
    let report = lines.last().expect("a report");
    assert_eq!(report["phase"], "dry_run", "{}", out.stdout);
    assert_eq!(report["identical"], false, "{report}");
    let tables: BTreeMap<String, &Value> = report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| (t["table"].as_str().unwrap().to_owned(), t))
        .collect();
    let sessions = tables["ipp_sessions"];
    assert_eq!(
        (
            &sessions["added"],
            &sessions["changed"],
            &sessions["missing"]
        ),
        (&Value::from(0), &Value::from(1), &Value::from(0)),
        "{report}"
    );
    assert_eq!(sessions["live_rows"], first.sessions.len());
    assert_eq!(
        sessions["examples"][0]["key"],
        sentinel.to_string(),
        "{report}"
    );
    assert_eq!(
        sessions["examples"][0]["live"]["last_failure_reason"],
        SENTINEL
    );
    let events = tables["ipp_events"];
    assert_eq!(
        (&events["added"], &events["changed"], &events["missing"]),
        (&Value::from(0), &Value::from(0), &Value::from(0)),
        "{report}"
    );
    assert_eq!(
        sentinel_in(&pipeline.pool, "ipp_sessions", sentinel)
            .await
            .as_deref(),
        Some(SENTINEL),
        "the dry run swapped nothing"
    );
    assert!(
        !schema_exists(&pipeline.pool, "ipp_rebuild").await,
        "shadow dropped"
    );
    assert!(
        !schema_exists(&pipeline.pool, "ipp_previous").await,
        "nothing swapped"
    );

    // A reader counts sessions every few milliseconds through the whole rebuild.
    let stop = Arc::new(AtomicBool::new(false));
    // It logs in as a read-only role, as a BI tool would: the grants must survive.
    let reader_role = format!("ipp_reader_{}", Uuid::new_v4().simple());
    for statement in [
        format!("CREATE ROLE {reader_role} LOGIN"),
        format!("GRANT SELECT ON ipp_sessions, ipp_events TO {reader_role}"),
    ] {
        sqlx::query(&statement)
            .execute(&pipeline.pool)
            .await
            .unwrap();
    }
    let reader_url =
        pipeline
            .database_url
            .replacen("://postgres@", &format!("://{reader_role}@"), 1);
    assert_ne!(
        reader_url, pipeline.database_url,
        "the reader uses its own role"
    );
    let reader_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&reader_url)
        .await
        .expect("reader pool");
    let reader = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut log = ReaderLog::default();
            let mut last = 0i64;
            while !stop.load(Ordering::Relaxed) {
                match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ipp_sessions")
                    .fetch_one(&reader_pool)
                    .await
                {
                    Ok(n) => {
                        if n < last {
                            log.decreases.push((last, n));
                        }
                        last = n;
                    }
                    Err(e) => log.errors.push(e.to_string()),
                }
                log.queries += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            log
        }
    });

    // Steady load (small chunks with pauses) while the rebuild runs.
    let load = async {
        for chunk in second.deliveries.chunks(15) {
            pipeline.send(chunk, 2).await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        std::time::Instant::now()
    };
    let rebuild = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = pipeline.projector_cli(&["rebuild", "--json"]).await;
        (out, std::time::Instant::now())
    };
    let (load_done, (out, rebuild_done)) = tokio::join!(load, rebuild);
    let out = out.success();
    let lines = out.json_lines();
    let report = lines.last().expect("a report");
    assert_eq!(report["phase"], "swapped", "{}", out.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l["phase"] == "catching_up" && l["events_per_second"].is_number()),
        "progress lines: {}",
        out.stdout
    );
    // After the swap, more traffic: the live projector must carry on in the new tables.
    pipeline.send(&third.deliveries, 4).await;
    pipeline.settle(&[&first, &second, &third]).await;
    stop.store(true, Ordering::Relaxed);
    let log = reader.await.expect("reader");
    assert!(log.queries > 20, "the reader ran: {log:?}");
    assert!(
        log.errors.is_empty(),
        "a reader saw errors: {:?}",
        log.errors
    );
    assert!(
        log.decreases.is_empty(),
        "a reader saw the count go down: {:?}",
        log.decreases
    );

    let mut expected = first.sessions.clone();
    expected.extend(second.sessions.clone());
    expected.extend(third.sessions.clone());
    assert_sessions(&pipeline.pool, "ipp_sessions", &expected).await;
    assert_eq!(
        sentinel_in(&pipeline.pool, "ipp_sessions", sentinel).await,
        None,
        "the rebuilt table is a clean pass: the hand edit is gone"
    );
    assert_eq!(
        sentinel_in(&pipeline.pool, "ipp_previous.ipp_sessions", sentinel)
            .await
            .as_deref(),
        Some(SENTINEL),
        "the previous version is kept"
    );
    // A clean pass over the whole log (into a schema of its own) equals the live tables.
    pipeline
        .projector_cli(&[
            "replay",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
            "--into-schema",
            "clean_pass",
        ])
        .await
        .success();
    for (table, key, ignored) in [
        ("ipp_sessions", "session_id", "'{updated_at}'"),
        ("ipp_events", "event_id", "'{}'"),
    ] {
        let differences: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM clean_pass.{table} c FULL JOIN public.{table} l USING ({key})
             WHERE c.{key} IS NULL OR l.{key} IS NULL
                OR (to_jsonb(c) - {ignored}::text[]) <> (to_jsonb(l) - {ignored}::text[])"
        ))
        .fetch_one(&pipeline.pool)
        .await
        .unwrap();
        assert_eq!(differences, 0, "{table} differs from a clean pass");
    }

    let offsets: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM ipp_projector_offsets WHERE consumer_group = $1 ORDER BY 1",
    )
    .bind(&pipeline.projector_group)
    .fetch_all(&pipeline.pool)
    .await
    .unwrap();
    let highs: BTreeMap<i32, i64> = {
        let mut highs = BTreeMap::new();
        for r in kafka::read_topic(&pipeline.brokers, &pipeline.topic) {
            let h = highs.entry(r.partition).or_insert(0);
            *h = (*h).max(r.offset + 1);
        }
        highs
    };
    assert_eq!(
        offsets.into_iter().collect::<BTreeMap<_, _>>(),
        highs,
        "live offsets at the end of the log"
    );

    // Order Management saw the captures of the new traffic only, each once, and the
    // ledger rows of the first workload are untouched.
    let orders_before: std::collections::BTreeSet<String> = first
        .finalized_orders()
        .map(|(_, o)| o.to_string())
        .collect();
    let calls = pipeline.sim_calls().await;
    for call in &calls {
        let path = call["path"].as_str().unwrap_or_default();
        assert!(
            !orders_before.iter().any(|o| path.contains(o.as_str())),
            "a call for an order settled before the rebuild: {call}"
        );
    }
    let ledger_after = pipeline.ledger().await;
    for row in &ledger_before {
        assert!(ledger_after.contains(row), "ledger row changed: {row}");
    }

    // Rollback: the previous version (with the hand edit), caught up with the traffic.
    let out = pipeline
        .projector_cli(&["rebuild", "--rollback", "--json"])
        .await
        .success();
    assert_eq!(
        out.json_lines().last().unwrap()["phase"],
        "rolled_back",
        "{}",
        out.stdout
    );
    assert_eq!(
        sentinel_in(&pipeline.pool, "ipp_sessions", sentinel)
            .await
            .as_deref(),
        Some(SENTINEL),
        "rollback restored the previous version"
    );
    assert_eq!(
        sentinel_in(&pipeline.pool, "ipp_previous.ipp_sessions", sentinel).await,
        None
    );
    let fix_sentinel = |mut e: BTreeMap<Uuid, ipp_loadgen::ExpectedSession>| {
        e.retain(|s, _| *s != sentinel);
        e
    };
    let without_sentinel = fix_sentinel(expected.clone());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_sessions")
        .fetch_one(&pipeline.pool)
        .await
        .unwrap();
    assert_eq!(
        rows as usize,
        expected.len(),
        "rolled-back version caught up with every session"
    );
    // All but the edited row are exactly the clean result.
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ipp_sessions l JOIN ipp_previous.ipp_sessions p USING (session_id)
         WHERE (to_jsonb(l) - 'updated_at') = (to_jsonb(p) - 'updated_at')",
    )
    .fetch_one(&pipeline.pool)
    .await
    .unwrap();
    assert_eq!(
        others as usize,
        without_sentinel.len(),
        "every other row equals the rebuilt one"
    );

    // A merchant's refund goes through the commands topic and the ledger first: the log
    // then holds money commands too, which no rebuild may execute again.
    let captured: Uuid = sqlx::query_scalar(
        "SELECT order_id FROM ipp_actions WHERE action = 'capture' AND status = 'succeeded' LIMIT 1",
    )
    .fetch_one(&pipeline.pool)
    .await
    .expect("a captured order");
    let refund = pipeline
        .actions_cli(&[
            "command",
            "issue",
            "refund",
            &captured.to_string(),
            "--amount",
            "100",
            "--idempotency-key",
            "rebuild-test-refund",
            "--wait-secs",
            "60",
            "--json",
        ])
        .await
        .success();
    let refund: Value = serde_json::from_str(refund.stdout.trim()).expect("the command as JSON");
    assert_eq!(refund["status"], "succeeded", "{refund}");
    assert_eq!(refund["issued_by"], "cli", "{refund}");

    // Rebuild and rollback with the pipeline quiet: zero calls to Order Management and an
    // unchanged ledger.
    pipeline.clear_sim_calls().await;
    let ledger_quiet = pipeline.ledger().await;
    pipeline.projector_cli(&["rebuild"]).await.success();
    pipeline
        .projector_cli(&["rebuild", "--rollback"])
        .await
        .success();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        pipeline.sim_calls().await,
        Vec::<Value>::new(),
        "rebuild called Order Management"
    );
    assert_eq!(
        pipeline.ledger().await,
        ledger_quiet,
        "rebuild touched ipp_actions"
    );
    pipeline.assert_running();
    let still_granted: bool = sqlx::query_scalar(
        "SELECT has_table_privilege($1, 'public.ipp_sessions', 'SELECT')
            AND has_table_privilege($1, 'public.ipp_events', 'SELECT')",
    )
    .bind(&reader_role)
    .fetch_one(&pipeline.pool)
    .await
    .unwrap();
    assert!(still_granted, "the reader's grants followed the swaps");
    for statement in [
        format!("DROP OWNED BY {reader_role}"),
        format!("DROP ROLE {reader_role}"),
    ] {
        sqlx::query(&statement)
            .execute(&pipeline.pool)
            .await
            .unwrap();
    }
    eprintln!(
        "the load ended {:?} after the swap",
        load_done.checked_duration_since(rebuild_done)
    );
}

/// The number of sessions waiting for a lock on a `LOCK TABLE` statement (the swap).
async fn waiting_swaps(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'
           AND query LIKE 'LOCK TABLE%'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity")
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_query_delays_the_swap_which_retries_instead_of_queueing_readers() {
    let pipeline = Pipeline::start("rebuild_wait").await;
    let workload = Workload::generate(&WorkloadSpec {
        sessions: 15,
        seed: 614,
        ..WorkloadSpec::default()
    });
    pipeline.send(&workload.deliveries, 8).await;
    pipeline.settle(&[&workload]).await;

    // Nothing to roll back to yet.
    let out = pipeline.projector_cli(&["rebuild", "--rollback"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("nothing to roll back"),
        "{}",
        out.stderr
    );

    // An analyst's long transaction holds ipp_sessions.
    let mut analyst = pipeline.pool.begin().await.unwrap();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_sessions")
        .fetch_one(&mut *analyst)
        .await
        .unwrap();
    assert_eq!(before as usize, workload.sessions.len());

    let rebuild = pipeline.projector_cli_with(
        &["rebuild", "--json", "--lock-wait-ms", "300"],
        &[("RUST_LOG", "ipp_projector=info")],
    );
    let hold = async {
        // The swap waits for the lock, gives up after 300 ms, and asks again.
        wait_until("the swap waits for the lock", async || {
            waiting_swaps(&pipeline.pool).await > 0
        })
        .await;
        wait_until("the swap gave up waiting", async || {
            waiting_swaps(&pipeline.pool).await == 0
        })
        .await;
        // Meanwhile other readers are not queued behind it for long.
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_sessions")
            .fetch_one(&pipeline.pool)
            .await
            .unwrap();
        assert_eq!(count, before);
        analyst.commit().await.unwrap();
    };
    let (out, ()) = tokio::join!(rebuild, hold);
    let out = out.success();
    assert_eq!(
        out.json_lines().last().unwrap()["phase"],
        "swapped",
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("retrying the swap"),
        "the swap was retried: {}",
        out.stderr
    );
    assert_sessions(&pipeline.pool, "ipp_sessions", &workload.sessions).await;
}

/// A projector of its own on `brokers`, fed directly with events: enough to rebuild.
struct SmallSetup {
    config: ipp_projector::Config,
    env: Vec<(&'static str, String)>,
    brokers: String,
    topic: String,
    dlq: String,
    pool: sqlx::PgPool,
    producer: ipp_tests::produce::Producer,
    /// In-process; `None` once stopped.
    projector: Option<TestProjector>,
    _database: ipp_tests::db::TestDatabase,
}

impl SmallSetup {
    async fn start(brokers: &str, topic_configs: &[(&str, &str)]) -> Self {
        let topic = ipp_tests::unique_name("ipp_events_history");
        kafka::create_named_topic_with(brokers, &topic, 2, topic_configs).await;
        // The orders model's other topics, which a rebuild reads too.
        for orders_topic in [kustom_topic_of(&topic), observations_topic_of(&topic)] {
            kafka::create_named_topic(brokers, &orders_topic, 1).await;
        }
        let dlq = kafka::create_topic(brokers, "ipp_dlq", 1).await;
        let database = ipp_tests::db::fresh_database().await;
        let database_url = database.url().to_owned();
        let config = projector_config(
            brokers,
            &topic,
            &dlq,
            &database_url,
            &ipp_tests::unique_name("projector"),
        );
        let env = config.env();
        let projector = Some(TestProjector::spawn(config.clone()));
        Self {
            config,
            brokers: brokers.to_owned(),
            dlq,
            pool: PgPoolOptions::new()
                .max_connections(2)
                .connect(&database_url)
                .await
                .expect("connect"),
            producer: ipp_tests::produce::Producer::new(brokers, &topic),
            env,
            topic,
            projector,
            _database: database,
        }
    }

    /// Produces the IPP events of `sessions` new sessions and waits until the live
    /// projector stored them; returns the workload.
    async fn produce(&self, sessions: usize, seed: u64) -> Workload {
        let before = self.events().await;
        let work = self.produce_only(sessions, seed).await;
        let events = work
            .deliveries
            .iter()
            .map(|d| d.event_id.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len() as i64;
        wait_until("the live projector stored the events", async || {
            self.events().await == before + events
        })
        .await;
        work
    }

    /// Produces the IPP events of `sessions` new sessions; returns the workload.
    async fn produce_only(&self, sessions: usize, seed: u64) -> Workload {
        let work = Workload::generate(&WorkloadSpec {
            sessions,
            seed,
            other_event_rate: 0.0,
            ..WorkloadSpec::default()
        });
        let bodies: Vec<Vec<u8>> = work.deliveries.iter().map(|d| d.body.clone()).collect();
        self.producer.send_events(&bodies).await;
        work
    }

    /// Starts the live projector again.
    fn restart(&mut self) {
        assert!(self.projector.is_none(), "stopped");
        self.projector = Some(TestProjector::spawn(self.config.clone()));
    }

    /// The dead letters, by source `(partition, offset)`.
    fn dead_letters(&self) -> BTreeMap<(i32, i64), kafka::Record> {
        kafka::read_topic(&self.brokers, &self.dlq)
            .into_iter()
            .map(|r| {
                let at = |name: &str| -> i64 {
                    let value = r.header(name).expect("dlq-source-*");
                    value.parse().expect("a number")
                };
                let partition = i32::try_from(at(dlq::SOURCE_PARTITION)).expect("a partition");
                let position = (partition, at(dlq::SOURCE_OFFSET));
                (position, r)
            })
            .collect()
    }

    async fn events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM ipp_events")
            .fetch_one(&self.pool)
            .await
            .unwrap_or(0)
    }

    async fn sessions(&self) -> Vec<Value> {
        sqlx::query_scalar(
            "SELECT to_jsonb(s) - 'updated_at' FROM ipp_sessions s ORDER BY session_id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("sessions")
    }

    /// Stops the live projector gracefully.
    async fn stop(&mut self) {
        self.projector.take().expect("running").stop().await;
    }

    async fn rebuild(&self, args: &[&str]) -> ipp_tests::cli::Output {
        let mut all = vec!["rebuild"];
        all.extend_from_slice(args);
        ipp_tests::cli::run_async("ipp-projector", &all, &self.env, Duration::from_secs(120)).await
    }
}

/// On a broker whose retention really deleted the oldest segment of the event topic, a
/// rebuild refuses to swap and changes nothing; with --allow-truncated-history it swaps
/// in what the log still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_refuses_to_swap_in_a_log_whose_oldest_records_were_deleted() {
    // Retention runs at once and then every 500 ms on this broker (the defaults: after
    // 30 s, then every 5 min); the topic's segments roll every 500 ms.
    let broker = kafka::OwnBroker::start_with(&[
        "log.initial.task.delay.ms=0",
        "log.retention.check.interval.ms=500",
    ]);
    let brokers = broker.brokers();
    let mut setup = SmallSetup::start(&brokers, &[("segment.ms", "500")]).await;
    let old = setup.produce(20, 1).await;
    // The next records start a new segment: the old one holds only `old`.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let new = setup.produce(20, 2).await;
    let live_events = setup.events().await;
    // A retention of 3 s deletes the segments of `old` (5 s old) but not yet `new`'s;
    // once it did, the operator puts the retention back (retention deletes even the
    // active segment once all of it is older than retention.ms).
    let configs = |retention: &'static str| [("segment.ms", "500"), ("retention.ms", retention)];
    kafka::set_topic_configs(&brokers, &setup.topic, &configs("3000")).await;
    wait_until("retention deleted the oldest segments", async || {
        (0..2).all(|p| kafka::watermarks(&brokers, &setup.topic, p).0 > 0)
    })
    .await;
    kafka::set_topic_configs(&brokers, &setup.topic, &configs("-1")).await;
    for partition in 0..2 {
        let (low, high) = kafka::watermarks(&brokers, &setup.topic, partition);
        assert!(low < high, "partition {partition} kept the newest records");
    }
    let live_sessions = setup.sessions().await;
    assert_eq!(live_sessions.len(), old.sessions.len() + new.sessions.len());

    let refused = setup.rebuild(&[]).await;
    assert!(!refused.status.success(), "swapped a truncated history");
    assert!(
        refused.stderr.contains("truncated log")
            && refused.stderr.contains("starts at offset")
            && refused.stderr.contains("--allow-truncated-history"),
        "the error says why and what to do: {}",
        refused.stderr
    );
    assert_eq!(setup.sessions().await, live_sessions, "nothing changed");
    assert_eq!(setup.events().await, live_events);
    assert!(!schema_exists(&setup.pool, "ipp_previous").await);
    assert!(!schema_exists(&setup.pool, "ipp_rebuild").await);

    // Knowingly truncated: the rebuilt tables hold exactly what the log still has.
    setup
        .rebuild(&["--allow-truncated-history"])
        .await
        .success();
    assert_sessions(&setup.pool, "ipp_sessions", &new.sessions).await;
    setup.stop().await;
}

/// A live table holding an event the log does not have (here: written by hand) would
/// lose it: the rebuild refuses the swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_refuses_to_swap_in_fewer_events_than_the_live_table() {
    let mut setup = SmallSetup::start(&kafka::brokers(), &[]).await;
    let work = setup.produce(10, 3).await;
    sqlx::query(
        "INSERT INTO ipp_events (event_id, session_id, event_type, occurred_at, received_at,
                                 kafka_partition, kafka_offset, payload)
         SELECT 'kevt_not_in_the_log', session_id, event_type, occurred_at, received_at,
                kafka_partition, kafka_offset, payload
         FROM ipp_events LIMIT 1",
    )
    .execute(&setup.pool)
    .await
    .expect("an event the log does not hold");
    let live_events = setup.events().await;

    let refused = setup.rebuild(&[]).await;
    assert!(!refused.status.success(), "swapped in fewer events");
    assert!(
        refused.stderr.contains(&format!(
            "holds {} events, fewer than the live table's {live_events}",
            live_events - 1
        )),
        "{}",
        refused.stderr
    );
    assert_eq!(setup.events().await, live_events, "nothing changed");
    assert!(!schema_exists(&setup.pool, "ipp_previous").await);

    setup
        .rebuild(&["--allow-truncated-history"])
        .await
        .success();
    assert_eq!(setup.events().await, live_events - 1);
    assert_sessions(&setup.pool, "ipp_sessions", &work.sessions).await;
    setup.stop().await;
}

/// A rebuild passes poison records, so before it swaps it parks every one the
/// dead-letter topic does not hold yet (here: produced while the live projector was
/// stopped, so it never saw them) and none the live projector parked already; the
/// restarted live projector, handed offsets past them, parks nothing again, nor does a
/// second rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_parks_the_poison_records_it_skips_that_nobody_parked_and_only_those() {
    let mut setup = SmallSetup::start(&kafka::brokers(), &[]).await;
    let first = setup.produce(5, 21).await;
    let seen_value = br#"{"id":"kevt_seen","type":"ipp.session.created","data":{"#.to_vec();
    let seen_headers = ipp_schemas::RecordHeaders {
        event_id: "kevt_seen".into(),
        event_type: "ipp.session.created".into(),
        merchant_id: None,
        webhook_id: "msg_seen".into(),
        webhook_timestamp: "1780000000".into(),
        received_at: chrono::Utc::now(),
    };
    let seen = setup
        .producer
        .send_raw(Some(b"k-seen"), Some(&seen_value), seen_headers.to_kafka())
        .await;
    wait_until(
        "the live projector parked the first poison record",
        async || setup.dead_letters().contains_key(&seen),
    )
    .await;
    setup.stop().await;

    // Produced while no projector runs, among good events.
    let second = setup.produce_only(5, 22).await;
    let unroutable = format!(
        r#"{{"id":"kevt_{}","type":"ipp.session.created","data":{{}}}}"#,
        Uuid::new_v4().simple()
    );
    let unseen_unroutable = setup.producer.send_unroutable(unroutable.as_bytes()).await;
    let not_uuid = format!(
        r#"{{"id":"kevt_{}","timestamp":"2026-06-05T18:30:00Z","type":"ipp.session.created","data":{{"session_id":"not-a-uuid"}}}}"#,
        Uuid::new_v4().simple()
    );
    let unseen_not_uuid = setup.producer.send_event(not_uuid.as_bytes()).await;
    let third = setup.produce_only(5, 23).await;

    let out = setup.rebuild(&["--json"]).await.success();
    let report = out.json_lines().pop().expect("a report");
    assert_eq!(report["phase"], "swapped", "{}", out.stdout);
    assert_eq!(report["poison_skipped"], 3, "{report}");
    assert_eq!(report["poison_parked"], 2, "{report}");
    let parked = setup.dead_letters();
    assert_eq!(
        parked.keys().copied().collect::<Vec<_>>(),
        {
            let mut all = vec![seen, unseen_unroutable, unseen_not_uuid];
            all.sort();
            all
        },
        "every skipped record parked, the first one once"
    );
    let expected = [
        (
            seen,
            seen_value.as_slice(),
            "not a valid Kustom event envelope",
        ),
        (
            unseen_unroutable,
            unroutable.as_bytes(),
            "ingest could not route this body (ipp-route-error): missing_session_id: ",
        ),
        (unseen_not_uuid, not_uuid.as_bytes(), "invalid data"),
    ];
    for (position, value, reason) in expected {
        let record = &parked[&position];
        assert_eq!(record.value, value, "{position:?}: value byte for byte");
        assert_eq!(record.header(dlq::SERVICE), Some("ipp-projector"));
        assert_eq!(record.header(dlq::SOURCE_TOPIC), Some(setup.topic.as_str()));
        let error = record.header(dlq::ERROR).expect("dlq-error");
        assert!(error.contains(reason), "{position:?}: {error}");
    }
    let mut sessions = first.sessions.clone();
    sessions.extend(second.sessions.clone());
    sessions.extend(third.sessions.clone());
    assert_sessions(&setup.pool, "ipp_sessions", &sessions).await;

    // The live projector starts past them and parks nothing again; `dlq list` shows all three.
    setup.restart();
    let fourth = setup.produce(3, 24).await;
    sessions.extend(fourth.sessions.clone());
    assert_sessions(&setup.pool, "ipp_sessions", &sessions).await;
    assert_eq!(setup.dead_letters().len(), 3, "parked once");
    let listed = ipp_tests::cli::run_async(
        "ipp-projector",
        &["dlq", "list", "--json"],
        &setup.env,
        Duration::from_secs(60),
    )
    .await
    .success()
    .json_lines();
    let listed: BTreeMap<(i64, i64), String> = listed
        .iter()
        .map(|line| {
            let position = (
                line["source_partition"].as_i64().expect("partition"),
                line["source_offset"].as_i64().expect("offset"),
            );
            (position, line["error"].as_str().expect("error").to_owned())
        })
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (position, _, reason) in expected {
        let error = &listed[&(i64::from(position.0), position.1)];
        assert!(error.contains(reason), "{position:?}: {error}");
    }

    // A second rebuild finds all three in the dead-letter topic.
    let out = setup.rebuild(&["--json"]).await.success();
    let report = out.json_lines().pop().expect("a report");
    assert_eq!(report["poison_skipped"], 3, "{report}");
    assert_eq!(report["poison_parked"], 0, "{report}");
    assert_eq!(setup.dead_letters().len(), 3, "nothing parked twice");
    assert_sessions(&setup.pool, "ipp_sessions", &sessions).await;
    setup.stop().await;
}
