//! The inventory `tern-dp` sends at bootstrap: which variables are present
//! and usable, per layer, and which are not and why. Never a value.
//!
//! The inventory is also the *only* view of the environment the merge reads
//! ([`crate::merge`]), on both sides: the control plane reads the one it
//! received, the data plane the one it computed from the same variables. So
//! the two cannot reach different conclusions about the same environment.

use crate::env::{EnvValues, Field, Layer, Signal};
use crate::parse::{ParsedEnv, Problem};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Presence and usability of one layer's variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LayerInventory {
    /// Variables set (non-blank) in this layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub present: Vec<Field>,
    /// Fields this layer cannot supply because a value is invalid, named as
    /// `missingFields` names them (an incomplete client pair names the
    /// missing half).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<Field>,
    /// Signal layers only: fields whose signal variable overrides the shared
    /// one (set here, and unset or different in the shared layer). Sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub override_kinds: Vec<Field>,
}

/// One problem, by scope (`traces.protocol`) and a fixed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InventoryProblem {
    pub scope: String,
    pub message: String,
}

/// What the data plane reports about its OTLP environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inventory {
    #[serde(default)]
    pub shared: LayerInventory,
    #[serde(default)]
    pub traces: LayerInventory,
    #[serde(default)]
    pub metrics: LayerInventory,
    #[serde(default)]
    pub logs: LayerInventory,
    /// Scopes of every problem (`shared.timeout`, `metrics.mtls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<InventoryProblem>,
    /// The sidecar runs on Kubernetes (`KUBERNETES_SERVICE_HOST` is set).
    #[serde(default)]
    pub kubernetes: bool,
    /// `HOST_IP` (the node-local collector's address on Kubernetes) is set.
    #[serde(default)]
    pub host_ip_present: bool,
    /// Per backend, the inputs its plan names that this host lacks (a
    /// header's variable or file, a TLS file), named as `missingFields`
    /// names them (`headers.x-api-key`, `tls.caFile`). Reported after a plan
    /// arrives; names only, never a path or a value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub missing_host_inputs: BTreeMap<String, Vec<String>>,
}

/// Bounds on what a received inventory may say about host inputs.
const MAX_HOST_INPUT_BACKENDS: usize = 256;
const MAX_HOST_INPUTS: usize = 64;
const MAX_NAME_LEN: usize = 253;

/// Whether `field` is a host input's name: `headers.<header name>` or one of
/// the TLS files.
fn is_host_input(field: &str) -> bool {
    match field.strip_prefix("headers.") {
        Some(header) => !header.is_empty() && header.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        None => ["tls.caFile", "tls.certFile", "tls.keyFile"].contains(&field),
    }
}

impl Inventory {
    /// Builds the inventory from discovered values and their parse.
    pub fn from_env(env: &EnvValues, parsed: &ParsedEnv) -> Inventory {
        let mut inv =
            Inventory { kubernetes: env.on_kubernetes, host_ip_present: env.host_ip.is_some(), ..Default::default() };
        for layer in Layer::ALL {
            let mut li = LayerInventory {
                present: Field::ALL.into_iter().filter(|f| env.get(layer, *f).is_some()).collect(),
                ..Default::default()
            };
            li.invalid = parsed.problems.iter().filter(|p| p.layer == layer).map(|p| p.field).collect();
            li.invalid.sort();
            li.invalid.dedup();
            if layer != Layer::Shared {
                li.override_kinds = Field::ALL
                    .into_iter()
                    .filter(|f| match (env.get(layer, *f), env.get(Layer::Shared, *f)) {
                        (Some(own), shared) => shared != Some(own),
                        (None, _) => false,
                    })
                    .collect();
                li.override_kinds.sort();
            }
            *inv.layer_mut(layer) = li;
        }
        inv.validation_errors = parsed.problems.iter().map(Problem::scope).collect();
        inv.problems =
            parsed.problems.iter().map(|p| InventoryProblem { scope: p.scope(), message: p.message.clone() }).collect();
        inv
    }

    /// Reads the process (or any) environment and builds the inventory.
    pub fn discover(source: &dyn crate::env::EnvSource) -> (EnvValues, ParsedEnv, Inventory) {
        let env = EnvValues::discover(source);
        let parsed = ParsedEnv::parse(&env);
        let inventory = Inventory::from_env(&env, &parsed);
        (env, parsed, inventory)
    }

    pub fn layer(&self, layer: Layer) -> &LayerInventory {
        match layer {
            Layer::Shared => &self.shared,
            Layer::Traces => &self.traces,
            Layer::Metrics => &self.metrics,
            Layer::Logs => &self.logs,
        }
    }

    fn layer_mut(&mut self, layer: Layer) -> &mut LayerInventory {
        match layer {
            Layer::Shared => &mut self.shared,
            Layer::Traces => &mut self.traces,
            Layer::Metrics => &mut self.metrics,
            Layer::Logs => &mut self.logs,
        }
    }

    /// Whether the layer has any variable set.
    pub fn has_input(&self, layer: Layer) -> bool {
        !self.layer(layer).present.is_empty()
    }

    /// Whether the layer supplies `field` with a usable value. The client
    /// certificate and key are usable only together.
    pub fn usable(&self, layer: Layer, field: Field) -> bool {
        let li = self.layer(layer);
        let ok = |f: Field| li.present.contains(&f) && !li.invalid.contains(&f);
        match field {
            Field::ClientKey | Field::ClientCertificate => ok(Field::ClientKey) && ok(Field::ClientCertificate),
            f => ok(f),
        }
    }

    /// Signal-specific fields that override the shared layer.
    pub fn override_kinds(&self, signal: Signal) -> &[Field] {
        &self.layer(signal.layer()).override_kinds
    }

    /// Checks an inventory received from a data plane: problem messages must
    /// be ones Tern writes, so no value can ride along in free text.
    pub fn check_received(&self) -> Result<(), String> {
        for p in &self.problems {
            if !crate::parse::KNOWN_MESSAGES.contains(&p.message.as_str()) {
                return Err(format!("inventory problem {:?} has a message Tern does not write", p.scope));
            }
        }
        for scope in self.validation_errors.iter().chain(self.problems.iter().map(|p| &p.scope)) {
            let ok = scope.split_once('.').is_some_and(|(layer, field)| {
                Layer::ALL.iter().any(|l| l.as_str() == layer)
                    && (field == "mtls" || Field::ALL.iter().any(|f| f.as_str() == field))
            });
            if !ok {
                return Err(format!("inventory validation error {scope:?} is not layer.field"));
            }
        }
        if self.missing_host_inputs.len() > MAX_HOST_INPUT_BACKENDS {
            return Err(format!("missingHostInputs: at most {MAX_HOST_INPUT_BACKENDS} backends"));
        }
        for (backend, fields) in &self.missing_host_inputs {
            if backend.is_empty() || backend.len() > MAX_NAME_LEN || fields.len() > MAX_HOST_INPUTS {
                return Err(format!("missingHostInputs: a backend name of 1 to {MAX_NAME_LEN} characters with at most {MAX_HOST_INPUTS} inputs"));
            }
            if let Some(f) = fields.iter().find(|f| f.len() > MAX_NAME_LEN || !is_host_input(f)) {
                return Err(format!(
                    "missingHostInputs: {f:?} is not headers.<name>, tls.caFile, tls.certFile or tls.keyFile"
                ));
            }
        }
        Ok(())
    }
}
