//! The simulator's state: orders, idempotency keys, the call log, counters and the fault
//! dice. One mutex guards everything an operation touches and is never held across an
//! await, so concurrent requests (even two with the same idempotency key) are serialized
//! and an operation is applied at most once per key.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use http::StatusCode;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    config::{Config, Faults, Limits},
    error::OmError,
    limits::AccountLimiter,
    orders::{
        CaptureRequest, Dispute, DisputeRequest, Effects, Order, OrderView, RefundRequest, Seed,
    },
    reply::Reply,
    webhooks::{OrderEvent, Webhooks},
};

/// What a request to the Order Management endpoints asks for.
#[derive(Debug, Clone)]
pub enum Operation {
    GetOrder,
    GetCapture(String),
    Capture(CaptureRequest),
    Refund(RefundRequest),
    Cancel,
    ReleaseRemainingAuthorization,
}

impl Operation {
    /// POSTs change the order and honour idempotency keys.
    pub fn is_post(&self) -> bool {
        !matches!(self, Self::GetOrder | Self::GetCapture(_))
    }
}

/// The fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    Fail(StatusCode),
    /// 429 with the Retry-After of [`Faults::retry_after_header`].
    RateLimit,
    /// 429 because the account is over its rate limit ([`Limits`]): not a dice roll, but
    /// logged like the faults so a test can tell the two 429s apart.
    AccountLimit,
    /// Sleep `ms`; `after_effect` when the operation is applied before the sleep.
    Hang {
        ms: u64,
        after_effect: bool,
    },
    /// Close the connection without an answer, before or after the operation.
    Drop {
        after_effect: bool,
    },
}

impl Fault {
    pub fn name(&self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Fail(_) => Some("error"),
            Self::RateLimit => Some("rate_limit"),
            Self::AccountLimit => Some("account_limit"),
            Self::Hang { .. } => Some("hang"),
            Self::Drop { .. } => Some("drop"),
        }
    }
}

/// One request received on the Order Management endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub seq: u64,
    pub method: String,
    pub path: String,
    /// The account (merchant id) whose key the request carried; null without a valid key.
    pub account: Option<String>,
    pub idempotency_key: Option<String>,
    /// The request's `traceparent` header, as sent.
    pub traceparent: Option<String>,
    /// The status answered; null when the connection was dropped or the request hung.
    pub status: Option<u16>,
    /// Answered from the idempotency store, with no new effect.
    pub replayed: bool,
    /// The injected fault, if any: error, rate_limit, hang or drop; account_limit for a
    /// 429 of the account's rate limit.
    pub fault: Option<&'static str>,
    /// Whether the fault came after the operation was applied.
    pub after_effect: bool,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub requests: u64,
    pub captures_applied: u64,
    pub captures_by_order: BTreeMap<Uuid, u64>,
    pub refunds_applied: u64,
    pub cancels_applied: u64,
    pub releases_applied: u64,
    /// Keyed by the status code as a string, e.g. "201".
    pub by_status: BTreeMap<String, u64>,
    pub replays: u64,
    /// Requests refused with 429 because their account was over its rate limit (also
    /// counted in `by_status`, with the injected 429s).
    pub rate_limited: u64,
    pub dropped: u64,
    pub hung: u64,
}

/// `GET /_sim/orders/{order_id}`: the order plus what calls did to it.
#[derive(Debug, Clone, Serialize)]
pub struct SimOrder {
    #[serde(flatten)]
    pub order: OrderView,
    /// The account it belongs to; null until an account calls it.
    pub merchant_id: Option<String>,
    pub disputes: Vec<Dispute>,
    pub missing: bool,
    pub refuse_captures: bool,
    pub effects: Effects,
}

struct StoredReply {
    reply: Reply,
    stored_at: Instant,
}

