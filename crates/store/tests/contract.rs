//! The store contract, run against SQLite and against a real PostgreSQL
//! (`TERN_TEST_POSTGRES_URL`, set by `scripts/test.sh`, which starts a
//! throwaway cluster). Every test gets a fresh database.

use serde_json::json;
use std::collections::BTreeMap;
use tern_model::{parse_documents, resource_from_document, Kind, Resource, ResourceKey};
use tern_store::{
    Change, ChangeOp, ListFilter, Precondition, ResourceStore, SqlStore, StoreError, Write, WriteOutcome,
};

fn resource(yaml: &str) -> Resource {
    let docs = parse_documents(yaml).expect("yaml");
    resource_from_document(&docs[0].value).expect("valid").resource
}

fn backend(mesh: &str, name: &str, port: u16) -> Resource {
    resource(&format!(
        "type: MeshOpenTelemetryBackend\nname: {name}\nmesh: {mesh}\nspec:\n  endpoint:\n    port: {port}\n"
    ))
}

fn put(r: Resource) -> Write {
    Write { resource: r, precondition: Precondition::None }
}

fn key(kind: Kind, mesh: &str, name: &str) -> ResourceKey {
    ResourceKey::new(kind, mesh, name)
}

async fn sqlite() -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("tern.db").display());
    (SqlStore::open(&url).await.expect("sqlite opens"), dir)
}

/// A fresh database on the test PostgreSQL cluster.
async fn postgres_url() -> String {
    let base = std::env::var("TERN_TEST_POSTGRES_URL").expect(
        "TERN_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh, which starts a throwaway PostgreSQL",
    );
    sqlx::any::install_default_drivers();
    let db = format!("tern_test_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await.expect("postgres reachable");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&mut admin).await.expect("create database");
    match base.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/{db}"),
        None => panic!("TERN_TEST_POSTGRES_URL must end in /DATABASE"),
    }
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test] async fn $name() { let (s, _dir) = super::sqlite().await; super::$name(&s).await; })*
            #[tokio::test]
            async fn survives_reopen() {
                let (s, dir) = super::sqlite().await;
                let url = format!("sqlite:{}", dir.path().join("tern.db").display());
                super::survives_reopen(s, &url).await;
            }
        }
        mod on_postgres {
            $(#[tokio::test] async fn $name() {
                let url = super::postgres_url().await;
                let s = std::sync::Arc::new(tern_store::SqlStore::open(&url).await.expect("postgres opens"));
                // Replicas announce changes from the shared log.
                let follower = s.clone();
                let follow = tokio::spawn(async move { follower.follow().await });
                while !s.following() {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                super::$name(&s).await;
                follow.abort();
            })*
            #[tokio::test]
            async fn survives_reopen() {
                let url = super::postgres_url().await;
                let s = tern_store::SqlStore::open(&url).await.expect("postgres opens");
                super::survives_reopen(s, &url).await;
            }
        }
    };
}

contract!(
    batched_status_writes_conflict_one_by_one,
    get_many_reads_what_exists,
    fresh_store_has_default_mesh,
    create_get_update_delete,
    stale_version_is_refused,
    unchanged_write_keeps_version,
    batch_is_all_or_nothing,
    unknown_mesh_is_refused_unless_created_in_batch,
    list_by_mesh_and_labels,
    change_feed_reports_commits,
    deleting_a_mesh_deletes_its_resources,
    deleting_a_mesh_with_dataplanes_is_refused,
    status_writes_are_versioned,
);

async fn fresh_store_has_default_mesh(s: &SqlStore) {
    let meshes = s.list(Kind::Mesh, &ListFilter::default()).await.expect("list");
    assert_eq!(meshes.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["default"]);
}

async fn create_get_update_delete(s: &SqlStore) {
    let out = s.apply(vec![put(backend("default", "main", 4317))]).await.expect("create");
    assert_eq!(out, [WriteOutcome::Created { version: 1 }]);
    let got = s.get(&key(Kind::MeshOpenTelemetryBackend, "default", "main")).await.expect("get").expect("exists");
    assert_eq!(got.spec, json!({"endpoint": {"port": 4317}}));
    assert_eq!(got.meta.version, 1);
    assert!(got.meta.creation_time.is_some() && got.meta.creation_time == got.meta.modification_time);

    let out = s.apply(vec![put(backend("default", "main", 4318))]).await.expect("update");
    assert_eq!(out, [WriteOutcome::Updated { version: 2 }]);
    let got2 = s.get(&got.key()).await.expect("get").expect("exists");
    assert_eq!(got2.spec, json!({"endpoint": {"port": 4318}}));
    assert_eq!(got2.meta.creation_time, got.meta.creation_time);
    assert!(got2.meta.modification_time >= got.meta.modification_time);

    s.delete(&got.key(), Precondition::None).await.expect("delete");
    assert!(s.get(&got.key()).await.expect("get").is_none());
    assert!(matches!(s.delete(&got.key(), Precondition::None).await, Err(StoreError::NotFound(_))));
}

