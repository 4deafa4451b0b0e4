//! What a data plane told the control plane at bootstrap, kept in its
//! `DataplaneInsight` spec.

use serde::{Deserialize, Serialize};
use tern_otlp_config::Inventory;

/// The feature a data plane advertises when it runs the OTLP pipe.
pub const OTEL_PIPE_FEATURE: &str = "feature-otel-via-kuma-dp";

/// The feature a data plane advertises when `tern-dp` reads Envoy's records
/// for MeshAccessLog `tcp` backends from [`access_log_fifo`].
pub const ACCESS_LOG_FIFO_FEATURE: &str = "feature-tcp-access-log-via-tern-dp";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Session {
    /// `tern-dp` version.
    pub version: String,
    #[serde(default)]
    pub features: Vec<String>,
    /// The data plane's working directory; sockets are opened inside it.
    pub work_dir: String,
    /// Key presence only (see `tern_otlp_config::inventory`).
    #[serde(default)]
    pub otel_env: Inventory,
    /// When the data plane last registered (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_time: Option<String>,
}

impl Session {
    pub fn supports_otel_pipe(&self) -> bool {
        self.features.iter().any(|f| f == OTEL_PIPE_FEATURE)
    }

    /// Reads the session from a DataplaneInsight spec, if it holds one.
    pub fn from_insight_spec(spec: &serde_json::Value) -> Option<Session> {
        serde_json::from_value(spec.get("session")?.clone()).ok()
    }

    /// The FIFO Envoy writes `tcp` access log records to, if `tern-dp` reads one.
    pub fn access_log_fifo(&self) -> Option<String> {
        self.features.iter().any(|f| f == ACCESS_LOG_FIFO_FEATURE).then(|| access_log_fifo(&self.work_dir))
    }

    /// The socket the data plane opens for a backend (see [`socket_path`]).
    pub fn socket_path(&self, backend: &str) -> String {
        socket_path(&self.work_dir, backend)
    }
}

/// The socket a data plane opens for a backend, inside its work directory,
/// within the 107 bytes a Unix socket path may have. `tern-dp` computes it
/// from its own work directory; the control plane from what the data plane
/// reported, for Envoy's pipe clusters.
pub fn socket_path(work_dir: &str, backend: &str) -> String {
    let clean: String =
        backend.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    let path = format!("{}/otel-{clean}.sock", work_dir.trim_end_matches('/'));
    if path.len() <= 107 {
        return path;
    }
    let hash = clean.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{}/otel-{hash:016x}.sock", work_dir.trim_end_matches('/'))
}

/// The FIFO `tern-dp` creates in its work directory for Envoy's `tcp` access
/// log records: one JSON object per line, `{"address": ..., "message": ...}`.
pub fn access_log_fifo(work_dir: &str) -> String {
    format!("{}/access-logs.fifo", work_dir.trim_end_matches('/'))
}
