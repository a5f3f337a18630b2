//! The chaos soak (issue 13): the whole pipeline as real processes under open-loop
//! signed webhooks, random SIGKILLs, broker restarts and Order Management faults, then
//! the invariants checked: log complete and byte-exact, read models equal a clean pass,
//! captures exactly once, ledger settled, dead letters explained.
//!
//! `run` is the whole soak: [`stack`] starts the processes, [`load`] sends, [`poison`]
//! injects, [`chaos`] breaks things on its schedule, then [`drain`] waits and makes the
//! clean pass, and [`checks`] checks; [`summary`] holds the figures.

mod args;
mod chaos;
mod checks;
mod drain;
mod load;
mod poison;
mod process;
mod stack;
mod summary;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use ipp_loadgen::{WebhookSigner, Workload, WorkloadSpec};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

pub use args::Args;
pub use summary::Summary;

use crate::{
    checks::{Log, Violations},
    stack::Stack,
};

pub async fn run(args: Args) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let seed = args.seed.unwrap_or_else(rand::random);
    let load_secs = args.load_secs();
    let out = std::path::absolute(&args.out)?;
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("empty {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .context("the binary has no directory")?,
    };

    // About 3.6 deliveries per session (redeliveries and other events included).
    let sessions = ((args.rate * load_secs) / 3.6).ceil().max(10.0) as usize;
    let workload = Arc::new(Workload::generate(&WorkloadSpec {
        sessions,
        merchants: 5,
        seed,
        ..WorkloadSpec::default()
    }));
    let schedule = chaos::plan(load_secs, seed);
    eprintln!(
        "ipp-soak: seed {seed}, {:.1} min of load: {} deliveries of {} sessions, {} planned faults; output in {}",
        load_secs / 60.0,
        workload.deliveries.len(),
        workload.sessions.len(),
        schedule.len(),
        out.display()
    );

    let stack = Arc::new(
        Stack::start(&out, &bin_dir, &args.database_server, seed)
            .await
            .context("starting the stack")?,
    );
    let result = soak(&args, seed, &stack, workload, schedule, started, &out).await;
    stack.stop().await;
    let summary = result?;
    if summary.violation_count == 0 && !args.keep_database {
        if let Err(e) = stack.database.drop_it().await {
            eprintln!(
                "ipp-soak: could not drop database {}: {e:#}",
                stack.database.name
            );
        }
    } else {
        eprintln!(
            "ipp-soak: kept database {} for a post-mortem",
            stack.database.name
        );
    }
    Ok(summary)
}

