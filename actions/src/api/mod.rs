//! The commands API, served beside the probes:
//!
//! - `POST /v1/orders/{order_id}/captures` `{"amount"?, "reference"?, "description"?}`
//! - `POST /v1/orders/{order_id}/refunds` `{"amount", "reference"?, "description"?}`
//! - `POST /v1/orders/{order_id}/cancel`, `POST /v1/orders/{order_id}/release-remaining-authorization`
//! - `GET /v1/commands/{command_id}`, `GET /v1/orders/{order_id}/commands`
//!
//! Bearer tokens (`auth.rs`), an optional `Idempotency-Key` (at most 255 visible ASCII
//! characters, scoped by the token's name). A POST answers 202 with the command once the
//! broker acknowledged it, 503 with `Retry-After` when the log or the database cannot
//! take it; every refusal is a JSON `{"error", "message"}` and appends nothing.
//!
//! A token limited to some accounts (the accounts file's `[api_tokens.NAME]`) acts only
//! on orders whose account the ledger knows (its finalized session is recorded) and is
//! one of its own: any other order, of another account or of none known yet, answers
//! 404 exactly as an order nobody knows, and so do its commands. Nothing tells it that
//! another account's order exists.

mod auth;

use std::sync::Arc;

use axum::{
    body::{to_bytes, Body},
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use ipp_schemas::{
    trace::{TraceContext, TRACEPARENT},
    CommandKind,
};
use ipp_service::traces::{Kind, Span};
use serde_json::json;
use sqlx::PgPool;
use tracing::{info, warn};
use uuid::Uuid;

pub use auth::Tokens;

use crate::{
    command::{self, CommandLog, CommandRequest, CommandState, IssueError, RequestError},
    ledger,
    metrics::Metrics,
};
use auth::Caller;

/// The largest request body: far above any command, far below anything harmful.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

pub struct Api {
    pub pool: PgPool,
    pub log: CommandLog,
    pub tokens: Tokens,
    pub metrics: Arc<Metrics>,
    pub retry_after_secs: u64,
}

pub fn router(api: Arc<Api>) -> Router {
    let mut router = Router::new();
    for (path, kind) in [
        ("captures", CommandKind::Capture),
        ("refunds", CommandKind::Refund),
        ("cancel", CommandKind::Cancel),
        (
            "release-remaining-authorization",
            CommandKind::ReleaseRemainingAuthorization,
        ),
    ] {
        let handler =
            move |api, order_id, headers, body| post_command(api, order_id, headers, body, kind);
        router = router.route(&format!("/v1/orders/{{order_id}}/{path}"), post(handler));
    }
    router
        .route("/v1/orders/{order_id}/commands", get(order_commands))
        .route("/v1/commands/{command_id}", get(show_command))
        .with_state(api)
}

/// A refusal: its status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn unavailable(code: &'static str, message: String, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = ipp_service::http::json_error(self.status, self.code, &self.message);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

async fn post_command(
    State(api): State<Arc<Api>>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    body: Body,
    kind: CommandKind,
) -> Response {
    let result = accept_command(&api, &order_id, &headers, body, kind).await;
    let outcome = match &result {
        Ok((_, true)) => "replayed",
        Ok((_, false)) => "accepted",
        Err(e) => e.code,
    };
    api.metrics
        .api_requests
        .with_label_values(&[kind.as_str(), outcome])
        .inc();
    match result {
        Ok((response, _)) => response,
        Err(e) => e.into_response(),
    }
}

/// Authenticate, read, check, issue: a 202 only once the command is in the log.
async fn accept_command(
    api: &Api,
    order_id: &str,
    headers: &HeaderMap,
    body: Body,
    kind: CommandKind,
) -> Result<(Response, bool), ApiError> {
    let caller = authenticate(api, headers)?;
    let order_id = parse_uuid(order_id, "invalid_order_id", "order id")?;
    check_order_visible(api, caller, order_id).await?;
    let scope = caller.name;
    let key = idempotency_key(headers)?;
    let body = to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    })?;
    if !body.is_empty() {
        check_json_content_type(headers)?;
    }
    let request = CommandRequest::from_body(order_id, kind, &body).map_err(|e| match e {
        RequestError::Json(message) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
        }
        RequestError::Invalid(message) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
        }
    })?;
    // The caller's trace continued (or a new one), for the command's calls to join.
    let (trace, caller_trace) =
        TraceContext::continue_or_start(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()));
    let mut span = Span::start("issue command", Kind::Server, &trace, caller_trace.as_ref());
    span.attribute("ipp.command.kind", kind.as_str());
    let issued = command::issue(&api.pool, &api.log, scope, key.as_deref(), &request, &trace)
        .await
        .inspect_err(|e| {
            if !matches!(e, IssueError::KeyReused { .. }) {
                span.error(e.to_string());
            }
        })
        .map_err(|e| match e {
            IssueError::KeyReused { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                e.to_string(),
            ),
            IssueError::Database(db) => {
                warn!(error = %db, "command not accepted: database unavailable");
                ApiError::unavailable(
                    "database_unavailable",
                    "the ledger is unavailable; nothing was accepted, try again".into(),
                    api.retry_after_secs,
                )
            }
            IssueError::Log(kafka) => {
                warn!(error = %kafka, "command not accepted: the log did not acknowledge it");
                ApiError::unavailable(
                    "log_unavailable",
                    "the command log is unavailable; nothing was accepted, try again".into(),
                    api.retry_after_secs,
                )
            }
        })?;
    let command = &issued.command;
    info!(
        command_id = %command.command_id,
        order_id = %command.order_id,
        kind = %command.kind,
        amount = command.amount,
        issued_by = %command.issued_by,
        replayed = issued.replayed,
        "command accepted"
    );
    // A replay may already have an outcome; a command just appended is pending.
    let known = if issued.replayed {
        command::state::find(&api.pool, command.command_id)
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let body = Json(known.unwrap_or_else(|| CommandState::accepted(command)));
    let location = format!("/v1/commands/{}", command.command_id);
    let mut response = (StatusCode::ACCEPTED, body).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok((response, issued.replayed))
}

