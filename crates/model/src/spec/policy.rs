//! Parts shared by MeshTrace, MeshMetric and MeshAccessLog: `targetRef`, the
//! OpenTelemetry backend block (`backendRef` or the deprecated `endpoint`) and
//! its validation, which Kuma applies identically to all three.

use super::{validate_tag_selector, validate_tags};
use crate::document::identifier_problem;
use crate::label::validate_selector;
use crate::violation::{must_be_one_of, FieldPath, Violations};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The warning returned when a policy still uses an inline `endpoint`.
pub const INLINE_ENDPOINT_DEPRECATED: &str =
    "openTelemetry.endpoint is deprecated, use openTelemetry.backendRef with a MeshOpenTelemetryBackend resource instead";

/// The only kind a `backendRef` may name.
pub const BACKEND_REF_KIND: &str = "MeshOpenTelemetryBackend";

/// Which dataplanes a policy applies to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_types: Option<Vec<String>>,
}

/// The top-level target kinds Tern matches dataplanes with: Kuma 2.14's,
/// `MeshGateway` aside (Tern builds no gateway listeners). `MeshService` and
/// `MeshServiceSubset` select by the inbounds' `kuma.io/service` tag.
pub const SUPPORTED_TARGET_KINDS: &[&str] = &["Mesh", "MeshSubset", "MeshService", "MeshServiceSubset", "Dataplane"];

/// The kinds a MeshAccessLog `to[]` item targets in Tern: every outbound
/// (`Mesh`) or the outbounds to one service (`MeshService` by name).
pub const ACCESS_LOG_TO_KINDS: &[&str] = &["Mesh", "MeshService"];

/// The kinds a MeshAccessLog `from[]` item targets (Kuma's: `Mesh` only).
pub const ACCESS_LOG_FROM_KINDS: &[&str] = &["Mesh"];

impl TargetRef {
    /// Kuma's `ValidateTargetRef` for a top-level `targetRef` of a policy
    /// that configures no inbound (a `Dataplane` `sectionName` is refused).
    pub fn validate(&self, v: &mut Violations, at: &FieldPath) {
        self.validate_as(v, at, SUPPORTED_TARGET_KINDS, false);
    }

