//! The final exporter configuration (data-plane side): the merge's sources
//! filled with the local values, per signal, each field with its source.

use crate::env::{Field, Layer, Signal};
use crate::merge::{BackendSettings, HeaderSource, SignalResolution, Source, TlsSettings};
use crate::parse::{Compression, LayerSettings, OtlpProtocol, ParsedEnv};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tern_model::spec::motb::{Protocol, DEFAULT_OTLP_PORT};
use url::Url;

/// The OTLP exporter timeout when nothing sets one (the OpenTelemetry default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The node-local collector's address off Kubernetes.
pub const NODE_LOCAL_ADDRESS: &str = "127.0.0.1";

/// A value and the layer it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

fn sourced<T>(value: T, source: Source) -> Sourced<T> {
    Sourced { value, source }
}

/// Everything an OTLP exporter for one signal needs. Holds secrets (headers,
/// key paths): print it only through [`ExporterConfig::redacted`].
#[derive(Clone, PartialEq, Eq)]
pub struct ExporterConfig {
    pub signal: Signal,
    pub protocol: Sourced<OtlpProtocol>,
    /// Full URL: `https://collector:4318/v1/traces`, `http://127.0.0.1:4317`.
    pub endpoint: Sourced<String>,
    pub tls: Sourced<bool>,
    pub headers: Option<Sourced<BTreeMap<String, String>>>,
    pub certificate: Option<Sourced<PathBuf>>,
    /// Client certificate and key, from one layer.
    pub client_pair: Option<Sourced<(PathBuf, PathBuf)>>,
    pub compression: Sourced<Compression>,
    pub timeout: Sourced<Duration>,
}

impl std::fmt::Debug for ExporterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExporterConfig({})", self.redacted())
    }
}

/// What two signals must share to use one client (connection).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    protocol: OtlpProtocol,
    origin: String,
    tls: bool,
    headers: Option<BTreeMap<String, String>>,
    certificate: Option<PathBuf>,
    client_pair: Option<(PathBuf, PathBuf)>,
    compression: Compression,
    timeout: Duration,
}

impl ExporterConfig {
    /// The connection-level settings: everything but the URL path.
    pub fn client_key(&self) -> ClientKey {
        // The endpoint was built from a parsed URL or a validated address,
        // so it parses; if it ever did not, the whole URL keeps the client
        // apart from the others, which is safe.
        let origin = Url::parse(&self.endpoint.value)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| self.endpoint.value.clone());
        ClientKey {
            protocol: self.protocol.value,
            origin,
            tls: self.tls.value,
            headers: self.headers.as_ref().map(|h| h.value.clone()),
            certificate: self.certificate.as_ref().map(|c| c.value.clone()),
            client_pair: self.client_pair.as_ref().map(|c| c.value.clone()),
            compression: self.compression.value,
            timeout: self.timeout.value,
        }
    }

    /// Reads the values of the backend's `valueFrom` headers on this host
    /// (a variable, or a file whose trailing newline is dropped). The error
    /// names the header and the variable, never a value or a file path, as
    /// it travels to the control plane in the delivery report.
    pub fn fill_headers(
        &mut self,
        backend: &BackendSettings,
        env: &dyn crate::EnvSource,
        read_file: &dyn Fn(&std::path::Path) -> std::io::Result<String>,
    ) -> Result<(), String> {
        let Some(headers) = self.headers.as_mut().filter(|h| h.source == Source::Explicit) else { return Ok(()) };
        for h in &backend.headers {
            let value = match &h.from {
                HeaderSource::Value(v) => v.clone(),
                HeaderSource::Env(name) => env
                    .var(name)
                    .ok_or_else(|| format!("header {}: variable {name} is not set on this host", h.name))?,
                HeaderSource::File(path) => read_file(path)
                    .map(|text| text.trim_end_matches(['\r', '\n']).to_string())
                    .map_err(|e| format!("header {}: its file cannot be read ({:?})", h.name, e.kind()))?,
            };
            if value.contains(['\r', '\n']) {
                return Err(format!("header {}: its value has a line break", h.name));
            }
            headers.value.insert(h.name.clone(), value);
        }
        Ok(())
    }

    /// JSON for operators: header values and file paths replaced by
    /// `<redacted>`, every field with its source.
    pub fn redacted(&self) -> Value {
        let src = |s: Source| serde_json::to_value(s).unwrap_or(Value::Null);
        let mut out = json!({
            "protocol": {"value": self.protocol.value.as_str(), "source": src(self.protocol.source)},
            "endpoint": {"value": self.endpoint.value, "source": src(self.endpoint.source)},
            "tls": {"value": self.tls.value, "source": src(self.tls.source)},
            "compression": {"value": self.compression.value, "source": src(self.compression.source)},
            "timeoutMs": {"value": self.timeout.value.as_millis() as u64, "source": src(self.timeout.source)},
        });
        if let Some(h) = &self.headers {
            let keys: BTreeMap<&str, &str> = h.value.keys().map(|k| (k.as_str(), "<redacted>")).collect();
            out["headers"] = json!({"value": keys, "source": src(h.source)});
        }
        if let Some(c) = &self.certificate {
            out["certificate"] = json!({"value": "<redacted>", "source": src(c.source)});
        }
        if let Some(c) = &self.client_pair {
            out["clientCertificate"] = json!({"value": "<redacted>", "source": src(c.source)});
            out["clientKey"] = json!({"value": "<redacted>", "source": src(c.source)});
        }
        out
    }
}

