//! `MeshOpenTelemetryBackend`: one collector endpoint plus the policy for
//! reusing the sidecar's `OTEL_EXPORTER_OTLP_*` variables (seed 000, "All options").

use super::validate_address;
use crate::violation::{must_be_one_of, FieldPath, Violations};
use serde::{Deserialize, Serialize};

/// Port the control plane assumes when a backend leaves `endpoint.port` out.
pub const DEFAULT_OTLP_PORT: u16 = 4317;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshOpenTelemetryBackendSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// `grpc` or `http`; kept as text so a wrong value gets Kuma's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvPolicy>,
    /// Tern extension: how long one export may take (a Go duration),
    /// merged with `OTEL_EXPORTER_OTLP_TIMEOUT` under `env.precedence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Tern extension: how the data plane retries a failed export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Tern extension: the data plane's queue per signal for this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueuePolicy>,
    /// Tern extension: TLS to the collector, with files on the data-plane host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
    /// Tern extension: headers sent with every export; values literal, or
    /// read on the data-plane host from a variable or a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<BackendHeader>>,
}

/// `Disabled` (plain text), `System` (the host's trust roots) or `Provided`
/// (`caFile`, and `certFile` with `keyFile` for mTLS). Paths name files on
/// the data-plane host; only `tern-dp` reads them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendHeader {
    #[serde(default)]
    pub name: String,
    /// A literal value: for headers that are not secret (it is stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<HeaderValueFrom>,
}

/// Where `tern-dp` reads a header's value on the data-plane host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValueFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

const TLS_MODES: &[&str] = &["Disabled", "System", "Provided"];

/// Exponential backoff between tries (with jitter); a batch still failing
/// after `maxElapsedTime` is dropped and counted (`0` or unset: never).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_backoff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_elapsed_time: Option<String>,
}

/// Bounds of the data plane's queue for each signal of the backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueuePolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<i64>,
}

/// The largest queue a backend may ask for, per signal.
pub const MAX_QUEUE_REQUESTS: i64 = 1_000_000;
pub const MAX_QUEUE_BYTES: i64 = 4 << 30;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Wide enough to hold out-of-range input, which validation then names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precedence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_signal_overrides: Option<bool>,
}

/// Transport between the data plane and the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Grpc,
    Http,
}

/// Whether `OTEL_EXPORTER_OTLP_*` variables take part in the merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum EnvMode {
    Disabled,
    Optional,
    Required,
}

/// Which source wins when both an explicit field and a variable are present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Precedence {
    ExplicitFirst,
    EnvFirst,
}

/// The env policy with seed 000's defaults applied
/// (`Optional`, `EnvFirst`, `allowSignalOverrides: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct EffectiveEnvPolicy {
    pub mode: EnvMode,
    pub precedence: Precedence,
    pub allow_signal_overrides: bool,
}

const PROTOCOLS: &[&str] = &["grpc", "http"];
const MODES: &[&str] = &["Disabled", "Optional", "Required"];
const PRECEDENCES: &[&str] = &["ExplicitFirst", "EnvFirst"];

impl MeshOpenTelemetryBackendSpec {
    /// The protocol, `grpc` when omitted. Call only on a validated spec.
    pub fn protocol(&self) -> Protocol {
        match self.protocol.as_deref() {
            Some("http") => Protocol::Http,
            _ => Protocol::Grpc,
        }
    }

    /// The port, 4317 when omitted (for both protocols, as Kuma does).
    pub fn port(&self) -> u16 {
        self.endpoint.as_ref().and_then(|e| e.port).and_then(|p| u16::try_from(p).ok()).unwrap_or(DEFAULT_OTLP_PORT)
    }

    /// The explicit address, if the backend names one.
    pub fn address(&self) -> Option<&str> {
        self.endpoint.as_ref().and_then(|e| e.address.as_deref())
    }

    /// The HTTP base path, empty when omitted.
    pub fn path(&self) -> &str {
        self.endpoint.as_ref().and_then(|e| e.path.as_deref()).unwrap_or("")
    }

    /// The env policy with defaults filled in. Call only on a validated spec.
    pub fn env_policy(&self) -> EffectiveEnvPolicy {
        let env = self.env.clone().unwrap_or_default();
        EffectiveEnvPolicy {
            mode: match env.mode.as_deref() {
                Some("Disabled") => EnvMode::Disabled,
                Some("Required") => EnvMode::Required,
                _ => EnvMode::Optional,
            },
            precedence: match env.precedence.as_deref() {
                Some("ExplicitFirst") => Precedence::ExplicitFirst,
                _ => Precedence::EnvFirst,
            },
            allow_signal_overrides: env.allow_signal_overrides.unwrap_or(true),
        }
    }

    /// Kuma's validator, in Kuma's order: endpoint (address, port, path),
    /// then protocol, then env.
    pub fn validate(&self) -> Violations {
        let mut v = Violations::default();
        let spec = FieldPath::root("spec");
        if let Some(endpoint) = &self.endpoint {
            let at = spec.field("endpoint");
            if let Some(address) = &endpoint.address {
                validate_address(&mut v, &at.field("address"), address);
            }
            if let Some(port) = endpoint.port {
                if !(1..=65535).contains(&port) {
                    v.add(&at.field("port"), "port must be a valid (1-65535)");
                }
            }
            if let Some(path) = endpoint.path.as_deref().filter(|p| !p.is_empty()) {
                let path_at = at.field("path");
                if matches!(self.protocol.as_deref(), None | Some("grpc")) {
                    v.add(&path_at, "must not be set when protocol is grpc");
                } else {
                    if !path.starts_with('/') {
                        v.add(&path_at, "must start with /");
                    }
                    if path.contains(['?', '#']) {
                        v.add(&path_at, "must not contain query or fragment");
                    }
                }
            }
        }
        if let Some(protocol) = &self.protocol {
            if !PROTOCOLS.contains(&protocol.as_str()) {
                v.add(&spec.field("protocol"), must_be_one_of("protocol", PROTOCOLS));
            }
        }
        self.validate_delivery(&mut v, &spec);
        self.validate_secrets(&mut v, &spec);
        if let Some(env) = &self.env {
            let at = spec.field("env");
            if let Some(mode) = env.mode.as_deref().filter(|m| !m.is_empty()) {
                if !MODES.contains(&mode) {
                    v.add(&at.field("mode"), must_be_one_of("mode", MODES));
                }
            }
            if let Some(p) = env.precedence.as_deref().filter(|p| !p.is_empty()) {
                if !PRECEDENCES.contains(&p) {
                    v.add(&at.field("precedence"), must_be_one_of("precedence", PRECEDENCES));
                }
            }
        }
        v
    }
}

