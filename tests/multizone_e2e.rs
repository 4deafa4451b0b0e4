//! Multi-zone with real binaries: one global `tern-cp` and two zone
//! `tern-cp`s on loopback, syncing over TLS with zone tokens; data planes
//! behind real Envoy in each zone, each zone with its own collector.

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::Collector;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::kube::KubeCluster;
use support::{eventually, free_port, ControlPlane, DataPlane};
use tern_kds::hashed_name;

const WAIT: Duration = Duration::from_secs(30);

fn global(dir: &Path, kds_port: u16) -> ControlPlane {
    let kds = format!("127.0.0.1:{kds_port}");
    ControlPlane::start_args(
        dir,
        None,
        "127.0.0.1",
        &["--mode", "global", "--kds-addr", &kds, "--zone-health-timeout", "3s"],
    )
}

/// A zone control plane admitted by a token the global issued.
fn zone(global: &ControlPlane, dir: &Path, name: &str, kds_port: u16) -> ControlPlane {
    zone_with_token(global, dir, name, kds_port, &zone_token(global, dir, name))
}

fn zone_with_token(global: &ControlPlane, dir: &Path, name: &str, kds_port: u16, token: &Path) -> ControlPlane {
    let args = zone_args(global, name, kds_port, token);
    ControlPlane::start_args(dir, None, "127.0.0.1", &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn zone_args(global: &ControlPlane, name: &str, kds_port: u16, token: &Path) -> Vec<String> {
    let address = format!("https://127.0.0.1:{kds_port}");
    let (ca, token) = (global.ca.display().to_string(), token.display().to_string());
    let args = ["--mode", "zone", "--zone", name, "--global-address", &address, "--global-ca-file", &ca];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--zone-token-file".to_string(), token]);
    args
}

/// A zone token file the global issued, in `dir`.
fn zone_token(global: &ControlPlane, dir: &Path, name: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let token = global.ternctl(&["generate", "zone-token", "--zone", name, "--valid-for", "1h"]).ok().stdout;
    let token_file = dir.join("zone-token");
    std::fs::write(&token_file, token.trim()).unwrap();
    token_file
}

fn json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cp.ternctl(&all).ok().stdout).expect("ternctl JSON")
}

/// Names of a kind on a control plane, across meshes.
fn names(cp: &ControlPlane, kind: &str) -> Vec<String> {
    let list = json(cp, &["get", kind, "-A"]);
    let mut out: Vec<String> =
        list["items"].as_array().into_iter().flatten().filter_map(|i| i["name"].as_str().map(str::to_string)).collect();
    out.sort();
    out
}

fn zone_row(global: &ControlPlane, zone: &str) -> String {
    let text = global.ternctl(&["inspect", "zones"]).ok().stdout;
    text.lines().find(|l| l.starts_with(&format!("{zone} "))).unwrap_or("").to_string()
}

