//! What crosses between the global control plane and a zone, and how it
//! looks on the other side (Kuma's KDS mappers), pure.
//!
//! - Global to zones: Meshes, backends and the three policies created on
//!   the global; `kuma.io/origin: global`, status dropped, mesh-scoped names
//!   hashed, and a policy's `backendRef.name` rewritten to the name its
//!   backend has on the zones (the reference is resolved before sync).
//! - Zone to global: the zone's Dataplanes and DataplaneInsights (with
//!   status) and the backends and policies created in the zone;
//!   `kuma.io/origin: zone` and `kuma.io/zone: <zone>`, names hashed.

use crate::hash::{hashed_name, Fnv1a};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use tern_model::resource::DISPLAY_NAME_LABEL;
use tern_model::{Kind, Meta, Resource, ResourceKey};

pub const ORIGIN_LABEL: &str = "kuma.io/origin";
pub const ZONE_LABEL: &str = "kuma.io/zone";
pub const NAMESPACE_LABEL: &str = "k8s.kuma.io/namespace";
pub const ORIGIN_GLOBAL: &str = "global";
pub const ORIGIN_ZONE: &str = "zone";

/// Which way resources travel on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// From the global control plane to every zone.
    ToZones,
    /// From one zone to the global control plane.
    ToGlobal { zone: String },
}

const TO_ZONES: &[Kind] =
    &[Kind::Mesh, Kind::MeshOpenTelemetryBackend, Kind::MeshTrace, Kind::MeshMetric, Kind::MeshAccessLog];
const TO_GLOBAL: &[Kind] = &[
    Kind::Dataplane,
    Kind::DataplaneInsight,
    Kind::MeshOpenTelemetryBackend,
    Kind::MeshTrace,
    Kind::MeshMetric,
    Kind::MeshAccessLog,
];

/// Names on the receiving side of every backend, by (mesh, name) on the
/// sending side: what a policy's `backendRef.name` is rewritten to.
pub type BackendNames = HashMap<(String, String), String>;

impl Flow {
    /// The kinds this flow carries, in the order they are sent (a Mesh
    /// before what lives in it).
    pub fn kinds(&self) -> &'static [Kind] {
        match self {
            Flow::ToZones => TO_ZONES,
            Flow::ToGlobal { .. } => TO_GLOBAL,
        }
    }

    /// Whether status travels (zone to global: the insights' per-signal
    /// states are what the global shows).
    pub fn keeps_status(&self) -> bool {
        matches!(self, Flow::ToGlobal { .. })
    }

    /// The peer this flow comes from, for messages.
    pub fn source(&self) -> String {
        match self {
            Flow::ToZones => "the global control plane".into(),
            Flow::ToGlobal { zone } => format!("zone {zone:?}"),
        }
    }

    /// Whether a resource stored on the receiving side came through this
    /// flow, so the flow may replace or remove it.
    pub fn owns(&self, r: &Resource) -> bool {
        let origin = r.labels.get(ORIGIN_LABEL).map(String::as_str);
        match self {
            Flow::ToZones => origin == Some(ORIGIN_GLOBAL),
            Flow::ToGlobal { zone } => {
                origin == Some(ORIGIN_ZONE) && r.labels.get(ZONE_LABEL).map(String::as_str) == Some(zone.as_str())
            }
        }
    }

    /// How `r`, stored on the sending side, looks on the receiving side;
    /// `None` when it does not travel this way.
    pub fn outgoing(&self, r: &Resource, backends: &BackendNames) -> Option<Resource> {
        if !self.kinds().contains(&r.kind) {
            return None;
        }
        let origin = r.labels.get(ORIGIN_LABEL).map(String::as_str);
        let mut out = Resource { meta: Meta::default(), status: None, ..r.clone() };
        if r.kind.is_mesh_scoped() {
            out.labels.entry(DISPLAY_NAME_LABEL.into()).or_insert_with(|| r.name.clone());
        }
        match self {
            Flow::ToZones => {
                if origin == Some(ORIGIN_ZONE) {
                    return None;
                }
                out.labels.insert(ORIGIN_LABEL.into(), ORIGIN_GLOBAL.into());
                if r.kind.is_policy() {
                    rewrite_backend_refs(&mut out.spec, &r.mesh, backends);
                }
            }
            Flow::ToGlobal { zone } => {
                if origin == Some(ORIGIN_GLOBAL) {
                    return None;
                }
                out.labels.insert(ORIGIN_LABEL.into(), ORIGIN_ZONE.into());
                out.labels.insert(ZONE_LABEL.into(), zone.clone());
                out.status = r.status.clone();
            }
        }
        out.name = synced_name(&out);
        Some(out)
    }
}

