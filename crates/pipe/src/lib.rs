//! The data plane's OTLP pipe, one per backend in the plan:
//!
//! ```text
//! Envoy / app ──OTLP/gRPC──▶ unix socket (receiver.rs) ──bounded queue──▶ exporter (export.rs) ──▶ collector
//! ```
//!
//! What each signal exports to is decided by `tern-otlp-config` (the same
//! merge the control plane used for status). Requests travel as the bytes
//! they arrived as (`wire.rs`): nothing in the final config rewrites a
//! payload, so nothing is decoded or re-encoded. The queue is bounded per
//! signal, in requests and in bytes: when the collector is down, requests
//! wait and are retried with backoff; when the queue is full, a new request
//! waits for room (its sender waits for the answer) up to
//! [`QueueLimits::wait`] in a bounded waiting room, then is refused with
//! `RESOURCE_EXHAUSTED` and counted as dropped. Nothing is lost silently:
//! [`PipeManager::stats`] reports every count.

pub mod envoy_metrics;
mod export;
pub mod grpc;
mod receiver;
mod request;
mod stats;
pub mod wire;

pub use export::{ExportError, Exporter, Transport};
pub use request::{data_points, OtlpRequest};
pub use stats::{SignalStats, StatsSnapshot};

use bytes::Bytes;
use receiver::{Queued, Route, Routes};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tern_otlp_config::exporter::ClientKey;
use tern_otlp_config::{
    build_exporter, resolve_signal, Delivery, ExporterConfig, Inventory, OtelPlan, ParsedEnv, ProcessEnv, Signal,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use wire::ResourceAttribute;

/// Requests a signal's queue holds while the collector is unreachable.
pub const DEFAULT_QUEUE_REQUESTS: usize = 1024;
/// Bytes of requests a signal's queue holds (encoded, as received).
pub const DEFAULT_QUEUE_BYTES: usize = 16 << 20;
/// How long a request that finds its queue full waits for room before it is
/// refused. As long as the export loop's longest backoff before jitter
/// (`MAX_BACKOFF`), so a collector that stalls for a moment (a restart, a
/// pause) is retried at least once while senders wait; half the 10 s export
/// timeout of the OpenTelemetry SDKs, so they hear the answer before they
/// give up. While the collector keeps up, nothing waits that long: waiters
/// get room as fast as the queue drains.
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// How much one signal's queue holds, counting requests being sent. With a
/// wait, requests that find it full wait for room in a waiting room of one
/// eighth of each bound, on top of it (see `receiver/queue.rs`). A request
/// is refused when it would pass either bound and finds no place to wait, or
/// after waiting `wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub requests: usize,
    pub bytes: usize,
    /// Zero refuses at once when the queue is full.
    pub wait: Duration,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits { requests: DEFAULT_QUEUE_REQUESTS, bytes: DEFAULT_QUEUE_BYTES, wait: DEFAULT_QUEUE_WAIT }
    }
}
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a failed batch is retried: exponential backoff from `initial` to
/// `max` (with jitter), given up after `max_elapsed` if set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub max_elapsed: Option<Duration>,
}

impl RetryPolicy {
    /// A backend's `retry`, the pipe's defaults for what it leaves out.
    pub fn of(delivery: &Delivery) -> RetryPolicy {
        let ms = Duration::from_millis;
        RetryPolicy {
            initial: delivery.initial_backoff_ms.map_or(Duration::from_millis(100), ms),
            max: delivery.max_backoff_ms.map_or(MAX_BACKOFF, ms),
            max_elapsed: delivery.max_elapsed_ms.filter(|m| *m > 0).map(ms),
        }
    }
}

impl QueueLimits {
    /// These limits with a backend's `queue` applied.
    fn with(self, delivery: &Delivery) -> QueueLimits {
        QueueLimits {
            requests: delivery.queue_requests.unwrap_or(self.requests),
            bytes: delivery.queue_bytes.unwrap_or(self.bytes),
            wait: self.wait,
        }
    }
}

/// What one signal of a running backend does.
#[derive(Clone, PartialEq)]
enum SignalSetup {
    Export(ExporterConfig),
    Unavailable(String),
}

struct RunningBackend {
    name: String,
    routes: Arc<Routes>,
    /// Tells the export loops to give up what they still hold.
    abandon: tokio::sync::watch::Sender<bool>,
    setup: BTreeMap<Signal, SignalSetup>,
    delivery: Delivery,
    stats: BTreeMap<Signal, Arc<SignalStats>>,
    stop: Option<oneshot::Sender<()>>,
}

