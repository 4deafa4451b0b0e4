//! MeshMetric's Prometheus backend on the data plane: for every endpoint the
//! plan names, a server on the data plane's address answering the endpoint's
//! path with Envoy's statistics (only those Envoy used, as Kuma's agent asks)
//! labelled with the data plane's mesh, zone, service and name, followed by
//! `tern-dp`'s own delivery counts. Prometheus finds these endpoints through
//! the control plane's monitoring assignments (MADS).

use crate::metric_filter::MetricFilter;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tern_otlp_config::{AppMetrics, OtelPlan, PrometheusEndpoint, SidecarMetrics};
use tern_pipe::PipeManager;
use tokio::sync::{watch, Mutex};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{info, warn};

/// What every endpoint serves from.
struct Source {
    client: reqwest::Client,
    admin: u16,
    /// The current plan: its `sidecar_metrics` filter what is served.
    plan: watch::Receiver<OtelPlan>,
    /// `key="value"` pairs added to every sample (values already escaped).
    labels: Vec<(String, String)>,
    /// The data plane's address: where applications are, unless they say.
    address: IpAddr,
    /// Whether the cardinality cap has been reported (once).
    warned_cap: std::sync::atomic::AtomicBool,
    pipe: Arc<Mutex<PipeManager>>,
}

/// Where endpoints are served: the data plane's address, and the TLS
/// configuration for `ProvidedTLS` ones (`--metrics-cert-file`).
pub struct Serving {
    pub address: IpAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Keeps one server per endpoint of the current plan until `plan` closes.
pub async fn serve_endpoints(
    mut plan: watch::Receiver<OtelPlan>,
    serving: Serving,
    admin: u16,
    labels: Vec<(String, String)>,
    pipe: Arc<Mutex<PipeManager>>,
) -> Result<(), String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
    let source = Arc::new(Source {
        client,
        admin,
        plan: plan.clone(),
        labels: escaped(&labels),
        address: serving.address,
        warned_cap: Default::default(),
        pipe,
    });
    let mut servers: JoinSet<()> = JoinSet::new();
    let mut running: BTreeMap<(u16, String), AbortHandle> = BTreeMap::new();
    loop {
        let wanted: Vec<PrometheusEndpoint> = plan.borrow_and_update().prometheus.clone();
        running.retain(|(port, path), handle| {
            let keep = wanted.iter().any(|e| e.port == *port && &e.path == path);
            if !keep {
                handle.abort();
                info!(port, path = %path, "Prometheus endpoint removed");
            }
            keep
        });
        for endpoint in &wanted {
            let key = (endpoint.port, endpoint.path.clone());
            if running.contains_key(&key) {
                continue;
            }
            let tls = match (endpoint.tls, &serving.tls) {
                (true, Some(config)) => Some(config.clone()),
                (true, None) => {
                    warn!(port = endpoint.port, "tls.mode ProvidedTLS without --metrics-cert-file and --metrics-key-file: serving plain HTTP (as Kuma does without certificates)");
                    None
                }
                (false, _) => None,
            };
            let addr = std::net::SocketAddr::new(serving.address, endpoint.port);
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    info!(addr = %addr, path = %endpoint.path, client = %endpoint.client_id, tls = tls.is_some(), "serving Prometheus metrics");
                    let router = axum::Router::new()
                        .route(&normalized(&endpoint.path), axum::routing::get(scrape))
                        .with_state(source.clone());
                    let handle = servers.spawn(async move {
                        // Stopped by aborting the task: the stop signal never fires,
                        // and its sender lives as long as the task.
                        let (_never, stop) = watch::channel(false);
                        let served = match tls {
                            Some(config) => tern_tls::serve(listener, router, config, stop).await,
                            None => axum::serve(listener, router).await.map_err(|e| e.to_string()),
                        };
                        if let Err(e) = served {
                            warn!(addr = %addr, error = %e, "Prometheus endpoint stopped");
                        }
                    });
                    running.insert(key, handle);
                }
                Err(e) => {
                    warn!(addr = %addr, error = %e, "cannot serve the Prometheus endpoint; retrying with the next plan")
                }
            }
        }
        while servers.try_join_next().is_some() {}
        if plan.changed().await.is_err() {
            return Ok(());
        }
    }
}

