//! Seeds 000 and 001's status examples through the real `tern-cp`, `ternctl`
//! and `tern-dp` (Universal mode; no Envoy needed yet): each scenario gets its
//! own mesh, its policies and backends, and a `tern-dp` with the sidecar
//! environment the seed describes.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{eventually, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(10);

fn dataplane(mesh: &str, name: &str) -> String {
    format!(
        "type: Dataplane\nname: {name}\nmesh: {mesh}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 18080\n      servicePort: 8080\n      tags:\n        kuma.io/service: {name}\n        kuma.io/protocol: http\n"
    )
}

fn backend(mesh: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    let spec = if spec.is_empty() { String::new() } else { format!("spec:\n{spec}") };
    format!("type: MeshOpenTelemetryBackend\nname: {name}\nmesh: {mesh}\n{spec}---\n")
}

fn policy(kind: &str, mesh: &str, name: &str, refs: &[&str]) -> String {
    let backends: String = refs
        .iter()
        .map(|r| {
            let r = if r.contains('=') {
                let (k, v) = r.split_once('=').expect("k=v");
                format!("labels: {{{k}: {v}}}")
            } else {
                format!("name: {r}")
            };
            format!("      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, {r}}}\n")
        })
        .collect();
    format!("type: {kind}\nname: {name}\nmesh: {mesh}\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n{backends}---\n")
}

fn mesh(name: &str) -> String {
    format!("type: Mesh\nname: {name}\n---\n")
}

fn apply(cp: &ControlPlane, yaml: &str) {
    cp.ternctl_stdin(&["apply", "-f", "-"], yaml).ok();
}

/// `ternctl inspect dataplane -o json`; an error until the dataplane exists.
fn inspect(cp: &ControlPlane, mesh: &str, dp: &str) -> Result<Value, String> {
    let run = cp.ternctl(&["inspect", "dataplane", dp, "-m", mesh, "-o", "json"]);
    if run.code != 0 {
        return Err(run.stderr);
    }
    serde_json::from_str(&run.stdout).map_err(|e| e.to_string())
}

/// Waits until the dataplane's status for `backend`/`signal` equals `expected`.
fn expect_status(cp: &ControlPlane, mesh: &str, dp: &str, backend: &str, signal: &str, expected: Value) {
    eventually(WAIT, &format!("{mesh}/{dp} {backend}/{signal}"), || {
        let v = inspect(cp, mesh, dp)?;
        let backends = v["insight"]["status"]["openTelemetry"]["backends"].as_array().cloned().unwrap_or_default();
        let got = backends.iter().find(|b| b["name"] == backend).map(|b| b[signal].clone()).unwrap_or(Value::Null);
        if got == expected {
            Ok(())
        } else {
            Err(got.to_string())
        }
    });
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    serde_json::from_str(&cp.ternctl(args).ok().stdout).expect("json")
}

