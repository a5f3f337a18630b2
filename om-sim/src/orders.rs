//! The order model and the Order Management operations on it, as Kustom documents them:
//! amounts in minor units, the documented statuses and the documented 403s.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::OmError;

/// The authorized amount (minor units) of an order nobody seeded: 1 000 to 99 999, derived
/// from the id alone so that a test can compute the amount it expects to be captured.
pub fn authorized_amount_for(order_id: &Uuid) -> i64 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = order_id
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    1_000 + (hash % 99_000) as i64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Authorized,
    PartCaptured,
    Captured,
    Cancelled,
    Expired,
    Closed,
}

impl OrderStatus {
    /// Orders in these states accept no capture, cancel or release.
    fn is_final(self) -> bool {
        matches!(self, Self::Cancelled | Self::Expired | Self::Closed)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Capture {
    pub capture_id: Uuid,
    pub captured_amount: i64,
    pub reference: Option<String>,
    pub description: Option<String>,
    pub captured_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refund {
    pub refund_id: Uuid,
    pub refunded_amount: i64,
    pub reference: Option<String>,
    pub description: Option<String>,
    pub refunded_at: DateTime<Utc>,
}

/// A dispute the cardholder opened (`POST /_sim/orders/{id}/disputes`). Kustom's and
/// Klarna's order documents have no disputes field, so only `/_sim/orders/{id}` shows
/// them.
#[derive(Debug, Clone, Serialize)]
pub struct Dispute {
    pub dispute_id: String,
    /// Any text the test sets; `OPEN` when opened.
    pub status: String,
    pub reason: Option<String>,
    pub disputed_amount: i64,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Effects actually applied by API calls (seeding is not an effect): what tests count.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Effects {
    pub captures: u64,
    pub refunds: u64,
    pub cancels: u64,
    pub releases: u64,
}

#[derive(Debug, Clone)]
pub struct Order {
    pub order_id: Uuid,
    /// The account the order belongs to: seeded, or the first that called it. Another
    /// account's calls get 404 NO_SUCH_ORDER.
    pub merchant_id: Option<String>,
    pub status: OrderStatus,
    pub order_amount: i64,
    pub original_order_amount: i64,
    pub captured_amount: i64,
    pub refunded_amount: i64,
    /// Set by release-remaining-authorization: nothing more can be captured.
    pub released: bool,
    /// Seeded as missing: every call answers 404 NO_SUCH_ORDER.
    pub missing: bool,
    /// Seeded to refuse captures with 403 CAPTURE_NOT_ALLOWED although money remains
    /// authorized, as Kustom does for an order it has locked (for example in a dispute).
    pub refuse_captures: bool,
    /// Fields left out of `GET …/orders/{order_id}`, to see how a client copes with an
    /// answer that lacks what it needs.
    pub omit_fields: Vec<String>,
    pub purchase_currency: String,
    pub captures: Vec<Capture>,
    pub refunds: Vec<Refund>,
    pub disputes: Vec<Dispute>,
    pub effects: Effects,
}

/// The order as `GET …/orders/{order_id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    pub order_id: Uuid,
    pub status: OrderStatus,
    pub order_amount: i64,
    pub original_order_amount: i64,
    pub captured_amount: i64,
    pub refunded_amount: i64,
    pub remaining_authorized_amount: i64,
    pub purchase_currency: String,
    pub captures: Vec<Capture>,
    pub refunds: Vec<Refund>,
}

/// `PUT /_sim/orders/{order_id}`: the state an order starts from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// The account it belongs to; by default the first account that calls it (its
    /// webhooks carry `OM_SIM_MERCHANT_ID` until one does).
    pub merchant_id: Option<String>,
    pub status: Option<OrderStatus>,
    pub order_amount: Option<i64>,
    pub captured_amount: Option<i64>,
    pub refunded_amount: Option<i64>,
    pub purchase_currency: Option<String>,
    #[serde(default)]
    pub missing: bool,
    #[serde(default)]
    pub refuse_captures: bool,
    /// Fields to leave out of the order's GET answers, e.g. `remaining_authorized_amount`.
    #[serde(default)]
    pub omit_fields: Vec<String>,
}

/// Body of `POST …/captures`; fields the simulator does not use are accepted and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct CaptureRequest {
    pub captured_amount: Option<i64>,
    pub reference: Option<String>,
    pub description: Option<String>,
}

/// Body of `POST /_sim/orders/{id}/disputes`: a `status` also updates the dispute
/// right after opening it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisputeRequest {
    pub disputed_amount: Option<i64>,
    pub reason: Option<String>,
    pub status: Option<String>,
}

