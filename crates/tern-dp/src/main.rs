//! `tern-dp`: the Tern data-plane agent: `run` (register with the control
//! plane, run Envoy and the OTLP pipe), `validate` a Dataplane file, and
//! `otel` (what its OTLP exporters would do).

mod cp;
mod envoy;
mod metric_filter;
mod otel;
mod prometheus;
mod run;
mod tcp_logs;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tern_model::{parse_documents, resource_from_document, Kind};

#[derive(Parser)]
#[command(name = "tern-dp", version, about = "Tern data-plane agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: `Run`'s size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Check a Dataplane file (Universal or Kubernetes form) with the same
    /// rules the control plane applies, and print it as it will be stored.
    Validate {
        #[arg(long)]
        dataplane_file: PathBuf,
    },
    /// Register with the control plane and follow the OpenTelemetry plan.
    Run {
        /// The control plane's data-plane server: http://HOST:PORT on loopback, else https://HOST:PORT.
        /// Repeat it (or separate with commas) for several replicas: tern-dp and Envoy move to the
        /// next when one stops answering.
        #[arg(long, default_value = "http://127.0.0.1:5678", env = "TERN_CP_ADDRESS", value_parser = cp::parse_address, value_delimiter = ',')]
        cp_address: Vec<url::Url>,
        /// The CA (PEM) the control plane's certificate chains to (tern-cp's data directory: tls/ca.crt).
        #[arg(long, env = "TERN_CA_CERT_FILE")]
        ca_cert_file: Option<PathBuf>,
        /// A file holding this data plane's token (`ternctl generate dataplane-token`).
        #[arg(long, env = "TERN_DATAPLANE_TOKEN_FILE", conflicts_with = "dataplane_token")]
        dataplane_token_file: Option<PathBuf>,
        /// This data plane's token itself (prefer the file: arguments are visible to other local users).
        #[arg(long, env = "TERN_DATAPLANE_TOKEN", hide_env_values = true)]
        dataplane_token: Option<String>,
        /// This sidecar's Dataplane resource (Universal or Kubernetes form), registered with the
        /// control plane.
        #[arg(long, required_unless_present = "name", conflicts_with_all = ["name", "mesh"])]
        dataplane_file: Option<PathBuf>,
        /// Or the name of a Dataplane the control plane already has (on Kubernetes, made from the
        /// Pod: POD.NAMESPACE).
        #[arg(long, env = "TERN_DATAPLANE_NAME", requires = "mesh")]
        name: Option<String>,
        /// The mesh of --name.
        #[arg(long, env = "TERN_MESH")]
        mesh: Option<String>,
        /// Envoy to run as the sidecar proxy (default: `envoy` on PATH; without one, only the OTLP pipe runs).
        #[arg(long, env = "TERN_ENVOY_BINARY")]
        envoy_binary: Option<PathBuf>,
        /// Where sockets and the current plan live (default: $TMPDIR/tern-dp/<mesh>/<name>).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Advertise feature-otel-via-kuma-dp (the OTLP pipe). `--otel-pipe false` acts like an older data plane.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "TERN_DP_OTEL_PIPE")]
        otel_pipe: bool,
        /// Export requests each signal's queue holds (those being sent included) while the collector is unreachable;
        /// beyond it new requests wait for room (see --otel-queue-wait) or are refused and counted as dropped.
        #[arg(long, default_value_t = tern_pipe::DEFAULT_QUEUE_REQUESTS as u32, value_parser = clap::value_parser!(u32).range(1..))]
        otel_queue_requests: u32,
        /// Bytes of export requests each signal's queue holds (as received, encoded); the other bound
        /// on the queue. Accepts a plain number or a K/M/G suffix (powers of 1024), e.g. 16M.
        #[arg(long, default_value = "16M", value_parser = parse_size)]
        otel_queue_bytes: usize,
        /// How long a request that finds its queue full waits for room (its sender waits for the answer) before
        /// it is refused; waiting requests may hold one eighth of each queue bound more. A Go-style duration
        /// (500ms, 5s, 1m); 0 refuses at once. At most 1m.
        #[arg(long, default_value = "5s", value_parser = parse_wait)]
        otel_queue_wait: std::time::Duration,
        /// Serve tern-dp's own delivery counts for Prometheus at http://ADDR/metrics.
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// The certificate (PEM) MeshMetric Prometheus endpoints with `tls.mode: ProvidedTLS`
        /// are served with (Kuma's KUMA_DATAPLANE_RUNTIME_METRICS_CERT_PATH).
        #[arg(long, env = "TERN_DP_METRICS_CERT_FILE", requires = "metrics_key_file")]
        metrics_cert_file: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long, env = "TERN_DP_METRICS_KEY_FILE", requires = "metrics_cert_file")]
        metrics_key_file: Option<PathBuf>,
    },
    /// OpenTelemetry exporter configuration from the OTEL_EXPORTER_OTLP_* environment.
    #[command(subcommand)]
    Otel(OtelCommand),
}

