//! The control plane's own metrics on `--metrics-addr` (`/metrics`, Kuma's
//! port 5680), in Prometheus' text format: Kuma's names where Kuma has the
//! concept (`cp_info`, `leader`, `resources_count`, `xds_*`,
//! `*_http_request_duration_seconds`), and Tern's own (`tern_*`): the
//! OpenTelemetry signals per state, the recompute time, and the delivery
//! counts data planes report. Read from the components at scrape time.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_model::Kind;
use tern_store::{ListFilter, ResourceStore};
use tokio::sync::watch;
use tracing::Instrument;

/// Seconds; Prometheus' default buckets.
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram of durations.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; 11],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        self.render_scaled(out, name, labels, 1.0)
    }

    /// Renders in another unit: bounds and sum multiplied by `scale`
    /// (1000 for milliseconds).
    fn render_scaled(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let bound = (bound * scale * 1e6).round() / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}", bucket.load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6 * scale;
        let braced = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {count}");
    }
}

/// HTTP request durations by server, route, method and status code.
type HttpKey = (&'static str, String, String, u16);
/// Store operation durations by operation and resource type.
type StoreKey = (&'static str, String);

pub struct CpMetrics {
    pub instance_id: String,
    pub leader: Option<watch::Receiver<bool>>,
    reconcile: Histogram,
    /// From a plan's publication to the data plane waiting for it.
    pub plan_delivery: Histogram,
    /// Unchanged, changed.
    xds_generation: [Histogram; 2],
    http: Mutex<BTreeMap<HttpKey, Arc<Histogram>>>,
    store: Mutex<BTreeMap<StoreKey, Arc<Histogram>>>,
    store_conflicts: Mutex<BTreeMap<String, u64>>,
}

impl CpMetrics {
    pub fn new(instance_id: String, leader: Option<watch::Receiver<bool>>) -> Arc<Self> {
        Arc::new(CpMetrics {
            instance_id,
            leader,
            reconcile: Histogram::default(),
            plan_delivery: Histogram::default(),
            xds_generation: Default::default(),
            http: Mutex::default(),
            store: Mutex::default(),
            store_conflicts: Mutex::default(),
        })
    }

    /// The histogram of one of the reconcile loop's steps.
    pub fn step(&self, step: tern_reconcile::Step) -> &Histogram {
        match step {
            tern_reconcile::Step::Reconcile => &self.reconcile,
            tern_reconcile::Step::XdsGeneration { changed } => &self.xds_generation[usize::from(changed)],
        }
    }

    fn http_histogram(&self, key: HttpKey) -> Arc<Histogram> {
        self.http.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone()
    }

    /// One store call (Kuma's `store{operation,resource_type}`).
    pub fn store_operation(&self, operation: &'static str, kind: &str, took: Duration) {
        let histogram = self
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((operation, kind.to_string()))
            .or_default()
            .clone();
        histogram.observe(took);
    }

    /// A write refused because the resource changed meanwhile (Kuma's `store_conflicts`).
    pub fn store_conflict(&self, kind: &str) {
        *self.store_conflicts.lock().unwrap_or_else(|p| p.into_inner()).entry(kind.to_string()).or_default() += 1;
    }
}

/// Times every request of `router` as `<prefix>_http_request_duration_seconds`
/// (`api_server`, `dp_server`, `mads_server`), labelled with the route, not
/// the path, so names in URLs never become series.
pub fn instrument(router: axum::Router, prefix: &'static str, metrics: Arc<CpMetrics>) -> axum::Router {
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let metrics = metrics.clone();
        async move {
            let handler = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "unmatched".into());
            let method = req.method().to_string();
            let span = crate::traces::request_span(prefix, &method, &handler, req.headers());
            let started = std::time::Instant::now();
            let response = next.run(req).instrument(span.clone()).await;
            span.record("http.response.status_code", response.status().as_u16());
            let key = (prefix, handler, method, response.status().as_u16());
            metrics.http_histogram(key).observe(started.elapsed());
            response
        }
    }))
}

/// What `/metrics` reads from.
pub struct Sources<S> {
    pub store: Arc<S>,
    pub xds: Arc<tern_xds::XdsHub>,
    pub runtime: Arc<tern_dp_server::RuntimeState>,
    pub metrics: Arc<CpMetrics>,
}

pub fn router<S: ResourceStore>(sources: Arc<Sources<S>>) -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(scrape::<S>)).with_state(sources)
}

