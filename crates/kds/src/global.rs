//! The global control plane's side: admits zones by their zone token,
//! serves both streams of each zone connection, and keeps Zone and
//! ZoneInsight resources (connections, counts, health) up to date.

use crate::mapping::Flow;
use crate::stats::StreamStats;
use crate::wire::{BoxStream, HealthCheckRequest, HealthCheckResponse, KdsHandler};
use crate::{metadata, receive, send, Inbox, Outbox};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_model::{Kind, Resource, ResourceKey};
use tern_protocol::{KdsStatus, KdsSubscription, ZoneInsightSpec};
use tern_store::{Precondition, ResourceStore, Write};
use tern_tokens::TokenError;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

/// Kuma keeps the last ten connections of a zone.
const KEEP_SUBSCRIPTIONS: usize = 10;
/// How often ZoneInsights are written and health is checked.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often a zone checks in when no timeout is configured.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);

pub struct GlobalConfig {
    /// A zone that has not checked in for this long is shown offline and
    /// its streams closed (Kuma's `zoneHealthCheck.timeout`); never when `None`.
    pub health_timeout: Option<Duration>,
    /// This control plane's instance, as ZoneInsights name it.
    pub instance_id: String,
}

/// One connection of a zone: both streams and its health checks.
struct Session {
    id: String,
    subscription: KdsSubscription,
    to_zone: Arc<StreamStats>,
    to_global: Arc<StreamStats>,
    streams: Vec<AbortHandle>,
    last_seen: Instant,
}

#[derive(Default)]
struct ZoneEntry {
    sessions: VecDeque<Session>,
    health_check_time: Option<String>,
    written: Option<ZoneInsightSpec>,
}

pub struct Global<S> {
    store: Arc<S>,
    verifier: tern_tokens::Verifier<S>,
    config: GlobalConfig,
    zones: Mutex<BTreeMap<String, ZoneEntry>>,
    /// Every stream's task; aborted when the global stops.
    tasks: Mutex<JoinSet<()>>,
}

/// Who is calling, once admitted.
struct Caller {
    zone: String,
    session: String,
}

type Answer<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn text(meta: &MetadataMap, key: &str) -> String {
    meta.get(key).and_then(|v| v.to_str().ok()).unwrap_or("").chars().take(128).collect()
}

impl<S: ResourceStore> Global<S> {
    /// `store` is the unguarded store: the streams write what zones own.
    pub fn new(store: Arc<S>, config: GlobalConfig) -> Self {
        Global {
            verifier: tern_tokens::Verifier::new(store.clone()),
            store,
            config,
            zones: Mutex::default(),
            tasks: Mutex::default(),
        }
    }

    /// Checks the zone token and the zone's name, creates the Zone on first
    /// contact and refuses a disabled one.
    async fn admit(&self, meta: &MetadataMap) -> Result<Caller, Status> {
        let claimed = text(meta, metadata::ZONE);
        let authorization = meta.get("authorization").and_then(|v| v.to_str().ok());
        let zone = self.verifier.verify_zone(authorization).await.map_err(|e| {
            let problem = zone_token_problem(&e);
            warn!(zone = %claimed, error = %problem, "zone refused");
            Status::unauthenticated(format!("zone token refused: {problem}"))
        })?;
        if zone != claimed {
            warn!(zone = %claimed, token_zone = %zone, "zone refused: its token is for another zone");
            return Err(Status::unauthenticated(format!(
                "the zone token is for zone {zone:?}, but this zone control plane runs as {claimed:?} (--zone)"
            )));
        }
        let key = ResourceKey::new(Kind::Zone, "", &zone);
        let stored = self.store.get(&key).await.map_err(|e| Status::unavailable(e.to_string()))?;
        match stored {
            Some(z) if z.spec.get("enabled") == Some(&json!(false)) => {
                return Err(Status::permission_denied(format!(
                    "zone {zone:?} is disabled on the global control plane (Zone {zone}: enabled: false)"
                )));
            }
            Some(_) => {}
            None => {
                let resource = Resource::new(Kind::Zone, "", &zone, json!({"enabled": true}));
                let created =
                    self.store.apply(vec![Write { resource, precondition: Precondition::MustNotExist }]).await;
                if created.is_ok() {
                    info!(zone = %zone, "zone registered");
                }
            }
        }
        Ok(Caller { zone, session: text(meta, metadata::SESSION) })
    }

