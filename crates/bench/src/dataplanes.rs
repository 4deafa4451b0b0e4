//! `tern-bench dataplanes`: N simulated data planes in one process against
//! real `tern-cp` replicas (driven by `scripts/bench-replicas.sh`).
//!
//! Each simulated data plane does what `tern-dp` does at the wire: it
//! bootstraps with its Dataplane and an inventory, then long-polls its plan;
//! a share of them also holds an ADS stream (Clusters and Listeners, each
//! response ACKed), as Envoy does. The tool seeds backends and policies,
//! times the bootstrap storm (until every data plane holds a plan and every
//! stream its first listeners), then edits the backend every data plane uses
//! and times each plan's arrival; it samples the replicas' RSS and CPU from
//! `/proc`, their store calls from `/metrics`, and PostgreSQL's transactions.
//! It prints one JSON document.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

const MESH: &str = "default";
const SERVICES: usize = 100;
/// The backend the mesh-wide MeshTrace uses, which the edits change.
const EDITED: &str = "b-0";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// What to run.
#[derive(clap::Args)]
pub struct Options {
    /// A replica's data-plane server (repeat for several: data planes are spread over them).
    #[arg(long = "cp", required = true)]
    pub cps: Vec<String>,
    /// A replica's API, for seeding and edits.
    #[arg(long)]
    pub api: String,
    /// A replica's `/metrics` base URL (repeat), for store calls per edit.
    #[arg(long = "metrics")]
    pub metrics: Vec<String>,
    /// A replica's process id (repeat), for RSS and CPU.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// The PostgreSQL database the replicas share, for transactions per edit.
    #[arg(long)]
    pub postgres: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// The share of data planes that also hold an ADS stream (Envoy's).
    #[arg(long, default_value_t = 0.1)]
    pub ads_share: f64,
    #[arg(long, default_value_t = 50)]
    pub backends: usize,
    #[arg(long, default_value_t = 200)]
    pub policies: usize,
    #[arg(long, default_value_t = 5)]
    pub edits: usize,
    /// Bootstraps in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

/// One simulated data plane's view: plans received, with when.
#[derive(Default)]
struct Seen {
    /// Arrival of every plan after the first, in order.
    plans: Mutex<Vec<Instant>>,
    first_plan: Mutex<Option<Instant>>,
    /// Whether the latest plan uses the backend the edits change.
    uses_edited: std::sync::atomic::AtomicBool,
}

/// Counts the whole run shares.
#[derive(Default)]
struct Totals {
    bootstrapped: AtomicUsize,
    with_plan: AtomicUsize,
    plan_responses: AtomicU64,
    poll_errors: AtomicU64,
    ads_streams: AtomicUsize,
    ads_reconnects: AtomicU64,
    ads_with_listeners: AtomicUsize,
    ads_responses: AtomicU64,
}

pub async fn run(o: Options) -> Result<Value, String> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    seed(&http, &o).await?;
    let totals = Arc::new(Totals::default());
    let seen: Arc<Vec<Seen>> = Arc::new((0..o.count).map(|_| Seen::default()).collect());
    let (stop_tx, stop) = watch::channel(false);
    let before = sample(&o).await;

