//! What a listener adds for telemetry: the tracer of its HTTP connection
//! manager (OpenTelemetry through the pipe, Zipkin or Datadog over HTTP) and
//! its access loggers (OpenTelemetry, file, or `tern-dp`'s FIFO for `tcp`
//! backends), with the clusters they need.

use crate::snapshot::{duration_ms, pipe, socket, static_cluster};
use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog as EnvoyAccessLog};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, grpc_service, substitution_format_string, transport_socket, DataSource, GrpcService,
    SubstitutionFormatString, TransportSocket, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::trace::v3::{
    tracing, zipkin_config, DatadogConfig, OpenTelemetryConfig, ZipkinConfig,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{file_access_log, FileAccessLog};
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::r#type::tracing::v3::{custom_tag, CustomTag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{BoolValue, Struct, UInt32Value, Value as ProtoValue};
use envoy_types::pb::opentelemetry::proto::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue as OtelKeyValue, KeyValueList,
};
use envoy_types::util::pack_any;
use serde_json::Value;
use tern_model::spec::mesh_access_log::AccessLogFormat;
use tern_model::spec::mesh_trace::{Sampling, TraceTag};
use tern_model::spec::policy::Percentage;
use tern_model::spec::resource::DataplaneView;
use tern_resolve::{AccessLog, AccessLogSink, EnvoyTelemetry, Listener, LocalLog, Sink, Tracer};

/// How many bytes of access log records Envoy collects before sending them
/// (per worker thread), unless the one-second flush comes first.
pub const ACCESS_LOG_BUFFER_BYTES: u32 = 64 << 10;

/// Kuma's record format for HTTP listeners when a backend gives none.
pub const DEFAULT_HTTP_FORMAT: &str = "[%START_TIME%] %KUMA_MESH% \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%KUMA_SOURCE_SERVICE%\" \"%KUMA_DESTINATION_SERVICE%\" \"%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%\" \"%UPSTREAM_HOST%\"";

/// Kuma's record format for TCP listeners when a backend gives none.
pub const DEFAULT_NETWORK_FORMAT: &str = "[%START_TIME%] %RESPONSE_FLAGS% %KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%(%KUMA_SOURCE_SERVICE%)->%UPSTREAM_HOST%(%KUMA_DESTINATION_SERVICE%) took %DURATION%ms, sent %BYTES_SENT% bytes, received: %BYTES_RECEIVED% bytes";

/// The proxy a snapshot is for, as its telemetry sees it.
#[derive(Debug, Clone, Copy)]
pub struct Proxy<'a> {
    /// `kuma.io/zone` of the Dataplane, if any.
    pub zone: Option<&'a str>,
    pub address: &'a str,
    /// The first inbound's `kuma.io/service`.
    pub service: &'a str,
    pub telemetry: &'a EnvoyTelemetry,
    /// The data plane, for Kuma's placeholders and resource attributes.
    pub view: DataplaneView<'a>,
}

/// One listener: its direction, its peer service and whether it speaks HTTP.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSide<'a> {
    pub listener: Listener<'a>,
    /// The inbound's own service (inbound) or the called one (outbound).
    pub destination: &'a str,
    pub http: bool,
}

