//! What data planes report while they run (delivery counts), next to what
//! their Envoys did with xDS; kept in memory, read by the API, and dropped
//! with the dataplane. With several replicas on PostgreSQL, each replica
//! copies its views into the database ([`RuntimeState::share`]) and a read
//! merges them with the other replicas' (the newest of each part wins), so
//! any replica shows any data plane.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_protocol::{DeliveryReport, RuntimeView, XdsNack, XdsView};
use tern_store::{RuntimeRow, SqlStore, StoreError};
use tracing::warn;

/// How often a replica copies what changed.
const SHARE_EVERY: Duration = Duration::from_secs(2);
/// A view whose only change is new delivery counts is copied at most this
/// often (data planes report every few seconds).
const DELIVERY_EVERY_MS: i64 = 10_000;
/// How often a replica confirms its rows; rows nobody confirmed for
/// [`STALE_MS`] (a replica that died) are removed.
const CONFIRM_EVERY: u32 = 30;
const STALE_MS: i64 = 5 * 60_000;

/// A data plane's last delivery report and when it arrived.
#[derive(Clone)]
struct Reported {
    report: DeliveryReport,
    at: String,
}

/// Where the views are shared, and as which replica.
struct Sharing {
    store: Arc<SqlStore>,
    replica: String,
}

