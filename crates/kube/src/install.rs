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
    pub mode: InstallMode,
}

/// The installed control plane's place in a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallMode {
    Standalone,
    /// Serves zones on Kuma's port 5685.
    Global,
    /// Syncs with the global at `global_address`, with the token and the
    /// global's CA from the Secret [`ZONE_SECRET`].
    Zone {
        zone: String,
        global_address: String,
    },
}

/// The Secret a zone's token (`token`) and the global's CA (`ca.crt`) are
/// read from.
pub const ZONE_SECRET: &str = "tern-zone";
const ZONE_SECRET_DIR: &str = "/var/run/secrets/tern/zone";
/// The global's port for zones (Kuma's).
const KDS_PORT: u16 = 5685;

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
                // A global removes the sidecar injector's configuration.
                rule(&["admissionregistration.k8s.io"], &["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
                     &["get", "list", "watch", "create", "update", "patch", "delete"]),
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

/// The ports of the Deployment and the Service: a global's zone port too.
fn ports(o: &InstallOptions) -> Vec<(&'static str, u16)> {
    let mut ports = PORTS.to_vec();
    if o.mode == InstallMode::Global {
        ports.push(("kds", KDS_PORT));
    }
    ports
}

/// `tern-cp`'s flags for the mode.
fn mode_args(mode: &InstallMode) -> Vec<String> {
    match mode {
        InstallMode::Standalone => vec![],
        InstallMode::Global => vec!["--mode=global".into(), format!("--kds-addr=0.0.0.0:{KDS_PORT}")],
        InstallMode::Zone { zone, global_address } => vec![
            "--mode=zone".into(),
            format!("--zone={zone}"),
            format!("--global-address={global_address}"),
            format!("--zone-token-file={ZONE_SECRET_DIR}/token"),
            format!("--global-ca-file={ZONE_SECRET_DIR}/ca.crt"),
        ],
    }
}

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
    .chain(mode_args(&o.mode))
    .collect::<Vec<_>>();
    let ports: Vec<Value> =
        ports(o).iter().map(|(name, port)| json!({"name": name, "containerPort": port, "protocol": "TCP"})).collect();
    let mut mounts = vec![json!({"name": "data", "mountPath": "/var/lib/tern"})];
    let mut volumes = vec![json!({"name": "data", "emptyDir": {}})];
    if matches!(o.mode, InstallMode::Zone { .. }) {
        mounts.push(json!({"name": "zone", "mountPath": ZONE_SECRET_DIR, "readOnly": true}));
        volumes.push(json!({"name": "zone", "secret": {"secretName": ZONE_SECRET}}));
    }
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
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

fn service(o: &InstallOptions) -> Value {
    let ports: Vec<Value> =
        ports(o).iter().map(|(name, port)| json!({"name": name, "port": port, "targetPort": port})).collect();
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
        let o = InstallOptions {
            namespace: "kuma-system".into(),
            image: "tern:dev".into(),
            replicas: 2,
            mode: InstallMode::Standalone,
        };
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

    #[test]
    fn a_zone_reads_its_token_and_the_globals_ca_from_a_secret_and_a_global_serves_zones() {
        let zone = InstallMode::Zone { zone: "east".into(), global_address: "https://global.example:5685".into() };
        let o = |mode| InstallOptions { namespace: "kuma-system".into(), image: "tern:dev".into(), replicas: 1, mode };
        let all = control_plane(&o(zone));
        let pod = &all.iter().find(|m| m["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"];
        let args = pod["containers"][0]["args"].to_string();
        for flag in ["--mode=zone", "--zone=east", "--global-address=https://global.example:5685"] {
            assert!(args.contains(flag), "{flag}: {args}");
        }
        assert!(args.contains(&format!("--zone-token-file={ZONE_SECRET_DIR}/token")), "{args}");
        assert_eq!(pod["volumes"][1]["secret"]["secretName"], ZONE_SECRET);
        assert_eq!(pod["containers"][0]["volumeMounts"][1]["mountPath"], ZONE_SECRET_DIR);

        let all = control_plane(&o(InstallMode::Global));
        let deployment = all.iter().find(|m| m["kind"] == "Deployment").unwrap();
        assert!(deployment.to_string().contains("--kds-addr=0.0.0.0:5685"));
        let service = all.iter().find(|m| m["kind"] == "Service").unwrap();
        assert!(service["spec"]["ports"].as_array().unwrap().iter().any(|p| p["port"] == 5685), "{service}");
    }
}
