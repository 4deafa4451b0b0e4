//! OTLP requests as bytes. The pipe forwards what it receives without
//! decoding it: nothing in a final exporter config changes the payload, and
//! OTLP/gRPC and OTLP/HTTP carry the same protobuf message. What the pipe
//! needs from the bytes is the item count (for delivery counts and batch
//! sizes), which [`count_items`] reads by walking the protobuf framing,
//! skipping over each span, log record or data point without looking inside.
//!
//! Batching is concatenation: an `Export*ServiceRequest` has one field, a
//! repeated message, and protobuf parses concatenated encodings of a message
//! as the merge of them, which for a repeated field is the appended list.

use bytes::Bytes;
use tern_otlp_config::Signal;

/// One OTLP export request as received, with its item count.
#[derive(Debug, Clone)]
pub struct Payload {
    pub signal: Signal,
    pub bytes: Bytes,
    pub items: u64,
}

impl Payload {
    /// Checks the framing of an encoded `Export*ServiceRequest` of `signal`
    /// and counts its items.
    pub fn parse(signal: Signal, bytes: Bytes) -> Result<Payload, WireError> {
        let items = count_items(signal, &bytes)?;
        Ok(Payload { signal, bytes, items })
    }
}

/// The encoded request is not a well-formed OTLP message of its signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed OTLP request: {}", self.0)
    }
}

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&b, rest)) = buf.split_first() else { return Err(WireError("truncated varint")) };
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(WireError("varint longer than 10 bytes"))
}

/// One field of a message: its number, its value when length-delimited,
/// and all of its bytes (key included).
struct Field<'a> {
    number: u64,
    value: Option<&'a [u8]>,
    raw: &'a [u8],
}

/// Calls `f` for every field of the message in `buf`; fails on broken
/// framing.
fn each_field<'a>(buf: &'a [u8], mut f: impl FnMut(Field<'a>) -> Result<(), WireError>) -> Result<(), WireError> {
    let mut rest = buf;
    while !rest.is_empty() {
        let start = rest;
        let key = varint(&mut rest)?;
        let number = key >> 3;
        if number == 0 {
            return Err(WireError("field number 0"));
        }
        let mut value = None;
        match key & 7 {
            VARINT => {
                varint(&mut rest)?;
            }
            FIXED64 if rest.len() >= 8 => rest = &rest[8..],
            FIXED32 if rest.len() >= 4 => rest = &rest[4..],
            LEN => {
                let len = usize::try_from(varint(&mut rest)?).map_err(|_| WireError("length out of range"))?;
                if len > rest.len() {
                    return Err(WireError("length past the end of the message"));
                }
                let (v, after) = rest.split_at(len);
                value = Some(v);
                rest = after;
            }
            FIXED64 | FIXED32 => return Err(WireError("truncated fixed-width field")),
            _ => return Err(WireError("unsupported wire type")),
        }
        f(Field { number, value, raw: &start[..start.len() - rest.len()] })?;
    }
    Ok(())
}

