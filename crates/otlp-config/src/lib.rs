//! The OTLP configuration engine, shared by the control plane and the data
//! plane so that status and behaviour cannot disagree:
//!
//! - [`env`]: discovery of the nine `OTEL_EXPORTER_OTLP_*` fields per layer;
//! - [`parse`]: values parsed by the OpenTelemetry exporter specification;
//! - [`inventory`]: the secret-free report `tern-dp` sends at bootstrap, and
//!   the only view of the environment the merge reads;
//! - [`merge`]: seed 000's rules (precedence, env modes, overrides,
//!   ambiguity) deciding the source of every field and the signal's state;
//! - [`status`]: seed 001's per-signal status;
//! - [`exporter`]: the final exporter config built from the merge's sources;
//! - [`plan`]: what the control plane sends the data plane.

pub mod env;
pub mod exporter;
pub mod inventory;
pub mod merge;
pub mod parse;
pub mod plan;
pub mod status;

pub use env::{EnvSource, EnvValues, Field, Layer, ProcessEnv, Signal};
pub use exporter::{build_exporter, group_clients, ExporterConfig};
pub use inventory::Inventory;
pub use merge::{
    resolve_backends, resolve_signal, BackendSettings, BackendUse, BlockedReason, Delivery, HeaderSetting,
    HeaderSource, SignalResolution, Source, State, TlsSettings,
};
pub use parse::ParsedEnv;
pub use plan::{AppMetrics, MetricSelector, OtelPlan, PlanBackend, PlanSignal, PrometheusEndpoint, SidecarMetrics};
pub use status::SignalStatus;
