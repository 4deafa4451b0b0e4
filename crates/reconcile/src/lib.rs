//! The control plane's reconcile loop. It follows the store's change feed,
//! recomputes the meshes a change touches with [`tern_resolve::resolve_mesh`]
//! (pure), then publishes each dataplane's plan to the [`PlanHub`] and writes
//! statuses back: `DataplaneInsight.status.openTelemetry`, `ReferencedByPolicies`
//! on backends and `BackendRefsResolved` on policies.
//!
//! Status writes are conditional on the version just read and announced as
//! status-only changes, which this loop ignores, so they never trigger a
//! recompute or overwrite a newer spec.

mod hub;
mod index;

pub use hub::{PlanHub, PlanState};
use index::MeshIndex;

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tern_model::spec::dataplane::ZONE_TAG;
use tern_model::spec::motb::Condition;
use tern_model::{Kind, Resource, ResourceKey};
use tern_resolve::{resolve_mesh_incremental, Changed, DataplaneInput, MeshInput, MeshResolution, UnresolvedRef};
use tern_store::{ChangeOp, ListFilter, Precondition, ResourceStore, StatusWrite, StoreError};
use tern_xds::{ServiceMap, XdsHub};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn, Instrument};

/// How long the loop gathers changes before recomputing (a multi-document
/// apply lands as one batch of changes).
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The steps the loop times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One mesh recomputed and written out.
    Reconcile,
    /// One data plane's xDS snapshot built and published (Kuma's
    /// `xds_generation`); `changed` when it differs from the last one.
    XdsGeneration { changed: bool },
}

/// What changed in one mesh since its last recompute.
#[derive(Debug, Default)]
struct Pending {
    /// Read the whole mesh again (at start, after a lag or a failure, or
    /// when the Mesh itself changed) and recompute everything.
    reload: bool,
    /// Resources to read again, with the change's operation and version.
    reread: BTreeMap<ResourceKey, (ChangeOp, i64)>,
    /// Recompute every data plane (a policy changed).
    everything: bool,
    dataplanes: BTreeSet<String>,
    backends: BTreeSet<String>,
    /// A Dataplane was deleted: state kept per data plane is pruned.
    deleted: bool,
    /// The spans (API requests) whose writes this recompute answers.
    causes: Vec<tern_trace::Cause>,
}

impl Pending {
    fn reload() -> Self {
        Pending { reload: true, everything: true, ..Default::default() }
    }

    /// Whether plans may change (not only statuses were written).
    fn recomputes(&self) -> bool {
        self.reload || self.everything || !self.dataplanes.is_empty() || !self.backends.is_empty()
    }
}

/// Per-dataplane state held outside the reconciler (xDS streams, delivery
/// counts) that must not outlive its dataplane: after each recompute of a
/// mesh, everything not in `keep` is dropped.
pub trait DataplaneState: Send + Sync {
    fn retain(&self, mesh: &str, keep: &HashSet<&str>);
}

impl DataplaneState for XdsHub {
    fn retain(&self, mesh: &str, keep: &HashSet<&str>) {
        XdsHub::retain(self, mesh, keep)
    }
}

/// Backoff between retries of a mesh whose reconcile failed (store errors).
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub struct Reconciler<S> {
    store: Arc<S>,
    hub: Arc<PlanHub>,
    xds: Arc<XdsHub>,
    /// Other per-dataplane state to prune with the dataplanes.
    states: Vec<Arc<dyn DataplaneState>>,
    /// What this loop knows of each mesh, kept current from the feed.
    index: BTreeMap<String, MeshIndex>,
    /// The service endpoints per mesh the published snapshots were built with.
    services: BTreeMap<String, ServiceMap>,
    /// The last resolution per mesh, reused for what a change does not touch.
    previous: BTreeMap<String, MeshResolution>,
    /// Unresolved references already logged, per mesh: log once per change.
    logged_unresolved: BTreeMap<String, BTreeSet<UnresolvedRef>>,
    /// Dataplanes already logged as lacking the pipe feature.
    logged_no_feature: HashSet<(String, String)>,
    /// With several replicas, whether this one leads (writes status, cleans
    /// up insights); always when `None`.
    leader: Option<watch::Receiver<bool>>,
    /// Leadership as of the last pass, to recompute everything when gained.
    led: bool,
    /// Resources another control plane owns (on a global one, what zones
    /// synced): their status and lifetime are not this loop's to write.
    foreign: Option<fn(&Resource) -> bool>,
    /// Told how long each step took (the control plane's metrics).
    observer: Option<Arc<dyn Fn(Step, Duration) + Send + Sync>>,
}

