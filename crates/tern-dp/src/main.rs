//! `tern-dp`: the Tern data-plane agent: `run` (register with the control
//! plane, run Envoy and the OTLP pipe), `validate` a Dataplane file, and
//! `otel` (what its OTLP exporters would do).

mod cp;
mod envoy;
mod otel;
mod run;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tern_model::{parse_documents, resource_from_document, Kind};

#[derive(Parser)]
#[command(name = "tern-dp", version, about = "Tern data-plane agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
        #[arg(long, default_value = "http://127.0.0.1:5678", env = "TERN_CP_ADDRESS")]
        cp_address: String,
        /// The CA (PEM) the control plane's certificate chains to (tern-cp's data directory: tls/ca.crt).
        #[arg(long, env = "TERN_CA_CERT_FILE")]
        ca_cert_file: Option<PathBuf>,
        /// A file holding this data plane's token (`ternctl generate dataplane-token`).
        #[arg(long, env = "TERN_DATAPLANE_TOKEN_FILE", conflicts_with = "dataplane_token")]
        dataplane_token_file: Option<PathBuf>,
        /// This data plane's token itself (prefer the file: arguments are visible to other local users).
        #[arg(long, env = "TERN_DATAPLANE_TOKEN", hide_env_values = true)]
        dataplane_token: Option<String>,
        /// This sidecar's Dataplane resource (Universal or Kubernetes form).
        #[arg(long)]
        dataplane_file: PathBuf,
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
        /// beyond it new requests are refused and counted as dropped.
        #[arg(long, default_value_t = tern_pipe::DEFAULT_QUEUE_REQUESTS as u32, value_parser = clap::value_parser!(u32).range(1..))]
        otel_queue_requests: u32,
        /// Bytes of export requests each signal's queue holds (as received, encoded); the other bound
        /// on the queue. Accepts a plain number or a K/M/G suffix (powers of 1024), e.g. 16M.
        #[arg(long, default_value = "16M", value_parser = parse_size)]
        otel_queue_bytes: usize,
        /// Serve tern-dp's own delivery counts for Prometheus at http://ADDR/metrics.
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
            envoy_binary,
            work_dir,
            otel_pipe,
            otel_queue_requests,
            otel_queue_bytes,
            metrics_addr,
        } => {
            let token = match (dataplane_token_file, dataplane_token) {
                (Some(path), _) => read_token(&path).map(Some),
                (None, token) => Ok(token.map(|t| t.trim().to_string())),
            };
            let cp = |token| cp::Settings { address: cp_address, token, ca_cert: ca_cert_file };
            let args = |dataplane, cp| run::RunArgs {
                cp,
                envoy_binary,
                metrics_addr,
                dataplane,
                work_dir,
                otel_pipe,
                queue: tern_pipe::QueueLimits { requests: otel_queue_requests as usize, bytes: otel_queue_bytes },
            };
            token.and_then(|t| read_dataplane(&dataplane_file).and_then(|dp| run_agent(args(dp, cp(t)))))
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