#[derive(Subcommand)]
enum OtelCommand {
    /// Print the inventory sent to the control plane: which variables are
    /// present and usable, never their values.
    Inventory,
    /// Print the final per-signal exporter config for a plan file and this
    /// environment, each field with its source; secrets redacted.
    Resolve {
        #[arg(long)]
        plan: PathBuf,
    },
}

/// This host's name, for the `host.name` resource attribute.
fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// `s` as a value of `OTEL_RESOURCE_ATTRIBUTES` (W3C baggage octets: `,`,
/// `=`, `%`, spaces and controls percent-encoded).
fn resource_attribute_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && !b",=%;\\\"".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn validate(path: &PathBuf) -> Result<String, String> {
    let resource = read_dataplane(path)?;
    serde_yaml_ng::to_string(&resource.to_json()).map_err(|e| e.to_string())
}

fn read_dataplane(path: &PathBuf) -> Result<tern_model::Resource, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let docs = parse_documents(&text).map_err(|e| format!("{} is not valid YAML: {e}", path.display()))?;
    let [doc] = docs.as_slice() else {
        return Err(format!("{} must hold exactly one Dataplane document, found {}", path.display(), docs.len()));
    };
    let parsed = resource_from_document(&doc.value).map_err(|e| {
        let lines: Vec<String> = e.violations.iter().map(|v| format!("  {v}")).collect();
        format!("{} is not a valid Dataplane:\n{}", path.display(), lines.join("\n"))
    })?;
    if parsed.resource.kind != Kind::Dataplane {
        return Err(format!("{} holds a {}, not a Dataplane", path.display(), parsed.resource.kind));
    }
    Ok(parsed.resource)
}

