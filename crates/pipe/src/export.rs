//! Exporters: one per backend and signal, built from the final config the
//! OTLP engine produced, speaking OTLP/gRPC or OTLP/HTTP (protobuf) to the
//! collector, with TLS, mTLS, headers, compression and a per-export timeout.

use crate::grpc::{self, Message};
use crate::wire::grpc_path;
use bytes::Bytes;
use std::io::Write;
use tern_otlp_config::parse::{Compression, OtlpProtocol};
use tern_otlp_config::ExporterConfig;
use tern_otlp_config::Signal;
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
use tonic::codegen::Service;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Why an export failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportError {
    pub retryable: bool,
    pub message: String,
    /// How long the collector asked us to wait (HTTP `Retry-After`).
    pub retry_after: Option<std::time::Duration>,
}

fn fatal(message: String) -> ExportError {
    ExportError { retryable: false, message, retry_after: None }
}

/// A connection to a collector (gRPC channel or HTTP client); cheap to
/// clone, shared by the signals whose final configs differ only in path.
#[derive(Clone)]
pub enum Transport {
    Grpc(Channel),
    Http(reqwest::Client),
}

/// Sends requests of one signal to one collector.
pub struct Exporter {
    config: ExporterConfig,
    transport: Transport,
    /// The configured headers in wire form, checked once when the exporter
    /// is built; or why they cannot be sent (see [`prepare_headers`]).
    headers: Result<WireHeaders, String>,
}

/// Headers as the transport sends them.
enum WireHeaders {
    /// gRPC metadata: lower-case names, values without control characters.
    Grpc(HeaderMap),
    Http(reqwest::header::HeaderMap),
}

/// Turns the configured headers into wire form. A header that cannot be
/// sent (a CR or LF decoded from `%0D%0A`, a key that is no gRPC metadata
/// key) is a configuration error: no retry can fix it. Messages name the
/// header, never its value (values are secrets).
fn prepare_headers(config: &ExporterConfig) -> Result<WireHeaders, String> {
    let configured = config.headers.iter().flat_map(|h| h.value.iter());
    match config.protocol.value {
        OtlpProtocol::Grpc => {
            let mut map = HeaderMap::new();
            for (k, v) in configured {
                // Metadata keys are lower case; `-bin` ones carry base64 (not configurable).
                let key = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .ok()
                    .filter(|key| !key.as_str().ends_with("-bin"))
                    .ok_or_else(|| format!("header {k:?} is not a valid gRPC metadata key"))?;
                let value = HeaderValue::from_str(v)
                    .map_err(|_| format!("header {k:?} has a value gRPC cannot carry (control characters such as CR or LF are not allowed)"))?;
                if is_reserved(&key) {
                    tracing::warn!(header = %key, "a configured header that gRPC itself sets is left out");
                    continue;
                }
                map.append(key, value);
            }
            Ok(WireHeaders::Grpc(map))
        }
        OtlpProtocol::HttpProtobuf => {
            let mut map = reqwest::header::HeaderMap::new();
            for (k, v) in configured {
                let key = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("header {k:?} is not a valid HTTP header name"))?;
                let value = reqwest::header::HeaderValue::from_str(v)
                    .map_err(|_| format!("header {k:?} has a value HTTP cannot carry (control characters such as CR or LF are not allowed)"))?;
                map.append(key, value);
            }
            Ok(WireHeaders::Http(map))
        }
    }
}

/// Headers the gRPC call sets itself (as tonic leaves them out of metadata).
fn is_reserved(key: &HeaderName) -> bool {
    matches!(key.as_str(), "te" | "content-type" | "user-agent") || key.as_str().starts_with("grpc-")
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    // The path stays out of the message: it is local configuration.
    std::fs::read(path).map_err(|e| format!("cannot read the {what} file: {e}"))
}

impl Exporter {
    /// Builds the client; fails when a TLS file cannot be read, the
    /// endpoint is not usable or a header cannot be sent.
    pub fn new(config: ExporterConfig) -> Result<Exporter, String> {
        let headers = prepare_headers(&config)?;
        let transport = Self::transport(&config)?;
        Ok(Exporter { config, transport, headers: Ok(headers) })
    }

