//! MeshMetric's Prometheus backend with a real Prometheus 3 (built from the
//! Go module proxy by scripts/install-tools.sh): seed 003's scrape config,
//! `kuma_sd_configs` pointed at Tern's monitoring assignment server, two data
//! planes behind real Envoy, and a PromQL query by service.

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::Collector;

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{eventually, free_port, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(60);

fn prometheus_binary() -> String {
    std::env::var("TERN_TEST_PROMETHEUS").unwrap_or_else(|_| {
        let local = support::repo_path(".tools/prometheus");
        assert!(
            local.exists(),
            "Prometheus is not installed: run scripts/test.sh, or eval \"$(scripts/install-tools.sh)\""
        );
        local.display().to_string()
    })
}

/// Prometheus, stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seed 003's scrape config, twice: with `fetch_timeout: 0s` (no long
/// polling, the 2.6.0 workaround) and with the default long poll.
fn config(mads: &str, cp_metrics: &str, ca_file: &str) -> String {
    let job = |name: &str, fetch: &str| {
        format!(
            r#"  - job_name: '{name}'
    scrape_interval: "1s"
    relabel_configs:
      - source_labels:
          - __meta_kuma_mesh
        regex: "(.*)"
        target_label: mesh
      - source_labels:
          - __meta_kuma_dataplane
        regex: "(.*)"
        target_label: dataplane
      - action: labelmap
        regex: __meta_kuma_label_(.+)
    kuma_sd_configs:
      - server: "{mads}"
        refresh_interval: 1s
{fetch}"#
        )
    };
    let cp = cp_metrics.trim_start_matches("http://");
    format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}  - job_name: tern-cp\n    static_configs:\n      - targets: ['{cp}']\n  - job_name: secure\n    scrape_interval: 1s\n    tls_config:\n      ca_file: {ca_file}\n    relabel_configs:\n      - source_labels: [__meta_kuma_dataplane]\n        target_label: dataplane\n    kuma_sd_configs:\n      - server: \"{mads}\"\n        client_id: secure\n        refresh_interval: 1s\n        fetch_timeout: 0s\n",
        job("kuma-dataplanes", "        fetch_timeout: 0s\n"),
        job("kuma-dataplanes-long-poll", "")
    )
}

fn start_prometheus(dir: &std::path::Path, mads: &str, cp_metrics: &str, ca_file: &str) -> Prometheus {
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config(mads, cp_metrics, ca_file)).unwrap();
    let port = free_port();
    let log = dir.join("prometheus.log");
    let child = Command::new(prometheus_binary())
        .arg(format!("--config.file={}", file.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("prometheus starts");
    Prometheus { child, url: format!("http://127.0.0.1:{port}"), log }
}

fn get_json(url: &str) -> Result<Value, String> {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            let r = reqwest::get(url).await.map_err(|e| e.to_string())?;
            r.json::<Value>().await.map_err(|e| e.to_string())
        })
    })
}

