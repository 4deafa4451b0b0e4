//! `--mode global` and `--mode zone`: the write rules in front of the store,
//! the global's sync server and zone insights, the zone's sync client.

use crate::{bind, serve, Part, PartFuture};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tern_kds::global::GlobalService;
use tern_kds::mapping::{ORIGIN_LABEL, ORIGIN_ZONE};
use tern_kds::wire::KdsServer;
use tern_kds::{Global, GlobalConfig, ZoneConfig};
use tern_model::Resource;
use tern_store::ResourceStore;
use tokio::sync::watch;
use tracing::info;

#[derive(clap::Args)]
pub struct MultizoneArgs {
    /// `standalone` (one control plane), `global` (zones sync to it) or `zone` (syncs with a global).
    #[arg(long, default_value = "standalone", env = "TERN_MODE", value_parser = ["standalone", "global", "zone"])]
    pub mode: String,
    /// This zone's name (`--mode zone`).
    #[arg(long, env = "TERN_ZONE")]
    pub zone: Option<String>,
    /// The global control plane's sync port, `https://HOST:5685` (`--mode zone`).
    #[arg(long, env = "TERN_GLOBAL_ADDRESS")]
    pub global_address: Option<String>,
    /// The CA (PEM) that signed the global's certificate (its data directory's tls/ca.crt);
    /// the system's roots when not given (`--mode zone`).
    #[arg(long, env = "TERN_GLOBAL_CA_FILE")]
    pub global_ca_file: Option<PathBuf>,
    /// The zone token from `ternctl generate zone-token --zone NAME` on the global (`--mode zone`).
    #[arg(long, env = "TERN_ZONE_TOKEN_FILE")]
    pub zone_token_file: Option<PathBuf>,
    /// Where the global serves zones (gRPC over TLS, Kuma's port 5685) (`--mode global`).
    #[arg(long, default_value = "0.0.0.0:5685", env = "TERN_KDS_ADDR")]
    pub kds_addr: SocketAddr,
    /// A zone silent for this long is shown offline and its streams closed (a duration:
    /// 30s, 1m); zones are then asked to check in three times as often. Off when not given
    /// (`--mode global`).
    #[arg(long, env = "TERN_ZONE_HEALTH_TIMEOUT", value_parser = parse_duration)]
    pub zone_health_timeout: Option<Duration>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match tern_model::spec::duration::parse_go_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The control plane's place in a deployment.
pub enum Mode {
    Standalone,
    Global,
    Zone(ZoneConfig),
}

/// Checks the flags that go together and reads the zone's files.
pub fn mode(args: &MultizoneArgs, store_kind: &str) -> Result<Mode> {
    let zone_only = [
        ("--zone", args.zone.is_some()),
        ("--global-address", args.global_address.is_some()),
        ("--global-ca-file", args.global_ca_file.is_some()),
        ("--zone-token-file", args.zone_token_file.is_some()),
    ];
    match args.mode.as_str() {
        "zone" => {}
        mode => {
            if let Some((flag, _)) = zone_only.iter().find(|(_, set)| *set) {
                bail!("{flag} is for --mode zone; this control plane runs with --mode {mode}");
            }
            return Ok(if mode == "global" { Mode::Global } else { Mode::Standalone });
        }
    }
    let zone = args.zone.clone().context("--mode zone needs --zone NAME")?;
    if let Some(problem) = tern_model::document::identifier_problem(&zone, false) {
        bail!("--zone {zone:?}: {problem}");
    }
    let global_address = args.global_address.clone().context("--mode zone needs --global-address https://HOST:5685")?;
    let token_file = args
        .zone_token_file
        .clone()
        .context("--mode zone needs --zone-token-file (ternctl generate zone-token --zone NAME, on the global)")?;
    std::fs::metadata(&token_file).with_context(|| format!("--zone-token-file {}", token_file.display()))?;
    let ca_pem = match &args.global_ca_file {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading --global-ca-file {}", path.display()))?)
        }
        None => None,
    };
    Ok(Mode::Zone(ZoneConfig {
        zone,
        global_address,
        ca_pem,
        token_file,
        instance_id: instance_id(),
        backend: store_kind.to_string(),
    }))
}

/// This process, as ZoneInsights and `cp_info` name it: host and process id.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty());
    format!("{}-{}", host.unwrap_or_else(|| "tern-cp".into()), std::process::id())
}

/// On the global: what came from zones is theirs (status, clean-up).
pub fn from_a_zone(r: &Resource) -> bool {
    r.labels.get(ORIGIN_LABEL).map(String::as_str) == Some(ORIGIN_ZONE)
}

/// The global's parts: the sync server (always TLS) and the housekeeping
/// that writes ZoneInsights. `store` is the unguarded store.
pub async fn global_parts<S: ResourceStore>(
    args: &MultizoneArgs,
    store: Arc<S>,
    tls: Arc<rustls::ServerConfig>,
    data_dir: &Path,
) -> Result<Vec<Part>> {
    let global = Arc::new(Global::new(
        store,
        GlobalConfig { health_timeout: args.zone_health_timeout, instance_id: instance_id() },
    ));
    let listener = bind(args.kds_addr, "zone sync server").await?;
    info!(addr = %listener.local_addr()?, ca = %crate::tls::ca_path(data_dir).display(), "serving zones (zone tokens: ternctl generate zone-token --zone NAME)");
    let router =
        tonic::service::Routes::new(KdsServer::new(Arc::new(GlobalService(global.clone())))).into_axum_router();
    let server: Part =
        Box::new(move |stop| -> PartFuture { Box::pin(serve("zone sync server", listener, router, Some(tls), stop)) });
    let housekeeping: Part = Box::new(move |stop| -> PartFuture {
        Box::pin(async move { ("zone insights", global.housekeeping(stop).await) })
    });
    Ok(vec![server, housekeeping])
}

/// The zone's part: the sync client. `store` is the unguarded store. With
/// several replicas (`leader` given) only the leader syncs, as in Kuma: one
/// stream per zone, and one writer of what the global sends.
pub fn zone_part<S: ResourceStore>(store: Arc<S>, config: ZoneConfig, leader: Option<watch::Receiver<bool>>) -> Part {
    info!(global = %config.global_address, zone = %config.zone, "zone control plane: syncing with the global one");
    Box::new(move |stop| -> PartFuture {
        Box::pin(async move {
            let ended = match leader {
                None => tern_kds::zone::run(store, config, stop).await,
                Some(leader) => sync_while_leading(store, config, leader, stop).await,
            };
            ("zone sync", ended)
        })
    })
}

/// Runs the sync while this replica leads, until `stop`.
async fn sync_while_leading<S: ResourceStore>(
    store: Arc<S>,
    config: ZoneConfig,
    mut leader: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    loop {
        tokio::select! {
            led = leader.wait_for(|l| *l) => { led.context("the leader election ended")?; }
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        info!(zone = %config.zone, "this replica leads: syncing with the global control plane");
        let (end_tx, end) = watch::channel(false);
        let sync = tern_kds::zone::run(store.clone(), config.clone(), end);
        tokio::pin!(sync);
        let stopping = tokio::select! {
            ended = &mut sync => return ended,
            _ = leader.wait_for(|l| !*l) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let _ = end_tx.send(true);
        sync.await?;
        if stopping {
            return Ok(());
        }
        info!(zone = %config.zone, "leadership lost: another replica syncs with the global control plane");
    }
}