async fn stale_version_is_refused(s: &SqlStore) {
    s.apply(vec![put(backend("default", "main", 4317))]).await.expect("create");
    s.apply(vec![put(backend("default", "main", 4318))]).await.expect("update to v2");
    let stale = Write { resource: backend("default", "main", 9999), precondition: Precondition::Version(1) };
    match s.apply(vec![stale]).await {
        Err(StoreError::Conflict { expected: 1, actual: 2, .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    let got = s.get(&key(Kind::MeshOpenTelemetryBackend, "default", "main")).await.expect("get").expect("exists");
    assert_eq!(got.spec, json!({"endpoint": {"port": 4318}}), "stale write must not land");
    let fresh = Write { resource: backend("default", "main", 9999), precondition: Precondition::Version(2) };
    assert_eq!(s.apply(vec![fresh]).await.expect("current version"), [WriteOutcome::Updated { version: 3 }]);
    let create_only = Write { resource: backend("default", "main", 1), precondition: Precondition::MustNotExist };
    assert!(matches!(s.apply(vec![create_only]).await, Err(StoreError::AlreadyExists { .. })));
    assert!(matches!(s.delete(&got.key(), Precondition::Version(1)).await, Err(StoreError::Conflict { .. })));
}

async fn unchanged_write_keeps_version(s: &SqlStore) {
    s.apply(vec![put(backend("default", "main", 4317))]).await.expect("create");
    let mut feed = s.subscribe();
    assert_eq!(
        s.apply(vec![put(backend("default", "main", 4317))]).await.expect("again"),
        [WriteOutcome::Unchanged { version: 1 }]
    );
    assert!(feed.try_recv().is_err(), "an unchanged write announces nothing");
}

async fn batch_is_all_or_nothing(s: &SqlStore) {
    s.apply(vec![put(backend("default", "keep", 4317))]).await.expect("seed");
    let batch = vec![
        put(backend("default", "keep", 1111)),
        put(backend("default", "new", 4317)),
        Write { resource: backend("default", "keep", 2222), precondition: Precondition::Version(1) },
    ];
    assert!(matches!(s.apply(batch).await, Err(StoreError::Conflict { .. })));
    let kept = s.get(&key(Kind::MeshOpenTelemetryBackend, "default", "keep")).await.expect("get").expect("exists");
    assert_eq!(kept.spec, json!({"endpoint": {"port": 4317}}));
    assert!(s.get(&key(Kind::MeshOpenTelemetryBackend, "default", "new")).await.expect("get").is_none());
}

async fn unknown_mesh_is_refused_unless_created_in_batch(s: &SqlStore) {
    match s.apply(vec![put(backend("other", "b", 4317))]).await {
        Err(StoreError::MeshNotFound { mesh, .. }) => assert_eq!(mesh, "other"),
        other => panic!("expected MeshNotFound, got {other:?}"),
    }
    let mesh = resource("type: Mesh\nname: other\n");
    s.apply(vec![put(mesh), put(backend("other", "b", 4317))]).await.expect("mesh created first");
    assert!(s.get(&key(Kind::MeshOpenTelemetryBackend, "other", "b")).await.expect("get").is_some());
}

async fn list_by_mesh_and_labels(s: &SqlStore) {
    s.apply(vec![put(resource("type: Mesh\nname: second\n"))]).await.expect("mesh");
    let mut labelled = backend("second", "b", 4317);
    labelled.labels.insert("team".into(), "core".into());
    s.apply(vec![put(backend("default", "z", 1)), put(backend("default", "a", 1)), put(labelled)]).await.expect("seed");
    let all = s.list(Kind::MeshOpenTelemetryBackend, &ListFilter::default()).await.expect("list");
    let names: Vec<_> = all.iter().map(|r| format!("{}/{}", r.mesh, r.name)).collect();
    assert_eq!(names, ["default/a", "default/z", "second/b"]);
    let in_default = ListFilter { mesh: Some("default".into()), ..Default::default() };
    assert_eq!(s.list(Kind::MeshOpenTelemetryBackend, &in_default).await.expect("list").len(), 2);
    let by_label = ListFilter { labels: BTreeMap::from([("team".into(), "core".into())]), ..Default::default() };
    let found = s.list(Kind::MeshOpenTelemetryBackend, &by_label).await.expect("list");
    assert_eq!(found.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
    assert!(s.list(Kind::MeshTrace, &ListFilter::default()).await.expect("list").is_empty());
}

/// The next change on `feed` (on PostgreSQL it comes through the shared log).
async fn next(feed: &mut tokio::sync::broadcast::Receiver<Change>) -> Change {
    tokio::time::timeout(std::time::Duration::from_secs(10), feed.recv()).await.expect("a change in 10s").expect("feed")
}

/// Nothing more arrives on `feed` for a while.
async fn quiet(feed: &mut tokio::sync::broadcast::Receiver<Change>) -> bool {
    tokio::time::timeout(std::time::Duration::from_millis(500), feed.recv()).await.is_err()
}

async fn change_feed_reports_commits(s: &SqlStore) {
    let mut feed = s.subscribe();
    s.apply(vec![put(backend("default", "main", 4317))]).await.expect("create");
    s.apply(vec![put(backend("default", "main", 4318))]).await.expect("update");
    s.delete(&key(Kind::MeshOpenTelemetryBackend, "default", "main"), Precondition::None).await.expect("delete");
    let mut ops = Vec::new();
    for _ in 0..3 {
        let c = next(&mut feed).await;
        ops.push((c.op, c.version));
    }
    assert_eq!(ops, [(ChangeOp::Created, 1), (ChangeOp::Updated, 2), (ChangeOp::Deleted, 2)]);
    let failed = Write { resource: backend("default", "x", 1), precondition: Precondition::Version(7) };
    assert!(s.apply(vec![failed]).await.is_err());
    assert!(quiet(&mut feed).await, "a failed batch announces nothing");
}

async fn deleting_a_mesh_deletes_its_resources(s: &SqlStore) {
    s.apply(vec![
        put(resource("type: Mesh\nname: gone\n")),
        put(backend("gone", "b", 1)),
        put(backend("default", "b", 1)),
    ])
    .await
    .expect("seed");
    s.delete(&key(Kind::Mesh, "", "gone"), Precondition::None).await.expect("delete mesh");
    let left = s.list(Kind::MeshOpenTelemetryBackend, &ListFilter::default()).await.expect("list");
    assert_eq!(left.iter().map(|r| r.mesh.as_str()).collect::<Vec<_>>(), ["default"]);
}

async fn deleting_a_mesh_with_dataplanes_is_refused(s: &SqlStore) {
    let dataplane = "type: Dataplane\nname: web-1\nmesh: busy\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 8080\n      tags: {kuma.io/service: web}\n";
    s.apply(vec![put(resource("type: Mesh\nname: busy\n")), put(backend("busy", "b", 1)), put(resource(dataplane))])
        .await
        .expect("seed");
    let mut feed = s.subscribe();
    match s.delete(&key(Kind::Mesh, "", "busy"), Precondition::None).await {
        Err(e @ StoreError::MeshHasDataplanes { .. }) => {
            assert_eq!(e.to_string(), "unable to delete mesh, there are still some dataplanes attached")
        }
        other => panic!("expected MeshHasDataplanes, got {other:?}"),
    }
    assert!(quiet(&mut feed).await, "a refused delete announces nothing");
    assert!(s.get(&key(Kind::Mesh, "", "busy")).await.expect("get").is_some(), "the mesh stays");
    assert!(
        s.get(&key(Kind::MeshOpenTelemetryBackend, "busy", "b")).await.expect("get").is_some(),
        "so does its content"
    );
    s.delete(&key(Kind::Dataplane, "busy", "web-1"), Precondition::None).await.expect("delete dataplane");
    s.delete(&key(Kind::Mesh, "", "busy"), Precondition::None).await.expect("an empty mesh goes");
    assert!(s.get(&key(Kind::MeshOpenTelemetryBackend, "busy", "b")).await.expect("get").is_none());
}

async fn status_writes_are_versioned(s: &SqlStore) {
    s.apply(vec![put(backend("default", "main", 4317))]).await.expect("create");
    let k = key(Kind::MeshOpenTelemetryBackend, "default", "main");
    let status = json!({"conditions": [{"type": "ReferencedByPolicies", "status": "False", "reason": "NotReferenced", "message": "Not referenced by any observability policy"}]});
    let mut feed = s.subscribe();
    assert_eq!(s.set_status(&k, Some(status.clone()), 1).await.expect("status"), 2);
    assert_eq!(next(&mut feed).await.op, ChangeOp::StatusUpdated);
    assert!(matches!(s.set_status(&k, None, 1).await, Err(StoreError::Conflict { .. })));
    let got = s.get(&k).await.expect("get").expect("exists");
    assert_eq!(got.status, Some(status.clone()));
    // A spec write keeps the status the control plane wrote.
    s.apply(vec![put(backend("default", "main", 4318))]).await.expect("update");
    assert_eq!(s.get(&k).await.expect("get").expect("exists").status, Some(status));
}

async fn batched_status_writes_conflict_one_by_one(s: &SqlStore) {
    s.apply(vec![put(backend("default", "a", 1)), put(backend("default", "b", 1)), put(backend("default", "c", 1))])
        .await
        .expect("create");
    let mut feed = s.subscribe();
    let status = |n: i64| Some(json!({"n": n}));
    let write = |name: &str, version: i64, n: i64| tern_store::StatusWrite {
        key: key(Kind::MeshOpenTelemetryBackend, "default", name),
        status: status(n),
        expected_version: version,
    };
    let outcomes = s.set_statuses(vec![write("a", 1, 1), write("b", 7, 2), write("c", 1, 3)]).await.expect("batch");
    assert!(matches!(outcomes[0], Ok(2)), "{outcomes:?}");
    assert!(matches!(outcomes[1], Err(StoreError::Conflict { .. })), "{outcomes:?}");
    assert!(matches!(outcomes[2], Ok(2)), "{outcomes:?}");
    let mut announced = Vec::new();
    for _ in 0..2 {
        let c = next(&mut feed).await;
        announced.push((c.key.name.clone(), c.op));
    }
    assert_eq!(announced, [("a".to_string(), ChangeOp::StatusUpdated), ("c".to_string(), ChangeOp::StatusUpdated)]);
    assert!(quiet(&mut feed).await, "the conflicting write announces nothing");
    let b = s.get(&key(Kind::MeshOpenTelemetryBackend, "default", "b")).await.expect("get").expect("exists");
    assert_eq!((b.meta.version, b.status), (1, None));
    let c = s.get(&key(Kind::MeshOpenTelemetryBackend, "default", "c")).await.expect("get").expect("exists");
    assert_eq!(c.status, status(3));
}

async fn get_many_reads_what_exists(s: &SqlStore) {
    s.apply(vec![
        put(resource("type: Mesh\nname: other\n")),
        put(backend("default", "a", 1)),
        put(backend("other", "a", 2)),
    ])
    .await
    .expect("seed");
    let keys = [
        key(Kind::MeshOpenTelemetryBackend, "default", "a"),
        key(Kind::MeshOpenTelemetryBackend, "other", "a"),
        key(Kind::MeshOpenTelemetryBackend, "default", "absent"),
        key(Kind::Mesh, "", "other"),
    ];
    let mut found: Vec<(Kind, String, String)> =
        s.get_many(&keys).await.expect("get_many").into_iter().map(|r| (r.kind, r.mesh, r.name)).collect();
    found.sort();
    let mut want = vec![
        (Kind::Mesh, String::new(), "other".to_string()),
        (Kind::MeshOpenTelemetryBackend, "default".to_string(), "a".to_string()),
        (Kind::MeshOpenTelemetryBackend, "other".to_string(), "a".to_string()),
    ];
    want.sort();
    assert_eq!(found, want);
    let many: Vec<ResourceKey> =
        (0..1200).map(|i| key(Kind::MeshOpenTelemetryBackend, "default", &format!("n{i}"))).collect();
    assert!(s.get_many(&many).await.expect("more names than one query takes").is_empty());
}

async fn survives_reopen(s: SqlStore, url: &str) {
    s.apply(vec![put(backend("default", "main", 4317))]).await.expect("create");
    s.delete(&key(Kind::Mesh, "", "default"), Precondition::None).await.ok();
    s.apply(vec![put(resource("type: Mesh\nname: default\n")), put(backend("default", "main", 4317))])
        .await
        .expect("recreate");
    s.delete(&key(Kind::Mesh, "", "default"), Precondition::None).await.expect("delete default mesh");
    s.apply(vec![put(resource("type: Mesh\nname: kept\n")), put(backend("kept", "main", 4317))]).await.expect("seed");
    drop(s);
    let reopened = SqlStore::open(url).await.expect("reopens");
    let got = reopened.get(&key(Kind::MeshOpenTelemetryBackend, "kept", "main")).await.expect("get");
    assert_eq!(got.expect("still there").spec, json!({"endpoint": {"port": 4317}}));
    let meshes = reopened.list(Kind::Mesh, &ListFilter::default()).await.expect("list");
    assert_eq!(
        meshes.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["kept"],
        "a deleted default mesh stays deleted"
    );
}
