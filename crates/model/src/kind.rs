//! The registry of resource kinds Tern stores: names, REST path segments and
//! the aliases `ternctl` accepts, in one table so every layer agrees.

use std::fmt;

/// A resource kind, spelled as in Kuma's `kuma.io/v1alpha1` API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Mesh,
    Dataplane,
    DataplaneInsight,
    MeshOpenTelemetryBackend,
    MeshTrace,
    MeshMetric,
    MeshAccessLog,
    /// A zone of a multi-zone deployment, on the global control plane
    /// (Kuma's `enabled` switch; created when the zone first connects).
    Zone,
    /// What the global control plane knows of a zone's sync connections.
    ZoneInsight,
    /// Control-plane secrets (data-plane token signing keys, the revocation
    /// list). Internal: no REST path, no CLI name, never accepted in a document.
    GlobalSecret,
}

/// Static facts about one kind.
struct KindInfo {
    kind: Kind,
    name: &'static str,
    plural: &'static str,
    short: Option<&'static str>,
    internal: bool,
}

const KINDS: &[KindInfo] = &[
    KindInfo { kind: Kind::Mesh, name: "Mesh", plural: "meshes", short: None, internal: false },
    KindInfo { kind: Kind::Dataplane, name: "Dataplane", plural: "dataplanes", short: Some("dp"), internal: false },
    KindInfo {
        kind: Kind::DataplaneInsight,
        name: "DataplaneInsight",
        plural: "dataplane-insights",
        short: None,
        internal: false,
    },
    KindInfo {
        kind: Kind::MeshOpenTelemetryBackend,
        name: "MeshOpenTelemetryBackend",
        plural: "meshopentelemetrybackends",
        short: Some("motb"),
        internal: false,
    },
    KindInfo { kind: Kind::MeshTrace, name: "MeshTrace", plural: "meshtraces", short: Some("mtr"), internal: false },
    KindInfo { kind: Kind::MeshMetric, name: "MeshMetric", plural: "meshmetrics", short: Some("mm"), internal: false },
    KindInfo {
        kind: Kind::MeshAccessLog,
        name: "MeshAccessLog",
        plural: "meshaccesslogs",
        short: Some("mal"),
        internal: false,
    },
    KindInfo { kind: Kind::Zone, name: "Zone", plural: "zones", short: None, internal: false },
    KindInfo { kind: Kind::ZoneInsight, name: "ZoneInsight", plural: "zone-insights", short: None, internal: false },
    KindInfo { kind: Kind::GlobalSecret, name: "GlobalSecret", plural: "global-secrets", short: None, internal: true },
];

impl Kind {
    /// Every kind users read and write, in a stable order (internal kinds left out).
    pub const ALL: [Kind; 9] = [
        Kind::Mesh,
        Kind::Dataplane,
        Kind::DataplaneInsight,
        Kind::MeshOpenTelemetryBackend,
        Kind::MeshTrace,
        Kind::MeshMetric,
        Kind::MeshAccessLog,
        Kind::Zone,
        Kind::ZoneInsight,
    ];

