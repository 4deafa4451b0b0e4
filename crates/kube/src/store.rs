//! [`KubeStore`]: the kube-apiserver as Tern's resource store. Reads and
//! writes go to the apiserver; `resourceVersion` is the version (a write
//! naming an older one gets the apiserver's 409, reported as
//! [`StoreError::Conflict`]); status goes through the status subresource;
//! the change feed is a watch on every kind ([`KubeStore::feed`]).
//!
//! Unlike the SQL store, a batch is not one transaction (the apiserver has
//! none): every precondition and mesh of a batch is checked before the first
//! write, then the Meshes are written, then the rest, [`CONCURRENCY`] calls
//! at a time. A failed write stops the batch; the writes that went before
//! or beside it stay.

use crate::resources::{api_resource, fingerprint, version, Location, Naming, GLOBAL_SECRET_TYPE};
use futures::{stream, Stream, StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::Client;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use tern_model::{Kind, Resource, ResourceKey, DEFAULT_MESH};
use tern_store::{
    Change, ChangeOp, ListFilter, Precondition, ResourceStore, StatusWrite, StoreError, Write, WriteOutcome,
};
use tokio::sync::broadcast;
use tracing::warn;

/// Marks, in a ConfigMap of the system namespace, that the default mesh was
/// created once, so deleting it sticks.
const DEFAULTS_CONFIG_MAP: &str = "tern-defaults";

/// How many apiserver calls a batch makes at once (reads, then writes): a
/// zone's initial sync into a global on Kubernetes is thousands of objects.
pub const CONCURRENCY: usize = 16;

/// The resource store on a kube-apiserver.
pub struct KubeStore {
    client: Client,
    naming: Naming,
    changes: broadcast::Sender<Change>,
    concurrency: usize,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The apiserver's answer code, when it gave one.
fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

impl KubeStore {
    /// Connects with `client`; fails with the command to run when Tern's CRDs
    /// are not installed. Creates the default mesh the first time when
    /// `default_mesh` (not on a zone: its meshes come from the global).
    pub async fn connect(client: Client, system_namespace: &str, default_mesh: bool) -> Result<KubeStore, StoreError> {
        let (changes, _) = broadcast::channel(4096);
        let naming = Naming { system_namespace: system_namespace.into() };
        let store = KubeStore { client, naming, changes, concurrency: CONCURRENCY };
        for kind in Kind::ALL {
            let api: Api<DynamicObject> = Api::all_with(store.client.clone(), &api_resource(kind));
            if let Err(e) = api.list(&ListParams::default().limit(1)).await {
                return Err(StoreError::Backend(match status_code(&e) {
                    Some(404) => format!(
                        "the custom resource {}.{} is not installed: run `ternctl install crds | kubectl apply -f -`",
                        crate::resources::plural(kind),
                        crate::resources::GROUP
                    ),
                    _ => format!("listing {} from the apiserver: {e}", kind.name()),
                }));
            }
        }
        if default_mesh {
            store.ensure_default_mesh().await?;
        }
        Ok(store)
    }

    /// The same store making at most `n` calls at once (1: one by one, as
    /// the benchmark compares).
    pub fn with_concurrency(mut self, n: usize) -> KubeStore {
        self.concurrency = n.max(1);
        self
    }

    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn api(&self, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &api_resource(kind)),
            None => Api::all_with(self.client.clone(), &api_resource(kind)),
        }
    }

    async fn ensure_default_mesh(&self) -> Result<(), StoreError> {
        use k8s_openapi::api::core::v1::ConfigMap;
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.naming.system_namespace);
        if maps.get_opt(DEFAULTS_CONFIG_MAP).await.map_err(backend)?.is_some() {
            return Ok(());
        }
        let mesh = Resource {
            kind: Kind::Mesh,
            mesh: String::new(),
            name: DEFAULT_MESH.into(),
            labels: BTreeMap::new(),
            spec: json!({}),
            status: None,
            meta: Default::default(),
        };
        let write = Write { resource: mesh, precondition: Precondition::MustNotExist };
        let stored = self.find(&write.resource.key()).await?;
        match self.write_one(&write, stored).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let mark: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": DEFAULTS_CONFIG_MAP},
            "data": {"defaultMeshCreated": "true"}
        }))
        .map_err(backend)?;
        match maps.create(&PostParams::default(), &mark).await {
            Ok(_) => Ok(()),
            Err(e) if status_code(&e) == Some(409) => Ok(()),
            Err(e) => Err(StoreError::Backend(format!(
                "creating ConfigMap {DEFAULTS_CONFIG_MAP} in {}: {e}",
                self.naming.system_namespace
            ))),
        }
    }

    async fn patch_status(
        &self,
        kind: Kind,
        at: &Location,
        patch: &serde_json::Value,
    ) -> Result<DynamicObject, kube::Error> {
        let api = self.api(kind, at.namespace.as_deref());
        api.patch_status(&at.name, &PatchParams::default(), &Patch::Merge(patch)).await
    }

    /// The stored object behind a key, and where it is.
    async fn find(&self, key: &ResourceKey) -> Result<Option<(Location, DynamicObject)>, StoreError> {
        for at in self.naming.candidates(key.kind, &key.name) {
            let found = self.api(key.kind, at.namespace.as_deref()).get_opt(&at.name).await.map_err(backend)?;
            if let Some(obj) = found.filter(|o| self.belongs(key, o)) {
                return Ok(Some((at, obj)));
            }
        }
        Ok(None)
    }

    /// Whether an object found by name is the keyed resource (its mesh, and
    /// for Secrets, Tern's type).
    fn belongs(&self, key: &ResourceKey, obj: &DynamicObject) -> bool {
        match self.naming.to_resource(key.kind, obj) {
            Ok(r) if key.kind == Kind::GlobalSecret => {
                obj.data.get("type").and_then(|t| t.as_str()) == Some(GLOBAL_SECRET_TYPE) && r.name == key.name
            }
            Ok(r) => r.mesh == key.mesh,
            Err(_) => false,
        }
    }

    /// Every mesh the batch writes into exists, or is written in it: one
    /// read per mesh.
    async fn check_meshes(&self, writes: &[Write]) -> Result<(), StoreError> {
        let in_batch: HashSet<&str> =
            writes.iter().filter(|w| w.resource.kind == Kind::Mesh).map(|w| w.resource.name.as_str()).collect();
        let mut checked = HashSet::new();
        for w in writes {
            let key = w.resource.key();
            if !key.kind.is_mesh_scoped() || in_batch.contains(key.mesh.as_str()) || !checked.insert(key.mesh.clone()) {
                continue;
            }
            if self.find(&ResourceKey::new(Kind::Mesh, "", &key.mesh)).await?.is_none() {
                return Err(StoreError::MeshNotFound { mesh: key.mesh.clone(), key });
            }
        }
        Ok(())
    }

    async fn find_key(&self, key: ResourceKey) -> Result<Option<(Location, DynamicObject)>, StoreError> {
        self.find(&key).await
    }

    /// Checks a write's precondition against what is stored.
    fn check_precondition(
        key: &ResourceKey,
        precondition: Precondition,
        stored: Option<&DynamicObject>,
    ) -> Result<(), StoreError> {
        match (precondition, stored) {
            (Precondition::MustNotExist, Some(_)) => Err(StoreError::AlreadyExists { key: key.clone() }),
            (Precondition::MustExist | Precondition::Version(_), None) => Err(StoreError::NotFound(key.clone())),
            (Precondition::Version(v), Some(o)) if version(&o.metadata) != v => {
                Err(StoreError::Conflict { key: key.clone(), expected: v, actual: version(&o.metadata) })
            }
            _ => Ok(()),
        }
    }

    /// Writes one resource over what `find` returned for it.
    async fn write_one(
        &self,
        w: &Write,
        stored: Option<(Location, DynamicObject)>,
    ) -> Result<WriteOutcome, StoreError> {
        let key = w.resource.key();
        Self::check_precondition(&key, w.precondition, stored.as_ref().map(|(_, o)| o))?;
        let at = stored.as_ref().map(|(at, _)| at.clone()).unwrap_or_else(|| self.naming.location(key.kind, &key.name));
        let mut obj = self.naming.to_object(&w.resource, &at);
        let api = self.api(key.kind, at.namespace.as_deref());
        let Some((_, old)) = stored else {
            return match api.create(&PostParams::default(), &obj).await {
                Ok(created) => Ok(WriteOutcome::Created { version: version(&created.metadata) }),
                Err(e) if status_code(&e) == Some(409) => Err(StoreError::AlreadyExists { key }),
                Err(e) => Err(StoreError::Backend(format!("creating {key}: {e}"))),
            };
        };
        let old_version = version(&old.metadata);
        if fingerprint(&old) == fingerprint(&obj) {
            return Ok(WriteOutcome::Unchanged { version: old_version });
        }
        obj.metadata.resource_version = old.metadata.resource_version.clone();
        match api.replace(&at.name, &PostParams::default(), &obj).await {
            Ok(updated) => Ok(WriteOutcome::Updated { version: version(&updated.metadata) }),
            Err(e) if status_code(&e) == Some(409) => {
                let actual = self.find(&key).await?.map(|(_, o)| version(&o.metadata)).unwrap_or(0);
                Err(StoreError::Conflict { key, expected: old_version, actual })
            }
            Err(e) => Err(StoreError::Backend(format!("updating {key}: {e}"))),
        }
    }

    async fn delete_mesh(&self, mesh: &str) -> Result<(), StoreError> {
        let filter = ListFilter { mesh: Some(mesh.into()), ..Default::default() };
        if !self.list(Kind::Dataplane, &filter).await?.is_empty() {
            return Err(StoreError::MeshHasDataplanes { mesh: mesh.into() });
        }
        for kind in Kind::ALL.into_iter().filter(|k| k.is_mesh_scoped()) {
            for r in self.list(kind, &filter).await? {
                if let Some((at, obj)) = self.find(&r.key()).await? {
                    self.delete_found(&r.key(), &at, &obj).await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes the object found for `key`, if it is still that version.
    async fn delete_found(&self, key: &ResourceKey, at: &Location, obj: &DynamicObject) -> Result<(), StoreError> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: obj.metadata.resource_version.clone(),
                uid: obj.metadata.uid.clone(),
            }),
            ..Default::default()
        };
        match self.api(key.kind, at.namespace.as_deref()).delete(&at.name, &params).await {
            Ok(_) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Err(StoreError::NotFound(key.clone())),
            Err(e) if status_code(&e) == Some(409) => {
                let actual = self.find(key).await?.map(|(_, o)| version(&o.metadata)).unwrap_or(0);
                Err(StoreError::Conflict { key: key.clone(), expected: version(&obj.metadata), actual })
            }
            Err(e) => Err(StoreError::Backend(format!("deleting {key}: {e}"))),
        }
    }

    /// The change feed: watches every kind and announces each change to
    /// [`ResourceStore::subscribe`]rs until the apiserver is gone for good.
    /// A restarted watch is reconciled against what was known, so nothing
    /// missed while it was down stays missed. The caller owns this task.
    pub async fn feed(&self) -> Result<(), StoreError> {
        let mut known: HashMap<ResourceKey, (i64, String)> = HashMap::new();
        let mut listing: HashMap<Kind, HashSet<ResourceKey>> = HashMap::new();
        // Every kind the store holds, global secrets included.
        let kinds = Kind::ALL.into_iter().chain([Kind::GlobalSecret]);
        let mut events = futures::stream::select_all(kinds.map(|kind| self.watch(kind)));
        while let Some((kind, event)) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    warn!(kind = kind.name(), error = %e, "watch failed; retrying");
                    continue;
                }
            };
            for change in self.changes_of(kind, event, &mut known, &mut listing) {
                let _ = self.changes.send(change);
            }
        }
        Err(StoreError::Backend("every watch on the apiserver ended".into()))
    }

    #[allow(clippy::type_complexity)]
    fn watch(
        &self,
        kind: Kind,
    ) -> Pin<Box<dyn Stream<Item = (Kind, Result<watcher::Event<DynamicObject>, watcher::Error>)> + Send>> {
        use kube::runtime::WatchStreamExt;
        let config = match kind {
            Kind::GlobalSecret => watcher::Config::default().fields(&format!("type={GLOBAL_SECRET_TYPE}")),
            _ => watcher::Config::default(),
        };
        let api = match kind {
            Kind::GlobalSecret => self.api(kind, Some(&self.naming.system_namespace)),
            _ => self.api(kind, None),
        };
        Box::pin(watcher(api, config).default_backoff().map(move |e| (kind, e)))
    }

    /// What one watch event means as changes.
    fn changes_of(
        &self,
        kind: Kind,
        event: watcher::Event<DynamicObject>,
        known: &mut HashMap<ResourceKey, (i64, String)>,
        listing: &mut HashMap<Kind, HashSet<ResourceKey>>,
    ) -> Vec<Change> {
        let key_of = |obj: &DynamicObject| self.naming.to_resource(kind, obj).ok().map(|r| r.key());
        match event {
            watcher::Event::Init => {
                listing.insert(kind, HashSet::new());
                vec![]
            }
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                let Some(key) = key_of(&obj) else { return vec![] };
                if let Some(seen) = listing.get_mut(&kind) {
                    seen.insert(key.clone());
                }
                let now = (version(&obj.metadata), fingerprint(&obj));
                let op = match known.insert(key.clone(), now.clone()) {
                    None => ChangeOp::Created,
                    Some(before) if before.0 == now.0 => return vec![],
                    Some(before) if before.1 == now.1 => ChangeOp::StatusUpdated,
                    Some(_) => ChangeOp::Updated,
                };
                vec![Change::new(key, op, now.0)]
            }
            watcher::Event::InitDone => {
                let seen = listing.remove(&kind).unwrap_or_default();
                let gone: Vec<ResourceKey> =
                    known.keys().filter(|k| k.kind == kind && !seen.contains(k)).cloned().collect();
                gone.into_iter()
                    .filter_map(|key| known.remove(&key).map(|(v, _)| Change::new(key, ChangeOp::Deleted, v)))
                    .collect()
            }
            watcher::Event::Delete(obj) => {
                let Some(key) = key_of(&obj) else { return vec![] };
                known.remove(&key);
                vec![Change::new(key, ChangeOp::Deleted, version(&obj.metadata))]
            }
        }
    }
}

