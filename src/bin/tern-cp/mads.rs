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

/// Requires `Authorization: Bearer <token>` (the API token) on every request.
pub fn with_token(router: axum::Router, token: String) -> axum::Router {
    let token = Arc::new(token);
    router.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let token = token.clone();
        async move {
            let given = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            if tern_tokens::bearer(given) == Some(token.as_str()) {
                next.run(req).await
            } else {
                let body =
                    "MADS beyond loopback needs `authorization: {credentials: <the API token>}` in kuma_sd_configs\n";
                (axum::http::StatusCode::UNAUTHORIZED, body).into_response()
            }
        }
    }))
}

use axum::response::IntoResponse;
