//! Kustom's order webhooks, as Kustom sends them: every capture and refund the simulator
//! applies (and every dispute opened or updated through `/_sim`) becomes one slim,
//! signed event posted to `OM_SIM_WEBHOOK_URL`, at least once, retried with backoff.
//!
//! Publishing happens inside the operation (under the simulator's lock, never awaiting)
//! and only queues the event: the Order Management answer is never delayed by a
//! delivery. [`delivery`] posts what is queued; [`sign`] signs it with the secret of the
//! order's merchant.

mod delivery;
mod sign;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use ipp_service::Secret;
use rand::{distr::Alphanumeric, rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

pub use delivery::{retry_delay, Deliveries};
use sign::SigningKeys;

/// Webhook delivery: off unless `OM_SIM_WEBHOOK_URL` is set.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Where to post Kustom's order webhooks (capture.created, refund.created,
    /// dispute.created, dispute.updated) for what the simulator applies, e.g.
    /// http://127.0.0.1:8080/webhooks/kustom. Unset: no webhooks are sent.
    #[arg(long = "webhook-url", env = "OM_SIM_WEBHOOK_URL")]
    pub url: Option<String>,

    /// The signing secret, `whsec_` + base64 of the key (Standard Webhooks). Required
    /// with OM_SIM_WEBHOOK_URL. Or OM_SIM_WEBHOOK_SECRET_FILE: a file holding it.
    #[arg(
        long = "webhook-secret",
        env = "OM_SIM_WEBHOOK_SECRET",
        value_parser = Secret::non_empty,
        hide_env_values = true
    )]
    pub secret: Option<Secret>,

    /// Fraction of events delivered twice (same webhook-id, same body), as Kustom may.
    #[arg(
        long = "webhook-duplicate-rate",
        env = "OM_SIM_WEBHOOK_DUPLICATE_RATE",
        default_value_t = 0.0
    )]
    pub duplicate_rate: f64,

    /// Milliseconds every event waits before its first delivery attempt.
    #[arg(
        long = "webhook-delay-ms",
        env = "OM_SIM_WEBHOOK_DELAY_MS",
        default_value_t = 0
    )]
    pub delay_ms: u64,

    /// Up to this many milliseconds more, drawn per event, so that events overtake each
    /// other.
    #[arg(
        long = "webhook-delay-jitter-ms",
        env = "OM_SIM_WEBHOOK_DELAY_JITTER_MS",
        default_value_t = 0
    )]
    pub delay_jitter_ms: u64,

    /// Wait after the first failed attempt (non-2xx, unreachable, timed out); doubled
    /// after each further failure up to OM_SIM_WEBHOOK_RETRY_MAX_MS.
    #[arg(
        long = "webhook-retry-initial-ms",
        env = "OM_SIM_WEBHOOK_RETRY_INITIAL_MS",
        default_value_t = 500
    )]
    pub retry_initial_ms: u64,

    /// The longest wait between two attempts.
    #[arg(
        long = "webhook-retry-max-ms",
        env = "OM_SIM_WEBHOOK_RETRY_MAX_MS",
        default_value_t = 30_000
    )]
    pub retry_max_ms: u64,

    /// An event still undelivered this long after it happened is given up (Kustom retries
    /// for about three days).
    #[arg(
        long = "webhook-give-up-secs",
        env = "OM_SIM_WEBHOOK_GIVE_UP_SECS",
        default_value_t = 3 * 24 * 3600
    )]
    pub give_up_secs: u64,

    /// Timeout of one delivery attempt, in milliseconds.
    #[arg(
        long = "webhook-timeout-ms",
        env = "OM_SIM_WEBHOOK_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub timeout_ms: u64,

    /// Most events waiting for delivery; an event published while it is full is dropped,
    /// logged and counted (`dropped` in /_sim/webhooks).
    #[arg(
        long = "webhook-queue-capacity",
        env = "OM_SIM_WEBHOOK_QUEUE_CAPACITY",
        default_value_t = 100_000
    )]
    pub queue_capacity: usize,
}

