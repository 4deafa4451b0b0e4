//! Envoy's statistics as OTLP metrics: the admin endpoint's Prometheus text
//! (`/stats/prometheus`) turned into an OTLP export request: counters as
//! cumulative monotonic sums, gauges as gauges, histograms with their
//! buckets; Envoy's labels as attributes. Cardinality is capped: at most
//! [`MAX_SERIES_PER_METRIC`] label sets per metric; the rest is counted and
//! left out (seed 002 cites unbounded cardinality as a known Kuma problem).

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use std::collections::BTreeMap;

/// Label sets kept per metric; more are dropped and counted.
pub const MAX_SERIES_PER_METRIC: usize = 500;

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
        ..Default::default()
    }
}

/// Label pairs of one sample, in order.
type Labels = Vec<(String, String)>;

/// Parses `name{k="v",...} value` (labels optional).
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let mut out = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(match next {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        out.push((key.trim_start_matches(',').to_string(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some((name, out, value))
}

/// One histogram series while its lines are read.
#[derive(Default)]
struct HistogramSeries {
    /// (upper bound, cumulative count), `+Inf` as infinity.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// The result of one conversion.
pub struct Converted {
    pub request: ExportMetricsServiceRequest,
    /// Label sets left out by the cardinality cap.
    pub dropped_series: usize,
}

/// Converts Envoy's Prometheus text to one OTLP request; `resource` holds
/// the resource attributes (`service.name`, mesh, dataplane, zone).
pub fn to_otlp(text: &str, resource: &[(&str, &str)], now_unix_nanos: u64) -> Converted {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    let mut points: BTreeMap<&str, Vec<NumberDataPoint>> = BTreeMap::new();
    let mut histograms: BTreeMap<&str, BTreeMap<Labels, HistogramSeries>> = BTreeMap::new();
    let mut dropped_series = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind.trim());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((name, mut labels, value)) = parse_sample(line) else { continue };
        match types.get(name) {
            Some(&"counter") | Some(&"gauge") => {
                let series = points.entry(name).or_default();
                if series.len() >= MAX_SERIES_PER_METRIC {
                    dropped_series += 1;
                    continue;
                }
                series.push(NumberDataPoint {
                    attributes: labels.iter().map(|(k, v)| string_kv(k, v)).collect(),
                    time_unix_nano: now_unix_nanos,
                    value: Some(number_data_point::Value::AsDouble(value)),
                    ..Default::default()
                });
            }
            _ => {
                // Histogram lines: <base>_bucket{...,le="x"}, <base>_sum, <base>_count.
                let (base, part) =
                    match (name.strip_suffix("_bucket"), name.strip_suffix("_sum"), name.strip_suffix("_count")) {
                        (Some(b), _, _) => (b, "bucket"),
                        (_, Some(b), _) => (b, "sum"),
                        (_, _, Some(b)) => (b, "count"),
                        _ => continue,
                    };
                if types.get(base) != Some(&"histogram") {
                    continue;
                }
                let le = labels.iter().position(|(k, _)| k == "le").map(|i| labels.remove(i).1);
                let all = histograms.entry(base).or_default();
                if !all.contains_key(&labels) && all.len() >= MAX_SERIES_PER_METRIC {
                    dropped_series += 1;
                    continue;
                }
                let h = all.entry(labels).or_default();
                match (part, le) {
                    ("bucket", Some(le)) => {
                        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
                        h.buckets.push((bound, value));
                    }
                    ("sum", _) => h.sum = value,
                    ("count", _) => h.count = value,
                    _ => {}
                }
            }
        }
    }
    let mut metrics: Vec<Metric> = points
        .into_iter()
        .map(|(name, data_points)| {
            let data = if types.get(name) == Some(&"counter") {
                metric::Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })
            } else {
                metric::Data::Gauge(Gauge { data_points })
            };
            Metric { name: name.to_string(), data: Some(data), ..Default::default() }
        })
        .collect();
    for (name, series) in histograms {
        let data_points = series
            .into_iter()
            .map(|(labels, mut h)| {
                h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                let explicit_bounds: Vec<f64> = h.buckets.iter().map(|b| b.0).filter(|b| b.is_finite()).collect();
                // Prometheus buckets are cumulative; OTLP's are per bucket.
                let mut previous = 0.0;
                let mut bucket_counts: Vec<u64> = h
                    .buckets
                    .iter()
                    .map(|(_, c)| {
                        let n = (c - previous).max(0.0) as u64;
                        previous = *c;
                        n
                    })
                    .collect();
                bucket_counts.resize(explicit_bounds.len() + 1, 0);
                HistogramDataPoint {
                    attributes: labels.iter().map(|(k, v)| string_kv(k, v)).collect(),
                    time_unix_nano: now_unix_nanos,
                    count: h.count as u64,
                    sum: Some(h.sum),
                    bucket_counts,
                    explicit_bounds,
                    ..Default::default()
                }
            })
            .collect();
        metrics.push(Metric {
            name: name.to_string(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        });
    }
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource.iter().map(|(k, v)| string_kv(k, v)).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            ..Default::default()
        }],
    };
    Converted { request, dropped_series }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_become_otlp() {
        let text = "# TYPE envoy_cluster_upstream_rq_total counter\nenvoy_cluster_upstream_rq_total{envoy_cluster_name=\"api\"} 7\n# TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n# TYPE envoy_cluster_upstream_rq_time histogram\nenvoy_cluster_upstream_rq_time_bucket{le=\"0.5\"} 3\n";
        let req = to_otlp(text, &[("service.name", "web")], 42).request;
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 3);
        let rq = metrics.iter().find(|m| m.name == "envoy_cluster_upstream_rq_total").expect("counter");
        match &rq.data {
            Some(metric::Data::Sum(s)) => {
                assert!(s.is_monotonic);
                assert_eq!(s.data_points[0].value, Some(number_data_point::Value::AsDouble(7.0)));
                assert_eq!(s.data_points[0].attributes[0].key, "envoy_cluster_name");
            }
            other => panic!("expected a sum, got {other:?}"),
        }
        assert!(matches!(
            metrics.iter().find(|m| m.name == "envoy_server_live").and_then(|m| m.data.as_ref()),
            Some(metric::Data::Gauge(_))
        ));
    }

    #[test]
    fn histograms_keep_their_buckets() {
        let text = "# TYPE rq_time histogram\nrq_time_bucket{c=\"a\",le=\"1\"} 2\nrq_time_bucket{c=\"a\",le=\"5\"} 5\nrq_time_bucket{c=\"a\",le=\"+Inf\"} 6\nrq_time_sum{c=\"a\"} 12.5\nrq_time_count{c=\"a\"} 6\n";
        let req = to_otlp(text, &[], 1).request;
        let m = &req.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(metric::Data::Histogram(h)) = &m.data else { panic!("expected a histogram") };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, [1.0, 5.0]);
        assert_eq!(p.bucket_counts, [2, 3, 1]);
        assert_eq!((p.count, p.sum), (6, Some(12.5)));
        assert_eq!(p.attributes.len(), 1, "le is not an attribute");
    }

    #[test]
    fn cardinality_is_capped_and_counted() {
        let mut text = String::from("# TYPE c counter\n");
        for i in 0..(MAX_SERIES_PER_METRIC + 7) {
            text.push_str(&format!("c{{id=\"{i}\"}} 1\n"));
        }
        let out = to_otlp(&text, &[], 1);
        assert_eq!(out.dropped_series, 7);
    }

    #[test]
    fn label_values_may_hold_commas_and_quotes() {
        let (name, labels, value) = parse_sample(r#"m{a="x,y",b="say \"hi\""} 2.5"#).expect("parses");
        assert_eq!((name, value), ("m", 2.5));
        assert_eq!(labels, [("a".to_string(), "x,y".to_string()), ("b".to_string(), "say \"hi\"".to_string())]);
    }
}
