//! `tern-dp run`: register with the control plane and follow the
//! OpenTelemetry plan. (Envoy and the OTLP pipe build on this.)

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tern_dp_server::{BootstrapResponse, PlanResponse};
use tern_model::Resource;
use tern_otlp_config::{resolve_signal, Inventory, ProcessEnv, Signal};
use tern_pipe::{LocalEnv, PipeManager};
use tern_resolve::OTEL_PIPE_FEATURE;
use tokio::sync::Mutex;
use tracing::{info, warn};

pub struct RunArgs {
    pub cp_address: String,
    pub envoy_binary: Option<PathBuf>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub dataplane: Resource,
    pub work_dir: Option<PathBuf>,
    pub otel_pipe: bool,
    pub queue: tern_pipe::QueueLimits,
}

/// The file the current plan is written to, inside the work directory.
pub const PLAN_FILE: &str = "otel-plan.json";
/// The file delivery counts are written to every second.
pub const STATS_FILE: &str = "otel-stats.json";

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs the agent until `stop` turns true: then Envoy gets SIGTERM and the
/// pipe's sockets are removed.
pub async fn run(args: RunArgs, stop: tokio::sync::watch::Receiver<bool>) -> Result<(), String> {
    let envoy = start_envoy(&args, stop.clone())?;
    let admin = match &envoy {
        Some(_) => Some(dataplane_spec(&args)?.admin_port()),
        None => None,
    };
    let mut stop_main = stop.clone();
    let result = tokio::select! {
        r = agent(args, admin) => r,
        _ = stop_main.wait_for(|s| *s) => Ok(()),
    };
    if let Some(envoy) = envoy {
        let _ = envoy.await;
    }
    result
}

/// Starts Envoy's supervisor, if an Envoy binary is available.
fn start_envoy(
    args: &RunArgs,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    let Some(binary) = crate::envoy::find_binary(args.envoy_binary.clone()) else {
        warn!("no Envoy binary (--envoy-binary, or envoy on PATH): running without a sidecar proxy");
        return Ok(None);
    };
    let dp = &args.dataplane;
    let spec = dataplane_spec(args)?;
    let service = service_of(args, &spec);
    let authority = args.cp_address.trim_end_matches('/').rsplit("://").next().unwrap_or_default().to_string();
    let (cp_host, cp_port) = authority
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("--cp-address must be http://HOST:PORT, got {:?}", args.cp_address))?;
    let setup = crate::envoy::EnvoySetup {
        binary,
        work_dir: work_dir_of(args),
        node_id: format!("{}/{}", dp.mesh, dp.name),
        service,
        admin_port: spec.admin_port(),
        cp_host,
        cp_port,
    };
    std::fs::create_dir_all(&setup.work_dir).map_err(|e| format!("creating work directory: {e}"))?;
    Ok(Some(tokio::spawn(crate::envoy::supervise(setup, stop))))
}

fn dataplane_spec(args: &RunArgs) -> Result<tern_model::spec::DataplaneSpec, String> {
    serde_json::from_value(args.dataplane.spec.clone()).map_err(|e| e.to_string())
}

/// The dataplane's `kuma.io/service` (its first inbound's), else its name.
fn service_of(args: &RunArgs, spec: &tern_model::spec::DataplaneSpec) -> String {
    spec.networking
        .as_ref()
        .and_then(|n| n.inbound.first())
        .and_then(|i| i.tags.get(tern_model::spec::dataplane::SERVICE_TAG).cloned())
        .unwrap_or_else(|| args.dataplane.name.clone())
}

fn work_dir_of(args: &RunArgs) -> PathBuf {
    let dp = &args.dataplane;
    args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("tern-dp").join(&dp.mesh).join(&dp.name))
}

