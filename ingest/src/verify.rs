//! Standard Webhooks signature verification, with several secrets (rotation) and a
//! configurable timestamp tolerance. The HMAC comes from the `standardwebhooks` crate;
//! only the tolerance check and the constant-time comparison over every secret and every
//! `v1,` entry live here, because that crate fixes its tolerance at five minutes.

use http::HeaderMap;
use standardwebhooks::Webhook;
use subtle::ConstantTimeEq;

const HEADER_ID: &str = "webhook-id";
const HEADER_TIMESTAMP: &str = "webhook-timestamp";
const HEADER_SIGNATURE: &str = "webhook-signature";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is malformed")]
    MalformedHeader(&'static str),
    #[error("webhook-timestamp is older than the tolerance")]
    TooOld,
    #[error("webhook-timestamp is in the future beyond the tolerance")]
    InFuture,
    #[error("body is not UTF-8 and cannot be verified")]
    BodyNotUtf8,
    #[error("no signature matches any configured secret")]
    NoMatch,
}

#[derive(Debug, thiserror::Error)]
#[error("webhook secret #{index} is not valid `whsec_` base64")]
pub struct InvalidSecret {
    pub index: usize,
    #[source]
    source: standardwebhooks::WebhookError,
}

pub struct Verifier {
    keys: Vec<Webhook>,
    tolerance_secs: i64,
}

/// The signed headers of an accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub webhook_id: String,
    pub webhook_timestamp: String,
}

impl Verifier {
    pub fn new<'a>(
        secrets: impl IntoIterator<Item = &'a str>,
        tolerance_secs: u64,
    ) -> Result<Self, InvalidSecret> {
        let keys = secrets
            .into_iter()
            .enumerate()
            .map(|(index, secret)| {
                Webhook::new(secret).map_err(|source| InvalidSecret { index, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            keys,
            tolerance_secs: i64::try_from(tolerance_secs).unwrap_or(i64::MAX),
        })
    }

    /// Checks the request against every secret; `now` is Unix seconds.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<SignedHeaders, VerifyError> {
        let webhook_id = header(headers, HEADER_ID)?;
        let timestamp_text = header(headers, HEADER_TIMESTAMP)?;
        let signatures = header(headers, HEADER_SIGNATURE)?;
        let timestamp: i64 = timestamp_text
            .parse()
            .map_err(|_| VerifyError::MalformedHeader(HEADER_TIMESTAMP))?;
        if now.saturating_sub(timestamp) > self.tolerance_secs {
            return Err(VerifyError::TooOld);
        }
        if timestamp.saturating_sub(now) > self.tolerance_secs {
            return Err(VerifyError::InFuture);
        }
        let offered: Vec<&[u8]> = signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .map(str::as_bytes)
            .collect();
        if offered.is_empty() {
            return Err(VerifyError::MalformedHeader(HEADER_SIGNATURE));
        }
        let mut matched = subtle::Choice::from(0);
        for key in &self.keys {
            let expected = key
                .sign(webhook_id, timestamp, body)
                .map_err(|_| VerifyError::BodyNotUtf8)?;
            let expected = expected.strip_prefix("v1,").unwrap_or(&expected).as_bytes();
            for candidate in &offered {
                // Length is not secret; the bytes are compared in constant time.
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

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    let value = headers.get(name).ok_or(VerifyError::MissingHeader(name))?;
    let value = value
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(name))?;
    if value.is_empty() {
        return Err(VerifyError::MissingHeader(name));
    }
    Ok(value)
}
