//! Who may write: anyone on loopback; with a bearer token otherwise; and
//! nobody, through the API, to resources that live in Kubernetes.

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
    /// When set, resource writes (`PUT`/`DELETE` under `/meshes`, `/_apply`)
    /// are refused with this message: on Kubernetes resources are written
    /// with kubectl, as in Kuma. Tokens and signing keys stay writable.
    pub resources_read_only: Option<String>,
}

/// Kuma's message, in Tern's words, for a resource write on Kubernetes.
pub const KUBERNETES_READ_ONLY: &str = "On Kubernetes you cannot change the state of Tern resources with 'ternctl \
    apply' or via the HTTP API. As a best practice, you should always be using 'kubectl apply' instead. You can still \
    use 'ternctl' or the HTTP API to make read-only operations. On Universal this limitation does not apply.";

/// Refuses writes without the right bearer token when one is required.
pub async fn require_token(State(auth): State<Arc<WriteAuth>>, req: Request, next: Next) -> Result<Response, ApiError> {
    if let Some(message) = &auth.resources_read_only {
        let path = req.uri().path();
        let method = req.method();
        let resource_write = (path == "/_apply" && method == Method::POST)
            || ((path == "/meshes" || path.starts_with("/meshes/")) && matches!(*method, Method::PUT | Method::DELETE));
        if resource_write {
            return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", message));
        }
    }
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
