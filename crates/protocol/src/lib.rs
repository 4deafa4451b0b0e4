//! The messages that cross a process boundary between `tern-dp`, the
//! control plane's data-plane server and `ternctl`, as Rust types both sides
//! compile against. JSON on the wire, camelCase field names.
//!
//! Nothing here holds a configuration value from the data plane's
//! environment: the inventory carries key presence only, delivery reports
//! carry names and numbers, and error texts are bounded and checked by
//! [`DeliveryReport::check`] before the control plane keeps them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tern_otlp_config::{Inventory, OtelPlan, Signal};

/// The HTTP header, and the gRPC metadata key, that carries a data-plane token.
pub const AUTHORIZATION: &str = "authorization";

/// What `tern-dp` sends when it starts (`POST /bootstrap`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapRequest {
    /// The Dataplane resource (Universal or Kubernetes form), to create or
    /// update. A document, checked by the model's validator on arrival.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<serde_json::Value>,
    /// Or the mesh and name of a Dataplane already stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `tern-dp`'s version.
    pub version: String,
    #[serde(default)]
    pub features: Vec<String>,
    /// Where `tern-dp` opens its sockets; Envoy's pipe clusters point there.
    pub work_dir: String,
    /// Key presence only; refused when it carries anything else.
    #[serde(default)]
    pub otel_env: Inventory,
}

/// The data-plane server's answer to a bootstrap.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapResponse {
    pub mesh: String,
    pub name: String,
    /// Where to long-poll for the plan.
    pub plan_path: String,
    /// The Dataplane as stored (Universal form), for a data plane that
    /// registered by mesh and name (on Kubernetes, made from its Pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<serde_json::Value>,
}

/// A delivered plan (`GET /otel/{mesh}/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanResponse {
    pub version: u64,
    pub plan: OtelPlan,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What a data plane reports about delivery (`POST /delivery/{mesh}/{name}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryReport {
    pub backends: Vec<BackendDelivery>,
}

/// Delivery of one backend's pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendDelivery {
    pub name: String,
    pub signals: BTreeMap<Signal, SignalDelivery>,
}

/// Counts of one signal of one backend since `tern-dp` started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignalDelivery {
    /// Whether an exporter runs for it.
    pub exporting: bool,
    /// Why it does not export, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    pub received: u64,
    pub exported: u64,
    pub retries: u64,
    pub dropped: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Requests waiting or being sent now, and their bytes.
    pub queued_requests: u64,
    pub queued_bytes: u64,
}

/// Most backends a delivery report may list (a plan has a handful).
pub const MAX_REPORTED_BACKENDS: usize = 64;
/// Longest backend name or error text a delivery report may carry, in characters.
pub const MAX_REPORTED_TEXT: usize = 1024;

impl DeliveryReport {
    /// Checks the bounds the control plane holds reports to; the error names
    /// the field and the rule.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.backends.len() > MAX_REPORTED_BACKENDS {
            return Err(("backends".into(), format!("must list at most {MAX_REPORTED_BACKENDS} backends")));
        }
        for (i, b) in self.backends.iter().enumerate() {
            let texts =
                std::iter::once(("name".to_string(), Some(&b.name))).chain(b.signals.iter().flat_map(|(signal, s)| {
                    [
                        (format!("signals.{signal}.unavailable"), s.unavailable.as_ref()),
                        (format!("signals.{signal}.lastError"), s.last_error.as_ref()),
                    ]
                }));
            for (field, text) in texts {
                if text.is_some_and(|t| t.chars().count() > MAX_REPORTED_TEXT) {
                    return Err((
                        format!("backends[{i}].{field}"),
                        format!("must be at most {MAX_REPORTED_TEXT} characters"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Live facts about one dataplane that are not resources
/// (`GET /meshes/{mesh}/dataplanes/{name}/_runtime`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeView {
    /// What the data plane last reported, and when (RFC 3339).
    #[serde(default)]
    pub delivery: Option<DeliveryReport>,
    #[serde(default)]
    pub delivery_reported_at: Option<String>,
    /// The control-plane replica the report went to (with several replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_replica: Option<String>,
    #[serde(default)]
    pub xds: XdsView,
}

/// What the dataplane's Envoy did with its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsView {
    #[serde(default)]
    pub acked_version: Option<String>,
    #[serde(default)]
    pub nack: Option<XdsNack>,
    /// When the ACK/NACK state last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
    /// The control-plane replica holding the ADS stream (with several
    /// replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// A configuration Envoy refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsNack {
    pub type_url: String,
    pub version: String,
    pub message: String,
}

/// `POST /tokens/dataplane`: a token for one data plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneTokenRequest {
    pub mesh: String,
    pub name: String,
    /// Tags every inbound of the data plane must carry (Kuma's `--tag`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// How long the token is valid, as a Go duration (`24h`, `90m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for: Option<String>,
}

