//! The multi-zone sync benchmark's measuring side (driven by
//! `scripts/bench-multizone.sh`): seed a zone's store with data planes and
//! insights, time the initial sync through both control planes' APIs, and
//! time edits on the global until each is visible on the zone.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tern_kds::mapping::{ORIGIN_LABEL, ZONE_LABEL};
use tern_model::{Kind, Resource};
use tern_store::{Precondition, ResourceStore, SqlStore, Write};

/// Writes `count` Dataplanes with their insights (and a status the size a
/// real one has) into a zone's store, as the zone's own.
pub async fn seed_zone(store_url: &str, zone: &str, count: usize) -> Result<(), String> {
    let store = SqlStore::open_with(store_url, false).await.map_err(|e| e.to_string())?;
    let mesh = resource(Kind::Mesh, "", "default", &[(ORIGIN_LABEL, "global")], json!({}));
    store.apply(vec![write(mesh)]).await.map_err(|e| e.to_string())?;
    let own = [(ORIGIN_LABEL, "zone"), (ZONE_LABEL, zone)];
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut writes = Vec::new();
        for i in chunk {
            let name = format!("dp-{i}");
            let spec = json!({"networking": {"address": format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256),
                "inbound": [{"port": 8080, "tags": {"kuma.io/service": format!("svc-{}", i % 50), "kuma.io/zone": zone}}]}});
            writes.push(write(resource(Kind::Dataplane, "default", &name, &own, spec)));
            writes.push(write(resource(Kind::DataplaneInsight, "default", &name, &[], json!({}))));
        }
        let outcomes = store.apply(writes.clone()).await.map_err(|e| e.to_string())?;
        for (w, outcome) in writes.iter().zip(outcomes).filter(|(w, _)| w.resource.kind == Kind::DataplaneInsight) {
            store
                .set_status(&w.resource.key(), Some(insight_status()), outcome.version())
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn insight_status() -> Value {
    let signal = |s: &str| {
        json!({"signal": s, "state": "ready", "endpoint": "collector.observability:4317",
        "sources": {"endpoint": "backend", "protocol": "backend", "headers": "env"}, "reasons": []})
    };
    json!({"openTelemetry": {"backends": [{"name": "main-collector", "signals": [signal("traces"), signal("logs"), signal("metrics")]}]}})
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

fn write(resource: Resource) -> Write {
    Write { resource, precondition: Precondition::None }
}

/// How many resources of `plural` in mesh default carry `label`.
async fn total(client: &reqwest::Client, api: &str, plural: &str, label: &str) -> u64 {
    let url = format!("{api}/meshes/default/{plural}?size=1&filter=label.{label}");
    let answer = async { client.get(&url).send().await?.json::<Value>().await };
    answer.await.ok().and_then(|v| v["total"].as_u64()).unwrap_or(0)
}

/// Polls both APIs until the zone holds `resources` backends and policies
/// from the global and the global holds `dataplanes` data planes and
/// insights from the zone; prints the time and the bytes each way.
pub async fn initial(
    global: &str,
    zone: &str,
    zone_name: &str,
    resources: u64,
    dataplanes: u64,
) -> Result<Value, String> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let from_zone = format!("kuma.io/zone={zone_name}");
    let (mut to_zone_at, mut to_global_at) = (None, None);
    while to_zone_at.is_none() || to_global_at.is_none() {
        if Instant::now() > deadline {
            return Err(format!("no full sync within 600 s (zone side {to_zone_at:?}, global side {to_global_at:?})"));
        }
        if to_zone_at.is_none() {
            let mut held = 0;
            for plural in ["meshopentelemetrybackends", "meshtraces"] {
                held += total(&client, zone, plural, "kuma.io/origin=global").await;
            }
            if held >= resources {
                to_zone_at = Some(started.elapsed());
            }
        }
        if to_global_at.is_none() {
            let dps = total(&client, global, "dataplanes", &from_zone).await;
            let insights = total(&client, global, "dataplane-insights", "kuma.io/origin=zone").await;
            if dps >= dataplanes && insights >= dataplanes {
                to_global_at = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The stream's byte counts are recorded once a response is applied, a
    // moment after what it carried is readable.
    let mut last = Value::Null;
    for _ in 0..100 {
        let insight: Value =
            async { client.get(format!("{global}/zone-insights/{zone_name}")).send().await?.json().await }
                .await
                .map_err(|e: reqwest::Error| e.to_string())?;
        last = insight["subscriptions"].as_array().and_then(|s| s.last().cloned()).unwrap_or_default();
        if last["status"]["zoneToGlobal"]["bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = &last;
    Ok(json!({
        "resources_to_zone": resources,
        "seconds_to_zone": to_zone_at.map(|d| d.as_secs_f64()),
        "bytes_to_zone": last["status"]["total"]["bytes"],
        "dataplanes_and_insights_to_global": dataplanes * 2,
        "seconds_to_global": to_global_at.map(|d| d.as_secs_f64()),
        "bytes_to_global": last["status"]["zoneToGlobal"]["bytes"],
    }))
}

/// Edits one backend on the global `edits` times; each time, how long until
/// the zone's copy shows the edit.
pub async fn latency(global: &str, zone: &str, edits: u32) -> Result<Value, String> {
    let client = reqwest::Client::new();
    let synced = tern_kds::hashed_name("default", "latency-probe", &[]);
    let mut samples = Vec::new();
    for i in 0..edits {
        let port = 10_000 + i;
        let body = json!({"type": "MeshOpenTelemetryBackend", "mesh": "default", "name": "latency-probe",
            "spec": {"endpoint": {"address": "probe.internal", "port": port}}});
        let started = Instant::now();
        let put = client.put(format!("{global}/meshes/default/meshopentelemetrybackends/latency-probe")).json(&body);
        put.send().await.map_err(|e| e.to_string())?.error_for_status().map_err(|e| e.to_string())?;
        loop {
            let url = format!("{zone}/meshes/default/meshopentelemetrybackends/{synced}");
            let seen = async { client.get(&url).send().await?.json::<Value>().await }.await.ok();
            if seen.is_some_and(|v| v["spec"]["endpoint"]["port"] == port) {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("edit {i} not on the zone after 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Ok(json!({"edits": edits, "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": at(1.0)}))
}
