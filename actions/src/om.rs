//! The Kustom Order Management client: read an order, capture, refund, cancel, release
//! the remaining authorization. Every POST carries a `Klarna-Idempotency-Key`.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use reqwest::{header, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use ipp_schemas::trace::{TraceContext, TRACEPARENT};
use ipp_service::traces::{Kind, Span};
use ipp_service::{Accounts, Secret};

use crate::error::OmError;

pub const GET_ORDER: &str = "get_order";
pub const CAPTURE: &str = "capture";
pub const REFUND: &str = "refund";
pub const CANCEL: &str = "cancel";
pub const RELEASE: &str = "release_remaining_authorization";
pub const IDEMPOTENCY_HEADER: &str = "Klarna-Idempotency-Key";

/// The status an endpoint answers on success.
pub fn success_status(endpoint: &str) -> &'static str {
    match endpoint {
        CAPTURE | REFUND => "201",
        CANCEL | RELEASE => "204",
        _ => "200",
    }
}

/// The fields of an order this service reads. The ones a decision needs are required:
/// an answer without them is an error (retried, then the action fails), never a default
/// that could make the worker skip a capture.
#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    pub status: String,
    #[serde(default)]
    pub captured_amount: Option<i64>,
    pub remaining_authorized_amount: i64,
}

impl Order {
    /// Nothing can be captured any more, whatever remains.
    pub fn is_closed(&self) -> bool {
        matches!(self.status.as_str(), "CANCELLED" | "EXPIRED" | "CLOSED")
    }
}

#[derive(Debug, Serialize)]
struct CaptureRequest<'a> {
    captured_amount: i64,
    reference: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct RefundRequest<'a> {
    refunded_amount: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Capture {
    pub capture_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Refund {
    pub refund_id: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error_code: Option<String>,
    #[serde(default)]
    error_messages: Vec<String>,
    correlation_id: Option<String>,
}

/// Order Management for every account: one HTTP client (one connection pool) and the
/// `Authorization` of each account of the accounts file that has an `api_key`, beside the
/// default one (`KUSTOM_API_KEY`).
#[derive(Clone)]
pub struct OmClients {
    http: reqwest::Client,
    base_url: String,
    default: Option<String>,
    accounts: HashMap<String, String>,
}

impl OmClients {
    /// An empty `default_key` means none: an order of an account without a key of its
    /// own then waits (see [`OmClients::account`]).
    pub fn new(
        base_url: &str,
        default_key: &Secret,
        accounts: &Accounts,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .user_agent(concat!("ipp-actions/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let basic = |key: &Secret| format!("Basic {}", key.expose());
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            default: Some(default_key)
                .filter(|key| !key.expose().is_empty())
                .map(basic),
            accounts: accounts
                .iter()
                .filter_map(|(id, account)| Some((id.to_owned(), basic(account.api_key.as_ref()?))))
                .collect(),
        })
    }

    /// Whether some key is configured at all.
    pub fn has_keys(&self) -> bool {
        self.default.is_some() || !self.accounts.is_empty()
    }

    /// Order Management as the account `merchant_id` (an action's ledger row's): with its
    /// own key when the accounts file gives it one, else with the default key. Without
    /// either, `NoApiKey`: never another account's key.
    pub fn account(&self, merchant_id: Option<&str>) -> Result<OmClient<'_>, OmError> {
        let own = merchant_id.and_then(|id| self.accounts.get(id));
        let authorization = own
            .or(self.default.as_ref())
            .ok_or_else(|| OmError::NoApiKey {
                account: merchant_id.map(str::to_owned),
            })?;
        Ok(OmClient {
            http: &self.http,
            base_url: &self.base_url,
            authorization,
            trace: None,
        })
    }
}

/// Order Management as one account.
#[derive(Clone, Copy)]
pub struct OmClient<'a> {
    http: &'a reqwest::Client,
    base_url: &'a str,
    authorization: &'a str,
    /// The trace the requests join: each is sent as a new child span of it.
    trace: Option<TraceContext>,
}

