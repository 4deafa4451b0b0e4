//! `tern-dp run`: register with the control plane, follow the OpenTelemetry
//! plan, run Envoy and the OTLP pipe, report delivery. Every part runs
//! under one supervisor ([`run`]): any part failing stops the others
//! (Envoy gets SIGTERM) and `tern-dp` exits non-zero with the cause.

use crate::cp::{BootstrapError, ControlPlane, Refused};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tern_model::Resource;
use tern_otlp_config::{resolve_signal, Inventory, OtelPlan, ProcessEnv, Signal};
use tern_pipe::{LocalEnv, PipeManager};
use tern_protocol::{BackendDelivery, BootstrapRequest, DeliveryReport, PlanResponse, SignalDelivery};
use tern_resolve::{ACCESS_LOG_FIFO_FEATURE, OTEL_PIPE_FEATURE};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;
use tracing::{info, warn};

pub struct RunArgs {
    pub cp: crate::cp::Settings,
    pub envoy_binary: Option<PathBuf>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// For MeshMetric Prometheus endpoints with `tls.mode: ProvidedTLS`.
    pub metrics_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    pub dataplane: DataplaneSource,
    pub work_dir: Option<PathBuf>,
    pub otel_pipe: bool,
    pub queue: tern_pipe::QueueLimits,
}

/// Where this data plane's Dataplane comes from.
pub enum DataplaneSource {
    /// Given (`--dataplane-file`): registered with the control plane.
    File(Box<Resource>),
    /// Already stored (`--name`, `--mesh`): read back at registration.
    Stored { mesh: String, name: String },
}

/// The file the current plan is written to, inside the work directory.
pub const PLAN_FILE: &str = "otel-plan.json";
/// The file delivery counts are written to every second.
pub const STATS_FILE: &str = "otel-stats.json";

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the parts get to finish after a stop (Envoy drains in 2 s).
const STOP_GRACE: Duration = Duration::from_secs(12);

