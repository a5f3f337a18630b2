//! The Order Management simulator as the tests talk to it: in-process (most tests) or a
//! child process (signals), and its API and control endpoints over HTTP.

use std::{collections::HashMap, ops::Deref, time::Duration};

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    eventually::eventually,
    inprocess::{om_sim_config, TestOmSim},
};

/// A simulator running in-process.
pub struct OmSim {
    pub service: TestOmSim,
    api: SimApi,
}

impl OmSim {
    /// The simulator accepting `api_key`, without faults.
    pub fn start(api_key: &str) -> Self {
        Self::start_with(om_sim_config(api_key))
    }

    /// The simulator with `config` (faults, seed, …).
    pub fn start_with(config: ipp_om_sim::Config) -> Self {
        let key = config.api_key.expose().to_owned();
        let service = TestOmSim::spawn(config);
        let api = SimApi::new(&service.url(), &key);
        Self { service, api }
    }
}

impl Deref for OmSim {
    type Target = SimApi;

    fn deref(&self) -> &SimApi {
        &self.api
    }
}

/// The simulator's HTTP API (with the key it accepts) and its `/_sim` control endpoints.
pub struct SimApi {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub url: String,
    pub key: String,
    pub client: Client,
}

impl SimApi {
    pub fn new(url: &str, key: &str) -> Self {
        Self {
            url: url.to_owned(),
            key: key.to_owned(),
            client: Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        }
    }

    /// GETs `path` (e.g. `/_sim/stats`) from the simulator; asserts a 2xx, returns the JSON.
    pub async fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("simulator answers");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("json")
    }

    /// PUTs `body` to `path` (e.g. `/_sim/orders/<id>`, `/_sim/faults`); asserts a 2xx.
    pub async fn put(&self, path: &str, body: Value) {
        let response = self
            .client
            .put(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("simulator answers");
        assert!(
            response.status().is_success(),
            "PUT {path}: {}",
            response.status()
        );
    }

    /// Captures the simulator applied, per order.
    pub async fn captures_by_order(&self) -> HashMap<Uuid, u64> {
        let stats = self.get("/_sim/stats").await;
        stats["captures_by_order"]
            .as_object()
            .expect("captures_by_order")
            .iter()
            .map(|(k, v)| (k.parse().expect("uuid"), v.as_u64().expect("count")))
            .collect()
    }

    pub fn order_url(&self, order_id: &str) -> String {
        format!("{}/ordermanagement/v1/orders/{order_id}", self.url)
    }

    pub async fn get_order(&self, order_id: &str) -> Response {
        self.client
            .get(self.order_url(order_id))
            .basic_auth("merchant", Some(&self.key))
            .send()
            .await
            .expect("get order")
    }

    pub fn capture_request(
        &self,
        client: &Client,
        order_id: &str,
        amount: i64,
        key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut request = client
            .post(format!("{}/captures", self.order_url(order_id)))
            .header("Authorization", format!("Basic {}", self.key))
            .json(&json!({ "captured_amount": amount, "reference": "session-1" }));
        if let Some(key) = key {
            request = request.header("Klarna-Idempotency-Key", key);
        }
        request
    }

    pub async fn capture(&self, order_id: &str, amount: i64, key: Option<&str>) -> Response {
        self.capture_request(&self.client, order_id, amount, key)
            .send()
            .await
            .expect("capture")
    }

    pub async fn post(&self, order_id: &str, action: &str, body: Value) -> Response {
        self.client
            .post(format!("{}/{action}", self.order_url(order_id)))
            .header("Authorization", format!("Basic {}", self.key))
            .json(&body)
            .send()
            .await
            .expect("post")
    }

    pub async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("control request")
    }

    /// GETs a control endpoint (`/_sim/...`); asserts 200, returns the JSON.
    pub async fn control_json(&self, path: &str) -> Value {
        let response = self.control(reqwest::Method::GET, path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.expect(path)
    }

    pub async fn sim_order(&self, order_id: &str) -> Value {
        self.control_json(&format!("/_sim/orders/{order_id}")).await
    }

    /// How many captures the simulator applied to the order.
    pub async fn captures(&self, order_id: &str) -> u64 {
        effects(&self.sim_order(order_id).await, "captures")
    }

    /// Asserts the order has exactly one capture; returns its id.
    pub async fn the_only_capture_id(&self, order_id: &str) -> String {
        let state = self.sim_order(order_id).await;
        assert_eq!(effects(&state, "captures"), 1);
        state["captures"][0]["capture_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Asserts `response` (a retry with the key of capture `applied`) is that capture's
    /// original 201 and the order still has that one capture.
    pub async fn assert_capture_replayed(&self, response: Response, applied: &str, order_id: &str) {
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["capture_id"], applied);
        assert_eq!(self.captures(order_id).await, 1);
    }

    pub async fn seed(&self, order_id: &str, seed: Value) {
        let response = self
            .control(
                reqwest::Method::PUT,
                &format!("/_sim/orders/{order_id}"),
                Some(seed),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    pub async fn set_faults(&self, faults: Value) {
        let response = self
            .control(reqwest::Method::PUT, "/_sim/faults", Some(faults))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "PUT /_sim/faults");
    }

    pub async fn calls(&self) -> Vec<Value> {
        serde_json::from_value(self.control_json("/_sim/calls").await).expect("calls")
    }

    pub async fn stats(&self) -> Value {
        self.control_json("/_sim/stats").await
    }

    pub async fn faults(&self) -> Value {
        self.control_json("/_sim/faults").await
    }

    /// `GET /_sim/webhooks`: the delivery counters and every published event.
    pub async fn webhooks(&self) -> Value {
        self.control_json("/_sim/webhooks").await
    }

    /// Waits until every published event was delivered (nothing pending) and the
    /// endpoint acknowledged exactly `deliveries` POSTs; returns `/_sim/webhooks`.
    pub async fn webhooks_delivered(&self, deliveries: u64) -> Value {
        eventually(
            Duration::from_secs(60),
            &format!("{deliveries} webhook deliveries, none pending"),
            || async {
                let view = self.webhooks().await;
                view["pending"] == 0 && view["delivered"].as_u64() >= Some(deliveries)
            },
        )
        .await;
        let view = self.webhooks().await;
        assert_eq!(
            view["delivered"], deliveries,
            "more deliveries than expected: {view}"
        );
        view
    }

    /// `POST /_sim/orders/{order_id}/{what}`: an operation made outside the Order
    /// Management API (`captures`, `refunds` in the Portal; `disputes` by a cardholder).
    pub async fn outside(&self, order_id: &str, what: &str, body: Value) -> Response {
        self.control(
            reqwest::Method::POST,
            &format!("/_sim/orders/{order_id}/{what}"),
            Some(body),
        )
        .await
    }
}

pub async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.expect("error body");
    assert!(
        body["error_messages"]
            .as_array()
            .is_some_and(|m| !m.is_empty()),
        "error_messages missing in {body}"
    );
    assert!(
        body["correlation_id"].is_string(),
        "correlation_id missing in {body}"
    );
    body["error_code"].as_str().expect("error_code").to_owned()
}

/// Asserts `response` has `status` and the documented error body with `code`.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(error_code(response).await, code);
}

pub fn new_order() -> String {
    Uuid::new_v4().to_string()
}

pub fn effects(order: &Value, kind: &str) -> u64 {
    order["effects"][kind].as_u64().expect("effects count")
}
