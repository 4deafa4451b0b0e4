//! MeshAccessLog's local backends through a real Envoy and `tern-dp`:
//! - `file`: records land in the file in the configured format (`Plain`
//!   and `Json`), and with `/dev/stdout` in the Envoy output `tern-dp`
//!   captures;
//! - per listener: `from[]` logs only inbound requests, `to[]` with a
//!   `MeshService` only calls to that service, `to[]` with `Mesh` the other
//!   outbounds, with Kuma's placeholders and default formats;
//! - an inbound policy goes on the inbounds its `targetRef` picks (a
//!   `Dataplane` `sectionName`, a `MeshService`), not on the others;
//! - `tcp`: lines arrive at a TCP listener; while it is down, records are
//!   counted as dropped, and after it is back lines arrive again.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{eventually, free_port, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(60);

fn curl(url: &str) {
    let _ = std::process::Command::new("curl").args(["-s", "-m", "5", "-o", "/dev/null", url]).status();
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

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
    // Envoy creates the file before its first flush: wait for a whole line.
    let json_text = eventually(WAIT, "a JSON record in the file", || {
        let text = std::fs::read_to_string(&json).map_err(|e| e.to_string())?;
        text.ends_with('\n').then_some(text.clone()).ok_or(text)
    });
    let record: serde_json::Value =
        serde_json::from_str(json_text.lines().last().unwrap_or_default()).expect("each line is a JSON object");
    assert_eq!(record["path"], "/hello");
    assert_eq!(record["status"].to_string().trim_matches('"'), "200");
    eventually(WAIT, "the stdout record in tern-dp's Envoy output", || {
        let log = std::fs::read_to_string(dp.work_dir.join("envoy.log")).unwrap_or_default();
        log.contains("stdout-record /hello").then_some(()).ok_or_else(|| "not yet".to_string())
    });
}

/// One data plane with two inbounds (`web`, and `admin` named `admin`):
/// `rules` aimed at the section `admin` and at `MeshService web` log the
/// requests of their inbound only.
#[tokio::test(flavor = "multi_thread")]
async fn inbound_logs_go_on_the_inbounds_the_target_picks() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let (web_in, web_app, admin_in, admin_app, admin) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    let _web = support::demo_app(web_app, "web ok", None);
    let _admin = support::demo_app(admin_app, "admin ok", None);
    let yaml = support::sidecar_dataplane("default", "web", web_in, web_app, admin)
        + &format!("    - port: {admin_in}\n      servicePort: {admin_app}\n      name: admin\n      tags:\n        kuma.io/service: web-admin\n        kuma.io/protocol: http\n");
    let dp = DataPlane::start(&cp, &dir.path().join("dps"), "web", &yaml, &[], &["--envoy-binary", envoy.as_str()]);
    let (by_section, by_service) = (dir.path().join("section.log"), dir.path().join("service.log"));
    let policy = |name: &str, target: &str, path: &std::path::Path| {
        format!("type: MeshAccessLog\nname: {name}\nmesh: default\nspec:\n  targetRef: {target}\n  rules:\n    - default:\n        backends:\n          - type: File\n            file:\n              path: {}\n              format: {{type: Plain, plain: '%REQ(:PATH)%'}}\n---\n", path.display())
    };
    let yaml = policy("section", "{kind: Dataplane, name: web, sectionName: admin}", &by_section)
        + &policy("service", "{kind: MeshService, name: web}", &by_service);
    cp.ternctl_stdin(&["apply", "-f", "-"], &yaml).ok();
    eventually(WAIT, "both files written", || {
        curl(&format!("http://127.0.0.1:{web_in}/to-web"));
        curl(&format!("http://127.0.0.1:{admin_in}/to-admin"));
        let (a, b) = (read(&by_section), read(&by_service));
        (a.contains("/to-admin") && b.contains("/to-web"))
            .then_some(())
            .ok_or(format!("{a:?} {b:?}\n{}", dp.log_text()))
    });
    assert!(!read(&by_section).contains("/to-web"), "the admin section's log has no web request");
    assert!(!read(&by_service).contains("/to-admin"), "web's log has no admin request");
}