type Part = (&'static str, Result<(), String>);

/// Runs every part until `stop` turns true or one of them fails.
pub async fn run(args: RunArgs, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let cp = ControlPlane::connect(&args.cp)?;
    let (values, parsed, inventory) = Inventory::discover(&ProcessEnv);
    let mut features = vec![ACCESS_LOG_FIFO_FEATURE.to_string()];
    if args.otel_pipe {
        features.push(OTEL_PIPE_FEATURE.to_string());
    }
    let mut request = BootstrapRequest {
        dataplane: None,
        mesh: None,
        name: None,
        version: env!("CARGO_PKG_VERSION").to_string(),
        features,
        work_dir: String::new(),
        otel_env: inventory.clone(),
    };
    let dp = match &args.dataplane {
        DataplaneSource::File(dp) => (**dp).clone(),
        DataplaneSource::Stored { mesh, name } => {
            let work_dir = work_dir_of(&args, mesh, name);
            request.work_dir = work_dir.to_string_lossy().into_owned();
            (request.mesh, request.name) = (Some(mesh.clone()), Some(name.clone()));
            stored_dataplane(&cp, &request, &work_dir).await?
        }
    };
    let spec = dataplane_spec(&dp)?;
    let work_dir = work_dir_of(&args, &dp.mesh, &dp.name);
    std::fs::create_dir_all(&work_dir).map_err(|e| format!("creating work directory {}: {e}", work_dir.display()))?;
    request.work_dir = work_dir.to_string_lossy().into_owned();
    if let DataplaneSource::File(dp) = &args.dataplane {
        request.dataplane = Some(dp.to_json());
    }
    let pipe = Arc::new(Mutex::new(PipeManager::new(
        LocalEnv {
            parsed,
            inventory: inventory.clone(),
            host_ip: values.host_ip.clone(),
            host_name: Some(crate::host_name()),
        },
        args.queue,
    )));
    // Bound before Envoy starts, so a taken address stops everything at once.
    let metrics = match args.metrics_addr {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("binding --metrics-addr {addr}: {e}"))?)
        }
        None => None,
    };

    // The FIFO exists before Envoy opens it.
    let fifo = PathBuf::from(tern_resolve::access_log_fifo(&request.work_dir));
    crate::tcp_logs::create_fifo(&fifo)?;
    let tcp_logs = Arc::new(crate::tcp_logs::TcpLogCounts::default());

    let (halt_tx, halt) = watch::channel(false);
    let mut parts: JoinSet<Part> = JoinSet::new();
    parts.spawn(until_halt("tcp access logs", halt.clone(), crate::tcp_logs::forward(fifo, tcp_logs.clone())));
    let envoy = crate::envoy::setup(&args, &dp, &spec, &work_dir)?;
    let admin = envoy.as_ref().map(|e| e.admin_port);
    if let Some(setup) = envoy {
        parts.spawn(named("Envoy", crate::envoy::supervise(setup, halt.clone())));
    }
    if let Some(listener) = metrics {
        parts.spawn(until_halt("metrics server", halt.clone(), serve_metrics(listener, pipe.clone(), tcp_logs)));
    }
    let (plan_tx, plan_rx) = watch::channel(OtelPlan::default());
    if let Some(admin) = admin {
        let identity = (dp.clone(), spec.clone());
        let address = spec.networking.as_ref().and_then(|n| n.address.parse::<std::net::IpAddr>().ok());
        match address {
            Some(address) => {
                let endpoints = crate::prometheus::serve_endpoints(
                    plan_rx.clone(),
                    crate::prometheus::Serving { address, tls: args.metrics_tls.clone() },
                    admin,
                    prometheus_labels(&dp, &spec),
                    pipe.clone(),
                );
                parts.spawn(until_halt("Prometheus endpoints", halt.clone(), endpoints));
            }
            None => {
                warn!("the Dataplane's address is not an IP address: MeshMetric Prometheus backends are not served")
            }
        }
        let metrics = envoy_metrics(pipe.clone(), plan_rx, admin, address, identity);
        parts.spawn(until_halt("Envoy metrics", halt.clone(), metrics));
    }
    let stats_path = work_dir.join(STATS_FILE);
    parts.spawn(until_halt(
        "delivery reporter",
        halt.clone(),
        report_delivery(pipe.clone(), stats_path, cp.clone(), dp.clone()),
    ));
    let follower = follow_plan(cp, request, work_dir, inventory, pipe.clone(), plan_tx);
    parts.spawn(until_halt("plan follower", halt.clone(), follower));

    let outcome = tokio::select! {
        _ = stop.wait_for(|s| *s) => Ok(()),
        Some(ended) = parts.join_next() => Err(match ended {
            Ok((part, Err(e))) => format!("{part} failed: {e}"),
            Ok((part, Ok(()))) => format!("{part} stopped unexpectedly"),
            Err(e) => format!("a part of tern-dp panicked: {e}"),
        }),
    };
    if let Err(e) = &outcome {
        tracing::error!("{e}; stopping");
    }
    let _ = halt_tx.send(true);
    let finished = tokio::time::timeout(STOP_GRACE, async { while parts.join_next().await.is_some() {} });
    if finished.await.is_err() {
        warn!("parts still running {STOP_GRACE:?} after the stop; aborting them");
        parts.abort_all();
    }
    pipe.lock().await.shutdown();
    outcome
}

fn work_dir_of(args: &RunArgs, mesh: &str, name: &str) -> PathBuf {
    args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("tern-dp").join(mesh).join(name))
}

