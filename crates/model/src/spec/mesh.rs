//! `Mesh`: Kuma 2.14's `Validate()` rules for the parts a Universal Mesh
//! document carries (mTLS backends, the old-style logging, tracing and
//! metrics backends, data-plane constraints, zone egress). Tern acts on none
//! of them; it checks them so a Kuma document means the same here, and keeps
//! the document as given (unknown fields included, as Kuma does).

use crate::violation::{FieldPath, Violations};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};

type Other = Map<String, Value>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    #[serde(default)]
    pub mtls: Option<Backends>,
    #[serde(default)]
    pub logging: Option<Backends>,
    #[serde(default)]
    pub tracing: Option<Backends>,
    #[serde(default)]
    pub metrics: Option<Backends>,
    #[serde(default)]
    pub constraints: Option<Constraints>,
    #[serde(default)]
    pub routing: Option<Routing>,
    #[serde(flatten)]
    pub other: Other,
}

/// The backends of `mtls` or of an old-style section, and the one in use
/// (`logging` and `tracing` say `defaultBackend`, `mtls` and `metrics`
/// `enabledBackend`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backends {
    #[serde(default)]
    pub default_backend: String,
    #[serde(default)]
    pub enabled_backend: String,
    #[serde(default)]
    pub backends: Vec<Backend>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub sampling: Option<f64>,
    #[serde(default)]
    pub conf: Option<Value>,
    #[serde(default)]
    pub dp_cert: Option<Value>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Constraints {
    #[serde(default)]
    pub dataplane_proxy: Option<DataplaneProxyConstraints>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneProxyConstraints {
    #[serde(default)]
    pub requirements: Vec<TagSelector>,
    #[serde(default)]
    pub restrictions: Vec<TagSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TagSelector {
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    #[serde(default)]
    pub zone_egress: bool,
    #[serde(flatten)]
    pub other: Other,
}

impl MeshSpec {
    /// Kuma's `MeshResource.Validate()`, section by section in its order.
    pub fn validate(&self) -> Violations {
        let mut v = Violations::default();
        if let Some(mtls) = &self.mtls {
            validate_mtls(&mut v, mtls);
        }
        if let Some(logging) = &self.logging {
            let at = FieldPath::root("logging");
            validate_named(&mut v, &at, logging, validate_logging_backend);
            in_use(&mut v, &at.field("defaultBackend"), logging, &logging.default_backend, "logging backend in mesh");
        }
        if let Some(tracing) = &self.tracing {
            let at = FieldPath::root("tracing");
            validate_named(&mut v, &at, tracing, validate_tracing_backend);
            in_use(&mut v, &at.field("defaultBackend"), tracing, &tracing.default_backend, "tracing backend in mesh");
        }
        if let Some(metrics) = &self.metrics {
            let at = FieldPath::root("metrics");
            validate_named(&mut v, &at, metrics, |v, at, b| {
                if b.type_ != "prometheus" {
                    v.add(&at.field("type"), "unknown backend type. Available backends: \"prometheus\"");
                }
            });
            in_use(&mut v, &at.field("enabledBackend"), metrics, &metrics.enabled_backend, "backends in the mesh");
        }
        if let Some(dpp) = self.constraints.as_ref().and_then(|c| c.dataplane_proxy.as_ref()) {
            let at = FieldPath::root("constraints").field("dataplaneProxy");
            for (field, list) in [("requirements", &dpp.requirements), ("restrictions", &dpp.restrictions)] {
                for (i, selector) in list.iter().enumerate() {
                    validate_selector(&mut v, &at.field(field).index(i).field("tags"), &selector.tags);
                }
            }
        }
        let mtls_enabled = self.mtls.as_ref().is_some_and(|m| !m.enabled_backend.is_empty());
        if self.routing.as_ref().is_some_and(|r| r.zone_egress) && !mtls_enabled {
            v.add(&FieldPath::root("mtls"), "has to be set when zoneEgress enabled");
        }
        v
    }
}

fn validate_mtls(v: &mut Violations, mtls: &Backends) {
    let at = FieldPath::root("mtls");
    if mtls.backends.len() > 1 {
        v.add(&at.field("backends"), "cannot have more than 1 backends");
    }
    let mut used = HashSet::new();
    for (i, backend) in mtls.backends.iter().enumerate() {
        if !used.insert(backend.name.as_str()) {
            v.add(
                &at.field("backends").index(i).field("name"),
                format!("{:?} name is already used for another backend", backend.name),
            );
        }
        if let Some(dp_cert) = &backend.dp_cert {
            let expiration = dp_cert.pointer("/rotation/expiration").and_then(Value::as_str).unwrap_or_default();
            if !is_kuma_duration(expiration) {
                // Kuma's path: no index, `dpcert` in lower case.
                v.add(&at.field("dpcert").field("rotation").field("expiration"), "has to be a valid format");
            }
        }
    }
    in_use(v, &at.field("enabledBackend"), mtls, &mtls.enabled_backend, "backends in the mesh");
    validate_ca_backends(v, &at, mtls);
}

/// Kuma's CA plugins' own rules (run when a mesh is created or changed):
/// the type must be a plugin Kuma ships (it stops at the first that is not),
/// and a `provided` CA needs `conf.cert` and `conf.key`, unless
/// `skipValidation`.
fn validate_ca_backends(v: &mut Violations, at: &FieldPath, mtls: &Backends) {
    let skip = mtls.other.get("skipValidation").and_then(Value::as_bool).unwrap_or(false);
    for (i, backend) in mtls.backends.iter().enumerate() {
        let b_at = at.field("backends").index(i);
        match backend.type_.as_str() {
            "builtin" => {}
            "provided" if skip => {}
            "provided" => {
                for part in ["cert", "key"] {
                    if backend.conf.as_ref().and_then(|c| c.get(part)).is_none() {
                        v.add(&b_at.field("conf").field(part), "has to be defined");
                    }
                }
            }
            _ => {
                v.add(&b_at.field("type"), "could not find installed plugin for this type");
                return;
            }
        }
    }
}

/// Kuma's mesh durations: `0`, or a number and one of `y w d h m s ms`.
fn is_kuma_duration(text: &str) -> bool {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text == "0" || (digits > 0 && ["y", "w", "d", "h", "m", "s", "ms"].contains(&&text[digits..]))
}

/// Each backend's own rules, then the duplicate-name rule.
fn validate_named(
    v: &mut Violations,
    at: &FieldPath,
    section: &Backends,
    backend_rules: impl Fn(&mut Violations, &FieldPath, &Backend),
) {
    let mut used = HashSet::new();
    for (i, backend) in section.backends.iter().enumerate() {
        let b_at = at.field("backends").index(i);
        backend_rules(v, &b_at, backend);
        if !used.insert(backend.name.as_str()) {
            v.add(&b_at.field("name"), format!("{:?} name is already used for another backend", backend.name));
        }
    }
}

/// `defaultBackend` / `enabledBackend` must name one of the section's backends.
fn in_use(v: &mut Violations, at: &FieldPath, section: &Backends, name: &str, what: &str) {
    if !name.is_empty() && !section.backends.iter().any(|b| b.name == name) {
        v.add(at, format!("has to be set to one of the {what}"));
    }
}

fn conf_str<'a>(backend: &'a Backend, key: &str) -> &'a str {
    backend.conf.as_ref().and_then(|c| c.get(key)).and_then(Value::as_str).unwrap_or_default()
}