impl ResourceStore for KubeStore {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        match self.find(key).await? {
            Some((_, obj)) => self.naming.to_resource(key.kind, &obj).map(Some).map_err(backend),
            None => Ok(None),
        }
    }

    /// [`CONCURRENCY`] reads at a time (a zone's sync checks a whole
    /// response at once).
    async fn get_many(&self, keys: &[ResourceKey]) -> Result<Vec<Resource>, StoreError> {
        let found: Vec<Option<Resource>> =
            stream::iter(0..keys.len()).map(|i| self.get(&keys[i])).buffered(self.concurrency).try_collect().await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn list(&self, kind: Kind, filter: &ListFilter) -> Result<Vec<Resource>, StoreError> {
        let (api, params) = match kind {
            Kind::GlobalSecret => (
                self.api(kind, Some(&self.naming.system_namespace)),
                ListParams::default().fields(&format!("type={GLOBAL_SECRET_TYPE}")),
            ),
            _ => (self.api(kind, None), ListParams::default()),
        };
        let objects = api.list(&params).await.map_err(|e| StoreError::Backend(format!("listing {kind}: {e}")))?;
        let mut out: Vec<Resource> = objects
            .items
            .iter()
            .filter_map(|obj| match self.naming.to_resource(kind, obj) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(kind = kind.name(), name = ?obj.metadata.name, error = %e, "unreadable object left out");
                    None
                }
            })
            .filter(|r| filter.mesh.as_ref().is_none_or(|m| &r.mesh == m) && r.matches_labels(&filter.labels))
            .collect();
        out.sort_by(|a, b| (&a.mesh, &a.name).cmp(&(&b.mesh, &b.name)));
        Ok(out)
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, StoreError> {
        self.check_meshes(&writes).await?;
        // By index: closures over borrowed items make the future not Send.
        let found: Vec<_> = stream::iter(0..writes.len())
            .map(|i| self.find_key(writes[i].resource.key()))
            .buffered(self.concurrency)
            .try_collect()
            .await?;
        for (w, stored) in writes.iter().zip(&found) {
            Self::check_precondition(&w.resource.key(), w.precondition, stored.as_ref().map(|(_, o)| o))?;
        }
        // Meshes first: what lives in them may be written beside them.
        let (meshes, rest): (Vec<_>, Vec<_>) =
            found.into_iter().enumerate().partition(|(i, _)| writes[*i].resource.kind == Kind::Mesh);
        let mut outcomes: Vec<Option<WriteOutcome>> = writes.iter().map(|_| None).collect();
        for (i, stored) in meshes {
            outcomes[i] = Some(self.write_one(&writes[i], stored).await?);
        }
        let written: Vec<(usize, WriteOutcome)> = stream::iter(rest)
            .map(|(i, stored)| {
                let w = &writes[i];
                async move { self.write_one(w, stored).await.map(|o| (i, o)) }
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        for (i, outcome) in written {
            outcomes[i] = Some(outcome);
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    async fn delete(&self, key: &ResourceKey, precondition: Precondition) -> Result<(), StoreError> {
        let Some((at, obj)) = self.find(key).await? else { return Err(StoreError::NotFound(key.clone())) };
        Self::check_precondition(key, precondition, Some(&obj))?;
        if key.kind == Kind::Mesh {
            self.delete_mesh(&key.name).await?;
        }
        self.delete_found(key, &at, &obj).await
    }

    /// The patch names the expected resourceVersion, so the apiserver checks
    /// it (409 when it moved on), and goes straight to where a key of this
    /// name is written; only a dotted name in the system namespace needs the
    /// second look.
    async fn set_status(
        &self,
        key: &ResourceKey,
        status: Option<serde_json::Value>,
        expected_version: i64,
    ) -> Result<i64, StoreError> {
        let patch = json!({
            "metadata": {"resourceVersion": expected_version.to_string()},
            "status": status.unwrap_or(serde_json::Value::Null),
        });
        let mut at = self.naming.location(key.kind, &key.name);
        let mut patched = self.patch_status(key.kind, &at, &patch).await;
        if matches!(&patched, Err(e) if status_code(e) == Some(404)) {
            let Some((found, _)) = self.find(key).await? else { return Err(StoreError::NotFound(key.clone())) };
            at = found;
            patched = self.patch_status(key.kind, &at, &patch).await;
        }
        match patched {
            Ok(updated) => Ok(version(&updated.metadata)),
            Err(e) if status_code(&e) == Some(404) => Err(StoreError::NotFound(key.clone())),
            Err(e) if status_code(&e) == Some(409) => {
                let actual = self.find(key).await?.map(|(_, o)| version(&o.metadata)).unwrap_or(0);
                Err(StoreError::Conflict { key: key.clone(), expected: expected_version, actual })
            }
            Err(e) => Err(StoreError::Backend(format!("writing the status of {key}: {e}"))),
        }
    }

    /// [`CONCURRENCY`] status writes at a time, each as `set_status`.
    async fn set_statuses(&self, writes: Vec<StatusWrite>) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        let written = stream::iter(writes)
            .map(|w| async move { self.set_status(&w.key, w.status, w.expected_version).await })
            .buffered(self.concurrency);
        Ok(written.collect().await)
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
