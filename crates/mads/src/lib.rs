//! Monitoring assignment discovery, Kuma's MADS as Prometheus'
//! `kuma_sd_configs` speaks it: `POST /v3/discovery:monitoringassignments`
//! with an xDS `DiscoveryRequest` in JSON (`node.id` is the Prometheus
//! client id), answered with one `MonitoringAssignment` per data plane whose
//! merged MeshMetric has a Prometheus backend for that client, or 304 while
//! the client's version is current (long-polled up to `fetch-timeout`).
//!
//! - [`assignments`]: pure, from the data planes and their plans' endpoints;
//! - [`router`]: the HTTP side over an [`AssignmentSource`].

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tern_model::spec::dataplane::{DataplaneSpec, SERVICE_TAG};
use tern_model::spec::mesh_metric::DEFAULT_PROMETHEUS_CLIENT;
use tern_model::Resource;
use tern_otlp_config::PrometheusEndpoint;

pub const TYPE_URL: &str = "type.googleapis.com/kuma.observability.v1.MonitoringAssignment";
pub const PATH: &str = "/v3/discovery:monitoringassignments";
/// Kuma's default `fetch-timeout`.
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting request looks again (Kuma's `assignmentRefreshInterval`).
const REFRESH: Duration = Duration::from_secs(1);
/// The longest a request may wait, whatever it asks.
const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// One data plane to scrape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MonitoringAssignment {
    #[serde(rename = "@type")]
    pub type_url: String,
    pub mesh: String,
    pub service: String,
    pub targets: Vec<Target>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub scheme: String,
    pub address: String,
    pub metrics_path: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A data plane's Prometheus endpoints, as its current plan has them.
pub type Endpoints = BTreeMap<(String, String), Vec<PrometheusEndpoint>>;

/// The assignments for Prometheus client `client`: a client no backend
/// names is served as `_kuma-default-client` (Kuma's fallback). Targets
/// carry the data plane's inbound tags as labels, so `labelmap` on
/// `__meta_kuma_label_(.+)` gives series `kuma_io_service` and the like.
pub fn assignments(client: &str, dataplanes: &[Resource], endpoints: &Endpoints) -> Vec<MonitoringAssignment> {
    let known: BTreeSet<&str> = endpoints.values().flatten().map(|e| e.client_id.as_str()).collect();
    let client = if known.contains(client) { client } else { DEFAULT_PROMETHEUS_CLIENT };
    let mut out = Vec::new();
    for dp in dataplanes {
        let Some(list) = endpoints.get(&(dp.mesh.clone(), dp.name.clone())) else { continue };
        let Ok(spec) = serde_json::from_value::<DataplaneSpec>(dp.spec.clone()) else { continue };
        let Some(net) = spec.networking.as_ref() else { continue };
        let tags: BTreeMap<String, String> = net.inbound.iter().flat_map(|i| i.tags.clone()).collect();
        let service = tags.get(SERVICE_TAG).cloned().unwrap_or_else(|| dp.name.clone());
        for e in list.iter().filter(|e| e.client_id == client) {
            let host = if net.address.contains(':') { format!("[{}]", net.address) } else { net.address.clone() };
            out.push(MonitoringAssignment {
                type_url: TYPE_URL.into(),
                mesh: dp.mesh.clone(),
                service: service.clone(),
                targets: vec![Target {
                    name: dp.name.clone(),
                    scheme: if e.tls { "https" } else { "http" }.into(),
                    address: format!("{host}:{}", e.port),
                    metrics_path: e.path.clone(),
                    labels: tags.clone(),
                }],
                labels: BTreeMap::new(),
            });
        }
    }
    out
}

/// The version of a set of assignments: it moves only when they change
/// (within one control plane; after a restart a client gets them once more).
pub fn version(assignments: &[MonitoringAssignment]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    assignments.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Where assignments come from: the control plane's data planes and plans.
pub trait AssignmentSource: Send + Sync + 'static {
    fn current(
        &self,
        client: String,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<MonitoringAssignment>, String>> + Send + '_>>;
}

/// xDS `DiscoveryRequest` as Prometheus sends it (proto names; camelCase accepted too).
#[derive(Debug, Default, Deserialize)]
struct DiscoveryRequest {
    #[serde(default, alias = "versionInfo")]
    version_info: String,
    #[serde(default)]
    node: Option<Node>,
}

#[derive(Debug, Default, Deserialize)]
struct Node {
    #[serde(default)]
    id: String,
}

#[derive(Debug, Serialize)]
struct DiscoveryResponse {
    version_info: String,
    resources: Vec<MonitoringAssignment>,
    type_url: &'static str,
    nonce: String,
}

/// `POST /v3/discovery:monitoringassignments` over `source`.
pub fn router(source: Arc<dyn AssignmentSource>) -> axum::Router {
    axum::Router::new().route(PATH, axum::routing::post(discover)).with_state(source)
}

/// Kuma's bare error body for a request it cannot read.
fn bad_request(title: &str, detail: String) -> Response {
    let body = serde_json::json!({"type": "", "title": title, "status": 0, "detail": detail, "details": detail});
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn fetch_timeout(query: Option<&str>) -> Result<Duration, String> {
    let value = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "fetch-timeout")
        .map(|(_, v)| v.to_string());
    match value {
        None => Ok(DEFAULT_FETCH_TIMEOUT),
        Some(v) if v.starts_with('-') => Ok(Duration::ZERO),
        Some(v) => tern_model::spec::duration::parse_go_duration(&v)
            .map(|d| d.min(MAX_FETCH_TIMEOUT))
            .map_err(|e| format!("{v:?}: {e}")),
    }
}

async fn discover(State(source): State<Arc<dyn AssignmentSource>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let request: DiscoveryRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request("Could not parse request body", e.to_string()),
    };
    let timeout = match fetch_timeout(query.as_deref()) {
        Ok(t) => t,
        Err(e) => return bad_request("Could not parse fetch-timeout", e),
    };
    let client =
        request.node.map(|n| n.id).filter(|id| !id.is_empty()).unwrap_or_else(|| DEFAULT_PROMETHEUS_CLIENT.into());
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let resources = match source.current(client.clone()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot compute monitoring assignments");
                let body = serde_json::json!({"title": "Could not fetch MonitoringAssignments", "detail": e});
                return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
            }
        };
        let version = version(&resources);
        if version != request.version_info {
            let nonce = version.clone();
            let response = DiscoveryResponse { version_info: version, resources, type_url: TYPE_URL, nonce };
            return axum::Json(response).into_response();
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return StatusCode::NOT_MODIFIED.into_response();
        }
        tokio::time::sleep(REFRESH.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tern_model::Meta;

    fn dp(name: &str, address: &str, service: &str) -> Resource {
        Resource {
            kind: tern_model::Kind::Dataplane,
            mesh: "default".into(),
            name: name.into(),
            labels: Default::default(),
            spec: json!({"networking": {"address": address, "inbound": [{"port": 8080, "tags": {"kuma.io/service": service}}]}}),
            status: None,
            meta: Meta::default(),
        }
    }

    fn endpoint(client: &str, port: u16, tls: bool) -> PrometheusEndpoint {
        PrometheusEndpoint { client_id: client.into(), port, path: "/metrics".into(), tls }
    }

    #[test]
    fn one_assignment_per_data_plane_of_the_client_with_kumas_fallback() {
        let dps = [dp("web-1", "10.0.0.1", "web"), dp("api-1", "fd00::1", "api"), dp("quiet", "10.0.0.3", "q")];
        let endpoints: Endpoints = [
            (("default".into(), "web-1".into()), vec![endpoint(DEFAULT_PROMETHEUS_CLIENT, 5670, false)]),
            (("default".into(), "api-1".into()), vec![endpoint("prom-2", 9000, true)]),
        ]
        .into();
        let default = assignments("some-fqdn", &dps, &endpoints);
        assert_eq!(default.len(), 1, "an unknown client gets the default client's");
        assert_eq!(default[0].service, "web");
        assert_eq!(default[0].targets[0].address, "10.0.0.1:5670");
        assert_eq!(default[0].targets[0].scheme, "http");
        assert_eq!(default[0].targets[0].labels["kuma.io/service"], "web");
        let other = assignments("prom-2", &dps, &endpoints);
        assert_eq!(
            (other[0].targets[0].address.as_str(), other[0].targets[0].scheme.as_str()),
            ("[fd00::1]:9000", "https")
        );
        assert_ne!(version(&default), version(&other));
        assert_eq!(version(&default), version(&assignments("x", &dps, &endpoints)));
    }

    #[test]
    fn fetch_timeouts_parse_as_go_durations() {
        assert_eq!(fetch_timeout(None), Ok(DEFAULT_FETCH_TIMEOUT));
        assert_eq!(fetch_timeout(Some("fetch-timeout=0s")), Ok(Duration::ZERO));
        assert_eq!(fetch_timeout(Some("fetch-timeout=2m0s")), Ok(Duration::from_secs(120)));
        assert_eq!(fetch_timeout(Some("fetch-timeout=-1s")), Ok(Duration::ZERO));
        assert!(fetch_timeout(Some("fetch-timeout=soon")).is_err());
        assert_eq!(fetch_timeout(Some("fetch-timeout=9999h")), Ok(MAX_FETCH_TIMEOUT));
    }
}
