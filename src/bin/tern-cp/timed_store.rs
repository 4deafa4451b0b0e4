//! The store as every part of the control plane sees it, timed: Kuma's
//! `store{operation,resource_type}` histogram and `store_conflicts`
//! counter, recorded into the control plane's metrics.

use crate::metrics::CpMetrics;
use std::sync::Arc;
use std::time::Instant;
use tern_model::{Kind, Resource, ResourceKey};
use tern_store::{Change, ListFilter, Precondition, ResourceStore, StatusWrite, StoreError, Write, WriteOutcome};
use tokio::sync::broadcast;

pub struct TimedStore<S> {
    inner: Arc<S>,
    metrics: Arc<CpMetrics>,
}

impl<S> TimedStore<S> {
    pub fn new(inner: Arc<S>, metrics: Arc<CpMetrics>) -> Self {
        TimedStore { inner, metrics }
    }

    fn record<T>(&self, operation: &'static str, kind: &str, started: Instant, result: &Result<T, StoreError>) {
        self.metrics.store_operation(operation, kind, started.elapsed());
        if matches!(result, Err(StoreError::Conflict { .. })) {
            self.metrics.store_conflict(kind);
        }
    }
}

/// A batch's resource type: its kind, or `mixed`.
fn batch_kind(writes: &[Write]) -> String {
    match writes.first() {
        Some(first) if writes.iter().all(|w| w.resource.kind == first.resource.kind) => first.resource.kind.to_string(),
        Some(_) => "mixed".into(),
        None => "none".into(),
    }
}

impl<S: ResourceStore> ResourceStore for TimedStore<S> {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.record("get", key.kind.name(), started, &result);
        result
    }

    async fn get_many(&self, keys: &[ResourceKey]) -> Result<Vec<Resource>, StoreError> {
        let started = Instant::now();
        let kind = keys.first().map(|k| k.kind.name()).unwrap_or("none");
        let result = self.inner.get_many(keys).await;
        self.record("get_many", kind, started, &result);
        result
    }

    async fn list(&self, kind: Kind, filter: &ListFilter) -> Result<Vec<Resource>, StoreError> {
        let started = Instant::now();
        let result = self.inner.list(kind, filter).await;
        self.record("list", kind.name(), started, &result);
        result
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, StoreError> {
        let kind = batch_kind(&writes);
        let started = Instant::now();
        let result = self.inner.apply(writes).await;
        self.record("apply", &kind, started, &result);
        result
    }

    async fn delete(&self, key: &ResourceKey, precondition: Precondition) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.delete(key, precondition).await;
        self.record("delete", key.kind.name(), started, &result);
        result
    }

    async fn set_status(
        &self,
        key: &ResourceKey,
        status: Option<serde_json::Value>,
        expected_version: i64,
    ) -> Result<i64, StoreError> {
        let started = Instant::now();
        let result = self.inner.set_status(key, status, expected_version).await;
        self.record("set_status", key.kind.name(), started, &result);
        result
    }

    async fn set_statuses(&self, writes: Vec<StatusWrite>) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        let started = Instant::now();
        let kind = writes.first().map(|w| w.key.kind.name()).unwrap_or("none");
        let result = self.inner.set_statuses(writes).await;
        self.record("set_statuses", kind, started, &result);
        result
    }

    fn batches_are_transactions(&self) -> bool {
        self.inner.batches_are_transactions()
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.subscribe()
    }
}
