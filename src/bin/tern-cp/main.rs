//! `tern-cp`: the Tern control plane: the REST API (plain HTTP on loopback,
//! HTTPS), the data-plane server (bootstrap, plans, delivery, ADS; TLS and
//! data-plane tokens) and the reconciler, run as one supervised set of tasks.

mod bearer;
mod files;
mod kubernetes;
mod mads;
mod metrics;
mod multizone;
mod replicas;
mod timed_store;
mod tls;
mod traces;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tern_api::WriteAuth;
use tern_dp_server::DpAuth;
use tern_kds::{OriginGuard, Role};
use tern_reconcile::{PlanHub, Reconciler};
use tern_store::{ResourceStore, SqlStore};
use tls::TlsSource;
use tokio::sync::watch;
use tokio::task::JoinSet;
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
    /// Address of the REST API over plain HTTP (Kuma's default port 5681); loopback only.
    #[arg(long, default_value = "127.0.0.1:5681", env = "TERN_API_ADDR")]
    api_addr: SocketAddr,
    /// Address of the REST API over HTTPS (Kuma's port 5682); `off` to serve none.
    /// Off loopback, every write needs the API token.
    #[arg(long, default_value = "127.0.0.1:5682", env = "TERN_API_TLS_ADDR", value_parser = parse_optional_addr)]
    api_tls_addr: OptionalAddr,
    /// Address of the data-plane server: bootstrap, plans and ADS (Kuma's default port 5678).
    #[arg(long, default_value = "127.0.0.1:5678", env = "TERN_DP_ADDR")]
    dp_addr: SocketAddr,
    /// Where Prometheus' kuma_sd_configs discover data planes (monitoring assignments, Kuma's
    /// port 5676); `off` to serve none. Beyond loopback over HTTPS, with the API token.
    #[arg(long, default_value = "127.0.0.1:5676", env = "TERN_MADS_ADDR", value_parser = parse_optional_addr)]
    mads_addr: OptionalAddr,
    /// Where the control plane's own metrics are served (`/metrics`, Kuma's port 5680); `off`
    /// to serve none. Beyond loopback over HTTPS, with the API token.
    #[arg(long, default_value = "127.0.0.1:5680", env = "TERN_METRICS_ADDR", value_parser = parse_optional_addr)]
    metrics_addr: OptionalAddr,
    /// Export the control plane's own spans (API requests, reconcile passes, xDS pushes) over
    /// OTLP to where the standard OTEL_EXPORTER_OTLP_* variables say (Kuma's
    /// KUMA_TRACING_OPENTELEMETRY_ENABLED).
    #[arg(long, env = "TERN_TRACING_OPENTELEMETRY_ENABLED", default_value_t = false, action = clap::ArgAction::Set, value_name = "true|false")]
    tracing_opentelemetry_enabled: bool,
    /// Serve the data-plane server over TLS also on loopback (off loopback it always is).
    #[arg(long, env = "TERN_DP_TLS")]
    dp_tls: bool,
    /// How data planes prove who they are: `dpToken` (data-plane tokens, Kuma's default) or
    /// `none` (loopback only).
    #[arg(long, default_value = "dpToken", env = "TERN_DP_AUTH", value_parser = ["dpToken", "none"])]
    dp_auth: String,
    /// The serving certificate (PEM) for every TLS port; without it a CA and a certificate
    /// are generated in the data directory (tls/ca.crt is what clients trust).
    #[arg(long, env = "TERN_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The serving certificate's private key (PEM).
    #[arg(long, env = "TERN_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the generated serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Where the control plane keeps its state (embedded store, API token, TLS CA).
    #[arg(long, env = "TERN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `sqlite:PATH` (default: sqlite under the data directory) or `postgres://USER@HOST/DB`.
    #[arg(long, env = "TERN_STORE", hide_env_values = true)]
    store: Option<String>,
    /// Where resources live: `universal` (the store above) or `kubernetes` (the apiserver:
    /// CRDs, kubectl, the admission webhook).
    #[arg(long, default_value = "universal", env = "TERN_ENVIRONMENT", value_parser = ["universal", "kubernetes"])]
    environment: String,
    #[command(flatten)]
    kube: kubernetes::KubeArgs,
    #[command(flatten)]
    multizone: multizone::MultizoneArgs,
}

