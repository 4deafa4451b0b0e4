//! Value parsing by the OpenTelemetry exporter specification. A bad value
//! becomes a [`Problem`] whose message never repeats the value (it may be a
//! secret): only the variable's layer and field are named.

use crate::env::{EnvValues, Field, Layer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Every message a [`Problem`] can carry. A received inventory whose problems
/// say anything else is refused, so free text cannot smuggle a value out.
pub const KNOWN_MESSAGES: &[&str] = &[
    ENDPOINT_NOT_URL,
    "must not contain a query or fragment",
    "must not carry credentials; use OTEL_EXPORTER_OTLP_HEADERS",
    "has an invalid port",
    "http/json is not supported; use http/protobuf or grpc",
    "must be grpc or http/protobuf",
    "must be a comma-separated list of key=value pairs",
    "has an entry with an empty key",
    "has a value that is not valid percent-encoded UTF-8",
    "must hold at least one key=value pair",
    "must be true or false",
    "must be a whole number of milliseconds",
    "must be gzip or none",
    CERT_WITHOUT_KEY,
    KEY_WITHOUT_CERT,
];

const ENDPOINT_NOT_URL: &str = "must be a URL with scheme http or https, such as http://collector:4317";
const CERT_WITHOUT_KEY: &str = "a client certificate is set without a client key; mTLS needs both";
const KEY_WITHOUT_CERT: &str = "a client key is set without a client certificate; mTLS needs both";

/// OTLP transport, as `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
}

/// An endpoint URL from the environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointUrl {
    /// `https`: TLS; `http`: plaintext.
    pub tls: bool,
    /// Host as written in the URL (IPv6 in brackets).
    pub host: String,
    pub port: u16,
    /// Path without a trailing `/` (empty for none).
    pub path: String,
}

/// A variable whose value the exporter cannot use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub layer: Layer,
    /// The field the problem is about; for an incomplete client key pair,
    /// the half that is missing.
    pub field: Field,
    /// `mtls` for an incomplete client key pair, otherwise the field name.
    pub tag: String,
    pub message: String,
}

impl Problem {
    fn new(layer: Layer, field: Field, message: &'static str) -> Problem {
        Problem { layer, field, tag: field.as_str().to_string(), message: message.to_string() }
    }

    /// `traces.protocol`, `metrics.mtls`.
    pub fn scope(&self) -> String {
        format!("{}.{}", self.layer, self.tag)
    }
}

/// The usable values of one layer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LayerSettings {
    pub endpoint: Option<EndpointUrl>,
    pub protocol: Option<OtlpProtocol>,
    pub headers: Option<BTreeMap<String, String>>,
    pub insecure: Option<bool>,
    pub timeout: Option<Duration>,
    pub compression: Option<Compression>,
    pub certificate: Option<PathBuf>,
    /// Client certificate and key, only when both are set and usable.
    pub client_pair: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for LayerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LayerSettings { .. }")
    }
}

impl LayerSettings {
    /// Whether the layer supplies `field` with a usable value.
    pub fn has(&self, field: Field) -> bool {
        match field {
            Field::Endpoint => self.endpoint.is_some(),
            Field::Protocol => self.protocol.is_some(),
            Field::Headers => self.headers.is_some(),
            Field::Insecure => self.insecure.is_some(),
            Field::Timeout => self.timeout.is_some(),
            Field::Compression => self.compression.is_some(),
            Field::Certificate => self.certificate.is_some(),
            Field::ClientKey | Field::ClientCertificate => self.client_pair.is_some(),
        }
    }
}

/// Every layer parsed, with the problems found.
#[derive(Debug, Clone, Default)]
pub struct ParsedEnv {
    pub layers: BTreeMap<Layer, LayerSettings>,
    pub problems: Vec<Problem>,
}

