//! The HTTP side of ternctl: one client for the control plane's API, and
//! errors that say what to do next.

use anyhow::{anyhow, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tern_api::ErrorBody;

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// An answer from the API: status and JSON body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Client {
    /// A client for the API at `base`, trusting `ca_cert` (PEM) for https.
    pub fn new(base: &str, token: Option<String>, ca_cert: Option<&std::path::Path>) -> Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!("--api must be an http:// or https:// URL, got {base:?}"));
        }
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|e| anyhow!("reading --ca-cert {}: {e}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|_| anyhow!("--ca-cert {} is not a PEM certificate", path.display()))?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(cert);
        }
        let http = builder.build()?;
        Ok(Client { base, token, http })
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            let why = if e.is_connect() && is_tls_failure(&e) {
                format!("TLS failed ({}); give the control plane's CA with --ca-cert (tern-cp's data directory: tls/ca.crt)", root_cause(&e))
            } else if e.is_connect() {
                "connection refused".to_string()
            } else if e.is_timeout() {
                "timed out".to_string()
            } else {
                root_cause(&e)
            };
            anyhow!(
                "cannot reach the Tern API at {}: {why}. Is tern-cp running? Start it with `tern-cp run`, \
                 or point ternctl at it with --api or TERN_API.",
                self.base
            )
        })?;
        let status = resp.status();
        let text = resp.text().await?;
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok(Answer { status, body })
    }

    /// Sends and turns any non-2xx answer into an error built from Kuma's error body.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let answer = self.send(method, path, body).await?;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(api_error(&answer))
        }
    }
}

/// Whether a connection failed in the TLS handshake (an unknown CA, a wrong name).
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
            return true;
        }
        cur = err.source();
    }
    false
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// One paragraph: what failed, then every invalid field on its own line.
pub fn api_error(answer: &Answer) -> anyhow::Error {
    use crate::output::clean;
    let Ok(body) = serde_json::from_value::<ErrorBody>(answer.body.clone()) else {
        return anyhow!("the API answered {}: {}", answer.status, clean(&answer.body.to_string()));
    };
    // Every piece comes from the server: cleaned, so the only newlines are ternctl's own.
    let mut msg = format!("{}: {}", clean(&body.title), clean(&body.detail));
    if answer.status == StatusCode::UNAUTHORIZED {
        msg.push_str(
            "\nSet TERN_TOKEN (or `token:` in ternctl's config file) to the token tern-cp wrote to its data directory.",
        );
    }
    for p in &body.invalid_parameters {
        let doc = p.document.map(|d| format!("document {d}: ")).unwrap_or_default();
        if p.field.is_empty() {
            msg.push_str(&format!("\n  {doc}{}", clean(&p.reason)));
        } else {
            msg.push_str(&format!("\n  {doc}{}: {}", clean(&p.field), clean(&p.reason)));
        }
    }
    anyhow!(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_cannot_drive_the_terminal() {
        let body = serde_json::json!({"type": "/std-errors", "status": 400, "title": "Bad\x1b[2J", "detail": "x\nERROR forged",
            "details": "", "invalid_parameters": [{"field": "name\u{9b}", "reason": "bad\rline"}]});
        let text = api_error(&Answer { status: StatusCode::BAD_REQUEST, body }).to_string();
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(!text.contains("\nERROR"), "{text}");
        assert_eq!(text.lines().count(), 2, "ternctl's own line break only: {text}");
    }
}
