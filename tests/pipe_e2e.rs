//! The OTLP pipe through the real binaries: `tern-cp` resolves the backend,
//! `tern-dp run` opens its socket, an OTLP client (as Envoy will) sends
//! spans, log records and metric points, and a real OTLP/gRPC collector
//! receives them: headers, per-signal overrides, a collector outage that is
//! buffered and retried, and drops that are counted.

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::{client, Collector};
use serde_json::Value;
use std::time::Duration;
use support::otelcol::{Forward, OtelCollector, Receiver};
use support::{eventually, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(15);

fn dataplane(mesh: &str, name: &str) -> String {
    format!(
        "type: Dataplane\nname: {name}\nmesh: {mesh}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 18080\n      servicePort: 8080\n      tags: {{kuma.io/service: {name}}}\n"
    )
}

/// A mesh with one backend at `address` for all three signals.
fn setup(mesh: &str, address: &str) -> String {
    let (host, port) = address.split_once(':').expect("host:port");
    let policy = |kind: &str| {
        format!("type: {kind}\nname: {mesh}-{}\nmesh: {mesh}\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: collector}}\n---\n", kind.to_lowercase())
    };
    format!("type: Mesh\nname: {mesh}\n---\ntype: MeshOpenTelemetryBackend\nname: collector\nmesh: {mesh}\nspec:\n  endpoint: {{address: {host}, port: {port}}}\n---\n")
        + &policy("MeshTrace")
        + &policy("MeshAccessLog")
        + &policy("MeshMetric")
}

fn socket_of(dp: &DataPlane) -> std::path::PathBuf {
    eventually(WAIT, "the plan names a socket", || {
        let plan: Value = serde_json::from_str(&std::fs::read_to_string(dp.plan_file()).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let path = plan["backends"][0]["socketPath"].as_str().ok_or_else(|| plan.to_string())?.to_string();
        std::path::Path::new(&path).exists().then(|| path.clone().into()).ok_or(path)
    })
}

fn stats(dp: &DataPlane, signal: &str) -> Value {
    let text = std::fs::read_to_string(dp.work_dir.join("otel-stats.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["backends"][0]["signals"][signal].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telemetry_flows_through_the_pipe_to_a_real_collector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut collector = Collector::start().await;
    let cp = ControlPlane::start(&dir.path().join("cp"));
    cp.ternctl_stdin(&["apply", "-f", "-"], &setup("pipe", &collector.address())).ok();
    let metrics_port = support::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let dp = DataPlane::start(
        &cp,
        &dir.path().join("dps"),
        "web-1",
        &dataplane("pipe", "web-1"),
        &[("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,authorization=Bearer%20t0ken")],
        &["--metrics-addr", &metrics_addr],
    );
    let channel = client::connect(socket_of(&dp)).await;

    client::spans(&channel, &["GET /a", "GET /b"]).await.expect("spans accepted");
    client::logs(&channel, &["200 GET /a"]).await.expect("logs accepted");
    client::gauge(&channel, 3).await.expect("metrics accepted");
    eventually(WAIT, "everything at the collector", || {
        collector
            .with(|r| (r.spans.len(), r.log_bodies.len(), r.metric_points))
            .eq(&(2, 1, 3))
            .then_some(())
            .ok_or("not yet".to_string())
    });
    collector.with(|r| {
        assert_eq!(r.spans, ["GET /a", "GET /b"]);
        assert_eq!(r.log_bodies, ["200 GET /a"]);
        assert!(r.headers.contains(&"x-tenant=acme".to_string()), "{:?}", r.headers);
        assert!(r.headers.contains(&"authorization=Bearer t0ken".to_string()), "percent-decoded: {:?}", r.headers);
    });
    assert!(!dp.log_text().contains("t0ken"), "secrets stay out of the logs");

    // The collector goes away for 10 s under steady traffic: exports wait in
    // the bounded queue, are retried, and all arrive after the restart.
    collector.stop().await;
    let outage = std::time::Instant::now();
    let mut sent = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        client::spans(&channel, &[&format!("during outage {sent}")]).await.expect("accepted into the queue");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    collector.restart().await;
    eventually(WAIT, "buffered spans delivered after the restart", || {
        let n = collector.with(|r| r.spans.iter().filter(|s| s.starts_with("during outage")).count());
        (n == sent).then_some(()).ok_or(format!("{n} of {sent}; pipe counts {}", stats(&dp, "traces")))
    });
    let total = sent as u64 + 2;
    let s = eventually(WAIT, "delivery counts", || {
        let s = stats(&dp, "traces");
        (s["exported"] == total).then(|| s.clone()).ok_or(s.to_string())
    });
    assert_eq!(s["received"], total);
    assert_eq!(s["dropped"], 0);
    assert!(s["retries"].as_u64().unwrap_or(0) > 0, "{s}");
    // The same counts for Prometheus.
    let text =
        reqwest::get(format!("http://{metrics_addr}/metrics")).await.expect("scrape").text().await.expect("text");
    let exported = format!("tern_dp_otel_exported_items_total{{backend=\"collector\",signal=\"traces\"}} {total}");
    assert!(text.contains(&exported), "{text}");
    assert!(text.contains("tern_dp_otel_dropped_items_total{backend=\"collector\",signal=\"traces\"} 0"), "{text}");
    assert!(text.contains("# TYPE tern_dp_otel_export_retries_total counter"), "{text}");
    assert!(text.contains("tern_dp_otel_queued_requests{backend=\"collector\",signal=\"traces\"} 0"), "{text}");
    assert!(text.contains("# TYPE tern_dp_otel_queued_bytes gauge"), "{text}");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_signal_override_and_counted_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs_collector = Collector::start().await;
    let traces_collector = Collector::start().await;
    let cp = ControlPlane::start(&dir.path().join("cp"));
    cp.ternctl_stdin(&["apply", "-f", "-"], &setup("split", &logs_collector.address())).ok();
    let traces_url = format!("http://{}", traces_collector.address());
    let dp = DataPlane::start(
        &cp,
        &dir.path().join("dps"),
        "web-2",
        &dataplane("split", "web-2"),
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url.as_str())],
        &["--otel-queue-requests", "2"],
    );
    let channel = client::connect(socket_of(&dp)).await;
    client::spans(&channel, &["to B"]).await.expect("spans");
    client::logs(&channel, &["to A"]).await.expect("logs");
    client::gauge(&channel, 2).await.expect("metrics");
    eventually(WAIT, "traces at B, logs and metrics at A", || {
        let b = traces_collector.with(|r| (r.spans.clone(), r.metric_points));
        let a = logs_collector.with(|r| (r.spans.clone(), r.log_bodies.clone(), r.metric_points));
        (b == (vec!["to B".to_string()], 0) && a.0.is_empty() && a.1 == ["to A"] && a.2 == 2)
            .then_some(())
            .ok_or(format!("B {b:?}, A {a:?}"))
    });
    let inspect = cp.ternctl(&["inspect", "dataplane", "web-2", "-m", "split"]).ok().stdout;
    assert!(inspect.contains("overrides endpoint"), "inspect agrees: {inspect}");

    // With the logs collector gone and a queue of two requests, the rest is refused and counted.
    let mut a = logs_collector;
    a.stop().await;
    let mut refused = 0;
    for i in 0..6 {
        if let Err(status) = client::logs(&channel, &[&format!("burst {i}")]).await {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            refused += 1;
        }
    }
    assert!(refused >= 3, "a bounded queue refuses the overflow ({refused} refused)");
    let s = eventually(WAIT, "drops counted", || {
        let s = stats(&dp, "logs");
        (s["dropped"] == refused).then(|| s.clone()).ok_or(s.to_string())
    });
    assert!(s["lastError"].as_str().is_some_and(|e| e.contains("Unavailable")), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_edit_loses_nothing_that_was_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut old = Collector::start().await;
    let new = Collector::start().await;
    let cp = ControlPlane::start(&dir.path().join("cp"));
    cp.ternctl_stdin(&["apply", "-f", "-"], &setup("drain", &old.address())).ok();
    let dp = DataPlane::start(&cp, &dir.path().join("dps"), "web-3", &dataplane("drain", "web-3"), &[], &[]);
    let channel = client::connect(socket_of(&dp)).await;

    // Queued while the old collector is down...
    old.stop().await;
    for i in 0..3 {
        client::spans(&channel, &[&format!("queued {i}")]).await.expect("queued");
    }
    // ...then the backend moves to the new collector.
    let (host, port) = new.address().split_once(':').map(|(h, p)| (h.to_string(), p.to_string())).expect("addr");
    let moved = format!("type: MeshOpenTelemetryBackend\nname: collector\nmesh: drain\nspec:\n  endpoint: {{address: {host}, port: {port}}}\n");
    cp.ternctl_stdin(&["apply", "-f", "-"], &moved).ok();
    eventually(WAIT, "the plan names the new collector", || {
        let plan = std::fs::read_to_string(dp.plan_file()).unwrap_or_default();
        plan.contains(&port).then_some(()).ok_or(plan)
    });
    let channel = eventually(WAIT, "the new pipe takes spans", || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let ch = client::connect(socket_of(&dp)).await;
                client::spans(&ch, &["after the edit"]).await.map(|_| ch).map_err(|e| e.to_string())
            })
        })
    });
    let _ = channel;
    old.restart().await;
    eventually(WAIT, "queued spans reach the old destination, new ones the new", || {
        let a = old.with(|r| r.spans.clone());
        let b = new.with(|r| r.spans.clone());
        (a.iter().filter(|s| s.starts_with("queued")).count() == 3 && b.contains(&"after the edit".to_string()))
            .then_some(())
            .ok_or(format!("old {a:?}, new {b:?}"))
    });
    let s = eventually(WAIT, "counts continue across the replacement", || {
        let s = stats(&dp, "traces");
        (s["exported"] == 4).then(|| s.clone()).ok_or(s.to_string())
    });
    assert_eq!(s["dropped"], 0, "{s}");
    old.stop().await;
}

