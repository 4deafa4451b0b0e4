//! The reconciler retries store errors with backoff: a store that fails its
//! first reads still ends with every registered dataplane's plan published.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tern_model::{parse_documents, resource_from_document, Kind, Resource, ResourceKey};
use tern_reconcile::{PlanHub, Reconciler};
use tern_store::{Change, ListFilter, Precondition, ResourceStore, SqlStore, StoreError, Write, WriteOutcome};
use tokio::sync::broadcast;

/// A real store whose first `failures` list calls fail.
struct Flaky {
    inner: SqlStore,
    failures: AtomicUsize,
}

impl ResourceStore for Flaky {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, kind: Kind, filter: &ListFilter) -> Result<Vec<Resource>, StoreError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Backend("connection reset".into()));
        }
        self.inner.list(kind, filter).await
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

fn resource(yaml: &str) -> Write {
    let doc = &parse_documents(yaml).expect("yaml")[0];
    Write { resource: resource_from_document(&doc.value).expect("valid").resource, precondition: Precondition::None }
}

#[tokio::test]
async fn store_errors_are_retried_until_the_plan_is_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = SqlStore::open(&format!("sqlite:{}", dir.path().join("t.db").display())).await.expect("store");
    inner
        .apply(vec![
            resource("type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 8080\n      tags: {kuma.io/service: web}\n"),
            resource("type: DataplaneInsight\nname: web-1\nmesh: default\nsession: {version: x, features: [feature-otel-via-kuma-dp], workDir: /tmp/w}\n"),
        ])
        .await
        .expect("seed");
    // The mesh listing fails twice, then the mesh's own reads fail once more.
    let store = Arc::new(Flaky { inner, failures: AtomicUsize::new(3) });
    let hub = Arc::new(PlanHub::default());
    let mut plan = hub.subscribe("default", "web-1");
    let reconciler = Reconciler::new(store.clone(), hub.clone(), Arc::new(tern_xds::XdsHub::default()));
    let task = tokio::spawn(reconciler.run());
    let published = tokio::time::timeout(Duration::from_secs(30), plan.wait_for(|s| s.version != 0)).await;
    task.abort();
    assert!(published.is_ok(), "no plan after the store recovered");
    assert_eq!(store.failures.load(Ordering::SeqCst), 0, "every failure was met and retried");
}

/// A real store whose first listing of Dataplanes is from before they
/// registered (a whole-mesh read racing registrations).
struct StaleList {
    inner: SqlStore,
    stale: std::sync::atomic::AtomicBool,
}

impl ResourceStore for StaleList {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, kind: Kind, filter: &ListFilter) -> Result<Vec<Resource>, StoreError> {
        if kind == Kind::Dataplane && self.stale.swap(false, Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        self.inner.list(kind, filter).await
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

#[tokio::test]
async fn an_insight_whose_dataplane_the_index_has_not_seen_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = SqlStore::open(&format!("sqlite:{}", dir.path().join("t.db").display())).await.expect("store");
    inner
        .apply(vec![
            resource("type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 8080\n      tags: {kuma.io/service: web}\n"),
            resource("type: DataplaneInsight\nname: web-1\nmesh: default\nsession: {version: x, features: [feature-otel-via-kuma-dp], workDir: /tmp/w}\n"),
        ])
        .await
        .expect("seed");
    let store = Arc::new(StaleList { inner, stale: std::sync::atomic::AtomicBool::new(true) });
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
