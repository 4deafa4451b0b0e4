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

pub use hub::{PlanHub, PlanState};

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tern_model::spec::dataplane::{DataplaneSpec, PROTOCOL_TAG, SERVICE_TAG};
use tern_model::spec::motb::Condition;
use tern_model::{Kind, Resource, ResourceKey};
use tern_resolve::{
    resolve_mesh_incremental, Changed, DataplaneInput, MeshInput, MeshResolution, Session, UnresolvedRef,
};
use tern_store::{ChangeOp, ListFilter, Precondition, ResourceStore, StoreError};
use tern_xds::{ServiceEndpoint, ServiceMap, XdsHub};
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
    everything: bool,
    dataplanes: BTreeSet<String>,
    backends: BTreeSet<String>,
    /// The spans (API requests) whose writes this recompute answers.
    causes: Vec<tern_trace::Cause>,
}

impl Pending {
    fn everything() -> Self {
        Pending { everything: true, ..Default::default() }
    }
}

/// Per-dataplane state held outside the reconciler (xDS streams, delivery
/// counts) that must not outlive its dataplane: after each recompute of a
/// mesh, everything not in `keep` is dropped.
pub trait DataplaneState: Send + Sync {
    fn retain(&self, mesh: &str, keep: &[&str]);
}

impl DataplaneState for XdsHub {
    fn retain(&self, mesh: &str, keep: &[&str]) {
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
    /// The service endpoints per mesh as of the last recompute.
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
                        dirty.extend(meshes.into_iter().map(|m| (m.name, Pending::everything())));
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
                    failed.insert(mesh, Pending::everything());
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

    /// Recomputes one mesh and writes out what changed.
    async fn reconcile_mesh(&mut self, mesh: &str, pending: Pending) -> Result<(), StoreError> {
        let in_mesh = ListFilter { mesh: Some(mesh.to_string()), ..Default::default() };
        let backends = self.store.list(Kind::MeshOpenTelemetryBackend, &in_mesh).await?;
        let mut policies = Vec::new();
        for kind in [Kind::MeshTrace, Kind::MeshMetric, Kind::MeshAccessLog] {
            policies.extend(self.store.list(kind, &in_mesh).await?);
        }
        let dataplanes = self.store.list(Kind::Dataplane, &in_mesh).await?;
        let insights: BTreeMap<String, Resource> =
            self.store.list(Kind::DataplaneInsight, &in_mesh).await?.into_iter().map(|i| (i.name.clone(), i)).collect();
        let sessions: BTreeMap<&str, Session> = insights
            .iter()
            .filter_map(|(name, i)| Session::from_insight_spec(&i.spec).map(|s| (name.as_str(), s)))
            .collect();
        let inputs: Vec<DataplaneInput<'_>> =
            dataplanes.iter().map(|d| DataplaneInput { resource: d, session: sessions.get(d.name.as_str()) }).collect();
        let input = MeshInput { backends: &backends, policies: &policies, dataplanes: &inputs };
        let previous = self.previous.remove(mesh);
        let changed = match (&previous, &pending) {
            (Some(_), p) if !p.everything && p.backends.is_empty() => Changed::Dataplanes(&p.dataplanes),
            (Some(_), p) if !p.everything && p.dataplanes.is_empty() => Changed::Backends(&p.backends),
            _ => Changed::Everything,
        };
        let previous = previous.unwrap_or_default();
        let resolution = resolve_mesh_incremental(&input, &previous, changed);

        self.log_unresolved(mesh, &resolution.unresolved);
        let names: Vec<&str> = dataplanes.iter().map(|d| d.name.as_str()).collect();
        // An insight outlives its dataplane only until here (the leader's job).
        for (name, insight) in insights.iter().filter(|(_, i)| self.is_leader() && self.owns(i)) {
            if !names.contains(&name.as_str()) {
                match self.store.delete(&insight.key(), Precondition::Version(insight.meta.version)).await {
                    Ok(()) => info!(mesh = %mesh, dataplane = %name, "dataplane deleted; its insight removed"),
                    Err(e) => debug!(mesh = %mesh, dataplane = %name, error = %e, "insight cleanup deferred"),
                }
            }
        }
        self.hub.retain(mesh, &names);
        DataplaneState::retain(&*self.xds, mesh, &names);
        for state in &self.states {
            state.retain(mesh, &names);
        }
        let services = service_map(&dataplanes);
        let services_changed = self.services.get(mesh) != Some(&services);
        for dp in &dataplanes {
            let Some(outcome) = resolution.dataplanes.get(&dp.name) else { continue };
            let untouched = previous.dataplanes.get(&dp.name).is_some_and(|p| Arc::ptr_eq(p, outcome));
            if untouched && !services_changed {
                continue;
            }
            let spec: DataplaneSpec = serde_json::from_value(dp.spec.clone()).unwrap_or_default();
            let started = std::time::Instant::now();
            let mut snapshot = tern_xds::build(&spec, &outcome.envoy_telemetry(), &services);
            snapshot.cause = tern_trace::current();
            let version = snapshot.version.clone();
            let changed = self.xds.publish(&tern_xds::node_id(mesh, &dp.name), snapshot);
            self.observe(Step::XdsGeneration { changed }, started);
            if changed {
                debug!(mesh = %mesh, dataplane = %dp.name, version = %version, "xDS snapshot updated");
            }
        }
        self.services.insert(mesh.to_string(), services);
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
                info!(mesh = %mesh, dataplane = %name, version, backends = outcome.plan.backends.len(), "OpenTelemetry plan updated");
            }
            let mut status = json!({"openTelemetry": outcome.status});
            if !outcome.notes.is_empty() {
                status["notes"] = json!(outcome.notes);
            }
            if let Some(insight) = insights.get(name) {
                self.write_status(insight, Some(status)).await;
            }
        }
        for b in &backends {
            if let Some(c) = resolution.backend_conditions.get(&b.name) {
                self.write_condition(b, c).await;
            }
        }
        for p in &policies {
            if let Some(c) = resolution.policy_conditions.get(&(p.kind, p.name.clone())) {
                self.write_condition(p, c).await;
            }
        }
        self.previous.insert(mesh.to_string(), resolution);
        Ok(())
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

