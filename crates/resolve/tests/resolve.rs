//! Resolution tables: policy order, backendRef lookup, plans, statuses and
//! conditions, on resources read from YAML as the store holds them.

use chrono::{TimeZone, Utc};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tern_model::{parse_documents, resource_from_document, Kind, Resource};
use tern_otlp_config::Inventory;
use tern_resolve::{resolve_mesh, DataplaneInput, MeshInput, MeshResolution, Session, OTEL_PIPE_FEATURE};

/// Resources from YAML; the n-th document is created n minutes after the epoch of the test.
fn resources(yaml: &str) -> Vec<Resource> {
    parse_documents(yaml)
        .expect("yaml")
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut r = resource_from_document(&d.value).unwrap_or_else(|e| panic!("{e}")).resource;
            r.meta.creation_time = Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, i as u32, 0).single().expect("time"));
            r
        })
        .collect()
}

fn session(env: &[(&str, &str)], features: &[&str]) -> Session {
    let vars: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let (_, _, inventory) = Inventory::discover(&vars);
    Session {
        version: "test".into(),
        features: features.iter().map(|f| f.to_string()).collect(),
        work_dir: "/run/tern/web-1".into(),
        otel_env: inventory,
        connect_time: None,
    }
}

fn pipe() -> Session {
    session(&[], &[OTEL_PIPE_FEATURE])
}

const DATAPLANES: &str = "
type: Dataplane
name: web-1
mesh: default
labels: {app: web}
networking:
  address: 10.0.0.1
  inbound:
    - port: 8080
      tags: {kuma.io/service: web, kuma.io/zone: us-east}
---
type: Dataplane
name: api-1
mesh: default
networking:
  address: 10.0.0.2
  inbound:
    - port: 8080
      tags: {kuma.io/service: api, kuma.io/zone: eu-west}
";

fn run(all: &[Resource], sessions: &[(&str, Session)]) -> MeshResolution {
    let of = |k: Kind| all.iter().filter(|r| r.kind == k).cloned().collect::<Vec<_>>();
    let backends = of(Kind::MeshOpenTelemetryBackend);
    let policies: Vec<Resource> = all.iter().filter(|r| r.kind.is_policy()).cloned().collect();
    let dps = of(Kind::Dataplane);
    let inputs: Vec<DataplaneInput> = dps
        .iter()
        .map(|d| DataplaneInput { resource: d, session: sessions.iter().find(|(n, _)| *n == d.name).map(|(_, s)| s) })
        .collect();
    resolve_mesh(&MeshInput { backends: &backends, policies: &policies, dataplanes: &inputs })
}

fn backend(name: &str, address: &str) -> String {
    format!(
        "type: MeshOpenTelemetryBackend\nname: {name}\nmesh: default\nspec:\n  endpoint: {{address: {address}}}\n---\n"
    )
}

fn trace(name: &str, target: &str, backend: &str, sampling: Option<u32>) -> String {
    let sampling = sampling.map(|s| format!("\n    sampling: {{overall: {s}}}")).unwrap_or_default();
    format!(
        "type: MeshTrace\nname: {name}\nmesh: default\nspec:\n  targetRef: {target}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: {backend}}}{sampling}\n---\n"
    )
}

fn traces_backend(r: &MeshResolution, dp: &str) -> Vec<String> {
    r.dataplanes[dp].plan.backends.iter().filter(|b| b.traces.is_some()).map(|b| b.name.clone()).collect()
}

