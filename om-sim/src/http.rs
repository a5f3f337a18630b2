//! Routes: the Kustom Order Management endpoints (authenticated, idempotent, faulty on
//! demand) and the `/_sim` control endpoints that tests, demos and benchmarks drive.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{FromRequestParts, Path, State},
    http::{request::Parts, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Faults, Limits},
    error::OmError,
    limits::retry_after_secs,
    orders::{DisputeRequest, DisputeUpdate, Seed},
    sim::{Fault, Operation, Sim},
    webhooks::InjectionChange,
};

pub const IDEMPOTENCY_KEY: &str = "klarna-idempotency-key";
const ORDERS: &str = "/ordermanagement/v1/orders/{order_id}";

/// Put into every request by the accept loop: cancelling it closes the request's
/// connection without an answer (the "dropped connection" fault).
#[derive(Debug, Clone)]
pub struct ConnControl(pub CancellationToken);

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route(ORDERS, get(get_order))
        .route(&format!("{ORDERS}/captures"), post(capture))
        .route(
            &format!("{ORDERS}/captures/{{capture_id}}"),
            get(get_capture),
        )
        .route(&format!("{ORDERS}/refunds"), post(refund))
        .route(&format!("{ORDERS}/cancel"), post(cancel))
        .route(
            &format!("{ORDERS}/release-remaining-authorization"),
            post(release),
        )
        .route("/_sim/orders/{order_id}", put(seed_order).get(sim_order))
        .route("/_sim/orders/{order_id}/captures", post(outside_capture))
        .route("/_sim/orders/{order_id}/refunds", post(outside_refund))
        .route("/_sim/orders/{order_id}/disputes", post(open_dispute))
        .route(
            "/_sim/orders/{order_id}/disputes/{dispute_id}",
            post(update_dispute),
        )
        .route(
            "/_sim/webhooks",
            get(webhooks).put(change_webhooks).delete(clear_webhooks),
        )
        .route("/_sim/calls", get(calls).delete(clear_calls))
        .route("/_sim/stats", get(stats).delete(clear_stats))
        .route("/_sim/faults", put(set_faults).get(faults))
        .route("/_sim/limits", put(set_limits).get(limits))
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .fallback(|| async { OmError::NotFound.reply() })
        .with_state(sim)
}

/// What every Order Management request carries besides its operation.
struct Ctx {
    method: Method,
    path: String,
    authorization: Option<String>,
    idempotency_key: Option<String>,
    /// W3C Trace Context of the caller, recorded so tests can follow a trace.
    traceparent: Option<String>,
    conn: Option<ConnControl>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Self {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            authorization: header("authorization"),
            idempotency_key: header(IDEMPOTENCY_KEY).filter(|k| !k.is_empty()),
            traceparent: header("traceparent"),
            conn: parts.extensions.get::<ConnControl>().cloned(),
        })
    }
}

async fn get_order(
    State(sim): State<Arc<Sim>>,
    ctx: Ctx,
    Path(order_id): Path<String>,
) -> Response {
    handle(&sim, ctx, &order_id, Ok(Operation::GetOrder)).await
}

async fn get_capture(
    State(sim): State<Arc<Sim>>,
    ctx: Ctx,
    Path((order_id, capture_id)): Path<(String, String)>,
) -> Response {
    handle(&sim, ctx, &order_id, Ok(Operation::GetCapture(capture_id))).await
}

async fn capture(
    State(sim): State<Arc<Sim>>,
    ctx: Ctx,
    Path(order_id): Path<String>,
    body: Bytes,
) -> Response {
    let operation = parse_body(&body).map(Operation::Capture);
    handle(&sim, ctx, &order_id, operation).await
}

async fn refund(
    State(sim): State<Arc<Sim>>,
    ctx: Ctx,
    Path(order_id): Path<String>,
    body: Bytes,
) -> Response {
    let operation = parse_body(&body).map(Operation::Refund);
    handle(&sim, ctx, &order_id, operation).await
}

async fn cancel(State(sim): State<Arc<Sim>>, ctx: Ctx, Path(order_id): Path<String>) -> Response {
    handle(&sim, ctx, &order_id, Ok(Operation::Cancel)).await
}

async fn release(State(sim): State<Arc<Sim>>, ctx: Ctx, Path(order_id): Path<String>) -> Response {
    handle(
        &sim,
        ctx,
        &order_id,
        Ok(Operation::ReleaseRemainingAuthorization),
    )
    .await
}