async fn show_command(
    State(api): State<Arc<Api>>,
    Path(command_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&api, &headers)?;
    let command_id = parse_uuid(&command_id, "invalid_command_id", "command id")?;
    let no_such_command = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_command",
            format!("no command {command_id}"),
        )
    };
    let state = match command::state::find(&api.pool, command_id).await {
        Ok(Some(state)) => state,
        Ok(None) => return Err(no_such_command()),
        Err(e) => return Err(database_unavailable(&api, &e)),
    };
    // Another account's command is answered as one that does not exist.
    check_order_visible(&api, caller, state.order_id)
        .await
        .map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                no_such_command()
            } else {
                e
            }
        })?;
    Ok(Json(state).into_response())
}

async fn order_commands(
    State(api): State<Arc<Api>>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&api, &headers)?;
    let order_id = parse_uuid(&order_id, "invalid_order_id", "order id")?;
    check_order_visible(&api, caller, order_id).await?;
    match command::state::for_order(&api.pool, order_id).await {
        Ok(commands) => {
            Ok(Json(json!({ "order_id": order_id, "commands": commands })).into_response())
        }
        Err(e) => Err(database_unavailable(&api, &e)),
    }
}

fn database_unavailable(api: &Api, e: &sqlx::Error) -> ApiError {
    warn!(error = %e, "reading commands failed");
    ApiError::unavailable(
        "database_unavailable",
        "the ledger is unavailable, try again".into(),
        api.retry_after_secs,
    )
}

/// For a token limited to some accounts: 404 `no_such_order` unless the order's account
/// is known and one of the token's. The same answer for an order of another account, of
/// no known account, or of nobody, so that it reveals nothing.
async fn check_order_visible(
    api: &Api,
    caller: Caller<'_>,
    order_id: Uuid,
) -> Result<(), ApiError> {
    if !caller.is_limited() {
        return Ok(());
    }
    let account = ledger::account_of(&api.pool, order_id)
        .await
        .map_err(|e| database_unavailable(api, &e))?;
    if caller.permits(account.as_deref()) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_order",
        format!(
            "no order {order_id} of this token's accounts is known (an order is known once \
             its finalized session is recorded)"
        ),
    ))
}

/// The caller: its token's name (the scope of its Idempotency-Keys) and accounts.
fn authenticate<'a>(api: &'a Api, headers: &HeaderMap) -> Result<Caller<'a>, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default());
    api.tokens
        .authenticate(authorization)
        .map_err(|why| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why))
}

fn parse_uuid(value: &str, code: &'static str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("the {what} must be a UUID, not {value:?}"),
        )
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = |message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", message)
    };
    let key = value
        .to_str()
        .map_err(|_| invalid("the Idempotency-Key must be visible ASCII".into()))?
        .trim();
    // Inner spaces or tabs would make two keys that look alike differ.
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "the Idempotency-Key must be visible ASCII, without spaces".into(),
        ));
    }
    if key.is_empty() {
        return Err(invalid("the Idempotency-Key is empty".into()));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(invalid(format!(
            "the Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )));
    }
    Ok(Some(key.to_owned()))
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the body must be application/json, not {content_type:?}"),
        ))
    }
}

/// The answer when no token is configured: the API is off.
pub fn disabled() -> Router {
    Router::new().route(
        "/v1/{*rest}",
        axum::routing::any(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "commands_api_off",
                "the commands API is off: set ACTIONS_API_TOKENS",
            )
        }),
    )
}
