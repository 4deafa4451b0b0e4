//! The OpenTelemetry Collector as the peer Kuma's users deploy: real Envoy ->
//! real `tern-dp` (the OTLP pipe) -> the real OpenTelemetry Collector
//! (`tools/otelcol`, built from the Go module proxy by
//! scripts/install-tools.sh) -> the test collector. `tern-dp` finds the
//! OpenTelemetry Collector the way seed 000 reuses a sidecar's environment (a
//! from-env backend): over OTLP/gRPC or OTLP/HTTP, TLS trusting the
//! collector's CA, gzip. Spans, access log records and Envoy's metric points
//! arrive at the far end; every span and record `tern-dp` counts as exported
//! gets there, and nothing is dropped.

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::Collector;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::otelcol::{Forward, OtelCollector, Receiver};
use support::{envoy_binary, eventually, free_port, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(30);

/// Requests sent through Envoy once it serves; each one makes a span and an
/// access log record.
const REQUESTS: usize = 5;

/// A mesh whose three policies send to seed 000's from-env backend (no
/// spec: the sidecar's `OTEL_EXPORTER_OTLP_*` variables drive it), every
/// request traced, Envoy's metrics every second.
fn setup(mesh: &str) -> String {
    let backend = "backendRef: {kind: MeshOpenTelemetryBackend, name: from-env}";
    format!(
        "type: Mesh
name: {mesh}
---
type: MeshOpenTelemetryBackend
name: from-env
mesh: {mesh}
---
type: MeshTrace
name: traces
mesh: {mesh}
spec:
  targetRef: {{kind: Mesh}}
  default:
    backends:
      - type: OpenTelemetry
        openTelemetry: {{{backend}}}
    sampling: {{overall: 100}}
---
type: MeshAccessLog
name: access-logs
mesh: {mesh}
spec:
  targetRef: {{kind: Mesh}}
  default:
    backends:
      - type: OpenTelemetry
        openTelemetry: {{{backend}}}
---
type: MeshMetric
name: metrics
mesh: {mesh}
spec:
  targetRef: {{kind: Mesh}}
  default:
    backends:
      - type: OpenTelemetry
        openTelemetry: {{{backend}, refreshInterval: 1s}}
"
    )
}

fn dataplane(mesh: &str, name: &str, inbound: u16, app: u16, admin: u16) -> String {
    format!(
        "type: Dataplane\nname: {name}\nmesh: {mesh}\nnetworking:\n  address: 127.0.0.1\n  admin:\n    port: {admin}\n  inbound:\n    - port: {inbound}\n      servicePort: {app}\n      tags:\n        kuma.io/service: {name}\n        kuma.io/protocol: http\n"
    )
}

/// The quickstart's demo service (`ternctl demo-app`), stopped when dropped.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn demo_app(port: u16) -> App {
    let child = Command::new(support::TERNCTL)
        .args(["demo-app", "--listen", &format!("127.0.0.1:{port}"), "--body", "orders ok"])
        .stdout(Stdio::null())
        .spawn()
        .expect("demo app starts");
    eventually(WAIT, "the demo app listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ()).map_err(|e| e.to_string())
    });
    App(child)
}

/// `tern-dp otel resolve` for the data plane's plan, with its environment:
/// the exporter config it runs, each field with its source.
fn resolved_exporters(dp: &DataPlane, env: &[(&str, &str)]) -> Value {
    eventually(WAIT, "the plan", || dp.plan_file().exists().then_some(()).ok_or("no plan yet".to_string()));
    let mut cmd = Command::new(support::tern_dp());
    cmd.args(["otel", "resolve", "--plan"]).arg(dp.plan_file());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
        cmd.env_remove(k);
    }
    let out = cmd.envs(env.iter().copied()).output().expect("tern-dp otel resolve runs");
    assert!(out.status.success(), "tern-dp otel resolve: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("resolve prints JSON")
}

