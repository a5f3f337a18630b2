//! Actions: finalized sessions captured through ipp-actions against ipp-om-sim with a
//! fixed latency, next to the ceiling the in-flight bound allows:
//! `ACTIONS_CONCURRENCY ÷ (calls per capture × latency)`; a capture is two calls
//! (GET the order, POST the capture).

use ipp_service::ReservedPort;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use ipp_loadgen::{Workload, WorkloadSpec};
use ipp_schemas::Route;
use sqlx::postgres::PgPoolOptions;

use crate::{
    infra::{self, Database},
    load, progress,
    report::{Figure, Goal},
    Bench,
};

const API_KEY: &str = "kco_bench_simulator";
const CALLS_PER_CAPTURE: f64 = 2.0;

pub async fn run(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let n = bench.sizes.actions_sessions;
    let concurrency = bench.config.actions_concurrency;
    let latency_ms = bench.config.om_latency_ms;
    let spec = WorkloadSpec {
        sessions: n * 3 / 2 + 16,
        merchants: 20,
        seed: 41,
        ..WorkloadSpec::default()
    };
    let bodies: Vec<Vec<u8>> = Workload::generate(&spec)
        .deliveries
        .into_iter()
        .filter(|d| d.event_type.ends_with(".finalized") && !d.is_duplicate)
        .take(n)
        .map(|d| d.body)
        .collect();
    if bodies.len() < n {
        bail!("workload has only {} finalized sessions", bodies.len());
    }
    let topic = bench.prefilled_topic("bench_actions", &bodies).await?;
    let dlq = infra::create_topic(bench.brokers(), "bench_actions_dlq", 1).await?;
    // Empty here, but ipp-actions consumes them beside the events.
    let commands = infra::create_topic(bench.brokers(), "bench_commands", 1).await?;
    let kustom = infra::create_topic(bench.brokers(), "bench_kustom", 1).await?;
    // ipp-actions appends every capture's outcome to it.
    let observations = infra::create_topic(
        bench.brokers(),
        "bench_observations",
        bench.config.partitions,
    )
    .await?;

    let db = Database::create(&bench.config.database_url).await?;
    // Held until the figure ends, so no other socket takes the ports first.
    let (sim_reserved, actions_reserved) = (ReservedPort::new(), ReservedPort::new());
    let (sim_port, actions_port) = (sim_reserved.port(), actions_reserved.port());
    let client = load::client(4);
    let mut sim = bench.spawn(
        "ipp-om-sim",
        &[],
        &[
            ("OM_SIM_LISTEN", format!("127.0.0.1:{sim_port}")),
            ("OM_SIM_API_KEY", API_KEY.into()),
            ("OM_SIM_LATENCY_MS", latency_ms.to_string()),
        ],
    )?;
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    infra::wait_ready(
        &client,
        &format!("{sim_url}/healthz"),
        &mut sim,
        Duration::from_secs(30),
    )
    .await?;

    let in_flight_bound = concurrency as f64 / (CALLS_PER_CAPTURE * latency_ms as f64 / 1000.0);
    // The limit is per account (merchant_id): the busiest account takes longest, at
    // `limit ÷ 2` captures per second, so the whole workload is done no sooner.
    let rate_limit = bench.config.om_rate_limit;
    let mut per_account: HashMap<Option<String>, usize> = HashMap::new();
    for body in &bodies {
        *per_account
            .entry(Route::parse(body)?.merchant_id)
            .or_default() += 1;
    }
    let busiest = per_account.values().copied().max().unwrap_or(1);
    let rate_bound = if rate_limit > 0.0 {
        n as f64 * rate_limit / (CALLS_PER_CAPTURE * busiest as f64)
    } else {
        f64::INFINITY
    };
    let ceiling = in_flight_bound.min(rate_bound);
    progress(&format!(
        "actions: ipp-actions with {concurrency} in flight, OM latency {latency_ms} ms, rate \
         limit {rate_limit} requests/s (ceiling {ceiling:.0} captures/s)"
    ));
    let mut actions = bench.spawn(
        "ipp-actions",
        &[],
        &[
            ("KAFKA_BROKERS", bench.brokers().to_owned()),
            ("IPP_TOPIC", topic),
            ("ACTIONS_DLQ_TOPIC", dlq),
            ("ACTIONS_COMMANDS_TOPIC", commands),
            ("ACTIONS_KUSTOM_TOPIC", kustom),
            ("ACTIONS_OBSERVATIONS_TOPIC", observations),
            ("DATABASE_URL", db.url.clone()),
            ("ACTIONS_GROUP", infra::unique("bench_actions")),
            ("ACTIONS_HTTP", format!("127.0.0.1:{actions_port}")),
            ("KUSTOM_API_URL", sim_url.clone()),
            ("KUSTOM_API_KEY", API_KEY.into()),
            ("ACTIONS_CONCURRENCY", concurrency.to_string()),
            ("ACTIONS_OM_RATE_LIMIT", rate_limit.to_string()),
            ("KAFKA_PROPERTIES", bench.config.kafka_properties()),
        ],
    )?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await?;
    // (elapsed, actions in a final state), sampled every 50 ms.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60 + (n as f64 / ceiling * 10.0) as u64);
    let mut samples: Vec<(Duration, usize)> = Vec::new();
    // (done, pending): whether the workers had work waiting (or the consumer was behind).
    let mut pendings: Vec<(usize, usize)> = Vec::new();
    loop {
        actions.check_running()?;
        // The ledger table appears once ipp-actions has migrated.
        let counts: Option<(i64, i64)> = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status <> 'pending'),
                    count(*) FILTER (WHERE status = 'pending')
             FROM ipp_actions",
        )
        .fetch_one(&pool)
        .await
        .ok();
        let (done, pending) = counts.unwrap_or((0, 0));
        let done = done as usize;
        samples.push((started.elapsed(), done));
        pendings.push((done, pending as usize));
        if done >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("ipp-actions finished {done} of {n} actions before the deadline");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (succeeded,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM ipp_actions WHERE status = 'succeeded'")
            .fetch_one(&pool)
            .await?;
    let stats: serde_json::Value = client
        .get(format!("{sim_url}/_sim/stats"))
        .send()
        .await?
        .json()
        .await
        .context("simulator stats")?;
    // What the calls themselves took, as ipp-actions timed them: the simulator's latency
    // plus HTTP and the simulator's timer. The ceiling counts the latency alone.
    let (call_seconds, calls) = infra::histogram(
        &client,
        &format!("http://127.0.0.1:{actions_port}/metrics"),
        "ipp_actions_om_call_duration_seconds",
    )
    .await;
    let call_ms = call_seconds * 1000.0 / calls.max(1.0);
    bench.note_memory(&actions);
    actions.stop(Duration::from_secs(20));
    sim.stop(Duration::from_secs(5));
    pool.close().await;
    db.drop_now(bench.config.keep_databases).await?;

    let captures = stats["captures_applied"].as_u64().unwrap_or(0);
    let requests = stats["requests"].as_u64().unwrap_or(0);
    if succeeded as usize != n || captures as usize != n {
        bail!("{succeeded} actions succeeded and the simulator applied {captures} captures, expected {n}");
    }
    // The steady part: from 10 % to 90 % of the actions done (start-up, the consumer's
    // group join and the tail are left out).
    let at = |fraction: f64| {
        let goal = (n as f64 * fraction).ceil() as usize;
        samples
            .iter()
            .find(|(_, done)| *done >= goal)
            .copied()
            .unwrap_or((started.elapsed(), n))
    };
    let (t10, d10) = at(0.1);
    let (t90, d90) = at(0.9);
    let window = (t90 - t10).as_secs_f64();
    let value = if window > 0.0 {
        (d90 - d10) as f64 / window
    } else {
        n as f64 / started.elapsed().as_secs_f64()
    };
    let backlog = pendings
        .iter()
        .filter(|(done, _)| *done >= d10 && *done <= d90)
        .map(|(_, pending)| *pending)
        .min()
        .unwrap_or(0);
    let calls_bound = concurrency as f64 / (CALLS_PER_CAPTURE * call_ms / 1000.0);
    progress(&format!(
        "actions: {value:.0} captures/s; fewest pending rows between 10 % and 90 %: {backlog}; \
         OM calls took {call_ms:.1} ms on average (the in-flight bound at that: \
         {calls_bound:.0} captures/s)"
    ));
    Ok(vec![Figure::against_ceiling(
        "actions_throughput",
        "Actions (captures)",
        value,
        ceiling,
        "captures/s",
        (Goal::RatioAtLeast, 0.9),
        format!(
            "{n} finalized sessions prefilled in a topic; ipp-actions (ACTIONS_CONCURRENCY=\
             {concurrency}) against ipp-om-sim (OM_SIM_LATENCY_MS={latency_ms}); rate of actions \
             reaching a final state between 10 % and 90 % done (ledger polled every 50 ms); all \
             {n} succeeded, {captures} captures applied, {requests} OM requests ({:.2} per \
             capture); at least {backlog} rows were pending throughout the window (more than \
             {concurrency} means the workers, not the consumer, set the pace); whole run {:.1} s. \
             Ceiling: the lower of the in-flight bound ÷ (2 calls × latency), {in_flight_bound:.0} \
             captures/s, and what the rate limit per account allows (ACTIONS_OM_RATE_LIMIT=\
             {rate_limit} ÷ 2 calls for the busiest of {} accounts, {busiest} of the {n} \
             sessions), {}. The calls took {call_ms:.1} ms on average as ipp-actions timed \
             them (the simulator's {latency_ms} ms plus HTTP): at that the in-flight bound is \
             {calls_bound:.0} captures/s, and what remains of the gap is ipp-actions' own \
             work between calls (claims and ledger writes)",
            requests as f64 / n as f64,
            started.elapsed().as_secs_f64(),
            per_account.len(),
            if rate_bound.is_finite() {
                format!("{rate_bound:.0} captures/s")
            } else {
                "none (0: no limit)".into()
            }
        ),
    )])
}