/// Envoy's statistics in Prometheus' text format: only those Envoy used,
/// unless MeshMetric's `includeUnused` (Kuma's `usedonly`).
pub fn stats_url(admin: u16, sidecar: &SidecarMetrics) -> String {
    let used = if sidecar.include_unused { "" } else { "?usedonly" };
    format!("http://127.0.0.1:{admin}/stats/prometheus{used}")
}

/// A path as a route: with its leading `/`.
fn normalized(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

async fn scrape(State(source): State<Arc<Source>>) -> Response {
    let sidecar = source.plan.borrow().sidecar_metrics.clone();
    let envoy = match source.client.get(stats_url(source.admin, &sidecar)).send().await {
        Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
        Ok(r) => return (StatusCode::BAD_GATEWAY, format!("Envoy's admin answered {}\n", r.status())).into_response(),
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("Envoy's admin is not reachable: {e}\n")).into_response(),
    };
    let filtered = MetricFilter::new(&sidecar).apply(&envoy);
    let mut dropped = filtered.dropped_series;
    let mut body = with_labels(&filtered.text, &source.labels);
    let apps = source.plan.borrow().applications.clone();
    for app in &apps {
        match application_metrics(&source.client, source.address, app).await {
            Ok(text) => {
                let filtered = MetricFilter::all().apply(&text);
                dropped += filtered.dropped_series;
                body.push_str(&with_labels(&filtered.text, &source.labels));
            }
            Err(e) => tracing::debug!(error = %e, "application metrics not served"),
        }
    }
    crate::metric_filter::report_cap(&source.warned_cap, dropped, "prometheus");
    body.push_str(&with_labels(&source.pipe.lock().await.prometheus(), &source.labels));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// An application's own metrics (MeshMetric `applications[]`), as text.
pub async fn application_metrics(
    client: &reqwest::Client,
    dp_address: IpAddr,
    app: &AppMetrics,
) -> Result<String, String> {
    let host = app.address.clone().unwrap_or_else(|| dp_address.to_string());
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
    let url = format!("http://{host}:{}{}", app.port, normalized(&app.path));
    let response = client.get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    response.text().await.map_err(|e| format!("{url}: {e}"))
}

/// Label values with Prometheus' escaping.
fn escaped(labels: &[(String, String)]) -> Vec<(String, String)> {
    labels.iter().map(|(k, v)| (k.clone(), v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))).collect()
}

/// Prometheus text with `labels` added to every sample line, except those
/// a sample already has (an application's own `mesh` label stays its own).
pub fn with_labels(text: &str, labels: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        if labels.is_empty() || line.is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let (name, existing, value) = match line.find('{').filter(|b| !line[..*b].contains(' ')) {
            Some(brace) => match line[brace..].rfind('}') {
                Some(close) => (&line[..brace], &line[brace + 1..brace + close], &line[brace + close + 1..]),
                None => (line, "", ""),
            },
            None => match line.split_once(' ') {
                Some((name, _)) => (name, "", &line[name.len()..]),
                None => (line, "", ""),
            },
        };
        if value.is_empty() {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let has = |key: &str| existing.starts_with(&format!("{key}=")) || existing.contains(&format!(",{key}="));
        let added: Vec<String> = labels.iter().filter(|(k, _)| !has(k)).map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        out.push_str(name);
        out.push('{');
        out.push_str(&added.join(","));
        if !added.is_empty() && !existing.is_empty() {
            out.push(',');
        }
        out.push_str(existing);
        out.push('}');
        out.push_str(value);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_join_every_sample_and_leave_comments() {
        let labels = escaped(&[("mesh".into(), "default".into()), ("dataplane".into(), "we\"b".into())]);
        let text = "# TYPE envoy_x counter\nenvoy_x{cluster=\"a\"} 3\nenvoy_y 4\nenvoy_z{} 5\n\n";
        assert_eq!(
            with_labels(text, &labels),
            "# TYPE envoy_x counter\nenvoy_x{mesh=\"default\",dataplane=\"we\\\"b\",cluster=\"a\"} 3\nenvoy_y{mesh=\"default\",dataplane=\"we\\\"b\"} 4\nenvoy_z{mesh=\"default\",dataplane=\"we\\\"b\"} 5\n\n"
        );
        // A label the sample has already is not added twice (an invalid exposition).
        assert_eq!(with_labels("app_x{mesh=\"mine\"} 1\n", &labels), "app_x{dataplane=\"we\\\"b\",mesh=\"mine\"} 1\n");
    }
}