/// The name `r` (already labelled for the receiving side) has there:
/// mesh-scoped names get Kuma's hash suffix, others keep theirs.
pub fn synced_name(r: &Resource) -> String {
    if !r.kind.is_mesh_scoped() {
        return r.name.clone();
    }
    let display = r.labels.get(DISPLAY_NAME_LABEL).map(String::as_str).unwrap_or(&r.name);
    let extras: Vec<&str> =
        [ZONE_LABEL, NAMESPACE_LABEL].iter().filter_map(|l| r.labels.get(*l).map(String::as_str)).collect();
    hashed_name(&r.mesh, display, &extras)
}

/// Every `backendRef` naming a backend by `name` now names it as the
/// receiving side knows it; names with no backend on this side stay.
fn rewrite_backend_refs(spec: &mut Value, mesh: &str, backends: &BackendNames) {
    match spec {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if key == "backendRef" {
                    if let Some(Value::String(name)) = value.get_mut("name") {
                        if let Some(synced) = backends.get(&(mesh.to_string(), name.clone())) {
                            *name = synced.clone();
                        }
                    }
                } else {
                    rewrite_backend_refs(value, mesh, backends);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_backend_refs(v, mesh, backends)),
        _ => {}
    }
}

/// A resource as it travels: what the receiver stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireResource {
    pub mesh: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub spec: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

impl WireResource {
    pub fn from_resource(r: &Resource) -> Self {
        WireResource {
            mesh: r.mesh.clone(),
            name: r.name.clone(),
            labels: r.labels.clone(),
            spec: r.spec.clone(),
            status: r.status.clone(),
        }
    }

    pub fn into_resource(self, kind: Kind) -> Resource {
        Resource { labels: self.labels, status: self.status, ..Resource::new(kind, &self.mesh, &self.name, self.spec) }
    }
}

/// The name a resource has in the delta xDS messages: `mesh/name`, or the
/// name alone outside meshes.
pub fn wire_key(kind: Kind, mesh: &str, name: &str) -> String {
    if kind.is_mesh_scoped() {
        format!("{mesh}/{name}")
    } else {
        name.to_string()
    }
}

/// The key a wire name stands for.
pub fn key_of_wire(kind: Kind, wire: &str) -> Option<ResourceKey> {
    if kind.is_mesh_scoped() {
        let (mesh, name) = wire.split_once('/')?;
        Some(ResourceKey::new(kind, mesh, name))
    } else {
        Some(ResourceKey::new(kind, "", wire))
    }
}

/// A content version both sides compute alike from what they hold: the
/// sender from the mapped resource, the receiver from its stored copy.
pub fn version_of(r: &Resource, with_status: bool) -> String {
    let mut hash = Fnv1a::default();
    // Each field ends with a byte no UTF-8 text holds, so fields cannot run together.
    let mut feed = |bytes: &[u8]| {
        hash.write(bytes);
        hash.write(&[0xff]);
    };
    feed(r.name.as_bytes());
    feed(r.mesh.as_bytes());
    for (k, v) in &r.labels {
        feed(k.as_bytes());
        feed(v.as_bytes());
    }
    feed(canonical(&r.spec).as_bytes());
    if with_status {
        feed(r.status.as_ref().map(canonical).unwrap_or_default().as_bytes());
    }
    format!("{:016x}", hash.0)
}

