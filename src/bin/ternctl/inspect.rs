//! `ternctl inspect dataplane`: the dataplane, what its data plane reported,
//! and the OpenTelemetry status per backend and signal, with what to do about
//! every state that is not `ready` (seed 000's troubleshooting).

use crate::client::{api_error, Client};
use crate::output::{self, clean, Format};
use anyhow::{bail, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::fmt::Write as _;
use tern_protocol::RuntimeView;

/// The dataplane, its insight and its runtime view, as the API has them.
async fn fetch(client: &Client, mesh: &str, name: &str) -> Result<(Value, Value, Option<RuntimeView>)> {
    let dp = client.send(Method::GET, &format!("/meshes/{mesh}/dataplanes/{name}"), None).await?;
    if dp.status == StatusCode::NOT_FOUND {
        bail!("Dataplane {name:?} not found in mesh {mesh:?}");
    }
    if !dp.status.is_success() {
        return Err(api_error(&dp));
    }
    let insight = client.send(Method::GET, &format!("/meshes/{mesh}/dataplane-insights/{name}"), None).await?;
    let insight = if insight.status.is_success() { insight.body } else { Value::Null };
    let runtime = client.send(Method::GET, &format!("/meshes/{mesh}/dataplanes/{name}/_runtime"), None).await?;
    // A control plane that does not serve the view (or an older one) leaves it out.
    let runtime = runtime.status.is_success().then(|| serde_json::from_value(runtime.body).ok()).flatten();
    Ok((dp.body, insight, runtime))
}

/// The table view as text.
pub async fn text(client: &Client, mesh: &str, name: &str) -> Result<String> {
    let (dp, insight, runtime) = fetch(client, mesh, name).await?;
    let now = chrono::Utc::now();
    let runtime = runtime.map(|r| render_runtime(&r, now)).unwrap_or_default();
    Ok(format!("{}{runtime}", render(&dp, &insight, now)))
}

pub async fn dataplane(client: &Client, mesh: &str, name: &str, format: Format) -> Result<()> {
    match format {
        Format::Table => {
            print!("{}", text(client, mesh, name).await?);
            Ok(())
        }
        f => {
            let (dp, insight, runtime) = fetch(client, mesh, name).await?;
            output::print_value(&json!({"dataplane": dp, "insight": insight, "runtime": runtime}), f)
        }
    }
}

/// What to do about a signal that is not ready.
pub fn hint(state: &str, reasons: &[&str]) -> Option<&'static str> {
    match state {
        "missing" => Some(
            "set endpoint.address on the backend, or OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT \
             on the sidecar (on Kubernetes, HOST_IP names the node-local collector)",
        ),
        "blocked" if reasons.contains(&"RequiredEnvMissing") => Some(
            "the backend has mode: Required: inject the missing variables on the sidecar and restart the data plane \
             so they reach the control plane through bootstrap",
        ),
        "ambiguous" => Some(
            "set mode: Disabled on every backend that should not receive environment input, or scope policies so \
             only one backend reaches each data plane",
        ),
        _ => None,
    }
}

fn list(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// Items joined for printing ([`clean`]ed: they come from the server), or `-`.
fn dash(items: &[&str]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        clean(&items.join(",")).into_owned()
    }
}

/// A string field for printing: cleaned, or `default` when absent.
fn field<'a>(v: &'a Value, default: &'a str) -> std::borrow::Cow<'a, str> {
    clean(v.as_str().unwrap_or(default))
}

