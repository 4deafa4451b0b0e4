//! Bad input through the real binaries: every invalid case is refused with
//! the exact field and message by the API and by `ternctl`, with a non-zero
//! exit, and a multi-document file with one bad document changes nothing.

mod support;

use serde_json::{json, Value};
use support::{ControlPlane, Run};

fn start() -> (ControlPlane, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    (ControlPlane::start(dir.path()), dir)
}

/// Invalid MeshOpenTelemetryBackend specs, and the violation each must produce.
const MOTB_CASES: &[(&str, &str, &str)] = &[
    ("endpoint: {port: 70000}", "spec.endpoint.port", "port must be a valid (1-65535)"),
    ("endpoint: {path: /x}\nprotocol: grpc", "spec.endpoint.path", "must not be set when protocol is grpc"),
    ("endpoint: {path: x}\nprotocol: http", "spec.endpoint.path", "must start with /"),
    ("endpoint: {path: '/x?y'}\nprotocol: http", "spec.endpoint.path", "must not contain query or fragment"),
    ("endpoint: {address: 'bad host!'}", "spec.endpoint.address", "address has to be a valid IP or hostname"),
    ("protocol: tcp", "spec.protocol", r#""protocol" must be one of ["grpc", "http"]"#),
    ("env: {mode: Sometimes}", "spec.env.mode", r#""mode" must be one of ["Disabled", "Optional", "Required"]"#),
    ("env: {precedence: Maybe}", "spec.env.precedence", r#""precedence" must be one of ["ExplicitFirst", "EnvFirst"]"#),
];

fn motb_yaml(name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("type: MeshOpenTelemetryBackend\nname: {name}\nmesh: default\nspec:\n{spec}")
}

async fn put(
    cp: &ControlPlane,
    path: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new().put(format!("{}{path}", cp.api)).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("API reachable");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.unwrap_or(Value::Null), headers)
}

fn yaml_to_json(yaml: &str) -> Value {
    let docs = tern_model::parse_documents(yaml).expect("yaml");
    docs[0].value.clone()
}

#[test]
fn cli_reports_each_invalid_backend_exactly() {
    let (cp, _dir) = start();
    for (spec, field, message) in MOTB_CASES {
        let run = cp.ternctl_stdin(&["apply", "-f", "-"], &motb_yaml("b", spec)).fails();
        assert_eq!(run.code, 1);
        assert!(run.stderr.contains(&format!("{field}: {message}")), "{spec}: {}", run.stderr);
        assert!(run.stderr.contains("nothing was applied"), "{}", run.stderr);
    }
    let run = cp.ternctl(&["get", "motb", "b"]).fails();
    assert!(run.stderr.contains(r#"MeshOpenTelemetryBackend "b" not found in mesh "default""#), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_reports_each_invalid_backend_exactly() {
    let (cp, _dir) = tokio::task::spawn_blocking(start).await.expect("start");
    for (spec, field, message) in MOTB_CASES {
        let body = yaml_to_json(&motb_yaml("b", spec));
        let (status, err, _) = put(&cp, "/meshes/default/meshopentelemetrybackends/b", body, &[]).await;
        assert_eq!(status, 400, "{spec}");
        assert_eq!(err["title"], "Failed to create a resource");
        assert_eq!(err["detail"], "Resource is not valid");
        assert_eq!(err["invalid_parameters"], json!([{"field": field, "reason": message}]), "{spec}");
        assert_eq!(err["causes"], json!([{"field": field, "message": message}]), "{spec}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_lists_every_violation_and_checks_url_against_body() {
    let (cp, _dir) = tokio::task::spawn_blocking(start).await.expect("start");
    let body = yaml_to_json(&motb_yaml("b", "endpoint: {port: 0, address: 'x y'}\nprotocol: tcp\nenv: {mode: No}"));
    let (status, err, _) = put(&cp, "/meshes/default/meshopentelemetrybackends/b", body, &[]).await;
    assert_eq!(status, 400);
    let fields: Vec<&str> = err["invalid_parameters"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["spec.endpoint.address", "spec.endpoint.port", "spec.protocol", "spec.env.mode"]);

    let (status, err, _) =
        put(&cp, "/meshes/default/meshopentelemetrybackends/b", json!({"name": "other", "spec": {}}), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(err["title"], "Could not process a resource");
    assert_eq!(
        err["invalid_parameters"],
        json!([{"field": "name", "reason": "name from the URL has to be the same as in body"}])
    );

    let (status, err, _) = put(&cp, "/meshes/nowhere/meshopentelemetrybackends/b", json!({"spec": {}}), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(err["invalid_parameters"], json!([{"field": "mesh", "reason": "mesh of name nowhere is not found"}]));

    let (status, err, _) = put(&cp, "/meshes/default/dataplane-insights/x", json!({}), &[]).await;
    assert_eq!(status, 405, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_update_is_refused_with_409() {
    let (cp, _dir) = tokio::task::spawn_blocking(start).await.expect("start");
    let path = "/meshes/default/meshopentelemetrybackends/b";
    let (status, body, headers) = put(&cp, path, json!({"spec": {"endpoint": {"port": 4317}}}), &[]).await;
    assert_eq!((status, body), (201, json!({})));
    let v1 = headers["etag"].to_str().expect("etag").to_string();
    let (status, _, headers) =
        put(&cp, path, json!({"spec": {"endpoint": {"port": 4318}}}), &[("If-Match", &v1)]).await;
    assert_eq!(status, 200);
    assert_ne!(headers["etag"].to_str().expect("etag"), v1);
    let (status, err, _) = put(&cp, path, json!({"spec": {"endpoint": {"port": 9999}}}), &[("If-Match", &v1)]).await;
    assert_eq!(status, 409);
    assert_eq!(err["title"], "Conflict");
    let (status, _, _) = put(&cp, path, json!({"spec": {}}), &[("If-None-Match", "*")]).await;
    assert_eq!(status, 409, "create-only refuses an existing resource");
    let got: Value = reqwest::get(format!("{}{path}", cp.api)).await.expect("get").json().await.expect("json");
    assert_eq!(got["spec"], json!({"endpoint": {"port": 4318}}), "the stale write did not land");
    assert_eq!(got["type"], "MeshOpenTelemetryBackend");
    assert!(got["creationTime"].is_string() && got["modificationTime"].is_string());
}

#[test]
fn one_bad_document_changes_nothing() {
    let (cp, _dir) = start();
    cp.ternctl_stdin(&["apply", "-f", "-"], &motb_yaml("keep", "endpoint: {port: 4317}")).ok();
    let file = format!(
        "{}---\n{}---\n{}",
        motb_yaml("keep", "endpoint: {port: 5555}"),
        motb_yaml("fresh", "{}"),
        motb_yaml("broken", "protocol: tcp")
    );
    let run = cp.ternctl_stdin(&["apply", "-f", "-"], &file).fails();
    assert!(
        run.stderr
            .contains(r#"document 3, line 13 (MeshOpenTelemetryBackend "broken") not valid; nothing was applied"#),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(r#"document 3, line 13: spec.protocol: "protocol" must be one of ["grpc", "http"]"#),
        "{}",
        run.stderr
    );
    let keep = cp.ternctl(&["get", "motb", "keep", "-o", "json"]).ok().stdout;
    assert!(keep.contains("4317") && !keep.contains("5555"), "{keep}");
    cp.ternctl(&["get", "motb", "fresh"]).fails();
    // The same file without the bad document goes in whole.
    let good = format!("{}---\n{}", motb_yaml("keep", "endpoint: {port: 5555}"), motb_yaml("fresh", "{}"));
    let run = cp.ternctl_stdin(&["apply", "-f", "-"], &good).ok();
    assert_eq!(run.stdout, "MeshOpenTelemetryBackend \"keep\" in mesh default: updated\nMeshOpenTelemetryBackend \"fresh\" in mesh default: created\n");
}

#[test]
fn policies_are_checked_and_inline_endpoints_warn() {
    let (cp, _dir) = start();
    // `otel` is the flow-style body of the openTelemetry block.
    let policy = |kind: &str, otel: &str| {
        format!("type: {kind}\nname: p\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry: {otel}\n")
    };
    for kind in ["MeshTrace", "MeshMetric", "MeshAccessLog"] {
        let at = "spec.default.backends[0].openTelemetry";
        let cases: &[(&str, String)] = &[
            (
                "{backendRef: {kind: MeshService, name: x}}",
                format!(r#"{at}.backendRef.kind: "kind" must be one of ["MeshOpenTelemetryBackend"]"#),
            ),
            (
                "{backendRef: {kind: MeshOpenTelemetryBackend}}",
                format!("{at}.backendRef: backendRef must have exactly one defined: name, labels"),
            ),
            (
                "{backendRef: {kind: MeshOpenTelemetryBackend, name: a, labels: {x: y}}}",
                format!("{at}.backendRef: backendRef must have only one type defined: name, labels"),
            ),
            (
                "{endpoint: 'c:4317', backendRef: {kind: MeshOpenTelemetryBackend, name: a}}",
                format!("{at}: openTelemetry must have only one type defined: endpoint, backendRef"),
            ),
            ("{}", format!("{at}: openTelemetry must have exactly one defined: endpoint, backendRef")),
        ];
        for (otel, expected) in cases {
            let run = cp.ternctl_stdin(&["apply", "-f", "-"], &policy(kind, otel)).fails();
            assert!(run.stderr.contains(expected.as_str()), "{kind} {otel}:\n{}", run.stderr);
        }
        let run = cp.ternctl_stdin(&["apply", "-f", "-"], &policy(kind, "{endpoint: 'otel-collector:4317'}")).ok();
        assert!(
            run.stderr.contains("Warning: ") && run.stderr.contains("openTelemetry.endpoint is deprecated, use openTelemetry.backendRef with a MeshOpenTelemetryBackend resource instead"),
            "{kind}: {}",
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_returns_the_deprecation_warning() {
    let (cp, _dir) = tokio::task::spawn_blocking(start).await.expect("start");
    let body = json!({"spec": {"targetRef": {"kind": "Mesh"}, "default": {"backends": [
        {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel-collector:4317"}}]}}});
    let (status, body, _) = put(&cp, "/meshes/default/meshtraces/legacy", body, &[]).await;
    assert_eq!(status, 201);
    assert_eq!(
        body,
        json!({"warnings": ["openTelemetry.endpoint is deprecated, use openTelemetry.backendRef with a MeshOpenTelemetryBackend resource instead"]})
    );
}

#[test]
fn motb_outside_the_system_namespace_is_refused() {
    let (cp, _dir) = start();
    let doc = "apiVersion: kuma.io/v1alpha1\nkind: MeshOpenTelemetryBackend\nmetadata:\n  name: b\n  namespace: team-a\n  labels:\n    kuma.io/mesh: default\n";
    let run = cp.ternctl_stdin(&["apply", "-f", "-"], doc).fails();
    assert!(
        run.stderr.contains("metadata.namespace: resource type MeshOpenTelemetryBackend can be created only in the system namespace:kuma-system"),
        "{}",
        run.stderr
    );
}

#[test]
fn cli_errors_are_one_clear_paragraph() {
    let (cp, _dir) = start();
    let Run { stderr, code, .. } = cp.ternctl_stdin(&["apply", "-f", "-"], "type: Mesh\nname: x\nlabels: [1,\n");
    assert_eq!(code, 1);
    assert!(stderr.starts_with("Error: stdin is not valid YAML: line "), "{stderr}");
    assert!(stderr.contains(", column "), "{stderr}");

    let run = cp.ternctl(&["get", "widgets"]).fails();
    assert!(run.stderr.contains(r#"unknown resource type "widgets". Known types: meshes (mesh); "#), "{}", run.stderr);
    assert!(run.stderr.contains("meshopentelemetrybackends (meshopentelemetrybackend, motb)"), "{}", run.stderr);

    let run = support::ternctl_with("http://127.0.0.1:9", &["get", "motb"], None, &[]).fails();
    assert!(run.stderr.contains("cannot reach the Tern API at http://127.0.0.1:9"), "{}", run.stderr);
    assert!(run.stderr.contains("Is tern-cp running?"), "{}", run.stderr);

    let run = cp
        .ternctl_stdin(
            &["apply", "-f", "-"],
            "type: MeshTrace\nname: t\nmesh: elsewhere\nspec:\n  default:\n    backends: []\n",
        )
        .fails();
    assert!(run.stderr.contains("mesh: mesh of name elsewhere is not found"), "{}", run.stderr);

    // The same apply creating the mesh first is fine.
    let doc = "type: Mesh\nname: elsewhere\n---\ntype: MeshTrace\nname: t\nmesh: elsewhere\nspec:\n  default:\n    backends: []\n";
    cp.ternctl_stdin(&["apply", "-f", "-"], doc).ok();
    let out = cp.ternctl(&["get", "mtr", "-m", "elsewhere"]).ok().stdout;
    assert!(out.contains("elsewhere") && out.contains(" t "), "{out}");

    let run = cp.ternctl(&["delete", "mtr", "t", "-m", "elsewhere"]).ok();
    assert_eq!(run.stdout, "MeshTrace \"t\" in mesh elsewhere: deleted\n");
    cp.ternctl(&["delete", "mtr", "t", "-m", "elsewhere"]).fails();
    let run = cp.ternctl(&["get", "mtr", "-m", "elsewhere"]).ok();
    assert_eq!(run.stderr, "No meshtraces found in mesh elsewhere.\n");
}

#[test]
fn tern_dp_checks_a_dataplane_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("dp.yaml");
    std::fs::write(&good, "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 8080\n      servicePort: 80\n      tags:\n        kuma.io/service: web\n").expect("write");
    let out = std::process::Command::new(support::tern_dp())
        .args(["validate", "--dataplane-file"])
        .arg(&good)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kuma.io/service: web"));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        // Tags without kuma.io/service (an inbound without tags is valid, as in Kuma).
        "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 0\n      tags: {version: v1}\n",
    )
    .expect("write");
    let out = std::process::Command::new(support::tern_dp())
        .args(["validate", "--dataplane-file"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("networking.inbound[0].port: port must be in the range [1, 65535]"), "{err}");
    assert!(err.contains(r#"networking.inbound[0].tags["kuma.io/service"]: tag has to exist"#), "{err}");
}
