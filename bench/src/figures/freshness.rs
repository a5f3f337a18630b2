//! End-to-end freshness: webhooks posted at a fixed rate through ipp-ingest with
//! ipp-projector running; for every distinct ipp.* event, the time from its HTTP 200
//! to the first poll that sees it in PostgreSQL.
//!
//! The projector writes an event's `ipp_events` row and refolds its `ipp_sessions` row
//! in the same transaction, so "the event is in `ipp_events`" is "the session row shows
//! it". A poller asks `SELECT event_id FROM ipp_events WHERE event_id = ANY($answered)`
//! every 5 ms for the events answered 200 and not yet seen; an event first seen by the
//! query started at `t` was committed before `t` and after the previous query started,
//! so each sample is an upper bound, at most one poll period (plus a query) too high.
//! An event committed before its 200 reached the client counts as 0.

use ipp_service::ReservedPort;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::bail;
use chrono::{DateTime, Utc};
use ipp_loadgen::{Delivery, WebhookSigner};
use sqlx::postgres::PgPoolOptions;

use crate::{
    infra::{self, Database, Latency},
    load, progress,
    report::Figure,
    system::CpuTimeline,
    Bench,
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const POLL: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Tracker {
    /// Answered 200, not seen yet: when the 200 arrived (monotonic and wall clock).
    waiting: HashMap<String, (Instant, DateTime<Utc>)>,
    /// Every event id answered once (a redelivery of a seen event is not a sample).
    answered: HashSet<String>,
    samples: Vec<Sample>,
}

struct Sample {
    answered: Instant,
    latency: Duration,
    /// From the 200 to the start of the projector transaction that applied the event
    /// (`ipp_sessions.updated_at` is that transaction's `now()`): fetch and batch wait.
    /// The rest of `latency` is the transaction itself plus the poll.
    to_batch_start_ms: Option<f64>,
}

pub async fn run(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let rate = bench.sizes.freshness_rate;
    let n = (u64::from(rate) * bench.sizes.freshness_secs) as usize;
    let work = super::ingest::deliveries(n, 37);
    let ipp =
        infra::create_topic(bench.brokers(), "bench_fresh_ipp", bench.config.partitions).await?;
    let other = infra::create_topic(bench.brokers(), "bench_fresh_other", 1).await?;
    let dlq = infra::create_topic(bench.brokers(), "bench_fresh_dlq", 1).await?;
    let db = Database::create(&bench.config.database_url).await?;
    // Held until the figure ends, so no other socket takes the ports first.
    let (ingest_reserved, projector_reserved) = (ReservedPort::new(), ReservedPort::new());
    let (ingest_port, projector_port) = (ingest_reserved.port(), projector_reserved.port());
    let client = load::client(256);

    let mut ingest = bench.spawn(
        "ipp-ingest",
        &[],
        &[
            ("KAFKA_BROKERS", bench.brokers().to_owned()),
            ("INGEST_LISTEN", format!("127.0.0.1:{ingest_port}")),
            ("IPP_TOPIC", ipp.clone()),
            ("KUSTOM_OTHER_TOPIC", other),
            ("KUSTOM_WEBHOOK_SECRETS", SECRET.into()),
        ],
    )?;
    let mut projector = bench.spawn(
        "ipp-projector",
        &[],
        &[
            ("KAFKA_BROKERS", bench.brokers().to_owned()),
            ("IPP_TOPIC", ipp),
            ("IPP_DLQ_TOPIC", dlq),
            ("DATABASE_URL", db.url.clone()),
            ("PROJECTOR_GROUP", infra::unique("bench_fresh")),
            ("PROJECTOR_HTTP", format!("127.0.0.1:{projector_port}")),
            ("KAFKA_PROPERTIES", bench.config.kafka_properties()),
        ],
    )?;
    let within = Duration::from_secs(60);
    infra::wait_ready(
        &client,
        &format!("http://127.0.0.1:{ingest_port}/readyz"),
        &mut ingest,
        within,
    )
    .await?;
    infra::wait_ready(
        &client,
        &format!("http://127.0.0.1:{projector_port}/readyz"),
        &mut projector,
        within,
    )
    .await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await?;
    let signer = WebhookSigner::new(SECRET)?;
    let url = format!("http://127.0.0.1:{ingest_port}/webhooks/kustom");
    warm_up(&client, &url, &signer, &pool, &mut projector).await?;
    warm_at_rate(bench, &client, &url, &signer, &pool, &work).await?;
    // The services' histograms count the warm-up too: the figure takes the difference.
    let before = Histograms::scrape(&client, ingest_port, projector_port).await;
    let requests = load::presign(&signer, &work, "fresh");
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let stop_polling = Arc::new(tokio::sync::Notify::new());
    let poller = tokio::spawn(poll(pool.clone(), tracker.clone(), stop_polling.clone()));
    let (stop_sampling, sampling_stopped) = tokio::sync::oneshot::channel::<()>();
    let cpu_sampler = tokio::spawn(sample_cpu(sampling_stopped));

    progress(&format!(
        "freshness: {n} webhooks at {rate}/s through ipp-ingest and ipp-projector"
    ));
    let started = tokio::time::Instant::now();
    let started_wall = Utc::now();
    let tracked: Vec<Option<String>> = work
        .iter()
        .map(|d| d.is_ipp().then(|| d.event_id.clone()))
        .collect();
    let on_answer = {
        let tracker = tracker.clone();
        move |i: usize, ok: bool| {
            let answered = (Instant::now(), Utc::now());
            if let (true, Some(event_id)) = (ok, &tracked[i]) {
                let mut t = tracker.lock().expect("tracker lock");
                if t.answered.insert(event_id.clone()) {
                    t.waiting.insert(event_id.clone(), answered);
                }
            }
        }
    };
    let failed = post_open_loop(&client, &url, requests, rate, started, on_answer).await?;
    let sent_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting = tracker.lock().expect("tracker lock").waiting.len();
        if waiting == 0 {
            break;
        }
        projector.check_running()?;
        if Instant::now() > deadline {
            bail!("{waiting} events answered 200 never showed up in ipp_events");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_polling.notify_one();
    poller.await??;
    let _ = stop_sampling.send(());
    let timeline = cpu_sampler.await?;
    let after = Histograms::scrape(&client, ingest_port, projector_port).await;
    let (batch_sum, batches) = (
        after.batch.0 - before.batch.0,
        after.batch.1 - before.batch.1,
    );
    let (produce_sum, produced) = (
        after.produce.0 - before.produce.0,
        after.produce.1 - before.produce.1,
    );
    bench.note_memory(&ingest);
    bench.note_memory(&projector);
    ingest.stop(Duration::from_secs(10));
    projector.stop(Duration::from_secs(20));
    pool.close().await;
    db.drop_now(bench.config.keep_databases).await?;

    let mut samples = std::mem::take(&mut tracker.lock().expect("tracker lock").samples);
    samples.sort_by_key(|s| s.answered);
    // Every sample, to see whether slow ones cluster in time (a stall) or creep up; the
    // wall clock lines them up with system samples (/proc/pressure, vmstat).
    let origin = started.into_std();
    let origin_unix_ms = started_wall.timestamp_millis() as f64;
    let csv: String = samples
        .iter()
        .map(|s| {
            let answered_ms = s.answered.saturating_duration_since(origin).as_secs_f64() * 1000.0;
            format!(
                "{answered_ms:.1},{:.1},{:.2},{}\n",
                origin_unix_ms + answered_ms,
                s.latency.as_secs_f64() * 1000.0,
                s.to_batch_start_ms
                    .map_or(String::new(), |v| format!("{v:.2}"))
            )
        })
        .collect();
    std::fs::write(
        bench.logs.join("freshness-samples.csv"),
        format!("answered_ms,answered_unix_ms,latency_ms,to_batch_start_ms\n{csv}"),
    )?;
    let ms = |v: f64| Duration::from_secs_f64(v.max(0.0) / 1000.0);
    let before_batch = Latency::of(
        samples
            .iter()
            .filter_map(|s| s.to_batch_start_ms.map(ms))
            .collect(),
    );
    let after_batch_start = Latency::of(
        samples
            .iter()
            .filter_map(|s| {
                let before = s.to_batch_start_ms?;
                Some(ms(s.latency.as_secs_f64() * 1000.0 - before.max(0.0)))
            })
            .collect(),
    );
    let first_half = Latency::of(
        samples[..samples.len() / 2]
            .iter()
            .map(|s| s.latency)
            .collect(),
    );
    let second_half = Latency::of(
        samples[samples.len() / 2..]
            .iter()
            .map(|s| s.latency)
            .collect(),
    );
    // Samples answered in a window where the hypervisor took much of the machine, apart
    // from the rest: whether the slow samples are ours or the machine's.
    let (stolen, calm): (Vec<&Sample>, Vec<&Sample>) = samples.iter().partition(|s| {
        timeline
            .share_at(s.answered)
            .is_some_and(|cpu| cpu.steal_pct >= STEAL_WINDOW_PCT)
    });
    let calm = Latency::of(calm.iter().map(|s| s.latency).collect());
    let stolen = Latency::of(stolen.iter().map(|s| s.latency).collect());
    let latency = Latency::of(samples.into_iter().map(|s| s.latency).collect());
    progress(&format!(
        "freshness: 200 → batch start p50 {:.1} p99 {:.1} ms; batch start → seen p50 {:.1} \
         p99 {:.1} ms; p99 first half {:.1} ms, second half {:.1} ms",
        before_batch.p50_ms,
        before_batch.p99_ms,
        after_batch_start.p50_ms,
        after_batch_start.p99_ms,
        first_half.p99_ms,
        second_half.p99_ms
    ));
    let by_steal = format!(
        "in the {} samples answered in {} ms windows where the hypervisor stole under {} % of \
         the CPUs p50 {:.1} / p99 {:.1} ms, in the {} samples of windows with more p50 {:.1} / \
         p99 {:.1} ms",
        calm.count,
        CPU_WINDOW.as_millis(),
        STEAL_WINDOW_PCT,
        calm.p50_ms,
        calm.p99_ms,
        stolen.count,
        stolen.p50_ms,
        stolen.p99_ms
    );
    progress(&format!("freshness: {by_steal}"));
    progress(&format!(
        "freshness: p50 {:.1} ms, p99 {:.1} ms over {} events; ingest ack mean {:.1} ms; \
         {batches} projector batches, mean {:.1} ms",
        latency.p50_ms,
        latency.p99_ms,
        latency.count,
        produce_sum * 1000.0 / produced.max(1.0),
        batch_sum * 1000.0 / batches.max(1.0),
    ));
    let p50 = Figure::bounded(
        "freshness_p50",
        &format!("End-to-end freshness p50 at {rate} events/s"),
        latency.p50_ms,
        "ms",
        Some(8.0),
        "The same samples as the p99 below".into(),
    );
    Ok(vec![p50, Figure::bounded(
        "freshness_p99",
        &format!("End-to-end freshness p99 at {rate} events/s"),
        latency.p99_ms,
        "ms",
        Some(20.0),
        format!(
            "{n} signed webhooks (realistic mix) posted open-loop at {rate}/s for {:.1} s \
             ({failed} not answered 200) through ipp-ingest into ipp-projector \
             (default settings; clock started once as many other webhooks, posted the same way \
             before it, were applied); per distinct \
             ipp.* event, HTTP 200 → first poll of ipp_events that sees it (same transaction as \
             its ipp_sessions row), polled every {} ms: {} samples, p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms. Each sample is an upper bound with ≈{} ms resolution. Breakdown: ingest's \
             Kafka ack took {:.1} ms on average; the projector committed {} batches of {:.1} \
             ms on average. Split at the start of the applying transaction: 200 → transaction \
             start (fetch, batch wait, earlier batch) p50 {:.1} / p99 {:.1} ms; transaction \
             start → seen (transaction and poll) p50 {:.1} / p99 {:.1} ms. p99 in the first \
             half of the run {:.1} ms, in the second {:.1} ms. By the machine (/proc/stat): \
             {by_steal}",
            sent_in.as_secs_f64(),
            POLL.as_millis(),
            latency.count,
            latency.p50_ms,
            latency.p99_ms,
            latency.max_ms,
            POLL.as_millis(),
            produce_sum * 1000.0 / produced.max(1.0),
            batches,
            batch_sum * 1000.0 / batches.max(1.0),
            before_batch.p50_ms,
            before_batch.p99_ms,
            after_batch_start.p50_ms,
            after_batch_start.p99_ms,
            first_half.p99_ms,
            second_half.p99_ms,
        ),
    )])
}

/// Windows of the CPU timeline; a sample counts as "in a window of steal" when the
/// hypervisor took at least `STEAL_WINDOW_PCT` of the CPUs' time in its window.
const CPU_WINDOW: Duration = Duration::from_millis(500);
const STEAL_WINDOW_PCT: f64 = 5.0;

/// Reads /proc/stat every `CPU_WINDOW` until told to stop.
async fn sample_cpu(mut stop: tokio::sync::oneshot::Receiver<()>) -> CpuTimeline {
    let mut timeline = CpuTimeline::default();
    loop {
        timeline.sample();
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(CPU_WINDOW) => {}
        }
    }
    timeline.sample();
    timeline
}

/// Posts a few events of other sessions and waits until the projector shows them: the
/// consumer group has joined and every partition is assigned before the clock starts.
/// `(sum, count)` of the projector's batch durations and of ingest's produce durations.
struct Histograms {
    batch: (f64, f64),
    produce: (f64, f64),
}

impl Histograms {
    async fn scrape(client: &reqwest::Client, ingest_port: u16, projector_port: u16) -> Self {
        let metrics = |port: u16| format!("http://127.0.0.1:{port}/metrics");
        Self {
            batch: infra::histogram(
                client,
                &metrics(projector_port),
                "ipp_projector_batch_duration_seconds",
            )
            .await,
            produce: infra::histogram(
                client,
                &metrics(ingest_port),
                "ipp_ingest_produce_duration_seconds",
            )
            .await,
        }
    }
}

/// Posts `requests` open loop, the i-th at `started + i / rate`, at most 256 in flight;
/// `on_answer(i, answered_200)` runs as each answer arrives. Returns how many were not
/// answered 200.
async fn post_open_loop(
    client: &reqwest::Client,
    url: &str,
    requests: Vec<load::Signed>,
    rate: u32,
    started: tokio::time::Instant,
    on_answer: impl Fn(usize, bool) + Send + Sync + 'static,
) -> anyhow::Result<usize> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let on_answer = Arc::new(on_answer);
    let mut sends = Vec::with_capacity(requests.len());
    for (i, request) in requests.into_iter().enumerate() {
        tokio::time::sleep_until(started + interval * i as u32).await;
        let permit = limit.clone().acquire_owned().await?;
        let (client, url, on_answer) = (client.clone(), url.to_owned(), on_answer.clone());
        sends.push(tokio::spawn(async move {
            let ok = load::send(&client, &url, &request).await;
            on_answer(i, ok);
            drop(permit);
            ok
        }));
    }
    let mut failed = 0;
    for send in sends {
        if !send.await? {
            failed += 1;
        }
    }
    Ok(failed)
}