impl WebhookArgs {
    /// Rates are fractions, a destination has a secret, and waits are usable.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.duplicate_rate) {
            return Err(format!(
                "webhook duplicate rate must be between 0 and 1, got {}",
                self.duplicate_rate
            ));
        }
        if self.url.is_some() {
            let secret = self
                .secret
                .as_ref()
                .ok_or("OM_SIM_WEBHOOK_URL is set without OM_SIM_WEBHOOK_SECRET")?;
            SigningKeys::one_for_all(secret)?;
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err("webhook retry waits must be > 0, the maximum at least the initial".into());
        }
        if self.queue_capacity == 0 {
            return Err("webhook queue capacity must be at least 1".into());
        }
        Ok(())
    }
}

/// What a Kustom order event says, and nothing more: the ids to fetch the details by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    CaptureCreated {
        order_id: Uuid,
        capture_id: Uuid,
    },
    RefundCreated {
        order_id: Uuid,
        refund_id: Uuid,
    },
    DisputeCreated {
        order_id: Uuid,
        dispute_id: String,
    },
    DisputeUpdated {
        order_id: Uuid,
        dispute_id: String,
        status: String,
    },
}

impl OrderEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::CaptureCreated { .. } => "capture.created",
            Self::RefundCreated { .. } => "refund.created",
            Self::DisputeCreated { .. } => "dispute.created",
            Self::DisputeUpdated { .. } => "dispute.updated",
        }
    }

    pub fn order_id(&self) -> Uuid {
        match self {
            Self::CaptureCreated { order_id, .. }
            | Self::RefundCreated { order_id, .. }
            | Self::DisputeCreated { order_id, .. }
            | Self::DisputeUpdated { order_id, .. } => *order_id,
        }
    }

    fn data(&self) -> serde_json::Value {
        match self {
            Self::CaptureCreated {
                order_id,
                capture_id,
            } => serde_json::json!({ "order_id": order_id, "capture_id": capture_id }),
            Self::RefundCreated {
                order_id,
                refund_id,
            } => serde_json::json!({ "order_id": order_id, "refund_id": refund_id }),
            Self::DisputeCreated {
                order_id,
                dispute_id,
            } => serde_json::json!({ "order_id": order_id, "dispute_id": dispute_id }),
            Self::DisputeUpdated {
                order_id,
                dispute_id,
                status,
            } => serde_json::json!({
                "order_id": order_id, "dispute_id": dispute_id, "status": status
            }),
        }
    }
}

/// Kustom's envelope, fields in Kustom's order.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    merchant_id: &'a str,
    timestamp: String,
    #[serde(rename = "type")]
    event_type: &'static str,
    data: serde_json::Value,
}

/// The event body: `{"id":"kevt_…","merchant_id","timestamp","type","data":{…}}`.
fn envelope(event_id: &str, merchant_id: &str, at: DateTime<Utc>, event: &OrderEvent) -> Bytes {
    let envelope = Envelope {
        id: event_id,
        merchant_id,
        timestamp: at.to_rfc3339_opts(SecondsFormat::Nanos, true),
        event_type: event.event_type(),
        data: event.data(),
    };
    Bytes::from(serde_json::to_vec(&envelope).expect("an envelope always serializes"))
}

/// `prefix` and 22 random letters and digits, the shape of Kustom's `kevt_…` ids.
fn random_id(rng: &mut StdRng, prefix: &str) -> String {
    let tail: String = (0..22)
        .map(|_| char::from(rng.sample(Alphanumeric)))
        .collect();
    format!("{prefix}{tail}")
}

/// What can be changed at run time with `PUT /_sim/webhooks` (a field left out keeps
/// its value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Injection {
    pub duplicate_rate: f64,
    pub delay_ms: u64,
    pub delay_jitter_ms: u64,
    /// Applied operations publish nothing: a confirmation that never comes.
    pub suppressed: bool,
}

