//! TLS and mTLS from the pipe to a collector, configured the way seed 000
//! says secrets should be: `OTEL_EXPORTER_OTLP_*` variables on the sidecar
//! (endpoint, CA certificate, client certificate and key, headers), none of
//! which leave the data-plane host. A wrong CA fails visibly: in the data
//! plane's delivery counts and in `ternctl inspect`. The same backend
//! settings also pass the OpenTelemetry Collector's own checks (TLS, the
//! client certificate, header values).

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::{client, Collector};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::otelcol::{Forward, OtelCollector, Receiver};
use support::{eventually, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(20);

/// Test certificates in `<dir>/certs`, and a collector serving TLS that
/// requires a client certificate from the test CA.
async fn mtls_collector(dir: &Path) -> (PathBuf, Collector) {
    let certs = support::certs::write(&dir.join("certs"));
    let read = |f: &str| std::fs::read(certs.join(f)).expect("pem");
    let collector = Collector::start_tls(Some((read("server.pem"), read("server.key"), Some(read("ca.pem"))))).await;
    (certs, collector)
}

fn setup(mesh: &str) -> String {
    let policy = |kind: &str| {
        format!("type: {kind}\nname: {mesh}-{}\nmesh: {mesh}\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: from-env}}\n---\n", kind.to_lowercase())
    };
    // Seed 000's from-env backend: no spec, the sidecar's variables drive it.
    format!("type: Mesh\nname: {mesh}\n---\ntype: MeshOpenTelemetryBackend\nname: from-env\nmesh: {mesh}\n---\n")
        + &policy("MeshTrace")
}

fn dataplane(mesh: &str, name: &str) -> String {
    format!("type: Dataplane\nname: {name}\nmesh: {mesh}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 18080\n      tags: {{kuma.io/service: {name}}}\n")
}

fn socket_of(dp: &DataPlane) -> PathBuf {
    eventually(WAIT, "the pipe socket", || {
        let plan: Value = serde_json::from_str(&std::fs::read_to_string(dp.plan_file()).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let path = plan["backends"][0]["socketPath"].as_str().ok_or_else(|| plan.to_string())?.to_string();
        Path::new(&path).exists().then(|| path.clone().into()).ok_or(path)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_from_env_reaches_the_collector_and_a_wrong_ca_fails_visibly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (certs, collector) = mtls_collector(dir.path()).await;
    let cp = ControlPlane::start(&dir.path().join("cp"));
    cp.ternctl_stdin(&["apply", "-f", "-"], &(setup("secure") + "---\n" + &setup("wrong"))).ok();

    let endpoint = format!("https://localhost:{}", collector.port);
    let path = |f: &str| certs.join(f).display().to_string();
    let (ca, cert, key, wrong) = (path("ca.pem"), path("client.pem"), path("client.key"), path("wrong-ca.pem"));
    let env = |ca: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.to_string()),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.clone()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.clone()),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme".to_string()),
        ]
    };
    let root = dir.path().join("dps");
    let good_env = env(&ca);
    let good_env: Vec<(&str, &str)> = good_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let good = DataPlane::start(&cp, &root, "sec-1", &dataplane("secure", "sec-1"), &good_env, &[]);
    let channel = client::connect(socket_of(&good)).await;
    client::spans(&channel, &["over mTLS"]).await.expect("spans");
    eventually(WAIT, "the span over mTLS", || {
        let spans = collector.with(|r| r.spans.clone());
        spans.contains(&"over mTLS".to_string()).then_some(()).ok_or(format!("{spans:?}; {}", good.log_text()))
    });
    assert!(collector.with(|r| r.headers.contains(&"x-tenant=acme".to_string())));

    // None of the secrets reached the control plane.
    let insight = cp.ternctl(&["get", "dataplane-insight", "sec-1", "-m", "secure", "-o", "json"]).ok().stdout;
    for secret in [&ca, &cert, &key, &"acme".to_string(), &endpoint] {
        assert!(!insight.contains(secret.as_str()), "{secret} leaked into the insight: {insight}");
    }
    assert!(!cp.log_text().contains(&key), "nor into the control plane's log");

    // The wrong CA: the collector's certificate is not trusted.
    let bad_env = env(&wrong);
    let bad_env: Vec<(&str, &str)> = bad_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bad = DataPlane::start(&cp, &root, "bad-1", &dataplane("wrong", "bad-1"), &bad_env, &[]);
    let channel = client::connect(socket_of(&bad)).await;
    client::spans(&channel, &["never arrives"]).await.expect("accepted into the queue");
    let text = eventually(WAIT, "the TLS failure in inspect", || {
        let t = cp.ternctl(&["inspect", "dataplane", "bad-1", "-m", "wrong"]).ok().stdout;
        (t.contains("Delivery") && t.to_lowercase().contains("certificate")).then(|| t.clone()).ok_or(t)
    });
    assert!(text.contains("from-env"), "{text}");
    assert!(!collector.with(|r| r.spans.contains(&"never arrives".to_string())));
    drop(bad);
    drop(good);
}