impl OmClient<'_> {
    /// The same client, its requests part of the trace `traceparent` names (an action's
    /// row keeps its record's). Without one, or with an invalid one, nothing is sent.
    pub fn in_trace(self, traceparent: Option<&str>) -> Self {
        Self {
            trace: traceparent.and_then(TraceContext::parse),
            ..self
        }
    }

    /// Sends `request` as a new span of the client's trace (its `traceparent`, and an
    /// exported client span when spans are exported); a 2xx answer or the error.
    async fn send(
        &self,
        endpoint: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, OmError> {
        let (request, mut span) = match &self.trace {
            Some(parent) => {
                let own = parent.child();
                let span = Span::start(endpoint, Kind::Client, &own, Some(parent));
                (request.header(TRACEPARENT, own.to_header()), span)
            }
            None => (request, Span::none()),
        };
        let answered = match request.send().await {
            Ok(response) => {
                span.attribute(
                    "http.response.status_code",
                    i64::from(response.status().as_u16()),
                );
                check_status(endpoint, response).await
            }
            Err(e) => Err(transport_error(endpoint, e)),
        };
        if let Err(e) = &answered {
            span.error(e.to_string());
        }
        answered
    }

    fn order_url(&self, order_id: Uuid) -> String {
        format!("{}/ordermanagement/v1/orders/{order_id}", self.base_url)
    }

    pub async fn get_order(&self, order_id: Uuid) -> Result<Order, OmError> {
        let body = self.get_order_body(order_id).await?;
        // serde's message names the missing field; reqwest's `json()` would not.
        serde_json::from_slice(&body).map_err(|e| OmError::Body {
            endpoint: GET_ORDER,
            message: e.to_string(),
        })
    }

    /// The order as Order Management answered it, every field kept: what an `observe` row
    /// publishes. Only a body that is not a JSON object is an error.
    pub async fn get_order_json(&self, order_id: Uuid) -> Result<serde_json::Value, OmError> {
        let body = self.get_order_body(order_id).await?;
        match serde_json::from_slice(&body) {
            Ok(order @ serde_json::Value::Object(_)) => Ok(order),
            Ok(_) => Err(OmError::Body {
                endpoint: GET_ORDER,
                message: "the order is not a JSON object".into(),
            }),
            Err(e) => Err(OmError::Body {
                endpoint: GET_ORDER,
                message: e.to_string(),
            }),
        }
    }

    async fn get_order_body(&self, order_id: Uuid) -> Result<Vec<u8>, OmError> {
        let request = self
            .http
            .get(self.order_url(order_id))
            .header(header::AUTHORIZATION, self.authorization);
        let response = self.send(GET_ORDER, request).await?;
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(GET_ORDER, e))?;
        Ok(body.to_vec())
    }

    /// Captures `amount`; the same `idempotency_key` always yields the first answer.
    pub async fn capture(
        &self,
        order_id: Uuid,
        amount: i64,
        reference: &str,
        description: Option<&str>,
        idempotency_key: Uuid,
    ) -> Result<Capture, OmError> {
        let request = CaptureRequest {
            captured_amount: amount,
            reference,
            description,
        };
        let (location, body) = self
            .post(CAPTURE, order_id, "captures", &request, idempotency_key)
            .await?;
        created(CAPTURE, location, &body, |capture_id| Capture {
            capture_id,
        })
    }

    /// Refunds `amount` of what was captured.
    pub async fn refund(
        &self,
        order_id: Uuid,
        amount: i64,
        reference: Option<&str>,
        description: Option<&str>,
        idempotency_key: Uuid,
    ) -> Result<Refund, OmError> {
        let request = RefundRequest {
            refunded_amount: amount,
            reference,
            description,
        };
        let (location, body) = self
            .post(REFUND, order_id, "refunds", &request, idempotency_key)
            .await?;
        created(REFUND, location, &body, |refund_id| Refund { refund_id })
    }

    /// Cancels the whole order (Kustom allows it only without captures).
    pub async fn cancel(&self, order_id: Uuid, idempotency_key: Uuid) -> Result<(), OmError> {
        self.post(
            CANCEL,
            order_id,
            "cancel",
            &serde_json::json!({}),
            idempotency_key,
        )
        .await
        .map(drop)
    }

    /// Releases what remains authorized: no further captures.
    pub async fn release_remaining_authorization(
        &self,
        order_id: Uuid,
        idempotency_key: Uuid,
    ) -> Result<(), OmError> {
        let path = "release-remaining-authorization";
        self.post(
            RELEASE,
            order_id,
            path,
            &serde_json::json!({}),
            idempotency_key,
        )
        .await
        .map(drop)
    }

    /// POSTs `body` to the order's `path`; returns the `Location` and the body of a 2xx.
    async fn post(
        &self,
        endpoint: &'static str,
        order_id: Uuid,
        path: &str,
        body: &impl Serialize,
        idempotency_key: Uuid,
    ) -> Result<(Option<String>, Vec<u8>), OmError> {
        let request = self
            .http
            .post(format!("{}/{path}", self.order_url(order_id)))
            .header(header::AUTHORIZATION, self.authorization)
            .header(IDEMPOTENCY_HEADER, idempotency_key.to_string())
            .json(body);
        let response = self.send(endpoint, request).await?;
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(endpoint, e))?;
        Ok((location, body.to_vec()))
    }
}

/// The created resource of a 201: from its JSON body, else the last segment of
/// `Location` (which names it too).
fn created<T: serde::de::DeserializeOwned>(
    endpoint: &'static str,
    location: Option<String>,
    body: &[u8],
    from_id: impl FnOnce(String) -> T,
) -> Result<T, OmError> {
    match serde_json::from_slice::<T>(body) {
        Ok(created) => Ok(created),
        Err(e) => location
            .and_then(|l| l.rsplit('/').next().map(str::to_owned))
            .filter(|id| !id.is_empty())
            .map(from_id)
            .ok_or(OmError::Body {
                endpoint,
                message: e.to_string(),
            }),
    }
}