#[derive(Default)]
struct Inner {
    orders: HashMap<Uuid, Order>,
    idempotency: HashMap<String, StoredReply>,
    calls: Vec<Call>,
    /// `seq` of `calls[0]`: the log can be cleared while requests are in flight.
    calls_base: u64,
    next_seq: u64,
    stats: Stats,
}

struct Dice {
    faults: Faults,
    rng: StdRng,
}

pub struct Sim {
    /// Every account's API key and merchant id, OM_SIM_API_KEY's first.
    accounts: Vec<(String, String)>,
    currency: String,
    merchant_id: String,
    idempotency_ttl: Duration,
    inner: Mutex<Inner>,
    dice: Mutex<Dice>,
    limiter: Mutex<AccountLimiter>,
    webhooks: Arc<Webhooks>,
}

impl Sim {
    pub fn new(config: &Config, webhooks: Arc<Webhooks>) -> Self {
        Self {
            accounts: std::iter::once((config.api_key.expose(), config.merchant_id.as_str()))
                .chain(
                    config
                        .accounts
                        .iter()
                        .map(|a| (a.api_key.expose(), a.merchant_id.as_str())),
                )
                .map(|(key, merchant)| (key.to_owned(), merchant.to_owned()))
                .collect(),
            currency: config.currency.clone(),
            merchant_id: config.merchant_id.clone(),
            webhooks,
            idempotency_ttl: Duration::from_secs(config.idempotency_ttl_secs),
            inner: Mutex::new(Inner::default()),
            dice: Mutex::new(Dice {
                faults: config.faults.clone(),
                rng: StdRng::seed_from_u64(config.seed),
            }),
            limiter: Mutex::new(AccountLimiter::new(config.limits.clone())),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave half an operation behind (every
        // operation validates before it mutates), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dice(&self) -> MutexGuard<'_, Dice> {
        self.dice.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn limiter(&self) -> MutexGuard<'_, AccountLimiter> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account (merchant id) of the key an `Authorization` header carries, as
    /// `Basic <key>` or `Basic base64(<any user>:<key>)`; `None`: no key we know.
    pub fn account_of(&self, header: Option<&str>) -> Option<&str> {
        use base64::Engine as _;
        let token = header.and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then(|| token.trim())
        })?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let paired_key = decoded
            .as_deref()
            .and_then(|pair| Some(pair.split_once(':')?.1));
        self.accounts
            .iter()
            .find(|(key, _)| token == key || paired_key == Some(key.as_str()))
            .map(|(_, merchant)| merchant.as_str())
    }

    /// Takes a token of `account`'s rate limit, or says how long until one is back.
    pub fn take_token(&self, account: &str) -> Result<(), Duration> {
        self.limiter().take(account, Instant::now())
    }

    pub fn limits(&self) -> Limits {
        self.limiter().limits().clone()
    }

    pub fn set_limits(&self, limits: Limits) {
        self.limiter().replace(limits);
    }

    pub fn faults(&self) -> Faults {
        self.dice().faults.clone()
    }

    pub fn set_faults(&self, faults: Faults, seed: Option<u64>) {
        let mut dice = self.dice();
        dice.faults = faults;
        if let Some(seed) = seed {
            dice.rng = StdRng::seed_from_u64(seed);
        }
    }

    /// Rolls the fault for one request: one draw split into drop, hang, 5xx and 429 bands,
    /// then, for hangs and drops on POSTs, whether they come after the effect.
    pub fn roll(&self, is_post: bool) -> (Fault, u64) {
        let mut dice = self.dice();
        let f = dice.faults.clone();
        let draw: f64 = dice.rng.random();
        let mut band = 0.0;
        let mut hit = |rate: f64| {
            band += rate;
            draw < band
        };
        let fault = if hit(f.drop_rate) {
            Fault::Drop {
                after_effect: is_post && dice.rng.random_bool(f.fault_after_effect_rate),
            }
        } else if hit(f.hang_rate) {
            Fault::Hang {
                ms: f.hang_ms,
                after_effect: is_post && dice.rng.random_bool(f.fault_after_effect_rate),
            }
        } else if hit(f.fail_rate) {
            Fault::Fail(if dice.rng.random_bool(0.5) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            })
        } else if hit(f.rate_limit_rate) {
            Fault::RateLimit
        } else {
            Fault::None
        };
        (fault, f.latency_ms)
    }

