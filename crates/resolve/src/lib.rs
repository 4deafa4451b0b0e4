//! Policy resolution as a pure function: a mesh's backends, observability
//! policies and dataplanes (with what each data plane reported at bootstrap)
//! in; per dataplane the OpenTelemetry plan and status, and the conditions
//! for backends and policies, out. No I/O, so it is tested with tables and
//! benchmarked alone.
//!
//! Start at [`resolve_mesh`].

mod access_log;
mod matching;
mod merge_patch;
mod session;

pub use access_log::{FileLog, Listener, LocalLog, LogScope, TcpLog};
pub use matching::{inbounds_selected, selects, DataplaneFacts, Inbounds, Specificity};
pub use merge_patch::merge_patch;
pub use session::{access_log_fifo, socket_path, Session, ACCESS_LOG_FIFO_FEATURE, OTEL_PIPE_FEATURE};

use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tern_model::resource::DISPLAY_NAME_LABEL;
use tern_model::spec::dataplane::DataplaneSpec;
use tern_model::spec::mesh_access_log::{AccessLogConf, KeyValue};
use tern_model::spec::mesh_metric::MeshMetricConf;
use tern_model::spec::mesh_trace::{DatadogBackend, MeshTraceConf, Sampling, TraceTag, ZipkinBackend};
use tern_model::spec::motb::{Condition, MeshOpenTelemetryBackendSpec};
use tern_model::spec::policy::{BackendRef, TargetRef};
use tern_model::{Kind, Resource};
use tern_otlp_config::merge::BackendUse;
use tern_otlp_config::{
    resolve_backends, AppMetrics, BackendSettings, MetricSelector, OtelPlan, PlanBackend, PlanSignal,
    PrometheusEndpoint, SidecarMetrics, Signal, SignalStatus,
};

/// One dataplane and, once it has registered, its session.
#[derive(Debug, Clone, Copy)]
pub struct DataplaneInput<'a> {
    pub resource: &'a Resource,
    pub session: Option<&'a Session>,
}

/// Everything resolution reads for one mesh.
#[derive(Debug, Clone, Copy)]
pub struct MeshInput<'a> {
    pub backends: &'a [Resource],
    /// MeshTrace, MeshMetric and MeshAccessLog resources.
    pub policies: &'a [Resource],
    pub dataplanes: &'a [DataplaneInput<'a>],
}

/// `DataplaneInsight.status.openTelemetry`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpenTelemetryStatus {
    pub backends: Vec<BackendStatus>,
}

/// One backend's per-signal status on one dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub traces: SignalStatus,
    pub metrics: SignalStatus,
    pub logs: SignalStatus,
}

/// A deprecated inline `endpoint` a policy sends a signal to (Envoy exports
/// there directly).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectBackend {
    pub signal: Signal,
    pub endpoint: String,
}

/// What one registered dataplane gets.
#[derive(Debug, Clone, PartialEq)]
pub struct DataplaneOutcome {
    pub plan: OtelPlan,
    pub status: OpenTelemetryStatus,
    pub direct: Vec<DirectBackend>,
    /// Things the operator should know (e.g. the pipe feature is missing).
    pub notes: Vec<String>,
    /// The merged OTel entries per signal, kept so a backend edit can redo
    /// only the last step for the dataplanes that use it.
    entries: Vec<(Signal, Vec<OtelEntry>)>,
    /// The merged MeshTrace `sampling` and `tags`, and MeshMetric's
    /// Prometheus endpoints.
    conf: MergedConf,
    /// Where Envoy writes records for MeshAccessLog `tcp` backends, when the
    /// data plane's `tern-dp` reads them.
    tcp_log_fifo: Option<String>,
}

/// What the matched policies' merged confs say beyond their OTel entries.
#[derive(Debug, Clone, Default, PartialEq)]
struct MergedConf {
    trace: TraceConf,
    prometheus: Vec<PrometheusEndpoint>,
    sidecar_metrics: SidecarMetrics,
    applications: Vec<AppMetrics>,
    /// MeshAccessLog `file` and `tcp` backends, by the listeners they go on.
    local_logs: Vec<(LogScope, LocalLog)>,
    /// The services MeshAccessLog `to[]` items name.
    named_services: BTreeSet<String>,
}