#[test]
fn write_rules_tokens_and_zone_health() {
    let dir = tempfile::tempdir().unwrap();
    let kds = free_port();
    let g = global(&dir.path().join("global"), kds);
    let mut z = zone(&g, &dir.path().join("us-east"), "us-east", kds);
    eventually(WAIT, "the zone online on the global", || {
        let row = zone_row(&g, "us-east");
        (row.contains("Online") && row.contains("sqlite")).then_some(()).ok_or(row)
    });
    eventually(WAIT, "the default mesh synced to the zone", || {
        (names(&z, "meshes") == ["default"]).then_some(()).ok_or(format!("{:?}", names(&z, "meshes")))
    });

    // Global -> zone: hashed name, origin label, read-only on the zone.
    let backend = "type: MeshOpenTelemetryBackend\nname: main\nmesh: default\nspec:\n  endpoint: {address: otel.internal, port: 4317}\n";
    g.ternctl_stdin(&["apply", "-f", "-"], backend).ok();
    let synced = hashed_name("default", "main", &[]);
    eventually(WAIT, "the backend on the zone", || {
        (names(&z, "motb") == [synced.clone()]).then_some(()).ok_or(format!("{:?}", names(&z, "motb")))
    });
    let on_zone = json(&z, &["get", "motb", &synced]);
    assert_eq!(on_zone["labels"]["kuma.io/origin"], "global");
    assert_eq!(on_zone["labels"]["kuma.io/display-name"], "main");
    let refused = z.ternctl(&["delete", "motb", &synced]).fails();
    assert!(
        refused.stderr.contains("synced from the global control plane")
            && refused.stderr.contains("edit it on the global"),
        "{}",
        refused.stderr
    );
    let mesh = "type: Mesh\nname: other\n";
    let refused = z.ternctl_stdin(&["apply", "-f", "-"], mesh).fails();
    assert!(refused.stderr.contains("meshes are created on the global control plane"), "{}", refused.stderr);

    // Zone -> global: zone labels, read-only on the global.
    let trace = "type: MeshTrace\nname: zone-traces\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef:\n            kind: MeshOpenTelemetryBackend\n            labels: {kuma.io/display-name: main}\n";
    z.ternctl_stdin(&["apply", "-f", "-"], trace).ok();
    let on_global = hashed_name("default", "zone-traces", &["us-east"]);
    eventually(WAIT, "the zone's policy on the global", || {
        (names(&g, "meshtraces") == [on_global.clone()]).then_some(()).ok_or(format!("{:?}", names(&g, "meshtraces")))
    });
    let policy = json(&g, &["get", "meshtrace", &on_global]);
    assert_eq!(
        (policy["labels"]["kuma.io/origin"].as_str(), policy["labels"]["kuma.io/zone"].as_str()),
        (Some("zone"), Some("us-east"))
    );
    let refused = g.ternctl(&["delete", "meshtrace", &on_global]).fails();
    assert!(
        refused.stderr.contains("synced from zone \"us-east\"") && refused.stderr.contains("edit it on that zone"),
        "{}",
        refused.stderr
    );
    // What the global cannot apply is NACKed: logged on both sides, counted on the global.
    let clash = hashed_name("default", "clash", &["us-east"]);
    g.ternctl_stdin(&["apply", "-f", "-"], &trace.replace("name: zone-traces", &format!("name: {clash}"))).ok();
    z.ternctl_stdin(&["apply", "-f", "-"], &trace.replace("name: zone-traces", "name: clash")).ok();
    let insight = eventually(WAIT, "the NACK in the zone insight", || {
        let v = json(&g, &["inspect", "zones"]);
        let last_error = v["items"][0]["insight"]["subscriptions"]
            .as_array()
            .and_then(|s| s.last())
            .map(|s| s["status"]["lastError"].clone());
        let text = last_error.and_then(|e| e.as_str().map(str::to_string)).unwrap_or_default();
        text.contains("exists here and was not synced from zone \"us-east\"")
            .then_some(v.to_string())
            .ok_or(v.to_string())
    });
    assert!(
        zone_row(&g, "us-east").split_whitespace().nth(5).is_some_and(|e| e != "0"),
        "TOTAL ERRORS counts it: {insight}"
    );
    assert!(z.log_text().contains("the peer rejected a sync response (NACK)"));
    assert!(g.log_text().contains("sync response rejected (NACK)"));
    z.ternctl(&["delete", "meshtrace", "clash"]).ok();
    let dp = "type: Dataplane\nname: web\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 8080\n      tags: {kuma.io/service: web}\n";
    let refused = g.ternctl_stdin(&["apply", "-f", "-"], dp).fails();
    assert!(refused.stderr.contains("data planes connect to a zone control plane"), "{}", refused.stderr);

    // A token for another zone, and garbage, are refused on both sides.
    let other = g.ternctl(&["generate", "zone-token", "--zone", "eu-west"]).ok().stdout;
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, other.trim()).unwrap();
    let impostor = zone_with_token(&g, &dir.path().join("impostor"), "ap-south", kds, &wrong);
    eventually(WAIT, "the impostor refused on both sides", || {
        let (zl, gl) = (impostor.log_text(), g.log_text());
        (zl.contains("the global control plane refused this zone: the zone token is for zone \"eu-west\"")
            && gl.contains("zone refused: its token is for another zone"))
        .then_some(())
        .ok_or(zl)
    });
    let garbage = dir.path().join("garbage-token");
    std::fs::write(&garbage, "not-a-token").unwrap();
    let forger = zone_with_token(&g, &dir.path().join("forger"), "ap-south", kds, &garbage);
    eventually(WAIT, "a garbage token refused", || {
        let zl = forger.log_text();
        zl.contains("zone token refused: not a token this global control plane issued").then_some(()).ok_or(zl)
    });
    // A data-plane token is not a zone token.
    let dp_token = g.dataplane_token("default", "web", &[]);
    let dp_as_zone = zone_with_token(&g, &dir.path().join("dp-as-zone"), "ap-south", kds, &dp_token);
    eventually(WAIT, "a data-plane token refused as a zone token", || {
        let zl = dp_as_zone.log_text();
        zl.contains("this is not a zone token").then_some(()).ok_or(zl)
    });
    assert!(!names(&g, "zones").contains(&"ap-south".to_string()), "no refused zone is registered");

    // A zone that stops checking in goes offline after the timeout, and comes back.
    let pid = z.pid().unwrap().to_string();
    std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    eventually(WAIT, "the silent zone offline", || {
        let row = zone_row(&g, "us-east");
        row.contains("Offline").then_some(()).ok_or(row)
    });
    std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    eventually(WAIT, "the zone online again", || {
        let row = zone_row(&g, "us-east");
        row.contains("Online").then_some(()).ok_or(row)
    });
    assert!(g.log_text().contains("zone sent no health check within the timeout; marked offline"));
    z.stop();
}

