//! Standard Webhooks signature verification over the raw body bytes, with several
//! secrets (rotation), several `v1,` entries and a configurable timestamp tolerance.
//!
//! The signed content is `webhook-id.webhook-timestamp.body`, the timestamp as sent
//! and the body as bytes (so a body that is not UTF-8 can be verified, and then stored),
//! HMAC-SHA256 with every secret; each `v1,` entry is decoded and compared in constant
//! time with every expected MAC. Headers are bounded before any work is done on them.
//!
//! With several Kustom accounts (the accounts file), each account has its own secrets:
//! a webhook is checked against the secrets of the account its body names, and only
//! those; one naming an account not in the file, or none, against the default secrets
//! (`KUSTOM_WEBHOOK_SECRETS`).

use std::collections::HashMap;

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

const HEADER_ID: &str = "webhook-id";
const HEADER_TIMESTAMP: &str = "webhook-timestamp";
const HEADER_SIGNATURE: &str = "webhook-signature";

/// Longest accepted `webhook-id`: Kustom's are about 30 characters.
pub const MAX_WEBHOOK_ID_BYTES: usize = 256;
/// Longest accepted `webhook-signature`: room for [`MAX_SIGNATURE_ENTRIES`] entries.
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 1024;
/// Most space-separated signature entries checked; more is refused, not truncated.
pub const MAX_SIGNATURE_ENTRIES: usize = 16;
/// An HMAC-SHA256.
const MAC_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is sent more than once")]
    DuplicateHeader(&'static str),
    #[error("header {0} is longer than {1} bytes")]
    HeaderTooLong(&'static str, usize),
    #[error("header {0} is not visible ASCII")]
    MalformedHeader(&'static str),
    #[error("webhook-timestamp is not a Unix time in seconds (digits only)")]
    MalformedTimestamp,
    #[error("webhook-timestamp is older than the tolerance")]
    TooOld,
    #[error("webhook-timestamp is in the future beyond the tolerance")]
    InFuture,
    #[error("webhook-signature has no v1 entry")]
    NoV1Signature,
    #[error("webhook-signature has more than {MAX_SIGNATURE_ENTRIES} entries")]
    TooManySignatures,
    #[error("no v1 entry of webhook-signature is the base64 of a 32-byte HMAC")]
    MalformedSignature,
    #[error("no signature matches any configured secret")]
    NoMatch,
    /// The body's `merchant_id` is not an account of the accounts file (or it names
    /// none) and no default secrets are configured. The value is not echoed: it is
    /// unverified.
    #[error("no webhook secrets for the account this body names (its merchant_id is not in the accounts file, or missing) and no default secrets are set")]
    UnknownAccount,
}

impl VerifyError {
    /// A stable machine-readable reason, beside the `invalid_signature` error code.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::DuplicateHeader(_) => "duplicate_header",
            Self::HeaderTooLong(..) => "header_too_long",
            Self::MalformedHeader(_) => "malformed_header",
            Self::MalformedTimestamp => "malformed_timestamp",
            Self::TooOld => "timestamp_too_old",
            Self::InFuture => "timestamp_in_future",
            Self::NoV1Signature => "no_v1_signature",
            Self::TooManySignatures => "too_many_signatures",
            Self::MalformedSignature => "malformed_signature",
            Self::NoMatch => "no_match",
            Self::UnknownAccount => "unknown_account",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("webhook secret #{index}{} is not valid `whsec_` base64", account.as_ref().map(|a| format!(" of account {a:?}")).unwrap_or_default())]
pub struct InvalidSecret {
    pub index: usize,
    /// The account of the accounts file it belongs to; `None` for the default secrets.
    pub account: Option<String>,
}

pub struct Verifier {
    /// The default secrets' keys (`KUSTOM_WEBHOOK_SECRETS`); may be empty.
    keys: Vec<Vec<u8>>,
    /// The keys of each account of the accounts file that has secrets.
    accounts: HashMap<String, Vec<Vec<u8>>>,
    tolerance_secs: i64,
}

/// The signed headers of an accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub webhook_id: String,
    pub webhook_timestamp: String,
}

/// The key of a `whsec_<base64>` secret (the prefix is optional, as in Standard Webhooks).
fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD.decode(encoded).ok().filter(|key| !key.is_empty())
}