/// `PUT /_sim/webhooks`: the fields of [`Injection`] to change.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectionChange {
    pub duplicate_rate: Option<f64>,
    pub delay_ms: Option<u64>,
    pub delay_jitter_ms: Option<u64>,
    pub suppressed: Option<bool>,
}

/// Counters of `GET /_sim/webhooks`. `delivered` counts 2xx answers (a duplicate is
/// delivered twice); an event is `pending` from publication until its last copy is
/// delivered or it is given up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebhookStats {
    pub published: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub failed_attempts: u64,
    pub pending: u64,
    pub dropped: u64,
    pub given_up: u64,
    /// Events not published because webhooks were suppressed.
    pub suppressed_events: u64,
}

/// One published event as `GET /_sim/webhooks` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub event_id: String,
    pub webhook_id: String,
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub merchant_id: String,
    pub order_id: Uuid,
    /// How many times it is to be delivered (2 for an injected duplicate).
    pub copies: u32,
    pub delivered: u32,
    pub attempts: u32,
    /// The status of the last attempt, or null when it got none.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub published_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub given_up: bool,
}

/// `GET /_sim/webhooks`.
#[derive(Debug, Clone, Serialize)]
pub struct WebhooksView {
    pub enabled: bool,
    pub url: Option<String>,
    #[serde(flatten)]
    pub injection: Injection,
    #[serde(flatten)]
    pub stats: WebhookStats,
    pub events: Vec<EventRecord>,
}

/// An event on its way: the body and webhook-id every attempt reuses.
#[derive(Debug, Clone)]
pub struct Outgoing {
    seq: u64,
    webhook_id: String,
    merchant_id: String,
    body: Bytes,
    copies: u32,
    /// When the first attempt may be made: publication plus the injected delay.
    due: Instant,
    published: Instant,
}

struct State {
    injection: Injection,
    rng: StdRng,
    stats: WebhookStats,
    events: BTreeMap<u64, EventRecord>,
    next_seq: u64,
}

/// The publishing side, shared by the simulator and the delivery task.
pub struct Webhooks {
    url: Option<String>,
    queue: Option<mpsc::Sender<Outgoing>>,
    state: Mutex<State>,
}