    /// Kuma's `ValidateTargetRef`: `kind` among `kinds`, and the fields that
    /// kind takes. `inbound_policy` allows a `Dataplane` `sectionName` (a
    /// MeshAccessLog with `rules` or `from`).
    pub fn validate_as(&self, v: &mut Violations, at: &FieldPath, kinds: &[&str], inbound_policy: bool) {
        if self.kind.is_empty() {
            v.add(&at.field("kind"), "must be defined");
            return;
        }
        if !kinds.contains(&self.kind.as_str()) {
            v.add(&at.field("kind"), format!("value '{}' is not supported", self.kind));
            return;
        }
        let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
        let map_set = |m: &Option<BTreeMap<String, String>>| m.as_ref().is_some_and(|m| !m.is_empty());
        let proxy_types_empty = self.proxy_types.as_ref().is_some_and(|p| p.is_empty());
        match self.kind.as_str() {
            "Mesh" => {
                if set(&self.name) {
                    v.add(&at.field("name"), "using name with kind Mesh is not yet supported");
                }
                if proxy_types_empty {
                    v.add(&at.field("proxyTypes"), "must be undefined or have at least one element");
                }
                not_allowed(v, at, &self.kind, "mesh", set(&self.mesh));
                not_allowed(v, at, &self.kind, "tags", map_set(&self.tags));
                not_allowed(v, at, &self.kind, "labels", map_set(&self.labels));
                not_allowed(v, at, &self.kind, "namespace", set(&self.namespace));
                not_allowed(v, at, &self.kind, "sectionName", set(&self.section_name));
            }
            "MeshSubset" => {
                if proxy_types_empty {
                    v.add(&at.field("proxyTypes"), "must be undefined or have at least one element");
                }
                not_allowed(v, at, &self.kind, "name", set(&self.name));
                not_allowed(v, at, &self.kind, "mesh", set(&self.mesh));
                not_allowed(v, at, &self.kind, "labels", map_set(&self.labels));
                not_allowed(v, at, &self.kind, "namespace", set(&self.namespace));
                not_allowed(v, at, &self.kind, "sectionName", set(&self.section_name));
                if let Some(tags) = &self.tags {
                    validate_tags(v, &at.field("tags"), tags);
                }
            }
            "MeshService" => {
                validate_name(v, at, self.name.as_deref());
                not_allowed(v, at, &self.kind, "mesh", set(&self.mesh));
                not_allowed(v, at, &self.kind, "tags", map_set(&self.tags));
                not_allowed(v, at, &self.kind, "proxyTypes", self.proxy_types.is_some());
                if !set(&self.name) && !map_set(&self.labels) {
                    v.add(at, "name or labels must be set when kind is MeshService");
                }
                if map_set(&self.labels) && (set(&self.name) || set(&self.namespace)) {
                    v.add(&at.field("labels"), "either labels or name and namespace must be specified");
                }
            }
            "MeshServiceSubset" => {
                if !set(&self.name) {
                    v.add(&at.field("name"), format!("must be set when kind is {}", self.kind));
                }
                validate_name(v, at, self.name.as_deref());
                not_allowed(v, at, &self.kind, "mesh", set(&self.mesh));
                not_allowed(v, at, &self.kind, "proxyTypes", self.proxy_types.is_some());
                if let Some(tags) = &self.tags {
                    validate_tag_selector(v, &at.field("tags"), tags);
                }
                not_allowed(v, at, &self.kind, "labels", map_set(&self.labels));
                not_allowed(v, at, &self.kind, "namespace", set(&self.namespace));
                not_allowed(v, at, &self.kind, "sectionName", set(&self.section_name));
            }
            _ => {
                not_allowed(v, at, &self.kind, "tags", map_set(&self.tags));
                not_allowed(v, at, &self.kind, "mesh", set(&self.mesh));
                not_allowed(v, at, &self.kind, "proxyTypes", self.proxy_types.is_some());
                if map_set(&self.labels) && (set(&self.name) || set(&self.namespace)) {
                    v.add(&at.field("labels"), "either labels or name and namespace must be specified");
                }
                if set(&self.section_name) && !inbound_policy {
                    v.add(&at.field("sectionName"), "can only be used with inbound policies");
                }
            }
        }
    }
}

/// Kuma's `validateName`: a referenced resource's name, when given.
fn validate_name(v: &mut Violations, at: &FieldPath, name: Option<&str>) {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c);
    if !name.unwrap_or_default().chars().all(valid) {
        v.add(
            &at.field("name"),
            "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'.",
        );
    }
}

/// Kuma's `must not be set with kind X` for a field `kind` does not take.
fn not_allowed(v: &mut Violations, at: &FieldPath, kind: &str, field: &str, is_set: bool) {
    if is_set {
        v.add(&at.field(field), format!("must not be set with kind {kind}"));
    }
}

/// A reference from a policy to a `MeshOpenTelemetryBackend`, by name or by labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// What every policy's OpenTelemetry block shares, whatever its signal.
pub trait OtelBackendBlock {
    fn endpoint(&self) -> Option<&str>;
    fn backend_ref(&self) -> Option<&BackendRef>;
    fn resource_attributes(&self) -> &[super::mesh_access_log::KeyValue];
}

/// Result of validating one policy: violations and warnings.
#[derive(Debug, Default)]
pub struct PolicyCheck {
    pub violations: Violations,
    pub uses_inline_endpoint: bool,
}

