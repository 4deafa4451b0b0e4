//! Kubernetes mode against a real kube-apiserver and etcd (built by
//! scripts/install-tools.sh; no kubelet, so Pods are never run): the CRDs,
//! `kubectl apply` of seed 000 with the admission webhook, status through the
//! status subresource, the REST API read-only for resources, and a real
//! `tern-dp` bootstrapping against the control plane in Kubernetes mode.

#[path = "support/collector.rs"]
mod collector;
mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::kube::KubeCluster;
use support::{eventually, free_port, repo_path, ternctl_with, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(60);

/// A MeshTrace for the whole mesh to seed 000's node-local backend.
const NODE_TRACES: &str = "---\napiVersion: kuma.io/v1alpha1\nkind: MeshTrace\nmetadata:\n  name: node-traces\n  namespace: \
                           kuma-system\n  labels: {kuma.io/mesh: default}\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    \
                           backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: \
                           MeshOpenTelemetryBackend, name: node-collector}\n";

/// A cluster with Tern's CRDs and the system namespace, and `tern-cp` on it.
struct Env {
    cluster: KubeCluster,
    cp: ControlPlane,
    _dir: tempfile::TempDir,
}

fn start() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = KubeCluster::start(&dir.path().join("kube"));
    let crds = ternctl_with("http://127.0.0.1:1", &["install", "crds"], None, &[]).ok().stdout;
    cluster.kubectl(&["apply", "-f", "-"], Some(&crds)).ok();
    cluster.kubectl(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"], None).ok();
    cluster.kubectl(&["create", "namespace", "kuma-system"], None).ok();
    let cp = start_cp(&cluster, &dir.path().join("cp"));
    Env { cluster, cp, _dir: dir }
}

fn start_cp(cluster: &KubeCluster, data_dir: &Path) -> ControlPlane {
    let webhook = format!("127.0.0.1:{}", free_port());
    let url = format!("https://{webhook}");
    let kubeconfig = cluster.kubeconfig.display().to_string();
    let args = ["--environment", "kubernetes", "--kubeconfig", &kubeconfig, "--webhook-addr", &webhook];
    let mut args = args.to_vec();
    args.extend(["--webhook-url", &url]);
    ControlPlane::start_args(data_dir, None, "127.0.0.1", &args)
}

fn kubectl_json(env: &Env, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&env.cluster.kubectl(&all, None).ok().stdout).expect("kubectl JSON")
}

