//! xDS for Envoy sidecars: [`snapshot::build`] turns a dataplane, its
//! resolved telemetry and the mesh's service endpoints into listeners,
//! clusters and endpoints (pure); [`server`] serves them over ADS.

pub mod server;
pub mod snapshot;
pub mod telemetry;

pub use server::{node_id, Nack, XdsHub};
pub use snapshot::{build, Dataplane, ServiceEndpoint, ServiceMap, Snapshot};
