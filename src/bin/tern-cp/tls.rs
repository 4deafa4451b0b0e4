//! TLS for the control plane's ports: the certificate and key given
//! (`--tls-cert-file`, `--tls-key-file`), or a CA made on first start and
//! kept in the data directory (`tls/ca.crt`, `tls/ca.key`, 0600) with a
//! serving certificate it signs on every start (so new `--tls-san` names
//! take effect). Data planes and ternctl trust `tls/ca.crt`.

use anyhow::{anyhow, bail, Context, Result};
use axum::Router;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Where the serving certificate comes from.
pub struct TlsSource {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Extra names and addresses for a generated serving certificate.
    pub sans: Vec<String>,
}

/// The CA a generated certificate chains to, inside the data directory.
pub fn ca_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("ca.crt")
}

/// The server configuration for every TLS port (ALPN h2 and http/1.1).
pub fn server_config(source: &TlsSource, data_dir: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let (cert_pem, key_pem) = match (&source.cert_file, &source.key_file) {
        (Some(cert), Some(key)) => (
            std::fs::read(cert).with_context(|| format!("reading --tls-cert-file {}", cert.display()))?,
            std::fs::read(key).with_context(|| format!("reading --tls-key-file {}", key.display()))?,
        ),
        (None, None) => generated(data_dir, &source.sans)?,
        _ => bail!("--tls-cert-file and --tls-key-file go together: give both, or neither for a generated certificate"),
    };
    tern_tls::server_config(&cert_pem, &key_pem).map_err(|e| anyhow!(e))
}

/// The data directory's CA (`tls/ca.crt`, key `tls/ca.key` 0600), made the
/// first time; returns it with its key for signing.
pub fn ensure_ca(data_dir: &Path) -> Result<(rcgen::Certificate, rcgen::KeyPair)> {
    let dir = data_dir.join("tls");
    crate::files::create_private_dir(&dir)?;
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let ca_key_pair = if ca_key.exists() && ca_cert.exists() {
        let pem = std::fs::read_to_string(&ca_key).with_context(|| format!("reading {}", ca_key.display()))?;
        rcgen::KeyPair::from_pem(&pem).with_context(|| format!("{} is not a PEM private key", ca_key.display()))?
    } else {
        let key = rcgen::KeyPair::generate().context("generating the CA key")?;
        crate::files::write_private(&ca_key, key.serialize_pem().as_bytes())?;
        key
    };
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Tern control plane CA");
    ca_params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    // Re-signing the CA with the same key keeps it the same trust anchor.
    let ca = ca_params.self_signed(&ca_key_pair).context("signing the CA")?;
    if !ca_cert.exists() {
        std::fs::write(&ca_cert, ca.pem()).with_context(|| format!("writing {}", ca_cert.display()))?;
    }
    Ok((ca, ca_key_pair))
}

/// A serving certificate signed by the data directory's CA (made once).
fn generated(data_dir: &Path, extra_sans: &[String]) -> Result<(Vec<u8>, Vec<u8>)> {
    let (ca, ca_key_pair) = ensure_ca(data_dir)?;
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        sans.push(host.trim().to_string());
    }
    sans.extend(extra_sans.iter().cloned());
    sans.retain(|s| !s.is_empty());
    sans.dedup();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("certificate parameters")?;
    for san in &sans {
        params.subject_alt_names.push(match san.parse::<IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                san.clone()
                    .try_into()
                    .map_err(|_| anyhow!("--tls-san {san:?} is neither an IP address nor a DNS name"))?,
            ),
        });
    }
    params.distinguished_name.push(rcgen::DnType::CommonName, "tern-cp");
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let key = rcgen::KeyPair::generate().context("generating the serving key")?;
    let cert = params.signed_by(&key, &ca, &ca_key_pair).context("signing the serving certificate")?;
    Ok((cert.pem().into_bytes(), key.serialize_pem().into_bytes()))
}

/// Serves `router` over TLS until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: Arc<rustls::ServerConfig>,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    tern_tls::serve(listener, router, config, stop).await.map_err(|e| anyhow!(e))
}
