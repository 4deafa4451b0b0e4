//! MeshTrace's Zipkin and Datadog backends through a real Envoy:
//! - Zipkin: spans arrive at a real Zipkin receiver (Jaeger v2, queried
//!   through its API) with the policy's tags, Kuma's `kuma.mesh` tag and
//!   128-bit trace IDs;
//! - Datadog: traces arrive at a receiver decoding Datadog's trace intake
//!   (msgpack on `/v0.4/traces`), with `splitService` naming each side, and
//!   the caller's and callee's spans in one trace.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{eventually, free_port, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(90);

fn curl(url: &str) {
    let _ = std::process::Command::new("curl").args(["-s", "-m", "5", "-o", "/dev/null", url]).status();
}

/// Jaeger v2 with a Zipkin receiver and in-memory storage; killed on drop.
struct Jaeger {
    child: std::process::Child,
    zipkin: u16,
    query: u16,
}

impl Jaeger {
    fn start(dir: &std::path::Path) -> Jaeger {
        let (zipkin, query, grpc) = (free_port(), free_port(), free_port());
        let config = format!(
            "service:\n  extensions: [jaeger_storage, jaeger_query]\n  pipelines:\n    traces:\n      receivers: [zipkin]\n      exporters: [jaeger_storage_exporter]\n  telemetry:\n    metrics: {{level: none}}\n    traces: {{level: none}}\nextensions:\n  jaeger_storage:\n    backends:\n      mem:\n        memory: {{max_traces: 10000}}\n  jaeger_query:\n    storage: {{traces: mem}}\n    http: {{endpoint: '127.0.0.1:{query}'}}\n    grpc: {{endpoint: '127.0.0.1:{grpc}'}}\nreceivers:\n  zipkin: {{endpoint: '127.0.0.1:{zipkin}'}}\nexporters:\n  jaeger_storage_exporter: {{trace_storage: mem}}\n"
        );
        let path = dir.join("jaeger.yaml");
        std::fs::write(&path, config).expect("jaeger config");
        let log = std::fs::File::create(dir.join("jaeger.log")).expect("jaeger log");
        let child = std::process::Command::new(support::jaeger_binary())
            .arg(format!("--config=file:{}", path.display()))
            .env("OTEL_TRACES_EXPORTER", "none")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("jaeger starts");
        let jaeger = Jaeger { child, zipkin, query };
        eventually(WAIT, "Jaeger's query API", || {
            std::net::TcpStream::connect(("127.0.0.1", query)).map(|_| ()).map_err(|e| e.to_string())
        });
        jaeger
    }

    /// Jaeger's `/api/traces` answer for `service`.
    fn traces(&self, service: &str) -> serde_json::Value {
        let out = std::process::Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{}/api/traces?service={service}&limit=50", self.query)])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn web_and_api(cp: &ControlPlane, root: &std::path::Path, envoy: &str) -> (u16, Vec<impl Drop>, Vec<DataPlane>) {
    let (api_in, api_app, api_admin) = (free_port(), free_port(), free_port());
    let (web_in, web_app, web_admin, to_api) = (free_port(), free_port(), free_port(), free_port());
    let apps = vec![support::demo_app(api_app, "api ok", None), support::demo_app(web_app, "web ok", None)];
    let api_yaml = support::sidecar_dataplane("default", "api", api_in, api_app, api_admin);
    let web_yaml = format!(
        "{}  outbound:\n    - port: {to_api}\n      tags:\n        kuma.io/service: api\n",
        support::sidecar_dataplane("default", "web", web_in, web_app, web_admin)
    );
    let args = ["--envoy-binary", envoy];
    let dps = vec![
        DataPlane::start(cp, root, "api", &api_yaml, &[], &args),
        DataPlane::start(cp, root, "web", &web_yaml, &[], &args),
    ];
    (to_api, apps, dps)
}

#[tokio::test(flavor = "multi_thread")]
async fn zipkin_backend_spans_reach_jaeger() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let jaeger = Jaeger::start(dir.path());
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let (to_api, _apps, _dps) = web_and_api(&cp, &dir.path().join("dps"), &envoy);
    let policy = format!(
        "type: MeshTrace\nname: zipkin\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: Zipkin\n        zipkin:\n          url: http://127.0.0.1:{}/api/v2/spans\n          traceId128bit: true\n    propagators: [b3, w3c_tracecontext, w3c_baggage]\n    tags:\n      - name: team\n        literal: payments\n",
        jaeger.zipkin
    );
    cp.ternctl_stdin(&["apply", "-f", "-"], &policy).ok();

