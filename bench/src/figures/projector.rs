//! Projector catch-up (rebuild from a prefilled topic, next to a bare consumer reading
//! the same topic from offset 0) and the apply engine (the same events applied from
//! memory, next to `COPY` of the same rows).

use ipp_service::ReservedPort;
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use ipp_projector::{
    engine::{self as store, AutoAnalyze, NewEvent},
    session::{self, SessionEvent, SessionRow},
};
use ipp_schemas::KustomEvent;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig,
};
use sqlx::{postgres::PgPoolOptions, PgPool};
use uuid::Uuid;

use crate::{
    infra::{self, Database},
    progress,
    report::{Figure, Goal},
    Bench,
};

/// The realistic mix of ipp.* bodies both figures use: only ipp.* events go to the
/// projector's topic, and the mix keeps its duplicates.
fn bodies(bench: &Bench) -> Vec<Vec<u8>> {
    bodies_of(bench.sizes.catchup_events)
}

/// `n` ipp.* bodies of the realistic mix.
fn bodies_of(n: usize) -> Vec<Vec<u8>> {
    mix_of(n).0
}

/// `n` ipp.* bodies of the realistic mix, and the mix's other events delivered among
/// them (what ipp-ingest writes to `kustom.events`).
fn mix_of(n: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut ipp, mut other) = (Vec::new(), Vec::new());
    for delivery in super::ingest::deliveries(n * 11 / 10 + 16, 23) {
        if ipp.len() == n {
            break;
        }
        if delivery.is_ipp() {
            ipp.push(delivery.body);
        } else {
            other.push(delivery.body);
        }
    }
    (ipp, other)
}

/// Distinct events and sessions in `bodies`: what the read models must hold.
fn expected(bodies: &[Vec<u8>]) -> (usize, usize) {
    let mut events = HashSet::new();
    let mut sessions = HashSet::new();
    for body in bodies {
        if let Ok(KustomEvent::Ipp(event)) = KustomEvent::parse(body) {
            events.insert(event.id().to_owned());
            sessions.insert(event.session_id());
        }
    }
    (events.len(), sessions.len())
}