#[test]
fn overlapping_policies_fold_in_kuma_order() {
    // (policies, which backend web-1's traces go to, why)
    let cases: &[(&str, &str, &str)] = &[
        ("a:Mesh:b1 b:Mesh:b2", "b1", "same rank: the lexicographically smallest name is applied last and wins"),
        ("z:Mesh:b1 y:Mesh:b2", "b2", "same rank: y < z, so y wins"),
        ("a:Mesh:b1 z:Dataplane:b2", "b2", "Dataplane outranks Mesh whatever the names"),
        ("a:Dataplane:b1 z:MeshSubset:b2", "b2", "MeshSubset outranks Dataplane (Kuma 2.14 ranks)"),
        ("a:MeshSubset:b1 b:MeshSubset:b2", "b1", "same rank again: name decides"),
        ("a:Mesh:b1 b:OtherSubset:b2", "b1", "a MeshSubset for other tags does not select web-1"),
        ("a:Mesh:b1 b:OtherDataplane:b2", "b1", "a Dataplane targetRef for another dataplane does not select web-1"),
        ("a:MeshSubset:b1 z:MeshService:b2", "b2", "MeshService (web's inbound) outranks MeshSubset"),
        ("a:MeshService:b1 z:MeshServiceSubset:b2", "b2", "MeshServiceSubset outranks MeshService"),
        ("a:Mesh:b1 b:OtherService:b2", "b1", "a MeshService for api does not select web-1"),
        ("a:Mesh:b1 b:WildSubset:b2", "b2", "a MeshServiceSubset tag `*` takes any value"),
        ("a:Mesh:b1 b:OtherServiceSubset:b2", "b1", "a MeshServiceSubset whose tags web's inbound lacks"),
        ("a:Mesh:b1 b:ServiceByLabels:b2", "b1", "a MeshService by labels selects nothing, as in Kuma 2.14"),
    ];
    for (spec, expected, why) in cases {
        let mut yaml =
            String::from(DATAPLANES) + "---\n" + &backend("b1", "one.example") + &backend("b2", "two.example");
        for p in spec.split_whitespace() {
            let parts: Vec<&str> = p.split(':').collect();
            let target = match parts[1] {
                "Mesh" => "{kind: Mesh}",
                "Dataplane" => "{kind: Dataplane, name: web-1}",
                "OtherDataplane" => "{kind: Dataplane, name: api-1}",
                "MeshSubset" => "{kind: MeshSubset, tags: {kuma.io/zone: us-east}}",
                "MeshService" => "{kind: MeshService, name: web}",
                "OtherService" => "{kind: MeshService, name: api}",
                "ServiceByLabels" => "{kind: MeshService, labels: {app: web}}",
                "MeshServiceSubset" => "{kind: MeshServiceSubset, name: web, tags: {kuma.io/zone: us-east}}",
                "WildSubset" => "{kind: MeshServiceSubset, name: web, tags: {kuma.io/zone: '*'}}",
                "OtherServiceSubset" => "{kind: MeshServiceSubset, name: web, tags: {kuma.io/zone: eu-west}}",
                _ => "{kind: MeshSubset, tags: {kuma.io/zone: eu-west}}",
            };
            yaml += &trace(parts[0], target, parts[2], None);
        }
        let r = run(&resources(&yaml), &[("web-1", pipe())]);
        assert_eq!(traces_backend(&r, "web-1"), [expected.to_string()], "{spec}: {why}");
    }
}

#[test]
fn lists_are_replaced_and_objects_merged() {
    // The more specific policy replaces the backend list and keeps the mesh-wide sampling.
    let yaml = String::from(DATAPLANES)
        + "---\n"
        + &backend("b1", "one.example")
        + &backend("b2", "two.example")
        + &trace("mesh-wide", "{kind: Mesh}", "b1", Some(10))
        + "type: MeshTrace\nname: just-web\nmesh: default\nspec:\n  targetRef: {kind: Dataplane, labels: {app: web}}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: b2}\n";
    let r = run(&resources(&yaml), &[("web-1", pipe()), ("api-1", pipe())]);
    assert_eq!(traces_backend(&r, "web-1"), ["b2"]);
    assert_eq!(traces_backend(&r, "api-1"), ["b1"]);
    for dp in ["web-1", "api-1"] {
        let trace = r.dataplanes[dp].envoy_telemetry().trace;
        let overall = trace.sampling.and_then(|s| s.overall).and_then(|p| p.value());
        assert_eq!(overall, Some(10.0), "{dp} keeps the mesh-wide sampling, typed");
    }
}

