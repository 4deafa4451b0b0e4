//! The change feed across replicas. On PostgreSQL every write transaction
//! also appends its changes to `tern_changes`, numbered without gaps in
//! commit order (writers take a transaction-scoped advisory lock just before
//! numbering, held to the commit), and sends `NOTIFY tern_changes`. Each
//! replica follows the log from the last number it announced: on every
//! notification, every few seconds (a missed notification is caught up), and
//! after every reconnect. A replica that was away longer than the log keeps
//! changes announces every stored resource as updated, so nothing stays stale.
//!
//! On SQLite one process owns the file: a second `tern-cp` on it is refused.

use crate::sql::Tx;
use crate::{Change, ChangeOp, StoreError};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tern_model::{Kind, ResourceKey};
use tokio::sync::broadcast;
use tracing::{info, warn};

pub(crate) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS tern_changes (
    seq BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    mesh TEXT NOT NULL,
    name TEXT NOT NULL,
    op TEXT NOT NULL,
    version BIGINT NOT NULL,
    at TEXT NOT NULL
)";

/// The advisory lock writers take to number their changes ("tern").
const WRITERS_LOCK: i64 = 0x7465_726e;
const CHANNEL: &str = "tern_changes";
/// How often the log is read without a notification.
const POLL: Duration = Duration::from_secs(2);
/// How long the log keeps a change, in seconds.
const KEEP_SECONDS: i64 = 600;
/// The longest a write waits to see its changes announced by its replica.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(2);
/// Changes read per query.
const BATCH: i64 = 2000;

