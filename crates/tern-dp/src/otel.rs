//! `tern-dp otel inventory` and `tern-dp otel resolve`: the operator's view of
//! what this data plane reports and what its exporters will do, through the
//! same engine the control plane uses for status.

use serde_json::{json, Map, Value};
use std::path::Path;
use tern_otlp_config::{
    build_exporter, group_clients, resolve_signal, Delivery, Inventory, OtelPlan, ProcessEnv, Signal, SignalStatus,
};

/// The inventory for the current environment, as sent at bootstrap.
pub fn inventory() -> Result<String, String> {
    let (_, _, inventory) = Inventory::discover(&ProcessEnv);
    serde_json::to_string_pretty(&inventory).map_err(|e| e.to_string())
}

fn read_plan(path: &Path) -> Result<OtelPlan, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let value: Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{} is not valid JSON or YAML: {e}", path.display()))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let at = e.path().to_string();
        format!("{} is not a valid plan: {at}: {}", path.display(), e.into_inner())
    })
}

/// The backend's `retry` and `queue` as the pipe applies them, each value
/// with its source (`explicit` from the backend, else the pipe's `default`;
/// `tern-dp run --otel-queue-*` may change the queue's defaults).
fn delivery(d: &Delivery) -> Value {
    let defaults = tern_pipe::RetryPolicy::of(&Delivery::default());
    let field = |explicit: Option<u64>, default: u64| match explicit {
        Some(v) => json!({"value": v, "source": "explicit"}),
        None => json!({"value": default, "source": "default"}),
    };
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let count = |n: Option<usize>| n.map(|n| n as u64);
    json!({
        "initialBackoffMs": field(d.initial_backoff_ms, ms(defaults.initial)),
        "maxBackoffMs": field(d.max_backoff_ms, ms(defaults.max)),
        "maxElapsedMs": field(d.max_elapsed_ms, 0),
        "queueRequests": field(count(d.queue_requests), tern_pipe::DEFAULT_QUEUE_REQUESTS as u64),
        "queueBytes": field(count(d.queue_bytes), tern_pipe::DEFAULT_QUEUE_BYTES as u64),
    })
}

/// The final per-signal exporter config for a plan and the current
/// environment, with header values and file paths redacted.
pub fn resolve(plan_path: &Path) -> Result<String, String> {
    let plan = read_plan(plan_path)?;
    let (values, parsed, inventory) = Inventory::discover(&ProcessEnv);
    let mut backends = Vec::new();
    for backend in &plan.backends {
        let mut signals = Map::new();
        let mut configs = Vec::new();
        for signal in Signal::ALL {
            let Some(planned) = backend.signal(signal).filter(|p| p.status.enabled) else { continue };
            let local = resolve_signal(&backend.settings, signal, &inventory, planned.ambiguous());
            let status = SignalStatus::from(&local);
            let config = build_exporter(&backend.settings, &local, &parsed, values.host_ip.as_deref());
            let mut entry = json!({
                "state": local.state,
                "status": status,
                "exporter": config.as_ref().map(|c| c.redacted()),
            });
            if status != planned.status {
                // Only possible if the environment changed since bootstrap.
                entry["controlPlaneStatus"] = serde_json::to_value(&planned.status).unwrap_or(Value::Null);
                entry["note"] = json!("the control plane computed a different status; restart tern-dp so it re-bootstraps with this environment");
            }
            if let Some(r) = &planned.refresh_interval {
                entry["refreshInterval"] = json!(r);
            }
            signals.insert(signal.as_str().into(), entry);
            configs.extend(config);
        }
        backends.push(json!({
            "name": backend.name,
            "socketPath": backend.socket_path,
            "signals": signals,
            "clients": group_clients(&configs),
            "delivery": delivery(&backend.settings.delivery),
        }));
    }
    serde_json::to_string_pretty(&json!({"backends": backends})).map_err(|e| e.to_string())
}