    /// Logs a request on arrival and returns its sequence number.
    pub fn log_call(
        &self,
        method: &str,
        path: &str,
        idempotency_key: Option<&str>,
        account: Option<&str>,
        traceparent: Option<&str>,
    ) -> u64 {
        let mut inner = self.inner();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.stats.requests += 1;
        inner.calls.push(Call {
            seq,
            method: method.to_owned(),
            path: path.to_owned(),
            account: account.map(str::to_owned),
            idempotency_key: idempotency_key.map(str::to_owned),
            traceparent: traceparent.map(str::to_owned),
            status: None,
            replayed: false,
            fault: None,
            after_effect: false,
            at: Utc::now(),
        });
        seq
    }

    /// Records how a logged request ended. `status` is None when it got no answer.
    pub fn finish_call(&self, seq: u64, status: Option<StatusCode>, replayed: bool, fault: Fault) {
        let mut inner = self.inner();
        let stats = &mut inner.stats;
        match status {
            Some(status) => {
                *stats
                    .by_status
                    .entry(status.as_u16().to_string())
                    .or_default() += 1
            }
            None if matches!(fault, Fault::Drop { .. }) => stats.dropped += 1,
            None => stats.hung += 1,
        }
        if replayed {
            stats.replays += 1;
        }
        if fault == Fault::AccountLimit {
            stats.rate_limited += 1;
        }
        let base = inner.calls_base;
        if let Some(call) = seq
            .checked_sub(base)
            .and_then(|i| inner.calls.get_mut(usize::try_from(i).ok()?))
        {
            call.status = status.map(|s| s.as_u16());
            call.replayed = replayed;
            call.fault = fault.name();
            call.after_effect = matches!(
                fault,
                Fault::Hang {
                    after_effect: true,
                    ..
                } | Fault::Drop { after_effect: true }
            );
        }
    }

    /// Applies one Order Management operation as `account`. For POSTs with an idempotency
    /// key, a key this account used within the TTL returns the stored reply (`true`) and
    /// changes nothing.
    pub fn apply(
        &self,
        account: &str,
        order_id: &str,
        operation: Result<Operation, OmError>,
        idempotency_key: Option<&str>,
    ) -> (Reply, bool) {
        let mut inner = self.inner();
        // Each account has its keys, as at Kustom: a newline cannot be in a header value.
        let scoped = idempotency_key.map(|key| format!("{account}\n{key}"));
        let key = scoped
            .as_deref()
            .filter(|_| operation.as_ref().map(Operation::is_post).unwrap_or(true));
        if let Some(key) = key {
            let stored = inner.idempotency.get(key).map(|s| {
                (
                    s.stored_at.elapsed() < self.idempotency_ttl,
                    s.reply.clone(),
                )
            });
            match stored {
                Some((true, reply)) => return (reply, true),
                // Expired: the key is free again.
                Some((false, _)) => {
                    inner.idempotency.remove(key);
                }
                None => {}
            }
        }
        let result = operation.and_then(|op| {
            let order_id = parse_order_id(order_id)?;
            Ok(self.execute(&mut inner, account, order_id, op))
        });
        let (reply, keep) = match result {
            Ok(Ok(reply)) => (reply, true),
            Ok(Err(e)) | Err(e) => (e.reply(), e.is_outcome()),
        };
        if let (Some(key), true) = (key, keep) {
            inner.idempotency.insert(
                key.to_owned(),
                StoredReply {
                    reply: reply.clone(),
                    stored_at: Instant::now(),
                },
            );
        }
        (reply, false)
    }

