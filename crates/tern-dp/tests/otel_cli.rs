//! `tern-dp otel inventory` and `tern-dp otel resolve` through the binary,
//! with the environment a sidecar would have.

use serde_json::{json, Value};
use std::process::Command;

fn tern_dp(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern-dp"));
    cmd.args(args);
    // Start from a clean OTEL environment whatever the test runner has.
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") || k == "KUBERNETES_SERVICE_HOST" || k == "HOST_IP" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("tern-dp runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SECRET_ENV: &[(&str, &str)] = &[
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel-gateway.observability:4318"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://tempo.observability:4318"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20tok3n-SECRET-value"),
    ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/var/run/secrets/KEYPATH-secret.pem"),
    ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "soon"),
];

#[test]
fn inventory_reports_keys_never_values() {
    let (code, out, err) = tern_dp(&["otel", "inventory"], SECRET_ENV);
    assert_eq!(code, 0, "{err}");
    let inv: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(inv["shared"]["present"], json!(["endpoint", "protocol", "headers", "client_key"]));
    assert_eq!(inv["shared"]["invalid"], json!(["client_certificate"]));
    assert_eq!(inv["traces"]["overrideKinds"], json!(["endpoint"]));
    assert_eq!(inv["validationErrors"], json!(["shared.mtls", "metrics.timeout"]));
    assert_eq!(inv["kubernetes"], false);
    for (_, value) in SECRET_ENV {
        for piece in ["tok3n-SECRET", "KEYPATH", "otel-gateway", "tempo.observability", "soon"] {
            if value.contains(piece) {
                assert!(!out.contains(piece) && !err.contains(piece), "{piece} leaked:\n{out}\n{err}");
            }
        }
    }
}

/// A plan as the control plane writes it, for one empty ("from-env") backend.
fn plan(env: &[(&str, &str)], ambiguous: bool) -> Value {
    use tern_otlp_config::merge::BackendUse;
    let settings = tern_otlp_config::BackendSettings::from_spec(&Default::default());
    let vars: std::collections::BTreeMap<String, String> =
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let (_, _, inventory) = tern_otlp_config::Inventory::discover(&vars);
    let signals = [tern_otlp_config::Signal::Traces, tern_otlp_config::Signal::Metrics, tern_otlp_config::Signal::Logs];
    let uses = [BackendUse { name: "from-env", settings: &settings, signals: &signals }];
    let resolved = tern_otlp_config::resolve_backends(&uses, &inventory);
    let status = |i: usize| {
        let mut s = serde_json::to_value(tern_otlp_config::SignalStatus::from(&resolved[0][i])).expect("json");
        if ambiguous {
            s["state"] = json!("ambiguous");
            s["blockedReasons"] = json!(["MultipleBackendsForSignal"]);
        }
        s
    };
    json!({"backends": [{
        "name": "from-env",
        "socketPath": "/tmp/tern-otel-from-env.sock",
        "settings": serde_json::to_value(&settings).expect("json"),
        "traces": {"status": status(0)},
        "metrics": {"status": status(1), "refreshInterval": "30s"},
        "logs": {"status": status(2)}
    }]})
}

#[test]
fn resolve_shows_each_signal_with_its_sources_and_secrets_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env: Vec<(&str, &str)> = SECRET_ENV.iter().copied().filter(|(k, _)| !k.ends_with("CLIENT_KEY")).collect();
    let path = dir.path().join("plan.json");
    std::fs::write(&path, plan(&env, false).to_string()).expect("write plan");
    let (code, out, err) = tern_dp(&["otel", "resolve", "--plan", path.to_str().expect("utf8")], &env);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).expect("json");
    let b = &r["backends"][0];
    assert_eq!(b["name"], "from-env");
    let traces = &b["signals"]["traces"]["exporter"];
    assert_eq!(traces["endpoint"], json!({"value": "https://tempo.observability:4318", "source": "signal-env"}));
    assert_eq!(traces["protocol"], json!({"value": "http/protobuf", "source": "shared-env"}));
    assert_eq!(traces["headers"], json!({"value": {"authorization": "<redacted>"}, "source": "shared-env"}));
    assert_eq!(
        b["signals"]["logs"]["exporter"]["endpoint"]["value"],
        "https://otel-gateway.observability:4318/v1/logs"
    );
    assert_eq!(b["signals"]["metrics"]["exporter"]["timeoutMs"], json!({"value": 10000, "source": "default"}));
    assert_eq!(b["signals"]["metrics"]["refreshInterval"], "30s");
    assert_eq!(b["clients"], json!([["traces"], ["metrics", "logs"]]));
    assert!(b["signals"]["traces"].get("note").is_none(), "plan and local status agree");
    assert!(!out.contains("tok3n"), "{out}");
}