fn layer_of(source: Source, signal: Signal) -> Option<Layer> {
    match source {
        Source::SignalEnv => Some(signal.layer()),
        Source::SharedEnv => Some(Layer::Shared),
        Source::Explicit | Source::Default => None,
    }
}

/// Builds the exporter for a resolved signal from the local values, or
/// `None` when the merge says the signal does not export.
pub fn build_exporter(
    backend: &BackendSettings,
    resolution: &SignalResolution,
    env: &ParsedEnv,
    host_ip: Option<&str>,
) -> Option<ExporterConfig> {
    if !resolution.exports {
        return None;
    }
    let signal = resolution.signal;
    let source_of = |f: Field| resolution.sources.get(&f).copied();
    let layer = |f: Field| -> Option<(&LayerSettings, Source)> {
        let s = source_of(f)?;
        layer_of(s, signal).map(|l| (env.layer(l), s))
    };

    let protocol = match source_of(Field::Protocol)? {
        Source::Explicit if backend.protocol == Some(Protocol::Http) => {
            sourced(OtlpProtocol::HttpProtobuf, Source::Explicit)
        }
        Source::Explicit => sourced(OtlpProtocol::Grpc, Source::Explicit),
        Source::Default => sourced(OtlpProtocol::Grpc, Source::Default),
        s => sourced(layer(Field::Protocol)?.0.protocol?, s),
    };
    let http = protocol.value == OtlpProtocol::HttpProtobuf;

    let insecure = match source_of(Field::Insecure) {
        Some(Source::Explicit) => backend.tls.as_ref().map(|t| (!t.enabled, Source::Explicit)),
        _ => layer(Field::Insecure).and_then(|(l, s)| l.insecure.map(|v| (v, s))),
    };
    let (endpoint, tls) = match source_of(Field::Endpoint)? {
        s @ (Source::SignalEnv | Source::SharedEnv) => {
            let url = layer(Field::Endpoint)?.0.endpoint.clone()?;
            let path = match (http, s) {
                (false, _) => String::new(),
                // A signal-specific endpoint is used as given.
                (true, Source::SignalEnv) => url.path.clone(),
                (true, _) => format!("{}{}", url.path, signal.http_suffix()),
            };
            let scheme = if url.tls { "https" } else { "http" };
            (sourced(format!("{scheme}://{}:{}{path}", url.host, url.port), s), sourced(url.tls, s))
        }
        s => {
            let host = match s {
                Source::Explicit => backend.address.clone()?,
                _ if host_ip.is_some() => host_ip?.to_string(),
                _ => NODE_LOCAL_ADDRESS.to_string(),
            };
            let port = backend.port.unwrap_or(DEFAULT_OTLP_PORT);
            let tls = match insecure {
                Some((insecure, s)) => sourced(!insecure, s),
                // As Kuma does: HTTP to port 443 means HTTPS.
                None if http && port == 443 => sourced(true, Source::Explicit),
                None => sourced(false, Source::Default),
            };
            let path = if http {
                format!("{}{}", backend.path.as_deref().unwrap_or(""), signal.http_suffix())
            } else {
                String::new()
            };
            let scheme = if tls.value { "https" } else { "http" };
            let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
            (sourced(format!("{scheme}://{host}:{port}{path}"), s), tls)
        }
    };
    let explicit = |f: Field| source_of(f) == Some(Source::Explicit);
    let headers = if explicit(Field::Headers) {
        // Literal values now; `valueFrom` ones are read on the host by
        // [`ExporterConfig::fill_headers`].
        let names = backend.headers.iter().map(|h| match &h.from {
            HeaderSource::Value(v) => (h.name.clone(), v.clone()),
            _ => (h.name.clone(), String::new()),
        });
        Some(sourced(names.collect(), Source::Explicit))
    } else {
        layer(Field::Headers).and_then(|(l, s)| l.headers.clone().map(|h| sourced(h, s)))
    };
    let tls_files = backend.tls.as_ref();
    let certificate = if explicit(Field::Certificate) {
        tls_files.and_then(|t| t.ca_file.clone()).map(|c| sourced(c, Source::Explicit))
    } else {
        layer(Field::Certificate).and_then(|(l, s)| l.certificate.clone().map(|c| sourced(c, s)))
    };
    let client_pair = if explicit(Field::ClientKey) {
        tls_files.and_then(TlsSettings::client_pair).map(|c| sourced(c, Source::Explicit))
    } else {
        layer(Field::ClientKey).and_then(|(l, s)| l.client_pair.clone().map(|c| sourced(c, s)))
    };
    let compression = match layer(Field::Compression) {
        Some((l, s)) => sourced(l.compression?, s),
        None => sourced(Compression::None, Source::Default),
    };
    let timeout = match (source_of(Field::Timeout), backend.timeout_ms) {
        (Some(Source::Explicit), Some(ms)) => sourced(Duration::from_millis(ms), Source::Explicit),
        _ => match layer(Field::Timeout) {
            Some((l, s)) => sourced(l.timeout?, s),
            None => sourced(DEFAULT_TIMEOUT, Source::Default),
        },
    };
    Some(ExporterConfig { signal, protocol, endpoint, tls, headers, certificate, client_pair, compression, timeout })
}

