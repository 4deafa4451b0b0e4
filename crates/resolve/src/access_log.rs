//! MeshAccessLog per listener, as Kuma 2.14 applies it:
//! - `rules[]` and `from[]` on inbound listeners: every backend of every
//!   item of every matched policy (no merging), on the inbounds the policy's
//!   `targetRef` picks (`matching::inbounds_selected`);
//! - `to[]` on outbound listeners: for an outbound to service `S`, the items
//!   targeting `Mesh` or `MeshService` `S`, merged in policy order (the last
//!   `backends` list wins); outbounds to services no item names get the
//!   `Mesh` items alone;
//! - Tern's top-level `default` (seed 000's form) on every listener.

use crate::matching::Inbounds;
use serde_json::Value;
use std::collections::BTreeSet;
use tern_model::spec::mesh_access_log::{AccessLogConf, AccessLogFormat};

/// Which listeners a logger is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogScope {
    /// The top-level `default`: every listener.
    Everywhere,
    /// `rules[]` and `from[]`: these inbound listeners.
    Inbound(Inbounds),
    /// The `to[]` items targeting `Mesh`: outbounds to services no item names.
    Outbound,
    /// `to[]` merged for outbounds to this `kuma.io/service`.
    OutboundTo(String),
}

/// A listener, as far as choosing its loggers goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener<'a> {
    Inbound { port: i64 },
    Outbound { service: &'a str },
}

impl LogScope {
    /// Whether a logger of this scope belongs on `listener`; `named` are the
    /// services some `to[]` item targets by name.
    pub fn applies_to(&self, listener: Listener<'_>, named: &BTreeSet<String>) -> bool {
        match (self, listener) {
            (LogScope::Everywhere, _) => true,
            (LogScope::Inbound(inbounds), Listener::Inbound { port }) => inbounds.contains(port),
            (LogScope::Outbound, Listener::Outbound { service }) => !named.contains(service),
            (LogScope::OutboundTo(s), Listener::Outbound { service }) => s == service,
            _ => false,
        }
    }
}

/// A MeshAccessLog `file` backend: Envoy appends records to `path`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileLog {
    pub path: String,
    pub format: Option<AccessLogFormat>,
}

/// A MeshAccessLog `tcp` backend: Envoy writes records to `tern-dp`, which
/// sends them as lines to `address`.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpLog {
    pub address: String,
    pub format: Option<AccessLogFormat>,
}

/// A backend Envoy writes on the data-plane host itself.
#[derive(Debug, Clone, PartialEq)]
pub enum LocalLog {
    File(FileLog),
    Tcp(TcpLog),
}

/// A MeshAccessLog `to[]` item: the service it targets (`None` for `Mesh`)
/// and its `default`.
pub(crate) type ToItem = (Option<String>, Value);

/// The confs of the matched policies (in policy order) by scope, and the
/// services `to[]` items name.
pub(crate) fn scoped_confs<'v>(
    merged_default: Value,
    inbound: impl Iterator<Item = (&'v Inbounds, &'v Value)>,
    to: &[&'v ToItem],
) -> (Vec<(LogScope, Value)>, BTreeSet<String>) {
    let mut out = vec![(LogScope::Everywhere, merged_default)];
    out.extend(inbound.map(|(on, c)| (LogScope::Inbound(on.clone()), c.clone())));
    let named: BTreeSet<String> = to.iter().filter_map(|(s, _)| s.clone()).collect();
    let for_service = |service: Option<&String>| {
        crate::fold(to.iter().filter(move |(s, _)| s.is_none() || s.as_ref() == service).map(|(_, c)| c))
    };
    out.push((LogScope::Outbound, for_service(None)));
    out.extend(named.iter().map(|s| (LogScope::OutboundTo(s.clone()), for_service(Some(s)))));
    (out, named)
}

/// The `file` and `tcp` backends of a folded conf.
pub(crate) fn local_logs(conf: &Value) -> Vec<LocalLog> {
    let conf = (!conf.is_null()).then(|| conf.clone()).and_then(|c| serde_json::from_value::<AccessLogConf>(c).ok());
    let backends = conf.and_then(|c| c.backends).into_iter().flatten();
    backends
        .filter_map(|b| match b.type_.as_str() {
            "File" => b.file.map(|f| LocalLog::File(FileLog { path: f.path, format: f.format })),
            "Tcp" => b.tcp.map(|t| LocalLog::Tcp(TcpLog { address: t.address, format: t.format })),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backends(path: &str) -> Value {
        json!({"backends": [{"type": "File", "file": {"path": path}}]})
    }

    #[test]
    fn to_items_merge_per_service_and_mesh_items_cover_the_rest() {
        let to = [(None, backends("/mesh")), (Some("api".to_string()), backends("/api")), (None, backends("/later"))];
        let refs: Vec<&ToItem> = to.iter().collect();
        let only_8080 = Inbounds::Ports(BTreeSet::from([8080]));
        let inbound = [(Inbounds::All, backends("/in-1")), (only_8080.clone(), backends("/in-2"))];
        let (confs, named) = scoped_confs(Value::Null, inbound.iter().map(|(on, c)| (on, c)), &refs);
        assert_eq!(named, BTreeSet::from(["api".to_string()]));
        let paths = |scope: &LogScope| -> Vec<String> {
            confs
                .iter()
                .filter(|(s, _)| s == scope)
                .flat_map(|(_, c)| local_logs(c))
                .map(|l| match l {
                    LocalLog::File(f) => f.path,
                    LocalLog::Tcp(t) => t.address,
                })
                .collect()
        };
        // Inbound: every item, no merging, each on the inbounds its policy picked.
        assert_eq!(paths(&LogScope::Inbound(Inbounds::All)), ["/in-1"]);
        assert_eq!(paths(&LogScope::Inbound(only_8080.clone())), ["/in-2"]);
        let narrowed = LogScope::Inbound(only_8080);
        assert!(narrowed.applies_to(Listener::Inbound { port: 8080 }, &named));
        assert!(!narrowed.applies_to(Listener::Inbound { port: 9090 }, &named));
        // Outbound to api: the last contributor in policy order wins.
        assert_eq!(paths(&LogScope::OutboundTo("api".into())), ["/later"]);
        assert_eq!(paths(&LogScope::Outbound), ["/later"]);
        let named_api = |l| LogScope::Outbound.applies_to(l, &named);
        assert!(!named_api(Listener::Outbound { service: "api" }));
        assert!(named_api(Listener::Outbound { service: "web" }));
        assert!(!LogScope::Inbound(Inbounds::All).applies_to(Listener::Outbound { service: "web" }, &named));
        assert!(LogScope::Everywhere.applies_to(Listener::Inbound { port: 9090 }, &named));
    }
}