impl MergedConf {
    /// Takes what `kind`'s merged conf contributes.
    fn absorb(&mut self, kind: Kind, other: MergedConf) {
        match kind {
            Kind::MeshTrace => self.trace = other.trace,
            Kind::MeshMetric => {
                self.prometheus = other.prometheus;
                self.sidecar_metrics = other.sidecar_metrics;
                self.applications = other.applications;
            }
            Kind::MeshAccessLog => {
                self.local_logs = other.local_logs;
                self.named_services = other.named_services;
            }
            _ => {}
        }
    }
}

/// MeshTrace's merged `sampling` and `tags`, what Envoy's tracing needs
/// besides the sink, and a Zipkin or Datadog backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceConf {
    pub sampling: Option<Sampling>,
    pub tags: Vec<TraceTag>,
    pub tracer: Option<Tracer>,
    /// MeshTrace `propagators` (a Tern extension); `None` is the default,
    /// W3C trace context and baggage.
    pub propagators: Option<Vec<String>>,
}

impl TraceConf {
    /// Whether `name` is among the propagators in force.
    pub fn propagates(&self, name: &str) -> bool {
        match &self.propagators {
            Some(list) => list.iter().any(|p| p == name),
            None => name == "w3c_tracecontext" || name == "w3c_baggage",
        }
    }
}

/// A MeshTrace backend Envoy reaches itself, over HTTP.
#[derive(Debug, Clone, PartialEq)]
pub enum Tracer {
    Zipkin(ZipkinBackend),
    Datadog(DatadogBackend),
}

/// Where Envoy sends a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Through the data plane's pipe for a backend: its Unix socket.
    Pipe { backend: String, socket: String },
    /// Straight to a collector (deprecated inline `endpoint`, `host:port`).
    Direct { endpoint: String },
}

/// One access log destination with its record shape.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSink {
    pub sink: Sink,
    /// Record attributes, Envoy command operators in values.
    pub attributes: Vec<KeyValue>,
    /// The record body: any JSON value (an OpenTelemetry AnyValue), strings
    /// may hold Envoy command operators.
    pub body: Option<Value>,
    /// `resourceAttributes` templates.
    pub resource: BTreeMap<String, String>,
}

/// One MeshAccessLog backend, as Envoy's configuration needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessLog {
    OpenTelemetry(AccessLogSink),
    Local(LocalLog),
}

/// What Envoy's configuration needs to know about telemetry.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyTelemetry {
    pub traces: Option<Sink>,
    /// The trace backend's `resourceAttributes` templates.
    pub trace_resource: BTreeMap<String, String>,
    /// MeshTrace `sampling`, `tags` and a Zipkin or Datadog backend.
    pub trace: TraceConf,
    /// Every MeshAccessLog backend with the listeners it goes on.
    pub access_logs: Vec<(LogScope, AccessLog)>,
    /// The services MeshAccessLog `to[]` items name.
    pub named_services: BTreeSet<String>,
    /// Where Envoy writes records for `tcp` backends (`tern-dp`'s FIFO).
    pub tcp_log_fifo: Option<String>,
}

impl EnvoyTelemetry {
    /// The access log backends of one listener.
    pub fn loggers<'a>(&'a self, listener: Listener<'a>) -> impl Iterator<Item = &'a AccessLog> + 'a {
        self.access_logs
            .iter()
            .filter(move |(scope, _)| scope.applies_to(listener, &self.named_services))
            .map(|(_, l)| l)
    }
}

