//! Typed specs for every kind, and the one entry point that parses and
//! validates a spec given as JSON.

pub mod dataplane;
mod decode;
pub mod duration;
pub mod mesh;
pub mod mesh_access_log;
pub mod mesh_metric;
pub mod mesh_trace;
pub mod motb;
pub mod policy;
pub mod resource;

use crate::kind::Kind;
use crate::violation::{FieldPath, Violations};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

pub use dataplane::DataplaneSpec;
pub use mesh_access_log::MeshAccessLogSpec;
pub use mesh_metric::MeshMetricSpec;
pub use mesh_trace::MeshTraceSpec;
pub use motb::MeshOpenTelemetryBackendSpec;

/// A spec that passed validation, in canonical JSON, plus any warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedSpec {
    pub spec: Value,
    pub warnings: Vec<String>,
}

/// Parses `spec` as the typed spec of `kind`, runs Kuma's validator on it and
/// returns the canonical JSON. Every violation is reported, with field paths
/// rooted where Kuma roots them (`spec.` for new-style kinds, `networking.`
/// for Dataplane).
pub fn check_spec(kind: Kind, spec: &Value) -> Result<CheckedSpec, Violations> {
    let root = if kind.spec_is_inlined() { "" } else { "spec" };
    let mut warnings = Vec::new();
    let canonical = match kind {
        // GlobalSecret never comes from a document (`read_kind` refuses it);
        // the control plane writes it directly.
        // Kept as given (Kuma keeps unknown fields of a Mesh), once its rules pass.
        Kind::Mesh => {
            let map: serde_json::Map<String, Value> = decode(spec, root)?;
            decode_checked(spec, root, mesh::MeshSpec::validate)?;
            Value::Object(map)
        }
        Kind::DataplaneInsight | Kind::ZoneInsight | Kind::GlobalSecret => {
            let map: serde_json::Map<String, Value> = decode(spec, root)?;
            Value::Object(map)
        }
        Kind::Zone => {
            let s: ZoneSpec = decode(spec, root)?;
            encode(&s)
        }
        Kind::Dataplane => encode(&decode_checked(spec, root, DataplaneSpec::validate)?),
        Kind::MeshOpenTelemetryBackend => encode(&decode_checked(spec, root, MeshOpenTelemetryBackendSpec::validate)?),
        Kind::MeshTrace | Kind::MeshMetric | Kind::MeshAccessLog => {
            let mut inline = false;
            let mut policy_check = |check: policy::PolicyCheck| {
                inline = check.uses_inline_endpoint;
                check.violations
            };
            let value = match kind {
                Kind::MeshTrace => encode(&decode_checked(spec, root, |s: &MeshTraceSpec| policy_check(s.validate()))?),
                Kind::MeshMetric => {
                    encode(&decode_checked(spec, root, |s: &MeshMetricSpec| policy_check(s.validate()))?)
                }
                _ => encode(&decode_checked(spec, root, |s: &MeshAccessLogSpec| policy_check(s.validate()))?),
            };
            if inline {
                warnings.push(policy::INLINE_ENDPOINT_DEPRECATED.to_string());
            }
            value
        }
    };
    Ok(CheckedSpec { spec: canonical, warnings })
}

/// Kuma's Zone: a zone the global control plane accepts while `enabled`
/// (the default).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

/// Decodes a typed spec; every structural error (wrong type, unknown field
/// or value, missing field) is a violation at its field (`decode.rs`).
pub fn decode<T: DeserializeOwned>(value: &Value, root: &str) -> Result<T, Violations> {
    decode_checked(value, root, |_: &T| Violations::default())
}

/// Decodes a typed spec and runs `validate` on it, reporting structural and
/// typed violations together. What the validator says inside a field that
/// was already reported (and replaced by a placeholder) is left out.
fn decode_checked<T: DeserializeOwned>(
    value: &Value,
    root: &str,
    validate: impl FnOnce(&T) -> Violations,
) -> Result<T, Violations> {
    let (typed, mut found) = decode::decode_repairing::<T>(value, root);
    let Some(typed) = typed else { return Err(found) };
    let typed_violations = validate(&typed);
    let structural = Violations(found.0.clone());
    found.0.extend(typed_violations.0.into_iter().filter(|v| !decode::under_structural(&structural, &v.field)));
    found.into_result().map(|()| typed)
}

