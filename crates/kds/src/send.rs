//! The sending side of a stream: what the peer holds (its subscription's
//! `initial_resource_versions`, then every response it acknowledged) against
//! what the store holds now, sent as delta responses. Used by the global for
//! its resources and by a zone for its own.

use crate::mapping::{version_of, wire_key, BackendNames, Flow, WireResource};
use crate::stats::StreamStats;
use crate::{kind_of_type_url, type_url, SyncError};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as XdsResource,
};
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tern_model::{Kind, Resource};
use tern_store::{ChangeOp, ListFilter, ResourceStore, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tracing::{debug, warn};

/// Kuma's wait before sending again what the peer rejected.
pub const NACK_BACKOFF: Duration = Duration::from_secs(5);
/// How long changes are gathered into one response.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Resources per response, so a large initial sync stays under the message limit.
const CHUNK: usize = 500;
/// Responses the peer may leave unanswered before the stream is given up.
const MAX_IN_FLIGHT: usize = 1000;

/// What one side publishes: the store and the flow that maps it.
pub struct Outbox<S> {
    pub store: Arc<S>,
    pub flow: Flow,
}

impl<S: ResourceStore> Outbox<S> {
    /// Every resource of `kind` that travels, as the receiver will store it,
    /// by wire name.
    pub async fn current(&self, kind: Kind) -> Result<BTreeMap<String, Resource>, StoreError> {
        let backends = if self.flow == Flow::ToZones && kind.is_policy() {
            self.backend_names().await?
        } else {
            BackendNames::new()
        };
        let all = self.store.list(kind, &ListFilter::default()).await?;
        Ok(all
            .iter()
            .filter_map(|r| self.flow.outgoing(r, &backends))
            .map(|r| (wire_key(r.kind, &r.mesh, &r.name), r))
            .collect())
    }

    async fn backend_names(&self) -> Result<BackendNames, StoreError> {
        let backends = self.store.list(Kind::MeshOpenTelemetryBackend, &ListFilter::default()).await?;
        Ok(backends
            .iter()
            .filter_map(|b| {
                self.flow.outgoing(b, &BackendNames::new()).map(|out| ((b.mesh.clone(), b.name.clone()), out.name))
            })
            .collect())
    }
}

/// What was sent in one response, to undo if the peer rejects it.
struct InFlight {
    kind: Kind,
    names: Vec<String>,
}

struct Publisher<'a, S> {
    outbox: &'a Outbox<S>,
    out: &'a mpsc::Sender<DeltaDiscoveryResponse>,
    stats: &'a StreamStats,
    /// Per subscribed kind, what the peer holds: wire name -> version.
    peer: BTreeMap<Kind, BTreeMap<String, String>>,
    in_flight: HashMap<String, InFlight>,
    nonce: u64,
    /// A response was rejected since the loop last looked: schedule the resend.
    nacked: bool,
}

