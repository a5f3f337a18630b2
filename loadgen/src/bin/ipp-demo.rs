//! Sends a realistic stream of signed webhooks through the public endpoint of a running
//! pipeline (see `scripts/run --demo`), waits until the read model and the captures have
//! caught up, and prints what a merchant wants to see.
#![allow(clippy::print_stdout, reason = "a command-line report")]

// Linked for its global allocator: every binary of the workspace runs on mimalloc.
use ipp_service as _;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ipp_loadgen::{send_all, WebhookSigner, Workload, WorkloadSpec};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig,
};
use sqlx::{postgres::PgPoolOptions, PgPool, Row};

#[derive(Debug, Parser)]
#[command(
    name = "ipp-demo",
    about = "Send a realistic stream of signed Kustom webhooks and report the outcome"
)]
struct Args {
    #[arg(long, env = "DEMO_INGEST_URL", default_value = "http://127.0.0.1:8080")]
    ingest_url: String,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/ipp"
    )]
    database_url: String,
    #[arg(long, env = "DEMO_OM_SIM_URL", default_value = "http://127.0.0.1:9200")]
    om_sim_url: String,
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// The first secret is used to sign.
    #[arg(long, env = "KUSTOM_WEBHOOK_SECRETS", hide_env_values = true)]
    secrets: String,
    #[arg(long, default_value_t = 300)]
    sessions: usize,
    /// Different seeds give different sessions; the same seed resends the same events.
    /// Without one, a new seed per run (printed in the report).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to wait for the pipeline to catch up.
    #[arg(long, default_value_t = 180)]
    wait_secs: u64,
    /// After the report, check the outcome and exit 1 unless every webhook was
    /// acknowledged, every session's row is what its events imply, and every finalized
    /// order was captured exactly once, for its amount (what CI runs).
    #[arg(long)]
    check: bool,
}

fn rand_seed() -> u64 {
    chrono::Utc::now().timestamp_millis() as u64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand_seed);
    let secret = args.secrets.split(',').next().unwrap_or_default();
    let signer = WebhookSigner::new(secret).context("KUSTOM_WEBHOOK_SECRETS")?;
    let workload = Workload::generate(&WorkloadSpec {
        sessions: args.sessions,
        seed,
        ..WorkloadSpec::default()
    });
    let ipp_events: std::collections::BTreeSet<&str> = workload
        .deliveries
        .iter()
        .filter(|d| d.is_ipp())
        .map(|d| d.event_id.as_str())
        .collect();
    let duplicates = workload
        .deliveries
        .iter()
        .filter(|d| d.is_duplicate)
        .count();
    let others = workload.deliveries.iter().filter(|d| !d.is_ipp()).count();
    println!(
        "\nsending {} webhooks for {} sessions ({} redeliveries, {} other Kustom events, shuffled, seed {seed}) to {}",
        workload.deliveries.len(), args.sessions, duplicates, others, args.ingest_url
    );
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/kustom", args.ingest_url.trim_end_matches('/'));
    let report = send_all(
        &client,
        &url,
        &signer,
        &workload.deliveries,
        args.concurrency,
        Duration::from_secs(60),
    )
    .await;
    println!(
        "  {} answered 200 in {:.1}s ({} retried attempts, {} gave up)",
        report.acknowledged.len(),
        report.elapsed.as_secs_f64(),
        report.retried_attempts,
        report.gave_up.len()
    );

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await
        .with_context(|| format!("connecting to {}", args.database_url))?;
    let event_ids: Vec<String> = ipp_events.iter().map(|s| s.to_string()).collect();
    let finalized = workload.finalized_orders().count() as i64;
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        let applied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ipp_events WHERE event_id = ANY($1)")
                .bind(&event_ids)
                .fetch_one(&pool)
                .await?;
        let settled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ipp_actions a JOIN ipp_events e ON e.order_id = a.order_id \
             WHERE e.event_id = ANY($1) AND a.status <> 'pending'",
        )
        .bind(&event_ids)
        .fetch_one(&pool)
        .await?;
        if applied == event_ids.len() as i64 && settled >= finalized {
            break;
        }
        if Instant::now() > deadline {
            println!("  still catching up after {}s: {applied}/{} events applied, {settled}/{finalized} captures settled", args.wait_secs, event_ids.len());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    print_report(&pool, &args).await?;
    if args.check {
        let mut problems: Vec<String> = report
            .gave_up
            .iter()
            .map(|&i| {
                format!(
                    "webhook {} was never acknowledged",
                    workload.deliveries[i].event_id
                )
            })
            .collect();
        problems.extend(check_sessions(&pool, &workload).await?);
        problems.extend(check_captures(&pool, &client, &args.om_sim_url, &workload).await?);
        if !problems.is_empty() {
            println!("check FAILED: {} problem(s)", problems.len());
            for problem in problems.iter().take(20) {
                println!("  {problem}");
            }
            std::process::exit(1);
        }
        println!(
            "check passed: {} sessions exactly as sent, {} orders captured once each",
            workload.sessions.len(),
            workload.finalized_orders().count()
        );
    }
    Ok(())
}

