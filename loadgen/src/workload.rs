//! The workload: which events, in which (shuffled) order, and the expected outcome.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub sessions: usize,
    pub merchants: usize,
    /// Fraction of IPP events delivered a second time (Kustom redelivers).
    pub duplicate_rate: f64,
    /// Non-IPP Kustom events per IPP session.
    pub other_event_rate: f64,
    /// How far (in deliveries) an event may move from its natural place.
    pub shuffle_window: usize,
    pub seed: u64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self {
            sessions: 300,
            merchants: 3,
            duplicate_rate: 0.08,
            other_event_rate: 0.05,
            shuffle_window: 40,
            seed: 7,
        }
    }
}

/// One webhook body to post. Duplicates share their body (and event id).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: String,
    pub event_type: String,
    pub session_id: Option<Uuid>,
    pub body: Vec<u8>,
    pub is_duplicate: bool,
}

impl Delivery {
    pub fn is_ipp(&self) -> bool {
        self.event_type.starts_with("ipp.")
    }
}

/// What a session must look like once everything is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedSession {
    pub session_id: Uuid,
    pub merchant_id: String,
    pub status: &'static str,
    pub order_id: Option<Uuid>,
    pub failed_attempts: i32,
    pub event_count: i32,
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub deliveries: Vec<Delivery>,
    pub sessions: BTreeMap<Uuid, ExpectedSession>,
}

#[derive(Clone, Copy)]
enum Fate {
    Finalized,
    Cancelled,
    Abandoned,
}

impl Workload {
    pub fn generate(spec: &WorkloadSpec) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let merchants: Vec<String> = (0..spec.merchants.max(1))
            .map(|i| format!("DM{:08}", 11_917_000 + i))
            .collect();
        let start = DateTime::parse_from_rfc3339("2026-06-05T08:00:00Z")
            .expect("constant")
            .to_utc();
        let mut natural = Vec::new();
        let mut sessions = BTreeMap::new();
        for n in 0..spec.sessions {
            let session_id = Uuid::from_u128(rng.random());
            let merchant = merchants[rng.random_range(0..merchants.len())].clone();
            let fate = match rng.random_range(0..100) {
                0..75 => Fate::Finalized,
                75..92 => Fate::Cancelled,
                _ => Fate::Abandoned,
            };
            let mut at = start + Duration::seconds(n as i64 * 3) + nanos(&mut rng);
            let mut events = vec![("ipp.session.created", None, None)];
            if rng.random_bool(0.9) || matches!(fate, Fate::Finalized) {
                events.push(("ipp.session.activated", None, None));
            }
            let failures = if rng.random_bool(0.2) {
                rng.random_range(1..=3)
            } else {
                0
            };
            for _ in 0..failures {
                let reason =
                    ["card_declined", "insufficient_funds", "timeout"][rng.random_range(0..3)];
                events.push(("ipp.payment.failed", None, Some(reason)));
            }
            let order_id = match fate {
                Fate::Finalized => {
                    let order = Uuid::from_u128(rng.random());
                    let kind = if rng.random_bool(0.1) {
                        "ipp.payment.finalized"
                    } else {
                        "ipp.session.finalized"
                    };
                    events.push((kind, Some(order), None));
                    Some(order)
                }
                Fate::Cancelled => {
                    events.push(("ipp.session.cancelled", None, None));
                    None
                }
                Fate::Abandoned => None,
            };
            let status = match (fate, events.len()) {
                (Fate::Finalized, _) => "finalized",
                (Fate::Cancelled, _) => "cancelled",
                (Fate::Abandoned, _) if events.iter().any(|e| e.0 == "ipp.session.activated") => {
                    "activated"
                }
                (Fate::Abandoned, _) => "created",
            };
            sessions.insert(
                session_id,
                ExpectedSession {
                    session_id,
                    merchant_id: merchant.clone(),
                    status,
                    order_id,
                    failed_attempts: failures,
                    event_count: events.len() as i32,
                },
            );
            for (i, (event_type, order, reason)) in events.into_iter().enumerate() {
                at += Duration::milliseconds(rng.random_range(200..20_000)) + nanos(&mut rng);
                let event_id = format!("kevt_{}_{i}", session_id.simple());
                let body = json!({
                    "id": event_id, "merchant_id": merchant,
                    "timestamp": ipp_schemas::record::format_timestamp(at),
                    "type": event_type,
                    "data": {"session_id": session_id, "order_id": order, "failure_reason": reason},
                });
                natural.push(Delivery {
                    event_id,
                    event_type: event_type.to_owned(),
                    session_id: Some(session_id),
                    body: serde_json::to_vec(&body).expect("json"),
                    is_duplicate: false,
                });
            }
            if rng.random_bool(spec.other_event_rate.clamp(0.0, 1.0)) {
                let event_id = format!("kevt_other_{}", Uuid::from_u128(rng.random()).simple());
                let order = order_id.unwrap_or_else(|| Uuid::from_u128(rng.random()));
                let body = json!({
                    "id": event_id, "merchant_id": merchant,
                    "timestamp": ipp_schemas::record::format_timestamp(at),
                    "type": "order.created", "data": {"order_id": order},
                });
                natural.push(Delivery {
                    event_id,
                    event_type: "order.created".into(),
                    session_id: None,
                    body: serde_json::to_vec(&body).expect("json"),
                    is_duplicate: false,
                });
            }
        }
        let mut deliveries = Vec::with_capacity(natural.len() * 11 / 10);
        for delivery in natural {
            let duplicate =
                delivery.is_ipp() && rng.random_bool(spec.duplicate_rate.clamp(0.0, 1.0));
            if duplicate {
                deliveries.push(Delivery {
                    is_duplicate: true,
                    ..delivery.clone()
                });
            }
            deliveries.push(delivery);
        }
        shuffle_locally(&mut deliveries, spec.shuffle_window, &mut rng);
        Self {
            deliveries,
            sessions,
        }
    }

    pub fn finalized_orders(&self) -> impl Iterator<Item = (Uuid, Uuid)> + '_ {
        self.sessions
            .values()
            .filter_map(|s| s.order_id.map(|order| (s.session_id, order)))
    }
}

