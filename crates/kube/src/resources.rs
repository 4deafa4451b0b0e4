//! Where each Tern resource lives in Kubernetes, and the conversion between
//! a stored [`Resource`] and the apiserver's object.
//!
//! - Every kind is a custom resource of group `kuma.io`, version `v1alpha1`
//!   (Mesh cluster-scoped, the others namespaced), except the internal
//!   `GlobalSecret`, which is a `Secret` of type `system.kuma.io/global-secret`
//!   in the system namespace (as Kuma keeps its signing keys).
//! - Names follow Kuma's Kubernetes store: a namespaced object `NAME` in
//!   namespace `NS` is `NAME.NS` to the rest of Tern, except in the system
//!   namespace, where it is plain `NAME` (so `backendRef.name: main-collector`
//!   finds the MeshOpenTelemetryBackend `main-collector` in `kuma-system`).
//! - The mesh is the `kuma.io/mesh` label (`default` without it); the labels
//!   `kuma.io/display-name` and `k8s.kuma.io/namespace` are computed from the
//!   object's name and namespace, never stored.

use base64::Engine;
use chrono::{DateTime, Utc};
use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tern_model::resource::{DISPLAY_NAME_LABEL, MESH_LABEL, NAMESPACE_LABEL};
use tern_model::{Kind, Meta, Resource, DEFAULT_MESH};

/// The API group of every Tern custom resource (Kuma's).
pub const GROUP: &str = "kuma.io";
/// Their one version.
pub const VERSION: &str = "v1alpha1";
/// The `type` of the Secrets that hold Tern's global secrets (Kuma's).
pub const GLOBAL_SECRET_TYPE: &str = "system.kuma.io/global-secret";
/// The Secret data key holding a global secret's content.
const SECRET_VALUE: &str = "value";

/// The Kubernetes plural of a kind: `meshes`, `meshtraces`, `dataplaneinsights`.
pub fn plural(kind: Kind) -> String {
    let lower = kind.name().to_ascii_lowercase();
    if lower.ends_with('h') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

/// The apiserver resource that holds a kind.
pub fn api_resource(kind: Kind) -> ApiResource {
    if kind == Kind::GlobalSecret {
        return ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "Secret".into(),
            plural: "secrets".into(),
        };
    }
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.name().into(),
        plural: plural(kind),
    }
}

/// Whether the kind's objects live in a namespace.
pub fn is_namespaced(kind: Kind) -> bool {
    kind.is_mesh_scoped() || kind == Kind::GlobalSecret
}

/// Where one object is: its namespace (none for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub namespace: Option<String>,
    pub name: String,
}

/// Names and namespaces, as the rest of Tern sees them.
#[derive(Debug, Clone)]
pub struct Naming {
    /// Kuma's system namespace (`kuma-system`).
    pub system_namespace: String,
}