#[test]
fn seed_single_collector_gives_one_socket_for_three_signals() {
    let seed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/universal/single-collector.yaml"))
            .expect("example");
    let r = run(&resources(&(String::from(DATAPLANES) + "---\n" + &seed)), &[("web-1", pipe())]);
    let plan = &r.dataplanes["web-1"].plan;
    assert_eq!(plan.backends.len(), 1, "all signals of one backend share one socket");
    let b = &plan.backends[0];
    assert_eq!(b.name, "main-collector");
    assert_eq!(b.socket_path, "/run/tern/web-1/otel-main-collector.sock");
    assert_eq!(b.settings.address.as_deref(), Some("otel-collector.observability"));
    assert_eq!(b.metrics.as_ref().and_then(|m| m.refresh_interval.as_deref()), Some("30s"));
    let status = serde_json::to_value(&r.dataplanes["web-1"].status).expect("json");
    assert_eq!(
        status["backends"][0]["traces"],
        json!({"enabled": true, "state": "ready", "envAllowed": true, "envInputPresent": false})
    );
    assert_eq!(status["backends"][0]["logs"]["state"], "ready");
    assert_eq!(r.backend_conditions["main-collector"].reason, "Referenced");
    assert_eq!(r.backend_conditions["main-collector"].message, "Referenced by 3 policy backend(s)");
    assert_eq!(
        r.policy_conditions[&(Kind::MeshTrace, "all-traces".into())].message,
        "All MeshOpenTelemetryBackend references are resolved"
    );
    assert!(!r.dataplanes.contains_key("api-1"), "a dataplane that never registered gets no plan");
}

#[test]
fn labels_pick_the_oldest_match_then_name() {
    let yaml = String::from(DATAPLANES)
        + "---\n"
        + "type: MeshOpenTelemetryBackend\nname: newer\nmesh: default\nlabels: {team: obs}\n---\n"
        + "type: MeshOpenTelemetryBackend\nname: older\nmesh: default\nlabels: {team: obs}\n---\n"
        + "type: MeshTrace\nname: t\nmesh: default\nspec:\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, labels: {team: obs}}\n";
    let mut all = resources(&yaml);
    // "older" is made the oldest by creation time, whatever its position.
    let t0 = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single();
    all.iter_mut().find(|r| r.name == "older").expect("present").meta.creation_time = t0;
    let r = run(&all, &[("web-1", pipe())]);
    assert_eq!(traces_backend(&r, "web-1"), ["older"]);
    // Same creation time: the name decides, deterministically.
    all.iter_mut().find(|r| r.name == "newer").expect("present").meta.creation_time = t0;
    let r = run(&all, &[("web-1", pipe())]);
    assert_eq!(traces_backend(&r, "web-1"), ["newer"]);
    assert_eq!(r.backend_conditions["older"].reason, "NotReferenced");
}

#[test]
fn unresolved_references_are_reported() {
    let yaml = String::from(DATAPLANES) + "---\n" + &trace("t", "{kind: Mesh}", "gone", None)
        + "type: MeshMetric\nname: m\nmesh: default\nspec:\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, labels: {kuma.io/display-name: missing}}\n";
    let r = run(&resources(&yaml), &[("web-1", pipe())]);
    assert!(r.dataplanes["web-1"].plan.backends.is_empty(), "the signal is skipped");
    let c = &r.policy_conditions[&(Kind::MeshTrace, "t".into())];
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "UnresolvedBackendRefs"));
    assert_eq!(c.message, "Unresolved MeshOpenTelemetryBackend references: name:gone");
    let m = &r.policy_conditions[&(Kind::MeshMetric, "m".into())];
    assert_eq!(m.message, "Unresolved MeshOpenTelemetryBackend references: labels:kuma.io/display-name=missing");
    let keys: Vec<(String, String)> = r.unresolved.iter().map(|u| (u.key(), u.labels_text())).collect();
    assert_eq!(
        keys,
        [
            ("name:gone".to_string(), "null".to_string()),
            ("labels:kuma.io/display-name=missing".into(), "kuma.io/display-name=missing".into())
        ]
    );
}

