//! Envoy as tern-dp's child: its bootstrap (ADS at the control plane, admin
//! on loopback), and a supervisor that restarts it with backoff when it dies
//! and stops it with SIGTERM when tern-dp stops.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

pub struct EnvoySetup {
    pub binary: PathBuf,
    pub work_dir: PathBuf,
    pub node_id: String,
    /// The dataplane's service, Envoy's `node.cluster`.
    pub service: String,
    pub admin_port: u16,
    /// The control plane's data-plane server (ADS).
    pub cp_host: String,
    pub cp_port: u16,
}

/// Finds Envoy: the given path, else `envoy` on PATH.
pub fn find_binary(given: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("envoy")).find(|p| p.is_file())
}

/// How long Envoy's OpenTelemetry tracer holds finished spans at most before
/// sending them (Envoy's own default is 5 s).
pub const SPAN_FLUSH_INTERVAL_MS: u64 = 1000;
/// How many finished spans Envoy's tracer collects (per worker thread)
/// before sending them sooner than the interval. Envoy's default is 5, one
/// export per five requests when every request is traced; fifty cuts the
/// export requests tenfold, and the interval above bounds the wait.
pub const MIN_FLUSH_SPANS: u64 = 50;

/// Envoy's bootstrap: node identity, admin on 127.0.0.1, the tracer's
/// batching (a runtime layer, below the admin layer so it can still be
/// changed live), and everything else over ADS from the control plane.
pub fn bootstrap(s: &EnvoySetup) -> Value {
    let ads_source = json!({"ads": {}, "resource_api_version": "V3"});
    let cp_is_ip = s.cp_host.parse::<std::net::IpAddr>().is_ok();
    json!({
        "node": {"id": s.node_id, "cluster": s.service},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": s.admin_port}}},
        "layered_runtime": {"layers": [
            {"name": "tern", "static_layer": {
                "tracing.opentelemetry.flush_interval_ms": SPAN_FLUSH_INTERVAL_MS,
                "tracing.opentelemetry.min_flush_spans": MIN_FLUSH_SPANS
            }},
            {"name": "admin", "admin_layer": {}}
        ]},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "tern_control_plane"}}],
                "set_node_on_first_message_only": true
            },
            "cds_config": ads_source,
            "lds_config": ads_source
        },
        "static_resources": {"clusters": [{
            "name": "tern_control_plane",
            "type": if cp_is_ip { "STATIC" } else { "STRICT_DNS" },
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }},
            "load_assignment": {"cluster_name": "tern_control_plane", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": s.cp_host, "port_value": s.cp_port}}
            }}]}]}
        }]}
    })
}

/// Runs Envoy until `stop` turns true, restarting it with backoff when it
/// exits on its own.
pub async fn supervise(setup: EnvoySetup, mut stop: watch::Receiver<bool>) {
    let bootstrap_path = setup.work_dir.join("envoy-bootstrap.json");
    let log_path = setup.work_dir.join("envoy.log");
    if let Err(e) = std::fs::write(&bootstrap_path, bootstrap(&setup).to_string()) {
        warn!(error = %e, "cannot write Envoy's bootstrap; Envoy not started");
        return;
    }
    let mut backoff = Duration::from_secs(1);
    loop {
        let log = match std::fs::OpenOptions::new().create(true).append(true).open(&log_path) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "cannot open Envoy's log file");
                return;
            }
        };
        let err_log = log.try_clone().ok();
        let mut cmd = tokio::process::Command::new(&setup.binary);
        cmd.arg("-c")
            .arg(&bootstrap_path)
            .args(["--disable-hot-restart", "--log-level", "warn", "--drain-time-s", "2"])
            .stdout(log)
            .kill_on_drop(true);
        if let Some(e) = err_log {
            cmd.stderr(e);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                warn!(binary = %setup.binary.display(), error = %e, "cannot start Envoy");
                return;
            }
        };
        let pid = child.id();
        info!(pid = ?pid, admin_port = setup.admin_port, "Envoy started");
        let started = tokio::time::Instant::now();
        let exited = tokio::select! {
            status = child.wait() => Some(status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())),
            _ = stop.wait_for(|s| *s) => None,
        };
        if let Some(status) = exited {
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_secs(1);
            }
            warn!(status = %status, log = %log_path.display(), retry_in = ?backoff, "Envoy exited; restarting");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
            continue;
        }
        // Asked to stop: SIGTERM, then a bounded wait.
        if let Some(pid) = pid {
            terminate(pid);
        }
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => info!("Envoy stopped"),
            Err(_) => {
                warn!("Envoy did not stop within 10s; killing it");
                let _ = child.kill().await;
            }
        }
        return;
    }
}

/// Sends SIGTERM, so Envoy drains and exits cleanly.
fn terminate(pid: u32) {
    // `kill` is the one portable way to send a specific signal without unsafe code.
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}