impl Naming {
    /// Tern's name for the object `name` in `namespace`.
    pub fn core_name(&self, kind: Kind, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if is_namespaced(kind) && ns != self.system_namespace && kind != Kind::GlobalSecret => {
                format!("{name}.{ns}")
            }
            _ => name.to_string(),
        }
    }

    /// Where a resource of this Tern name is written: `NAME.NS` in `NS`, a
    /// name without a dot in the system namespace.
    pub fn location(&self, kind: Kind, core_name: &str) -> Location {
        if !is_namespaced(kind) {
            return Location { namespace: None, name: core_name.to_string() };
        }
        match core_name.rsplit_once('.') {
            Some((name, ns)) if kind != Kind::GlobalSecret && !name.is_empty() && !ns.is_empty() => {
                Location { namespace: Some(ns.to_string()), name: name.to_string() }
            }
            _ => Location { namespace: Some(self.system_namespace.clone()), name: core_name.to_string() },
        }
    }

    /// Where a resource of this Tern name may be, in the order to look:
    /// [`Self::location`] first, then a dotted name in the system namespace.
    pub fn candidates(&self, kind: Kind, core_name: &str) -> Vec<Location> {
        let first = self.location(kind, core_name);
        let system = Location { namespace: Some(self.system_namespace.clone()), name: core_name.to_string() };
        if is_namespaced(kind) && first != system {
            vec![first, system]
        } else {
            vec![first]
        }
    }

    /// The stored resource an apiserver object holds, or why it cannot be read.
    pub fn to_resource(&self, kind: Kind, obj: &DynamicObject) -> Result<Resource, String> {
        let k8s_name = obj.metadata.name.clone().ok_or("the object has no name")?;
        let namespace = obj.metadata.namespace.as_deref();
        let mut labels: BTreeMap<String, String> = obj.metadata.labels.clone().unwrap_or_default();
        let mesh = if kind.is_mesh_scoped() {
            labels.entry(MESH_LABEL.into()).or_insert_with(|| DEFAULT_MESH.into()).clone()
        } else {
            String::new()
        };
        if kind != Kind::GlobalSecret {
            labels.entry(DISPLAY_NAME_LABEL.into()).or_insert_with(|| k8s_name.clone());
        }
        if let (Some(ns), true) = (namespace, kind.is_mesh_scoped()) {
            labels.insert(NAMESPACE_LABEL.into(), ns.to_string());
        }
        let (spec, status) = if kind == Kind::GlobalSecret {
            (secret_value(obj)?, None)
        } else {
            let spec = obj.data.get("spec").cloned().filter(|s| !s.is_null()).unwrap_or_else(|| json!({}));
            (spec, obj.data.get("status").cloned().filter(|s| !s.is_null()))
        };
        Ok(Resource {
            kind,
            mesh,
            name: self.core_name(kind, namespace, &k8s_name),
            labels,
            spec,
            status,
            meta: meta(&obj.metadata),
        })
    }

    /// The apiserver object for a resource at `at`. Status is not part of
    /// it: the status subresource is written apart.
    pub fn to_object(&self, resource: &Resource, at: &Location) -> DynamicObject {
        let mut obj = DynamicObject::new(&at.name, &api_resource(resource.kind));
        obj.metadata.namespace = at.namespace.clone();
        let labels: BTreeMap<String, String> = resource
            .labels
            .iter()
            .filter(|(k, v)| !is_computed_label(k, v, &at.name, &resource.name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        obj.metadata.labels = (!labels.is_empty()).then_some(labels);
        obj.data = if resource.kind == Kind::GlobalSecret {
            let encoded = base64::engine::general_purpose::STANDARD.encode(resource.spec.to_string());
            json!({"type": GLOBAL_SECRET_TYPE, "data": {SECRET_VALUE: encoded}})
        } else {
            json!({"spec": resource.spec})
        };
        obj
    }
}

/// Labels Tern derives from where an object is, so they are not written: a
/// display name that is the object's name here, or Tern's `NAME.NAMESPACE`
/// for it (read back, the display name is the object's name, as in Kuma).
fn is_computed_label(key: &str, value: &str, k8s_name: &str, core_name: &str) -> bool {
    key == NAMESPACE_LABEL || (key == DISPLAY_NAME_LABEL && (value == k8s_name || value == core_name))
}

/// What a change to an object means to Tern: its labels and spec (for a
/// Secret, its data). Equal fingerprints with a new resourceVersion mean
/// only the status changed.
pub fn fingerprint(obj: &DynamicObject) -> String {
    let content = obj.data.get("spec").or_else(|| obj.data.get("data")).cloned().unwrap_or(Value::Null);
    json!({"labels": obj.metadata.labels, "content": content}).to_string()
}

fn secret_value(obj: &DynamicObject) -> Result<Value, String> {
    let encoded = obj.data.get("data").and_then(|d| d.get(SECRET_VALUE)).and_then(Value::as_str).unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("the Secret's data.{SECRET_VALUE} is not base64: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the Secret's data.{SECRET_VALUE} is not JSON: {e}"))
}

