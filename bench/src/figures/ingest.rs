//! Ingest: signed webhooks over HTTP at fixed concurrency through ipp-ingest, next to a
//! raw rdkafka producer sending the same records with the same number in flight.

use ipp_service::ReservedPort;
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use ipp_loadgen::{Delivery, WebhookSigner, Workload, WorkloadSpec};
use rdkafka::{message::OwnedHeaders, producer::FutureRecord, util::Timeout};

use crate::{
    infra::{self, Latency},
    load, progress,
    report::{Figure, Goal},
    system::{self, CpuShare, CpuTicks},
    Bench,
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A workload of at least `n` deliveries (the realistic mix), cut to `n`.
pub fn deliveries(n: usize, seed: u64) -> Vec<Delivery> {
    let spec = WorkloadSpec {
        sessions: n / 3 + 1,
        merchants: 20,
        seed,
        ..WorkloadSpec::default()
    };
    let mut deliveries = Workload::generate(&spec).deliveries;
    deliveries.truncate(n);
    deliveries
}

pub async fn run(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let n = bench.sizes.ingest_requests;
    let work = deliveries(n, 11);
    let mut figures = Vec::new();
    for &concurrency in &bench.sizes.concurrencies {
        progress(&format!(
            "ingest: {n} requests at concurrency {concurrency}: ceiling (raw producer)"
        ));
        let ceiling = producer_ceiling(bench, &work, concurrency).await?;
        progress(&format!(
            "ingest: ceiling {:.0} records/s, ack p99 {:.1} ms; now HTTP alone (bare axum)",
            ceiling.throughput, ceiling.latency.p99_ms
        ));
        let http = bare_http(&work, concurrency).await?;
        progress(&format!(
            "ingest: HTTP alone {:.0} requests/s, p99 {:.1} ms; now through ipp-ingest",
            http.throughput, http.latency.p99_ms
        ));
        let measured = through_ingest(bench, &work, concurrency).await?;
        progress(&format!(
            "ingest: {:.0} requests/s, p99 {:.1} ms, {:.0} µs CPU per webhook ({} failed); \
             now the raw producer at that rate",
            measured.throughput,
            measured.latency.p99_ms,
            measured.cpu_us_per_request(),
            measured.failed
        ));
        // A producer's CPU per record grows as its rate falls (smaller batches, a wake-up
        // per few records): what it costs at the rate ingest reached.
        let paced = raw_producer(bench, &work, concurrency, Some(measured.throughput)).await?;
        progress(&format!(
            "ingest: the raw producer at {:.0} records/s: {:.1} µs CPU per record",
            paced.throughput,
            paced.cpu_us_per_request()
        ));
        let detail = format!(
            "{n} signed webhooks (realistic mix, pre-signed), {concurrency} in flight over pooled \
             HTTP/1 connections; ingest answered 200 to {} ({} failed), p50 {:.1} ms, p99 {:.1} ms, \
             {:.0} µs of ingest's CPU (utime + stime) per webhook. Ceiling: one rdkafka producer \
             with ipp-ingest's settings (acks=all, idempotent, linger.ms=2, compression {}) \
             sending the same records (key, headers) with {concurrency} awaiting their acks: \
             {:.0}/s, ack p50 {:.1} ms, p99 {:.1} ms, {:.0} µs of CPU per record (the benchmark \
             process, which then runs only that producer). The machine's CPUs during ingest's \
             run: {}; during the raw producer's: {}",
            measured.latency.count,
            measured.failed,
            measured.latency.p50_ms,
            measured.latency.p99_ms,
            measured.cpu_us_per_request(),
            ipp_ingest::COMPRESSION,
            ceiling.throughput,
            ceiling.latency.p50_ms,
            ceiling.latency.p99_ms,
            ceiling.cpu_us_per_request(),
            measured.machine,
            ceiling.machine,
        );
        figures.push(Figure::against_ceiling(
            &format!("ingest_c{concurrency}_throughput"),
            &format!("Ingest throughput, {concurrency} in flight"),
            measured.throughput,
            ceiling.throughput,
            "req/s",
            (Goal::RatioAtLeast, 0.85),
            detail.clone(),
        ));
        figures.push(Figure::against_ceiling(
            &format!("ingest_c{concurrency}_p99"),
            &format!("Ingest p99 latency, {concurrency} in flight"),
            measured.latency.p99_ms,
            ceiling.latency.p99_ms,
            "ms",
            (Goal::RatioAtMost, 1.5),
            detail.clone(),
        ));
        figures.push(Figure::against_ceiling(
            &format!("ingest_c{concurrency}_cpu"),
            &format!("Ingest CPU per webhook, {concurrency} in flight"),
            measured.cpu_us_per_request(),
            ceiling.cpu_us_per_request(),
            "µs",
            (Goal::RatioAtMost, 2.0),
            detail,
        ));
        let parts = http.cpu_us_per_request() + ceiling.cpu_us_per_request();
        figures.push(Figure::beside_ceiling(
            &format!("ingest_c{concurrency}_cpu_parts"),
            &format!("Ingest CPU per webhook beside HTTP alone plus the raw producer, {concurrency} in flight"),
            measured.cpu_us_per_request(),
            parts,
            "µs",
            format!(
                "ipp-ingest's CPU per webhook ({:.1} µs) beside what its two parts cost alone in \
                 the same run: the bare axum handler's server threads per request ({:.1} µs, \
                 the same requests and load generator) plus the raw producer per record ({:.1} \
                 µs). What ingest adds beyond them (signature check, parsing, routing, metrics, \
                 the wake-up per delivery report): {:.1} µs",
                measured.cpu_us_per_request(),
                http.cpu_us_per_request(),
                ceiling.cpu_us_per_request(),
                measured.cpu_us_per_request() - parts
            ),
        ));
        let parts_at_rate = http.cpu_us_per_request() + paced.cpu_us_per_request();
        figures.push(Figure::beside_ceiling(
            &format!("ingest_c{concurrency}_cpu_parts_at_rate"),
            &format!(
                "Ingest CPU per webhook beside HTTP alone plus the raw producer at ingest's rate, {concurrency} in flight"
            ),
            measured.cpu_us_per_request(),
            parts_at_rate,
            "µs",
            format!(
                "As the row above, with the raw producer paced to the rate ingest reached \
                 ({:.0} records/s, at most {concurrency} in flight; it sent {:.0}/s, ack p99 \
                 {:.1} ms): {:.1} µs of CPU per record there, against {:.1} µs at its own \
                 full speed. HTTP alone ({:.1} µs) plus that: {:.1} µs; what ingest adds \
                 beyond them: {:.1} µs",
                measured.throughput,
                paced.throughput,
                paced.latency.p99_ms,
                paced.cpu_us_per_request(),
                ceiling.cpu_us_per_request(),
                http.cpu_us_per_request(),
                parts_at_rate,
                measured.cpu_us_per_request() - parts_at_rate
            ),
        ));
        figures.push(Figure::beside_ceiling(
            &format!("ingest_c{concurrency}_vs_http"),
            &format!("Ingest beside HTTP alone, {concurrency} in flight"),
            measured.throughput,
            http.throughput,
            "req/s",
            format!(
                "The same pre-signed requests from the same load generator, {concurrency} in \
                 flight, to a bare axum handler that reads the body and answers 200 (a runtime \
                 of its own with as many workers as CPUs, like ingest's): {:.0} req/s, p50 \
                 {:.1} ms, p99 {:.1} ms. What the web layer and the load generator alone cost, \
                 with no signature check and no Kafka. The machine's CPUs meanwhile: {}",
                http.throughput, http.latency.p50_ms, http.latency.p99_ms, http.machine
            ),
        ));
    }
    Ok(figures)
}

pub(crate) struct Run {
    throughput: f64,
    latency: Latency,
    failed: usize,
    /// CPU time of the process doing the work (ingest, or the benchmark's producer).
    cpu: Duration,
    /// What the whole machine's CPUs did meanwhile (a figure held by a full machine is
    /// held by everything on it: the load generator and the broker too).
    machine: CpuShare,
}

impl Run {
    /// A run of the load generator, with the CPU time of whoever served it.
    fn of_load(outcome: load::Outcome, cpu: Duration, machine: CpuShare) -> Self {
        Self {
            throughput: outcome.ok.len() as f64 / outcome.elapsed.as_secs_f64(),
            latency: Latency::of(outcome.ok),
            failed: outcome.failed,
            cpu,
            machine,
        }
    }

    fn cpu_us_per_request(&self) -> f64 {
        match self.latency.count {
            0 => 0.0,
            n => self.cpu.as_secs_f64() * 1e6 / n as f64,
        }
    }
}

/// The same requests against a bare axum handler: the body read, 200, nothing else.
async fn bare_http(work: &[Delivery], concurrency: usize) -> anyhow::Result<Run> {
    let server = BareHttp::start()?;
    let client = load::client(concurrency);
    let signer = WebhookSigner::new(SECRET)?;
    let warm = load::presign(&signer, &work[..work.len().min(8)], "http-warm");
    for request in &warm {
        load::send(&client, &server.url, request).await;
    }
    let requests = Arc::new(load::presign(&signer, work, &format!("http{concurrency}")));
    let cpu_before = infra::threads_cpu_time(BareHttp::THREADS)?;
    let (outcome, machine) = system::during(load::at_concurrency(
        &client,
        &server.url,
        requests,
        concurrency,
    ))
    .await;
    let cpu = infra::threads_cpu_time(BareHttp::THREADS)? - cpu_before;
    Ok(Run::of_load(outcome, cpu, machine))
}

/// A bare axum server on a runtime (and threads) of its own, stopped when dropped.
struct BareHttp {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BareHttp {
    /// The name of the server's threads, whose CPU time is the web layer's.
    const THREADS: &'static str = "bare-http";

    fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}/webhooks/kustom", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(Self::THREADS)
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("bare HTTP listener");
                let app = axum::Router::new().route(
                    "/webhooks/kustom",
                    axum::routing::post(|body: axum::body::Bytes| async move {
                        std::hint::black_box(body.len());
                        axum::http::StatusCode::OK
                    }),
                );
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            url,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for BareHttp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The raw producer with `concurrency` records awaiting their acks, as fast as they come.
pub(crate) async fn producer_ceiling(
    bench: &Bench,
    work: &[Delivery],
    concurrency: usize,
) -> anyhow::Result<Run> {
    raw_producer(bench, work, concurrency, None).await
}

/// The raw producer, at most `concurrency` in flight, each record sent no earlier than
/// its turn at `pace` records per second when there is one.
async fn raw_producer(
    bench: &Bench,
    work: &[Delivery],
    concurrency: usize,
    pace: Option<f64>,
) -> anyhow::Result<Run> {
    let ipp = infra::create_topic(
        bench.brokers(),
        "bench_ceiling_ipp",
        bench.config.partitions,
    )
    .await?;
    let other = infra::create_topic(bench.brokers(), "bench_ceiling_other", 1).await?;
    // Everything a record needs is built before the clock starts.
    let records: Vec<(String, String, OwnedHeaders, &[u8])> = work
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (key, headers) = infra::record_for(&d.body, &format!("msg_ceiling_{i}"))?;
            let topic = if d.is_ipp() {
                ipp.clone()
            } else {
                other.clone()
            };
            Ok((topic, key, headers.to_kafka(), d.body.as_slice()))
        })
        .collect::<anyhow::Result<_>>()?;
    let producer = Arc::new(infra::ingest_like_producer(
        bench.brokers(),
        &bench.config.producer_properties,
    )?);
    // Warm up: metadata and the idempotent producer id, as ingest has them when ready.
    for (topic, key, headers, body) in records.iter().take(8) {
        let record = FutureRecord::to(topic)
            .key(key.as_str())
            .payload(*body)
            .headers(headers.clone());
        producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("warm-up produce: {e}"))?;
    }
    let records = Arc::new(
        records
            .into_iter()
            .map(|(t, k, h, b)| (t, k, h, b.to_vec()))
            .collect::<Vec<_>>(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = infra::own_cpu_time();
    let machine_before = CpuTicks::read();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (producer, records, next) = (producer.clone(), records.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((topic, key, headers, body)) = records.get(i) else {
                    return (latencies, failed);
                };
                if let Some(rate) = pace {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent = Instant::now();
                let record = FutureRecord::to(topic)
                    .key(key.as_str())
                    .payload(body.as_slice())
                    .headers(headers.clone());
                match producer
                    .send(record, Timeout::After(Duration::from_secs(30)))
                    .await
                {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(_) => failed += 1,
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for worker in workers {
        let (l, f) = worker.await.context("producer worker panicked")?;
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    let cpu = infra::own_cpu_time() - cpu_before;
    let machine = machine_before.until(CpuTicks::read());
    Ok(Run {
        machine,
        throughput: latencies.len() as f64 / elapsed.as_secs_f64(),
        latency: Latency::of(latencies),
        failed,
        cpu,
    })
}

async fn through_ingest(
    bench: &Bench,
    work: &[Delivery],
    concurrency: usize,
) -> anyhow::Result<Run> {
    let ipp =
        infra::create_topic(bench.brokers(), "bench_ingest_ipp", bench.config.partitions).await?;
    let other = infra::create_topic(bench.brokers(), "bench_ingest_other", 1).await?;
    let reserved = ReservedPort::new();
    let port = reserved.port();
    let mut ingest = bench.spawn(
        "ipp-ingest",
        &[],
        &[
            ("KAFKA_BROKERS", bench.brokers().to_owned()),
            ("INGEST_LISTEN", format!("127.0.0.1:{port}")),
            ("IPP_TOPIC", ipp),
            ("KUSTOM_OTHER_TOPIC", other),
            ("KUSTOM_WEBHOOK_SECRETS", SECRET.into()),
            (
                "KAFKA_PROPERTIES",
                bench.config.producer_properties.join(","),
            ),
        ],
    )?;
    let base = format!("http://127.0.0.1:{port}");
    let client = load::client(concurrency);
    infra::wait_ready(
        &client,
        &format!("{base}/readyz"),
        &mut ingest,
        Duration::from_secs(60),
    )
    .await?;
    let signer = WebhookSigner::new(SECRET)?;
    let url = format!("{base}/webhooks/kustom");
    // Warm up: the producer's metadata and id, and a few pooled connections.
    let warm = load::presign(
        &signer,
        &work[..work.len().min(8)],
        &format!("warm{concurrency}"),
    );
    for request in &warm {
        load::send(&client, &url, request).await;
    }
    let requests = Arc::new(load::presign(&signer, work, &format!("c{concurrency}")));
    let cpu_before = infra::cpu_time(ingest.pid())?;
    let (outcome, machine) =
        system::during(load::at_concurrency(&client, &url, requests, concurrency)).await;
    let cpu = infra::cpu_time(ingest.pid())? - cpu_before;
    ingest.check_running()?;
    bench.note_memory(&ingest);
    ingest.stop(Duration::from_secs(10));
    Ok(Run::of_load(outcome, cpu, machine))
}
