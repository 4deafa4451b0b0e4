//! The ADS server (state of the world, xDS v3): one stream per Envoy, the
//! dataplane's snapshot sent per resource type, versions and nonces
//! tracked, ACKs and NACKs told apart. A NACK is logged with Envoy's error
//! and kept for inspection; Envoy keeps its previous config meanwhile.

use crate::snapshot::{Snapshot, CLUSTER, ENDPOINTS, LISTENER};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tern_tokens::Authenticate;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn, Instrument};

/// The node id a data plane's Envoy uses: `<mesh>/<name>`.
pub fn node_id(mesh: &str, name: &str) -> String {
    format!("{mesh}/{name}")
}

/// A configuration Envoy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub type_url: String,
    pub version: String,
    pub message: String,
}

/// Latest snapshot per node, and the NACKs Envoys sent.
#[derive(Default)]
pub struct XdsHub {
    channels: Mutex<HashMap<String, watch::Sender<Arc<Snapshot>>>>,
    nacks: Mutex<HashMap<String, Nack>>,
    acked: Mutex<HashMap<String, String>>,
    /// When each node's ACK/NACK state last changed (ms since the epoch).
    changed: Mutex<HashMap<String, i64>>,
    stats: XdsStats,
}

/// Counts for the control plane's metrics (Kuma's `xds_*` names).
#[derive(Default)]
pub struct XdsStats {
    streams_active: std::sync::atomic::AtomicI64,
    /// Requests by type URL and confirmation (`ACK`, `NACK`, `none` for a request that answers nothing).
    requests: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Responses by type URL.
    responses: Mutex<BTreeMap<String, u64>>,
}

impl XdsStats {
    pub fn streams_active(&self) -> i64 {
        self.streams_active.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn requests(&self) -> BTreeMap<(String, &'static str), u64> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn responses(&self) -> BTreeMap<String, u64> {
        self.responses.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn request(&self, type_url: &str, confirmation: &'static str) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((type_url.to_string(), confirmation))
            .or_default() += 1;
    }

    fn response(&self, type_url: &str) {
        *self.responses.lock().unwrap_or_else(|p| p.into_inner()).entry(type_url.to_string()).or_default() += 1;
    }
}

/// Counts a stream as active while it lives.
struct ActiveStream<'a>(&'a XdsStats);

impl<'a> ActiveStream<'a> {
    fn new(stats: &'a XdsStats) -> Self {
        stats.streams_active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ActiveStream(stats)
    }
}

impl Drop for ActiveStream<'_> {
    fn drop(&mut self) {
        self.0.streams_active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl XdsHub {
    pub fn stats(&self) -> &XdsStats {
        &self.stats
    }

    fn sender(&self, node: &str) -> watch::Sender<Arc<Snapshot>> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(node.to_string()).or_insert_with(|| watch::channel(Arc::new(Snapshot::default())).0).clone()
    }

    /// Publishes a snapshot; returns whether it differs from the last one.
    pub fn publish(&self, node: &str, snapshot: Snapshot) -> bool {
        self.sender(node).send_if_modified(|s| {
            if s.version == snapshot.version {
                return false;
            }
            *s = Arc::new(snapshot);
            true
        })
    }

    pub fn subscribe(&self, node: &str) -> watch::Receiver<Arc<Snapshot>> {
        self.sender(node).subscribe()
    }

    /// The last configuration this node's Envoy refused, if it has not
    /// accepted a newer one since.
    pub fn nack(&self, node: &str) -> Option<Nack> {
        self.nacks.lock().unwrap_or_else(|p| p.into_inner()).get(node).cloned()
    }

    /// The last snapshot version this node's Envoy accepted.
    pub fn acked_version(&self, node: &str) -> Option<String> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).get(node).cloned()
    }

    fn touch(&self, node: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.changed.lock().unwrap_or_else(|p| p.into_inner()).insert(node.to_string(), now);
    }

    /// Every node with an ACK or NACK here.
    pub fn nodes_with_state(&self) -> Vec<String> {
        self.changed.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// When `node`'s ACK/NACK state last changed here (ms since the epoch).
    pub fn state_changed_ms(&self, node: &str) -> Option<i64> {
        self.changed.lock().unwrap_or_else(|p| p.into_inner()).get(node).copied()
    }

    /// Forgets the nodes of `mesh` not in `keep` (deleted dataplanes): their
    /// snapshots, ACKs and NACKs. Open streams of such a node end.
    pub fn retain(&self, mesh: &str, keep: &std::collections::HashSet<&str>) {
        let gone = |node: &str| node.split_once('/').is_some_and(|(m, n)| m == mesh && !keep.contains(&n));
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).retain(|node, _| !gone(node));
        self.nacks.lock().unwrap_or_else(|p| p.into_inner()).retain(|node, _| !gone(node));
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).retain(|node, _| !gone(node));
        self.changed.lock().unwrap_or_else(|p| p.into_inner()).retain(|node, _| !gone(node));
    }

    /// The gRPC service to mount on the data-plane server. With `auth`,
    /// every stream must carry a data-plane token (`authorization` metadata)
    /// and may ask only for the node the token names.
    pub fn service(self: &Arc<Self>, auth: Option<Arc<dyn Authenticate>>) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(Ads { hub: self.clone(), auth })
    }
}

