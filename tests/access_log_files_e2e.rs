//! MeshAccessLog's `file` backend through a real Envoy: records land in the
//! file in the configured format (`Plain` and `Json`), and with
//! `/dev/stdout` in the Envoy output `tern-dp` captures.

mod support;

use std::time::Duration;
use support::{eventually, free_port, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn file_backends_write_records_in_their_format() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let (inbound, app, admin) = (free_port(), free_port(), free_port());
    let _app = support::demo_app(app, "web ok", None);
    let yaml = support::sidecar_dataplane("default", "web", inbound, app, admin);
    let dp = DataPlane::start(&cp, &dir.path().join("dps"), "web", &yaml, &[], &["--envoy-binary", envoy.as_str()]);
    let (plain, json) = (dir.path().join("plain.log"), dir.path().join("json.log"));
    let policy = format!(
        "type: MeshAccessLog\nname: files\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: File\n        file:\n          path: {}\n          format:\n            type: Plain\n            plain: 'plain %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%'\n      - type: File\n        file:\n          path: {}\n          format:\n            type: Json\n            json:\n              - key: path\n                value: '%REQ(:PATH)%'\n              - key: status\n                value: '%RESPONSE_CODE%'\n      - type: File\n        file:\n          path: /dev/stdout\n          format:\n            type: Plain\n            plain: 'stdout-record %REQ(:PATH)%'\n",
        plain.display(),
        json.display()
    );
    cp.ternctl_stdin(&["apply", "-f", "-"], &policy).ok();

    let url = format!("http://127.0.0.1:{inbound}/hello");
    let plain_text = eventually(WAIT, "a plain record in the file", || {
        // Requests until Envoy has the loggers (they arrive over ADS).
        let _ = std::process::Command::new("curl").args(["-s", "-o", "/dev/null", &url]).status();
        let text = std::fs::read_to_string(&plain).map_err(|e| e.to_string())?;
        text.contains("plain GET /hello 200").then_some(text.clone()).ok_or(text)
    });
    assert!(plain_text.lines().all(|l| l.starts_with("plain ")), "one record per line: {plain_text}");
    let json_text =
        eventually(WAIT, "a JSON record in the file", || std::fs::read_to_string(&json).map_err(|e| e.to_string()));
    let record: serde_json::Value =
        serde_json::from_str(json_text.lines().last().unwrap_or_default()).expect("each line is a JSON object");
    assert_eq!(record["path"], "/hello");
    assert_eq!(record["status"].to_string().trim_matches('"'), "200");
    eventually(WAIT, "the stdout record in tern-dp's Envoy output", || {
        let log = std::fs::read_to_string(dp.work_dir.join("envoy.log")).unwrap_or_default();
        log.contains("stdout-record /hello").then_some(()).ok_or_else(|| "not yet".to_string())
    });
}
