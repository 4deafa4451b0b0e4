//! The merge: for one backend and one signal, which source supplies each OTLP
//! field, which reasons block environment input, and the resulting state.
//! Seed 000's rules, written once. The control plane calls it to compute
//! status; the data plane calls it to pick the values for its exporters.

use crate::env::{Field, Layer, Signal};
use crate::inventory::Inventory;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tern_model::spec::motb::{EffectiveEnvPolicy, EnvMode, MeshOpenTelemetryBackendSpec, Precedence, Protocol};

/// What a MeshOpenTelemetryBackend says explicitly, and its env policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    pub env_policy: EffectiveEnvPolicy,
    /// `timeout` in milliseconds: the explicit source of the timeout field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How the data plane delivers to this backend (`retry`, `queue`).
    #[serde(default, skip_serializing_if = "Delivery::is_default")]
    pub delivery: Delivery,
    /// The backend's `tls`: the explicit source of TLS, CA and client pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    /// The backend's `headers`: the explicit source of the headers field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderSetting>,
}

/// A backend's `tls`, paths on the data-plane host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsSettings {
    /// `mode` is not `Disabled`.
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl BackendSettings {
    /// The inputs this backend reads on the data-plane host that are not
    /// there (a header's variable unset or file unreadable, a TLS file
    /// unreadable), named as `missingFields` names them.
    pub fn missing_host_inputs(&self, env: &dyn crate::EnvSource, readable: &dyn Fn(&Path) -> bool) -> Vec<String> {
        let mut missing = Vec::new();
        for h in &self.headers {
            let there = match &h.from {
                HeaderSource::Value(_) => true,
                HeaderSource::Env(name) => env.var(name).is_some(),
                HeaderSource::File(path) => readable(path),
            };
            if !there {
                missing.push(format!("headers.{}", h.name));
            }
        }
        if let Some(tls) = &self.tls {
            let files =
                [("tls.caFile", &tls.ca_file), ("tls.certFile", &tls.cert_file), ("tls.keyFile", &tls.key_file)];
            for (field, path) in files {
                if path.as_deref().is_some_and(|p| !readable(p)) {
                    missing.push(field.to_string());
                }
            }
        }
        missing
    }
}

impl TlsSettings {
    pub fn client_pair(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.cert_file.clone()?, self.key_file.clone()?))
    }
}

/// One of a backend's `headers`: where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderSetting {
    pub name: String,
    pub from: HeaderSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderSource {
    /// A literal, non-secret value.
    Value(String),
    /// A variable of the data plane's environment (its name).
    Env(String),
    /// A file on the data-plane host.
    File(PathBuf),
}

/// A backend's `retry` and `queue`, what the data plane's pipe does with a
/// batch that fails and how much it holds; unset parts keep the data
/// plane's own defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_backoff_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
    /// `0`: retry until delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_elapsed_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_requests: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bytes: Option<usize>,
}

impl Delivery {
    pub fn is_default(&self) -> bool {
        *self == Delivery::default()
    }
}

impl BackendSettings {
    /// Reads a validated backend spec.
    pub fn from_spec(spec: &MeshOpenTelemetryBackendSpec) -> BackendSettings {
        let endpoint = spec.endpoint.clone().unwrap_or_default();
        let ms = |text: &Option<String>| {
            let d = tern_model::spec::duration::parse_go_duration(text.as_deref()?).ok()?;
            Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let retry = spec.retry.clone().unwrap_or_default();
        let queue = spec.queue.clone().unwrap_or_default();
        BackendSettings {
            address: endpoint.address,
            port: endpoint.port.and_then(|p| u16::try_from(p).ok()),
            path: endpoint.path.filter(|p| !p.is_empty()),
            protocol: spec.protocol.as_ref().map(|_| spec.protocol()),
            env_policy: spec.env_policy(),
            timeout_ms: ms(&spec.timeout),
            tls: spec.tls.as_ref().map(|t| TlsSettings {
                enabled: t.mode.as_deref() != Some("Disabled"),
                ca_file: t.ca_file.as_ref().map(PathBuf::from),
                cert_file: t.cert_file.as_ref().map(PathBuf::from),
                key_file: t.key_file.as_ref().map(PathBuf::from),
            }),
            headers: spec.headers.iter().flatten().filter_map(header_setting).collect(),
            delivery: Delivery {
                initial_backoff_ms: ms(&retry.initial_backoff),
                max_backoff_ms: ms(&retry.max_backoff),
                max_elapsed_ms: ms(&retry.max_elapsed_time),
                queue_requests: queue.max_requests.and_then(|n| usize::try_from(n).ok()),
                queue_bytes: queue.max_bytes.and_then(|n| usize::try_from(n).ok()),
            },
        }
    }
}

fn header_setting(h: &tern_model::spec::motb::BackendHeader) -> Option<HeaderSetting> {
    let from = match (&h.value, &h.value_from) {
        (Some(v), _) => HeaderSource::Value(v.clone()),
        (None, Some(f)) => match (&f.env, &f.file) {
            (Some(env), _) => HeaderSource::Env(env.clone()),
            (None, Some(file)) => HeaderSource::File(PathBuf::from(file)),
            (None, None) => return None,
        },
        (None, None) => return None,
    };
    Some(HeaderSetting { name: h.name.to_ascii_lowercase(), from })
}

/// Where a field's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_*`.
    SignalEnv,
    /// `OTEL_EXPORTER_OTLP_*`.
    SharedEnv,
    /// The MeshOpenTelemetryBackend.
    Explicit,
    /// Built-in default (for the endpoint: the node-local collector).
    Default,
}