    fn info(self) -> &'static KindInfo {
        KINDS.iter().find(|i| i.kind == self).expect("every Kind has a KINDS row")
    }

    /// The kind's name as written in `kind:` / `type:` (`MeshTrace`).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The REST path segment (`meshtraces`).
    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    /// The short alias `ternctl` accepts (`mtr`), if any.
    pub fn short_name(self) -> Option<&'static str> {
        self.info().short
    }

    /// Resolves a kind from its `kind:`/`type:` spelling.
    pub fn from_name(name: &str) -> Option<Kind> {
        KINDS.iter().find(|i| i.name == name).map(|i| i.kind)
    }

    /// Resolves a kind from its REST path segment (never an internal kind).
    pub fn from_plural(plural: &str) -> Option<Kind> {
        KINDS.iter().find(|i| !i.internal && i.plural == plural).map(|i| i.kind)
    }

    /// Resolves what a user typed on the command line: plural, singular, short
    /// name or the kind itself, case-insensitively (`motb`, `meshtrace`,
    /// `MeshTraces`, `dataplane-insight`).
    pub fn from_cli_arg(arg: &str) -> Option<Kind> {
        let arg = arg.to_ascii_lowercase();
        KINDS
            .iter()
            .filter(|i| !i.internal)
            .find(|i| {
                let name = i.name.to_ascii_lowercase();
                arg == name
                    || arg == i.plural
                    || arg == singular(i.plural)
                    || Some(arg.as_str()) == i.short
                    || arg == format!("{name}s")
            })
            .map(|i| i.kind)
    }

    /// Whether resources of this kind live inside a mesh. `Mesh`, `Zone`,
    /// `ZoneInsight` and `GlobalSecret` do not.
    pub fn is_mesh_scoped(self) -> bool {
        !matches!(self, Kind::Mesh | Kind::Zone | Kind::ZoneInsight | Kind::GlobalSecret)
    }

    /// Whether only the control plane itself reads and writes this kind: not
    /// served by the API, not accepted in documents.
    pub fn is_internal(self) -> bool {
        self.info().internal
    }

    /// Kuma's older kinds (Mesh, Dataplane, DataplaneInsight) put their spec
    /// fields at the top level of a Universal document instead of under `spec`.
    pub fn spec_is_inlined(self) -> bool {
        matches!(self, Kind::Mesh | Kind::Dataplane | Kind::DataplaneInsight | Kind::Zone | Kind::ZoneInsight)
    }

    /// Whether the kind is an observability policy with a `targetRef`.
    pub fn is_policy(self) -> bool {
        matches!(self, Kind::MeshTrace | Kind::MeshMetric | Kind::MeshAccessLog)
    }

    /// Whether only the control plane writes this kind.
    pub fn is_read_only(self) -> bool {
        matches!(self, Kind::DataplaneInsight | Kind::ZoneInsight)
    }

    /// The names a user may type for this kind, for help and error messages.
    pub fn aliases(self) -> Vec<String> {
        let info = self.info();
        let mut out = vec![info.plural.to_string(), singular(info.plural).to_string()];
        out.extend(info.short.map(str::to_string));
        out
    }
}

fn singular(plural: &str) -> &str {
    plural
        .strip_suffix("es")
        .filter(|s| s.ends_with("sh"))
        .unwrap_or_else(|| plural.strip_suffix('s').unwrap_or(plural))
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_resolves_from_every_alias() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
            assert_eq!(Kind::from_plural(kind.plural()), Some(kind));
            for alias in kind.aliases() {
                assert_eq!(Kind::from_cli_arg(&alias), Some(kind), "alias {alias}");
            }
        }
    }

    #[test]
    fn cli_names_match_kumactl() {
        assert_eq!(Kind::from_cli_arg("motb"), Some(Kind::MeshOpenTelemetryBackend));
        assert_eq!(Kind::from_cli_arg("meshopentelemetrybackend"), Some(Kind::MeshOpenTelemetryBackend));
        assert_eq!(Kind::from_cli_arg("meshopentelemetrybackends"), Some(Kind::MeshOpenTelemetryBackend));
        assert_eq!(Kind::from_cli_arg("mesh"), Some(Kind::Mesh));
        assert_eq!(Kind::from_cli_arg("meshes"), Some(Kind::Mesh));
        assert_eq!(Kind::from_cli_arg("dataplane-insight"), Some(Kind::DataplaneInsight));
        assert_eq!(Kind::from_cli_arg("MeshTrace"), Some(Kind::MeshTrace));
        assert_eq!(Kind::from_cli_arg("mal"), Some(Kind::MeshAccessLog));
        assert_eq!(Kind::from_cli_arg("meshservice"), None);
        assert_eq!(Kind::from_cli_arg("globalsecret"), None);
        assert_eq!(Kind::from_plural("global-secrets"), None);
        assert!(!Kind::GlobalSecret.is_mesh_scoped());
    }
}
