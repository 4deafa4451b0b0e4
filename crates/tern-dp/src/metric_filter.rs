//! MeshMetric's `sidecar.profiles` on Envoy's statistics, as Kuma's agent
//! applies them: a family (by its name) is kept if a profile selects it,
//! then `exclude` drops it, then `include` brings it back (include wins).
//! With the Basic profile, samples about Tern's own clusters (the control
//! plane, the pipes: `envoy_cluster_name="tern_..."`) are dropped too.
//! Works on Prometheus' text format, so the Prometheus endpoints and the
//! OpenTelemetry path filter the same text the same way.

use regex::Regex;
use tern_otlp_config::{MetricSelector, SidecarMetrics};

/// Kuma's Basic profile: the golden signals, what its dashboards use, DNS.
const BASIC: &[(&str, &str)] = &[
    ("Contains", "rq_time"),
    ("Contains", "cx_length_ms"),
    ("Contains", "cx_count"),
    ("Contains", "_rq"),
    ("Contains", "bytes"),
    ("Contains", "timeout"),
    ("Contains", "health_check"),
    ("Contains", "lb_healthy_panic"),
    ("Contains", "cx_destroy"),
    ("Exact", "envoy_cluster_membership_degraded"),
    ("Exact", "envoy_cluster_membership_healthy"),
    ("Contains", "error"),
    ("Contains", "fail"),
    ("Contains", "reset"),
    ("Contains", "eject"),
    ("Contains", "overflow"),
    ("Contains", "cancelled"),
    ("Contains", "max_duration_reached"),
    ("Contains", "no_cluster"),
    ("Contains", "no_route"),
    ("Contains", "no_filter_chain"),
    ("Contains", "reject"),
    ("Contains", "denied"),
    ("Contains", "days_until_first_cert_expiring"),
    ("Prefix", "envoy_server"),
    ("Prefix", "envoy_control_plane"),
    ("Contains", "rbac"),
    ("Contains", "cx_active"),
    ("Contains", "cx_connect"),
    ("Exact", "envoy_cluster_ssl_handshake"),
    ("Exact", "envoy_cluster_membership_total"),
    ("Contains", "circuit_breakers"),
    ("Contains", "cx_total"),
    ("Contains", "ssl_handshake"),
    ("Contains", "ssl_context_update_by_sds"),
    ("Prefix", "envoy_dns_filter"),
    ("Prefix", "envoy_dns_cares"),
];

/// Clusters of Tern's own, left out by the Basic profile.
const INTERNAL_CLUSTER: &str = "envoy_cluster_name=\"tern_";

enum Selector {
    Prefix(String),
    Contains(String),
    Exact(String),
    Regex(Regex),
    /// A selector that never matches (an unknown type or a bad regex,
    /// both refused at apply; kept safe anyway).
    Never,
}

impl Selector {
    fn new(kind: &str, value: &str) -> Selector {
        match kind {
            "Prefix" => Selector::Prefix(value.into()),
            "Contains" => Selector::Contains(value.into()),
            "Exact" => Selector::Exact(value.into()),
            "Regex" => Regex::new(value).map(Selector::Regex).unwrap_or(Selector::Never),
            _ => Selector::Never,
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Selector::Prefix(p) => name.starts_with(p.as_str()),
            Selector::Contains(c) => name.contains(c.as_str()),
            Selector::Exact(e) => name == e,
            Selector::Regex(r) => r.is_match(name),
            Selector::Never => false,
        }
    }
}

/// A compiled `SidecarMetrics`.
pub struct MetricFilter {
    all: bool,
    basic: bool,
    profile: Vec<Selector>,
    include: Vec<Selector>,
    exclude: Vec<Selector>,
}

fn compile(list: &[MetricSelector]) -> Vec<Selector> {
    list.iter().map(|s| Selector::new(&s.kind, &s.value)).collect()
}

impl MetricFilter {
    pub fn new(conf: &SidecarMetrics) -> MetricFilter {
        let all = conf.profiles.iter().any(|p| p == "All");
        // The broadest profile decides (All contains Basic contains None).
        let basic = !all && conf.profiles.iter().any(|p| p == "Basic");
        let profile = if basic { BASIC.iter().map(|(k, v)| Selector::new(k, v)).collect() } else { Vec::new() };
        MetricFilter { all, basic, profile, include: compile(&conf.include), exclude: compile(&conf.exclude) }
    }

