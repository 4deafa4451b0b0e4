//! One dataplane's Envoy configuration, built as a pure function of its
//! Dataplane, its resolved telemetry and the endpoints of the services it
//! calls: inbound and outbound listeners, their clusters and endpoints, and
//! each listener's tracer and access loggers (see [`crate::telemetry`]).

use crate::telemetry::{ListenerSide, Proxy};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, AggregatedConfigSource, ApiVersion, ConfigSource, Http2ProtocolOptions, Pipe,
    SocketAddress,
};
use envoy_types::pb::envoy::config::core::v3::{config_source, Address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{http_protocol_options, HttpProtocolOptions};
use envoy_types::pb::google::protobuf::{Any, Duration};
use envoy_types::util::pack_any;
use prost::Message;
use std::collections::BTreeMap;
use tern_model::spec::dataplane::{is_http, DataplaneSpec, PROTOCOL_TAG, SERVICE_TAG};
use tern_model::spec::resource::DataplaneView;
use tern_resolve::{EnvoyTelemetry, Listener as LogListener};

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

/// The data plane a snapshot is for.
#[derive(Debug, Clone, Copy)]
pub struct Dataplane<'a> {
    pub mesh: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// Its `kuma.io/zone` label, if any (`%KUMA_ZONE%`, the `kuma.zone` tag).
    pub zone: Option<&'a str>,
    pub spec: &'a DataplaneSpec,
}

/// A dataplane's resources, by type URL and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub resources: BTreeMap<&'static str, BTreeMap<String, Any>>,
    /// A hash of the content: equal snapshots have equal versions.
    pub version: String,
    /// The reconcile pass that built it, continued by each push.
    pub cause: Option<tern_trace::Cause>,
}

pub(crate) fn duration_ms(ms: i64) -> Duration {
    Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

pub(crate) fn socket(address: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

pub(crate) fn pipe(path: &str) -> Address {
    Address { address: Some(address::Address::Pipe(Pipe { path: path.to_string(), mode: 0 })) }
}

pub(crate) fn static_cluster(name: &str, addresses: Vec<Address>, http2: bool) -> Cluster {
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

/// An HTTP connection manager routing everything to `route_cluster`, with
/// the listener's tracing and access logs.
fn hcm(
    name: &str,
    route_cluster: &str,
    proxy: &Proxy<'_>,
    side: &ListenerSide<'_>,
    clusters: &mut Vec<Cluster>,
) -> Filter {
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
    let m = HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(RouteConfiguration {
            name: name.to_string(),
            request_headers_to_remove: proxy.headers_to_remove(),
            virtual_hosts: vec![VirtualHost {
                name: name.to_string(),
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
        tracing: proxy.tracing(side, clusters),
        access_log: proxy.access_logs(side, clusters),
        ..Default::default()
    };
    network_filter("envoy.filters.network.http_connection_manager", pack_any(m))
}

/// A TCP proxy to `cluster`, with the listener's access logs.
fn tcp(name: &str, cluster: &str, proxy: &Proxy<'_>, side: &ListenerSide<'_>, clusters: &mut Vec<Cluster>) -> Filter {
    let p = TcpProxy {
        stat_prefix: name.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        access_log: proxy.access_logs(side, clusters),
        ..Default::default()
    };
    network_filter("envoy.filters.network.tcp_proxy", pack_any(p))
}

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

fn service(tags: &BTreeMap<String, String>) -> &str {
    tags.get(SERVICE_TAG).map(String::as_str).unwrap_or("unknown")
}

/// Builds the snapshot for one dataplane.
pub fn build(dp: &Dataplane<'_>, telemetry: &EnvoyTelemetry, services: &ServiceMap) -> Snapshot {
    let Some(net) = &dp.spec.networking else { return Snapshot::default() };
    let mut listeners = Vec::new();
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut endpoints = Vec::new();
    let own_service = net.inbound.first().map(|i| service(&i.tags)).unwrap_or("unknown");
    let view = DataplaneView { mesh: dp.mesh, name: dp.name, labels: dp.labels, spec: dp.spec };
    let proxy = Proxy { zone: dp.zone, address: &net.address, service: own_service, telemetry, view };

    for inbound in &net.inbound {
        let port = u16::try_from(inbound.port).unwrap_or(0);
        let service_port = inbound.service_port.and_then(|p| u16::try_from(p).ok()).unwrap_or(port);
        let local = format!("localhost:{service_port}");
        let service_address = inbound.service_address.clone().unwrap_or_else(|| "127.0.0.1".into());
        clusters.push(static_cluster(&local, vec![socket(&service_address, service_port)], false));
        let name = format!("inbound:{}:{port}", net.address);
        let http = inbound.tags.get(PROTOCOL_TAG).is_some_and(|p| is_http(p));
        let side = ListenerSide {
            listener: LogListener::Inbound { port: inbound.port },
            destination: service(&inbound.tags),
            http,
        };
        let filter = if http {
            hcm(&name, &local, &proxy, &side, &mut clusters)
        } else {
            tcp(&name, &local, &proxy, &side, &mut clusters)
        };
        listeners.push(listener(&name, socket(&net.address, port), filter));
    }
    for outbound in &net.outbound {
        let Some(called) = outbound.tags.get(SERVICE_TAG) else { continue };
        let port = u16::try_from(outbound.port).unwrap_or(0);
        let address = outbound.address.clone().unwrap_or_else(|| "127.0.0.1".into());
        let eps = services.get(called).cloned().unwrap_or_default();
        let http = eps.first().is_some_and(|e| is_http(&e.protocol));
        let mut c = Cluster {
            name: called.clone(),
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
        endpoints.push(load_assignment(called, eps.iter().map(|e| socket(&e.address, e.port)).collect()));
        let name = format!("outbound:{address}:{port}");
        let side = ListenerSide { listener: LogListener::Outbound { service: called }, destination: called, http };
        let filter = if http {
            hcm(&name, called, &proxy, &side, &mut clusters)
        } else {
            tcp(&name, called, &proxy, &side, &mut clusters)
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