pub struct RuntimeState {
    /// Per (mesh, name): the last report.
    delivery: Mutex<HashMap<Key, Reported>>,
    xds: Arc<tern_xds::XdsHub>,
    sharing: Option<Sharing>,
    /// Plan long-polls waiting now.
    polls: std::sync::atomic::AtomicI64,
    /// Told how long each plan took from its publication to a data plane
    /// that was waiting for it.
    delivered: Option<Arc<dyn Fn(std::time::Duration) + Send + Sync>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl RuntimeState {
    pub fn new(xds: Arc<tern_xds::XdsHub>) -> Self {
        RuntimeState { delivery: Default::default(), xds, sharing: None, polls: Default::default(), delivered: None }
    }

    /// Calls `observer` with each plan's delivery latency.
    pub fn with_delivery_observer(mut self, observer: Arc<dyn Fn(std::time::Duration) + Send + Sync>) -> Self {
        self.delivered = Some(observer);
        self
    }

    /// Shares views with the other replicas on `store` (PostgreSQL), as
    /// `replica`; [`Self::share`] must run for the copying.
    pub fn with_sharing(mut self, store: Arc<SqlStore>, replica: String) -> Self {
        self.sharing = Some(Sharing { store, replica });
        self
    }

    /// Plan long-polls waiting now (data planes following their plans).
    pub fn polls_active(&self) -> i64 {
        self.polls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one waiting long-poll for as long as the guard lives.
    pub(crate) fn poll_started(&self) -> PollGuard<'_> {
        self.polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PollGuard(self)
    }

    /// A plan published at `published` reached a poll that waited for it.
    pub(crate) fn plan_delivered(&self, published: std::time::Instant) {
        if let Some(observe) = &self.delivered {
            observe(published.elapsed());
        }
    }

    pub(crate) fn record_delivery(&self, mesh: &str, name: &str, report: DeliveryReport) {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.delivery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((mesh.into(), name.into()), Reported { report, at });
    }

    /// Delivery counts summed over every data plane, per backend and signal
    /// (what an operator alerts on).
    pub fn delivery_totals(&self) -> std::collections::BTreeMap<(String, String), tern_protocol::SignalDelivery> {
        let mut totals: std::collections::BTreeMap<(String, String), tern_protocol::SignalDelivery> =
            Default::default();
        for reported in self.delivery.lock().unwrap_or_else(|p| p.into_inner()).values() {
            for backend in &reported.report.backends {
                for (signal, d) in &backend.signals {
                    let t = totals.entry((backend.name.clone(), signal.to_string())).or_default();
                    t.received += d.received;
                    t.exported += d.exported;
                    t.retries += d.retries;
                    t.dropped += d.dropped;
                    t.queued_requests += d.queued_requests;
                    t.queued_bytes += d.queued_bytes;
                }
            }
        }
        totals
    }

    /// How many dataplanes have delivery counts kept (for tests of the bound).
    pub fn delivery_entries(&self) -> usize {
        self.delivery.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn replica(&self) -> Option<String> {
        self.sharing.as_ref().map(|s| s.replica.clone())
    }

    /// This replica's own view of one data plane.
    fn local_view(&self, mesh: &str, name: &str) -> RuntimeView {
        let node = tern_xds::node_id(mesh, name);
        let reported =
            self.delivery.lock().unwrap_or_else(|p| p.into_inner()).get(&(mesh.to_string(), name.to_string())).cloned();
        let nack =
            self.xds.nack(&node).map(|n| XdsNack { type_url: n.type_url, version: n.version, message: n.message });
        let changed_at = self.xds.state_changed_ms(&node).and_then(rfc3339_ms);
        RuntimeView {
            delivery_reported_at: reported.as_ref().map(|r| r.at.clone()),
            delivery_replica: reported.as_ref().and_then(|_| self.replica()),
            delivery: reported.map(|r| r.report),
            xds: XdsView {
                acked_version: self.xds.acked_version(&node),
                nack,
                replica: changed_at.as_ref().and_then(|_| self.replica()),
                changed_at,
            },
        }
    }

    /// Every data plane this replica holds something for, with its view.
    fn local_views(&self) -> HashMap<Key, RuntimeView> {
        let mut keys: std::collections::BTreeSet<Key> =
            self.delivery.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for node in self.xds.nodes_with_state() {
            if let Some((mesh, name)) = node.split_once('/') {
                keys.insert((mesh.to_string(), name.to_string()));
            }
        }
        keys.into_iter()
            .map(|(m, n)| {
                let view = self.local_view(&m, &n);
                ((m, n), view)
            })
            .collect()
    }

    /// Copies this replica's views into the shared store every couple of
    /// seconds: the ones that changed (delivery-only changes at most every
    /// 10 s), removals, and a periodic confirmation that also drops the rows
    /// of replicas that died. A database error is logged and the copy is
    /// tried again in full on the next round. Runs until dropped; returns at
    /// once without sharing.
    pub async fn share(self: Arc<Self>) {
        let Some(sharing) = &self.sharing else { return };
        let mut written = Written::default();
        let mut tick = tokio::time::interval(SHARE_EVERY);
        for round in 0u32.. {
            tick.tick().await;
            let now = now_ms();
            let current = self.local_views();
            let (due, gone) = written.due(&current, now);
            let rows: Vec<RuntimeRow> = due.iter().filter_map(|key| sharing.row(key, &current[key], now)).collect();
            match sharing.copy(&rows, &gone, round % CONFIRM_EVERY == 0, now).await {
                Ok(()) => written.record(&current, &due, &gone, now),
                Err(e) => {
                    warn!(error = %e, "cannot share runtime state with the other replicas; trying again");
                    written = Written::default();
                }
            }
        }
    }
}

type Key = (String, String);

/// What this replica last copied, per data plane, and when (ms).
#[derive(Default)]
struct Written(HashMap<Key, (RuntimeView, i64)>);

impl Written {
    /// The data planes of `current` whose views are due for a copy at
    /// `now`, and those this replica holds nothing for any more.
    fn due(&self, current: &HashMap<Key, RuntimeView>, now: i64) -> (Vec<Key>, Vec<Key>) {
        let due = current
            .iter()
            .filter(|(key, view)| match self.0.get(*key) {
                None => true,
                Some((old, _)) if old.xds != view.xds => true,
                Some((old, at)) => old != *view && now - at >= DELIVERY_EVERY_MS,
            })
            .map(|(key, _)| key.clone())
            .collect();
        let gone = self.0.keys().filter(|k| !current.contains_key(*k)).cloned().collect();
        (due, gone)
    }

    fn record(&mut self, current: &HashMap<Key, RuntimeView>, due: &[Key], gone: &[Key], now: i64) {
        for key in due {
            self.0.insert(key.clone(), (current[key].clone(), now));
        }
        for key in gone {
            self.0.remove(key);
        }
    }
}

impl Sharing {
    fn row(&self, (mesh, name): &Key, view: &RuntimeView, now: i64) -> Option<RuntimeRow> {
        Some(RuntimeRow {
            mesh: mesh.clone(),
            name: name.clone(),
            replica: self.replica.clone(),
            seen_ms: now,
            view: serde_json::to_string(view).ok()?,
        })
    }

    async fn copy(&self, rows: &[RuntimeRow], gone: &[Key], confirm: bool, now: i64) -> Result<(), StoreError> {
        self.store.put_runtime(rows).await?;
        self.store.remove_runtime(&self.replica, gone).await?;
        if confirm {
            self.store.confirm_runtime(&self.replica, now, now - STALE_MS).await?;
        }
        Ok(())
    }
}

/// `a` and `b` merged: of each part (delivery counts, xDS state), the newer.
fn newest(a: RuntimeView, b: RuntimeView) -> RuntimeView {
    let (delivery, delivery_reported_at, delivery_replica) = if b.delivery_reported_at > a.delivery_reported_at {
        (b.delivery, b.delivery_reported_at, b.delivery_replica)
    } else {
        (a.delivery, a.delivery_reported_at, a.delivery_replica)
    };
    let xds = if b.xds.changed_at > a.xds.changed_at { b.xds } else { a.xds };
    RuntimeView { delivery, delivery_reported_at, delivery_replica, xds }
}

impl tern_reconcile::DataplaneState for RuntimeState {
    fn retain(&self, mesh: &str, keep: &std::collections::HashSet<&str>) {
        let mut map = self.delivery.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(m, name), _| m != mesh || keep.contains(&name.as_str()));
    }
}

impl tern_api::RuntimeView for RuntimeState {
    fn dataplane<'a>(&'a self, mesh: &'a str, name: &'a str) -> tern_api::BoxFuture<'a, Result<RuntimeView, String>> {
        Box::pin(async move {
            let local = self.local_view(mesh, name);
            let Some(sharing) = &self.sharing else { return Ok(local) };
            let rows = sharing
                .store
                .runtime_of(mesh, name)
                .await
                .map_err(|e| format!("reading the other replicas' runtime state: {e}"))?;
            let others = rows
                .into_iter()
                .filter(|r| r.replica != sharing.replica)
                .filter_map(|r| serde_json::from_str::<RuntimeView>(&r.view).ok());
            Ok(others.fold(local, newest))
        })
    }
}