/// Per signal: what `tern-dp` received from Envoy, exported and dropped.
fn delivery(dp: &DataPlane, signal: &str) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(dp.work_dir.join("otel-stats.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let s = &v["backends"][0]["signals"][signal];
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    (n("received"), n("exported"), n("dropped"))
}

/// Envoy -> `tern-dp` -> OpenTelemetry Collector (`protocol` as
/// `OTEL_EXPORTER_OTLP_PROTOCOL` names it, TLS, gzip) -> test collector.
async fn envoy_telemetry_through_the_otel_collector(mesh: &str, protocol: &str) {
    let envoy = envoy_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = support::certs::write(&dir.path().join("certs"));
    let collector = Collector::start().await;
    let tls = Receiver { tls: Some(certs.clone()), ..Default::default() };
    let otelcol = OtelCollector::start(dir.path(), &[tls], collector.port, Forward::Batched);
    let cp = ControlPlane::start(&dir.path().join("cp"));
    cp.ternctl_stdin(&["apply", "-f", "-"], &setup(mesh)).ok();

    let (grpc, http) = otelcol.ports[0];
    let port = if protocol == "grpc" { grpc } else { http };
    let endpoint = format!("https://localhost:{port}");
    let ca = certs.join("ca.pem").display().to_string();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
    ];
    let name = format!("orders-{mesh}");
    let (inbound, app_port, admin) = (free_port(), free_port(), free_port());
    let _app = demo_app(app_port);
    let dp = DataPlane::start(
        &cp,
        &dir.path().join("dps"),
        &name,
        &dataplane(mesh, &name, inbound, app_port, admin),
        &env,
        &["--envoy-binary", envoy.as_str()],
    );

    // The exporters run with the environment's protocol, TLS and gzip.
    let resolved = resolved_exporters(&dp, &env);
    for signal in ["traces", "logs", "metrics"] {
        let exporter = &resolved["backends"][0]["signals"][signal]["exporter"];
        assert_eq!(exporter["protocol"]["value"], protocol, "{signal}: {resolved:#}");
        assert_eq!(exporter["compression"]["value"], "gzip", "{signal}: {resolved:#}");
        assert_eq!(exporter["tls"]["value"], true, "{signal}: {resolved:#}");
    }

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{inbound}/orders");
    eventually(WAIT, "a request through Envoy", || {
        let status = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(async { client.get(&url).send().await.map(|r| r.status()).map_err(|e| e.to_string()) })
        })?;
        (status == 200).then_some(()).ok_or(format!("status {status}"))
    });
    for _ in 0..REQUESTS {
        assert_eq!(client.get(&url).send().await.expect("request").status(), 200);
    }

    let context = || {
        format!(
            "\ntern-dp delivery: {}\nOpenTelemetry Collector log:\n{}\ntern-dp log:\n{}",
            std::fs::read_to_string(dp.work_dir.join("otel-stats.json")).unwrap_or_default(),
            otelcol.log_text(),
            dp.log_text()
        )
    };
    eventually(WAIT, "spans at the far end", || {
        let n = collector.with(|r| r.span_records.iter().filter(|s| s.service == name).count());
        (n >= REQUESTS).then_some(()).ok_or(format!("{n} spans{}", context()))
    });
    eventually(WAIT, "access log records at the far end", || {
        let n = collector.with(|r| r.log_bodies.len());
        (n >= REQUESTS).then_some(()).ok_or(format!("{n} records{}", context()))
    });
    eventually(WAIT, "Envoy's metric points at the far end", || {
        let (points, names) = collector.with(|r| (r.metric_points, r.metric_names.clone()));
        let counter = names.iter().any(|n| n == "envoy_cluster_upstream_rq_total");
        (points > 0 && counter).then_some(()).ok_or(format!("{points} points, {} names{}", names.len(), context()))
    });

    // Traffic has stopped: every span and record tern-dp exported reached
    // the far end through the OpenTelemetry Collector, none dropped.
    eventually(WAIT, "tern-dp's counts match the far end's", || {
        let spans = collector.with(|r| r.span_records.iter().filter(|s| s.service == name).count()) as u64;
        let records = collector.with(|r| r.log_bodies.len()) as u64;
        let (traces, logs, metrics) = (delivery(&dp, "traces"), delivery(&dp, "logs"), delivery(&dp, "metrics"));
        let settled = traces == (spans, spans, 0) && logs == (records, records, 0);
        (settled && metrics.1 > 0 && metrics.2 == 0).then_some(()).ok_or(format!(
            "far end: {spans} spans, {records} records; tern-dp (received, exported, dropped): traces {traces:?}, \
             logs {logs:?}, metrics {metrics:?}{}",
            context()
        ))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_telemetry_reaches_the_otel_collector_over_grpc_with_tls_and_gzip() {
    envoy_telemetry_through_the_otel_collector("grpc", "grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_telemetry_reaches_the_otel_collector_over_http_with_tls_and_gzip() {
    envoy_telemetry_through_the_otel_collector("http", "http/protobuf").await;
}