/// Why environment input was ignored or the signal blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BlockedReason {
    EnvDisabledByPolicy,
    RequiredEnvMissing,
    SignalOverridesDisallowed,
    MultipleBackendsForSignal,
}

impl BlockedReason {
    /// Hard blocks take the signal out of `ready`; soft ones only mean env
    /// input was ignored.
    pub fn is_hard(self) -> bool {
        matches!(self, BlockedReason::RequiredEnvMissing | BlockedReason::MultipleBackendsForSignal)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ready,
    Blocked,
    Missing,
    Ambiguous,
}

/// The merge's verdict for one backend and one signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalResolution {
    pub signal: Signal,
    pub state: State,
    pub env_allowed: bool,
    pub env_input_present: bool,
    pub override_kinds: Vec<Field>,
    /// `missingFields` names (`endpoint`, `client_certificate`, ...).
    pub missing_fields: Vec<String>,
    pub blocked_reasons: Vec<BlockedReason>,
    /// Where each field comes from; empty when nothing is exported.
    pub sources: BTreeMap<Field, Source>,
    /// Whether the data plane exports this signal at all.
    pub exports: bool,
}

impl SignalResolution {
    /// Host inputs the data plane lacks are missing fields, and nothing is
    /// exported without them: a backend whose env mode is `Required` is
    /// blocked (`RequiredEnvMissing`), any other is `missing`.
    pub fn lacks_host_inputs(&mut self, missing: &[String], mode: EnvMode) {
        if missing.is_empty() {
            return;
        }
        for field in missing {
            if !self.missing_fields.contains(field) {
                self.missing_fields.push(field.clone());
            }
        }
        if mode == EnvMode::Required && !self.blocked_reasons.contains(&BlockedReason::RequiredEnvMissing) {
            self.blocked_reasons.push(BlockedReason::RequiredEnvMissing);
        }
        if self.state == State::Ready {
            self.state = if mode == EnvMode::Required { State::Blocked } else { State::Missing };
        }
        self.exports = false;
        self.sources.clear();
    }
}

/// Whether this backend takes env input for `signal`: env allowed by its
/// policy and env input present. Two such backends on one dataplane for the
/// same signal are ambiguous.
pub fn takes_env_input(backend: &BackendSettings, signal: Signal, env: &Inventory) -> bool {
    backend.env_policy.mode != EnvMode::Disabled && env_input_present(signal, env)
}

fn env_input_present(signal: Signal, env: &Inventory) -> bool {
    env.has_input(Layer::Shared) || env.has_input(signal.layer())
}

