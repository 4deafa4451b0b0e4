//! Replicas on one PostgreSQL database (`TERN_TEST_POSTGRES_URL`, started by
//! `scripts/test.sh`): one change feed in one order for all, catch-up of a
//! gap, leader election that moves when the leader goes; and one control
//! plane per SQLite file.

use std::sync::Arc;
use std::time::Duration;
use tern_model::{parse_documents, resource_from_document, Kind, ResourceKey};
use tern_store::{Change, ChangeOp, Precondition, ResourceStore, SqlStore, Write};
use tokio::sync::{broadcast, watch};

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn postgres_url() -> String {
    let base = std::env::var("TERN_TEST_POSTGRES_URL").expect(
        "TERN_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh, which starts a throwaway PostgreSQL",
    );
    sqlx::any::install_default_drivers();
    let db = format!("tern_replicas_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await.expect("postgres reachable");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&mut admin).await.expect("create database");
    let (prefix, _) = base.rsplit_once('/').expect("URL ends in /DATABASE");
    format!("{prefix}/{db}")
}

fn backend(name: &str, port: u16) -> Write {
    let yaml =
        format!("type: MeshOpenTelemetryBackend\nname: {name}\nmesh: default\nspec:\n  endpoint:\n    port: {port}\n");
    let docs = parse_documents(&yaml).expect("yaml");
    Write {
        resource: resource_from_document(&docs[0].value).expect("valid").resource,
        precondition: Precondition::None,
    }
}

/// A replica: its store, following the shared log.
struct Replica {
    store: Arc<SqlStore>,
    follow: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn open(url: &str) -> Replica {
        let store = Arc::new(SqlStore::open(url).await.expect("opens"));
        let follower = store.clone();
        let follow = tokio::spawn(async move {
            let _ = follower.follow().await;
        });
        while !store.following() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Replica { store, follow }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.follow.abort();
    }
}

async fn take(feed: &mut broadcast::Receiver<Change>, n: usize) -> Vec<(String, ChangeOp, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let c = tokio::time::timeout(Duration::from_secs(10), feed.recv()).await.expect("in 10s").expect("feed");
        out.push((c.key.name.clone(), c.op, c.version));
    }
    out
}

#[tokio::test]
async fn every_replica_sees_every_change_in_one_order() {
    let url = postgres_url().await;
    let (a, b, c) = (Replica::open(&url).await, Replica::open(&url).await, Replica::open(&url).await);
    let mut feeds = [a.store.subscribe(), b.store.subscribe(), c.store.subscribe()];
    // Writers on two replicas at once.
    let (wa, wb) = (a.store.clone(), b.store.clone());
    let left = tokio::spawn(async move {
        for i in 0..20 {
            wa.apply(vec![backend(&format!("a-{i}"), 1)]).await.expect("write on a");
        }
    });
    let right = tokio::spawn(async move {
        for i in 0..20 {
            wb.apply(vec![backend(&format!("b-{i}"), 1)]).await.expect("write on b");
        }
    });
    left.await.unwrap();
    right.await.unwrap();
    let key = ResourceKey::new(Kind::MeshOpenTelemetryBackend, "default", "a-0");
    c.store.set_status(&key, Some(serde_json::json!({"seen": true})), 1).await.expect("status on c");
    let mut seen = Vec::new();
    for feed in &mut feeds {
        seen.push(take(feed, 41).await);
    }
    assert_eq!(seen[0], seen[1], "a and b saw the same changes in the same order");
    assert_eq!(seen[1], seen[2], "b and c too");
    assert_eq!(seen[0].iter().filter(|(_, op, _)| *op == ChangeOp::Created).count(), 40);
    assert_eq!(seen[0].last(), Some(&("a-0".to_string(), ChangeOp::StatusUpdated, 2)));
}

#[tokio::test]
async fn a_replica_that_missed_the_pruned_log_announces_everything() {
    let url = postgres_url().await;
    let a = Replica::open(&url).await;
    // b opens but does not follow yet: it stands for a replica cut off from the database.
    let b = Arc::new(SqlStore::open(&url).await.expect("opens"));
    let mut feed = b.subscribe();
    a.store.apply(vec![backend("missed", 1)]).await.expect("write");
    a.store.apply(vec![backend("kept", 1)]).await.expect("write");
    // The log loses what b has not read (as pruning does after 10 minutes).
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM tern_changes WHERE seq < (SELECT MAX(seq) FROM tern_changes)")
        .execute(&mut conn)
        .await
        .unwrap();
    let follower = b.clone();
    let follow = tokio::spawn(async move { follower.follow().await });
    let changes = take(&mut feed, 3).await;
    follow.abort();
    let names: Vec<&str> = changes.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(names.contains(&"missed") && names.contains(&"kept"), "{changes:?}");
}

