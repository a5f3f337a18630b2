//! Sends a realistic stream of signed webhooks through the public endpoint of a running
//! pipeline (see `scripts/run --demo`), waits until the read model and the captures have
//! caught up, then issues a few refunds and cancels through ipp-actions' commands API,
//! waits for their outcome, and prints what a merchant wants to see.
#![allow(clippy::print_stdout, reason = "a command-line report")]

use ipp_service::DatabaseUrl;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ipp_loadgen::{
    commands::{self, CommandsClient, Planned},
    send_all, WebhookSigner, Workload, WorkloadSpec,
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig,
};
use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool, Row};
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "ipp-demo",
    about = "Send a realistic stream of signed Kustom webhooks and report the outcome"
)]
struct Args {
    #[arg(long, env = "DEMO_INGEST_URL", default_value = "http://127.0.0.1:8080")]
    ingest_url: String,
    /// The pipeline's database. Or DATABASE_URL_FILE: a file holding it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = ipp_service::args::DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    database_url: DatabaseUrl,
    #[arg(long, env = "DEMO_OM_SIM_URL", default_value = "http://127.0.0.1:9200")]
    om_sim_url: String,
    /// ipp-actions, where the commands API is served.
    #[arg(
        long,
        env = "DEMO_ACTIONS_URL",
        default_value = "http://127.0.0.1:9102"
    )]
    actions_url: String,
    /// The commands API's tokens (NAME:TOKEN,...): the first one is used. Or
    /// ACTIONS_API_TOKENS_FILE: a file holding them.
    #[arg(long, env = "ACTIONS_API_TOKENS", default_value = commands::DEMO_TOKENS, hide_env_values = true)]
    api_tokens: String,
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// The first secret is used to sign. Or KUSTOM_WEBHOOK_SECRETS_FILE: a file holding
    /// them.
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
    /// acknowledged, every session's row is what its events imply, every finalized
    /// order was captured exactly once, for its amount (but the few seeded to refuse
    /// captures), and every command ended as planned (what CI runs).
    #[arg(long)]
    check: bool,
}

fn rand_seed() -> u64 {
    chrono::Utc::now().timestamp_millis() as u64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Linked for its global allocator too: every binary of the workspace runs on mimalloc.
    let args: Args = ipp_service::secret_files::parse();
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
    // A few orders refuse their capture (403 CAPTURE_NOT_ALLOWED), so that they stay
    // uncaptured and a cancel can succeed: seeded before any webhook is sent.
    let orders: Vec<Uuid> = workload.finalized_orders().map(|(_, o)| o).collect();
    let refused: Vec<Uuid> = if orders.len() >= commands::ORDERS_NEEDED {
        orders[..2].to_vec()
    } else {
        println!(
            "  (too few finalized orders for the money commands: {} < {})",
            orders.len(),
            commands::ORDERS_NEEDED
        );
        Vec::new()
    };
    for order_id in &refused {
        seed_refusing_captures(&client, &args.om_sim_url, *order_id).await?;
    }
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
        .connect(args.database_url.expose())
        .await
        .with_context(|| format!("connecting to {:?}", args.database_url))?;
    let event_ids: Vec<String> = ipp_events.iter().map(|s| s.to_string()).collect();
    let finalized = workload.finalized_orders().count() as i64;
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        let applied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ipp_events WHERE event_id = ANY($1)")
                .bind(&event_ids)
                .fetch_one(&pool)
                .await?;
        // The automatic captures only: the reads Kustom's capture.created prompts
        // (`observe` rows) settle too, and counting them ended this wait before every
        // capture had (the plan then saw captured amounts of 0).
        let settled: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT a.order_id) FROM ipp_actions a \
             JOIN ipp_events e ON e.order_id = a.order_id \
             WHERE e.event_id = ANY($1) AND a.kind = 'capture' AND a.action = 'capture' \
               AND a.status <> 'pending'",
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
    let issued = if refused.is_empty() {
        Vec::new()
    } else {
        let captured = &orders[2..commands::ORDERS_NEEDED];
        issue_commands(&client, &args, seed, [refused[0], refused[1]], captured).await?
    };
    let orders: Vec<Uuid> = workload
        .finalized_orders()
        .map(|(_, order)| order)
        .chain(issued.iter().map(|c| c.planned.order_id))
        .collect();
    let reconciled = wait_for_reconciliation(&pool, &orders, deadline_from_now(&args)).await?;
    print_report(&pool, &args, &issued).await?;
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
        problems
            .extend(check_captures(&pool, &client, &args.om_sim_url, &workload, &refused).await?);
        problems.extend(check_commands(&pool, &client, &args, seed, &refused, &issued).await?);
        problems.extend(reconciled.into_iter().take(20));
        if !problems.is_empty() {
            println!("check FAILED: {} problem(s)", problems.len());
            for problem in problems.iter().take(20) {
                println!("  {problem}");
            }
            std::process::exit(1);
        }
        println!(
            "check passed: {} sessions exactly as sent, {} orders captured once each, {} refused as seeded, {} commands as planned, every order in sync with Kustom",
            workload.sessions.len(),
            workload.finalized_orders().count() - refused.len(),
            refused.len(),
            issued.len()
        );
    }
    Ok(())
}