impl RunningBackend {
    /// Stops taking requests; what is queued is still delivered for up to
    /// [`DRAIN_TIMEOUT`], then abandoned and counted as dropped.
    fn drain(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // With the routes gone, each export loop ends once its queue is empty.
        drop(self.routes);
        let abandon = self.abandon;
        tokio::spawn(async move {
            tokio::time::sleep(DRAIN_TIMEOUT).await;
            let _ = abandon.send(true);
        });
    }

    /// Stops at once (tern-dp is exiting); queued items are counted as dropped.
    fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.abandon.send(true);
    }
}

/// Items one export carries at most when queued requests are batched.
pub const MAX_BATCH_ITEMS: u64 = 2048;
/// Bytes one batched export carries at most: under the 4 MiB a gRPC
/// collector accepts by default. A single larger request still goes alone.
pub const MAX_BATCH_BYTES: usize = 3 << 20;

/// How long a replaced pipe keeps delivering what it had queued.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Per backend and signal: counts and whether it exports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalReport {
    pub exporting: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    #[serde(flatten)]
    pub counts: StatsSnapshot,
    /// Requests queued or being sent now, and their bytes.
    pub queued_requests: u64,
    pub queued_bytes: u64,
    /// Requests read from senders and waiting for room in the queue, and
    /// their bytes.
    pub waiting_requests: u64,
    pub waiting_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendReport {
    pub name: String,
    pub socket_path: String,
    pub signals: BTreeMap<Signal, SignalReport>,
}

/// The local environment the pipe's exporters are built from.
pub struct LocalEnv {
    pub parsed: ParsedEnv,
    pub inventory: Inventory,
    pub host_ip: Option<String>,
    /// This host's name: added to log requests' resources as `host.name`.
    pub host_name: Option<String>,
}

/// Runs one pipe per backend of the current plan.
pub struct PipeManager {
    env: LocalEnv,
    queue: QueueLimits,
    running: BTreeMap<PathBuf, RunningBackend>,
}

impl PipeManager {
    pub fn new(env: LocalEnv, queue: QueueLimits) -> Self {
        PipeManager { env, queue, running: BTreeMap::new() }
    }

    /// Brings the running pipes in line with `plan`: backends that are gone
    /// stop, changed ones restart, unchanged ones are left alone.
    pub async fn apply(&mut self, plan: &OtelPlan) {
        let mut wanted: BTreeMap<PathBuf, (String, BTreeMap<Signal, SignalSetup>, Delivery)> = BTreeMap::new();
        for b in &plan.backends {
            let mut setup = BTreeMap::new();
            for signal in Signal::ALL {
                let Some(p) = b.signal(signal).filter(|p| p.status.enabled) else {
                    setup.insert(signal, SignalSetup::Unavailable("signal is not enabled".into()));
                    continue;
                };
                let r = resolve_signal(&b.settings, signal, &self.env.inventory, p.ambiguous());
                let s = match build_exporter(&b.settings, &r, &self.env.parsed, self.env.host_ip.as_deref()) {
                    Some(mut c) => match c.fill_headers(&b.settings, &ProcessEnv, &|p| std::fs::read_to_string(p)) {
                        Ok(()) => SignalSetup::Export(c),
                        Err(reason) => SignalSetup::Unavailable(reason),
                    },
                    None => {
                        let reasons: Vec<String> = r.blocked_reasons.iter().map(|x| format!("{x:?}")).collect();
                        SignalSetup::Unavailable(match r.state {
                            tern_otlp_config::State::Missing => "no endpoint resolved (state missing)".into(),
                            _ => format!("blocked: {}", reasons.join(", ")),
                        })
                    }
                };
                setup.insert(signal, s);
            }
            wanted.insert(PathBuf::from(&b.socket_path), (b.name.clone(), setup, b.settings.delivery.clone()));
        }
        let stale: Vec<PathBuf> = self
            .running
            .iter()
            .filter(|(path, r)| wanted.get(*path).is_none_or(|(_, setup, d)| *setup != r.setup || *d != r.delivery))
            .map(|(p, _)| p.clone())
            .collect();
        // Counters carry over when a backend's pipe is replaced, so its
        // counts (drops during the drain included) never reset.
        let mut carried: BTreeMap<String, BTreeMap<Signal, Arc<SignalStats>>> = BTreeMap::new();
        for path in stale {
            if let Some(r) = self.running.remove(&path) {
                info!(backend = %r.name, "replacing OTLP pipe; queued telemetry drains to the old destination");
                carried.insert(r.name.clone(), r.stats.clone());
                r.drain();
                let _ = std::fs::remove_file(&path);
            }
        }
        for (path, (name, setup, delivery)) in wanted {
            if self.running.contains_key(&path) {
                continue;
            }
            let stats = carried.remove(&name).unwrap_or_default();
            match self.start(&path, &name, setup, delivery, stats).await {
                Ok(r) => {
                    self.running.insert(path, r);
                }
                Err(e) => warn!(backend = %name, error = %e, "cannot start the OTLP pipe; will retry on the next plan"),
            }
        }
    }