fn condition(resource: &Value, type_: &str) -> Value {
    let conditions = resource["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conditions.into_iter().find(|c| c["type"] == type_).unwrap_or(Value::Null)
}

#[test]
fn seed_000_applies_with_kubectl_and_shows_its_conditions() {
    let env = start();
    let seed = std::fs::read_to_string(repo_path("examples/kubernetes/single-collector.yaml")).expect("seed");
    env.cluster.kubectl(&["apply", "-f", "-"], Some(&seed)).ok();

    eventually(WAIT, "ReferencedByPolicies on the backend", || {
        let motb = kubectl_json(&env, &["get", "motb", "main-collector", "-n", "kuma-system"]);
        let c = condition(&motb, "ReferencedByPolicies");
        (c["status"] == "True").then_some(()).ok_or(motb["status"].to_string())
    });
    eventually(WAIT, "BackendRefsResolved on the policy", || {
        let trace = kubectl_json(&env, &["get", "meshtrace", "all-traces", "-n", "kuma-system"]);
        let c = condition(&trace, "BackendRefsResolved");
        (c["status"] == "True").then_some(()).ok_or(trace["status"].to_string())
    });
    let table = env.cluster.kubectl(&["get", "motb", "-n", "kuma-system"], None).ok().stdout;
    assert!(table.contains("REFERENCED") && table.contains("main-collector"), "{table}");

    // The API serves the same resources, and refuses to write them.
    let listed = env.cp.ternctl(&["get", "meshtraces"]).ok().stdout;
    assert!(listed.contains("all-traces"), "{listed}");
    let refused = env.cp.ternctl_stdin(&["apply", "-f", "-"], &seed).fails();
    assert!(refused.stderr.contains("kubectl apply"), "{}", refused.stderr);

    // A policy edited with kubectl to reference a missing backend says so.
    let metric = seed.split("---").find(|d| d.contains("kind: MeshMetric")).expect("the seed's MeshMetric");
    let broken = metric.replace("name: main-collector", "name: gone");
    assert_ne!(broken, metric, "the seed's MeshMetric names main-collector");
    env.cluster.kubectl(&["apply", "-f", "-"], Some(&broken)).ok();
    eventually(WAIT, "the MeshMetric's unresolved reference", || {
        let metric = kubectl_json(&env, &["get", "meshmetric", "all-metrics", "-n", "kuma-system"]);
        let c = condition(&metric, "BackendRefsResolved");
        (c["status"] == "False").then_some(()).ok_or(metric["status"].to_string())
    });
}

#[test]
fn the_webhook_refuses_invalid_documents_with_kumas_messages_and_stores_nothing() {
    let env = start();
    let motb = |namespace: &str, name: &str, spec: &str| {
        format!(
            "apiVersion: kuma.io/v1alpha1\nkind: MeshOpenTelemetryBackend\nmetadata:\n  name: {name}\n  namespace: \
             {namespace}\n  labels: {{kuma.io/mesh: default}}\nspec:\n{spec}"
        )
    };
    let cases = [
        ("bad-port", motb("kuma-system", "bad-port", "  endpoint: {port: 70000}\n"), "spec.endpoint.port"),
        (
            "grpc-path",
            motb("kuma-system", "grpc-path", "  endpoint: {address: c, path: /otlp}\n  protocol: grpc\n"),
            "spec.endpoint.path",
        ),
        ("outside", motb("default", "outside", "  endpoint: {port: 4317}\n"), "only in the system namespace"),
        ("unknown", motb("kuma-system", "unknown", "  endpoint: {port: 4317, colour: blue}\n"), "colour"),
    ];
    for (name, yaml, expected) in cases {
        let run = env.cluster.kubectl(&["apply", "-f", "-"], Some(&yaml)).fails();
        assert!(run.stderr.contains(expected), "{name}: {}", run.stderr);
    }
    // Every violation of one document at once.
    let many = motb("default", "many", "  endpoint: {port: 0, path: /x}\n  protocol: grpc\n");
    let run = env.cluster.kubectl(&["apply", "-f", "-"], Some(&many)).fails();
    for expected in ["metadata.namespace", "spec.endpoint.port", "spec.endpoint.path"] {
        assert!(run.stderr.contains(expected), "{expected}: {}", run.stderr);
    }
    let stored = env.cluster.kubectl(&["get", "motb", "-A", "-o", "name"], None).ok().stdout;
    assert!(stored.trim().is_empty(), "nothing is stored: {stored}");
}

#[test]
fn the_install_manifests_pass_the_apiservers_dry_run() {
    let env = start();
    let zone = ["--mode", "zone", "--zone", "east", "--global-address", "https://global.example:5685"];
    for mode in [&["--mode", "standalone"][..], &["--mode", "global"], &zone] {
        let args = [&["install", "control-plane"][..], mode].concat();
        let manifests = ternctl_with("http://127.0.0.1:1", &args, None, &[]).ok().stdout;
        let run = env.cluster.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&manifests)).ok();
        for object in ["deployment.apps/tern-control-plane", "service/tern-control-plane", "clusterrole"] {
            assert!(run.stdout.contains(object), "{mode:?} {object}: {}", run.stdout);
        }
    }
    // Flags that do not go together are refused, naming them.
    let refused =
        ternctl_with("http://127.0.0.1:1", &["install", "control-plane", "--zone", "east"], None, &[]).fails();
    assert!(refused.stderr.contains("--zone is for --mode zone"), "{}", refused.stderr);
    let no_tls = ["install", "control-plane", "--mode", "zone", "--zone", "east", "--global-address", "http://g:5685"];
    let refused = ternctl_with("http://127.0.0.1:1", &no_tls, None, &[]).fails();
    assert!(refused.stderr.contains("must be https://"), "{}", refused.stderr);
    let broken =
        ["install", "control-plane", "--mode", "zone", "--zone", "east", "--global-address", "https://g\n:5685"];
    let refused = ternctl_with("http://127.0.0.1:1", &broken, None, &[]).fails();
    assert!(refused.stderr.contains("must be https://"), "a newline in the address: {}", refused.stderr);
}

