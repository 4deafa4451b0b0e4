//! The control plane as `tern-dp` sees it: its data-plane server over HTTP
//! or HTTPS (trusting `--ca-cert-file`), every request carrying this data
//! plane's token.

use std::path::PathBuf;
use std::time::Duration;
use tern_protocol::{BootstrapRequest, BootstrapResponse, DeliveryReport, PlanResponse};
use tracing::warn;

/// How to reach and authenticate to the control plane.
#[derive(Clone)]
pub struct Settings {
    /// `http://HOST:PORT` (loopback) or `https://HOST:PORT` ([`parse_address`]).
    pub address: url::Url,
    /// The data-plane token (never logged).
    pub token: Option<String>,
    /// The CA that signed the control plane's certificate (PEM).
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("ca_cert", &self.ca_cert.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A refusal the control plane will repeat (bad token, invalid Dataplane):
/// retrying cannot help, so `tern-dp` stops with it.
#[derive(Debug)]
pub struct Refused(pub String);

/// Why a bootstrap did not register this data plane.
#[derive(Debug)]
pub enum BootstrapError {
    /// The Dataplane named by mesh and name is not stored (yet: on
    /// Kubernetes the Pod controller makes it once the Pod has its IP).
    NotStored(String),
    Refused(Refused),
}

impl BootstrapError {
    pub fn into_message(self) -> String {
        match self {
            BootstrapError::NotStored(why) | BootstrapError::Refused(Refused(why)) => why,
        }
    }
}

pub enum PollError {
    NotRegistered,
    Refused(Refused),
    Transient(String),
}

/// `--cp-address`: an http or https URL with a host and a port (given or the scheme's).
pub fn parse_address(text: &str) -> Result<url::Url, String> {
    let bad = || "must be http://HOST:PORT (loopback) or https://HOST:PORT, without credentials".to_string();
    let url = url::Url::parse(text).map_err(|_| bad())?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.port_or_known_default().is_some()
        && url.username().is_empty()
        && url.password().is_none();
    ok.then_some(url).ok_or_else(bad)
}

#[derive(Clone)]
pub struct ControlPlane {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl ControlPlane {
    pub fn connect(settings: &Settings) -> Result<ControlPlane, String> {
        let base = settings.address.as_str().trim_end_matches('/').to_string();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(45));
        if let Some(path) = &settings.ca_cert {
            let pem = std::fs::read(path).map_err(|e| format!("reading --ca-cert-file {}: {e}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|_| format!("--ca-cert-file {} is not a PEM certificate", path.display()))?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| format!("setting up the control-plane client: {e}"))?;
        Ok(ControlPlane { base, token: settings.token.clone(), http })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Registers, retrying while the control plane is unreachable.
    pub async fn bootstrap(&self, request: &BootstrapRequest) -> Result<BootstrapResponse, BootstrapError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.request(reqwest::Method::POST, "/bootstrap").json(request).send().await {
                Ok(resp) if resp.status().is_success() => {
                    return resp
                        .json()
                        .await
                        .map_err(|e| BootstrapError::Refused(Refused(format!("reading the bootstrap answer: {e}"))));
                }
                Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                    return Err(BootstrapError::NotStored(problem(resp).await));
                }
                Ok(resp) if resp.status().is_client_error() => {
                    let why = format!("the control plane refused this data plane: {}", problem(resp).await);
                    return Err(BootstrapError::Refused(Refused(why)));
                }
                Ok(resp) => warn!(status = resp.status().as_u16(), "bootstrap failed; retrying"),
                Err(e) => warn!(cp = %self.base, error = %root_cause(&e), "control plane unreachable; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One long-poll: a new plan, or `None` when nothing changed.
    pub async fn poll_plan(&self, plan_path: &str, version: u64) -> Result<Option<PlanResponse>, PollError> {
        let path = format!("{plan_path}?version={version}&timeout=30");
        let resp = self
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .map_err(|e| PollError::Transient(format!("control plane unreachable: {}", root_cause(&e))))?;
        match resp.status().as_u16() {
            200 => resp.json().await.map(Some).map_err(|e| PollError::Transient(format!("reading the plan: {e}"))),
            304 => Ok(None),
            404 => Err(PollError::NotRegistered),
            401 | 403 => Err(PollError::Refused(Refused(format!(
                "the control plane refused this data plane's plan request: {}",
                problem(resp).await
            )))),
            code => Err(PollError::Transient(format!("unexpected answer {code} to the plan request"))),
        }
    }

    /// Sends delivery counts; whether the control plane took them.
    pub async fn report_delivery(&self, mesh: &str, name: &str, report: &DeliveryReport) -> bool {
        let sent = self.request(reqwest::Method::POST, &format!("/delivery/{mesh}/{name}")).json(report).send().await;
        sent.is_ok_and(|r| r.status().is_success())
    }
}

/// The control plane's error body as one line: detail, then each field.
async fn problem(resp: reqwest::Response) -> String {
    let Ok(body) = resp.json::<tern_protocol::ErrorBody>().await else { return "no detail".into() };
    let mut msg = body.detail;
    for p in body.invalid_parameters {
        msg.push_str(&format!("\n  {}: {}", p.field, p.reason));
    }
    msg
}

pub fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::parse_address;

    #[test]
    fn control_plane_addresses() {
        assert_eq!(parse_address("https://cp.internal:5678").map(|u| u.port()), Ok(Some(5678)));
        assert!(parse_address("http://[::1]:5678").is_ok());
        for bad in ["ftp://cp:5678", "cp:5678", "http://", "", "https://é:s3cr3t@cp:5678\u{1b}"] {
            let err = parse_address(bad).expect_err(bad);
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }
}