impl DataplaneOutcome {
    /// Where Envoy should send spans and access logs: the pipe sockets of
    /// plan backends, or direct endpoints for inline `endpoint` backends.
    pub fn envoy_telemetry(&self) -> EnvoyTelemetry {
        let socket_of = |signal: Signal, entry: &OtelEntry| -> Option<Sink> {
            if let Some(endpoint) = &entry.endpoint {
                return Some(Sink::Direct { endpoint: endpoint.clone() });
            }
            let name = entry.resolved.as_ref()?;
            self.plan
                .backends
                .iter()
                .find(|b| &b.name == name && b.signal(signal).is_some())
                .map(|b| Sink::Pipe { backend: b.name.clone(), socket: b.socket_path.clone() })
        };
        let entries = |signal: Signal| self.entries.iter().filter(move |(s, _)| *s == signal).flat_map(|(_, e)| e);
        let trace = entries(Signal::Traces).find_map(|e| Some((socket_of(Signal::Traces, e)?, e.resource.clone())));
        let (traces, trace_resource) = trace.map_or((None, BTreeMap::new()), |(s, r)| (Some(s), r));
        let otel = entries(Signal::Logs).filter_map(|e| {
            let sink = socket_of(Signal::Logs, e)?;
            let log = AccessLogSink {
                sink,
                attributes: e.attributes.clone(),
                body: e.body.clone(),
                resource: e.resource.clone(),
            };
            Some((e.scope.clone(), AccessLog::OpenTelemetry(log)))
        });
        let local = self.conf.local_logs.iter().filter(|(_, l)| match l {
            LocalLog::Tcp(_) => self.tcp_log_fifo.is_some(),
            LocalLog::File(_) => true,
        });
        let mut access_logs: Vec<(LogScope, AccessLog)> = Vec::new();
        for log in otel.chain(local.map(|(scope, l)| (scope.clone(), AccessLog::Local(l.clone())))) {
            if !access_logs.contains(&log) {
                access_logs.push(log);
            }
        }
        EnvoyTelemetry {
            traces,
            trace_resource,
            trace: self.conf.trace.clone(),
            access_logs,
            named_services: self.conf.named_services.clone(),
            tcp_log_fifo: self.tcp_log_fifo.clone(),
        }
    }
}

impl DataplaneOutcome {
    /// Whether a change to these backends can change this outcome.
    fn uses_any(&self, backends: &BTreeSet<String>) -> bool {
        self.entries.iter().flat_map(|(_, e)| e).filter_map(|e| e.backend_ref.as_ref()).any(|r| match &r.name {
            Some(name) => backends.contains(name),
            // A label selector may match a changed backend: recompute.
            None => true,
        })
    }
}

/// What changed since the previous resolution of the mesh, so that only
/// the dataplanes a change touches are recomputed.
#[derive(Debug, Clone, Copy)]
pub enum Changed<'a> {
    /// Policies or the mesh itself: every dataplane.
    Everything,
    /// These dataplanes (their resource or their session).
    Dataplanes(&'a BTreeSet<String>),
    /// These backends (by name): only dataplanes using them, and only the
    /// last step (matching and merging are unaffected by backends).
    Backends(&'a BTreeSet<String>),
}

/// A `backendRef` that matches no backend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnresolvedRef {
    pub policy_kind: Kind,
    pub policy: String,
    pub name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

impl UnresolvedRef {
    /// `name:<name>` or `labels:k=v,k2=v2`, as the policy condition lists it.
    pub fn key(&self) -> String {
        match (&self.name, &self.labels) {
            (Some(n), _) => format!("name:{n}"),
            (None, Some(l)) => format!("labels:{}", join_labels(l)),
            (None, None) => "empty".into(),
        }
    }

    /// The `labels=` value of the log line: `null` or `k=v,...`.
    pub fn labels_text(&self) -> String {
        self.labels.as_ref().map(join_labels).unwrap_or_else(|| "null".into())
    }
}

fn join_labels(l: &BTreeMap<String, String>) -> String {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// The result for one mesh.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshResolution {
    /// By dataplane name; only dataplanes that have registered. Outcomes a
    /// recompute did not touch are shared (`Arc::ptr_eq`) with the previous
    /// resolution.
    pub dataplanes: BTreeMap<String, Arc<DataplaneOutcome>>,
    /// `ReferencedByPolicies` by backend name.
    pub backend_conditions: BTreeMap<String, Condition>,
    /// `BackendRefsResolved` by (policy kind, policy name).
    pub policy_conditions: BTreeMap<(Kind, String), Condition>,
    pub unresolved: BTreeSet<UnresolvedRef>,
}

/// One OpenTelemetry backend entry of a policy.
#[derive(Debug, Clone, PartialEq)]
struct OtelEntry {
    backend_ref: Option<BackendRef>,
    endpoint: Option<String>,
    refresh_interval: Option<String>,
    /// MeshAccessLog: record attributes and body (Envoy command operators).
    attributes: Vec<KeyValue>,
    body: Option<Value>,
    /// MeshAccessLog: the listeners the record goes from.
    scope: LogScope,
    /// `resourceAttributes`: key to value template (`{{key}}` interpolated
    /// per data plane, see `tern_model::spec::resource`).
    resource: BTreeMap<String, String>,
    /// The backend's display name once `backendRef` resolved (per dataplane).
    resolved: Option<String>,
}

struct ParsedPolicy<'a> {
    kind: Kind,
    name: &'a str,
    target: Option<TargetRef>,
    specificity: Specificity,
    default: Value,
    /// MeshAccessLog `rules[].default` and `from[].default`.
    inbound: Vec<Value>,
    /// MeshAccessLog `to[]`.
    to: Vec<access_log::ToItem>,
}

