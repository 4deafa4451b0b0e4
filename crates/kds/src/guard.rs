//! The write rules of a multi-zone deployment, as a store in front of the
//! real one: everything users, data planes and the reconciler write goes
//! through it; only the sync streams write past it.
//!
//! - On a zone: Meshes and zones are the global's; what came from the
//!   global (`kuma.io/origin: global`) is read-only; what is written here
//!   gets `kuma.io/origin: zone` and `kuma.io/zone`, and a Dataplane's
//!   inbounds the `kuma.io/zone` tag.
//! - On the global: Dataplanes and their insights live in zones; what came
//!   from a zone is read-only; what is written here gets
//!   `kuma.io/origin: global`.

use crate::mapping::{ORIGIN_GLOBAL, ORIGIN_LABEL, ORIGIN_ZONE, ZONE_LABEL};
use std::sync::Arc;
use tern_model::spec::DataplaneSpec;
use tern_model::{Kind, Resource, ResourceKey};
use tern_store::{Change, ListFilter, Precondition, ResourceStore, StatusWrite, StoreError, Write, WriteOutcome};
use tokio::sync::broadcast;

/// Which control plane this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Global,
    Zone { zone: String },
}

pub struct OriginGuard<S> {
    inner: Arc<S>,
    role: Role,
}

impl<S: ResourceStore> OriginGuard<S> {
    pub fn new(inner: Arc<S>, role: Role) -> Self {
        OriginGuard { inner, role }
    }

    async fn check(&self, key: &ResourceKey) -> Result<(), StoreError> {
        let stored = self.inner.get(key).await?;
        match refusal(&self.role, key, stored.as_ref()) {
            Some(reason) => Err(StoreError::ReadOnly { key: key.clone(), reason }),
            None => Ok(()),
        }
    }

    /// The labels (and, for a Dataplane in a zone, the zone tag) this side
    /// puts on what is written here.
    fn label(&self, r: &mut Resource) {
        if matches!(r.kind, Kind::DataplaneInsight | Kind::Zone | Kind::ZoneInsight | Kind::GlobalSecret) {
            return;
        }
        match &self.role {
            Role::Global => {
                r.labels.insert(ORIGIN_LABEL.into(), ORIGIN_GLOBAL.into());
                r.labels.remove(ZONE_LABEL);
            }
            Role::Zone { zone } => {
                r.labels.insert(ORIGIN_LABEL.into(), ORIGIN_ZONE.into());
                r.labels.insert(ZONE_LABEL.into(), zone.clone());
                if r.kind == Kind::Dataplane {
                    tag_inbounds(r, zone);
                }
            }
        }
    }
}

/// Why a user (not the sync) may not write or delete `key` on a control plane
/// of `role`, given the object as stored (or as it would be written): the
/// rules [`OriginGuard`] applies, and the admission webhook on Kubernetes.
pub fn refusal(role: &Role, key: &ResourceKey, stored: Option<&Resource>) -> Option<String> {
    let origin = stored.and_then(|r| r.labels.get(ORIGIN_LABEL)).map(String::as_str);
    match role {
        Role::Zone { .. } => match key.kind {
            Kind::Mesh => Some(format!(
                "{key}: meshes are created on the global control plane and synced to zones; apply it there"
            )),
            Kind::Zone | Kind::ZoneInsight => Some(format!("{key}: zones are managed on the global control plane")),
            _ if origin == Some(ORIGIN_GLOBAL) => Some(format!(
                "{key} is synced from the global control plane (kuma.io/origin: global) and read-only on a zone; \
                 edit it on the global control plane"
            )),
            _ => None,
        },
        Role::Global => match key.kind {
            Kind::Dataplane | Kind::DataplaneInsight => Some(format!(
                "{key}: data planes connect to a zone control plane; the global control plane only shows the \
                 ones its zones sync"
            )),
            _ if origin == Some(ORIGIN_ZONE) => {
                let zone = stored.and_then(|r| r.labels.get(ZONE_LABEL)).map(String::as_str).unwrap_or("?");
                Some(format!(
                    "{key} is synced from zone {zone:?} (kuma.io/origin: zone) and read-only on the global \
                     control plane; edit it on that zone's control plane"
                ))
            }
            _ => None,
        },
    }
}

/// Kuma's zone control plane tags every inbound with its zone, so policies
/// can select a zone's data planes (`MeshSubset` on `kuma.io/zone`).
fn tag_inbounds(r: &mut Resource, zone: &str) {
    let Ok(mut spec) = serde_json::from_value::<DataplaneSpec>(r.spec.clone()) else { return };
    let Some(net) = spec.networking.as_mut() else { return };
    for inbound in &mut net.inbound {
        inbound.tags.insert(ZONE_LABEL.into(), zone.to_string());
    }
    if let Ok(value) = serde_json::to_value(&spec) {
        r.spec = value;
    }
}

impl<S: ResourceStore> ResourceStore for OriginGuard<S> {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        self.inner.get(key).await
    }

    async fn get_many(&self, keys: &[ResourceKey]) -> Result<Vec<Resource>, StoreError> {
        self.inner.get_many(keys).await
    }

    async fn list(&self, kind: Kind, filter: &ListFilter) -> Result<Vec<Resource>, StoreError> {
        self.inner.list(kind, filter).await
    }

    async fn apply(&self, mut writes: Vec<Write>) -> Result<Vec<WriteOutcome>, StoreError> {
        // Every write is checked before any is made: all or nothing holds.
        for w in &writes {
            self.check(&w.resource.key()).await?;
        }
        for w in &mut writes {
            self.label(&mut w.resource);
        }
        self.inner.apply(writes).await
    }

    async fn delete(&self, key: &ResourceKey, precondition: Precondition) -> Result<(), StoreError> {
        self.check(key).await?;
        self.inner.delete(key, precondition).await
    }

    async fn set_status(
        &self,
        key: &ResourceKey,
        status: Option<serde_json::Value>,
        expected_version: i64,
    ) -> Result<i64, StoreError> {
        // A zone's status is its own to write, on its resources and on the
        // copies of the global's; the global's copies of a zone's are the zone's.
        if self.role == Role::Global {
            let stored = self.inner.get(key).await?;
            if stored.as_ref().and_then(|r| r.labels.get(ORIGIN_LABEL)).map(String::as_str) == Some(ORIGIN_ZONE) {
                return Err(StoreError::ReadOnly { key: key.clone(), reason: format!("{key} is its zone's to write") });
            }
        }
        self.inner.set_status(key, status, expected_version).await
    }

    async fn set_statuses(&self, writes: Vec<StatusWrite>) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        if self.role == Role::Global {
            // Each is checked against what is stored, as set_status does.
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(self.set_status(&w.key, w.status, w.expected_version).await);
            }
            return Ok(out);
        }
        self.inner.set_statuses(writes).await
    }

    fn batches_are_transactions(&self) -> bool {
        self.inner.batches_are_transactions()
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.subscribe()
    }
}
