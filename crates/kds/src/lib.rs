//! Multi-zone: a global control plane and zone control planes kept in sync
//! over long-lived gRPC streams (Kuma's KDS shape: two bidirectional streams
//! of delta xDS messages), with Kuma's resource semantics: what travels which
//! way and how it is named and labelled ([`mapping`], [`hash`]), what each
//! side may write ([`guard`]), the global's server with zone tokens and
//! ZoneInsights ([`global`]) and the zone's client ([`zone`]).
//!
//! Invariants:
//! - a subscription carries what the subscriber already holds, so a
//!   (re)connect sends exactly the difference: nothing lost, nothing twice;
//! - the receiving side replaces or removes only what came from that peer
//!   (origin labels); anything else is a NACK, never an overwrite;
//! - a zone cut off from the global keeps its store and keeps serving.

pub mod global;
pub mod guard;
mod hash;
pub mod mapping;
mod receive;
mod send;
mod stats;
pub mod wire;
pub mod zone;

pub use global::{Global, GlobalConfig};
pub use guard::{OriginGuard, Role};
pub use hash::hashed_name;
pub use receive::{decode, receive, Inbox};
pub use send::{send, Outbox, NACK_BACKOFF};
pub use stats::StreamStats;
pub use zone::ZoneConfig;

use tern_model::Kind;
use tern_store::StoreError;

/// Why a sync stream ended.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{}", status_text(.0))]
    Stream(tonic::Status),
    #[error("the peer broke the sync protocol: {0}")]
    Protocol(String),
    #[error("reading the store: {0}")]
    Store(StoreError),
    #[error("the store's change feed closed")]
    FeedClosed,
    #[error("the stream closed")]
    Closed,
}

fn status_text(s: &tonic::Status) -> String {
    format!("{} ({:?})", s.message(), s.code())
}

const TYPE_PREFIX: &str = "tern.kds.v1/";

/// The `type_url` of a kind's messages.
pub fn type_url(kind: Kind) -> String {
    format!("{TYPE_PREFIX}{}", kind.name())
}

/// The kind a `type_url` names.
pub fn kind_of_type_url(url: &str) -> Option<Kind> {
    url.strip_prefix(TYPE_PREFIX).and_then(Kind::from_name)
}

/// Metadata a zone sends on every call.
pub mod metadata {
    pub const ZONE: &str = "tern-zone";
    pub const INSTANCE: &str = "tern-zone-instance";
    pub const SESSION: &str = "tern-session";
    pub const VERSION: &str = "tern-version";
    pub const BACKEND: &str = "tern-zone-backend";
}
