//! Three `tern-cp` replicas on one throwaway PostgreSQL (`scripts/test.sh`
//! starts it): a write through one replica reaches a plan another serves;
//! the leader is killed (SIGKILL) under steady writes and data-plane churn;
//! leadership, status writes, `tern-dp` and Envoy move to the survivors;
//! no acknowledged write is lost, and every plan equals what a fresh replica
//! computes from the database alone.

mod support;

use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{eventually, free_port, ternctl_with, ControlPlane, DataPlane};

const WAIT: Duration = Duration::from_secs(60);

fn get(url: &str, token: Option<&str>) -> Result<String, String> {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            let mut req = reqwest::Client::new().get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("{url}: {}", r.status()));
            }
            r.text().await.map_err(|e| e.to_string())
        })
    })
}

/// One sample of a control plane's own metrics (no labels).
fn metric(cp: &ControlPlane, name: &str) -> Option<f64> {
    let text = get(&format!("{}/metrics", cp.metrics.as_deref()?), None).ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn leaders(replicas: &[ControlPlane], alive: &[usize]) -> Vec<usize> {
    alive.iter().copied().filter(|i| metric(&replicas[*i], "leader") == Some(1.0)).collect()
}

fn backend(name: &str) -> String {
    format!("type: MeshOpenTelemetryBackend\nname: {name}\nmesh: default\nspec:\n  endpoint:\n    address: 127.0.0.1\n    port: 4317\n")
}

fn trace_policy(backend: &str) -> String {
    format!(
        "type: MeshTrace\nname: all\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: {backend}}}\n"
    )
}

fn plan_backends(dp: &DataPlane) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(dp.plan_file()).map_err(|e| e.to_string())?;
    let plan: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(plan["backends"].as_array().into_iter().flatten().filter_map(|b| b["name"].as_str().map(String::from)).collect())
}