#[tokio::test(flavor = "multi_thread")]
async fn from_logs_inbound_and_to_logs_per_service() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let (api_in, api_app, api_admin) = (free_port(), free_port(), free_port());
    let _api = support::demo_app(api_app, "api ok", None);
    let api_yaml = support::sidecar_dataplane("default", "api", api_in, api_app, api_admin);
    let envoy_args = ["--envoy-binary", envoy.as_str()];
    let _api_dp = DataPlane::start(&cp, &dir.path().join("dps"), "api", &api_yaml, &[], &envoy_args);
    let (web_in, web_app, web_admin, to_api, to_other) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    let _web = support::demo_app(web_app, "web ok", None);
    let web_yaml = format!(
        "{}  outbound:\n    - port: {to_api}\n      tags:\n        kuma.io/service: api\n    - port: {to_other}\n      tags:\n        kuma.io/service: other\n",
        support::sidecar_dataplane("default", "web", web_in, web_app, web_admin)
    );
    let _web_dp = DataPlane::start(&cp, &dir.path().join("dps"), "web", &web_yaml, &[], &envoy_args);
    let (inbound, to_api_log, to_any) =
        (dir.path().join("in.log"), dir.path().join("api.log"), dir.path().join("any.log"));
    let policy = format!(
        r#"type: MeshAccessLog
name: per-listener
mesh: default
spec:
  targetRef: {{kind: Mesh}}
  from:
    - targetRef: {{kind: Mesh}}
      default:
        backends:
          - type: File
            file:
              path: {inbound}
              format: {{type: Plain, plain: "in %KUMA_TRAFFIC_DIRECTION% %KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE% %REQ(:PATH)%"}}
  to:
    - targetRef: {{kind: Mesh}}
      default:
        backends:
          - type: File
            file: {{path: {to_any}}}
    - targetRef: {{kind: MeshService, name: api}}
      default:
        backends:
          - type: File
            file:
              path: {to_api_log}
              format: {{type: Plain, plain: "to-api %KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE% %REQ(:PATH)% %RESPONSE_CODE%"}}
"#,
        inbound = inbound.display(),
        to_any = to_any.display(),
        to_api_log = to_api_log.display(),
    );
    cp.ternctl_stdin(&["apply", "-f", "-"], &policy).ok();

    eventually(WAIT, "inbound records of both data planes", || {
        curl(&format!("http://127.0.0.1:{web_in}/hello"));
        curl(&format!("http://127.0.0.1:{to_api}/via-api"));
        let text = read(&inbound);
        (text.contains("in INBOUND unknown->web /hello") && text.contains("in INBOUND unknown->api /via-api"))
            .then_some(())
            .ok_or(text)
    });
    eventually(WAIT, "the call to api in the MeshService file", || {
        curl(&format!("http://127.0.0.1:{to_api}/via-api"));
        let text = read(&to_api_log);
        text.contains("to-api web->api /via-api 200").then_some(()).ok_or(text)
    });
    // Kuma's default network format on the TCP outbound to a service without
    // endpoints, with its placeholders filled in.
    eventually(WAIT, "the call to other in the Mesh file", || {
        curl(&format!("http://127.0.0.1:{to_other}/elsewhere"));
        let text = read(&to_any);
        text.contains(" default 127.0.0.1(web)->").then_some(()).ok_or(text)
    });
    let (in_text, api_text, any_text) = (read(&inbound), read(&to_api_log), read(&to_any));
    assert!(!in_text.contains("OUTBOUND"), "from[] logs only inbound requests: {in_text}");
    assert!(api_text.lines().all(|l| l.starts_with("to-api web->api ")), "only calls to api: {api_text}");
    assert!(any_text.lines().all(|l| l.contains("(other)")), "only calls to services no item names: {any_text}");
}