/// The catch-up figure (the sessions model, against its ceilings) and, beside it, the
/// catch-up with both read models, as ipp-projector runs by default.
pub async fn catch_up(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let (ipp_bodies, other_kustom) = mix_of(bench.sizes.catchup_events);
    let bodies = &ipp_bodies;
    let n = bodies.len();
    let topic = bench.prefilled_topic("bench_catchup", bodies).await?;
    let flow = super::orders::flow(bodies, other_kustom)?;
    let orders = OrdersInput::prefill(bench, flow).await?;

    let distinct = decoded(bodies)?;
    let rounds = if bench.config.smoke { 1 } else { 3 };
    let (mut ceilings, mut values) = (Vec::new(), Vec::new());
    let (mut consumes, mut copies, mut parallel_copies) = (Vec::new(), Vec::new(), Vec::new());
    let mut both = Vec::new();
    let lanes = ipp_projector::config::DEFAULT_APPLY_LANES as usize;
    for round in 1..=rounds {
        progress(&format!(
            "projector catch-up, round {round}/{rounds}: ceilings (a bare consumer from offset 0, binary COPY)"
        ));
        let consume = bare_consumer(bench, &topic, n).await?;
        // The COPY ceilings in records of the topic: the time to load its distinct events,
        // in one stream and in as many as the projector has lanes.
        let in_records = n as f64 / distinct.len() as f64;
        let copy = copy_ceiling(bench, &distinct, 1).await? * in_records;
        let parallel_copy = copy_ceiling(bench, &distinct, lanes).await? * in_records;
        let ceiling = consume.min(copy);
        consumes.push(consume);
        copies.push(copy);
        parallel_copies.push(parallel_copy);
        progress(&format!(
            "projector catch-up: ceilings {consume:.0} records/s (consume), {copy:.0} records/s \
             (COPY), {parallel_copy:.0} records/s (COPY in {lanes} connections); now ipp-projector"
        ));
        let value = projector_catch_up(bench, &topic, bodies, None).await?;
        progress(&format!(
            "projector catch-up: {value:.0} records/s ({:.2}×; {:.2}× the COPY in {lanes} \
             connections)",
            value / ceiling,
            value / parallel_copy
        ));
        progress("projector catch-up: now with the orders model too (its default)");
        let with_orders = projector_catch_up(bench, &topic, bodies, Some(&orders)).await?;
        progress(&format!(
            "projector catch-up, both read models: {with_orders:.0} records/s ({:.2}× the \
             sessions model alone)",
            with_orders / value
        ));
        ceilings.push(ceiling);
        values.push(value);
        both.push(with_orders);
    }
    let ratios = ratios_of(&values, &ceilings);
    let (events, sessions) = expected(bodies);
    let middle = median_round(&values, &ceilings);
    let sessions_figure = Figure::against_ceiling(
        "projector_catchup",
        "Projector catch-up",
        values[middle],
        ceilings[middle],
        "events/s",
        (Goal::RatioAtLeast, 0.8),
        format!(
            "{n} ipp.* records ({events} distinct events, {sessions} sessions, realistic mix with \
             duplicates and out-of-order delivery) prefilled in a {}-partition topic; clock from \
             ipp-projector's readiness (connected and subscribed; new group, fresh database \
             already migrated, default batch settings, the sessions model only: \
             PROJECTOR_ORDERS=false) until ipp_projector_offsets covers every record (polled every 50 ms); \
             rows checked after. Ceiling: the lower of a BaseConsumer subscribing with a fresh \
             group from offset 0 and reading every record (median {:.0} records/s) and one binary \
             COPY of the distinct events and their session rows, counted in records of the topic \
             (median {:.0} records/s). ipp-projector applies in {lanes} lanes (its default), \
             each a transaction on its own connection: the same COPY split by session over \
             {lanes} connections at once reached a median {:.0} records/s, and in the figure's \
             round the projector {:.2}× that round's. The figure is the round with the median \
             ratio of {rounds}, each round the ceilings then the projector (ratios {})",
            bench.config.partitions,
            median(&consumes),
            median(&copies),
            median(&parallel_copies),
            values[middle] / parallel_copies[middle],
            ratios
        ),
    );
    let both_ratios = ratios_of(&both, &values);
    let both_middle = median_round(&both, &values);
    let orders_figure = Figure::beside_ceiling(
        "projector_catchup_orders",
        "Projector catch-up, both read models",
        both[both_middle],
        values[both_middle],
        "events/s",
        format!(
            "ipp-projector as it runs by default (PROJECTOR_ORDERS=true), catching up on the \
             same {n} ipp.* records, with {} records in kustom.events (the mix's {} other \
             events and a capture.created per finalized order) and {} in ipp.observations \
             (ipp-actions' capture outcome and its read of the order, for each of the {} \
             orders), each topic {} partitions; clock from readiness until the sessions \
             model's offsets cover every ipp.* record and the orders model has merged all {} \
             facts (its ipp_projector_order_facts_total, polled every 50 ms); rows checked \
             after: every order in ipp_orders, all in_sync. Beside it, the ceiling column: the \
             catch-up figure's own run of the same round (the sessions model alone), so the \
             ratio is what the orders model costs the catch-up. No target in the issue; the \
             round with the median ratio of {rounds} (ratios {})",
            orders.flow.kustom.len(),
            orders.flow.kustom.len() - orders.flow.orders,
            orders.flow.observations.len(),
            orders.flow.orders,
            bench.config.partitions,
            orders.flow.facts,
            both_ratios
        ),
    );
    Ok(vec![sessions_figure, orders_figure])
}

/// The orders model's other two topics, prefilled once for every round, and what it
/// must merge from all three.
struct OrdersInput {
    kustom_topic: String,
    observations_topic: String,
    flow: super::orders::OrderFlow,
}

impl OrdersInput {
    async fn prefill(bench: &Bench, flow: super::orders::OrderFlow) -> anyhow::Result<Self> {
        let kustom_topic = bench.prefilled_topic("bench_kustom", &flow.kustom).await?;
        let observations_topic = infra::create_topic(
            bench.brokers(),
            "bench_observations",
            bench.config.partitions,
        )
        .await?;
        progress(&format!(
            "prefilling {observations_topic} with {} records",
            flow.observations.len()
        ));
        infra::prefill_keyed(bench.brokers(), &observations_topic, &flow.observations).await?;
        Ok(Self {
            kustom_topic,
            observations_topic,
            flow,
        })
    }
}