#[test]
fn without_the_pipe_feature_backend_refs_are_skipped_and_said() {
    let seed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/universal/single-collector.yaml"))
            .expect("example");
    let r = run(&resources(&(String::from(DATAPLANES) + "---\n" + &seed)), &[("web-1", session(&[], &[]))]);
    let out = &r.dataplanes["web-1"];
    assert!(out.plan.backends.is_empty() && out.status.backends.is_empty());
    assert!(out.notes[0].contains("does not advertise feature-otel-via-kuma-dp"), "{:?}", out.notes);
}

#[test]
fn two_backends_for_traces_with_env_are_ambiguous() {
    let yaml = String::from(DATAPLANES)
        + "---\n"
        + &backend("backend-a", "a.example")
        + &backend("backend-b", "b.example")
        + "type: MeshAccessLog\nname: logs\nmesh: default\nspec:\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: backend-a}\n  to:\n    - targetRef: {kind: Mesh}\n      default:\n        backends:\n          - type: OpenTelemetry\n            openTelemetry:\n              backendRef: {kind: MeshOpenTelemetryBackend, name: backend-b}\n";
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")];
    let r = run(&resources(&yaml), &[("web-1", session(&env, &[OTEL_PIPE_FEATURE]))]);
    let status: Value = serde_json::to_value(&r.dataplanes["web-1"].status).expect("json");
    for b in status["backends"].as_array().expect("backends") {
        assert_eq!(b["logs"]["state"], "ambiguous", "{b}");
        assert_eq!(b["logs"]["blockedReasons"], json!(["MultipleBackendsForSignal"]));
        assert_eq!(b["traces"], json!({"enabled": false}), "no policy asks for traces");
    }
}

#[test]
fn inline_endpoints_stay_on_the_direct_path() {
    let yaml = String::from(DATAPLANES)
        + "---\ntype: MeshTrace\nname: legacy\nmesh: default\nspec:\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          endpoint: otel-collector:4317\n";
    let r = run(&resources(&yaml), &[("web-1", pipe())]);
    let out = &r.dataplanes["web-1"];
    assert!(out.plan.backends.is_empty());
    assert_eq!(out.direct.len(), 1);
    assert_eq!(out.direct[0].endpoint, "otel-collector:4317");
}