async fn agent(args: RunArgs, envoy_admin: Option<u16>) -> Result<(), String> {
    let dp = &args.dataplane;
    let work_dir =
        args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("tern-dp").join(&dp.mesh).join(&dp.name));
    std::fs::create_dir_all(&work_dir).map_err(|e| format!("creating work directory {}: {e}", work_dir.display()))?;
    let (values, parsed, inventory) = Inventory::discover(&ProcessEnv);
    let pipe = Arc::new(Mutex::new(PipeManager::new(
        LocalEnv { parsed, inventory: inventory.clone(), host_ip: values.host_ip.clone() },
        args.queue,
    )));
    if let Some(addr) = args.metrics_addr {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("binding --metrics-addr {addr}: {e}"))?;
        let pipe = pipe.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let pipe = pipe.clone();
                async move { pipe.lock().await.prometheus() }
            }),
        );
        info!(addr = %addr, "serving delivery counts at /metrics");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    let (plan_tx, plan_rx) = tokio::sync::watch::channel(tern_otlp_config::OtelPlan::default());
    if let Some(admin) = envoy_admin {
        let spec = dataplane_spec(&args)?;
        let zone =
            spec.networking.as_ref().and_then(|n| n.inbound.first()).and_then(|i| i.tags.get("kuma.io/zone").cloned());
        let mut resource = vec![
            ("service.name".to_string(), service_of(&args, &spec)),
            ("kuma.mesh".to_string(), dp.mesh.clone()),
            ("kuma.dataplane".to_string(), dp.name.clone()),
        ];
        resource.extend(zone.map(|z| ("kuma.zone".to_string(), z)));
        tokio::spawn(envoy_metrics(pipe.clone(), plan_rx, admin, resource));
    }
    let report_url = format!("{}/delivery/{}/{}", args.cp_address.trim_end_matches('/'), dp.mesh, dp.name);
    tokio::spawn(write_stats(pipe.clone(), work_dir.join(STATS_FILE), report_url));
    let features: Vec<&str> = if args.otel_pipe { vec![OTEL_PIPE_FEATURE] } else { vec![] };
    let request = json!({
        "dataplane": dp.to_json(),
        "version": env!("CARGO_PKG_VERSION"),
        "features": features,
        "workDir": work_dir.to_string_lossy(),
        "otelEnv": inventory,
    });
    let client = reqwest::Client::builder().timeout(Duration::from_secs(45)).build().map_err(|e| e.to_string())?;
    let cp = args.cp_address.trim_end_matches('/').to_string();
    let mut version = 0u64;
    'bootstrap: loop {
        let registered = bootstrap(&client, &cp, &request).await?;
        info!(mesh = %registered.mesh, dataplane = %registered.name, work_dir = %work_dir.display(), "registered with the control plane");
        let mut backoff = Duration::from_millis(200);
        loop {
            let url = format!("{cp}{}?version={version}&timeout=30", registered.plan_path);
            let resp = match client.get(&url).send().await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %root_cause(&e), "control plane unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            match resp.status().as_u16() {
                200 => {
                    let plan: PlanResponse = resp.json().await.map_err(|e| format!("reading the plan: {e}"))?;
                    version = plan.version;
                    apply_plan(&work_dir, &plan, &inventory)?;
                    pipe.lock().await.apply(&plan.plan).await;
                    let _ = plan_tx.send(plan.plan.clone());
                }
                304 => {}
                404 => {
                    warn!("the control plane does not know this data plane any more; registering again");
                    continue 'bootstrap;
                }
                code => {
                    warn!(status = code, "unexpected answer to the plan request; retrying");
                    tokio::time::sleep(MAX_BACKOFF).await;
                }
            }
        }
    }
}