/// The same traffic as the figure, for as long, before the clock starts: a broker that
/// just started spends its first minute compiling its hot paths. `jstat -compiler` on a
/// broker started 20 s before a freshness run counted 17 s of JIT compilation in that
/// run's 20 s (one of the machine's two CPUs), 2 s in a second run and 0.5 s in a third;
/// the first run's p99 was 411 ms, the next ones' 50-73 ms. A production broker has long
/// compiled them. The events are other sessions', and all applied before the clock.
async fn warm_at_rate(
    bench: &Bench,
    client: &reqwest::Client,
    url: &str,
    signer: &WebhookSigner,
    pool: &sqlx::PgPool,
    measured: &[Delivery],
) -> anyhow::Result<()> {
    let rate = bench.sizes.freshness_rate;
    let n = (u64::from(rate) * bench.sizes.freshness_secs) as usize;
    let work = super::ingest::deliveries(n, 1037);
    let measured_ids: HashSet<&str> = measured.iter().map(|d| d.event_id.as_str()).collect();
    if work
        .iter()
        .any(|d| measured_ids.contains(d.event_id.as_str()))
    {
        bail!("the warm-up traffic shares event ids with the measured traffic");
    }
    let ids: Vec<String> = work
        .iter()
        .filter(|d| d.is_ipp())
        .map(|d| d.event_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    progress(&format!(
        "freshness: warming up with {n} other webhooks at {rate}/s (not measured)"
    ));
    let requests = load::presign(signer, &work, "fresh_pre");
    let failed = post_open_loop(
        client,
        url,
        requests,
        rate,
        tokio::time::Instant::now(),
        |_, _| {},
    )
    .await?;
    if failed > 0 {
        bail!("{failed} warm-up webhooks were not answered 200");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ipp_events WHERE event_id = ANY($1)")
                .bind(&ids)
                .fetch_one(pool)
                .await?;
        if seen as usize >= ids.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("ipp-projector did not apply the warm-up traffic within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn warm_up(
    client: &reqwest::Client,
    url: &str,
    signer: &WebhookSigner,
    pool: &sqlx::PgPool,
    projector: &mut infra::Service,
) -> anyhow::Result<()> {
    let warm: Vec<_> = super::ingest::deliveries(200, 99)
        .into_iter()
        .filter(|d| d.is_ipp())
        .take(40)
        .collect();
    for request in load::presign(signer, &warm, "fresh_warm") {
        load::send(client, url, &request).await;
    }
    let ids: Vec<String> = warm.iter().map(|d| d.event_id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        projector.check_running()?;
        let seen: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ipp_events WHERE event_id = ANY($1)")
                .bind(&ids)
                .fetch_one(pool)
                .await?;
        let distinct: HashSet<&String> = ids.iter().collect();
        if seen as usize >= distinct.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("ipp-projector did not show the warm-up events within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn poll(
    pool: sqlx::PgPool,
    tracker: Arc<Mutex<Tracker>>,
    stop: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.notified() => return Ok(()),
            _ = tick.tick() => {}
        }
        let ids: Vec<String> = tracker
            .lock()
            .expect("tracker lock")
            .waiting
            .keys()
            .cloned()
            .collect();
        if ids.is_empty() {
            continue;
        }
        let asked = Instant::now();
        // Not a prepared statement: PostgreSQL would soon switch to a generic plan made
        // while the tables were nearly empty (a sequential scan), and keep it as they grow.
        let seen: Vec<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT e.event_id, s.updated_at FROM ipp_events e
             LEFT JOIN ipp_sessions s USING (session_id)
             WHERE e.event_id = ANY($1)",
        )
        .persistent(false)
        .bind(&ids)
        .fetch_all(&pool)
        .await?;
        let mut t = tracker.lock().expect("tracker lock");
        for (id, batch_started) in seen {
            if let Some((answered, answered_at)) = t.waiting.remove(&id) {
                t.samples.push(Sample {
                    answered,
                    latency: asked.saturating_duration_since(answered),
                    to_batch_start_ms: batch_started
                        .map(|b| (b - answered_at).num_microseconds().unwrap_or(0) as f64 / 1000.0),
                });
            }
        }
    }
}