/// One Order Management request: log it, add latency, check the key and the account's
/// rate limit, roll for a fault, and apply the operation before or after the fault as
/// the dice say.
async fn handle(
    sim: &Sim,
    ctx: Ctx,
    order_id: &str,
    operation: Result<Operation, OmError>,
) -> Response {
    let key = ctx.idempotency_key.as_deref();
    let account = sim.account_of(ctx.authorization.as_deref());
    let seq = sim.log_call(
        ctx.method.as_str(),
        &ctx.path,
        key,
        account,
        ctx.traceparent.as_deref(),
    );
    let is_post = ctx.method == Method::POST;
    let (fault, latency_ms) = sim.roll(is_post);
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }
    let Some(account) = account else {
        let reply = OmError::Unauthorized.reply();
        sim.finish_call(seq, Some(reply.status), false, Fault::None);
        tracing::debug!(method = %ctx.method, path = %ctx.path, "unauthorized");
        return reply.into_response();
    };
    if let Err(wait) = sim.take_token(account) {
        let retry_after = retry_after_secs(wait).to_string();
        let reply = OmError::TooManyRequests { retry_after }.reply();
        sim.finish_call(seq, Some(reply.status), false, Fault::AccountLimit);
        tracing::debug!(method = %ctx.method, path = %ctx.path, "over the account's rate limit");
        return reply.into_response();
    }

    // Faults that come before the operation leave no trace in the order or the key store.
    let early = match fault {
        Fault::Fail(StatusCode::INTERNAL_SERVER_ERROR) => Some(OmError::Internal),
        Fault::Fail(_) => Some(OmError::Unavailable),
        Fault::RateLimit => Some(OmError::TooManyRequests {
            retry_after: sim.faults().retry_after_header(),
        }),
        _ => None,
    };
    if let Some(error) = early {
        let reply = error.reply();
        sim.finish_call(seq, Some(reply.status), false, fault);
        tracing::info!(method = %ctx.method, path = %ctx.path, status = reply.status.as_u16(), "injected error");
        return reply.into_response();
    }
    match fault {
        Fault::Drop {
            after_effect: false,
        } => {
            sim.finish_call(seq, None, false, fault);
            tracing::info!(method = %ctx.method, path = %ctx.path, "injected drop before effect");
            return drop_connection(ctx.conn).await;
        }
        Fault::Hang {
            ms,
            after_effect: false,
        } => {
            // Logged before sleeping: a client that gives up cancels this future.
            sim.finish_call(seq, None, false, fault);
            tracing::info!(method = %ctx.method, path = %ctx.path, ms, "injected hang before effect");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return OmError::GatewayTimeout.reply().into_response();
        }
        _ => {}
    }

    let (reply, replayed) = sim.apply(account, order_id, operation, key);
    let status = reply.status.as_u16();
    if is_post {
        tracing::info!(method = %ctx.method, path = %ctx.path, order_id, idempotency_key = key, status, replayed, "operation");
    } else {
        tracing::debug!(method = %ctx.method, path = %ctx.path, order_id, status, "read");
    }
    match fault {
        Fault::Drop { after_effect: true } => {
            sim.finish_call(seq, None, replayed, fault);
            tracing::info!(order_id, status, "injected drop after effect");
            drop_connection(ctx.conn).await
        }
        Fault::Hang {
            ms,
            after_effect: true,
        } => {
            sim.finish_call(seq, None, replayed, fault);
            tracing::info!(order_id, status, ms, "injected hang after effect");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply.into_response()
        }
        _ => {
            sim.finish_call(seq, Some(reply.status), replayed, fault);
            reply.into_response()
        }
    }
}

/// Closes this request's connection without an answer. The accept loop drops the
/// connection, and with it this future.
async fn drop_connection(conn: Option<ConnControl>) -> Response {
    match conn {
        Some(ConnControl(token)) => {
            token.cancel();
            std::future::pending().await
        }
        // Served without our accept loop: the nearest thing is an empty 502.
        None => StatusCode::BAD_GATEWAY.into_response(),
    }
}

fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, OmError> {
    serde_json::from_slice(body).map_err(|e| OmError::BadValue(format!("invalid JSON body: {e}")))
}

async fn seed_order(
    State(sim): State<Arc<Sim>>,
    Path(order_id): Path<String>,
    body: Bytes,
) -> Response {
    let seed: Result<Seed, OmError> = if body.is_empty() {
        Ok(Seed::default())
    } else {
        parse_body(&body)
    };
    match seed.and_then(|seed| sim.seed_order(&order_id, &seed)) {
        Ok(order) => Json(order).into_response(),
        Err(e) => e.reply().into_response(),
    }
}

/// `body`, or `{}` when it is empty.
fn parse_optional_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, OmError> {
    if body.is_empty() {
        parse_body(&Bytes::from_static(b"{}"))
    } else {
        parse_body(body)
    }
}

