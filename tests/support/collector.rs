//! A test OTLP collector (gRPC over TCP) that records what it receives and
#![allow(dead_code)]
//! the headers it saw, and can be stopped and started again on its port.
//! Lives in the tests, not the product.

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::sync::{Arc, Mutex};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::{Request, Response, Status};

/// One span as received.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    /// `(trace id, span id)` of each linked span.
    pub links: Vec<(Vec<u8>, Vec<u8>)>,
    /// String-valued attributes.
    pub attributes: Vec<(String, String)>,
}

/// Everything received so far.
#[derive(Default)]
pub struct Received {
    pub spans: Vec<String>,
    pub span_records: Vec<SpanRecord>,
    pub log_bodies: Vec<String>,
    pub metric_points: usize,
    pub metric_names: Vec<String>,
    /// Each metric of each export: its name and number of data points.
    pub metric_series: Vec<(String, usize)>,
    /// Request metadata (headers) of every export, flattened to `key=value`.
    pub headers: Vec<String>,
    /// The bytes of every trace export, as they arrived (after gzip).
    pub trace_bodies: Vec<Vec<u8>>,
    /// Trace exports being answered now, and the most there ever were.
    pub traces_in_progress: usize,
    pub traces_most_in_progress: usize,
    /// String resource attributes seen, as (signal, key, value).
    pub resources: std::collections::BTreeSet<(String, String, String)>,
}

/// The string attributes of a resource, for [`Received::resources`].
fn resource_strings(
    signal: &str,
    resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>,
) -> Vec<(String, String, String)> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    resource
        .into_iter()
        .flat_map(|r| &r.attributes)
        .filter_map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Some((signal.to_string(), kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Received>>, Gate);

/// While closed, trace exports are held unanswered (see [`Collector::hold_traces`]).
#[derive(Clone)]
struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(tokio::sync::watch::channel(true).0))
    }
}

impl Recorder {
    fn headers<T>(&self, r: &Request<T>) {
        let mut rec = self.0.lock().expect("lock");
        for kv in r.metadata().iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                rec.headers.push(format!("{}={}", k.as_str(), v.to_str().unwrap_or("")));
            }
        }
    }
}

impl Recorder {
    fn record_traces(&self, request: ExportTraceServiceRequest) {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let mut rec = self.0.lock().expect("lock");
        for rs in request.resource_spans {
            rec.resources.extend(resource_strings("traces", rs.resource.as_ref()));
            let service = rs
                .resource
                .iter()
                .flat_map(|res| &res.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                rec.spans.push(span.name.clone());
                let attributes = span
                    .attributes
                    .iter()
                    .filter_map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(s)) => Some((kv.key.clone(), s.clone())),
                        _ => None,
                    })
                    .collect();
                rec.span_records.push(SpanRecord {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    links: span.links.into_iter().map(|l| (l.trace_id, l.span_id)).collect(),
                    attributes,
                });
            }
        }
    }
}

/// The trace service, taking requests as bytes so the collector can keep
/// them exactly as they arrived (the relay must not re-encode them).
#[derive(Clone)]
struct RawTraces(Recorder);

impl tonic::server::NamedService for RawTraces {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tonic::server::UnaryService<bytes::Bytes> for RawTraces {
    type Response = Vec<bytes::Bytes>;
    type Future = tonic::codegen::BoxFuture<Response<Vec<bytes::Bytes>>, Status>;

    fn call(&mut self, r: Request<bytes::Bytes>) -> Self::Future {
        use prost::Message;
        let recorder = self.0.clone();
        Box::pin(async move {
            recorder.headers(&r);
            let body = r.into_inner();
            {
                let mut rec = recorder.0.lock().expect("lock");
                rec.trace_bodies.push(body.to_vec());
                rec.traces_in_progress += 1;
                rec.traces_most_in_progress = rec.traces_most_in_progress.max(rec.traces_in_progress);
            }
            let _ = recorder.1 .0.subscribe().wait_for(|open| *open).await;
            recorder.0.lock().expect("lock").traces_in_progress -= 1;
            match ExportTraceServiceRequest::decode(body) {
                Ok(request) => {
                    recorder.record_traces(request);
                    Ok(Response::new(Vec::new()))
                }
                Err(e) => Err(Status::invalid_argument(e.to_string())),
            }
        })
    }
}

impl<B> tower::Service<http::Request<B>> for RawTraces
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec).accept_compressed(CompressionEncoding::Gzip);
            Ok(grpc.unary(svc, request).await)
        })
    }
}

