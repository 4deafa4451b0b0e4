//! `Dataplane` (Universal form): the address, inbounds and outbounds of one sidecar.

use super::{validate_address, validate_tags};
use crate::violation::{FieldPath, Violations};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Tag naming the service an inbound belongs to.
pub const SERVICE_TAG: &str = "kuma.io/service";
/// The zone a data plane runs in (a label, and a tag on its inbounds).
pub const ZONE_TAG: &str = "kuma.io/zone";
/// Tag naming an inbound's protocol.
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";
/// Kuma's default Envoy admin port.
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

const PROTOCOLS: &[&str] = &["grpc", "http", "http2", "kafka", "tcp"];
/// What Kuma's protocol parser also accepts, beyond the list its message gives.
const UNLISTED_PROTOCOLS: &[&str] = &["tls", "mysql"];
const BACKEND_REF_KINDS: &str = "MeshExternalService,MeshMultiZoneService,MeshService";

/// Kuma keeps further Dataplane fields (probes, metrics, gateway) Tern does not
/// act on; they are kept as given so Kuma documents round-trip.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<Networking>,
    /// Kuma's virtual probes: checked, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Networking {
    #[serde(default)]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<Inbound>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Outbound>,
    /// A gateway data plane: checked, not served by Tern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Gateway>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// `DELEGATED` (the default) or `BUILTIN`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    #[serde(default)]
    pub port: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<ProbeEndpoint>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeEndpoint {
    #[serde(default)]
    pub inbound_port: i64,
    #[serde(default)]
    pub inbound_path: String,
    #[serde(default)]
    pub path: String,
}

