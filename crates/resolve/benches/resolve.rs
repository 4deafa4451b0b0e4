//! Resolution at scale: 10,000 dataplanes, 200 policies and 50 backends in
//! one mesh. `cargo bench -p tern-resolve` (see BENCHMARKS.md).

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;
use tern_model::{resource_from_document, Resource};
use tern_otlp_config::Inventory;
use tern_resolve::{
    resolve_mesh, resolve_mesh_incremental, Changed, DataplaneInput, MeshInput, Session, OTEL_PIPE_FEATURE,
};

const DATAPLANES: usize = 10_000;
const POLICIES: usize = 200;
const BACKENDS: usize = 50;
const SERVICES: usize = 100;
const ZONES: usize = 5;

fn resource(doc: serde_json::Value, minute: u32) -> Resource {
    let mut r = resource_from_document(&doc).expect("valid").resource;
    r.meta.creation_time = Utc.with_ymd_and_hms(2026, 1, 1, 0, minute % 60, 0).single();
    r
}

fn backend(i: usize, address: &str) -> Resource {
    let env = match i % 3 {
        0 => json!({}),
        1 => json!({"mode": "Disabled"}),
        _ => json!({"precedence": "ExplicitFirst"}),
    };
    resource(
        json!({"type": "MeshOpenTelemetryBackend", "name": format!("b{i}"), "mesh": "default",
               "labels": {"team": format!("t{}", i % 10)},
               "spec": {"endpoint": {"address": address, "port": 4317}, "env": env}}),
        i as u32,
    )
}

fn world() -> (Vec<Resource>, Vec<Resource>, Vec<Resource>, Vec<Session>) {
    let backends: Vec<Resource> = (0..BACKENDS).map(|i| backend(i, &format!("collector-{i}.example"))).collect();
    let policies: Vec<Resource> = (0..POLICIES)
        .map(|i| {
            let kind = ["MeshTrace", "MeshMetric", "MeshAccessLog"][i % 3];
            let target = match i % 4 {
                0 => json!({"kind": "Mesh"}),
                1 => json!({"kind": "MeshSubset", "tags": {"kuma.io/zone": format!("z{}", i % ZONES)}}),
                2 => json!({"kind": "MeshSubset", "tags": {"kuma.io/service": format!("s{}", i % SERVICES)}}),
                _ => json!({"kind": "Dataplane", "labels": {"app": format!("s{}", i % SERVICES)}}),
            };
            let backend_ref = if i % 5 == 0 {
                json!({"kind": "MeshOpenTelemetryBackend", "labels": {"team": format!("t{}", i % 10)}})
            } else {
                json!({"kind": "MeshOpenTelemetryBackend", "name": format!("b{}", i % BACKENDS)})
            };
            let mut otel = json!({"backendRef": backend_ref});
            if kind == "MeshMetric" {
                otel["refreshInterval"] = json!("30s");
            }
            resource(
                json!({"type": kind, "name": format!("p{i:03}"), "mesh": "default",
                       "spec": {"targetRef": target, "default": {"backends": [{"type": "OpenTelemetry", "openTelemetry": otel}]}}}),
                i as u32,
            )
        })
        .collect();
    let dataplanes: Vec<Resource> = (0..DATAPLANES)
        .map(|i| {
            let service = format!("s{}", i % SERVICES);
            resource(
                json!({"type": "Dataplane", "name": format!("dp-{i}"), "mesh": "default", "labels": {"app": service},
                       "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080,
                           "tags": {"kuma.io/service": service, "kuma.io/zone": format!("z{}", i % ZONES)}}]}}),
                0,
            )
        })
        .collect();
    let sessions: Vec<Session> = (0..DATAPLANES)
        .map(|i| {
            let mut vars = BTreeMap::new();
            if i % 2 == 0 {
                vars.insert("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), "http://collector:4317".to_string());
            }
            let (_, _, inventory) = Inventory::discover(&vars);
            Session {
                version: "bench".into(),
                features: vec![OTEL_PIPE_FEATURE.into()],
                work_dir: format!("/run/tern/dp-{i}"),
                otel_env: inventory,
                connect_time: None,
            }
        })
        .collect();
    (backends, policies, dataplanes, sessions)
}

fn bench(c: &mut Criterion) {
    let (mut backends, policies, dataplanes, sessions) = world();
    let inputs: Vec<DataplaneInput<'_>> =
        dataplanes.iter().zip(&sessions).map(|(d, s)| DataplaneInput { resource: d, session: Some(s) }).collect();
    let first = resolve_mesh(&MeshInput { backends: &backends, policies: &policies, dataplanes: &inputs });
    assert_eq!(first.dataplanes.len(), DATAPLANES);
    let with_backends = first.dataplanes.values().filter(|o| !o.plan.backends.is_empty()).count();
    eprintln!("{with_backends} of {DATAPLANES} dataplanes have OTel backends");

    let mut group = c.benchmark_group("resolve_mesh");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("full recompute (10k dataplanes, 200 policies, 50 backends)", |b| {
        b.iter(|| resolve_mesh(&MeshInput { backends: &backends, policies: &policies, dataplanes: &inputs }))
    });
    let mut n = 0u32;
    group.bench_function("full recompute after one backend edit", |b| {
        b.iter(|| {
            n += 1;
            backends[7] = backend(7, &format!("moved-{n}.example"));
            resolve_mesh(&MeshInput { backends: &backends, policies: &policies, dataplanes: &inputs })
        })
    });
    let changed: BTreeSet<String> = ["b7".to_string()].into();
    let touched = first.dataplanes.values().filter(|o| o.plan.backends.iter().any(|b| b.name == "b7")).count();
    eprintln!("{touched} dataplanes use b7");
    group.bench_function("incremental recompute after one backend edit", |b| {
        b.iter(|| {
            n += 1;
            backends[7] = backend(7, &format!("moved-{n}.example"));
            let input = MeshInput { backends: &backends, policies: &policies, dataplanes: &inputs };
            resolve_mesh_incremental(&input, &first, Changed::Backends(&changed))
        })
    });
    let one: BTreeSet<String> = ["dp-42".to_string()].into();
    group.bench_function("incremental recompute after one dataplane change", |b| {
        b.iter(|| {
            let input = MeshInput { backends: &backends, policies: &policies, dataplanes: &inputs };
            resolve_mesh_incremental(&input, &first, Changed::Dataplanes(&one))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
