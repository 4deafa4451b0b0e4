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

/// Kuma keeps further Dataplane fields (probes, metrics, gateway) Tern does not
/// act on; they are kept as given so Kuma documents round-trip.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<Networking>,
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
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
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
        for (i, inbound) in net.inbound.iter().enumerate() {
            validate_inbound(&mut v, &at.field("inbound").index(i), inbound);
        }
        for (i, outbound) in net.outbound.iter().enumerate() {
            let o_at = at.field("outbound").index(i);
            check_port(&mut v, &o_at.field("port"), outbound.port);
            if let Some(addr) = outbound.address.as_deref().filter(|a| !a.is_empty()) {
                if addr.parse::<std::net::IpAddr>().is_err() {
                    v.add(&o_at.field("address"), "address has to be valid IP address");
                }
            }
            if !outbound.tags.contains_key(SERVICE_TAG) {
                v.add(&o_at.field("tags"), format!("mandatory tag {SERVICE_TAG:?} is missing"));
            } else {
                validate_tags(&mut v, &o_at.field("tags"), &outbound.tags);
            }
        }
        v
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

fn validate_inbound(v: &mut Violations, at: &FieldPath, inbound: &Inbound) {
    check_port(v, &at.field("port"), inbound.port);
    if let Some(sp) = inbound.service_port.filter(|p| *p != 0) {
        check_port(v, &at.field("servicePort"), sp);
    }
    for (field, value) in [("serviceAddress", &inbound.service_address), ("address", &inbound.address)] {
        if let Some(addr) = value.as_deref().filter(|a| !a.is_empty()) {
            if addr.parse::<std::net::IpAddr>().is_err() {
                v.add(&at.field(field), format!("{field} has to be valid IP address"));
            }
        }
    }
    let tags_at = at.field("tags");
    if !inbound.tags.contains_key(SERVICE_TAG) {
        v.add(&tags_at.key(SERVICE_TAG), "tag has to exist");
    }
    validate_tags(v, &tags_at, &inbound.tags);
    if let Some(protocol) = inbound.tags.get(PROTOCOL_TAG) {
        if !PROTOCOLS.contains(&protocol.as_str()) {
            v.add(
                &tags_at.key(PROTOCOL_TAG),
                format!(
                    "tag {PROTOCOL_TAG:?} has an invalid value {protocol:?}. Allowed values: {}",
                    PROTOCOLS.join(", ")
                ),
            );
        }
    }
}