/// Active targets of `job`, as (dataplane label, health, labels).
fn targets(p: &Prometheus, job: &str) -> Result<Vec<(String, String, Value)>, String> {
    let v = get_json(&format!("{}/api/v1/targets?state=active", p.url))?;
    Ok(v["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["labels"]["job"] == job)
        .map(|t| {
            (
                t["labels"]["dataplane"].as_str().unwrap_or("").to_string(),
                t["health"].as_str().unwrap_or("").to_string(),
                t["labels"].clone(),
            )
        })
        .collect())
}

fn dataplane(name: &str, address: &str, inbound: u16, app: u16, admin: u16, outbound: Option<(u16, &str)>) -> String {
    let outbound = outbound
        .map(|(port, service)| {
            format!("  outbound:\n    - port: {port}\n      tags:\n        kuma.io/service: {service}\n")
        })
        .unwrap_or_default();
    format!(
        "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: {address}\n  admin:\n    port: {admin}\n  inbound:\n    - port: {inbound}\n      servicePort: {app}\n      tags:\n        kuma.io/service: {name}\n        kuma.io/protocol: http\n{outbound}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_discovers_scrapes_and_queries_both_data_planes() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let mads = cp.mads.clone().expect("tern-cp serves MADS");
    let metrics_port = free_port();
    let policy = format!(
        "type: MeshMetric\nname: prometheus\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: Prometheus\n        prometheus:\n          port: {metrics_port}\n          path: /metrics\n"
    );
    cp.ternctl_stdin(&["apply", "-f", "-"], &policy).ok();

    // web (127.0.0.2) calls api (127.0.0.3) through its outbound; each serves
    // its metrics on its own address.
    let root = dir.path().join("dps");
    let extra = ["--envoy-binary", envoy.as_str()];
    let (api_in, api_app, api_admin) = (free_port(), free_port(), free_port());
    let (web_in, web_app, web_admin, web_out) = (free_port(), free_port(), free_port(), free_port());
    let _api_app = support::demo_app(api_app, "api ok", None);
    let _web_app = support::demo_app(web_app, "web ok", Some(format!("http://127.0.0.1:{web_out}/items")));
    // api also serves a ProvidedTLS endpoint to another Prometheus client, with its certificate.
    let (ca, cert, key) = support::test_certificate(&["127.0.0.3"], "api metrics");
    let tls_dir = dir.path().join("api-tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    for (name, text) in [("ca.crt", &ca), ("tls.crt", &cert), ("tls.key", &key)] {
        std::fs::write(tls_dir.join(name), text).unwrap();
    }
    let secure_port = free_port();
    let secure = format!(
        "type: MeshMetric\nname: api-secure\nmesh: default\nspec:\n  targetRef: {{kind: Dataplane, name: api}}\n  default:\n    backends:\n      - type: Prometheus\n        prometheus:\n          port: {metrics_port}\n      - type: Prometheus\n        prometheus:\n          clientId: secure\n          port: {secure_port}\n          tls: {{mode: ProvidedTLS}}\n"
    );
    cp.ternctl_stdin(&["apply", "-f", "-"], &secure).ok();
    let (cert_file, key_file) =
        (tls_dir.join("tls.crt").display().to_string(), tls_dir.join("tls.key").display().to_string());
    let api_extra =
        [extra[0], extra[1], "--metrics-cert-file", cert_file.as_str(), "--metrics-key-file", key_file.as_str()];
    let _api = DataPlane::start(
        &cp,
        &root,
        "api",
        &dataplane("api", "127.0.0.3", api_in, api_app, api_admin, None),
        &[],
        &api_extra,
    );
    let web = DataPlane::start(
        &cp,
        &root,
        "web",
        &dataplane("web", "127.0.0.2", web_in, web_app, web_admin, Some((web_out, "api"))),
        &[],
        &extra,
    );
    // web's application exposes its own metrics; web's data plane passes them on.
    let apps = format!(
        "type: MeshMetric\nname: web-application\nmesh: default\nspec:\n  targetRef: {{kind: Dataplane, name: web}}\n  default:\n    applications:\n      - name: demo\n        address: 127.0.0.1\n        port: {web_app}\n"
    );
    cp.ternctl_stdin(&["apply", "-f", "-"], &apps).ok();
    let ca_file = tls_dir.join("ca.crt").display().to_string();
    let prometheus =
        start_prometheus(dir.path(), &mads, cp.metrics.as_deref().expect("tern-cp serves /metrics"), &ca_file);

    for job in ["kuma-dataplanes", "kuma-dataplanes-long-poll"] {
        eventually(WAIT, "both data planes up in Prometheus' targets", || {
            let t = targets(&prometheus, job)?;
            let up: Vec<&str> = t.iter().filter(|(_, h, _)| h == "up").map(|(d, _, _)| d.as_str()).collect();
            (up.contains(&"web") && up.contains(&"api"))
                .then_some(())
                .ok_or(format!("{t:?}; prometheus: {}", std::fs::read_to_string(&prometheus.log).unwrap_or_default()))
        });
    }
    let (_, _, labels) =
        targets(&prometheus, "kuma-dataplanes").unwrap().into_iter().find(|(d, _, _)| d == "web").unwrap();
    assert_eq!(
        (labels["mesh"].as_str(), labels["kuma_io_service"].as_str()),
        (Some("default"), Some("web")),
        "{labels}"
    );
    assert_eq!(labels["instance"], "web", "{labels}");

    // Traffic, then the query by service.
    let url = format!("http://127.0.0.2:{web_in}/orders");
    let query = format!(
        "{}/api/v1/query?query=sum(rate(envoy_cluster_upstream_rq_total%7Bjob%3D%22kuma-dataplanes%22%7D%5B1m%5D))%20by%20(kuma_io_service)",
        prometheus.url
    );
    eventually(WAIT, "the request rate by service for both services", || {
        let _ = get_json(&url);
        let _ = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(reqwest::get(&url)));
        let v = get_json(&query)?;
        let services: Vec<&str> = v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["metric"]["kuma_io_service"].as_str())
            .collect();
        let scraped = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                match reqwest::get(format!("http://127.0.0.2:{metrics_port}/metrics")).await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                }
            })
        });
        let rq: Vec<&str> = scraped.lines().filter(|l| l.contains("upstream_rq_total")).collect();
        (services.contains(&"web") && services.contains(&"api")).then_some(()).ok_or(format!("{v}; web serves {rq:?}"))
    });

    // The application's own metrics reach Prometheus through its data plane.
    let app_query =
        format!("{}/api/v1/query?query=demo_requests_total%7Bjob%3D%22kuma-dataplanes%22%7D", prometheus.url);
    eventually(WAIT, "the application's metrics in Prometheus, with the data plane's labels", || {
        let v = get_json(&app_query)?;
        let series = &v["data"]["result"][0];
        let served: f64 = series["value"][1].as_str().and_then(|n| n.parse().ok()).unwrap_or(0.0);
        (series["metric"]["kuma_io_service"] == "web" && series["metric"]["handler"] == "orders" && served > 0.0)
            .then_some(())
            .ok_or(v.to_string())
    });

    // The data plane's own labels ride on every series it serves.
    let body = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            reqwest::get(format!("http://127.0.0.2:{metrics_port}/metrics")).await.unwrap().text().await.unwrap()
        })
    });
    let sample = body.lines().find(|l| l.starts_with("envoy_cluster_upstream_rq_total{")).expect("Envoy's counter");
    assert!(
        sample.contains("mesh=\"default\"")
            && sample.contains("dataplane=\"web\"")
            && sample.contains("service=\"web\""),
        "{sample}"
    );

    // Profiles: Basic (the default) keeps Kuma's Basic families and leaves
    // out Tern's own clusters.
    let envoy_families = |body: &str| -> std::collections::BTreeSet<String> {
        body.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .filter(|n| n.starts_with("envoy_"))
            .map(str::to_string)
            .collect()
    };
    let basic = envoy_families(&body);
    assert!(basic.contains("envoy_cluster_upstream_rq_total") && basic.contains("envoy_server_uptime"), "{basic:?}");
    assert!(!basic.contains("envoy_runtime_load_success"), "outside Basic: {basic:?}");
    assert!(!body.contains("envoy_cluster_name=\"tern_"), "Basic leaves out Tern's own clusters");
    // None plus an include: exactly what is included, on Prometheus and on
    // the OpenTelemetry path alike.
    let collector = Collector::start().await;
    let exact = format!(
        "type: MeshOpenTelemetryBackend\nname: otel\nmesh: default\nspec:\n  endpoint: {{address: 127.0.0.1, port: {}}}\n---\n{}      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: otel}}\n          refreshInterval: 1s\n    sidecar:\n      profiles:\n        appendProfiles: [{{name: None}}]\n        include: [{{type: Exact, match: envoy_cluster_upstream_rq_total}}]\n",
        collector.port,
        policy
    );
    cp.ternctl_stdin(&["apply", "-f", "-"], &exact).ok();
    let metrics_url = format!("http://127.0.0.1:{}/metrics", metrics_port).replace("127.0.0.1", "127.0.0.2");
    eventually(WAIT, "only the included family on the Prometheus endpoint", || {
        let body = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                reqwest::get(&metrics_url).await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())
            })
        })?;
        let families = envoy_families(&body);
        (families.len() == 1 && families.contains("envoy_cluster_upstream_rq_total"))
            .then_some(())
            .ok_or(format!("{families:?}"))
    });
    eventually(WAIT, "only the included family at the OpenTelemetry collector", || {
        let names: std::collections::BTreeSet<String> = collector.with(|r| r.metric_names.iter().cloned().collect());
        let envoy: Vec<&String> = names.iter().filter(|n| n.starts_with("envoy_")).collect();
        (envoy == ["envoy_cluster_upstream_rq_total"]).then_some(()).ok_or(format!("{names:?}"))
    });
    // The same Prometheus scrapes tern-cp: what it counts matches what the test made.
    let value = |promql: &str| -> Result<f64, String> {
        let url = format!(
            "{}/api/v1/query?query={}",
            prometheus.url,
            promql.replace('{', "%7B").replace('}', "%7D").replace('"', "%22").replace('=', "%3D").replace(',', "%2C")
        );
        let v = get_json(&url)?;
        v["data"]["result"][0]["value"][1].as_str().and_then(|n| n.parse().ok()).ok_or(v.to_string())
    };
    // What `ternctl inspect` says, summed: the data planes whose metrics are ready
    // (web; api's own policy names only Prometheus backends).
    let ready_in_inspect = ["web", "api"]
        .iter()
        .filter(|dp| {
            let inspect = cp.ternctl(&["inspect", "dataplane", dp]).ok().stdout;
            inspect.lines().any(|l| l.starts_with("otel ") && l.contains("metrics") && l.contains("ready"))
        })
        .count() as f64;
    assert_eq!(ready_in_inspect, 1.0);
    eventually(WAIT, "tern-cp's metrics in Prometheus", || {
        let dataplanes = value(r#"resources_count{job="tern-cp",resource_type="Dataplane"}"#)?;
        let backends = value(r#"resources_count{job="tern-cp",resource_type="MeshOpenTelemetryBackend"}"#)?;
        let streams = value(r#"xds_streams_active{job="tern-cp"}"#)?;
        let ready = value(r#"tern_otel_signals{job="tern-cp",signal="metrics",state="ready"}"#)?;
        let acks = value(r#"sum(xds_requests_received{job="tern-cp",confirmation="ACK"})"#)?;
        let applies = value(r#"sum(store_count{job="tern-cp",operation="apply"})"#)?;
        // Both data planes' snapshots were built at least once, and changed.
        let generated = value(r#"sum(xds_generation_count{job="tern-cp",result="changed"})"#)?;
        // Both tern-dp follow their plans; web's changed while it waited.
        let polls = value(r#"tern_plan_polls_active{job="tern-cp"}"#)?;
        let delivered = value(r#"tern_plan_delivery_seconds_count{job="tern-cp"}"#)?;
        if applies == 0.0 || generated < 2.0 || polls != 2.0 || delivered == 0.0 {
            return Err(format!(
                "store operations timed {applies}, snapshot builds {generated}, polls {polls}, plans delivered {delivered}"
            ));
        }
        ((dataplanes, backends, streams, ready) == (2.0, 1.0, 2.0, ready_in_inspect) && acks > 0.0).then_some(()).ok_or(
            format!(
                "dataplanes {dataplanes}, backends {backends}, streams {streams}, metrics ready {ready}, ACKs {acks}"
            ),
        )
    });
    eventually(WAIT, "the application's metrics at the OpenTelemetry collector", || {
        let names = collector.with(|r| r.metric_names.clone());
        names.iter().any(|n| n == "demo_requests_total").then_some(()).ok_or(format!("{names:?}"))
    });

    // A regex Kuma's validator refuses is refused at apply.
    let bad = policy.replace(
        "    backends:",
        "    sidecar:\n      profiles:\n        exclude: [{type: Regex, match: \"(\"}]\n    backends:",
    );
    let refused = cp.ternctl_stdin(&["apply", "-f", "-"], &bad).fails();
    assert!(
        refused.stderr.contains("spec.default.sidecar.profiles.exclude[0].match")
            && refused.stderr.contains("invalid regex"),
        "{}",
        refused.stderr
    );

    // A data plane that goes away leaves the targets, in both discovery modes.
    drop(web);
    cp.ternctl(&["delete", "dataplane", "web"]).ok();
    for job in ["kuma-dataplanes", "kuma-dataplanes-long-poll"] {
        eventually(WAIT, "web gone from the targets", || {
            let t = targets(&prometheus, job)?;
            let names: Vec<&str> = t.iter().map(|(d, _, _)| d.as_str()).collect();
            (names == ["api"]).then_some(()).ok_or(format!("{names:?}"))
        });
    }
}

/// Serves `body` as `/metrics` on 127.0.0.1:`port` (HTTP/1.0, one answer per connection).
fn serve_metrics(port: u16, body: String) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind metrics");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            use std::io::{Read, Write};
            let mut stream = stream;
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body.as_bytes()));
        }
    });
}

/// An application whose one metric has 10,000 label sets: the data plane
/// passes at most the cap (500) on both paths, and says so once per path.
#[tokio::test(flavor = "multi_thread")]
async fn label_sets_beyond_the_cap_are_cut_on_both_paths_and_said_once() {
    let envoy = support::envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start().await;
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let (inbound, app, admin, wide, metrics_port) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let _app = support::demo_app(app, "web ok", None);
    let mut body = String::from("# TYPE wide_series counter\n");
    for i in 0..10_000 {
        body.push_str(&format!("wide_series{{id=\"{i}\"}} 1\n"));
    }
    serve_metrics(wide, body);
    let policy = format!(
        "type: MeshOpenTelemetryBackend\nname: otel\nmesh: default\nspec:\n  endpoint:\n    address: 127.0.0.1\n    port: {}\n---\ntype: MeshMetric\nname: wide\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    applications:\n      - name: wide\n        address: 127.0.0.1\n        port: {wide}\n    backends:\n      - type: Prometheus\n        prometheus:\n          port: {metrics_port}\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: otel}}\n          refreshInterval: 1s\n",
        collector.port
    );
    cp.ternctl_stdin(&["apply", "-f", "-"], &policy).ok();
    let yaml = dataplane("web", "127.0.0.2", inbound, app, admin, None);
    let dp = DataPlane::start(&cp, &dir.path().join("dps"), "web", &yaml, &[], &["--envoy-binary", envoy.as_str()]);

    let endpoint = format!("http://127.0.0.2:{metrics_port}/metrics");
    let count = |text: &str| text.lines().filter(|l| l.starts_with("wide_series{")).count();
    for _ in 0..3 {
        let text = eventually(WAIT, "the Prometheus endpoint answers", || {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    let r = reqwest::get(&endpoint).await.map_err(|e| e.to_string())?;
                    let text = r.text().await.map_err(|e| e.to_string())?;
                    (count(&text) > 0).then_some(text).ok_or("no wide_series yet".to_string())
                })
            })
        });
        assert_eq!(count(&text), 500, "the Prometheus endpoint holds exactly the cap");
    }
    eventually(WAIT, "two OpenTelemetry exports of the application's metric", || {
        let sizes: Vec<usize> =
            collector.with(|r| r.metric_series.iter().filter(|(n, _)| n == "wide_series").map(|(_, p)| *p).collect());
        if sizes.iter().any(|p| *p > 500) {
            panic!("an export carried more than the cap: {sizes:?}");
        }
        (sizes.len() >= 2 && sizes.iter().all(|p| *p == 500)).then_some(()).ok_or(format!("{sizes:?}"))
    });
    let log = dp.log_text();
    let said = |path: &str| log.lines().filter(|l| l.contains("per-metric cap") && l.contains(path)).count();
    assert_eq!(said("path=\"prometheus\""), 1, "{log}");
    assert_eq!(said("path=\"opentelemetry\""), 1, "{log}");
}
