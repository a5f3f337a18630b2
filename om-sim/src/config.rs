//! Configuration: every setting is a flag and an environment variable; `--help` is the reference.

use clap::{Args, Parser};
use ipp_service::{ListenArgs, Listens, LogArgs, Secret};
use serde::{Deserialize, Serialize};

use crate::webhooks::WebhookArgs;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ipp-om-sim",
    version,
    about = "A local simulator of the Kustom Order Management API, for tests, demos and benchmarks.",
    long_about = "A local simulator of the Kustom Order Management API (get order, capture, refund, \
cancel, release remaining authorization) under /ordermanagement/v1/orders/{order_id}. Any order id \
not seen before is an AUTHORIZED order whose amount derives from the id. It checks the \
Authorization header, honours Klarna-Idempotency-Key (same key: same response, one effect) and \
injects faults on demand: 500/503, 429 with Retry-After, latency, hangs and dropped connections. \
Like Kustom it can limit the requests of each account (each API key), answering 429 over the \
limit.\n\n\
Control endpoints (no auth): PUT/GET /_sim/orders/{order_id}, GET/DELETE /_sim/calls, \
GET/DELETE /_sim/stats, PUT/GET /_sim/faults, PUT/GET /_sim/limits, \
POST /_sim/orders/{order_id}/captures|refunds|disputes, \
POST /_sim/orders/{order_id}/disputes/{dispute_id}, GET/PUT/DELETE /_sim/webhooks, GET /healthz.\n\n\
With OM_SIM_WEBHOOK_URL and OM_SIM_WEBHOOK_SECRET, every capture and refund applied (and every \
dispute opened or updated) is posted there as a signed Kustom webhook, at least once."
)]
pub struct Config {
    #[command(flatten)]
    pub listen: ListenArgs<OmSim>,

    /// The API key clients must send, as `Authorization: Basic <key>` or
    /// `Basic base64(<any user>:<key>)`. Or OM_SIM_API_KEY_FILE: a file holding it.
    #[arg(
        long,
        env = "OM_SIM_API_KEY",
        default_value = "kco_test_simulator",
        value_parser = Secret::non_empty,
        hide_env_values = true
    )]
    pub api_key: Secret,

    /// The account (merchant id) of OM_SIM_API_KEY; also the merchant in the webhooks of
    /// an order no account has called yet (operations outside the API).
    #[arg(long, env = "OM_SIM_MERCHANT_ID", default_value = "DM00000000")]
    pub merchant_id: String,

    /// More accounts, each `MERCHANT_ID:KEY`, comma-separated. An order belongs to one
    /// account (seeded with `merchant_id`, or the first that calls it); another
    /// account's key gets 404 NO_SUCH_ORDER for it, as Kustom answers. Idempotency keys
    /// are per account too. Or OM_SIM_ACCOUNTS_FILE: a file holding them.
    #[arg(
        long = "account",
        env = "OM_SIM_ACCOUNTS",
        value_name = "MERCHANT_ID:KEY",
        value_delimiter = ',',
        value_parser = SimAccount::parse,
        hide_env_values = true
    )]
    pub accounts: Vec<SimAccount>,

    /// ISO 4217 currency of every order.
    #[arg(long, env = "OM_SIM_CURRENCY", default_value = "EUR")]
    pub currency: String,

    /// How long an idempotency key is honoured, in seconds (Klarna: 24 hours).
    #[arg(long, env = "OM_SIM_IDEMPOTENCY_TTL_SECS", default_value_t = 24 * 3600)]
    pub idempotency_ttl_secs: u64,

    /// Seed of the random generator behind every fault decision.
    #[arg(long, env = "OM_SIM_SEED", default_value_t = 1)]
    pub seed: u64,

    #[command(flatten)]
    pub faults: Faults,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub webhooks: WebhookArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// One more account of the simulator: its merchant id and API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimAccount {
    pub merchant_id: String,
    pub api_key: Secret,
}

impl SimAccount {
    pub fn new(merchant_id: &str, api_key: &str) -> Self {
        Self {
            merchant_id: merchant_id.to_owned(),
            api_key: Secret::new(api_key),
        }
    }

    /// `MERCHANT_ID:KEY`, neither part empty; the error never shows the key.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.split_once(':') {
            Some((merchant, key)) if !merchant.trim().is_empty() && !key.trim().is_empty() => {
                Ok(Self::new(merchant.trim(), key.trim()))
            }
            _ => Err("an account is MERCHANT_ID:KEY, neither part empty".into()),
        }
    }
}