impl Webhooks {
    /// The outbox and, when a destination is configured, the deliveries that drain it
    /// (to run with [`Deliveries::run`]). `config` must be valid
    /// ([`WebhookArgs::validate`]).
    pub fn new(config: &WebhookArgs, seed: u64) -> Result<(Arc<Self>, Option<Deliveries>), String> {
        config.validate()?;
        let (queue, receiver) = match &config.url {
            Some(_) => {
                let (sender, receiver) = mpsc::channel(config.queue_capacity);
                (Some(sender), Some(receiver))
            }
            None => (None, None),
        };
        let webhooks = Arc::new(Self {
            url: config.url.clone(),
            queue,
            state: Mutex::new(State {
                injection: Injection {
                    duplicate_rate: config.duplicate_rate,
                    delay_ms: config.delay_ms,
                    delay_jitter_ms: config.delay_jitter_ms,
                    suppressed: false,
                },
                rng: StdRng::seed_from_u64(seed),
                stats: WebhookStats::default(),
                events: BTreeMap::new(),
                next_seq: 0,
            }),
        });
        let deliveries = match (receiver, &config.url, &config.secret) {
            (Some(receiver), Some(url), Some(secret)) => Some(Deliveries::new(
                Arc::clone(&webhooks),
                receiver,
                url.clone(),
                SigningKeys::one_for_all(secret)?,
                config,
            )?),
            _ => None,
        };
        Ok((webhooks, deliveries))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update is a few assignments: a poisoned lock still holds usable counters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `event` of `merchant_id`'s order for delivery; never waits. Without a
    /// destination nothing is published.
    pub fn publish(&self, merchant_id: &str, event: &OrderEvent) {
        let Some(queue) = &self.queue else {
            return;
        };
        let mut guard = self.state();
        let state = &mut *guard;
        if state.injection.suppressed {
            state.stats.suppressed_events += 1;
            tracing::info!(event_type = event.event_type(), order_id = %event.order_id(), "webhook suppressed");
            return;
        }
        let event_id = random_id(&mut state.rng, "kevt_");
        let webhook_id = random_id(&mut state.rng, "msg_");
        let duplicate = state.rng.random_bool(state.injection.duplicate_rate);
        let jitter = match state.injection.delay_jitter_ms {
            0 => 0,
            max => state.rng.random_range(0..=max),
        };
        let now = Utc::now();
        let published = Instant::now();
        let delay = Duration::from_millis(state.injection.delay_ms.saturating_add(jitter));
        let seq = state.next_seq;
        state.next_seq += 1;
        let outgoing = Outgoing {
            seq,
            webhook_id: webhook_id.clone(),
            merchant_id: merchant_id.to_owned(),
            body: envelope(&event_id, merchant_id, now, event),
            copies: if duplicate { 2 } else { 1 },
            due: published.checked_add(delay).unwrap_or(published),
            published,
        };
        if let Err(error) = queue.try_send(outgoing) {
            state.stats.dropped += 1;
            tracing::warn!(%error, event_id = event_id.as_str(), event_type = event.event_type(), "webhook queue full or closed; event dropped");
            return;
        }
        state.stats.published += 1;
        state.stats.pending += 1;
        if duplicate {
            state.stats.duplicates += 1;
        }
        state.events.insert(
            seq,
            EventRecord {
                event_id: event_id.clone(),
                webhook_id,
                event_type: event.event_type(),
                merchant_id: merchant_id.to_owned(),
                order_id: event.order_id(),
                copies: if duplicate { 2 } else { 1 },
                delivered: 0,
                attempts: 0,
                last_status: None,
                last_error: None,
                published_at: now,
                delivered_at: None,
                given_up: false,
            },
        );
        tracing::debug!(event_id = event_id.as_str(), event_type = event.event_type(), order_id = %event.order_id(), duplicate, "webhook queued");
    }

    /// The result of one attempt: `status` when the endpoint answered, `error` otherwise.
    fn attempted(&self, seq: u64, status: Option<u16>, error: Option<String>) {
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        let mut state = self.state();
        if delivered {
            state.stats.delivered += 1;
        } else {
            state.stats.failed_attempts += 1;
        }
        if let Some(record) = state.events.get_mut(&seq) {
            record.attempts += 1;
            record.last_status = status;
            record.last_error = error;
            if delivered {
                record.delivered += 1;
                record.delivered_at = Some(Utc::now());
            }
        }
    }

    /// The event is done with: every copy delivered, or `given_up`.
    fn finished(&self, seq: u64, given_up: bool) {
        let mut state = self.state();
        state.stats.pending = state.stats.pending.saturating_sub(1);
        if given_up {
            state.stats.given_up += 1;
            if let Some(record) = state.events.get_mut(&seq) {
                record.given_up = true;
            }
        }
    }

    pub fn view(&self) -> WebhooksView {
        let state = self.state();
        WebhooksView {
            enabled: self.queue.is_some(),
            url: self.url.clone(),
            injection: state.injection.clone(),
            stats: state.stats.clone(),
            events: state.events.values().cloned().collect(),
        }
    }

    /// Applies `change`; a duplicate rate outside 0..1 is refused.
    pub fn change(&self, change: InjectionChange) -> Result<Injection, String> {
        if let Some(rate) = change.duplicate_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "duplicate_rate must be between 0 and 1, got {rate}"
                ));
            }
        }
        let mut state = self.state();
        let injection = &mut state.injection;
        if let Some(rate) = change.duplicate_rate {
            injection.duplicate_rate = rate;
        }
        if let Some(ms) = change.delay_ms {
            injection.delay_ms = ms;
        }
        if let Some(ms) = change.delay_jitter_ms {
            injection.delay_jitter_ms = ms;
        }
        if let Some(suppressed) = change.suppressed {
            injection.suppressed = suppressed;
        }
        Ok(injection.clone())
    }

    /// Forgets the listed events and zeroes the counters, except `pending`, which still
    /// counts the events on their way.
    pub fn clear(&self) {
        let mut state = self.state();
        let pending = state.stats.pending;
        state.stats = WebhookStats {
            pending,
            ..WebhookStats::default()
        };
        state.events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        webhooks: WebhookArgs,
    }

    fn args(extra: &[&str]) -> WebhookArgs {
        let mut argv = vec!["sim"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("args").webhooks
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn the_envelope_is_as_slim_as_kustoms() {
        let order_id = Uuid::new_v4();
        let capture_id = Uuid::new_v4();
        let body = envelope(
            "kevt_x",
            "DM1",
            "2026-06-05T18:37:41.232733416Z".parse().unwrap(),
            &OrderEvent::CaptureCreated {
                order_id,
                capture_id,
            },
        );
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "id": "kevt_x",
                "merchant_id": "DM1",
                "timestamp": "2026-06-05T18:37:41.232733416Z",
                "type": "capture.created",
                "data": { "order_id": order_id, "capture_id": capture_id },
            })
        );
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.starts_with(r#"{"id":"kevt_x","merchant_id":"DM1","timestamp""#));
    }

    #[test]
    fn without_a_destination_nothing_is_published() {
        let (webhooks, deliveries) = Webhooks::new(&args(&[]), 1).unwrap();
        assert!(deliveries.is_none());
        webhooks.publish(
            "DM1",
            &OrderEvent::RefundCreated {
                order_id: Uuid::new_v4(),
                refund_id: Uuid::new_v4(),
            },
        );
        let view = webhooks.view();
        assert!(!view.enabled);
        assert_eq!(view.stats.published, 0);
    }

    #[test]
    fn a_destination_needs_a_valid_secret() {
        let url = ["--webhook-url", "http://127.0.0.1:1/webhooks/kustom"];
        assert!(args(&url).validate().is_err());
        let mut bad = url.to_vec();
        bad.extend(["--webhook-secret", "whsec_not base64!"]);
        assert!(args(&bad).validate().is_err());
        let mut good = url.to_vec();
        good.extend(["--webhook-secret", SECRET]);
        assert_eq!(args(&good).validate(), Ok(()));
        let mut rate = good.clone();
        rate.extend(["--webhook-duplicate-rate", "1.5"]);
        assert!(args(&rate).validate().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let config = args(&[
            "--webhook-url",
            "http://127.0.0.1:1/webhooks/kustom",
            "--webhook-secret",
            SECRET,
            "--webhook-queue-capacity",
            "2",
        ]);
        // The deliveries are not run: nothing drains the queue.
        let (webhooks, _deliveries) = Webhooks::new(&config, 1).unwrap();
        for _ in 0..3 {
            webhooks.publish(
                "DM1",
                &OrderEvent::DisputeCreated {
                    order_id: Uuid::new_v4(),
                    dispute_id: "d".into(),
                },
            );
        }
        let stats = webhooks.view().stats;
        assert_eq!((stats.published, stats.pending, stats.dropped), (2, 2, 1));
    }

    #[tokio::test]
    async fn suppressed_events_are_counted_not_queued() {
        let config = args(&[
            "--webhook-url",
            "http://127.0.0.1:1/webhooks/kustom",
            "--webhook-secret",
            SECRET,
        ]);
        let (webhooks, _deliveries) = Webhooks::new(&config, 1).unwrap();
        webhooks
            .change(InjectionChange {
                suppressed: Some(true),
                ..InjectionChange::default()
            })
            .unwrap();
        webhooks.publish(
            "DM1",
            &OrderEvent::CaptureCreated {
                order_id: Uuid::new_v4(),
                capture_id: Uuid::new_v4(),
            },
        );
        let stats = webhooks.view().stats;
        assert_eq!((stats.published, stats.suppressed_events), (0, 1));
        assert!(webhooks
            .change(InjectionChange {
                duplicate_rate: Some(-0.1),
                ..InjectionChange::default()
            })
            .is_err());
    }
}
