//! `POST /_apply` (Tern's addition): many documents in either form, validated
//! together and written in one transaction, so a file with one bad document
//! changes nothing. `ternctl apply` uses it.

use crate::error::{parameters, ApiError, InvalidParameter};
use crate::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use tern_model::resource_from_document;
use tern_store::{Precondition, ResourceStore, StoreError, Write, WriteOutcome};

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest {
    /// Documents in Kubernetes or Universal form, in file order.
    pub documents: Vec<Value>,
    /// Validate only; write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct ApplyResponse {
    pub results: Vec<ApplyResult>,
}

/// What happened to one document.
#[derive(Debug, Deserialize, Serialize)]
pub struct ApplyResult {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mesh: String,
    pub name: String,
    /// `created`, `updated`, `unchanged`, or `valid` on a dry run.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

pub async fn apply<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    req: Result<Json<ApplyRequest>, JsonRejection>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let Json(req) = req?;
    let mut parsed = Vec::with_capacity(req.documents.len());
    let mut invalid: Vec<InvalidParameter> = Vec::new();
    let mut broken = Vec::new();
    for (i, doc) in req.documents.iter().enumerate() {
        match resource_from_document(doc) {
            Ok(p) if p.resource.kind.is_read_only() => {
                invalid.push(InvalidParameter {
                    field: "type".into(),
                    reason: format!("{} is written by the control plane only", p.resource.kind),
                    document: Some(i + 1),
                });
                broken.push(describe(i + 1, &p.resource.kind.to_string(), &p.resource.name));
            }
            Ok(p) => parsed.push(p),
            Err(e) => {
                invalid.extend(parameters(&e.violations, Some(i + 1)));
                broken.push(describe(i + 1, e.kind.as_deref().unwrap_or("resource"), e.name.as_deref().unwrap_or("")));
            }
        }
    }
    if !invalid.is_empty() {
        let detail = format!("{} not valid; nothing was applied", broken.join(", "));
        return Err(ApiError::bad_request("Failed to apply resources", detail, invalid));
    }
    let writes: Vec<Write> =
        parsed.iter().map(|p| Write { resource: p.resource.clone(), precondition: Precondition::None }).collect();
    let outcomes: Vec<Option<WriteOutcome>> = if req.dry_run {
        vec![None; writes.len()]
    } else {
        state.store.apply(writes).await.map_err(|e| locate(e, &parsed))?.into_iter().map(Some).collect()
    };
    let results = parsed
        .into_iter()
        .zip(outcomes)
        .map(|(p, outcome)| {
            for w in &p.warnings {
                tracing::warn!(resource = %p.resource.key(), warning = %w, "accepted with a warning");
            }
            ApplyResult {
                type_: p.resource.kind.to_string(),
                mesh: p.resource.mesh,
                name: p.resource.name,
                outcome: match outcome {
                    None => "valid",
                    Some(WriteOutcome::Created { .. }) => "created",
                    Some(WriteOutcome::Updated { .. }) => "updated",
                    Some(WriteOutcome::Unchanged { .. }) => "unchanged",
                }
                .into(),
                version: outcome.map(WriteOutcome::version),
                warnings: p.warnings,
            }
        })
        .collect();
    Ok(Json(ApplyResponse { results }))
}

fn describe(index: usize, kind: &str, name: &str) -> String {
    format!("document {index} ({kind} {name:?})")
}

/// Names the document a store refusal is about.
fn locate(e: StoreError, parsed: &[tern_model::ParsedResource]) -> ApiError {
    let doc_of = |key: &tern_model::ResourceKey| parsed.iter().position(|p| &p.resource.key() == key).map(|i| i + 1);
    match &e {
        StoreError::MeshNotFound { key, .. } => {
            let doc = doc_of(key);
            let mut err = ApiError::from_store(e, doc);
            err.detail = format!(
                "{} is in a mesh that does not exist; create the Mesh first (it may come earlier in the same file); nothing was applied",
                doc.map(|d| format!("document {d}")).unwrap_or_else(|| "a document".into())
            );
            err
        }
        _ => ApiError::from_store(e, None),
    }
}
