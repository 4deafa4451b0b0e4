//! Monitoring assignments for Prometheus (`--mads-addr`, Kuma's port 5676):
//! the data planes in the store joined with their plans' Prometheus
//! endpoints. Plain HTTP on loopback; beyond it, HTTPS and the API token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tern_mads::{AssignmentSource, Endpoints, MonitoringAssignment};
use tern_model::Kind;
use tern_reconcile::PlanHub;
use tern_store::{ListFilter, ResourceStore};

pub struct Source<S> {
    pub store: Arc<S>,
    pub hub: Arc<PlanHub>,
}

impl<S: ResourceStore> AssignmentSource for Source<S> {
    fn current(
        &self,
        client: String,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<MonitoringAssignment>, String>> + Send + '_>> {
        Box::pin(async move {
            let endpoints: Endpoints = self.hub.prometheus_endpoints().into_iter().collect();
            if endpoints.is_empty() {
                return Ok(Vec::new());
            }
            let dataplanes =
                self.store.list(Kind::Dataplane, &ListFilter::default()).await.map_err(|e| e.to_string())?;
            Ok(tern_mads::assignments(&client, &dataplanes, &endpoints))
        })
    }
}
