//! Ingest: signed webhooks over HTTP at fixed concurrency through ipp-ingest, next to a
//! raw rdkafka producer sending the same records with the same number in flight.

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
            "ingest: ceiling {:.0} records/s, ack p99 {:.1} ms; now through ipp-ingest",
            ceiling.throughput, ceiling.latency.p99_ms
        ));
        let measured = through_ingest(bench, &work, concurrency).await?;
        progress(&format!(
            "ingest: {:.0} requests/s, p99 {:.1} ms ({} failed)",
            measured.throughput, measured.latency.p99_ms, measured.failed
        ));
        let detail = format!(
            "{n} signed webhooks (realistic mix, pre-signed), {concurrency} in flight over pooled \
             HTTP/1 connections; ingest answered 200 to {} ({} failed), p50 {:.1} ms, p99 {:.1} ms. \
             Ceiling: one rdkafka producer with ipp-ingest's settings (acks=all, idempotent, \
             linger.ms=2, compression {}) sending the same records (key, headers) with \
             {concurrency} awaiting their acks: {:.0}/s, ack p50 {:.1} ms, p99 {:.1} ms",
            measured.latency.count,
            measured.failed,
            measured.latency.p50_ms,
            measured.latency.p99_ms,
            ipp_ingest::COMPRESSION,
            ceiling.throughput,
            ceiling.latency.p50_ms,
            ceiling.latency.p99_ms,
        );
        figures.push(Figure::against_ceiling(
            &format!("ingest_c{concurrency}_throughput"),
            &format!("Ingest throughput, {concurrency} in flight"),
            measured.throughput,
            ceiling.throughput,
            "req/s",
            (Goal::RatioAtLeast, 0.8),
            detail.clone(),
        ));
        figures.push(Figure::against_ceiling(
            &format!("ingest_c{concurrency}_p99"),
            &format!("Ingest p99 latency, {concurrency} in flight"),
            measured.latency.p99_ms,
            ceiling.latency.p99_ms,
            "ms",
            (Goal::RatioAtMost, 2.0),
            detail,
        ));
    }
    Ok(figures)
}

struct Run {
    throughput: f64,
    latency: Latency,
    failed: usize,
}

async fn producer_ceiling(
    bench: &Bench,
    work: &[Delivery],
    concurrency: usize,
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
    Ok(Run {
        throughput: latencies.len() as f64 / elapsed.as_secs_f64(),
        latency: Latency::of(latencies),
        failed,
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
    let port = infra::free_port()?;
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
    let outcome = load::at_concurrency(&client, &url, requests, concurrency).await;
    ingest.check_running()?;
    bench.note_memory(&ingest);
    ingest.stop(Duration::from_secs(10));
    Ok(Run {
        throughput: outcome.ok.len() as f64 / outcome.elapsed.as_secs_f64(),
        latency: Latency::of(outcome.ok),
        failed: outcome.failed,
    })
}