/// Catch-up of a large log beside a small one: cost that grows with the log (indexes,
/// locks, statistics) shows as a lower rate in the large run.
pub async fn growth(bench: &Bench) -> anyhow::Result<Figure> {
    let (small_n, large_n) = (bench.sizes.catchup_events, bench.sizes.growth_events);
    let large = bodies_of(large_n);
    let small = &large[..small_n.min(large.len())];
    let mut rates = Vec::new();
    for bodies in [small, &large[..]] {
        let n = bodies.len();
        let topic = bench.prefilled_topic("bench_growth", bodies).await?;
        infra::checkpoint(&bench.config.database_url).await;
        let rate = projector_catch_up(bench, &topic, bodies, None).await?;
        progress(&format!(
            "projector growth: {n} records at {rate:.0} records/s"
        ));
        rates.push(rate);
    }
    let (events, sessions) = expected(&large);
    Ok(Figure::against_ceiling(
        "projector_growth",
        &format!("Projector catch-up of {large_n} events beside {small_n}"),
        rates[1],
        rates[0],
        "events/s",
        (Goal::RatioAtLeast, 0.8),
        format!(
            "ipp-projector catching up, as in the catch-up figure, once on {small_n} records and \
             once on {large_n} ({events} distinct events, {sessions} sessions; the small run's \
             records are the first {small_n} of them), each in its own {}-partition topic and \
             fresh database after a CHECKPOINT. The ceiling is the small run's rate: the ratio \
             shows how the rate holds as the tables grow",
            bench.config.partitions
        ),
    ))
}

/// Records of `topic` per second ipp-projector applies from offset 0 into a fresh
/// database, rows checked after: the sessions model only, or with `orders` both models,
/// until the orders model has merged every fact of its three topics too.
async fn projector_catch_up(
    bench: &Bench,
    topic: &str,
    bodies: &[Vec<u8>],
    orders: Option<&OrdersInput>,
) -> anyhow::Result<f64> {
    let n = bodies.len();
    let db = Database::create(&bench.config.database_url).await?;
    let dlq = infra::create_topic(bench.brokers(), "bench_catchup_dlq", 1).await?;
    let group = infra::unique("bench_projector");
    let reserved = ReservedPort::new();
    let port = reserved.port();
    let mut env = vec![
        ("KAFKA_BROKERS", bench.brokers().to_owned()),
        ("IPP_TOPIC", topic.to_owned()),
        ("IPP_DLQ_TOPIC", dlq),
        ("DATABASE_URL", db.url.clone()),
        ("PROJECTOR_GROUP", group.clone()),
        ("PROJECTOR_HTTP", format!("127.0.0.1:{port}")),
        ("KAFKA_PROPERTIES", bench.config.kafka_properties()),
    ];
    match orders {
        Some(orders) => env.extend([
            ("PROJECTOR_ORDERS", "true".to_owned()),
            ("PROJECTOR_ORDERS_GROUP", infra::unique("bench_orders")),
            ("KUSTOM_OTHER_TOPIC", orders.kustom_topic.clone()),
            ("IPP_OBSERVATIONS_TOPIC", orders.observations_topic.clone()),
        ]),
        // The sessions model only, which the COPY ceiling writes.
        None => env.push(("PROJECTOR_ORDERS", "false".to_owned())),
    }
    // Migrations first, so the clock measures the rebuild only.
    let mut migrate = bench.spawn("ipp-projector", &["migrate"], &env)?;
    migrate.wait_exit(Duration::from_secs(60))?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await?;

    let mut projector = bench.spawn("ipp-projector", &[], &env)?;
    // The clock starts when the projector is ready (it has connected to PostgreSQL and
    // subscribed), as the ceiling's starts at its subscribe: both include the group join
    // and every fetch, neither the process start.
    let client = crate::load::client(1);
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        projector.check_running()?;
        if client
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("ipp-projector was not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60 + n as u64 / 50);
    let mut last_report = Instant::now();
    loop {
        projector.check_running()?;
        let applied: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(next_offset), 0)::int8 FROM ipp_projector_offsets
             WHERE consumer_group = $1",
        )
        .bind(&group)
        .fetch_one(&pool)
        .await?;
        if applied as usize >= n
            && match orders {
                Some(orders) => merged_facts(&client, port).await? >= orders.flow.facts,
                None => true,
            }
        {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            progress(&format!(
                "projector catch-up: {applied}/{n} records applied"
            ));
            last_report = Instant::now();
        }
        if Instant::now() > deadline {
            bail!("ipp-projector applied {applied} of {n} records before the deadline");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    bench.note_memory(&projector);
    projector.stop(Duration::from_secs(20));
    let value = n as f64 / elapsed.as_secs_f64();

    let (events, sessions) = expected(bodies);
    let (stored_events, stored_sessions): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM ipp_events), (SELECT count(*) FROM ipp_sessions)",
    )
    .fetch_one(&pool)
    .await?;
    let stored_orders = match orders {
        Some(_) => Some(
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT count(*), count(*) FILTER (WHERE reconciliation_state = 'in_sync')
                 FROM ipp_orders",
            )
            .fetch_one(&pool)
            .await?,
        ),
        None => None,
    };
    pool.close().await;
    db.drop_now(bench.config.keep_databases).await?;
    if stored_events as usize != events || stored_sessions as usize != sessions {
        bail!(
            "read models after catch-up hold {stored_events} events and {stored_sessions} \
             sessions, expected {events} and {sessions}"
        );
    }
    if let (Some(orders), Some((stored, in_sync))) = (orders, stored_orders) {
        if stored as usize != orders.flow.orders || in_sync != stored {
            bail!(
                "ipp_orders after catch-up holds {stored} orders, {in_sync} of them in_sync; \
                 expected {} orders, all in_sync",
                orders.flow.orders
            );
        }
    }
    Ok(value)
}

