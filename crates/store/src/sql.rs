//! [`SqlStore`]: the store on SQLite or PostgreSQL. The SQL is written once
//! in the dialect both accept (`$n` placeholders, TEXT and BIGINT columns).

use crate::{Change, ChangeOp, ListFilter, Precondition, ResourceStore, StatusWrite, StoreError, Write, WriteOutcome};
use chrono::{DateTime, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tern_model::{Kind, Meta, Resource, ResourceKey, DEFAULT_MESH};
use tokio::sync::{broadcast, Mutex};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tern_resources (
        kind TEXT NOT NULL,
        mesh TEXT NOT NULL,
        name TEXT NOT NULL,
        version BIGINT NOT NULL,
        labels TEXT NOT NULL,
        spec TEXT NOT NULL,
        status TEXT,
        creation_time TEXT NOT NULL,
        modification_time TEXT NOT NULL,
        PRIMARY KEY (kind, mesh, name)
    )",
    "CREATE TABLE IF NOT EXISTS tern_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
];

const COLUMNS: &str = "kind, mesh, name, version, labels, spec, status, creation_time, modification_time";

/// Marks that the `default` mesh was created once, so deleting it sticks.
const DEFAULT_MESH_MARK: &str = "default_mesh_created";

/// The resource store on a SQL database.
pub struct SqlStore {
    pool: AnyPool,
    /// Writers in this process take turns: batches are short, and one writer
    /// at a time keeps SQLite free of busy errors. Version checks in SQL
    /// still guard against other replicas sharing a PostgreSQL database.
    write_lock: Mutex<()>,
    changes: broadcast::Sender<Change>,
    engine: Engine,
}

enum Engine {
    /// One process owns the file (locked while open): changes are announced
    /// as they commit.
    Sqlite { _owner: Option<std::fs::File> },
    /// Shared by replicas: changes are announced by [`SqlStore::follow`].
    Postgres(crate::feed::SharedFeed),
}

