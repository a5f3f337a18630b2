//! `ipp-projector rebuild` against the running pipeline: a dry run reports a
//! hand-edited row and swaps nothing; a rebuild under a steady webhook load swaps in
//! tables equal to a clean pass while a reader never sees a missing table or a count
//! going down, and the live projector carries on; `--rollback` brings the previous
//! version back; and none of it calls Order Management or touches `ipp_actions`.

mod rebuild_support;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use ipp_loadgen::{Workload, WorkloadSpec};
use rebuild_support::{assert_sessions, Pipeline};
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
        for r in ipp_tests::kafka::read_topic(&pipeline.brokers, &pipeline.topic) {
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
