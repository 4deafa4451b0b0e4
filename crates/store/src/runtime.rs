//! Runtime views replicas share on PostgreSQL: what a data plane's Envoy did
//! with xDS and what its `tern-dp` last reported live in the memory of the
//! replica it talks to; each replica copies its views here, so whichever
//! replica an operator asks can show them. One row per data plane and
//! replica; the view itself is opaque JSON to the store.

use crate::{SqlStore, StoreError};
use sqlx::Row;

pub(crate) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS tern_runtime (
    mesh TEXT NOT NULL,
    name TEXT NOT NULL,
    replica TEXT NOT NULL,
    seen_ms BIGINT NOT NULL,
    view TEXT NOT NULL,
    PRIMARY KEY (mesh, name, replica)
)";

/// Rows per statement (5 parameters each).
const CHUNK: usize = 500;

/// One replica's view of one data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRow {
    pub mesh: String,
    pub name: String,
    pub replica: String,
    /// When its replica last wrote or confirmed it (ms since the epoch).
    /// The view carries its own times (report, ACK/NACK change).
    pub seen_ms: i64,
    pub view: String,
}

impl SqlStore {
    /// Writes `rows`, replacing each one's earlier version.
    pub async fn put_runtime(&self, rows: &[RuntimeRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = i * 5;
                    format!("(${}, ${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4, p + 5)
                })
                .collect();
            let sql = format!(
                "INSERT INTO tern_runtime (mesh, name, replica, seen_ms, view) VALUES {} \
                 ON CONFLICT (mesh, name, replica) DO UPDATE SET seen_ms = excluded.seen_ms, view = excluded.view",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for r in chunk {
                query = query.bind(&r.mesh).bind(&r.name).bind(&r.replica).bind(r.seen_ms).bind(&r.view);
            }
            query.execute(self.pool()).await?;
        }
        Ok(())
    }

    /// Removes `replica`'s rows for `dataplanes` (mesh, name): it holds
    /// nothing for them any more.
    pub async fn remove_runtime(&self, replica: &str, dataplanes: &[(String, String)]) -> Result<(), StoreError> {
        for chunk in dataplanes.chunks(CHUNK) {
            let pairs: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${})", 2 * i + 2, 2 * i + 3)).collect();
            let sql = format!("DELETE FROM tern_runtime WHERE replica = $1 AND (mesh, name) IN ({})", pairs.join(", "));
            let mut query = sqlx::query(&sql).bind(replica);
            for (mesh, name) in chunk {
                query = query.bind(mesh).bind(name);
            }
            query.execute(self.pool()).await?;
        }
        Ok(())
    }

    /// Confirms every row of `replica` at `now_ms`, and removes rows no
    /// replica confirmed since `stale_before_ms` (replicas that died).
    pub async fn confirm_runtime(&self, replica: &str, now_ms: i64, stale_before_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE tern_runtime SET seen_ms = $1 WHERE replica = $2")
            .bind(now_ms)
            .bind(replica)
            .execute(self.pool())
            .await?;
        sqlx::query("DELETE FROM tern_runtime WHERE seen_ms < $1").bind(stale_before_ms).execute(self.pool()).await?;
        Ok(())
    }

    /// Every replica's row for one data plane.
    pub async fn runtime_of(&self, mesh: &str, name: &str) -> Result<Vec<RuntimeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT replica, seen_ms, view FROM tern_runtime WHERE mesh = $1 AND name = $2 ORDER BY replica",
        )
        .bind(mesh)
        .bind(name)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RuntimeRow {
                    mesh: mesh.to_string(),
                    name: name.to_string(),
                    replica: r.try_get("replica")?,
                    seen_ms: r.try_get("seen_ms")?,
                    view: r.try_get("view")?,
                })
            })
            .collect()
    }
}
