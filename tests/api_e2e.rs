//! The API's contract beyond validation: Kuma's list shape and paging, label
//! filters, the OpenAPI document, and bearer tokens off loopback.

mod support;

use serde_json::{json, Value};
use support::ControlPlane;

async fn get_json(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.expect("API reachable");
    (resp.status().as_u16(), resp.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_page_and_filter_like_kuma() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = tokio::task::spawn_blocking({
        let p = dir.path().to_path_buf();
        move || ControlPlane::start(&p)
    })
    .await
    .expect("start");
    let client = reqwest::Client::new();
    for i in 0..5 {
        let labels = if i % 2 == 0 { json!({"team": "even"}) } else { json!({"team": "odd"}) };
        let resp = client
            .put(format!("{}/meshes/default/meshopentelemetrybackends/b{i}", cp.api))
            .json(&json!({"labels": labels, "spec": {}}))
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status().as_u16(), 201);
    }
    let (status, page) = get_json(&format!("{}/meshes/default/meshopentelemetrybackends?size=2", cp.api)).await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 5);
    assert_eq!(page["items"].as_array().expect("items").len(), 2);
    assert_eq!(page["next"], "/meshes/default/meshopentelemetrybackends?offset=2&size=2");
    let (_, last) = get_json(&format!("{}/meshes/default/meshopentelemetrybackends?offset=4&size=2", cp.api)).await;
    assert_eq!(last["items"][0]["name"], "b4");
    assert_eq!(last["next"], Value::Null);

    let (_, even) =
        get_json(&format!("{}/meshes/default/meshopentelemetrybackends?filter=label.team%3Deven", cp.api)).await;
    let names: Vec<&str> =
        even["items"].as_array().expect("items").iter().map(|i| i["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["b0", "b2", "b4"]);
    assert_eq!(even["items"][0]["labels"]["kuma.io/mesh"], "default");
    assert_eq!(even["items"][0]["labels"]["kuma.io/display-name"], "b0");

    let (_, everywhere) = get_json(&format!("{}/meshopentelemetrybackends", cp.api)).await;
    assert_eq!(everywhere["total"], 5);
    let (_, meshes) = get_json(&format!("{}/meshes", cp.api)).await;
    assert_eq!(
        meshes["items"][0],
        json!({"type": "Mesh", "name": "default",
        "creationTime": meshes["items"][0]["creationTime"], "modificationTime": meshes["items"][0]["modificationTime"]})
    );
    let (status, err) = get_json(&format!("{}/meshes/default/meshwidgets", cp.api)).await;
    assert_eq!((status, err["detail"].as_str()), (404, Some("unknown resource type \"meshwidgets\"")));
    let (status, err) = get_json(&format!("{}/meshes/default/meshopentelemetrybackends?size=5000", cp.api)).await;
    assert_eq!(status, 400);
    assert_eq!(err["invalid_parameters"][0]["field"], "size");
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_describes_every_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().to_path_buf();
    let cp = tokio::task::spawn_blocking(move || ControlPlane::start(&p)).await.expect("start");
    let (status, doc) = get_json(&format!("{}/openapi.json", cp.api)).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    for path in tern_api::openapi::PATHS {
        assert!(paths.contains_key(*path), "{path} missing from /openapi.json");
    }
    assert_eq!(paths.len(), tern_api::openapi::PATHS.len());
    let plurals = &doc["paths"]["/meshes/{mesh}/{plural}/{name}"]["parameters"][1]["schema"]["enum"];
    assert!(plurals.as_array().expect("enum").contains(&json!("meshopentelemetrybackends")));
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_need_a_token_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().to_path_buf();
    let cp = tokio::task::spawn_blocking(move || ControlPlane::start_with(&p, None, "0.0.0.0")).await.expect("start");
    let token_file = dir.path().join("api-token");
    let token = std::fs::read_to_string(&token_file).expect("token generated on first start");
    assert_eq!(token.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token_file).expect("meta").permissions().mode() & 0o777, 0o600);
    }
    let log = cp.log_text();
    assert!(log.contains("every write needs `Authorization: Bearer <token>`"), "start-up says so: {log}");
    assert!(!log.contains(token.trim()), "the token itself is never logged");

    let yaml = "type: MeshOpenTelemetryBackend\nname: b\nmesh: default\n";
    let (api, ca) = (cp.api_tls.clone(), cp.ca.to_string_lossy().into_owned());
    let (denied, allowed, listed) = tokio::task::spawn_blocking(move || {
        let ca = ("TERN_CA_CERT", ca.as_str());
        let denied = support::ternctl_with(&api, &["apply", "-f", "-"], Some(yaml), &[ca]);
        let allowed =
            support::ternctl_with(&api, &["apply", "-f", "-"], Some(yaml), &[("TERN_TOKEN", token.trim()), ca]);
        let listed = support::ternctl_with(&api, &["get", "motb"], None, &[ca]);
        (denied, allowed, listed)
    })
    .await
    .expect("cli");
    let denied = denied.fails();
    assert!(denied.stderr.contains("Unauthorized") && denied.stderr.contains("TERN_TOKEN"), "{}", denied.stderr);
    allowed.ok();
    assert!(listed.ok().stdout.contains(" b "), "reads need no token");

    let pem = std::fs::read(&cp.ca).expect("CA");
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    let resp = https
        .delete(format!("{}/meshes/default/meshopentelemetrybackends/b", cp.api_tls))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status().as_u16(), 401);

    // A token in ternctl's config file works too.
    let config = dir.path().join("ternctl.yaml");
    let token = std::fs::read_to_string(dir.path().join("api-token")).expect("token");
    std::fs::write(&config, format!("token: {}\ncaCert: {}\n", token.trim(), cp.ca.display())).expect("config");
    let api = cp.api_tls.clone();
    let run = tokio::task::spawn_blocking(move || {
        support::ternctl_with(&api, &["--config", config.to_str().expect("utf8"), "delete", "motb", "b"], None, &[])
    })
    .await
    .expect("cli");
    run.ok();
}
