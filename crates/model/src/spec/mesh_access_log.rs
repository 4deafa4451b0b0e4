//! `MeshAccessLog`: where a dataplane's access log records go and what they carry.

use super::policy::{
    check_backend_type, validate_otel_block, BackendRef, OtelBackendBlock, PolicyCheck, TargetRef,
    ACCESS_LOG_FROM_KINDS, ACCESS_LOG_TO_KINDS, SUPPORTED_TARGET_KINDS,
};
use crate::violation::FieldPath;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshAccessLogSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Proxy-wide configuration, as seed 000 writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<AccessLogConf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<AccessLogRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<AccessLogTargeted>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<AccessLogTargeted>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogRule {
    #[serde(default)]
    pub default: AccessLogConf,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogTargeted {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub default: AccessLogConf,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<AccessLogBackend>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogBackend {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<AccessLogOtelBackend>,
}

/// Kuma's `file` backend: records appended to a file (`/dev/stdout` too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileBackend {
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AccessLogFormat>,
}

/// Kuma's `tcp` backend: records sent as lines to `address`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpBackend {
    #[serde(default)]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AccessLogFormat>,
}

/// A record's format: `Plain` (one Envoy format string) or `Json` (keys
/// and Envoy command operators).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogFormat {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Vec<KeyValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omit_empty_values: Option<bool>,
}

/// The OpenTelemetry block of a MeshAccessLog backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogOtelBackend {
    /// Deprecated inline `host:port`; use `backendRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<BackendRef>,
    /// Attributes on each record; values may use Envoy command operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Vec<KeyValue>>,
    /// The record body: any JSON value, strings may use Envoy command operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// Tern extension: resource attributes, values with `{{key}}`
    /// interpolation from the data plane (see [`super::resource`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_attributes: Option<Vec<super::mesh_access_log::KeyValue>>,
}