    /// Every family, under the cardinality cap only (an application's own metrics).
    pub fn all() -> MetricFilter {
        MetricFilter { all: true, basic: false, profile: Vec::new(), include: Vec::new(), exclude: Vec::new() }
    }

    /// Whether the family `name` leaves the data plane.
    pub fn keeps(&self, name: &str) -> bool {
        if self.include.iter().any(|s| s.matches(name)) {
            return true;
        }
        if self.exclude.iter().any(|s| s.matches(name)) {
            return false;
        }
        self.all || self.profile.iter().any(|s| s.matches(name))
    }

    /// A sample about one of Tern's own clusters, which Basic leaves out.
    fn is_internal(&self, line: &str) -> bool {
        self.basic && line.contains(INTERNAL_CLUSTER)
    }

    /// The families of `text` (Prometheus' text format) this filter keeps,
    /// at most [`MAX_SERIES_PER_METRIC`] label sets each (the same cap as
    /// the OpenTelemetry path), and how many label sets were left out.
    pub fn apply(&self, text: &str) -> Filtered {
        let mut out = Filtered { text: String::with_capacity(text.len()), dropped_series: 0 };
        let mut family = Family::default();
        for line in text.lines() {
            let name = family_of(line);
            if name != family.name {
                family.flush(self, &mut out.text);
                family = Family { name: name.to_string(), ..Family::default() };
            }
            if line.starts_with('#') {
                family.header.push(line);
            } else if !line.is_empty() && !self.is_internal(line) {
                if family.admit(line) {
                    family.samples.push(line);
                } else {
                    out.dropped_series += 1;
                }
            }
        }
        family.flush(self, &mut out.text);
        out
    }
}

pub use tern_pipe::envoy_metrics::MAX_SERIES_PER_METRIC;

/// Says once per path (`warned`) that label sets over the cap were left out.
pub fn report_cap(warned: &std::sync::atomic::AtomicBool, dropped_series: usize, path: &'static str) {
    if dropped_series > 0 && !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            dropped_series,
            cap = MAX_SERIES_PER_METRIC,
            path,
            "metrics with more label sets than the per-metric cap were cut to the cap (said once)"
        );
    }
}

/// What [`MetricFilter::apply`] kept.
pub struct Filtered {
    pub text: String,
    /// Samples left out because their family already had the most label sets.
    pub dropped_series: usize,
}

/// The lines of one metric family while they are read.
#[derive(Default)]
struct Family<'a> {
    name: String,
    header: Vec<&'a str>,
    samples: Vec<&'a str>,
    /// The label sets seen (a histogram's `le` aside).
    series: std::collections::HashSet<String>,
}

impl<'a> Family<'a> {
    /// Whether a sample's label set fits under the cap.
    fn admit(&mut self, line: &'a str) -> bool {
        let labels = line.split_once('{').and_then(|(_, rest)| rest.rsplit_once('}')).map(|(l, _)| l).unwrap_or("");
        let series: String = labels.split(',').filter(|p| !p.starts_with("le=")).collect::<Vec<_>>().join(",");
        if self.series.contains(&series) {
            return true;
        }
        if self.series.len() >= MAX_SERIES_PER_METRIC {
            return false;
        }
        self.series.insert(series);
        true
    }

