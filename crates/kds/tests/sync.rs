//! Both streams run in process between two real SQLite stores, without the
//! network: what arrives, under which name, after edits, deletions, a
//! disconnect with changes made meanwhile, and a rejected response.

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tern_kds::mapping::{Flow, ORIGIN_LABEL, ZONE_LABEL};
use tern_kds::{hashed_name, receive, send, Inbox, Outbox, StreamStats};
use tern_model::{Kind, Resource, ResourceKey};
use tern_store::{ListFilter, Precondition, ResourceStore, SqlStore, Write};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

async fn store(dir: &tempfile::TempDir, name: &str, default_mesh: bool) -> Arc<SqlStore> {
    let url = format!("sqlite:{}", dir.path().join(name).display());
    Arc::new(SqlStore::open_with(&url, default_mesh).await.unwrap())
}

fn resource(kind: Kind, mesh: &str, name: &str, labels: &[(&str, &str)], spec: Value) -> Resource {
    let mut labels: std::collections::BTreeMap<String, String> =
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    if kind.is_mesh_scoped() {
        labels.insert("kuma.io/display-name".into(), name.into());
        labels.insert("kuma.io/mesh".into(), mesh.into());
    }
    Resource { labels, ..Resource::new(kind, mesh, name, spec) }
}

async fn put(store: &SqlStore, r: Resource) {
    store.apply(vec![Write { resource: r, precondition: Precondition::None }]).await.unwrap();
}

fn backend(name: &str, address: &str) -> Resource {
    resource(
        Kind::MeshOpenTelemetryBackend,
        "default",
        name,
        &[],
        json!({"endpoint": {"address": address, "port": 4317}}),
    )
}

fn trace_policy(name: &str, backend: &str) -> Resource {
    let spec = json!({"targetRef": {"kind": "Mesh"}, "default": {"backends": [{"type": "OpenTelemetry",
        "openTelemetry": {"backendRef": {"kind": "MeshOpenTelemetryBackend", "name": backend}}}]}});
    resource(Kind::MeshTrace, "default", name, &[], spec)
}

/// Both streams between `global` and the zone `zone_store`, as tasks.
fn connect(global: &Arc<SqlStore>, zone_store: &Arc<SqlStore>, zone: &str) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    pair(&mut tasks, global.clone(), zone_store.clone(), Flow::ToZones);
    pair(&mut tasks, zone_store.clone(), global.clone(), Flow::ToGlobal { zone: zone.into() });
    tasks
}