/// Validates an `openTelemetry` block at `at` (`...backends[0].openTelemetry`):
/// exactly one of `endpoint` / `backendRef`, and a well-formed reference.
pub fn validate_otel_block(
    check: &mut PolicyCheck,
    at: &FieldPath,
    block: &dyn OtelBackendBlock,
    endpoint_needs_port: bool,
) {
    let v = &mut check.violations;
    for (i, kv) in block.resource_attributes().iter().enumerate() {
        let a_at = at.field("resourceAttributes").index(i);
        super::mesh_access_log::validate_attribute_key(v, &a_at.field("key"), &kv.key);
        if let Err(problem) = super::resource::parse_template(&kv.value) {
            v.add(&a_at.field("value"), problem);
        }
    }
    let endpoint = block.endpoint().filter(|e| !e.is_empty());
    match (endpoint, block.backend_ref()) {
        (Some(_), Some(_)) => {
            v.add(at, "openTelemetry must have only one type defined: endpoint, backendRef");
        }
        (None, None) => {
            v.add(at, "openTelemetry must have exactly one defined: endpoint, backendRef");
        }
        (None, Some(r)) => validate_backend_ref(v, &at.field("backendRef"), r),
        (Some(e), None) => {
            check.uses_inline_endpoint = true;
            let at = at.field("endpoint");
            if e.contains(['/', '?', '#']) {
                v.add(&at, "must be in host:port format, not a URL");
            } else if !is_host_port(e, endpoint_needs_port) {
                v.add(&at, "must be in host:port format");
            }
        }
    }
}

fn validate_backend_ref(v: &mut Violations, at: &FieldPath, r: &BackendRef) {
    if r.kind != BACKEND_REF_KIND {
        v.add(&at.field("kind"), must_be_one_of("kind", &[BACKEND_REF_KIND]));
    }
    let has_name = r.name.as_deref().is_some_and(|n| !n.is_empty());
    let has_labels = r.labels.as_ref().is_some_and(|l| !l.is_empty());
    match (has_name, has_labels) {
        (true, true) => v.add(at, "backendRef must have only one type defined: name, labels"),
        (false, false) => v.add(at, "backendRef must have exactly one defined: name, labels"),
        _ => {}
    }
    // The name and the selector end up in status messages and log lines, so
    // they follow the rules of what they match: resource names and labels.
    if let Some(name) = r.name.as_deref().filter(|n| !n.is_empty()) {
        if let Some(problem) = identifier_problem(name, false) {
            v.add(&at.field("name"), problem);
        }
    }
    if let Some(labels) = &r.labels {
        validate_selector(v, &at.field("labels"), labels);
    }
}

/// `host:port` (or bare `host` when the port may default), with a valid port.
fn is_host_port(text: &str, port_required: bool) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') || h.starts_with('[') => (h, Some(p)),
        _ => (text, None),
    };
    let host_ok = !host.is_empty() && !host.contains(char::is_whitespace);
    match port {
        Some(p) => host_ok && p.parse::<u16>().is_ok_and(|p| p > 0),
        None => host_ok && !port_required,
    }
}

/// A percentage given as a number or a numeric string (Kuma's IntOrString).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Percentage {
    Number(serde_json::Number),
    Text(String),
}

impl Percentage {
    /// The value as a float, if it is a number.
    pub fn value(&self) -> Option<f64> {
        match self {
            Percentage::Number(n) => n.as_f64(),
            Percentage::Text(s) => s.trim().parse().ok(),
        }
    }

    pub(crate) fn validate(&self, v: &mut Violations, at: &FieldPath) {
        match self.value() {
            None => v.add(at, "string is not a number"),
            Some(x) if !(0.0..=100.0).contains(&x) => v.add(at, "must be between 0 and 100"),
            Some(_) => {}
        }
    }
}

/// Checks a backend `type` against the allowed set and that the matching
/// block is present. Returns true when the type is OpenTelemetry.
pub(crate) fn check_backend_type(
    v: &mut Violations,
    at: &FieldPath,
    type_: &str,
    allowed: &[&str],
    block_present: impl Fn(&str) -> bool,
) -> bool {
    if !allowed.contains(&type_) {
        v.add(&at.field("type"), must_be_one_of("type", allowed));
        return false;
    }
    let field = lower_first(type_);
    if !block_present(type_) {
        v.add(&at.field(&field), "must be defined");
        return false;
    }
    type_ == "OpenTelemetry"
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert!(is_host_port("collector:4317", true));
        assert!(is_host_port("10.0.0.1:4317", true));
        assert!(is_host_port("[::1]:4317", true));
        assert!(!is_host_port("collector", true));
        assert!(is_host_port("collector", false));
        assert!(!is_host_port("collector:0", false));
        assert!(!is_host_port("collector:99999", false));
        assert!(!is_host_port(":4317", false));
    }
}