pub(crate) struct PollGuard<'a>(&'a RuntimeState);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0.polls.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_reconcile::DataplaneState;

    #[test]
    fn delivery_counts_go_with_their_dataplane() {
        let state = RuntimeState::new(Arc::new(tern_xds::XdsHub::default()));
        for name in ["web-1", "web-2"] {
            state.record_delivery("default", name, DeliveryReport::default());
        }
        state.record_delivery("other", "web-1", DeliveryReport::default());
        state.retain("default", &["web-2"].into());
        assert_eq!(state.delivery_entries(), 2, "web-1 of mesh default is gone, other meshes untouched");
        assert!(state.local_view("default", "web-1").delivery.is_none());
        assert!(state.local_view("default", "web-2").delivery.is_some());
    }

    fn view(reported_at: Option<&str>, acked: Option<&str>, changed_at: Option<&str>, replica: &str) -> RuntimeView {
        RuntimeView {
            delivery: reported_at.map(|_| DeliveryReport::default()),
            delivery_reported_at: reported_at.map(String::from),
            delivery_replica: reported_at.map(|_| replica.to_string()),
            xds: XdsView {
                acked_version: acked.map(String::from),
                nack: None,
                changed_at: changed_at.map(String::from),
                replica: changed_at.map(|_| replica.to_string()),
            },
        }
    }

    #[test]
    fn the_newest_of_each_part_wins_across_replicas() {
        // The stream moved from A to B; tern-dp reports to A.
        let a = view(Some("2026-12-01T00:00:09.000Z"), Some("v1"), Some("2026-12-01T00:00:01.000Z"), "a");
        let b = view(None, Some("v2"), Some("2026-12-01T00:00:05.000Z"), "b");
        let merged = newest(a.clone(), b.clone());
        assert_eq!(merged.delivery_replica.as_deref(), Some("a"));
        assert_eq!((merged.xds.acked_version.as_deref(), merged.xds.replica.as_deref()), (Some("v2"), Some("b")));
        assert_eq!(newest(b, a), merged, "the order of the replicas does not matter");
        let empty = RuntimeView::default();
        assert_eq!(newest(empty.clone(), empty.clone()), empty);
    }
}
