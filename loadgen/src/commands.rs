//! The demo's money commands: a client of ipp-actions' commands API (`/v1/...`) and the
//! plan of refunds and cancels the demo issues once its sessions are captured, each with
//! the outcome it must have.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use uuid::Uuid;

/// The token `scripts/run` and docker-compose.yml configure when ACTIONS_API_TOKENS is
/// unset: local, for the simulator only.
pub const DEMO_TOKENS: &str = "demo:local-demo-token";

/// The bearer token of the first `NAME:TOKEN` (or bare `TOKEN`) in ACTIONS_API_TOKENS.
pub fn first_token(tokens: &str) -> &str {
    let first = tokens.split(',').next().unwrap_or_default().trim();
    first.split_once(':').map_or(first, |(_, token)| token)
}

/// The token to show in a printed example: the local demo token, else a placeholder (a
/// token of the operator's own is a secret and is never printed).
pub fn printable_token(tokens: &str) -> &str {
    if tokens == DEMO_TOKENS {
        first_token(tokens)
    } else {
        "<a token of ACTIONS_API_TOKENS>"
    }
}

/// A command as the API answered it (its JSON state).
pub type CommandState = Value;

pub struct CommandsClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl CommandsClient {
    pub fn new(http: reqwest::Client, base: &str, token: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// `POST /v1/orders/{order_id}/{path}` with an Idempotency-Key: the HTTP status and
    /// the JSON body (a command's state on 202, `{"error", "message"}` otherwise).
    pub async fn post(
        &self,
        order_id: Uuid,
        path: &str,
        body: Option<&Value>,
        key: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}/v1/orders/{order_id}/{path}", self.base);
        let mut request = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header("Idempotency-Key", key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .json()
            .await
            .with_context(|| format!("POST {url} answered {status} without JSON"))?;
        Ok((status, body))
    }

    /// `GET /v1/commands/{id}`.
    pub async fn get(&self, command_id: &str) -> anyhow::Result<CommandState> {
        let url = format!("{}/v1/commands/{command_id}", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("GET {url} answered {status} without JSON"))?;
        if !status.is_success() {
            bail!("GET {url} answered {status}: {body}");
        }
        Ok(body)
    }

    /// Polls a command until it is no longer pending, or until `deadline` (then its
    /// last, pending, state).
    pub async fn wait(&self, command_id: &str, deadline: Instant) -> anyhow::Result<CommandState> {
        loop {
            let state = self.get(command_id).await?;
            if state["status"] != "pending" || Instant::now() > deadline {
                return Ok(state);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One command of the demo and the outcome it must have.
#[derive(Debug, Clone)]
pub struct Planned {
    /// What it shows, in a few words.
    pub what: &'static str,
    pub order_id: Uuid,
    /// The path under `/v1/orders/{order_id}/`.
    pub path: &'static str,
    pub amount: Option<i64>,
    pub expect_status: &'static str,
    /// Order Management's `error_code` of the expected refusal.
    pub expect_error: Option<&'static str>,
}

impl Planned {
    pub fn body(&self) -> Option<Value> {
        self.amount.map(|amount| json!({ "amount": amount }))
    }
}

/// Orders the plan needs: two seeded to refuse captures (so that they stay uncaptured
/// and can be cancelled) and four captured ones.
pub const ORDERS_NEEDED: usize = 6;

/// The plan over `uncaptured` (two orders whose automatic capture was refused) and
/// `captured` (four orders with the amount each had captured):
/// a partial refund, a full refund, a partial refund followed by one for more than
/// remains (refused), two cancels of uncaptured orders, and a cancel of a captured order
/// (refused).
pub fn plan(uncaptured: [Uuid; 2], captured: [(Uuid, i64); 4]) -> Vec<Planned> {
    let [(a, a_amount), (b, b_amount), (c, c_amount), (d, _)] = captured;
    let refund = |what, order_id, amount: i64, ok: bool| Planned {
        what,
        order_id,
        path: "refunds",
        amount: Some(amount.max(1)),
        expect_status: if ok { "succeeded" } else { "failed" },
        expect_error: (!ok).then_some("REFUND_NOT_ALLOWED"),
    };
    let cancel = |what, order_id, ok: bool| Planned {
        what,
        order_id,
        path: "cancel",
        amount: None,
        expect_status: if ok { "succeeded" } else { "failed" },
        expect_error: (!ok).then_some("CANCEL_NOT_ALLOWED"),
    };
    vec![
        refund("partial refund", a, a_amount / 3, true),
        refund("full refund", b, b_amount, true),
        refund("half refund", c, c_amount / 2, true),
        // Waits for the half refund (one action of an order at a time), then exceeds
        // what remains refundable.
        refund("refund more than remains", c, c_amount, false),
        cancel("cancel, never captured", uncaptured[0], true),
        cancel("cancel, never captured", uncaptured[1], true),
        cancel("cancel a captured order", d, false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_token_is_the_part_after_its_name() {
        assert_eq!(first_token(DEMO_TOKENS), "local-demo-token");
        assert_eq!(printable_token(DEMO_TOKENS), "local-demo-token");
        assert!(!printable_token("backoffice:s3cret").contains("s3cret"));
        assert_eq!(first_token("bare-token,b:other"), "bare-token");
        assert_eq!(first_token(" a:x:y , b:z"), "x:y");
    }

    #[test]
    fn the_plan_refunds_no_more_than_was_captured_but_once() {
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
        let plan = plan(
            [ids[0], ids[1]],
            [
                (ids[2], 1000),
                (ids[3], 2000),
                (ids[4], 3000),
                (ids[5], 4000),
            ],
        );
        let refunded = |order: Uuid| -> i64 {
            plan.iter()
                .filter(|p| p.order_id == order && p.expect_status == "succeeded")
                .filter_map(|p| p.amount)
                .sum()
        };
        assert_eq!(refunded(ids[2]), 333);
        assert_eq!(refunded(ids[3]), 2000);
        assert_eq!(refunded(ids[4]), 1500);
        let refused = plan.iter().filter(|p| p.expect_error.is_some()).count();
        assert_eq!(refused, 2);
    }
}