    async fn start(
        &self,
        path: &std::path::Path,
        name: &str,
        setup: BTreeMap<Signal, SignalSetup>,
        delivery: Delivery,
        carried: BTreeMap<Signal, Arc<SignalStats>>,
    ) -> Result<RunningBackend, String> {
        let (limits, retry) = (self.queue.with(&delivery), RetryPolicy::of(&delivery));
        let mut stats = BTreeMap::new();
        let (abandon, abandoned) = tokio::sync::watch::channel(false);
        // One client per distinct connection-level config: signals that
        // differ only in URL path share it.
        let mut clients: Vec<(ClientKey, Transport)> = Vec::new();
        let mut route = |signal: Signal| -> Route {
            let s = carried.get(&signal).cloned().unwrap_or_default();
            stats.insert(signal, s.clone());
            match setup.get(&signal) {
                Some(SignalSetup::Export(config)) => match shared_exporter(&mut clients, config) {
                    Ok(exporter) => {
                        let (tx, rx) = mpsc::channel(limits.requests);
                        let abandoned = abandoned.clone();
                        let exports = Exports { backend: name.to_string(), exporter, signal, retry };
                        tokio::spawn(export_loop(exports, rx, s.clone(), abandoned));
                        let queue = receiver::Queue::new(tx, limits);
                        Route::Queue { queue, stats: s }
                    }
                    Err(e) => {
                        s.error(e.clone());
                        Route::Unavailable { reason: e, stats: s }
                    }
                },
                Some(SignalSetup::Unavailable(reason)) => Route::Unavailable { reason: reason.clone(), stats: s },
                None => Route::Unavailable { reason: "signal is not enabled".into(), stats: s },
            }
        };
        let routes = Arc::new(Routes {
            traces: route(Signal::Traces),
            metrics: route(Signal::Metrics),
            logs: route(Signal::Logs),
            logs_resource: self.env.host_name.as_deref().map(|h| ResourceAttribute::string("host.name", h)),
        });
        let (stop, stopped) = oneshot::channel();
        let server = receiver::serve(path, routes.clone(), stopped).await?;
        drop(server); // it ends when `stop` fires
        let exporting: Vec<&str> =
            setup.iter().filter(|(_, s)| matches!(s, SignalSetup::Export(_))).map(|(sig, _)| sig.as_str()).collect();
        info!(backend = %name, socket = %path.display(), exporting = ?exporting, "OTLP pipe started");
        Ok(RunningBackend { name: name.to_string(), routes, abandon, setup, delivery, stats, stop: Some(stop) })
    }