impl Proxy<'_> {
    /// Kuma's placeholders (`%KUMA_MESH%`, `%KUMA_SOURCE_SERVICE%`, ...)
    /// replaced for `side`, as Kuma does when it builds the configuration.
    fn interpolate(&self, text: &str, side: &ListenerSide<'_>) -> String {
        let (source, direction) = match side.listener {
            Listener::Inbound { .. } => ("unknown", "INBOUND"),
            Listener::Outbound { .. } => (self.service, "OUTBOUND"),
        };
        let address =
            if self.address.contains(':') { format!("[{}]:0", self.address) } else { format!("{}:0", self.address) };
        text.replace("%KUMA_SOURCE_ADDRESS%", &address)
            .replace("%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%", self.address)
            .replace("%KUMA_SOURCE_SERVICE%", source)
            .replace("%KUMA_DESTINATION_SERVICE%", side.destination)
            .replace("%KUMA_MESH%", self.view.mesh)
            .replace("%KUMA_TRAFFIC_DIRECTION%", direction)
            .replace("%KUMA_ZONE%", self.zone.unwrap_or_default())
    }

    fn default_format(side: &ListenerSide<'_>) -> &'static str {
        if side.http {
            DEFAULT_HTTP_FORMAT
        } else {
            DEFAULT_NETWORK_FORMAT
        }
    }

    /// The access loggers of one listener, adding the clusters they use.
    pub fn access_logs(&self, side: &ListenerSide<'_>, clusters: &mut Vec<Cluster>) -> Vec<EnvoyAccessLog> {
        let logger = |name: &str, config: envoy_types::pb::google::protobuf::Any| EnvoyAccessLog {
            name: name.into(),
            config_type: Some(access_log::ConfigType::TypedConfig(config)),
            ..Default::default()
        };
        let mut out = Vec::new();
        for log in self.telemetry.loggers(side.listener) {
            match log {
                AccessLog::OpenTelemetry(sink) => {
                    let (cluster_name, cluster) = sink_cluster("logs", &sink.sink);
                    push_cluster(clusters, cluster);
                    out.push(logger(
                        "envoy.access_loggers.open_telemetry",
                        pack_any(self.otel_log(sink, &cluster_name, side)),
                    ));
                }
                AccessLog::Local(LocalLog::File(file)) => {
                    let format = self.text_or_json(file.format.as_ref(), side);
                    let config = FileAccessLog {
                        path: file.path.clone(),
                        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(format)),
                    };
                    out.push(logger("envoy.access_loggers.file", pack_any(config)));
                }
                AccessLog::Local(LocalLog::Tcp(tcp)) => {
                    let Some(fifo) = &self.telemetry.tcp_log_fifo else { continue };
                    let config = FileAccessLog {
                        path: fifo.clone(),
                        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(self.fifo_record(
                            &tcp.address,
                            tcp.format.as_ref(),
                            side,
                        ))),
                    };
                    out.push(logger("envoy.access_loggers.file", pack_any(config)));
                }
            }
        }
        out
    }

    fn otel_log(&self, log: &AccessLogSink, cluster: &str, side: &ListenerSide<'_>) -> OpenTelemetryAccessLogConfig {
        let attributes = (!log.attributes.is_empty()).then(|| KeyValueList {
            values: log
                .attributes
                .iter()
                .map(|kv| OtelKeyValue {
                    key: kv.key.clone(),
                    value: Some(string_any(self.interpolate(&kv.value, side))),
                    ..Default::default()
                })
                .collect(),
        });
        let default_body = Value::String(Self::default_format(side).into());
        let resource = self.resource(&log.resource);
        OpenTelemetryAccessLogConfig {
            resource_attributes: Some(KeyValueList {
                values: resource
                    .into_iter()
                    .map(|(key, value)| OtelKeyValue { key, value: Some(string_any(value)), ..Default::default() })
                    .collect(),
            }),
            log_name: "MeshAccessLog".into(),
            grpc_service: Some(grpc_to(cluster)),
            body: Some(self.otel_any_value(log.body.as_ref().unwrap_or(&default_body), side)),
            attributes,
            // Fewer, larger exports than Envoy's 16 KiB default; the flush
            // interval (Envoy's default, explicit here) bounds the wait.
            buffer_size_bytes: Some(UInt32Value { value: ACCESS_LOG_BUFFER_BYTES }),
            buffer_flush_interval: Some(duration_ms(1000)),
            ..Default::default()
        }
    }

    fn otel_any_value(&self, v: &Value, side: &ListenerSide<'_>) -> AnyValue {
        let value = match v {
            Value::String(s) => return string_any(self.interpolate(s, side)),
            Value::Bool(b) => any_value::Value::BoolValue(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => any_value::Value::IntValue(i),
                None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
            },
            Value::Object(map) => any_value::Value::KvlistValue(KeyValueList {
                values: map
                    .iter()
                    .map(|(k, v)| OtelKeyValue {
                        key: k.clone(),
                        value: Some(self.otel_any_value(v, side)),
                        ..Default::default()
                    })
                    .collect(),
            }),
            Value::Array(items) => any_value::Value::ArrayValue(ArrayValue {
                values: items.iter().map(|v| self.otel_any_value(v, side)).collect(),
            }),
            Value::Null => any_value::Value::StringValue(String::new()),
        };
        AnyValue { value: Some(value) }
    }

    /// A `file` backend's records: `Plain` (or Kuma's default) as one line
    /// each, `Json` as one JSON object per line.
    fn text_or_json(&self, format: Option<&AccessLogFormat>, side: &ListenerSide<'_>) -> SubstitutionFormatString {
        let omit_empty_values = format.and_then(|f| f.omit_empty_values).unwrap_or(false);
        let format = match self.json_fields(format, side) {
            Some(fields) => substitution_format_string::Format::JsonFormat(fields),
            None => substitution_format_string::Format::TextFormatSource(DataSource {
                specifier: Some(data_source::Specifier::InlineString(self.line(format, side))),
                ..Default::default()
            }),
        };
        SubstitutionFormatString { format: Some(format), omit_empty_values, ..Default::default() }
    }

    /// A `tcp` backend's records as `tern-dp` reads them from its FIFO: one
    /// JSON object per line, `{"address": ..., "message": <line or object>}`.
    fn fifo_record(
        &self,
        address: &str,
        format: Option<&AccessLogFormat>,
        side: &ListenerSide<'_>,
    ) -> SubstitutionFormatString {
        use envoy_types::pb::google::protobuf::value::Kind;
        let omit_empty_values = format.and_then(|f| f.omit_empty_values).unwrap_or(false);
        let message = match self.json_fields(format, side) {
            Some(fields) => ProtoValue { kind: Some(Kind::StructValue(fields)) },
            None => string_value(&self.line(format, side)),
        };
        let fields = [("address".to_string(), string_value(address)), ("message".to_string(), message)].into();
        SubstitutionFormatString {
            format: Some(substitution_format_string::Format::JsonFormat(Struct { fields })),
            omit_empty_values,
            ..Default::default()
        }
    }

    fn json_fields(&self, format: Option<&AccessLogFormat>, side: &ListenerSide<'_>) -> Option<Struct> {
        let format = format.filter(|f| f.type_ == "Json")?;
        let fields =
            format.json.iter().flatten().map(|kv| (kv.key.clone(), string_value(&self.interpolate(&kv.value, side))));
        Some(Struct { fields: fields.collect() })
    }

    /// A plain record line, newline-terminated (Kuma's default without a format).
    fn line(&self, format: Option<&AccessLogFormat>, side: &ListenerSide<'_>) -> String {
        let text = format.and_then(|f| f.plain.as_deref()).unwrap_or(Self::default_format(side));
        let line = self.interpolate(text, side);
        if line.ends_with('\n') {
            line
        } else {
            line + "\n"
        }
    }

    /// The HTTP connection manager's tracing for `side`, adding the cluster
    /// of its backend; none without a MeshTrace backend.
    pub fn tracing(
        &self,
        side: &ListenerSide<'_>,
        clusters: &mut Vec<Cluster>,
    ) -> Option<http_connection_manager::Tracing> {
        let t = self.telemetry;
        let (name, config) = match (&t.trace.tracer, &t.traces) {
            (Some(Tracer::Zipkin(z)), _) => {
                let target = HttpTarget::parse(&z.url)?;
                push_cluster(clusters, target.cluster("meshtrace:zipkin"));
                let version = match z.api_version.as_deref() {
                    Some("httpProto") => zipkin_config::CollectorEndpointVersion::HttpProto,
                    _ => zipkin_config::CollectorEndpointVersion::HttpJson,
                };
                let context = match t.trace.propagates("w3c_tracecontext") && t.trace.propagators.is_some() {
                    true => zipkin_config::TraceContextOption::UseB3WithW3cPropagation,
                    false => zipkin_config::TraceContextOption::UseB3,
                };
                let config = ZipkinConfig {
                    trace_context_option: context as i32,
                    collector_cluster: "meshtrace:zipkin".into(),
                    collector_endpoint: target.path.clone(),
                    trace_id_128bit: z.trace_id128bit.unwrap_or(false),
                    shared_span_context: Some(BoolValue { value: z.shared_span_context.unwrap_or(true) }),
                    collector_endpoint_version: version as i32,
                    collector_hostname: target.authority.clone(),
                    ..Default::default()
                };
                ("envoy.tracers.zipkin", pack_any(config))
            }
            (Some(Tracer::Datadog(d)), _) => {
                let target = HttpTarget::parse(&d.url)?;
                push_cluster(clusters, target.cluster("meshtrace:datadog"));
                let service_name = match (d.split_service.unwrap_or(false), side.listener) {
                    (false, _) => self.service.to_string(),
                    (true, Listener::Inbound { .. }) => format!("{}_INBOUND", self.service),
                    (true, Listener::Outbound { service }) => format!("{}_OUTBOUND_{service}", self.service),
                };
                let config =
                    DatadogConfig { collector_cluster: "meshtrace:datadog".into(), service_name, ..Default::default() };
                ("envoy.tracers.datadog", pack_any(config))
            }
            (None, Some(sink)) => {
                let (cluster_name, cluster) = sink_cluster("traces", sink);
                push_cluster(clusters, cluster);
                let config = OpenTelemetryConfig {
                    grpc_service: Some(grpc_to(&cluster_name)),
                    service_name: self.service.to_string(),
                    sampler: Some(parent_based(root_percent(t.trace.sampling.as_ref()))),
                    // The environment first: `tern-dp` gives Envoy this
                    // host's `host.name` there; the policy's attributes win.
                    resource_detectors: vec![environment_resource(), static_resource(self.resource(&t.trace_resource))],
                    ..Default::default()
                };
                ("envoy.tracers.opentelemetry", pack_any(config))
            }
            (None, None) => return None,
        };
        // The OpenTelemetry tracer samples parent-based itself (its
        // sampler); Envoy's own sampling would decide before it looks at
        // the parent, so it stays at 100% there.
        let s = match name {
            "envoy.tracers.opentelemetry" => Sampling::default(),
            _ => t.trace.sampling.clone().unwrap_or_default(),
        };
        Some(http_connection_manager::Tracing {
            provider: Some(envoy_types::pb::envoy::config::trace::v3::tracing::Http {
                name: name.into(),
                config_type: Some(tracing::http::ConfigType::TypedConfig(config)),
            }),
            overall_sampling: percent(s.overall.as_ref()),
            client_sampling: percent(s.client.as_ref()),
            random_sampling: percent(s.random.as_ref()),
            custom_tags: self.custom_tags(&t.trace.tags),
            spawn_upstream_span: Some(BoolValue { value: false }),
            ..Default::default()
        })
    }

    /// The resource attributes for a backend's templates: the semantic
    /// conventions this data plane provides, then the policy's.
    fn resource(&self, templates: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
        self.view.resource_attributes(templates)
    }

    /// Request headers a listener removes: W3C `baggage` when MeshTrace's
    /// `propagators` leave `w3c_baggage` out (Envoy passes it otherwise).
    pub fn headers_to_remove(&self) -> Vec<String> {
        let trace = &self.telemetry.trace;
        let traced = self.telemetry.traces.is_some() || trace.tracer.is_some();
        match traced && !trace.propagates("w3c_baggage") {
            true => vec!["baggage".into()],
            false => Vec::new(),
        }
    }

    /// The policy's tags, then Kuma's `kuma.mesh` and `kuma.zone` unless
    /// the policy defines them.
    fn custom_tags(&self, tags: &[TraceTag]) -> Vec<CustomTag> {
        let mut out = custom_tags(tags);
        for (tag, value) in [("kuma.mesh", Some(self.view.mesh)), ("kuma.zone", self.zone)] {
            let Some(value) = value.filter(|v| !v.is_empty()) else { continue };
            if !out.iter().any(|t| t.tag == tag) {
                let literal = custom_tag::Type::Literal(custom_tag::Literal { value: value.to_string() });
                out.push(CustomTag { tag: tag.into(), r#type: Some(literal) });
            }
        }
        out
    }
}

/// A tracer's HTTP collector: `host:port` as written, the address Envoy
/// connects to, the path, and whether it speaks TLS.
#[derive(Debug, Clone, PartialEq)]
struct HttpTarget {
    authority: String,
    host: String,
    port: u16,
    path: String,
    tls: bool,
}

impl HttpTarget {
    /// The URL's parts; without a port, the scheme's (Kuma leaves it 0).
    fn parse(raw: &str) -> Option<HttpTarget> {
        let url = url::Url::parse(raw).ok()?;
        let tls = url.scheme() == "https";
        let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str()?),
            None => url.host_str()?.to_string(),
        };
        Some(HttpTarget { authority, host, port, path: url.path().to_string(), tls })
    }

    /// The cluster Envoy reaches the collector through: by DNS unless the
    /// host is an IP address, TLS with the host as SNI for `https`.
    fn cluster(&self, name: &str) -> Cluster {
        let mut c = static_cluster(name, vec![socket(&self.host, self.port)], false);
        if self.host.parse::<std::net::IpAddr>().is_err() {
            c.cluster_discovery_type =
                Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32));
        }
        if self.tls {
            let sni = if self.host.parse::<std::net::IpAddr>().is_ok() { String::new() } else { self.host.clone() };
            let context = UpstreamTlsContext { sni, ..Default::default() };
            c.transport_socket = Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
            });
        }
        c
    }
}