impl<S: ResourceStore> Reconciler<S> {
    pub fn new(store: Arc<S>, hub: Arc<PlanHub>, xds: Arc<XdsHub>) -> Self {
        Reconciler {
            store,
            hub,
            xds,
            states: Vec::new(),
            index: BTreeMap::new(),
            services: BTreeMap::new(),
            previous: BTreeMap::new(),
            logged_unresolved: BTreeMap::new(),
            logged_no_feature: HashSet::new(),
            leader: None,
            led: true,
            foreign: None,
            observer: None,
        }
    }

    /// Calls `observer` with the duration of every timed [`Step`].
    pub fn with_observer(mut self, observer: Arc<dyn Fn(Step, Duration) + Send + Sync>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Leaves the status and the clean-up of resources `foreign` picks to
    /// whoever owns them.
    pub fn with_foreign(mut self, foreign: fn(&Resource) -> bool) -> Self {
        self.foreign = Some(foreign);
        self
    }

    fn observe(&self, step: Step, started: std::time::Instant) {
        if let Some(observe) = &self.observer {
            observe(step, started.elapsed());
        }
    }

    fn owns(&self, r: &Resource) -> bool {
        self.foreign.is_none_or(|foreign| !foreign(r))
    }

    /// Writes status and cleans up insights only while `leader` is true (one
    /// replica among several); on becoming the leader it recomputes and
    /// writes every mesh, so nothing another leader left stays stale.
    pub fn with_leadership(mut self, leader: watch::Receiver<bool>) -> Self {
        self.led = *leader.borrow();
        self.leader = Some(leader);
        self
    }

    fn is_leader(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| *l.borrow())
    }