/// Calls `f(field, value)` for every length-delimited field of the message
/// in `buf`, skipping the others; fails on broken framing.
fn fields<'a>(buf: &'a [u8], mut f: impl FnMut(u64, &'a [u8]) -> Result<(), WireError>) -> Result<(), WireError> {
    each_field(buf, |field| match field.value {
        Some(value) => f(field.number, value),
        None => Ok(()),
    })
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes field `number` as a length-delimited field holding `parts` back
/// to back.
fn put_len_field(out: &mut Vec<u8>, number: u64, parts: &[&[u8]]) {
    put_varint(out, number << 3 | LEN);
    put_varint(out, parts.iter().map(|p| p.len() as u64).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// A resource attribute the pipe adds to the requests of one signal (one
/// known only on the data-plane host, such as `host.name`), encoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceAttribute {
    pub key: String,
    /// `Resource.attributes` entry: field 1 holding the encoded `KeyValue`.
    entry: Bytes,
}

impl ResourceAttribute {
    /// A string-valued attribute.
    pub fn string(key: &str, value: &str) -> ResourceAttribute {
        let mut any_value = Vec::new();
        put_len_field(&mut any_value, 1, &[value.as_bytes()]);
        let mut key_value = Vec::new();
        put_len_field(&mut key_value, 1, &[key.as_bytes()]);
        put_len_field(&mut key_value, 2, &[&any_value]);
        let mut entry = Vec::new();
        put_len_field(&mut entry, 1, &[&key_value]);
        ResourceAttribute { key: key.to_string(), entry: entry.into() }
    }

    /// Whether the encoded `Resource` already has an attribute with this key.
    fn is_in(&self, resource: &[u8]) -> Result<bool, WireError> {
        let mut found = false;
        fields(resource, |field, key_value| {
            if field == 1 {
                fields(key_value, |f, key| {
                    found |= f == 1 && key == self.key.as_bytes();
                    Ok(())
                })?;
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// `request` (an encoded `Export*ServiceRequest`) with this attribute
    /// added to every resource that lacks its key (a resource is created
    /// where there is none). Only the framing of the `Resource*` messages
    /// is rewritten: spans, records and points are copied as bytes, once.
    pub fn add_to(&self, request: &[u8]) -> Result<Bytes, WireError> {
        let mut out = Vec::with_capacity(request.len() + 8 * self.entry.len());
        each_field(request, |top| match top.value {
            Some(resource_x) if top.number == 1 => self.write_resource_x(resource_x, &mut out),
            _ => {
                out.extend_from_slice(top.raw);
                Ok(())
            }
        })?;
        Ok(out.into())
    }

    /// One `ResourceSpans` / `ResourceLogs` / `ResourceMetrics` as field 1
    /// of `out`, with the attribute.
    fn write_resource_x(&self, resource_x: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        // Its `resource` fields (protobuf merges repeated occurrences): the
        // last one, how many, and whether any has the key.
        let (mut last, mut count, mut has_key) = (None, 0usize, false);
        each_field(resource_x, |field| {
            if let (1, Some(value)) = (field.number, field.value) {
                (last, count) = (Some((value, field.raw)), count + 1);
                has_key |= self.is_in(value)?;
            }
            Ok(())
        })?;
        let entry = self.entry.len();
        // The rewritten field's size against the one received (whose key and
        // length may use more bytes than needed: they are written anew).
        let field_len = |value_len: usize| 1 + varint_len(value_len as u64) + value_len;
        let new_len = match last {
            _ if has_key => resource_x.len(),
            Some((r, raw)) => resource_x.len() - raw.len() + field_len(r.len() + entry),
            None => resource_x.len() + field_len(entry),
        };
        put_varint(out, 1 << 3 | LEN);
        put_varint(out, new_len as u64);
        match last {
            _ if has_key => out.extend_from_slice(resource_x),
            // The attribute goes into the last `resource` field.
            Some(_) => {
                let mut seen = 0;
                each_field(resource_x, |field| {
                    match (field.number, field.value) {
                        (1, Some(r)) => {
                            seen += 1;
                            if seen == count {
                                put_len_field(out, 1, &[r, &self.entry]);
                            } else {
                                out.extend_from_slice(field.raw);
                            }
                        }
                        _ => out.extend_from_slice(field.raw),
                    }
                    Ok(())
                })?;
            }
            None => {
                out.extend_from_slice(resource_x);
                put_len_field(out, 1, &[&self.entry]);
            }
        }
        Ok(())
    }
}

fn varint_len(value: u64) -> usize {
    (64 - value.max(1).leading_zeros() as usize).div_ceil(7)
}

/// How many times field `n` occurs in the message.
fn occurrences(buf: &[u8], n: u64) -> Result<u64, WireError> {
    let mut count = 0;
    fields(buf, |field, _| {
        count += u64::from(field == n);
        Ok(())
    })?;
    Ok(count)
}

/// Sums `inner` over every occurrence of field `n`.
fn sum_over(buf: &[u8], n: u64, inner: impl Fn(&[u8]) -> Result<u64, WireError>) -> Result<u64, WireError> {
    let mut total = 0;
    fields(buf, |field, value| {
        if field == n {
            total += inner(value)?;
        }
        Ok(())
    })?;
    Ok(total)
}

/// Data points of one `Metric`: its data (gauge 5, sum 7, histogram 9,
/// exponential histogram 10, summary 11) holds them in field 1.
fn metric_points(metric: &[u8]) -> Result<u64, WireError> {
    let mut total = 0;
    fields(metric, |field, value| {
        if matches!(field, 5 | 7 | 9 | 10 | 11) {
            total += occurrences(value, 1)?;
        }
        Ok(())
    })?;
    Ok(total)
}

/// Spans, log records or metric data points in an encoded
/// `Export{Trace,Logs,Metrics}ServiceRequest`. All three nest the same way:
/// request.1 (resource_*) -> .2 (scope_*) -> .2 (spans, log records, metrics).
pub fn count_items(signal: Signal, request: &[u8]) -> Result<u64, WireError> {
    sum_over(request, 1, |resource| {
        sum_over(resource, 2, |scope| match signal {
            Signal::Traces | Signal::Logs => occurrences(scope, 2),
            Signal::Metrics => sum_over(scope, 2, metric_points),
        })
    })
}

/// The gRPC method path of a signal's OTLP export.
pub fn grpc_path(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::OtlpRequest;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn attr(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        }
    }

    fn resource() -> Option<Resource> {
        Some(Resource { attributes: vec![attr("service.name", "web")], ..Default::default() })
    }

    /// Requests of every signal with uneven shapes: several resources and
    /// scopes, empty ones, every metric kind.
    fn samples(seed: usize) -> Vec<OtlpRequest> {
        let span = |i: usize| Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: format!("span-{i}"),
            attributes: vec![attr("http.method", "GET"), attr("upstream_cluster", "backend")],
            start_time_unix_nano: 17 + i as u64,
            ..Default::default()
        };
        let traces = ExportTraceServiceRequest {
            resource_spans: (0..seed % 3 + 1)
                .map(|r| ResourceSpans {
                    resource: resource(),
                    scope_spans: (0..r + 1)
                        .map(|s| ScopeSpans { spans: (0..(seed + s) % 4).map(span).collect(), ..Default::default() })
                        .collect(),
                    schema_url: "https://opentelemetry.io/schemas/1.9.0".into(),
                })
                .collect(),
        };
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource(),
                scope_logs: vec![ScopeLogs {
                    log_records: (0..seed % 5)
                        .map(|i| LogRecord {
                            time_unix_nano: i as u64,
                            severity_number: 9,
                            body: Some(AnyValue { value: Some(any_value::Value::StringValue("GET /".into())) }),
                            attributes: vec![attr("k", "v")],
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let point = |v: f64| NumberDataPoint {
            value: Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        let n = seed % 3 + 1;
        let metrics = [
            metric::Data::Gauge(Gauge { data_points: (0..n).map(|i| point(i as f64)).collect() }),
            metric::Data::Sum(Sum { data_points: vec![point(1.0)], aggregation_temporality: 2, is_monotonic: true }),
            metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint { count: 3, bucket_counts: vec![1, 2], ..Default::default() }; n],
                aggregation_temporality: 2,
            }),
            metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint::default(); 2],
                aggregation_temporality: 1,
            }),
            metric::Data::Summary(Summary { data_points: vec![SummaryDataPoint::default(); n] }),
        ];
        let metrics = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: resource(),
                scope_metrics: vec![ScopeMetrics {
                    metrics: metrics
                        .into_iter()
                        .map(|d| Metric {
                            name: "envoy_x".into(),
                            unit: "1".into(),
                            data: Some(d),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        vec![OtlpRequest::Traces(traces), OtlpRequest::Logs(logs), OtlpRequest::Metrics(metrics)]
    }

    #[test]
    fn counts_match_the_decoded_counts() {
        for seed in 0..12 {
            for request in samples(seed) {
                let counted = count_items(request.signal(), &request.encode()).unwrap();
                assert_eq!(counted, request.items(), "{:?} seed {seed}", request.signal());
            }
        }
    }

    #[test]
    fn concatenation_is_the_batch() {
        for request in samples(2) {
            let signal = request.signal();
            let (a, b) = (request.encode(), samples(5).into_iter().find(|r| r.signal() == signal).unwrap());
            let mut joined = a.clone();
            joined.extend(b.encode());
            assert_eq!(count_items(signal, &joined).unwrap(), request.items() + b.items());
            let decoded = OtlpRequest::decode(signal, &joined).unwrap();
            let mut expected = request.clone();
            expected.absorb(b).unwrap();
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn a_resource_attribute_is_added_where_it_is_missing_and_nothing_else_changes() {
        let host = ResourceAttribute::string("host.name", "node-7");
        for seed in 0..12 {
            for request in samples(seed) {
                let signal = request.signal();
                let added = OtlpRequest::decode(signal, &host.add_to(&request.encode()).unwrap()).unwrap();
                let mut expected = request.clone();
                expected.each_resource(|r| r.get_or_insert_default().attributes.push(attr("host.name", "node-7")));
                assert_eq!(added, expected, "{signal:?} seed {seed}");
            }
        }
        // A resource that has the key keeps its own value; a missing resource is created.
        let mut request = samples(3).remove(1);
        request.each_resource(|r| {
            *r = Some(Resource { attributes: vec![attr("host.name", "mine")], ..Default::default() })
        });
        let logs = ExportLogsServiceRequest { resource_logs: vec![ResourceLogs::default()] };
        let mut joined = request.encode();
        joined.extend(OtlpRequest::Logs(logs).encode());
        let added = OtlpRequest::decode(Signal::Logs, &host.add_to(&joined).unwrap()).unwrap();
        let OtlpRequest::Logs(added) = added else { unreachable!() };
        let hosts: Vec<Vec<KeyValue>> =
            added.resource_logs.iter().map(|r| r.resource.clone().unwrap().attributes).collect();
        assert_eq!(hosts, [vec![attr("host.name", "mine")], vec![attr("host.name", "node-7")]]);
        assert!(host.add_to(&[0x0a, 0x05, 0x01]).is_err(), "broken framing is refused");
        // Found by fuzzing: a resource whose length uses more bytes than
        // needed (0 as `80 00`), and a key that does too.
        for odd in [&[0x0a, 0x03, 0x0a, 0x80, 0x00][..], &[0x0a, 0x04, 0x8a, 0x00, 0x80, 0x00]] {
            let added = host.add_to(odd).unwrap();
            assert_eq!(count_items(Signal::Logs, &added), Ok(0), "{added:?}");
            let OtlpRequest::Logs(decoded) = OtlpRequest::decode(Signal::Logs, &added).unwrap() else { unreachable!() };
            assert_eq!(decoded.resource_logs[0].resource.clone().unwrap().attributes, [attr("host.name", "node-7")]);
        }

        // Two `resource` fields in one ResourceLogs (merged by parsers): the
        // attribute is added once, and the framing stays whole.
        use prost::Message;
        let one = ResourceLogs { resource: resource(), ..Default::default() }.encode_to_vec();
        let mut twice = one.clone();
        twice.extend(ResourceLogs { resource: resource(), ..Default::default() }.encode_to_vec());
        let mut request = Vec::new();
        put_len_field(&mut request, 1, &[&twice]);
        let added = OtlpRequest::decode(Signal::Logs, &host.add_to(&request).unwrap()).unwrap();
        let OtlpRequest::Logs(added) = added else { unreachable!() };
        let attributes = added.resource_logs[0].resource.clone().unwrap().attributes;
        assert_eq!(attributes, [attr("service.name", "web"), attr("service.name", "web"), attr("host.name", "node-7")]);
    }

    /// The `wire` fuzz target's seed corpus (`fuzz/corpus/wire`) holds these
    /// samples, so fuzzing starts from what the pipe really receives. After a
    /// change to the samples, rewrite it with
    /// `TERN_WIRE_CORPUS_WRITE=1 cargo test -p tern-pipe --lib fuzz_corpus`.
    #[test]
    fn fuzz_corpus_holds_the_samples() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wire");
        let write = std::env::var_os("TERN_WIRE_CORPUS_WRITE").is_some();
        for seed in [1, 2, 4] {
            for request in samples(seed) {
                let path = dir.join(format!("{}-{seed}.pb", request.signal()));
                if write {
                    std::fs::write(&path, request.encode()).expect("corpus file written");
                }
                let stored = std::fs::read(&path).expect("corpus file present");
                assert_eq!(stored, request.encode(), "{} is stale: rewrite the corpus", path.display());
            }
        }
    }

    #[test]
    fn broken_framing_is_an_error() {
        let good = samples(3).remove(0).encode();
        assert!(count_items(Signal::Traces, &good[..good.len() - 1]).is_err(), "truncated");
        assert_eq!(
            count_items(Signal::Traces, &[0x0a, 0x05, 0x01]),
            Err(WireError("length past the end of the message"))
        );
        assert_eq!(count_items(Signal::Traces, &[0x0b]), Err(WireError("unsupported wire type")));
        assert_eq!(count_items(Signal::Traces, &[0x00]), Err(WireError("field number 0")));
        assert_eq!(count_items(Signal::Traces, &[]), Ok(0));
        // Unknown fields are skipped, not counted.
        assert_eq!(count_items(Signal::Traces, &[0x78, 0x01, 0x11, 1, 2, 3, 4, 5, 6, 7, 8]), Ok(0));
    }
}