    /// The counts in the Prometheus text format, for `tern-dp --metrics-addr`.
    /// Written by hand: seven families read from atomics and semaphores need
    /// no registry.
    pub fn prometheus(&self) -> String {
        let reports = self.stats();
        let mut out = String::new();
        let families: [Family; 9] = [
            (
                "tern_dp_otel_received_items_total",
                "counter",
                "Spans, metric points or log records received on the backend's socket.",
                |r| r.counts.received,
            ),
            ("tern_dp_otel_exported_items_total", "counter", "Items the collector accepted.", |r| r.counts.exported),
            (
                "tern_dp_otel_dropped_items_total",
                "counter",
                "Items dropped: queue full, signal unavailable, or refused by the collector.",
                |r| r.counts.dropped,
            ),
            (
                "tern_dp_otel_export_retries_total",
                "counter",
                "Export attempts retried after a retryable failure.",
                |r| r.counts.retries,
            ),
            ("tern_dp_otel_queued_requests", "gauge", "Export requests queued or being sent.", |r| r.queued_requests),
            ("tern_dp_otel_queued_bytes", "gauge", "Bytes of export requests queued or being sent.", |r| {
                r.queued_bytes
            }),
            ("tern_dp_otel_waiting_requests", "gauge", "Export requests waiting for room in the queue.", |r| {
                r.waiting_requests
            }),
            ("tern_dp_otel_waiting_bytes", "gauge", "Bytes of export requests waiting for room in the queue.", |r| {
                r.waiting_bytes
            }),
            (
                "tern_dp_otel_signal_exporting",
                "gauge",
                "Whether the signal has an exporter (1) or is unavailable (0).",
                |r| u64::from(r.exporting),
            ),
        ];
        for (name, kind, help, value) in families {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for b in &reports {
                for (signal, r) in &b.signals {
                    out.push_str(&format!(
                        "{name}{{backend=\"{}\",signal=\"{signal}\"}} {}\n",
                        escape(&b.name),
                        value(r)
                    ));
                }
            }
        }
        out
    }

    /// Hands a request produced inside the data plane (e.g. Envoy's metrics,
    /// see [`OtlpRequest::to_payload`]) to a backend's pipe, with the same queueing and counting as requests
    /// arriving on its socket, except that it never waits for room.
    pub fn submit(&self, backend: &str, payload: wire::Payload) -> Result<(), String> {
        let r = self
            .running
            .values()
            .find(|r| r.name == backend)
            .ok_or_else(|| format!("no pipe for backend {backend:?}"))?;
        r.routes.accept_now(payload).map_err(|s| s.message().to_string())
    }

    /// Counts per backend and signal.
    pub fn stats(&self) -> Vec<BackendReport> {
        self.running
            .iter()
            .map(|(path, r)| BackendReport {
                name: r.name.clone(),
                socket_path: path.display().to_string(),
                signals: r
                    .stats
                    .iter()
                    .map(|(signal, s)| {
                        let (exporting, unavailable) = match r.setup.get(signal) {
                            Some(SignalSetup::Export(_)) => (true, None),
                            Some(SignalSetup::Unavailable(why)) => (false, Some(why.clone())),
                            None => (false, None),
                        };
                        let fill = r.routes.fill(*signal);
                        let report = SignalReport {
                            exporting,
                            unavailable,
                            counts: s.snapshot(),
                            queued_requests: fill.queued_requests,
                            queued_bytes: fill.queued_bytes,
                            waiting_requests: fill.waiting_requests,
                            waiting_bytes: fill.waiting_bytes,
                        };
                        (*signal, report)
                    })
                    .collect(),
            })
            .collect()
    }

