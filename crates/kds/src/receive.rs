//! The receiving side of a stream: subscribe with what this side already
//! holds from the peer, then apply each delta response to the store and
//! answer ACK or NACK. A zone receives the global's resources; the global
//! receives each zone's.

use crate::mapping::{key_of_wire, version_of, wire_key, Flow, WireResource};
use crate::stats::StreamStats;
use crate::{kind_of_type_url, type_url, SyncError};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as XdsResource,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::HashMap;
use std::sync::Arc;
use tern_model::{Kind, Resource, ResourceKey};
use tern_store::{ListFilter, Precondition, ResourceStore, StatusWrite, StoreError, Write};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tracing::{debug, warn};

/// gRPC's INVALID_ARGUMENT, the code of a NACK.
const INVALID_ARGUMENT: i32 = 3;

/// Where one side keeps what it receives.
pub struct Inbox<S> {
    /// The store written directly: the write rules of [`crate::OriginGuard`]
    /// are for users, and synced resources are exactly what they keep out.
    pub store: Arc<S>,
    pub flow: Flow,
}

impl<S: ResourceStore> Inbox<S> {
    /// What this side holds from the peer, for the subscription.
    pub async fn held(&self, kind: Kind) -> Result<HashMap<String, String>, StoreError> {
        let all = self.store.list(kind, &ListFilter::default()).await?;
        let with_status = self.flow.keeps_status();
        Ok(all
            .iter()
            .filter(|r| self.flow.owns(r))
            .map(|r| (wire_key(kind, &r.mesh, &r.name), version_of(r, with_status)))
            .collect())
    }

    /// Applies one response: every upsert in one batch, their statuses in
    /// one more, then the removals. Refuses the whole response if any
    /// resource is not the peer's to send.
    pub async fn apply(&self, kind: Kind, response: &DeltaDiscoveryResponse) -> Result<(), String> {
        let checked = self.check_all(kind, &response.resources).await?;
        let mut writes = Vec::with_capacity(checked.len());
        // Per write, the status to set after it (status never rides on a write).
        let mut statuses = Vec::with_capacity(checked.len());
        for (resource, stored_status) in checked {
            let changed = stored_status.as_ref() != Some(&resource.status);
            statuses.push((self.flow.keeps_status() && changed).then(|| (resource.key(), resource.status.clone())));
            writes.push(Write { resource, precondition: Precondition::None });
        }
        let outcomes = self.store.apply(writes).await.map_err(|e| e.to_string())?;
        let status_writes: Vec<StatusWrite> = statuses
            .into_iter()
            .zip(outcomes)
            .filter_map(|(status, outcome)| {
                status.map(|(key, status)| StatusWrite { key, status, expected_version: outcome.version() })
            })
            .collect();
        let keys: Vec<ResourceKey> = status_writes.iter().map(|w| w.key.clone()).collect();
        let written = self.store.set_statuses(status_writes).await.map_err(|e| e.to_string())?;
        if let Some((key, Err(e))) = keys.iter().zip(written).find(|(_, r)| r.is_err()) {
            return Err(format!("the status of {key}: {e}"));
        }
        for wire in &response.removed_resources {
            let key =
                key_of_wire(kind, wire).ok_or_else(|| format!("removed resource {wire:?} is not a {kind} name"))?;
            match self.store.get(&key).await.map_err(|e| e.to_string())? {
                Some(r) if self.flow.owns(&r) => match self.store.delete(&key, Precondition::None).await {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(format!("removing {key}: {e}")),
                },
                Some(_) => return Err(format!("{key} was not synced from {}; not removed", self.flow.source())),
                None => {}
            }
        }
        Ok(())
    }