    /// The stats of a connection's streams, creating the connection on its
    /// first stream.
    fn session(&self, caller: &Caller, meta: &MetadataMap) -> (Arc<StreamStats>, Arc<StreamStats>) {
        let mut zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        let entry = zones.entry(caller.zone.clone()).or_default();
        if let Some(s) =
            entry.sessions.iter().find(|s| s.id == caller.session && s.subscription.disconnect_time.is_none())
        {
            return (s.to_zone.clone(), s.to_global.clone());
        }
        info!(zone = %caller.zone, "zone connected");
        let session = Session {
            id: caller.session.clone(),
            subscription: KdsSubscription {
                id: caller.session.clone(),
                global_instance_id: self.config.instance_id.clone(),
                zone_instance_id: text(meta, metadata::INSTANCE),
                connect_time: now_text(),
                version: text(meta, metadata::VERSION),
                backend: text(meta, metadata::BACKEND),
                auth_token_provided: true,
                ..Default::default()
            },
            to_zone: Arc::default(),
            to_global: Arc::default(),
            streams: Vec::new(),
            last_seen: Instant::now(),
        };
        let stats = (session.to_zone.clone(), session.to_global.clone());
        entry.sessions.push_back(session);
        while entry.sessions.len() > KEEP_SUBSCRIPTIONS {
            entry.sessions.pop_front();
        }
        stats
    }

    /// Runs a stream's task, owned by this server; when either stream of a
    /// connection ends, the connection ends.
    fn spawn_stream(
        self: &Arc<Self>,
        caller: Caller,
        task: impl Future<Output = Result<(), crate::SyncError>> + Send + 'static,
    ) {
        let global = self.clone();
        let zone = caller.zone.clone();
        let session = caller.session.clone();
        let handle = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).spawn(async move {
            if let Err(e) = task.await {
                warn!(zone = %zone, error = %e, "zone sync stream ended");
            }
            global.disconnect(&zone, &session, "its stream ended");
        });
        let mut zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) =
            zones.get_mut(&caller.zone).and_then(|z| z.sessions.iter_mut().find(|s| s.id == caller.session))
        {
            s.streams.push(handle);
        }
    }

    fn disconnect(&self, zone: &str, session: &str, why: &str) {
        let mut zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = zones.get_mut(zone).and_then(|z| z.sessions.iter_mut().find(|s| s.id == session)) else { return };
        if s.subscription.disconnect_time.is_none() {
            s.subscription.disconnect_time = Some(now_text());
            info!(zone = %zone, reason = why, "zone disconnected");
        }
        for stream in &s.streams {
            stream.abort();
        }
    }

    /// Every second: zones silent past the timeout go offline, ZoneInsights
    /// that changed are written, finished stream tasks are reaped. Ends on `stop`.
    pub async fn housekeeping(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(HOUSEKEEPING) => {}
            }
            self.check_health();
            for (zone, spec) in self.changed_insights() {
                let resource = Resource::new(Kind::ZoneInsight, "", &zone, serde_json::to_value(&spec)?);
                if let Err(e) = self.store.apply(vec![Write { resource, precondition: Precondition::None }]).await {
                    warn!(zone = %zone, error = %e, "cannot write the ZoneInsight; retrying");
                    self.forget_written(&zone);
                }
            }
            let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            while tasks.try_join_next().is_some() {}
        }
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).abort_all();
        Ok(())
    }

    fn check_health(&self) {
        let Some(timeout) = self.config.health_timeout else { return };
        let stale: Vec<(String, String)> = {
            let zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
            zones
                .iter()
                .flat_map(|(zone, z)| z.sessions.iter().map(move |s| (zone, s)))
                .filter(|(_, s)| s.subscription.disconnect_time.is_none() && s.last_seen.elapsed() > timeout)
                .map(|(zone, s)| (zone.clone(), s.id.clone()))
                .collect()
        };
        for (zone, session) in stale {
            warn!(zone = %zone, timeout = ?timeout, "zone sent no health check within the timeout; marked offline");
            self.disconnect(&zone, &session, "health check timeout");
        }
    }

    fn changed_insights(&self) -> Vec<(String, ZoneInsightSpec)> {
        let mut zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (zone, entry) in zones.iter_mut() {
            let spec = ZoneInsightSpec {
                subscriptions: entry.sessions.iter().map(subscription).collect(),
                health_check_time: entry.health_check_time.clone(),
            };
            if entry.written.as_ref() != Some(&spec) {
                entry.written = Some(spec.clone());
                out.push((zone.clone(), spec));
            }
        }
        out
    }

    fn forget_written(&self, zone: &str) {
        if let Some(entry) = self.zones.lock().unwrap_or_else(|e| e.into_inner()).get_mut(zone) {
            entry.written = None;
        }
    }

    fn health_interval(&self) -> Duration {
        self.config.health_timeout.map(|t| t / 3).unwrap_or(DEFAULT_HEALTH_INTERVAL).max(Duration::from_millis(100))
    }
}

