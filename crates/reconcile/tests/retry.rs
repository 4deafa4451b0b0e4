//! The reconciler against stores that misbehave: one that fails its first
//! reads still ends with every registered dataplane's plan published (retries
//! with backoff); one whose whole-mesh read is older than a registration
//! does not make that data plane's insight look orphaned.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tern_model::{parse_documents, resource_from_document, Kind, Resource, ResourceKey};
use tern_reconcile::{PlanHub, Reconciler};
use tern_store::{Change, ListFilter, Precondition, ResourceStore, SqlStore, StoreError, Write, WriteOutcome};
use tokio::sync::broadcast;

/// A scripted answer to a listing, or `None` to leave it to the store.
type ListScript = Box<dyn Fn(Kind) -> Option<Result<Vec<Resource>, StoreError>> + Send + Sync>;

/// A real store whose listings a test can script: `list` answers first
/// (fails, or returns something else), or leaves the call to the store.
struct Scripted {
    inner: SqlStore,
    list: ListScript,
}

impl ResourceStore for Scripted {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, kind: Kind, filter: &ListFilter) -> Result<Vec<Resource>, StoreError> {
        match (self.list)(kind) {
            Some(scripted) => scripted,
            None => self.inner.list(kind, filter).await,
        }
    }
    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, StoreError> {
        self.inner.apply(writes).await
    }
    async fn delete(&self, key: &ResourceKey, precondition: Precondition) -> Result<(), StoreError> {
        self.inner.delete(key, precondition).await
    }
    async fn set_status(
        &self,
        key: &ResourceKey,
        status: Option<serde_json::Value>,
        expected_version: i64,
    ) -> Result<i64, StoreError> {
        self.inner.set_status(key, status, expected_version).await
    }
    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.subscribe()
    }
}

/// A store holding one registered data plane, web-1.
async fn registered(dir: &std::path::Path) -> SqlStore {
    let store = SqlStore::open(&format!("sqlite:{}", dir.join("t.db").display())).await.expect("store");
    store
        .apply(vec![
            resource("type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 8080\n      tags: {kuma.io/service: web}\n"),
            resource("type: DataplaneInsight\nname: web-1\nmesh: default\nsession: {version: x, features: [feature-otel-via-kuma-dp], workDir: /tmp/w}\n"),
        ])
        .await
        .expect("seed");
    store
}

fn resource(yaml: &str) -> Write {
    let doc = &parse_documents(yaml).expect("yaml")[0];
    Write { resource: resource_from_document(&doc.value).expect("valid").resource, precondition: Precondition::None }
}

#[tokio::test]
async fn store_errors_are_retried_until_the_plan_is_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The mesh listing fails twice, then the mesh's own reads fail once more.
    let failures = Arc::new(AtomicUsize::new(3));
    let left = failures.clone();
    let list = Box::new(move |_| {
        let n = left.load(Ordering::SeqCst);
        (n > 0).then(|| {
            left.store(n - 1, Ordering::SeqCst);
            Err(StoreError::Backend("connection reset".into()))
        })
    });
    let store = Arc::new(Scripted { inner: registered(dir.path()).await, list });
    let hub = Arc::new(PlanHub::default());
    let mut plan = hub.subscribe("default", "web-1");
    let reconciler = Reconciler::new(store.clone(), hub.clone(), Arc::new(tern_xds::XdsHub::default()));
    let task = tokio::spawn(reconciler.run());
    let published = tokio::time::timeout(Duration::from_secs(30), plan.wait_for(|s| s.version != 0)).await;
    task.abort();
    assert!(published.is_ok(), "no plan after the store recovered");
    assert_eq!(failures.load(Ordering::SeqCst), 0, "every failure was met and retried");
}

#[tokio::test]
async fn an_insight_whose_dataplane_the_index_has_not_seen_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The first listing of Dataplanes is from before web-1 registered (a
    // whole-mesh read racing registrations).
    let stale = std::sync::atomic::AtomicBool::new(true);
    let list =
        Box::new(move |kind| (kind == Kind::Dataplane && stale.swap(false, Ordering::SeqCst)).then(|| Ok(Vec::new())));
    let store = Arc::new(Scripted { inner: registered(dir.path()).await, list });
    let (passes_tx, mut passes) = tokio::sync::watch::channel(0usize);
    let reconciler =
        Reconciler::new(store.clone(), Arc::new(PlanHub::default()), Arc::new(tern_xds::XdsHub::default()))
            .with_observer(Arc::new(move |step, _| {
                if step == tern_reconcile::Step::Reconcile {
                    passes_tx.send_modify(|n| *n += 1);
                }
            }));
    let task = tokio::spawn(reconciler.run());
    tokio::time::timeout(Duration::from_secs(30), passes.wait_for(|n| *n >= 1)).await.expect("a pass").unwrap();
    task.abort();
    let insight = store.get(&ResourceKey::new(Kind::DataplaneInsight, "default", "web-1")).await.expect("get");
    assert!(insight.is_some(), "a registered data plane's insight was removed as an orphan");
}