/// Kuma's health check of an inbound's service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<i64>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// An outbound to a real resource (`MeshService` and the like) rather than a tag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundBackendRef {
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Admin {
    #[serde(default)]
    pub port: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    #[serde(default)]
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_probe: Option<ServiceProbe>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outbound {
    #[serde(default)]
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<OutboundBackendRef>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Kuma's protocol parser: case-insensitive, `tls` and `mysql` included.
pub fn known_protocol(protocol: &str) -> bool {
    let lower = protocol.to_ascii_lowercase();
    PROTOCOLS.contains(&lower.as_str()) || UNLISTED_PROTOCOLS.contains(&lower.as_str())
}

/// Whether an inbound's `kuma.io/protocol` makes it an HTTP listener.
pub fn is_http(protocol: &str) -> bool {
    matches!(protocol.to_ascii_lowercase().as_str(), "http" | "http2" | "grpc")
}

impl DataplaneSpec {
    /// The Envoy admin port: `networking.admin.port`, 9901 when unset.
    pub fn admin_port(&self) -> u16 {
        self.networking
            .as_ref()
            .and_then(|n| n.admin.as_ref())
            .and_then(|a| u16::try_from(a.port).ok())
            .filter(|p| *p != 0)
            .unwrap_or(DEFAULT_ADMIN_PORT)
    }

    /// Kuma's Dataplane validator for the Universal fields Tern uses.
    pub fn validate(&self) -> Violations {
        let mut v = Violations::default();
        let at = FieldPath::root("networking");
        let Some(net) = &self.networking else {
            v.add(&at, "must be defined");
            return v;
        };
        if let Some(admin) = &net.admin {
            let p_at = at.field("admin").field("port");
            if !(0..=65535).contains(&admin.port) {
                // Not Kuma's (its port is unsigned): Envoy could not bind it.
                v.add(&p_at, "port must be in the range [1, 65535]");
            } else {
                // Envoy's admin listens on 127.0.0.1: only a listener there
                // (or on every address) on the same port collides.
                let inbound = net.inbound.iter().any(|i| {
                    let address = i.address.as_deref().filter(|a| !a.is_empty()).unwrap_or(&net.address);
                    let workload = i.service_address.as_deref().filter(|a| !a.is_empty()).unwrap_or(address);
                    let workload_port = i.service_port.filter(|p| *p != 0).unwrap_or(i.port);
                    (admin.port == i.port && on_loopback(address))
                        || (admin.port == workload_port && on_loopback(workload))
                });
                let outbound = net.outbound.iter().any(|o| {
                    admin.port == o.port && o.address.as_deref().filter(|a| !a.is_empty()).is_none_or(on_loopback)
                });
                if inbound {
                    v.add(&p_at, "must differ from inbound");
                }
                if outbound {
                    v.add(&p_at, "must differ from outbound");
                }
            }
        }
        if net.address.is_empty() {
            v.add(&at.field("address"), "address can't be empty");
        } else if net.address == "0.0.0.0" || net.address == "::" {
            v.add(&at.field("address"), "must not be 0.0.0.0 or ::");
        } else {
            let mut probe = Violations::default();
            validate_address(&mut probe, &at.field("address"), &net.address);
            if !probe.is_empty() {
                v.add(&at.field("address"), "address has to be valid IP address or domain name");
            }
        }
        if let Some(gateway) = &net.gateway {
            validate_gateway(&mut v, &at, net, gateway, self.probes.is_some());
        } else {
            for (i, inbound) in net.inbound.iter().enumerate() {
                validate_inbound(&mut v, &at.field("inbound").index(i), inbound, &net.address);
            }
        }
        for (i, outbound) in net.outbound.iter().enumerate() {
            validate_outbound(&mut v, &at.field("outbound").index(i), outbound);
        }
        if let Some(refs) = net
            .other
            .get("transparentProxying")
            .and_then(|t| t.pointer("/reachableBackends/refs"))
            .and_then(|r| r.as_array())
        {
            // Kuma's path spells it `transparentProxing`.
            let refs_at = at.field("transparentProxing").field("reachableBackends").field("refs");
            for (i, r) in refs.iter().enumerate() {
                validate_reachable_backend(&mut v, &refs_at.index(i), r);
            }
        }
        if net.gateway.is_none() {
            validate_listeners(&mut v, &at, net);
            if let Some(metrics) = self.other.get("metrics") {
                validate_metrics(&mut v, metrics);
            }
        }
        if let Some(probes) = &self.probes {
            validate_probes(&mut v, probes);
        }
        v
    }
}

/// Kuma's gateway rules: a delegated gateway has no inbounds or listeners,
/// a builtin one no inbounds, outbounds, listeners or probes; its tags name
/// a service and speak only TCP.
fn validate_gateway(v: &mut Violations, at: &FieldPath, net: &Networking, gateway: &Gateway, probes: bool) {
    let builtin = gateway.type_.as_deref() == Some("BUILTIN");
    let which = if builtin { "builtin" } else { "delegated" };
    if !net.inbound.is_empty() {
        v.add(&at.field("inbound"), format!("inbound cannot be defined for {which} gateways"));
    }
    if builtin && !net.outbound.is_empty() {
        v.add(&at.field("outbound"), "outbound cannot be defined for builtin gateways");
    }
    if net.other.get("listeners").and_then(|l| l.as_array()).is_some_and(|l| !l.is_empty()) {
        v.add(&at.field("listeners"), format!("listeners cannot be defined for {which} gateways"));
    }
    if builtin && probes {
        // Kuma's path, though `probes` sits beside `networking`.
        v.add(&at.field("probes"), "probes cannot be defined for builtin gateways");
    }
    let tags_at = at.field("gateway").field("tags");
    if !gateway.tags.is_empty() && !gateway.tags.contains_key(SERVICE_TAG) {
        v.add(&tags_at, format!("mandatory tag {SERVICE_TAG:?} is missing"));
    }
    if let Some(protocol) = gateway.tags.get(PROTOCOL_TAG).filter(|p| p.as_str() != "tcp") {
        v.add(
            &tags_at.key(PROTOCOL_TAG),
            format!("other values than tcp are not allowed, provided value {protocol:?}"),
        );
    }
    validate_tags(v, &tags_at, &gateway.tags);
}

fn validate_outbound(v: &mut Violations, o_at: &FieldPath, outbound: &Outbound) {
    check_port(v, &o_at.field("port"), outbound.port);
    if let Some(addr) = outbound.address.as_deref().filter(|a| !a.is_empty()) {
        if addr.parse::<std::net::IpAddr>().is_err() {
            v.add(&o_at.field("address"), "address has to be valid IP address");
        }
    }
    let Some(r) = &outbound.backend_ref else {
        validate_tags(v, &o_at.field("tags"), &outbound.tags);
        if !outbound.tags.contains_key(SERVICE_TAG) {
            v.add(&o_at.field("tags"), format!("mandatory tag {SERVICE_TAG:?} is missing"));
        }
        return;
    };
    let r_at = o_at.field("backendRef");
    if !outbound.tags.is_empty() {
        v.add(&r_at, "both backendRef and tags/service cannot be defined");
    }
    if !BACKEND_REF_KINDS.split(',').any(|k| k == r.kind) {
        v.add(&r_at.field("kind"), format!("invalid value. Available values are: {BACKEND_REF_KINDS}"));
    }
    let named = r.name.as_deref().is_some_and(|n| !n.is_empty());
    if !named && r.labels.as_ref().is_none_or(|l| l.is_empty()) {
        v.add(&r_at, "either 'name' or 'labels' should be specified");
    }
    if r.kind != "MeshExternalService" {
        check_port(v, &r_at.field("port"), r.port.unwrap_or(0));
    }
}

/// One `transparentProxying.reachableBackends.refs[]` entry.
fn validate_reachable_backend(v: &mut Violations, at: &FieldPath, r: &serde_json::Value) {
    let text = |key: &str| r.get(key).and_then(|x| x.as_str()).unwrap_or_default();
    let (kind, name, namespace) = (text("kind"), text("name"), text("namespace"));
    let labels = r.get("labels").and_then(|l| l.as_object()).is_some_and(|l| !l.is_empty());
    if !BACKEND_REF_KINDS.split(',').any(|k| k == kind) {
        v.add(&at.field("kind"), format!("invalid value. Available values are: {BACKEND_REF_KINDS}"));
    }
    if !name.is_empty() {
        if let Some(problem) = crate::document::identifier_problem(name, false) {
            v.add(&at.field("name"), problem);
        }
    }
    if name.is_empty() && !labels {
        v.add(&at.field("name"), "name or labels are required");
    }
    if name.is_empty() && !namespace.is_empty() {
        v.add(&at.field("name"), "name is required, when namespace is defined");
    }
    if labels && (!name.is_empty() || !namespace.is_empty()) {
        v.add(&at.field("labels"), "labels cannot be defined when name is specified");
    }
}

/// Zone ingress and egress `listeners`: their type, address, port, and names
/// unique across inbounds and listeners.
fn validate_listeners(v: &mut Violations, at: &FieldPath, net: &Networking) {
    let Some(listeners) = net.other.get("listeners").and_then(|l| l.as_array()) else { return };
    let mut names: Vec<String> =
        net.inbound.iter().filter_map(|i| i.other.get("name").and_then(|n| n.as_str()).map(str::to_string)).collect();
    for (i, l) in listeners.iter().enumerate() {
        let l_at = at.field("listeners").index(i);
        let text = |key: &str| l.get(key).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        if !["ZoneIngress", "ZoneEgress"].contains(&text("type").as_str()) {
            v.add(&l_at.field("type"), "type must be ZoneIngress or ZoneEgress");
        }
        let address = text("address");
        if address.is_empty() {
            v.add(&l_at.field("address"), "address can't be empty");
        } else if address == "0.0.0.0" || address == "::" {
            v.add(&l_at.field("address"), "must not be 0.0.0.0 or ::");
        } else if address.parse::<std::net::IpAddr>().is_err() && !super::is_dns_name(&address) {
            v.add(&l_at.field("address"), "address has to be valid IP address or domain name");
        }
        check_port(v, &l_at.field("port"), l.get("port").and_then(|p| p.as_i64()).unwrap_or(0));
        let name = text("name");
        if !name.is_empty() {
            if names.contains(&name) {
                v.add(&l_at.field("name"), format!("name {name:?} must be unique across inbounds and listeners"));
            }
            names.push(name);
        }
    }
}

/// A Dataplane's own `metrics` backend (Kuma's old style, Prometheus only).
fn validate_metrics(v: &mut Violations, metrics: &serde_json::Value) {
    let at = FieldPath::root("metrics");
    if metrics.get("type").and_then(|t| t.as_str()) != Some("prometheus") {
        v.add(&at.field("type"), "unknown backend type. Available backends: \"prometheus\"");
        return;
    }
    let Some(conf) = metrics.get("conf") else { return };
    let conf_at = at.field("conf");
    let skip_mtls = conf.get("skipMTLS").and_then(|s| s.as_bool());
    let tls_mode = conf.pointer("/tls/mode").and_then(|m| m.as_str()).unwrap_or("activeMTLSBackend");
    if let (Some(skip), Some(_)) = (skip_mtls, conf.get("tls")) {
        let consistent = (!skip && tls_mode == "activeMTLSBackend") || (skip && tls_mode == "disabled");
        if !consistent {
            v.add(&conf_at, "skipMTLS and tls configuration cannot be defined together");
            return;
        }
    }
    if let Some(regex) = conf.pointer("/envoy/filterRegex").and_then(|r| r.as_str()) {
        if let Err(e) = regex::Regex::new(regex) {
            let reason = e.to_string().lines().last().unwrap_or_default().trim().to_string();
            v.add(&conf_at.field("envoy").field("filterRegex"), format!("provided regexp isn't correct: {reason}"));
            return;
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, a) in conf.get("aggregate").and_then(|a| a.as_array()).into_iter().flatten().enumerate() {
        let name = a.get("name").and_then(|n| n.as_str()).unwrap_or_default();
        if !seen.insert(name) {
            v.add(
                &conf_at.field("aggregate").index(i).field("name"),
                format!("duplicate entry: {name}, values have to be unique"),
            );
        }
    }
}

/// Kuma's virtual probe rules.
fn validate_probes(v: &mut Violations, probes: &Probes) {
    let at = FieldPath::root("probes");
    check_port(v, &at.field("port"), probes.port);
    for (i, e) in probes.endpoints.iter().enumerate() {
        let e_at = at.field("endpoints").index(i);
        check_port(v, &e_at.field("inboundPort"), e.inbound_port);
        for (field, path) in [("inboundPath", &e.inbound_path), ("path", &e.path)] {
            // Go's ParseRequestURI: an absolute path (or a full URL).
            if !path.starts_with('/') && !path.contains("://") {
                v.add(&e_at.field(field), "should be a valid URL Path");
            }
        }
    }
}

/// Kuma's service probe rules: durations and thresholds must be positive.
fn validate_service_probe(v: &mut Violations, at: &FieldPath, probe: &ServiceProbe) {
    for (field, value) in [("interval", &probe.interval), ("timeout", &probe.timeout)] {
        let Some(value) = value else { continue };
        match super::duration::parse_go_duration(value) {
            Ok(d) if d.is_zero() => v.add(&at.field(field), "must have a positive value"),
            Ok(_) => {}
            Err(_) => v.add(&at.field(field), "must have a valid value"),
        }
    }
    for (field, value) in
        [("unhealthyThreshold", probe.unhealthy_threshold), ("healthyThreshold", probe.healthy_threshold)]
    {
        if value.is_some_and(|t| t <= 0) {
            v.add(&at.field(field), "must have a positive value");
        }
    }
}

fn check_port(v: &mut Violations, at: &FieldPath, port: i64) {
    if !(1..=65535).contains(&port) {
        v.add(at, "port must be in the range [1, 65535]");
    }
}

/// Whether a listener on `address` takes 127.0.0.1's ports (it is
/// 127.0.0.1, or every address); names never do (Kuma's rule).
fn on_loopback(address: &str) -> bool {
    match address.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_unspecified() || ip == std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        Err(_) => false,
    }
}

/// Kuma's inbound rules, in Kuma's order.
fn validate_inbound(v: &mut Violations, at: &FieldPath, inbound: &Inbound, dp_address: &str) {
    check_port(v, &at.field("port"), inbound.port);
    if let Some(sp) = inbound.service_port.filter(|p| *p != 0) {
        check_port(v, &at.field("servicePort"), sp);
    }
    let given = |a: &Option<String>| a.as_deref().filter(|a| !a.is_empty()).map(str::to_string);
    let (service_address, address) = (given(&inbound.service_address), given(&inbound.address));
    let same_port = inbound.service_port.is_none_or(|p| p == 0 || p == inbound.port);
    let overlap = "serviceAddress and servicePort has to differ from address and port";
    if let Some(addr) = &service_address {
        if addr.parse::<std::net::IpAddr>().is_err() {
            v.add(&at.field("serviceAddress"), "serviceAddress has to be valid IP address");
        }
        if addr == dp_address && same_port {
            v.add(&at.field("serviceAddress"), overlap);
        }
    }
    if let Some(addr) = &address {
        if addr.parse::<std::net::IpAddr>().is_err() {
            v.add(&at.field("address"), "address has to be valid IP address");
        }
        if service_address.as_ref() == Some(addr) && same_port {
            v.add(&at.field("serviceAddress"), overlap);
        }
    }
    let tags_at = at.field("tags");
    let allowed = format!("Allowed values: {}", PROTOCOLS.join(", "));
    if let Some(protocol) = inbound.tags.get(PROTOCOL_TAG).filter(|p| !known_protocol(p)) {
        v.add(&tags_at.key(PROTOCOL_TAG), format!("tag {PROTOCOL_TAG:?} has an invalid value {protocol:?}. {allowed}"));
    }
    validate_tags(v, &tags_at, &inbound.tags);
    if let Some(protocol) = inbound.protocol.as_deref().filter(|p| !p.is_empty() && !known_protocol(p)) {
        v.add(&at.field("protocol"), format!("has an invalid value {protocol:?}. {allowed}"));
    }
    if let Some(probe) = &inbound.service_probe {
        validate_service_probe(v, &at.field("serviceProbe"), probe);
    }
    // Without tags at all, Kuma accepts the inbound (inbound tags disabled).
    if !inbound.tags.is_empty() && !inbound.tags.contains_key(SERVICE_TAG) {
        v.add(&tags_at.key(SERVICE_TAG), "tag has to exist");
    }
}