async fn scrape<S: ResourceStore>(State(s): State<Arc<Sources<S>>>) -> Response {
    match render(&s).await {
        Ok(text) => {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
        }
        Err(e) => {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the store: {e}\n")).into_response()
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

async fn render<S: ResourceStore>(s: &Sources<S>) -> Result<String, tern_store::StoreError> {
    let mut out = String::new();
    let m = &s.metrics;
    let _ = writeln!(out, "# TYPE cp_info gauge");
    let _ = writeln!(
        out,
        "cp_info{{product=\"Tern\",version=\"{}\",instance_id=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        escape(&m.instance_id)
    );
    let leads = m.leader.as_ref().is_none_or(|l| *l.borrow());
    let _ = writeln!(out, "# TYPE leader gauge\nleader {}", u8::from(leads));

    let _ = writeln!(out, "# TYPE resources_count gauge");
    let mut insights = Vec::new();
    for kind in Kind::ALL {
        let all = s.store.list(kind, &ListFilter::default()).await?;
        let _ = writeln!(out, "resources_count{{resource_type=\"{kind}\"}} {}", all.len());
        if kind == Kind::DataplaneInsight {
            insights = all;
        }
    }

    let xds = s.xds.stats();
    let _ = writeln!(out, "# TYPE xds_streams_active gauge\nxds_streams_active {}", xds.streams_active());
    let _ = writeln!(out, "# TYPE xds_requests_received counter");
    for ((type_url, confirmation), n) in xds.requests() {
        let _ = writeln!(
            out,
            "xds_requests_received{{type_url=\"{}\",confirmation=\"{confirmation}\"}} {n}",
            escape(&type_url)
        );
    }
    let _ = writeln!(out, "# TYPE xds_responses_sent counter");
    for (type_url, n) in xds.responses() {
        let _ = writeln!(out, "xds_responses_sent{{type_url=\"{}\"}} {n}", escape(&type_url));
    }

    let http: Vec<(HttpKey, Arc<Histogram>)> =
        m.http.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, h)| (k.clone(), h.clone())).collect();
    let mut typed = std::collections::BTreeSet::new();
    for ((prefix, handler, method, code), h) in http {
        let name = format!("{prefix}_http_request_duration_seconds");
        if typed.insert(name.clone()) {
            let _ = writeln!(out, "# TYPE {name} histogram");
        }
        let labels = format!("handler=\"{}\",method=\"{}\",code=\"{code}\"", escape(&handler), escape(&method));
        h.render(&mut out, &name, &labels);
    }

    let store: Vec<(StoreKey, Arc<Histogram>)> =
        m.store.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, h)| (k.clone(), h.clone())).collect();
    let _ = writeln!(out, "# TYPE store histogram");
    for ((operation, kind), h) in store {
        h.render(&mut out, "store", &format!("operation=\"{operation}\",resource_type=\"{}\"", escape(&kind)));
    }
    let _ = writeln!(out, "# TYPE store_conflicts counter");
    for (kind, n) in m.store_conflicts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "store_conflicts{{resource_type=\"{}\"}} {n}", escape(kind));
    }

    let _ = writeln!(out, "# TYPE tern_reconcile_duration_seconds histogram");
    m.reconcile.render(&mut out, "tern_reconcile_duration_seconds", "");
    let _ = writeln!(out, "# TYPE tern_plan_delivery_seconds histogram");
    m.plan_delivery.render(&mut out, "tern_plan_delivery_seconds", "");
    let _ = writeln!(out, "# TYPE tern_plan_polls_active gauge\ntern_plan_polls_active {}", s.runtime.polls_active());
    // Kuma's unit here is milliseconds.
    let _ = writeln!(out, "# TYPE xds_generation histogram");
    for (result, histogram) in ["unchanged", "changed"].iter().zip(&m.xds_generation) {
        let labels = format!("proxy_type=\"sidecar\",result=\"{result}\"");
        histogram.render_scaled(&mut out, "xds_generation", &labels, 1000.0);
    }

    let _ = writeln!(out, "# TYPE tern_otel_signals gauge");
    for ((mesh, signal, state), n) in signal_states(&insights) {
        let _ =
            writeln!(out, "tern_otel_signals{{mesh=\"{}\",signal=\"{signal}\",state=\"{state}\"}} {n}", escape(&mesh));
    }

    let _ = writeln!(out, "# TYPE tern_delivery_items_total counter");
    let totals = s.runtime.delivery_totals();
    for ((backend, signal), d) in &totals {
        for (outcome, n) in
            [("received", d.received), ("exported", d.exported), ("dropped", d.dropped), ("retried", d.retries)]
        {
            let _ = writeln!(
                out,
                "tern_delivery_items_total{{backend=\"{}\",signal=\"{signal}\",outcome=\"{outcome}\"}} {n}",
                escape(backend)
            );
        }
    }
    let _ = writeln!(out, "# TYPE tern_delivery_queued_requests gauge");
    for ((backend, signal), d) in &totals {
        let _ = writeln!(
            out,
            "tern_delivery_queued_requests{{backend=\"{}\",signal=\"{signal}\"}} {}",
            escape(backend),
            d.queued_requests
        );
    }
    Ok(out)
}

/// Data planes per mesh, signal and state, from their insights' status
/// (signals that are not enabled left out).
fn signal_states(insights: &[tern_model::Resource]) -> BTreeMap<(String, &'static str, String), u64> {
    let mut out = BTreeMap::new();
    for insight in insights {
        let Some(backends) =
            insight.status.as_ref().and_then(|s| s.pointer("/openTelemetry/backends")).and_then(|b| b.as_array())
        else {
            continue;
        };
        for backend in backends {
            for signal in ["traces", "metrics", "logs"] {
                let Some(state) = backend[signal]["state"].as_str() else { continue };
                *out.entry((insight.mesh.clone(), signal, state.to_string())).or_default() += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(300));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 2\n") && out.contains("x_count{a=\"b\"} 2\n"), "{out}");
    }
}
