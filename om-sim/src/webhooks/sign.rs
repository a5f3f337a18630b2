//! Standard Webhooks signatures, as Kustom makes them and ingest verifies them:
//! HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` with the key of a
//! `whsec_<base64>` secret, sent as `v1,<base64>`.

use std::collections::HashMap;

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use ipp_service::Secret;
use sha2::Sha256;

/// The signing key of each merchant. One key signs for every merchant today; a key per
/// merchant (several Kustom accounts) goes into `by_merchant`.
#[derive(Clone)]
pub struct SigningKeys {
    default: Vec<u8>,
    by_merchant: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKeys(***)")
    }
}

impl SigningKeys {
    pub fn one_for_all(secret: &Secret) -> Result<Self, String> {
        Ok(Self {
            default: decode(secret)?,
            by_merchant: HashMap::new(),
        })
    }

    fn key_for(&self, merchant_id: &str) -> &[u8] {
        self.by_merchant.get(merchant_id).unwrap_or(&self.default)
    }

    /// The `webhook-signature` value for one attempt.
    pub fn signature(
        &self,
        merchant_id: &str,
        webhook_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key_for(merchant_id))
            .expect("HMAC takes any key length");
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The key of `whsec_<base64>` (the prefix is optional, as in Standard Webhooks). The
/// error never contains the secret.
fn decode(secret: &Secret) -> Result<Vec<u8>, String> {
    let text = secret.expose();
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    STANDARD
        .decode(encoded)
        .ok()
        .filter(|key| !key.is_empty())
        .ok_or_else(|| "OM_SIM_WEBHOOK_SECRET is not `whsec_` followed by base64".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let keys = SigningKeys::one_for_all(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            keys.signature("DM1", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_secret_that_is_not_base64_is_refused_without_echoing_it() {
        let error = SigningKeys::one_for_all(&Secret::new("whsec_s3cr3t!!")).unwrap_err();
        assert!(!error.contains("s3cr3t"));
        assert!(SigningKeys::one_for_all(&Secret::new("whsec_")).is_err());
    }
}
