//! The sidecar injector: a mutating admission webhook for Pods created in a
//! namespace labelled `kuma.io/sidecar-injection: enabled`. It adds the
//! `tern-dp` container, which registers the Pod's Dataplane by name
//! (`POD.NAMESPACE`, made by the Pod controller once the Pod has its IP),
//! with `HOST_IP` from the Downward API (`status.hostIP`: a node-local
//! collector is `HOST_IP:4317`) and the application's own
//! `OTEL_EXPORTER_OTLP_*` variables passed on unchanged, so the sidecar
//! exports where the application was told to; it proves who it is with the
//! Pod's ServiceAccount token.

use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::DynamicObject;
use serde_json::{json, Value};

/// The injected container's name.
pub const SIDECAR: &str = "tern-dp";
/// Where Kubernetes mounts a Pod's ServiceAccount token.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// What the injected sidecar runs and where it registers.
#[derive(Debug, Clone)]
pub struct Injector {
    /// The `tern-dp` image.
    pub image: String,
    /// The control plane's data-plane server as Pods reach it
    /// (`https://tern-control-plane.kuma-system.svc:5678`).
    pub cp_address: String,
}

impl Injector {
    /// The answer to a Pod's admission: the sidecar added, or the Pod as it is.
    pub fn review(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let allowed = AdmissionResponse::from(request);
        if request.operation != Operation::Create || request.kind.kind != "Pod" {
            return allowed;
        }
        let Some(pod) = &request.object else { return allowed };
        let Some(patch) = self.patch(pod) else { return allowed };
        match serde_json::from_value::<json_patch::Patch>(patch) {
            Ok(patch) => {
                allowed.clone().with_patch(patch).unwrap_or_else(|e| allowed.deny(format!("sidecar patch: {e}")))
            }
            Err(e) => allowed.deny(format!("sidecar patch: {e}")),
        }
    }

    /// The JSON Patch that adds the sidecar; `None` when it is there already.
    pub fn patch(&self, pod: &DynamicObject) -> Option<Value> {
        let containers = pod.data.get("spec")?.get("containers")?.as_array()?;
        if containers.iter().any(|c| c["name"] == SIDECAR) {
            return None;
        }
        let mesh = crate::pods::mesh_of(&pod.metadata);
        let work = json!({"name": "tern-dp-work", "emptyDir": {}});
        let volume = match pod.data["spec"].get("volumes") {
            Some(Value::Array(_)) => json!({"op": "add", "path": "/spec/volumes/-", "value": work}),
            _ => json!({"op": "add", "path": "/spec/volumes", "value": [work]}),
        };
        Some(json!([
            {"op": "add", "path": "/spec/containers/-", "value": self.container(&mesh, containers)},
            volume,
            {"op": "add", "path": "/metadata/annotations", "value": injected_annotations(pod)},
        ]))
    }

    fn container(&self, mesh: &str, app_containers: &[Value]) -> Value {
        let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
        let mut env = vec![
            json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
            json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
            json!({"name": "HOST_IP", "valueFrom": field("status.hostIP")}),
            json!({"name": "TERN_DATAPLANE_NAME", "value": "$(POD_NAME).$(POD_NAMESPACE)"}),
            json!({"name": "TERN_MESH", "value": mesh}),
            json!({"name": "TERN_CP_ADDRESS", "value": self.cp_address}),
            // The Pod's own ServiceAccount token, which Kubernetes mounts and
            // the control plane checks with the apiserver (auth.rs).
            json!({"name": "TERN_DATAPLANE_TOKEN_FILE", "value": SERVICE_ACCOUNT_TOKEN}),
        ];
        env.extend(otel_env(app_containers));
        json!({
            "name": SIDECAR,
            "image": self.image,
            "args": ["run"],
            "env": env,
            "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true},
            "volumeMounts": [{"name": "tern-dp-work", "mountPath": "/tmp"}],
        })
    }
}

/// The application containers' `OTEL_EXPORTER_OTLP_*` entries, unchanged
/// (values and references alike); the first container's wins on a name.
fn otel_env(app_containers: &[Value]) -> Vec<Value> {
    let mut seen = std::collections::BTreeSet::new();
    app_containers
        .iter()
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("OTEL_EXPORTER_OTLP_")))
        .filter(|e| seen.insert(e["name"].as_str().unwrap_or_default().to_string()))
        .collect()
}

/// The Pod's annotations plus `kuma.io/sidecar-injected: "true"`.
fn injected_annotations(pod: &DynamicObject) -> Value {
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    annotations.insert("kuma.io/sidecar-injected".into(), "true".into());
    json!(annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "annotations": {"kuma.io/mesh": "payments"}},
            "spec": {"containers": containers},
        }))
        .unwrap()
    }

    fn injector() -> Injector {
        Injector { image: "tern/tern-dp:dev".into(), cp_address: "https://cp.kuma-system.svc:5678".into() }
    }

    #[test]
    fn the_sidecar_gets_host_ip_and_the_apps_otel_variables() {
        let app = json!([{"name": "app", "image": "x", "env": [
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4318"},
            {"name": "OTEL_EXPORTER_OTLP_HEADERS", "valueFrom": {"secretKeyRef": {"name": "otlp", "key": "headers"}}},
            {"name": "UNRELATED", "value": "no"},
        ]}]);
        let patch = injector().patch(&pod(app)).unwrap();
        let sidecar = &patch[0]["value"];
        assert_eq!(patch[0]["path"], "/spec/containers/-");
        let env = sidecar["env"].as_array().unwrap();
        let by_name = |n: &str| env.iter().find(|e| e["name"] == n).cloned().unwrap_or(Value::Null);
        assert_eq!(by_name("HOST_IP")["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP");
        assert_eq!(by_name("TERN_MESH")["value"], "payments");
        assert_eq!(by_name("OTEL_EXPORTER_OTLP_ENDPOINT")["value"], "http://collector:4318");
        assert_eq!(by_name("OTEL_EXPORTER_OTLP_HEADERS")["valueFrom"]["secretKeyRef"]["key"], "headers");
        assert_eq!(by_name("UNRELATED"), Value::Null);
        assert_eq!(patch[1]["path"], "/spec/volumes");
        assert_eq!(patch[2]["value"]["kuma.io/sidecar-injected"], "true");
        assert_eq!(patch[2]["value"]["kuma.io/mesh"], "payments", "the Pod's own annotations stay");
        serde_json::from_value::<json_patch::Patch>(patch).expect("a JSON Patch");
    }

    #[test]
    fn a_pod_with_the_sidecar_is_left_alone() {
        assert!(injector().patch(&pod(json!([{"name": "tern-dp", "image": "x"}]))).is_none());
    }
}
