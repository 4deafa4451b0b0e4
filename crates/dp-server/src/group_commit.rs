//! Bootstrap writes that arrive together go to the store as one batch (group
//! commit): while one batch is being written, the next ones queue, and
//! whoever writes next takes everything queued. No timer and no task of its
//! own: a request that finds its writes already taken waits for their
//! outcome. A batch that fails is written again one request at a time, so
//! one bad request never fails the others. Only on stores that write a batch
//! in one transaction (SQL); elsewhere (the apiserver) each request writes
//! its own, concurrently.

use std::sync::Mutex;
use tern_store::{ResourceStore, StoreError, Write};
use tokio::sync::oneshot::{self, error::TryRecvError};

/// The most requests in one batch (each is at most a Dataplane and its insight).
const MAX_BATCH: usize = 256;

type Pending = (Vec<Write>, oneshot::Sender<Result<(), StoreError>>);

#[derive(Default)]
pub(crate) struct GroupCommit {
    queued: Mutex<Vec<Pending>>,
    /// Held while a batch is written.
    writing: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    /// Writes `writes` atomically, in a batch with whatever else is queued
    /// when the store writes a batch in one transaction (alone otherwise).
    pub(crate) async fn apply<S: ResourceStore>(&self, store: &S, writes: Vec<Write>) -> Result<(), StoreError> {
        if !store.batches_are_transactions() {
            return store.apply(writes).await.map(|_| ());
        }
        let (tx, mut rx) = oneshot::channel();
        self.queued.lock().unwrap_or_else(|p| p.into_inner()).push((writes, tx));
        loop {
            let _writing = self.writing.lock().await;
            match rx.try_recv() {
                // Ours went out with an earlier batch, whose writer has finished.
                Ok(outcome) => return outcome,
                // Its writer was dropped mid-batch (its client went away): the
                // transaction rolled back, and this request can be sent again.
                Err(TryRecvError::Closed) => {
                    return Err(StoreError::Backend("the batch this write was in was abandoned; try again".into()))
                }
                // Still queued (no one else writes while this lock is held).
                Err(TryRecvError::Empty) => {}
            }
            let batch: Vec<Pending> = {
                let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
                let n = queued.len().min(MAX_BATCH);
                queued.drain(..n).collect()
            };
            write_batch(store, batch).await;
        }
    }
}

async fn write_batch<S: ResourceStore>(store: &S, batch: Vec<Pending>) {
    if batch.len() <= 1 {
        for (writes, reply) in batch {
            let _ = reply.send(store.apply(writes).await.map(|_| ()));
        }
        return;
    }
    let all: Vec<Write> = batch.iter().flat_map(|(writes, _)| writes.iter().cloned()).collect();
    match store.apply(all).await {
        Ok(_) => {
            for (_, reply) in batch {
                let _ = reply.send(Ok(()));
            }
        }
        Err(_) => {
            for (writes, reply) in batch {
                let _ = reply.send(store.apply(writes).await.map(|_| ()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tern_model::{Kind, Resource, ResourceKey};
    use tern_store::{Precondition, SqlStore};

    /// A store whose batch writes never finish, so a writer can be dropped
    /// mid-batch.
    struct Stalled(SqlStore);

    impl ResourceStore for Stalled {
        async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
            self.0.get(key).await
        }
        async fn list(&self, kind: Kind, filter: &tern_store::ListFilter) -> Result<Vec<Resource>, StoreError> {
            self.0.list(kind, filter).await
        }
        async fn apply(&self, _: Vec<Write>) -> Result<Vec<tern_store::WriteOutcome>, StoreError> {
            std::future::pending().await
        }
        async fn delete(&self, key: &ResourceKey, precondition: Precondition) -> Result<(), StoreError> {
            self.0.delete(key, precondition).await
        }
        async fn set_status(
            &self,
            key: &ResourceKey,
            status: Option<serde_json::Value>,
            expected_version: i64,
        ) -> Result<i64, StoreError> {
            self.0.set_status(key, status, expected_version).await
        }
        fn batches_are_transactions(&self) -> bool {
            true
        }
        fn subscribe(&self) -> tokio::sync::broadcast::Receiver<tern_store::Change> {
            self.0.subscribe()
        }
    }

    fn backend(name: &str, precondition: Precondition) -> Vec<Write> {
        let resource = Resource::new(Kind::MeshOpenTelemetryBackend, "default", name, serde_json::json!({}));
        vec![Write { resource, precondition }]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_whose_writer_is_dropped_fails_its_other_requests_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("tern.db").display());
        let store = Arc::new(Stalled(SqlStore::open(&url).await.expect("store")));
        let commits = Arc::new(GroupCommit::default());
        let start = |name: &'static str| {
            let (store, commits) = (store.clone(), commits.clone());
            tokio::spawn(async move { commits.apply(&*store, backend(name, Precondition::None)).await })
        };
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(100));
        // x writes alone and stalls; a then b queue, in that order (the
        // writers' lock is fair).
        let x = start("x");
        pause().await;
        let a = start("a");
        pause().await;
        let b = start("b");
        pause().await;
        // x goes away: a takes the batch [a, b] and stalls; then a goes away.
        x.abort();
        pause().await;
        a.abort();
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), b).await;
        let outcome = outcome.expect("b does not wait forever").expect("b does not panic");
        let err = outcome.expect_err("b's batch was abandoned");
        assert!(err.to_string().contains("abandoned"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn requests_written_together_succeed_or_fail_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("tern.db").display());
        let store = Arc::new(SqlStore::open(&url).await.expect("store"));
        let commits = Arc::new(GroupCommit::default());
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..200 {
            let (store, commits) = (store.clone(), commits.clone());
            // Every 50th request can only update, and nothing is stored yet.
            let precondition = if i % 50 == 7 { Precondition::MustExist } else { Precondition::None };
            requests.spawn(async move { (i, commits.apply(&*store, backend(&format!("b-{i}"), precondition)).await) });
        }
        let mut failed = Vec::new();
        while let Some(done) = requests.join_next().await {
            let (i, outcome) = done.expect("no panic");
            if outcome.is_err() {
                failed.push(i);
            }
        }
        failed.sort();
        assert_eq!(failed, [7, 57, 107, 157], "only the requests that could not be written failed");
        for i in 0..200 {
            let stored =
                store.get(&ResourceKey::new(Kind::MeshOpenTelemetryBackend, "default", &format!("b-{i}"))).await;
            assert_eq!(stored.expect("read").is_some(), !failed.contains(&i), "b-{i}");
        }
    }
}