fn push_cluster(clusters: &mut Vec<Cluster>, cluster: Cluster) {
    if !clusters.iter().any(|c| c.name == cluster.name) {
        clusters.push(cluster);
    }
}

fn grpc_to(cluster: &str) -> GrpcService {
    GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
            cluster_name: cluster.to_string(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn clean(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect()
}

/// The cluster a telemetry sink is reached through, and its definition.
fn sink_cluster(signal: &str, sink: &Sink) -> (String, Cluster) {
    match sink {
        Sink::Pipe { backend, socket } => {
            let name = format!("tern_otel_{}", clean(backend));
            (name.clone(), static_cluster(&name, vec![pipe(socket)], true))
        }
        Sink::Direct { endpoint } => {
            let (host, port) = endpoint.rsplit_once(':').unwrap_or((endpoint.as_str(), "4317"));
            let port: u16 = port.parse().unwrap_or(4317);
            let name = format!("tern_{signal}_direct_{}-{port}", clean(host));
            let ip = host.parse::<std::net::IpAddr>().is_ok();
            let mut c = static_cluster(&name, vec![socket(host, port)], true);
            if !ip {
                c.cluster_discovery_type =
                    Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32));
            }
            (name, c)
        }
    }
}

/// The share of requests without a parent that are traced: `overall` of
/// `random` (Envoy's order), both 100 when unset.
fn root_percent(sampling: Option<&Sampling>) -> f64 {
    let value = |p: Option<&Percentage>| p.and_then(Percentage::value).unwrap_or(100.0);
    let s = sampling.cloned().unwrap_or_default();
    value(s.overall.as_ref()) * value(s.random.as_ref()) / 100.0
}