/// A backend that says TLS and headers itself (Tern's extensions): its CA,
/// client certificate and key are files on the data-plane host, one header
/// is literal, one read from a variable and one from a file there. The
/// collector sees TLS, the client certificate and all three headers; none
/// of the values reach the control plane. A header file that is missing
/// shows in `ternctl inspect`, without its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backends_own_tls_and_headers_from_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (certs, collector) = mtls_collector(dir.path()).await;
    let path = |f: &str| certs.join(f).display().to_string();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-s3cret\n").expect("token file");
    let backend = |mesh: &str, file: &str| {
        format!(
            "type: Mesh\nname: {mesh}\n---\ntype: MeshOpenTelemetryBackend\nname: explicit\nmesh: {mesh}\nspec:\n  endpoint: {{address: localhost, port: {port}}}\n  tls:\n    mode: Provided\n    caFile: {ca}\n    certFile: {cert}\n    keyFile: {key}\n  headers:\n    - {{name: x-literal, value: plain}}\n    - {{name: x-from-env, valueFrom: {{env: TERN_TEST_TOKEN}}}}\n    - {{name: x-from-file, valueFrom: {{file: {file}}}}}\n---\ntype: MeshTrace\nname: {mesh}-traces\nmesh: {mesh}\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: explicit}}\n",
            port = collector.port,
            ca = path("ca.pem"),
            cert = path("client.pem"),
            key = path("client.key"),
        )
    };
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let missing = dir.path().join("no-such-token");
    let docs = backend("explicit", &token_file.display().to_string())
        + "---\n"
        + &backend("missing", &missing.display().to_string());
    cp.ternctl_stdin(&["apply", "-f", "-"], &docs).ok();

    let env = [("TERN_TEST_TOKEN", "env-s3cret")];
    let root = dir.path().join("dps");
    let good = DataPlane::start(&cp, &root, "exp-1", &dataplane("explicit", "exp-1"), &env, &[]);
    let channel = client::connect(socket_of(&good)).await;
    client::spans(&channel, &["own TLS"]).await.expect("spans");
    eventually(WAIT, "the span over the backend's own mTLS", || {
        let spans = collector.with(|r| r.spans.clone());
        spans.contains(&"own TLS".to_string()).then_some(()).ok_or(format!("{spans:?}; {}", good.log_text()))
    });
    let seen = collector.with(|r| r.headers.clone());
    for header in ["x-literal=plain", "x-from-env=env-s3cret", "x-from-file=file-s3cret"] {
        assert!(seen.contains(&header.to_string()), "{header} in {seen:?}");
    }
    let insight = cp.ternctl(&["get", "dataplane-insight", "exp-1", "-m", "explicit", "-o", "json"]).ok().stdout;
    for secret in ["env-s3cret", "file-s3cret"] {
        assert!(!insight.contains(secret), "{secret} leaked into the insight: {insight}");
    }

    let bad = DataPlane::start(&cp, &root, "mis-1", &dataplane("missing", "mis-1"), &env, &[]);
    let text = eventually(WAIT, "the missing header file in inspect", || {
        let t = cp.ternctl(&["inspect", "dataplane", "mis-1", "-m", "missing"]).stdout;
        t.contains("x-from-file: its file cannot be read").then(|| t.clone()).ok_or(t)
    });
    assert!(!text.contains("no-such-token"), "the file's path stays on the host: {text}");
    // The data plane reported the input missing (its name, not its path):
    // the control plane's status says so, and the signal is not ready.
    let status = eventually(WAIT, "the missing header file in the status", || {
        let out = cp.ternctl(&["get", "dataplane-insight", "mis-1", "-m", "missing", "-o", "json"]).ok().stdout;
        let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let traces = v["status"]["openTelemetry"]["backends"][0]["traces"].clone();
        (traces["missingFields"] == serde_json::json!(["headers.x-from-file"])).then_some(traces).ok_or(out)
    });
    assert_eq!(status["state"], "missing", "{status}");
    let insight = cp.ternctl(&["get", "dataplane-insight", "mis-1", "-m", "missing", "-o", "json"]).ok().stdout;
    assert!(!insight.contains("no-such-token"), "the file's path stays on the host: {insight}");

    // The file arrives: without a restart, the data plane takes it up at
    // its next plan poll (every 30 s at most), the status clears and the
    // header reaches the collector.
    std::fs::write(
        &missing,
        "late-s3cret
",
    )
    .expect("token file");
    eventually(Duration::from_secs(90), "the status ready once the file is there", || {
        let out = cp.ternctl(&["get", "dataplane-insight", "mis-1", "-m", "missing", "-o", "json"]).ok().stdout;
        let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let traces = &v["status"]["openTelemetry"]["backends"][0]["traces"];
        (traces["state"] == "ready" && traces.get("missingFields").is_none()).then_some(()).ok_or(traces.to_string())
    });
    let channel = client::connect(socket_of(&bad)).await;
    eventually(WAIT, "a span with the late header", || {
        let sent = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(client::spans(&channel, &["after the file came"]))
        });
        sent.map_err(|e| e.to_string())?;
        let seen = collector.with(|r| r.headers.clone());
        seen.contains(&"x-from-file=late-s3cret".to_string()).then_some(()).ok_or(format!("{seen:?}"))
    });
    drop(bad);
    drop(good);
}

