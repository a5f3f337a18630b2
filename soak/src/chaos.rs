//! The fault schedule, drawn from the seed before the run and bounded in time and count:
//! SIGKILLs of each service (restarted after a random delay), broker restarts (SIGKILL
//! and SIGTERM, alternating) and windows of Order Management faults. Each kind of fault
//! gets evenly spaced slots with a random place inside its slot, so faults spread over
//! the run and sometimes overlap. A watchdog restarts a service that exits by itself
//! and counts it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    process::Signal,
    stack::{start_broker, Service, Stack},
};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    Kill {
        service: Service,
        restart_after_ms: u64,
    },
    BrokerRestart {
        signal: &'static str,
        down_ms: u64,
    },
    OmFaults {
        fail_rate: f64,
        rate_limit_rate: f64,
        latency_ms: u64,
        lasting_ms: u64,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub at_ms: u64,
    pub fault: Fault,
}

/// The schedule for a load window of `secs` seconds. Faults start within the first 80 %
/// of the window, so the last ones are over before the drain.
pub fn plan(secs: f64, seed: u64) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_c4a0_5000);
    let minutes = secs / 60.0;
    let span = secs * 0.8;
    let mut planned = Vec::new();
    let slots = |count: usize, rng: &mut StdRng| -> Vec<u64> {
        let slot = span / count as f64;
        (0..count)
            .map(|i| ((i as f64 + rng.random_range(0.1..0.9)) * slot * 1000.0) as u64)
            .collect()
    };
    let kills = ((minutes * 0.75).round() as usize).max(1);
    for service in Service::ALL {
        for at_ms in slots(kills, &mut rng) {
            planned.push(Planned {
                at_ms,
                fault: Fault::Kill {
                    service,
                    restart_after_ms: rng.random_range(200..6000),
                },
            });
        }
    }
    let restarts = ((minutes / 3.0).round() as usize).max(2);
    for (i, at_ms) in slots(restarts, &mut rng).into_iter().enumerate() {
        planned.push(Planned {
            at_ms,
            fault: Fault::BrokerRestart {
                signal: if i % 2 == 0 { "KILL" } else { "TERM" },
                down_ms: rng.random_range(1000..8000),
            },
        });
    }
    let windows = ((minutes * 0.75).round() as usize).max(2);
    let longest = (secs * 0.15).clamp(5.0, 30.0);
    for at_ms in slots(windows, &mut rng) {
        let (fail_rate, rate_limit_rate, latency_ms) = match rng.random_range(0..4) {
            0 => (0.3, 0.0, 0),
            1 => (0.0, 0.3, 0),
            2 => (0.0, 0.0, rng.random_range(200..1500)),
            _ => (0.3, 0.1, 200),
        };
        planned.push(Planned {
            at_ms,
            fault: Fault::OmFaults {
                fail_rate,
                rate_limit_rate,
                latency_ms,
                lasting_ms: (rng.random_range(0.3..1.0) * longest * 1000.0) as u64,
            },
        });
    }
    planned.sort_by_key(|p| p.at_ms);
    planned
}

/// What the chaos did, as it happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub kills: BTreeMap<&'static str, u32>,
    /// Kills skipped because the service was already down (a restart still pending).
    pub kills_skipped: u32,
    pub broker_restarts_kill: u32,
    pub broker_restarts_term: u32,
    pub om_fault_windows: u32,
    pub om_fault_seconds: f64,
    /// Exits nobody asked for, by service: each one restarted by the watchdog.
    pub unexpected_exits: BTreeMap<&'static str, u32>,
    /// The first lines of evidence for each unexpected exit (status, last log lines).
    pub unexpected_exit_details: Vec<String>,
    /// Chaos steps that failed (a broker that did not come back, a fault switch refused).
    pub errors: Vec<String>,
}

pub type SharedTally = Arc<Mutex<Tally>>;

/// Runs `planned` from now on; returns when every fault is over (services and broker up
/// again, faults cleared).
pub async fn run(stack: Arc<Stack>, planned: Vec<Planned>, tally: SharedTally) {
    let started = tokio::time::Instant::now();
    let mut steps = Vec::new();
    for step in planned {
        tokio::time::sleep_until(started + Duration::from_millis(step.at_ms)).await;
        let (stack, tally) = (stack.clone(), tally.clone());
        steps.push(tokio::spawn(async move {
            if let Err(e) = apply(&stack, &step.fault, &tally).await {
                tally
                    .lock()
                    .expect("tally")
                    .errors
                    .push(format!("{:?}: {e:#}", step.fault));
            }
        }));
    }
    for step in steps {
        let _ = step.await;
    }
}