/// Locks `<path>.lock` for this process, with its pid inside for whoever
/// finds it taken. `None` for an in-memory database.
pub(crate) fn own_sqlite_file(path: &str) -> Result<Option<std::fs::File>, StoreError> {
    if path.is_empty() || path.contains(":memory:") {
        return Ok(None);
    }
    let lock_path = format!("{path}.lock");
    let refused = |e: std::io::Error| StoreError::Backend(format!("cannot open {lock_path}: {e}"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(refused)?;
    match file.try_lock() {
        Ok(()) => {
            use std::io::Write;
            file.set_len(0).map_err(refused)?;
            write!(file, "{}", std::process::id()).map_err(refused)?;
            Ok(Some(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            let holder = holder.trim();
            let holder = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
            Err(StoreError::Backend(format!(
                "the SQLite store {path} is in use by another tern-cp{holder}: SQLite serves one control plane; \
                 run several replicas on PostgreSQL (--store postgres://...)"
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(refused(e)),
    }
}

/// Serializes writers across replicas until `tx` ends.
pub(crate) async fn lock_writers(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITERS_LOCK).execute(&mut **tx).await?;
    Ok(())
}

/// One replica's position in the shared log.
pub(crate) struct SharedFeed {
    url: String,
    /// The last change announced here.
    last: AtomicI64,
    /// The same, for writers waiting to see their changes announced.
    announced: tokio::sync::watch::Sender<i64>,
    /// Whether [`SharedFeed::follow`] is reading the log now.
    following: std::sync::atomic::AtomicBool,
    /// The causes (spans) of this replica's own writes, until announced.
    causes: std::sync::Mutex<HashMap<i64, tern_trace::Cause>>,
}

fn op_name(op: ChangeOp) -> &'static str {
    match op {
        ChangeOp::Created => "Created",
        ChangeOp::Updated => "Updated",
        ChangeOp::StatusUpdated => "StatusUpdated",
        ChangeOp::Deleted => "Deleted",
    }
}

fn op_of(name: &str) -> Option<ChangeOp> {
    [ChangeOp::Created, ChangeOp::Updated, ChangeOp::StatusUpdated, ChangeOp::Deleted]
        .into_iter()
        .find(|op| op_name(*op) == name)
}

impl SharedFeed {
    pub(crate) fn new(url: &str) -> SharedFeed {
        SharedFeed {
            url: url.to_string(),
            last: AtomicI64::new(0),
            announced: tokio::sync::watch::channel(0).0,
            following: Default::default(),
            causes: Default::default(),
        }
    }

    pub(crate) fn following(&self) -> bool {
        self.following.load(Ordering::SeqCst)
    }

    /// Starts after the last change already logged.
    pub(crate) async fn start_after(&self, pool: &AnyPool) -> Result<(), StoreError> {
        let last: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM tern_changes")
            .fetch_one(pool)
            .await?
            .try_get("last")?;
        self.last.store(last, Ordering::SeqCst);
        self.announced.send_replace(last);
        Ok(())
    }

    /// Logs `changes` and commits them with `tx`, notifying every replica;
    /// returns the number of the last one (0 for none).
    pub(crate) async fn commit(&self, mut tx: Tx<'_>, changes: &[Change]) -> Result<i64, StoreError> {
        if changes.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        lock_writers(&mut tx).await?;
        let base: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM tern_changes")
            .fetch_one(&mut *tx)
            .await?
            .try_get("last")?;
        let at = crate::sql::format_time(chrono::Utc::now());
        let mut seqs = Vec::new();
        for (seq, change) in (base + 1..).zip(changes) {
            sqlx::query(
                "INSERT INTO tern_changes (seq, kind, mesh, name, op, version, at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(seq)
            .bind(change.key.kind.name())
            .bind(&change.key.mesh)
            .bind(&change.key.name)
            .bind(op_name(change.op))
            .bind(change.version)
            .bind(&at)
            .execute(&mut *tx)
            .await?;
            if let Some(cause) = &change.cause {
                seqs.push((seq, cause.clone()));
            }
        }
        sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut *tx).await?;
        self.causes.lock().unwrap_or_else(|p| p.into_inner()).extend(seqs.iter().cloned());
        let committed = tx.commit().await;
        if committed.is_err() {
            let mut causes = self.causes.lock().unwrap_or_else(|p| p.into_inner());
            for (seq, _) in &seqs {
                causes.remove(seq);
            }
        }
        committed?;
        Ok(base + changes.len() as i64)
    }

    /// Waits (a bounded time, while the log is followed) until this
    /// replica's feed has announced change `seq`: a write returns after its
    /// own replica has seen it, as on SQLite.
    pub(crate) async fn announced_here(&self, seq: i64) {
        if seq == 0 || !self.following.load(Ordering::SeqCst) {
            return;
        }
        let mut announced = self.announced.subscribe();
        let _ = tokio::time::timeout(ANNOUNCE_WAIT, announced.wait_for(|last| *last >= seq)).await;
    }

    /// Announces every logged change on `feed`, in order, for as long as it runs.
    pub(crate) async fn follow(&self, pool: &AnyPool, feed: &broadcast::Sender<Change>) -> Result<(), StoreError> {
        let mut failing = false;
        let mut pruned = tokio::time::Instant::now();
        let _stopped = NotFollowing(&self.following);
        loop {
            self.following.store(false, Ordering::SeqCst);
            let mut listener = match sqlx::postgres::PgListener::connect(&self.url).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => l,
                    Err(e) => {
                        failing = report(failing, &e.to_string());
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                },
                Err(e) => {
                    failing = report(failing, &e.to_string());
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            loop {
                // Anything committed while not listening is in the log.
                match self.catch_up(pool, feed).await {
                    Ok(()) if failing => {
                        info!("following the shared change log again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) => failing = report(failing, &e.to_string()),
                }
                self.following.store(!failing, Ordering::SeqCst);
                if pruned.elapsed() > POLL * 30 {
                    pruned = tokio::time::Instant::now();
                    if let Err(e) = prune(pool).await {
                        warn!(error = %e, "old changes not pruned from the shared log");
                    }
                }
                match tokio::time::timeout(POLL, listener.try_recv()).await {
                    Err(_) | Ok(Ok(Some(_))) => {}
                    // The connection dropped; the next call reconnects.
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        failing = report(failing, &e.to_string());
                        break;
                    }
                }
            }
        }
    }

    /// Announces the changes logged after the last one announced.
    async fn catch_up(&self, pool: &AnyPool, feed: &broadcast::Sender<Change>) -> Result<(), StoreError> {
        loop {
            let last = self.last.load(Ordering::SeqCst);
            let rows = sqlx::query(
                "SELECT seq, kind, mesh, name, op, version FROM tern_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(last)
            .bind(BATCH)
            .fetch_all(pool)
            .await?;
            let Some(first) = rows.first() else { return Ok(()) };
            if first.try_get::<i64, _>("seq")? != last + 1 {
                // The log no longer holds what this replica missed.
                warn!(
                    last_seen = last,
                    "changes were pruned from the shared log before this replica read them; announcing every resource"
                );
                announce_everything(pool, feed).await?;
            }
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                let kind: String = row.try_get("kind")?;
                let op: String = row.try_get("op")?;
                if let (Some(kind), Some(op)) = (Kind::from_name(&kind), op_of(&op)) {
                    let key =
                        ResourceKey::new(kind, &row.try_get::<String, _>("mesh")?, &row.try_get::<String, _>("name")?);
                    let cause = self.causes.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
                    let _ = feed.send(Change { key, op, version: row.try_get("version")?, cause });
                }
                self.last.store(seq, Ordering::SeqCst);
            }
            self.announced.send_replace(self.last.load(Ordering::SeqCst));
            if (rows.len() as i64) < BATCH {
                return Ok(());
            }
        }
    }
}

/// Marks the log as not followed when [`SharedFeed::follow`] ends.
struct NotFollowing<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for NotFollowing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Logs the first failure of a run of them; returns that it is failing.
fn report(failing: bool, error: &str) -> bool {
    if !failing {
        warn!(error = %error, "cannot follow the shared change log; retrying (this replica serves what it last saw)");
    }
    true
}

/// Every stored resource, as updated (after a gap in the log).
async fn announce_everything(pool: &AnyPool, feed: &broadcast::Sender<Change>) -> Result<(), StoreError> {
    let rows = sqlx::query("SELECT kind, mesh, name, version FROM tern_resources").fetch_all(pool).await?;
    for row in &rows {
        let kind: String = row.try_get("kind")?;
        let Some(kind) = Kind::from_name(&kind) else { continue };
        let key = ResourceKey::new(kind, &row.try_get::<String, _>("mesh")?, &row.try_get::<String, _>("name")?);
        let _ = feed.send(Change { key, op: ChangeOp::Updated, version: row.try_get("version")?, cause: None });
    }
    Ok(())
}

/// Drops changes older than [`KEEP_SECONDS`], always keeping the last one (its
/// number is where the next writer continues).
async fn prune(pool: &AnyPool) -> Result<(), StoreError> {
    let cutoff = crate::sql::format_time(chrono::Utc::now() - chrono::TimeDelta::seconds(KEEP_SECONDS));
    sqlx::query("DELETE FROM tern_changes WHERE at < $1 AND seq < (SELECT MAX(seq) FROM tern_changes)")
        .bind(cutoff)
        .execute(pool)
        .await?;
    Ok(())
}
