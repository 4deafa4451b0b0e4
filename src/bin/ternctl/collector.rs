//! The quickstart's lightweight OTLP collector: receives OTLP/gRPC traces,
//! logs and metrics, counts them, and streams a human-readable line per item
//! to `ternctl otel tail` over HTTP (`GET /tail?signal=traces|logs|metrics`).

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

/// Counts per signal, and the live feed of lines.
pub struct Collected {
    pub spans: AtomicU64,
    pub log_records: AtomicU64,
    pub metric_points: AtomicU64,
    feed: broadcast::Sender<(&'static str, String)>,
}

impl Collected {
    pub fn new() -> Arc<Self> {
        Arc::new(Collected {
            spans: AtomicU64::new(0),
            log_records: AtomicU64::new(0),
            metric_points: AtomicU64::new(0),
            feed: broadcast::channel(4096).0,
        })
    }

    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.spans.load(Ordering::Relaxed),
            self.log_records.load(Ordering::Relaxed),
            self.metric_points.load(Ordering::Relaxed),
        )
    }

    fn line(&self, signal: &'static str, text: String) {
        let _ = self.feed.send((signal, text));
    }
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn service(attrs: &[KeyValue]) -> String {
    attrs.iter().find(|kv| kv.key == "service.name").map(|kv| text(&kv.value)).unwrap_or_else(|| "?".into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone)]
struct Receiver(Arc<Collected>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        r: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for rs in r.into_inner().resource_spans {
            let svc = service(rs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default());
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                self.0.spans.fetch_add(1, Ordering::Relaxed);
                let ms = span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) as f64 / 1e6;
                let status = span.status.as_ref().map(|s| s.code).unwrap_or(0);
                let status = ["unset", "ok", "error"].get(status as usize).copied().unwrap_or("?");
                self.0.line(
                    "traces",
                    format!("{svc:<10} {:<40} {ms:>8.2} ms  status={status}  trace={}", span.name, hex(&span.trace_id)),
                );
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        r: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        for rl in r.into_inner().resource_logs {
            let svc = service(rl.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default());
            for log in rl.scope_logs.into_iter().flat_map(|s| s.log_records) {
                self.0.log_records.fetch_add(1, Ordering::Relaxed);
                let attrs: Vec<String> =
                    log.attributes.iter().map(|kv| format!("{}={}", kv.key, text(&kv.value))).collect();
                self.0.line("logs", format!("{svc:<10} {}  {}", text(&log.body), attrs.join(" ")));
            }
        }
        Ok(Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        r: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        for rm in r.into_inner().resource_metrics {
            let svc = service(rm.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default());
            let mut points = 0u64;
            let mut metrics = 0;
            for m in rm.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                metrics += 1;
                points += tern_pipe::data_points(&m) as u64;
            }
            self.0.metric_points.fetch_add(points, Ordering::Relaxed);
            self.0.line("metrics", format!("{svc:<10} {metrics} metrics, {points} points"));
        }
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// Serves OTLP/gRPC on `grpc` and the tail feed on `http` until `stop`.
pub async fn serve(
    collected: Arc<Collected>,
    grpc: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let r = Receiver(collected.clone());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
    let mut s1 = stop.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(r.clone()).accept_compressed(CompressionEncoding::Gzip))
            .add_service(LogsServiceServer::new(r.clone()).accept_compressed(CompressionEncoding::Gzip))
            .add_service(MetricsServiceServer::new(r).accept_compressed(CompressionEncoding::Gzip))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = s1.wait_for(|s| *s).await;
            })
            .await;
    });
    let app = axum::Router::new().route(
        "/tail",
        axum::routing::get(move |q: axum::extract::Query<std::collections::HashMap<String, String>>| {
            let wanted = q.get("signal").cloned();
            let rx = collected.feed.subscribe();
            async move {
                let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| {
                    let wanted = wanted.clone();
                    match item {
                        Ok((signal, line)) if wanted.as_deref().is_none_or(|w| w == signal) => {
                            Some(Ok::<_, std::convert::Infallible>(format!("{signal:<7} {line}\n")))
                        }
                        _ => None,
                    }
                });
                axum::body::Body::from_stream(stream)
            }
        }),
    );
    let mut s2 = stop;
    tokio::spawn(async move {
        let _ = axum::serve(http, app)
            .with_graceful_shutdown(async move {
                let _ = s2.wait_for(|s| *s).await;
            })
            .await;
    });
}

use tokio_stream::StreamExt;