/// Envoy's environment resource detector: `OTEL_RESOURCE_ATTRIBUTES` of
/// Envoy's process on every span.
fn environment_resource() -> TypedExtensionConfig {
    use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::EnvironmentResourceDetectorConfig;
    TypedExtensionConfig {
        name: "envoy.tracers.opentelemetry.resource_detectors.environment".into(),
        typed_config: Some(pack_any(EnvironmentResourceDetectorConfig {})),
    }
}

/// Envoy's static resource detector: these attributes on every span.
fn static_resource(attributes: Vec<(String, String)>) -> TypedExtensionConfig {
    use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::StaticConfigResourceDetectorConfig;
    TypedExtensionConfig {
        name: "envoy.tracers.opentelemetry.resource_detectors.static_config".into(),
        typed_config: Some(pack_any(StaticConfigResourceDetectorConfig {
            attributes: attributes.into_iter().collect(),
        })),
    }
}

/// OpenTelemetry's parent-based sampler: a caller's decision in its
/// `traceparent` is kept; without one, `percent` of traces by trace ID.
fn parent_based(percent: f64) -> TypedExtensionConfig {
    use envoy_types::pb::envoy::extensions::tracers::opentelemetry::samplers::v3::{
        ParentBasedSamplerConfig, TraceIdRatioBasedSamplerConfig,
    };
    use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
    let ratio = TraceIdRatioBasedSamplerConfig {
        sampling_percentage: Some(FractionalPercent {
            numerator: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
            denominator: DenominatorType::Million as i32,
        }),
    };
    let wrapped = TypedExtensionConfig {
        name: "envoy.tracers.opentelemetry.samplers.trace_id_ratio_based".into(),
        typed_config: Some(pack_any(ratio)),
    };
    TypedExtensionConfig {
        name: "envoy.tracers.opentelemetry.samplers.parent_based".into(),
        typed_config: Some(pack_any(ParentBasedSamplerConfig { wrapped_sampler: Some(wrapped) })),
    }
}

