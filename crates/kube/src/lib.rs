//! Tern on Kubernetes. The control plane's parts are the same as on
//! Universal; what changes is where resources live and how they arrive:
//!
//! - `resources.rs`: where each kind lives in the apiserver (CRDs of
//!   `kuma.io/v1alpha1`; global secrets as Secrets), Kuma's `NAME.NAMESPACE`
//!   naming, and the conversion between objects and stored resources;
//! - `store.rs`: [`KubeStore`], the apiserver as the `ResourceStore`
//!   (resourceVersion for versions and 409s, the status subresource, a watch
//!   on every kind as the change feed);
//! - `crd.rs`: the CRDs, generated from the specs' Rust types;
//! - `webhook.rs`: the validating admission webhook (Universal's validator,
//!   every violation at once), the sidecar injector's route, and their
//!   registration with the apiserver;
//! - `inject.rs`: the sidecar injector (the `tern-dp` container, `HOST_IP`,
//!   the application's `OTEL_EXPORTER_OTLP_*`);
//! - `auth.rs`: data planes in Pods authenticated by their ServiceAccount
//!   token (TokenReview), beside data-plane tokens;
//! - `lease.rs`: leader election among replicas through a coordination Lease;
//! - `pods.rs`: Dataplanes from Pods and the Services that select them;
//! - `install.rs`: the manifests `ternctl install control-plane` prints.

pub mod auth;
pub mod crd;
pub mod inject;
pub mod install;
pub mod lease;
pub mod pods;
pub mod resources;
pub mod store;
pub mod webhook;

pub use store::KubeStore;
// The client library, for the binaries that connect (one version for all).
pub use k8s_openapi;
pub use kube;