    let trace = eventually(WAIT, "a trace with spans of web and api in Jaeger", || {
        curl(&format!("http://127.0.0.1:{to_api}/zipkin-call"));
        let answer = jaeger.traces("api");
        let traces = answer["data"].as_array().cloned().unwrap_or_default();
        traces
            .into_iter()
            .find(|t| {
                let services: Vec<&str> = t["processes"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, p)| p["serviceName"].as_str())
                    .collect();
                services.contains(&"web") && services.contains(&"api")
            })
            .ok_or(answer.to_string())
    });
    let trace_id = trace["traceID"].as_str().unwrap_or_default();
    assert_eq!(trace_id.len(), 32, "traceId128bit gives 128-bit trace IDs: {trace_id}");
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    let tag = |span: &serde_json::Value, key: &str| -> Option<String> {
        span["tags"].as_array()?.iter().find(|t| t["key"] == key).and_then(|t| t["value"].as_str().map(String::from))
    };
    assert!(
        spans.iter().all(|s| tag(s, "team").as_deref() == Some("payments") && tag(s, "kuma.mesh").as_deref() == Some("default")),
        "the policy's tag and kuma.mesh on every span: {spans:#?}"
    );

    // A request entering with B3 headers continues the caller's trace.
    let b3_trace = "463ac35c9f6413ad48485a3953bb6124";
    eventually(WAIT, "the B3 caller's trace in Jaeger", || {
        let _ = std::process::Command::new("curl")
            .args(["-s", "-m", "5", "-o", "/dev/null", "-H", &format!("x-b3-traceid: {b3_trace}")])
            .args(["-H", "x-b3-spanid: a2fb4a1d1a96d312", "-H", "x-b3-sampled: 1"])
            .arg(format!("http://127.0.0.1:{to_api}/b3-call"))
            .status();
        let answer = jaeger.traces("api");
        let found = answer["data"].as_array().into_iter().flatten().any(|t| t["traceID"] == b3_trace);
        found.then_some(()).ok_or(answer.to_string())
    });
}

/// An application that records the request heads it receives.
fn header_recorder(port: u16) -> Arc<Mutex<Vec<String>>> {
    use std::io::{BufRead, BufReader, Write};
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let store = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                head.push_str(&line.to_ascii_lowercase());
                line.clear();
            }
            store.lock().unwrap().push(head);
            let _ = (&stream).write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    heads
}

