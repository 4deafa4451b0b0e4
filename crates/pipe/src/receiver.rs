//! The receiver for one backend: an OTLP/gRPC server on the Unix socket the
//! plan names, taking traces, metrics and logs into bounded queues. Requests
//! stay bytes (see `wire.rs`): the framing is checked and the items counted,
//! nothing is decoded.

mod authority;
mod queue;

pub use queue::{Fill, NoRoom, Queue, Queued};

use crate::grpc;
use crate::stats::SignalStats;
use crate::wire::{grpc_path, Payload, ResourceAttribute};
use bytes::Bytes;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use tern_otlp_config::Signal;
use tokio::sync::oneshot;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::Status;

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
    /// Added to the resource of every log request (Envoy's access logger has
    /// no way to learn it): this host's `host.name`.
    pub logs_resource: Option<ResourceAttribute>,
}

impl Routes {
    /// Requests and bytes in a signal's queue now (being sent included),
    /// and waiting for room in it.
    pub(crate) fn fill(&self, signal: Signal) -> Fill {
        match self.route(signal) {
            Route::Queue { queue, .. } => queue.fill(),
            Route::Unavailable { .. } => Fill::default(),
        }
    }

    fn route(&self, signal: Signal) -> &Route {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Metrics => &self.metrics,
            Signal::Logs => &self.logs,
        }
    }

    /// Takes a request from the socket into its signal's queue; when the
    /// queue is full, the request waits for room (its sender waits for the
    /// answer) as long as the queue's wait allows, then is refused.
    pub(crate) async fn accept(&self, payload: Payload) -> Result<(), Status> {
        let Some((queue, undelivered)) = self.admit(&payload)? else { return Ok(()) };
        let room = queue.room(payload.bytes.len()).await;
        enqueue(queue, undelivered, payload, room)
    }

    /// [`Routes::accept`] without the wait: for requests made inside the
    /// data plane (Envoy's metrics), which nobody waits on; a scrape that
    /// finds the queue full is refused and the next one brings fresh values.
    pub(crate) fn accept_now(&self, payload: Payload) -> Result<(), Status> {
        let Some((queue, undelivered)) = self.admit(&payload)? else { return Ok(()) };
        let room = queue.try_room(payload.bytes.len());
        enqueue(queue, undelivered, payload, room)
    }

    /// Counts the request as received and finds its queue; `None` when
    /// there is nothing to deliver.
    fn admit(&self, payload: &Payload) -> Result<Option<(&Queue, Undelivered<'_>)>, Status> {
        let (signal, items) = (payload.signal, payload.items);
        match self.route(signal) {
            Route::Unavailable { reason, stats } => {
                stats.received(items);
                stats.dropped(items);
                Err(Status::failed_precondition(format!("OTEL {signal} exporter is unavailable: {reason}")))
            }
            Route::Queue { queue, stats } => {
                stats.received(items);
                Ok((items > 0).then_some((queue, Undelivered { stats, items })))
            }
        }
    }
}

/// Queues a request in the room it got, or refuses it with why.
fn enqueue(
    queue: &Queue,
    undelivered: Undelivered<'_>,
    payload: Payload,
    room: Result<queue::Room, NoRoom>,
) -> Result<(), Status> {
    let signal = payload.signal;
    let len = payload.bytes.len();
    queue.push(payload, room.map_err(|e| refusal(signal, len, e))?).map_err(|e| refusal(signal, len, e))?;
    undelivered.queued();
    Ok(())
}

/// The answer to a request that did not get into the queue.
fn refusal(signal: Signal, len: usize, why: NoRoom) -> Status {
    let busy = "the collector is not keeping up or is unreachable";
    match why {
        NoRoom::TooLarge { limit, .. } => Status::resource_exhausted(format!(
            "OTEL {signal} request of {len} bytes is larger than the whole queue ({limit} bytes)"
        )),
        NoRoom::Full => Status::resource_exhausted(format!("OTEL {signal} queue is full: {busy}")),
        NoRoom::WaitingRoomFull => {
            Status::resource_exhausted(format!("OTEL {signal} queue is full and so is its waiting room: {busy}"))
        }
        NoRoom::TimedOut(wait) => {
            Status::resource_exhausted(format!("OTEL {signal} queue stayed full for {wait:?}: {busy}"))
        }
        NoRoom::Closed => Status::unavailable(format!("OTEL {signal} exporter is restarting")),
    }
}

/// Items of a request not (yet) in the queue. Dropping it counts them as
/// dropped, so every way a request can end short of the queue is counted:
/// refused at once, refused after waiting, or given up by its sender (the
/// connection closed) while it waited.
struct Undelivered<'a> {
    stats: &'a SignalStats,
    items: u64,
}

impl Undelivered<'_> {
    fn queued(mut self) {
        self.items = 0;
    }
}

impl Drop for Undelivered<'_> {
    fn drop(&mut self) {
        if self.items > 0 {
            self.stats.dropped(self.items);
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

/// Parses and queues one `Export` request's message.
async fn export(routes: &Routes, signal: Signal, bytes: Bytes) -> Result<(), Status> {
    let invalid = |e: crate::wire::WireError| Status::invalid_argument(e.to_string());
    let mut payload = Payload::parse(signal, bytes).map_err(invalid)?;
    if let (Signal::Logs, Some(attribute)) = (signal, &routes.logs_resource) {
        payload.bytes = attribute.add_to(&payload.bytes).map_err(invalid)?;
    }
    routes.accept(payload).await
}

/// The unary `Export` call (see `grpc.rs`): read the message, parse its
/// framing, count, queue (waiting for room if need be), answer.
impl<S: OtlpService> Service<http::Request<tonic::body::Body>> for Receiver<S> {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != grpc_path(S::SIGNAL) {
            return Box::pin(async { Ok(Status::unimplemented("only Export is served").into_http()) });
        }
        let routes = self.routes.clone();
        Box::pin(async move {
            let (head, body) = request.into_parts();
            let result = match grpc::read_message(&head.headers, body).await {
                Ok(message) => export(&routes, S::SIGNAL, message).await,
                Err(status) => Err(status),
            };
            Ok(grpc::answer(result))
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
    // Frames and windows large enough for a whole request: a sender can then
    // put each message in one DATA frame, which the receiver takes without a
    // copy (`grpc.rs`). The message limit still bounds what is held.
    let router = tonic::transport::Server::builder()
        .max_frame_size(Some(grpc::MAX_FRAME_BYTES))
        .initial_stream_window_size(Some(grpc::WINDOW_BYTES))
        .initial_connection_window_size(Some(grpc::WINDOW_BYTES))
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
        let limits = crate::QueueLimits { requests: 8, bytes: 1 << 20, wait: std::time::Duration::ZERO };
        let (tx, mut rx) = tokio::sync::mpsc::channel(limits.requests);
        let queue = Queue::new(tx, limits);
        let routes = Arc::new(Routes {
            traces: Route::Queue { queue, stats: Arc::default() },
            metrics: unavailable(),
            logs: unavailable(),
            logs_resource: None,
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