impl SqlStore {
    /// Opens `sqlite:PATH` (created if missing) or `postgres://...`, creates
    /// the schema, and creates the `default` mesh the first time.
    pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
        Self::open_with(url, true).await
    }

    /// [`Self::open`], creating the `default` mesh only if `default_mesh`
    /// (a zone control plane gets its meshes from the global one).
    pub async fn open_with(url: &str, default_mesh: bool) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, max) = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            (format!("sqlite://{path}?mode=rwc"), 4)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (url.to_string(), 8)
        } else {
            return Err(StoreError::Backend(format!(
                "unsupported store {url:?}: use sqlite:PATH or postgres://USER@HOST/DB"
            )));
        };
        let engine = match url.strip_prefix("sqlite://") {
            Some(path) => Engine::Sqlite { _owner: crate::feed::own_sqlite_file(path.trim_end_matches("?mode=rwc"))? },
            None => Engine::Postgres(crate::feed::SharedFeed::new(&url)),
        };
        let pool = AnyPoolOptions::new().max_connections(max).connect(&url).await?;
        let mut tx = pool.begin().await?;
        match &engine {
            Engine::Sqlite { .. } => {
                sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
            }
            // Replicas starting together create the schema one at a time.
            Engine::Postgres(_) => crate::feed::lock_writers(&mut tx).await?,
        }
        let shared: &[&str] = match engine {
            Engine::Postgres(_) => &[crate::feed::SCHEMA, crate::runtime::SCHEMA],
            Engine::Sqlite { .. } => &[],
        };
        for statement in SCHEMA.iter().chain(shared) {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let (changes, _) = broadcast::channel(4096);
        let store = SqlStore { pool, write_lock: Mutex::new(()), changes, engine };
        if default_mesh {
            store.ensure_default_mesh().await?;
        }
        // What was written before this replica opened is its starting state.
        if let Engine::Postgres(feed) = &store.engine {
            feed.start_after(&store.pool).await?;
        }
        Ok(store)
    }

    async fn ensure_default_mesh(&self) -> Result<(), StoreError> {
        let writer = self.writer().await;
        let mut tx = self.pool.begin().await?;
        if let Engine::Postgres(_) = &self.engine {
            crate::feed::lock_writers(&mut tx).await?;
        }
        let marked = sqlx::query("SELECT value FROM tern_meta WHERE key = $1")
            .bind(DEFAULT_MESH_MARK)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if marked {
            return Ok(());
        }
        let now = format_time(Utc::now());
        sqlx::query(&format!("INSERT INTO tern_resources ({COLUMNS}) VALUES ($1, $2, $3, 1, $4, $5, NULL, $6, $6)"))
            .bind(Kind::Mesh.name())
            .bind("")
            .bind(DEFAULT_MESH)
            .bind("{}")
            .bind("{}")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO tern_meta (key, value) VALUES ($1, $2)")
            .bind(DEFAULT_MESH_MARK)
            .bind("true")
            .execute(&mut *tx)
            .await?;
        let key = ResourceKey::new(Kind::Mesh, "", DEFAULT_MESH);
        self.commit(writer, tx, vec![Change::new(key, ChangeOp::Created, 1)]).await
    }

    /// Writers take turns on SQLite (one writer keeps it free of busy
    /// errors). On PostgreSQL they run side by side: row locks and the
    /// version checks in SQL order them, the change log numbers them.
    async fn writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.engine {
            Engine::Sqlite { .. } => Some(self.write_lock.lock().await),
            Engine::Postgres(_) => None,
        }
    }

    /// Commits `tx` with the changes it made, lets the next writer in, and
    /// announces them: at once on SQLite; on PostgreSQL through the shared
    /// change log, which every replica (this one too) follows; it returns
    /// once this replica has announced them.
    async fn commit(
        &self,
        writer: Option<tokio::sync::MutexGuard<'_, ()>>,
        tx: Tx<'_>,
        changes: Vec<Change>,
    ) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Sqlite { .. } => {
                tx.commit().await?;
                drop(writer);
                for change in changes {
                    let _ = self.changes.send(change);
                }
                Ok(())
            }
            Engine::Postgres(feed) => {
                let last = feed.commit(tx, &changes).await?;
                drop(writer);
                feed.announced_here(last).await;
                Ok(())
            }
        }
    }

    /// Reads `key` in a write transaction; on PostgreSQL with a row lock
    /// (`FOR SHARE`: a Mesh another writer deletes meanwhile; `FOR UPDATE`:
    /// the Mesh this writer deletes).
    async fn fetch_for_write(
        &self,
        tx: &mut Tx<'_>,
        key: &ResourceKey,
        exclusive: bool,
    ) -> Result<Option<Resource>, StoreError> {
        let lock = match (&self.engine, exclusive) {
            (Engine::Sqlite { .. }, _) => "",
            (Engine::Postgres(_), false) => " FOR SHARE",
            (Engine::Postgres(_), true) => " FOR UPDATE",
        };
        fetch_resource(tx, key, lock).await
    }

    /// Follows the other replicas' changes (PostgreSQL): returns only on a
    /// fatal error. On SQLite there are none to follow: it never returns.
    pub async fn follow(&self) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Sqlite { .. } => std::future::pending().await,
            Engine::Postgres(feed) => feed.follow(&self.pool, &self.changes).await,
        }
    }

    /// Whether changes are being announced from the shared log now
    /// (PostgreSQL); always on SQLite.
    pub fn following(&self) -> bool {
        match &self.engine {
            Engine::Sqlite { .. } => true,
            Engine::Postgres(feed) => feed.following(),
        }
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether replicas can share this store (PostgreSQL).
    pub fn shared(&self) -> bool {
        matches!(self.engine, Engine::Postgres(_))
    }
}

pub(crate) fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Backend(format!("stored time {s:?} unreadable: {e}")))
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("stored JSON unreadable: {e}"))
}