#[tokio::test]
async fn leadership_moves_when_the_leader_goes() {
    let url = postgres_url().await;
    let (tx_a, mut a) = watch::channel(false);
    let (tx_b, mut b) = watch::channel(false);
    let url_a = url.clone();
    let elect_a = tokio::spawn(async move { tern_store::leader::elect(&url_a, tx_a).await });
    tokio::time::timeout(Duration::from_secs(10), a.wait_for(|l| *l)).await.expect("a leads").unwrap();
    let url_b = url.clone();
    let elect_b = tokio::spawn(async move { tern_store::leader::elect(&url_b, tx_b).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!*b.borrow(), "only one leader at a time");
    // The leader's process goes: its connection closes with it.
    elect_a.abort();
    tokio::time::timeout(Duration::from_secs(10), b.wait_for(|l| *l)).await.expect("b leads within 10 s").unwrap();
    elect_b.abort();
}

#[tokio::test]
async fn a_second_control_plane_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("tern.db").display());
    let first = SqlStore::open(&url).await.expect("the first opens");
    let refused = SqlStore::open(&url).await.err().expect("the second is refused").to_string();
    assert!(refused.contains("in use by another tern-cp"), "{refused}");
    assert!(refused.contains(&format!("pid {}", std::process::id())), "{refused}");
    assert!(refused.contains("PostgreSQL"), "{refused}");
    drop(first);
    SqlStore::open(&url).await.expect("free again once the first is gone");
}

#[tokio::test]
async fn a_mesh_deleted_while_another_replica_writes_into_it_leaves_nothing_behind() {
    let url = postgres_url().await;
    let (a, b) = (Replica::open(&url).await, Replica::open(&url).await);
    let mesh = |name: &str| {
        let docs = parse_documents(&format!("type: Mesh\nname: {name}\n")).expect("yaml");
        Write {
            resource: resource_from_document(&docs[0].value).expect("valid").resource,
            precondition: Precondition::None,
        }
    };
    let into = |m: &str, i: usize| {
        let mut w = backend(&format!("w-{i}"), 1);
        w.resource.mesh = m.to_string();
        w.resource.labels.insert("kuma.io/mesh".into(), m.to_string());
        w
    };
    for round in 0..5 {
        let m = format!("m{round}");
        a.store.apply(vec![mesh(&m)]).await.expect("mesh");
        let writer = b.store.clone();
        let target = m.clone();
        let writes = tokio::spawn(async move {
            for i in 0..30 {
                let _ = writer.apply(vec![into(&target, i)]).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(5 * round as u64)).await;
        a.store.delete(&ResourceKey::new(Kind::Mesh, "", &m), Precondition::None).await.expect("delete");
        writes.await.unwrap();
        let mesh_exists = a.store.get(&ResourceKey::new(Kind::Mesh, "", &m)).await.unwrap().is_some();
        let inside = a
            .store
            .list(
                Kind::MeshOpenTelemetryBackend,
                &tern_store::ListFilter { mesh: Some(m.clone()), ..Default::default() },
            )
            .await
            .unwrap();
        assert!(mesh_exists || inside.is_empty(), "round {round}: {} resources left in deleted mesh {m}", inside.len());
    }
}

/// The runtime rows replicas share: one per data plane and replica,
/// replaced on write, removed by data plane, and purged when no replica
/// confirmed them for too long.
#[tokio::test]
async fn runtime_rows_are_replaced_removed_and_purged() {
    let store = SqlStore::open(&postgres_url().await).await.expect("opens");
    let row = |name: &str, replica: &str, at: i64, view: &str| tern_store::RuntimeRow {
        mesh: "default".into(),
        name: name.into(),
        replica: replica.into(),
        seen_ms: at,
        view: view.into(),
    };
    let many: Vec<_> = (0..1200).map(|i| row(&format!("dp-{i}"), "a", 10, "{}")).collect();
    store.put_runtime(&many).await.expect("written in chunks");
    store.put_runtime(&[row("dp-1", "a", 20, "{\"v\":2}"), row("dp-1", "b", 15, "{\"v\":1}")]).await.expect("written");
    let rows = store.runtime_of("default", "dp-1").await.expect("read");
    let views: Vec<(&str, i64, &str)> = rows.iter().map(|r| (r.replica.as_str(), r.seen_ms, r.view.as_str())).collect();
    assert_eq!(views, [("a", 20, "{\"v\":2}"), ("b", 15, "{\"v\":1}")], "one row per replica, the last write wins");

    let gone: Vec<(String, String)> = (0..1100).map(|i| ("default".to_string(), format!("dp-{i}"))).collect();
    store.remove_runtime("a", &gone).await.expect("removed in chunks");
    assert_eq!(store.runtime_of("default", "dp-1").await.expect("read").len(), 1, "b's row stays");
    assert!(store.runtime_of("default", "dp-5").await.expect("read").is_empty());
    assert_eq!(store.runtime_of("default", "dp-1150").await.expect("read").len(), 1);

    // a confirms its rows at 1,000; b's (seen at 15) are older than 500.
    store.confirm_runtime("a", 1000, 500).await.expect("confirmed");
    let left = store.runtime_of("default", "dp-1").await.expect("read");
    assert!(left.is_empty(), "b's row is purged: {left:?}");
    let kept = store.runtime_of("default", "dp-1150").await.expect("read");
    assert_eq!(kept.iter().map(|r| r.seen_ms).collect::<Vec<_>>(), [1000], "a's rows are confirmed");
}