fn parse_policy(r: &Resource) -> ParsedPolicy<'_> {
    let spec = &r.spec;
    let target: Option<TargetRef> = spec.get("targetRef").and_then(|t| serde_json::from_value(t.clone()).ok());
    let items = |field: &str| spec.get(field).and_then(Value::as_array).into_iter().flatten();
    let inbound = items("rules").chain(items("from")).map(|e| e["default"].clone()).collect();
    // `to[]` targets `Mesh`, or one service by `MeshService` name.
    let to = items("to")
        .filter_map(|e| {
            let target: TargetRef = serde_json::from_value(e.get("targetRef")?.clone()).ok()?;
            let service = match target.kind.as_str() {
                "Mesh" => None,
                "MeshService" => Some(target.name?),
                _ => return None,
            };
            Some((service, e["default"].clone()))
        })
        .collect();
    ParsedPolicy {
        kind: r.kind,
        name: &r.name,
        specificity: Specificity::of(target.as_ref(), &r.labels, &r.name),
        target,
        default: spec.get("default").cloned().unwrap_or(Value::Null),
        inbound,
        to,
    }
}

/// The OpenTelemetry entries of a folded conf's `backends`, decoded into
/// the kind's typed conf. Folding valid confs gives a valid conf; one that
/// would not decode yields no entries.
fn otel_entries(kind: Kind, conf: &Value) -> Vec<OtelEntry> {
    let entry = |backend_ref: &Option<BackendRef>, endpoint: &Option<String>| OtelEntry {
        backend_ref: backend_ref.clone(),
        endpoint: endpoint.clone(),
        refresh_interval: None,
        attributes: Vec::new(),
        body: None,
        scope: LogScope::Everywhere,
        resource: BTreeMap::new(),
        resolved: None,
    };
    let resource = |attrs: &Option<Vec<KeyValue>>| -> BTreeMap<String, String> {
        attrs.iter().flatten().map(|kv| (kv.key.clone(), kv.value.clone())).collect()
    };
    let decode = |conf: &Value| -> Option<Value> { (!conf.is_null()).then(|| conf.clone()) };
    match kind {
        Kind::MeshTrace => decode(conf)
            .and_then(|c| serde_json::from_value::<MeshTraceConf>(c).ok())
            .and_then(|c| c.backends)
            .into_iter()
            .flatten()
            .filter_map(|b| b.open_telemetry)
            .map(|o| OtelEntry { resource: resource(&o.resource_attributes), ..entry(&o.backend_ref, &o.endpoint) })
            .collect(),
        Kind::MeshMetric => decode(conf)
            .and_then(|c| serde_json::from_value::<MeshMetricConf>(c).ok())
            .and_then(|c| c.backends)
            .into_iter()
            .flatten()
            .filter_map(|b| b.open_telemetry)
            .map(|o| OtelEntry {
                refresh_interval: o.refresh_interval.clone(),
                resource: resource(&o.resource_attributes),
                ..entry(&o.backend_ref, &o.endpoint)
            })
            .collect(),
        _ => decode(conf)
            .and_then(|c| serde_json::from_value::<AccessLogConf>(c).ok())
            .and_then(|c| c.backends)
            .into_iter()
            .flatten()
            .filter_map(|b| b.open_telemetry)
            .map(|o| OtelEntry {
                attributes: o.attributes.clone().unwrap_or_default(),
                body: o.body.clone(),
                resource: resource(&o.resource_attributes),
                ..entry(&o.backend_ref, &o.endpoint)
            })
            .collect(),
    }
}

/// Every OTel entry a policy carries, wherever it sits.
fn all_entries(p: &ParsedPolicy<'_>) -> Vec<OtelEntry> {
    let mut out = otel_entries(p.kind, &p.default);
    for conf in p.inbound.iter().chain(p.to.iter().map(|(_, c)| c)) {
        out.extend(otel_entries(p.kind, conf));
    }
    out
}

