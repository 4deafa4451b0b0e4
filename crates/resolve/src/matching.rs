//! Which policies apply to a dataplane, and in which order their `default`s
//! are folded (later ones win).
//!
//! The order is Kuma 2.14's (the last release with `MeshSubset`), ascending:
//! 1. targetRef kind: `Mesh` (1) < `Dataplane` (2) < `MeshSubset` (3) <
//!    `MeshService` (5) < `MeshServiceSubset` (8);
//! 2. origin label `kuma.io/origin`: `global` < none < `zone`;
//! 3. role label `kuma.io/policy-role`: `system` < `producer` < `consumer` < `workload-owner`
//!    (Universal policies have none, which counts as `system`);
//! 4. name, descending: the lexicographically smallest name is applied last
//!    and wins.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use tern_model::spec::dataplane::{DataplaneSpec, Inbound, SERVICE_TAG};
use tern_model::spec::policy::TargetRef;

/// What matching needs of a dataplane.
#[derive(Debug, Clone)]
pub struct DataplaneFacts<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub spec: &'a DataplaneSpec,
}

/// Whether a policy's top-level `targetRef` selects the dataplane. A missing
/// targetRef selects the whole mesh.
pub fn selects(target: Option<&TargetRef>, dp: &DataplaneFacts<'_>) -> bool {
    let Some(t) = target else { return true };
    match t.kind.as_str() {
        "Mesh" => true,
        // The tag-based kinds select the proxy when they pick one of its inbounds.
        "MeshSubset" | "MeshService" | "MeshServiceSubset" => match inbounds_selected(target, dp) {
            Inbounds::All => true,
            Inbounds::Ports(ports) => !ports.is_empty(),
        },
        "Dataplane" => match (&t.name, &t.labels) {
            (Some(name), _) if !name.is_empty() => name == dp.name,
            (_, Some(labels)) => labels.iter().all(|(k, v)| dp.labels.get(k) == Some(v)),
            _ => true,
        },
        _ => false,
    }
}

/// The inbound listeners (by port) a policy's inbound items (MeshAccessLog
/// `from[]` and `rules[]`) go on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Inbounds {
    All,
    Ports(BTreeSet<i64>),
}

impl Inbounds {
    pub fn contains(&self, port: i64) -> bool {
        match self {
            Inbounds::All => true,
            Inbounds::Ports(ports) => ports.contains(&port),
        }
    }
}

/// The inbounds a selecting `targetRef` picks, as Kuma 2.14 narrows an
/// inbound policy: those whose tags a `MeshSubset`, `MeshService` or
/// `MeshServiceSubset` matches, the one a `Dataplane` `sectionName` names
/// (an inbound's `name`, or its port as text), else all.
pub fn inbounds_selected(target: Option<&TargetRef>, dp: &DataplaneFacts<'_>) -> Inbounds {
    let Some(t) = target else { return Inbounds::All };
    let no_tags = BTreeMap::new();
    let tags = t.tags.as_ref().unwrap_or(&no_tags);
    let service = t.name.as_deref().filter(|n| !n.is_empty());
    let inbounds = dp.spec.networking.as_ref().map(|n| n.inbound.as_slice()).unwrap_or_default();
    let picked = |keep: &dyn Fn(&Inbound) -> bool| {
        Inbounds::Ports(inbounds.iter().filter(|i| keep(i)).map(|i| i.port).collect())
    };
    match (t.kind.as_str(), t.section_name.as_deref().filter(|s| !s.is_empty())) {
        ("MeshSubset", _) if !tags.is_empty() => picked(&|i| tag_match(i, None, tags)),
        // Kuma 2.14 matches these by name only: given by labels, they pick nothing.
        ("MeshService", _) => picked(&|i| service.is_some() && tag_match(i, service, &no_tags)),
        ("MeshServiceSubset", _) => picked(&|i| service.is_some() && tag_match(i, service, tags)),
        ("Dataplane", Some(section)) => picked(&|i| section_name(i) == section),
        _ => Inbounds::All,
    }
}

/// Kuma's section name of an inbound: its `name`, or its port as text.
fn section_name(inbound: &Inbound) -> String {
    match inbound.other.get("name").and_then(|n| n.as_str()).filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => inbound.port.to_string(),
    }
}

/// Whether an inbound is of `service` (when given) and carries every tag of
/// `selector` (a value `*` takes any value).
fn tag_match(inbound: &Inbound, service: Option<&str>, selector: &BTreeMap<String, String>) -> bool {
    let has = |k: &str, v: &str| inbound.tags.get(k).is_some_and(|t| v == "*" || t == v);
    service.is_none_or(|s| has(SERVICE_TAG, s)) && selector.iter().all(|(k, v)| has(k, v))
}

/// The sort key of a policy (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Specificity {
    kind_rank: u8,
    origin_rank: u8,
    role_rank: u8,
    name: String,
}

impl Specificity {
    pub fn of(target: Option<&TargetRef>, labels: &BTreeMap<String, String>, name: &str) -> Specificity {
        let kind_rank = match target.map(|t| t.kind.as_str()) {
            None | Some("Mesh") => 1,
            Some("Dataplane") => 2,
            Some("MeshSubset") => 3,
            Some("MeshService") => 5,
            Some("MeshServiceSubset") => 8,
            Some(_) => 0,
        };
        let origin_rank = match labels.get("kuma.io/origin").map(String::as_str) {
            Some("global") => 1,
            Some("zone") => 3,
            _ => 2,
        };
        let role_rank = match labels.get("kuma.io/policy-role").map(String::as_str) {
            Some("producer") => 2,
            Some("consumer") => 3,
            Some("workload-owner") => 4,
            _ => 1,
        };
        Specificity { kind_rank, origin_rank, role_rank, name: name.to_string() }
    }
}

impl Ord for Specificity {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.kind_rank, self.origin_rank, self.role_rank)
            .cmp(&(other.kind_rank, other.origin_rank, other.role_rank))
            // Name descending: "aaa" sorts after "bbb", so it is applied last and wins.
            .then_with(|| other.name.cmp(&self.name))
    }
}

impl PartialOrd for Specificity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
