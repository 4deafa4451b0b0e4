//! The control plane's own traces (`TERN_TRACING_OPENTELEMETRY_ENABLED`):
//! one `ternctl apply` becomes one trace at the collector, its request span
//! continued by the reconcile pass and that by the xDS pushes to a real Envoy.

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::{Collector, SpanRecord};
use std::process::Command;
use std::time::Duration;
use support::{eventually, free_port, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(60);

fn attribute<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
    span.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Whether `child` continues `cause`: as its parent, or through a link.
fn continues(child: &SpanRecord, cause: &SpanRecord) -> bool {
    let parent = child.trace_id == cause.trace_id && child.parent_span_id == cause.span_id;
    parent || child.links.iter().any(|(t, s)| *t == cause.trace_id && *s == cause.span_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_apply_is_traced_through_the_reconcile_pass_to_the_xds_push() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start().await;
    let endpoint = format!("http://{}", collector.address());
    let env = [
        ("TERN_TRACING_OPENTELEMETRY_ENABLED", "true"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let cp = ControlPlane::start_env(&dir.path().join("cp"), &[], &env);
    let (inbound, app, admin) = (free_port(), free_port(), free_port());
    let _app = support::demo_app(app, "web ok", None);
    let yaml = support::sidecar_dataplane("default", "web", inbound, app, admin);
    let _dp = DataPlane::start(&cp, &dir.path().join("dps"), "web", &yaml, &[], &["--envoy-binary", envoy.as_str()]);
    eventually(WAIT, "Envoy's first listener push traced", || {
        let pushed = collector.with(|r| r.spans.iter().any(|n| n == "xds push Listener"));
        pushed.then_some(()).ok_or_else(|| cp.log_text())
    });

    // A backend and a MeshTrace: Envoy's listener gains a tracer.
    let policy = "type: MeshOpenTelemetryBackend\nname: traces\nmesh: default\nspec:\n  endpoint:\n    address: 127.0.0.1\n    port: 4317\n---\ntype: MeshTrace\nname: all\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: traces}\n";
    cp.ternctl_stdin(&["apply", "-f", "-"], policy).ok();
    let (apply, reconcile, push) = eventually(WAIT, "apply, reconcile and push linked", || {
        collector.with(|r| {
            let spans = &r.span_records;
            let apply = spans.iter().find(|s| s.name == "POST /_apply").ok_or("no apply span")?;
            let reconcile = spans
                .iter()
                .find(|s| s.name == "reconcile default" && continues(s, apply))
                .ok_or(format!("no reconcile span continues the apply: {:?}", names(spans)))?;
            let push = spans
                .iter()
                .find(|s| s.name == "xds push Listener" && s.parent_span_id == reconcile.span_id)
                .ok_or("no listener push continues the reconcile pass")?;
            Ok::<_, String>((apply.clone(), reconcile.clone(), push.clone()))
        })
    });
    assert_eq!(apply.service, "tern-cp");
    assert_eq!(attribute(&apply, "http.route"), Some("/_apply"));
    assert_eq!(attribute(&reconcile, "mesh"), Some("default"));
    assert_eq!(attribute(&push, "node"), Some("default/web"));
    assert_eq!(push.trace_id, reconcile.trace_id, "the push is in the reconcile pass's trace");

    // A caller's W3C traceparent is continued by the request's span.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .get(format!("{}/meshes", cp.api))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let wanted: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap()).collect();
    eventually(WAIT, "the caller's trace continued", || {
        let span = collector.with(|r| r.span_records.iter().find(|s| s.name == "GET /meshes").cloned());
        match span {
            Some(s) if s.trace_id == wanted && s.parent_span_id == [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7] => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    });
}

fn names(spans: &[SpanRecord]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

/// Variables tracing would read but cannot use stop `tern-cp` before it
/// serves anything, naming the variable.
#[test]
fn unusable_tracing_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("TERN_TRACING_OPENTELEMETRY_ENABLED", "true"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            &[("TERN_TRACING_OPENTELEMETRY_ENABLED", "true"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift")],
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        (&[("TERN_TRACING_OPENTELEMETRY_ENABLED", "maybe")], "tracing-opentelemetry-enabled"),
    ];
    for (env, named) in cases {
        let out = Command::new(support::TERN_CP)
            .args(["run", "--api-addr", "127.0.0.1:0", "--dp-addr", "127.0.0.1:0", "--api-tls-addr", "off"])
            .args(["--mads-addr", "off", "--metrics-addr", "off", "--data-dir"])
            .arg(dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} accepted: {stderr}");
        assert!(stderr.contains(named), "{env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("tern-cp listening"), "started anyway: {stderr}");
    }
}