    /// An exporter on a transport another signal already opened. Headers
    /// that cannot be sent make every export fail as fatal (dropped and
    /// counted, never retried).
    pub fn with_transport(config: ExporterConfig, transport: Transport) -> Exporter {
        let headers = prepare_headers(&config);
        Exporter { config, transport, headers }
    }

    pub fn transport_handle(&self) -> Transport {
        self.transport.clone()
    }

    fn transport(config: &ExporterConfig) -> Result<Transport, String> {
        let ca = config.certificate.as_ref().map(|c| read(&c.value, "certificate")).transpose()?;
        let identity = match &config.client_pair {
            Some(pair) => Some((read(&pair.value.0, "client certificate")?, read(&pair.value.1, "client key")?)),
            None => None,
        };
        let transport = match config.protocol.value {
            OtlpProtocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(config.endpoint.value.clone())
                    .map_err(|e| format!("endpoint is not usable for gRPC: {e}"))?
                    .connect_timeout(config.timeout.value);
                if config.tls.value {
                    let mut tls = match &ca {
                        Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                        None => ClientTlsConfig::new().with_native_roots(),
                    };
                    if let Some((cert, key)) = &identity {
                        tls = tls.identity(Identity::from_pem(cert, key));
                    }
                    endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS setup failed: {e}"))?;
                }
                Transport::Grpc(endpoint.connect_lazy())
            }
            OtlpProtocol::HttpProtobuf => {
                let mut builder = reqwest::Client::builder().timeout(config.timeout.value);
                if let Some(pem) = &ca {
                    let cert =
                        reqwest::Certificate::from_pem(pem).map_err(|e| format!("certificate is not PEM: {e}"))?;
                    builder = builder.tls_built_in_root_certs(false).add_root_certificate(cert);
                }
                if let Some((cert, key)) = &identity {
                    let mut pem = cert.clone();
                    pem.extend_from_slice(b"\n");
                    pem.extend_from_slice(key);
                    let id = reqwest::Identity::from_pem(&pem)
                        .map_err(|e| format!("client certificate or key is not PEM: {e}"))?;
                    builder = builder.identity(id);
                }
                Transport::Http(builder.build().map_err(|e| format!("HTTP client setup failed: {e}"))?)
            }
        };
        Ok(transport)
    }

    /// Sends one batch once: `parts` are encoded requests of `signal`, sent
    /// back to back as one request (see `wire.rs`).
    pub async fn send(&self, signal: Signal, parts: &[Bytes]) -> Result<(), ExportError> {
        let headers = self.headers.as_ref().map_err(|e| fatal(e.clone()))?;
        match (&self.transport, headers) {
            (Transport::Grpc(channel), WireHeaders::Grpc(headers)) => {
                self.send_grpc(channel.clone(), signal, parts, headers).await
            }
            (Transport::Http(client), WireHeaders::Http(headers)) => self.send_http(client, parts, headers).await,
            _ => Err(fatal("the transport and the configured protocol disagree".into())),
        }
    }

    async fn send_grpc(
        &self,
        mut channel: Channel,
        signal: Signal,
        parts: &[Bytes],
        headers: &HeaderMap,
    ) -> Result<(), ExportError> {
        let unavailable = |message: String| ExportError { retryable: true, message, retry_after: None };
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .map_err(|e| unavailable(format!("collector unreachable: {}", root_cause(&e))))?;
        let message = match self.config.compression.value {
            Compression::Gzip => Message::Gzip(parts),
            _ => Message::Plain(parts),
        };
        let result = grpc::unary(&mut channel, grpc_path(signal), message, headers, self.config.timeout.value).await;
        result.map_err(|status| {
            use tonic::Code::*;
            // The OTLP specification's retryable codes.
            let retryable = matches!(
                status.code(),
                Cancelled | DeadlineExceeded | Aborted | OutOfRange | Unavailable | DataLoss | ResourceExhausted
            );
            ExportError {
                retryable,
                message: format!("collector answered {:?}: {}", status.code(), status.message()),
                retry_after: None,
            }
        })
    }

    async fn send_http(
        &self,
        client: &reqwest::Client,
        parts: &[Bytes],
        headers: &reqwest::header::HeaderMap,
    ) -> Result<(), ExportError> {
        let mut body = parts.concat();
        let mut req = client.post(&self.config.endpoint.value).header("Content-Type", "application/x-protobuf");
        if self.config.compression.value == Compression::Gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&body).map_err(|e| fatal(format!("gzip failed: {e}")))?;
            body = gz.finish().map_err(|e| fatal(format!("gzip failed: {e}")))?;
            req = req.header("Content-Encoding", "gzip");
        }
        req = req.headers(headers.clone());
        match req.body(body).send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let code = resp.status().as_u16();
                // Retry-After in seconds (the HTTP-date form is not honoured).
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(std::time::Duration::from_secs);
                Err(ExportError {
                    retryable: matches!(code, 429 | 502 | 503 | 504),
                    message: format!("collector answered HTTP {code}"),
                    retry_after,
                })
            }
            Err(e) => Err(ExportError {
                retryable: true,
                message: format!("collector unreachable: {}", root_cause(&e)),
                retry_after: None,
            }),
        }
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tern_otlp_config::exporter::Sourced;
    use tern_otlp_config::merge::Source;

    fn config(protocol: OtlpProtocol, headers: &[(&str, &str)]) -> ExporterConfig {
        let explicit = |value| Sourced { value, source: Source::Explicit };
        let endpoint = match protocol {
            OtlpProtocol::Grpc => "http://127.0.0.1:9",
            OtlpProtocol::HttpProtobuf => "http://127.0.0.1:9/v1/traces",
        };
        ExporterConfig {
            signal: Signal::Traces,
            protocol: explicit(protocol),
            endpoint: Sourced { value: endpoint.to_string(), source: Source::Explicit },
            tls: Sourced { value: false, source: Source::Default },
            headers: Some(Sourced {
                value: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                source: Source::SharedEnv,
            }),
            certificate: None,
            client_pair: None,
            compression: Sourced { value: Compression::None, source: Source::Default },
            timeout: Sourced { value: std::time::Duration::from_secs(1), source: Source::Default },
        }
    }

    /// `OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20s3cret%0D%0AX-Evil:%201`
    /// decodes to a value with CR LF: a configuration error for both
    /// protocols, reported once, naming the header but never its value.
    #[tokio::test]
    async fn unsendable_headers_are_fatal_for_http_and_grpc() {
        let bad = [("authorization", "Bearer s3cret\r\nX-Evil: 1")];
        for protocol in [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc] {
            let err = Exporter::new(config(protocol, &bad)).err().expect("refused at construction");
            assert!(err.contains("\"authorization\""), "{protocol:?}: {err}");
            assert!(!err.contains("s3cret"), "{protocol:?}: the value stays out: {err}");

            // Built on a shared transport, it never reaches the network:
            // every export fails as fatal, so the batch is dropped, not retried.
            let good = Exporter::new(config(protocol, &[("x-team", "core")])).expect("valid headers");
            let shared = Exporter::with_transport(config(protocol, &bad), good.transport_handle());
            let e = shared.send(Signal::Traces, &[Bytes::from_static(b"")]).await.expect_err("fatal");
            assert!(!e.retryable, "{protocol:?}: {e:?}");
            assert!(!e.message.contains("s3cret"), "{protocol:?}: {e:?}");
        }
    }

    #[tokio::test]
    async fn sendable_headers_are_kept() {
        for protocol in [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc] {
            let e = Exporter::new(config(protocol, &[("Authorization", "Bearer s3cret"), ("x-tenant", "a b")]));
            match e.map(|e| e.headers) {
                Ok(Ok(WireHeaders::Http(map))) => assert_eq!(map.len(), 2),
                Ok(Ok(WireHeaders::Grpc(list))) => assert_eq!(list.len(), 2),
                _ => panic!("{protocol:?}: headers refused"),
            }
        }
    }

    #[tokio::test]
    async fn headers_grpc_sets_itself_are_left_out() {
        let configured = [("Content-Type", "text/plain"), ("grpc-timeout", "1S"), ("TE", "x"), ("x-tenant", "a")];
        match Exporter::new(config(OtlpProtocol::Grpc, &configured)).map(|e| e.headers) {
            Ok(Ok(WireHeaders::Grpc(map))) => assert_eq!(map.keys().collect::<Vec<_>>(), ["x-tenant"]),
            _ => panic!("headers refused"),
        }
    }
}