fn pair(tasks: &mut JoinSet<()>, from: Arc<SqlStore>, to: Arc<SqlStore>, flow: Flow) {
    let (req_tx, req_rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let (resp_tx, resp_rx) = mpsc::channel::<DeltaDiscoveryResponse>(16);
    let outbox = Outbox { store: from, flow: flow.clone() };
    let inbox = Inbox { store: to, flow };
    tasks.spawn(async move {
        let _ = send(&outbox, ReceiverStream::new(req_rx).map(Ok), &resp_tx, &StreamStats::default()).await;
    });
    tasks.spawn(async move {
        let _ = receive(&inbox, ReceiverStream::new(resp_rx).map(Ok), &req_tx, &StreamStats::default()).await;
    });
}

async fn names(store: &SqlStore, kind: Kind) -> Vec<String> {
    store.list(kind, &ListFilter::default()).await.unwrap().into_iter().map(|r| r.name).collect()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn global_resources_reach_the_zone_and_follow_edits_deletions_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let global = store(&dir, "global.db", true).await;
    let zone = store(&dir, "zone.db", false).await;
    put(&global, backend("collector-us-east", "collector.us-east.internal")).await;
    put(&global, trace_policy("traces", "collector-us-east")).await;
    let synced_backend = hashed_name("default", "collector-us-east", &[]);
    let synced_policy = hashed_name("default", "traces", &[]);

    let tasks = connect(&global, &zone, "us-east");
    eventually("the mesh, backend and policy reach the zone", || async {
        names(&zone, Kind::MeshTrace).await == [synced_policy.clone()]
            && names(&zone, Kind::MeshOpenTelemetryBackend).await == [synced_backend.clone()]
    })
    .await;
    assert_eq!(names(&zone, Kind::Mesh).await, ["default"]);
    let policy = zone.get(&ResourceKey::new(Kind::MeshTrace, "default", &synced_policy)).await.unwrap().unwrap();
    assert_eq!(policy.labels[ORIGIN_LABEL], "global");
    assert_eq!(policy.spec["default"]["backends"][0]["openTelemetry"]["backendRef"]["name"], json!(synced_backend));

    // An edit arrives.
    put(&global, backend("collector-us-east", "collector-2.us-east.internal")).await;
    let key = ResourceKey::new(Kind::MeshOpenTelemetryBackend, "default", &synced_backend);
    eventually("the edit reaches the zone", || async {
        zone.get(&key).await.unwrap().unwrap().spec["endpoint"]["address"] == "collector-2.us-east.internal"
    })
    .await;

    // Cut off: the zone keeps everything; changes made meanwhile arrive after.
    drop(tasks);
    tokio::time::sleep(Duration::from_millis(100)).await;
    global.delete(&ResourceKey::new(Kind::MeshTrace, "default", "traces"), Precondition::None).await.unwrap();
    put(&global, backend("collector-eu-west", "collector.eu-west.internal")).await;
    assert_eq!(names(&zone, Kind::MeshTrace).await, [synced_policy.as_str()], "a cut-off zone keeps what it has");
    let versions_before = zone.get(&key).await.unwrap().unwrap().meta.version;

    let _tasks = connect(&global, &zone, "us-east");
    eventually("the changes made while away arrive", || async {
        names(&zone, Kind::MeshTrace).await.is_empty() && names(&zone, Kind::MeshOpenTelemetryBackend).await.len() == 2
    })
    .await;
    // What did not change is not sent again: its version on the zone stays.
    assert_eq!(zone.get(&key).await.unwrap().unwrap().meta.version, versions_before);
}

#[tokio::test]
async fn zone_dataplanes_and_insights_reach_the_global_with_status() {
    let dir = tempfile::tempdir().unwrap();
    let global = store(&dir, "global.db", true).await;
    let zone = store(&dir, "zone.db", false).await;
    let _tasks = connect(&global, &zone, "us-east");
    eventually("the mesh reaches the zone", || async { names(&zone, Kind::Mesh).await == ["default"] }).await;

    let dp = resource(
        Kind::Dataplane,
        "default",
        "web-1",
        &[(ORIGIN_LABEL, "zone"), (ZONE_LABEL, "us-east")],
        json!({
        "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}}),
    );
    put(&zone, dp).await;
    put(&zone, resource(Kind::DataplaneInsight, "default", "web-1", &[], json!({}))).await;
    let insight_key = ResourceKey::new(Kind::DataplaneInsight, "default", "web-1");
    let version = zone.get(&insight_key).await.unwrap().unwrap().meta.version;
    zone.set_status(&insight_key, Some(json!({"openTelemetry": {"traces": "ready"}})), version).await.unwrap();

    let synced = hashed_name("default", "web-1", &["us-east"]);
    let global_key = ResourceKey::new(Kind::DataplaneInsight, "default", &synced);
    eventually("the insight and its status reach the global", || async {
        global.get(&global_key).await.unwrap().and_then(|i| i.status)
            == Some(json!({"openTelemetry": {"traces": "ready"}}))
    })
    .await;
    assert_eq!(names(&global, Kind::Dataplane).await, [synced.as_str()]);

    zone.delete(&ResourceKey::new(Kind::Dataplane, "default", "web-1"), Precondition::None).await.unwrap();
    zone.delete(&insight_key, Precondition::None).await.unwrap();
    eventually("the deletion reaches the global", || async { names(&global, Kind::Dataplane).await.is_empty() }).await;
}

#[tokio::test]
async fn a_zone_cannot_overwrite_what_the_global_owns() {
    let dir = tempfile::tempdir().unwrap();
    let global = store(&dir, "global.db", true).await;
    let zone = store(&dir, "zone.db", false).await;
    // A global backend that happens to have the name a zone backend hashes to.
    let clash = hashed_name("default", "otel", &["us-east"]);
    put(&global, backend(&clash, "global.internal")).await;
    let _tasks = connect(&global, &zone, "us-east");
    eventually("the mesh reaches the zone", || async { names(&zone, Kind::Mesh).await == ["default"] }).await;
    put(
        &zone,
        resource(
            Kind::MeshOpenTelemetryBackend,
            "default",
            "otel",
            &[(ORIGIN_LABEL, "zone"), (ZONE_LABEL, "us-east")],
            json!({"endpoint": {"address": "zone.internal", "port": 4317}}),
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept = global.get(&ResourceKey::new(Kind::MeshOpenTelemetryBackend, "default", &clash)).await.unwrap().unwrap();
    assert_eq!(kept.spec["endpoint"]["address"], "global.internal", "the global's own resource is never replaced");
}

#[tokio::test]
async fn hostile_responses_are_rejected_whole_and_change_nothing() {
    use envoy_types::pb::envoy::service::discovery::v3::Resource as XdsResource;
    use envoy_types::pb::google::protobuf::Any;
    let dir = tempfile::tempdir().unwrap();
    let global = store(&dir, "global.db", true).await;
    let inbox = Inbox { store: global.clone(), flow: Flow::ToGlobal { zone: "us-east".into() } };
    let item = |name: &str, type_url: &str, value: Vec<u8>| XdsResource {
        name: name.into(),
        resource: Some(Any { type_url: type_url.into(), value }),
        ..Default::default()
    };
    let ok_dp = |name: &str, zone: &str| {
        serde_json::to_vec(&json!({"mesh": "default", "name": name,
            "labels": {"kuma.io/origin": "zone", "kuma.io/zone": zone},
            "spec": {"networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}}}))
        .unwrap()
    };
    let dp_url = tern_kds::type_url(Kind::Dataplane);
    let cases: Vec<(DeltaDiscoveryResponse, &str)> = vec![
        (DeltaDiscoveryResponse { resources: vec![item("default/a", &dp_url, b"{not json".to_vec())], ..Default::default() }, "does not decode"),
        (DeltaDiscoveryResponse { resources: vec![item("default/a", "tern.kds.v1/Mesh", ok_dp("a", "us-east"))], ..Default::default() }, "not a Dataplane"),
        (DeltaDiscoveryResponse { resources: vec![item("default/other", &dp_url, ok_dp("a", "us-east"))], ..Default::default() }, "names a different resource"),
        (DeltaDiscoveryResponse { resources: vec![item("default/a", &dp_url, ok_dp("a", "eu-west"))], ..Default::default() }, "does not carry the labels"),
        (DeltaDiscoveryResponse { resources: vec![XdsResource { name: "default/a".into(), ..Default::default() }], ..Default::default() }, "carries no resource"),
        (DeltaDiscoveryResponse { removed_resources: vec!["no-slash".into()], ..Default::default() }, "is not a Dataplane name"),
        // One bad resource spoils the whole response, good ones included.
        (DeltaDiscoveryResponse { resources: vec![item("default/good", &dp_url, ok_dp("good", "us-east")),
            item("default/bad", &dp_url, serde_json::to_vec(&json!({"mesh": "default", "name": "bad",
                "labels": {"kuma.io/origin": "zone", "kuma.io/zone": "us-east"}, "spec": {"networking": {"inbound": [{"port": 70000}]}}})).unwrap())],
            ..Default::default() }, "is not valid"),
    ];
    for (response, expected) in cases {
        let error = inbox.apply(Kind::Dataplane, &response).await.unwrap_err();
        assert!(error.contains(expected), "{error:?} should say {expected:?}");
    }
    assert!(names(&global, Kind::Dataplane).await.is_empty(), "nothing was written");
    // The global's own resource is never removed by a zone.
    put(&global, backend("mine", "global.internal")).await;
    let inbox = Inbox { store: global.clone(), flow: Flow::ToGlobal { zone: "us-east".into() } };
    let removal = DeltaDiscoveryResponse { removed_resources: vec!["default/mine".into()], ..Default::default() };
    assert!(inbox.apply(Kind::MeshOpenTelemetryBackend, &removal).await.unwrap_err().contains("not synced from zone"));
    assert_eq!(names(&global, Kind::MeshOpenTelemetryBackend).await, ["mine"]);
}
