//! Value parsing by the OpenTelemetry exporter specification. A bad value
//! becomes a [`Problem`] whose message never repeats the value (it may be a
//! secret): only the variable's layer and field are named.

use crate::env::{EnvValues, Field, Layer};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

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
    HEADER_KEY_NOT_TOKEN,
    "has a value that is not valid percent-encoded UTF-8",
    "must hold at least one key=value pair",
    "must be true or false",
    "must be a whole number of milliseconds",
    "must be gzip or none",
    CERT_WITHOUT_KEY,
    KEY_WITHOUT_CERT,
];

const ENDPOINT_NOT_URL: &str = "must be a URL with scheme http or https, such as http://collector:4317";
const HEADER_KEY_NOT_TOKEN: &str = "has an entry whose key is not an HTTP header name";
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
///
/// Parsed by the WHATWG URL rules (the `url` crate), so the host comes out
/// normalised (lower case, IDNA for non-ASCII names) and the path
/// percent-encoded, as a client would send them. Stricter than WHATWG where
/// leniency would hide a mistake: the scheme must be followed by `//` and a
/// host, and whitespace or control characters (which WHATWG drops or
/// encodes) make the value invalid.
pub fn parse_endpoint(v: &str) -> Result<EndpointUrl, &'static str> {
    const NOT_URL: &str = ENDPOINT_NOT_URL;
    if v.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(NOT_URL);
    }
    let (scheme, rest) = v.split_once("://").ok_or(NOT_URL)?;
    let tls = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(NOT_URL);
    };
    // WHATWG skips extra slashes (`http:///c` is `http://c/`); an empty
    // authority is a mistake here.
    if rest.starts_with(['/', '\\']) {
        return Err(NOT_URL);
    }
    let url = Url::parse(v).map_err(|e| match e {
        url::ParseError::InvalidPort => "has an invalid port",
        _ => NOT_URL,
    })?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not contain a query or fragment");
    }
    // `http://:@c` has an empty user and password; still credentials.
    let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or_default();
    if !url.username().is_empty() || url.password().is_some() || authority.contains('@') {
        return Err("must not carry credentials; use OTEL_EXPORTER_OTLP_HEADERS");
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or(NOT_URL)?;
    let port = url.port_or_known_default().filter(|p| *p > 0).ok_or("has an invalid port")?;
    Ok(EndpointUrl { tls, host: host.to_string(), port, path: url.path().trim_end_matches('/').to_string() })
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
        // W3C Baggage keys (what the specification names) are HTTP tokens.
        // Checking it here also keeps a misplaced secret out of what is
        // shown: keys appear in the redacted exporter view, and
        // `Authorization: Bearer abc=` would otherwise make one.
        if !key.bytes().all(is_token_byte) {
            return Err(HEADER_KEY_NOT_TOKEN);
        }
        let decoded = percent_decode(value.trim()).ok_or("has a value that is not valid percent-encoded UTF-8")?;
        out.insert(key.to_string(), decoded);
    }
    if out.is_empty() {
        return Err("must hold at least one key=value pair");
    }
    Ok(out)
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Percent-decodes a header value to UTF-8. `percent_encoding` passes a `%`
/// without two hex digits through unchanged; the W3C Baggage values the
/// specification names cannot hold one, so such a value is refused rather
/// than sent half-decoded.
fn percent_decode(v: &str) -> Option<String> {
    let escapes_well_formed = v.split('%').skip(1).all(|after| {
        let mut hex = after.chars().take(2);
        after.chars().take(2).count() == 2 && hex.all(|c| c.is_ascii_hexdigit())
    });
    if !escapes_well_formed {
        return None;
    }
    percent_decode_str(v).decode_utf8().ok().map(|s| s.into_owned())
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
    fn non_ascii_endpoints_are_problems_not_panics() {
        // Once a panic whose message held the whole value, password included.
        assert_eq!(
            parse_endpoint("http://\u{e9}:s3cr3t@collector:4317"),
            Err("must not carry credentials; use OTEL_EXPORTER_OTLP_HEADERS")
        );
        assert_eq!(parse_endpoint("http\u{e9}://c"), Err(ENDPOINT_NOT_URL));
        assert_eq!(parse_endpoint("htt\u{e9}"), Err(ENDPOINT_NOT_URL));
        assert_eq!(parse_endpoint("http://[\u{e9}]:1"), Err(ENDPOINT_NOT_URL));
        assert_eq!(parse_endpoint("http://c:4\u{e9}"), Err("has an invalid port"));
        // International names become their ASCII form, as a client sends them.
        let e = parse_endpoint("https://K\u{f6}ln.example:4318/\u{e9}t\u{e9}").expect("valid");
        assert_eq!((e.host.as_str(), e.path.as_str()), ("xn--kln-sna.example", "/%C3%A9t%C3%A9"));
    }

    #[test]
    fn endpoint_edge_cases() {
        assert_eq!(parse_endpoint("http://c:80").expect("valid").port, 80);
        assert_eq!(parse_endpoint("http://C.Example").expect("valid").host, "c.example");
        assert_eq!(parse_endpoint("http://10.0.0.1:4317").expect("valid").host, "10.0.0.1");
        assert_eq!(parse_endpoint("http://c:4317//").expect("valid").path, "");
        for v in ["http://", "http:///c", "http://:4317", "http:c:4317", "http://c\t:4317", "http://c d", "http://c\n"]
        {
            assert_eq!(parse_endpoint(v), Err(ENDPOINT_NOT_URL), "{v:?}");
        }
        for v in ["http://@c", "http://:@c", "http://u@c/p"] {
            assert_eq!(parse_endpoint(v), Err("must not carry credentials; use OTEL_EXPORTER_OTLP_HEADERS"), "{v:?}");
        }
        assert!(parse_endpoint("http://c/a@b").is_ok(), "@ in the path is not a credential");
        assert_eq!(parse_endpoint("http://c#f"), Err("must not contain a query or fragment"));
        assert_eq!(parse_endpoint("http://c:-1"), Err("has an invalid port"));
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
    fn header_escapes() {
        const BAD: Result<BTreeMap<String, String>, &str> = Err("has a value that is not valid percent-encoded UTF-8");
        for v in ["k=%", "k=%4", "k=a%", "k=%%41", "k=%\u{e9}", "k=%4\u{e9}", "k=%ff", "k=%c3"] {
            assert_eq!(parse_headers(v), BAD, "{v:?}");
        }
        let h = parse_headers("k=%C3%A9%41,k1=\u{e9},k2=%2c").expect("valid");
        assert_eq!(h.get("k").map(String::as_str), Some("\u{e9}A"));
        assert_eq!(h.get("k1").map(String::as_str), Some("\u{e9}"));
        assert_eq!(h.get("k2").map(String::as_str), Some(","));
        assert_eq!(parse_headers(" , "), Err("must hold at least one key=value pair"));
    }

    #[test]
    fn header_keys_are_tokens() {
        for v in ["Authorization: Bearer abc=", "a b=1", "\u{e9}=1", "k\u{0}=1", "k/v=1", "\"k\"=1"] {
            assert_eq!(parse_headers(v), Err(HEADER_KEY_NOT_TOKEN), "{v:?}");
        }
        let h = parse_headers("X-Scope-OrgID=t,a.b_c~!#$%&'*+^`|=1").expect("valid");
        assert_eq!(h.len(), 2);
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