    fn execute(
        &self,
        inner: &mut Inner,
        account: &str,
        order_id: Uuid,
        operation: Operation,
    ) -> Result<Reply, OmError> {
        let order = inner
            .orders
            .entry(order_id)
            .or_insert_with(|| Order::authorized(order_id, &self.currency));
        // Another account's order does not exist for this one.
        match &order.merchant_id {
            Some(owner) if owner != account => return Err(OmError::NoSuchOrder(order_id)),
            Some(_) => {}
            None => order.merchant_id = Some(account.to_owned()),
        }
        let base = format!("/ordermanagement/v1/orders/{order_id}");
        match operation {
            Operation::GetOrder => {
                let mut view = to_json(&order.get()?);
                if let Some(fields) = view.as_object_mut() {
                    for omitted in &order.omit_fields {
                        fields.remove(omitted);
                    }
                }
                Ok(Reply::json(StatusCode::OK, view))
            }
            Operation::GetCapture(capture_id) => {
                order.get()?;
                let capture = order
                    .captures
                    .iter()
                    .find(|c| c.capture_id.to_string() == capture_id)
                    .ok_or(OmError::NotFound)?;
                Ok(Reply::json(StatusCode::OK, to_json(capture)))
            }
            Operation::Capture(request) => {
                let capture = order.capture(request)?;
                self.webhooks.publish(
                    order.merchant_id.as_deref().unwrap_or(&self.merchant_id),
                    &OrderEvent::CaptureCreated {
                        order_id,
                        capture_id: capture.capture_id,
                    },
                );
                inner.stats.captures_applied += 1;
                *inner.stats.captures_by_order.entry(order_id).or_default() += 1;
                let id = capture.capture_id.to_string();
                Ok(
                    Reply::json(StatusCode::CREATED, serde_json::json!({ "capture_id": id }))
                        .header("location", format!("{base}/captures/{id}"))
                        .header("capture-id", id),
                )
            }
            Operation::Refund(request) => {
                let refund = order.refund(request)?;
                self.webhooks.publish(
                    order.merchant_id.as_deref().unwrap_or(&self.merchant_id),
                    &OrderEvent::RefundCreated {
                        order_id,
                        refund_id: refund.refund_id,
                    },
                );
                inner.stats.refunds_applied += 1;
                let id = refund.refund_id.to_string();
                Ok(
                    Reply::json(StatusCode::CREATED, serde_json::json!({ "refund_id": id }))
                        .header("location", format!("{base}/refunds/{id}"))
                        .header("refund-id", id),
                )
            }
            Operation::Cancel => {
                order.cancel()?;
                inner.stats.cancels_applied += 1;
                Ok(Reply::empty(StatusCode::NO_CONTENT))
            }
            Operation::ReleaseRemainingAuthorization => {
                order.release_remaining_authorization()?;
                inner.stats.releases_applied += 1;
                Ok(Reply::empty(StatusCode::NO_CONTENT))
            }
        }
    }

    pub fn seed_order(&self, order_id: &str, seed: &Seed) -> Result<SimOrder, OmError> {
        let order_id = parse_order_id(order_id)?;
        let order = Order::seeded(order_id, seed, &self.currency)?;
        let view = sim_order(&order);
        self.inner().orders.insert(order_id, order);
        Ok(view)
    }

    /// The order as the simulator sees it; an id never seen before becomes an order, as it
    /// would on its first API call.
    pub fn sim_order(&self, order_id: &str) -> Result<SimOrder, OmError> {
        let order_id = parse_order_id(order_id)?;
        let mut inner = self.inner();
        let order = inner
            .orders
            .entry(order_id)
            .or_insert_with(|| Order::authorized(order_id, &self.currency));
        Ok(sim_order(order))
    }