/// Why a zone token failed, in a zone's words.
fn zone_token_problem(e: &TokenError) -> String {
    match e {
        TokenError::Missing => "no zone token given (tern-cp --zone-token-file)".into(),
        TokenError::Malformed => "not a token this global control plane issued (malformed)".into(),
        TokenError::UnknownKey(k) => {
            format!("signed with signing key {k}, which this global control plane does not have")
        }
        TokenError::BadSignature => "its signature does not verify (issued by another global control plane?)".into(),
        TokenError::Expired => {
            "it has expired; generate a new one on the global control plane (ternctl generate zone-token)".into()
        }
        TokenError::Revoked(id) => format!("token {id} has been revoked"),
        other => other.to_string(),
    }
}

/// A connection as its ZoneInsight shows it.
fn subscription(s: &Session) -> KdsSubscription {
    let last = s.to_zone.last_update().max(s.to_global.last_update());
    let last_update_time = (last > 0)
        .then(|| {
            chrono::DateTime::from_timestamp(last as i64, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        })
        .flatten();
    KdsSubscription {
        status: KdsStatus {
            last_update_time,
            total: s.to_zone.totals(),
            stat: s.to_zone.per_kind(),
            zone_to_global: s.to_global.totals(),
            last_error: s.to_global.last_error().or_else(|| s.to_zone.last_error()),
        },
        ..s.subscription.clone()
    }
}

/// The handler needs `Arc<Global>` to spawn; the server holds this wrapper.
pub struct GlobalService<S>(pub Arc<Global<S>>);

impl<S: ResourceStore> KdsHandler for GlobalService<S> {
    fn global_to_zone(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Answer<BoxStream<DeltaDiscoveryResponse>> {
        let global = self.0.clone();
        Box::pin(async move {
            let caller = global.admit(request.metadata()).await?;
            let (to_zone, _) = global.session(&caller, request.metadata());
            let (tx, rx) = mpsc::channel(16);
            let outbox = Outbox { store: global.store.clone(), flow: Flow::ToZones };
            let requests = request.into_inner();
            global.spawn_stream(caller, async move { send(&outbox, requests, &tx, &to_zone).await });
            let stream: BoxStream<DeltaDiscoveryResponse> = Box::pin(ReceiverStream::new(rx).map(Ok));
            Ok(Response::new(stream))
        })
    }

    fn zone_to_global(
        &self,
        request: Request<Streaming<DeltaDiscoveryResponse>>,
    ) -> Answer<BoxStream<DeltaDiscoveryRequest>> {
        let global = self.0.clone();
        Box::pin(async move {
            let caller = global.admit(request.metadata()).await?;
            let (_, to_global) = global.session(&caller, request.metadata());
            let (tx, rx) = mpsc::channel(16);
            let inbox = Inbox { store: global.store.clone(), flow: Flow::ToGlobal { zone: caller.zone.clone() } };
            let responses = request.into_inner();
            global.spawn_stream(caller, async move { receive(&inbox, responses, &tx, &to_global).await });
            let stream: BoxStream<DeltaDiscoveryRequest> = Box::pin(ReceiverStream::new(rx).map(Ok));
            Ok(Response::new(stream))
        })
    }

    fn health_check(&self, request: Request<HealthCheckRequest>) -> Answer<HealthCheckResponse> {
        let global = self.0.clone();
        Box::pin(async move {
            let caller = global.admit(request.metadata()).await?;
            {
                let mut zones = global.zones.lock().unwrap_or_else(|e| e.into_inner());
                let entry = zones.entry(caller.zone.clone()).or_default();
                entry.health_check_time = Some(now_text());
                if let Some(s) = entry.sessions.iter_mut().find(|s| s.id == caller.session) {
                    s.last_seen = Instant::now();
                }
            }
            let interval_ms = u64::try_from(global.health_interval().as_millis()).unwrap_or(u64::MAX);
            Ok(Response::new(HealthCheckResponse { interval_ms }))
        })
    }
}
