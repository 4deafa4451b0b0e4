//! The receiver for one backend: an OTLP/gRPC server on the Unix socket the
//! plan names, taking traces, metrics and logs into bounded queues.

use crate::request::OtlpRequest;
use crate::stats::SignalStats;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use std::path::Path;
use std::sync::Arc;
use tern_otlp_config::Signal;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

/// Where one signal's requests go, or why they cannot.
pub enum Route {
    Queue { tx: mpsc::Sender<OtlpRequest>, stats: Arc<SignalStats> },
    Unavailable { reason: String, stats: Arc<SignalStats> },
}

/// The three routes of one backend.
pub struct Routes {
    pub traces: Route,
    pub metrics: Route,
    pub logs: Route,
}

impl Routes {
    pub(crate) fn accept(&self, request: OtlpRequest) -> Result<(), Status> {
        let signal = request.signal();
        let route = match signal {
            Signal::Traces => &self.traces,
            Signal::Metrics => &self.metrics,
            Signal::Logs => &self.logs,
        };
        let items = request.items();
        match route {
            Route::Unavailable { reason, stats } => {
                stats.received(items);
                stats.dropped(items);
                Err(Status::failed_precondition(format!("OTEL {signal} exporter is unavailable: {reason}")))
            }
            Route::Queue { tx, stats } => {
                stats.received(items);
                match tx.try_send(request) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Full(_)) => {
                        stats.dropped(items);
                        Err(Status::resource_exhausted(format!(
                            "OTEL {signal} queue is full: the collector is not keeping up or is unreachable"
                        )))
                    }
                    Err(TrySendError::Closed(_)) => {
                        stats.dropped(items);
                        Err(Status::unavailable(format!("OTEL {signal} exporter is restarting")))
                    }
                }
            }
        }
    }
}

struct Svc(Arc<Routes>);

#[tonic::async_trait]
impl TraceService for Svc {
    async fn export(
        &self,
        r: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0.accept(OtlpRequest::Traces(r.into_inner()))?;
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Svc {
    async fn export(
        &self,
        r: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.0.accept(OtlpRequest::Metrics(r.into_inner()))?;
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl LogsService for Svc {
    async fn export(
        &self,
        r: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.0.accept(OtlpRequest::Logs(r.into_inner()))?;
        Ok(Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

/// Listens on `socket` (replacing a stale socket file from a crashed run,
/// owner-only permissions) until `stop` fires.
pub async fn serve(
    socket: &Path,
    routes: Arc<Routes>,
    stop: oneshot::Receiver<()>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating the socket directory: {e}"))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => tracing::info!(socket = %socket.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing the old socket: {e}")),
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(|e| format!("binding the socket: {e}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("restricting the socket: {e}"))?;
    }
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let router = tonic::transport::Server::builder()
        .add_service(
            TraceServiceServer::new(Svc(routes.clone())).accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .add_service(
            MetricsServiceServer::new(Svc(routes.clone())).accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .add_service(LogsServiceServer::new(Svc(routes)).accept_compressed(tonic::codec::CompressionEncoding::Gzip));
    Ok(tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop.await;
            })
            .await;
    }))
}