/// A capture made in the Portal or by the POS: `{captured_amount?, reference?,
/// description?}`, everything that remains when the amount is left out.
async fn outside_capture(
    State(sim): State<Arc<Sim>>,
    Path(order_id): Path<String>,
    body: Bytes,
) -> Response {
    let reply = match parse_optional_body(&body) {
        Ok(request) => sim.apply_outside(&order_id, Operation::Capture(request)),
        Err(e) => e.reply(),
    };
    tracing::info!(
        order_id,
        status = reply.status.as_u16(),
        "capture outside the API"
    );
    reply.into_response()
}

/// A refund made in the Portal: `{refunded_amount?, …}`, everything refundable by default.
async fn outside_refund(
    State(sim): State<Arc<Sim>>,
    Path(order_id): Path<String>,
    body: Bytes,
) -> Response {
    let reply = match parse_optional_body(&body) {
        Ok(request) => sim.apply_outside(&order_id, Operation::Refund(request)),
        Err(e) => e.reply(),
    };
    tracing::info!(
        order_id,
        status = reply.status.as_u16(),
        "refund outside the API"
    );
    reply.into_response()
}

async fn open_dispute(
    State(sim): State<Arc<Sim>>,
    Path(order_id): Path<String>,
    body: Bytes,
) -> Response {
    let opened = parse_optional_body::<DisputeRequest>(&body)
        .and_then(|request| sim.open_dispute(&order_id, &request));
    match opened {
        Ok(dispute) => (StatusCode::CREATED, Json(dispute)).into_response(),
        Err(e) => e.reply().into_response(),
    }
}

async fn update_dispute(
    State(sim): State<Arc<Sim>>,
    Path((order_id, dispute_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let updated = parse_body::<DisputeUpdate>(&body)
        .and_then(|update| sim.update_dispute(&order_id, &dispute_id, &update.status));
    match updated {
        Ok(dispute) => Json(dispute).into_response(),
        Err(e) => e.reply().into_response(),
    }
}

async fn webhooks(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.webhooks().view()).into_response()
}

/// Changes the injected duplicates and delays, or suppresses webhooks, at run time.
async fn change_webhooks(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let changed = parse_body::<InjectionChange>(&body)
        .and_then(|change| sim.webhooks().change(change).map_err(OmError::BadValue));
    match changed {
        Ok(injection) => {
            tracing::info!(?injection, "webhook injection replaced");
            Json(injection).into_response()
        }
        Err(e) => e.reply().into_response(),
    }
}

async fn clear_webhooks(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.webhooks().clear();
    StatusCode::NO_CONTENT
}

async fn sim_order(State(sim): State<Arc<Sim>>, Path(order_id): Path<String>) -> Response {
    match sim.sim_order(&order_id) {
        Ok(order) => Json(order).into_response(),
        Err(e) => e.reply().into_response(),
    }
}

async fn calls(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.calls()).into_response()
}

async fn clear_calls(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.clear_calls();
    StatusCode::NO_CONTENT
}

async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.stats()).into_response()
}

async fn clear_stats(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.clear_stats();
    StatusCode::NO_CONTENT
}

/// Replaces every fault setting (a field left out takes its default); an optional `seed`
/// also reseeds the dice.
async fn set_faults(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let parsed =
        parse_body::<serde_json::Map<String, serde_json::Value>>(&body).and_then(|mut map| {
            let seed =
                match map.remove("seed") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(seed) => Some(seed.as_u64().ok_or_else(|| {
                        OmError::BadValue("seed must be an unsigned integer".into())
                    })?),
                };
            let faults: Faults = serde_json::from_value(serde_json::Value::Object(map))
                .map_err(|e| OmError::BadValue(format!("invalid faults: {e}")))?;
            faults.validate().map_err(OmError::BadValue)?;
            Ok((faults, seed))
        });
    match parsed {
        Ok((faults, seed)) => {
            tracing::info!(?faults, ?seed, "faults replaced");
            sim.set_faults(faults, seed);
            Json(sim.faults()).into_response()
        }
        Err(e) => e.reply().into_response(),
    }
}

async fn faults(State(sim): State<Arc<Sim>>) -> Json<Faults> {
    Json(sim.faults())
}

/// Replaces the per-account rate limit (a field left out takes its default); every
/// account starts again with a full bucket.
async fn set_limits(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let parsed = parse_body::<Limits>(&body).and_then(|limits| {
        limits
            .validate()
            .map(|()| limits)
            .map_err(OmError::BadValue)
    });
    match parsed {
        Ok(limits) => {
            tracing::info!(?limits, "limits replaced");
            sim.set_limits(limits);
            Json(sim.limits()).into_response()
        }
        Err(e) => e.reply().into_response(),
    }
}

async fn limits(State(sim): State<Arc<Sim>>) -> Json<Limits> {
    Json(sim.limits())
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}