/// The store's batches run several apiserver calls at once: a batch of 60
/// Dataplanes (`tern-bench kube-apply`, through the admission webhook) is
/// created whole, then changed whole.
#[test]
fn a_batch_of_writes_lands_whole() {
    let env = start();
    let bench = support::workspace_binary("tern-bench");
    let kubeconfig = env.cluster.kubeconfig.display().to_string();
    let args = ["kube-apply", "--kubeconfig", &kubeconfig, "--count", "60", "--concurrency", "16", "--round", "t"];
    let out = std::process::Command::new(bench).args(args).output().expect("tern-bench runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!((report["count"].as_u64(), report["concurrency"].as_u64()), (Some(60), Some(16)), "{report}");
    let list = kubectl_json(&env, &["get", "dataplanes", "-n", "kuma-system"]);
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let changed = items.iter().filter(|d| d["spec"]["networking"]["address"] == "10.0.0.2").count();
    assert_eq!((items.len(), changed), (60, 60), "every Dataplane created, then changed");
}

/// A real tern-dp against the control plane in Kubernetes mode: its
/// Dataplane and DataplaneInsight are objects in the dataplane's namespace,
/// and the insight's status is seed 001's: a node-local backend is `ready`
/// through `HOST_IP`, and `missing` its endpoint when `HOST_IP` is absent.
#[test]
fn a_data_plane_bootstraps_and_its_status_is_in_the_dataplane_insight() {
    let env = start();
    env.cluster.kubectl(&["create", "namespace", "shop"], None).ok();
    let seed = std::fs::read_to_string(repo_path("examples/kubernetes/node-local-collector.yaml")).expect("seed");
    env.cluster.kubectl(&["apply", "-f", "-"], Some(&format!("{seed}{NODE_TRACES}"))).ok();

    let root = env._dir.path().join("dps");
    let dataplane = |name: &str| {
        format!(
            "type: Dataplane\nname: {name}.shop\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - \
             port: {}\n      servicePort: {}\n      tags: {{kuma.io/service: {name}}}\n",
            free_port(),
            free_port()
        )
    };
    let k8s = [("KUBERNETES_SERVICE_HOST", "10.0.0.1")];
    let _ready = DataPlane::start(&env.cp, &root, "web", &dataplane("web"), &[k8s[0], ("HOST_IP", "127.0.0.1")], &[]);
    let _missing = DataPlane::start(&env.cp, &root, "api", &dataplane("api"), &k8s, &[]);

    let traces_of = |name: &str| -> Result<Value, String> {
        let run = env.cluster.kubectl(&["get", "dataplaneinsight", name, "-n", "shop", "-o", "json"], None);
        let insight: Value = serde_json::from_str(&run.stdout).map_err(|_| run.stderr.clone())?;
        let backends = insight["status"]["openTelemetry"]["backends"].as_array().cloned().unwrap_or_default();
        let found = backends.iter().find(|b| b["name"] == "node-collector").map(|b| b["traces"].clone());
        found.ok_or(insight["status"].to_string())
    };
    eventually(WAIT, "web's traces ready through HOST_IP", || {
        let t = traces_of("web")?;
        (t["state"] == "ready").then_some(()).ok_or(t.to_string())
    });
    eventually(WAIT, "api's traces missing their endpoint", || {
        let t = traces_of("api")?;
        let missing = t["missingFields"].as_array().is_some_and(|f| f.iter().any(|x| x == "endpoint"));
        (t["state"] == "missing" && missing).then_some(()).ok_or(t.to_string())
    });
    let dataplanes = env.cluster.kubectl(&["get", "dataplanes", "-n", "shop", "-o", "name"], None).ok().stdout;
    assert!(
        dataplanes.contains("dataplane.kuma.io/web") && dataplanes.contains("dataplane.kuma.io/api"),
        "{dataplanes}"
    );
    // ternctl inspects it by its Kubernetes name, NAME.NAMESPACE.
    let inspect = env.cp.ternctl(&["inspect", "dataplane", "web.shop"]).ok().stdout;
    assert!(inspect.contains("node-collector"), "{inspect}");
}

/// Two replicas on one apiserver: they share one CA; one holds the Lease and
/// writes status; after SIGKILL of the leader the other takes over within
/// 15 s, and a change made meanwhile gets its status.
#[test]
fn a_second_replica_takes_over_the_leadership_and_the_status() {
    let mut env = start();
    let lease_holder = |env: &Env| {
        let run = env.cluster.kubectl(&["get", "lease", "tern-cp-leader", "-n", "kuma-system", "-o", "json"], None);
        let lease: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        lease["spec"]["holderIdentity"].as_str().unwrap_or_default().to_string()
    };
    let first = eventually(WAIT, "a leader", || {
        let holder = lease_holder(&env);
        (!holder.is_empty()).then_some(holder).ok_or("no holder".to_string())
    });
    let mut second = start_cp(&env.cluster, &env._dir.path().join("cp-2"));
    let seed = std::fs::read_to_string(repo_path("examples/kubernetes/single-collector.yaml")).expect("seed");
    env.cluster.kubectl(&["apply", "-f", "-"], Some(&seed)).ok();
    eventually(WAIT, "status from the leader", || {
        let trace = kubectl_json(&env, &["get", "meshtrace", "all-traces", "-n", "kuma-system"]);
        (condition(&trace, "BackendRefsResolved")["status"] == "True").then_some(()).ok_or(trace.to_string())
    });
    assert_eq!(lease_holder(&env), first, "the first replica keeps the lease while it lives");
    assert!(env.cp.log_text().contains("became the leader"), "{}", env.cp.log_text());
    assert!(!second.log_text().contains("became the leader"), "{}", second.log_text());
    // One CA for both (kept in a Secret), so either may answer the webhooks.
    let ca = |cp: &ControlPlane| std::fs::read_to_string(&cp.ca).expect("ca.crt");
    assert_eq!(ca(&env.cp), ca(&second), "the replicas share the generated CA");
    env.cluster.kubectl(&["get", "secret", "tern-control-plane-ca", "-n", "kuma-system"], None).ok();

    env.cp.kill();
    let killed = std::time::Instant::now();
    eventually(Duration::from_secs(15), "the second replica takes the lease", || {
        let holder = lease_holder(&env);
        (holder != first && !holder.is_empty()).then_some(()).ok_or(holder)
    });
    eprintln!("leadership moved {:?} after SIGKILL", killed.elapsed());
    let metric = seed.split("---").find(|d| d.contains("kind: MeshMetric")).expect("the seed's MeshMetric");
    env.cluster.kubectl(&["apply", "-f", "-"], Some(&metric.replace("name: main-collector", "name: gone"))).ok();
    eventually(WAIT, "the new leader writes the status", || {
        let metric = kubectl_json(&env, &["get", "meshmetric", "all-metrics", "-n", "kuma-system"]);
        (condition(&metric, "BackendRefsResolved")["status"] == "False").then_some(()).ok_or(metric.to_string())
    });
    assert!(second.log_text().contains("became the leader"), "{}", second.log_text());
    second.stop();
}

/// Dataplanes from Pods: a Pod in an injection-enabled namespace is stored
/// with the injected sidecar; selected by a Service, it gets its Dataplane
/// once the test (playing the kubelet) gives it an IP; a tern-dp started as
/// that Pod's sidecar would be (by name, with HOST_IP and the Pod's bound
/// ServiceAccount token; an unbound one is refused) registers against it,
/// and its DataplaneInsight shows the status; deleting the Pod removes the
/// Dataplane and the DataplaneInsight.
#[test]
fn dataplanes_follow_pods_and_services() {
    let env = start();
    let objects = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {kuma.io/sidecar-injection: \
                   enabled}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n  namespace: \
                   shop\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  \
                   selector: {app: web}\n  ports:\n    - {port: 80, targetPort: http, appProtocol: http}\n---\napiVersion: \
                   v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: shop\n  labels: {app: web, version: v2}\nspec:\n  \
                   serviceAccountName: web\n  containers:\n    - name: app\n      image: registry.invalid/web:1\n      ports: [{name: http, \
                   containerPort: 8080}]\n      env: [{name: OTEL_EXPORTER_OTLP_ENDPOINT, value: \
                   'http://collector.observability:4318'}]\n";
    env.cluster.kubectl(&["apply", "-f", "-"], Some(objects)).ok();
    let seed = std::fs::read_to_string(repo_path("examples/kubernetes/node-local-collector.yaml")).expect("seed");
    env.cluster.kubectl(&["apply", "-f", "-"], Some(&format!("{seed}{NODE_TRACES}"))).ok();
    // Stored with the sidecar the injector added: HOST_IP from the Downward
    // API, the application's OTLP variable passed on, its Dataplane by name.
    let pod = kubectl_json(&env, &["get", "pod", "web-1", "-n", "shop"]);
    let containers = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let sidecar = containers.iter().find(|c| c["name"] == "tern-dp").unwrap_or_else(|| panic!("no sidecar: {pod}"));
    let var = |name: &str| {
        let vars = sidecar["env"].as_array().cloned().unwrap_or_default();
        vars.into_iter().find(|e| e["name"] == name).unwrap_or(Value::Null)
    };
    assert_eq!(var("HOST_IP")["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP", "{sidecar}");
    assert_eq!(var("OTEL_EXPORTER_OTLP_ENDPOINT")["value"], "http://collector.observability:4318");
    assert_eq!(var("TERN_DATAPLANE_NAME")["value"], "$(POD_NAME).$(POD_NAMESPACE)");
    assert_eq!(var("TERN_DATAPLANE_TOKEN_FILE")["value"], "/var/run/secrets/kubernetes.io/serviceaccount/token");
    assert_eq!(pod["metadata"]["annotations"]["kuma.io/sidecar-injected"], "true");
    // A Pod outside injection-enabled namespaces is left alone.
    env.cluster.kubectl(&["run", "plain", "-n", "default", "--image=registry.invalid/x:1"], None).ok();
    let plain = kubectl_json(&env, &["get", "pod", "plain", "-n", "default"]);
    assert_eq!(plain["spec"]["containers"].as_array().map(Vec::len), Some(1), "{plain}");

    let dataplane = || env.cluster.kubectl(&["get", "dataplane", "web-1", "-n", "shop", "-o", "json"], None);
    std::thread::sleep(Duration::from_secs(1));
    assert_ne!(dataplane().code, 0, "no Dataplane before the Pod has an IP");

    // The kubelet's part: the Pod runs at 127.0.0.1 on a node at 127.0.0.1.
    let status = r#"{"status":{"podIP":"127.0.0.1","hostIP":"127.0.0.1","phase":"Running"}}"#;
    env.cluster
        .kubectl(&["patch", "pod", "web-1", "-n", "shop", "--subresource=status", "--type=merge", "-p", status], None)
        .ok();
    let stored: Value = eventually(WAIT, "the Pod's Dataplane", || {
        let run = dataplane();
        serde_json::from_str(&run.stdout).map_err(|_| run.stderr)
    });
    let inbound = &stored["spec"]["networking"]["inbound"][0];
    assert_eq!(stored["spec"]["networking"]["address"], "127.0.0.1");
    assert_eq!(inbound["port"], 8080);
    assert_eq!(inbound["tags"]["kuma.io/service"], "web_shop_svc_80");
    assert_eq!(inbound["tags"]["k8s.kuma.io/namespace"], "shop");
    assert_eq!(inbound["tags"]["version"], "v2");

    // tern-dp as the Pod's sidecar: by name, in a Pod's environment, with the
    // Pod's ServiceAccount token (what the kubelet would mount).
    let root = env._dir.path().join("dps");
    std::fs::create_dir_all(&root).expect("dps dir");
    let sa_token = |bound: bool, file: &str| {
        let mut args = vec!["create", "token", "web", "-n", "shop"];
        if bound {
            args.extend(["--bound-object-kind", "Pod", "--bound-object-name", "web-1"]);
        }
        let token = env.cluster.kubectl(&args, None).ok().stdout;
        let path = root.join(file);
        std::fs::write(&path, token.trim()).expect("token file");
        path.display().to_string()
    };
    // A token not bound to the Pod is refused, and says why.
    let unbound = sa_token(false, "unbound.token");
    let args = ["--name", "web-1.shop", "--mesh", "default", "--dataplane-token-file", &unbound];
    let mut refused = DataPlane::start_stored(&env.cp, &root, "unbound", &[], &args);
    assert!(refused.wait_exit(WAIT).is_some_and(|s| !s.success()), "{}", refused.log_text());
    assert!(refused.log_text().contains("not bound to a Pod"), "{}", refused.log_text());
    let token_arg = sa_token(true, "web-1.token");
    let args = ["--name", "web-1.shop", "--mesh", "default", "--dataplane-token-file", &token_arg];
    let pod_env = [("KUBERNETES_SERVICE_HOST", "10.0.0.1"), ("HOST_IP", "127.0.0.1")];
    let _sidecar = DataPlane::start_stored(&env.cp, &root, "web-1", &pod_env, &args);
    eventually(WAIT, "the sidecar's status in its DataplaneInsight", || {
        let run = env.cluster.kubectl(&["get", "dataplaneinsight", "web-1", "-n", "shop", "-o", "json"], None);
        let insight: Value = serde_json::from_str(&run.stdout).map_err(|_| run.stderr.clone())?;
        let backends = insight["status"]["openTelemetry"]["backends"].as_array().cloned().unwrap_or_default();
        let ready = backends.iter().any(|b| b["name"] == "node-collector" && b["traces"]["state"] == "ready");
        ready.then_some(()).ok_or(insight["status"].to_string())
    });

    env.cluster.kubectl(&["delete", "pod", "web-1", "-n", "shop"], None).ok();
    eventually(WAIT, "the Dataplane and the DataplaneInsight are gone with the Pod", || {
        let dp = dataplane();
        let insight = env.cluster.kubectl(&["get", "dataplaneinsight", "web-1", "-n", "shop"], None);
        (dp.code != 0 && insight.code != 0).then_some(()).ok_or(format!("{}{}", dp.stdout, insight.stdout))
    });
}

/// One plain HTTP/1.1 GET; the status code, or why there is none.
fn http_get(port: u16, path: &str) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(answer)
}

/// Real Envoy sidecars run by tern-dp, configured over ADS by the control
/// plane in Kubernetes mode from seed 000 applied with kubectl: spans from
/// both services and access log records reach the collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_telemetry_flows_with_the_control_plane_in_kubernetes_mode() {
    let collector = collector::Collector::start().await;
    let env = tokio::task::spawn_blocking(start).await.expect("cluster");
    let seed = std::fs::read_to_string(repo_path("examples/kubernetes/single-collector.yaml"))
        .expect("seed")
        .replace("address: otel-collector.observability", "address: 127.0.0.1")
        .replace("port: 4317", &format!("port: {}", collector.port))
        .replace("overall: 80", "overall: 100");
    env.cluster.kubectl(&["apply", "-f", "-"], Some(&seed)).ok();
    env.cluster.kubectl(&["create", "namespace", "shop"], None).ok();

    let envoy = support::envoy_binary();
    let (web_in, web_admin, web_out) = (free_port(), free_port(), free_port());
    let (api_in, api_app, api_admin) = (free_port(), free_port(), free_port());
    let _api_app = demo_app(api_app);
    let dataplane = |name: &str, inbound: u16, app: u16, admin: u16, outbound: &str| {
        format!(
            "type: Dataplane\nname: {name}.shop\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  admin: {{port: \
             {admin}}}\n  inbound:\n    - port: {inbound}\n      servicePort: {app}\n      tags: {{kuma.io/service: \
             {name}, kuma.io/protocol: http}}\n{outbound}"
        )
    };
    let to_api = format!("  outbound:\n    - port: {web_out}\n      tags: {{kuma.io/service: api}}\n");
    let root = env._dir.path().join("dps");
    let extra = ["--envoy-binary", envoy.as_str()];
    let _api = DataPlane::start(&env.cp, &root, "api", &dataplane("api", api_in, api_app, api_admin, ""), &[], &extra);
    let _web = DataPlane::start(
        &env.cp,
        &root,
        "web",
        &dataplane("web", web_in, free_port(), web_admin, &to_api),
        &[],
        &extra,
    );

    // web's outbound listener -> api's inbound listener -> the api service.
    eventually(WAIT, "a request through both Envoys", || {
        let code = http_get(web_out, "/items")?;
        (code == 200).then_some(()).ok_or(format!("status {code}"))
    });
    for _ in 0..4 {
        assert_eq!(http_get(web_out, "/items"), Ok(200));
    }
    eventually(WAIT, "spans from web and api, and access log records", || {
        let (services, logs) = collector.with(|r| {
            let services: std::collections::BTreeSet<String> =
                r.span_records.iter().map(|s| s.service.clone()).collect();
            (services, r.log_bodies.len())
        });
        (services.contains("web") && services.contains("api") && logs > 0)
            .then_some(())
            .ok_or(format!("services {services:?}, {logs} log records"))
    });
    tokio::task::spawn_blocking(move || drop(env)).await.expect("cluster stops");
}

/// The quickstart's demo service (`ternctl demo-app`), stopped when dropped.
struct DemoApp(std::process::Child);

impl Drop for DemoApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn demo_app(port: u16) -> DemoApp {
    let child = std::process::Command::new(support::TERNCTL)
        .args(["demo-app", "--listen", &format!("127.0.0.1:{port}"), "--body", "api ok"])
        .spawn()
        .expect("demo app starts");
    eventually(WAIT, "the demo app listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ()).map_err(|e| e.to_string())
    });
    DemoApp(child)
}
