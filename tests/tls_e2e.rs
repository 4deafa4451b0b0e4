//! TLS and mTLS from the pipe to a collector, configured the way seed 000
//! says secrets should be: `OTEL_EXPORTER_OTLP_*` variables on the sidecar
//! (endpoint, CA certificate, client certificate and key, headers), none of
//! which leave the data-plane host. A wrong CA fails visibly: in the data
//! plane's delivery counts and in `ternctl inspect`.

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::{client, Collector};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{eventually, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(20);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for localhost/127.0.0.1, a client
/// certificate, and an unrelated CA; all in `dir`.
fn certificates(dir: &Path) {
    for ca in ["ca", "wrong-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "1",
                "-subj",
                &format!("/CN={ca}"),
            ],
        );
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for who in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={who}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "1",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
}

/// Test certificates in `<dir>/certs`, and a collector serving TLS that
/// requires a client certificate from the test CA.
async fn mtls_collector(dir: &Path) -> (PathBuf, Collector) {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    certificates(&certs);
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
    drop(bad);
    drop(good);
}