/// `field` as a length-delimited protobuf field holding `value`.
fn len_field(field: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for mut v in [field << 3 | 2, value.len() as u64] {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    out.extend_from_slice(value);
    out
}

/// An ExportTraceServiceRequest with one span whose encoding no decoder
/// would reproduce: a field Tern does not know (number 100) and the span's
/// name written after its attributes' position. `pad` bytes of attribute.
fn raw_span_request(name: &str, pad: usize) -> Vec<u8> {
    let mut span = len_field(5, name.as_bytes()); // name
    span.extend(len_field(1, &[7; 16])); // trace_id, after the name
    span.extend(len_field(2, &[8; 8])); // span_id
    span.extend([0xa0, 0x06, 0x2a]); // field 100 (varint 42): unknown to OTLP
    let value = len_field(1, &vec![b'x'; pad]); // AnyValue.string_value
    span.extend(len_field(9, &[len_field(1, b"pad"), len_field(2, &value)].concat())); // attributes
    len_field(1, &len_field(2, &len_field(2, &span)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_pass_through_byte_for_byte_and_the_queue_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut collector = Collector::start().await;
    let cp = ControlPlane::start(&dir.path().join("cp"));
    cp.ternctl_stdin(&["apply", "-f", "-"], &setup("raw", &collector.address())).ok();
    let dp = DataPlane::start(
        &cp,
        &dir.path().join("dps"),
        "web-4",
        &dataplane("raw", "web-4"),
        &[],
        &["--otel-queue-bytes", "64K"],
    );
    let channel = client::connect(socket_of(&dp)).await;

    // What arrives is exactly what was sent: an unknown field and an unusual
    // field order survive, which a decode and re-encode would not keep.
    let sent = raw_span_request("passthrough", 10);
    client::raw_traces(&channel, sent.clone()).await.expect("accepted");
    eventually(WAIT, "the span at the collector", || {
        collector.with(|r| r.spans.clone()).contains(&"passthrough".to_string()).then_some(()).ok_or("not yet".into())
    });
    collector.with(|r| {
        let body = r.trace_bodies.iter().find(|b| b.windows(sent.len()).any(|w| w == sent.as_slice()));
        assert!(body.is_some(), "the request's bytes reached the collector unchanged: {:?}", r.trace_bodies);
    });

    // Broken framing is refused at the socket, not forwarded.
    let status = client::raw_traces(&channel, vec![0x0a, 0x40, 0x01]).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("malformed OTLP request"), "{status:?}");

    // With the collector down, the queue holds 64 KiB: requests of 20 KiB
    // are refused from the fourth on, far below the 1024-request bound.
    collector.stop().await;
    let mut accepted = 0;
    let mut refused = Vec::new();
    for i in 0..6 {
        match client::raw_traces(&channel, raw_span_request(&format!("held {i}"), 20 << 10)).await {
            Ok(()) => accepted += 1,
            Err(status) => refused.push(status),
        }
    }
    assert_eq!(accepted, 3, "64 KiB holds three 20 KiB requests: {refused:?}");
    assert!(refused
        .iter()
        .all(|s| s.code() == tonic::Code::ResourceExhausted && s.message().contains("queue is full")));
    // The queue's fill is visible: in otel-stats.json and in inspect.
    let s = eventually(WAIT, "the queue's fill in the stats", || {
        let s = stats(&dp, "traces");
        (s["queuedRequests"] == 3).then(|| s.clone()).ok_or(s.to_string())
    });
    let queued = s["queuedBytes"].as_u64().unwrap_or(0);
    assert!((3 * (20 << 10)..=64 << 10).contains(&queued), "{s}");
    eventually(WAIT, "inspect shows the queue", || {
        let t = cp.ternctl(&["inspect", "dataplane", "web-4", "-m", "raw"]).ok().stdout;
        (t.contains("QUEUED") && t.contains(&format!("3 ({:.1} KiB)", queued as f64 / 1024.0))).then_some(()).ok_or(t)
    });
    // A request larger than the whole queue can never fit, and says so.
    let status = client::raw_traces(&channel, raw_span_request("huge", 100 << 10)).await.expect_err("refused");
    assert!(status.message().contains("larger than the whole queue (65536 bytes)"), "{status:?}");

    collector.restart().await;
    eventually(WAIT, "what was held is delivered after the restart", || {
        let n = collector.with(|r| r.spans.iter().filter(|s| s.starts_with("held")).count());
        (n == 3).then_some(()).ok_or(format!("{n} of 3"))
    });
    let s = eventually(WAIT, "counts", || {
        let s = stats(&dp, "traces");
        (s["exported"] == 4 && s["dropped"] == 4 && s["queuedRequests"] == 0).then(|| s.clone()).ok_or(s.to_string())
    });
    assert_eq!(s["received"], 8, "{s}");
    assert_eq!((s["queuedRequests"].as_u64(), s["queuedBytes"].as_u64()), (Some(0), Some(0)), "{s}");
    // Once delivered, the budget is free again.
    client::raw_traces(&channel, raw_span_request("after", 20 << 10)).await.expect("room again");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_collector_gets_several_exports_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start().await;
    let cp = ControlPlane::start(&dir.path().join("cp"));
    cp.ternctl_stdin(&["apply", "-f", "-"], &setup("slow", &collector.address())).ok();
    let dp = DataPlane::start(&cp, &dir.path().join("dps"), "web-5", &dataplane("slow", "web-5"), &[], &[]);
    let channel = client::connect(socket_of(&dp)).await;

    // The collector answers nothing for now: one export at a time would
    // leave the rest queued; the pipe has four under way (MAX_IN_FLIGHT).
    collector.hold_traces(true);
    for i in 0..12 {
        client::spans(&channel, &[&format!("slow {i}")]).await.expect("queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(WAIT, "four exports under way at once", || {
        let n = collector.with(|r| r.traces_in_progress);
        (n == 4).then_some(()).ok_or(format!("{n} in progress"))
    });
    collector.hold_traces(false);
    eventually(WAIT, "everything delivered once answered", || {
        let n = collector.with(|r| r.spans.iter().filter(|s| s.starts_with("slow")).count());
        (n == 12).then_some(()).ok_or(format!("{n} of 12"))
    });
    assert_eq!(collector.with(|r| r.traces_most_in_progress), 4, "never more than four");
    let s = eventually(WAIT, "counts", || {
        let s = stats(&dp, "traces");
        (s["exported"] == 12).then(|| s.clone()).ok_or(s.to_string())
    });
    assert_eq!(s["dropped"], 0, "{s}");
}

/// A backend's `timeout` and `retry` drive the pipe, through the
/// OpenTelemetry Collector (which answers only once the collector behind it
/// has): a collector that holds every export makes each try end at the
/// backend's 500 ms timeout (with the default 10 s, no retry would happen
/// before the give-up), tries follow the backoff, and after
/// `maxElapsedTime` the batch is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backends_timeout_and_retry_policy_take_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start().await;
    let otelcol = OtelCollector::start(dir.path(), &[Receiver::default()], collector.port, Forward::Synchronous);
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let address = format!("127.0.0.1:{}", otelcol.grpc());
    let yaml = setup("patience", &address).replace(
        &format!("  endpoint: {{address: 127.0.0.1, port: {}}}\n", otelcol.grpc()),
        &format!("  endpoint: {{address: 127.0.0.1, port: {}}}\n  timeout: 500ms\n  retry: {{initialBackoff: 100ms, maxBackoff: 200ms, maxElapsedTime: 3s}}\n", otelcol.grpc()),
    );
    assert!(yaml.contains("maxElapsedTime"), "{yaml}");
    cp.ternctl_stdin(&["apply", "-f", "-"], &yaml).ok();
    let dp = DataPlane::start(&cp, &dir.path().join("dps"), "web-6", &dataplane("patience", "web-6"), &[], &[]);
    let channel = client::connect(socket_of(&dp)).await;

    collector.hold_traces(true);
    client::spans(&channel, &["never answered"]).await.expect("queued");
    let s = eventually(WAIT, "the batch given up after maxElapsedTime", || {
        let s = stats(&dp, "traces");
        (s["dropped"] == 1).then(|| s.clone()).ok_or(s.to_string())
    });
    assert!(s["retries"].as_u64().unwrap_or(0) >= 2, "tries ended at the 500 ms timeout and were retried: {s}");
    assert_eq!(s["exported"], 0, "{s}");
    assert!(collector.with(|r| r.traces_most_in_progress) >= 2, "each retry reached the collector");
    collector.hold_traces(false);
}
