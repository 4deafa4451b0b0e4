//! Who may write: anyone on loopback; with a bearer token otherwise.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

/// The write policy the API runs with.
#[derive(Debug, Clone, Default)]
pub struct WriteAuth {
    /// When set, every write must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// Refuses writes without the right bearer token when one is required.
pub async fn require_token(State(auth): State<Arc<WriteAuth>>, req: Request, next: Next) -> Result<Response, ApiError> {
    let Some(expected) = &auth.token else { return Ok(next.run(req).await) };
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(next.run(req).await);
    }
    let given =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token).unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "this API listens beyond loopback, so writes need `Authorization: Bearer <token>`; the token is in the \
             control plane's data directory (api-token), and ternctl reads it from TERN_TOKEN or its config file",
        ))
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 9110, section 11.1), so `bearer` works too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start())
}

/// Compares without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