    fn flush(&self, filter: &MetricFilter, out: &mut String) {
        if self.samples.is_empty() || !filter.keeps(&self.name) {
            return;
        }
        for line in self.header.iter().chain(&self.samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// The family a line belongs to: the name in `# TYPE`/`# HELP`, or the
/// sample's name without a histogram's or summary's suffix.
fn family_of(line: &str) -> &str {
    if let Some(rest) = line.strip_prefix("# TYPE ").or_else(|| line.strip_prefix("# HELP ")) {
        return rest.split(' ').next().unwrap_or("");
    }
    let name = line.split(['{', ' ']).next().unwrap_or("");
    ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE envoy_cluster_upstream_rq_total counter\n\
        envoy_cluster_upstream_rq_total{envoy_cluster_name=\"api\"} 4\n\
        envoy_cluster_upstream_rq_total{envoy_cluster_name=\"tern_control_plane\"} 9\n\
        # TYPE envoy_cluster_upstream_rq_time histogram\n\
        envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"api\",le=\"1\"} 1\n\
        envoy_cluster_upstream_rq_time_sum{envoy_cluster_name=\"api\"} 1\n\
        envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"api\"} 1\n\
        # TYPE envoy_runtime_load_success counter\n\
        envoy_runtime_load_success{} 1\n\
        # TYPE envoy_cluster_manager_warming_clusters gauge\n\
        envoy_cluster_manager_warming_clusters{envoy_cluster_name=\"tern_otel_main\"} 0\n";

    fn conf(profiles: &[&str], include: &[(&str, &str)], exclude: &[(&str, &str)]) -> SidecarMetrics {
        let sel = |l: &[(&str, &str)]| {
            l.iter().map(|(k, v)| MetricSelector { kind: k.to_string(), value: v.to_string() }).collect()
        };
        SidecarMetrics {
            profiles: profiles.iter().map(|p| p.to_string()).collect(),
            include: sel(include),
            exclude: sel(exclude),
            include_unused: false,
        }
    }

    fn families(text: &str) -> Vec<&str> {
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap()).collect()
    }

    #[test]
    fn basic_keeps_the_golden_signals_without_terns_own_clusters() {
        let out = MetricFilter::new(&SidecarMetrics::default()).apply(TEXT).text;
        assert_eq!(families(&out), ["envoy_cluster_upstream_rq_total", "envoy_cluster_upstream_rq_time"]);
        assert!(!out.contains("tern_control_plane") && out.contains("le=\"1\""), "{out}");
    }

    #[test]
    fn all_keeps_everything_and_none_with_include_keeps_exactly_that() {
        let all = MetricFilter::new(&conf(&["All"], &[], &[])).apply(TEXT).text;
        assert_eq!(families(&all).len(), 4);
        assert!(all.contains("tern_control_plane"), "only Basic drops Tern's own clusters");
        let none =
            MetricFilter::new(&conf(&["None"], &[("Exact", "envoy_runtime_load_success")], &[])).apply(TEXT).text;
        assert_eq!(families(&none), ["envoy_runtime_load_success"]);
        let regex = MetricFilter::new(&conf(&["None"], &[("Regex", "rq_t(ime|otal)$")], &[])).apply(TEXT).text;
        assert_eq!(families(&regex), ["envoy_cluster_upstream_rq_total", "envoy_cluster_upstream_rq_time"]);
    }

    #[test]
    fn include_wins_over_exclude() {
        let f = MetricFilter::new(&conf(&["All"], &[("Contains", "rq_time")], &[("Prefix", "envoy_cluster")]));
        assert_eq!(families(&f.apply(TEXT).text), ["envoy_cluster_upstream_rq_time", "envoy_runtime_load_success"]);
    }

    #[test]
    fn label_sets_per_family_are_capped_and_counted() {
        let mut text = String::from("# TYPE envoy_cluster_upstream_rq_total counter\n");
        for i in 0..10_000 {
            text.push_str(&format!("envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"c{i}\"}} 1\n"));
        }
        text.push_str("# TYPE envoy_cluster_upstream_rq_time histogram\n");
        for le in ["1", "+Inf"] {
            text.push_str(&format!(
                "envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name=\"a\",le=\"{le}\"}} 1\n"
            ));
        }
        let out = MetricFilter::new(&SidecarMetrics::default()).apply(&text);
        let kept = out.text.lines().filter(|l| l.starts_with("envoy_cluster_upstream_rq_total{")).count();
        assert_eq!((kept, out.dropped_series), (MAX_SERIES_PER_METRIC, 10_000 - MAX_SERIES_PER_METRIC));
        assert_eq!(out.text.lines().filter(|l| l.contains("_bucket")).count(), 2, "buckets are one series");
    }
}
