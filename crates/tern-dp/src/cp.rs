//! The control plane as `tern-dp` sees it: its data-plane server over HTTP
//! or HTTPS (trusting `--ca-cert-file`), every request carrying this data
//! plane's token. With several replicas (`--cp-address` repeated), requests
//! go to one of them until it fails to answer, then to the next.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tern_protocol::{BootstrapRequest, BootstrapResponse, DeliveryReport, PlanResponse};
use tracing::warn;

/// How to reach and authenticate to the control plane.
#[derive(Clone)]
pub struct Settings {
    /// The replicas' `http://HOST:PORT` (loopback) or `https://HOST:PORT`
    /// ([`parse_address`]), at least one, all with one scheme.
    pub addresses: Vec<url::Url>,
    /// The data-plane token (never logged).
    pub token: Option<String>,
    /// The CA that signed the control plane's certificate (PEM).
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("addresses", &self.addresses)
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

/// Several `--cp-address` values must agree on the scheme (one TLS setting
/// for every replica).
pub fn check_addresses(addresses: &[url::Url]) -> Result<(), String> {
    let Some(first) = addresses.first() else { return Err("give at least one --cp-address".into()) };
    if addresses.iter().any(|a| a.scheme() != first.scheme()) {
        return Err(
            "--cp-address: every control-plane replica must be reached the same way (all http or all https)".into()
        );
    }
    Ok(())
}

#[derive(Clone)]
pub struct ControlPlane {
    bases: Arc<Vec<String>>,
    /// The replica requests go to now.
    current: Arc<AtomicUsize>,
    token: Option<String>,
    http: reqwest::Client,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl ControlPlane {
    pub fn connect(settings: &Settings) -> Result<ControlPlane, String> {
        let bases = settings.addresses.iter().map(|a| a.as_str().trim_end_matches('/').to_string()).collect();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(45));
        if let Some(path) = &settings.ca_cert {
            let pem = std::fs::read(path).map_err(|e| format!("reading --ca-cert-file {}: {e}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|_| format!("--ca-cert-file {} is not a PEM certificate", path.display()))?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| format!("setting up the control-plane client: {e}"))?;
        Ok(ControlPlane { bases: Arc::new(bases), current: Arc::default(), token: settings.token.clone(), http })
    }

    /// A request to the current replica, and which one that is.
    fn request(&self, method: reqwest::Method, path: &str) -> (usize, reqwest::RequestBuilder) {
        let at = self.current.load(Ordering::Relaxed) % self.bases.len();
        let req = self.http.request(method, format!("{}{path}", self.bases[at]));
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        (at, req)
    }

    /// Replica `at` did not answer: the next one takes the following requests.
    fn fail_over(&self, at: usize) {
        if self.bases.len() > 1
            && self
                .current
                .compare_exchange(at, (at + 1) % self.bases.len(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let next = &self.bases[(at + 1) % self.bases.len()];
            warn!(unreachable = %self.bases[at], next = %next, "control-plane replica not answering; moving to the next");
        }
    }

    /// Registers, retrying while the control plane is unreachable.
    pub async fn bootstrap(&self, request: &BootstrapRequest) -> Result<BootstrapResponse, BootstrapError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let (at, req) = self.request(reqwest::Method::POST, "/bootstrap");
            match req.json(request).send().await {
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
                Ok(resp) => {
                    warn!(cp = %self.bases[at], status = resp.status().as_u16(), "bootstrap failed; retrying");
                    self.fail_over(at);
                }
                Err(e) => {
                    warn!(cp = %self.bases[at], error = %root_cause(&e), "control plane unreachable; retrying");
                    self.fail_over(at);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One long-poll: a new plan, or `None` when nothing changed.
    pub async fn poll_plan(&self, plan_path: &str, version: u64) -> Result<Option<PlanResponse>, PollError> {
        let path = format!("{plan_path}?version={version}&timeout=30");
        let (at, req) = self.request(reqwest::Method::GET, &path);
        let resp = req.send().await.map_err(|e| {
            self.fail_over(at);
            PollError::Transient(format!("control plane {} unreachable: {}", self.bases[at], root_cause(&e)))
        })?;
        if resp.status().is_server_error() {
            self.fail_over(at);
        }
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
        let (at, req) = self.request(reqwest::Method::POST, &format!("/delivery/{mesh}/{name}"));
        let sent = req.json(report).send().await;
        if sent.as_ref().map_or(true, |r| r.status().is_server_error()) {
            self.fail_over(at);
        }
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