async fn apply(stack: &Stack, fault: &Fault, tally: &SharedTally) -> anyhow::Result<()> {
    match fault {
        Fault::Kill {
            service,
            restart_after_ms,
        } => {
            let mut process = stack.service(*service).lock().await;
            if !process.is_running() {
                tally.lock().expect("tally").kills_skipped += 1;
                return Ok(());
            }
            process.signal(Signal::Kill)?;
            process.wait_exit(Duration::from_secs(10)).await;
            *tally
                .lock()
                .expect("tally")
                .kills
                .entry(service.name())
                .or_default() += 1;
            tokio::time::sleep(Duration::from_millis(*restart_after_ms)).await;
            process.start()
        }
        Fault::BrokerRestart { signal, down_ms } => {
            let signal = if *signal == "KILL" {
                Signal::Kill
            } else {
                Signal::Term
            };
            // Held for the whole cycle: a restart due meanwhile waits for this one.
            let mut broker = stack.broker.lock().await;
            if !broker.is_running() {
                start_broker(&mut broker, stack.broker_port).await?;
            }
            broker.signal(signal)?;
            // A controlled shutdown moves nothing on one node, but flushes and closes the
            // logs: it takes seconds.
            broker.wait_exit(Duration::from_secs(60)).await;
            {
                let mut tally = tally.lock().expect("tally");
                match signal {
                    Signal::Kill => tally.broker_restarts_kill += 1,
                    Signal::Term => tally.broker_restarts_term += 1,
                }
            }
            tokio::time::sleep(Duration::from_millis(*down_ms)).await;
            start_broker(&mut broker, stack.broker_port).await
        }
        Fault::OmFaults {
            fail_rate,
            rate_limit_rate,
            latency_ms,
            lasting_ms,
        } => {
            set_om_faults(
                &stack.sim_url,
                json!({"fail_rate": fail_rate, "rate_limit_rate": rate_limit_rate, "latency_ms": latency_ms}),
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(*lasting_ms)).await;
            // Windows may overlap: the first one to end clears both (each is counted).
            set_om_faults(&stack.sim_url, json!({})).await?;
            let mut tally = tally.lock().expect("tally");
            tally.om_fault_windows += 1;
            tally.om_fault_seconds += *lasting_ms as f64 / 1000.0;
            Ok(())
        }
    }
}

/// Replaces ipp-om-sim's faults (`{}`: none).
pub async fn set_om_faults(sim_url: &str, faults: serde_json::Value) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .put(format!("{sim_url}/_sim/faults"))
        .json(&faults)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "PUT /_sim/faults {faults}: {}",
        response.status()
    );
    Ok(())
}

/// Restarts, until `stop`, any service that exited without being asked to; the broker
/// too. Each such exit is counted with its evidence.
pub async fn watchdog(stack: Arc<Stack>, tally: SharedTally, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for service in Service::ALL {
            // Busy: a kill and restart is under way.
            let Ok(mut process) = stack.service(service).try_lock() else {
                continue;
            };
            if !process.wanted {
                continue;
            }
            if let Some(status) = process.exit_status() {
                let detail = format!(
                    "{} exited by itself ({status}) at {}; last lines of {}:\n{}",
                    service.name(),
                    chrono::Utc::now().to_rfc3339(),
                    process.log_path().display(),
                    process.log_tail(15)
                );
                eprintln!("ipp-soak: {detail}");
                {
                    let mut tally = tally.lock().expect("tally");
                    *tally.unexpected_exits.entry(service.name()).or_default() += 1;
                    tally.unexpected_exit_details.push(detail);
                }
                if let Err(e) = process.start() {
                    tally
                        .lock()
                        .expect("tally")
                        .errors
                        .push(format!("restart {}: {e:#}", service.name()));
                }
            }
        }
        let Ok(mut broker) = stack.broker.try_lock() else {
            continue;
        };
        if broker.wanted {
            if let Some(status) = broker.exit_status() {
                let detail = format!(
                    "the broker exited by itself ({status}):\n{}",
                    broker.log_tail(15)
                );
                eprintln!("ipp-soak: {detail}");
                {
                    let mut tally = tally.lock().expect("tally");
                    *tally.unexpected_exits.entry("kafka").or_default() += 1;
                    tally.unexpected_exit_details.push(detail);
                }
                if let Err(e) = start_broker(&mut broker, stack.broker_port).await {
                    tally
                        .lock()
                        .expect("tally")
                        .errors
                        .push(format!("restart the broker: {e:#}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(planned: &[Planned], what: impl Fn(&Fault) -> bool) -> usize {
        planned.iter().filter(|p| what(&p.fault)).count()
    }

    #[test]
    fn the_schedule_is_bounded_repeatable_and_covers_every_fault() {
        for (secs, kills, restarts, windows) in [(120.0, 2, 2, 2), (1200.0, 15, 7, 15)] {
            let planned = plan(secs, 42);
            for service in Service::ALL {
                let killed = count(
                    &planned,
                    |f| matches!(f, Fault::Kill { service: s, .. } if *s == service),
                );
                assert_eq!(killed, kills, "{service:?} in {secs} s");
            }
            let signals: Vec<&str> = planned
                .iter()
                .filter_map(|p| match p.fault {
                    Fault::BrokerRestart { signal, .. } => Some(signal),
                    _ => None,
                })
                .collect();
            assert_eq!(signals.len(), restarts);
            assert!(signals.contains(&"KILL") && signals.contains(&"TERM"));
            assert_eq!(
                count(&planned, |f| matches!(f, Fault::OmFaults { .. })),
                windows
            );
            assert!(planned.iter().all(|p| (p.at_ms as f64) < secs * 800.0));
            assert!(planned.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
            let again = plan(secs, 42);
            assert_eq!(format!("{planned:?}"), format!("{again:?}"));
        }
    }
}
