//! What data planes report while they run (delivery counts), next to what
//! their Envoys did with xDS; kept in memory, read by the API, and dropped
//! with the dataplane.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tern_protocol::{DeliveryReport, RuntimeView, XdsNack, XdsView};

pub struct RuntimeState {
    /// Per (mesh, name): the last report and when it arrived (RFC 3339).
    delivery: Mutex<HashMap<(String, String), (DeliveryReport, String)>>,
    xds: Arc<tern_xds::XdsHub>,
    /// Plan long-polls waiting now.
    polls: std::sync::atomic::AtomicI64,
    /// Told how long each plan took from its publication to a data plane
    /// that was waiting for it.
    delivered: Option<Arc<dyn Fn(std::time::Duration) + Send + Sync>>,
}

impl RuntimeState {
    pub fn new(xds: Arc<tern_xds::XdsHub>) -> Self {
        RuntimeState { delivery: Default::default(), xds, polls: Default::default(), delivered: None }
    }

    /// Calls `observer` with each plan's delivery latency.
    pub fn with_delivery_observer(mut self, observer: Arc<dyn Fn(std::time::Duration) + Send + Sync>) -> Self {
        self.delivered = Some(observer);
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
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.delivery.lock().unwrap_or_else(|p| p.into_inner()).insert((mesh.into(), name.into()), (report, now));
    }

    /// Delivery counts summed over every data plane, per backend and signal
    /// (what an operator alerts on).
    pub fn delivery_totals(&self) -> std::collections::BTreeMap<(String, String), tern_protocol::SignalDelivery> {
        let mut totals: std::collections::BTreeMap<(String, String), tern_protocol::SignalDelivery> =
            Default::default();
        for (report, _) in self.delivery.lock().unwrap_or_else(|p| p.into_inner()).values() {
            for backend in &report.backends {
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
}

impl tern_reconcile::DataplaneState for RuntimeState {
    fn retain(&self, mesh: &str, keep: &std::collections::HashSet<&str>) {
        let mut map = self.delivery.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(m, name), _| m != mesh || keep.contains(&name.as_str()));
    }
}

impl tern_api::RuntimeView for RuntimeState {
    fn dataplane(&self, mesh: &str, name: &str) -> RuntimeView {
        let node = tern_xds::node_id(mesh, name);
        let delivery =
            self.delivery.lock().unwrap_or_else(|p| p.into_inner()).get(&(mesh.to_string(), name.to_string())).cloned();
        let nack =
            self.xds.nack(&node).map(|n| XdsNack { type_url: n.type_url, version: n.version, message: n.message });
        RuntimeView {
            delivery_reported_at: delivery.as_ref().map(|(_, t)| t.clone()),
            delivery: delivery.map(|(d, _)| d),
            xds: XdsView { acked_version: self.xds.acked_version(&node), nack },
        }
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
        use tern_api::RuntimeView as _;
        assert!(state.dataplane("default", "web-1").delivery.is_none());
        assert!(state.dataplane("default", "web-2").delivery.is_some());
    }
}