/// Body of `POST /_sim/orders/{id}/disputes/{dispute_id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisputeUpdate {
    pub status: String,
}

/// Body of `POST …/refunds`.
#[derive(Debug, Clone, Deserialize)]
pub struct RefundRequest {
    pub refunded_amount: Option<i64>,
    pub reference: Option<String>,
    pub description: Option<String>,
}

impl Order {
    /// An order nobody seeded: AUTHORIZED for `authorized_amount_for(id)`.
    pub fn authorized(order_id: Uuid, currency: &str) -> Self {
        let amount = authorized_amount_for(&order_id);
        Self {
            order_id,
            merchant_id: None,
            status: OrderStatus::Authorized,
            order_amount: amount,
            original_order_amount: amount,
            captured_amount: 0,
            refunded_amount: 0,
            released: false,
            missing: false,
            refuse_captures: false,
            omit_fields: Vec::new(),
            purchase_currency: currency.to_owned(),
            captures: Vec::new(),
            refunds: Vec::new(),
            disputes: Vec::new(),
            effects: Effects::default(),
        }
    }

    /// A fresh order in the seeded state. Amounts already captured or refunded appear as
    /// one capture or refund each so that the order stays consistent (cancel refuses it).
    pub fn seeded(order_id: Uuid, seed: &Seed, currency: &str) -> Result<Self, OmError> {
        let mut order = Self::authorized(
            order_id,
            seed.purchase_currency.as_deref().unwrap_or(currency),
        );
        if seed
            .merchant_id
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return Err(OmError::BadValue("merchant_id must not be empty".into()));
        }
        order.merchant_id.clone_from(&seed.merchant_id);
        order.missing = seed.missing;
        order.refuse_captures = seed.refuse_captures;
        order.omit_fields = seed.omit_fields.clone();
        if let Some(amount) = seed.order_amount {
            if amount < 0 {
                return Err(OmError::BadValue("order_amount must be >= 0".into()));
            }
            order.order_amount = amount;
            order.original_order_amount = amount;
        }
        // A CAPTURED seed without an amount means captured in full.
        let captured = seed.captured_amount.unwrap_or(match seed.status {
            Some(OrderStatus::Captured) => order.order_amount,
            _ => 0,
        });
        let refunded = seed.refunded_amount.unwrap_or(0);
        if !(0..=order.order_amount).contains(&captured) {
            return Err(OmError::BadValue(
                "captured_amount must be between 0 and order_amount".into(),
            ));
        }
        if !(0..=captured).contains(&refunded) {
            return Err(OmError::BadValue(
                "refunded_amount must be between 0 and captured_amount".into(),
            ));
        }
        let now = Utc::now();
        if captured > 0 {
            order.captured_amount = captured;
            order.captures.push(Capture {
                capture_id: Uuid::new_v4(),
                captured_amount: captured,
                reference: Some("seeded".into()),
                description: None,
                captured_at: now,
            });
        }
        if refunded > 0 {
            order.refunded_amount = refunded;
            order.refunds.push(Refund {
                refund_id: Uuid::new_v4(),
                refunded_amount: refunded,
                reference: Some("seeded".into()),
                description: None,
                refunded_at: now,
            });
        }
        order.status = match seed.status {
            Some(status) => status,
            None => order.capture_status(),
        };
        Ok(order)
    }

    pub fn remaining_authorized_amount(&self) -> i64 {
        if self.status.is_final() || self.released || self.status == OrderStatus::Captured {
            0
        } else {
            (self.order_amount - self.captured_amount).max(0)
        }
    }

    pub fn view(&self) -> OrderView {
        OrderView {
            order_id: self.order_id,
            status: self.status,
            order_amount: self.order_amount,
            original_order_amount: self.original_order_amount,
            captured_amount: self.captured_amount,
            refunded_amount: self.refunded_amount,
            remaining_authorized_amount: self.remaining_authorized_amount(),
            purchase_currency: self.purchase_currency.clone(),
            captures: self.captures.clone(),
            refunds: self.refunds.clone(),
        }
    }

    /// The status that the captured amount implies.
    fn capture_status(&self) -> OrderStatus {
        if self.captured_amount == 0 {
            OrderStatus::Authorized
        } else if self.captured_amount >= self.order_amount {
            OrderStatus::Captured
        } else {
            OrderStatus::PartCaptured
        }
    }

    fn exists(&self) -> Result<(), OmError> {
        if self.missing {
            Err(OmError::NoSuchOrder(self.order_id))
        } else {
            Ok(())
        }
    }

    pub fn get(&self) -> Result<OrderView, OmError> {
        self.exists()?;
        Ok(self.view())
    }

    pub fn capture(&mut self, request: CaptureRequest) -> Result<Capture, OmError> {
        self.exists()?;
        let amount = request
            .captured_amount
            .ok_or_else(|| OmError::BadValue("captured_amount is required".into()))?;
        if amount < 1 {
            return Err(OmError::BadValue("captured_amount must be >= 1".into()));
        }
        if request.reference.as_ref().is_some_and(|r| r.len() > 255) {
            return Err(OmError::BadValue("reference is longer than 255".into()));
        }
        if self.status.is_final() {
            return Err(OmError::CaptureNotAllowed(format!(
                "order is {}",
                status_name(self.status)
            )));
        }
        if self.refuse_captures {
            return Err(OmError::CaptureNotAllowed(
                "captures are not allowed on this order".into(),
            ));
        }
        let remaining = self.remaining_authorized_amount();
        if amount > remaining {
            return Err(OmError::CaptureNotAllowed(format!(
                "captured_amount {amount} exceeds remaining authorized amount {remaining}"
            )));
        }
        let capture = Capture {
            capture_id: Uuid::new_v4(),
            captured_amount: amount,
            reference: request.reference,
            description: request.description,
            captured_at: Utc::now(),
        };
        self.captured_amount += amount;
        self.status = if self.released {
            OrderStatus::Captured
        } else {
            self.capture_status()
        };
        self.captures.push(capture.clone());
        self.effects.captures += 1;
        Ok(capture)
    }

    pub fn refund(&mut self, request: RefundRequest) -> Result<Refund, OmError> {
        self.exists()?;
        let amount = request
            .refunded_amount
            .ok_or_else(|| OmError::BadValue("refunded_amount is required".into()))?;
        if amount < 1 {
            return Err(OmError::BadValue("refunded_amount must be >= 1".into()));
        }
        let refundable = self.captured_amount - self.refunded_amount;
        if amount > refundable {
            return Err(OmError::RefundNotAllowed(format!(
                "refunded_amount {amount} exceeds the refundable amount {refundable}"
            )));
        }
        let refund = Refund {
            refund_id: Uuid::new_v4(),
            refunded_amount: amount,
            reference: request.reference,
            description: request.description,
            refunded_at: Utc::now(),
        };
        self.refunded_amount += amount;
        self.refunds.push(refund.clone());
        self.effects.refunds += 1;
        Ok(refund)
    }

    /// Opens a dispute over `disputed_amount` (default: everything captured), status
    /// `OPEN`. Only a captured order can be disputed.
    pub fn open_dispute(&mut self, request: &DisputeRequest) -> Result<Dispute, OmError> {
        self.exists()?;
        if self.captured_amount == 0 {
            return Err(OmError::NotAllowed(
                "an order without captures cannot be disputed".into(),
            ));
        }
        let amount = request.disputed_amount.unwrap_or(self.captured_amount);
        if !(1..=self.captured_amount).contains(&amount) {
            return Err(OmError::BadValue(format!(
                "disputed_amount must be between 1 and the captured amount {}",
                self.captured_amount
            )));
        }
        let now = Utc::now();
        let dispute = Dispute {
            dispute_id: Uuid::new_v4().to_string(),
            status: "OPEN".into(),
            reason: request.reason.clone(),
            disputed_amount: amount,
            opened_at: now,
            updated_at: now,
        };
        self.disputes.push(dispute.clone());
        Ok(dispute)
    }

    /// Sets the status of one of the order's disputes.
    pub fn update_dispute(&mut self, dispute_id: &str, status: &str) -> Result<Dispute, OmError> {
        self.exists()?;
        if status.trim().is_empty() {
            return Err(OmError::BadValue("status must not be empty".into()));
        }
        let dispute = self
            .disputes
            .iter_mut()
            .find(|d| d.dispute_id == dispute_id)
            .ok_or(OmError::NotFound)?;
        dispute.status = status.to_owned();
        dispute.updated_at = Utc::now();
        Ok(dispute.clone())
    }

    /// Whole order only, and only while nothing has been captured.
    pub fn cancel(&mut self) -> Result<(), OmError> {
        self.exists()?;
        if !self.captures.is_empty() {
            return Err(OmError::CancelNotAllowed("order has captures".into()));
        }
        if self.status != OrderStatus::Authorized {
            return Err(OmError::CancelNotAllowed(format!(
                "order is {}",
                status_name(self.status)
            )));
        }
        self.status = OrderStatus::Cancelled;
        self.effects.cancels += 1;
        Ok(())
    }

    /// No further captures: a part-captured order becomes CAPTURED. An order without
    /// captures must be cancelled instead.
    pub fn release_remaining_authorization(&mut self) -> Result<(), OmError> {
        self.exists()?;
        match self.status {
            OrderStatus::PartCaptured => {
                self.released = true;
                self.status = OrderStatus::Captured;
                self.effects.releases += 1;
                Ok(())
            }
            // Nothing remains to release.
            OrderStatus::Captured => Ok(()),
            status => Err(OmError::NotAllowed(format!(
                "cannot release the remaining authorization of an order that is {}",
                status_name(status)
            ))),
        }
    }
}

