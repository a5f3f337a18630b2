//! Open-loop load: every delivery of the workload is sent at its scheduled time, whatever
//! the answers to earlier ones. A delivery that is not answered 200 (5xx, a timeout, a
//! refused connection while ingest restarts) is sent again, like Kustom does, with the
//! same webhook id and a fresh signature, until it gets its 200 or the run gives up.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ipp_loadgen::{Delivery, WebhookSigner, Workload};
use tokio::sync::Semaphore;

/// How one delivery went.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub acknowledged: bool,
    pub attempts: u32,
    pub server_errors: u32,
    pub transport_errors: u32,
    /// 4xx answers: a valid signed webhook must never get one.
    pub client_errors: Vec<u16>,
}

/// What the senders may have in flight at once; past it, sends start late (counted).
const MAX_IN_FLIGHT: usize = 2048;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct LoadReport {
    pub outcomes: Vec<Outcome>,
    /// Sends that started more than a second after their scheduled time.
    pub late_starts: usize,
}

/// Sends the workload's deliveries evenly over `window`; retries end at `give_up_at`.
pub async fn run(
    workload: Arc<Workload>,
    url: String,
    signer: WebhookSigner,
    window: Duration,
    give_up_at: Instant,
) -> LoadReport {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("HTTP client");
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let deliveries = workload.deliveries.len();
    let interval = window.div_f64(deliveries.max(1) as f64);
    let started = tokio::time::Instant::now();
    let mut late_starts = 0;
    let mut senders = Vec::with_capacity(deliveries);
    for index in 0..deliveries {
        let due = started + interval.mul_f64(index as f64);
        tokio::time::sleep_until(due).await;
        let permit = in_flight.clone().acquire_owned().await.expect("open");
        if due.elapsed() > Duration::from_secs(1) {
            late_starts += 1;
        }
        let (client, url, signer, workload) = (
            client.clone(),
            url.clone(),
            signer.clone(),
            workload.clone(),
        );
        senders.push(tokio::spawn(async move {
            let outcome = deliver(
                &client,
                &url,
                &signer,
                &workload.deliveries[index],
                give_up_at,
            )
            .await;
            drop(permit);
            outcome
        }));
    }
    let mut outcomes = Vec::with_capacity(senders.len());
    for sender in senders {
        outcomes.push(sender.await.unwrap_or_default());
    }
    LoadReport {
        outcomes,
        late_starts,
    }
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    signer: &WebhookSigner,
    delivery: &Delivery,
    give_up_at: Instant,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut backoff = Duration::from_millis(500);
    loop {
        outcome.attempts += 1;
        match signer.post(client, url, delivery).send().await {
            Ok(response) if response.status() == 200 => {
                outcome.acknowledged = true;
                return outcome;
            }
            Ok(response) if response.status().is_client_error() => {
                outcome.client_errors.push(response.status().as_u16());
            }
            Ok(_) => outcome.server_errors += 1,
            Err(_) => outcome.transport_errors += 1,
        }
        if Instant::now() + backoff >= give_up_at {
            return outcome;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
}