#[test]
fn resolve_follows_the_plans_ambiguity_and_flags_disagreement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")];
    let path = dir.path().join("plan.yaml");
    std::fs::write(&path, plan(&env, true).to_string()).expect("write plan");
    let (code, out, err) = tern_dp(&["otel", "resolve", "--plan", path.to_str().expect("utf8")], &env);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).expect("json");
    let traces = &r["backends"][0]["signals"]["traces"];
    assert_eq!(traces["state"], "ambiguous");
    assert_eq!(traces["exporter"], Value::Null, "no explicit address: nothing is exported");

    // The environment changed after the plan was computed: say so.
    let (code, out, _) = tern_dp(&["otel", "resolve", "--plan", path.to_str().expect("utf8")], &[]);
    assert_eq!(code, 0);
    let r: Value = serde_json::from_str(&out).expect("json");
    let traces = &r["backends"][0]["signals"]["traces"];
    assert!(traces["note"].as_str().expect("note").contains("restart tern-dp"), "{traces}");
}

#[test]
fn a_bad_plan_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plan.json");
    let mut bad = plan(&[], false);
    bad["backends"][0]["settings"]["envPolicy"]["mode"] = json!("Sometimes");
    std::fs::write(&path, bad.to_string()).expect("write plan");
    let (code, _, err) = tern_dp(&["otel", "resolve", "--plan", path.to_str().expect("utf8")], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is not a valid plan: backends[0].settings.envPolicy.mode: unknown variant `Sometimes`"),
        "{err}"
    );
    let (code, _, err) = tern_dp(&["otel", "resolve", "--plan", "/nonexistent/plan.json"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("reading /nonexistent/plan.json"), "{err}");
}

#[test]
fn non_ascii_values_neither_panic_nor_leak() {
    for endpoint in
        ["http://é:s3cr3t@collector:4317", "https://collector:4317/\u{1b}[2Js3cr3t", "é:s3cr3t", "http://[s3cr3t"]
    {
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_EXPORTER_OTLP_HEADERS", "k=s3cr3t%ZZ,é=s3cr3t")];
        let (code, out, err) = tern_dp(&["otel", "inventory"], &env);
        assert!(code == 0 || code == 1, "{endpoint:?}: exit {code}\n{err}");
        assert!(!out.contains("s3cr3t") && !err.contains("s3cr3t"), "{endpoint:?}: a value leaked\n{out}\n{err}");
        assert!(!err.contains("panicked"), "{endpoint:?}: {err}");
    }
}

/// `run` needs its Dataplane: a file, or the name and mesh of a stored one;
/// never both, never half of the second.
#[test]
fn run_names_its_dataplane_by_file_or_by_name_and_mesh() {
    for (args, expected) in [
        (&["run"][..], "--dataplane-file"),
        (&["run", "--name", "web-1.shop"][..], "--mesh"),
        (&["run", "--dataplane-file", "dp.yaml", "--name", "web-1.shop", "--mesh", "default"][..], "cannot be used"),
    ] {
        let (code, _, stderr) = tern_dp(args, &[]);
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// A backend's `timeout` merges with `OTEL_EXPORTER_OTLP_TIMEOUT` under its
/// precedence, and its `retry` and `queue` show with their sources.
#[test]
fn resolve_shows_the_backends_timeout_retry_and_queue_with_sources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("OTEL_EXPORTER_OTLP_TIMEOUT", "500")];
    for (precedence, value, source) in [("EnvFirst", 500, "shared-env"), ("ExplicitFirst", 2000, "explicit")] {
        let spec: tern_model::spec::MeshOpenTelemetryBackendSpec = serde_json::from_value(json!({
            "endpoint": {"address": "collector", "port": 4317},
            "env": {"precedence": precedence},
            "timeout": "2s",
            "retry": {"initialBackoff": "250ms", "maxElapsedTime": "1m"},
            "queue": {"maxRequests": 64}
        }))
        .expect("spec");
        assert!(spec.validate().is_empty(), "{:?}", spec.validate());
        let settings = tern_otlp_config::BackendSettings::from_spec(&spec);
        let ready = json!({"enabled": true, "state": "ready", "envAllowed": true, "envInputPresent": true, "overrideKinds": [], "missingFields": [], "blockedReasons": []});
        let plan = json!({"backends": [{
            "name": "main",
            "socketPath": "/tmp/tern-otel-main.sock",
            "settings": serde_json::to_value(&settings).expect("json"),
            "traces": {"status": ready}
        }]});
        let path = dir.path().join(format!("{precedence}.json"));
        std::fs::write(&path, plan.to_string()).expect("write plan");
        let (code, out, err) = tern_dp(&["otel", "resolve", "--plan", path.to_str().expect("utf8")], &env);
        assert_eq!(code, 0, "{err}");
        let r: Value = serde_json::from_str(&out).expect("json");
        let b = &r["backends"][0];
        assert_eq!(b["signals"]["traces"]["exporter"]["timeoutMs"], json!({"value": value, "source": source}), "{out}");
        assert_eq!(b["delivery"]["initialBackoffMs"], json!({"value": 250, "source": "explicit"}));
        assert_eq!(b["delivery"]["maxBackoffMs"], json!({"value": 5000, "source": "default"}));
        assert_eq!(b["delivery"]["maxElapsedMs"], json!({"value": 60000, "source": "explicit"}));
        assert_eq!(b["delivery"]["queueRequests"], json!({"value": 64, "source": "explicit"}));
    }
}