    /// A capture or refund made outside the Order Management API (in the Portal, by the
    /// POS): no key, no faults, not in the call log, but an effect like any other, with
    /// its webhook. An amount left out is everything that remains.
    pub fn apply_outside(&self, order_id: &str, operation: Operation) -> Reply {
        let result = parse_order_id(order_id).and_then(|order_id| {
            let mut inner = self.inner();
            let order = inner
                .orders
                .entry(order_id)
                .or_insert_with(|| Order::authorized(order_id, &self.currency));
            let operation = match operation {
                Operation::Capture(mut request) => {
                    request.captured_amount = request
                        .captured_amount
                        .or(Some(order.remaining_authorized_amount()));
                    Operation::Capture(request)
                }
                Operation::Refund(mut request) => {
                    request.refunded_amount = request
                        .refunded_amount
                        .or(Some(order.captured_amount - order.refunded_amount));
                    Operation::Refund(request)
                }
                other => other,
            };
            // As the Portal of the order's account (the default one's, for an order no
            // account has called yet).
            let account = order
                .merchant_id
                .clone()
                .unwrap_or_else(|| self.merchant_id.clone());
            self.execute(&mut inner, &account, order_id, operation)
        });
        result.unwrap_or_else(|e| e.reply())
    }

    /// Opens a dispute on the order (`dispute.created`), and updates it at once when the
    /// request has a `status` (`dispute.updated`).
    pub fn open_dispute(
        &self,
        order_id: &str,
        request: &DisputeRequest,
    ) -> Result<Dispute, OmError> {
        let order_id = parse_order_id(order_id)?;
        let mut inner = self.inner();
        let order = inner
            .orders
            .entry(order_id)
            .or_insert_with(|| Order::authorized(order_id, &self.currency));
        let mut dispute = order.open_dispute(request)?;
        self.webhooks.publish(
            order.merchant_id.as_deref().unwrap_or(&self.merchant_id),
            &OrderEvent::DisputeCreated {
                order_id,
                dispute_id: dispute.dispute_id.clone(),
            },
        );
        if let Some(status) = &request.status {
            dispute = order.update_dispute(&dispute.dispute_id, status)?;
            self.webhooks.publish(
                order.merchant_id.as_deref().unwrap_or(&self.merchant_id),
                &OrderEvent::DisputeUpdated {
                    order_id,
                    dispute_id: dispute.dispute_id.clone(),
                    status: dispute.status.clone(),
                },
            );
        }
        Ok(dispute)
    }

    /// Sets a dispute's status (`dispute.updated`).
    pub fn update_dispute(
        &self,
        order_id: &str,
        dispute_id: &str,
        status: &str,
    ) -> Result<Dispute, OmError> {
        let order_id = parse_order_id(order_id)?;
        let mut inner = self.inner();
        let order = inner
            .orders
            .get_mut(&order_id)
            .ok_or(OmError::NoSuchOrder(order_id))?;
        let dispute = order.update_dispute(dispute_id, status)?;
        self.webhooks.publish(
            order.merchant_id.as_deref().unwrap_or(&self.merchant_id),
            &OrderEvent::DisputeUpdated {
                order_id,
                dispute_id: dispute.dispute_id.clone(),
                status: dispute.status.clone(),
            },
        );
        Ok(dispute)
    }

    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner().calls.clone()
    }

    pub fn clear_calls(&self) {
        let mut inner = self.inner();
        inner.calls.clear();
        inner.calls_base = inner.next_seq;
    }

    pub fn stats(&self) -> Stats {
        self.inner().stats.clone()
    }

    pub fn clear_stats(&self) {
        self.inner().stats = Stats::default();
    }
}

fn parse_order_id(order_id: &str) -> Result<Uuid, OmError> {
    Uuid::parse_str(order_id).map_err(|_| OmError::InvalidOrderId(order_id.to_owned()))
}

fn sim_order(order: &Order) -> SimOrder {
    SimOrder {
        order: order.view(),
        merchant_id: order.merchant_id.clone(),
        disputes: order.disputes.clone(),
        missing: order.missing,
        refuse_captures: order.refuse_captures,
        effects: order.effects,
    }
}

fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}