    /// Stops every pipe and removes the sockets.
    pub fn shutdown(&mut self) {
        for (path, r) in std::mem::take(&mut self.running) {
            r.shutdown();
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A metric family: name, Prometheus type, help text, and how to read it
/// from a report.
type Family = (&'static str, &'static str, &'static str, fn(&SignalReport) -> u64);

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Drop for PipeManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An exporter for `config`, reusing a transport opened for the same
/// connection-level settings.
fn shared_exporter(clients: &mut Vec<(ClientKey, Transport)>, config: &ExporterConfig) -> Result<Exporter, String> {
    let key = config.client_key();
    if let Some((_, transport)) = clients.iter().find(|(k, _)| *k == key) {
        return Ok(Exporter::with_transport(config.clone(), transport.clone()));
    }
    let exporter = Exporter::new(config.clone())?;
    clients.push((key, exporter.transport_handle()));
    Ok(exporter)
}

/// `d` plus a random 0-50% of it.
fn with_jitter(d: Duration) -> Duration {
    let mut bytes = [0u8; 2];
    let r = if getrandom::fill(&mut bytes).is_ok() { u16::from_le_bytes(bytes) } else { 0 };
    d + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

/// Exports one signal has under way at once. More than one keeps a distant
/// collector's round trip from capping throughput (the OpenTelemetry
/// Collector's exporters default to ten); OTLP does not promise order
/// between requests, so batches may land out of order.
pub const MAX_IN_FLIGHT: usize = 4;

/// Drains one signal's queue into batches, each sent by its own task (up to
/// [`MAX_IN_FLIGHT`]) and retried with backoff while the collector is
/// unreachable; the bounded queue keeps memory bounded meanwhile.
async fn export_loop(
    exports: Exports,
    mut rx: mpsc::Receiver<Queued>,
    stats: Arc<SignalStats>,
    abandoned: tokio::sync::watch::Receiver<bool>,
) {
    let Exports { backend, exporter, signal, retry } = exports;
    let exporter = Arc::new(exporter);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    // A request taken from the queue that did not fit the previous batch.
    let mut next: Option<Queued> = None;
    loop {
        // A free slot first: while all are busy, requests wait in the queue
        // and go out together in the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let first = match next.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        // Batching without added delay: whatever else is already queued
        // goes out in the same export, up to MAX_BATCH_ITEMS and
        // MAX_BATCH_BYTES. The queued requests keep their share of the byte
        // budget until the batch is done.
        let (mut items, mut size) = (first.payload.items, first.payload.bytes.len());
        let mut batch = vec![first];
        while items < MAX_BATCH_ITEMS {
            let Ok(q) = rx.try_recv() else { break };
            if size + q.payload.bytes.len() > MAX_BATCH_BYTES {
                next = Some(q);
                break;
            }
            items += q.payload.items;
            size += q.payload.bytes.len();
            batch.push(q);
        }
        if *abandoned.borrow() {
            // Given up: this batch and everything still queued.
            let mut lost = items + next.take().map_or(0, |q| q.payload.items);
            while let Ok(q) = rx.try_recv() {
                lost += q.payload.items;
            }
            warn!(backend = %backend, items = lost, "pipe stopped with telemetry still queued; dropped");
            stats.dropped(lost);
            return;
        }
        let batch = Batch { parts: batch.iter().map(|q| q.payload.bytes.clone()).collect(), items, _queued: batch };
        let to = Destination { backend: backend.clone(), exporter: exporter.clone(), signal, retry };
        let deliver = deliver(to, batch, stats.clone(), abandoned.clone());
        tokio::spawn(async move {
            deliver.await;
            drop(slot);
        });
    }
}

/// Requests sent together as one export.
struct Batch {
    parts: Vec<Bytes>,
    items: u64,
    /// Held until the batch is done: their share of the queue's byte budget.
    _queued: Vec<Queued>,
}

/// One signal's exports of a backend.
struct Exports {
    backend: String,
    exporter: Exporter,
    signal: Signal,
    retry: RetryPolicy,
}

/// Where one batch goes, and how it is retried.
struct Destination {
    backend: String,
    exporter: Arc<Exporter>,
    signal: Signal,
    retry: RetryPolicy,
}

/// Sends one batch, retrying with backoff while that can help, until it is
/// delivered, refused for good, out of retry time, or the pipe is abandoned.
async fn deliver(
    to: Destination,
    batch: Batch,
    stats: Arc<SignalStats>,
    mut abandoned: tokio::sync::watch::Receiver<bool>,
) {
    let Destination { backend, exporter, signal, retry } = to;
    let items = batch.items;
    let started = tokio::time::Instant::now();
    let mut backoff = retry.initial;
    loop {
        if *abandoned.borrow() {
            warn!(backend = %backend, items, "pipe stopped with an export still retrying; dropped");
            stats.dropped(items);
            return;
        }
        let attempt = tokio::select! {
            r = exporter.send(signal, &batch.parts) => r,
            _ = abandoned.wait_for(|a| *a) => continue,
        };
        match attempt {
            Ok(()) => {
                stats.exported(items);
                return;
            }
            Err(e) if e.retryable => {
                stats.retried();
                stats.error(e.message);
                // Exponential backoff with up to 50% jitter, so data planes
                // do not retry in lockstep; a collector's Retry-After wins
                // when it asks for longer.
                let wait = with_jitter(backoff).max(e.retry_after.unwrap_or_default());
                if retry.max_elapsed.is_some_and(|limit| started.elapsed() + wait > limit) {
                    warn!(backend = %backend, signal = %signal, items, "export still failing when the backend's retry.maxElapsedTime ran out; dropped");
                    stats.dropped(items);
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = abandoned.wait_for(|a| *a) => {}
                }
                backoff = (backoff * 2).min(retry.max);
            }
            Err(e) => {
                warn!(backend = %backend, signal = %signal, error = %e.message, items, "export failed; dropped");
                stats.dropped(items);
                stats.error(e.message);
                return;
            }
        }
    }
}
