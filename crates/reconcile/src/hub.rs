//! Where plans wait for their data planes: one watch channel per dataplane,
//! with a version that moves only when the plan's content changes.

use std::collections::HashMap;
use std::sync::Mutex;
use tern_otlp_config::OtelPlan;
use tokio::sync::watch;

/// A plan as delivered: version, content and the notes that go with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanState {
    /// 0 until the first plan is computed.
    pub version: u64,
    pub plan: OtelPlan,
    pub notes: Vec<String>,
    /// When this version was published (`None` before the first).
    pub published: Option<std::time::Instant>,
}

type Key = (String, String);

/// Latest plan per (mesh, dataplane).
pub struct PlanHub {
    channels: Mutex<HashMap<Key, watch::Sender<PlanState>>>,
    /// First version this process hands out: the start time in milliseconds,
    /// so versions keep rising across control-plane restarts and a data
    /// plane never mistakes a new plan for the one it holds.
    base: u64,
}

impl Default for PlanHub {
    fn default() -> Self {
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        PlanHub { channels: Mutex::new(HashMap::new()), base }
    }
}

impl PlanHub {
    fn next(&self, current: u64) -> u64 {
        if current == 0 {
            self.base
        } else {
            current + 1
        }
    }

    fn sender(&self, mesh: &str, name: &str) -> watch::Sender<PlanState> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((mesh.to_string(), name.to_string()))
            .or_insert_with(|| watch::channel(PlanState::default()).0)
            .clone()
    }

    /// Whether a plan was computed for this dataplane (it is registered:
    /// resolution covers only dataplanes with a session).
    pub fn knows(&self, mesh: &str, name: &str) -> bool {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(mesh.to_string(), name.to_string())).is_some_and(|tx| tx.borrow().version != 0)
    }

    /// Follows one dataplane's plan.
    pub fn subscribe(&self, mesh: &str, name: &str) -> watch::Receiver<PlanState> {
        self.sender(mesh, name).subscribe()
    }

    /// Publishes a plan; returns the new version if it changed anything.
    pub fn publish(&self, mesh: &str, name: &str, plan: OtelPlan, notes: Vec<String>) -> Option<u64> {
        let tx = self.sender(mesh, name);
        let mut published = None;
        tx.send_if_modified(|state| {
            if state.version > 0 && state.plan == plan && state.notes == notes {
                return false;
            }
            let now = Some(std::time::Instant::now());
            *state = PlanState { version: self.next(state.version), plan, notes, published: now };
            published = Some(state.version);
            true
        });
        published
    }

    /// Every dataplane's Prometheus endpoints, as its current plan has them
    /// (those with none left out).
    pub fn prometheus_endpoints(&self) -> Vec<((String, String), Vec<tern_otlp_config::PrometheusEndpoint>)> {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter_map(|(key, tx)| {
                let state = tx.borrow();
                (!state.plan.prometheus.is_empty()).then(|| (key.clone(), state.plan.prometheus.clone()))
            })
            .collect()
    }

    /// Forgets dataplanes of `mesh` not in `keep` (deleted ones), giving
    /// their followers an empty plan first.
    pub fn retain(&self, mesh: &str, keep: &std::collections::HashSet<&str>) {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(m, name), tx| {
            let kept = m != mesh || keep.contains(&name.as_str());
            if !kept {
                tx.send_modify(|s| *s = PlanState { version: s.version.max(self.base) + 1, ..PlanState::default() });
            }
            kept
        });
    }
}