impl OtelBackendBlock for AccessLogOtelBackend {
    fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }
    fn backend_ref(&self) -> Option<&BackendRef> {
        self.backend_ref.as_ref()
    }
    fn resource_attributes(&self) -> &[super::mesh_access_log::KeyValue] {
        self.resource_attributes.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyValue {
    /// Missing reads as empty, so Kuma's own messages name it (`key cannot
    /// be empty`, `must be defined` for an attribute).
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: String,
}

const ACCESS_LOG_BACKEND_TYPES: &[&str] = &["Tcp", "File", "OpenTelemetry"];

impl MeshAccessLogSpec {
    /// Every `(path, conf)` pair in the policy: `default`, `rules[i].default`,
    /// `to[i].default`, `from[i].default`.
    pub fn confs(&self) -> Vec<(FieldPath, &AccessLogConf)> {
        let spec = FieldPath::root("spec");
        let mut out = Vec::new();
        if let Some(c) = &self.default {
            out.push((spec.field("default"), c));
        }
        for (field, list) in [("to", &self.to), ("from", &self.from)] {
            for (i, t) in list.iter().flatten().enumerate() {
                out.push((spec.field(field).index(i).field("default"), &t.default));
            }
        }
        for (i, r) in self.rules.iter().flatten().enumerate() {
            out.push((spec.field("rules").index(i).field("default"), &r.default));
        }
        out
    }

    pub fn validate(&self) -> PolicyCheck {
        let mut check = PolicyCheck::default();
        let spec = FieldPath::root("spec");
        let present = |list: &Option<Vec<AccessLogTargeted>>| list.as_ref().is_some_and(|l| !l.is_empty());
        let has_rules = self.rules.as_ref().is_some_and(|r| !r.is_empty());
        if let Some(t) = &self.target_ref {
            let inbound = has_rules || present(&self.from);
            t.validate_as(&mut check.violations, &spec.field("targetRef"), SUPPORTED_TARGET_KINDS, inbound);
        }
        for (field, list, kinds) in [("to", &self.to, ACCESS_LOG_TO_KINDS), ("from", &self.from, ACCESS_LOG_FROM_KINDS)]
        {
            for (i, t) in list.iter().flatten().enumerate() {
                let at = spec.field(field).index(i).field("targetRef");
                t.target_ref.validate_as(&mut check.violations, &at, kinds, false);
            }
        }
        if has_rules && (present(&self.to) || present(&self.from)) {
            check.violations.add(&spec, "fields 'to' and 'from' must be empty when 'rules' is defined");
        }
        let confs = self.confs();
        if confs.is_empty() {
            // Kuma's message; Tern's top-level `default` (seed 000's form) is the fourth way.
            check.violations.add(&spec, "at least one of 'from', 'to' or 'rules' has to be defined");
        }
        for (at, conf) in confs {
            if conf.backends.is_none() {
                check.violations.add(&at.field("backends"), "must be defined");
            }
            for (j, backend) in conf.backends.iter().flatten().enumerate() {
                let b_at = at.field("backends").index(j);
                check_backend_type(
                    &mut check.violations,
                    &b_at,
                    &backend.type_,
                    ACCESS_LOG_BACKEND_TYPES,
                    |t| match t {
                        "Tcp" => backend.tcp.is_some(),
                        "File" => backend.file.is_some(),
                        _ => backend.open_telemetry.is_some(),
                    },
                );
                if let Some(file) = backend.file.as_ref().filter(|_| backend.type_ == "File") {
                    let f_at = b_at.field("file");
                    validate_format(&mut check.violations, &f_at.field("format"), file.format.as_ref());
                    if !is_file_path(&file.path) {
                        check.violations.add(&f_at.field("path"), "file backend requires a valid path");
                    }
                }
                if let Some(tcp) = backend.tcp.as_ref().filter(|_| backend.type_ == "Tcp") {
                    let t_at = b_at.field("tcp");
                    validate_format(&mut check.violations, &t_at.field("format"), tcp.format.as_ref());
                    if !super::is_url(&tcp.address) {
                        check.violations.add(&t_at.field("address"), "tcp backend requires valid address");
                    }
                }
                let Some(otel) = backend.open_telemetry.as_ref().filter(|_| backend.type_ == "OpenTelemetry") else {
                    continue;
                };
                let o_at = b_at.field("openTelemetry");
                validate_otel_block(&mut check, &o_at, otel, false);
                for (k, kv) in otel.attributes.iter().flatten().enumerate() {
                    validate_attribute_key(
                        &mut check.violations,
                        &o_at.field("attributes").index(k).field("key"),
                        &kv.key,
                    );
                }
            }
        }
        check
    }
}

/// Kuma's format rules (`Plain` needs a non-empty string; `Json` non-empty
/// entries whose key and value make a JSON object).
fn validate_format(v: &mut crate::violation::Violations, at: &FieldPath, format: Option<&AccessLogFormat>) {
    let Some(format) = format else { return };
    match format.type_.as_str() {
        "Plain" => match &format.plain {
            None => v.add(&at.field("plain"), "must be defined"),
            Some(p) if p.is_empty() => v.add(&at.field("plain"), "must not be empty"),
            Some(_) => {}
        },
        "Json" => match &format.json {
            None => v.add(&at.field("json"), "must be defined"),
            Some(fields) if fields.is_empty() => v.add(&at.field("json"), "must not be empty"),
            Some(fields) => {
                for (i, field) in fields.iter().enumerate() {
                    let f_at = at.field("json").index(i);
                    if field.key.is_empty() {
                        v.add(&f_at.field("key"), "key cannot be empty");
                    }
                    if field.value.is_empty() {
                        v.add(&f_at.field("value"), "value cannot be empty");
                    }
                    // Kuma pastes both into `{"key": "value"}` unescaped and parses that.
                    let pasted = format!("{{\"{}\": \"{}\"}}", field.key, field.value);
                    if serde_json::from_str::<serde_json::Value>(&pasted).is_err() {
                        v.add(&f_at, "is not a valid JSON object");
                    }
                }
            }
        },
        other => v.add(&at.field("type"), format!("unrecognized type '{other}' - 'Plain', 'Json' are supported")),
    }
}

/// Kuma's file path rule (govalidator's IsFilePath): an absolute Unix path
/// without NUL, or a Windows drive path.
fn is_file_path(path: &str) -> bool {
    let unix = path.starts_with('/') && !path.contains('\0');
    let bytes = path.as_bytes();
    let windows = bytes.len() >= 3
        && bytes[0].is_ascii_alphabetic()
        && bytes[1] == b':'
        && bytes[2] == b'\\'
        && !path[3..].contains(['/', ':', '*', '?', '"', '<', '>', '|', '\r', '\n'])
        && path.len() - 3 <= 32767;
    unix || windows
}

/// Kuma's rules for OpenTelemetry attribute names on access log records.
pub(crate) fn validate_attribute_key(v: &mut crate::violation::Violations, at: &FieldPath, key: &str) {
    if key.is_empty() {
        v.add(at, "must be defined");
    } else if key.contains('%') {
        v.add(at, "must be a static OpenTelemetry attribute name; placeholders are only supported in values");
    } else if key.starts_with("otel.") {
        v.add(at, "must not use the reserved OpenTelemetry prefix 'otel.'");
    } else if !is_attribute_name(key) {
        v.add(
            at,
            "must start with a lowercase letter, use only lowercase letters, digits, '.' or '_', avoid consecutive delimiters, and end with a letter or digit",
        );
    }
}

fn is_attribute_name(key: &str) -> bool {
    let bytes = key.as_bytes();
    let delim = |b: u8| b == b'.' || b == b'_';
    bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes.last().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || delim(b))
        && !bytes.windows(2).any(|w| delim(w[0]) && delim(w[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_names() {
        assert!(is_attribute_name("http.method"));
        assert!(is_attribute_name("a1_b"));
        assert!(!is_attribute_name("Http"));
        assert!(!is_attribute_name("a..b"));
        assert!(!is_attribute_name("a._b"));
        assert!(!is_attribute_name("a."));
        assert!(!is_attribute_name("1a"));
    }
}