fn condition(resource: &Value, type_: &str) -> Value {
    resource["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The backends a dataplane's `signal` is enabled for, as `inspect` shows them.
fn enabled_for(cp: &ControlPlane, dp: &str, signal: &str) -> Result<Vec<String>, String> {
    let v = inspect(cp, "default", dp)?;
    let backends = v["insight"]["status"]["openTelemetry"]["backends"].as_array().cloned().unwrap_or_default();
    let names = backends.iter().filter(|b| b[signal]["enabled"] == true).filter_map(|b| b["name"].as_str());
    Ok(names.map(str::to_string).collect())
}

/// Kuma 2.14's service kinds at the top level: a `MeshService` selects the
/// proxies with an inbound of that service, a `MeshServiceSubset` those whose
/// inbound also carries its tags; both outrank a `Mesh` policy.
#[test]
fn top_level_service_targets_select_the_proxies_of_that_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let root = dir.path().join("dps");
    let targeted = |kind: &str, name: &str, target: &str, backend: &str| {
        policy(kind, "default", name, &[backend]).replace("targetRef: {kind: Mesh}", &format!("targetRef: {target}"))
    };
    let yaml = backend("default", "wide", "endpoint: {address: wide.example}")
        + &backend("default", "web-only", "endpoint: {address: web.example}")
        + &backend("default", "web-http", "endpoint: {address: http.example}")
        + &policy("MeshTrace", "default", "everyone", &["wide"])
        + &targeted("MeshTrace", "web", "{kind: MeshService, name: web-1}", "web-only")
        + &policy("MeshMetric", "default", "everyone", &["wide"])
        + &targeted(
            "MeshMetric",
            "web-http",
            "{kind: MeshServiceSubset, name: web-1, tags: {kuma.io/protocol: http}}",
            "web-http",
        )
        + &targeted(
            "MeshMetric",
            "web-tcp",
            "{kind: MeshServiceSubset, name: web-1, tags: {kuma.io/protocol: tcp}}",
            "web-only",
        );
    apply(&cp, &yaml);
    let _web = DataPlane::start(&cp, &root, "web-1", &dataplane("default", "web-1"), &[], &[]);
    let _api = DataPlane::start(&cp, &root, "api-1", &dataplane("default", "api-1"), &[], &[]);
    for (dp, signal, expected) in [
        ("web-1", "traces", ["web-only"]),
        ("web-1", "metrics", ["web-http"]),
        ("api-1", "traces", ["wide"]),
        ("api-1", "metrics", ["wide"]),
    ] {
        eventually(WAIT, &format!("{dp} {signal} to {expected:?}"), || {
            let got = enabled_for(&cp, dp, signal)?;
            (got == expected).then_some(()).ok_or(format!("{got:?}"))
        });
    }
}

#[test]
fn seed_status_examples_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let root = dir.path().join("dps");
    let ready_no_env = json!({"enabled": true, "state": "ready", "envAllowed": true, "envInputPresent": false});

    // Single collector for all three signals (seed 000's first example).
    let seed = std::fs::read_to_string(support::repo_path("examples/universal/single-collector.yaml")).expect("seed");
    apply(&cp, &seed);
    let _web = DataPlane::start(&cp, &root, "web-1", &dataplane("default", "web-1"), &[], &[]);
    for signal in ["traces", "metrics", "logs"] {
        expect_status(&cp, "default", "web-1", "main-collector", signal, ready_no_env.clone());
    }
    let motb = get_json(&cp, &["get", "motb", "main-collector", "-o", "json"]);
    assert_eq!(condition(&motb, "ReferencedByPolicies")["reason"], "Referenced");
    let table = cp.ternctl(&["get", "motb"]).ok().stdout;
    assert!(table.contains("REFERENCED") && table.contains("3 policy backend(s)"), "{table}");
    let table = cp.ternctl(&["get", "meshtraces"]).ok().stdout;
    assert!(table.contains("BACKENDREFS") && table.contains("resolved"), "{table}");

    // From env, traces overridden per signal.
    apply(
        &cp,
        &(mesh("fromenv")
            + &backend("fromenv", "from-env", "")
            + &policy("MeshTrace", "fromenv", "t", &["from-env"])
            + &policy("MeshMetric", "fromenv", "m", &["from-env"])
            + &policy("MeshAccessLog", "fromenv", "l", &["from-env"])),
    );
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel-gateway.observability:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://tempo.observability:4318"),
    ];
    let from_env = DataPlane::start(&cp, &root, "env-1", &dataplane("fromenv", "env-1"), &env, &[]);
    expect_status(
        &cp,
        "fromenv",
        "env-1",
        "from-env",
        "traces",
        json!({"enabled": true, "state": "ready", "envAllowed": true, "envInputPresent": true, "overrideKinds": ["endpoint"]}),
    );
    expect_status(
        &cp,
        "fromenv",
        "env-1",
        "from-env",
        "logs",
        json!({"enabled": true, "state": "ready", "envAllowed": true, "envInputPresent": true}),
    );
    eventually(WAIT, "plan file", || from_env.plan_file().exists().then_some(()).ok_or_else(|| "absent".to_string()));
    let resolved = std::process::Command::new(support::tern_dp())
        .args(["otel", "resolve", "--plan"])
        .arg(from_env.plan_file())
        .envs(env)
        .output()
        .expect("resolve");
    let resolved: Value = serde_json::from_slice(&resolved.stdout).expect("json");
    let signals = &resolved["backends"][0]["signals"];
    assert_eq!(signals["traces"]["exporter"]["endpoint"]["value"], "https://tempo.observability:4318");
    assert_eq!(signals["logs"]["exporter"]["endpoint"]["value"], "https://otel-gateway.observability:4318/v1/logs");
    assert_eq!(
        signals["metrics"]["exporter"]["endpoint"]["value"],
        "https://otel-gateway.observability:4318/v1/metrics"
    );

    // Required without env: blocked.
    apply(
        &cp,
        &(mesh("required")
            + &backend("required", "tenant-cloud", "endpoint: {address: cloud.example}\nenv: {mode: Required}")
            + &policy("MeshTrace", "required", "t", &["tenant-cloud"])),
    );
    let _req = DataPlane::start(&cp, &root, "req-1", &dataplane("required", "req-1"), &[], &[]);
    expect_status(
        &cp,
        "required",
        "req-1",
        "tenant-cloud",
        "traces",
        json!({"enabled": true, "state": "blocked", "envAllowed": true, "envInputPresent": false, "blockedReasons": ["RequiredEnvMissing"]}),
    );
    let text = cp.ternctl(&["inspect", "dataplane", "req-1", "-m", "required"]).ok().stdout;
    assert!(text.contains("tenant-cloud/traces is blocked: the backend has mode: Required"), "{text}");

    // Two backends competing for env input. MeshTrace allows one backend per
    // proxy, so the competition is shown on metrics, whose backends are a list.
    apply(
        &cp,
        &(mesh("ambiguous")
            + &backend("ambiguous", "backend-a", "endpoint: {address: a.example}")
            + &backend("ambiguous", "backend-b", "")
            + &policy("MeshMetric", "ambiguous", "m", &["backend-a", "backend-b"])),
    );
    let _amb = DataPlane::start(
        &cp,
        &root,
        "amb-1",
        &dataplane("ambiguous", "amb-1"),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")],
        &[],
    );
    let ambiguous = json!({"enabled": true, "state": "ambiguous", "envAllowed": true, "envInputPresent": true, "blockedReasons": ["MultipleBackendsForSignal"]});
    expect_status(&cp, "ambiguous", "amb-1", "backend-a", "metrics", ambiguous.clone());
    expect_status(&cp, "ambiguous", "amb-1", "backend-b", "metrics", ambiguous);
    let text = cp.ternctl(&["inspect", "dataplane", "amb-1", "-m", "ambiguous"]).ok().stdout;
    assert!(text.contains("set mode: Disabled on every backend that should not receive environment input"), "{text}");

    // Disabled with env present: soft block, still ready.
    apply(
        &cp,
        &(mesh("disabled")
            + &backend("disabled", "regulated", "endpoint: {address: regulated.example}\nenv: {mode: Disabled}")
            + &policy("MeshAccessLog", "disabled", "l", &["regulated"])),
    );
    let _dis = DataPlane::start(
        &cp,
        &root,
        "dis-1",
        &dataplane("disabled", "dis-1"),
        &[("OTEL_EXPORTER_OTLP_HEADERS", "k=v")],
        &[],
    );
    expect_status(
        &cp,
        "disabled",
        "dis-1",
        "regulated",
        "logs",
        json!({"enabled": true, "state": "ready", "envAllowed": false, "envInputPresent": true, "blockedReasons": ["EnvDisabledByPolicy"]}),
    );

    // Per-signal overrides disallowed.
    apply(
        &cp,
        &(mesh("nooverride")
            + &backend("nooverride", "strict", "env: {allowSignalOverrides: false}")
            + &policy("MeshTrace", "nooverride", "t", &["strict"])),
    );
    let _no = DataPlane::start(
        &cp,
        &root,
        "no-1",
        &dataplane("nooverride", "no-1"),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://shared:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ],
        &[],
    );
    expect_status(
        &cp,
        "nooverride",
        "no-1",
        "strict",
        "traces",
        json!({"enabled": true, "state": "ready", "envAllowed": true, "envInputPresent": true, "overrideKinds": ["endpoint"], "blockedReasons": ["SignalOverridesDisallowed"]}),
    );

    // Labels matching two backends: the oldest wins.
    apply(&cp, &(mesh("labels") + &backend("labels", "first", "endpoint: {address: first.example}")));
    std::thread::sleep(Duration::from_millis(20));
    let labelled = "type: MeshOpenTelemetryBackend\nname: second\nmesh: labels\nlabels: {team: obs}\nspec:\n  endpoint: {address: second.example}\n---\n";
    apply(
        &cp,
        &(labelled.to_string()
            + &backend("labels", "first", "endpoint: {address: first.example}")
                .replace("name: first\n", "name: first\nlabels: {team: obs}\n")
            + &policy("MeshTrace", "labels", "t", &["team=obs"])),
    );
    let _lab = DataPlane::start(&cp, &root, "lab-1", &dataplane("labels", "lab-1"), &[], &[]);
    expect_status(&cp, "labels", "lab-1", "first", "traces", ready_no_env.clone());

    // A dataplane without the pipe feature: no status entries, and inspect says why.
    let _old = DataPlane::start(&cp, &root, "old-1", &dataplane("default", "old-1"), &[], &["--otel-pipe", "false"]);
    let text = eventually(WAIT, "old-1 note", || {
        let t = cp.ternctl(&["inspect", "dataplane", "old-1"]).stdout;
        if t.contains("does not advertise feature-otel-via-kuma-dp") {
            Ok(t)
        } else {
            Err(t)
        }
    });
    assert!(text.contains("no backend resolves for this dataplane"), "{text}");
    assert!(cp.log_text().contains("does not advertise feature-otel-via-kuma-dp"), "logged");

    // Editing the backend's address reaches the running data plane within a second.
    let plan_file = support::DataPlane::plan_file(&_web);
    eventually(WAIT, "first plan", || std::fs::read_to_string(&plan_file).map_err(|e| e.to_string()));
    let started = Instant::now();
    apply(&cp, &backend("default", "main-collector", "endpoint: {address: moved.example, port: 4317}"));
    eventually(Duration::from_secs(1), "new address in the plan within a second", || {
        let text = std::fs::read_to_string(&plan_file).unwrap_or_default();
        if text.contains("moved.example") {
            Ok(())
        } else {
            Err(text)
        }
    });
    eprintln!("backend edit reached the data plane in {:?}", started.elapsed());

    // A policy pointing at a deleted backend.
    cp.ternctl(&["delete", "motb", "main-collector"]).ok();
    let trace = eventually(WAIT, "UnresolvedBackendRefs", || {
        let t = get_json(&cp, &["get", "mtr", "all-traces", "-o", "json"]);
        if condition(&t, "BackendRefsResolved")["reason"] == "UnresolvedBackendRefs" {
            Ok(t)
        } else {
            Err(t.to_string())
        }
    });
    assert_eq!(
        condition(&trace, "BackendRefsResolved")["message"],
        "Unresolved MeshOpenTelemetryBackend references: name:main-collector"
    );
    let line = "MeshOpenTelemetryBackend not found, skipping backend name=main-collector labels=null";
    eventually(WAIT, "the otel-backend-resolution log line", || {
        let log = cp.log_text();
        if log.contains("otel-backend-resolution") && log.contains(line) {
            Ok(())
        } else {
            Err(log)
        }
    });
    // Once per change, not per recompute: more changes, same single line per policy.
    apply(&cp, &backend("default", "unrelated", ""));
    std::thread::sleep(Duration::from_millis(300));
    let count = cp.log_text().lines().filter(|l| l.contains(line) && l.contains("MeshTrace/all-traces")).count();
    assert_eq!(count, 1, "logged once per change");
    // The unrelated backend nobody points at is NotReferenced.
    let unrelated = eventually(WAIT, "NotReferenced", || {
        let b = get_json(&cp, &["get", "motb", "unrelated", "-o", "json"]);
        if condition(&b, "ReferencedByPolicies")["reason"] == "NotReferenced" {
            Ok(b)
        } else {
            Err(b.to_string())
        }
    });
    assert_eq!(condition(&unrelated, "ReferencedByPolicies")["status"], "False");
    let empty = eventually(WAIT, "plan without the deleted backend", || {
        let text = std::fs::read_to_string(&plan_file).unwrap_or_default();
        if text.contains("moved.example") {
            Err(text)
        } else {
            Ok(text)
        }
    });
    assert!(!empty.contains("main-collector"), "{empty}");
}

