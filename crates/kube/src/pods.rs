//! Dataplanes from Pods: for every Pod with an IP in a namespace labelled
//! `kuma.io/sidecar-injection: enabled` (or labelled so itself), a Dataplane
//! `POD.NAMESPACE` with one inbound per port of every Service that selects
//! it, tagged as Kuma tags them (`kuma.io/service: NAME_NAMESPACE_svc_PORT`,
//! `k8s.kuma.io/namespace`, the service name and port, the Pod's labels,
//! `kuma.io/protocol` from the port's `appProtocol`). When the Pod goes (or
//! no Service selects it any more) the Dataplane goes, and the reconciler
//! removes its DataplaneInsight with it.
//!
//! The controller is level-based: any Pod, Service or Namespace event marks
//! the namespace, and the namespace is recomputed whole (its Pods and
//! Services against the Dataplanes this controller made there, which carry
//! [`FROM_POD_LABEL`]). A restarted watch lists everything again, so
//! nothing missed while it was down stays missed.

use crate::resources::Naming;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tern_model::resource::MESH_LABEL;
use tern_model::spec::dataplane::{DEFAULT_ADMIN_PORT, PROTOCOL_TAG, SERVICE_TAG};
use tern_model::{Kind, Meta, Resource, DEFAULT_MESH};
use tern_store::{ListFilter, Precondition, ResourceStore, StoreError, Write};
use tracing::{debug, info, warn};

/// Kuma's injection label, on a namespace or a Pod.
pub const INJECTION_LABEL: &str = "kuma.io/sidecar-injection";
/// Marks the Dataplanes this controller made (and may delete).
pub const FROM_POD_LABEL: &str = "k8s.kuma.io/from-pod";
/// How long events gather before the namespaces they touch are recomputed.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Writes Dataplanes into `store`: the [`crate::KubeStore`] itself, or on a zone
/// the store behind its sync rules (which label them for the global).
pub struct PodController<S> {
    client: Client,
    store: Arc<S>,
    naming: Naming,
}

impl<S: ResourceStore> PodController<S> {
    pub fn new(client: Client, store: Arc<S>, naming: Naming) -> Self {
        PodController { client, store, naming }
    }