/// JSON with object keys sorted, so key order never changes a version.
fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let sorted: BTreeMap<&String, Value> = map.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(kind: Kind, mesh: &str, name: &str, labels: &[(&str, &str)], spec: Value) -> Resource {
        Resource {
            kind,
            mesh: mesh.into(),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            spec,
            status: Some(json!({"conditions": []})),
            meta: Meta::default(),
        }
    }

    #[test]
    fn global_resources_reach_zones_hashed_labelled_without_status() {
        let backend = resource(Kind::MeshOpenTelemetryBackend, "default", "otel", &[], json!({}));
        let out = Flow::ToZones.outgoing(&backend, &BackendNames::new()).unwrap();
        assert_eq!(out.name, hashed_name("default", "otel", &[]));
        assert_eq!(out.labels[ORIGIN_LABEL], "global");
        assert_eq!(out.labels[DISPLAY_NAME_LABEL], "otel");
        assert_eq!(out.status, None);
        let mesh = resource(Kind::Mesh, "", "default", &[], json!({}));
        assert_eq!(Flow::ToZones.outgoing(&mesh, &BackendNames::new()).unwrap().name, "default");
        let from_zone = resource(Kind::MeshTrace, "default", "t", &[(ORIGIN_LABEL, "zone")], json!({}));
        assert!(Flow::ToZones.outgoing(&from_zone, &BackendNames::new()).is_none());
        let dp = resource(Kind::Dataplane, "default", "web", &[], json!({}));
        assert!(Flow::ToZones.outgoing(&dp, &BackendNames::new()).is_none());
    }

    #[test]
    fn a_global_policy_names_its_backend_as_zones_know_it() {
        let spec = json!({"default": {"backends": [{"type": "OpenTelemetry",
            "openTelemetry": {"backendRef": {"kind": "MeshOpenTelemetryBackend", "name": "collector-us-east"}}}]}});
        let policy = resource(Kind::MeshMetric, "default", "metrics-us-east", &[], spec);
        let synced = hashed_name("default", "collector-us-east", &[]);
        let backends: BackendNames = [(("default".into(), "collector-us-east".into()), synced.clone())].into();
        let out = Flow::ToZones.outgoing(&policy, &backends).unwrap();
        assert_eq!(out.spec["default"]["backends"][0]["openTelemetry"]["backendRef"]["name"], json!(synced));
        // A name with no backend on the global stays as written.
        let out = Flow::ToZones.outgoing(&policy, &BackendNames::new()).unwrap();
        assert_eq!(out.spec["default"]["backends"][0]["openTelemetry"]["backendRef"]["name"], "collector-us-east");
    }

    #[test]
    fn zone_resources_reach_global_with_zone_labels_and_status() {
        let flow = Flow::ToGlobal { zone: "us-east".into() };
        let dp = resource(Kind::Dataplane, "default", "web-1", &[(DISPLAY_NAME_LABEL, "web-1")], json!({}));
        let out = flow.outgoing(&dp, &BackendNames::new()).unwrap();
        assert_eq!(out.name, hashed_name("default", "web-1", &["us-east"]));
        assert_eq!((out.labels[ORIGIN_LABEL].as_str(), out.labels[ZONE_LABEL].as_str()), ("zone", "us-east"));
        assert!(out.status.is_some());
        assert!(flow.owns(&out) && !Flow::ToGlobal { zone: "eu-west".into() }.owns(&out));
        // The insight lands under its dataplane's name.
        let insight = resource(Kind::DataplaneInsight, "default", "web-1", &[], json!({}));
        assert_eq!(flow.outgoing(&insight, &BackendNames::new()).unwrap().name, out.name);
        // What came from the global does not go back.
        let synced = resource(Kind::MeshTrace, "default", "t-x", &[(ORIGIN_LABEL, "global")], json!({}));
        assert!(flow.outgoing(&synced, &BackendNames::new()).is_none());
    }

    #[test]
    fn versions_follow_content_not_key_order() {
        let a = resource(Kind::MeshTrace, "default", "t", &[], json!({"a": 1, "b": {"c": 2, "d": 3}}));
        let b = resource(Kind::MeshTrace, "default", "t", &[], json!({"b": {"d": 3, "c": 2}, "a": 1}));
        assert_eq!(version_of(&a, true), version_of(&b, true));
        let c = resource(Kind::MeshTrace, "default", "t", &[], json!({"a": 2}));
        assert_ne!(version_of(&a, false), version_of(&c, false));
        let mut d = a.clone();
        d.status = None;
        assert_eq!(version_of(&a, false), version_of(&d, false));
        assert_ne!(version_of(&a, true), version_of(&d, true));
    }

    #[test]
    fn wire_keys_round_trip() {
        assert_eq!(
            key_of_wire(Kind::MeshTrace, &wire_key(Kind::MeshTrace, "m", "n")),
            Some(ResourceKey::new(Kind::MeshTrace, "m", "n"))
        );
        assert_eq!(
            key_of_wire(Kind::Mesh, &wire_key(Kind::Mesh, "", "m")),
            Some(ResourceKey::new(Kind::Mesh, "", "m"))
        );
        assert_eq!(key_of_wire(Kind::MeshTrace, "no-slash"), None);
    }
}