/// Folds confs of the matched policies in specificity order (RFC 7396;
/// lists replaced whole, `appendProfiles` concatenated as Kuma does).
pub(crate) fn fold<'v>(confs: impl Iterator<Item = &'v Value>) -> Value {
    let mut merged = Value::Null;
    let mut append_profiles = Vec::new();
    for conf in confs {
        if let Some(list) = conf.pointer("/sidecar/profiles/appendProfiles").and_then(Value::as_array) {
            append_profiles.extend(list.iter().cloned());
        }
        merge_patch(&mut merged, conf);
    }
    if !append_profiles.is_empty() {
        if let Some(profiles) = merged.pointer_mut("/sidecar/profiles") {
            profiles["appendProfiles"] = Value::Array(append_profiles);
        }
    }
    merged
}

/// The effective OTel entries of one kind for the matched policies (sorted),
/// and for MeshTrace the merged `sampling` and `tags`.
/// `inbounds` are, for MeshAccessLog, the inbounds each matched policy picked.
fn effective_entries(kind: Kind, matched: &[&ParsedPolicy<'_>], inbounds: &[Inbounds]) -> (Vec<OtelEntry>, MergedConf) {
    let merged_default = fold(matched.iter().map(|p| &p.default));
    if kind == Kind::MeshAccessLog {
        let to: Vec<&access_log::ToItem> = matched.iter().flat_map(|p| p.to.iter()).collect();
        let inbound = matched.iter().zip(inbounds).flat_map(|(p, on)| p.inbound.iter().map(move |c| (on, c)));
        let (confs, named_services) = access_log::scoped_confs(merged_default, inbound, &to);
        let mut entries = Vec::new();
        let mut local_logs = Vec::new();
        for (scope, conf) in &confs {
            entries.extend(otel_entries(kind, conf).into_iter().map(|e| OtelEntry { scope: scope.clone(), ..e }));
            local_logs.extend(access_log::local_logs(conf).into_iter().map(|l| (scope.clone(), l)));
        }
        return (entries, MergedConf { local_logs, named_services, ..Default::default() });
    }
    let entries = match kind {
        // MeshTrace allows zero or one backend.
        Kind::MeshTrace => otel_entries(kind, &merged_default).into_iter().take(1).collect(),
        _ => otel_entries(kind, &merged_default),
    };
    let conf = match kind {
        _ if merged_default.is_null() => MergedConf::default(),
        Kind::MeshTrace => serde_json::from_value::<MeshTraceConf>(merged_default)
            .map(|c| MergedConf {
                trace: TraceConf {
                    tracer: tracer(c.backends.as_deref().unwrap_or_default()),
                    sampling: c.sampling,
                    tags: c.tags.unwrap_or_default(),
                    propagators: c.propagators,
                },
                ..Default::default()
            })
            .unwrap_or_default(),
        Kind::MeshMetric => serde_json::from_value::<MeshMetricConf>(merged_default)
            .map(|c| MergedConf {
                prometheus: prometheus_endpoints(&c),
                sidecar_metrics: sidecar_metrics(&c),
                applications: applications(&c),
                ..Default::default()
            })
            .unwrap_or_default(),
        _ => MergedConf::default(),
    };
    (entries, conf)
}

/// MeshTrace's one backend, when it is Zipkin or Datadog.
fn tracer(backends: &[tern_model::spec::mesh_trace::TraceBackend]) -> Option<Tracer> {
    let first = backends.first()?;
    match first.type_.as_str() {
        "Zipkin" => first.zipkin.clone().map(Tracer::Zipkin),
        "Datadog" => first.datadog.clone().map(Tracer::Datadog),
        _ => None,
    }
}

/// A merged MeshMetric `sidecar`, as the data plane applies it (profiles
/// default to Basic, as Kuma's).
fn sidecar_metrics(conf: &MeshMetricConf) -> SidecarMetrics {
    let sidecar = conf.sidecar.as_ref();
    let profiles = sidecar.and_then(|s| s.profiles.as_ref());
    let selectors = |list: Option<&Vec<tern_model::spec::mesh_metric::MetricSelector>>| {
        list.into_iter().flatten().map(|s| MetricSelector { kind: s.type_.clone(), value: s.match_.clone() }).collect()
    };
    let named: Vec<String> =
        profiles.and_then(|p| p.append_profiles.as_ref()).into_iter().flatten().map(|p| p.name.clone()).collect();
    SidecarMetrics {
        profiles: if named.is_empty() { SidecarMetrics::default().profiles } else { named },
        include: selectors(profiles.and_then(|p| p.include.as_ref())),
        exclude: selectors(profiles.and_then(|p| p.exclude.as_ref())),
        include_unused: sidecar.and_then(|s| s.include_unused).unwrap_or(false),
    }
}

/// A merged MeshMetric's `applications`, with Kuma's default path.
fn applications(conf: &MeshMetricConf) -> Vec<AppMetrics> {
    conf.applications
        .iter()
        .flatten()
        .filter_map(|a| {
            Some(AppMetrics {
                name: a.name.clone(),
                address: a.address.clone(),
                port: u16::try_from(a.port).ok()?,
                path: a.path.clone().unwrap_or_else(|| "/metrics".into()),
            })
        })
        .collect()
}

/// The Prometheus endpoints of a merged MeshMetric conf, one per client id
/// (the first backend of a client wins, as one listener per client).
fn prometheus_endpoints(conf: &MeshMetricConf) -> Vec<PrometheusEndpoint> {
    let mut out: Vec<PrometheusEndpoint> = Vec::new();
    for p in conf.backends.iter().flatten().filter_map(|b| b.prometheus.as_ref()) {
        if out.iter().any(|e| e.client_id == p.client_id() || e.port == p.port()) {
            continue;
        }
        out.push(PrometheusEndpoint {
            client_id: p.client_id().to_string(),
            port: p.port(),
            path: p.path().to_string(),
            tls: p.provided_tls(),
        });
    }
    out
}

fn signal_of(kind: Kind) -> Signal {
    match kind {
        Kind::MeshTrace => Signal::Traces,
        Kind::MeshMetric => Signal::Metrics,
        _ => Signal::Logs,
    }
}

/// Backends of the mesh, looked up by name or by labels (oldest wins, then name).
struct BackendIndex<'a> {
    by_age: Vec<&'a Resource>,
    settings: HashMap<&'a str, BackendSettings>,
}