fn row_to_resource(row: &AnyRow) -> Result<Resource, StoreError> {
    let kind_name: String = row.try_get("kind")?;
    let kind =
        Kind::from_name(&kind_name).ok_or_else(|| StoreError::Backend(format!("unknown stored kind {kind_name:?}")))?;
    let labels: String = row.try_get("labels")?;
    let spec: String = row.try_get("spec")?;
    let status: Option<String> = row.try_get("status")?;
    let created: String = row.try_get("creation_time")?;
    let modified: String = row.try_get("modification_time")?;
    Ok(Resource {
        kind,
        mesh: row.try_get("mesh")?,
        name: row.try_get("name")?,
        labels: serde_json::from_str(&labels).map_err(json_err)?,
        spec: serde_json::from_str(&spec).map_err(json_err)?,
        status: status.map(|s| serde_json::from_str(&s)).transpose().map_err(json_err)?,
        meta: Meta {
            version: row.try_get("version")?,
            creation_time: Some(parse_time(&created)?),
            modification_time: Some(parse_time(&modified)?),
        },
    })
}

fn to_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("labels and specs serialize")
}

fn check_precondition(key: &ResourceKey, pre: Precondition, stored: Option<i64>) -> Result<(), StoreError> {
    match (pre, stored) {
        (Precondition::MustNotExist, Some(_)) => Err(StoreError::AlreadyExists { key: key.clone() }),
        (Precondition::Version(_) | Precondition::MustExist, None) => Err(StoreError::NotFound(key.clone())),
        (Precondition::Version(expected), Some(actual)) if expected != actual => {
            Err(StoreError::Conflict { key: key.clone(), expected, actual })
        }
        _ => Ok(()),
    }
}

pub(crate) type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

async fn fetch_one_resource(tx: &mut Tx<'_>, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
    fetch_resource(tx, key, "").await
}

async fn fetch_resource(tx: &mut Tx<'_>, key: &ResourceKey, lock: &str) -> Result<Option<Resource>, StoreError> {
    let row =
        sqlx::query(&format!("SELECT {COLUMNS} FROM tern_resources WHERE kind = $1 AND mesh = $2 AND name = $3{lock}"))
            .bind(key.kind.name())
            .bind(&key.mesh)
            .bind(&key.name)
            .fetch_optional(&mut **tx)
            .await?;
    row.as_ref().map(row_to_resource).transpose()
}

/// Writes one resource inside a batch transaction.
async fn write_one(
    store: &SqlStore,
    tx: &mut Tx<'_>,
    w: &Write,
    now: &str,
    created_meshes: &[String],
) -> Result<WriteOutcome, StoreError> {
    let r = &w.resource;
    let key = r.key();
    if r.kind.is_mesh_scoped() && !created_meshes.contains(&r.mesh) {
        let mesh_key = ResourceKey::new(Kind::Mesh, "", &r.mesh);
        if store.fetch_for_write(tx, &mesh_key, false).await?.is_none() {
            return Err(StoreError::MeshNotFound { mesh: r.mesh.clone(), key });
        }
    }
    // A status write (the leader's, on another connection) may bump the
    // version between the read and the update: a write that names no
    // version then reads again, as it would have overwritten either way.
    let mut last_seen = -1;
    for _ in 0..WRITE_ATTEMPTS {
        let stored = fetch_one_resource(tx, &key).await?;
        check_precondition(&key, w.precondition, stored.as_ref().map(|s| s.meta.version))?;
        let Some(stored) = stored else {
            sqlx::query(&format!(
                "INSERT INTO tern_resources ({COLUMNS}) VALUES ($1, $2, $3, 1, $4, $5, NULL, $6, $6)"
            ))
            .bind(r.kind.name())
            .bind(&r.mesh)
            .bind(&r.name)
            .bind(to_text(&r.labels))
            .bind(to_text(&r.spec))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| created_meanwhile(e, &key))?;
            return Ok(WriteOutcome::Created { version: 1 });
        };
        if stored.labels == r.labels && stored.spec == r.spec {
            return Ok(WriteOutcome::Unchanged { version: stored.meta.version });
        }
        let version = stored.meta.version + 1;
        let done = sqlx::query(
            "UPDATE tern_resources SET version = $1, labels = $2, spec = $3, modification_time = $4
             WHERE kind = $5 AND mesh = $6 AND name = $7 AND version = $8",
        )
        .bind(version)
        .bind(to_text(&r.labels))
        .bind(to_text(&r.spec))
        .bind(now)
        .bind(r.kind.name())
        .bind(&r.mesh)
        .bind(&r.name)
        .bind(stored.meta.version)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(WriteOutcome::Updated { version });
        }
        if matches!(w.precondition, Precondition::Version(_)) {
            return Err(StoreError::Conflict { key, expected: stored.meta.version, actual: -1 });
        }
        last_seen = stored.meta.version;
    }
    // Still changing under it after every attempt: the version it last read.
    Err(StoreError::Conflict { key, expected: last_seen, actual: -1 })
}