pub struct Ads {
    hub: Arc<XdsHub>,
    auth: Option<Arc<dyn Authenticate>>,
}

type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let allowed = match &self.auth {
            None => None,
            Some(auth) => {
                let value = request.metadata().get(tern_protocol::AUTHORIZATION).and_then(|v| v.to_str().ok());
                let identity = auth.authenticate(value).await.map_err(|e| match e.is_client_error() {
                    true => Status::unauthenticated(e.to_string()),
                    false => Status::unavailable(e.to_string()),
                })?;
                Some(node_id(&identity.mesh, &identity.name))
            }
        };
        let (tx, rx) = mpsc::channel(16);
        // The stream's task ends when Envoy hangs up or the node is deleted.
        tokio::spawn(run_stream(self.hub.clone(), request.into_inner(), tx, allowed));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("Tern serves state-of-the-world ADS; set api_type: GRPC"))
    }
}

/// What was last sent for one resource type on one stream.
#[derive(Default)]
struct TypeState {
    names: Vec<String>,
    sent_version: Option<String>,
    nonce: String,
}

async fn run_stream(
    hub: Arc<XdsHub>,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    allowed: Option<String>,
) {
    let mut node = String::new();
    let mut snapshots: Option<watch::Receiver<Arc<Snapshot>>> = None;
    let mut types: BTreeMap<String, TypeState> = BTreeMap::new();
    let mut nonce = 0u64;
    let _active = ActiveStream::new(&hub.stats);
    loop {
        let changed = async {
            match snapshots.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = inbound.message() => {
                let req = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => { debug!(node = %node, error = %e, "xDS stream closed"); break }
                };
                if node.is_empty() {
                    node = req.node.as_ref().map(|n| printable(&n.id)).unwrap_or_default();
                    if node.is_empty() {
                        let _ = tx.send(Err(Status::invalid_argument("the first request must carry node.id (<mesh>/<name>)"))).await;
                        break;
                    }
                    if allowed.as_ref().is_some_and(|a| *a != node) {
                        warn!(node = %node, "xDS stream refused: its data-plane token is for another node");
                        let why = format!("this data-plane token is for node {:?}, not {:?}", allowed.unwrap_or_default(), node);
                        let _ = tx.send(Err(Status::permission_denied(why))).await;
                        break;
                    }
                    info!(node = %node, "Envoy connected");
                    snapshots = Some(hub.subscribe(&node));
                }
                let state = types.entry(req.type_url.clone()).or_default();
                if !req.response_nonce.is_empty() && req.response_nonce != state.nonce {
                    continue; // an answer to an older response
                }
                let confirmation = match (&req.error_detail, req.response_nonce.is_empty()) {
                    (Some(_), _) => "NACK",
                    (None, false) => "ACK",
                    (None, true) => "none",
                };
                hub.stats.request(&req.type_url, confirmation);
                if let Some(err) = &req.error_detail {
                    let version = state.sent_version.clone().unwrap_or_default();
                    warn!(node = %node, type_url = %req.type_url, version = %version, error = %err.message, "Envoy rejected the configuration (NACK); it keeps the previous one");
                    hub.nacks.lock().unwrap_or_else(|p| p.into_inner()).insert(
                        node.clone(),
                        Nack { type_url: req.type_url.clone(), version, message: err.message.clone() },
                    );
                    hub.touch(&node);
                    continue;
                }
                if !req.response_nonce.is_empty() && Some(&req.version_info) == state.sent_version.as_ref() {
                    hub.acked.lock().unwrap_or_else(|p| p.into_inner()).insert(node.clone(), req.version_info.clone());
                    let mut nacks = hub.nacks.lock().unwrap_or_else(|p| p.into_inner());
                    if nacks.get(&node).is_some_and(|n| n.type_url == req.type_url) {
                        nacks.remove(&node);
                    }
                    drop(nacks);
                    hub.touch(&node);
                }
                state.names = req.resource_names.clone();
                let snapshot = snapshots.as_ref().map(|rx| rx.borrow().clone()).unwrap_or_default();
                if snapshot.version.is_empty() || state.sent_version.as_ref() == Some(&snapshot.version) {
                    continue;
                }
                if send(&node, &hub.stats, &tx, &snapshot, &req.type_url, state, &mut nonce).await.is_err() {
                    break;
                }
            }
            ok = changed => {
                if !ok { break }
                let snapshot = snapshots.as_ref().map(|rx| rx.borrow().clone()).unwrap_or_default();
                // Clusters before endpoints before listeners, as Envoy wants them.
                for t in [CLUSTER, ENDPOINTS, LISTENER] {
                    let Some(state) = types.get_mut(t) else { continue };
                    if state.sent_version.as_ref() != Some(&snapshot.version)
                        && send(&node, &hub.stats, &tx, &snapshot, t, state, &mut nonce).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
    if !node.is_empty() {
        info!(node = %node, "Envoy disconnected");
    }
}

/// `Listener` for `type.googleapis.com/envoy.config.listener.v3.Listener`.
fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// A node id from the network, safe to log: controls replaced, at most 256 characters.
fn printable(s: &str) -> String {
    s.chars().take(256).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
}

async fn send(
    node: &str,
    stats: &XdsStats,
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    snapshot: &Snapshot,
    type_url: &str,
    state: &mut TypeState,
    nonce: &mut u64,
) -> Result<(), ()> {
    let Some(by_name) = snapshot.resources.get(type_url) else { return Ok(()) };
    let span = tracing::info_span!("xds push", otel.name = %format!("xds push {}", short_type(type_url)), node = %node, type_url, version = %snapshot.version);
    tern_trace::continues(&span, snapshot.cause.as_slice());
    let resources = by_name
        .iter()
        .filter(|(name, _)| type_url != ENDPOINTS || state.names.is_empty() || state.names.contains(name))
        .map(|(_, any)| any.clone())
        .collect();
    *nonce += 1;
    state.nonce = nonce.to_string();
    state.sent_version = Some(snapshot.version.clone());
    let response = DiscoveryResponse {
        version_info: snapshot.version.clone(),
        resources,
        type_url: type_url.to_string(),
        nonce: state.nonce.clone(),
        ..Default::default()
    };
    tx.send(Ok(response)).instrument(span).await.map_err(|_| ())?;
    stats.response(type_url);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_forgets_deleted_nodes_of_one_mesh() {
        let hub = XdsHub::default();
        for node in ["default/web-1", "default/web-2", "other/web-1"] {
            let _ = hub.subscribe(node);
            hub.acked.lock().unwrap().insert(node.to_string(), "1".into());
            hub.nacks
                .lock()
                .unwrap()
                .insert(node.to_string(), Nack { type_url: "t".into(), version: "1".into(), message: "m".into() });
        }
        hub.retain("default", &["web-2"].into());
        assert_eq!(hub.acked_version("default/web-1"), None);
        assert_eq!(hub.nack("default/web-1"), None);
        assert!(!hub.channels.lock().unwrap().contains_key("default/web-1"));
        assert_eq!(hub.acked_version("default/web-2").as_deref(), Some("1"));
        assert_eq!(hub.acked_version("other/web-1").as_deref(), Some("1"));
    }
}
