//! API errors, rendered in Kuma's error body shape:
//! `{type, status, title, detail, invalid_parameters[], details, causes[]}`.

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tern_model::{Violation, Violations};
use tern_store::StoreError;

pub use tern_protocol::{Cause, ErrorBody, InvalidParameter};

/// An error the API answers with.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub title: String,
    pub detail: String,
    pub invalid: Vec<InvalidParameter>,
}

impl ApiError {
    pub fn new(status: StatusCode, title: &str, detail: impl Into<String>) -> Self {
        ApiError { status, title: title.into(), detail: detail.into(), invalid: vec![] }
    }

    pub fn bad_request(title: &str, detail: impl Into<String>, invalid: Vec<InvalidParameter>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, title: title.into(), detail: detail.into(), invalid }
    }

    /// A 400 naming one field of a request body and the rule it broke.
    pub fn field(title: &str, field: &str, reason: impl Into<String>) -> Self {
        let invalid = vec![InvalidParameter { field: field.into(), reason: reason.into(), document: None }];
        Self::bad_request(title, "the request is not valid", invalid)
    }

    /// Reads a typed JSON body; a bad one is a 400 naming the field (its
    /// path in the body) and what is wrong with it.
    pub fn decode<T: serde::de::DeserializeOwned>(title: &str, body: &[u8]) -> Result<T, Self> {
        let mut de = serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "" } else { path.as_str() };
            Self::field(title, field, e.into_inner().to_string())
        })
    }

    /// A 400 listing every violation of one resource.
    pub fn invalid(title: &str, violations: &Violations, document: Option<usize>) -> Self {
        Self::bad_request(title, "Resource is not valid", parameters(violations, document))
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Could not retrieve a resource", detail)
    }

    pub fn mesh_not_found(mesh: &str, document: Option<usize>) -> Self {
        Self::bad_request(
            "Mesh is not found",
            "Mesh is not found",
            vec![InvalidParameter {
                field: "mesh".into(),
                reason: format!("mesh of name {mesh} is not found"),
                document,
            }],
        )
    }

    /// Maps a store error; `title` is used for the 4xx cases the caller caused.
    pub fn from_store(e: StoreError, document: Option<usize>) -> Self {
        match e {
            StoreError::NotFound(key) => Self::not_found(format!("{key} not found")),
            StoreError::MeshNotFound { mesh, .. } => Self::mesh_not_found(&mesh, document),
            // Kuma's answer: a validation error on the field `mesh`.
            e @ StoreError::MeshHasDataplanes { .. } => Self::bad_request(
                "Could not delete a resource",
                "Resource is not valid",
                vec![InvalidParameter { field: "mesh".into(), reason: e.to_string(), document }],
            ),
            e @ (StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => {
                Self::new(StatusCode::CONFLICT, "Conflict", e.to_string())
            }
            e @ StoreError::ReadOnly { .. } => {
                Self::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", e.to_string())
            }
            StoreError::Backend(msg) => {
                tracing::error!(error = %msg, "store failure");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", format!("store failure: {msg}"))
            }
        }
    }
}

/// The title for an answer of `status` that no handler wrote (axum's body
/// rejections, unknown paths, wrong methods): Kuma's wording where it has one.
fn title_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNSUPPORTED_MEDIA_TYPE
        | StatusCode::UNPROCESSABLE_ENTITY => "Could not process a resource",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
        s => s.canonical_reason().unwrap_or("Error"),
    }
}

/// A request body that could not be read (too large, for instance).
impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        ApiError::new(r.status(), title_for(r.status()), r.body_text())
    }
}

/// A JSON body that could not be read: wrong content type (415), not JSON
/// (400), JSON of the wrong shape (422), too large (413).
impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(r.status(), title_for(r.status()), r.body_text())
    }
}

/// The most of a plain-text error body [`kuma_shape`] reads.
const PLAIN_ERROR_LIMIT: usize = 16 * 1024;

/// Rewrites error answers that are not already JSON (axum's rejections and
/// fallbacks are plain text or empty) into Kuma's error body, so every
/// route, whichever extractor it uses, answers errors in one shape.
pub async fn kuma_shape(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, PLAIN_ERROR_LIMIT).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let detail = if text.is_empty() { status.canonical_reason().unwrap_or("Error").to_string() } else { text };
    let mut shaped = ApiError::new(status, title_for(status), detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().append(name.clone(), value.clone());
        }
    }
    shaped
}

pub fn parameters(violations: &Violations, document: Option<usize>) -> Vec<InvalidParameter> {
    violations
        .iter()
        .map(|Violation { field, message }| InvalidParameter {
            field: field.clone(),
            reason: message.clone(),
            document,
        })
        .collect()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            type_: "/std-errors".into(),
            status: self.status.as_u16(),
            title: self.title,
            details: self.detail.clone(),
            detail: self.detail,
            causes: self.invalid.iter().map(|p| Cause { field: p.field.clone(), message: p.reason.clone() }).collect(),
            invalid_parameters: self.invalid,
        };
        (self.status, Json(body)).into_response()
    }
}