fn encode<T: Serialize>(spec: &T) -> Value {
    serde_json::to_value(spec).expect("typed specs always serialize to JSON")
}

/// Kuma accepts an IP address or a DNS name.
pub(crate) fn validate_address(v: &mut Violations, at: &FieldPath, address: &str) {
    if address.is_empty() {
        v.add(at, "must not be empty");
    } else if address.parse::<std::net::IpAddr>().is_err() && !is_dns_name(address) {
        v.add(at, "address has to be a valid IP or hostname");
    }
}

/// A DNS name as govalidator's `IsDNSName` accepts it: dot-separated labels of
/// letters, digits, `-` and `_`, none starting with `-`, at most 255 bytes.
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Kuma's URL rule (govalidator's IsURL) for the forms collector addresses
/// take: `host:port`, `tcp://host:port`, `http://host:port/path`, the host
/// a name or an IP address.
pub(crate) fn is_url(address: &str) -> bool {
    let rest = address.split_once("://").map_or(Some(address), |(scheme, rest)| {
        ["tcp", "udp", "http", "https", "ws", "wss", "ftp"].contains(&scheme).then_some(rest)
    });
    let Some(rest) = rest.filter(|r| !r.is_empty() && !r.starts_with('.') && address.len() > 3) else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // `[v6]` or `[v6]:port`; otherwise `host` or `host:port`, no other colon.
    let (host, port) = match authority.strip_prefix('[').map(|a| a.split_once(']')) {
        Some(Some((v6, ""))) => (v6, None),
        Some(Some((v6, rest))) => match rest.strip_prefix(':') {
            Some(port) => (v6, Some(port)),
            None => return false,
        },
        Some(None) => return false,
        None => match authority.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            Some(_) => return false,
            None => (authority, None),
        },
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok =
        host.parse::<std::net::IpAddr>().is_ok() || (host.contains('.') || port.is_some()) && is_dns_name(host);
    port_ok && host_ok
}

/// Kuma's tag rules: names and values non-empty, names of
/// `[a-zA-Z0-9.-_:/]`, values of `[a-zA-Z0-9.-_:]`.
pub(crate) fn validate_tags(v: &mut Violations, at: &FieldPath, tags: &BTreeMap<String, String>) {
    validate_tag_map(v, at, tags, false);
}

/// Kuma's `ValidateSelector`: tags whose values may also hold `/` or be `*`
/// (any value), as a `MeshServiceSubset` target's.
pub(crate) fn validate_tag_selector(v: &mut Violations, at: &FieldPath, tags: &BTreeMap<String, String>) {
    validate_tag_map(v, at, tags, true);
}

fn validate_tag_map(v: &mut Violations, at: &FieldPath, tags: &BTreeMap<String, String>, selector: bool) {
    let allowed = |c: char, extra: &str| c.is_ascii_alphanumeric() || ".-_:".contains(c) || extra.contains(c);
    for (key, value) in tags {
        if key.is_empty() {
            v.add(at, "tag name must be non-empty");
        }
        if !key.chars().all(|c| allowed(c, "/")) {
            v.add(
                &at.key(key),
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            );
        }
        if value.is_empty() {
            v.add(&at.key(key), "tag value must be non-empty");
        }
        if selector {
            if value != "*" && !value.chars().all(|c| allowed(c, "/")) {
                v.add(
                    &at.key(key),
                    r#"tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be "*""#,
                );
            }
        } else if !value.chars().all(|c| allowed(c, "")) {
            v.add(&at.key(key), "tag value must consist of alphanumeric characters, dots, dashes and underscores");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns_name("otel-collector.observability"));
        assert!(is_dns_name("localhost"));
        assert!(is_dns_name("a_b.example.com."));
        assert!(!is_dns_name("not a valid address!@#"));
        assert!(!is_dns_name("-bad.example"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name(&"a".repeat(64)));
    }
}
