//! Resource attributes through a real Envoy and `tern-dp`: OpenTelemetry's
//! semantic conventions from the data plane's tags and labels, and the
//! policies' `resourceAttributes` with `{{key}}` interpolation, on spans and
//! access-log records (Envoy's configuration) and metrics (`tern-dp`) at the
//! collector. An unknown interpolation key is refused at apply.

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::Collector;
use std::time::Duration;
use support::otelcol::{Forward, OtelCollector, Receiver};
use support::{eventually, free_port, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(60);

fn policies(collector_port: u16, value: &str) -> String {
    let block = format!(
        "          backendRef: {{kind: MeshOpenTelemetryBackend, name: main}}\n          resourceAttributes:\n            - {{key: team.name, value: '{{{{tag:team}}}}'}}\n            - {{key: app.id, value: '{value}'}}\n"
    );
    let policy = |kind: &str, extra: &str| {
        format!("---\ntype: {kind}\nname: {}\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n{block}{extra}", kind.to_lowercase())
    };
    format!("type: MeshOpenTelemetryBackend\nname: main\nmesh: default\nspec:\n  endpoint: {{address: 127.0.0.1, port: {collector_port}}}\n")
        + &policy("MeshTrace", "")
        + &policy("MeshAccessLog", "")
        + &policy("MeshMetric", "          refreshInterval: 1s\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_attributes_reach_the_collector_on_every_signal() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start().await;
    // The OpenTelemetry Collector in front of the recording one: what Envoy
    // and tern-dp send must pass it.
    let otelcol = OtelCollector::start(dir.path(), &[Receiver::default()], collector.port, Forward::Synchronous);
    let cp = ControlPlane::start(&dir.path().join("cp"));

    let refused = cp.ternctl_stdin(&["apply", "-f", "-"], &policies(otelcol.grpc(), "{{nope}}"));
    assert_ne!(refused.code, 0, "an unknown interpolation key is refused");
    assert!(
        refused.stderr.contains("resourceAttributes[1].value: unknown interpolation key \"nope\""),
        "{}",
        refused.stderr
    );
    cp.ternctl_stdin(&["apply", "-f", "-"], &policies(otelcol.grpc(), "{{kuma.io/service}}-{{version}}")).ok();

    let (inbound, app, admin) = (free_port(), free_port(), free_port());
    let _app = support::demo_app(app, "web ok", None);
    let yaml = support::sidecar_dataplane("default", "web", inbound, app, admin).replace(
        "        kuma.io/protocol: http\n",
        "        kuma.io/protocol: http\n        version: v3\n        team: pay\n",
    );
    let _dp = DataPlane::start(&cp, &dir.path().join("dps"), "web", &yaml, &[], &["--envoy-binary", envoy.as_str()]);
    let url = format!("http://127.0.0.1:{inbound}/resource");
    let wanted = [("team.name", "pay"), ("app.id", "web-v3"), ("service.version", "v3"), ("kuma.mesh", "default")];
    for signal in ["traces", "logs", "metrics"] {
        eventually(WAIT, &format!("the resource attributes on {signal}"), || {
            let _ = std::process::Command::new("curl").args(["-s", "-m", "5", "-o", "/dev/null", &url]).status();
            let seen = collector.with(|r| r.resources.clone());
            let has = |k: &str, v: &str| seen.contains(&(signal.to_string(), k.to_string(), v.to_string()));
            wanted.iter().all(|(k, v)| has(k, v)).then_some(()).ok_or(format!("{seen:?}"))
        });
    }
    // host.name stays on the host: tern-dp adds it to metrics, hands it to
    // Envoy's environment resource detector for spans, and adds it to the
    // resource of the access-log requests passing through its pipe.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname").trim().to_string();
    let seen = collector.with(|r| r.resources.clone());
    for signal in ["traces", "logs", "metrics"] {
        let want = (signal.to_string(), "host.name".to_string(), host.clone());
        assert!(seen.contains(&want), "host.name {host} on {signal}: {seen:?}");
    }
}