    /// The next change; `None` after `timeout` or when leadership changes.
    async fn next_change(
        &mut self,
        feed: &mut broadcast::Receiver<tern_store::Change>,
        timeout: Option<Duration>,
    ) -> Option<Result<tern_store::Change, RecvError>> {
        let leadership = async {
            let changed = match &mut self.leader {
                Some(l) => l.changed().await.is_ok(),
                None => false,
            };
            // Without a leadership source, or once it is gone, it never changes again.
            if !changed {
                std::future::pending::<()>().await;
            }
        };
        let expired = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            change = feed.recv() => Some(change),
            _ = leadership => None,
            _ = expired => None,
        }
    }

    /// Also prunes `state` of deleted dataplanes.
    pub fn with_state(mut self, state: Arc<dyn DataplaneState>) -> Self {
        self.states.push(state);
        self
    }

    /// Runs until the store's change feed closes. A store error (listing the
    /// meshes, or reconciling one) is retried with backoff, so no change is
    /// left unapplied because the store hiccuped.
    pub async fn run(mut self) {
        let mut feed = self.store.subscribe();
        let mut dirty: BTreeMap<String, Pending> = BTreeMap::new();
        // Every mesh, at start and whenever the feed lagged.
        let mut resync = true;
        let mut backoff = RETRY_FIRST;
        loop {
            let leads = self.is_leader();
            if leads && !self.led {
                // Statuses may be stale from the last leader: write them all.
                resync = true;
                self.previous.clear();
            }
            self.led = leads;
            if resync {
                match self.store.list(Kind::Mesh, &ListFilter::default()).await {
                    Ok(meshes) => {
                        dirty.extend(meshes.into_iter().map(|m| (m.name, Pending::reload())));
                        resync = false;
                    }
                    Err(e) => warn!(error = %e, retry_in = ?backoff, "cannot list meshes; retrying"),
                }
            }
            let mut failed = BTreeMap::new();
            for (mesh, pending) in std::mem::take(&mut dirty) {
                let started = std::time::Instant::now();
                let span = tracing::info_span!("reconcile", otel.name = %format!("reconcile {mesh}"), mesh = %mesh);
                tern_trace::continues(&span, &pending.causes);
                let result = self.reconcile_mesh(&mesh, pending).instrument(span).await;
                self.observe(Step::Reconcile, started);
                if let Err(e) = result {
                    warn!(mesh = %mesh, error = %e, retry_in = ?backoff, "reconcile failed; retrying");
                    failed.insert(mesh, Pending::reload());
                }
            }
            // Wait for a change (or, after a failure, at most the backoff),
            // then gather whatever else arrives meanwhile.
            let next = if failed.is_empty() && !resync {
                backoff = RETRY_FIRST;
                self.next_change(&mut feed, None).await
            } else {
                dirty = failed;
                let waited = self.next_change(&mut feed, Some(backoff)).await;
                backoff = (backoff * 2).min(RETRY_MAX);
                waited
            };
            match next {
                None => continue,
                Some(Ok(change)) => note_change(&mut dirty, &change),
                Some(Err(RecvError::Lagged(_))) => resync = true,
                Some(Err(RecvError::Closed)) => return,
            }
            let deadline = tokio::time::Instant::now() + DEBOUNCE;
            while let Ok(next) = tokio::time::timeout_at(deadline, feed.recv()).await {
                match next {
                    Ok(change) => note_change(&mut dirty, &change),
                    Err(RecvError::Lagged(_)) => resync = true,
                    Err(RecvError::Closed) => return,
                }
            }
        }
    }

    /// Brings one mesh's index up to date, recomputes what the changes
    /// touch, and writes out the result: xDS snapshots and plans first (what
    /// data planes wait for), then statuses in batches, then clean-up.
    async fn reconcile_mesh(&mut self, mesh: &str, pending: Pending) -> Result<(), StoreError> {
        let mut index = match self.index.remove(mesh) {
            Some(index) if !pending.reload => index,
            _ => MeshIndex::load(&*self.store, mesh).await?,
        };
        if !pending.reload {
            // On failure the index is dropped: the retry reads the mesh whole.
            self.reread(&mut index, &pending).await?;
        }
        if pending.recomputes() {
            self.recompute(mesh, &mut index, &pending).await;
        }
        self.index.insert(mesh.to_string(), index);
        Ok(())
    }

    /// Reads again what the changes name, skipping this loop's own status
    /// writes (already in the index).
    async fn reread(&self, index: &mut MeshIndex, pending: &Pending) -> Result<(), StoreError> {
        let stale: Vec<ResourceKey> = pending
            .reread
            .iter()
            .filter(|(key, (op, version))| *op == ChangeOp::Deleted || index.version(key).is_none_or(|v| v < *version))
            .map(|(key, _)| key.clone())
            .collect();
        index.refresh(&*self.store, &stale).await
    }

    async fn recompute(&mut self, mesh: &str, index: &mut MeshIndex, pending: &Pending) {
        let backends: Vec<Resource> = index.backends.values().cloned().collect();
        let policies: Vec<Resource> = index.policies.values().cloned().collect();
        let inputs: Vec<DataplaneInput<'_>> = index
            .dataplanes
            .iter()
            .map(|(name, d)| DataplaneInput {
                resource: &d.resource,
                session: index.insights.get(name).and_then(|i| i.session.as_ref()),
            })
            .collect();
        let input = MeshInput { backends: &backends, policies: &policies, dataplanes: &inputs };
        let previous = self.previous.remove(mesh);
        let changed = match (&previous, pending) {
            (Some(_), p) if !p.everything && p.backends.is_empty() => Changed::Dataplanes(&p.dataplanes),
            (Some(_), p) if !p.everything && p.dataplanes.is_empty() => Changed::Backends(&p.backends),
            _ => Changed::Everything,
        };
        let previous = previous.unwrap_or_default();
        let resolution = resolve_mesh_incremental(&input, &previous, changed);
        drop(inputs);
        self.log_unresolved(mesh, &resolution.unresolved);
        if pending.reload || pending.deleted {
            let names: HashSet<&str> = index.dataplanes.keys().map(String::as_str).collect();
            self.hub.retain(mesh, &names);
            DataplaneState::retain(&*self.xds, mesh, &names);
            for state in &self.states {
                state.retain(mesh, &names);
            }
        }
        self.publish_snapshots(mesh, index, &resolution, &previous, pending);
        let statuses = self.publish_plans(mesh, index, &resolution, &previous);
        self.write_statuses(index, statuses, &backends, &policies, &resolution).await;
        self.clean_up_insights(mesh, index).await;
        self.previous.insert(mesh.to_string(), resolution);
    }

    /// Every touched data plane's xDS snapshot (all of them when the mesh's
    /// service endpoints moved).
    fn publish_snapshots(
        &mut self,
        mesh: &str,
        index: &MeshIndex,
        resolution: &MeshResolution,
        previous: &MeshResolution,
        pending: &Pending,
    ) {
        let endpoints_may_move = pending.reload || !pending.dataplanes.is_empty();
        let (services, services_changed) = match self.services.remove(mesh) {
            Some(known) if !endpoints_may_move => (known, false),
            before => {
                let now = index.services();
                let changed = before.as_ref() != Some(&now);
                (now, changed)
            }
        };
        for (name, dp) in &index.dataplanes {
            let Some(outcome) = resolution.dataplanes.get(name) else { continue };
            let before = previous.dataplanes.get(name);
            let untouched = before.is_some_and(|p| Arc::ptr_eq(p, outcome));
            // A plan can change without touching Envoy (a backend's address
            // lives in the plan, not in Envoy's configuration).
            let same_inputs = !pending.dataplanes.contains(name)
                && before.is_some_and(|p| p.envoy_telemetry() == outcome.envoy_telemetry());
            if (untouched || same_inputs) && !services_changed {
                continue;
            }
            let started = std::time::Instant::now();
            let inbound_zone = || dp.spec.networking.as_ref()?.inbound.first()?.tags.get(ZONE_TAG);
            let zone = dp.resource.labels.get(ZONE_TAG).or_else(inbound_zone).map(String::as_str);
            let target = tern_xds::Dataplane {
                mesh,
                name: &dp.resource.name,
                labels: &dp.resource.labels,
                zone,
                spec: &dp.spec,
            };
            let mut snapshot = tern_xds::build(&target, &outcome.envoy_telemetry(), &services);
            snapshot.cause = tern_trace::current();
            let version = snapshot.version.clone();
            let changed = self.xds.publish(&tern_xds::node_id(mesh, name), snapshot);
            self.observe(Step::XdsGeneration { changed }, started);
            if changed {
                debug!(mesh = %mesh, dataplane = %name, version = %version, "xDS snapshot updated");
            }
        }
        self.services.insert(mesh.to_string(), services);
    }

    /// Every touched data plane's plan; returns the insight statuses to write.
    fn publish_plans(
        &mut self,
        mesh: &str,
        index: &MeshIndex,
        resolution: &MeshResolution,
        previous: &MeshResolution,
    ) -> Vec<(ResourceKey, i64, Option<Value>)> {
        let mut statuses = Vec::new();
        for (name, outcome) in &resolution.dataplanes {
            if previous.dataplanes.get(name).is_some_and(|p| Arc::ptr_eq(p, outcome)) {
                continue; // untouched by this change
            }
            if !outcome.notes.is_empty() && self.logged_no_feature.insert((mesh.to_string(), name.clone())) {
                for note in &outcome.notes {
                    warn!(mesh = %mesh, dataplane = %name, "{note}");
                }
            }
            if let Some(version) = self.hub.publish(mesh, name, outcome.plan.clone(), outcome.notes.clone()) {
                debug!(mesh = %mesh, dataplane = %name, version, backends = outcome.plan.backends.len(), "OpenTelemetry plan updated");
            }
            let mut status = json!({"openTelemetry": outcome.status});
            if !outcome.notes.is_empty() {
                status["notes"] = json!(outcome.notes);
            }
            if let Some(insight) = index.insights.get(name) {
                let r = &insight.resource;
                if r.status.as_ref() != Some(&status) && self.owns(r) {
                    statuses.push((r.key(), r.meta.version, Some(status)));
                }
            }
        }
        statuses
    }

    /// Insight statuses and backend and policy conditions, in batches (the
    /// leader's job); what was written goes into the index.
    async fn write_statuses(
        &self,
        index: &mut MeshIndex,
        mut writes: Vec<(ResourceKey, i64, Option<Value>)>,
        backends: &[Resource],
        policies: &[Resource],
        resolution: &MeshResolution,
    ) {
        if !self.is_leader() {
            return;
        }
        for b in backends {
            if let Some(c) = resolution.backend_conditions.get(&b.name) {
                writes.extend(self.condition_write(b, c));
            }
        }
        for p in policies {
            if let Some(c) = resolution.policy_conditions.get(&(p.kind, p.name.clone())) {
                writes.extend(self.condition_write(p, c));
            }
        }
        if writes.is_empty() {
            return;
        }
        let batch: Vec<StatusWrite> = writes
            .iter()
            .map(|(key, version, status)| StatusWrite {
                key: key.clone(),
                status: status.clone(),
                expected_version: *version,
            })
            .collect();
        match self.store.set_statuses(batch).await {
            Ok(outcomes) => {
                for ((key, _, status), outcome) in writes.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(version) => index.status_written(&key, status, version),
                        // Someone wrote the resource meanwhile; that change brings a fresh recompute.
                        Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {
                            debug!(resource = %key, "status write skipped: resource changed")
                        }
                        Err(e) => warn!(resource = %key, error = %e, "status write failed"),
                    }
                }
            }
            Err(e) => warn!(error = %e, statuses = writes.len(), "status writes failed; the next change writes them"),
        }
    }

    /// An insight outlives its dataplane only until here (the leader's job).
    async fn clean_up_insights(&self, mesh: &str, index: &mut MeshIndex) {
        if !self.is_leader() {
            return;
        }
        let orphans: Vec<(ResourceKey, i64)> = index
            .insights
            .iter()
            .filter(|(name, i)| !index.dataplanes.contains_key(*name) && self.owns(&i.resource))
            .map(|(_, i)| (i.resource.key(), i.resource.meta.version))
            .collect();
        if orphans.is_empty() {
            return;
        }
        // The index may not have seen a Dataplane yet (read whole while data
        // planes registered): only one the store lacks is gone.
        let dataplanes: Vec<ResourceKey> =
            orphans.iter().map(|(k, _)| ResourceKey::new(Kind::Dataplane, &k.mesh, &k.name)).collect();
        let alive: HashSet<String> = match self.store.get_many(&dataplanes).await {
            Ok(found) => found.into_iter().map(|r| r.name).collect(),
            Err(e) => {
                debug!(mesh = %mesh, error = %e, "insight cleanup deferred");
                return;
            }
        };
        for (key, version) in orphans.into_iter().filter(|(k, _)| !alive.contains(&k.name)) {
            match self.store.delete(&key, Precondition::Version(version)).await {
                Ok(()) => info!(mesh = %mesh, dataplane = %key.name, "dataplane deleted; its insight removed"),
                Err(e) => debug!(mesh = %mesh, dataplane = %key.name, error = %e, "insight cleanup deferred"),
            }
        }
    }

    fn log_unresolved(&mut self, mesh: &str, now: &BTreeSet<UnresolvedRef>) {
        let before = self.logged_unresolved.entry(mesh.to_string()).or_default();
        for u in now.difference(before) {
            info!(
                target: "otel-backend-resolution",
                name = %u.name.as_deref().unwrap_or("null"),
                labels = %u.labels_text(),
                policy = %format!("{}/{}", u.policy_kind, u.policy),
                "MeshOpenTelemetryBackend not found, skipping backend"
            );
        }
        *before = now.clone();
    }

    /// The status write that sets condition `c` on `r` (replacing the
    /// condition of the same type, keeping the others), if it changes anything.
    fn condition_write(&self, r: &Resource, c: &Condition) -> Option<(ResourceKey, i64, Option<Value>)> {
        let mut status = r.status.clone().unwrap_or_else(|| json!({}));
        let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
        let new = serde_json::to_value(c).unwrap_or(Value::Null);
        let mut replaced = false;
        let mut list: Vec<Value> = conditions
            .into_iter()
            .map(|old| {
                if old["type"] == new["type"] {
                    replaced = true;
                    new.clone()
                } else {
                    old
                }
            })
            .collect();
        if !replaced {
            list.push(new);
        }
        status["conditions"] = Value::Array(list);
        let status = Some(status);
        (r.status != status && self.owns(r)).then(|| (r.key(), r.meta.version, status))
    }
}

