//! The queue's wait under paused time: counts, never timings.

use super::{split, Fill};
use crate::receiver::{Queue, Queued, Route, Routes};
use crate::stats::SignalStats;
use crate::wire::Payload;
use crate::QueueLimits;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_otlp_config::Signal;
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};

const REQUEST_BYTES: usize = 1000;

/// 64 requests of 1000 bytes: the queue holds 64, the waiting room 8 more.
fn limits(wait: Duration) -> QueueLimits {
    QueueLimits { requests: 64, bytes: 64 * REQUEST_BYTES, wait }
}

fn payload() -> Payload {
    Payload { signal: Signal::Traces, bytes: Bytes::from(vec![0u8; REQUEST_BYTES]), items: 1 }
}

/// Routes whose traces go to a queue with `limits`; the other signals are
/// unavailable.
fn routes(limits: QueueLimits) -> (Arc<Routes>, mpsc::Receiver<Queued>, Arc<SignalStats>) {
    let (tx, rx) = mpsc::channel(limits.requests);
    let stats = Arc::new(SignalStats::default());
    let unavailable = || Route::Unavailable { reason: "test".into(), stats: Arc::default() };
    let routes = Routes {
        traces: Route::Queue { queue: Queue::new(tx, limits), stats: stats.clone() },
        metrics: unavailable(),
        logs: unavailable(),
        logs_resource: None,
    };
    (Arc::new(routes), rx, stats)
}

/// The most the queue and its waiting room held at any point observed.
#[derive(Default)]
struct Peaks(Mutex<Fill>);

impl Peaks {
    fn observe(&self, routes: &Routes) {
        let now = routes.fill(Signal::Traces);
        let mut peak = self.0.lock().expect("peaks");
        peak.queued_requests = peak.queued_requests.max(now.queued_requests);
        peak.queued_bytes = peak.queued_bytes.max(now.queued_bytes);
        peak.waiting_requests = peak.waiting_requests.max(now.waiting_requests);
        peak.waiting_bytes = peak.waiting_bytes.max(now.waiting_bytes);
        let held = now.queued_bytes + now.waiting_bytes;
        assert!(held <= 72 * REQUEST_BYTES as u64, "{held} bytes held, over the bound and its waiting room");
    }

    fn get(&self) -> Fill {
        *self.0.lock().expect("peaks")
    }
}

/// A collector that accepts one request every `interval`, holding it (and
/// its room in the queue) while it does, as an export does. Returns the
/// items it took once the queue's sender side is gone.
fn slow_sink(
    mut rx: mpsc::Receiver<Queued>,
    interval: Duration,
    routes: Arc<Routes>,
    peaks: Arc<Peaks>,
) -> tokio::task::JoinHandle<u64> {
    let routes = Arc::downgrade(&routes);
    tokio::spawn(async move {
        let mut taken = 0;
        while let Some(queued) = rx.recv().await {
            if let Some(routes) = routes.upgrade() {
                peaks.observe(&routes);
            }
            sleep(interval).await;
            taken += queued.payload.items;
        }
        taken
    })
}