/// `POST /tokens/zone` (on the global control plane): a token that admits
/// one zone control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneTokenRequest {
    pub zone: String,
    /// How long the token is valid, as a Go duration (`24h`, `8760h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for: Option<String>,
}

/// The spec of a ZoneInsight, written by the global control plane: one entry
/// per sync connection of the zone (the last ten), as Kuma's `subscriptions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneInsightSpec {
    #[serde(default)]
    pub subscriptions: Vec<KdsSubscription>,
    /// The zone's last health check (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_time: Option<String>,
}

impl ZoneInsightSpec {
    /// Kuma's rule: online while the newest connection has not ended.
    pub fn is_online(&self) -> bool {
        self.subscriptions.last().is_some_and(|s| s.disconnect_time.is_none())
    }
}

/// One sync connection of a zone (Kuma's `KDSSubscription`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KdsSubscription {
    pub id: String,
    pub global_instance_id: String,
    pub zone_instance_id: String,
    /// RFC 3339.
    pub connect_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect_time: Option<String>,
    pub status: KdsStatus,
    /// The zone control plane's version.
    pub version: String,
    /// The zone's store (`sqlite`, `postgres`): kumactl's BACKEND column.
    #[serde(default)]
    pub backend: String,
    pub auth_token_provided: bool,
}

/// What went over one connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KdsStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<String>,
    /// Global to zone, all kinds: what the global sent and the zone
    /// acknowledged or rejected.
    pub total: KdsCounts,
    /// Global to zone, per kind.
    #[serde(default)]
    pub stat: BTreeMap<String, KdsCounts>,
    /// Zone to global: what the zone sent and the global applied or rejected.
    #[serde(default)]
    pub zone_to_global: KdsCounts,
    /// The last rejection (NACK) on either stream, as its receiver gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Responses of one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KdsCounts {
    pub responses_sent: u64,
    pub responses_acknowledged: u64,
    pub responses_rejected: u64,
    /// Encoded size of the responses sent.
    #[serde(default)]
    pub bytes: u64,
}

/// `POST /tokens/dataplane/revocations`: refuse a token from now on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRevocation {
    /// The token's id (its `jti` claim).
    pub id: String,
}

/// A signing key as the API lists it: its serial, never its material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyInfo {
    pub serial: u32,
    /// The key new tokens are signed with (the highest serial).
    pub active: bool,
}

/// One invalid field, as Kuma's `invalid_parameters[]` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvalidParameter {
    pub field: String,
    pub reason: String,
    /// Which document of a multi-document apply the field belongs to (Tern).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
}

/// The deprecated mirror of `invalid_parameters`, which Kuma always fills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cause {
    pub field: String,
    pub message: String,
}

/// Kuma's error body, what every 4xx and 5xx of the API and the data-plane
/// server carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: u16,
    pub title: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_parameters: Vec<InvalidParameter>,
    pub details: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, error: &str) -> DeliveryReport {
        let signal = SignalDelivery { last_error: Some(error.into()), ..Default::default() };
        DeliveryReport {
            backends: vec![BackendDelivery { name: name.into(), signals: [(Signal::Traces, signal)].into() }],
        }
    }

    #[test]
    fn reports_are_bounded() {
        assert!(report("main", "connection refused").check().is_ok());
        let (field, _) = report("main", &"x".repeat(MAX_REPORTED_TEXT + 1)).check().unwrap_err();
        assert_eq!(field, "backends[0].signals.traces.lastError");
        let (field, _) = report(&"n".repeat(MAX_REPORTED_TEXT + 1), "").check().unwrap_err();
        assert_eq!(field, "backends[0].name");
        let many = DeliveryReport { backends: vec![report("a", "").backends[0].clone(); MAX_REPORTED_BACKENDS + 1] };
        assert_eq!(many.check().unwrap_err().0, "backends");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = r#"{"backends":[],"extra":1}"#;
        assert!(serde_json::from_str::<DeliveryReport>(text).is_err());
    }
}
