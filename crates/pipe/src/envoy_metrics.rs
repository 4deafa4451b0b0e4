//! Envoy's statistics as OTLP metrics: the admin endpoint's Prometheus text
//! (`/stats/prometheus`) turned into an OTLP export request, counters as
//! cumulative monotonic sums and gauges as gauges, labels as attributes.
//! Histograms are left out for now.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use std::collections::BTreeMap;

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

/// Converts Envoy's Prometheus text to one OTLP request for `service`.
pub fn to_otlp(text: &str, service: &str, now_unix_nanos: u64) -> ExportMetricsServiceRequest {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    let mut points: BTreeMap<&str, Vec<NumberDataPoint>> = BTreeMap::new();
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
        let Some((name, labels, value)) = parse_sample(line) else { continue };
        if !matches!(types.get(name), Some(&"counter") | Some(&"gauge")) {
            continue; // histogram buckets, sums and counts
        }
        points.entry(name).or_default().push(NumberDataPoint {
            attributes: labels.iter().map(|(k, v)| string_kv(k, v)).collect(),
            time_unix_nano: now_unix_nanos,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..Default::default()
        });
    }
    let metrics = points
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
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![string_kv("service.name", service)], ..Default::default() }),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_become_otlp() {
        let text = "# TYPE envoy_cluster_upstream_rq_total counter\nenvoy_cluster_upstream_rq_total{envoy_cluster_name=\"api\"} 7\n# TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n# TYPE envoy_cluster_upstream_rq_time histogram\nenvoy_cluster_upstream_rq_time_bucket{le=\"0.5\"} 3\n";
        let req = to_otlp(text, "web", 42);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 2);
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
    fn label_values_may_hold_commas_and_quotes() {
        let (name, labels, value) = parse_sample(r#"m{a="x,y",b="say \"hi\""} 2.5"#).expect("parses");
        assert_eq!((name, value), ("m", 2.5));
        assert_eq!(labels, [("a".to_string(), "x,y".to_string()), ("b".to_string(), "say \"hi\"".to_string())]);
    }
}
