//! `MeshTrace`: where a dataplane's spans go, how many are sampled, which tags they carry.

use super::policy::{
    check_backend_type, validate_otel_block, BackendRef, OtelBackendBlock, Percentage, PolicyCheck, TargetRef,
};
use crate::violation::FieldPath;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTraceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<MeshTraceConf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTraceConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<TraceBackend>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<TraceTag>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// Tern extension: the trace context formats read from requests and
    /// written to them (default `w3c_tracecontext` and `w3c_baggage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagators: Option<Vec<String>>,
}

/// Every propagator name `propagators` takes.
pub const PROPAGATORS: &[&str] = &["w3c_tracecontext", "w3c_baggage", "b3", "b3multi", "datadog"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceBackend {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ZipkinBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog: Option<DatadogBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<TraceOtelBackend>,
}

/// Kuma's `zipkin` backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZipkinBackend {
    #[serde(default)]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id128bit: Option<bool>,
    /// `httpJson` (default) or `httpProto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_span_context: Option<bool>,
}

/// Kuma's `datadog` backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatadogBackend {
    #[serde(default)]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_service: Option<bool>,
}

/// Known names, each once, and what the backend's tracer in Envoy can do:
/// OpenTelemetry reads and writes W3C `traceparent` only, Zipkin B3 (and
/// W3C beside it), Datadog its own headers; W3C baggage passes with any.
fn validate_propagators(v: &mut crate::violation::Violations, at: &FieldPath, list: &[String], backend: Option<&str>) {
    let (native, supported): (&[&str], &[&str]) = match backend {
        Some("OpenTelemetry") => (&["w3c_tracecontext"], &["w3c_tracecontext", "w3c_baggage"]),
        Some("Zipkin") => (&["b3", "b3multi"], &["b3", "b3multi", "w3c_tracecontext", "w3c_baggage"]),
        Some("Datadog") => (&["datadog"], &["datadog", "w3c_baggage"]),
        _ => (&[], PROPAGATORS),
    };
    for (i, name) in list.iter().enumerate() {
        if !PROPAGATORS.contains(&name.as_str()) {
            v.add(&at.index(i), crate::violation::must_be_one_of("propagators", PROPAGATORS));
        } else if list[..i].contains(name) {
            v.add(&at.index(i), format!("{name} is listed more than once"));
        } else if !supported.contains(&name.as_str()) {
            let backend = backend.unwrap_or_default();
            v.add(
                &at.index(i),
                format!(
                    "{name} is not available with the {backend} backend (Envoy's {backend} tracer propagates {})",
                    supported.join(", ")
                ),
            );
        }
    }
    if !native.is_empty() && !list.iter().any(|n| native.contains(&n.as_str())) {
        v.add(at, format!("must include {} with the {} backend", native.join(" or "), backend.unwrap_or_default()));
    }
}

/// Kuma's Zipkin rules: a URL, and Kuma's schema's API versions.
fn validate_zipkin(v: &mut crate::violation::Violations, at: &FieldPath, z: &ZipkinBackend) {
    if z.url.is_empty() {
        v.add(&at.field("url"), "must not be empty");
    } else if !super::is_url(&z.url) {
        v.add(&at.field("url"), "must be a valid url");
    }
    const VERSIONS: &[&str] = &["httpJson", "httpProto"];
    if z.api_version.as_deref().is_some_and(|version| !VERSIONS.contains(&version)) {
        v.add(&at.field("apiVersion"), crate::violation::must_be_one_of("apiVersion", VERSIONS));
    }
}