/// Every session of the workload has the row its events imply.
async fn check_sessions(pool: &PgPool, workload: &Workload) -> anyhow::Result<Vec<String>> {
    let ids: Vec<uuid::Uuid> = workload.sessions.keys().copied().collect();
    let rows = sqlx::query(
        "SELECT session_id, merchant_id, status, order_id, failed_attempts, event_count
         FROM ipp_sessions WHERE session_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for row in rows {
        let id: uuid::Uuid = row.get("session_id");
        seen.insert(id);
        let want = &workload.sessions[&id];
        let got = (
            row.get::<Option<String>, _>("merchant_id"),
            row.get::<String, _>("status"),
            row.get::<Option<uuid::Uuid>, _>("order_id"),
            row.get::<i32, _>("failed_attempts"),
            row.get::<i32, _>("event_count"),
        );
        let expected = (
            Some(want.merchant_id.clone()),
            want.status.to_owned(),
            want.order_id,
            want.failed_attempts,
            want.event_count,
        );
        if got != expected {
            problems.push(format!(
                "session {id}: (merchant, status, order, failed attempts, events) is {got:?}, expected {expected:?}"
            ));
        }
    }
    for id in ids.iter().filter(|id| !seen.contains(id)) {
        problems.push(format!("session {id} has no row in ipp_sessions"));
    }
    Ok(problems)
}

/// Every finalized order of the workload: one capture in the simulator, for the amount
/// the ledger recorded, and its ledger row `succeeded`.
async fn check_captures(
    pool: &PgPool,
    client: &reqwest::Client,
    om_sim_url: &str,
    workload: &Workload,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for (_, order_id) in workload.finalized_orders() {
        let ledger = sqlx::query(
            "SELECT status, captured_amount FROM ipp_actions WHERE order_id = $1 AND action = 'capture'",
        )
        .bind(order_id)
        .fetch_optional(pool)
        .await?;
        let Some(ledger) = ledger else {
            problems.push(format!("order {order_id} has no capture in ipp_actions"));
            continue;
        };
        let status: String = ledger.get("status");
        let amount: Option<i64> = ledger.get("captured_amount");
        let order: serde_json::Value = client
            .get(format!(
                "{}/_sim/orders/{order_id}",
                om_sim_url.trim_end_matches('/')
            ))
            .send()
            .await
            .with_context(|| format!("asking the simulator for order {order_id}"))?
            .json()
            .await?;
        let captures = order["effects"]["captures"].as_i64();
        let captured = order["captured_amount"].as_i64();
        if status != "succeeded" || captures != Some(1) || amount.is_none() || captured != amount {
            problems.push(format!(
                "order {order_id}: ledger {status} for {amount:?}, the simulator applied {captures:?} capture(s) for {captured:?}"
            ));
        }
    }
    Ok(problems)
}

async fn print_report(pool: &PgPool, args: &Args) -> anyhow::Result<()> {
    println!("\nsessions by status (ipp_sessions)");
    for row in sqlx::query("SELECT status, count(*) AS n, sum(failed_attempts) AS failed FROM ipp_sessions GROUP BY status ORDER BY n DESC")
        .fetch_all(pool)
        .await?
    {
        let status: String = row.get("status");
        let n: i64 = row.get("n");
        let failed: Option<i64> = row.get("failed");
        println!("  {status:<10} {n:>6}   (failed payment attempts: {})", failed.unwrap_or(0));
    }
    println!("\ncaptures (ipp_actions)");
    for row in sqlx::query("SELECT status, count(*) AS n, coalesce(sum(captured_amount), 0)::bigint AS amount FROM ipp_actions GROUP BY status ORDER BY n DESC")
        .fetch_all(pool)
        .await?
    {
        let status: String = row.get("status");
        let n: i64 = row.get("n");
        let amount: i64 = row.get("amount");
        println!("  {status:<10} {n:>6}   captured {}.{:02}", amount / 100, amount % 100);
    }
    let failures = sqlx::query("SELECT order_id::text, reason FROM ipp_actions WHERE status = 'failed' ORDER BY updated_at DESC LIMIT 5")
        .fetch_all(pool)
        .await?;
    for row in failures {
        let order: String = row.get(0);
        let reason: Option<String> = row.get(1);
        println!("  failed {order}: {}", reason.unwrap_or_default());
    }
    if let Ok(stats) = reqwest::get(format!("{}/_sim/stats", args.om_sim_url)).await {
        if let Ok(stats) = stats.json::<serde_json::Value>().await {
            println!(
                "  simulator: {} requests, {} captures applied",
                stats["requests"], stats["captures_applied"]
            );
        }
    }
    println!("\ndead letters");
    for topic in [
        ipp_schemas::topics::IPP_EVENTS_DLQ,
        ipp_schemas::topics::IPP_ACTIONS_DLQ,
    ] {
        match topic_size(&args.kafka_brokers, topic) {
            Ok(n) => println!("  {topic:<16} {n}"),
            Err(e) => println!("  {topic:<16} unknown ({e})"),
        }
    }
    println!(
        "\nlook further:\n  psql {db} -c \"SELECT status, count(*) FROM ipp_sessions GROUP BY 1\"\n  \
         psql {db} -c \"SELECT * FROM ipp_sessions WHERE cardinality(anomalies) > 0\"\n  \
         psql {db} -c \"SELECT order_id, status, captured_amount, attempts, last_error FROM ipp_actions ORDER BY updated_at DESC LIMIT 20\"\n  \
         psql {db} -c \"SELECT event_type, count(*) FROM ipp_events GROUP BY 1\"\n",
        db = args.database_url
    );
    Ok(())
}

/// Records in a topic: the sum of its partitions' high minus low watermarks.
fn topic_size(brokers: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "ipp-demo")
        .set("allow.auto.create.topics", "false")
        .create()?;
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut total = 0;
    for partition in metadata
        .topics()
        .first()
        .map(|t| t.partitions())
        .unwrap_or_default()
    {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
        total += high - low;
    }
    Ok(total)
}