#[tonic::async_trait]
impl LogsService for Recorder {
    async fn export(
        &self,
        r: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.headers(&r);
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let request = r.into_inner();
        let resources: Vec<_> =
            request.resource_logs.iter().flat_map(|rl| resource_strings("logs", rl.resource.as_ref())).collect();
        self.0.lock().expect("lock").resources.extend(resources);
        let bodies = request.resource_logs.into_iter().flat_map(|rl| rl.scope_logs).flat_map(|sl| sl.log_records).map(
            |l| match l.body.and_then(|b| b.value) {
                Some(Value::StringValue(s)) => s,
                other => format!("{other:?}"),
            },
        );
        self.0.lock().expect("lock").log_bodies.extend(bodies);
        Ok(Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Recorder {
    async fn export(
        &self,
        r: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.headers(&r);
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        let mut rec = self.0.lock().expect("lock");
        let request = r.into_inner();
        for rm in &request.resource_metrics {
            rec.resources.extend(resource_strings("metrics", rm.resource.as_ref()));
        }
        for m in request.resource_metrics.into_iter().flat_map(|rm| rm.scope_metrics).flat_map(|sm| sm.metrics) {
            let points = match &m.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                _ => 0,
            };
            rec.metric_points += points;
            rec.metric_series.push((m.name.clone(), points));
            rec.metric_names.push(m.name);
        }
        drop(rec);
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// A collector listening on 127.0.0.1:`port`.
pub struct Collector {
    pub port: u16,
    recorder: Recorder,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    tls: Option<ServerTls>,
}

/// Server certificate PEM, its key PEM, and the CA PEM client certificates
/// must chain to (mTLS) if any.
pub type ServerTls = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

impl Collector {
    /// Starts on a free port.
    pub async fn start() -> Collector {
        Self::start_tls(None).await
    }

    /// Starts with TLS: `(server cert PEM, server key PEM, client CA PEM if
    /// client certificates are required)`.
    pub async fn start_tls(tls: Option<ServerTls>) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut c = Collector { port, recorder: Recorder::default(), stop: None, task: None, tls };
        c.serve(listener);
        c
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let r = self.recorder.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key, client_ca)) = &self.tls {
            let mut tls =
                tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
            if let Some(ca) = client_ca {
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder.tls_config(tls).expect("server TLS");
        }
        self.task = Some(tokio::spawn(async move {
            let _ = builder
                .add_service(RawTraces(r.clone()))
                .add_service(LogsServiceServer::new(r.clone()).accept_compressed(CompressionEncoding::Gzip))
                .add_service(MetricsServiceServer::new(r).accept_compressed(CompressionEncoding::Gzip))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        }));
        self.stop = Some(tx);
    }

    /// Stops listening (connections are closed).
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(mut t) = self.task.take() {
            // Graceful: open connections get GOAWAY and close, so nothing
            // is accepted after `stop` returns; bounded, then forced.
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
    }

    /// Listens again on the same port, keeping what was received.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("rebind");
        self.serve(listener);
    }

    /// Holds trace exports unanswered (`true`) or answers them (`false`),
    /// including those held so far.
    pub fn hold_traces(&self, hold: bool) {
        self.recorder.1 .0.send_replace(!hold);
    }

    pub fn with<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.recorder.0.lock().expect("lock"))
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// An OTLP client on a Unix socket, as Envoy talks to `tern-dp`.
pub mod client {
    use hyper_util::rt::TokioIo;
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use std::path::PathBuf;
    use tonic::transport::{Channel, Endpoint};

    pub async fn connect(socket: PathBuf) -> Channel {
        Endpoint::try_from("http://[::]:50051")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = socket.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await
            .expect("unix socket connects")
    }

    /// Sends an already-encoded ExportTraceServiceRequest as it is.
    pub async fn raw_traces(ch: &Channel, body: Vec<u8>) -> Result<(), tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(tern_pipe::wire::grpc_path(
            tern_otlp_config::Signal::Traces,
        ));
        let request = tonic::Request::new(vec![bytes::Bytes::from(body)]);
        let response: tonic::Response<bytes::Bytes> = grpc.unary(request, path, super::RawCodec).await?;
        drop(response);
        Ok(())
    }

    pub async fn spans(ch: &Channel, names: &[&str]) -> Result<(), tonic::Status> {
        let spans = names
            .iter()
            .map(|n| Span { name: n.to_string(), trace_id: vec![1; 16], span_id: vec![2; 8], ..Default::default() })
            .collect();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        };
        TraceServiceClient::new(ch.clone()).export(req).await.map(|_| ())
    }

    pub async fn logs(ch: &Channel, bodies: &[&str]) -> Result<(), tonic::Status> {
        let log_records = bodies
            .iter()
            .map(|b| LogRecord {
                body: Some(AnyValue { value: Some(any_value::Value::StringValue(b.to_string())) }),
                ..Default::default()
            })
            .collect();
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs { log_records, ..Default::default() }],
                ..Default::default()
            }],
        };
        LogsServiceClient::new(ch.clone()).export(req).await.map(|_| ())
    }

    pub async fn gauge(ch: &Channel, points: usize) -> Result<(), tonic::Status> {
        let data_points = (0..points).map(|_| NumberDataPoint::default()).collect();
        let m = Metric {
            name: "envoy_requests".into(),
            data: Some(metric::Data::Gauge(Gauge { data_points })),
            ..Default::default()
        };
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics { metrics: vec![m], ..Default::default() }],
                ..Default::default()
            }],
        };
        MetricsServiceClient::new(ch.clone()).export(req).await.map(|_| ())
    }
}

/// A gRPC codec that moves messages as bytes, for the collector's view of
/// requests as they arrived: it decodes to the message's bytes and encodes a
/// list of already-encoded parts back to back.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawCodec;

#[derive(Debug, Default, Clone, Copy)]
pub struct RawEncoder;

#[derive(Debug, Default, Clone, Copy)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<Bytes>;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<Bytes>;
    type Error = Status;

    fn encode(&mut self, parts: Vec<Bytes>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        for part in parts {
            dst.put(part);
        }
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
