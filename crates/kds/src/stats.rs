//! Counts of one sync stream, shared with whoever reports them (the
//! global's ZoneInsight, the zone's logs).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tern_model::Kind;
use tern_protocol::KdsCounts;

#[derive(Debug, Default)]
pub struct StreamStats {
    sent: AtomicU64,
    acknowledged: AtomicU64,
    rejected: AtomicU64,
    bytes: AtomicU64,
    per_kind: Mutex<BTreeMap<String, KdsCounts>>,
    last_error: Mutex<Option<String>>,
    /// Seconds since the epoch of the last message either way.
    last_update: AtomicU64,
}

#[derive(Clone, Copy)]
enum Count {
    Sent,
    Acknowledged,
    Rejected,
}

impl StreamStats {
    fn count(&self, kind: Kind, what: Count) {
        let (total, field): (&AtomicU64, fn(&mut KdsCounts) -> &mut u64) = match what {
            Count::Sent => (&self.sent, |c| &mut c.responses_sent),
            Count::Acknowledged => (&self.acknowledged, |c| &mut c.responses_acknowledged),
            Count::Rejected => (&self.rejected, |c| &mut c.responses_rejected),
        };
        total.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut per_kind) = self.per_kind.lock() {
            *field(per_kind.entry(kind.name().to_string()).or_default()) += 1;
        }
        self.last_update.store(tern_tokens::now_secs(), Ordering::Relaxed);
    }

    /// A response of `bytes` (encoded) went over the stream.
    pub fn sent(&self, kind: Kind, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if let Ok(mut per_kind) = self.per_kind.lock() {
            per_kind.entry(kind.name().to_string()).or_default().bytes += bytes as u64;
        }
        self.count(kind, Count::Sent)
    }

    pub fn acknowledged(&self, kind: Kind) {
        self.count(kind, Count::Acknowledged)
    }

    pub fn rejected(&self, kind: Kind, error: &str) {
        self.count(kind, Count::Rejected);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_string());
        }
    }

    pub fn totals(&self) -> KdsCounts {
        KdsCounts {
            responses_sent: self.sent.load(Ordering::Relaxed),
            responses_acknowledged: self.acknowledged.load(Ordering::Relaxed),
            responses_rejected: self.rejected.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    pub fn per_kind(&self) -> BTreeMap<String, KdsCounts> {
        self.per_kind.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Seconds since the epoch, 0 before anything went over the stream.
    pub fn last_update(&self) -> u64 {
        self.last_update.load(Ordering::Relaxed)
    }
}