    // The storm: every data plane starts at once (bootstraps `concurrency` at a time).
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(o.concurrency));
    let ads_every = if o.ads_share > 0.0 { (1.0 / o.ads_share).round().max(1.0) as usize } else { usize::MAX };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..o.count {
        let cp = o.cps[i % o.cps.len()].clone();
        let sim = Sim { i, cp, http: http.clone(), totals: totals.clone(), seen: seen.clone(), stop: stop.clone() };
        let gate = gate.clone();
        let ads = i % ads_every == 0;
        tasks.spawn(async move { sim.live(gate, ads).await });
    }
    let ads_total = (0..o.count).filter(|i| i % ads_every == 0).count();
    wait_until(Duration::from_secs(600), || {
        totals.with_plan.load(Ordering::SeqCst) == o.count
            && totals.ads_with_listeners.load(Ordering::SeqCst) == ads_total
    })
    .await
    .map_err(|_| format!("storm incomplete: {}", counts(&totals)))?;
    let storm = started.elapsed();
    let mut to_plan: Vec<f64> = seen
        .iter()
        .filter_map(|s| s.first_plan.lock().ok().and_then(|p| p.map(|t| (t - started).as_secs_f64())))
        .collect();
    let after_storm = sample(&o).await;
    // Let status writes and insights settle before editing.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let mut edits = Vec::new();
    for e in 0..o.edits {
        edits.push(edit(&http, &o, &seen, e).await?);
    }
    let after_edits = sample(&o).await;
    let _ = stop_tx.send(true);
    tasks.abort_all();

    Ok(json!({
        "dataplanes": o.count,
        "replicas": o.cps.len(),
        "backends": o.backends,
        "policies": o.policies,
        "adsStreams": ads_total,
        "counts": counts(&totals),
        "storm": {
            "seconds": storm.as_secs_f64(),
            "toPlanSeconds": percentiles(&mut to_plan),
            "cpuSeconds": after_storm.cpu - before.cpu,
        },
        "rss": {
            "beforeMb": before.rss_mb,
            "afterStormMb": after_storm.rss_mb,
            "afterEditsMb": after_edits.rss_mb,
            "perDataplaneMb": (after_storm.rss_mb - before.rss_mb) / o.count as f64,
        },
        "edits": edits,
    }))
}

fn counts(t: &Totals) -> Value {
    json!({
        "bootstrapped": t.bootstrapped.load(Ordering::SeqCst),
        "withPlan": t.with_plan.load(Ordering::SeqCst),
        "planResponses": t.plan_responses.load(Ordering::SeqCst),
        "pollErrors": t.poll_errors.load(Ordering::SeqCst),
        "adsStreams": t.ads_streams.load(Ordering::SeqCst),
        "adsReconnects": t.ads_reconnects.load(Ordering::SeqCst),
        "adsWithListeners": t.ads_with_listeners.load(Ordering::SeqCst),
        "adsResponses": t.ads_responses.load(Ordering::SeqCst),
    })
}

/// `count` backends and `policies` policies: one mesh-wide MeshTrace on
/// backend 0 (every plan has it), the rest on one service each.
async fn seed(http: &reqwest::Client, o: &Options) -> Result<(), String> {
    let mut docs = Vec::new();
    for b in 0..o.backends {
        docs.push(format!(
            "type: MeshOpenTelemetryBackend\nname: b-{b}\nmesh: {MESH}\nspec:\n  endpoint: {{address: collector-{b}.observability, port: 4317}}\n"
        ));
    }
    let kinds = ["MeshTrace", "MeshMetric", "MeshAccessLog"];
    for p in 0..o.policies {
        let kind = kinds[p % 3];
        let target = if p == 0 {
            "{kind: Mesh}".to_string()
        } else {
            format!("{{kind: MeshSubset, tags: {{kuma.io/service: svc-{}}}}}", p % SERVICES)
        };
        let backend = if p == 0 { 0 } else { p % o.backends };
        let default = format!("  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {{kind: MeshOpenTelemetryBackend, name: b-{backend}}}\n");
        docs.push(format!("type: {kind}\nname: p-{p}\nmesh: {MESH}\nspec:\n  targetRef: {target}\n{default}"));
    }
    apply(http, &o.api, &docs.join("---\n")).await.map_err(|e| format!("seeding: {e}"))
}

/// Applies YAML documents through the API's `/_apply`.
async fn apply(http: &reqwest::Client, api: &str, yaml: &str) -> Result<(), String> {
    let docs = tern_model::parse_documents(yaml).map_err(|e| format!("{e:?}"))?;
    let body = json!({"documents": docs.into_iter().map(|d| d.value).collect::<Vec<_>>()});
    let r = http.post(format!("{api}/_apply")).json(&body).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("refused: {}", r.text().await.unwrap_or_default()));
    }
    Ok(())
}

