//! Several `tern-cp` replicas on one PostgreSQL database: each follows the
//! shared change log (its plans and xDS come from its own view of the
//! store), and one of them, elected in the database, writes statuses and
//! cleans up insights. Each copies its runtime state (xDS ACK/NACK, delivery
//! counts) there for the others to show. On SQLite there is one control
//! plane and it leads.

use crate::{Part, PartFuture};
use anyhow::Context;
use std::sync::Arc;
use tern_store::SqlStore;
use tokio::sync::watch;
use tracing::info;

/// The parts a replica runs beside the common ones, its leadership, and
/// where it shares runtime state with the others.
pub struct Replica {
    pub parts: Vec<Part>,
    pub leader: Option<watch::Receiver<bool>>,
    pub runtime_share: Option<Arc<SqlStore>>,
}

pub fn start(store: Arc<SqlStore>, url: &str) -> Replica {
    if !store.shared() {
        return Replica { parts: Vec::new(), leader: None, runtime_share: None };
    }
    let runtime_share = Some(store.clone());
    info!("PostgreSQL store: following the shared change log and competing for leadership");
    let feed: Part = Box::new(move |mut stop| -> PartFuture {
        Box::pin(async move {
            tokio::select! {
                r = store.follow() => ("change feed", r.context("following the shared change log")),
                _ = stop.wait_for(|s| *s) => ("change feed", Ok(())),
            }
        })
    });
    let (leader_tx, leader) = watch::channel(false);
    let url = url.to_string();
    let election: Part = Box::new(move |mut stop| -> PartFuture {
        Box::pin(async move {
            tokio::select! {
                _ = tern_store::leader::elect(&url, leader_tx) => ("leader election", Err(anyhow::anyhow!("nobody follows the leadership"))),
                _ = stop.wait_for(|s| *s) => ("leader election", Ok(())),
            }
        })
    });
    Replica { parts: vec![feed, election], leader: Some(leader), runtime_share }
}