#[test]
fn incremental_recompute_matches_a_full_one() {
    use std::collections::BTreeSet;
    use tern_resolve::{resolve_mesh_incremental, Changed};
    let mut yaml = String::from(DATAPLANES) + "---\n" + &backend("b1", "one.example") + &backend("b2", "two.example");
    yaml += "type: MeshOpenTelemetryBackend\nname: b3\nmesh: default\nlabels: {team: obs}\n---\n";
    yaml += &trace("by-name", "{kind: Dataplane, name: web-1}", "b1", None);
    yaml += "type: MeshMetric\nname: by-label\nmesh: default\nspec:\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, labels: {team: obs}}\n---\n";
    yaml += "type: MeshAccessLog\nname: logs\nmesh: default\nspec:\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: b2}\n";
    let mut all = resources(&yaml);
    let sessions = [
        ("web-1", pipe()),
        ("api-1", session(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")], &[OTEL_PIPE_FEATURE])),
    ];
    let before = run(&all, &sessions);

    // Edit b1: only web-1 uses it; api-1's outcome is shared, not recomputed.
    let i = all.iter().position(|r| r.name == "b1").expect("b1");
    all[i] = resources(&backend("b1", "moved.example").replace("---\n", ""))[0].clone();
    let full = run(&all, &sessions);
    let inputs_of = |all: &[Resource]| -> (Vec<Resource>, Vec<Resource>, Vec<Resource>) {
        (
            all.iter().filter(|r| r.kind == Kind::MeshOpenTelemetryBackend).cloned().collect(),
            all.iter().filter(|r| r.kind.is_policy()).cloned().collect(),
            all.iter().filter(|r| r.kind == Kind::Dataplane).cloned().collect(),
        )
    };
    let (backends, policies, dps) = inputs_of(&all);
    let dp_inputs: Vec<DataplaneInput> = dps
        .iter()
        .map(|d| DataplaneInput { resource: d, session: sessions.iter().find(|(n, _)| *n == d.name).map(|(_, s)| s) })
        .collect();
    let input = MeshInput { backends: &backends, policies: &policies, dataplanes: &dp_inputs };
    let changed: BTreeSet<String> = ["b1".to_string()].into();
    let incremental = resolve_mesh_incremental(&input, &before, Changed::Backends(&changed));
    assert_eq!(incremental, full);
    assert_ne!(incremental.dataplanes["web-1"], before.dataplanes["web-1"]);
    // api-1 uses a label selector, which could match any backend: recomputed too, same content.
    assert_eq!(incremental.dataplanes["api-1"], before.dataplanes["api-1"]);

    // A dataplane change touches only that dataplane.
    let names: BTreeSet<String> = ["web-1".to_string()].into();
    let again = resolve_mesh_incremental(&input, &full, Changed::Dataplanes(&names));
    assert_eq!(again, full);
    assert!(
        std::sync::Arc::ptr_eq(&again.dataplanes["api-1"], &full.dataplanes["api-1"]),
        "untouched outcomes are shared"
    );
}

/// MeshAccessLog `rules[]`/`from[]` go on the inbounds the policy's
/// targetRef picks, as Kuma narrows an inbound policy: a `Dataplane`
/// `sectionName` (an inbound's name, or its port), a service target, or all.
#[test]
fn inbound_access_logs_go_on_the_inbounds_the_target_picks() {
    use tern_resolve::{Inbounds, Listener, LocalLog, LogScope};
    let dataplane = "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 8080\n      tags: {kuma.io/service: web}\n    - port: 9090\n      name: admin\n      tags: {kuma.io/service: web-admin}\n---\n";
    let log = |name: &str, target: &str, path: &str| {
        format!("type: MeshAccessLog\nname: {name}\nmesh: default\nspec:\n  targetRef: {target}\n  rules:\n    - default:\n        backends:\n          - type: File\n            file: {{path: {path}}}\n---\n")
    };
    let yaml = String::from(dataplane)
        + &log("everywhere", "{kind: Mesh}", "/all")
        + &log("by-name", "{kind: Dataplane, name: web-1, sectionName: admin}", "/admin")
        + &log("by-port", "{kind: Dataplane, name: web-1, sectionName: '8080'}", "/port")
        + &log("by-service", "{kind: MeshService, name: web-admin}", "/service");
    let r = run(&resources(&yaml), &[("web-1", pipe())]);
    let logs = r.dataplanes["web-1"].envoy_telemetry().access_logs;
    let on = |port: i64| -> Vec<String> {
        let mut paths: Vec<String> = logs
            .iter()
            .filter(|(scope, _)| scope.applies_to(Listener::Inbound { port }, &Default::default()))
            .filter_map(|(_, l)| match l {
                tern_resolve::AccessLog::Local(LocalLog::File(f)) => Some(f.path.clone()),
                _ => None,
            })
            .collect();
        paths.sort();
        paths
    };
    assert_eq!(on(8080), ["/all", "/port"]);
    assert_eq!(on(9090), ["/admin", "/all", "/service"]);
    let admin_only = LogScope::Inbound(Inbounds::Ports([9090].into()));
    assert!(logs.iter().any(|(scope, _)| *scope == admin_only), "{logs:?}");
}