/// Resolves one signal of one backend. `ambiguous` says another backend on
/// the same dataplane also takes env input for this signal (see
/// [`resolve_backends`], which works it out).
pub fn resolve_signal(backend: &BackendSettings, signal: Signal, env: &Inventory, ambiguous: bool) -> SignalResolution {
    let policy = backend.env_policy;
    let present = env_input_present(signal, env);
    let overrides = env.override_kinds(signal).to_vec();
    let mut reasons = Vec::new();
    let mut missing = Vec::new();
    if policy.mode == EnvMode::Disabled && present {
        reasons.push(BlockedReason::EnvDisabledByPolicy);
    }
    let signal_layer_allowed = policy.allow_signal_overrides;
    if policy.mode == EnvMode::Required && !ambiguous {
        // The layers this backend may read: shared, and the signal's own when allowed.
        let layers: Vec<Layer> =
            std::iter::once(Layer::Shared).chain(signal_layer_allowed.then_some(signal.layer())).collect();
        let usable_input = layers.iter().any(|l| env.has_input(*l));
        for l in &layers {
            for f in &env.layer(*l).invalid {
                if !missing.contains(&f.as_str().to_string()) {
                    missing.push(f.as_str().to_string());
                }
            }
        }
        if !usable_input || !missing.is_empty() {
            reasons.push(BlockedReason::RequiredEnvMissing);
        }
    }
    if !overrides.is_empty() && !signal_layer_allowed {
        reasons.push(BlockedReason::SignalOverridesDisallowed);
    }
    if ambiguous {
        reasons.push(BlockedReason::MultipleBackendsForSignal);
    }

    let env_usable = policy.mode != EnvMode::Disabled && !ambiguous;
    let pick = |field: Field| {
        pick_source(backend, signal, env, field, env_usable, env_usable && signal_layer_allowed, !ambiguous)
    };
    let mut sources = BTreeMap::new();
    for field in Field::ALL {
        if let Some(source) = pick(field) {
            sources.insert(field, source);
        }
    }
    let has_endpoint = sources.contains_key(&Field::Endpoint);
    let state = if ambiguous {
        State::Ambiguous
    } else if reasons.contains(&BlockedReason::RequiredEnvMissing) {
        State::Blocked
    } else if !has_endpoint {
        missing.push(Field::Endpoint.as_str().to_string());
        State::Missing
    } else {
        State::Ready
    };
    // Tern's reading of the ambiguity rule: with env input dropped, export
    // continues only on an explicit address (never the node-local guess),
    // and not at all when the backend requires env input.
    let exports = match state {
        State::Ready => true,
        State::Ambiguous => backend.address.is_some() && policy.mode != EnvMode::Required,
        State::Blocked | State::Missing => false,
    };
    if !exports {
        sources.clear();
    }
    SignalResolution {
        signal,
        state,
        env_allowed: policy.mode != EnvMode::Disabled,
        env_input_present: present,
        override_kinds: overrides,
        missing_fields: missing,
        blocked_reasons: reasons,
        sources,
        exports,
    }
}

/// The first source that supplies `field`, in the order the backend's
/// precedence gives: EnvFirst is signal env, shared env, explicit, default;
/// ExplicitFirst moves explicit to the front.
fn pick_source(
    backend: &BackendSettings,
    signal: Signal,
    env: &Inventory,
    field: Field,
    shared_allowed: bool,
    signal_allowed: bool,
    default_allowed: bool,
) -> Option<Source> {
    let order: [Source; 4] = match backend.env_policy.precedence {
        Precedence::EnvFirst => [Source::SignalEnv, Source::SharedEnv, Source::Explicit, Source::Default],
        Precedence::ExplicitFirst => [Source::Explicit, Source::SignalEnv, Source::SharedEnv, Source::Default],
    };
    order.into_iter().find(|source| match source {
        Source::SignalEnv => signal_allowed && env.usable(signal.layer(), field),
        Source::SharedEnv => shared_allowed && env.usable(Layer::Shared, field),
        Source::Explicit => match field {
            Field::Endpoint => backend.address.is_some(),
            Field::Protocol => backend.protocol.is_some(),
            Field::Timeout => backend.timeout_ms.is_some(),
            Field::Insecure => backend.tls.is_some(),
            Field::Certificate => backend.tls.as_ref().is_some_and(|t| t.ca_file.is_some()),
            Field::ClientCertificate | Field::ClientKey => {
                backend.tls.as_ref().is_some_and(|t| t.client_pair().is_some())
            }
            Field::Headers => !backend.headers.is_empty(),
            _ => false,
        },
        Source::Default => match field {
            // The node-local collector counts only where the data plane can
            // name its address: 127.0.0.1 off Kubernetes, HOST_IP on it.
            Field::Endpoint => default_allowed && (!env.kubernetes || env.host_ip_present),
            Field::Protocol | Field::Timeout | Field::Compression => true,
            _ => false,
        },
    })
}

/// One backend as a dataplane sees it: settings and the signals policies ask for.
#[derive(Debug, Clone)]
pub struct BackendUse<'a> {
    pub name: &'a str,
    pub settings: &'a BackendSettings,
    pub signals: &'a [Signal],
}

/// Resolves every signal of every backend on one dataplane, applying the
/// ambiguity rule (when more than one backend takes env input for a signal,
/// each of those is ambiguous for it) and the host inputs the data plane
/// reported missing.
pub fn resolve_backends(uses: &[BackendUse<'_>], env: &Inventory) -> Vec<Vec<SignalResolution>> {
    let competing = |signal: Signal| {
        uses.iter().filter(|u| u.signals.contains(&signal) && takes_env_input(u.settings, signal, env)).count()
    };
    uses.iter()
        .map(|u| {
            u.signals
                .iter()
                .map(|s| {
                    let ambiguous = competing(*s) > 1 && takes_env_input(u.settings, *s, env);
                    let mut r = resolve_signal(u.settings, *s, env, ambiguous);
                    if let Some(missing) = env.missing_host_inputs.get(u.name) {
                        r.lacks_host_inputs(missing, u.settings.env_policy.mode);
                    }
                    r
                })
                .collect()
        })
        .collect()
}
