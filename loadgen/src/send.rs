//! Signing and posting deliveries, with bounded concurrency and Kustom-like retries.

use std::time::{Duration, Instant};

use base64::{engine::general_purpose::STANDARD, Engine};
use futures::{stream, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Delivery;

/// Signs bodies with a `whsec_` secret (Standard Webhooks, HMAC-SHA256).
#[derive(Clone)]
pub struct WebhookSigner {
    key: Vec<u8>,
}

impl WebhookSigner {
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        Ok(Self {
            key: STANDARD.decode(encoded)?,
        })
    }

    /// The three headers for `body`, signed now.
    pub fn headers(&self, webhook_id: &str, body: &[u8]) -> [(&'static str, String); 3] {
        let timestamp = chrono::Utc::now().timestamp();
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(format!("{webhook_id}.{timestamp}.").as_bytes());
        mac.update(body);
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        [
            ("webhook-id", webhook_id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", format!("v1,{signature}")),
        ]
    }

    /// `POST url` with `delivery`'s body, signed now. A redelivery keeps its message id,
    /// as Kustom's do: `msg_<event id>_<0|1>`.
    pub fn post(
        &self,
        client: &reqwest::Client,
        url: &str,
        delivery: &Delivery,
    ) -> reqwest::RequestBuilder {
        let webhook_id = format!(
            "msg_{}_{}",
            delivery.event_id,
            u8::from(delivery.is_duplicate)
        );
        let mut request = client
            .post(url)
            .header("content-type", "application/json")
            .body(delivery.body.clone());
        for (name, value) in self.headers(&webhook_id, &delivery.body) {
            request = request.header(name, value);
        }
        request
    }
}

#[derive(Debug, Default, Clone)]
pub struct SendReport {
    /// Indexes (into the deliveries) that were answered 200.
    pub acknowledged: Vec<usize>,
    /// Attempts answered otherwise, or that failed to connect, and were retried.
    pub retried_attempts: usize,
    /// Deliveries that never got a 200 within the retry budget.
    pub gave_up: Vec<usize>,
    pub elapsed: Duration,
}

/// Posts every delivery, `concurrency` at a time. Like Kustom, a delivery that gets no
/// 200 (5xx, connection refused while a service restarts) is sent again, up to `retry_for`.
pub async fn send_all(
    client: &reqwest::Client,
    url: &str,
    signer: &WebhookSigner,
    deliveries: &[Delivery],
    concurrency: usize,
    retry_for: Duration,
) -> SendReport {
    let started = Instant::now();
    let results: Vec<(usize, bool, usize)> = stream::iter(deliveries.iter().enumerate())
        .map(|(index, delivery)| async move {
            let deadline = Instant::now() + retry_for;
            let mut retries = 0;
            loop {
                let request = signer.post(client, url, delivery);
                let ok = matches!(request.send().await, Ok(r) if r.status() == 200);
                if ok {
                    return (index, true, retries);
                }
                if Instant::now() >= deadline {
                    return (index, false, retries);
                }
                retries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut report = SendReport::default();
    for (index, ok, retries) in results {
        report.retried_attempts += retries;
        if ok {
            report.acknowledged.push(index);
        } else {
            report.gave_up.push(index);
        }
    }
    report.acknowledged.sort_unstable();
    report.elapsed = started.elapsed();
    report
}
