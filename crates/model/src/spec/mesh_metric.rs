//! `MeshMetric`: which Envoy and application metrics a dataplane exports and where.

use super::duration::parse_go_duration;
use super::policy::{check_backend_type, validate_otel_block, BackendRef, OtelBackendBlock, PolicyCheck, TargetRef};
use crate::violation::FieldPath;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshMetricSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<MeshMetricConf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshMetricConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Sidecar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications: Option<Vec<Application>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<MetricBackend>>,
}

/// Which Envoy metrics to keep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Profiles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_unused: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profiles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_profiles: Option<Vec<Profile>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<MetricSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<MetricSelector>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    /// `All`, `Basic` or `None`.
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    /// `Regex`, `Prefix`, `Exact` or `Contains`.
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(rename = "match")]
    pub match_: String,
}

/// An application endpoint whose metrics the data plane scrapes and re-exports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Application {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricBackend {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<MetricOtelBackend>,
}

/// Kuma's client id when a Prometheus backend names none; MADS answers a
/// client it does not know as this one.
pub const DEFAULT_PROMETHEUS_CLIENT: &str = "_kuma-default-client";

/// A Prometheus endpoint the data plane serves on its address, found by
/// Prometheus through the control plane's monitoring assignments (MADS).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusBackend {
    /// Which Prometheus (its `kuma_sd_configs` client id) scrapes it;
    /// `_kuma-default-client` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Default 5670.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// Default `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PrometheusTls>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusTls {
    /// `Disabled` (default), `ProvidedTLS` or `ActiveMTLSBackend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl PrometheusBackend {
    pub fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or(DEFAULT_PROMETHEUS_CLIENT)
    }

    pub fn port(&self) -> u16 {
        self.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(5670)
    }

    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("/metrics")
    }

    /// Whether the endpoint is served over TLS (`ProvidedTLS`).
    pub fn provided_tls(&self) -> bool {
        self.tls.as_ref().and_then(|t| t.mode.as_deref()) == Some("ProvidedTLS")
    }
}

/// The OpenTelemetry block of a MeshMetric backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricOtelBackend {
    /// Deprecated inline `host:port`; use `backendRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<BackendRef>,
    /// How often metrics are pushed (Go duration, default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<String>,
    /// Tern extension: resource attributes, values with `{{key}}`
    /// interpolation from the data plane (see [`super::resource`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_attributes: Option<Vec<super::mesh_access_log::KeyValue>>,
}

impl OtelBackendBlock for MetricOtelBackend {
    fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }
    fn backend_ref(&self) -> Option<&BackendRef> {
        self.backend_ref.as_ref()
    }
    fn resource_attributes(&self) -> &[super::mesh_access_log::KeyValue] {
        self.resource_attributes.as_deref().unwrap_or_default()
    }
}

const METRIC_BACKEND_TYPES: &[&str] = &["Prometheus", "OpenTelemetry"];
const PROFILE_NAMES: &[&str] = &["All", "Basic", "None"];
const SELECTOR_TYPES: &[&str] = &["Regex", "Prefix", "Exact", "Contains"];
const TLS_MODES: &[&str] = &["Disabled", "ProvidedTLS", "ActiveMTLSBackend"];

impl MeshMetricSpec {
    pub fn validate(&self) -> PolicyCheck {
        let mut check = PolicyCheck::default();
        let spec = FieldPath::root("spec");
        if let Some(t) = &self.target_ref {
            t.validate(&mut check.violations, &spec.field("targetRef"));
        }
        let Some(conf) = &self.default else { return check };
        let at = spec.field("default");
        let v = &mut check.violations;
        if let Some(profiles) = conf.sidecar.as_ref().and_then(|s| s.profiles.as_ref()) {
            let p_at = at.field("sidecar").field("profiles");
            for (i, p) in profiles.append_profiles.iter().flatten().enumerate() {
                if !PROFILE_NAMES.contains(&p.name.as_str()) {
                    v.add(
                        &p_at.field("appendProfiles").index(i).field("name"),
                        format!("unrecognized profile name '{}' - 'All', 'None', 'Basic' are supported", p.name),
                    );
                }
            }
            for (field, list) in [("exclude", &profiles.exclude), ("include", &profiles.include)] {
                for (i, s) in list.iter().flatten().enumerate() {
                    let s_at = p_at.field(field).index(i);
                    if !SELECTOR_TYPES.contains(&s.type_.as_str()) {
                        // Kuma's message, which leaves out `Contains` though Kuma accepts it.
                        let message =
                            format!("unrecognized type '{}' - 'Regex', 'Prefix', 'Exact' are supported", s.type_);
                        v.add(&s_at.field("type"), message);
                    }
                    if s.match_.is_empty() {
                        v.add(&s_at.field("match"), "must not be empty");
                    } else if s.type_ == "Regex" && regex::Regex::new(&s.match_).is_err() {
                        v.add(&s_at.field("match"), "invalid regex");
                    }
                }
            }
        }
        for (i, app) in conf.applications.iter().flatten().enumerate() {
            if !(1..=65535).contains(&app.port) {
                v.add(&at.field("applications").index(i).field("port"), "port must be a valid (1-65535)");
            }
        }
        for (i, backend) in conf.backends.iter().flatten().enumerate() {
            let b_at = at.field("backends").index(i);
            let is_otel = check_backend_type(&mut check.violations, &b_at, &backend.type_, METRIC_BACKEND_TYPES, |t| {
                if t == "Prometheus" {
                    backend.prometheus.is_some()
                } else {
                    backend.open_telemetry.is_some()
                }
            });
            if let Some(prometheus) = backend.prometheus.as_ref().filter(|_| !is_otel) {
                validate_prometheus(&mut check.violations, &b_at.field("prometheus"), prometheus);
            }
            let Some(otel) = backend.open_telemetry.as_ref().filter(|_| is_otel) else { continue };
            let o_at = b_at.field("openTelemetry");
            validate_otel_block(&mut check, &o_at, otel, true);
            if let Some(interval) = &otel.refresh_interval {
                match parse_go_duration(interval) {
                    Ok(d) if d.is_zero() => {
                        check.violations.add(&o_at.field("refreshInterval"), "must be greater than zero when defined")
                    }
                    Ok(_) => {}
                    Err(message) => check.violations.add(&o_at.field("refreshInterval"), message),
                }
            }
        }
        check
    }
}

fn validate_prometheus(v: &mut crate::violation::Violations, at: &FieldPath, p: &PrometheusBackend) {
    if let Some(port) = p.port {
        if !(1..=65535).contains(&port) {
            v.add(&at.field("port"), "port must be a valid (1-65535)");
        }
    }
    if let Some(mode) = p.tls.as_ref().and_then(|t| t.mode.as_deref()) {
        if !TLS_MODES.contains(&mode) {
            v.add(&at.field("tls").field("mode"), crate::violation::must_be_one_of("mode", TLS_MODES));
        }
    }
}