    /// Replaces the condition of the same type, keeping the others.
    async fn write_condition(&self, r: &Resource, c: &Condition) {
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
        self.write_status(r, Some(status)).await;
    }

    async fn write_status(&self, r: &Resource, status: Option<Value>) {
        if r.status == status || !self.is_leader() || !self.owns(r) {
            return;
        }
        let key: ResourceKey = r.key();
        match self.store.set_status(&key, status, r.meta.version).await {
            Ok(_) => debug!(resource = %key, "status written"),
            // Someone wrote the resource meanwhile; that change brings a fresh recompute.
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {
                debug!(resource = %key, "status write skipped: resource changed")
            }
            Err(e) => warn!(resource = %key, error = %e, "status write failed"),
        }
    }
}

/// Every service's endpoints: the inbounds of the mesh's dataplanes.
fn service_map(dataplanes: &[Resource]) -> ServiceMap {
    let mut map = ServiceMap::new();
    for dp in dataplanes {
        let Ok(spec) = serde_json::from_value::<DataplaneSpec>(dp.spec.clone()) else { continue };
        let Some(net) = spec.networking else { continue };
        for inbound in &net.inbound {
            let (Some(service), Ok(port)) = (inbound.tags.get(SERVICE_TAG), u16::try_from(inbound.port)) else {
                continue;
            };
            let protocol = inbound.tags.get(PROTOCOL_TAG).cloned().unwrap_or_else(|| "tcp".into());
            map.entry(service.clone()).or_default().push(ServiceEndpoint {
                address: net.address.clone(),
                port,
                protocol,
            });
        }
    }
    for eps in map.values_mut() {
        eps.sort();
    }
    map
}

fn note_change(dirty: &mut BTreeMap<String, Pending>, change: &tern_store::Change) {
    if change.op == ChangeOp::StatusUpdated || !change.key.kind.is_mesh_scoped() && change.key.kind != Kind::Mesh {
        return;
    }
    let key = &change.key;
    let mesh = if key.kind == Kind::Mesh { &key.name } else { &key.mesh };
    let pending = dirty.entry(mesh.clone()).or_default();
    tern_trace::gather(&mut pending.causes, change.cause.as_ref());
    match key.kind {
        Kind::Dataplane | Kind::DataplaneInsight => {
            pending.dataplanes.insert(key.name.clone());
        }
        Kind::MeshOpenTelemetryBackend => {
            pending.backends.insert(key.name.clone());
        }
        Kind::Mesh | Kind::MeshTrace | Kind::MeshMetric | Kind::MeshAccessLog => pending.everything = true,
        Kind::Zone | Kind::ZoneInsight | Kind::GlobalSecret => {}
    }
}