impl<'a> BackendIndex<'a> {
    fn new(backends: &'a [Resource]) -> Self {
        let mut by_age: Vec<&Resource> = backends.iter().collect();
        by_age.sort_by(|a, b| (a.meta.creation_time, &a.name).cmp(&(b.meta.creation_time, &b.name)));
        let settings = backends
            .iter()
            .map(|b| {
                let spec: MeshOpenTelemetryBackendSpec = serde_json::from_value(b.spec.clone()).unwrap_or_default();
                (b.name.as_str(), BackendSettings::from_spec(&spec))
            })
            .collect();
        BackendIndex { by_age, settings }
    }

    fn resolve(&self, r: &BackendRef) -> Option<&'a Resource> {
        match (&r.name, &r.labels) {
            (Some(name), _) => self.by_age.iter().copied().find(|b| &b.name == name),
            (None, Some(labels)) => self.by_age.iter().copied().find(|b| b.matches_labels(labels)),
            (None, None) => None,
        }
    }
}

fn display_name(r: &Resource) -> String {
    r.labels.get(DISPLAY_NAME_LABEL).cloned().unwrap_or_else(|| r.name.clone())
}

fn condition(type_: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition { type_: type_.into(), status: if ok { "True" } else { "False" }.into(), reason: reason.into(), message }
}

/// Resolves one mesh from scratch.
pub fn resolve_mesh(input: &MeshInput<'_>) -> MeshResolution {
    resolve_scoped(input, None, Changed::Everything)
}

/// Resolves one mesh again after `changed`, reusing what `previous` computed
/// for the dataplanes the change does not touch. Gives the same result as
/// [`resolve_mesh`] on the same input.
pub fn resolve_mesh_incremental(
    input: &MeshInput<'_>,
    previous: &MeshResolution,
    changed: Changed<'_>,
) -> MeshResolution {
    resolve_scoped(input, Some(previous), changed)
}