impl Verifier {
    pub fn new<'a>(
        secrets: impl IntoIterator<Item = &'a str>,
        tolerance_secs: u64,
    ) -> Result<Self, InvalidSecret> {
        Ok(Self {
            keys: decode_secrets(secrets, None)?,
            accounts: HashMap::new(),
            tolerance_secs: i64::try_from(tolerance_secs).unwrap_or(i64::MAX),
        })
    }

    /// Adds the secrets of the account `merchant_id`: its webhooks are checked against
    /// them alone.
    pub fn with_account<'a>(
        mut self,
        merchant_id: &str,
        secrets: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, InvalidSecret> {
        let keys = decode_secrets(secrets, Some(merchant_id))?;
        self.accounts.insert(merchant_id.to_owned(), keys);
        Ok(self)
    }

    /// Whether any webhook can be accepted at all.
    pub fn has_secrets(&self) -> bool {
        !self.keys.is_empty() || self.accounts.values().any(|keys| !keys.is_empty())
    }

    /// Checks the request against the default secrets; `now` is Unix seconds.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<SignedHeaders, VerifyError> {
        self.verify_for(headers, body, None, now)
    }

    /// Checks the request against the secrets of `account` (the body's `merchant_id`)
    /// when the accounts file has it, else against the default secrets.
    pub fn verify_for(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        account: Option<&str>,
        now: i64,
    ) -> Result<SignedHeaders, VerifyError> {
        let webhook_id = header(headers, HEADER_ID, MAX_WEBHOOK_ID_BYTES)?;
        // Digits fit in 20 bytes; the parse below refuses what does not fit an i64.
        let timestamp_text = header(headers, HEADER_TIMESTAMP, 20).map_err(|e| match e {
            VerifyError::HeaderTooLong(..) => VerifyError::MalformedTimestamp,
            other => other,
        })?;
        let signatures = header(headers, HEADER_SIGNATURE, MAX_SIGNATURE_HEADER_BYTES)?;
        let timestamp = parse_timestamp(timestamp_text)?;
        if now.saturating_sub(timestamp) > self.tolerance_secs {
            return Err(VerifyError::TooOld);
        }
        if timestamp.saturating_sub(now) > self.tolerance_secs {
            return Err(VerifyError::InFuture);
        }
        let offered = v1_signatures(signatures)?;
        let keys = account
            .and_then(|account| self.accounts.get(account))
            .unwrap_or(&self.keys);
        if keys.is_empty() {
            return Err(VerifyError::UnknownAccount);
        }
        let mut matched = subtle::Choice::from(0);
        for key in keys {
            let expected = mac(key, webhook_id, timestamp_text, body);
            for candidate in &offered {
                matched |= expected.ct_eq(candidate);
            }
        }
        if bool::from(matched) {
            Ok(SignedHeaders {
                webhook_id: webhook_id.to_owned(),
                webhook_timestamp: timestamp_text.to_owned(),
            })
        } else {
            Err(VerifyError::NoMatch)
        }
    }
}

fn decode_secrets<'a>(
    secrets: impl IntoIterator<Item = &'a str>,
    account: Option<&str>,
) -> Result<Vec<Vec<u8>>, InvalidSecret> {
    secrets
        .into_iter()
        .enumerate()
        .map(|(index, secret)| {
            decode_secret(secret).ok_or_else(|| InvalidSecret {
                index,
                account: account.map(str::to_owned),
            })
        })
        .collect()
}

fn mac(key: &[u8], webhook_id: &str, timestamp: &str, body: &[u8]) -> [u8; MAC_BYTES] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Unix seconds: ASCII digits only (no sign, no spaces), within an i64.
fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::MalformedTimestamp);
    }
    text.parse().map_err(|_| VerifyError::MalformedTimestamp)
}

/// The decoded MACs of the `v1,` entries. Entries of other schemes are ignored, and so
/// is a malformed `v1,` entry as long as another one is well formed.
fn v1_signatures(header: &str) -> Result<Vec<[u8; MAC_BYTES]>, VerifyError> {
    let entries: Vec<&str> = header.split(' ').filter(|e| !e.is_empty()).collect();
    if entries.len() > MAX_SIGNATURE_ENTRIES {
        return Err(VerifyError::TooManySignatures);
    }
    let v1: Vec<&str> = entries
        .iter()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .collect();
    if v1.is_empty() {
        return Err(VerifyError::NoV1Signature);
    }
    let decoded: Vec<[u8; MAC_BYTES]> = v1
        .iter()
        .filter_map(|encoded| STANDARD.decode(encoded).ok()?.try_into().ok())
        .collect();
    if decoded.is_empty() {
        return Err(VerifyError::MalformedSignature);
    }
    Ok(decoded)
}

/// The one value of header `name`: present, sent once, not empty, visible ASCII, at
/// most `max_bytes` long.
fn header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    max_bytes: usize,
) -> Result<&'a str, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(VerifyError::MissingHeader(name))?;
    if values.next().is_some() {
        return Err(VerifyError::DuplicateHeader(name));
    }
    if value.is_empty() {
        return Err(VerifyError::MissingHeader(name));
    }
    if value.len() > max_bytes {
        return Err(VerifyError::HeaderTooLong(name, max_bytes));
    }
    value
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(name))
}
