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
    /// The control-plane replicas: host (a DNS name or an IP address) and port.
    pub cp: Vec<(String, u16)>,
    /// Over TLS, verified against this CA (a file Envoy reads); `None` for plain HTTP/2 on loopback.
    pub cp_tls: Option<CpTls>,
    /// The data-plane token Envoy presents on its ADS stream.
    pub token: Option<String>,
}

pub struct CpTls {
    /// The CA file; `None` trusts the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// What Envoy needs, if an Envoy binary is available.
pub fn setup(
    args: &crate::run::RunArgs,
    dp: &tern_model::Resource,
    spec: &tern_model::spec::DataplaneSpec,
    work_dir: &Path,
) -> Result<Option<EnvoySetup>, String> {
    let Some(binary) = find_binary(args.envoy_binary.clone()) else {
        warn!("no Envoy binary (--envoy-binary, or envoy on PATH): running without a sidecar proxy");
        return Ok(None);
    };
    let cp = args
        .cp
        .addresses
        .iter()
        .map(|url| {
            let host = url.host_str().map(|h| h.trim_matches(['[', ']']).to_string()).unwrap_or_default();
            // parse_address made sure of a port.
            (host, url.port_or_known_default().unwrap_or(5678))
        })
        .collect();
    let tls = args.cp.addresses.first().is_some_and(|url| url.scheme() == "https");
    let ca_file = match &args.cp.ca_cert {
        Some(p) => Some(std::fs::canonicalize(p).map_err(|e| format!("--ca-cert-file {}: {e}", p.display()))?),
        None => None,
    };
    Ok(Some(EnvoySetup {
        binary,
        work_dir: work_dir.to_path_buf(),
        node_id: format!("{}/{}", dp.mesh, dp.name),
        service: crate::run::service_of(dp, spec),
        admin_port: spec.admin_port(),
        cp,
        cp_tls: tls.then_some(CpTls { ca_file }),
        token: args.cp.token.clone(),
    }))
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
    let cp_is_ip = s.cp.iter().all(|(host, _)| host.parse::<std::net::IpAddr>().is_ok());
    let mut grpc_service = json!({"envoy_grpc": {"cluster_name": "tern_control_plane"}});
    if let Some(token) = &s.token {
        grpc_service["initial_metadata"] =
            json!([{"key": tern_protocol::AUTHORIZATION, "value": format!("Bearer {token}")}]);
    }
    let mut cluster = control_plane_cluster(s, cp_is_ip);
    if let Some(tls) = &s.cp_tls {
        cluster["transport_socket"] = control_plane_tls(s, tls);
    }
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
                "grpc_services": [grpc_service],
                "set_node_on_first_message_only": true
            },
            "cds_config": ads_source,
            "lds_config": ads_source
        },
        "static_resources": {"clusters": [cluster]}
    })
}

fn control_plane_cluster(s: &EnvoySetup, cp_is_ip: bool) -> Value {
    json!({
        "name": "tern_control_plane",
        "type": if cp_is_ip { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }},
        // A replica that refuses connections is set aside while the others serve.
        "outlier_detection": {
            "split_external_local_origin_errors": true,
            "consecutive_local_origin_failure": 1,
            "base_ejection_time": "5s",
            "max_ejection_percent": 100
        },
        "load_assignment": {"cluster_name": "tern_control_plane", "endpoints": [{"lb_endpoints": s.cp.iter().map(|(host, port)| json!({"endpoint": {
            "address": {"socket_address": {"address": host, "port_value": port}}
        }})).collect::<Vec<_>>()}]}
    })
}

/// TLS to the control plane: its certificate must chain to the CA and name
/// the host Envoy dials (as a DNS name or an IP address).
fn control_plane_tls(s: &EnvoySetup, tls: &CpTls) -> Value {
    let names: Vec<Value> =
        s.cp.iter()
            .map(|(host, _)| {
                let san_type = if host.parse::<std::net::IpAddr>().is_ok() { "IP_ADDRESS" } else { "DNS" };
                json!({"san_type": san_type, "matcher": {"exact": host}})
            })
            .collect();
    let mut validation = json!({"match_typed_subject_alt_names": names});
    if let Some(ca) = &tls.ca_file {
        validation["trusted_ca"] = json!({"filename": ca.display().to_string()});
    }
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {"alpn_protocols": ["h2"], "validation_context": validation}
    });
    // One SNI per cluster: the first replica's name (replicas behind one
    // name, or sharing a certificate, are the common case).
    if let Some((host, _)) = s.cp.first().filter(|(h, _)| h.parse::<std::net::IpAddr>().is_err()) {
        context["sni"] = json!(host);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": context})
}

/// Runs Envoy until `stop` turns true, restarting it with backoff when it
/// exits on its own. Fails only when Envoy cannot be started at all.
pub async fn supervise(setup: EnvoySetup, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let bootstrap_path = setup.work_dir.join("envoy-bootstrap.json");
    let log_path = setup.work_dir.join("envoy.log");
    // Envoy's bootstrap holds the token: owner only.
    tern_process::write_private(&bootstrap_path, bootstrap(&setup).to_string().as_bytes())
        .map_err(|e| format!("writing Envoy's bootstrap {}: {e}", bootstrap_path.display()))?;
    let mut backoff = Duration::from_secs(1);
    loop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("opening Envoy's log file {}: {e}", log_path.display()))?;
        let err_log = log.try_clone().ok();
        let mut cmd = tokio::process::Command::new(&setup.binary);
        cmd.arg("-c")
            .arg(&bootstrap_path)
            .args(["--disable-hot-restart", "--log-level", "warn", "--drain-time-s", "2"])
            // Read by the tracer's environment resource detector: spans
            // carry this host's name, which never leaves the host otherwise.
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                format!("host.name={}", crate::resource_attribute_value(&crate::host_name())),
            )
            .stdout(log)
            .kill_on_drop(true);
        tern_process::die_with_parent(&mut cmd);
        if let Some(e) = err_log {
            cmd.stderr(e);
        }
        let mut child = cmd.spawn().map_err(|e| format!("starting Envoy {}: {e}", setup.binary.display()))?;
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
                _ = stop.wait_for(|s| *s) => return Ok(()),
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
        return Ok(());
    }
}

/// Sends SIGTERM, so Envoy drains and exits cleanly.
fn terminate(pid: u32) {
    // `kill` is the one portable way to send a specific signal without unsafe code.
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}