fn resolve_scoped(input: &MeshInput<'_>, previous: Option<&MeshResolution>, changed: Changed<'_>) -> MeshResolution {
    let index = BackendIndex::new(input.backends);
    let policies: Vec<ParsedPolicy<'_>> =
        input.policies.iter().filter(|p| p.kind.is_policy()).map(parse_policy).collect();
    let mut out = MeshResolution::default();
    conditions(&policies, input.backends, &index, &mut out);

    // Dataplanes matching the same policies share the merged result.
    let mut cache: HashMap<CacheKey, (Vec<OtelEntry>, MergedConf)> = HashMap::new();
    for dp in input.dataplanes {
        let Some(session) = dp.session else { continue };
        let prev = previous.and_then(|p| p.dataplanes.get(&dp.resource.name));
        match (prev, changed) {
            (Some(prev), Changed::Dataplanes(names)) if !names.contains(&dp.resource.name) => {
                out.dataplanes.insert(dp.resource.name.clone(), prev.clone());
                continue;
            }
            (Some(prev), Changed::Backends(names)) => {
                let outcome = if prev.uses_any(names) {
                    Arc::new(dataplane_outcome(session, prev.entries.clone(), prev.conf.clone(), &index))
                } else {
                    prev.clone()
                };
                out.dataplanes.insert(dp.resource.name.clone(), outcome);
                continue;
            }
            _ => {}
        }
        let spec: DataplaneSpec = serde_json::from_value(dp.resource.spec.clone()).unwrap_or_default();
        let facts = DataplaneFacts { name: &dp.resource.name, labels: &dp.resource.labels, spec: &spec };
        let mut per_signal: Vec<(Signal, Vec<OtelEntry>)> = Vec::with_capacity(3);
        let mut merged = MergedConf::default();
        for kind in [Kind::MeshTrace, Kind::MeshMetric, Kind::MeshAccessLog] {
            let mut matched: Vec<usize> = (0..policies.len())
                .filter(|&i| policies[i].kind == kind && selects(policies[i].target.as_ref(), &facts))
                .collect();
            matched.sort_by(|&a, &b| policies[a].specificity.cmp(&policies[b].specificity));
            let inbounds: Vec<Inbounds> = match kind {
                Kind::MeshAccessLog => {
                    matched.iter().map(|&i| inbounds_selected(policies[i].target.as_ref(), &facts)).collect()
                }
                _ => Vec::new(),
            };
            let (entries, conf) = cache
                .entry((kind, matched, inbounds))
                .or_insert_with_key(|(_, matched, inbounds)| {
                    let refs: Vec<&ParsedPolicy<'_>> = matched.iter().map(|&i| &policies[i]).collect();
                    effective_entries(kind, &refs, inbounds)
                })
                .clone();
            merged.absorb(kind, conf);
            per_signal.push((signal_of(kind), entries));
        }
        let outcome = dataplane_outcome(session, per_signal, merged, &index);
        out.dataplanes.insert(dp.resource.name.clone(), Arc::new(outcome));
    }
    out
}

/// What one kind's effective entries depend on: the matched policies (in
/// order) and, for MeshAccessLog, the inbounds each of them picked.
type CacheKey = (Kind, Vec<usize>, Vec<Inbounds>);

