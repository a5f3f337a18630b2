//! Posting queued events, at least once: each attempt signs the same body under the same
//! `webhook-id` with a fresh `webhook-timestamp`; a non-2xx answer, a refused connection
//! or a timeout is retried after [`retry_delay`] until the endpoint takes it or the event
//! is older than the give-up age. Up to [`CONCURRENT_DELIVERIES`] events are on their way
//! at once, so one slow event does not hold back the others (Kustom promises no order
//! either). Events still queued or retrying when the simulator stops are lost with the
//! rest of its memory.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{sign::SigningKeys, Outgoing, WebhookArgs, Webhooks};

/// Events being delivered (or waiting to retry) at the same time.
pub const CONCURRENT_DELIVERIES: usize = 16;

/// How long to wait after the `failures`-th failed attempt in a row (1 for the first):
/// `initial`, doubled after each further failure, never more than `max`.
pub fn retry_delay(failures: u32, initial: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    initial.saturating_mul(1 << doublings).min(max)
}

/// The draining side of the outbox: run it with [`Deliveries::run`].
pub struct Deliveries {
    webhooks: Arc<Webhooks>,
    receiver: mpsc::Receiver<Outgoing>,
    target: Arc<Target>,
}

/// Where and how every attempt is made.
struct Target {
    client: reqwest::Client,
    url: String,
    keys: SigningKeys,
    retry_initial: Duration,
    retry_max: Duration,
    give_up_after: Duration,
}

impl Deliveries {
    pub(super) fn new(
        webhooks: Arc<Webhooks>,
        receiver: mpsc::Receiver<Outgoing>,
        url: String,
        keys: SigningKeys,
        config: &WebhookArgs,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| format!("webhook HTTP client: {e}"))?;
        Ok(Self {
            webhooks,
            receiver,
            target: Arc::new(Target {
                client,
                url,
                keys,
                retry_initial: Duration::from_millis(config.retry_initial_ms),
                retry_max: Duration::from_millis(config.retry_max_ms),
                give_up_after: Duration::from_secs(config.give_up_secs),
            }),
        })
    }

    /// Delivers queued events until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let deliveries = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(CONCURRENT_DELIVERIES));
        loop {
            let slot = tokio::select! {
                () = shutdown.cancelled() => break,
                slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let outgoing = tokio::select! {
                () = shutdown.cancelled() => break,
                outgoing = self.receiver.recv() => match outgoing {
                    Some(outgoing) => outgoing,
                    None => break,
                },
            };
            let webhooks = Arc::clone(&self.webhooks);
            let target = Arc::clone(&self.target);
            let shutdown = shutdown.clone();
            deliveries.spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = deliver(&webhooks, &target, outgoing) => {}
                }
                drop(slot);
            });
        }
        deliveries.close();
        deliveries.wait().await;
    }
}

/// Every copy of one event, each retried until delivered or the event is too old.
async fn deliver(webhooks: &Webhooks, target: &Target, outgoing: Outgoing) {
    // A deadline rather than a sleep: an event that waited in the queue for a slot has
    // served (part of) its delay there.
    tokio::time::sleep_until(outgoing.due.into()).await;
    for _ in 0..outgoing.copies {
        let mut failures = 0;
        loop {
            let (status, error) = attempt(target, &outgoing).await;
            webhooks.attempted(outgoing.seq, status, error.clone());
            if status.is_some_and(|s| (200..300).contains(&s)) {
                break;
            }
            failures += 1;
            if outgoing.published.elapsed() >= target.give_up_after {
                tracing::warn!(
                    webhook_id = outgoing.webhook_id.as_str(),
                    failures,
                    "webhook given up"
                );
                webhooks.finished(outgoing.seq, true);
                return;
            }
            let wait = retry_delay(failures, target.retry_initial, target.retry_max);
            tracing::info!(
                webhook_id = outgoing.webhook_id.as_str(),
                ?status,
                error = error.as_deref(),
                failures,
                ?wait,
                "webhook delivery failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }
    webhooks.finished(outgoing.seq, false);
}

/// One signed POST: the status it got, or why it got none.
async fn attempt(target: &Target, outgoing: &Outgoing) -> (Option<u16>, Option<String>) {
    let timestamp = Utc::now().timestamp();
    let signature = target.keys.signature(
        &outgoing.merchant_id,
        &outgoing.webhook_id,
        timestamp,
        &outgoing.body,
    );
    let sent = target
        .client
        .post(&target.url)
        .header("content-type", "application/json")
        .header("webhook-id", &outgoing.webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(outgoing.body.clone())
        .send()
        .await;
    match sent {
        Ok(response) => (Some(response.status().as_u16()), None),
        Err(error) => (None, Some(ipp_service::error_chain(&error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_retry_waits_the_initial_delay_then_doubles() {
        let waits: Vec<u128> = (1..=6)
            .map(|failures| retry_delay(failures, 500 * MS, 30_000 * MS).as_millis())
            .collect();
        assert_eq!(waits, [500, 1_000, 2_000, 4_000, 8_000, 16_000]);
    }

    #[test]
    fn waits_stop_growing_at_the_maximum() {
        assert_eq!(retry_delay(7, 500 * MS, 30_000 * MS), 30_000 * MS);
        assert_eq!(retry_delay(8, 500 * MS, 30_000 * MS), 30_000 * MS);
    }

    #[test]
    fn any_number_of_failures_is_bounded_without_overflow() {
        for failures in [0, 32, 64, 1_000, u32::MAX] {
            let wait = retry_delay(failures, 500 * MS, 30_000 * MS);
            assert!(
                (500 * MS..=30_000 * MS).contains(&wait),
                "{failures}: {wait:?}"
            );
        }
        assert_eq!(
            retry_delay(u32::MAX, Duration::MAX, Duration::MAX),
            Duration::MAX
        );
    }
}
