//! Wire compatibility with an independent OTLP implementation: the pipe's
//! exporters send to rotel (PyPI `rotel`) over OTLP/gRPC and over OTLP/HTTP,
//! and rotel forwards to the test collector, which must see everything.

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::{client, Collector};
use serde_json::Value;
use std::process::{Child, Command};
use std::time::Duration;
use support::{eventually, free_port, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(20);

fn rotel_binary() -> String {
    std::env::var("TERN_TEST_ROTEL").unwrap_or_else(|_| {
        let local = support::repo_path(".tools/pypi/rotel/rotel-agent");
        assert!(local.exists(), "rotel is not installed: run scripts/test.sh, or eval \"$(scripts/install-tools.sh)\"");
        local.display().to_string()
    })
}

struct Rotel(Child);

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_rotel(dir: &std::path::Path, grpc: u16, http: u16, collector: u16) -> Rotel {
    let log = std::fs::File::create(dir.join("rotel.log")).expect("log");
    let child = Command::new(rotel_binary())
        .args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{grpc}"),
            "--otlp-http-endpoint",
            &format!("127.0.0.1:{http}"),
        ])
        .args(["--exporter", "otlp", "--otlp-exporter-endpoint", &format!("http://127.0.0.1:{collector}")])
        .arg("--pid-file")
        .arg(dir.join("rotel.pid"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("rotel starts");
    Rotel(child)
}

fn setup(mesh: &str, port: u16, protocol: &str) -> String {
    let policy = |kind: &str| {
        format!("type: {kind}\nname: {mesh}-{}\nmesh: {mesh}\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: rotel}}\n---\n", kind.to_lowercase())
    };
    format!("type: Mesh\nname: {mesh}\n---\ntype: MeshOpenTelemetryBackend\nname: rotel\nmesh: {mesh}\nspec:\n  endpoint: {{address: 127.0.0.1, port: {port}}}\n  protocol: {protocol}\n---\n")
        + &policy("MeshTrace")
        + &policy("MeshAccessLog")
        + &policy("MeshMetric")
}

fn dataplane(mesh: &str, name: &str) -> String {
    format!("type: Dataplane\nname: {name}\nmesh: {mesh}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 18080\n      tags: {{kuma.io/service: {name}}}\n")
}

fn socket_of(dp: &DataPlane) -> std::path::PathBuf {
    eventually(WAIT, "the pipe socket", || {
        let plan: Value = serde_json::from_str(&std::fs::read_to_string(dp.plan_file()).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let path = plan["backends"][0]["socketPath"].as_str().ok_or_else(|| plan.to_string())?.to_string();
        std::path::Path::new(&path).exists().then(|| path.clone().into()).ok_or(path)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipe_speaks_grpc_and_http_to_rotel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start().await;
    let (grpc, http) = (free_port(), free_port());
    let _rotel = start_rotel(dir.path(), grpc, http, collector.port);
    let cp = ControlPlane::start(&dir.path().join("cp"));
    cp.ternctl_stdin(&["apply", "-f", "-"], &(setup("over-grpc", grpc, "grpc") + &setup("over-http", http, "http")))
        .ok();
    let root = dir.path().join("dps");
    let mut dataplanes = Vec::new();
    for (mesh, name) in [("over-grpc", "g-1"), ("over-http", "h-1")] {
        let dp = DataPlane::start(&cp, &root, name, &dataplane(mesh, name), &[], &[]);
        let channel = client::connect(socket_of(&dp)).await;
        client::spans(&channel, &[&format!("{name} span")]).await.expect("spans");
        client::logs(&channel, &[&format!("{name} log")]).await.expect("logs");
        client::gauge(&channel, 2).await.expect("metrics");
        eventually(WAIT, &format!("{mesh}: everything through rotel"), || {
            let (spans, logs) = collector.with(|r| (r.spans.clone(), r.log_bodies.clone()));
            let stats = std::fs::read_to_string(dp.work_dir.join("otel-stats.json")).unwrap_or_default();
            (spans.contains(&format!("{name} span")) && logs.contains(&format!("{name} log"))).then_some(()).ok_or(
                format!(
                    "spans {spans:?} logs {logs:?}; pipe {stats}; rotel log: {}",
                    std::fs::read_to_string(dir.path().join("rotel.log")).unwrap_or_default()
                ),
            )
        });
        dataplanes.push(dp);
    }
    eventually(WAIT, "metric points through rotel", || {
        let n = collector.with(|r| r.metric_points);
        (n >= 4).then_some(()).ok_or(format!("{n} points"))
    });
}
