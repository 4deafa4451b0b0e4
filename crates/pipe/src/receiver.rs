//! The receiver for one backend: an OTLP/gRPC server on the Unix socket the
//! plan names, taking traces, metrics and logs into bounded queues. Requests
//! stay bytes (see `wire.rs`): the framing is checked and the items counted,
//! nothing is decoded.

mod authority;

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
    // Every connection goes through `AuthorityFix`, so gRPC clients that
    // name the socket path as `:authority` are served, not reset by h2.
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::UnixListenerStream::new(listener), |conn| {
        conn.map(authority::AuthorityFix::new)
    });
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

#[cfg(test)]
mod tests {
    use super::authority::tests::client_request;
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn unavailable() -> Route {
        Route::Unavailable { reason: "test".into(), stats: Arc::default() }
    }

    fn frame(kind: u8, flags: u8, stream: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, stream];
        out.extend_from_slice(payload);
        out
    }

    /// What Python's grpcio sends for `unix:///tmp/x.sock`: the path,
    /// percent-encoded, as `:authority`. h2 alone resets such a stream with
    /// PROTOCOL_ERROR; the receiver must take the export.
    #[tokio::test]
    async fn exports_with_a_socket_path_authority_are_served() {
        let socket = std::env::temp_dir().join(format!("tern-authority-{}.sock", std::process::id()));
        let limits = crate::QueueLimits { requests: 8, bytes: 1 << 20 };
        let (tx, mut rx) = mpsc::channel(limits.requests);
        let queue = Queue {
            tx,
            places: Arc::new(Semaphore::new(limits.requests)),
            budget: Arc::new(Semaphore::new(limits.bytes)),
            limits,
        };
        let routes = Arc::new(Routes {
            traces: Route::Queue { queue, stats: Arc::default() },
            metrics: unavailable(),
            logs: unavailable(),
        });
        let (stop, stopped) = oneshot::channel();
        let server = serve(&socket, routes, stopped).await.expect("serves");

        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span { name: "GET /".into(), ..Default::default() }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let mut message = vec![0u8];
        message.extend_from_slice(&u32::try_from(request.len()).expect("small").to_be_bytes());
        message.extend_from_slice(&request);
        let mut conn = tokio::net::UnixStream::connect(&socket).await.expect("connects");
        let mut sent = client_request(b"%2Ftmp%2Fx.sock", 1, true);
        sent.extend(frame(0x0, 0x1, 1, &message)); // DATA, END_STREAM
        conn.write_all(&sent).await.expect("writes");

        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut hpack = loona_hpack::Decoder::new();
            let mut fields = Vec::new();
            loop {
                let mut header = [0u8; 9];
                conn.read_exact(&mut header).await.expect("a frame");
                let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
                let mut payload = vec![0u8; len];
                conn.read_exact(&mut payload).await.expect("its payload");
                match header[3] {
                    0x4 if header[4] & 0x1 == 0 => conn.write_all(&frame(0x4, 0x1, 0, &[])).await.expect("ack"),
                    0x1 => {
                        fields.extend(hpack.decode(&payload).expect("server headers decode"));
                        if header[4] & 0x1 != 0 {
                            return fields;
                        }
                    }
                    0x3 => panic!("stream reset, error code {:?}", &payload),
                    0x7 => panic!("connection closed (GOAWAY) {:?}", String::from_utf8_lossy(&payload)),
                    _ => {}
                }
            }
        })
        .await
        .expect("answered in time");
        let field = |name: &str| answer.iter().find(|(n, _)| n.as_slice() == name.as_bytes()).map(|(_, v)| v.clone());
        assert_eq!(field(":status"), Some(b"200".to_vec()), "{answer:?}");
        assert_eq!(field("grpc-status"), Some(b"0".to_vec()), "{answer:?}");
        let queued = rx.try_recv().expect("the export was queued");
        assert_eq!(queued.payload.items, 1);

        drop(conn); // a graceful stop waits for open connections
        let _ = stop.send(());
        let _ = server.await;
        let _ = std::fs::remove_file(&socket);
    }
}