    /// Follows Pods, Services and Namespaces until the apiserver is gone for
    /// good; a namespace that fails to reconcile is retried with the next
    /// event or within a second. The caller owns this task.
    pub async fn run(self) -> Result<(), StoreError> {
        let pods = watcher(Api::<Pod>::all(self.client.clone()), watcher::Config::default()).default_backoff();
        let services = watcher(Api::<Service>::all(self.client.clone()), watcher::Config::default()).default_backoff();
        let namespaces =
            watcher(Api::<Namespace>::all(self.client.clone()), watcher::Config::default()).default_backoff();
        let mut events = futures::stream::select_all([
            pods.map(|e| e.map(|e| namespaces_of(e, |p: &Pod| p.metadata.namespace.clone()))).boxed(),
            services.map(|e| e.map(|e| namespaces_of(e, |s: &Service| s.metadata.namespace.clone()))).boxed(),
            namespaces.map(|e| e.map(|e| namespaces_of(e, |n: &Namespace| n.metadata.name.clone()))).boxed(),
        ]);
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        loop {
            let wait = if dirty.is_empty() { Duration::from_secs(3600) } else { DEBOUNCE };
            match tokio::time::timeout(wait, events.next()).await {
                Ok(Some(Ok(touched))) => {
                    dirty.extend(touched);
                    continue;
                }
                Ok(Some(Err(e))) => {
                    warn!(error = %e, "watching Pods, Services or Namespaces failed; retrying");
                    continue;
                }
                Ok(None) => return Err(StoreError::Backend("the Pod, Service and Namespace watches ended".into())),
                Err(_) => {}
            }
            for ns in std::mem::take(&mut dirty) {
                if let Err(e) = self.reconcile_namespace(&ns).await {
                    warn!(namespace = %ns, error = %e, "Dataplanes from Pods not reconciled; retrying");
                    dirty.insert(ns);
                }
            }
            if !dirty.is_empty() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Makes the namespace's Pod-made Dataplanes match its Pods and Services.
    async fn reconcile_namespace(&self, ns: &str) -> Result<(), StoreError> {
        let backend = |e: kube::Error| StoreError::Backend(format!("reading namespace {ns}: {e}"));
        let namespace = Api::<Namespace>::all(self.client.clone()).get_opt(ns).await.map_err(backend)?;
        let injected_ns = namespace.as_ref().is_some_and(|n| injection_enabled(n.metadata.labels.as_ref()));
        let pods = Api::<Pod>::namespaced(self.client.clone(), ns).list(&Default::default()).await.map_err(backend)?;
        let services =
            Api::<Service>::namespaced(self.client.clone(), ns).list(&Default::default()).await.map_err(backend)?;
        let naming = &self.naming;
        let desired: BTreeMap<String, Resource> = pods
            .items
            .iter()
            .filter(|p| injected_ns || injection_enabled(p.metadata.labels.as_ref()))
            .filter_map(|p| dataplane_for(p, &services.items))
            .map(|d| (d.name.clone(), d))
            .collect();
        let managed = ListFilter { mesh: None, labels: [(FROM_POD_LABEL.to_string(), "true".to_string())].into() };
        for existing in self.store.list(Kind::Dataplane, &managed).await? {
            let in_ns = naming.location(Kind::Dataplane, &existing.name).namespace.as_deref() == Some(ns);
            if in_ns && desired.get(&existing.name).is_none_or(|d| d.mesh != existing.mesh) {
                match self.store.delete(&existing.key(), Precondition::None).await {
                    Ok(()) | Err(StoreError::NotFound(_)) => {
                        info!(dataplane = %existing.name, "Pod gone: Dataplane deleted")
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for dataplane in desired.into_values() {
            let name = dataplane.name.clone();
            let outcome = self.store.apply(vec![Write { resource: dataplane, precondition: Precondition::None }]).await;
            match outcome {
                Ok(o) => debug!(dataplane = %name, outcome = ?o, "Dataplane from its Pod"),
                Err(StoreError::MeshNotFound { mesh, .. }) => {
                    warn!(dataplane = %name, mesh = %mesh, "the Pod's mesh does not exist; no Dataplane until it does")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The namespaces an event touches.
fn namespaces_of<K>(event: watcher::Event<K>, namespace: impl Fn(&K) -> Option<String>) -> Vec<String> {
    match event {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
            namespace(&o).into_iter().collect()
        }
        watcher::Event::Init | watcher::Event::InitDone => vec![],
    }
}

/// A Pod's mesh: its `kuma.io/mesh` annotation, else label, else `default`.
pub fn mesh_of(pod: &kube::api::ObjectMeta) -> String {
    [&pod.annotations, &pod.labels]
        .into_iter()
        .flatten()
        .find_map(|m| m.get(MESH_LABEL).cloned())
        .unwrap_or_else(|| DEFAULT_MESH.into())
}

fn injection_enabled(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.and_then(|l| l.get(INJECTION_LABEL)).is_some_and(|v| v == "enabled" || v == "true")
}

/// The Dataplane for a Pod, as Kuma derives it; `None` while the Pod has no
/// IP, is terminating or no Service selects it.
pub fn dataplane_for(pod: &Pod, services: &[Service]) -> Option<Resource> {
    let name = pod.metadata.name.as_deref()?;
    let ns = pod.metadata.namespace.as_deref()?;
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ip = pod.status.as_ref()?.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mesh = mesh_of(&pod.metadata);
    let inbound: Vec<serde_json::Value> =
        services.iter().filter(|s| selects(s, &labels)).flat_map(|s| inbounds(s, pod, ns, &labels)).collect();
    if inbound.is_empty() {
        return None;
    }
    Some(Resource {
        kind: Kind::Dataplane,
        mesh: mesh.clone(),
        name: format!("{name}.{ns}"),
        labels: [(MESH_LABEL.to_string(), mesh), (FROM_POD_LABEL.to_string(), "true".to_string())].into(),
        spec: json!({"networking": {"address": ip, "admin": {"port": DEFAULT_ADMIN_PORT}, "inbound": inbound}}),
        status: None,
        meta: Meta::default(),
    })
}

/// Whether a Service's (non-empty) selector matches the Pod's labels.
fn selects(service: &Service, pod_labels: &BTreeMap<String, String>) -> bool {
    let selector = service.spec.as_ref().and_then(|s| s.selector.as_ref());
    selector.is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)))
}

/// One inbound per Service port whose target the Pod has.
fn inbounds(service: &Service, pod: &Pod, ns: &str, pod_labels: &BTreeMap<String, String>) -> Vec<serde_json::Value> {
    let Some(svc_name) = service.metadata.name.as_deref() else { return vec![] };
    let ports = service.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
    ports
        .iter()
        .filter_map(|port| {
            let target = target_port(port, pod)?;
            let mut tags: BTreeMap<String, String> = pod_labels
                .iter()
                .filter(|(k, _)| k.as_str() != INJECTION_LABEL && k.as_str() != MESH_LABEL)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            tags.insert(SERVICE_TAG.into(), format!("{svc_name}_{ns}_svc_{}", port.port));
            tags.insert("k8s.kuma.io/namespace".into(), ns.into());
            tags.insert("k8s.kuma.io/service-name".into(), svc_name.into());
            tags.insert("k8s.kuma.io/service-port".into(), port.port.to_string());
            tags.insert(PROTOCOL_TAG.into(), protocol(port.app_protocol.as_deref()));
            Some(json!({"port": target, "servicePort": target, "tags": tags}))
        })
        .collect()
}

/// The Pod port a Service port sends to: a number, or a named container port.
fn target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// Kuma's protocol from a Service port's `appProtocol`; `tcp` otherwise.
fn protocol(app_protocol: Option<&str>) -> String {
    match app_protocol.map(str::to_ascii_lowercase).as_deref() {
        Some(p @ ("http" | "http2" | "grpc" | "tcp" | "kafka")) => p.to_string(),
        Some("kubernetes.io/h2c") => "http2".into(),
        _ => "tcp".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web", "version": "v2"}},
            "spec": {"containers": [{"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip},
        }))
        .unwrap()
    }

    fn service(selector: serde_json::Value, target: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": target, "appProtocol": "http"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_selected_pod_gets_kumas_inbound_and_tags() {
        let dp = dataplane_for(&pod(Some("10.1.0.7")), &[service(json!({"app": "web"}), json!("http"))]).unwrap();
        assert_eq!((dp.name.as_str(), dp.mesh.as_str()), ("web-1.shop", "default"));
        let inbound = &dp.spec["networking"]["inbound"][0];
        assert_eq!(inbound["port"], 8080, "the named container port");
        assert_eq!(inbound["tags"]["kuma.io/service"], "web_shop_svc_80");
        assert_eq!(inbound["tags"]["kuma.io/protocol"], "http");
        assert_eq!(inbound["tags"]["k8s.kuma.io/namespace"], "shop");
        assert_eq!(inbound["tags"]["version"], "v2");
        assert_eq!(dp.spec["networking"]["address"], "10.1.0.7");
        // What the controller writes passes the Dataplane validator.
        let doc = json!({"type": "Dataplane", "name": dp.name, "mesh": dp.mesh, "networking": dp.spec["networking"]});
        tern_model::resource_from_document(&doc).unwrap();
    }

    #[test]
    fn no_dataplane_without_an_ip_or_a_selecting_service() {
        let svc = service(json!({"app": "web"}), json!(8080));
        assert!(dataplane_for(&pod(None), std::slice::from_ref(&svc)).is_none());
        assert!(dataplane_for(&pod(Some("10.1.0.7")), &[service(json!({"app": "api"}), json!(8080))]).is_none());
        assert!(dataplane_for(&pod(Some("10.1.0.7")), &[service(json!({}), json!(8080))]).is_none(), "empty selector");
        assert!(dataplane_for(&pod(Some("10.1.0.7")), &[svc]).is_some());
    }
}