pub fn render(dp: &Value, insight: &Value, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = String::new();
    let net = &dp["networking"];
    let _ = writeln!(out, "Dataplane {} (mesh {})", field(&dp["name"], ""), field(&dp["mesh"], ""));
    let _ = writeln!(out, "  address:   {}", field(&net["address"], "-"));
    let inbounds: Vec<String> = net["inbound"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let port = i["port"].as_i64().unwrap_or(0);
            let service = field(&i["tags"]["kuma.io/service"], "?");
            let protocol = field(&i["tags"]["kuma.io/protocol"], "tcp");
            match i["servicePort"].as_i64() {
                Some(sp) => format!("{port}->{sp} {service} ({protocol})"),
                None => format!("{port} {service} ({protocol})"),
            }
        })
        .collect();
    let _ = writeln!(out, "  inbounds:  {}", if inbounds.is_empty() { "-".into() } else { inbounds.join(", ") });
    let session = &insight["session"];
    if session.is_null() {
        let _ = writeln!(out, "  data plane: has not connected (start tern-dp run for it)");
        return out;
    }
    let connected = session["connectTime"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| format!("{} ago", output::age(now - t.with_timezone(&chrono::Utc))))
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "  tern-dp:   {}, features: {}, connected {connected}",
        field(&session["version"], "?"),
        dash(&list(&session["features"]))
    );
    let env = &session["otelEnv"];
    let layers: Vec<String> = ["shared", "traces", "metrics", "logs"]
        .iter()
        .filter_map(|l| {
            let present = list(&env[*l]["present"]);
            (!present.is_empty()).then(|| format!("{l}: {}", dash(&present)))
        })
        .collect();
    let _ = writeln!(out, "  OTel env:  {}", if layers.is_empty() { "none".into() } else { layers.join("; ") });
    for p in env["problems"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "    {}: {}", field(&p["scope"], ""), field(&p["message"], ""));
    }
    let status = &insight["status"];
    let backends = status["openTelemetry"]["backends"].as_array().cloned().unwrap_or_default();
    out.push_str("\nOpenTelemetry\n");
    let mut rows = Vec::new();
    let mut hints = Vec::new();
    for b in &backends {
        let name = b["name"].as_str().unwrap_or("");
        for signal in ["traces", "metrics", "logs"] {
            let s = &b[signal];
            if s["enabled"] != true {
                rows.push(vec![name.into(), signal.into(), "not enabled".into(), "-".into(), "-".into(), "-".into()]);
                continue;
            }
            let state = s["state"].as_str().unwrap_or("?");
            let reasons = list(&s["blockedReasons"]);
            let env_text = format!(
                "{}, {}",
                if s["envAllowed"] == true { "allowed" } else { "disallowed" },
                if s["envInputPresent"] == true { "present" } else { "absent" }
            );
            let missing = list(&s["missingFields"]);
            let overrides = list(&s["overrideKinds"]);
            let env_text =
                if overrides.is_empty() { env_text } else { format!("{env_text}, overrides {}", overrides.join(",")) };
            rows.push(vec![name.into(), signal.into(), state.into(), env_text, dash(&reasons), dash(&missing)]);
            if let Some(h) = hint(state, &reasons) {
                hints.push(format!("  {}/{signal} is {}: {h}", clean(name), clean(state)));
            }
        }
    }
    if rows.is_empty() {
        out.push_str("  no backend resolves for this dataplane (no policy with a backendRef selects it)\n");
    } else {
        out.push_str(&output::table(&["BACKEND", "SIGNAL", "STATE", "ENV", "REASONS", "MISSING"], &rows));
    }
    if !hints.is_empty() {
        out.push_str("\nWhat to do\n");
        for h in hints {
            out.push_str(&h);
            out.push('\n');
        }
    }
    let notes = list(&status["notes"]);
    if !notes.is_empty() {
        out.push_str("\nNotes\n");
        for n in notes {
            let _ = writeln!(out, "  {}", clean(n));
        }
    }
    out
}