/// How often a write without a version precondition reads again after
/// losing a race to a status write.
const WRITE_ATTEMPTS: usize = 5;

/// Writes `status` if the resource is still at `expected`: the new version,
/// or a conflict (the outer error is the database's).
async fn update_status(
    tx: &mut Tx<'_>,
    key: &ResourceKey,
    status: Option<&serde_json::Value>,
    expected: i64,
) -> Result<Result<i64, StoreError>, StoreError> {
    let done = sqlx::query(
        "UPDATE tern_resources SET version = $1, status = $2 WHERE kind = $3 AND mesh = $4 AND name = $5 AND version = $6",
    )
    .bind(expected + 1)
    .bind(status.map(to_text))
    .bind(key.kind.name())
    .bind(&key.mesh)
    .bind(&key.name)
    .bind(expected)
    .execute(&mut **tx)
    .await?;
    Ok(if done.rows_affected() == 1 {
        Ok(expected + 1)
    } else {
        Err(StoreError::Conflict { key: key.clone(), expected, actual: -1 })
    })
}

/// An insert that lost a race with another replica's insert of the same
/// resource reads as the conflict it is, not as a database failure.
fn created_meanwhile(e: sqlx::Error, key: &ResourceKey) -> StoreError {
    let unique = e.as_database_error().is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation);
    if unique {
        StoreError::AlreadyExists { key: key.clone() }
    } else {
        e.into()
    }
}

