//! One dataplane's Envoy configuration, built as a pure function of its
//! Dataplane, its resolved telemetry and the endpoints of the services it
//! calls: inbound and outbound listeners, their clusters and endpoints, and
//! the OpenTelemetry tracer and access loggers pointed at the data plane's
//! pipe sockets (or, for inline `endpoint`s, straight at the collector).

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString;
use envoy_types::pb::envoy::config::core::v3::{
    address, grpc_service, socket_address, AggregatedConfigSource, ApiVersion, ConfigSource, GrpcService,
    Http2ProtocolOptions, Pipe, SocketAddress,
};
use envoy_types::pb::envoy::config::core::v3::{config_source, Address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::config::trace::v3::{tracing, OpenTelemetryConfig};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{file_access_log, FileAccessLog};
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{http_protocol_options, HttpProtocolOptions};
use envoy_types::pb::envoy::r#type::tracing::v3::{custom_tag, CustomTag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration};
use envoy_types::pb::opentelemetry::proto::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue as OtelKeyValue, KeyValueList,
};
use envoy_types::util::pack_any;
use prost::Message;
use serde_json::Value;
use std::collections::BTreeMap;
use tern_model::spec::dataplane::{DataplaneSpec, PROTOCOL_TAG, SERVICE_TAG};
use tern_model::spec::mesh_trace::TraceTag;
use tern_model::spec::policy::Percentage;
use tern_resolve::{EnvoyTelemetry, Sink};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// An endpoint of a service: a dataplane inbound.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceEndpoint {
    pub address: String,
    pub port: u16,
    /// `kuma.io/protocol` of the inbound (`http`, `tcp`, ...).
    pub protocol: String,
}

/// The endpoints of every service in a mesh, by `kuma.io/service`.
pub type ServiceMap = BTreeMap<String, Vec<ServiceEndpoint>>;

/// A dataplane's resources, by type URL and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub resources: BTreeMap<&'static str, BTreeMap<String, Any>>,
    /// A hash of the content: equal snapshots have equal versions.
    pub version: String,
    /// The reconcile pass that built it, continued by each push.
    pub cause: Option<tern_trace::Cause>,
}

fn duration_ms(ms: i64) -> Duration {
    Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

fn socket(address: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn pipe(path: &str) -> Address {
    Address { address: Some(address::Address::Pipe(Pipe { path: path.to_string(), mode: 0 })) }
}

fn static_cluster(name: &str, addresses: Vec<Address>, http2: bool) -> Cluster {
    let mut c = Cluster {
        name: name.to_string(),
        connect_timeout: Some(duration_ms(5000)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
        load_assignment: Some(load_assignment(name, addresses)),
        ..Default::default()
    };
    if http2 {
        use_http2(&mut c);
    }
    c
}

fn use_http2(c: &mut Cluster) {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    ),
                ),
            },
        )),
        ..Default::default()
    };
    c.typed_extension_protocol_options
        .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), pack_any(options));
}

fn load_assignment(name: &str, addresses: Vec<Address>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: addresses
                .into_iter()
                .map(|a| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(a),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
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

fn otel_any_value(v: &Value) -> AnyValue {
    let value = match v {
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) if n.is_i64() => any_value::Value::IntValue(n.as_i64().unwrap_or(0)),
        Value::Number(n) => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
        Value::Object(map) => any_value::Value::KvlistValue(KeyValueList {
            values: map
                .iter()
                .map(|(k, v)| OtelKeyValue { key: k.clone(), value: Some(otel_any_value(v)), ..Default::default() })
                .collect(),
        }),
        Value::Array(items) => {
            any_value::Value::ArrayValue(ArrayValue { values: items.iter().map(otel_any_value).collect() })
        }
        Value::Null => any_value::Value::StringValue(String::new()),
    };
    AnyValue { value: Some(value) }
}

/// What a listener's HTTP connection manager adds for telemetry.
struct HttpTelemetry<'a> {
    service: &'a str,
    telemetry: &'a EnvoyTelemetry,
}