/// Registers by mesh and name and reads back the stored Dataplane, retrying
/// while the control plane cannot be reached or does not have it yet (on
/// Kubernetes the Pod controller makes it once the Pod has its IP).
async fn stored_dataplane(cp: &ControlPlane, request: &BootstrapRequest, work_dir: &Path) -> Result<Resource, String> {
    std::fs::create_dir_all(work_dir).map_err(|e| format!("creating work directory {}: {e}", work_dir.display()))?;
    let mut backoff = Duration::from_millis(200);
    loop {
        match cp.bootstrap(request).await {
            Ok(registered) => {
                let doc = registered.dataplane.ok_or("the control plane did not send the stored Dataplane")?;
                let parsed = tern_model::resource_from_document(&doc)
                    .map_err(|e| format!("the stored Dataplane is not valid: {}", e.violations))?;
                return Ok(parsed.resource);
            }
            Err(BootstrapError::NotStored(why)) => {
                warn!(error = %why, retry_in = ?backoff, "the Dataplane is not stored yet; waiting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(refused) => return Err(refused.into_message()),
        }
    }
}

async fn named(part: &'static str, fut: impl Future<Output = Result<(), String>> + Send + 'static) -> Part {
    (part, fut.await)
}

/// Runs `fut` until it ends or `halt` turns true.
async fn until_halt(
    part: &'static str,
    mut halt: watch::Receiver<bool>,
    fut: impl Future<Output = Result<(), String>> + Send + 'static,
) -> Part {
    tokio::select! {
        r = fut => (part, r),
        _ = halt.wait_for(|h| *h) => (part, Ok(())),
    }
}

pub fn dataplane_spec(dp: &Resource) -> Result<tern_model::spec::DataplaneSpec, String> {
    serde_json::from_value(dp.spec.clone()).map_err(|e| format!("the Dataplane's spec: {e}"))
}

/// The dataplane's `kuma.io/service` (its first inbound's), else its name.
pub fn service_of(dp: &Resource, spec: &tern_model::spec::DataplaneSpec) -> String {
    spec.networking
        .as_ref()
        .and_then(|n| n.inbound.first())
        .and_then(|i| i.tags.get(tern_model::spec::dataplane::SERVICE_TAG).cloned())
        .unwrap_or_else(|| dp.name.clone())
}

/// The resource attributes of one backend's metrics: the semantic
/// conventions this data plane provides, then the backend's templates
/// (`tern_model::spec::resource`), and `host.name` (this host's).
fn resource_attributes(
    dp: &Resource,
    spec: &tern_model::spec::DataplaneSpec,
    templates: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let view = tern_model::spec::resource::DataplaneView { mesh: &dp.mesh, name: &dp.name, labels: &dp.labels, spec };
    let mut attrs = view.resource_attributes(templates);
    if !attrs.iter().any(|(k, _)| k == "host.name") {
        attrs.push(("host.name".into(), crate::host_name()));
    }
    attrs
}

/// The labels Kuma's agent adds to what its Prometheus endpoint serves.
fn prometheus_labels(dp: &Resource, spec: &tern_model::spec::DataplaneSpec) -> Vec<(String, String)> {
    let zone =
        spec.networking.as_ref().and_then(|n| n.inbound.first()).and_then(|i| i.tags.get("kuma.io/zone").cloned());
    let mut labels = vec![("mesh".to_string(), dp.mesh.clone())];
    labels.extend(zone.map(|z| ("zone".to_string(), z)));
    labels.push(("service".to_string(), service_of(dp, spec)));
    labels.push(("dataplane".to_string(), dp.name.clone()));
    labels
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    pipe: Arc<Mutex<PipeManager>>,
    tcp_logs: Arc<crate::tcp_logs::TcpLogCounts>,
) -> Result<(), String> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (pipe, tcp_logs) = (pipe.clone(), tcp_logs.clone());
            async move { pipe.lock().await.prometheus() + &tcp_logs.prometheus() }
        }),
    );
    info!(addr = ?listener.local_addr().ok(), "serving delivery counts at /metrics");
    axum::serve(listener, app).await.map_err(|e| format!("serving /metrics: {e}"))
}

