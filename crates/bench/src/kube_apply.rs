//! The Kubernetes store's batch writes (driven by `scripts/bench-kube-store.sh`
//! against a real kube-apiserver): COUNT Dataplanes created in one batch,
//! then all of them changed in one batch, at a given number of apiserver
//! calls at once. A zone's initial sync into a global on Kubernetes is such
//! a batch.

use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;
use tern_kube::{kube, KubeStore};
use tern_model::{Kind, Resource};
use tern_store::{Precondition, ResourceStore, Write};

pub async fn run(kubeconfig: &Path, count: usize, concurrency: usize, round: &str) -> Result<Value, String> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| format!("reading the kubeconfig: {e}"))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await.map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let store = KubeStore::connect(client, "kuma-system", true).await.map_err(|e| e.to_string())?;
    let store = store.with_concurrency(concurrency);
    let batch = |address: &str| -> Vec<Write> {
        (0..count)
            .map(|i| {
                let spec = json!({"networking": {"address": address,
                    "inbound": [{"port": 8080, "tags": {"kuma.io/service": format!("svc-{}", i % 50)}}]}});
                let name = format!("dp-{round}-{i}");
                Write {
                    resource: Resource::new(Kind::Dataplane, "default", &name, spec),
                    precondition: Precondition::None,
                }
            })
            .collect()
    };
    let started = Instant::now();
    store.apply(batch("10.0.0.1")).await.map_err(|e| format!("creating: {e}"))?;
    let create_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    store.apply(batch("10.0.0.2")).await.map_err(|e| format!("updating: {e}"))?;
    let update_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(
        json!({"count": count, "concurrency": concurrency, "create_ms": create_ms.round(), "update_ms": update_ms.round()}),
    )
}
