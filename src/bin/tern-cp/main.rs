//! `tern-cp`: the Tern control plane. Today it serves the resource store over
//! Kuma's REST API; see ARCHITECTURE.md for what it grows into.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tern_api::WriteAuth;
use tern_reconcile::{PlanHub, Reconciler};
use tern_store::SqlStore;
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "tern-cp", version, about = "Tern control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the REST API (Kuma's default port 5681).
    #[arg(long, default_value = "127.0.0.1:5681", env = "TERN_API_ADDR")]
    api_addr: SocketAddr,
    /// Address of the data-plane server: bootstrap and plan delivery (Kuma's default port 5678).
    #[arg(long, default_value = "127.0.0.1:5678", env = "TERN_DP_ADDR")]
    dp_addr: SocketAddr,
    /// Where the control plane keeps its state (embedded store, API token).
    #[arg(long, env = "TERN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `sqlite:PATH` (default: sqlite under the data directory) or `postgres://USER@HOST/DB`.
    #[arg(long, env = "TERN_STORE")]
    store: Option<String>,
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tern")
}

/// Reads the API token from the data directory, creating it on first start.
fn load_or_create_token(data_dir: &Path) -> Result<(String, PathBuf)> {
    let path = data_dir.join("api-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let token = existing.trim().to_string();
        if !token.is_empty() {
            return Ok((token, path));
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the API token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &token).with_context(|| format!("writing the API token to {}", path.display()))?;
    Ok((token, path))
}

#[cfg(unix)]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(content.as_bytes())
}

async fn run(args: RunArgs) -> Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let store_url = args.store.unwrap_or_else(|| format!("sqlite:{}", data_dir.join("tern.db").display()));
    let store =
        SqlStore::open(&store_url).await.with_context(|| format!("opening the store {}", redact_url(&store_url)))?;
    info!(store = %redact_url(&store_url), "store open");

    let auth = if args.api_addr.ip().is_loopback() {
        WriteAuth { token: None }
    } else {
        let (token, path) = load_or_create_token(&data_dir)?;
        warn!(
            addr = %args.api_addr,
            token_file = %path.display(),
            "the API listens beyond loopback: every write needs `Authorization: Bearer <token>` (ternctl: TERN_TOKEN or its config file)"
        );
        WriteAuth { token: Some(token) }
    };

    let api_listener = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("binding the API to {} (is another tern-cp running?)", args.api_addr))?;
    let dp_listener = tokio::net::TcpListener::bind(args.dp_addr)
        .await
        .with_context(|| format!("binding the data-plane server to {} (is another tern-cp running?)", args.dp_addr))?;
    let store = Arc::new(store);
    let hub = Arc::new(PlanHub::default());
    let xds = Arc::new(tern_xds::XdsHub::default());
    tokio::spawn(Reconciler::new(store.clone(), hub.clone(), xds.clone()).run());
    info!(api = %api_listener.local_addr()?, dp = %dp_listener.local_addr()?, "tern-cp listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let runtime = Arc::new(tern_dp_server::RuntimeState::new(xds.clone()));
    let api = axum::serve(api_listener, tern_api::router(store.clone(), auth, Some(runtime.clone())))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    // Bootstrap and plans (HTTP/1.1) and ADS for Envoy (gRPC, HTTP/2) share the port.
    let ads = tonic::service::Routes::new(xds.service()).into_axum_router();
    let dp_router = tern_dp_server::router(store, hub, runtime).merge(ads);
    let dp = axum::serve(dp_listener, dp_router).with_graceful_shutdown(stopped(stop_rx));
    let servers = tokio::spawn(async move { tokio::try_join!(api.into_future(), dp.into_future()) });
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    // Long-polls hold connections open; do not wait for them forever.
    match tokio::time::timeout(std::time::Duration::from_secs(5), servers).await {
        Ok(Ok(result)) => result.map(|_| ()).context("serving")?,
        Ok(Err(e)) => return Err(e).context("serving"),
        Err(_) => info!("connections still open after 5s; closing them"),
    }
    info!("tern-cp stopped");
    Ok(())
}

/// Hides a password in a store URL before it is logged.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
    };
    if let Err(e) = result {
        eprintln!("tern-cp: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(redact_url("postgres://tern:s3cret@db:5432/tern"), "postgres://tern:***@db:5432/tern");
        assert_eq!(redact_url("postgres://tern@db/tern"), "postgres://tern@db/tern");
        assert_eq!(redact_url("sqlite:/x/tern.db"), "sqlite:/x/tern.db");
    }
}
