//! The data-plane server (`--dp-addr`, Kuma's port 5678):
//!
//! - `POST /bootstrap`: a data plane registers its Dataplane (or names one
//!   already stored), its version and features, its work directory and its
//!   OTel inventory (key presence only). The control plane keeps this as the
//!   dataplane's `DataplaneInsight`.
//! - `GET /otel/{mesh}/{name}?version=N`: long-poll for the OpenTelemetry
//!   plan. Answers at once when the plan's version differs from `N`,
//!   otherwise when it changes, or with 304 after `timeout` seconds.
//!
//! Bodies are JSON; errors use the REST API's shape (field and message).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tern_api::error::{ApiError, InvalidParameter};
use tern_model::{resource_from_document, Kind, Meta, Resource, ResourceKey};
use tern_otlp_config::{Inventory, OtelPlan};
use tern_reconcile::PlanHub;
use tern_resolve::Session;
use tern_store::{Precondition, ResourceStore, Write};
use tracing::info;

/// What `tern-dp` sends when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapRequest {
    /// The Dataplane resource (Universal or Kubernetes form), to create or update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<Value>,
    /// Or the mesh and name of a Dataplane already stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub version: String,
    #[serde(default)]
    pub features: Vec<String>,
    pub work_dir: String,
    /// Parsed strictly: an inventory with unknown fields is refused.
    #[serde(default)]
    pub otel_env: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapResponse {
    pub mesh: String,
    pub name: String,
    /// Where to long-poll for the plan.
    pub plan_path: String,
}

/// A delivered plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanResponse {
    pub version: u64,
    pub plan: OtelPlan,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

struct DpState<S> {
    store: Arc<S>,
    hub: Arc<PlanHub>,
    runtime: Arc<RuntimeState>,
}

/// What data planes report while they run (delivery counts), next to what
/// their Envoys did with xDS; kept in memory, read by the API.
pub struct RuntimeState {
    delivery: std::sync::Mutex<std::collections::HashMap<(String, String), (Value, String)>>,
    xds: Arc<tern_xds::XdsHub>,
}

impl RuntimeState {
    pub fn new(xds: Arc<tern_xds::XdsHub>) -> Self {
        RuntimeState { delivery: Default::default(), xds }
    }
}

impl tern_api::RuntimeView for RuntimeState {
    fn dataplane(&self, mesh: &str, name: &str) -> Value {
        let node = tern_xds::node_id(mesh, name);
        let delivery =
            self.delivery.lock().unwrap_or_else(|p| p.into_inner()).get(&(mesh.to_string(), name.to_string())).cloned();
        let nack =
            self.xds.nack(&node).map(|n| json!({"typeUrl": n.type_url, "version": n.version, "message": n.message}));
        json!({
            "delivery": delivery.as_ref().map(|(d, _)| d.clone()),
            "deliveryReportedAt": delivery.map(|(_, t)| t),
            "xds": {"ackedVersion": self.xds.acked_version(&node), "nack": nack},
        })
    }
}

pub fn router<S: ResourceStore>(store: Arc<S>, hub: Arc<PlanHub>, runtime: Arc<RuntimeState>) -> Router {
    Router::new()
        .route("/bootstrap", post(bootstrap::<S>))
        .route("/otel/{mesh}/{name}", get(plan::<S>))
        .route("/delivery/{mesh}/{name}", post(delivery::<S>))
        .with_state(Arc::new(DpState { store, hub, runtime }))
}