fn hcm(
    stat_prefix: &str,
    route_cluster: &str,
    t: &HttpTelemetry<'_>,
    clusters: &mut Vec<Cluster>,
) -> HttpConnectionManager {
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(route_cluster.to_string())),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut m = HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(RouteConfiguration {
            name: stat_prefix.to_string(),
            virtual_hosts: vec![VirtualHost {
                name: stat_prefix.to_string(),
                domains: vec!["*".into()],
                routes: vec![route],
                ..Default::default()
            }],
            ..Default::default()
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    if let Some(sink) = &t.telemetry.traces {
        let (cluster_name, cluster) = sink_cluster("traces", sink);
        clusters.push(cluster);
        let provider = OpenTelemetryConfig {
            grpc_service: Some(grpc_to(&cluster_name)),
            service_name: t.service.to_string(),
            ..Default::default()
        };
        let s = t.telemetry.trace.sampling.clone().unwrap_or_default();
        m.tracing = Some(http_connection_manager::Tracing {
            provider: Some(envoy_types::pb::envoy::config::trace::v3::tracing::Http {
                name: "envoy.tracers.opentelemetry".into(),
                config_type: Some(tracing::http::ConfigType::TypedConfig(pack_any(provider))),
            }),
            overall_sampling: percent(s.overall.as_ref()),
            client_sampling: percent(s.client.as_ref()),
            random_sampling: percent(s.random.as_ref()),
            custom_tags: custom_tags(&t.telemetry.trace.tags),
            spawn_upstream_span: Some(BoolValue { value: false }),
            ..Default::default()
        });
    }
    for log in &t.telemetry.access_logs {
        let (cluster_name, cluster) = sink_cluster("logs", &log.sink);
        clusters.push(cluster);
        let attributes = (!log.attributes.is_empty()).then(|| KeyValueList {
            values: log
                .attributes
                .iter()
                .map(|kv| OtelKeyValue {
                    key: kv.key.clone(),
                    value: Some(AnyValue { value: Some(any_value::Value::StringValue(kv.value.clone())) }),
                    ..Default::default()
                })
                .collect(),
        });
        let config = OpenTelemetryAccessLogConfig {
            log_name: "MeshAccessLog".into(),
            grpc_service: Some(grpc_to(&cluster_name)),
            body: Some(otel_any_value(log.body.as_ref().unwrap_or(&Value::String(DEFAULT_LOG_BODY.into())))),
            attributes,
            // Fewer, larger exports than Envoy's 16 KiB default; the flush
            // interval (Envoy's default, explicit here) bounds the wait.
            buffer_size_bytes: Some(envoy_types::pb::google::protobuf::UInt32Value { value: ACCESS_LOG_BUFFER_BYTES }),
            buffer_flush_interval: Some(envoy_types::pb::google::protobuf::Duration { seconds: 1, nanos: 0 }),
            ..Default::default()
        };
        m.access_log.push(AccessLog {
            name: "envoy.access_loggers.open_telemetry".into(),
            config_type: Some(access_log::ConfigType::TypedConfig(pack_any(config))),
            ..Default::default()
        });
    }
    for file in &t.telemetry.files {
        m.access_log.push(AccessLog {
            name: "envoy.access_loggers.file".into(),
            config_type: Some(access_log::ConfigType::TypedConfig(pack_any(file_access_log(file)))),
            ..Default::default()
        });
    }
    m
}

/// Envoy's file access logger for a MeshAccessLog `file` backend: `Plain`
/// as a text format (one line per record), `Json` as a JSON object per
/// line; without a format, Tern's default line (`DEFAULT_LOG_BODY`).
fn file_access_log(file: &tern_resolve::FileLog) -> FileAccessLog {
    use envoy_types::pb::envoy::config::core::v3::{data_source, substitution_format_string, DataSource};
    let text = |line: &str| {
        let line = if line.ends_with('\n') { line.to_string() } else { format!("{line}\n") };
        substitution_format_string::Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(line)),
            ..Default::default()
        })
    };
    let format = match file.format.as_ref() {
        Some(f) if f.type_ == "Json" => {
            let fields = f.json.iter().flatten().map(|kv| (kv.key.clone(), string_value(&kv.value))).collect();
            substitution_format_string::Format::JsonFormat(envoy_types::pb::google::protobuf::Struct { fields })
        }
        Some(f) => text(f.plain.as_deref().unwrap_or(DEFAULT_LOG_BODY)),
        None => text(DEFAULT_LOG_BODY),
    };
    let omit_empty_values = file.format.as_ref().and_then(|f| f.omit_empty_values).unwrap_or(false);
    FileAccessLog {
        path: file.path.clone(),
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(format),
            omit_empty_values,
            ..Default::default()
        })),
    }
}

fn string_value(s: &str) -> envoy_types::pb::google::protobuf::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    envoy_types::pb::google::protobuf::Value { kind: Some(Kind::StringValue(s.to_string())) }
}

/// How many bytes of access log records Envoy collects before sending them
/// (per worker thread), unless the one-second flush comes first.
pub const ACCESS_LOG_BUFFER_BYTES: u32 = 64 << 10;

/// The record body when a MeshAccessLog gives none: Envoy's default format.
pub const DEFAULT_LOG_BODY: &str =
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \"%REQ(USER-AGENT)%\" \"%UPSTREAM_HOST%\"";

