//! Discovery: the nine `OTEL_EXPORTER_OTLP_*` fields, for the shared layer and
//! the three signal layers, read through an injectable [`EnvSource`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Where variables come from. Tests pass a map; the data plane passes the
/// process environment.
pub trait EnvSource {
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

impl EnvSource for std::collections::HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// A telemetry signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// The signal's own layer of variables.
    pub fn layer(self) -> Layer {
        match self {
            Signal::Traces => Layer::Traces,
            Signal::Metrics => Layer::Metrics,
            Signal::Logs => Layer::Logs,
        }
    }

    /// The path OTLP/HTTP uses for the signal (`/v1/traces`).
    pub fn http_suffix(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A layer of variables: the shared one or one signal's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Shared,
    Traces,
    Metrics,
    Logs,
}

impl Layer {
    pub const ALL: [Layer; 4] = [Layer::Shared, Layer::Traces, Layer::Metrics, Layer::Logs];

    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Shared => "shared",
            Layer::Traces => "traces",
            Layer::Metrics => "metrics",
            Layer::Logs => "logs",
        }
    }

    /// `OTEL_EXPORTER_OTLP` or `OTEL_EXPORTER_OTLP_TRACES` and so on.
    pub fn prefix(self) -> &'static str {
        match self {
            Layer::Shared => "OTEL_EXPORTER_OTLP",
            Layer::Traces => "OTEL_EXPORTER_OTLP_TRACES",
            Layer::Metrics => "OTEL_EXPORTER_OTLP_METRICS",
            Layer::Logs => "OTEL_EXPORTER_OTLP_LOGS",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One of the nine OTLP exporter settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Endpoint,
    Protocol,
    Headers,
    Insecure,
    Timeout,
    Compression,
    Certificate,
    ClientKey,
    ClientCertificate,
}

impl Field {
    pub const ALL: [Field; 9] = [
        Field::Endpoint,
        Field::Protocol,
        Field::Headers,
        Field::Insecure,
        Field::Timeout,
        Field::Compression,
        Field::Certificate,
        Field::ClientKey,
        Field::ClientCertificate,
    ];

    /// The variable suffix (`ENDPOINT`, `CLIENT_KEY`).
    pub fn suffix(self) -> &'static str {
        match self {
            Field::Endpoint => "ENDPOINT",
            Field::Protocol => "PROTOCOL",
            Field::Headers => "HEADERS",
            Field::Insecure => "INSECURE",
            Field::Timeout => "TIMEOUT",
            Field::Compression => "COMPRESSION",
            Field::Certificate => "CERTIFICATE",
            Field::ClientKey => "CLIENT_KEY",
            Field::ClientCertificate => "CLIENT_CERTIFICATE",
        }
    }

    /// The name status and inventory use (`client_key`).
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Endpoint => "endpoint",
            Field::Protocol => "protocol",
            Field::Headers => "headers",
            Field::Insecure => "insecure",
            Field::Timeout => "timeout",
            Field::Compression => "compression",
            Field::Certificate => "certificate",
            Field::ClientKey => "client_key",
            Field::ClientCertificate => "client_certificate",
        }
    }

    /// The full variable name for a layer.
    pub fn var_name(self, layer: Layer) -> String {
        format!("{}_{}", layer.prefix(), self.suffix())
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Set by Kubernetes in every container; tells the sidecar where it runs.
pub const KUBERNETES_MARKER: &str = "KUBERNETES_SERVICE_HOST";
/// The node's IP, injected through the Downward API on Kubernetes.
pub const HOST_IP: &str = "HOST_IP";

/// Raw values read from the environment. Holds secrets: it never leaves the
/// data plane (see [`crate::inventory`] for what does).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EnvValues {
    /// Trimmed, non-empty values by layer and field.
    pub values: BTreeMap<(Layer, Field), String>,
    /// The sidecar runs on Kubernetes.
    pub on_kubernetes: bool,
    /// The node IP for the node-local collector, if the Downward API gave
    /// one. Anything but an IP address counts as absent, so the exporter
    /// never dials text it could not have been given by Kubernetes (and, on
    /// Kubernetes, the status says the endpoint is missing).
    pub host_ip: Option<String>,
}

impl fmt::Debug for EnvValues {
    /// Names only: values may be secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self.values.keys().map(|(l, field)| field.var_name(*l)).collect();
        f.debug_struct("EnvValues")
            .field("present", &keys)
            .field("on_kubernetes", &self.on_kubernetes)
            .field("host_ip_present", &self.host_ip.is_some())
            .finish()
    }
}

impl EnvValues {
    /// Reads every recognised variable. Empty or blank values count as absent.
    pub fn discover(source: &dyn EnvSource) -> EnvValues {
        let mut values = BTreeMap::new();
        for layer in Layer::ALL {
            for field in Field::ALL {
                if let Some(v) = source.var(&field.var_name(layer)) {
                    let v = v.trim();
                    if !v.is_empty() {
                        values.insert((layer, field), v.to_string());
                    }
                }
            }
        }
        let present = |k: &str| source.var(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let host_ip = present(HOST_IP).filter(|v| v.parse::<std::net::IpAddr>().is_ok());
        EnvValues { values, on_kubernetes: present(KUBERNETES_MARKER).is_some(), host_ip }
    }

    pub fn get(&self, layer: Layer, field: Field) -> Option<&str> {
        self.values.get(&(layer, field)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discover(pairs: &[(&str, &str)]) -> EnvValues {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        EnvValues::discover(&map)
    }

    #[test]
    fn host_ip_must_be_an_ip_address() {
        assert_eq!(discover(&[(HOST_IP, " 10.0.0.12 ")]).host_ip.as_deref(), Some("10.0.0.12"));
        assert_eq!(discover(&[(HOST_IP, "fd00::12")]).host_ip.as_deref(), Some("fd00::12"));
        for bad in ["node-1", "10.0.0.12:4317", "[fd00::12]", "h\u{e9}", " "] {
            assert_eq!(discover(&[(HOST_IP, bad)]).host_ip, None, "{bad:?}");
        }
    }
}