/// The facts ipp-projector's orders model has merged so far, from its `/metrics`.
async fn merged_facts(client: &reqwest::Client, port: u16) -> anyhow::Result<usize> {
    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("ipp_projector_order_facts_total "))
        .context("no ipp_projector_order_facts_total in ipp-projector's metrics")?
        .trim()
        .parse()
        .context("ipp_projector_order_facts_total")
}

/// Records per second a bare consumer reads `topic` from offset 0, group join included
/// (the projector pays it too).
pub(crate) async fn bare_consumer(bench: &Bench, topic: &str, n: usize) -> anyhow::Result<f64> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bench.brokers())
        .set("client.id", "ipp-bench")
        .set("allow.auto.create.topics", "false")
        .set("group.id", infra::unique("bench_bare"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    for property in &bench.config.consumer_properties {
        if let Some((key, value)) = property.split_once('=') {
            config.set(key.trim(), value.trim());
        }
    }
    let consumer: BaseConsumer = config.create()?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        consumer.subscribe(&[&topic])?;
        let deadline = started + Duration::from_secs(60 + n as u64 / 50);
        let mut read = 0usize;
        while read < n {
            if Instant::now() > deadline {
                bail!("bare consumer read {read} of {n} records before the deadline");
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(_)) => read += 1,
                Some(Err(e)) => bail!("bare consumer: {e}"),
                None => {}
            }
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    })
    .await
    .context("bare consumer thread")?
}

/// The events as the projector's decoder makes them, one distinct event per row.
fn decoded(bodies: &[Vec<u8>]) -> anyhow::Result<Vec<NewEvent>> {
    let mut seen = HashSet::new();
    let received_at = chrono::Utc::now();
    let mut events = Vec::new();
    for (offset, body) in bodies.iter().enumerate() {
        let KustomEvent::Ipp(event) = KustomEvent::parse(body)? else {
            bail!("not an ipp.* event");
        };
        if !seen.insert(event.id().to_owned()) {
            continue;
        }
        let session_id = event.session_id();
        let envelope = event.envelope;
        events.push(NewEvent {
            session_id,
            event: SessionEvent {
                event_id: envelope.id,
                event_type: envelope.event_type,
                merchant_id: envelope.merchant_id,
                order_id: envelope.data.order_id,
                failure_reason: envelope.data.failure_reason,
                occurred_at: envelope.timestamp,
            },
            received_at,
            kafka_partition: 0,
            kafka_offset: offset as i64,
            payload: String::from_utf8(body.clone())?,
        });
    }
    Ok(events)
}