fn listener(name: &str, address: Address, filter: Filter) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(address),
        filter_chains: vec![FilterChain { filters: vec![filter], ..Default::default() }],
        ..Default::default()
    }
}

fn network_filter(name: &str, config: Any) -> Filter {
    Filter { name: name.to_string(), config_type: Some(filter::ConfigType::TypedConfig(config)) }
}

/// Builds the snapshot for one dataplane.
pub fn build(spec: &DataplaneSpec, telemetry: &EnvoyTelemetry, services: &ServiceMap) -> Snapshot {
    let Some(net) = &spec.networking else { return Snapshot::default() };
    let mut listeners = Vec::new();
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut endpoints = Vec::new();
    let own_service =
        net.inbound.first().and_then(|i| i.tags.get(SERVICE_TAG)).map(String::as_str).unwrap_or("unknown");
    let t = HttpTelemetry { service: own_service, telemetry };

    for inbound in &net.inbound {
        let port = u16::try_from(inbound.port).unwrap_or(0);
        let service_port = inbound.service_port.and_then(|p| u16::try_from(p).ok()).unwrap_or(port);
        let local = format!("localhost:{service_port}");
        let service_address = inbound.service_address.clone().unwrap_or_else(|| "127.0.0.1".into());
        clusters.push(static_cluster(&local, vec![socket(&service_address, service_port)], false));
        let name = format!("inbound:{}:{port}", net.address);
        let filter = if inbound.tags.get(PROTOCOL_TAG).is_some_and(|p| p.starts_with("http") || p == "grpc") {
            network_filter(
                "envoy.filters.network.http_connection_manager",
                pack_any(hcm(&name, &local, &t, &mut clusters)),
            )
        } else {
            let proxy = TcpProxy {
                stat_prefix: name.clone(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(local.clone())),
                ..Default::default()
            };
            network_filter("envoy.filters.network.tcp_proxy", pack_any(proxy))
        };
        listeners.push(listener(&name, socket(&net.address, port), filter));
    }
    for outbound in &net.outbound {
        let Some(service) = outbound.tags.get(SERVICE_TAG) else { continue };
        let port = u16::try_from(outbound.port).unwrap_or(0);
        let address = outbound.address.clone().unwrap_or_else(|| "127.0.0.1".into());
        let eps = services.get(service).cloned().unwrap_or_default();
        let http = eps.first().is_some_and(|e| e.protocol.starts_with("http") || e.protocol == "grpc");
        let mut c = Cluster {
            name: service.clone(),
            connect_timeout: Some(duration_ms(5000)),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
                    resource_api_version: ApiVersion::V3 as i32,
                    ..Default::default()
                }),
                service_name: String::new(),
            }),
            ..Default::default()
        };
        if eps.first().is_some_and(|e| e.protocol == "grpc" || e.protocol == "http2") {
            use_http2(&mut c);
        }
        clusters.push(c);
        endpoints.push(load_assignment(service, eps.iter().map(|e| socket(&e.address, e.port)).collect()));
        let name = format!("outbound:{address}:{port}");
        let filter = if http {
            network_filter(
                "envoy.filters.network.http_connection_manager",
                pack_any(hcm(&name, service, &t, &mut clusters)),
            )
        } else {
            let proxy = TcpProxy {
                stat_prefix: name.clone(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(service.clone())),
                ..Default::default()
            };
            network_filter("envoy.filters.network.tcp_proxy", pack_any(proxy))
        };
        listeners.push(listener(&name, socket(&address, port), filter));
    }

    let mut resources: BTreeMap<&'static str, BTreeMap<String, Any>> = BTreeMap::new();
    for l in listeners {
        resources.entry(LISTENER).or_default().insert(l.name.clone(), pack_any(l));
    }
    for c in clusters {
        resources.entry(CLUSTER).or_default().insert(c.name.clone(), pack_any(c));
    }
    for e in endpoints {
        resources.entry(ENDPOINTS).or_default().insert(e.cluster_name.clone(), pack_any(e));
    }
    for t in [LISTENER, CLUSTER, ENDPOINTS] {
        resources.entry(t).or_default();
    }
    let version = version_of(&resources);
    Snapshot { resources, version, cause: None }
}

/// FNV-1a over every resource's bytes, in name order.
fn version_of(resources: &BTreeMap<&'static str, BTreeMap<String, Any>>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (t, by_name) in resources {
        for b in t.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        for (name, any) in by_name {
            for b in name.bytes().chain(any.encode_to_vec()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    format!("{h:016x}")
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
}