async fn bootstrap(client: &reqwest::Client, cp: &str, request: &Value) -> Result<BootstrapResponse, String> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match client.post(format!("{cp}/bootstrap")).json(request).send().await {
            Ok(resp) if resp.status().is_success() => {
                return resp.json().await.map_err(|e| format!("reading the bootstrap answer: {e}"));
            }
            Ok(resp) if resp.status().is_client_error() => {
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                let mut msg = format!(
                    "the control plane refused this data plane: {}",
                    body["detail"].as_str().unwrap_or("no detail")
                );
                for p in body["invalid_parameters"].as_array().into_iter().flatten() {
                    msg.push_str(&format!(
                        "\n  {}: {}",
                        p["field"].as_str().unwrap_or(""),
                        p["reason"].as_str().unwrap_or("")
                    ));
                }
                return Err(msg);
            }
            Ok(resp) => warn!(status = resp.status().as_u16(), "bootstrap failed; retrying"),
            Err(e) => warn!(cp = %cp, error = %root_cause(&e), "control plane unreachable; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Keeps the plan where operators (and `tern-dp otel resolve`) can read it,
/// and says per backend and signal what this data plane will do.
fn apply_plan(work_dir: &Path, plan: &PlanResponse, inventory: &Inventory) -> Result<(), String> {
    let path = work_dir.join(PLAN_FILE);
    let tmp = work_dir.join(format!(".{PLAN_FILE}.tmp"));
    let text = serde_json::to_string_pretty(&plan.plan).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    let names: Vec<&str> = plan.plan.backends.iter().map(|b| b.name.as_str()).collect();
    info!(version = plan.version, backends = ?names, "OpenTelemetry plan received");
    for note in &plan.notes {
        warn!("{note}");
    }
    for b in &plan.plan.backends {
        for signal in Signal::ALL {
            let Some(p) = b.signal(signal).filter(|p| p.status.enabled) else { continue };
            let local = resolve_signal(&b.settings, signal, inventory, p.ambiguous());
            info!(backend = %b.name, signal = %signal, state = ?local.state, exports = local.exports, "signal");
        }
    }
    Ok(())
}

/// Keeps `otel-stats.json` current: per backend and signal, what arrived,
/// what reached the collector, retries, drops and the last error.
/// and reports them to the control plane (every second while they move,
/// every 10 s otherwise) for `ternctl inspect`.
async fn write_stats(pipe: Arc<Mutex<PipeManager>>, path: PathBuf, report_url: String) {
    let tmp = path.with_extension("json.tmp");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let mut last_sent = serde_json::Value::Null;
    let mut since_sent = 0u32;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let report = json!({"backends": pipe.lock().await.stats()});
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            warn!(error = %e, "cannot write the delivery counts");
        }
        since_sent += 1;
        let due = report != last_sent || since_sent >= 10;
        if due && client.post(&report_url).json(&report).send().await.is_ok_and(|r| r.status().is_success()) {
            last_sent = report;
            since_sent = 0;
        }
    }
}

/// MeshMetric on the data plane: Envoy's statistics, scraped from its admin
/// endpoint every `refreshInterval` (default 1m) per backend, pushed through
/// that backend's pipe as OTLP metrics.
async fn envoy_metrics(
    pipe: Arc<Mutex<PipeManager>>,
    plan: tokio::sync::watch::Receiver<tern_otlp_config::OtelPlan>,
    admin: u16,
    resource: Vec<(String, String)>,
) {
    let resource: Vec<(&str, &str)> = resource.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut warned_cap = false;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let url = format!("http://127.0.0.1:{admin}/stats/prometheus");
    let mut last: std::collections::HashMap<String, tokio::time::Instant> = std::collections::HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let due: Vec<String> = plan
            .borrow()
            .backends
            .iter()
            .filter_map(|b| {
                let m = b.metrics.as_ref().filter(|m| m.status.enabled)?;
                let every = m
                    .refresh_interval
                    .as_deref()
                    .and_then(|r| tern_model::spec::duration::parse_go_duration(r).ok())
                    .filter(|d| !d.is_zero())
                    .unwrap_or(Duration::from_secs(60));
                let is_due = last.get(&b.name).is_none_or(|t| t.elapsed() >= every);
                is_due.then(|| b.name.clone())
            })
            .collect();
        if due.is_empty() {
            continue;
        }
        let text = match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            _ => continue, // Envoy not up yet
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let converted = tern_pipe::envoy_metrics::to_otlp(&text, &resource, now);
        if converted.dropped_series > 0 && !warned_cap {
            warned_cap = true;
            warn!(
                dropped_series = converted.dropped_series,
                cap = tern_pipe::envoy_metrics::MAX_SERIES_PER_METRIC,
                "Envoy metrics over the per-metric series cap were left out"
            );
        }
        // Encoded once, shared by every backend that is due.
        let payload = tern_pipe::OtlpRequest::Metrics(converted.request).to_payload();
        for backend in due {
            last.insert(backend.clone(), tokio::time::Instant::now());
            let submitted = pipe.lock().await.submit(&backend, payload.clone());
            if let Err(e) = submitted {
                tracing::debug!(backend = %backend, error = %e, "Envoy metrics not queued");
            }
        }
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