    /// Decodes every resource and checks it may be stored here: [`decode`],
    /// labels saying it comes from the peer, and no resource of this side's
    /// own under its name. With each, the status stored now (read in one
    /// call for the whole response).
    async fn check_all(
        &self,
        kind: Kind,
        items: &[XdsResource],
    ) -> Result<Vec<(Resource, Option<Option<serde_json::Value>>)>, String> {
        let mut decoded = Vec::with_capacity(items.len());
        for item in items {
            let resource = decode(kind, item)?;
            if !self.flow.owns(&resource) {
                return Err(format!(
                    "{} does not carry the labels of a resource from {}",
                    resource.key(),
                    self.flow.source()
                ));
            }
            decoded.push(resource);
        }
        let keys: Vec<ResourceKey> = decoded.iter().map(Resource::key).collect();
        let mut stored: HashMap<ResourceKey, Resource> =
            self.store.get_many(&keys).await.map_err(|e| e.to_string())?.into_iter().map(|r| (r.key(), r)).collect();
        for s in stored.values() {
            if !self.flow.owns(s) {
                return Err(format!(
                    "{} exists here and was not synced from {}; not replaced",
                    s.key(),
                    self.flow.source()
                ));
            }
        }
        Ok(decoded
            .into_iter()
            .map(|r| {
                let status = stored.remove(&r.key()).map(|s| s.status);
                (r, status)
            })
            .collect())
    }
}

/// One resource of a response of `kind`, decoded and checked without the
/// store: its type and name as announced, and a spec the validator accepts.
pub fn decode(kind: Kind, item: &XdsResource) -> Result<Resource, String> {
    let any = item.resource.as_ref().ok_or_else(|| format!("{:?} carries no resource", item.name))?;
    if any.type_url != type_url(kind) {
        return Err(format!("{:?} is a {:?}, not a {kind}", item.name, any.type_url));
    }
    let wire: WireResource =
        serde_json::from_slice(&any.value).map_err(|e| format!("{:?} does not decode: {e}", item.name))?;
    let resource = wire.into_resource(kind);
    if wire_key(kind, &resource.mesh, &resource.name) != item.name {
        return Err(format!("{:?} names a different resource ({})", item.name, resource.key()));
    }
    tern_model::spec::check_spec(kind, &resource.spec).map_err(|v| format!("{} is not valid: {v}", resource.key()))?;
    Ok(resource)
}

/// Runs one stream's receiving side: subscribes to every kind of the flow,
/// then applies responses until the peer closes the stream.
pub async fn receive<S, I>(
    inbox: &Inbox<S>,
    mut responses: I,
    out: &mpsc::Sender<DeltaDiscoveryRequest>,
    stats: &StreamStats,
) -> Result<(), SyncError>
where
    S: ResourceStore,
    I: Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Unpin,
{
    for kind in inbox.flow.kinds() {
        let held = inbox.held(*kind).await.map_err(SyncError::Store)?;
        let subscribe =
            DeltaDiscoveryRequest { type_url: type_url(*kind), initial_resource_versions: held, ..Default::default() };
        out.send(subscribe).await.map_err(|_| SyncError::Closed)?;
    }
    while let Some(response) = responses.next().await {
        let response = response.map_err(SyncError::Stream)?;
        let kind =
            kind_of_type_url(&response.type_url).filter(|k| inbox.flow.kinds().contains(k)).ok_or_else(|| {
                SyncError::Protocol(format!("a response of {:?}, which this stream does not carry", response.type_url))
            })?;
        stats.sent(kind, prost::Message::encoded_len(&response));
        let error_detail = match inbox.apply(kind, &response).await {
            Ok(()) => {
                debug!(kind = %kind, upserts = response.resources.len(), removed = response.removed_resources.len(), "sync applied");
                stats.acknowledged(kind);
                None
            }
            Err(message) => {
                warn!(kind = %kind, from = %inbox.flow.source(), error = %message, "sync response rejected (NACK)");
                stats.rejected(kind, &message);
                Some(RpcStatus { code: INVALID_ARGUMENT, message, details: Vec::new() })
            }
        };
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail,
            ..Default::default()
        };
        out.send(ack).await.map_err(|_| SyncError::Closed)?;
    }
    Ok(())
}