fn nanos(rng: &mut StdRng) -> Duration {
    Duration::nanoseconds(rng.random_range(0..1_000_000_000))
}

/// Shuffles within consecutive windows: deliveries arrive out of order, but a session's
/// events still arrive roughly when the session happens, as in real traffic.
fn shuffle_locally(deliveries: &mut [Delivery], window: usize, rng: &mut StdRng) {
    if window < 2 {
        return;
    }
    for chunk in deliveries.chunks_mut(window) {
        chunk.shuffle(rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_workload_and_a_realistic_mix() {
        let spec = WorkloadSpec::default();
        let (a, b) = (Workload::generate(&spec), Workload::generate(&spec));
        assert_eq!(a.deliveries.len(), b.deliveries.len());
        assert!(a
            .deliveries
            .iter()
            .zip(&b.deliveries)
            .all(|(x, y)| x.body == y.body));
        let count = |status| a.sessions.values().filter(|s| s.status == status).count();
        assert!(count("finalized") > spec.sessions / 2);
        assert!(count("cancelled") > 0);
        assert!(a.sessions.values().any(|s| s.failed_attempts > 0));
        assert!(a.deliveries.iter().any(|d| d.is_duplicate));
        assert!(a.deliveries.iter().any(|d| !d.is_ipp()));
        assert!(a
            .deliveries
            .iter()
            .any(|d| d.event_type == "ipp.payment.finalized"));
        // Out of order: some session's finalized event arrives before its created event.
        let position = |id: &str| a.deliveries.iter().position(|d| d.event_id == id).unwrap();
        let reordered = a.sessions.keys().any(|s| {
            position(&format!("kevt_{}_0", s.simple()))
                > position(&format!("kevt_{}_1", s.simple()))
        });
        assert!(reordered, "no session arrives out of order");
    }
}