fn run_agent(args: run::RunArgs) -> Result<String, String> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One worker: the agent's work is I/O, and with two the pipe spent more
    // in threads waking each other than it gained (BENCHMARKS.md, the relay).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut agent = tokio::spawn(run::run(args, stop_rx));
        let result = tokio::select! {
            r = &mut agent => r,
            _ = shutdown_signal() => {
                tracing::info!("stopping");
                let _ = stop_tx.send(true);
                agent.await
            }
        };
        result.map_err(|e| format!("agent failed: {e}"))?.map(|_| String::new())
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// The TLS configuration of ProvidedTLS Prometheus endpoints, checked at start.
fn metrics_tls(cert: &std::path::Path, key: &std::path::Path) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("reading --metrics-cert-file {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("reading --metrics-key-file {}: {e}", key.display()))?;
    tern_tls::server_config(&cert_pem, &key_pem).map_err(|e| format!("--metrics-cert-file/--metrics-key-file: {e}"))
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { dataplane_file } => validate(&dataplane_file),
        Command::Run {
            cp_address,
            ca_cert_file,
            dataplane_token_file,
            dataplane_token,
            dataplane_file,
            name,
            mesh,
            envoy_binary,
            work_dir,
            otel_pipe,
            otel_queue_requests,
            otel_queue_bytes,
            otel_queue_wait,
            metrics_addr,
            metrics_cert_file,
            metrics_key_file,
        } => {
            let metrics_tls = match (metrics_cert_file, metrics_key_file) {
                (Some(cert), Some(key)) => metrics_tls(&cert, &key).map(Some),
                _ => Ok(None),
            };
            let token = match (dataplane_token_file, dataplane_token) {
                (Some(path), _) => read_token(&path).map(Some),
                (None, token) => Ok(token.map(|t| t.trim().to_string())),
            };
            let token = cp::check_addresses(&cp_address).and(token);
            let cp = |token| cp::Settings { addresses: cp_address, token, ca_cert: ca_cert_file };
            let args = |dataplane, cp, metrics_tls| run::RunArgs {
                cp,
                envoy_binary,
                metrics_addr,
                metrics_tls,
                dataplane,
                work_dir,
                otel_pipe,
                queue: tern_pipe::QueueLimits {
                    requests: otel_queue_requests as usize,
                    bytes: otel_queue_bytes,
                    wait: otel_queue_wait,
                },
            };
            let dataplane = match (dataplane_file, name, mesh) {
                (Some(file), _, _) => read_dataplane(&file).map(|dp| run::DataplaneSource::File(Box::new(dp))),
                (None, Some(name), Some(mesh)) => Ok(run::DataplaneSource::Stored { mesh, name }),
                _ => Err("give --dataplane-file, or --name and --mesh".to_string()),
            };
            token.and_then(|t| dataplane.and_then(|dp| metrics_tls.and_then(|tls| run_agent(args(dp, cp(t), tls)))))
        }
        Command::Otel(OtelCommand::Inventory) => otel::inventory().map(|s| s + "\n"),
        Command::Otel(OtelCommand::Resolve { plan }) => otel::resolve(&plan).map(|s| s + "\n"),
    };
    match result {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(1);
        }
    }
}

/// Reads a data-plane token file; the error names the file, never its content.
fn read_token(path: &PathBuf) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading --dataplane-token-file {}: {}", path.display(), e.kind()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("--dataplane-token-file {} is empty", path.display()));
    }
    Ok(token.to_string())
}

/// A byte size: digits with an optional K, M or G suffix (powers of 1024).
fn parse_size(s: &str) -> Result<usize, String> {
    let (digits, unit) = match s.trim().char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.trim().split_at(i),
        None => (s.trim(), ""),
    };
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(format!("{s:?} is not a size: use a number of bytes with an optional K, M or G suffix")),
    };
    let n: usize = digits.parse().map_err(|_| format!("{s:?} is not a size: it must start with a whole number"))?;
    let bytes = n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes < 1024 {
        return Err(format!("{s:?} is too small: a queue needs at least 1K"));
    }
    if bytes > 4 << 30 {
        return Err(format!("{s:?} is too large: a queue holds at most 4G"));
    }
    Ok(bytes)
}

/// The queue's wait: a Go-style duration (`500ms`, `5s`, `1m30s`, `1.5s`;
/// units ns, us, µs, ms, s, m, h), or `0`; at most a minute, as a longer wait
/// outlives the export timeouts of the senders it holds.
fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("{s:?} is not a duration: use a number with a unit, e.g. 500ms, 5s or 1m (0 refuses at once)");
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = tail;
    }
    if total > 60.0 {
        return Err(format!("{s:?} is too long: the wait is at most 1m"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    #[test]
    fn resource_attribute_values_are_percent_encoded() {
        assert_eq!(super::resource_attribute_value("web-1.local"), "web-1.local");
        assert_eq!(super::resource_attribute_value("a,b=c d%é"), "a%2Cb%3Dc%20d%25%C3%A9");
    }

    use super::parse_wait;
    use std::time::Duration;

    #[test]
    fn waits_read_as_go_durations() {
        assert_eq!(parse_wait("0"), Ok(Duration::ZERO));
        assert_eq!(parse_wait("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_wait("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_wait("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_wait("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_wait("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_wait("1s500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "5", "s", "5x", "-1s", "5 s", "1.2.3s"] {
            assert!(parse_wait(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_wait("2m").unwrap_err().contains("at most 1m"));
    }
}