fn validate_logging_backend(v: &mut Violations, at: &FieldPath, b: &Backend) {
    if b.name.is_empty() {
        v.add(&at.field("name"), "cannot be empty");
    }
    // Kuma's path says `config` for the field the document calls `conf`.
    let config = at.field("config");
    match b.type_.as_str() {
        "file" if conf_str(b, "path").is_empty() => v.add(&config.field("path"), "cannot be empty"),
        "file" => {}
        "tcp" => match conf_str(b, "address") {
            "" => v.add(&config.field("address"), "cannot be empty"),
            address if !is_host_port(address) => v.add(&config.field("address"), "has to be in format of HOST:PORT"),
            _ => {}
        },
        _ => v.add(&at.field("type"), "unknown backend type. Available backends: \"tcp\", \"file\""),
    }
}

/// Go's `net.SplitHostPort` with both parts present.
fn is_host_port(address: &str) -> bool {
    let (host, port) = match address.strip_prefix('[') {
        Some(rest) => match rest.split_once("]:") {
            Some((h, p)) => (h, p),
            None => return false,
        },
        None => match address.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p),
            _ => return false,
        },
    };
    !host.is_empty() && !port.is_empty()
}

fn validate_tracing_backend(v: &mut Violations, at: &FieldPath, b: &Backend) {
    if b.name.is_empty() {
        v.add(&at.field("name"), "cannot be empty");
    }
    if b.sampling.is_some_and(|s| !(0.0..=100.0).contains(&s)) {
        v.add(&at.field("sampling"), "has to be in [0.0 - 100.0] range");
    }
    let config = at.field("config");
    match b.type_.as_str() {
        "zipkin" => {
            let version = conf_str(b, "apiVersion");
            if !["", "httpJsonV1", "httpJson", "httpProto"].contains(&version) {
                v.add(
                    &config.field("apiVersion"),
                    "has invalid value. Allowed values: httpJsonV1, httpJson, httpProto",
                );
            }
            let url = conf_str(b, "url");
            if url.is_empty() {
                v.add(&config.field("url"), "cannot be empty");
            } else {
                match url::Url::parse(url) {
                    Ok(u) if u.port().is_none() => v.add(&config.field("url"), "port has to be explicitly specified"),
                    Ok(_) => {}
                    Err(_) => v.add(&config.field("url"), "invalid URL"),
                }
            }
        }
        "datadog" => {
            if conf_str(b, "address").is_empty() {
                v.add(&config.field("address"), "cannot be empty");
            }
            let port = b.conf.as_ref().and_then(|c| c.get("port")).and_then(Value::as_i64).unwrap_or(0);
            if !(1..=65535).contains(&port) {
                v.add(&config.field("port"), "port must be in the range [1, 65535]");
            }
        }
        _ => v.add(&at.field("type"), "unknown backend type. Available backends: \"zipkin\", \"datadog\""),
    }
}