/// Seed 000's per-zone collectors, one backend and one MeshMetric per zone,
/// created on the global; plus a backend to delete later.
fn per_zone_collectors(us_port: u16, eu_port: u16) -> String {
    let zone = |zone: &str, port: u16| {
        format!(
            "type: MeshOpenTelemetryBackend\nname: collector-{zone}\nmesh: default\nspec:\n  endpoint:\n    address: 127.0.0.1\n    port: {port}\n---\ntype: MeshMetric\nname: metrics-{zone}\nmesh: default\nspec:\n  targetRef:\n    kind: MeshSubset\n    tags:\n      kuma.io/zone: {zone}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef:\n            kind: MeshOpenTelemetryBackend\n            name: collector-{zone}\n          refreshInterval: 1s\n"
        )
    };
    let doomed = "type: MeshOpenTelemetryBackend\nname: doomed\nmesh: default\nspec:\n  endpoint: {address: 127.0.0.1, port: 4317}\n";
    format!("{}---\n{}---\n{doomed}", zone("us-east", us_port), zone("eu-west", eu_port))
}

fn zone_trace(reference: &str) -> String {
    format!(
        "type: MeshTrace\nname: zone-traces\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    sampling: {{overall: 100}}\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef:\n            kind: MeshOpenTelemetryBackend\n{reference}"
    )
}

/// Display names of what `cp` holds with `kuma.io/origin: origin` (and, if
/// given, `kuma.io/zone: zone`), per kind: what both sides must agree on.
fn held(cp: &ControlPlane, origin: &str, zone: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for kind in ["motb", "meshtraces", "meshmetrics", "dataplanes"] {
        for item in json(cp, &["get", kind, "-A"])["items"].as_array().into_iter().flatten() {
            let labels = &item["labels"];
            if labels["kuma.io/origin"] == origin && zone.is_none_or(|z| labels["kuma.io/zone"] == z) {
                out.push(format!("{kind}/{}", labels["kuma.io/display-name"].as_str().unwrap_or("?")));
            }
        }
    }
    out.sort();
    out
}

