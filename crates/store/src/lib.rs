//! Tern's resource store: one trait, [`ResourceStore`], with one SQL
//! implementation, [`SqlStore`], that runs on SQLite (the embedded default)
//! and PostgreSQL (production) through sqlx's `Any` driver.
//!
//! Invariants:
//! - every write bumps the resource's `version`; a write that names an older
//!   version is refused with [`StoreError::Conflict`], never applied;
//! - [`ResourceStore::apply`] is all-or-nothing: a batch either commits whole
//!   or leaves the store untouched;
//! - a mesh-scoped resource can only be written into a mesh that exists (or
//!   is created earlier in the same batch);
//! - every committed change is announced on the change feed, in commit order.

mod feed;
pub mod leader;
mod runtime;
mod sql;

use std::collections::BTreeMap;
use std::future::Future;
use tern_model::{Kind, Resource, ResourceKey};
use tokio::sync::broadcast;

pub use runtime::RuntimeRow;
pub use sql::SqlStore;

/// What a write expects of the resource it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Create or replace, whatever is stored (Kuma's PUT).
    None,
    /// Only create: the resource must not exist.
    MustNotExist,
    /// Only replace this exact version.
    Version(i64),
    /// Only replace, whatever the version (`If-Match: *`): the resource must exist.
    MustExist,
}

/// One resource to write in a batch.
#[derive(Debug, Clone)]
pub struct Write {
    pub resource: Resource,
    pub precondition: Precondition,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Created {
        version: i64,
    },
    Updated {
        version: i64,
    },
    /// Labels and spec were already exactly as written; nothing changed.
    Unchanged {
        version: i64,
    },
}

impl WriteOutcome {
    pub fn version(self) -> i64 {
        match self {
            WriteOutcome::Created { version }
            | WriteOutcome::Updated { version }
            | WriteOutcome::Unchanged { version } => version,
        }
    }
}

/// A committed change, as the change feed announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: ResourceKey,
    pub op: ChangeOp,
    /// The version after the change (the last version for a deletion).
    pub version: i64,
    /// The span the write was made in (an API request), for the work the
    /// change causes to continue; `None` with tracing off.
    pub cause: Option<tern_trace::Cause>,
}

impl Change {
    /// A change made now, caused by the current span.
    pub fn new(key: ResourceKey, op: ChangeOp, version: i64) -> Change {
        Change { key, op, version, cause: tern_trace::current() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Created,
    Updated,
    /// Only the status changed (written by the control plane itself);
    /// resolvers ignore these so status writes never trigger recomputes.
    StatusUpdated,
    Deleted,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(ResourceKey),
    #[error("{key} already exists")]
    AlreadyExists { key: ResourceKey },
    #[error("{key} was modified concurrently: expected version {expected}, stored version is {actual}")]
    Conflict { key: ResourceKey, expected: i64, actual: i64 },
    #[error("mesh of name {mesh} is not found")]
    MeshNotFound { mesh: String, key: ResourceKey },
    /// Kuma's rule: a mesh with data planes in it stays until they are gone.
    #[error("unable to delete mesh, there are still some dataplanes attached")]
    MeshHasDataplanes { mesh: String },
    /// The write belongs to another control plane (multi-zone): the reason
    /// says where to make it.
    #[error("{reason}")]
    ReadOnly { key: ResourceKey, reason: String },
    #[error("store backend error: {0}")]
    Backend(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// Which resources to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this mesh; all meshes when `None`.
    pub mesh: Option<String>,
    /// Only resources carrying every one of these labels with these values.
    pub labels: BTreeMap<String, String>,
}

/// The store every control-plane component goes through.
pub trait ResourceStore: Send + Sync + 'static {
    /// One resource, or `None`.
    fn get(&self, key: &ResourceKey) -> impl Future<Output = Result<Option<Resource>, StoreError>> + Send;

    /// The stored ones of `keys` (absent ones are left out), in no order.
    fn get_many(&self, keys: &[ResourceKey]) -> impl Future<Output = Result<Vec<Resource>, StoreError>> + Send {
        async move {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                found.extend(self.get(key).await?);
            }
            Ok(found)
        }
    }

    /// Resources of one kind, sorted by mesh then name.
    fn list(&self, kind: Kind, filter: &ListFilter) -> impl Future<Output = Result<Vec<Resource>, StoreError>> + Send;

    /// Writes a batch atomically; outcomes are in input order. Status is
    /// never taken from the input: it is kept as stored (see [`Self::set_status`]).
    fn apply(&self, writes: Vec<Write>) -> impl Future<Output = Result<Vec<WriteOutcome>, StoreError>> + Send;

    /// Whether [`Self::apply`] writes a batch in one transaction, so that
    /// one batch of many writes costs about what one write does. Callers
    /// that could group independent writes do so only then (a store that
    /// writes a batch one call at a time is faster with them apart).
    fn batches_are_transactions(&self) -> bool {
        false
    }

    /// Deletes one resource. Deleting a Mesh deletes everything inside it,
    /// and is refused with [`StoreError::MeshHasDataplanes`] while any
    /// Dataplane is still in it.
    fn delete(
        &self,
        key: &ResourceKey,
        precondition: Precondition,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces a resource's status, if its version is still `expected_version`.
    fn set_status(
        &self,
        key: &ResourceKey,
        status: Option<serde_json::Value>,
        expected_version: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Writes several statuses, each as [`Self::set_status`] would, in as
    /// few transactions as the store allows: one outcome per write, in order
    /// (a conflict on one leaves the others written).
    fn set_statuses(
        &self,
        writes: Vec<StatusWrite>,
    ) -> impl Future<Output = Result<Vec<Result<i64, StoreError>>, StoreError>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(writes.len());
            for w in writes {
                outcomes.push(self.set_status(&w.key, w.status, w.expected_version).await);
            }
            Ok(outcomes)
        }
    }

    /// Subscribes to committed changes from now on. On a store replicas
    /// share, changes come from the shared log in commit order, any
    /// replica's; a write returns once its own replica announced it.
    fn subscribe(&self) -> broadcast::Receiver<Change>;
}

/// One status write of [`ResourceStore::set_statuses`].
#[derive(Debug, Clone)]
pub struct StatusWrite {
    pub key: ResourceKey,
    pub status: Option<serde_json::Value>,
    pub expected_version: i64,
}