/// Groups signals whose exporters can share one client: one default client
/// and dedicated ones only where a signal's settings differ.
pub fn group_clients(configs: &[ExporterConfig]) -> Vec<Vec<Signal>> {
    let mut groups: Vec<(ClientKey, Vec<Signal>)> = Vec::new();
    for c in configs {
        let key = c.client_key();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, signals)) => signals.push(c.signal),
            None => groups.push((key, vec![c.signal])),
        }
    }
    groups.into_iter().map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(signal: Signal, endpoint: &str) -> ExporterConfig {
        let s = Source::SharedEnv;
        ExporterConfig {
            signal,
            protocol: sourced(OtlpProtocol::HttpProtobuf, s),
            endpoint: sourced(endpoint.to_string(), s),
            tls: sourced(endpoint.starts_with("https"), s),
            headers: None,
            certificate: None,
            client_pair: None,
            compression: sourced(Compression::None, s),
            timeout: sourced(DEFAULT_TIMEOUT, s),
        }
    }

    #[test]
    fn clients_are_shared_by_origin_not_path() {
        let traces = config(Signal::Traces, "https://c.example:4318/v1/traces");
        let logs = config(Signal::Logs, "https://c.example:4318/base/v1/logs");
        let metrics = config(Signal::Metrics, "https://c.example:4319/v1/metrics");
        assert_eq!(traces.client_key(), logs.client_key());
        assert_ne!(traces.client_key(), metrics.client_key());
        let v6 = config(Signal::Traces, "http://[::1]:4318/v1/traces");
        assert_eq!(v6.client_key(), config(Signal::Logs, "http://[::1]:4318").client_key());
        assert_ne!(v6.client_key(), config(Signal::Logs, "http://[::2]:4318").client_key());
        assert_eq!(
            group_clients(&[traces, metrics, logs]),
            vec![vec![Signal::Traces, Signal::Logs], vec![Signal::Metrics]]
        );
    }
}