impl ResourceStore for SqlStore {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let found = fetch_one_resource(&mut tx, key).await?;
        tx.commit().await?;
        Ok(found)
    }

    async fn get_many(&self, keys: &[ResourceKey]) -> Result<Vec<Resource>, StoreError> {
        let mut by_kind: std::collections::BTreeMap<(Kind, &str), Vec<&str>> = Default::default();
        for key in keys {
            by_kind.entry((key.kind, key.mesh.as_str())).or_default().push(key.name.as_str());
        }
        let mut found = Vec::with_capacity(keys.len());
        for ((kind, mesh), names) in by_kind {
            for chunk in names.chunks(GET_MANY_CHUNK) {
                let placeholders: Vec<String> = (3..chunk.len() + 3).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "SELECT {COLUMNS} FROM tern_resources WHERE kind = $1 AND mesh = $2 AND name IN ({})",
                    placeholders.join(", ")
                );
                let mut query = sqlx::query(&sql).bind(kind.name()).bind(mesh);
                for name in chunk {
                    query = query.bind(*name);
                }
                for row in query.fetch_all(&self.pool).await? {
                    found.push(row_to_resource(&row)?);
                }
            }
        }
        Ok(found)
    }

    async fn list(&self, kind: Kind, filter: &ListFilter) -> Result<Vec<Resource>, StoreError> {
        let rows = match &filter.mesh {
            Some(mesh) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM tern_resources WHERE kind = $1 AND mesh = $2 ORDER BY mesh, name"
                ))
                .bind(kind.name())
                .bind(mesh)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM tern_resources WHERE kind = $1 ORDER BY mesh, name"))
                    .bind(kind.name())
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let r = row_to_resource(row)?;
            if r.matches_labels(&filter.labels) {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, StoreError> {
        let writer = self.writer().await;
        let now = format_time(Utc::now());
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut created_meshes = Vec::new();
        for w in &writes {
            // Dropping `tx` on error rolls the whole batch back.
            let outcome = write_one(self, &mut tx, w, &now, &created_meshes).await?;
            if w.resource.kind == Kind::Mesh {
                created_meshes.push(w.resource.name.clone());
            }
            outcomes.push(outcome);
        }
        let changes = writes
            .iter()
            .zip(&outcomes)
            .filter_map(|(w, outcome)| {
                let op = match outcome {
                    WriteOutcome::Created { .. } => ChangeOp::Created,
                    WriteOutcome::Updated { .. } => ChangeOp::Updated,
                    WriteOutcome::Unchanged { .. } => return None,
                };
                Some(Change::new(w.resource.key(), op, outcome.version()))
            })
            .collect();
        self.commit(writer, tx, changes).await?;
        Ok(outcomes)
    }

    async fn delete(&self, key: &ResourceKey, precondition: Precondition) -> Result<(), StoreError> {
        let writer = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let stored = self.fetch_for_write(&mut tx, key, key.kind == Kind::Mesh).await?;
        let stored = stored.ok_or_else(|| StoreError::NotFound(key.clone()))?;
        check_precondition(key, precondition, Some(stored.meta.version))?;
        let mut deleted = vec![Change::new(key.clone(), ChangeOp::Deleted, stored.meta.version)];
        if key.kind == Kind::Mesh {
            // Kuma refuses to orphan running proxies. No Dataplane lands
            // between the check and the delete: writers take turns on
            // SQLite, and on PostgreSQL a writer into the mesh waits on the
            // Mesh row this delete holds.
            let dataplanes = sqlx::query("SELECT name FROM tern_resources WHERE kind = $1 AND mesh = $2 LIMIT 1")
                .bind(Kind::Dataplane.name())
                .bind(&key.name)
                .fetch_optional(&mut *tx)
                .await?;
            if dataplanes.is_some() {
                return Err(StoreError::MeshHasDataplanes { mesh: key.name.clone() });
            }
            let rows = sqlx::query("SELECT kind, mesh, name, version FROM tern_resources WHERE mesh = $1")
                .bind(&key.name)
                .fetch_all(&mut *tx)
                .await?;
            for row in rows {
                let kind: String = row.try_get("kind")?;
                let Some(kind) = Kind::from_name(&kind) else { continue };
                let name: String = row.try_get("name")?;
                let inner = ResourceKey::new(kind, &key.name, &name);
                deleted.push(Change::new(inner, ChangeOp::Deleted, row.try_get("version")?));
            }
            sqlx::query("DELETE FROM tern_resources WHERE mesh = $1").bind(&key.name).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM tern_resources WHERE kind = $1 AND mesh = $2 AND name = $3")
            .bind(key.kind.name())
            .bind(&key.mesh)
            .bind(&key.name)
            .execute(&mut *tx)
            .await?;
        self.commit(writer, tx, deleted).await
    }

    async fn set_status(
        &self,
        key: &ResourceKey,
        status: Option<serde_json::Value>,
        expected_version: i64,
    ) -> Result<i64, StoreError> {
        let writer = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let stored = fetch_one_resource(&mut tx, key).await?;
        check_precondition(key, Precondition::Version(expected_version), stored.map(|s| s.meta.version))?;
        // Another replica may have written it between the read and the update.
        let version = update_status(&mut tx, key, status.as_ref(), expected_version).await??;
        self.commit(writer, tx, vec![Change::new(key.clone(), ChangeOp::StatusUpdated, version)]).await?;
        Ok(version)
    }

    async fn set_statuses(&self, writes: Vec<StatusWrite>) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        let mut outcomes = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(STATUS_BATCH) {
            let writer = self.writer().await;
            let mut tx = self.pool.begin().await?;
            let mut changes = Vec::new();
            for w in chunk {
                let outcome = update_status(&mut tx, &w.key, w.status.as_ref(), w.expected_version).await?;
                if let Ok(version) = outcome {
                    changes.push(Change::new(w.key.clone(), ChangeOp::StatusUpdated, version));
                }
                outcomes.push(outcome);
            }
            self.commit(writer, tx, changes).await?;
        }
        Ok(outcomes)
    }

    fn batches_are_transactions(&self) -> bool {
        true
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

/// Names per query in [`SqlStore::get_many`] (SQLite allows 32,766 parameters).
const GET_MANY_CHUNK: usize = 500;

/// Status writes per transaction in [`SqlStore::set_statuses`]: few
/// commits, and writers of other replicas wait at most one batch.
const STATUS_BATCH: usize = 500;
