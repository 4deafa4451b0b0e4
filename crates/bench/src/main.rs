//! `tern-bench`: the tools behind BENCHMARKS.md's relay benchmark.
//!
//! - `sink`: an OTLP/gRPC blackhole that counts the spans, log records and
//!   metric data points it receives, at any rate or at most `--rate` items a
//!   second (a collector that keeps up only so far);
//! - `load`: an OTLP/gRPC load generator sending Envoy-shaped spans, access
//!   log records or metric points to a TCP address or a Unix socket, flat out
//!   or at a fixed rate, reporting accepted items/s and latency percentiles
//!   as JSON;
//! - `http`: HTTP/1.1 load at a fixed rate with latency percentiles (the
//!   sidecar benchmarks);
//! - `copy`: copies bytes from a Unix socket to a TCP address with no parsing
//!   at all (the physical reference a relay is compared with);
//! - `seed-zone`, `sync-initial`, `sync-latency`: the multi-zone sync
//!   benchmark (`multizone.rs`).

mod dataplanes;
mod http_load;
mod kube_apply;
mod multizone;

use clap::{Parser, Subcommand};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(name = "tern-bench", about = "OTLP benchmark tools")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Count what arrives over OTLP/gRPC; every second, print the totals:
    /// `SPANS LOG_RECORDS METRIC_POINTS`.
    Sink {
        #[arg(long)]
        listen: String,
        /// Items (spans, log records, metric points) accepted per second at
        /// most: each export is answered when its turn comes; unlimited when
        /// absent.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rate: Option<u64>,
    },
    /// Send telemetry and report items/s and latency.
    Load {
        /// `unix:/path` or `host:port`.
        #[arg(long)]
        target: String,
        #[arg(long, value_enum, default_value_t = LoadSignal::Traces)]
        signal: LoadSignal,
        /// Spans, log records or metric points per export request (the batch size).
        #[arg(long, alias = "spans-per-request", default_value_t = 100)]
        items_per_request: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Requests per second across all connections, every request
        /// scheduled within --seconds sent, late if the target holds the
        /// sender back (a burst is its requests, not a time window); flat
        /// out until --seconds have passed when absent.
        #[arg(long)]
        rate: Option<u64>,
        /// Requests each connection has in flight at most. 1 waits for each
        /// answer before the next request (as the OpenTelemetry SDKs do);
        /// more, with --rate, sends on schedule whatever is unanswered (as
        /// Envoy's tracer does).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        in_flight: u32,
    },
    /// Send HTTP/1.1 GETs over keep-alive connections at a fixed rate (open
    /// loop: latency counts from when each request was due) or flat out;
    /// print one JSON report with latency percentiles.
    Http {
        #[arg(long)]
        url: hyper::Uri,
        /// Requests per second across all connections; flat out when absent.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rate: Option<u64>,
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        connections: u64,
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
    },
    /// Copy bytes from a Unix socket to a TCP address.
    Copy {
        #[arg(long)]
        listen_unix: String,
        #[arg(long)]
        to: String,
    },
    /// Write COUNT Dataplanes and insights into a zone's (stopped) store, as the zone's own.
    SeedZone {
        #[arg(long)]
        store: String,
        #[arg(long)]
        zone: String,
        #[arg(long)]
        count: usize,
    },
    /// Time the initial sync between a global and a zone (APIs over HTTP); print JSON.
    SyncInitial {
        #[arg(long)]
        global: String,
        #[arg(long)]
        zone: String,
        #[arg(long)]
        zone_name: String,
        #[arg(long)]
        resources: u64,
        #[arg(long)]
        dataplanes: u64,
    },
    /// Simulate COUNT data planes against tern-cp replicas: the bootstrap storm, backend edits
    /// until every plan has them, RSS, CPU, store calls; print JSON.
    Dataplanes(dataplanes::Options),
    /// Create COUNT Dataplanes in one batch through the Kubernetes store, then change them all,
    /// CONCURRENCY apiserver calls at a time; print JSON.
    KubeApply {
        #[arg(long)]
        kubeconfig: std::path::PathBuf,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = tern_kube::store::CONCURRENCY)]
        concurrency: usize,
        /// Names are dp-ROUND-N, so rounds do not collide.
        #[arg(long)]
        round: String,
    },
    /// Time EDITS backend edits on the global until each shows on the zone; print JSON.
    SyncLatency {
        #[arg(long)]
        global: String,
        #[arg(long)]
        zone: String,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        edits: u32,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LoadSignal {
    Traces,
    Logs,
    Metrics,
}

/// Spans, log records and metric points received.
#[derive(Clone, Default)]
struct Sink {
    counts: Arc<[AtomicU64; 3]>,
    pace: Option<Arc<Pace>>,
}

/// Acceptance at a fixed rate: exports take turns, each taking as long as
/// its items need at the rate, so a busy sink answers later and later, as a
/// collector at its limit does.
struct Pace {
    seconds_per_item: f64,
    free_at: std::sync::Mutex<tokio::time::Instant>,
}

impl Sink {
    /// Waits for this export's turn (if paced), then counts its items.
    async fn take(&self, signal: usize, items: usize) {
        if let Some(pace) = &self.pace {
            let done = {
                let mut free_at = pace.free_at.lock().unwrap_or_else(|p| p.into_inner());
                let start = (*free_at).max(tokio::time::Instant::now());
                *free_at = start + Duration::from_secs_f64(pace.seconds_per_item * items as f64);
                *free_at
            };
            tokio::time::sleep_until(done).await;
        }
        self.counts[signal].fetch_add(items as u64, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        r: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = r.get_ref().resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum();
        self.take(0, n).await;
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        r: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let n: usize =
            r.get_ref().resource_logs.iter().flat_map(|rl| &rl.scope_logs).map(|sl| sl.log_records.len()).sum();
        self.take(1, n).await;
        Ok(tonic::Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        r: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let metrics = r.get_ref().resource_metrics.iter().flat_map(|rm| &rm.scope_metrics).flat_map(|sm| &sm.metrics);
        let n: usize = metrics.map(tern_pipe::data_points).sum();
        self.take(2, n).await;
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

/// One request of spans shaped like Envoy's (HCM attributes, ids, times).
fn envoy_request(spans: usize, seq: u64) -> ExportTraceServiceRequest {
    let spans = (0..spans)
        .map(|i| {
            let id = seq.wrapping_mul(1_000_003).wrapping_add(i as u64);
            Span {
                trace_id: [id.to_be_bytes(), (!id).to_be_bytes()].concat(),
                span_id: id.to_be_bytes().to_vec(),
                parent_span_id: (id ^ 0x5a5a).to_be_bytes().to_vec(),
                name: "ingress".into(),
                kind: span::SpanKind::Server as i32,
                start_time_unix_nano: 1_700_000_000_000_000_000 + id,
                end_time_unix_nano: 1_700_000_000_004_000_000 + id,
                attributes: vec![
                    kv("node_id", "default/web-1"),
                    kv("zone", ""),
                    kv("guid:x-request-id", "5b6e1e2c-8a55-4b0c-9f1e-3c2d1a0b9e7f"),
                    kv("http.url", "http://web.default.svc/orders/1234?debug=false"),
                    kv("http.method", "GET"),
                    kv("downstream_cluster", "-"),
                    kv("user_agent", "curl/8.5.0"),
                    kv("http.protocol", "HTTP/1.1"),
                    kv("peer.address", "127.0.0.1"),
                    kv("request_size", "0"),
                    kv("response_size", "6"),
                    kv("component", "proxy"),
                    kv("upstream_cluster", "localhost:8080"),
                    kv("upstream_cluster.name", "localhost:8080"),
                    kv("http.status_code", "200"),
                    kv("response_flags", "-"),
                ],
                status: Some(Status::default()),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn resource() -> Option<Resource> {
    Some(Resource { attributes: vec![kv("service.name", "web")], ..Default::default() })
}

/// One request of access log records shaped like Envoy's OTel access logger's.
fn envoy_logs(records: usize, seq: u64) -> ExportLogsServiceRequest {
    let log_records = (0..records)
        .map(|i| {
            let id = seq.wrapping_mul(1_000_003).wrapping_add(i as u64);
            LogRecord {
                time_unix_nano: 1_700_000_000_000_000_000 + id,
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(format!(
                        "[2026-11-22T05:00:00.{:03}Z] \"GET /orders/{id} HTTP/1.1\" 200 - 0 6 4 3 \"-\" \"curl/8.5.0\" \"5b6e1e2c-8a55-4b0c-9f1e-3c2d1a0b9e7f\" \"web.default.svc\" \"127.0.0.1:8080\"",
                        id % 1000
                    ))),
                }),
                attributes: vec![kv("log_name", "default/web-1"), kv("zone_name", ""), kv("node_name", "default/web-1")],
                trace_id: [id.to_be_bytes(), (!id).to_be_bytes()].concat(),
                span_id: id.to_be_bytes().to_vec(),
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs { log_records, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// One request of counter points shaped like Envoy's stats (one metric per
/// point, cluster and response-code labels).
fn envoy_metrics(points: usize, seq: u64) -> ExportMetricsServiceRequest {
    let metrics = (0..points)
        .map(|i| Metric {
            name: format!("envoy_cluster_upstream_rq_{}", i % 40),
            unit: "1".into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    attributes: vec![kv("envoy_cluster_name", "api"), kv("envoy_response_code", "200")],
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    time_unix_nano: 1_700_000_000_000_000_000 + seq,
                    value: Some(number_data_point::Value::AsDouble((seq + i as u64) as f64)),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// Sends one request of `items` items of `signal`.
async fn send(channel: &Channel, signal: LoadSignal, items: usize, seq: u64) -> Result<(), tonic::Status> {
    let channel = channel.clone();
    match signal {
        LoadSignal::Traces => TraceServiceClient::new(channel).export(envoy_request(items, seq)).await.map(drop),
        LoadSignal::Logs => LogsServiceClient::new(channel).export(envoy_logs(items, seq)).await.map(drop),
        LoadSignal::Metrics => MetricsServiceClient::new(channel).export(envoy_metrics(items, seq)).await.map(drop),
    }
}

async fn connect(target: &str) -> Channel {
    if let Some(path) = target.strip_prefix("unix:") {
        let path = path.to_string();
        Endpoint::try_from("http://[::]:50051")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await
            .expect("unix socket connects")
    } else {
        Endpoint::from_shared(format!("http://{target}")).expect("endpoint").connect().await.expect("connects")
    }
}

/// What the load generator sends.
#[derive(Clone, Copy)]
struct LoadShape {
    signal: LoadSignal,
    items: usize,
    connections: usize,
    seconds: u64,
    rate: Option<u64>,
    in_flight: u32,
}

async fn load(target: String, shape: LoadShape) {
    let LoadShape { signal, items, connections, seconds, rate, in_flight } = shape;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let per_conn_interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r.max(1) as f64));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let channel = connect(&target).await;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut record = |answer: Result<Duration, tonic::Status>| match answer {
                Ok(latency) => latencies.push(latency),
                Err(_) => errors += 1,
            };
            let slots = Arc::new(tokio::sync::Semaphore::new(in_flight as usize));
            let mut sends = tokio::task::JoinSet::new();
            let mut seq = c as u64 * 1_000_000_007;
            let mut next = Instant::now();
            loop {
                if let Some(i) = per_conn_interval {
                    if next >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                } else if Instant::now() >= deadline {
                    break;
                }
                seq += 1;
                let t = Instant::now();
                if in_flight == 1 {
                    record(send(&channel, signal, items, seq).await.map(|()| t.elapsed()));
                    continue;
                }
                let slot = slots.clone().acquire_owned().await.expect("never closed");
                let channel = channel.clone();
                sends.spawn(async move {
                    let answer = send(&channel, signal, items, seq).await.map(|()| t.elapsed());
                    drop(slot);
                    answer
                });
                while let Some(done) = sends.try_join_next() {
                    record(done.expect("send task"));
                }
            }
            while let Some(done) = sends.join_next().await {
                record(done.expect("send task"));
            }
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(seconds as f64 * 0.9);
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let ok = latencies.len() as u64;
    println!(
        "{}",
        serde_json::json!({
            "requests": ok, "errors": errors, "items": ok * items as u64, "seconds": elapsed,
            "items_per_sec": (ok * items as u64) as f64 / elapsed,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99)
        })
    );
}

/// Fixed-rate HTTP load: each connection sends on its own schedule; a
/// request that is late does not make the next one wait.
async fn copy(listen: String, to: String) {
    let _ = std::fs::remove_file(&listen);
    let listener = tokio::net::UnixListener::bind(&listen).expect("bind unix");
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { return };
        let to = to.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                // Without this, Nagle and delayed ACKs stall small gRPC frames ~40 ms.
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Cmd::SeedZone { store, zone, count } => {
            report(multizone::seed_zone(&store, &zone, count).await.map(|()| serde_json::json!({"seeded": count})))
        }
        Cmd::SyncInitial { global, zone, zone_name, resources, dataplanes } => {
            report(multizone::initial(&global, &zone, &zone_name, resources, dataplanes).await)
        }
        Cmd::SyncLatency { global, zone, edits } => report(multizone::latency(&global, &zone, edits).await),
        Cmd::Dataplanes(options) => report(dataplanes::run(options).await),
        Cmd::KubeApply { kubeconfig, count, concurrency, round } => {
            report(kube_apply::run(&kubeconfig, count, concurrency, &round).await)
        }
        Cmd::Sink { listen, rate } => {
            let pace = rate.map(|r| {
                Arc::new(Pace {
                    seconds_per_item: 1.0 / r as f64,
                    free_at: std::sync::Mutex::new(tokio::time::Instant::now()),
                })
            });
            let sink = Sink { counts: Arc::default(), pace };
            let counts = sink.counts.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let [spans, logs, points] = counts.as_ref().each_ref().map(|c| c.load(Ordering::Relaxed));
                    println!("{spans} {logs} {points}");
                }
            });
            let addr = listen.parse().expect("listen address host:port");
            let gzip = tonic::codec::CompressionEncoding::Gzip;
            tonic::transport::Server::builder()
                .add_service(
                    TraceServiceServer::new(sink.clone()).max_decoding_message_size(64 << 20).accept_compressed(gzip),
                )
                .add_service(
                    LogsServiceServer::new(sink.clone()).max_decoding_message_size(64 << 20).accept_compressed(gzip),
                )
                .add_service(
                    MetricsServiceServer::new(sink).max_decoding_message_size(64 << 20).accept_compressed(gzip),
                )
                .serve(addr)
                .await
                .expect("sink serves");
        }
        Cmd::Load { target, signal, items_per_request, connections, seconds, rate, in_flight } => {
            let shape = LoadShape { signal, items: items_per_request, connections, seconds, rate, in_flight };
            load(target, shape).await
        }
        Cmd::Http { url, rate, connections, seconds } => {
            let load = http_load::Load { url, rate, connections: connections as usize, seconds };
            match http_load::run(load).await {
                Ok(report) => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
                Err(e) => {
                    eprintln!("tern-bench http: {e}");
                    std::process::exit(1);
                }
            }
        }
        Cmd::Copy { listen_unix, to } => copy(listen_unix, to).await,
    }
}

/// Prints a JSON result, or the error and exits 1.
fn report(result: Result<serde_json::Value, String>) {
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("tern-bench: {e}");
            std::process::exit(1);
        }
    }
}
