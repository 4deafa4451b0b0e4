//! Delivery counters per backend and signal: what arrived, what reached the
//! collector, what was retried and what had to be dropped, and the last error.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct SignalStats {
    received: AtomicU64,
    exported: AtomicU64,
    retries: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    pub received: u64,
    pub exported: u64,
    pub retries: u64,
    pub dropped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl SignalStats {
    pub fn received(&self, items: u64) {
        self.received.fetch_add(items, Ordering::Relaxed);
    }

    pub fn exported(&self, items: u64) {
        self.exported.fetch_add(items, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, items: u64) {
        self.dropped.fetch_add(items, Ordering::Relaxed);
    }

    pub fn error(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}