fn note_change(dirty: &mut BTreeMap<String, Pending>, change: &tern_store::Change) {
    let key = &change.key;
    if !key.kind.is_mesh_scoped() && key.kind != Kind::Mesh {
        return;
    }
    let mesh = if key.kind == Kind::Mesh { &key.name } else { &key.mesh };
    let pending = dirty.entry(mesh.clone()).or_default();
    if change.op == ChangeOp::StatusUpdated {
        // Statuses never change plans; the index only learns the new version.
        if key.kind != Kind::Mesh {
            pending.reread.insert(key.clone(), (change.op, change.version));
        }
        return;
    }
    tern_trace::gather(&mut pending.causes, change.cause.as_ref());
    match key.kind {
        Kind::Mesh => {
            pending.reload = true;
            pending.everything = true;
        }
        Kind::Dataplane | Kind::DataplaneInsight => {
            pending.dataplanes.insert(key.name.clone());
            pending.deleted |= key.kind == Kind::Dataplane && change.op == ChangeOp::Deleted;
        }
        Kind::MeshOpenTelemetryBackend => {
            pending.backends.insert(key.name.clone());
        }
        Kind::MeshTrace | Kind::MeshMetric | Kind::MeshAccessLog => pending.everything = true,
        Kind::Zone | Kind::ZoneInsight | Kind::GlobalSecret => return,
    }
    pending.reread.insert(key.clone(), (change.op, change.version));
}
