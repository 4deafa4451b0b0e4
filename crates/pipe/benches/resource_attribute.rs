//! What adding `host.name` to access-log requests costs the pipe, per
//! request of 100 Envoy-shaped log records: the framing walk every request
//! already gets (`Payload::parse`), the same plus the attribute
//! (`ResourceAttribute::add_to`), and a plain copy of the bytes (the
//! reference a byte relay pays). `cargo bench -p tern-pipe --bench resource_attribute`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tern_otlp_config::Signal;
use tern_pipe::wire::{Payload, ResourceAttribute};

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// 100 records shaped like Envoy's OpenTelemetry access logger's.
fn envoy_logs() -> Bytes {
    let log_records = (0..100u64)
        .map(|id| LogRecord {
            time_unix_nano: 1_700_000_000_000_000_000 + id,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!(
                    "[2026-11-22T05:00:00.{id:03}Z] \"GET /orders/{id} HTTP/1.1\" 200 - 0 6 4 3 \"-\" \"curl/8.5.0\" \"5b6e1e2c-8a55-4b0c-9f1e-3c2d1a0b9e7f\" \"web.default.svc\" \"127.0.0.1:8080\""
                ))),
            }),
            attributes: vec![kv("log_name", "default/web-1"), kv("zone_name", ""), kv("node_name", "default/web-1")],
            trace_id: [id.to_be_bytes(), (!id).to_be_bytes()].concat(),
            span_id: id.to_be_bytes().to_vec(),
            ..Default::default()
        })
        .collect();
    let resource =
        Resource { attributes: vec![kv("service.name", "web"), kv("kuma.mesh", "default")], ..Default::default() };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs { log_records, ..Default::default() }],
            ..Default::default()
        }],
    };
    request.encode_to_vec().into()
}

fn bench(c: &mut Criterion) {
    let request = envoy_logs();
    let host = ResourceAttribute::string("host.name", "node-7.example.internal");
    let mut group = c.benchmark_group("logs request of 100 records");
    group.bench_function("parse (every request)", |b| {
        b.iter(|| Payload::parse(Signal::Logs, black_box(request.clone())).expect("valid"))
    });
    group.bench_function("parse + host.name", |b| {
        b.iter(|| {
            let payload = Payload::parse(Signal::Logs, black_box(request.clone())).expect("valid");
            host.add_to(&payload.bytes).expect("valid")
        })
    });
    group.bench_function("copy of the bytes", |b| b.iter(|| black_box(&request).to_vec()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
