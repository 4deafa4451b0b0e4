//! Tern's REST API: Kuma's resource paths over the [`ResourceStore`], JSON
//! bodies, Kuma's error shape listing every violation, warnings in a response
//! field, and `/openapi.json`. See [`router`].

mod apply;
mod auth;
pub mod error;
pub mod openapi;
mod resources;
mod tokens;

use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde_json::json;
use std::sync::Arc;
use tern_store::ResourceStore;

pub use apply::{ApplyRequest, ApplyResponse, ApplyResult};
pub use auth::{WriteAuth, KUBERNETES_READ_ONLY};
pub use error::{ErrorBody, InvalidParameter};

/// What the handlers share.
pub struct ApiState<S> {
    pub store: Arc<S>,
    pub runtime: Option<Arc<dyn RuntimeView>>,
}

/// Live, in-memory facts about a dataplane that are not resources: what its
/// data plane last reported about delivery, and what its Envoy accepted or
/// refused over xDS.
pub trait RuntimeView: Send + Sync {
    /// The data plane's runtime view; an error when part of it cannot be
    /// read (another replica's share, on PostgreSQL).
    fn dataplane<'a>(
        &'a self,
        mesh: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<tern_protocol::RuntimeView, String>>;
}

/// A boxed future that can cross threads, for the traits above.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The API's routes over `store`; `auth` decides who may write; `runtime`
/// answers `GET /meshes/{mesh}/dataplanes/{name}/_runtime`.
pub fn router<S: ResourceStore>(store: Arc<S>, auth: WriteAuth, runtime: Option<Arc<dyn RuntimeView>>) -> Router {
    use resources::*;
    let state = Arc::new(ApiState { store, runtime });
    Router::new()
        .route("/", get(|| async { Json(json!({"product": "Tern", "version": env!("CARGO_PKG_VERSION")})) }))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .route("/_apply", post(apply::apply::<S>))
        .route("/tokens/dataplane", post(tokens::generate_dataplane_token::<S>))
        .route("/tokens/dataplane/revocations", post(tokens::revoke_dataplane_token::<S>))
        .route(
            "/tokens/dataplane/signing-keys",
            get(tokens::list_signing_keys::<S>).post(tokens::rotate_signing_key::<S>),
        )
        .route("/tokens/dataplane/signing-keys/{serial}", axum::routing::delete(tokens::remove_signing_key::<S>))
        .route("/meshes", get(list_meshes::<S>))
        .route("/meshes/{name}", get(get_mesh::<S>).put(put_mesh::<S>).delete(delete_mesh::<S>))
        .route("/tokens/zone", post(tokens::generate_zone_token::<S>))
        .route("/{plural}", get(list_all_meshes::<S>))
        .route("/{plural}/{name}", get(get_global::<S>).put(put_global::<S>).delete(delete_global::<S>))
        .route("/meshes/{mesh}/{plural}", get(list_in_mesh::<S>))
        .route("/meshes/{mesh}/dataplanes/{name}/_runtime", get(dataplane_runtime::<S>))
        .route(
            "/meshes/{mesh}/{plural}/{name}",
            get(get_resource::<S>).put(put_resource::<S>).delete(delete_resource::<S>),
        )
        .layer(middleware::from_fn_with_state(Arc::new(auth), auth::require_token))
        .layer(middleware::map_response(error::kuma_shape))
        .with_state(state)
}