/// Moves backend 0 to another port and times each data plane's new plan.
async fn edit(http: &reqwest::Client, o: &Options, seen: &[Seen], e: usize) -> Result<Value, String> {
    // The data planes whose plans use the edited backend, and how many plans each had.
    let affected: Vec<(&Seen, usize)> = seen
        .iter()
        .filter(|s| s.uses_edited.load(Ordering::SeqCst))
        .map(|s| (s, s.plans.lock().map(|p| p.len()).unwrap_or(0)))
        .collect();
    let stores = store_calls(http, &o.metrics).await;
    let xacts = transactions(o.postgres.as_deref()).await;
    let cpu = sample(o).await;
    let port = 5000 + e;
    let doc = format!("type: MeshOpenTelemetryBackend\nname: {EDITED}\nmesh: {MESH}\nspec:\n  endpoint: {{address: collector-0.observability, port: {port}}}\n");
    let sent = Instant::now();
    apply(http, &o.api, &doc).await.map_err(|e| format!("edit {e}"))?;
    let arrived = || affected.iter().filter(|(s, b)| s.plans.lock().map(|p| p.len() > *b).unwrap_or(false)).count();
    wait_until(Duration::from_secs(300), || arrived() == affected.len())
        .await
        .map_err(|_| format!("edit {e}: {} of {} plans arrived", arrived(), affected.len()))?;
    let mut latencies: Vec<f64> = affected
        .iter()
        .filter_map(|(s, b)| s.plans.lock().ok().and_then(|p| p.get(*b).map(|t| (*t - sent).as_secs_f64())))
        .collect();
    // Statuses follow the plans; let them land before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = sample(o).await;
    Ok(json!({
        "affected": affected.len(),
        "delivered": latencies.len(),
        "latencySeconds": percentiles(&mut latencies),
        "cpuSeconds": after.cpu - cpu.cpu,
        "rssMb": after.rss_mb,
        "storeCalls": store_calls(http, &o.metrics).await - stores,
        "postgresTransactions": transactions(o.postgres.as_deref()).await.zip(xacts).map(|(a, b)| a - b - 1),
    }))
}

struct Sim {
    i: usize,
    cp: String,
    http: reqwest::Client,
    totals: Arc<Totals>,
    seen: Arc<Vec<Seen>>,
    stop: watch::Receiver<bool>,
}

impl Sim {
    fn name(&self) -> String {
        format!("dp-{}", self.i)
    }

    async fn live(self, gate: Arc<Semaphore>, ads: bool) {
        let permit = gate.acquire_owned().await;
        let plan_path = loop {
            match self.bootstrap().await {
                Ok(path) => break path,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        drop(permit);
        self.totals.bootstrapped.fetch_add(1, Ordering::SeqCst);
        if ads {
            let (node, cp, totals, stop) =
                (format!("{MESH}/{}", self.name()), self.cp.clone(), self.totals.clone(), self.stop.clone());
            tokio::spawn(async move { ads_stream(cp, node, totals, stop).await });
        }
        self.follow(&plan_path).await;
    }

    async fn bootstrap(&self) -> Result<String, String> {
        let i = self.i;
        let dataplane = json!({
            "type": "Dataplane", "name": self.name(), "mesh": MESH,
            "networking": {"address": format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256),
                "inbound": [{"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": format!("svc-{}", i % SERVICES), "kuma.io/protocol": "http"}}]}
        });
        let body = json!({
            "dataplane": dataplane, "version": "bench", "features": [tern_resolve::OTEL_PIPE_FEATURE],
            "workDir": format!("/var/run/tern/{}", self.name()), "otelEnv": {}
        });
        let r = self.http.post(format!("{}/bootstrap", self.cp)).json(&body).send().await.map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(r.text().await.unwrap_or_default());
        }
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        v["planPath"].as_str().map(String::from).ok_or_else(|| "no planPath".into())
    }

    async fn follow(&self, plan_path: &str) {
        let mut version = 0u64;
        while !*self.stop.borrow() {
            let url = format!("{}{plan_path}?version={version}&timeout=30", self.cp);
            let answer = self.http.get(url).send().await;
            let r = match answer {
                Ok(r) if r.status().as_u16() == 304 => continue,
                Ok(r) if r.status().is_success() => r,
                _ => {
                    self.totals.poll_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let now = Instant::now();
            let Ok(v) = r.json::<Value>().await else { continue };
            version = v["version"].as_u64().unwrap_or(0);
            let uses = v["plan"]["backends"].as_array().into_iter().flatten().any(|b| b["name"] == EDITED);
            self.totals.plan_responses.fetch_add(1, Ordering::Relaxed);
            let seen = &self.seen[self.i];
            seen.uses_edited.store(uses, Ordering::SeqCst);
            let mut first = seen.first_plan.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(now);
                self.totals.with_plan.fetch_add(1, Ordering::SeqCst);
            } else {
                seen.plans.lock().unwrap_or_else(|p| p.into_inner()).push(now);
            }
        }
    }
}

