//! The data-plane server (`--dp-addr`, Kuma's port 5678):
//!
//! - `POST /bootstrap`: a data plane registers its Dataplane (or names one
//!   already stored), its version and features, its work directory and its
//!   OTel inventory (key presence only). The control plane keeps this as the
//!   dataplane's `DataplaneInsight`.
//! - `GET /otel/{mesh}/{name}?version=N`: long-poll for the OpenTelemetry
//!   plan. Answers at once when the plan's version differs from `N`,
//!   otherwise when it changes, or with 304 after `timeout` seconds.
//! - `POST /delivery/{mesh}/{name}`: the data plane's delivery counts.
//!
//! Every request carries a data-plane token (`Authorization: Bearer`) and
//! may touch only the dataplane the token names ([`DpAuth`]). Bodies are the
//! typed messages of `tern-protocol`; errors use the REST API's shape.

mod group_commit;
mod runtime;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tern_api::error::ApiError;
use tern_model::spec::DataplaneSpec;
use tern_model::{resource_from_document, Kind, Meta, Resource, ResourceKey};
use tern_protocol::{BootstrapRequest, BootstrapResponse, DeliveryReport, PlanResponse};
use tern_reconcile::PlanHub;
use tern_resolve::Session;
use tern_store::{Precondition, ResourceStore, Write};
use tern_tokens::{Authenticate, Identity, TokenError};
use tracing::info;

pub use runtime::RuntimeState;

/// The largest body the data-plane server reads (a Dataplane and an inventory fit many times over).
pub const MAX_BODY: usize = 256 * 1024;

/// Who may call the data-plane server.
#[derive(Clone)]
pub enum DpAuth {
    /// Data-plane tokens: every request proves which dataplane it speaks for.
    Tokens(Arc<dyn Authenticate>),
    /// No authentication (`--dp-auth none`; refused off loopback).
    Off,
}

impl DpAuth {
    /// The identity the request's token proves; `None` when authentication is off.
    async fn identity(&self, headers: &HeaderMap) -> Result<Option<Identity>, ApiError> {
        let DpAuth::Tokens(auth) = self else { return Ok(None) };
        let value = headers.get(tern_protocol::AUTHORIZATION).and_then(|v| v.to_str().ok());
        auth.authenticate(value).await.map(Some).map_err(refused)
    }

    /// Checks that the caller may act as `mesh`/`name`.
    async fn allow(&self, headers: &HeaderMap, mesh: &str, name: &str) -> Result<(), ApiError> {
        match self.identity(headers).await? {
            Some(identity) => check_identity(&identity, mesh, name),
            None => Ok(()),
        }
    }
}

fn refused(e: TokenError) -> ApiError {
    if e.is_client_error() {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", e.to_string())
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", e.to_string())
    }
}

fn check_identity(identity: &Identity, mesh: &str, name: &str) -> Result<(), ApiError> {
    if identity.is(mesh, name) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "this data-plane token is for dataplane {:?} in mesh {:?}; it cannot act as {name:?} in mesh {mesh:?}",
            identity.name, identity.mesh
        ),
    ))
}

struct DpState<S> {
    store: Arc<S>,
    hub: Arc<PlanHub>,
    runtime: Arc<RuntimeState>,
    auth: DpAuth,
    /// Bootstraps arriving together are written together.
    commits: group_commit::GroupCommit,
}

pub fn router<S: ResourceStore>(store: Arc<S>, hub: Arc<PlanHub>, runtime: Arc<RuntimeState>, auth: DpAuth) -> Router {
    Router::new()
        .route("/bootstrap", post(bootstrap::<S>))
        .route("/otel/{mesh}/{name}", get(plan::<S>))
        .route("/delivery/{mesh}/{name}", post(delivery::<S>))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(DpState { store, hub, runtime, auth, commits: Default::default() }))
}

