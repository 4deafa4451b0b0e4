//! Seed 001's per-signal status, as the control plane writes it into
//! `DataplaneInsight` and the plan carries it to the data plane.

use crate::env::Field;
use crate::merge::{BlockedReason, SignalResolution, State};
use serde::{Deserialize, Serialize};

/// `enabled`, `state`, `envAllowed`, `envInputPresent`, `overrideKinds`,
/// `missingFields`, `blockedReasons`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignalStatus {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// Absent when the signal is not enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_allowed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_input_present: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub override_kinds: Vec<Field>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_fields: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_reasons: Vec<BlockedReason>,
}

impl SignalStatus {
    /// The status of a signal no policy asks for.
    pub fn not_enabled() -> SignalStatus {
        SignalStatus {
            enabled: false,
            state: None,
            env_allowed: None,
            env_input_present: None,
            override_kinds: vec![],
            missing_fields: vec![],
            blocked_reasons: vec![],
        }
    }
}

impl From<&SignalResolution> for SignalStatus {
    fn from(r: &SignalResolution) -> SignalStatus {
        SignalStatus {
            enabled: true,
            state: Some(r.state),
            env_allowed: Some(r.env_allowed),
            env_input_present: Some(r.env_input_present),
            override_kinds: r.override_kinds.clone(),
            missing_fields: r.missing_fields.clone(),
            blocked_reasons: r.blocked_reasons.clone(),
        }
    }
}