#[test]
fn a_bad_dataplane_is_refused_at_bootstrap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let bad = "type: Dataplane\nname: bad-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 8080\n      tags: {kuma.io/service: web}\n";
    // tern-dp validates locally first; send the invalid one straight to the server to test the control plane.
    let doc = tern_model::parse_documents(&bad.replace("port: 8080", "port: 0")).expect("yaml")[0].value.clone();
    let body = json!({"dataplane": doc, "version": "x", "workDir": "/tmp/x", "otelEnv": {}});
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let client = reqwest::Client::new();
    let token_for = |name: &str| std::fs::read_to_string(cp.dataplane_token("default", name, &[])).expect("token");
    let token = token_for("bad-1");
    let (status, err): (u16, Value) = rt.block_on(async {
        let r = client.post(format!("{}/bootstrap", cp.dp)).bearer_auth(&token).json(&body).send().await.expect("send");
        (r.status().as_u16(), r.json().await.expect("json"))
    });
    assert_eq!(status, 400);
    assert_eq!(err["invalid_parameters"][0]["field"], "networking.inbound[0].port");
    // An inventory carrying anything but key presence is refused, not stored.
    let doc = tern_model::parse_documents(bad).expect("yaml")[0].value.clone();
    for otel_env in [
        json!({"shared": {"present": ["endpoint"], "value": "https://secret.example"}}),
        json!({"endpoint": "https://secret.example"}),
        json!({"problems": [{"scope": "shared.headers", "message": "authorization=Bearer xyz"}]}),
    ] {
        let body = json!({"dataplane": doc, "version": "x", "workDir": "/tmp/x", "otelEnv": otel_env});
        let (status, err): (u16, Value) = rt.block_on(async {
            let r =
                client.post(format!("{}/bootstrap", cp.dp)).bearer_auth(&token).json(&body).send().await.expect("send");
            (r.status().as_u16(), r.json().await.expect("json"))
        });
        assert_eq!(status, 400, "{err}");
        assert!(err["invalid_parameters"][0]["field"].as_str().expect("field").starts_with("otelEnv"), "{err}");
    }
    cp.ternctl(&["get", "dataplane-insights", "bad-1"]).fails();

    // Registering by mesh and name works for a Dataplane already stored, and only then.
    cp.ternctl_stdin(&["apply", "-f", "-"], bad).ok();
    let by_name = |name: &str| {
        let body = json!({"mesh": "default", "name": name, "version": "x", "workDir": "/tmp/x", "otelEnv": {}});
        let token = token_for(name);
        rt.block_on(async {
            let r =
                client.post(format!("{}/bootstrap", cp.dp)).bearer_auth(&token).json(&body).send().await.expect("send");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        })
    };
    let (status, body) = by_name("bad-1");
    assert_eq!((status, body["planPath"].as_str()), (200, Some("/otel/default/bad-1")), "{body}");
    let (status, body) = by_name("nobody");
    assert_eq!(status, 404, "{body}");
    let insight =
        serde_json::from_str::<Value>(&cp.ternctl(&["get", "dataplane-insight", "bad-1", "-o", "json"]).ok().stdout)
            .expect("json");
    assert_eq!(insight["session"]["workDir"], "/tmp/x");
}