/// Envoy's side of ADS: ask for Clusters and Listeners, ACK every
/// response; reconnect after a second when the stream ends, as Envoy does.
async fn ads_stream(cp: String, node: String, totals: Arc<Totals>, mut stop: watch::Receiver<bool>) {
    let mut listeners = false;
    let mut first = true;
    while !*stop.borrow() {
        if !first {
            totals.ads_reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        first = false;
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(cp.clone()) else { return };
        let mut client = AggregatedDiscoveryServiceClient::new(endpoint.connect_lazy());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let request = |type_url: &str, version: String, nonce: String, with_node: bool| DiscoveryRequest {
            node: with_node.then(|| Node { id: node.clone(), ..Default::default() }),
            type_url: type_url.to_string(),
            version_info: version,
            response_nonce: nonce,
            ..Default::default()
        };
        let _ = tx.send(request(CLUSTER, String::new(), String::new(), true)).await;
        let _ = tx.send(request(LISTENER, String::new(), String::new(), false)).await;
        let Ok(response) = client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)).await
        else {
            continue;
        };
        totals.ads_streams.fetch_add(1, Ordering::SeqCst);
        let mut inbound = response.into_inner();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                msg = inbound.message() => {
                    let Ok(Some(r)) = msg else { break };
                    totals.ads_responses.fetch_add(1, Ordering::Relaxed);
                    if r.type_url == LISTENER && !listeners {
                        listeners = true;
                        totals.ads_with_listeners.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = tx.send(request(&r.type_url, r.version_info.clone(), r.nonce.clone(), false)).await;
                }
            }
        }
    }
}

async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn percentiles(v: &mut [f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    json!({"p50": at(0.5), "p99": at(0.99), "max": v[v.len() - 1]})
}

/// The replicas' resident memory and CPU time, summed.
struct Sample {
    rss_mb: f64,
    cpu: f64,
}

async fn sample(o: &Options) -> Sample {
    let mut s = Sample { rss_mb: 0.0, cpu: 0.0 };
    for pid in &o.pids {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let kb = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
            s.rss_mb += kb.unwrap_or(0.0) / 1024.0;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // After the command's closing parenthesis: fields 3.. ; utime and stime are 14 and 15.
            let fields: Vec<&str> =
                stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
            let ticks: f64 =
                fields.get(11..13).map(|f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum()).unwrap_or(0.0);
            s.cpu += ticks / 100.0;
        }
    }
    s
}

/// Store calls the replicas made so far (`store_count` summed).
async fn store_calls(http: &reqwest::Client, metrics: &[String]) -> f64 {
    let mut total = 0.0;
    for m in metrics {
        let Ok(r) = http.get(format!("{m}/metrics")).send().await else { continue };
        let text = r.text().await.unwrap_or_default();
        total += text
            .lines()
            .filter(|l| l.starts_with("store_count{"))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum::<f64>();
    }
    total
}

/// PostgreSQL transactions committed or rolled back in the database so far.
async fn transactions(url: Option<&str>) -> Option<i64> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::postgres::PgConnection::connect(url?).await.ok()?;
    let row = sqlx::query(
        "SELECT (xact_commit + xact_rollback)::BIGINT AS n FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .ok()?;
    row.try_get::<i64, _>("n").ok()
}