/// The apply engine against one `COPY` (the figure) and, beside it, against the
/// same `COPY` cut into its transactions.
pub async fn apply_engine(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let events = decoded(&bodies(bench))?;
    let rows = events.len();
    let batch = bench.config.apply_batch.max(1);
    let rounds = if bench.config.smoke { 1 } else { 3 };
    let (mut ceilings, mut values) = (Vec::new(), Vec::new());
    let mut breakdowns = Vec::new();
    let mut batched = Vec::new();
    for round in 1..=rounds {
        progress(&format!(
            "projector apply engine, round {round}/{rounds}: COPY of {rows} ipp_events rows (ceiling)"
        ));
        let ceiling = copy_ceiling(bench, &events, 1).await?;
        progress(&format!(
            "projector apply engine: ceiling {ceiling:.0} rows/s; now the same COPY in \
             transactions of {batch}"
        ));
        let in_batches = copy_in_batches(bench, &events, batch).await?;
        progress(&format!(
            "projector apply engine: COPY in transactions of {batch} {in_batches:.0} rows/s \
             ({:.2}× one COPY); now store::store_batch in batches of {batch}",
            in_batches / ceiling
        ));
        let (value, breakdown) = apply_in_batches(bench, &events, batch).await?;
        progress(&format!(
            "projector apply engine: {value:.0} events/s ({:.2}×); {breakdown}",
            value / ceiling
        ));
        ceilings.push(ceiling);
        values.push(value);
        breakdowns.push(breakdown);
        batched.push(in_batches);
    }
    let ratios = ratios_of(&values, &ceilings);
    let middle = median_round(&values, &ceilings);
    let engine = Figure::against_ceiling(
        "projector_apply",
        "Projector apply engine",
        values[middle],
        ceilings[middle],
        "events/s",
        (Goal::RatioAtLeast, 0.85),
        format!(
            "{rows} distinct decoded events applied in-process with ipp_projector::store::store_batch \
             (session locks, read of stored events, COPY of the new events and sessions, fold, \
             upsert of the changed sessions, commit; one transaction per {batch}-event batch, as \
             the projector batches, one batch at a time: the cost per transaction of one of \
             ipp-projector's lanes, which the catch-up figure runs side by side) into a fresh \
             migrated database; the round with the median ratio of {rounds} \
             (ratios {}), that round: {}. Ceiling: one binary COPY of the same {rows} rows \
             into ipp_events and one of their sessions' rows (folded in memory before the \
             clock) into ipp_sessions, the bytes the engine's COPY path sends, in one \
             transaction in another fresh migrated database, in the same round; each round \
             runs the ceiling, then the engine, each in a fresh database after a CHECKPOINT",
            ratios,
            breakdowns[middle]
        ),
    );
    let batched_ratios = ratios_of(&values, &batched);
    let cut = ratios_of(&batched, &ceilings);
    let beside = median_round(&values, &batched);
    let engine_beside_batches = Figure::beside_ceiling(
        "projector_apply_vs_batched_copy",
        "Projector apply engine beside COPY in its transactions",
        values[beside],
        batched[beside],
        "events/s",
        format!(
            "The apply engine figure's runs beside the same binary COPY cut into its \
             transactions: for each {batch} events in log order, one COPY of them into \
             ipp_events, one of the sessions first seen in them (each session's final row, \
             folded before the clock) into ipp_sessions, and a commit, on one connection in a \
             fresh migrated database, measured in each round between the one-COPY ceiling and \
             the engine. The ratio is what the engine's own steps cost (session locks, the read \
             of stored events, the fold, the upsert of sessions seen in an earlier batch, its \
             ANALYZE); the cut COPY over the one-COPY ceiling is what a transaction per batch \
             costs PostgreSQL (ratios per round: the engine over the cut COPY {}, the cut COPY \
             over one COPY {}); the round with the median ratio",
            batched_ratios, cut
        ),
    );
    Ok(vec![engine, engine_beside_batches])
}