impl MeshOpenTelemetryBackendSpec {
    /// Tern's rules for `tls` and `headers`.
    fn validate_secrets(&self, v: &mut Violations, spec: &FieldPath) {
        let absolute = |v: &mut Violations, at: &FieldPath, path: &str| {
            if !path.starts_with('/') || path.contains('\0') {
                v.add(at, "must be an absolute path");
            }
        };
        if let Some(tls) = &self.tls {
            let at = spec.field("tls");
            let mode = tls.mode.as_deref().unwrap_or(if tls.ca_file.is_some() || tls.cert_file.is_some() {
                "Provided"
            } else {
                "System"
            });
            if !TLS_MODES.contains(&mode) {
                v.add(&at.field("mode"), must_be_one_of("mode", TLS_MODES));
            }
            for (field, path) in [("caFile", &tls.ca_file), ("certFile", &tls.cert_file), ("keyFile", &tls.key_file)] {
                let Some(path) = path else { continue };
                if mode != "Provided" {
                    v.add(&at.field(field), format!("must not be set when mode is {mode}"));
                } else {
                    absolute(v, &at.field(field), path);
                }
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => v.add(&at.field("keyFile"), "must be set with certFile"),
                (None, Some(_)) => v.add(&at.field("certFile"), "must be set with keyFile"),
                _ => {}
            }
            if mode == "Provided" && tls.ca_file.is_none() && tls.cert_file.is_none() && tls.key_file.is_none() {
                v.add(&at, "mode Provided needs caFile, or certFile and keyFile");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, h) in self.headers.iter().flatten().enumerate() {
            let at = spec.field("headers").index(i);
            if h.name.is_empty() {
                v.add(&at.field("name"), "must be defined");
            } else if !h.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
                v.add(&at.field("name"), "must be a valid HTTP header name");
            } else if !seen.insert(h.name.to_ascii_lowercase()) {
                v.add(&at.field("name"), format!("{:?} is already defined", h.name));
            }
            match (&h.value, &h.value_from) {
                (Some(_), Some(_)) | (None, None) => v.add(&at, "must have exactly one defined: value, valueFrom"),
                (Some(value), None) if value.contains(['\r', '\n']) => {
                    v.add(&at.field("value"), "must not contain line breaks")
                }
                (_, Some(from)) => {
                    let f_at = at.field("valueFrom");
                    match (&from.env, &from.file) {
                        (Some(name), None) => {
                            let ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                            if !ok {
                                v.add(&f_at.field("env"), "must be a valid environment variable name");
                            }
                        }
                        (None, Some(path)) => absolute(v, &f_at.field("file"), path),
                        _ => v.add(&f_at, "must have exactly one defined: env, file"),
                    }
                }
                _ => {}
            }
        }
    }

    /// Tern's rules for `timeout`, `retry` and `queue`.
    fn validate_delivery(&self, v: &mut Violations, spec: &FieldPath) {
        let positive =
            |v: &mut Violations, at: &FieldPath, text: &str, zero_ok: bool| match super::duration::parse_go_duration(
                text,
            ) {
                Ok(d) if d.is_zero() && !zero_ok => {
                    v.add(at, "must be greater than 0");
                    None
                }
                Ok(d) => Some(d),
                Err(message) => {
                    v.add(at, message);
                    None
                }
            };
        if let Some(timeout) = &self.timeout {
            positive(v, &spec.field("timeout"), timeout, false);
        }
        if let Some(retry) = &self.retry {
            let at = spec.field("retry");
            let initial =
                retry.initial_backoff.as_deref().and_then(|t| positive(v, &at.field("initialBackoff"), t, false));
            let max = retry.max_backoff.as_deref().and_then(|t| positive(v, &at.field("maxBackoff"), t, false));
            if let Some(t) = &retry.max_elapsed_time {
                positive(v, &at.field("maxElapsedTime"), t, true);
            }
            if let (Some(initial), Some(max)) = (initial, max) {
                if initial > max {
                    v.add(&at.field("initialBackoff"), "must not be greater than maxBackoff");
                }
            }
        }
        if let Some(queue) = &self.queue {
            let at = spec.field("queue");
            if queue.max_requests.is_some_and(|n| !(1..=MAX_QUEUE_REQUESTS).contains(&n)) {
                v.add(&at.field("maxRequests"), format!("must be between 1 and {MAX_QUEUE_REQUESTS}"));
            }
            if queue.max_bytes.is_some_and(|n| !(1024..=MAX_QUEUE_BYTES).contains(&n)) {
                v.add(&at.field("maxBytes"), format!("must be between 1024 and {MAX_QUEUE_BYTES}"));
            }
        }
    }
}

/// `status` of a backend: conditions written by the control plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshOpenTelemetryBackendStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A Kubernetes-style condition (`type`, `status`, `reason`, `message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
}
