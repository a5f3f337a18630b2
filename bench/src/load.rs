//! The load generator: requests signed before the clock starts, a pooled HTTP/1 client,
//! and two drivers (fixed concurrency, fixed rate) that record every request's latency.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ipp_loadgen::{Delivery, WebhookSigner};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

/// One request, ready to send: body and signature headers computed in advance.
#[derive(Clone)]
pub struct Signed {
    pub body: bytes::Bytes,
    pub headers: HeaderMap,
}

/// Signs every delivery now (the signature tolerance is 5 minutes: sign right before use).
pub fn presign(signer: &WebhookSigner, deliveries: &[Delivery], run: &str) -> Vec<Signed> {
    deliveries
        .iter()
        .enumerate()
        .map(|(i, delivery)| {
            let webhook_id = format!("msg_{run}_{i}");
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            for (name, value) in signer.headers(&webhook_id, &delivery.body) {
                headers.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_str(&value).expect("signature headers are ASCII"),
                );
            }
            Signed {
                body: bytes::Bytes::from(delivery.body.clone()),
                headers,
            }
        })
        .collect()
}

/// An HTTP/1 client with one pooled connection per request in flight.
pub fn client(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Latency of every request answered 200.
    pub ok: Vec<Duration>,
    /// Requests answered otherwise or failed.
    pub failed: usize,
    pub elapsed: Duration,
}

/// Sends every request with exactly `concurrency` in flight (closed loop).
pub async fn at_concurrency(
    client: &reqwest::Client,
    url: &str,
    requests: Arc<Vec<Signed>>,
    concurrency: usize,
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, url, requests, next) = (
            client.clone(),
            url.to_owned(),
            requests.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = requests.get(i) else {
                    return outcome;
                };
                let sent = Instant::now();
                match send(&client, &url, request).await {
                    true => outcome.ok.push(sent.elapsed()),
                    false => outcome.failed += 1,
                }
            }
        }));
    }
    let mut total = Outcome::default();
    for worker in workers {
        let outcome = worker.await.expect("load worker panicked");
        total.ok.extend(outcome.ok);
        total.failed += outcome.failed;
    }
    total.elapsed = started.elapsed();
    total
}

/// Posts one request; whether it was answered 200.
pub async fn send(client: &reqwest::Client, url: &str, request: &Signed) -> bool {
    let response = client
        .post(url)
        .headers(request.headers.clone())
        .body(request.body.clone())
        .send()
        .await;
    match response {
        Ok(response) => {
            let ok = response.status() == 200;
            // Read the body so the connection goes back to the pool.
            let _ = response.bytes().await;
            ok
        }
        Err(_) => false,
    }
}