/// `POST /delivery/{mesh}/{name}`: a data plane's delivery counts (names and
/// numbers only; no configuration values).
async fn delivery<S: ResourceStore>(
    State(state): State<Arc<DpState<S>>>,
    Path((mesh, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    state.auth.allow(&headers, &mesh, &name).await?;
    let report: DeliveryReport = ApiError::decode(REPORT_REFUSED, &body)?;
    report.check().map_err(|(field, reason)| ApiError::field(REPORT_REFUSED, &field, reason))?;
    registered(&state, &mesh, &name).await?;
    state.runtime.record_delivery(&mesh, &name, report);
    Ok(StatusCode::NO_CONTENT)
}

const REPORT_REFUSED: &str = "Delivery report refused";

fn invalid(field: &str, reason: String) -> ApiError {
    ApiError::field("Bootstrap refused", field, reason)
}

async fn bootstrap<S: ResourceStore>(
    State(state): State<Arc<DpState<S>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<BootstrapResponse>, ApiError> {
    let identity = state.auth.identity(&headers).await?;
    let req: BootstrapRequest = ApiError::decode("Bootstrap refused", &body)?;
    req.otel_env.check_received().map_err(|reason| invalid("otelEnv", reason))?;
    if req.work_dir.is_empty() {
        return Err(invalid("workDir", "must not be empty".into()));
    }
    // A Dataplane sent along is written with its insight, in one batch.
    let (dataplane, dataplane_write) = match (&req.dataplane, &req.mesh, &req.name) {
        (Some(doc), _, _) => {
            let parsed = resource_from_document(doc)
                .map_err(|e| ApiError::invalid("Dataplane is not valid", &e.violations, None))?;
            if parsed.resource.kind != Kind::Dataplane {
                return Err(invalid("dataplane", format!("must be a Dataplane, not a {}", parsed.resource.kind)));
            }
            authorize_dataplane(identity.as_ref(), &parsed.resource)?;
            let write = Write { resource: parsed.resource.clone(), precondition: Precondition::None };
            (parsed.resource, Some(write))
        }
        (None, Some(mesh), Some(name)) => {
            if let Some(identity) = &identity {
                check_identity(identity, mesh, name)?;
            }
            let key = ResourceKey::new(Kind::Dataplane, mesh, name);
            let stored = state.store.get(&key).await.map_err(|e| ApiError::from_store(e, None))?;
            let stored = stored
                .ok_or_else(|| ApiError::not_found(format!("{key} not found; send its Dataplane resource instead")))?;
            authorize_dataplane(identity.as_ref(), &stored)?;
            (stored, None)
        }
        _ => {
            return Err(invalid(
                "dataplane",
                "send the Dataplane resource, or the mesh and name of a stored one".into(),
            ))
        }
    };
    let session = Session {
        version: req.version,
        features: req.features,
        work_dir: req.work_dir,
        otel_env: req.otel_env,
        connect_time: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    };
    let insight = Resource {
        kind: Kind::DataplaneInsight,
        mesh: dataplane.mesh.clone(),
        name: dataplane.name.clone(),
        labels: [(tern_model::resource::MESH_LABEL.to_string(), dataplane.mesh.clone())].into(),
        spec: json!({"session": session}),
        status: None,
        meta: Meta::default(),
    };
    let mut writes: Vec<Write> = dataplane_write.into_iter().collect();
    writes.push(Write { resource: insight, precondition: Precondition::None });
    state.commits.apply(&*state.store, writes).await.map_err(|e| ApiError::from_store(e, None))?;
    info!(
        mesh = %dataplane.mesh,
        dataplane = %dataplane.name,
        version = %session.version,
        otel_pipe = session.supports_otel_pipe(),
        "data plane registered"
    );
    Ok(Json(BootstrapResponse {
        plan_path: format!("/otel/{}/{}", dataplane.mesh, dataplane.name),
        dataplane: Some(dataplane.to_json()),
        mesh: dataplane.mesh,
        name: dataplane.name,
    }))
}

/// The token's dataplane must be this one, and every inbound must carry the
/// token's tags (Kuma's rule for tokens with tags).
fn authorize_dataplane(identity: Option<&Identity>, dataplane: &Resource) -> Result<(), ApiError> {
    let Some(identity) = identity else { return Ok(()) };
    check_identity(identity, &dataplane.mesh, &dataplane.name)?;
    if identity.tags.is_empty() {
        return Ok(());
    }
    let spec: DataplaneSpec = serde_json::from_value(dataplane.spec.clone()).unwrap_or_default();
    let inbounds = spec.networking.map(|n| n.inbound).unwrap_or_default();
    let all_tagged =
        inbounds.iter().all(|i| identity.tags.iter().all(|(k, v)| i.tags.get(k).is_some_and(|have| have == v)));
    if all_tagged {
        return Ok(());
    }
    let wanted: Vec<String> = identity.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!("this data-plane token requires every inbound to carry the tags {}", wanted.join(", ")),
    ))
}

#[derive(Debug, Deserialize)]
struct PlanQuery {
    /// The version the data plane holds; 0 or absent for none.
    #[serde(default)]
    version: u64,
    /// Seconds to wait for a change (default 30, at most 300).
    #[serde(default)]
    timeout: Option<u64>,
}

/// 404 unless the dataplane has bootstrapped (its insight exists). A
/// dataplane with a computed plan has; others are looked up in the store.
async fn registered<S: ResourceStore>(state: &DpState<S>, mesh: &str, name: &str) -> Result<(), ApiError> {
    if state.hub.knows(mesh, name) {
        return Ok(());
    }
    let key = ResourceKey::new(Kind::DataplaneInsight, mesh, name);
    if state.store.get(&key).await.map_err(|e| ApiError::from_store(e, None))?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Not registered",
            format!("dataplane {name:?} in mesh {mesh:?} has not bootstrapped (or was deleted); POST /bootstrap first"),
        ));
    }
    Ok(())
}

async fn plan<S: ResourceStore>(
    State(state): State<Arc<DpState<S>>>,
    Path((mesh, name)): Path<(String, String)>,
    Query(q): Query<PlanQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.auth.allow(&headers, &mesh, &name).await?;
    registered(&state, &mesh, &name).await?;
    let mut rx = state.hub.subscribe(&mesh, &name);
    let wait = Duration::from_secs(q.timeout.unwrap_or(30).min(300));
    let ready = |s: &tern_reconcile::PlanState| s.version != 0 && s.version != q.version;
    let waiting = state.runtime.poll_started();
    let since = std::time::Instant::now();
    let outcome = tokio::time::timeout(wait, rx.wait_for(ready)).await;
    drop(waiting);
    match outcome {
        Ok(Ok(s)) => {
            // Published while this poll waited: the plan's delivery latency.
            if let Some(published) = s.published.filter(|p| *p >= since) {
                state.runtime.plan_delivered(published);
            }
            let body = PlanResponse { version: s.version, plan: s.plan.clone(), notes: s.notes.clone() };
            Ok(Json(body).into_response())
        }
        Ok(Err(_)) | Err(_) => Ok(StatusCode::NOT_MODIFIED.into_response()),
    }
}
