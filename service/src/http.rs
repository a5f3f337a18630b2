//! What every service answers the same way over HTTP: an error is JSON
//! `{"error": code, "message": ...}`, and so are the 404 of a path it does not serve and
//! the 405 of a method a path does not accept.

use axum::{
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json, Router,
};
use serde_json::json;

/// The JSON error body of every answer that is not a success.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": code, "message": message }))).into_response()
}

/// `router` answering a JSON 404 for any other path and a JSON 405 for any other method.
pub fn with_json_fallbacks(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let message = format!("no route for {method} {}", uri.path());
    json_error(StatusCode::NOT_FOUND, "not_found", &message)
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message = format!("{} does not accept {method}", uri.path());
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &message,
    )
}
