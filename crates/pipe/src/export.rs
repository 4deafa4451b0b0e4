//! Exporters: one per backend and signal, built from the final config the
//! OTLP engine produced, speaking OTLP/gRPC or OTLP/HTTP (protobuf) to the
//! collector, with TLS, mTLS, headers, compression and a per-export timeout.

use crate::wire::{grpc_path, RawCodec};
use bytes::Bytes;
use std::io::Write;
use tern_otlp_config::parse::{Compression, OtlpProtocol};
use tern_otlp_config::ExporterConfig;
use tern_otlp_config::Signal;
use tonic::codec::CompressionEncoding;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataValue};
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
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    // The path stays out of the message: it is local configuration.
    std::fs::read(path).map_err(|e| format!("cannot read the {what} file: {e}"))
}

impl Exporter {
    /// Builds the client; fails when a TLS file cannot be read or the
    /// endpoint is not usable.
    pub fn new(config: ExporterConfig) -> Result<Exporter, String> {
        let transport = Self::transport(&config)?;
        Ok(Exporter { config, transport })
    }

    /// An exporter on a transport another signal already opened.
    pub fn with_transport(config: ExporterConfig, transport: Transport) -> Exporter {
        Exporter { config, transport }
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
        match &self.transport {
            Transport::Grpc(channel) => self.send_grpc(channel.clone(), signal, parts).await,
            Transport::Http(client) => self.send_http(client, parts).await,
        }
    }

    fn grpc_request<T>(&self, message: T) -> Result<tonic::Request<T>, ExportError> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(self.config.timeout.value);
        if let Some(headers) = &self.config.headers {
            for (k, v) in &headers.value {
                let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|_| fatal(format!("header {k:?} is not a valid gRPC metadata key")))?;
                let value = MetadataValue::try_from(v.as_str())
                    .map_err(|_| fatal(format!("header {k:?} has a value gRPC cannot carry")))?;
                req.metadata_mut().insert(key, value);
            }
        }
        Ok(req)
    }

    async fn send_grpc(&self, channel: Channel, signal: Signal, parts: &[Bytes]) -> Result<(), ExportError> {
        let mut grpc = tonic::client::Grpc::new(channel);
        if self.config.compression.value == Compression::Gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        let unavailable = |message: String| ExportError { retryable: true, message, retry_after: None };
        grpc.ready().await.map_err(|e| unavailable(format!("collector unreachable: {}", root_cause(&e))))?;
        let request = self.grpc_request(parts.to_vec())?;
        let path = PathAndQuery::from_static(grpc_path(signal));
        let result: Result<tonic::Response<Bytes>, tonic::Status> = grpc.unary(request, path, RawCodec).await;
        result.map(|_| ()).map_err(|status| {
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

    async fn send_http(&self, client: &reqwest::Client, parts: &[Bytes]) -> Result<(), ExportError> {
        let mut body = parts.concat();
        let mut req = client.post(&self.config.endpoint.value).header("Content-Type", "application/x-protobuf");
        if self.config.compression.value == Compression::Gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&body).map_err(|e| fatal(format!("gzip failed: {e}")))?;
            body = gz.finish().map_err(|e| fatal(format!("gzip failed: {e}")))?;
            req = req.header("Content-Encoding", "gzip");
        }
        if let Some(headers) = &self.config.headers {
            for (k, v) in &headers.value {
                req = req.header(k.as_str(), v.as_str());
            }
        }
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