fn get(url: &str) -> Result<(), String> {
    let status = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async { reqwest::get(url).await.map(|r| r.status()) })
    })
    .map_err(|e| e.to_string())?;
    (status == 200).then_some(()).ok_or(format!("status {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_zone_collectors_display_name_references_and_outages() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let (us_collector, eu_collector, moved_collector) =
        (Collector::start().await, Collector::start().await, Collector::start().await);
    let kds = free_port();
    let mut g = global(&dir.path().join("global"), kds);
    let us = zone(&g, &dir.path().join("us-east"), "us-east", kds);
    let mut eu = zone(&g, &dir.path().join("eu-west"), "eu-west", kds);
    g.ternctl_stdin(&["apply", "-f", "-"], &per_zone_collectors(us_collector.port, eu_collector.port)).ok();
    for z in [&us, &eu] {
        eventually(WAIT, "the backends and policies on every zone", || {
            let held = (names(z, "motb").len(), names(z, "meshmetrics").len());
            (held == (3, 2)).then_some(()).ok_or(format!("{held:?}"))
        });
    }

    // One data plane behind Envoy in each zone.
    let root = dir.path().join("dps");
    let extra = ["--envoy-binary", envoy.as_str()];
    let (web_in, web_app, web_admin) = (free_port(), free_port(), free_port());
    let _web_app = support::demo_app(web_app, "web ok", None);
    let web = DataPlane::start(
        &us,
        &root,
        "web",
        &support::sidecar_dataplane("default", "web", web_in, web_app, web_admin),
        &[],
        &extra,
    );
    let (api_in, api_app, api_admin) = (free_port(), free_port(), free_port());
    let api = DataPlane::start(
        &eu,
        &root,
        "api",
        &support::sidecar_dataplane("default", "api", api_in, api_app, api_admin),
        &[],
        &extra,
    );

    // Each zone's data planes export to their zone's collector only.
    eventually(WAIT, "metrics at both zone collectors", || {
        let counts = (us_collector.with(|r| r.metric_points), eu_collector.with(|r| r.metric_points));
        (counts.0 > 0 && counts.1 > 0).then_some(()).ok_or(format!("{counts:?}"))
    });
    let web_plan = std::fs::read_to_string(web.plan_file()).unwrap();
    assert!(web_plan.contains("collector-us-east") && !web_plan.contains("collector-eu-west"), "{web_plan}");
    let api_plan = std::fs::read_to_string(api.plan_file()).unwrap();
    assert!(api_plan.contains("collector-eu-west") && !api_plan.contains("collector-us-east"), "{api_plan}");

    // The global shows every zone's per-signal states.
    for (name, zone, backend) in [("web", "us-east", "collector-us-east"), ("api", "eu-west", "collector-eu-west")] {
        let on_global = hashed_name("default", name, &[zone]);
        eventually(WAIT, "the zone's data plane status on the global", || {
            let run = g.ternctl(&["inspect", "dataplane", &on_global]);
            let ready = run.stdout.lines().any(|l| l.contains(backend) && l.contains("metrics") && l.contains("ready"));
            ready.then_some(()).ok_or(format!("{}{}", run.stdout, run.stderr))
        });
    }

    // A zone-authored policy naming a global backend by name does not resolve...
    us.ternctl_stdin(&["apply", "-f", "-"], &zone_trace("            name: collector-us-east\n")).ok();
    eventually(WAIT, "the unresolved reference (condition and log)", || {
        let table = us.ternctl(&["get", "meshtraces"]).ok().stdout;
        let logged = us.log_text().contains("MeshOpenTelemetryBackend not found, skipping backend");
        (table.contains("unresolved") && logged).then_some(()).ok_or(table)
    });
    // ...by its display name it does, and spans flow.
    let by_label = "            labels:\n              kuma.io/display-name: collector-us-east\n";
    us.ternctl_stdin(&["apply", "-f", "-"], &zone_trace(by_label)).ok();
    let url = format!("http://127.0.0.1:{web_in}/orders");
    eventually(WAIT, "spans from web at the us-east collector", || {
        get(&url)?;
        let spans = us_collector.with(|r| r.span_records.iter().filter(|s| s.service == "web").count());
        (spans > 0).then_some(()).ok_or(format!("{spans} spans; {}", us.ternctl(&["get", "meshtraces"]).ok().stdout))
    });

    // A backend edited on the global reaches the zone's data plane.
    let moved = per_zone_collectors(us_collector.port, moved_collector.port);
    g.ternctl_stdin(&["apply", "-f", "-"], &moved).ok();
    eventually(WAIT, "eu-west's metrics at the moved collector", || {
        let plan = std::fs::read_to_string(api.plan_file()).unwrap_or_default();
        let points = moved_collector.with(|r| r.metric_points);
        (points > 0 && plan.contains(&moved_collector.port.to_string())).then_some(()).ok_or(format!("{points} points"))
    });

    // The global away for 30 s: the zones keep serving and their data planes keep exporting.
    g.stop();
    let (metrics_before, spans_before) =
        (us_collector.with(|r| r.metric_points), us_collector.with(|r| r.span_records.len()));
    std::thread::sleep(Duration::from_secs(30));
    get(&url).expect("web still serves with the global away");
    eventually(WAIT, "exports continue with the global away", || {
        get(&url)?;
        let now = (us_collector.with(|r| r.metric_points), us_collector.with(|r| r.span_records.len()));
        (now.0 > metrics_before && now.1 > spans_before).then_some(()).ok_or(format!("{now:?}"))
    });
    assert_eq!(names(&us, "motb").len(), 3, "a zone cut off from the global keeps what it has");
    assert!(us.log_text().contains("this zone keeps serving what it has"));
    g.restart();
    eventually(WAIT, "both zones online again", || {
        let rows = (zone_row(&g, "us-east"), zone_row(&g, "eu-west"));
        (rows.0.contains("Online") && rows.1.contains("Online")).then_some(()).ok_or(format!("{rows:?}"))
    });

    // A zone away: what changed on the global meanwhile arrives when it returns.
    eu.stop();
    g.ternctl(&["delete", "motb", "doomed"]).ok();
    let late = "type: MeshOpenTelemetryBackend\nname: late\nmesh: default\nspec:\n  endpoint: {address: 127.0.0.1, port: 4317}\n";
    g.ternctl_stdin(&["apply", "-f", "-"], late).ok();
    eu.restart();
    eventually(WAIT, "the changes made while eu-west was away", || {
        let held = names(&eu, "motb");
        let late = hashed_name("default", "late", &[]);
        let doomed = hashed_name("default", "doomed", &[]);
        (held.contains(&late) && !held.contains(&doomed)).then_some(()).ok_or(format!("{held:?}"))
    });

    // Nothing duplicated or lost, counted on both sides.
    let from_global = held(&g, "global", None);
    for z in [&us, &eu] {
        eventually(WAIT, "the zone holds exactly the global's resources", || {
            let on_zone = held(z, "global", None);
            (on_zone == from_global).then_some(()).ok_or(format!("{on_zone:?} vs {from_global:?}"))
        });
    }
    for (z, name) in [(&us, "us-east"), (&eu, "eu-west")] {
        eventually(WAIT, "the global holds exactly the zone's resources", || {
            let (own, synced) = (held(z, "zone", Some(name)), held(&g, "zone", Some(name)));
            (own == synced && !own.is_empty()).then_some(()).ok_or(format!("{own:?} vs {synced:?}"))
        });
    }
}

/// A kube-apiserver with Tern's CRDs and the system namespace.
fn cluster_with_crds(dir: &Path) -> KubeCluster {
    let cluster = KubeCluster::start(dir);
    let crds = support::ternctl_with("http://127.0.0.1:1", &["install", "crds"], None, &[]).ok().stdout;
    cluster.kubectl(&["apply", "-f", "-"], Some(&crds)).ok();
    cluster.kubectl(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"], None).ok();
    cluster.kubectl(&["create", "namespace", "kuma-system"], None).ok();
    cluster
}

/// `tern-cp` in Kubernetes mode on `cluster`, with its webhook on loopback
/// and `mode_args` (`--mode ...`).
fn on_kubernetes(cluster: &KubeCluster, dir: &Path, mode_args: Vec<String>) -> ControlPlane {
    let webhook = format!("127.0.0.1:{}", free_port());
    let (url, kubeconfig) = (format!("https://{webhook}"), cluster.kubeconfig.display().to_string());
    let args = ["--environment", "kubernetes", "--kubeconfig", &kubeconfig, "--webhook-addr", &webhook];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--webhook-url".to_string(), url]);
    args.extend(mode_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ControlPlane::start_args(dir, None, "127.0.0.1", &args)
}

/// `kubectl get -o json` as the control plane's own user.
fn kubectl_json(cluster: &KubeCluster, args: &[&str]) -> Result<Value, String> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let run = cluster.kubectl(&all, None);
    serde_json::from_str(&run.stdout).map_err(|_| run.stderr)
}

/// A zone on Kubernetes (a real kube-apiserver) under a Universal global:
/// what the global creates lands in the cluster as objects kubectl can read
/// and not change; what users apply with kubectl, and the Dataplanes of
/// Pods, reach the global.
#[test]
fn a_zone_on_kubernetes_syncs_both_ways_and_keeps_users_off_what_the_global_owns() {
    let dir = tempfile::tempdir().unwrap();
    let kds = free_port();
    let g = global(&dir.path().join("global"), kds);
    let cluster = cluster_with_crds(&dir.path().join("kube"));
    let zone_dir = dir.path().join("east");
    let token = zone_token(&g, &zone_dir, "east");
    let mut z = on_kubernetes(&cluster, &zone_dir, zone_args(&g, "east", kds, &token));

    eventually(WAIT, "the zone online on the global, on Kubernetes", || {
        let row = zone_row(&g, "east");
        (row.contains("Online") && row.contains("kubernetes")).then_some(()).ok_or(row)
    });
    // The zone made no default mesh of its own: it is the global's.
    let mesh = eventually(WAIT, "the global's default mesh in the cluster", || {
        kubectl_json(&cluster, &["get", "mesh", "default"])
    });
    assert_eq!(mesh["metadata"]["labels"]["kuma.io/origin"], "global", "{mesh}");

    // Global -> zone: objects in the system namespace, hashed names.
    let backend = "type: MeshOpenTelemetryBackend\nname: main\nmesh: default\nspec:\n  endpoint: {address: otel.internal, port: 4317}\n";
    let trace = "type: MeshTrace\nname: traces\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: main}\n";
    g.ternctl_stdin(&["apply", "-f", "-"], &format!("{backend}---\n{trace}")).ok();
    let (synced_backend, synced_trace) = (hashed_name("default", "main", &[]), hashed_name("default", "traces", &[]));
    let on_zone = eventually(WAIT, "the global's MeshTrace in the cluster", || {
        kubectl_json(&cluster, &["get", "meshtrace", &synced_trace, "-n", "kuma-system"])
    });
    assert_eq!(on_zone["metadata"]["labels"]["kuma.io/origin"], "global");
    assert_eq!(on_zone["metadata"]["labels"]["kuma.io/display-name"], "traces");
    let reference = &on_zone["spec"]["default"]["backends"][0]["openTelemetry"]["backendRef"]["name"];
    assert_eq!(reference.as_str(), Some(synced_backend.as_str()), "the reference follows the backend's name here");
    kubectl_json(&cluster, &["get", "motb", &synced_backend, "-n", "kuma-system"]).expect("the backend in the cluster");

    // A user cannot change or delete it, nor create a mesh; the webhook says why.
    let refused = cluster.kubectl_as_user(&["delete", "meshtrace", &synced_trace, "-n", "kuma-system"], None).fails();
    assert!(refused.stderr.contains("synced from the global control plane"), "{}", refused.stderr);
    let label = ["label", "meshtrace", &synced_trace, "-n", "kuma-system", "team=ops"];
    let refused = cluster.kubectl_as_user(&label, None).fails();
    assert!(refused.stderr.contains("edit it on the global control plane"), "{}", refused.stderr);
    let refused = cluster
        .kubectl_as_user(
            &["apply", "-f", "-"],
            Some("apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: other\n"),
        )
        .fails();
    assert!(refused.stderr.contains("meshes are created on the global control plane"), "{}", refused.stderr);

    // Zone -> global: a policy a user applies with kubectl.
    let zone_trace = "apiVersion: kuma.io/v1alpha1\nkind: MeshTrace\nmetadata:\n  name: zone-traces\n  namespace: kuma-system\n  labels: {kuma.io/mesh: default}\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, labels: {kuma.io/display-name: main}}\n";
    cluster.kubectl_as_user(&["apply", "-f", "-"], Some(zone_trace)).ok();
    let on_global = hashed_name("default", "zone-traces", &["east", "kuma-system"]);
    eventually(WAIT, "the zone's policy on the global", || {
        let names = names(&g, "meshtraces");
        names.contains(&on_global).then_some(()).ok_or(format!("{names:?}"))
    });
    let policy = json(&g, &["get", "meshtrace", &on_global]);
    assert_eq!(
        (policy["labels"]["kuma.io/origin"].as_str(), policy["labels"]["kuma.io/zone"].as_str()),
        (Some("zone"), Some("east"))
    );

    // Zone -> global: the Dataplane of a Pod, tagged with its zone.
    let pod = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {kuma.io/sidecar-injection: enabled}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  selector: {app: web}\n  ports:\n    - {port: 80, targetPort: http}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: shop\n  labels: {app: web}\nspec:\n  containers:\n    - name: app\n      image: registry.invalid/web:1\n      ports: [{name: http, containerPort: 8080}]\n";
    cluster.kubectl_as_user(&["apply", "-f", "-"], Some(pod)).ok();
    let status = r#"{"status":{"podIP":"127.0.0.1","hostIP":"127.0.0.1","phase":"Running"}}"#;
    cluster
        .kubectl_as_user(
            &["patch", "pod", "web-1", "-n", "shop", "--subresource=status", "--type=merge", "-p", status],
            None,
        )
        .ok();
    let dataplane = eventually(WAIT, "the Pod's Dataplane", || {
        kubectl_json(&cluster, &["get", "dataplane", "web-1", "-n", "shop"])
    });
    assert_eq!(dataplane["metadata"]["labels"]["kuma.io/origin"], "zone", "{dataplane}");
    assert_eq!(dataplane["spec"]["networking"]["inbound"][0]["tags"]["kuma.io/zone"], "east", "{dataplane}");
    let on_global = hashed_name("default", "web-1", &["east", "shop"]);
    eventually(WAIT, "the Pod's Dataplane on the global", || {
        let names = names(&g, "dataplanes");
        names.contains(&on_global).then_some(()).ok_or(format!("{names:?}"))
    });

    // A data plane of the zone: its per-signal states reach the global.
    let api = format!(
        "type: Dataplane\nname: api.shop\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {}\n      \
         servicePort: {}\n      tags: {{kuma.io/service: api}}\n",
        free_port(),
        free_port()
    );
    let _api = DataPlane::start(&z, &dir.path().join("dps"), "api", &api, &[], &[]);
    let on_global = hashed_name("default", "api", &["east", "shop"]);
    eventually(WAIT, "the zone's data plane status on the global", || {
        let run = g.ternctl(&["inspect", "dataplane", &on_global]);
        let ready = run.stdout.lines().any(|l| l.starts_with("main ") && l.contains("traces") && l.contains("ready"));
        ready.then_some(()).ok_or(format!(
            "{}{} (on the global: {:?})",
            run.stdout,
            run.stderr,
            names(&g, "dataplanes")
        ))
    });

    // A policy deleted on the global leaves the cluster (the sync's own delete passes the webhook).
    g.ternctl(&["delete", "meshtrace", "traces"]).ok();
    eventually(WAIT, "the MeshTrace gone from the cluster", || {
        let run = cluster.kubectl(&["get", "meshtrace", &synced_trace, "-n", "kuma-system"], None);
        (run.code != 0 && run.stderr.contains("NotFound")).then_some(()).ok_or(run.stdout)
    });

    // A second replica waits; when the leader dies it takes over the sync.
    let second = on_kubernetes(&cluster, &dir.path().join("east-2"), zone_args(&g, "east", kds, &token));
    eventually(WAIT, "the second replica up", || {
        let log = second.log_text();
        log.contains("competing for leadership").then_some(()).ok_or(log)
    });
    assert!(z.log_text().contains("this replica leads"), "{}", z.log_text());
    assert!(!second.log_text().contains("this replica leads"), "only the leader syncs: {}", second.log_text());
    z.kill();
    g.ternctl_stdin(&["apply", "-f", "-"], &trace.replace("name: traces", "name: after-failover")).ok();
    let synced = hashed_name("default", "after-failover", &[]);
    eventually(Duration::from_secs(60), "the new leader syncs the global's new policy", || {
        kubectl_json(&cluster, &["get", "meshtrace", &synced, "-n", "kuma-system"]).map(|_| ())
    });
    assert!(second.log_text().contains("this replica leads"), "{}", second.log_text());
}

/// A global control plane on Kubernetes with a Universal zone: what users
/// apply with kubectl goes to the zone, the zone's policies and data planes
/// land in the cluster read-only, and the global has no sidecar injector.
#[test]
fn a_global_on_kubernetes_serves_a_universal_zone() {
    let dir = tempfile::tempdir().unwrap();
    let kds = free_port();
    let cluster = cluster_with_crds(&dir.path().join("kube"));
    let mode = ["--mode", "global", "--kds-addr", &format!("127.0.0.1:{kds}"), "--zone-health-timeout", "3s"];
    let g = on_kubernetes(&cluster, &dir.path().join("global"), mode.iter().map(|a| a.to_string()).collect());
    let z = zone(&g, &dir.path().join("west"), "west", kds);
    eventually(WAIT, "the zone online on the global", || {
        let row = zone_row(&g, "west");
        (row.contains("Online") && row.contains("sqlite")).then_some(()).ok_or(row)
    });
    eventually(WAIT, "the default mesh synced to the zone", || {
        (names(&z, "meshes") == ["default"]).then_some(()).ok_or(format!("{:?}", names(&z, "meshes")))
    });
    let hooks = cluster.kubectl(&["get", "mutatingwebhookconfigurations", "-o", "name"], None).ok().stdout;
    assert!(!hooks.contains("tern-sidecar-injector"), "a global injects no sidecars: {hooks}");

    // Global -> zone: a backend and a policy a user applies with kubectl.
    let objects = "apiVersion: kuma.io/v1alpha1\nkind: MeshOpenTelemetryBackend\nmetadata:\n  name: main\n  namespace: kuma-system\n  labels: {kuma.io/mesh: default}\nspec:\n  endpoint: {address: otel.internal, port: 4317}\n---\napiVersion: kuma.io/v1alpha1\nkind: MeshTrace\nmetadata:\n  name: traces\n  namespace: kuma-system\n  labels: {kuma.io/mesh: default}\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: main}\n";
    cluster.kubectl_as_user(&["apply", "-f", "-"], Some(objects)).ok();
    let synced_trace = hashed_name("default", "traces", &["kuma-system"]);
    eventually(WAIT, "the global's MeshTrace on the zone", || {
        let names = names(&z, "meshtraces");
        (names == [synced_trace.clone()]).then_some(()).ok_or(format!("{names:?}"))
    });
    assert_eq!(json(&z, &["get", "meshtrace", &synced_trace])["labels"]["kuma.io/origin"], "global");
    let elsewhere =
        objects.split("---\n").nth(1).expect("the MeshTrace").replace("namespace: kuma-system", "namespace: default");
    let refused = cluster.kubectl_as_user(&["apply", "-f", "-"], Some(&elsewhere)).fails();
    assert!(refused.stderr.contains("can be created only in the system namespace:kuma-system"), "{}", refused.stderr);

    // Zone -> global: its policy and its data plane, in the cluster and read-only there.
    let trace = "type: MeshTrace\nname: zone-traces\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef:\n            kind: MeshOpenTelemetryBackend\n            labels: {kuma.io/display-name: main}\n";
    z.ternctl_stdin(&["apply", "-f", "-"], trace).ok();
    let on_global = hashed_name("default", "zone-traces", &["west"]);
    let policy = eventually(WAIT, "the zone's policy in the global's cluster", || {
        kubectl_json(&cluster, &["get", "meshtrace", &on_global, "-n", "kuma-system"])
    });
    assert_eq!(policy["metadata"]["labels"]["kuma.io/zone"], "west", "{policy}");
    let refused = cluster.kubectl_as_user(&["delete", "meshtrace", &on_global, "-n", "kuma-system"], None).fails();
    assert!(refused.stderr.contains("synced from zone \"west\""), "{}", refused.stderr);
    let dataplane = "apiVersion: kuma.io/v1alpha1\nkind: Dataplane\nmetadata:\n  name: rogue\n  namespace: kuma-system\n  labels: {kuma.io/mesh: default}\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{port: 8080, tags: {kuma.io/service: rogue}}]\n";
    let refused = cluster.kubectl_as_user(&["apply", "-f", "-"], Some(dataplane)).fails();
    assert!(refused.stderr.contains("data planes connect to a zone control plane"), "{}", refused.stderr);

    let api = format!(
        "type: Dataplane\nname: api\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {}\n      \
         servicePort: {}\n      tags: {{kuma.io/service: api}}\n",
        free_port(),
        free_port()
    );
    let _api = DataPlane::start(&z, &dir.path().join("dps"), "api", &api, &[], &[]);
    let on_global = hashed_name("default", "api", &["west"]);
    eventually(WAIT, "the zone's data plane and its status in the global's cluster", || {
        let insight = kubectl_json(&cluster, &["get", "dataplaneinsight", &on_global, "-n", "kuma-system"])?;
        let backends = insight["status"]["openTelemetry"]["backends"].as_array().cloned().unwrap_or_default();
        let ready = backends.iter().any(|b| b["traces"]["state"] == "ready");
        ready.then_some(()).ok_or(insight["status"].to_string())
    });
    kubectl_json(&cluster, &["get", "dataplane", &on_global, "-n", "kuma-system"])
        .expect("the Dataplane in the cluster");
}