/// Delivery counts from the data plane, and what Envoy did with its config.
pub fn render_runtime(runtime: &RuntimeView, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = String::new();
    let backends = runtime.delivery.as_ref().map(|d| d.backends.as_slice()).unwrap_or_default();
    if !backends.is_empty() {
        let ago = runtime
            .delivery_reported_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| format!("{} ago", output::age(now - t.with_timezone(&chrono::Utc))))
            .unwrap_or_else(|| "-".into());
        let via = runtime.delivery_replica.as_deref().map(|r| format!(" to replica {}", clean(r))).unwrap_or_default();
        let _ = writeln!(out, "\nDelivery (reported by tern-dp {ago}{via})");
        let mut rows = Vec::new();
        for b in backends {
            for (signal, s) in &b.signals {
                let error = s.last_error.as_deref().or(s.unavailable.as_deref()).unwrap_or("-");
                rows.push(vec![
                    b.name.clone(),
                    signal.to_string(),
                    s.received.to_string(),
                    s.exported.to_string(),
                    s.retries.to_string(),
                    s.dropped.to_string(),
                    format!("{} ({})", s.queued_requests, human_bytes(s.queued_bytes)),
                    error.to_string(),
                ]);
            }
        }
        out.push_str(&output::table(
            &["BACKEND", "SIGNAL", "RECEIVED", "EXPORTED", "RETRIES", "DROPPED", "QUEUED", "LAST ERROR"],
            &rows,
        ));
    }
    match &runtime.xds.replica {
        Some(r) => {
            let _ = writeln!(out, "\nEnvoy (ADS stream on replica {})", clean(r));
        }
        None => out.push_str("\nEnvoy\n"),
    }
    match &runtime.xds.acked_version {
        Some(v) => {
            let _ = writeln!(out, "  accepted config version {}", clean(v));
        }
        None => out.push_str("  has not accepted a config yet\n"),
    }
    if let Some(nack) = &runtime.xds.nack {
        let _ = writeln!(
            out,
            "  REJECTED config version {} ({}): {}\n  Envoy keeps running its previous config; fix the policy that produced this.",
            clean(&nack.version),
            clean(nack.type_url.rsplit('.').next().unwrap_or("?")),
            clean(&nack.message),
        );
    }
    out
}

/// A byte count for people: B, KiB, MiB.
fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_signals_get_the_seed_hint() {
        let dp = json!({"name": "web-1", "mesh": "default", "networking": {"address": "10.0.0.1"}});
        let insight = json!({"session": {"version": "0.1.0", "features": ["feature-otel-via-kuma-dp"], "otelEnv": {}},
            "status": {"openTelemetry": {"backends": [{"name": "backend-a",
                "traces": {"enabled": true, "state": "ambiguous", "envAllowed": true, "envInputPresent": true, "blockedReasons": ["MultipleBackendsForSignal"]},
                "metrics": {"enabled": false}, "logs": {"enabled": false}}]}}});
        let text = render(&dp, &insight, chrono::Utc::now());
        assert!(text.contains("backend-a   traces    ambiguous"), "{text}");
        assert!(text.contains("MultipleBackendsForSignal"), "{text}");
        assert!(text.contains("backend-a/traces is ambiguous: set mode: Disabled on every backend"), "{text}");
        assert!(text.contains("metrics   not enabled"), "{text}");
    }

    #[test]
    fn server_text_is_escaped() {
        let evil = "x\x1b[2J\nERROR forged";
        let dp = json!({"name": evil, "mesh": "default", "networking": {"address": evil,
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": evil}}]}});
        let insight = json!({"session": {"version": evil, "features": [evil], "otelEnv": {"shared": {"present": [evil]},
                "problems": [{"scope": evil, "message": evil}]}},
            "status": {"notes": [evil], "openTelemetry": {"backends": [{"name": evil,
                "traces": {"enabled": true, "state": "missing", "blockedReasons": [evil], "missingFields": [evil]},
                "metrics": {"enabled": false}, "logs": {"enabled": false}}]}}});
        let runtime: RuntimeView =
            serde_json::from_value(json!({"deliveryReportedAt": evil, "delivery": {"backends": [
                {"name": evil, "signals": {"traces": {"exporting": true, "received": 1, "exported": 0, "retries": 0,
                 "dropped": 0, "lastError": evil, "queuedRequests": 0, "queuedBytes": 0}}}]},
            "xds": {"ackedVersion": evil, "nack": {"version": evil, "typeUrl": evil, "message": evil}}}))
            .expect("runtime view");
        let now = chrono::Utc::now();
        let text = format!("{}{}", render(&dp, &insight, now), render_runtime(&runtime, now));
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(!text.contains("\nERROR"), "no line starts with the forged text: {text}");
        assert!(text.contains("x\\x1b[2J\\nERROR forged"), "{text}");
    }
}
