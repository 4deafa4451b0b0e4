//! Data-plane identity, TLS and supervision through the real binaries:
//! a second process cannot act as an existing data plane (bootstrap, plan,
//! delivery, ADS), tern-dp and Envoy reach the control plane over TLS with
//! a generated CA, tern-cp refuses unauthenticated ports off loopback, and
//! tern-dp takes Envoy down with it.

mod support;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use serde_json::{json, Value};
use std::time::Duration;
use support::{envoy_binary, envoys_in, eventually, free_port, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(30);

fn dataplane(name: &str, admin: u16) -> String {
    format!(
        "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  admin:\n    port: {admin}\n  inbound:\n    - port: {}\n      servicePort: {}\n      tags:\n        kuma.io/service: {name}\n",
        free_port(),
        free_port()
    )
}

fn token(cp: &ControlPlane, name: &str, extra: &[&str]) -> String {
    std::fs::read_to_string(cp.dataplane_token("default", name, extra)).expect("token file")
}

async fn status(req: reqwest::RequestBuilder, token: Option<&str>) -> u16 {
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    req.send().await.expect("request").status().as_u16()
}

/// Opens an ADS stream as `node` with `token`; the gRPC code it ends with.
async fn ads_as(dp: &str, node: &str, token: Option<&str>) -> tonic::Code {
    let mut client = AggregatedDiscoveryServiceClient::connect(dp.to_string()).await.expect("connect");
    let first = DiscoveryRequest {
        node: Some(Node { id: node.into(), ..Default::default() }),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    };
    let mut request = tonic::Request::new(tokio_stream::iter(vec![first]).chain(tokio_stream::pending()));
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("metadata"));
    }
    match client.stream_aggregated_resources(request).await {
        Err(status) => status.code(),
        Ok(response) => {
            let mut stream = response.into_inner();
            match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                Ok(Err(status)) => status.code(),
                Ok(Ok(Some(_))) => tonic::Code::Ok,
                _ => tonic::Code::Unknown,
            }
        }
    }
}

