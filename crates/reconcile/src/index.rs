//! What the reconcile loop knows of each mesh, kept current from the change
//! feed: read whole at start and after the feed lagged, then only the
//! resources a change names (one read each). Dataplane specs, their service
//! endpoints and insight sessions are parsed once per change, not once per
//! recompute.

use std::collections::BTreeMap;
use tern_model::spec::dataplane::{DataplaneSpec, PROTOCOL_TAG, SERVICE_TAG};
use tern_model::{Kind, Resource, ResourceKey};
use tern_resolve::Session;
use tern_store::{ListFilter, ResourceStore, StoreError};
use tern_xds::{ServiceEndpoint, ServiceMap};

pub(crate) struct IndexedDataplane {
    pub resource: Resource,
    pub spec: DataplaneSpec,
    /// Its inbounds as service endpoints.
    endpoints: Vec<(String, ServiceEndpoint)>,
}

pub(crate) struct IndexedInsight {
    pub resource: Resource,
    pub session: Option<Session>,
}

/// One mesh's backends, policies, data planes and insights.
#[derive(Default)]
pub(crate) struct MeshIndex {
    pub backends: BTreeMap<String, Resource>,
    pub policies: BTreeMap<(Kind, String), Resource>,
    pub dataplanes: BTreeMap<String, IndexedDataplane>,
    pub insights: BTreeMap<String, IndexedInsight>,
}

const POLICY_KINDS: [Kind; 3] = [Kind::MeshTrace, Kind::MeshMetric, Kind::MeshAccessLog];

impl MeshIndex {
    /// Reads the whole mesh.
    pub async fn load<S: ResourceStore>(store: &S, mesh: &str) -> Result<MeshIndex, StoreError> {
        let in_mesh = ListFilter { mesh: Some(mesh.to_string()), ..Default::default() };
        let mut index = MeshIndex::default();
        // Insights before Dataplanes: a data plane registering meanwhile is
        // then at worst a Dataplane without its insight yet (no plan until
        // the insight's change arrives), never an insight that looks orphaned.
        let kinds = [Kind::DataplaneInsight, Kind::Dataplane, Kind::MeshOpenTelemetryBackend];
        for kind in kinds.into_iter().chain(POLICY_KINDS) {
            for r in store.list(kind, &in_mesh).await? {
                index.put(r);
            }
        }
        Ok(index)
    }

    /// Reads these resources again, in one go (gone ones are removed).
    pub async fn refresh<S: ResourceStore>(&mut self, store: &S, keys: &[ResourceKey]) -> Result<(), StoreError> {
        for key in keys {
            self.remove(key);
        }
        for r in store.get_many(keys).await? {
            self.put(r);
        }
        Ok(())
    }

    /// The version this index holds of `key`, if any.
    pub fn version(&self, key: &ResourceKey) -> Option<i64> {
        let name = &key.name;
        match key.kind {
            Kind::MeshOpenTelemetryBackend => self.backends.get(name).map(|r| r.meta.version),
            Kind::Dataplane => self.dataplanes.get(name).map(|d| d.resource.meta.version),
            Kind::DataplaneInsight => self.insights.get(name).map(|i| i.resource.meta.version),
            kind => self.policies.get(&(kind, name.clone())).map(|r| r.meta.version),
        }
    }

    fn put(&mut self, r: Resource) {
        match r.kind {
            Kind::MeshOpenTelemetryBackend => {
                self.backends.insert(r.name.clone(), r);
            }
            Kind::Dataplane => {
                // Stored Dataplanes passed the validator; a spec that does not
                // read (written by an older version) serves no endpoints.
                let spec: DataplaneSpec = serde_json::from_value(r.spec.clone()).unwrap_or_default();
                let endpoints = endpoints(&spec);
                self.dataplanes.insert(r.name.clone(), IndexedDataplane { resource: r, spec, endpoints });
            }
            Kind::DataplaneInsight => {
                let session = Session::from_insight_spec(&r.spec);
                self.insights.insert(r.name.clone(), IndexedInsight { resource: r, session });
            }
            kind if POLICY_KINDS.contains(&kind) => {
                self.policies.insert((kind, r.name.clone()), r);
            }
            _ => {}
        }
    }

    fn remove(&mut self, key: &ResourceKey) {
        let name = &key.name;
        match key.kind {
            Kind::MeshOpenTelemetryBackend => drop(self.backends.remove(name)),
            Kind::Dataplane => drop(self.dataplanes.remove(name)),
            Kind::DataplaneInsight => drop(self.insights.remove(name)),
            kind => drop(self.policies.remove(&(kind, name.clone()))),
        }
    }

    /// Records a status this loop wrote (no need to read it back).
    pub fn status_written(&mut self, key: &ResourceKey, status: Option<serde_json::Value>, version: i64) {
        let r = match key.kind {
            Kind::MeshOpenTelemetryBackend => self.backends.get_mut(&key.name),
            Kind::Dataplane => self.dataplanes.get_mut(&key.name).map(|d| &mut d.resource),
            Kind::DataplaneInsight => self.insights.get_mut(&key.name).map(|i| &mut i.resource),
            kind => self.policies.get_mut(&(kind, key.name.clone())),
        };
        if let Some(r) = r {
            r.status = status;
            r.meta.version = version;
        }
    }

    /// Every service's endpoints: the inbounds of the mesh's dataplanes.
    pub fn services(&self) -> ServiceMap {
        let mut map = ServiceMap::new();
        for dp in self.dataplanes.values() {
            for (service, endpoint) in &dp.endpoints {
                map.entry(service.clone()).or_default().push(endpoint.clone());
            }
        }
        for eps in map.values_mut() {
            eps.sort();
        }
        map
    }
}

fn endpoints(spec: &DataplaneSpec) -> Vec<(String, ServiceEndpoint)> {
    let Some(net) = &spec.networking else { return Vec::new() };
    net.inbound
        .iter()
        .filter_map(|inbound| {
            let service = inbound.tags.get(SERVICE_TAG)?;
            let port = u16::try_from(inbound.port).ok()?;
            let protocol =
                inbound.tags.get(PROTOCOL_TAG).map(|p| p.to_ascii_lowercase()).unwrap_or_else(|| "tcp".into());
            Some((service.clone(), ServiceEndpoint { address: net.address.clone(), port, protocol }))
        })
        .collect()
}