/// `BackendRefsResolved` on every policy, `ReferencedByPolicies` on every
/// backend, and the set of references that resolve to nothing.
fn conditions(
    policies: &[ParsedPolicy<'_>],
    backends: &[Resource],
    index: &BackendIndex<'_>,
    out: &mut MeshResolution,
) {
    let mut references: HashMap<&str, usize> = HashMap::new();
    for p in policies {
        let mut missing = BTreeSet::new();
        let mut refs = 0;
        for entry in all_entries(p) {
            let Some(r) = &entry.backend_ref else { continue };
            refs += 1;
            match index.resolve(r) {
                Some(b) => *references.entry(b.name.as_str()).or_default() += 1,
                None => {
                    let u = UnresolvedRef {
                        policy_kind: p.kind,
                        policy: p.name.to_string(),
                        name: r.name.clone(),
                        labels: r.labels.clone(),
                    };
                    missing.insert(u.key());
                    out.unresolved.insert(u);
                }
            }
        }
        let c = match (refs, missing.is_empty()) {
            (0, _) => condition(
                "BackendRefsResolved",
                true,
                "AllBackendRefsResolved",
                "No MeshOpenTelemetryBackend references configured".into(),
            ),
            (_, true) => condition(
                "BackendRefsResolved",
                true,
                "AllBackendRefsResolved",
                "All MeshOpenTelemetryBackend references are resolved".into(),
            ),
            (_, false) => condition(
                "BackendRefsResolved",
                false,
                "UnresolvedBackendRefs",
                format!(
                    "Unresolved MeshOpenTelemetryBackend references: {}",
                    missing.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ),
        };
        out.policy_conditions.insert((p.kind, p.name.to_string()), c);
    }
    for b in backends {
        let c = match references.get(b.name.as_str()).copied().unwrap_or(0) {
            0 => condition(
                "ReferencedByPolicies",
                false,
                "NotReferenced",
                "Not referenced by any observability policy".into(),
            ),
            n => condition("ReferencedByPolicies", true, "Referenced", format!("Referenced by {n} policy backend(s)")),
        };
        out.backend_conditions.insert(b.name.clone(), c);
    }
}

/// Backends a dataplane uses: resource, signals, and for metrics the first
/// entry's refresh interval and resource attribute templates.
type UsedBackends<'a> =
    BTreeMap<String, (&'a Resource, Vec<Signal>, Option<(Option<String>, BTreeMap<String, String>)>)>;

fn dataplane_outcome(
    session: &Session,
    mut per_signal: Vec<(Signal, Vec<OtelEntry>)>,
    conf: MergedConf,
    index: &BackendIndex<'_>,
) -> DataplaneOutcome {
    let mut notes = Vec::new();
    let mut direct = Vec::new();
    let mut used: UsedBackends<'_> = BTreeMap::new();
    let mut skipped_for_feature = false;
    for (signal, entries) in &mut per_signal {
        for e in entries.iter_mut() {
            e.resolved = None;
            if let Some(endpoint) = &e.endpoint {
                direct.push(DirectBackend { signal: *signal, endpoint: endpoint.clone() });
                continue;
            }
            let Some(r) = &e.backend_ref else { continue };
            if !session.supports_otel_pipe() {
                skipped_for_feature = true;
                continue;
            }
            let Some(backend) = index.resolve(r) else { continue };
            e.resolved = Some(display_name(backend));
            let slot = used.entry(display_name(backend)).or_insert((backend, Vec::new(), None));
            if !slot.1.contains(signal) {
                slot.1.push(*signal);
            }
            if *signal == Signal::Metrics && slot.2.is_none() {
                slot.2 = Some((e.refresh_interval.clone(), e.resource.clone()));
            }
        }
    }
    let has_tcp = conf.local_logs.iter().any(|(_, l)| matches!(l, LocalLog::Tcp(_)));
    let tcp_log_fifo = session.access_log_fifo();
    if has_tcp && tcp_log_fifo.is_none() {
        notes.push(format!(
            "this data plane does not advertise {ACCESS_LOG_FIFO_FEATURE}: its MeshAccessLog tcp backends are skipped; upgrade tern-dp"
        ));
    }
    if skipped_for_feature {
        notes.push(format!(
            "this data plane does not advertise {OTEL_PIPE_FEATURE}: its backendRef backends are skipped and no OpenTelemetry status is written for them; upgrade tern-dp or enable the OTel pipe"
        ));
    }
    let uses: Vec<BackendUse<'_>> = used
        .iter()
        .map(|(name, (b, signals, _))| BackendUse { name, settings: &index.settings[b.name.as_str()], signals })
        .collect();
    let resolutions = resolve_backends(&uses, &session.otel_env);
    let mut plan = OtelPlan {
        prometheus: conf.prometheus.clone(),
        sidecar_metrics: conf.sidecar_metrics.clone(),
        applications: conf.applications.clone(),
        ..OtelPlan::default()
    };
    let mut status = OpenTelemetryStatus::default();
    for ((name, (backend, _, metrics)), resolved) in used.iter().zip(resolutions) {
        let signal_status = |s: Signal| resolved.iter().find(|r| r.signal == s).map(SignalStatus::from);
        let plan_signal = |s: Signal| {
            let (refresh, resource) = metrics.clone().filter(|_| s == Signal::Metrics).unwrap_or_default();
            signal_status(s).map(|status| PlanSignal {
                status,
                refresh_interval: refresh,
                resource_attributes: resource,
            })
        };
        plan.backends.push(PlanBackend {
            name: name.clone(),
            socket_path: session.socket_path(name),
            settings: index.settings[backend.name.as_str()].clone(),
            traces: plan_signal(Signal::Traces),
            metrics: plan_signal(Signal::Metrics),
            logs: plan_signal(Signal::Logs),
        });
        let or_off = |s: Signal| signal_status(s).unwrap_or_else(SignalStatus::not_enabled);
        status.backends.push(BackendStatus {
            name: name.clone(),
            traces: or_off(Signal::Traces),
            metrics: or_off(Signal::Metrics),
            logs: or_off(Signal::Logs),
        });
    }
    DataplaneOutcome { plan, status, direct, notes, entries: per_signal, conf, tcp_log_fifo }
}