fn status_name(status: OrderStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(amount: i64) -> CaptureRequest {
        CaptureRequest {
            captured_amount: Some(amount),
            reference: None,
            description: None,
        }
    }

    #[test]
    fn derived_amount_is_stable_and_in_range() {
        for _ in 0..1000 {
            let id = Uuid::new_v4();
            let amount = authorized_amount_for(&id);
            assert!((1_000..100_000).contains(&amount));
            assert_eq!(amount, authorized_amount_for(&id));
        }
    }

    #[test]
    fn partial_then_full_capture_then_refusal() {
        let mut order = Order::authorized(Uuid::new_v4(), "EUR");
        let total = order.order_amount;
        order.capture(capture(100)).unwrap();
        assert_eq!(order.status, OrderStatus::PartCaptured);
        assert_eq!(order.remaining_authorized_amount(), total - 100);
        order.capture(capture(total - 100)).unwrap();
        assert_eq!(order.status, OrderStatus::Captured);
        assert!(matches!(
            order.capture(capture(1)),
            Err(OmError::CaptureNotAllowed(_))
        ));
        assert!(matches!(order.cancel(), Err(OmError::CancelNotAllowed(_))));
        assert_eq!(order.effects.captures, 2);
    }

    #[test]
    fn cancelled_order_refuses_capture() {
        let mut order = Order::authorized(Uuid::new_v4(), "EUR");
        order.cancel().unwrap();
        assert!(matches!(
            order.capture(capture(1)),
            Err(OmError::CaptureNotAllowed(_))
        ));
        assert_eq!(order.remaining_authorized_amount(), 0);
    }

    #[test]
    fn refund_is_bounded_by_captured() {
        let mut order = Order::authorized(Uuid::new_v4(), "EUR");
        order.capture(capture(500)).unwrap();
        let refund = |amount| RefundRequest {
            refunded_amount: Some(amount),
            reference: None,
            description: None,
        };
        assert!(matches!(
            order.refund(refund(501)),
            Err(OmError::RefundNotAllowed(_))
        ));
        order.refund(refund(500)).unwrap();
        assert_eq!(order.refunded_amount, 500);
    }

    #[test]
    fn release_ends_captures() {
        let mut order = Order::authorized(Uuid::new_v4(), "EUR");
        assert!(order.release_remaining_authorization().is_err());
        order.capture(capture(10)).unwrap();
        order.release_remaining_authorization().unwrap();
        assert_eq!(order.status, OrderStatus::Captured);
        assert_eq!(order.remaining_authorized_amount(), 0);
        assert!(order.capture(capture(1)).is_err());
    }

    #[test]
    fn seeding_is_validated() {
        let id = Uuid::new_v4();
        let seed = Seed {
            order_amount: Some(100),
            captured_amount: Some(101),
            ..Seed::default()
        };
        assert!(Order::seeded(id, &seed, "EUR").is_err());
        let seed = Seed {
            order_amount: Some(100),
            captured_amount: Some(40),
            ..Seed::default()
        };
        let order = Order::seeded(id, &seed, "EUR").unwrap();
        assert_eq!(order.status, OrderStatus::PartCaptured);
        assert_eq!(order.remaining_authorized_amount(), 60);
        assert_eq!(order.effects.captures, 0);
    }
}
