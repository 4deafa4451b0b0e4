//! Data-plane tokens over the API (Kuma's `POST /tokens/dataplane`), and
//! Tern's signing-key rotation and revocation. Every route here but the key
//! listing is a write, so off loopback it needs the API token.

use crate::error::ApiError;
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;
use tern_protocol::{DataplaneTokenRequest, TokenRevocation, ZoneTokenRequest};
use tern_store::ResourceStore;
use tern_tokens::keys::KeyError;
use tern_tokens::TokenKeys;

fn keys<S: ResourceStore>(state: &ApiState<S>) -> TokenKeys<S> {
    TokenKeys::new(state.store.clone())
}

const INVALID: &str = "Invalid request";

fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::Invalid { field, reason } => ApiError::field(INVALID, &field, reason),
        KeyError::NotFound(detail) => ApiError::not_found(detail),
        KeyError::Store(e) => ApiError::from_store(e, None),
        KeyError::Token(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", e.to_string()),
    }
}

/// `POST /tokens/dataplane`: the token, as text (what kumactl prints).
pub async fn generate_dataplane_token<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: DataplaneTokenRequest = ApiError::decode(INVALID, &body)?;
    let token = keys(&state).issue(&req).await.map_err(key_error)?;
    tracing::info!(mesh = %req.mesh, dataplane = %req.name, "data-plane token issued");
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token).into_response())
}

/// `POST /tokens/zone` (Kuma's path): a token admitting one zone control
/// plane to this global one, as text.
pub async fn generate_zone_token<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ZoneTokenRequest = ApiError::decode(INVALID, &body)?;
    let token = keys(&state).issue_zone(&req).await.map_err(key_error)?;
    tracing::info!(zone = %req.zone, "zone token issued");
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token).into_response())
}

/// `POST /tokens/dataplane/revocations`: refuse a token from now on.
pub async fn revoke_dataplane_token<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: TokenRevocation = ApiError::decode(INVALID, &body)?;
    keys(&state).revoke(&req.id).await.map_err(key_error)?;
    tracing::info!(token = %req.id, "data-plane token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /tokens/dataplane/signing-keys`: serials only.
pub async fn list_signing_keys<S: ResourceStore>(State(state): State<Arc<ApiState<S>>>) -> Result<Response, ApiError> {
    let keys = keys(&state).list().await.map_err(key_error)?;
    Ok(Json(json!({"items": keys})).into_response())
}

/// `POST /tokens/dataplane/signing-keys`: a new key that signs from now on.
pub async fn rotate_signing_key<S: ResourceStore>(State(state): State<Arc<ApiState<S>>>) -> Result<Response, ApiError> {
    let serial = keys(&state).rotate().await.map_err(key_error)?;
    tracing::info!(serial, "data-plane token signing key added; new tokens are signed with it");
    Ok((StatusCode::CREATED, Json(json!({"serial": serial}))).into_response())
}

/// `DELETE /tokens/dataplane/signing-keys/{serial}`: tokens it signed stop working.
pub async fn remove_signing_key<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path(serial): Path<String>,
) -> Result<StatusCode, ApiError> {
    let serial: u32 = serial.parse().map_err(|_| ApiError::field(INVALID, "serial", "must be a whole number"))?;
    keys(&state).remove(serial).await.map_err(key_error)?;
    tracing::info!(serial, "data-plane token signing key removed");
    Ok(StatusCode::NO_CONTENT)
}