/// Runs one stream's sending side until the peer closes it. `requests` are
/// the peer's subscriptions and ACK/NACKs; responses go to `out`.
pub async fn send<S, I>(
    outbox: &Outbox<S>,
    mut requests: I,
    out: &mpsc::Sender<DeltaDiscoveryResponse>,
    stats: &StreamStats,
) -> Result<(), SyncError>
where
    S: ResourceStore,
    I: Stream<Item = Result<DeltaDiscoveryRequest, tonic::Status>> + Unpin,
{
    let mut feed = outbox.store.subscribe();
    let mut sender =
        Publisher { outbox, out, stats, peer: BTreeMap::new(), in_flight: HashMap::new(), nonce: 0, nacked: false };
    let mut dirty: BTreeSet<Kind> = BTreeSet::new();
    let mut retry_at: Option<Instant> = None;
    loop {
        for kind in outbox.flow.kinds() {
            if dirty.remove(kind) && sender.peer.contains_key(kind) {
                match sender.flush(*kind).await {
                    Ok(()) => {}
                    Err(SyncError::Store(e)) => {
                        warn!(kind = %kind, error = %e, "cannot read what to sync; retrying");
                        retry_at = Some(Instant::now() + Duration::from_secs(1));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        dirty.clear();
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            request = requests.next() => match request {
                None => return Ok(()),
                Some(Err(status)) => return Err(SyncError::Stream(status)),
                Some(Ok(request)) => {
                    if let Some(kind) = sender.on_request(request)? {
                        dirty.insert(kind);
                    }
                }
            },
            change = feed.recv() => {
                note(&outbox.flow, change, &mut dirty)?;
                let deadline = Instant::now() + DEBOUNCE;
                while let Ok(change) = tokio::time::timeout_at(deadline, feed.recv()).await {
                    note(&outbox.flow, change, &mut dirty)?;
                }
            }
            _ = retry => {
                retry_at = None;
                dirty.extend(sender.peer.keys().copied());
            }
        }
        if std::mem::take(&mut sender.nacked) {
            retry_at.get_or_insert_with(|| Instant::now() + NACK_BACKOFF);
        }
    }
}

fn note(
    flow: &Flow,
    change: Result<tern_store::Change, RecvError>,
    dirty: &mut BTreeSet<Kind>,
) -> Result<(), SyncError> {
    match change {
        Ok(c) if flow.kinds().contains(&c.key.kind) && (c.op != ChangeOp::StatusUpdated || flow.keeps_status()) => {
            dirty.insert(c.key.kind);
        }
        Ok(_) => {}
        Err(RecvError::Lagged(_)) => dirty.extend(flow.kinds().iter().copied()),
        Err(RecvError::Closed) => return Err(SyncError::FeedClosed),
    }
    Ok(())
}

impl<S: ResourceStore> Publisher<'_, S> {
    /// A subscription (the kind to flush) or an ACK/NACK.
    fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<Option<Kind>, SyncError> {
        let kind =
            kind_of_type_url(&request.type_url).filter(|k| self.outbox.flow.kinds().contains(k)).ok_or_else(|| {
                SyncError::Protocol(format!("subscription to {:?}, which this stream does not carry", request.type_url))
            })?;
        if request.response_nonce.is_empty() {
            self.peer.insert(kind, request.initial_resource_versions.into_iter().collect());
            return Ok(Some(kind));
        }
        let Some(sent) = self.in_flight.remove(&request.response_nonce) else { return Ok(None) };
        match request.error_detail {
            None => self.stats.acknowledged(kind),
            Some(error) => {
                warn!(kind = %kind, nonce = %request.response_nonce, error = %error.message, "the peer rejected a sync response (NACK); sending it again in {NACK_BACKOFF:?}");
                self.stats.rejected(kind, &error.message);
                // The peer's copy is unknown now: make every name of that response differ.
                let known = self.peer.entry(sent.kind).or_default();
                for name in sent.names {
                    known.insert(name, String::new());
                }
                self.nacked = true;
            }
        }
        Ok(None)
    }

    /// Sends what differs between the store and the peer, for one kind.
    async fn flush(&mut self, kind: Kind) -> Result<(), SyncError> {
        let current = self.outbox.current(kind).await.map_err(SyncError::Store)?;
        let with_status = self.outbox.flow.keeps_status();
        let known = self.peer.entry(kind).or_default();
        let mut upserts = Vec::new();
        for (name, r) in &current {
            let version = version_of(r, with_status);
            if known.get(name) != Some(&version) {
                upserts.push(encode(name, &version, r));
                known.insert(name.clone(), version);
            }
        }
        let removed: Vec<String> = known.keys().filter(|n| !current.contains_key(*n)).cloned().collect();
        for name in &removed {
            known.remove(name);
        }
        let mut removed = Some(removed).filter(|r| !r.is_empty());
        let mut chunks = upserts.chunks(CHUNK).peekable();
        if chunks.peek().is_none() && removed.is_some() {
            self.respond(kind, Vec::new(), removed.take().unwrap_or_default()).await?;
        }
        for chunk in chunks {
            self.respond(kind, chunk.to_vec(), removed.take().unwrap_or_default()).await?;
        }
        Ok(())
    }

    async fn respond(
        &mut self,
        kind: Kind,
        resources: Vec<XdsResource>,
        removed: Vec<String>,
    ) -> Result<(), SyncError> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return Err(SyncError::Protocol(format!("{MAX_IN_FLIGHT} responses left unanswered")));
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let names = resources.iter().map(|r| r.name.clone()).chain(removed.iter().cloned()).collect();
        debug!(kind = %kind, upserts = resources.len(), removed = removed.len(), nonce = %nonce, "sync response");
        let response = DeltaDiscoveryResponse {
            type_url: type_url(kind),
            resources,
            removed_resources: removed,
            nonce: nonce.clone(),
            ..Default::default()
        };
        self.in_flight.insert(nonce, InFlight { kind, names });
        self.stats.sent(kind, prost::Message::encoded_len(&response));
        self.out.send(response).await.map_err(|_| SyncError::Closed)
    }
}

fn encode(name: &str, version: &str, r: &Resource) -> XdsResource {
    let value = serde_json::to_vec(&WireResource::from_resource(r)).unwrap_or_default();
    XdsResource {
        name: name.to_string(),
        version: version.to_string(),
        resource: Some(Any { type_url: type_url(r.kind), value }),
        ..Default::default()
    }
}