#[derive(Clone, Copy)]
struct OptionalAddr(Option<SocketAddr>);

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s == "off" {
        return Ok(OptionalAddr(None));
    }
    s.parse()
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|_| format!("{s:?} is not HOST:PORT (an IP address and a port) or `off`"))
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
            files::restrict(&path)?;
            return Ok((token, path));
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the API token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    files::write_private(&path, token.as_bytes())?;
    Ok((token, path))
}

/// Refuses listener settings that would expose an unauthenticated or
/// unencrypted port beyond loopback.
fn check_exposure(args: &RunArgs) -> Result<()> {
    if !args.api_addr.ip().is_loopback() {
        bail!(
            "--api-addr {} is not a loopback address: plain HTTP is served on loopback only; \
             serve the API beyond loopback over HTTPS with --api-tls-addr",
            args.api_addr
        );
    }
    if args.dp_auth == "none" && !args.dp_addr.ip().is_loopback() {
        bail!(
            "--dp-auth none with --dp-addr {} would let anyone who reaches it act as any data plane; \
             keep data-plane tokens (--dp-auth dpToken) or bind the data-plane server to loopback",
            args.dp_addr
        );
    }
    Ok(())
}

async fn bind(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} to {addr} (is another tern-cp running?)"))
}

/// A running part of the control plane: its name and how it ended.
type PartFuture = std::pin::Pin<Box<dyn std::future::Future<Output = (&'static str, Result<()>)> + Send>>;
/// A part run beside the common ones (the Kubernetes change feed, the
/// admission webhook), started with the stop signal; it ends only on
/// failure or stop.
type Part = Box<dyn FnOnce(watch::Receiver<bool>) -> PartFuture + Send>;

/// Copies this replica's runtime state for the others (a no-op alone).
fn sharing_part(runtime: Arc<tern_dp_server::RuntimeState>) -> Part {
    Box::new(move |mut stop| -> PartFuture {
        Box::pin(async move {
            // `share` returns at once when there is nothing to share with.
            tokio::select! {
                _ = runtime.share() => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            let _ = stop.wait_for(|s| *s).await;
            ("runtime sharing", Ok(()))
        })
    })
}

async fn run(args: RunArgs) -> Result<()> {
    check_exposure(&args)?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    files::create_private_dir(&data_dir)?;
    if args.environment == "kubernetes" {
        return run_on_kubernetes(args, data_dir).await;
    }
    let sqlite_path = data_dir.join("tern.db");
    let store_url = args.store.clone().unwrap_or_else(|| format!("sqlite:{}", sqlite_path.display()));
    let store_kind = if store_url.starts_with("sqlite:") { "sqlite" } else { "postgres" };
    let mode = multizone::mode(&args.multizone, store_kind)?;
    // A zone's meshes come from the global.
    let default_mesh = !matches!(mode, multizone::Mode::Zone(_));
    let store = SqlStore::open_with(&store_url, default_mesh)
        .await
        .with_context(|| format!("opening the store {}", redact_url(&store_url)))?;
    if args.store.is_none() {
        files::restrict(&sqlite_path)?;
    }
    info!(store = %redact_url(&store_url), mode = %args.multizone.mode, "store open");
    let store = Arc::new(store);
    let replica = replicas::start(store.clone(), &store_url);
    let extras = Extras {
        parts: replica.parts,
        leader: replica.leader,
        runtime_share: replica.runtime_share,
        ..Extras::default()
    };
    serve_in_mode(args, data_dir, store, extras, mode).await
}

/// Serves `store` as its mode asks: alone, or as a global or a zone with
/// the sync's parts beside and its write rules in front.
async fn serve_in_mode<S: ResourceStore>(
    args: RunArgs,
    data_dir: PathBuf,
    store: Arc<S>,
    mut extras: Extras,
    mode: multizone::Mode,
) -> Result<()> {
    match mode {
        multizone::Mode::Standalone => serve_control_plane(args, data_dir, store, extras).await,
        multizone::Mode::Global => {
            let tls = tls::server_config(&tls_source(&args), &data_dir)?;
            extras.parts.extend(multizone::global_parts(&args.multizone, store.clone(), tls, &data_dir).await?);
            extras.foreign = Some(multizone::from_a_zone);
            let guarded = Arc::new(OriginGuard::new(store, Role::Global));
            serve_control_plane(args, data_dir, guarded, extras).await
        }
        multizone::Mode::Zone(config) => {
            let role = Role::Zone { zone: config.zone.clone() };
            extras.parts.push(multizone::zone_part(store.clone(), config, extras.leader.clone()));
            let guarded = Arc::new(OriginGuard::new(store, role));
            serve_control_plane(args, data_dir, guarded, extras).await
        }
    }
}

/// `--environment kubernetes`: standalone, a global control plane, or a zone.
async fn run_on_kubernetes(args: RunArgs, data_dir: PathBuf) -> Result<()> {
    let mode = multizone::mode(&args.multizone, "kubernetes")?;
    let role = match &mode {
        multizone::Mode::Standalone => None,
        multizone::Mode::Global => Some(Role::Global),
        multizone::Mode::Zone(config) => Some(Role::Zone { zone: config.zone.clone() }),
    };
    let k = kubernetes::start(&args.kube, &tls_source(&args), &data_dir, role.as_ref()).await?;
    let extras = Extras {
        parts: k.parts,
        leader: Some(k.leader),
        authenticate: Some(k.authenticate),
        foreign: None,
        runtime_share: None,
    };
    serve_in_mode(args, data_dir, k.store, extras, mode).await
}

fn tls_source(args: &RunArgs) -> TlsSource {
    TlsSource {
        cert_file: args.tls_cert_file.clone(),
        key_file: args.tls_key_file.clone(),
        sans: args.tls_sans.clone(),
    }
}

/// What an environment adds to the common control plane.
#[derive(Default)]
struct Extras {
    /// Parts run beside the common ones.
    parts: Vec<Part>,
    /// With several replicas, whether this one leads (only the leader writes status).
    leader: Option<watch::Receiver<bool>>,
    /// How data planes prove who they are, when not only by data-plane tokens.
    authenticate: Option<Arc<dyn tern_tokens::Authenticate>>,
    /// Resources another control plane owns: their status is not written here.
    foreign: Option<fn(&tern_model::Resource) -> bool>,
    /// Where replicas share runtime state (PostgreSQL).
    runtime_share: Option<Arc<tern_store::SqlStore>>,
}

/// Runs the API, the data-plane server, the reconciler and the extra parts
/// over `store`, the same in every environment, until one fails or SIGTERM.
async fn serve_control_plane<S: ResourceStore>(
    args: RunArgs,
    data_dir: PathBuf,
    store: Arc<S>,
    extras: Extras,
) -> Result<()> {
    let Extras { mut parts, leader, authenticate, foreign, runtime_share } = extras;
    let metrics = metrics::CpMetrics::new(multizone::instance_id(), leader.clone());
    let store = Arc::new(timed_store::TimedStore::new(store, metrics.clone()));
    let dp_tls = args.dp_tls || !args.dp_addr.ip().is_loopback();
    let api_tls = args.api_tls_addr.0;
    // A global control plane has no data planes of its own to assign (Kuma: no MADS on global).
    let mads_addr = args.mads_addr.0.filter(|_| args.multizone.mode != "global");
    let mads_tls = mads_addr.is_some_and(|a| !a.ip().is_loopback());
    let metrics_tls = args.metrics_addr.0.is_some_and(|a| !a.ip().is_loopback());
    let tls = if dp_tls || api_tls.is_some() || mads_tls || metrics_tls {
        let config = tls::server_config(&tls_source(&args), &data_dir)?;
        if args.tls_cert_file.is_none() {
            info!(ca = %tls::ca_path(&data_dir).display(), "TLS with a generated CA: give this file to tern-dp --ca-cert-file and ternctl --ca-cert");
        }
        Some(config)
    } else {
        None
    };

    let dp_auth = match args.dp_auth.as_str() {
        "none" => {
            warn!("data-plane authentication is off (--dp-auth none): any local process can act as any data plane");
            DpAuth::Off
        }
        _ => {
            tern_tokens::TokenKeys::new(store.clone()).ensure_key().await.context("creating the token signing key")?;
            DpAuth::Tokens(authenticate.unwrap_or_else(|| Arc::new(tern_tokens::Verifier::new(store.clone()))))
        }
    };
    let read_only = (args.environment == "kubernetes").then(|| tern_api::KUBERNETES_READ_ONLY.to_string());
    let tls_write_auth = match api_tls {
        Some(addr) if !addr.ip().is_loopback() => {
            let (token, path) = load_or_create_token(&data_dir)?;
            warn!(
                addr = %addr,
                token_file = %path.display(),
                "the HTTPS API listens beyond loopback: every write needs `Authorization: Bearer <token>` (ternctl: TERN_TOKEN or its config file)"
            );
            WriteAuth { token: Some(token), resources_read_only: read_only.clone() }
        }
        _ => WriteAuth { token: None, resources_read_only: read_only.clone() },
    };

    let api_listener = bind(args.api_addr, "API").await?;
    let api_tls_listener = match api_tls {
        Some(addr) => Some(bind(addr, "HTTPS API").await?),
        None => None,
    };
    let dp_listener = bind(args.dp_addr, "data-plane server").await?;
    let mads_listener = match mads_addr {
        Some(addr) => Some(bind(addr, "monitoring assignment server (MADS)").await?),
        None => None,
    };
    let metrics_listener = match args.metrics_addr.0 {
        Some(addr) => Some(bind(addr, "metrics server").await?),
        None => None,
    };

    let hub = Arc::new(PlanHub::default());
    let xds = Arc::new(tern_xds::XdsHub::default());
    let delivered = metrics.clone();
    let mut runtime = tern_dp_server::RuntimeState::new(xds.clone())
        .with_delivery_observer(Arc::new(move |took| delivered.plan_delivery.observe(took)));
    if let Some(share) = runtime_share {
        runtime = runtime.with_sharing(share, multizone::instance_id());
    }
    let runtime = Arc::new(runtime);
    parts.push(sharing_part(runtime.clone()));
    let observed = metrics.clone();
    let mut reconciler = Reconciler::new(store.clone(), hub.clone(), xds.clone())
        .with_state(runtime.clone())
        .with_observer(Arc::new(move |step, took| observed.step(step).observe(took)));
    if let Some(leader) = leader {
        reconciler = reconciler.with_leadership(leader);
    }
    if let Some(foreign) = foreign {
        reconciler = reconciler.with_foreign(foreign);
    }
    let ads_auth = match &dp_auth {
        DpAuth::Tokens(v) => Some(v.clone()),
        DpAuth::Off => None,
    };
    // Bootstrap and plans (HTTP/1.1) and ADS for Envoy (gRPC, HTTP/2) share the port.
    let ads = tonic::service::Routes::new(xds.service(ads_auth)).into_axum_router();
    let dp_router = tern_dp_server::router(store.clone(), hub.clone(), runtime.clone(), dp_auth).merge(ads);
    let dp_router = metrics::instrument(dp_router, "dp_server", metrics.clone());
    let api_router = tern_api::router(
        store.clone(),
        WriteAuth { token: None, resources_read_only: read_only },
        Some(runtime.clone()),
    );
    let api_router = metrics::instrument(api_router, "api_server", metrics.clone());
    let api_tls_router = tern_api::router(store.clone(), tls_write_auth, Some(runtime.clone()));
    let api_tls_router = metrics::instrument(api_tls_router, "api_server", metrics.clone());
    let mads_router = tern_mads::router(Arc::new(mads::Source { store: store.clone(), hub: hub.clone() }));
    let mads_router = metrics::instrument(mads_router, "mads_server", metrics.clone());
    let mads_router =
        if mads_tls { bearer::require(mads_router, load_or_create_token(&data_dir)?.0, "MADS") } else { mads_router };
    let metrics_router =
        metrics::router(Arc::new(metrics::Sources { store: store.clone(), xds: xds.clone(), runtime, metrics }));
    let metrics_router = if metrics_tls {
        bearer::require(metrics_router, load_or_create_token(&data_dir)?.0, "/metrics")
    } else {
        metrics_router
    };

    let mut listening = format!("api={}", api_listener.local_addr()?);
    if let Some(l) = &api_tls_listener {
        listening.push_str(&format!(" api_tls={}", l.local_addr()?));
    }
    listening.push_str(&format!(" dp={} dp_tls={dp_tls}", dp_listener.local_addr()?));
    if let Some(l) = &mads_listener {
        listening.push_str(&format!(" mads={}", l.local_addr()?));
    }
    if let Some(l) = &metrics_listener {
        listening.push_str(&format!(" metrics={}", l.local_addr()?));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();
    tasks.spawn(async move {
        reconciler.run().await;
        ("reconciler", Err(anyhow::anyhow!("the store's change feed closed")))
    });
    tasks.spawn(serve("API", api_listener, api_router, None, stop_rx.clone()));
    if let Some(l) = api_tls_listener {
        tasks.spawn(serve("HTTPS API", l, api_tls_router, tls.clone(), stop_rx.clone()));
    }
    let dp_tls_config = if dp_tls { tls.clone() } else { None };
    tasks.spawn(serve("data-plane server", dp_listener, dp_router, dp_tls_config, stop_rx.clone()));
    if let Some(l) = mads_listener {
        let config = if mads_tls { tls.clone() } else { None };
        tasks.spawn(serve("monitoring assignment server", l, mads_router, config, stop_rx.clone()));
    }
    if let Some(l) = metrics_listener {
        let config = if metrics_tls { tls.clone() } else { None };
        tasks.spawn(serve("metrics server", l, metrics_router, config, stop_rx.clone()));
    }
    for part in parts {
        tasks.spawn(part(stop_rx.clone()));
    }
    info!("tern-cp listening {listening}");

    // Any part ending on its own is fatal: stop the rest and exit non-zero.
    let failure = tokio::select! {
        _ = shutdown_signal() => None,
        Some(ended) = tasks.join_next() => Some(match ended {
            Ok((part, Ok(()))) => anyhow::anyhow!("the {part} stopped unexpectedly"),
            Ok((part, Err(e))) => e.context(format!("the {part} failed")),
            Err(e) => anyhow::anyhow!("a control-plane task panicked: {e}"),
        }),
    };
    let _ = stop_tx.send(true);
    // Long-polls hold connections open; do not wait for them forever.
    let drained = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(ended) = tasks.join_next().await {
            if let Ok((part, Err(e))) = ended {
                warn!(part, error = %format!("{e:#}"), "stopped with an error");
            }
        }
    });
    if drained.await.is_err() {
        info!("connections still open after 5s; closing them");
        tasks.abort_all();
    }
    match failure {
        Some(e) => Err(e),
        None => {
            info!("tern-cp stopped");
            Ok(())
        }
    }
}

/// Serves one port, plain or TLS, until `stop`.
async fn serve(
    part: &'static str,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: watch::Receiver<bool>,
) -> (&'static str, Result<()>) {
    let result = match tls {
        Some(config) => tls::serve(listener, router, config, stop).await,
        None => {
            let stopped = async move {
                let mut stop = stop;
                let _ = stop.wait_for(|s| *s).await;
            };
            axum::serve(listener, router).with_graceful_shutdown(stopped).await.context("serving")
        }
    };
    (part, result)
}

/// A store URL fit for logs: the password (in the authority or in the
/// query) replaced by `***`; a URL that cannot be parsed shows only its scheme.
fn redact_url(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        let scheme =
            text.split(':').next().unwrap_or("").chars().filter(char::is_ascii_alphanumeric).collect::<String>();
        return format!("{scheme}:(URL not shown: it does not parse)");
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        k.contains("password") || k.contains("secret") || k.contains("token") || k == "sslkey" || k == "passfile"
    };
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) { "***".to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
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

/// mimalloc gives memory back between bursts (a plan push to every data
/// plane) where glibc's per-thread arenas kept growing by about 10 MB per
/// push at 10,000 data planes (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let Command::Run(args) = Cli::parse().command;
    if let Err(e) = start(args) {
        eprintln!("tern-cp: {e:#}");
        std::process::exit(1);
    }
}

fn start(args: RunArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let tracing = traces::init(args.tracing_opentelemetry_enabled, runtime.handle().clone())?;
    let result = runtime.block_on(run(args));
    // Sends the spans still queued while the runtime can carry them.
    tracing.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(redact_url("postgres://tern:s3cret@db:5432/tern"), "postgres://tern:***@db:5432/tern");
        assert_eq!(redact_url("postgres://tern@db/tern"), "postgres://tern@db/tern");
        assert_eq!(redact_url("sqlite:/x/tern.db"), "sqlite:/x/tern.db");
        let query = redact_url("postgres://tern@db/tern?sslmode=require&password=s3cret&PGPASSWORD=x2");
        assert!(!query.contains("s3cret") && !query.contains("x2") && query.contains("sslmode=require"), "{query}");
        let broken = redact_url("postgres://tern:s3cret@[db/tern");
        assert!(!broken.contains("s3cret"), "{broken}");
        let unicode = redact_url("postgres://é:s3cret@db/tern");
        assert!(!unicode.contains("s3cret"), "{unicode}");
    }
}