/// Registers, then long-polls the plan and applies each new one. Returns
/// only with an error the control plane will not change its mind about (a
/// refused bootstrap or token).
async fn follow_plan(
    cp: ControlPlane,
    mut request: BootstrapRequest,
    work_dir: PathBuf,
    inventory: Inventory,
    pipe: Arc<Mutex<PipeManager>>,
    plan_tx: watch::Sender<OtelPlan>,
) -> Result<(), String> {
    let mut version = 0u64;
    loop {
        let registered = cp.bootstrap(&request).await.map_err(BootstrapError::into_message)?;
        info!(mesh = %registered.mesh, dataplane = %registered.name, work_dir = %work_dir.display(), "registered with the control plane");
        let mut backoff = Duration::from_millis(200);
        loop {
            match cp.poll_plan(&registered.plan_path, version).await {
                Ok(Some(mut plan)) => {
                    backoff = Duration::from_millis(200);
                    version = plan.version;
                    local_sockets(&mut plan.plan, &work_dir);
                    apply_plan(&work_dir, &plan, &inventory)?;
                    pipe.lock().await.apply(&plan.plan).await;
                    let _ = plan_tx.send(plan.plan.clone());
                    if host_inputs_changed(&mut request, &plan.plan) {
                        break;
                    }
                }
                Ok(None) => {
                    backoff = Duration::from_millis(200);
                    // No new plan: host inputs may have come, gone or changed
                    // (a rotated token file) since; the pipe takes them up,
                    // and the control plane hears of what is missing.
                    let current = plan_tx.borrow().clone();
                    pipe.lock().await.apply(&current).await;
                    if host_inputs_changed(&mut request, &current) {
                        break;
                    }
                }
                Err(crate::cp::PollError::NotRegistered) => {
                    warn!("the control plane does not know this data plane any more; registering again");
                    break;
                }
                Err(crate::cp::PollError::Refused(Refused(why))) => return Err(why),
                Err(crate::cp::PollError::Transient(why)) => {
                    warn!(error = %why, retry_in = ?backoff, "cannot get the plan; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Whether the host inputs `plan` lacks differ from what `request` told the
/// control plane; if so `request` now says them (registering again sends it).
fn host_inputs_changed(request: &mut BootstrapRequest, plan: &OtelPlan) -> bool {
    let missing = missing_host_inputs(plan);
    if missing == request.otel_env.missing_host_inputs {
        return false;
    }
    info!(?missing, "host inputs of the plan's backends changed; telling the control plane");
    request.otel_env.missing_host_inputs = missing;
    true
}

/// Per backend of `plan`, the inputs it reads on this host that are not
/// there (names only: the inventory never carries a path or a value).
fn missing_host_inputs(plan: &OtelPlan) -> BTreeMap<String, Vec<String>> {
    let readable = |path: &Path| std::fs::File::open(path).is_ok();
    plan.backends
        .iter()
        .map(|b| (b.name.clone(), b.settings.missing_host_inputs(&ProcessEnv, &readable)))
        .filter(|(_, missing)| !missing.is_empty())
        .collect()
}

/// Socket paths come from this data plane's own work directory, never from
/// the network: the plan's are replaced by the ones computed here.
fn local_sockets(plan: &mut OtelPlan, work_dir: &Path) {
    let dir = work_dir.to_string_lossy();
    for b in &mut plan.backends {
        let local = tern_resolve::socket_path(&dir, &b.name);
        if b.socket_path != local {
            warn!(backend = %b.name, "the plan's socket path is not this data plane's; using its own");
            b.socket_path = local;
        }
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

/// The pipe's counts as the protocol's delivery report (no socket paths).
fn delivery_report(pipe: &PipeManager) -> DeliveryReport {
    let backends = pipe
        .stats()
        .into_iter()
        .map(|b| BackendDelivery {
            name: b.name,
            signals: b
                .signals
                .into_iter()
                .map(|(signal, s)| {
                    let d = SignalDelivery {
                        exporting: s.exporting,
                        unavailable: s.unavailable,
                        received: s.counts.received,
                        exported: s.counts.exported,
                        retries: s.counts.retries,
                        dropped: s.counts.dropped,
                        last_error: s.counts.last_error,
                        queued_requests: s.queued_requests,
                        queued_bytes: s.queued_bytes,
                    };
                    (signal, d)
                })
                .collect(),
        })
        .collect();
    DeliveryReport { backends }
}

/// Keeps `otel-stats.json` current (per backend and signal: what arrived,
/// what reached the collector, retries, drops, the last error) and reports
/// it to the control plane (every second while it moves, every 10 s
/// otherwise) for `ternctl inspect`.
async fn report_delivery(
    pipe: Arc<Mutex<PipeManager>>,
    path: PathBuf,
    cp: ControlPlane,
    dp: Resource,
) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    let mut last_sent = DeliveryReport::default();
    let mut since_sent = 0u32;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let report = delivery_report(&*pipe.lock().await);
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            warn!(error = %e, "cannot write the delivery counts");
        }
        since_sent += 1;
        let due = report != last_sent || since_sent >= 10;
        if due && cp.report_delivery(&dp.mesh, &dp.name, &report).await {
            last_sent = report;
            since_sent = 0;
        }
    }
}

/// MeshMetric on the data plane: Envoy's statistics, scraped from its admin
/// endpoint every `refreshInterval` (default 1m) per backend, filtered by
/// the merged `sidecar` profiles, pushed through that backend's pipe as OTLP
/// metrics. Only statistics Envoy has used unless `includeUnused` (Kuma's
/// `usedonly`): the hundreds that never moved would be encoded, sent and
/// stored for nothing.
async fn envoy_metrics(
    pipe: Arc<Mutex<PipeManager>>,
    plan: watch::Receiver<OtelPlan>,
    admin: u16,
    address: Option<std::net::IpAddr>,
    (dp, spec): (Resource, tern_model::spec::DataplaneSpec),
) -> Result<(), String> {
    let warned_cap = std::sync::atomic::AtomicBool::new(false);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
    let mut last: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let due = due_backends(&plan.borrow(), &last);
        if due.is_empty() {
            continue;
        }
        let sidecar = plan.borrow().sidecar_metrics.clone();
        let text = match client.get(crate::prometheus::stats_url(admin, &sidecar)).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            _ => continue, // Envoy not up yet
        };
        // The OTLP conversion below applies the same cap.
        let mut texts = vec![crate::metric_filter::MetricFilter::new(&sidecar).apply(&text).text];
        // Each application's own metrics (MeshMetric `applications[]`).
        if let Some(dp_address) = address {
            let apps = plan.borrow().applications.clone();
            for app in &apps {
                match crate::prometheus::application_metrics(&client, dp_address, app).await {
                    Ok(text) => texts.push(text),
                    Err(e) => tracing::debug!(error = %e, "application metrics not pushed"),
                }
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // Encoded once per distinct resource, which most backends share.
        let mut encoded: HashMap<Vec<(String, String)>, Vec<tern_pipe::wire::Payload>> = HashMap::new();
        let mut dropped = 0;
        for backend in due {
            last.insert(backend.clone(), tokio::time::Instant::now());
            let resource = backend_resource(&plan.borrow(), &backend, &dp, &spec);
            let payloads = encoded.entry(resource).or_insert_with_key(|resource| {
                let pairs: Vec<(&str, &str)> = resource.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let converted = texts.iter().map(|text| tern_pipe::envoy_metrics::to_otlp(text, &pairs, now));
                converted
                    .map(|c| {
                        dropped += c.dropped_series;
                        tern_pipe::OtlpRequest::Metrics(c.request).to_payload()
                    })
                    .collect()
            });
            for payload in payloads.iter() {
                let submitted = pipe.lock().await.submit(&backend, payload.clone());
                if let Err(e) = submitted {
                    tracing::debug!(backend = %backend, error = %e, "metrics not queued");
                }
            }
        }
        crate::metric_filter::report_cap(&warned_cap, dropped, "opentelemetry");
    }
}

/// The resource of `backend`'s metrics on this data plane.
fn backend_resource(
    plan: &OtelPlan,
    backend: &str,
    dp: &Resource,
    spec: &tern_model::spec::DataplaneSpec,
) -> Vec<(String, String)> {
    let none = BTreeMap::new();
    let metrics = plan.backends.iter().find(|b| b.name == backend).and_then(|b| b.metrics.as_ref());
    resource_attributes(dp, spec, metrics.map_or(&none, |m| &m.resource_attributes))
}

/// Backends whose metrics refresh interval has passed.
fn due_backends(plan: &OtelPlan, last: &HashMap<String, tokio::time::Instant>) -> Vec<String> {
    plan.backends
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
        .collect()
}
