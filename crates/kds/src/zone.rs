//! The zone control plane's side: dials the global over TLS with its zone
//! token, receives the global's resources, sends its own, checks in at the
//! interval the global asks for, and reconnects with backoff. Its store is
//! never wiped: cut off from the global it keeps serving what it has.

use crate::mapping::Flow;
use crate::stats::StreamStats;
use crate::wire::{HealthCheckRequest, KdsClient};
use crate::{metadata, receive, send, Inbox, Outbox, SyncError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_store::ResourceStore;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Code, Request};
use tracing::{error, info, warn};

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ZoneConfig {
    pub zone: String,
    /// `https://HOST:PORT` of the global's sync port.
    pub global_address: String,
    /// The CA that signed the global's certificate (PEM); the system's roots when `None`.
    pub ca_pem: Option<Vec<u8>>,
    /// Read on every connect, so a replaced token is picked up.
    pub token_file: PathBuf,
    pub instance_id: String,
    /// The zone's store kind (`sqlite`, `postgres`), shown on the global.
    pub backend: String,
}

/// Why a connection ended, for the log line.
enum Ended {
    Refused(String),
    Failed(String),
}

/// Keeps the zone in sync until `stop`.
pub async fn run<S: ResourceStore>(
    store: Arc<S>,
    config: ZoneConfig,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let started = Instant::now();
        let ended = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            ended = connect_and_sync(&store, &config) => ended,
        };
        match ended {
            Ended::Refused(why) => {
                error!(global = %config.global_address, "the global control plane refused this zone: {why}")
            }
            Ended::Failed(why) => {
                warn!(global = %config.global_address, retry_in = ?backoff, "sync with the global control plane interrupted: {why}; this zone keeps serving what it has")
            }
        }
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_FIRST;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn session_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One connection: both streams and the health checks, until any ends.
async fn connect_and_sync<S: ResourceStore>(store: &Arc<S>, config: &ZoneConfig) -> Ended {
    let caller = match Caller::new(config) {
        Ok(c) => c,
        Err(e) => return Ended::Refused(e),
    };
    let channel = match endpoint(config) {
        Ok(e) => match e.connect().await {
            Ok(c) => c,
            Err(e) => return Ended::Failed(format!("cannot connect: {}", source_chain(&e))),
        },
        Err(e) => return Ended::Refused(e),
    };
    let client = KdsClient::new(channel);
    let interval = match client.clone().health_check(caller.request(HealthCheckRequest {})).await {
        Ok(r) => Duration::from_millis(r.interval_ms.max(100)),
        Err(status) => return ended_by(status),
    };
    info!(global = %config.global_address, zone = %config.zone, "connected to the global control plane");
    let stats = StreamStats::default();
    let result = tokio::select! {
        r = from_global(store, client.clone(), &caller, &stats) => r,
        r = to_global(store, client.clone(), &caller, &config.zone, &stats) => r,
        r = check_in(client, &caller, interval) => r,
    };
    match result {
        Err(SyncError::Stream(status)) => ended_by(status),
        Err(e) => Ended::Failed(e.to_string()),
        Ok(()) => Ended::Failed("the global control plane closed the stream".into()),
    }
}

fn ended_by(status: tonic::Status) -> Ended {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => Ended::Refused(status.message().to_string()),
        _ => Ended::Failed(format!("{} ({:?})", status.message(), status.code())),
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn endpoint(config: &ZoneConfig) -> Result<Endpoint, String> {
    if !config.global_address.starts_with("https://") {
        return Err(format!(
            "--global-address {:?} must be https://HOST:PORT (the sync port is always TLS)",
            config.global_address
        ));
    }
    let tls = match &config.ca_pem {
        Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    Endpoint::from_shared(config.global_address.clone())
        .and_then(|e| e.tls_config(tls))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
        })
        .map_err(|e| format!("--global-address {:?}: {}", config.global_address, source_chain(&e)))
}

/// The metadata of every call of one connection.
struct Caller {
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    zone: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    instance: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    session: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    backend: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Caller {
    fn new(config: &ZoneConfig) -> Result<Self, String> {
        let token = std::fs::read_to_string(&config.token_file)
            .map_err(|e| format!("reading the zone token {}: {e}", config.token_file.display()))?;
        let value = |v: &str, what: &str| {
            v.parse().map_err(|_| format!("the {what} holds characters HTTP headers cannot carry"))
        };
        Ok(Caller {
            authorization: value(&format!("Bearer {}", token.trim()), "zone token file")?,
            zone: value(&config.zone, "zone name")?,
            instance: value(&config.instance_id, "instance id")?,
            session: value(&session_id(), "session id")?,
            backend: value(&config.backend, "store kind")?,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let meta = request.metadata_mut();
        meta.insert("authorization", self.authorization.clone());
        meta.insert(metadata::ZONE, self.zone.clone());
        meta.insert(metadata::INSTANCE, self.instance.clone());
        meta.insert(metadata::SESSION, self.session.clone());
        meta.insert(metadata::BACKEND, self.backend.clone());
        meta.insert(metadata::VERSION, tonic::metadata::MetadataValue::from_static(env!("CARGO_PKG_VERSION")));
        request
    }
}

/// Global to zone: this side subscribes and applies.
async fn from_global<S: ResourceStore>(
    store: &Arc<S>,
    mut client: KdsClient,
    caller: &Caller,
    stats: &StreamStats,
) -> Result<(), SyncError> {
    let (tx, rx) = mpsc::channel(16);
    let inbox = Inbox { store: store.clone(), flow: Flow::ToZones };
    let responses = client.global_to_zone(caller.request(ReceiverStream::new(rx))).await.map_err(SyncError::Stream)?;
    receive(&inbox, responses, &tx, stats).await
}

/// Zone to global: this side publishes.
async fn to_global<S: ResourceStore>(
    store: &Arc<S>,
    mut client: KdsClient,
    caller: &Caller,
    zone: &str,
    stats: &StreamStats,
) -> Result<(), SyncError> {
    let (tx, rx) = mpsc::channel(16);
    let outbox = Outbox { store: store.clone(), flow: Flow::ToGlobal { zone: zone.to_string() } };
    let requests = client.zone_to_global(caller.request(ReceiverStream::new(rx))).await.map_err(SyncError::Stream)?;
    send(&outbox, requests, &tx, stats).await
}

async fn check_in(mut client: KdsClient, caller: &Caller, interval: Duration) -> Result<(), SyncError> {
    loop {
        tokio::time::sleep(interval).await;
        client.health_check(caller.request(HealthCheckRequest {})).await.map_err(SyncError::Stream)?;
    }
}
