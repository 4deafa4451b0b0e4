//! The control plane's own traces (Kuma's `KUMA_TRACING_OPENTELEMETRY_ENABLED`):
//! with `TERN_TRACING_OPENTELEMETRY_ENABLED=true`, spans for API requests
//! (continuing a caller's W3C `traceparent`), reconcile passes and xDS pushes
//! go over OTLP to the collector the standard `OTEL_EXPORTER_OTLP_*` and
//! `OTEL_EXPORTER_OTLP_TRACES_*` variables name, read exactly as `tern-dp`
//! reads them for a backend, and sent by the same exporter. The links between
//! them come from `tern-trace`.

use anyhow::{bail, Result};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use prost::Message;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tern_model::spec::motb::MeshOpenTelemetryBackendSpec;
use tern_otlp_config::env::{ProcessEnv, Signal};
use tern_otlp_config::exporter::{build_exporter, ExporterConfig};
use tern_otlp_config::inventory::Inventory;
use tern_otlp_config::merge::{resolve_signal, BackendSettings};
use tern_otlp_config::parse::ParsedEnv;
use tracing::{info, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The installed tracer provider; [`Tracing::shutdown`] sends what is left.
pub struct Tracing(Option<SdkTracerProvider>);

impl Tracing {
    pub fn shutdown(self) {
        if let Some(provider) = self.0 {
            if let Err(e) = provider.shutdown() {
                eprintln!("tern-cp: the last control-plane spans were not sent: {e}");
            }
        }
    }
}

/// Installs logging to stderr and, when `export` is set, the span exporter.
/// Fails when an `OTEL_EXPORTER_OTLP_*` variable cannot be used.
pub fn init(export: bool, runtime: tokio::runtime::Handle) -> Result<Tracing> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()));
    if !export {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Tracing(None));
    }
    let config = exporter_config()?;
    let endpoint = config.endpoint.value.clone();
    // The exporter's connection lives on the control plane's runtime.
    let _in_runtime = runtime.enter();
    let exporter = PipeExporter::new(config, runtime.clone())?;
    let resource = Resource::builder().with_service_name("tern-cp").build();
    let provider = SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build();
    let tracer = provider.tracer("tern-cp");
    // Tern's own spans, and warnings inside them; never the libraries'
    // (the exporter's own connections would trace themselves).
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(|meta| {
            meta.target().starts_with("tern") && (meta.is_span() || *meta.level() <= tracing::Level::WARN)
        }));
    tracing_subscriber::registry().with(logs).with(spans).init();
    info!(endpoint = %endpoint, "control-plane traces are exported over OTLP");
    Ok(Tracing(Some(provider)))
}

/// The OTLP exporter from the environment: the traces layer over the shared
/// one, defaults where neither says (gRPC to `localhost:4317`).
fn exporter_config() -> Result<ExporterConfig> {
    let (_, parsed, inventory) = Inventory::discover(&ProcessEnv);
    check_env(&parsed)?;
    // A backend with no spec: every field from the environment or its default.
    let settings = BackendSettings::from_spec(&MeshOpenTelemetryBackendSpec::default());
    let resolution = resolve_signal(&settings, Signal::Traces, &inventory, false);
    match build_exporter(&settings, &resolution, &parsed, Some("localhost")) {
        Some(config) => Ok(config),
        None => bail!("the OTEL_EXPORTER_OTLP_* variables do not describe a usable traces exporter"),
    }
}

/// Refuses variables the exporter for traces would read but cannot use,
/// naming the variable and the rule.
fn check_env(parsed: &ParsedEnv) -> Result<()> {
    let traces = Signal::Traces.layer();
    let problems: Vec<String> = parsed
        .problems
        .iter()
        .filter(|p| p.layer == traces || p.layer == tern_otlp_config::env::Layer::Shared)
        .map(|p| format!("{}: {}", p.field.var_name(p.layer), p.message))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("control-plane tracing is enabled but {}", problems.join("; "))
    }
}

/// Sends the SDK's batches with `tern-pipe`'s exporter (the one `tern-dp`
/// uses), on the control plane's runtime: the SDK's batch thread has none.
struct PipeExporter {
    exporter: Arc<tern_pipe::Exporter>,
    runtime: tokio::runtime::Handle,
    resource: ResourceAttributesWithSchema,
    failing: Arc<AtomicBool>,
}

impl PipeExporter {
    fn new(config: ExporterConfig, runtime: tokio::runtime::Handle) -> Result<PipeExporter> {
        let exporter = tern_pipe::Exporter::new(config)
            .map_err(|e| anyhow::anyhow!("control-plane tracing: the OTLP exporter cannot be set up: {e}"))?;
        Ok(PipeExporter {
            exporter: Arc::new(exporter),
            runtime,
            resource: ResourceAttributesWithSchema::default(),
            failing: Arc::default(),
        })
    }
}

impl std::fmt::Debug for PipeExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PipeExporter { .. }")
    }
}

impl SpanExporter for PipeExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let request =
            ExportTraceServiceRequest { resource_spans: group_spans_by_resource_and_scope(batch, &self.resource) };
        let body = bytes::Bytes::from(request.encode_to_vec());
        let exporter = self.exporter.clone();
        let failing = self.failing.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        self.runtime.spawn(async move {
            let sent = exporter.send(Signal::Traces, &[body]).await;
            match &sent {
                Err(e) if !failing.swap(true, Ordering::Relaxed) => {
                    warn!(error = %e.message, "control-plane spans cannot be exported; dropping them until the collector answers")
                }
                Ok(()) if failing.swap(false, Ordering::Relaxed) => info!("control-plane spans are exported again"),
                _ => {}
            }
            let _ = done.send(sent.map_err(|e| OTelSdkError::InternalFailure(e.message)));
        });
        result.await.unwrap_or_else(|_| Err(OTelSdkError::InternalFailure("the runtime stopped".into())))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}

/// The span of one HTTP request to one of the control plane's servers,
/// continuing the caller's trace when it sent a W3C `traceparent`.
pub fn request_span(server: &'static str, method: &str, route: &str, headers: &axum::http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "http request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        server,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let caller = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if opentelemetry::trace::TraceContextExt::span(&caller).span_context().is_valid() {
        let _ = span.set_parent(caller);
    }
    span
}

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
