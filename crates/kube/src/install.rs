//! What `ternctl install control-plane` prints: the system namespace, the
//! CRDs, the control plane's ServiceAccount and RBAC, its Deployment and the
//! Service in front of the API, the data-plane server and the webhook.
//! The webhook configuration is not printed: `tern-cp` writes it on start,
//! with the CA that signs its serving certificate (see `webhook.rs`).

use crate::crd::crds;
use serde_json::{json, Value};

/// Choices for the installed control plane.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub namespace: String,
    /// The `tern-cp` image.
    pub image: String,
    pub replicas: u32,
}

/// The Service (and ServiceAccount, Deployment) name.
pub const NAME: &str = "tern-control-plane";

/// Every manifest, in apply order.
pub fn control_plane(o: &InstallOptions) -> Vec<Value> {
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": o.namespace, "labels": {"kuma.io/system-namespace": "true"}},
    })];
    out.extend(crds().into_iter().map(|c| serde_json::to_value(c).unwrap_or_default()));
    out.extend(rbac(o));
    out.push(deployment(o));
    out.push(service(o));
    out
}

/// The manifests as one YAML stream.
pub fn to_yaml(manifests: &[Value]) -> String {
    manifests.iter().map(|m| format!("---\n{}", serde_yaml_ng::to_string(m).unwrap_or_default())).collect()
}

fn labels() -> Value {
    json!({"app.kubernetes.io/name": NAME})
}

fn rbac(o: &InstallOptions) -> Vec<Value> {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": verbs});
    let all = ["get", "list", "watch", "create", "update", "patch", "delete"];
    let kuma: Vec<String> = tern_model::Kind::ALL.iter().map(|k| crate::resources::plural(*k)).collect();
    let kuma_status: Vec<String> = kuma.iter().map(|p| format!("{p}/status")).collect();
    let kuma: Vec<&str> = kuma.iter().chain(&kuma_status).map(String::as_str).collect();
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": o.namespace}}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": NAME},
            "rules": [
                rule(&["kuma.io"], &kuma, &all),
                rule(&[""], &["pods", "services", "namespaces"], &["get", "list", "watch"]),
                rule(&["admissionregistration.k8s.io"], &["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
                     &["get", "list", "watch", "create", "update", "patch"]),
                rule(&["apiextensions.k8s.io"], &["customresourcedefinitions"], &["get", "list", "watch"]),
                // Data planes' ServiceAccount tokens are checked with the apiserver.
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": o.namespace}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": NAME, "namespace": o.namespace},
            "rules": [
                rule(&[""], &["secrets", "configmaps"], &all),
                rule(&["coordination.k8s.io"], &["leases"], &all),
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": NAME, "namespace": o.namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": o.namespace}],
        }),
    ]
}

/// The ports the control plane serves in the cluster (Kuma's numbers).
const PORTS: &[(&str, u16)] = &[("https-api", 5682), ("dp-server", 5678), ("webhook", 5443)];

fn deployment(o: &InstallOptions) -> Value {
    let service_dns = format!("{NAME}.{}.svc", o.namespace);
    let args = [
        "run",
        "--environment=kubernetes",
        "--api-tls-addr=0.0.0.0:5682",
        "--dp-addr=0.0.0.0:5678",
        "--webhook-addr=0.0.0.0:5443",
        "--data-dir=/var/lib/tern",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--system-namespace={}", o.namespace), format!("--tls-san={service_dns}")])
    .collect::<Vec<_>>();
    let ports: Vec<Value> =
        PORTS.iter().map(|(name, port)| json!({"name": name, "containerPort": port, "protocol": "TCP"})).collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": o.namespace, "labels": labels()},
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": labels()},
            "template": {
                "metadata": {"labels": labels()},
                "spec": {
                    "serviceAccountName": NAME,
                    "containers": [{
                        "name": "control-plane",
                        "image": o.image,
                        "args": args,
                        "ports": ports,
                        "readinessProbe": {"tcpSocket": {"port": 5678}},
                        "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                                            "readOnlyRootFilesystem": true},
                        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/tern"}],
                    }],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    })
}

fn service(o: &InstallOptions) -> Value {
    let ports: Vec<Value> =
        PORTS.iter().map(|(name, port)| json!({"name": name, "port": port, "targetPort": port})).collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": o.namespace, "labels": labels()},
        "spec": {"selector": labels(), "ports": ports},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployment_runs_tern_cp_in_kubernetes_mode_behind_its_service() {
        let o = InstallOptions { namespace: "kuma-system".into(), image: "tern:dev".into(), replicas: 2 };
        let all = control_plane(&o);
        let kinds: Vec<&str> = all.iter().filter_map(|m| m["kind"].as_str()).collect();
        assert_eq!(kinds[0], "Namespace");
        assert_eq!(kinds.iter().filter(|k| **k == "CustomResourceDefinition").count(), tern_model::Kind::ALL.len());
        let deployment = all.iter().find(|m| m["kind"] == "Deployment").unwrap();
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("--environment=kubernetes") && args.contains("tern-control-plane.kuma-system.svc"));
        assert_eq!(deployment["spec"]["replicas"], 2);
        assert!(to_yaml(&all).starts_with("---\napiVersion: v1\nkind: Namespace"));
    }
}