/// Each round's value over its own ceiling, as `0.84×, 0.85×, …`.
fn ratios_of(values: &[f64], ceilings: &[f64]) -> String {
    let ratios: Vec<String> = values
        .iter()
        .zip(ceilings)
        .map(|(value, ceiling)| format!("{:.2}×", value / ceiling))
        .collect();
    ratios.join(", ")
}

/// The round whose value over its own ceiling is the median ratio. Each round measures
/// its ceiling just before its value, so the pair shares the machine's state; the median
/// value over the median ceiling would divide numbers from different rounds.
fn median_round(values: &[f64], ceilings: &[f64]) -> usize {
    let ratios: Vec<f64> = values.iter().zip(ceilings).map(|(v, c)| v / c).collect();
    median_index(&ratios)
}

fn median_index(values: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order[order.len() / 2]
}

fn median(values: &[f64]) -> f64 {
    values[median_index(values)]
}

/// Applies `events` with `store_batch` in transactions of `batch` events, as the engine
/// does, into a fresh database; returns events per second and where the time went.
async fn apply_in_batches(
    bench: &Bench,
    events: &[NewEvent],
    batch: usize,
) -> anyhow::Result<(f64, String)> {
    let db = Database::create(&bench.config.database_url).await?;
    // Two connections: the engine's, and one for its background ANALYZE.
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await?;
    store::migrate(&pool).await?;
    infra::checkpoint(&bench.config.database_url).await;
    let analyze = AutoAnalyze::default();
    let (mut reading, mut inserting, mut folding, mut writing, mut committing) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    let (mut sessions_written, mut sessions_created) = (0, 0);
    let started = Instant::now();
    for chunk in events.chunks(batch) {
        let mut tx = pool.begin().await?;
        let stored = store::store_batch(&mut tx, chunk, store::WriteMode::Copy).await?;
        // As the engine does after each commit (ipp_projector::statistics).
        sessions_written += stored.sessions.len();
        sessions_created += stored.sessions_created;
        reading += stored.timings.read;
        inserting += stored.timings.insert;
        folding += stored.timings.fold;
        writing += stored.timings.write;
        let step = Instant::now();
        tx.commit().await?;
        committing += step.elapsed();
        analyze.note_applied(stored.inserted.len() as u64, &pool);
    }
    let elapsed = started.elapsed();
    let value = events.len() as f64 / elapsed.as_secs_f64();
    let share = |d: Duration| 100.0 * d.as_secs_f64() / elapsed.as_secs_f64();
    let breakdown = format!(
        "time in session locks and read {:.0} %, sending the events' COPY {:.0} %, fold with \
         the end of that COPY and the new sessions' COPY {:.0} %, the last write (changed \
         sessions) {:.0} %, commit {:.0} %; {sessions_written} session rows written, \
         {sessions_created} of them new",
        share(reading),
        share(inserting),
        share(folding),
        share(writing),
        share(committing)
    );
    let sessions: BTreeSet<_> = events.iter().map(|e| e.session_id).collect();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_sessions")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    db.drop_now(bench.config.keep_databases).await?;
    if stored as usize != sessions.len() {
        bail!(
            "apply engine stored {stored} sessions, expected {}",
            sessions.len()
        );
    }
    Ok((value, breakdown))
}

