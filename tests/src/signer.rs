//! A reference Standard Webhooks signer, written from the spec with `hmac` and `sha2`,
//! independent of the verifier under test.

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

/// Headers of one signed request.
#[derive(Debug, Clone)]
pub struct Signed {
    pub webhook_id: String,
    pub timestamp: i64,
    pub signature: String,
}

impl Signed {
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("webhook-id", self.webhook_id.clone()),
            ("webhook-timestamp", self.timestamp.to_string()),
            ("webhook-signature", self.signature.clone()),
        ]
    }
}

impl Signer {
    /// `secret` is `whsec_` followed by base64 of the key.
    pub fn new(secret: &str) -> Self {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        Self {
            key: STANDARD.decode(encoded).expect("secret is not base64"),
        }
    }

    /// A fresh random secret in the `whsec_` form.
    pub fn random_secret() -> String {
        let key: [u8; 24] = rand::random();
        format!("whsec_{}", STANDARD.encode(key))
    }

    pub fn signature(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    pub fn sign_at(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> Signed {
        Signed {
            webhook_id: webhook_id.to_owned(),
            timestamp,
            signature: self.signature(webhook_id, timestamp, body),
        }
    }

    pub fn sign(&self, body: &[u8]) -> Signed {
        let webhook_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        self.sign_at(&webhook_id, chrono::Utc::now().timestamp(), body)
    }
}