fn transport_error(endpoint: &'static str, source: reqwest::Error) -> OmError {
    if source.is_timeout() {
        OmError::Timeout { endpoint, source }
    } else if source.is_connect() {
        OmError::Connect { endpoint, source }
    } else {
        OmError::Transport { endpoint, source }
    }
}

async fn check_status(
    endpoint: &'static str,
    response: reqwest::Response,
) -> Result<reqwest::Response, OmError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()));
    let body = response
        .bytes()
        .await
        .map_err(|e| transport_error(endpoint, e))?;
    let (error_code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(b) => (
            b.error_code,
            format!(
                "{}{}",
                b.error_messages.join("; "),
                b.correlation_id
                    .map(|c| format!(" (correlation_id {c})"))
                    .unwrap_or_default()
            ),
        ),
        Err(_) => (
            None,
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        ),
    };
    Err(OmError::Status {
        endpoint,
        status: status.as_u16(),
        error_code,
        message: if message.is_empty() {
            status
                .canonical_reason()
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR.as_str())
                .to_owned()
        } else {
            message
        },
        retry_after,
    })
}

/// The longest `Retry-After` taken from Kustom as it is: about the lifetime of an
/// idempotency key, past which waiting can do no good. A ledger delay is capped lower,
/// at `ACTIONS_RETRY_MAX_DELAY_MS` (see `retry.rs`).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` is either delay-seconds or an HTTP date; the wait it asks for, at most
/// [`MAX_RETRY_AFTER`]. Seconds are whole by the standard: a fraction (`0.5`, `1.5e3`) is
/// rounded up, never sooner than asked. A date in the past means now. What is not a
/// finite, non-negative number or a date (`-1`, `inf`, `NaN`, `soon`) is ignored: `None`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            // Capped while still a float: `as` saturates, but only a capped value is exact.
            let secs = secs.ceil().min(MAX_RETRY_AFTER.as_secs_f64());
            Duration::from_secs(secs as u64)
        }
        Ok(_) => return None,
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value)
                .ok()?
                .with_timezone(&Utc);
            (at - now).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(default_key: &str) -> OmClients {
        let accounts = Accounts::parse(
            "[accounts.DM1]\napi_key = \"kco_1\"\n[accounts.DM2]\nwebhook_secrets = [\"whsec_x\"]\n",
            std::path::Path::new("accounts.toml"),
        )
        .unwrap();
        let timeout = Duration::from_secs(1);
        OmClients::new(
            "http://om",
            &Secret::new(default_key),
            &accounts,
            timeout,
            timeout,
        )
        .unwrap()
    }

    #[test]
    fn each_account_its_own_key_else_the_default_never_another() {
        let om = clients("kco_default");
        let key = |merchant: Option<&str>| om.account(merchant).map(|c| c.authorization.to_owned());
        assert_eq!(key(Some("DM1")).unwrap(), "Basic kco_1");
        // In the file without a key, not in the file, not known: the default key.
        assert_eq!(key(Some("DM2")).unwrap(), "Basic kco_default");
        assert_eq!(key(Some("DM9")).unwrap(), "Basic kco_default");
        assert_eq!(key(None).unwrap(), "Basic kco_default");

        let om = clients("");
        let key = |merchant: Option<&str>| om.account(merchant).map(|c| c.authorization.to_owned());
        assert_eq!(key(Some("DM1")).unwrap(), "Basic kco_1");
        for merchant in [Some("DM2"), Some("DM9"), None] {
            let error = key(merchant).unwrap_err();
            assert!(matches!(error, OmError::NoApiKey { .. }), "{error}");
            assert!(!error.to_string().contains("kco_"), "{error}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_fractions_round_up_and_huge_values_are_capped() {
        let now = Utc::now();
        let secs = |s: u64| Some(Duration::from_secs(s));
        let cases = [
            ("0", secs(0)),
            ("0.5", secs(1)),
            ("1.5", secs(2)),
            ("1.5e3", secs(1500)),
            (" 7 ", secs(7)),
            ("86399.1", Some(MAX_RETRY_AFTER)),
            ("1e30", Some(MAX_RETRY_AFTER)),
            ("18446744073709551615", Some(MAX_RETRY_AFTER)),
            ("18446744073709551616", Some(MAX_RETRY_AFTER)),
            ("1e309", None),
            ("-1", None),
            ("-0.5", None),
            ("inf", None),
            ("-inf", None),
            ("NaN", None),
            ("", None),
            ("3 seconds", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
        }
    }

    #[test]
    fn retry_after_dates_far_in_the_past_or_future_are_bounded() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let cases = [
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(Duration::ZERO)),
            ("Mon, 01 Jan 1900 00:00:00 GMT", Some(Duration::ZERO)),
            ("Fri, 31 Dec 9999 23:59:59 GMT", Some(MAX_RETRY_AFTER)),
            (
                "Wed, 02 Dec 2026 05:00:30 GMT",
                Some(Duration::from_secs(30)),
            ),
            (
                "Wed, 02 Dec 2026 05:00:30 +0000",
                Some(Duration::from_secs(30)),
            ),
            ("Wed, 32 Dec 2026 05:00:30 GMT", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
        }
    }
}