#[allow(clippy::print_stdout)] // the summary is the soak's output
async fn soak(
    args: &Args,
    seed: u64,
    stack: &Arc<Stack>,
    workload: Arc<Workload>,
    schedule: Vec<chaos::Planned>,
    started: Instant,
    out: &std::path::Path,
) -> anyhow::Result<Summary> {
    let mut summary = Summary {
        seed,
        minutes: args.minutes,
        started_at: chrono::Utc::now().to_rfc3339(),
        database: stack.database.name.clone(),
        schedule: schedule.clone(),
        ..Summary::default()
    };
    summary.durations.setup_secs = started.elapsed().as_secs_f64();
    let window = Duration::from_secs_f64(args.load_secs());
    let drain = Duration::from_secs(args.drain_secs);
    let load_started = Instant::now();
    // Senders retry into the drain, for at most half of it.
    let give_up_at = load_started + window + drain / 2;
    let tally = Arc::new(Mutex::new(chaos::Tally::default()));
    let stop_watchdog = CancellationToken::new();
    let watchdog = tokio::spawn(chaos::watchdog(
        stack.clone(),
        tally.clone(),
        stop_watchdog.clone(),
    ));
    let signer = WebhookSigner::new(&stack.secret)?;
    let (report, (), injected) = tokio::join!(
        load::run(
            workload.clone(),
            stack.webhook_url(),
            signer,
            window,
            give_up_at
        ),
        chaos::run(stack.clone(), schedule, tally.clone()),
        poison::run(stack.brokers.clone(), args.poison, window),
    );
    let injected = injected?;
    summary.durations.load_secs = load_started.elapsed().as_secs_f64();
    chaos::set_om_faults(&stack.sim_url, serde_json::json!({})).await?;

    let w = &mut summary.webhooks;
    w.scheduled = workload.deliveries.len();
    w.redeliveries = workload
        .deliveries
        .iter()
        .filter(|d| d.is_duplicate)
        .count();
    w.rate_per_sec = w.scheduled as f64 / window.as_secs_f64();
    w.late_starts = report.late_starts;
    for outcome in &report.outcomes {
        w.requests += u64::from(outcome.attempts);
        w.answered_200 += usize::from(outcome.acknowledged);
        w.answered_5xx += u64::from(outcome.server_errors);
        w.answered_4xx += outcome.client_errors.len();
        w.transport_errors += u64::from(outcome.transport_errors);
        w.never_acknowledged += usize::from(!outcome.acknowledged);
        w.retried += usize::from(outcome.attempts > 1);
    }
    for session in workload.sessions.values() {
        *summary.sessions.entry(session.status).or_default() += 1;
    }

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&stack.database.url)
        .await?;
    let drain_started = Instant::now();
    let acknowledged_finalized = workload
        .deliveries
        .iter()
        .zip(&report.outcomes)
        .filter(|(d, o)| o.acknowledged && d.event_type.ends_with(".finalized"))
        .filter_map(|(d, _)| workload.sessions.get(&d.session_id?)?.order_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as i64;
    let drain_deadline = load_started + window + drain;
    summary.drained =
        drain::wait_until_settled(stack, &pool, acknowledged_finalized, drain_deadline).await;
    summary.durations.drain_secs = drain_started.elapsed().as_secs_f64();
    stop_watchdog.cancel();
    let _ = watchdog.await;
    summary.chaos = tally.lock().expect("tally").clone();

    let clean_started = Instant::now();
    let mut violations = Violations::default();
    drain::clean_pass(stack, &pool, &mut violations).await?;
    summary.durations.clean_pass_secs = clean_started.elapsed().as_secs_f64();

    let log = Log::read(&stack.brokers).await?;
    let outcomes = &report.outcomes;
    summary.log = checks::log_complete(&workload, outcomes, &injected, &log, &mut violations);
    summary.read_models =
        checks::read_models_exact(&pool, &workload, outcomes, &mut violations).await?;
    let finalized = checks::finalized_orders_in_log(&workload, &log);
    let (captures, ledger) =
        checks::money_moved_once(&pool, &stack.sim_url, &finalized, &mut violations).await?;
    summary.captures = captures;
    summary.ledger = ledger;
    summary.dead_letters =
        checks::dead_letters_explained(&pool, &injected, &log, &mut violations).await?;
    if summary.webhooks.answered_4xx > 0 {
        let statuses: Vec<u16> = outcomes
            .iter()
            .flat_map(|o| o.client_errors.clone())
            .collect();
        violations.add(
            "valid_webhooks_accepted",
            format!(
                "{} answer(s) 4xx to validly signed webhooks: {statuses:?}",
                statuses.len()
            ),
        );
    }
    if !summary.drained {
        violations.add(
            "drained",
            format!(
                "the pipeline did not settle within {} s after the load",
                args.drain_secs
            ),
        );
    }
    for error in &summary.chaos.errors {
        violations.add("chaos", error.clone());
    }
    summary.violation_count = violations.0.len();
    summary.violations = violations.0;
    summary.durations.total_secs = started.elapsed().as_secs_f64();

    let json = out.join("summary.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("write {}", json.display()))?;
    print!("{}", summary.render());
    println!("  summary          {}", json.display());
    Ok(summary)
}
