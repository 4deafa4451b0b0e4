//! The receiver for one backend: an OTLP/gRPC server on the Unix socket the
//! plan names, taking traces, metrics and logs into bounded queues. Requests
//! stay bytes (see `wire.rs`): the framing is checked and the items counted,
//! nothing is decoded.

use crate::stats::SignalStats;
use crate::wire::{grpc_path, Payload, RawCodec};
use bytes::Bytes;
use std::future::{ready, Ready};
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use tern_otlp_config::Signal;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::codec::CompressionEncoding;
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::NamedService;
use tonic::{Response, Status};

/// A request in a signal's queue, holding its place and its share of the
/// queue's byte budget until it is delivered or dropped (a request being
/// sent still counts against the bounds).
pub struct Queued {
    pub payload: Payload,
    pub _place: OwnedSemaphorePermit,
    pub _budget: OwnedSemaphorePermit,
}

/// A signal's queue: the channel to its export loop and the two bounds.
pub struct Queue {
    pub tx: mpsc::Sender<Queued>,
    /// One permit per request the queue may hold.
    pub places: Arc<Semaphore>,
    /// One permit per byte the queue may hold.
    pub budget: Arc<Semaphore>,
    pub limits: crate::QueueLimits,
}

/// Where one signal's requests go, or why they cannot.
pub enum Route {
    Queue { queue: Queue, stats: Arc<SignalStats> },
    Unavailable { reason: String, stats: Arc<SignalStats> },
}

/// The three routes of one backend.
pub struct Routes {
    pub traces: Route,
    pub metrics: Route,
    pub logs: Route,
}

impl Routes {
    /// Requests and bytes in a signal's queue now (being sent included).
    pub(crate) fn fill(&self, signal: Signal) -> (u64, u64) {
        match self.route(signal) {
            Route::Queue { queue, .. } => (
                queue.limits.requests.saturating_sub(queue.places.available_permits()) as u64,
                queue.limits.bytes.saturating_sub(queue.budget.available_permits()) as u64,
            ),
            Route::Unavailable { .. } => (0, 0),
        }
    }

    fn route(&self, signal: Signal) -> &Route {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Metrics => &self.metrics,
            Signal::Logs => &self.logs,
        }
    }

    pub(crate) fn accept(&self, payload: Payload) -> Result<(), Status> {
        let signal = payload.signal;
        let route = self.route(signal);
        let items = payload.items;
        match route {
            Route::Unavailable { reason, stats } => {
                stats.received(items);
                stats.dropped(items);
                Err(Status::failed_precondition(format!("OTEL {signal} exporter is unavailable: {reason}")))
            }
            Route::Queue { queue, stats } => {
                stats.received(items);
                if items == 0 {
                    return Ok(()); // nothing to deliver
                }
                let full = || {
                    stats.dropped(items);
                    Status::resource_exhausted(format!(
                        "OTEL {signal} queue is full: the collector is not keeping up or is unreachable"
                    ))
                };
                let (len, limit) = (payload.bytes.len(), queue.limits.bytes);
                if len > limit {
                    stats.dropped(items);
                    return Err(Status::resource_exhausted(format!(
                        "OTEL {signal} request of {len} bytes is larger than the whole queue ({limit} bytes)"
                    )));
                }
                let place = queue.places.clone().try_acquire_owned().map_err(|_| full())?;
                let bytes = u32::try_from(len).map_err(|_| full())?;
                let budget = queue.budget.clone().try_acquire_many_owned(bytes).map_err(|_| full())?;
                match queue.tx.try_send(Queued { payload, _place: place, _budget: budget }) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Full(_)) => Err(full()),
                    Err(TrySendError::Closed(_)) => {
                        stats.dropped(items);
                        Err(Status::unavailable(format!("OTEL {signal} exporter is restarting")))
                    }
                }
            }
        }
    }
}

/// Which OTLP service a [`Receiver`] serves.
pub trait OtlpService: Send + Sync + 'static {
    const SIGNAL: Signal;
    const NAME: &'static str;
}

pub struct TraceService;
pub struct MetricsService;
pub struct LogsService;

impl OtlpService for TraceService {
    const SIGNAL: Signal = Signal::Traces;
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl OtlpService for MetricsService {
    const SIGNAL: Signal = Signal::Metrics;
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
}

impl OtlpService for LogsService {
    const SIGNAL: Signal = Signal::Logs;
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

/// One OTLP/gRPC service (`Export` only) taking requests as bytes.
pub struct Receiver<S> {
    routes: Arc<Routes>,
    service: PhantomData<S>,
}

impl<S> Receiver<S> {
    fn new(routes: Arc<Routes>) -> Self {
        Receiver { routes, service: PhantomData }
    }
}

impl<S> Clone for Receiver<S> {
    fn clone(&self) -> Self {
        Receiver::new(self.routes.clone())
    }
}

impl<S: OtlpService> NamedService for Receiver<S> {
    const NAME: &'static str = S::NAME;
}

/// The unary `Export` call: parse the framing, count, queue.
struct Export {
    routes: Arc<Routes>,
    signal: Signal,
}

impl tonic::server::UnaryService<Bytes> for Export {
    type Response = Vec<Bytes>;
    type Future = Ready<Result<Response<Vec<Bytes>>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let accepted = Payload::parse(self.signal, request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))
            .and_then(|payload| self.routes.accept(payload));
        // An empty Export*ServiceResponse: no partial success to report.
        ready(accepted.map(|()| Response::new(Vec::new())))
    }
}

impl<S, B> Service<http::Request<B>> for Receiver<S>
where
    S: OtlpService,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let export = Export { routes: self.routes.clone(), signal: S::SIGNAL };
        if request.uri().path() != grpc_path(S::SIGNAL) {
            return Box::pin(async { Ok(Status::unimplemented("only Export is served").into_http()) });
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec).accept_compressed(CompressionEncoding::Gzip);
            Ok(grpc.unary(export, request).await)
        })
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
        .add_service(Receiver::<TraceService>::new(routes.clone()))
        .add_service(Receiver::<MetricsService>::new(routes.clone()))
        .add_service(Receiver::<LogsService>::new(routes));
    Ok(tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop.await;
            })
            .await;
    }))
}