use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_process_cannot_act_as_an_existing_data_plane() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("cp");
    let cp = tokio::task::spawn_blocking(move || ControlPlane::start(&p)).await.expect("start");
    let yaml = dataplane("web-1", free_port());
    let (root, y) = (dir.path().to_path_buf(), yaml.clone());
    let cp = std::sync::Arc::new(cp);
    let c = cp.clone();
    let real = tokio::task::spawn_blocking(move || {
        DataPlane::start(&c, &root, "web-1", &y, &[], &["--envoy-binary", &envoy_binary()])
    })
    .await
    .expect("dp");
    let runtime_url = format!("{}/meshes/default/dataplanes/web-1/_runtime", cp.api);
    let http = reqwest::Client::new();
    eventually(WAIT, "the real data plane has its plan and Envoy accepted its config", || {
        let acked =
            std::process::Command::new("curl").args(["-s", &runtime_url]).output().map_err(|e| e.to_string())?;
        let view: Value = serde_json::from_slice(&acked.stdout).map_err(|e| e.to_string())?;
        (real.plan_file().exists() && view["xds"]["ackedVersion"].is_string()).then_some(()).ok_or(view.to_string())
    });

    let (c1, c2) = (cp.clone(), cp.clone());
    let other = tokio::task::spawn_blocking(move || token(&c1, "web-2", &[])).await.expect("token");
    let expiring =
        tokio::task::spawn_blocking(move || token(&c2, "web-1", &["--valid-for", "1s"])).await.expect("token");
    let revoked = {
        let c = cp.clone();
        tokio::task::spawn_blocking(move || {
            let file = c.dataplane_token("default", "web-1", &[]);
            c.ternctl(&["revoke", "dataplane-token", "--token-file", file.to_str().expect("utf8")]).ok();
            std::fs::read_to_string(file).expect("token")
        })
        .await
        .expect("revoke")
    };
    tokio::time::sleep(Duration::from_millis(2100)).await; // the 1s token expires; the revocation is seen

    let evil = json!({"mesh": "default", "name": "web-1", "version": "0", "workDir": "/tmp/evil", "features": []});
    let bootstrap = || http.post(format!("{}/bootstrap", cp.dp)).json(&evil);
    let plan = || http.get(format!("{}/otel/default/web-1?timeout=1", cp.dp));
    let report = json!({"backends": [{"name": "x\u{1b}[2J", "signals": {}}]});
    let delivery = || http.post(format!("{}/delivery/default/web-1", cp.dp)).json(&report);
    for (what, t, want) in [
        ("no token", None, 401),
        ("another data plane's token", Some(other.as_str()), 403),
        ("an expired token", Some(expiring.as_str()), 401),
        ("a revoked token", Some(revoked.as_str()), 401),
        ("a forged token", Some("eyJhbGciOiJIUzI1NiIsImtpZCI6IjEifQ.e30.AAAA"), 401),
    ] {
        assert_eq!(status(bootstrap(), t).await, want, "bootstrap with {what}");
        assert_eq!(status(plan(), t).await, want, "plan with {what}");
        assert_eq!(status(delivery(), t).await, want, "delivery with {what}");
    }
    let node = "default/web-1";
    assert_eq!(ads_as(&cp.dp, node, None).await, tonic::Code::Unauthenticated, "ADS without a token");
    assert_eq!(ads_as(&cp.dp, node, Some(&other)).await, tonic::Code::PermissionDenied, "ADS as another node");
    assert_eq!(ads_as(&cp.dp, node, Some(&revoked)).await, tonic::Code::Unauthenticated, "ADS with a revoked token");

    // The real data plane is untouched: its work directory, its counts, its Envoy.
    let insight = cp.ternctl(&["get", "dataplane-insight", "web-1", "-o", "json"]).ok().stdout;
    let insight: Value = serde_json::from_str(&insight).expect("json");
    let session = if insight["spec"].is_object() { &insight["spec"]["session"] } else { &insight["session"] };
    assert_eq!(session["workDir"], json!(real.work_dir.display().to_string()), "{insight}");
    assert_eq!(
        session["features"],
        json!(["feature-tcp-access-log-via-tern-dp", "feature-otel-via-kuma-dp"]),
        "{insight}"
    );
    let view: Value = http.get(&runtime_url).send().await.expect("runtime").json().await.expect("json");
    assert!(!view.to_string().contains("x\\u001b"), "a forged delivery report never lands: {view}");
    assert!(real.log_text().contains("registered with the control plane"));
    assert_eq!(envoys_in(&real.work_dir).len(), 1, "the real Envoy still runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_plane_and_envoy_reach_the_control_plane_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("cp");
    let cp = tokio::task::spawn_blocking(move || ControlPlane::start_args(&p, None, "127.0.0.1", &["--dp-tls"]))
        .await
        .expect("start");
    assert!(cp.dp.starts_with("https://"), "{}", cp.dp);
    for private in ["tls/ca.key", "tern.db"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(cp.data_dir.join(private)).expect("file").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{private} is private");
    }

    let yaml = dataplane("web-1", free_port());
    let cp = std::sync::Arc::new(cp);
    let (c, root, y) = (cp.clone(), dir.path().to_path_buf(), yaml.clone());
    let dp = tokio::task::spawn_blocking(move || {
        DataPlane::start(&c, &root, "web-1", &y, &[], &["--envoy-binary", &envoy_binary()])
    })
    .await
    .expect("dp");
    let runtime_url = format!("{}/meshes/default/dataplanes/web-1/_runtime", cp.api);
    let http = reqwest::Client::new();
    let mut acked = false;
    for _ in 0..300 {
        let view: Value = http.get(&runtime_url).send().await.expect("runtime").json().await.expect("json");
        if dp.plan_file().exists() && view["xds"]["ackedVersion"].is_string() {
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(acked, "tern-dp got its plan and Envoy accepted its config over TLS\n{}", dp.log_text());

    // ternctl over HTTPS with the generated CA.
    let listed = support::ternctl_with(
        &cp.api_tls,
        &["get", "meshes"],
        None,
        &[("TERN_CA_CERT", cp.ca.to_str().expect("utf8"))],
    );
    assert!(listed.ok().stdout.contains("default"));
    let untrusted = support::ternctl_with(&cp.api_tls, &["get", "meshes"], None, &[]).fails();
    assert!(untrusted.stderr.contains("--ca-cert"), "{}", untrusted.stderr);

    // A data plane that trusts another CA stops with a clear error.
    let other_ca = dir.path().join("other-ca");
    std::fs::create_dir_all(&other_ca).expect("dir");
    let other = ControlPlane::start_args(&other_ca, None, "127.0.0.1", &["--dp-tls"]);
    let (c, root) = (cp.clone(), dir.path().to_path_buf());
    let wrong = other.ca.to_str().expect("utf8").to_string();
    let y2 = dataplane("web-2", free_port());
    let out = tokio::task::spawn_blocking(move || {
        let dp = DataPlane::start(&c, &root, "web-2", &y2, &[], &["--ca-cert-file", &wrong]);
        eventually(WAIT, "the TLS failure is logged", || {
            let log = dp.log_text();
            log.contains("certificate").then_some(()).ok_or(log)
        });
        dp.log_text()
    })
    .await
    .expect("dp");
    assert!(out.contains("UnknownIssuer") || out.contains("unknown issuer") || out.contains("certificate"), "{out}");
}

#[test]
fn the_control_plane_refuses_unauthenticated_ports_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, says) in [
        (vec!["--dp-addr", "0.0.0.0:0", "--dp-auth", "none"], "--dp-auth none"),
        (vec!["--api-addr", "0.0.0.0:0"], "--api-tls-addr"),
    ] {
        let out = std::process::Command::new(support::TERN_CP)
            .args(["run", "--api-tls-addr", "off", "--data-dir"])
            .arg(dir.path())
            .args(&args)
            .output()
            .expect("tern-cp runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_dies_with_tern_dp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("cp");
    let cp = std::sync::Arc::new(tokio::task::spawn_blocking(move || ControlPlane::start(&p)).await.expect("start"));

    // SIGKILL: no chance to clean up, yet Envoy goes too.
    let (c, root, y) = (cp.clone(), dir.path().to_path_buf(), dataplane("killed", free_port()));
    let killed = tokio::task::spawn_blocking(move || {
        DataPlane::start(&c, &root, "killed", &y, &[], &["--envoy-binary", &envoy_binary()])
    })
    .await
    .expect("dp");
    let work = killed.work_dir.clone();
    eventually(WAIT, "Envoy runs", || (envoys_in(&work).len() == 1).then_some(()).ok_or("no Envoy yet".to_string()));
    let _ = std::process::Command::new("kill").args(["-KILL", &killed.pid().to_string()]).status();
    eventually(WAIT, "Envoy is gone after tern-dp's SIGKILL", || {
        let left = envoys_in(&work);
        left.is_empty().then_some(()).ok_or(format!("still running: {left:?}"))
    });

    // A part that fails (the metrics address taken) stops everything.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let log = fails_with_envoy(&cp, dir.path(), "taken", vec!["--metrics-addr".into(), addr]).await;
    assert!(log.contains("--metrics-addr") && log.contains("in use"), "{log}");
    drop(taken);

    // A refused bootstrap (another data plane's token) while Envoy runs.
    let c = cp.clone();
    let wrong =
        tokio::task::spawn_blocking(move || c.dataplane_token("default", "someone-else", &[])).await.expect("token");
    let token = wrong.to_str().expect("utf8").to_string();
    let log = fails_with_envoy(&cp, dir.path(), "refused", vec!["--dataplane-token-file".into(), token]).await;
    assert!(log.contains("refused this data plane") && log.contains("someone-else"), "{log}");
}

/// Starts `tern-dp` with Envoy and `extra` flags, expects it to exit 1 on its
/// own with no Envoy left, and returns its log.
async fn fails_with_envoy(
    cp: &std::sync::Arc<ControlPlane>,
    root: &std::path::Path,
    name: &str,
    extra: Vec<String>,
) -> String {
    let (c, root, y, n) = (cp.clone(), root.to_path_buf(), dataplane(name, free_port()), name.to_string());
    let mut dp = tokio::task::spawn_blocking(move || {
        let mut args = vec!["--envoy-binary".to_string(), envoy_binary()];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        DataPlane::start(&c, &root, &n, &y, &[], &args)
    })
    .await
    .expect("dp");
    let status = tokio::task::block_in_place(|| dp.wait_exit(Duration::from_secs(20)));
    let status = status.unwrap_or_else(|| panic!("tern-dp did not exit\n{}", dp.log_text()));
    assert_eq!(status.code(), Some(1), "{}", dp.log_text());
    assert!(envoys_in(&dp.work_dir).is_empty(), "no Envoy left");
    dp.log_text()
}
