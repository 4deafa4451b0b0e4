//! Resource attributes of the telemetry a data plane sends: OpenTelemetry's
//! semantic conventions where the data plane's tags and labels provide them,
//! and the policies' `resourceAttributes`, whose values interpolate
//! `{{key}}` from the data plane. One definition for the control plane
//! (spans and access logs, through Envoy) and `tern-dp` (metrics).

use super::dataplane::{DataplaneSpec, SERVICE_TAG, ZONE_TAG};
use std::collections::BTreeMap;

/// The keys `{{...}}` may name without a prefix; `tag:<name>` and
/// `label:<name>` reach any other inbound tag or Dataplane label.
pub const WELL_KNOWN_KEYS: &[&str] = &[
    "kuma.io/service",
    "kuma.io/zone",
    "kuma.io/protocol",
    "kuma.io/mesh",
    "kuma.io/display-name",
    "k8s.kuma.io/namespace",
    "version",
    "env",
    "app",
];

/// A piece of a value: literal text, or a key to interpolate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Key(&'a str),
}

/// Splits a value into text and `{{key}}` pieces; an unknown key or an
/// unclosed `{{` is an error naming it.
pub fn parse_template(value: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| "has an unclosed '{{'".to_string())?;
        let key = after[..end].trim();
        let prefixed = ["tag:", "label:"].iter().any(|p| key.strip_prefix(p).is_some_and(|k| !k.is_empty()));
        if !WELL_KNOWN_KEYS.contains(&key) && !prefixed {
            return Err(format!(
                "unknown interpolation key {key:?}: use one of {}, or tag:<name> or label:<name>",
                WELL_KNOWN_KEYS.join(", ")
            ));
        }
        pieces.push(Piece::Key(key));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// What interpolation reads of one data plane.
#[derive(Debug, Clone, Copy)]
pub struct DataplaneView<'a> {
    pub mesh: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub spec: &'a DataplaneSpec,
}

impl DataplaneView<'_> {
    fn tag(&self, name: &str) -> Option<&str> {
        let inbound = self.spec.networking.as_ref()?.inbound.first()?;
        inbound.tags.get(name).map(String::as_str)
    }

    /// A key's value: an inbound tag, else a label (`kuma.io/mesh` is the mesh).
    fn lookup(&self, key: &str) -> Option<&str> {
        if let Some(tag) = key.strip_prefix("tag:") {
            return self.tag(tag);
        }
        if let Some(label) = key.strip_prefix("label:") {
            return self.labels.get(label).map(String::as_str);
        }
        if key == "kuma.io/mesh" {
            return Some(self.mesh);
        }
        self.tag(key).or_else(|| self.labels.get(key).map(String::as_str))
    }

    /// The semantic-convention attributes this data plane provides, then the
    /// policy's (which win); an attribute whose key is missing on this data
    /// plane is left out rather than sent empty.
    pub fn resource_attributes(&self, templates: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        let namespace = self.labels.get("k8s.kuma.io/namespace");
        let defaults = [
            ("service.name", self.tag(SERVICE_TAG)),
            ("service.version", self.tag("version")),
            ("service.namespace", namespace.map(String::as_str)),
            ("deployment.environment", self.tag("env")),
            ("k8s.namespace.name", namespace.map(String::as_str)),
            ("k8s.pod.name", namespace.map(|_| self.name)),
            ("kuma.mesh", Some(self.mesh)),
            ("kuma.zone", self.tag(ZONE_TAG).or_else(|| self.labels.get(ZONE_TAG).map(String::as_str))),
            ("kuma.dataplane", Some(self.name)),
        ];
        for (key, value) in defaults {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                out.insert(key.to_string(), value.to_string());
            }
        }
        for (key, template) in templates {
            let Ok(pieces) = parse_template(template) else { continue };
            let value: Option<String> = pieces
                .iter()
                .map(|p| match p {
                    Piece::Text(t) => Some(t.to_string()),
                    Piece::Key(k) => self.lookup(k).map(str::to_string),
                })
                .collect();
            if let Some(value) = value {
                out.insert(key.clone(), value);
            }
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(
            parse_template("{{kuma.io/service}}-{{ tag:team }}"),
            Ok(vec![Piece::Key("kuma.io/service"), Piece::Text("-"), Piece::Key("tag:team")])
        );
        assert!(parse_template("{{nope}}").unwrap_err().starts_with("unknown interpolation key \"nope\""));
        assert!(parse_template("a {{version").is_err());
        assert!(parse_template("{{tag:}}").is_err());
        assert_eq!(parse_template("plain"), Ok(vec![Piece::Text("plain")]));
    }

    #[test]
    fn interpolation_and_defaults() {
        let spec: DataplaneSpec = serde_json::from_value(serde_json::json!({"networking": {"address": "10.0.0.1",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web", "version": "v2", "team": "pay"}}]}}))
        .expect("spec");
        let labels: BTreeMap<String, String> = [("k8s.kuma.io/namespace".to_string(), "shop".to_string())].into();
        let view = DataplaneView { mesh: "default", name: "web-7f9", labels: &labels, spec: &spec };
        let attrs = view.resource_attributes(&BTreeMap::from([
            ("app.owner".into(), "{{tag:team}}@{{k8s.kuma.io/namespace}}".into()),
            ("gone".into(), "{{env}}".into()),
            ("service.name".into(), "{{kuma.io/service}}-svc".into()),
        ]));
        let get = |k: &str| attrs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("app.owner"), Some("pay@shop"));
        assert_eq!(get("gone"), None, "a key the data plane lacks leaves the attribute out");
        assert_eq!(get("service.name"), Some("web-svc"), "the policy's value wins");
        assert_eq!(get("service.version"), Some("v2"));
        assert_eq!(get("k8s.namespace.name"), Some("shop"));
        assert_eq!(get("k8s.pod.name"), Some("web-7f9"));
        assert_eq!(get("kuma.mesh"), Some("default"));
    }
}