impl ParsedEnv {
    pub fn parse(env: &EnvValues) -> ParsedEnv {
        let mut out = ParsedEnv::default();
        for layer in Layer::ALL {
            let settings = parse_layer(env, layer, &mut out.problems);
            out.layers.insert(layer, settings);
        }
        out
    }

    pub fn layer(&self, layer: Layer) -> &LayerSettings {
        static EMPTY: std::sync::OnceLock<LayerSettings> = std::sync::OnceLock::new();
        self.layers.get(&layer).unwrap_or_else(|| EMPTY.get_or_init(LayerSettings::default))
    }
}

fn parse_layer(env: &EnvValues, layer: Layer, problems: &mut Vec<Problem>) -> LayerSettings {
    let get = |f: Field| env.get(layer, f);
    let mut s = LayerSettings::default();
    let mut check = |field: Field, r: Result<(), &'static str>| {
        if let Err(message) = r {
            problems.push(Problem::new(layer, field, message));
        }
    };
    if let Some(v) = get(Field::Endpoint) {
        check(Field::Endpoint, parse_endpoint(v).map(|e| s.endpoint = Some(e)));
    }
    if let Some(v) = get(Field::Protocol) {
        check(Field::Protocol, parse_protocol(v).map(|p| s.protocol = Some(p)));
    }
    if let Some(v) = get(Field::Headers) {
        check(Field::Headers, parse_headers(v).map(|h| s.headers = Some(h)));
    }
    if let Some(v) = get(Field::Insecure) {
        check(Field::Insecure, parse_bool(v).map(|b| s.insecure = Some(b)));
    }
    if let Some(v) = get(Field::Timeout) {
        check(Field::Timeout, parse_timeout(v).map(|t| s.timeout = Some(t)));
    }
    if let Some(v) = get(Field::Compression) {
        check(Field::Compression, parse_compression(v).map(|c| s.compression = Some(c)));
    }
    s.certificate = get(Field::Certificate).map(PathBuf::from);
    match (get(Field::ClientCertificate), get(Field::ClientKey)) {
        (Some(cert), Some(key)) => s.client_pair = Some((PathBuf::from(cert), PathBuf::from(key))),
        (Some(_), None) => {
            problems.push(Problem { tag: "mtls".into(), ..Problem::new(layer, Field::ClientKey, CERT_WITHOUT_KEY) })
        }
        (None, Some(_)) => problems
            .push(Problem { tag: "mtls".into(), ..Problem::new(layer, Field::ClientCertificate, KEY_WITHOUT_CERT) }),
        (None, None) => {}
    }
    s
}

/// `http://host:port/path` or `https://...`; the scheme decides TLS.
pub fn parse_endpoint(v: &str) -> Result<EndpointUrl, &'static str> {
    const NOT_URL: &str = ENDPOINT_NOT_URL;
    let (tls, rest) = if let Some(r) = strip_prefix_ci(v, "https://") {
        (true, r)
    } else if let Some(r) = strip_prefix_ci(v, "http://") {
        (false, r)
    } else {
        return Err(NOT_URL);
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if path.contains(['?', '#']) || authority.contains(['?', '#']) {
        return Err("must not contain a query or fragment");
    }
    if authority.contains('@') {
        return Err("must not carry credentials; use OTEL_EXPORTER_OTLP_HEADERS");
    }
    let (host, port) = split_host_port(authority).ok_or(NOT_URL)?;
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or("has an invalid port")?,
        None if tls => 443,
        None => 80,
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(NOT_URL);
    }
    Ok(EndpointUrl { tls, host: host.to_string(), port, path: path.trim_end_matches('/').to_string() })
}

fn strip_prefix_ci<'a>(v: &'a str, prefix: &str) -> Option<&'a str> {
    (v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &v[prefix.len()..])
}

fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let host = &authority[..=end];
        match &authority[end + 1..] {
            "" => Some((host, None)),
            rest => Some((host, Some(rest.strip_prefix(':')?))),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => Some((h, Some(p))),
            None => Some((authority, None)),
        }
    }
}