/// `senders` senders, each sending `each` requests on its own schedule (one
/// every `interval`) and waiting for each answer before the next, as the
/// OpenTelemetry SDKs and load tools do. Returns the requests refused.
async fn burst(routes: &Arc<Routes>, senders: usize, each: usize, interval: Duration, peaks: &Arc<Peaks>) -> u64 {
    let refused = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            let (routes, refused, peaks) = (routes.clone(), refused.clone(), peaks.clone());
            tokio::spawn(async move {
                let mut next = Instant::now();
                for _ in 0..each {
                    sleep_until(next).await;
                    next += interval;
                    if routes.accept(payload()).await.is_err() {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    peaks.observe(&routes);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("sender");
    }
    refused.load(Ordering::Relaxed)
}

/// One second at twice the collector's rate: 200 requests where the sink
/// takes 100 a second, so 100 more than the sink takes arrive, more than the
/// queue's 64. With the wait, senders are held and every request reaches
/// the collector; without it, the overflow is refused (the old behaviour,
/// which this test must show to mean anything).
#[tokio::test(start_paused = true)]
async fn a_burst_within_the_bound_is_delivered_completely() {
    for (wait, expect_loss) in [(Duration::from_secs(5), false), (Duration::ZERO, true)] {
        let (routes, rx, stats) = routes(limits(wait));
        let peaks = Arc::new(Peaks::default());
        let sink = slow_sink(rx, Duration::from_millis(10), routes.clone(), peaks.clone());
        let refused = burst(&routes, 8, 25, Duration::from_millis(40), &peaks).await;
        drop(routes); // the sink ends once the queue is empty
        let delivered = sink.await.expect("sink");
        let counts = stats.snapshot();
        assert_eq!(counts.received, 200, "wait {wait:?}");
        assert_eq!(delivered + counts.dropped, 200, "wait {wait:?}: every request delivered or counted");
        assert_eq!(counts.dropped, refused, "wait {wait:?}: every refusal counted");
        let peak = peaks.get();
        if expect_loss {
            assert!(refused > 0, "without a wait the burst overflows the queue");
            assert_eq!(peak.waiting_requests, 0);
        } else {
            assert_eq!(refused, 0, "with the wait nothing is refused");
            assert_eq!(delivered, 200);
            assert!(peak.waiting_requests > 0, "the burst made senders wait: {peak:?}");
            assert!(peak.waiting_requests <= 8 && peak.waiting_bytes <= 8 * REQUEST_BYTES as u64, "{peak:?}");
        }
        assert!(peak.queued_requests <= 64 && peak.queued_bytes <= 64 * REQUEST_BYTES as u64, "{peak:?}");
    }
}

/// A collector that takes 10 requests a second, and senders that do not
/// wait for answers (as Envoy) sending 100 a second for 20 s: the queue and
/// the waiting room fill, the rest is refused at once or after the wait,
/// and every refusal is counted; the bytes held never pass the bound.
#[tokio::test(start_paused = true)]
async fn a_sustained_overload_is_refused_and_counted_within_the_bound() {
    let wait = Duration::from_secs(5);
    let (routes, rx, stats) = routes(limits(wait));
    let peaks = Arc::new(Peaks::default());
    let sink = slow_sink(rx, Duration::from_millis(100), routes.clone(), peaks.clone());
    let refused = Arc::new(AtomicU64::new(0));
    let mut exports = tokio::task::JoinSet::new();
    let mut next = Instant::now();
    for _ in 0..2000 {
        sleep_until(next).await;
        next += Duration::from_millis(10);
        peaks.observe(&routes);
        let (routes, refused) = (routes.clone(), refused.clone());
        exports.spawn(async move {
            if routes.accept(payload()).await.is_err() {
                refused.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while exports.join_next().await.is_some() {
        peaks.observe(&routes);
    }
    drop(routes);
    let delivered = sink.await.expect("sink");
    let counts = stats.snapshot();
    let refused = refused.load(Ordering::Relaxed);
    assert_eq!(counts.received, 2000);
    assert_eq!(counts.dropped, refused, "every refusal counted");
    assert_eq!(delivered + refused, 2000, "nothing lost uncounted");
    assert!(refused > 1000, "sustained overload is refused: {refused}");
    let peak = peaks.get();
    assert_eq!((peak.queued_requests, peak.queued_bytes), (64, 64 * REQUEST_BYTES as u64), "{peak:?}");
    assert_eq!((peak.waiting_requests, peak.waiting_bytes), (8, 8 * REQUEST_BYTES as u64), "{peak:?}");
}

/// A sender that gives up while its request waits (the connection closes,
/// so tonic drops the call) leaves nothing behind: its items are counted as
/// dropped and its place in the waiting room is free again.
#[tokio::test(start_paused = true)]
async fn a_waiter_given_up_by_its_sender_is_counted_and_leaves_the_room() {
    let (routes, _rx, stats) = routes(limits(Duration::from_secs(5)));
    for _ in 0..64 {
        routes.accept(payload()).await.expect("room in the queue");
    }
    let waiter = tokio::spawn({
        let routes = routes.clone();
        async move { routes.accept(payload()).await }
    });
    sleep(Duration::from_secs(1)).await;
    assert_eq!(routes.fill(Signal::Traces).waiting_requests, 1);
    waiter.abort();
    assert!(waiter.await.expect_err("aborted").is_cancelled());
    assert_eq!(routes.fill(Signal::Traces).waiting_requests, 0);
    assert_eq!(routes.fill(Signal::Traces).waiting_bytes, 0);
    assert_eq!((stats.snapshot().received, stats.snapshot().dropped), (65, 1));

    // The wait runs out: refused and counted.
    let status = routes.accept(payload()).await.expect_err("the queue stayed full");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("stayed full for 5s"), "{}", status.message());
    assert_eq!(stats.snapshot().dropped, 2);
}

/// Requests made inside the data plane never wait.
#[tokio::test(start_paused = true)]
async fn accept_now_refuses_at_once_when_full() {
    let (routes, _rx, stats) = routes(limits(Duration::from_secs(5)));
    for _ in 0..64 {
        routes.accept_now(payload()).expect("room in the queue");
    }
    let status = routes.accept_now(payload()).expect_err("full");
    assert!(status.message().contains("queue is full"), "{}", status.message());
    assert_eq!(stats.snapshot().dropped, 1);
}

#[test]
fn the_waiting_room_is_an_eighth_of_each_bound_and_only_with_a_wait() {
    let wait = Duration::from_secs(1);
    let l = |requests, bytes, wait| QueueLimits { requests, bytes, wait };
    assert_eq!(split(l(1024, 16 << 20, wait)), ((1024, 16 << 20), (128, 2 << 20)));
    assert_eq!(split(l(1024, 16 << 20, Duration::ZERO)), ((1024, 16 << 20), (0, 0)));
    // Too few requests to keep one for waiting: the queue keeps them all.
    assert_eq!(split(l(7, 1 << 20, wait)), ((7, 1 << 20), (0, 0)));
}