/// A TCP listener that collects the lines it receives, and can be stopped
/// (closing every connection) and started again on its port.
struct LineSink {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl LineSink {
    fn start(port: u16, lines: Arc<Mutex<Vec<String>>>) -> LineSink {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("sink binds");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, conns) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let sink = LineSink { port, lines: lines.clone(), stop: stop.clone(), conns: conns.clone() };
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).expect("blocking");
                        conns.lock().unwrap().push(stream.try_clone().expect("clone"));
                        let lines = lines.clone();
                        std::thread::spawn(move || {
                            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                                lines.lock().unwrap().push(line);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        sink
    }

    fn stop(self) -> (u16, Arc<Mutex<Vec<String>>>) {
        self.stop.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        (self.port, self.lines)
    }

    fn has(&self, needle: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

/// `tern_dp_tcp_access_log_records_total` for `address` and `outcome`.
fn tcp_count(metrics_port: u16, address: &str, outcome: &str) -> u64 {
    let text = std::process::Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{metrics_port}/metrics")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let series = format!("tern_dp_tcp_access_log_records_total{{address=\"{address}\",outcome=\"{outcome}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_backends_send_lines_and_count_what_an_outage_drops() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let (inbound, app, admin, metrics) = (free_port(), free_port(), free_port(), free_port());
    let _app = support::demo_app(app, "web ok", None);
    let yaml = support::sidecar_dataplane("default", "web", inbound, app, admin);
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let args = ["--envoy-binary", envoy.as_str(), "--metrics-addr", metrics_addr.as_str()];
    let _dp = DataPlane::start(&cp, &dir.path().join("dps"), "web", &yaml, &[], &args);
    let (plain_port, json_port) = (free_port(), free_port());
    let plain = LineSink::start(plain_port, Arc::default());
    let json = LineSink::start(json_port, Arc::default());
    let policy = format!(
        r#"type: MeshAccessLog
name: tcp
mesh: default
spec:
  targetRef: {{kind: Mesh}}
  rules:
    - default:
        backends:
          - type: Tcp
            tcp:
              address: 127.0.0.1:{plain_port}
              format: {{type: Plain, plain: "tcp-record %REQ(:PATH)% %RESPONSE_CODE%"}}
          - type: Tcp
            tcp:
              address: 127.0.0.1:{json_port}
              format:
                type: Json
                json:
                  - {{key: path, value: "%REQ(:PATH)%"}}
                  - {{key: mesh, value: "%KUMA_MESH%"}}
"#
    );
    cp.ternctl_stdin(&["apply", "-f", "-"], &policy).ok();
    let url = |path: &str| format!("http://127.0.0.1:{inbound}{path}");

    eventually(WAIT, "a plain line at the TCP listener", || {
        curl(&url("/before"));
        plain.has("tcp-record /before 200").then_some(()).ok_or_else(|| "not yet".to_string())
    });
    let json_line = eventually(WAIT, "a JSON line at the second listener", || {
        let lines = json.lines.lock().unwrap().clone();
        lines.into_iter().find(|l| l.contains("/before")).ok_or_else(|| "not yet".to_string())
    });
    let record: serde_json::Value = serde_json::from_str(&json_line).expect("one JSON object per line");
    assert_eq!((record["path"].as_str(), record["mesh"].as_str()), (Some("/before"), Some("default")), "{json_line}");

    // The listener goes away: what Envoy logs meanwhile is dropped, counted.
    let plain_address = format!("127.0.0.1:{plain_port}");
    let (port, lines) = plain.stop();
    eventually(WAIT, "records dropped while the listener is down", || {
        curl(&url("/during"));
        let dropped = tcp_count(metrics, &plain_address, "dropped");
        (dropped > 0).then_some(dropped).ok_or(format!("{dropped} dropped"))
    });
    let sent_before = tcp_count(metrics, &plain_address, "sent");
    assert!(sent_before > 0, "the lines before the outage count as sent");

    // Back on the same port: new records arrive over a new connection.
    let plain = LineSink::start(port, lines);
    eventually(WAIT, "lines after the listener is back", || {
        curl(&url("/after"));
        plain.has("tcp-record /after 200").then_some(()).ok_or_else(|| "not yet".to_string())
    });
    assert!(tcp_count(metrics, &plain_address, "sent") > sent_before, "sent counts go on after the reconnect");
    drop(json);
}