fn percent(p: Option<&Percentage>) -> Option<Percent> {
    Some(Percent { value: p?.value()? })
}

fn custom_tags(tags: &[TraceTag]) -> Vec<CustomTag> {
    tags.iter()
        .filter_map(|t| {
            let r#type = match (&t.literal, &t.header) {
                (Some(v), _) => custom_tag::Type::Literal(custom_tag::Literal { value: v.clone() }),
                (None, Some(h)) => custom_tag::Type::RequestHeader(custom_tag::Header {
                    name: h.name.clone(),
                    default_value: h.default.clone().unwrap_or_default(),
                }),
                (None, None) => return None,
            };
            Some(CustomTag { tag: t.name.clone(), r#type: Some(r#type) })
        })
        .collect()
}

fn string_any(s: String) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(s)) }
}

fn string_value(s: &str) -> ProtoValue {
    use envoy_types::pb::google::protobuf::value::Kind;
    ProtoValue { kind: Some(Kind::StringValue(s.to_string())) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_model::spec::mesh_trace::HeaderTag;

    #[test]
    fn trace_settings_map_to_envoy_typed() {
        let tags = vec![
            TraceTag { name: "team".into(), literal: Some("payments".into()), header: None },
            TraceTag {
                name: "user".into(),
                literal: None,
                header: Some(HeaderTag { name: "x-user".into(), default: Some("anon".into()) }),
            },
        ];
        let mapped = custom_tags(&tags);
        assert_eq!(mapped.len(), 2);
        assert_eq!(
            mapped[1].r#type,
            Some(custom_tag::Type::RequestHeader(custom_tag::Header {
                name: "x-user".into(),
                default_value: "anon".into()
            }))
        );
        let p: Percentage = serde_json::from_value(serde_json::json!("12.5")).expect("percentage");
        assert_eq!(percent(Some(&p)).map(|p| p.value), Some(12.5));
        assert_eq!(percent(None), None);
    }

    #[test]
    fn collector_urls() {
        let t = HttpTarget::parse("http://jaeger.observability:9411/api/v2/spans?x=1").expect("url");
        assert_eq!(
            (t.authority.as_str(), t.host.as_str(), t.port, t.path.as_str(), t.tls),
            ("jaeger.observability:9411", "jaeger.observability", 9411, "/api/v2/spans", false)
        );
        let t = HttpTarget::parse("https://zipkin.example/api/v2/spans").expect("url");
        assert_eq!((t.port, t.tls, t.authority.as_str()), (443, true, "zipkin.example"));
        let t = HttpTarget::parse("http://[::1]:8126").expect("url");
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 8126, "/"));
        assert!(HttpTarget::parse("not a url").is_none());
    }

    #[test]
    fn kuma_placeholders_per_listener() {
        let telemetry = EnvoyTelemetry {
            traces: None,
            trace_resource: Default::default(),
            trace: Default::default(),
            access_logs: Vec::new(),
            named_services: Default::default(),
            tcp_log_fifo: None,
        };
        let (labels, spec) = (Default::default(), Default::default());
        let view = DataplaneView { mesh: "default", name: "web-1", labels: &labels, spec: &spec };
        let proxy = Proxy { zone: Some("eu"), address: "10.0.0.7", service: "web", telemetry: &telemetry, view };
        let text = "%KUMA_MESH% %KUMA_ZONE% %KUMA_SOURCE_ADDRESS% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT% %KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE% %KUMA_TRAFFIC_DIRECTION%";
        let inbound = ListenerSide { listener: Listener::Inbound { port: 8080 }, destination: "web", http: true };
        assert_eq!(proxy.interpolate(text, &inbound), "default eu 10.0.0.7:0 10.0.0.7 unknown->web INBOUND");
        let outbound =
            ListenerSide { listener: Listener::Outbound { service: "api" }, destination: "api", http: false };
        assert_eq!(proxy.interpolate(text, &outbound), "default eu 10.0.0.7:0 10.0.0.7 web->api OUTBOUND");
        assert!(proxy.line(None, &outbound).starts_with("[%START_TIME%] %RESPONSE_FLAGS% default 10.0.0.7(web)->"));
        assert!(proxy.line(None, &inbound).ends_with("\"10.0.0.7\" \"%UPSTREAM_HOST%\"\n"));
    }
}
