//! A signal's queue, and the room where requests wait for it.
//!
//! [`QueueLimits`]' bounds are the queue's. With a wait set, a waiting room
//! of one eighth of each bound ([`WAITING_SHARE`]) stands in front of it: a
//! request that finds the queue full takes a place in the waiting room and
//! waits, up to the wait, for room in the queue, so its sender is held (and
//! Envoy keeps the export in flight) instead of refused. Only when the
//! waiting room is full too, or the wait runs out, is the request refused.
//!
//! Where a waiting request's bytes live: in the [`Payload`] the server has
//! already read, held by the request's own future (boxed once per request
//! by `Receiver::call`, wait or no wait). Waiting adds no allocation: the semaphore's waiter node
//! and the timer entry are inline in that future, and the waiting room's
//! permits count the payload's bytes and the request itself. So memory stays
//! within the bounds plus one eighth, whatever the load: queued (and being
//! sent) <= `bytes` and `requests`, waiting <= an eighth of each.

use crate::wire::Payload;
use crate::QueueLimits;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// The waiting room is `1 / WAITING_SHARE` of each bound, on top of it.
/// Senders that wait for their answer before sending again (the
/// OpenTelemetry SDKs and Collector, load tools) need one place per
/// connection, a few dozen at most; senders that do not (Envoy) gain only the
/// waiting room's bytes, so it is kept small: memory under overload stays
/// within the bounds plus 12.5%.
pub const WAITING_SHARE: usize = 8;

/// A request in a signal's queue, holding its place and its share of the
/// queue's byte budget until it is delivered or dropped (a request being
/// sent still counts against the bounds).
pub struct Queued {
    pub payload: Payload,
    _place: OwnedSemaphorePermit,
    _budget: OwnedSemaphorePermit,
}

/// Room for one request in the queue: its place and its bytes.
pub struct Room {
    place: OwnedSemaphorePermit,
    budget: OwnedSemaphorePermit,
}

/// Requests and bytes, as permits: one per request, one per byte.
struct Bounded {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    limits: (usize, usize),
}

impl Bounded {
    fn new(requests: usize, bytes: usize) -> Self {
        Bounded {
            requests: Arc::new(Semaphore::new(requests)),
            bytes: Arc::new(Semaphore::new(bytes)),
            limits: (requests, bytes),
        }
    }

    /// Requests and bytes held now.
    fn held(&self) -> (u64, u64) {
        (
            self.limits.0.saturating_sub(self.requests.available_permits()) as u64,
            self.limits.1.saturating_sub(self.bytes.available_permits()) as u64,
        )
    }
}

/// Why a request did not get into the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// Larger than the queue's whole byte bound: it never fits.
    TooLarge { len: usize, limit: usize },
    /// The queue is full and the request may not wait (no wait set, or it
    /// is larger than the waiting room).
    Full,
    /// The queue is full and so is the waiting room.
    WaitingRoomFull,
    /// Waited this long and the queue stayed full.
    TimedOut(Duration),
    /// The export loop is gone (the pipe is being replaced).
    Closed,
}

/// Requests and bytes in a queue now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fill {
    /// Queued or being sent.
    pub queued_requests: u64,
    pub queued_bytes: u64,
    /// Read by the server, waiting for room in the queue.
    pub waiting_requests: u64,
    pub waiting_bytes: u64,
}

/// A signal's queue: the channel to its export loop, its bounds, and the
/// waiting room in front of it.
pub struct Queue {
    tx: mpsc::Sender<Queued>,
    queue: Bounded,
    /// Never waited on: a request takes a place here at once or is refused.
    waiting: Bounded,
    wait: Duration,
}

impl Queue {
    /// A queue feeding `tx` (whose capacity must be at least
    /// `limits.requests`), with the queue and the waiting room [`split`]
    /// gives.
    pub fn new(tx: mpsc::Sender<Queued>, limits: QueueLimits) -> Self {
        let (queue, waiting) = split(limits);
        Queue {
            tx,
            queue: Bounded::new(queue.0, queue.1),
            waiting: Bounded::new(waiting.0, waiting.1),
            wait: limits.wait,
        }
    }