/// The object's resourceVersion as Tern's version (etcd's revision, a number).
pub fn version(meta: &ObjectMeta) -> i64 {
    meta.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn meta(m: &ObjectMeta) -> Meta {
    let created: Option<DateTime<Utc>> = m.creation_timestamp.as_ref().map(|t| time(&t.0));
    let modified =
        m.managed_fields.iter().flatten().filter_map(|f| f.time.as_ref().map(|t| time(&t.0))).max().or(created);
    Meta { version: version(m), creation_time: created, modification_time: modified }
}

/// A Kubernetes timestamp as chrono's.
fn time(t: &k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming() -> Naming {
        Naming { system_namespace: "kuma-system".into() }
    }

    #[test]
    fn plurals_are_kumas() {
        let got: Vec<String> = Kind::ALL.iter().map(|k| plural(*k)).collect();
        assert_eq!(
            got,
            [
                "meshes",
                "dataplanes",
                "dataplaneinsights",
                "meshopentelemetrybackends",
                "meshtraces",
                "meshmetrics",
                "meshaccesslogs",
                "zones",
                "zoneinsights"
            ]
        );
    }

    #[test]
    fn names_in_the_system_namespace_stay_plain() {
        let n = naming();
        assert_eq!(n.core_name(Kind::MeshOpenTelemetryBackend, Some("kuma-system"), "main"), "main");
        assert_eq!(n.core_name(Kind::Dataplane, Some("shop"), "web-1"), "web-1.shop");
        assert_eq!(n.core_name(Kind::Mesh, None, "default"), "default");
        let at = n.location(Kind::Dataplane, "web-1.shop");
        assert_eq!(at, Location { namespace: Some("shop".into()), name: "web-1".into() });
        let at = n.location(Kind::MeshTrace, "plain");
        assert_eq!(at, Location { namespace: Some("kuma-system".into()), name: "plain".into() });
        assert_eq!(n.location(Kind::Mesh, "a.b").namespace, None);
        // A dotted name may also be a system-namespace object.
        assert_eq!(n.candidates(Kind::MeshTrace, "a.b").len(), 2);
        assert_eq!(n.location(Kind::GlobalSecret, "key.1").name, "key.1");
    }

    #[test]
    fn objects_round_trip_with_computed_labels() {
        let n = naming();
        let resource = Resource {
            kind: Kind::MeshTrace,
            mesh: "default".into(),
            name: "t.shop".into(),
            labels: [
                (MESH_LABEL.to_string(), "default".to_string()),
                (DISPLAY_NAME_LABEL.to_string(), "t".to_string()),
                (NAMESPACE_LABEL.to_string(), "shop".to_string()),
                ("team".to_string(), "a".to_string()),
            ]
            .into(),
            spec: json!({"targetRef": {"kind": "Mesh"}}),
            status: None,
            meta: Meta::default(),
        };
        let at = n.location(Kind::MeshTrace, &resource.name);
        let obj = n.to_object(&resource, &at);
        let stored = obj.metadata.labels.clone().unwrap();
        assert!(!stored.contains_key(NAMESPACE_LABEL) && !stored.contains_key(DISPLAY_NAME_LABEL));
        let back = n.to_resource(Kind::MeshTrace, &obj).unwrap();
        assert_eq!((back.name, back.labels, back.spec), (resource.name, resource.labels, resource.spec));
    }

    /// A Universal-form document names a data plane `api.shop`, and its
    /// display name defaults to that: stored, it is the object `api` in
    /// `shop`, whose display name is `api`.
    #[test]
    fn a_display_name_of_name_dot_namespace_is_the_objects_name() {
        let n = naming();
        let resource = Resource {
            kind: Kind::Dataplane,
            mesh: "default".into(),
            name: "api.shop".into(),
            labels: [(DISPLAY_NAME_LABEL.to_string(), "api.shop".to_string())].into(),
            spec: json!({}),
            status: None,
            meta: Meta::default(),
        };
        let obj = n.to_object(&resource, &n.location(Kind::Dataplane, "api.shop"));
        assert!(obj.metadata.labels.is_none(), "{:?}", obj.metadata.labels);
        let back = n.to_resource(Kind::Dataplane, &obj).unwrap();
        assert_eq!(back.labels.get(DISPLAY_NAME_LABEL).map(String::as_str), Some("api"));
    }

    #[test]
    fn global_secrets_are_secrets() {
        let n = naming();
        let resource = Resource {
            kind: Kind::GlobalSecret,
            mesh: String::new(),
            name: "dataplane-token-signing-key-1".into(),
            labels: BTreeMap::new(),
            spec: json!({"key": "c2VjcmV0"}),
            status: None,
            meta: Meta::default(),
        };
        let at = n.location(Kind::GlobalSecret, &resource.name);
        let obj = n.to_object(&resource, &at);
        assert_eq!(obj.data["type"], GLOBAL_SECRET_TYPE);
        assert_eq!(n.to_resource(Kind::GlobalSecret, &obj).unwrap().spec, resource.spec);
        let mut broken = obj.clone();
        broken.data["data"]["value"] = json!("%%%");
        assert!(n.to_resource(Kind::GlobalSecret, &broken).unwrap_err().contains("not base64"));
    }
}