fn conditions(cp: &ControlPlane, name: &str) -> Result<Value, String> {
    let text = get(&format!("{}/meshes/default/meshopentelemetrybackends/{name}", cp.api), None)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(v["status"]["conditions"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_database_survive_the_leader() {
    let envoy = support::envoy_binary();
    let url = support::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<ControlPlane> = (0..3)
        .map(|i| ControlPlane::start_with(&dir.path().join(format!("cp-{i}")), Some(&url), "127.0.0.1"))
        .collect();
    let leader = eventually(WAIT, "exactly one leader", || {
        let l = leaders(&replicas, &[0, 1, 2]);
        (l.len() == 1).then(|| l[0]).ok_or(format!("leaders: {l:?}"))
    });
    let (a, c) = ((leader + 1) % 3, (leader + 2) % 3);

    // web: tern-dp and Envoy on the leader first, the others listed after it.
    let (inbound, app, admin) = (free_port(), free_port(), free_port());
    let _app = support::demo_app(app, "web ok", None);
    let yaml = support::sidecar_dataplane("default", "web", inbound, app, admin);
    let web_extra = [
        "--envoy-binary",
        envoy.as_str(),
        "--cp-address",
        replicas[a].dp.as_str(),
        "--cp-address",
        replicas[c].dp.as_str(),
    ];
    let root = dir.path().join("dps");
    let web = DataPlane::start(&replicas[leader], &root, "web", &yaml, &[], &web_extra);
    // api: only replica C, without Envoy.
    let api_yaml = support::sidecar_dataplane("default", "api", free_port(), free_port(), free_port());
    let api = DataPlane::start(&replicas[c], &root, "api", &api_yaml, &[], &[]);

    // A write through A reaches the plan C serves.
    let written = Instant::now();
    replicas[a]
        .ternctl_stdin(&["apply", "-f", "-"], &format!("{}---\n{}", backend("first"), trace_policy("first")))
        .ok();
    eventually(WAIT, "A's write in the plan C serves", || {
        let b = plan_backends(&api)?;
        (b == ["first"]).then_some(()).ok_or(format!("{b:?}"))
    });
    println!("write through replica A -> plan served by replica C: {:?}", written.elapsed());
    eventually(WAIT, "Envoy connected", || {
        let s = get(&format!("http://127.0.0.1:{admin}/stats?filter=control_plane.connected_state"), None)?;
        s.contains("control_plane.connected_state: 1").then_some(()).ok_or(s)
    });

    // Steady writes through every replica, in the background.
    let apis: Vec<String> = replicas.iter().map(|r| r.api.clone()).collect();
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("steady-{i}");
                let run = ternctl_with(&apis[i % 3], &["apply", "-f", "-"], Some(&backend(&name)), &[]);
                if run.code == 0 {
                    acknowledged.lock().unwrap().push(name);
                }
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    // The leader dies.
    replicas[leader].kill();
    let killed = Instant::now();
    let alive = [a, c];
    let new_leader = eventually(WAIT, "a new leader among the survivors", || {
        let l = leaders(&replicas, &alive);
        (l.len() == 1).then(|| l[0]).ok_or(format!("leaders: {l:?}"))
    });
    println!("leadership moved from replica {leader} to {new_leader} in {:?}", killed.elapsed());
    // Churn: a data plane joins through the dead replica's address first.
    let late_yaml = support::sidecar_dataplane("default", "late", free_port(), free_port(), free_port());
    let late_extra = ["--cp-address", replicas[a].dp.as_str()];
    let late = DataPlane::start(&replicas[c], &root, "late", &late_yaml, &[], &late_extra);
    // Status writing resumes: a new backend is told it is referenced.
    replicas[a]
        .ternctl_stdin(&["apply", "-f", "-"], &format!("{}---\n{}", backend("second"), trace_policy("second")))
        .ok();
    eventually(WAIT, "the new leader writes status", || {
        let c = conditions(&replicas[a], "second")?;
        c.to_string().contains("ReferencedByPolicies").then_some(()).ok_or(c.to_string())
    });
    println!("status written again {:?} after the kill", killed.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    // Nothing acknowledged is lost.
    let stored = replicas[c].ternctl(&["get", "meshopentelemetrybackends", "-o", "json"]).ok().stdout;
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 5, "the writer kept writing: {acknowledged:?}");
    for name in &acknowledged {
        assert!(stored.contains(&format!("\"{name}\"")), "{name} was acknowledged but is not stored");
    }

    // Every data plane follows the survivors: plans carry the new backend, Envoy is connected.
    for dp in [&web, &api, &late] {
        eventually(WAIT, "the plan after the kill", || {
            let b = plan_backends(dp)?;
            (b == ["second"]).then_some(()).ok_or(format!("{b:?}"))
        });
    }
    eventually(WAIT, "Envoy on a survivor", || {
        let streams: f64 = alive.iter().filter_map(|i| metric(&replicas[*i], "xds_streams_active")).sum();
        (streams == 1.0).then_some(()).ok_or(format!("streams on survivors: {streams}"))
    });

    // A fresh replica computes the same plans from the database alone.
    let fresh = ControlPlane::start_with(&dir.path().join("cp-fresh"), Some(&url), "127.0.0.1");
    for dp in [&web, &api, &late] {
        let name = dp.work_dir.parent().and_then(|d| d.file_name()).and_then(|n| n.to_str()).unwrap().to_string();
        let token = std::fs::read_to_string(fresh.dataplane_token("default", &name, &[])).unwrap();
        let served = eventually(WAIT, "the fresh replica's plan", || {
            get(&format!("{}/otel/default/{name}?version=0&timeout=5", fresh.dp), Some(token.trim()))
        });
        let served: Value = serde_json::from_str(&served).unwrap();
        let held: Value = serde_json::from_str(&std::fs::read_to_string(dp.plan_file()).unwrap()).unwrap();
        assert_eq!(served["plan"], held, "{name} holds the plan a full recompute gives");
    }
    let web_log = web.log_text();
    assert!(web_log.contains("moving to the next"), "web's tern-dp moved replicas: {web_log}");

    // Runtime state through any replica: both survivors and the fresh one
    // (which holds nothing of web's) show the config web's Envoy accepted,
    // on which replica its ADS stream is, and tern-dp's delivery counts.
    let mut views = Vec::new();
    for cp in [&replicas[a], &replicas[c], &fresh] {
        views.push(eventually(WAIT, "web's runtime state through every replica", || {
            let text = get(&format!("{}/meshes/default/dataplanes/web/_runtime", cp.api), None)?;
            let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let whole = v["xds"]["ackedVersion"].is_string()
                && v["xds"]["replica"].is_string()
                && v["delivery"]["backends"].is_array()
                && v["deliveryReplica"].is_string();
            whole.then(|| v.clone()).ok_or(text)
        }));
    }
    for v in &views[1..] {
        assert_eq!(v["xds"], views[0]["xds"], "every replica shows the same ADS state");
    }
    let holder = views[0]["xds"]["replica"].as_str().unwrap_or_default().to_string();
    let text = fresh.ternctl(&["inspect", "dataplane", "web"]).ok().stdout;
    assert!(text.contains(&format!("Envoy (ADS stream on replica {holder})")), "{text}");
    assert!(text.contains("accepted config version"), "{text}");
}

#[test]
fn a_second_control_plane_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = ControlPlane::start(dir.path());
    let out = std::process::Command::new(support::TERN_CP)
        .args(["run", "--api-addr", "127.0.0.1:0", "--dp-addr", "127.0.0.1:0", "--api-tls-addr", "off"])
        .args(["--mads-addr", "off", "--metrics-addr", "off", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("in use by another tern-cp"), "{stderr}");
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
}

/// `tern-bench dataplanes`, small, against a real `tern-cp`: every simulated
/// data plane bootstraps, holds a plan and gets every edit; the ADS share
/// holds streams with listeners (the counts add up; no timing is checked).
#[tokio::test(flavor = "multi_thread")]
async fn the_load_tool_counts_add_up() {
    let url = support::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_args(dir.path(), Some(&url), "127.0.0.1", &["--dp-auth", "none"]);
    let metrics = cp.metrics.clone().unwrap();
    let pid = cp.pid().unwrap().to_string();
    let args: Vec<String> = [
        "dataplanes",
        "--cp",
        cp.dp.as_str(),
        "--api",
        cp.api.as_str(),
        "--metrics",
        metrics.as_str(),
        "--pid",
        pid.as_str(),
        "--postgres",
        url.as_str(),
        "--count",
        "40",
        "--ads-share",
        "0.25",
        "--edits",
        "2",
        "--backends",
        "5",
        "--policies",
        "12",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let bench = support::workspace_binary("tern-bench");
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(bench).args(args).output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = &report["counts"];
    assert_eq!(counts["bootstrapped"], 40, "{report}");
    assert_eq!(counts["withPlan"], 40, "{report}");
    assert_eq!(report["adsStreams"], 10, "{report}");
    assert!(counts["adsStreams"].as_u64().unwrap() >= 10, "{report}");
    assert_eq!(counts["adsWithListeners"], 10, "{report}");
    let edits = report["edits"].as_array().unwrap();
    assert_eq!(edits.len(), 2);
    for e in edits {
        // dp-3, dp-6 and dp-9 have a MeshTrace of their own on another backend.
        assert_eq!(e["affected"], 37, "{report}");
        assert_eq!(e["delivered"], 37, "every affected data plane got the edit: {report}");
        assert!(e["storeCalls"].as_f64().unwrap() > 0.0, "{report}");
        assert!(e["postgresTransactions"].as_i64().unwrap() > 0, "{report}");
    }
    assert!(counts["planResponses"].as_u64().unwrap() >= 40 + 37 * 2, "{report}");
    assert!(report["rss"]["beforeMb"].as_f64().unwrap() > 0.0, "{report}");
}