/// Fault injection, applied to the Order Management endpoints only (never to `/_sim`).
/// The rates are fractions of requests; they are drawn from one roll per request in the
/// order drop, hang, 5xx, 429, so their sum is at most 1.
/// `PUT /_sim/faults` replaces them at run time; a field left out takes its default.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction of requests answered 500 or 503 (half each), with no effect.
    #[arg(long, env = "OM_SIM_FAIL_RATE", default_value_t = 0.0)]
    pub fail_rate: f64,

    /// Fraction of requests answered 429 TOO_MANY_REQUESTS with Retry-After, with no effect.
    #[arg(long, env = "OM_SIM_RATE_LIMIT_RATE", default_value_t = 0.0)]
    pub rate_limit_rate: f64,

    /// Retry-After, in seconds, sent with 429.
    #[arg(long, env = "OM_SIM_RETRY_AFTER_SECS", default_value_t = 1)]
    pub retry_after_secs: u64,

    /// Retry-After sent with 429 as it is, instead of OM_SIM_RETRY_AFTER_SECS: any
    /// printable text (a fraction, a huge number, a date, garbage), to see how a client
    /// copes with it.
    #[arg(long, env = "OM_SIM_RETRY_AFTER")]
    pub retry_after: Option<String>,

    /// Milliseconds added to every request.
    #[arg(long, env = "OM_SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Fraction of requests that sleep OM_SIM_HANG_MS (past any client timeout) before
    /// answering (504 when the hang came before the effect).
    #[arg(long, env = "OM_SIM_HANG_RATE", default_value_t = 0.0)]
    pub hang_rate: f64,

    /// How long a hanging request sleeps, in milliseconds.
    #[arg(long, env = "OM_SIM_HANG_MS", default_value_t = 30_000)]
    pub hang_ms: u64,

    /// Fraction of requests whose connection is closed without a response.
    #[arg(long, env = "OM_SIM_DROP_RATE", default_value_t = 0.0)]
    pub drop_rate: f64,

    /// Of the hang and drop faults on POSTs, the fraction that happen after the operation
    /// was applied (and its response stored under the idempotency key).
    #[arg(long, env = "OM_SIM_FAULT_AFTER_EFFECT_RATE", default_value_t = 0.0)]
    pub fault_after_effect_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            retry_after: None,
            latency_ms: 0,
            hang_rate: 0.0,
            hang_ms: 30_000,
            drop_rate: 0.0,
            fault_after_effect_rate: 0.0,
        }
    }
}

impl Faults {
    /// The Retry-After a 429 carries.
    pub fn retry_after_header(&self) -> String {
        self.retry_after
            .clone()
            .unwrap_or_else(|| self.retry_after_secs.to_string())
    }

    /// Every rate must be a fraction, and a Retry-After fit for a header.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(value) = &self.retry_after {
            if !value
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                return Err(format!(
                    "retry_after must be printable ASCII, got {value:?}"
                ));
            }
        }
        let rates = [
            ("fail_rate", self.fail_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("hang_rate", self.hang_rate),
            ("drop_rate", self.drop_rate),
            ("fault_after_effect_rate", self.fault_after_effect_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        Ok(())
    }
}

/// The per-account rate limit Kustom enforces: a token bucket per API key presented. Over
/// it, a request is answered 429 TOO_MANY_REQUESTS with Retry-After (the whole seconds
/// until a token is back, at least 1) and has no effect; a refused request takes no token.
/// `PUT /_sim/limits` replaces these at run time (a field left out takes its default),
/// and every account starts again with a full bucket.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Order Management requests per second per account; 0: no limit.
    #[arg(long, env = "OM_SIM_ACCOUNT_RATE_LIMIT", default_value_t = 0.0)]
    pub account_rate_limit: f64,

    /// Requests an account's bucket holds: how many may come at once after a quiet
    /// spell. Unset: one second's worth (OM_SIM_ACCOUNT_RATE_LIMIT, at least 1), the
    /// nearest a bucket comes to "N requests per second".
    #[arg(long, env = "OM_SIM_ACCOUNT_RATE_BURST")]
    pub account_rate_burst: Option<u32>,
}

impl Limits {
    /// The tokens a bucket holds.
    pub fn burst(&self) -> f64 {
        match self.account_rate_burst {
            Some(burst) => f64::from(burst),
            None => self.account_rate_limit.ceil().max(1.0),
        }
    }

    /// The rate must be a finite number of requests per second, the burst at least 1.
    pub fn validate(&self) -> Result<(), String> {
        let rate = self.account_rate_limit;
        if !(rate >= 0.0 && rate.is_finite()) {
            return Err(format!(
                "account_rate_limit must be a number of requests per second (0: no limit), got {rate}"
            ));
        }
        if self.account_rate_burst == Some(0) {
            return Err("account_rate_burst must be at least 1".into());
        }
        Ok(())
    }
}

/// ipp-om-sim's address: the Order Management API, its control endpoints and /healthz.
#[derive(Debug, Clone, Copy)]
pub struct OmSim;

impl Listens for OmSim {
    const ENV: &'static str = "OM_SIM_LISTEN";
    const DEFAULT: &'static str = "127.0.0.1:9200";
    const SERVES: &'static str = "the Order Management API, /_sim control endpoints, /healthz";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which settings may come from a file (`X_FILE`), and that `--help` says so.
    #[test]
    fn secret_settings_may_come_from_files() {
        let command = <Config as clap::CommandFactory>::command();
        assert_eq!(
            ipp_service::secret_files::file_variables(&command),
            ["OM_SIM_ACCOUNTS", "OM_SIM_API_KEY", "OM_SIM_WEBHOOK_SECRET"]
        );
        assert!(ipp_service::secret_files::undocumented(&command).is_empty());
    }
}
