//! Telemetry from real Envoy sidecars: two demo HTTP services, each behind
//! Envoy configured by `tern-cp` over ADS and run by `tern-dp`, one calling
//! the other through its outbound. Seed 000's single backend with MeshTrace
//! MeshAccessLog and MeshMetric; spans from both services with the right
//! service names and parent/child relation, access log records and Envoy's
//! metrics arrive at a real OTLP collector through each data plane's pipe.

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::Collector;
use std::time::Duration;
use support::{eventually, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(30);

use support::{envoy_binary, free_port};

/// The quickstart's demo service as its own process (`ternctl demo-app`),
/// stopped when dropped.
struct App(std::process::Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn app(port: u16, body: &str, call: Option<String>) -> App {
    let mut cmd = std::process::Command::new(support::TERNCTL);
    cmd.args(["demo-app", "--listen", &format!("127.0.0.1:{port}"), "--body", body]);
    if let Some(url) = call {
        cmd.args(["--call", &url]);
    }
    let child = cmd.spawn().expect("demo app starts");
    eventually(WAIT, "the demo app listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ()).map_err(|e| e.to_string())
    });
    App(child)
}

fn dataplane(name: &str, inbound: u16, app: u16, admin: u16, outbound: Option<(u16, &str)>) -> String {
    let outbound = outbound
        .map(|(port, service)| {
            format!("  outbound:\n    - port: {port}\n      tags:\n        kuma.io/service: {service}\n")
        })
        .unwrap_or_default();
    format!(
        "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  admin:\n    port: {admin}\n  inbound:\n    - port: {inbound}\n      servicePort: {app}\n      tags:\n        kuma.io/service: {name}\n        kuma.io/protocol: http\n{outbound}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_and_access_logs_from_two_envoy_sidecars_reach_the_collector() {
    let envoy = envoy_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start().await;
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let seed = std::fs::read_to_string(support::repo_path("examples/universal/single-collector.yaml"))
        .expect("seed")
        .replace("address: otel-collector.observability", "address: 127.0.0.1")
        .replace("port: 4317", &format!("port: {}", collector.port))
        .replace("overall: 80", "overall: 100")
        .replace("refreshInterval: 30s", "refreshInterval: 1s");
    cp.ternctl_stdin(&["apply", "-f", "-"], &seed).ok();

    let (web_in, web_app, web_admin, web_out) = (free_port(), free_port(), free_port(), free_port());
    let (api_in, api_app, api_admin) = (free_port(), free_port(), free_port());
    let _api_app = app(api_app, "api ok", None);
    let _web_app = app(web_app, "web ok", Some(format!("http://127.0.0.1:{web_out}/items")));
    let root = dir.path().join("dps");
    let extra = ["--envoy-binary", envoy.as_str()];
    let _api = DataPlane::start(&cp, &root, "api", &dataplane("api", api_in, api_app, api_admin, None), &[], &extra);
    let web = DataPlane::start(
        &cp,
        &root,
        "web",
        &dataplane("web", web_in, web_app, web_admin, Some((web_out, "api"))),
        &[],
        &extra,
    );

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{web_in}/orders");
    eventually(WAIT, "web -> api through both Envoys", || {
        let r = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(async { client.get(&url).send().await.map_err(|e| e.to_string()) })
        })?;
        (r.status() == 200).then_some(()).ok_or(format!("status {}", r.status()))
    });
    for _ in 0..4 {
        let r = client.get(&url).send().await.expect("request");
        assert_eq!(r.status(), 200);
    }

    eventually(WAIT, "spans from web and api", || {
        let records = collector.with(|r| r.span_records.clone());
        let services: std::collections::BTreeSet<String> = records.iter().map(|s| s.service.clone()).collect();
        (services.contains("web") && services.contains("api")).then_some(()).ok_or(format!(
            "{services:?} counts {:?} port {}; plan {}; web pipe: {}; web envoy log: {}",
            collector.with(|r| (r.spans.len(), r.log_bodies.len(), r.headers.len())),
            collector.port,
            std::fs::read_to_string(web.plan_file()).unwrap_or_default(),
            std::fs::read_to_string(web.work_dir.join("otel-stats.json")).unwrap_or_default(),
            std::fs::read_to_string(web.work_dir.join("envoy.log")).unwrap_or_default()
        ))
    });
    // tern-dp's bootstrap batches the tracer's exports (a runtime layer).
    let runtime: serde_json::Value = client
        .get(format!("http://127.0.0.1:{web_admin}/runtime"))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("runtime JSON");
    assert_eq!(runtime["entries"]["tracing.opentelemetry.min_flush_spans"]["final_value"], "50", "{runtime}");
    assert_eq!(runtime["entries"]["tracing.opentelemetry.flush_interval_ms"]["final_value"], "1000", "{runtime}");
    // ...and the access logger's (64 KiB or 1 s, in the listener config).
    let dump =
        client.get(format!("http://127.0.0.1:{web_admin}/config_dump")).send().await.expect("admin").text().await;
    let dump = dump.expect("config dump").replace([' ', '\n'], "");
    assert!(dump.contains(r#""buffer_size_bytes":65536"#) && dump.contains(r#""buffer_flush_interval":"1s""#));
    // api's server span is a child of a web span in the same trace (the two
    // sidecars send their spans on their own schedules).
    let spans = eventually(WAIT, "an api span whose parent is a web span", || {
        let spans = collector.with(|r| r.span_records.clone());
        let child = spans.iter().filter(|s| s.service == "api").find(|api| {
            spans.iter().any(|w| w.service == "web" && w.trace_id == api.trace_id && w.span_id == api.parent_span_id)
        });
        child.is_some().then_some(spans.clone()).ok_or(format!("{spans:#?}"))
    });
    let logs = eventually(WAIT, "access log records", || {
        let n = collector.with(|r| r.log_bodies.len());
        (n >= 5).then_some(n).ok_or(format!("{n} records"))
    });
    eventually(WAIT, "a record in the default body format", || {
        let bodies = collector.with(|r| r.log_bodies.clone());
        bodies
            .iter()
            .any(|b| b.contains("GET /orders") && b.contains(" 200 "))
            .then_some(())
            .ok_or(format!("{bodies:#?}"))
    });
    eprintln!("{} spans, {logs} access log records", spans.len());
    let inspect = cp.ternctl(&["inspect", "dataplane", "web"]).ok().stdout;
    assert!(inspect.contains("main-collector   traces    ready"), "{inspect}");
    // MeshMetric: Envoy's statistics arrive as OTLP metrics.
    eventually(WAIT, "Envoy metrics at the collector", || {
        let names = collector.with(|r| r.metric_names.clone());
        // A counter and a histogram (with its buckets).
        let wanted = ["envoy_cluster_upstream_rq_total", "envoy_cluster_upstream_rq_time"];
        wanted.iter().all(|w| names.iter().any(|n| n == w)).then_some(()).ok_or(format!("{} names", names.len()))
    });

    // inspect's delivery counts match what the collector received from web.
    eventually(WAIT, "delivery counts in inspect match the collector", || {
        let at_collector = collector.with(|r| r.span_records.iter().filter(|s| s.service == "web").count()) as u64;
        let v: serde_json::Value =
            serde_json::from_str(&cp.ternctl(&["inspect", "dataplane", "web", "-o", "json"]).ok().stdout)
                .map_err(|e| e.to_string())?;
        let exported = v["runtime"]["delivery"]["backends"][0]["signals"]["traces"]["exported"].as_u64().unwrap_or(0);
        (exported == at_collector && exported > 0)
            .then_some(())
            .ok_or(format!("inspect {exported}, collector {at_collector}"))
    });
    let text = cp.ternctl(&["inspect", "dataplane", "web"]).ok().stdout;
    assert!(text.contains("Delivery (reported by tern-dp") && text.contains("RECEIVED"), "{text}");
    assert!(text.contains("accepted config version"), "{text}");

    // A config Envoy refuses (an unknown command operator) is reported, and the
    // previous config stays in force.
    let bad = "type: MeshAccessLog\nname: all-access-logs\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: main-collector}\n          body: \"%NOT_A_REAL_OPERATOR%\"\n";
    cp.ternctl_stdin(&["apply", "-f", "-"], bad).ok();
    let text = eventually(WAIT, "the NACK in inspect", || {
        let t = cp.ternctl(&["inspect", "dataplane", "web"]).ok().stdout;
        t.contains("REJECTED config version").then(|| t.clone()).ok_or(t)
    });
    assert!(text.contains("NOT_A_REAL_OPERATOR"), "Envoy's own error is shown: {text}");
    assert!(cp.log_text().contains("Envoy rejected the configuration (NACK)"), "and logged");
    let r = client.get(&url).send().await.expect("request");
    assert_eq!(r.status(), 200, "the previous config still serves traffic");
}