/// Kuma's selector rules for constraints: at least one tag, Kuma's tag
/// name characters, and values that may also hold `/` or be `*`.
fn validate_selector(v: &mut Violations, at: &FieldPath, tags: &BTreeMap<String, String>) {
    if tags.is_empty() {
        v.add(at, "must have at least one tag");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_:/".contains(c);
    for (key, value) in tags {
        if key.is_empty() {
            v.add(at, "tag name must be non-empty");
        }
        if !key.chars().all(allowed) {
            v.add(
                &at.key(key),
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            );
        }
        if value.is_empty() {
            v.add(&at.key(key), "tag value must be non-empty");
        } else if value != "*" && !value.chars().all(allowed) {
            v.add(
                &at.key(key),
                "tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be \"*\"",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kuma_durations() {
        for ok in ["0", "1y", "30d", "12h", "500ms", "10s"] {
            assert!(is_kuma_duration(ok), "{ok}");
        }
        for bad in ["", "1day", "h", "1.5h", "-1s"] {
            assert!(!is_kuma_duration(bad), "{bad}");
        }
    }

    #[test]
    fn host_ports() {
        assert!(is_host_port("logstash:5000"));
        assert!(is_host_port("[::1]:5000"));
        assert!(!is_host_port("logstash"));
        assert!(!is_host_port(":5000"));
        assert!(!is_host_port("::1:5000"));
    }
}