/// W3C baggage passes through the mesh by default, and stays out of the
/// callee's requests when `propagators` leave `w3c_baggage` out.
#[tokio::test(flavor = "multi_thread")]
async fn baggage_follows_the_propagators() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let (collector_port, _collector) = {
        let c = free_port();
        (c, std::net::TcpListener::bind(("127.0.0.1", c)).expect("a collector port nobody answers"))
    };
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let (api_in, api_app, api_admin) = (free_port(), free_port(), free_port());
    let (web_in, web_app, web_admin, to_api) = (free_port(), free_port(), free_port(), free_port());
    let heads = header_recorder(api_app);
    let _web = support::demo_app(web_app, "web ok", None);
    let api_yaml = support::sidecar_dataplane("default", "api", api_in, api_app, api_admin);
    let web_yaml = format!(
        "{}  outbound:\n    - port: {to_api}\n      tags:\n        kuma.io/service: api\n",
        support::sidecar_dataplane("default", "web", web_in, web_app, web_admin)
    );
    let args = ["--envoy-binary", envoy.as_str()];
    let root = dir.path().join("dps");
    let _dps = [
        DataPlane::start(&cp, &root, "api", &api_yaml, &[], &args),
        DataPlane::start(&cp, &root, "web", &web_yaml, &[], &args),
    ];
    let policy = |propagators: &str| {
        format!("type: MeshOpenTelemetryBackend\nname: main\nmesh: default\nspec:\n  endpoint: {{address: 127.0.0.1, port: {collector_port}}}\n---\ntype: MeshTrace\nname: traces\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: main}}\n{propagators}")
    };
    let call = |marker: &str| {
        let _ = std::process::Command::new("curl")
            .args(["-s", "-m", "5", "-o", "/dev/null", "-H", &format!("baggage: team=pay,marker={marker}")])
            .arg(format!("http://127.0.0.1:{to_api}/{marker}"))
            .status();
    };
    let seen = |marker: &str| heads.lock().unwrap().iter().find(|h| h.contains(&format!("/{marker} "))).cloned();

    cp.ternctl_stdin(&["apply", "-f", "-"], &policy("")).ok();
    let head = eventually(WAIT, "the callee's request by default", || {
        call("first");
        seen("first").ok_or_else(|| "not yet".to_string())
    });
    assert!(head.contains("baggage: team=pay,marker=first"), "baggage passes by default: {head}");

    cp.ternctl_stdin(&["apply", "-f", "-"], &policy("    propagators: [w3c_tracecontext]\n")).ok();
    let mut round = 0;
    let head = eventually(WAIT, "a request without baggage once the propagators apply", || {
        round += 1;
        let marker = format!("later{round}");
        call(&marker);
        let head = seen(&marker).ok_or_else(|| "not yet".to_string())?;
        (!head.contains("baggage:")).then_some(head).ok_or_else(|| "baggage still passes".to_string())
    });
    assert!(head.contains("traceparent:"), "trace context still propagates: {head}");
}

/// Datadog's trace intake on a free port: the spans of every msgpack
/// payload POSTed or PUT to `/v0.4/traces`, as (service, trace_id, span_id,
/// parent_id).
type DatadogSpans = Arc<Mutex<Vec<(String, u64, u64, u64)>>>;

async fn datadog_intake() -> (u16, DatadogSpans) {
    let spans: DatadogSpans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let store = spans.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
        let store = store.clone();
        async move {
            if uri.path() == "/v0.4/traces" {
                store.lock().unwrap().extend(decode_traces(&body));
            }
            axum::Json(serde_json::json!({"rate_by_service": {}}))
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, spans)
}

/// A v0.4 payload: an array of traces, each an array of span maps.
fn decode_traces(body: &[u8]) -> Vec<(String, u64, u64, u64)> {
    let Ok(value) = rmpv::decode::read_value(&mut &body[..]) else { return Vec::new() };
    let field = |span: &rmpv::Value, key: &str| {
        span.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v.clone())
    };
    let number = |span: &rmpv::Value, key: &str| field(span, key).and_then(|v| v.as_u64()).unwrap_or(0);
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(rmpv::Value::as_array)
        .flatten()
        .map(|span| {
            let service = field(span, "service").and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            (service, number(span, "trace_id"), number(span, "span_id"), number(span, "parent_id"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn datadog_backend_traces_reach_a_datadog_intake() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let (intake, spans) = datadog_intake().await;
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let (to_api, _apps, _dps) = web_and_api(&cp, &dir.path().join("dps"), &envoy);
    let policy = format!(
        "type: MeshTrace\nname: datadog\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: Datadog\n        datadog:\n          url: http://127.0.0.1:{intake}\n          splitService: true\n"
    );
    cp.ternctl_stdin(&["apply", "-f", "-"], &policy).ok();

    eventually(WAIT, "web's outbound span and api's inbound span in one trace", || {
        curl(&format!("http://127.0.0.1:{to_api}/datadog-call"));
        let seen = spans.lock().unwrap().clone();
        let outbound = seen.iter().filter(|s| s.0 == "web_OUTBOUND_api");
        let joined = outbound.clone().any(|o| seen.iter().any(|i| i.0 == "api_INBOUND" && i.1 == o.1 && i.3 == o.2));
        joined.then_some(()).ok_or(format!("{seen:?}"))
    });
}