pub fn parse_protocol(v: &str) -> Result<OtlpProtocol, &'static str> {
    match v {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "http/json" => Err("http/json is not supported; use http/protobuf or grpc"),
        _ => Err("must be grpc or http/protobuf"),
    }
}

/// `key1=value1,key2=value2`, values percent-decoded; later keys win.
pub fn parse_headers(v: &str) -> Result<BTreeMap<String, String>, &'static str> {
    let mut out = BTreeMap::new();
    for entry in v.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let (key, value) = entry.split_once('=').ok_or("must be a comma-separated list of key=value pairs")?;
        let key = key.trim();
        if key.is_empty() {
            return Err("has an entry with an empty key");
        }
        let decoded = percent_decode(value.trim()).ok_or("has a value that is not valid percent-encoded UTF-8")?;
        out.insert(key.to_string(), decoded);
    }
    if out.is_empty() {
        return Err("must hold at least one key=value pair");
    }
    Ok(out)
}

fn percent_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn parse_bool(v: &str) -> Result<bool, &'static str> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be true or false"),
    }
}

/// Milliseconds, a non-negative integer.
pub fn parse_timeout(v: &str) -> Result<Duration, &'static str> {
    v.parse::<u64>().map(Duration::from_millis).map_err(|_| "must be a whole number of milliseconds")
}

pub fn parse_compression(v: &str) -> Result<Compression, &'static str> {
    match v.to_ascii_lowercase().as_str() {
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        _ => Err("must be gzip or none"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = parse_endpoint("https://otel-gateway.observability:4318").expect("valid");
        assert_eq!((e.tls, e.host.as_str(), e.port, e.path.as_str()), (true, "otel-gateway.observability", 4318, ""));
        let e = parse_endpoint("http://c:4318/base/").expect("valid");
        assert_eq!((e.tls, e.port, e.path.as_str()), (false, 4318, "/base"));
        assert_eq!(parse_endpoint("HTTPS://c").expect("valid").port, 443);
        assert_eq!(parse_endpoint("http://[::1]:4317").expect("valid").host, "[::1]");
        assert!(parse_endpoint("collector:4317").is_err());
        assert!(parse_endpoint("http://c:0").is_err());
        assert!(parse_endpoint("http://c:99999").is_err());
        assert!(parse_endpoint("http://c:4317/x?y=1").is_err());
        assert!(parse_endpoint("http://user:pw@c:4317").is_err());
        assert!(parse_endpoint("ftp://c").is_err());
    }

    #[test]
    fn protocols() {
        assert_eq!(parse_protocol("grpc"), Ok(OtlpProtocol::Grpc));
        assert_eq!(parse_protocol("http/protobuf"), Ok(OtlpProtocol::HttpProtobuf));
        assert_eq!(parse_protocol("http/json"), Err("http/json is not supported; use http/protobuf or grpc"));
        assert!(parse_protocol("GRPC").is_err());
    }

    #[test]
    fn headers() {
        let h = parse_headers("api-key=abc%20def, tenant = t1,x=a=b").expect("valid");
        assert_eq!(h.get("api-key").map(String::as_str), Some("abc def"));
        assert_eq!(h.get("tenant").map(String::as_str), Some("t1"));
        assert_eq!(h.get("x").map(String::as_str), Some("a=b"));
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("=v").is_err());
        assert!(parse_headers("k=%zz").is_err());
    }

    #[test]
    fn scalars() {
        assert_eq!(parse_timeout("2500"), Ok(Duration::from_millis(2500)));
        assert!(parse_timeout("-1").is_err() && parse_timeout("10s").is_err());
        assert_eq!(parse_compression("GZIP"), Ok(Compression::Gzip));
        assert!(parse_compression("zstd").is_err());
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert!(parse_bool("yes").is_err());
    }
}
