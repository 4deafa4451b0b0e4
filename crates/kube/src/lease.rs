//! Leader election among `tern-cp` replicas through a coordination Lease in
//! the system namespace: the holder renews it every [`RENEW_EVERY`]; when it
//! has not for [`LEASE_DURATION`], another replica takes it over. Every
//! replica serves reads, bootstrap, plans and xDS; only the leader writes
//! status and cleans up (the reconciler's leadership gate).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// The Lease's name.
pub const LEASE_NAME: &str = "tern-cp-leader";
/// How long a holder that stopped renewing keeps the lease.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);
/// How often the holder renews, and the others look.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

pub struct LeaderElection {
    api: Api<Lease>,
    identity: String,
}

impl LeaderElection {
    /// Competes as `identity` (unique per replica: its pod name) for the
    /// Lease in `namespace`.
    pub fn new(client: Client, namespace: &str, identity: String) -> Self {
        LeaderElection { api: Api::namespaced(client, namespace), identity }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Keeps `leader` true exactly while this replica holds the Lease. An
    /// apiserver error costs the leadership until the Lease is renewed again
    /// (a leader that cannot renew must assume another took over). Runs
    /// until `leader` has no receivers.
    pub async fn run(self, leader: watch::Sender<bool>) {
        let mut ticks = tokio::time::interval(RENEW_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !leader.is_closed() {
            ticks.tick().await;
            let holds = match self.try_lead().await {
                Ok(holds) => holds,
                Err(e) => {
                    warn!(error = %e, lease = LEASE_NAME, "cannot read or renew the leader lease");
                    false
                }
            };
            let was = leader.send_replace(holds);
            match (was, holds) {
                (false, true) => {
                    info!(identity = %self.identity, lease = LEASE_NAME, "became the leader: writing status")
                }
                (true, false) => warn!(identity = %self.identity, lease = LEASE_NAME, "lost the leadership"),
                _ => {}
            }
        }
    }

    /// Creates, renews or takes over the Lease; whether this replica holds it.
    async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease { metadata: meta(None), spec: Some(self.spec(now, now, 0)) };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !mine && !expired(&spec, now) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = match (mine, &spec.acquire_time) {
            (true, Some(t)) => t.0,
            _ => now,
        };
        let renewed = Lease {
            metadata: meta(lease.metadata.resource_version.clone()),
            spec: Some(self.spec(acquired, now, transitions)),
        };
        conflict_is_false(self.api.replace(LEASE_NAME, &PostParams::default(), &renewed).await)
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}

fn meta(resource_version: Option<String>) -> ObjectMeta {
    ObjectMeta { name: Some(LEASE_NAME.into()), resource_version, ..Default::default() }
}

/// Whether the holder has not renewed within its lease duration.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = &spec.renew_time else { return true };
    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(0)) * 1000;
    renewed.0.as_millisecond() + duration_ms < now.as_millisecond()
}

/// Another replica won the race for this write: not the leader this round.
fn conflict_is_false(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(renewed_ms_ago: i64, duration_s: i32) -> (LeaseSpec, Timestamp) {
        let now = Timestamp::from_millisecond(1_000_000_000).unwrap();
        let renewed = Timestamp::from_millisecond(1_000_000_000 - renewed_ms_ago).unwrap();
        let spec = LeaseSpec {
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(duration_s),
            ..Default::default()
        };
        (spec, now)
    }

    #[test]
    fn a_lease_expires_only_after_its_duration() {
        let (s, now) = spec(9_000, 10);
        assert!(!expired(&s, now));
        let (s, now) = spec(10_001, 10);
        assert!(expired(&s, now));
        assert!(expired(&LeaseSpec::default(), now), "a lease never renewed is free");
    }
}
