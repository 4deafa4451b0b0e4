//! A bearer token in front of a read-only port served beyond loopback
//! (monitoring assignments, metrics): the API token, so Prometheus'
//! `authorization: {credentials_file: ...}` is all it takes.

use axum::response::IntoResponse;
use std::sync::Arc;

/// Requires `Authorization: Bearer <token>` on every request of `router`.
pub fn require(router: axum::Router, token: String, what: &'static str) -> axum::Router {
    let token = Arc::new(token);
    router.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let token = token.clone();
        async move {
            let given = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            if tern_tokens::bearer(given) == Some(token.as_str()) {
                next.run(req).await
            } else {
                let body = format!(
                    "{what} beyond loopback needs `Authorization: Bearer <token>` with the API token (the data directory's api-token)\n"
                );
                (axum::http::StatusCode::UNAUTHORIZED, body).into_response()
            }
        }
    }))
}