/// The socket of the plan's backend `name`.
fn socket_named(dp: &DataPlane, name: &str) -> PathBuf {
    eventually(WAIT, "the pipe socket", || {
        let plan: Value = serde_json::from_str(&std::fs::read_to_string(dp.plan_file()).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let backends = plan["backends"].as_array().cloned().unwrap_or_default();
        let backend = backends.iter().find(|b| b["name"] == name).ok_or_else(|| plan.to_string())?;
        let path = backend["socketPath"].as_str().unwrap_or_default().to_string();
        Path::new(&path).exists().then(|| path.clone().into()).ok_or(path)
    })
}

/// Delivery counts of backend `name`'s `signal` in the data plane's report.
fn delivery_of(dp: &DataPlane, name: &str, signal: &str) -> Value {
    let text = std::fs::read_to_string(dp.work_dir.join("otel-stats.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let backends = v["backends"].as_array().cloned().unwrap_or_default();
    backends.iter().find(|b| b["name"] == name).map(|b| b["signals"][signal].clone()).unwrap_or(Value::Null)
}

/// A backend with its own TLS (CA, client certificate and key) and one
/// header from the host, for `signal`'s policy.
fn checked_backend(mesh: &str, name: &str, port: u16, certs: &Path, header: &str, from: &str, policy: &str) -> String {
    let file = |f: &str| certs.join(f).display().to_string();
    format!(
        "---\ntype: MeshOpenTelemetryBackend\nname: {name}\nmesh: {mesh}\nspec:\n  endpoint: {{address: localhost, port: {port}}}\n  tls: {{mode: Provided, caFile: '{ca}', certFile: '{cert}', keyFile: '{key}'}}\n  headers:\n    - {{name: {header}, valueFrom: {from}}}\n---\ntype: {policy}\nname: {name}\nmesh: {mesh}\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: {name}}}\n",
        ca = file("ca.pem"),
        cert = file("client.pem"),
        key = file("client.key"),
    )
}

/// The backend's own TLS and headers against the OpenTelemetry Collector,
/// which checks them itself: it serves TLS that `caFile` must trust,
/// refuses a connection without a client certificate from the test CA, and
/// refuses a request whose header does not hold the expected value (the
/// contrib bearer-token authenticator, one header per receiver). Spans carry
/// a header from a variable, access-log records one from a file; a backend
/// whose variable holds the wrong value is refused by the collector, and
/// the data plane counts that as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_otel_collector_accepts_a_backends_tls_client_certificate_and_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = support::certs::write(&dir.path().join("certs"));
    let collector = Collector::start().await;
    let checked = |header: &str, value: &str| Receiver {
        tls: Some(certs.clone()),
        client_certificate: true,
        header: Some((header.to_string(), value.to_string())),
    };
    let receivers = [checked("authorization", "Bearer env-s3cret"), checked("x-api-key", "file-s3cret")];
    let otelcol = OtelCollector::start(dir.path(), &receivers, collector.port, Forward::Synchronous);
    let (env_port, file_port) = (otelcol.ports[0].0, otelcol.ports[1].0);
    let token_file = dir.path().join("api-key");
    std::fs::write(&token_file, "file-s3cret\n").expect("token file");

    let cp = ControlPlane::start(&dir.path().join("cp"));
    let from_file = format!("{{file: '{}'}}", token_file.display());
    let docs = "type: Mesh\nname: checked\n".to_string()
        + &checked_backend(
            "checked",
            "by-env",
            env_port,
            &certs,
            "authorization",
            "{env: TERN_TEST_TOKEN}",
            "MeshTrace",
        )
        + &checked_backend("checked", "by-file", file_port, &certs, "x-api-key", &from_file, "MeshAccessLog")
        + &checked_backend(
            "checked",
            "wrong",
            env_port,
            &certs,
            "authorization",
            "{env: TERN_TEST_WRONG}",
            "MeshMetric",
        );
    cp.ternctl_stdin(&["apply", "-f", "-"], &docs).ok();

    let env = [("TERN_TEST_TOKEN", "Bearer env-s3cret"), ("TERN_TEST_WRONG", "Bearer guessed")];
    let dp = DataPlane::start(&cp, &dir.path().join("dps"), "chk-1", &dataplane("checked", "chk-1"), &env, &[]);
    let spans = client::connect(socket_named(&dp, "by-env")).await;
    let logs = client::connect(socket_named(&dp, "by-file")).await;
    let metrics = client::connect(socket_named(&dp, "wrong")).await;
    client::spans(&spans, &["checked by the collector"]).await.expect("spans");
    client::logs(&logs, &["a record checked by the collector"]).await.expect("logs");
    client::gauge(&metrics, 3).await.expect("metrics");

    let context = || {
        let report = std::fs::read_to_string(dp.work_dir.join("otel-stats.json")).unwrap_or_default();
        let log = otelcol.log_text();
        let refusals: Vec<&str> = log.lines().filter(|l| !l.contains("TLS handshake error")).collect();
        format!(
            "\ndelivery: {report}\nOpenTelemetry Collector log:\n{}\ntern-dp log:\n{}",
            refusals.join("\n"),
            dp.log_text()
        )
    };
    eventually(WAIT, "the span and the record through the OpenTelemetry Collector", || {
        let (spans, bodies) = collector.with(|r| (r.spans.clone(), r.log_bodies.clone()));
        let arrived = spans.contains(&"checked by the collector".to_string())
            && bodies.contains(&"a record checked by the collector".to_string());
        arrived.then_some(()).ok_or(format!("spans {spans:?}, records {bodies:?}{}", context()))
    });
    let refused = eventually(WAIT, "the wrong header's points dropped", || {
        let s = delivery_of(&dp, "wrong", "metrics");
        (s["dropped"] == 3).then(|| s.clone()).ok_or(format!("{s}{}", context()))
    });
    let error = refused["lastError"].as_str().unwrap_or_default().to_lowercase();
    assert!(error.contains("unauthenticated") || error.contains("authorization"), "{refused}");
    assert!(!error.contains("guessed"), "the header's value stays out of the report: {refused}");
    assert_eq!(collector.with(|r| r.metric_points), 0, "nothing passed the collector with the wrong value");
    // The report is written every few seconds: it catches up.
    eventually(WAIT, "the exports counted", || {
        let (spans, logs) = (delivery_of(&dp, "by-env", "traces"), delivery_of(&dp, "by-file", "logs"));
        (spans["exported"] == 1 && logs["exported"] == 1).then_some(()).ok_or(format!("{spans} {logs}"))
    });
}
