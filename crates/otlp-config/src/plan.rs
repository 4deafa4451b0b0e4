//! The per-dataplane OpenTelemetry plan the control plane sends `tern-dp`:
//! each resolved backend, the socket to open for it, its explicit settings
//! and env policy, and per signal the status the control plane computed.

use crate::env::Signal;
use crate::merge::{BackendSettings, BlockedReason};
use crate::status::SignalStatus;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtelPlan {
    pub backends: Vec<PlanBackend>,
    /// MeshMetric Prometheus backends: endpoints `tern-dp` serves on the
    /// data plane's address, one per Prometheus client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prometheus: Vec<PrometheusEndpoint>,
    /// MeshMetric `sidecar`: which of Envoy's metrics leave the data plane,
    /// on the Prometheus endpoints and the OpenTelemetry path alike.
    #[serde(default)]
    pub sidecar_metrics: SidecarMetrics,
    /// MeshMetric `applications`: endpoints of the application's own
    /// metrics `tern-dp` scrapes and passes on with Envoy's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<AppMetrics>,
}

/// One application metrics endpoint (MeshMetric `applications[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The data plane's address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub port: u16,
    pub path: String,
}

/// MeshMetric's `sidecar.profiles` and `includeUnused`, as merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarMetrics {
    /// `All`, `Basic` or `None` (Basic when the policies name none).
    pub profiles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<MetricSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<MetricSelector>,
    #[serde(default)]
    pub include_unused: bool,
}

impl Default for SidecarMetrics {
    fn default() -> Self {
        SidecarMetrics {
            profiles: vec!["Basic".into()],
            include: Vec::new(),
            exclude: Vec::new(),
            include_unused: false,
        }
    }
}

/// A metric name selector: `kind` is `Prefix`, `Regex`, `Exact` or `Contains`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    pub kind: String,
    pub value: String,
}

/// One Prometheus endpoint on the data plane (MeshMetric `prometheus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusEndpoint {
    /// The Prometheus that discovers it through MADS.
    pub client_id: String,
    pub port: u16,
    pub path: String,
    /// `tls.mode: ProvidedTLS`: served over TLS with the data plane's certificate.
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanBackend {
    /// The backend's display name.
    pub name: String,
    /// The Unix socket `tern-dp` listens on for this backend.
    pub socket_path: String,
    pub settings: BackendSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces: Option<PlanSignal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<PlanSignal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<PlanSignal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSignal {
    pub status: SignalStatus,
    /// Metrics only: how often to push (Go duration, default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<String>,
    /// Metrics only: `resourceAttributes` templates, interpolated by the
    /// data plane (`tern_model::spec::resource`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub resource_attributes: std::collections::BTreeMap<String, String>,
}

impl PlanBackend {
    pub fn signal(&self, signal: Signal) -> Option<&PlanSignal> {
        match signal {
            Signal::Traces => self.traces.as_ref(),
            Signal::Metrics => self.metrics.as_ref(),
            Signal::Logs => self.logs.as_ref(),
        }
    }
}

impl PlanSignal {
    /// The control plane found another backend competing for this signal's
    /// env input (something only it can see).
    pub fn ambiguous(&self) -> bool {
        self.status.blocked_reasons.contains(&BlockedReason::MultipleBackendsForSignal)
    }
}