/// `POST /delivery/{mesh}/{name}`: a data plane's delivery counts (names and
/// numbers only; no configuration values).
async fn delivery<S: ResourceStore>(
    State(state): State<Arc<DpState<S>>>,
    Path((mesh, name)): Path<(String, String)>,
    Json(report): Json<Value>,
) -> Result<StatusCode, ApiError> {
    if !report.get("backends").is_some_and(Value::is_array) {
        return Err(invalid("backends", "must be a list of per-backend delivery counts".into()));
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    state.runtime.delivery.lock().unwrap_or_else(|p| p.into_inner()).insert((mesh, name), (report, now));
    Ok(StatusCode::NO_CONTENT)
}

fn invalid(field: &str, reason: String) -> ApiError {
    ApiError::bad_request(
        "Bootstrap refused",
        "the bootstrap request is not valid",
        vec![InvalidParameter { field: field.into(), reason, document: None }],
    )
}

async fn bootstrap<S: ResourceStore>(
    State(state): State<Arc<DpState<S>>>,
    Json(req): Json<BootstrapRequest>,
) -> Result<Json<BootstrapResponse>, ApiError> {
    let inventory: Inventory = serde_path_to_error::deserialize(req.otel_env.clone())
        .map_err(|e| invalid(&format!("otelEnv.{}", e.path()), e.into_inner().to_string()))?;
    inventory.check_received().map_err(|reason| invalid("otelEnv", reason))?;
    if req.work_dir.is_empty() {
        return Err(invalid("workDir", "must not be empty".into()));
    }
    let dataplane =
        match (&req.dataplane, &req.mesh, &req.name) {
            (Some(doc), _, _) => {
                let parsed = resource_from_document(doc)
                    .map_err(|e| ApiError::invalid("Dataplane is not valid", &e.violations, None))?;
                if parsed.resource.kind != Kind::Dataplane {
                    return Err(invalid("dataplane", format!("must be a Dataplane, not a {}", parsed.resource.kind)));
                }
                let write = Write { resource: parsed.resource.clone(), precondition: Precondition::None };
                state.store.apply(vec![write]).await.map_err(|e| ApiError::from_store(e, None))?;
                parsed.resource
            }
            (None, Some(mesh), Some(name)) => {
                let key = ResourceKey::new(Kind::Dataplane, mesh, name);
                state.store.get(&key).await.map_err(|e| ApiError::from_store(e, None))?.ok_or_else(|| {
                    ApiError::not_found(format!("{key} not found; send its Dataplane resource instead"))
                })?
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
        otel_env: inventory,
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
    state
        .store
        .apply(vec![Write { resource: insight, precondition: Precondition::None }])
        .await
        .map_err(|e| ApiError::from_store(e, None))?;
    info!(
        mesh = %dataplane.mesh,
        dataplane = %dataplane.name,
        version = %session.version,
        otel_pipe = session.supports_otel_pipe(),
        "data plane registered"
    );
    Ok(Json(BootstrapResponse {
        plan_path: format!("/otel/{}/{}", dataplane.mesh, dataplane.name),
        mesh: dataplane.mesh,
        name: dataplane.name,
    }))
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

async fn plan<S: ResourceStore>(
    State(state): State<Arc<DpState<S>>>,
    Path((mesh, name)): Path<(String, String)>,
    Query(q): Query<PlanQuery>,
) -> Result<Response, ApiError> {
    let key = ResourceKey::new(Kind::DataplaneInsight, &mesh, &name);
    if state.store.get(&key).await.map_err(|e| ApiError::from_store(e, None))?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Not registered",
            format!("dataplane {name:?} in mesh {mesh:?} has not bootstrapped (or was deleted); POST /bootstrap first"),
        ));
    }
    let mut rx = state.hub.subscribe(&mesh, &name);
    let wait = Duration::from_secs(q.timeout.unwrap_or(30).min(300));
    let ready = |s: &tern_reconcile::PlanState| s.version != 0 && s.version != q.version;
    let outcome = tokio::time::timeout(wait, rx.wait_for(ready)).await;
    match outcome {
        Ok(Ok(s)) => {
            let body = PlanResponse { version: s.version, plan: s.plan.clone(), notes: s.notes.clone() };
            Ok(Json(body).into_response())
        }
        Ok(Err(_)) | Err(_) => Ok(StatusCode::NOT_MODIFIED.into_response()),
    }
}