    pub fn fill(&self) -> Fill {
        let (queued_requests, queued_bytes) = self.queue.held();
        let (waiting_requests, waiting_bytes) = self.waiting.held();
        Fill { queued_requests, queued_bytes, waiting_requests, waiting_bytes }
    }

    /// Room for `len` bytes in the queue now, without waiting.
    pub fn try_room(&self, len: usize) -> Result<Room, NoRoom> {
        let limit = self.queue.limits.1;
        let bytes = u32::try_from(len).ok().filter(|_| len <= limit).ok_or(NoRoom::TooLarge { len, limit })?;
        let place = self.queue.requests.clone().try_acquire_owned().map_err(|_| NoRoom::Full)?;
        let budget = self.queue.bytes.clone().try_acquire_many_owned(bytes).map_err(|_| NoRoom::Full)?;
        Ok(Room { place, budget })
    }

    /// Room for `len` bytes in the queue, waiting for it up to the wait in
    /// the waiting room when the queue is full. Waiters are served in order
    /// of arrival (tokio's semaphores are fair). Cancel-safe: a waiter
    /// dropped mid-wait gives back everything it held.
    pub async fn room(&self, len: usize) -> Result<Room, NoRoom> {
        match self.try_room(len) {
            Err(NoRoom::Full) => {}
            other => return other,
        }
        let _waiting = self.waiting_place(len)?;
        let bytes = u32::try_from(len).map_err(|_| NoRoom::Full)?; // checked by try_room
        let acquire = async {
            let place = self.queue.requests.clone().acquire_owned().await.map_err(|_| NoRoom::Closed)?;
            let budget = self.queue.bytes.clone().acquire_many_owned(bytes).await.map_err(|_| NoRoom::Closed)?;
            Ok(Room { place, budget })
        };
        tokio::time::timeout(self.wait, acquire).await.map_err(|_| NoRoom::TimedOut(self.wait))?
    }

    /// A place and `len` bytes in the waiting room, held while the request
    /// waits.
    fn waiting_place(&self, len: usize) -> Result<(SemaphorePermit<'_>, SemaphorePermit<'_>), NoRoom> {
        let (places, limit) = self.waiting.limits;
        let bytes = u32::try_from(len).ok().filter(|_| places > 0 && len <= limit).ok_or(NoRoom::Full)?;
        let place = self.waiting.requests.try_acquire().map_err(|_| NoRoom::WaitingRoomFull)?;
        let held = self.waiting.bytes.try_acquire_many(bytes).map_err(|_| NoRoom::WaitingRoomFull)?;
        Ok((place, held))
    }

    /// Hands a request with its room to the export loop.
    pub fn push(&self, payload: Payload, room: Room) -> Result<(), NoRoom> {
        let queued = Queued { payload, _place: room.place, _budget: room.budget };
        match self.tx.try_send(queued) {
            Ok(()) => Ok(()),
            // The channel holds as many requests as the queue's bound.
            Err(TrySendError::Full(_)) => Err(NoRoom::Full),
            Err(TrySendError::Closed(_)) => Err(NoRoom::Closed),
        }
    }
}

/// `(requests, bytes)` of the queue and of the waiting room. The queue has
/// the bounds; with a wait, the waiting room has `1 / WAITING_SHARE` of each
/// (none if the request bound is under `WAITING_SHARE`, as a room for no
/// request is no room).
pub fn split(limits: QueueLimits) -> ((usize, usize), (usize, usize)) {
    let queue = (limits.requests, limits.bytes);
    let waiting_requests = limits.requests / WAITING_SHARE;
    if limits.wait.is_zero() || waiting_requests == 0 {
        return (queue, (0, 0));
    }
    (queue, (waiting_requests, limits.bytes / WAITING_SHARE))
}

#[cfg(test)]
mod tests;
