//! The stored form of every resource, and its REST/Universal JSON rendering.

use crate::kind::Kind;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Label holding a resource's mesh.
pub const MESH_LABEL: &str = "kuma.io/mesh";
/// Label holding the name the user gave the resource (what cross-zone
/// `backendRef.labels` selectors match on).
pub const DISPLAY_NAME_LABEL: &str = "kuma.io/display-name";
/// Label recording the Kubernetes namespace of a Kubernetes-form document.
pub const NAMESPACE_LABEL: &str = "k8s.kuma.io/namespace";
/// The only namespace MeshOpenTelemetryBackend may be created in.
pub const SYSTEM_NAMESPACE: &str = "kuma-system";
/// The mesh every fresh control plane has.
pub const DEFAULT_MESH: &str = "default";

/// What the store keeps about a resource besides its content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Bumped on every write; an update naming an older version is refused.
    pub version: i64,
    pub creation_time: Option<DateTime<Utc>>,
    pub modification_time: Option<DateTime<Utc>>,
}

/// One resource, whichever form it was written in.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    /// Empty for `Mesh`, which is not inside a mesh.
    pub mesh: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Canonical JSON of the typed spec (validated).
    pub spec: Value,
    /// Written by the control plane only.
    pub status: Option<Value>,
    pub meta: Meta,
}

/// Identity of a resource: kind, mesh, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: Kind,
    pub mesh: String,
    pub name: String,
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.mesh.is_empty() {
            write!(f, "{} {:?}", self.kind, self.name)
        } else {
            write!(f, "{} {:?} in mesh {:?}", self.kind, self.name, self.mesh)
        }
    }
}

impl ResourceKey {
    pub fn new(kind: Kind, mesh: &str, name: &str) -> Self {
        let mesh = if kind.is_mesh_scoped() { mesh.to_string() } else { String::new() };
        ResourceKey { kind, mesh, name: name.to_string() }
    }
}

impl Resource {
    /// A resource with no labels, status or times yet (the store sets the
    /// times); `mesh` is dropped for kinds outside meshes.
    pub fn new(kind: Kind, mesh: &str, name: &str, spec: Value) -> Resource {
        let ResourceKey { kind, mesh, name } = ResourceKey::new(kind, mesh, name);
        Resource { kind, mesh, name, labels: BTreeMap::new(), spec, status: None, meta: Meta::default() }
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey { kind: self.kind, mesh: self.mesh.clone(), name: self.name.clone() }
    }

    /// Whether every `selector` label is on this resource with the same value.
    pub fn matches_labels(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// The Universal/REST JSON form Kuma's API returns:
    /// `{type, mesh, name, labels, creationTime, modificationTime, spec, status}`,
    /// with the spec inlined for Mesh, Dataplane and DataplaneInsight.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("type".into(), Value::from(self.kind.name()));
        if self.kind.is_mesh_scoped() {
            out.insert("mesh".into(), Value::from(self.mesh.clone()));
        }
        out.insert("name".into(), Value::from(self.name.clone()));
        if !self.labels.is_empty() {
            let labels: Map<String, Value> =
                self.labels.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
            out.insert("labels".into(), Value::Object(labels));
        }
        for (key, time) in
            [("creationTime", self.meta.creation_time), ("modificationTime", self.meta.modification_time)]
        {
            if let Some(t) = time {
                out.insert(key.into(), Value::from(t.to_rfc3339_opts(SecondsFormat::Millis, true)));
            }
        }
        if self.kind.spec_is_inlined() {
            if let Value::Object(fields) = &self.spec {
                out.extend(fields.clone());
            }
        } else {
            out.insert("spec".into(), self.spec.clone());
        }
        if let Some(status) = &self.status {
            out.insert("status".into(), status.clone());
        }
        Value::Object(out)
    }
}