/// Every session of the workload has the row its events imply.
async fn check_sessions(pool: &PgPool, workload: &Workload) -> anyhow::Result<Vec<String>> {
    let ids: Vec<Uuid> = workload.sessions.keys().copied().collect();
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
        let id: Uuid = row.get("session_id");
        seen.insert(id);
        let want = &workload.sessions[&id];
        let got = (
            row.get::<Option<String>, _>("merchant_id"),
            row.get::<String, _>("status"),
            row.get::<Option<Uuid>, _>("order_id"),
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

/// Every finalized order of the workload but those seeded to refuse captures: one
/// capture in the simulator, for the amount the ledger recorded, and its ledger row
/// `succeeded`.
async fn check_captures(
    pool: &PgPool,
    client: &reqwest::Client,
    om_sim_url: &str,
    workload: &Workload,
    refused: &[Uuid],
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for (_, order_id) in workload.finalized_orders() {
        if refused.contains(&order_id) {
            continue;
        }
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
        let order = sim_order(client, om_sim_url, order_id).await?;
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

/// The simulator's view of an order: its amounts, status and applied effects.
async fn sim_order(
    client: &reqwest::Client,
    om_sim_url: &str,
    order_id: Uuid,
) -> anyhow::Result<Value> {
    let url = format!(
        "{}/_sim/orders/{order_id}",
        om_sim_url.trim_end_matches('/')
    );
    client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("asking the simulator for order {order_id}"))?
        .json()
        .await
        .with_context(|| format!("reading GET {url}"))
}

async fn seed_refusing_captures(
    client: &reqwest::Client,
    om_sim_url: &str,
    order_id: Uuid,
) -> anyhow::Result<()> {
    let url = format!(
        "{}/_sim/orders/{order_id}",
        om_sim_url.trim_end_matches('/')
    );
    client
        .put(&url)
        .json(&json!({ "refuse_captures": true }))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("seeding order {order_id} to refuse captures (PUT {url})"))?;
    Ok(())
}

/// A command the demo issued: the plan, its id and its last state.
struct Issued {
    planned: Planned,
    command_id: String,
    state: Value,
}

/// Issues the plan's commands one after the other (an order's commands are recorded in
/// the order they are acknowledged), then waits for each outcome.
async fn issue_commands(
    client: &reqwest::Client,
    args: &Args,
    seed: u64,
    uncaptured: [Uuid; 2],
    captured: &[Uuid],
) -> anyhow::Result<Vec<Issued>> {
    let api = CommandsClient::new(
        client.clone(),
        &args.actions_url,
        commands::first_token(&args.api_tokens),
    );
    let mut with_amounts = Vec::new();
    for &order_id in captured {
        let amount = sim_order(client, &args.om_sim_url, order_id).await?["captured_amount"]
            .as_i64()
            .unwrap_or(0);
        // A plan over an order not captured yet would refund 0.01 and expect refusals
        // that cannot come: say so instead.
        anyhow::ensure!(
            amount > 0,
            "order {order_id} is not captured yet: the commands' plan needs its amount"
        );
        with_amounts.push((order_id, amount));
    }
    let captured: [(Uuid, i64); 4] = with_amounts
        .try_into()
        .map_err(|_| anyhow::anyhow!("the plan takes exactly four captured orders"))?;
    let plan = commands::plan(uncaptured, captured);
    println!(
        "
issuing {} money commands through {}/v1 (Idempotency-Key demo-{seed}-N)",
        plan.len(),
        args.actions_url.trim_end_matches('/')
    );
    let mut issued = Vec::new();
    for (n, planned) in plan.into_iter().enumerate() {
        let key = format!("demo-{seed}-{n}");
        let (status, body) = api
            .post(
                planned.order_id,
                planned.path,
                planned.body().as_ref(),
                &key,
            )
            .await?;
        if status != 202 {
            anyhow::bail!(
                "POST /v1/orders/{}/{} answered {status}: {body} (is ACTIONS_API_TOKENS the same for ipp-actions and the demo?)",
                planned.order_id, planned.path
            );
        }
        let command_id = body["command_id"].as_str().unwrap_or_default().to_owned();
        issued.push(Issued {
            planned,
            command_id,
            state: body,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    for command in &mut issued {
        command.state = api.wait(&command.command_id, deadline).await?;
    }
    Ok(issued)
}

/// The first command again with its Idempotency-Key: the same command (202, nothing new
/// appended); with that key and another amount: 422 idempotency_key_reused.
async fn check_idempotency(
    api: &CommandsClient,
    seed: u64,
    first: &Issued,
) -> anyhow::Result<Vec<String>> {
    let key = format!("demo-{seed}-0");
    let planned = &first.planned;
    let mut problems = Vec::new();
    let (status, body) = api
        .post(
            planned.order_id,
            planned.path,
            planned.body().as_ref(),
            &key,
        )
        .await?;
    if status != 202 || body["command_id"].as_str() != Some(first.command_id.as_str()) {
        problems.push(format!(
            "the same request with Idempotency-Key {key} answered {status} {body}, not 202 for command {}",
            first.command_id
        ));
    }
    let other = json!({ "amount": planned.amount.unwrap_or(1) + 1 });
    let (status, body) = api
        .post(planned.order_id, planned.path, Some(&other), &key)
        .await?;
    if status != 422 || body["error"] != "idempotency_key_reused" {
        problems.push(format!(
            "Idempotency-Key {key} reused with another amount answered {status} {body}, not 422 idempotency_key_reused"
        ));
    }
    Ok(problems)
}

/// Every command ended as planned, and the simulator agrees: the refunded amounts, the
/// seeded orders cancelled without a capture, their automatic capture refused.
async fn check_commands(
    pool: &PgPool,
    client: &reqwest::Client,
    args: &Args,
    seed: u64,
    refused: &[Uuid],
    issued: &[Issued],
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut refunded = std::collections::BTreeMap::<Uuid, i64>::new();
    for command in issued {
        let (planned, state) = (&command.planned, &command.state);
        let status = state["status"].as_str().unwrap_or("?");
        let error = state["error_code"].as_str();
        if status != planned.expect_status || error != planned.expect_error {
            problems.push(format!(
                "command {} ({} of order {}): {status} {error:?}, expected {} {:?} ({})",
                command.command_id,
                planned.what,
                planned.order_id,
                planned.expect_status,
                planned.expect_error,
                state["last_error"]
            ));
        }
        if planned.path == "refunds" && status == "succeeded" {
            if state["refunded_amount"].as_i64() != planned.amount || state["refund_id"].is_null() {
                problems.push(format!(
                    "refund {}: refunded {} (refund id {}), expected {:?}",
                    command.command_id,
                    state["refunded_amount"],
                    state["refund_id"],
                    planned.amount
                ));
            }
            *refunded.entry(planned.order_id).or_default() += planned.amount.unwrap_or(0);
        }
    }
    for (order_id, amount) in refunded {
        let order = sim_order(client, &args.om_sim_url, order_id).await?;
        if order["refunded_amount"].as_i64() != Some(amount) {
            problems.push(format!(
                "order {order_id}: the simulator refunded {}, the commands {amount}",
                order["refunded_amount"]
            ));
        }
    }
    for &order_id in refused {
        let order = sim_order(client, &args.om_sim_url, order_id).await?;
        if order["status"] != "CANCELLED" || order["effects"]["captures"] != 0 {
            problems.push(format!(
                "order {order_id}: {} with {} capture(s) in the simulator, expected CANCELLED without any",
                order["status"], order["effects"]["captures"]
            ));
        }
        let capture: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, error_code FROM ipp_actions WHERE order_id = $1 AND action = 'capture'",
        )
        .bind(order_id)
        .fetch_optional(pool)
        .await?;
        if capture != Some(("failed".into(), Some("CAPTURE_NOT_ALLOWED".into()))) {
            problems.push(format!(
                "order {order_id}: the automatic capture is {capture:?}, expected failed with CAPTURE_NOT_ALLOWED"
            ));
        }
    }
    if let Some(first) = issued.first() {
        let api = CommandsClient::new(
            client.clone(),
            &args.actions_url,
            commands::first_token(&args.api_tokens),
        );
        problems.extend(check_idempotency(&api, seed, first).await?);
    }
    Ok(problems)
}

async fn print_report(pool: &PgPool, args: &Args, issued: &[Issued]) -> anyhow::Result<()> {
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
    println!("\nautomatic captures (ipp_actions)");
    for row in sqlx::query("SELECT status, count(*) AS n, coalesce(sum(captured_amount), 0)::bigint AS amount FROM ipp_actions WHERE command_id IS NULL GROUP BY status ORDER BY n DESC")
        .fetch_all(pool)
        .await?
    {
        let status: String = row.get("status");
        let n: i64 = row.get("n");
        let amount: i64 = row.get("amount");
        println!("  {status:<10} {n:>6}   captured {}.{:02}", amount / 100, amount % 100);
    }
    let failures = sqlx::query("SELECT order_id::text, reason FROM ipp_actions WHERE status = 'failed' AND command_id IS NULL ORDER BY updated_at DESC LIMIT 5")
        .fetch_all(pool)
        .await?;
    for row in failures {
        let order: String = row.get(0);
        let reason: Option<String> = row.get(1);
        println!("  failed {order}: {}", reason.unwrap_or_default());
    }
    if let Ok(stats) = reqwest::get(format!("{}/_sim/stats", args.om_sim_url)).await {
        if let Ok(stats) = stats.json::<Value>().await {
            println!(
                "  simulator: {} requests, {} captures applied",
                stats["requests"], stats["captures_applied"]
            );
        }
    }
    println!("\nmoney commands (ipp_commands)");
    for row in sqlx::query("SELECT kind, status, count(*) AS n, coalesce(sum(refunded_amount), 0)::bigint AS refunded FROM ipp_commands GROUP BY 1, 2 ORDER BY 1, 2")
        .fetch_all(pool)
        .await?
    {
        let kind: String = row.get("kind");
        let status: String = row.get("status");
        let n: i64 = row.get("n");
        let refunded: i64 = row.get("refunded");
        let money = if kind == "refund" { format!("   refunded {}.{:02}", refunded / 100, refunded % 100) } else { String::new() };
        println!("  {kind:<31} {status:<10} {n:>4}{money}");
    }
    for command in issued {
        let state = &command.state;
        let outcome = match (state["refund_id"].as_str(), state["error_code"].as_str()) {
            (Some(refund_id), _) => format!("refund {refund_id}"),
            (None, Some(code)) => code.to_owned(),
            (None, None) => String::new(),
        };
        let amount = state["amount"]
            .as_i64()
            .map_or("-".to_owned(), |a| a.to_string());
        println!(
            "  {} {:<8} order {} amount {amount:>6} {:<9} {outcome}   ({})",
            command.command_id,
            state["type"].as_str().unwrap_or("?"),
            command.planned.order_id,
            state["status"].as_str().unwrap_or("?"),
            command.planned.what
        );
    }
    print_orders(pool).await?;
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
         psql {db} -c \"SELECT event_type, count(*) FROM ipp_events GROUP BY 1\"\n  \
         ipp-projector reconcile   (orders out of sync with Kustom, and why)\n  \
         curl -sS -H 'Authorization: Bearer {token}' {actions}/v1/commands/COMMAND_ID\n",
        token = commands::printable_token(&args.api_tokens),
        actions = args.actions_url.trim_end_matches('/'),
        // Without its password (`***`): give it to psql as PGPASSWORD.
        db = format!("{:?}", args.database_url)
    );
    Ok(())
}

fn deadline_from_now(args: &Args) -> Instant {
    Instant::now() + Duration::from_secs(args.wait_secs)
}

/// Waits until every one of `orders` is `in_sync` in `ipp_orders` (Kustom's webhooks for
/// our captures and refunds arrive, ipp-actions reads the orders, the projector merges),
/// or `deadline`; returns the orders that are not, as problems.
async fn wait_for_reconciliation(
    pool: &PgPool,
    orders: &[Uuid],
    deadline: Instant,
) -> anyhow::Result<Vec<String>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('ipp_orders') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(vec![
            "no orders read model (ipp_orders) in the database".into()
        ]);
    }
    loop {
        let rows = sqlx::query(
            "SELECT o.id AS order_id, v.reconciliation_state, v.reconciliation_reason \
             FROM unnest($1::uuid[]) AS o(id) \
             LEFT JOIN ipp_orders v ON v.order_id = o.id \
             WHERE v.reconciliation_state IS DISTINCT FROM 'in_sync' ORDER BY 1",
        )
        .bind(orders)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if Instant::now() > deadline {
            return Ok(rows
                .iter()
                .map(|row| {
                    let order: Uuid = row.get("order_id");
                    let state: Option<String> = row.get("reconciliation_state");
                    let reason: Option<String> = row.get("reconciliation_reason");
                    format!(
                        "order {order} is {} ({})",
                        state.as_deref().unwrap_or("not in ipp_orders"),
                        reason.unwrap_or_default()
                    )
                })
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The orders by reconciliation state (`ipp_orders`), and why those out of sync are.
async fn print_orders(pool: &PgPool) -> anyhow::Result<()> {
    println!("\norders by reconciliation state (ipp_orders)");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('ipp_orders') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        println!("  no orders read model in this database (PROJECTOR_ORDERS=false?)");
        return Ok(());
    }
    for row in sqlx::query(
        "SELECT reconciliation_state AS state, count(*) AS n, \
                coalesce(sum(captured_amount), 0)::bigint AS captured, \
                coalesce(sum(refunded_amount), 0)::bigint AS refunded \
         FROM ipp_orders GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?
    {
        let state: String = row.get("state");
        let n: i64 = row.get("n");
        let (captured, refunded): (i64, i64) = (row.get("captured"), row.get("refunded"));
        println!(
            "  {state:<22} {n:>6}   Kustom says captured {}.{:02}, refunded {}.{:02}",
            captured / 100,
            captured % 100,
            refunded / 100,
            refunded % 100
        );
    }
    for row in sqlx::query(
        "SELECT order_id, reconciliation_state, reconciliation_reason FROM ipp_orders \
         WHERE reconciliation_state <> 'in_sync' ORDER BY reconciliation_state, order_id LIMIT 10",
    )
    .fetch_all(pool)
    .await?
    {
        let order: Uuid = row.get("order_id");
        let state: String = row.get("reconciliation_state");
        let reason: Option<String> = row.get("reconciliation_reason");
        println!("  {state} {order}: {}", reason.unwrap_or_default());
    }
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