/// Events per second of the `COPY` ceiling cut into the engine's transactions: for each
/// `batch` events in log order, one `COPY` of them into `ipp_events`, one of the sessions
/// first seen in them (each session's final row, folded in memory before the clock) into
/// `ipp_sessions`, and a commit. What the engine does beyond this is its own: the session
/// locks, the read of stored events, the fold and the upsert of sessions seen before.
async fn copy_in_batches(bench: &Bench, events: &[NewEvent], batch: usize) -> anyhow::Result<f64> {
    let db = Database::create(&bench.config.database_url).await?;
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await?;
    store::migrate(&pool).await?;
    infra::checkpoint(&bench.config.database_url).await;
    let mut by_session: BTreeMap<Uuid, Vec<&SessionEvent>> = BTreeMap::new();
    for e in events {
        by_session.entry(e.session_id).or_default().push(&e.event);
    }
    let mut rows: BTreeMap<Uuid, SessionRow> = by_session
        .into_iter()
        .filter_map(|(id, events)| session::fold(id, events).map(|row| (id, row)))
        .collect();
    let batches: Vec<(Vec<&NewEvent>, Vec<SessionRow>)> = events
        .chunks(batch)
        .map(|chunk| {
            let mut new: Vec<SessionRow> = chunk
                .iter()
                .filter_map(|e| rows.remove(&e.session_id))
                .collect();
            // Sorted by id, as the engine sorts a batch's sessions.
            new.sort_by_key(|row| row.session_id);
            (chunk.iter().collect(), new)
        })
        .collect();
    let mut connection = pool.acquire().await?;
    let started = Instant::now();
    for (events, sessions) in &batches {
        let mut tx = sqlx::Connection::begin(&mut *connection).await?;
        store::copy_events(&mut tx, events).await?;
        store::copy_sessions(&mut tx, sessions).await?;
        tx.commit().await?;
    }
    let value = events.len() as f64 / started.elapsed().as_secs_f64();
    drop(connection);
    pool.close().await;
    db.drop_now(bench.config.keep_databases).await?;
    Ok(value)
}

/// Events per second of a binary `COPY` of `events` into `ipp_events` and of their
/// sessions' rows (folded in memory before the clock) into `ipp_sessions`, in a fresh
/// migrated database (same indexes), dropped afterwards. With one connection it is one
/// transaction; with more, the rows are split by session among that many transactions
/// on their own connections, run at once (as the projector's lanes split partitions,
/// and a session's events share a partition).
async fn copy_ceiling(
    bench: &Bench,
    events: &[NewEvent],
    connections: usize,
) -> anyhow::Result<f64> {
    let connections = connections.max(1);
    let db = Database::create(&bench.config.database_url).await?;
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(connections as u32)
        .connect(&db.url)
        .await?;
    store::migrate(&pool).await?;
    infra::checkpoint(&bench.config.database_url).await;
    let part_of = |session: &Uuid| (session.as_u128() % connections as u128) as usize;
    let mut part_events: Vec<Vec<&NewEvent>> = vec![Vec::new(); connections];
    let mut part_sessions: Vec<BTreeMap<Uuid, Vec<&SessionEvent>>> =
        vec![BTreeMap::new(); connections];
    for e in events {
        let part = part_of(&e.session_id);
        part_events[part].push(e);
        part_sessions[part]
            .entry(e.session_id)
            .or_default()
            .push(&e.event);
    }
    let parts: Vec<(Vec<&NewEvent>, Vec<SessionRow>)> = part_events
        .into_iter()
        .zip(part_sessions)
        .map(|(events, by_session)| {
            let sessions = by_session
                .into_iter()
                .filter_map(|(id, events)| session::fold(id, events))
                .collect();
            (events, sessions)
        })
        .collect();
    // Connected before the clock, as the engine's connections are.
    let mut transactions = Vec::with_capacity(connections);
    for _ in 0..connections {
        transactions.push(pool.begin().await?);
    }
    let started = Instant::now();
    futures::future::try_join_all(transactions.into_iter().zip(&parts).map(
        |(mut tx, (events, sessions))| async move {
            store::copy_events(&mut tx, events).await?;
            store::copy_sessions(&mut tx, sessions).await?;
            tx.commit().await?;
            anyhow::Ok(())
        },
    ))
    .await?;
    let ceiling = events.len() as f64 / started.elapsed().as_secs_f64();
    pool.close().await;
    db.drop_now(bench.config.keep_databases).await?;
    Ok(ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_round_pairs_a_value_with_its_own_ceiling() {
        // Ratios 0.8, 0.5, 0.9: the median is round 0's, whatever the medians of each.
        let values = [80.0, 60.0, 45.0];
        let ceilings = [100.0, 120.0, 50.0];
        assert_eq!(median_round(&values, &ceilings), 0);
        assert_eq!(median(&values) / median(&ceilings), 0.6);
    }
}
