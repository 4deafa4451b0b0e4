//! Parent-based sampling through a real Envoy: a caller's sampling decision
//! in `traceparent` is honoured (an unsampled parent yields no span even at
//! `overall: 100`, a sampled one yields its span even at `overall: 0`), and
//! without a parent `sampling.overall` decides.

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::Collector;
use std::time::Duration;
use support::otelcol::{Forward, OtelCollector, Receiver};
use support::{eventually, free_port, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(60);

fn trace_policy(collector_port: u16, overall: u32) -> String {
    format!(
        "type: MeshOpenTelemetryBackend\nname: main\nmesh: default\nspec:\n  endpoint: {{address: 127.0.0.1, port: {collector_port}}}\n---\ntype: MeshTrace\nname: traces\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: main}}\n    sampling:\n      overall: {overall}\n"
    )
}

/// A request to `url` carrying a `traceparent` for `trace_id` with `flags`.
fn call(url: &str, trace_id: &str, flags: &str) {
    let header = format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-{flags}");
    let _ = std::process::Command::new("curl").args(["-s", "-m", "5", "-o", "/dev/null", "-H", &header, url]).status();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_parents_decision_wins_and_overall_decides_without_one() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start().await;
    // The OpenTelemetry Collector in front of the recording one: what Envoy
    // and tern-dp send must pass it.
    let otelcol = OtelCollector::start(dir.path(), &[Receiver::default()], collector.port, Forward::Synchronous);
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let (inbound, app, admin) = (free_port(), free_port(), free_port());
    let _app = support::demo_app(app, "web ok", None);
    let yaml = support::sidecar_dataplane("default", "web", inbound, app, admin);
    let _dp = DataPlane::start(&cp, &dir.path().join("dps"), "web", &yaml, &[], &["--envoy-binary", envoy.as_str()]);
    let url = format!("http://127.0.0.1:{inbound}/sampled");
    let traces = || collector.with(|r| r.span_records.iter().map(|s| hex(&s.trace_id)).collect::<Vec<_>>());
    let ours = |t: &String| t.ends_with("f92f3577b34da6a3ce929d0e");
    let mut round = 0u32;
    let mut sampled_parent = || {
        round += 1;
        let id = format!("{round:08x}f92f3577b34da6a3ce929d0e");
        call(&url, &id, "01");
        id
    };

    // overall: 0, the only sampling ever applied. A sampled parent yields
    // its span (once the tracer is configured); requests without a parent
    // yield none: every span that arrives carries one of our trace IDs.
    cp.ternctl_stdin(&["apply", "-f", "-"], &trace_policy(otelcol.grpc(), 0)).ok();
    eventually(WAIT, "a sampled parent's span at overall 0", || {
        sampled_parent();
        let seen = traces();
        seen.iter().any(ours).then_some(()).ok_or(format!("{} spans", seen.len()))
    });
    for _ in 0..5 {
        let _ = std::process::Command::new("curl").args(["-s", "-m", "5", "-o", "/dev/null", &url]).status();
    }
    let last = sampled_parent();
    eventually(WAIT, "the span after the parentless requests", || {
        traces().contains(&last).then_some(()).ok_or_else(|| "not yet".to_string())
    });
    let all = traces();
    assert!(all.iter().all(ours), "without a parent, overall 0 samples nothing: {all:?}");

    // overall: 100. Once parentless requests are traced, an unsampled parent
    // yields no span; a sampled one sent after it shows the exports caught up.
    cp.ternctl_stdin(&["apply", "-f", "-"], &trace_policy(otelcol.grpc(), 100)).ok();
    eventually(WAIT, "parentless requests traced at overall 100", || {
        let _ = std::process::Command::new("curl").args(["-s", "-m", "5", "-o", "/dev/null", &url]).status();
        let seen = traces();
        seen.iter().any(|t| !ours(t)).then_some(()).ok_or(format!("{} spans", seen.len()))
    });
    let unsampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    call(&url, unsampled, "00");
    let last = sampled_parent();
    eventually(WAIT, "the sampled parent's span at overall 100", || {
        traces().contains(&last).then_some(()).ok_or_else(|| "not yet".to_string())
    });
    assert!(!traces().iter().any(|t| t == unsampled), "an unsampled parent yields no span at overall 100");
}