/// Kuma's Datadog rules: `http://host:port`, nothing more.
fn validate_datadog(v: &mut crate::violation::Violations, at: &FieldPath, d: &DatadogBackend) {
    let url_at = at.field("url");
    let Some((scheme, rest)) = d.url.split_once("://").filter(|(s, r)| !s.is_empty() && !r.is_empty()) else {
        v.add(&url_at, "must be a valid url");
        return;
    };
    if scheme != "http" {
        v.add(&url_at, "scheme must be http");
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((user, hp)) => (Some(user), hp),
        None => (None, authority),
    };
    match host_port.rsplit_once(':').filter(|(h, _)| !h.ends_with(':')) {
        None => v.add(&url_at, "port must be defined"),
        Some((_, port)) => {
            if !port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p)) {
                v.add(&url_at, "port must be a valid (1-65535)");
            }
        }
    }
    if user.is_some() {
        v.add(&url_at, "user must not be defined");
    }
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    if !path.is_empty() {
        v.add(&url_at, "path must not be defined");
    }
    if query.is_some_and(|q| !q.is_empty()) {
        v.add(&url_at, "query must not be defined");
    }
}

/// The OpenTelemetry block of a MeshTrace backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceOtelBackend {
    /// Deprecated inline `host:port`; use `backendRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<BackendRef>,
    /// Tern extension: resource attributes, values with `{{key}}`
    /// interpolation from the data plane (see [`super::resource`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_attributes: Option<Vec<super::mesh_access_log::KeyValue>>,
}

impl OtelBackendBlock for TraceOtelBackend {
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

/// A custom tag on spans: a literal or a request header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceTag {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderTag>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderTag {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// Sampling percentages, as Envoy's HCM tracing has them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall: Option<Percentage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Percentage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<Percentage>,
}

const TRACE_BACKEND_TYPES: &[&str] = &["Zipkin", "Datadog", "OpenTelemetry"];

impl MeshTraceSpec {
    /// Kuma's MeshTrace validator: zero or one backend, tags, sampling ranges.
    pub fn validate(&self) -> PolicyCheck {
        let mut check = PolicyCheck::default();
        let spec = FieldPath::root("spec");
        if let Some(t) = &self.target_ref {
            t.validate(&mut check.violations, &spec.field("targetRef"));
        }
        let conf = self.default.clone().unwrap_or_default();
        let at = spec.field("default");
        let backends_at = at.field("backends");
        match conf.backends.as_deref() {
            None => check.violations.add(&backends_at, "must be defined"),
            Some([]) => {}
            Some([backend]) => {
                let b_at = backends_at.index(0);
                let is_otel = check_backend_type(
                    &mut check.violations,
                    &b_at,
                    &backend.type_,
                    TRACE_BACKEND_TYPES,
                    |t| match t {
                        "Zipkin" => backend.zipkin.is_some(),
                        "Datadog" => backend.datadog.is_some(),
                        _ => backend.open_telemetry.is_some(),
                    },
                );
                if let (true, Some(otel)) = (is_otel, &backend.open_telemetry) {
                    validate_otel_block(&mut check, &b_at.field("openTelemetry"), otel, false);
                }
                if let Some(z) = backend.zipkin.as_ref().filter(|_| backend.type_ == "Zipkin") {
                    validate_zipkin(&mut check.violations, &b_at.field("zipkin"), z);
                }
                if let Some(d) = backend.datadog.as_ref().filter(|_| backend.type_ == "Datadog") {
                    validate_datadog(&mut check.violations, &b_at.field("datadog"), d);
                }
            }
            Some(_) => check.violations.add(&backends_at, "must have zero or one backend defined"),
        }
        for (i, tag) in conf.tags.iter().flatten().enumerate() {
            let t_at = at.field("tags").index(i);
            if tag.name.is_empty() {
                check.violations.add(&t_at.field("name"), "must not be empty");
            }
            if tag.header.is_some() == tag.literal.is_some() {
                check.violations.add(&t_at, "tag must have only one type defined: header, literal");
            }
        }
        let backend_type = conf.backends.as_deref().and_then(|b| b.first()).map(|b| b.type_.as_str());
        if let Some(list) = &conf.propagators {
            validate_propagators(&mut check.violations, &at.field("propagators"), list, backend_type);
        }
        if let Some(s) = &conf.sampling {
            let s_at = at.field("sampling");
            for (name, p) in [("client", &s.client), ("random", &s.random), ("overall", &s.overall)] {
                if let Some(p) = p {
                    p.validate(&mut check.violations, &s_at.field(name));
                }
            }
        }
        check
    }
}
