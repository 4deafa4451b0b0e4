//! How ternctl prints resources: kumactl-style tables, YAML or JSON.

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::borrow::Cow;
use tern_model::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

pub fn print_value(value: &Value, format: Format) -> anyhow::Result<()> {
    print!("{}", render_value(value, format)?);
    Ok(())
}

/// JSON or YAML text of `value`, with nothing in it that could drive a
/// terminal. serde_json escapes C0 controls but not C1 ones (U+009B is a
/// CSI) nor bidirectional overrides: those get `\uXXXX` escapes too. YAML
/// holding any of them is printed as that JSON instead, which is YAML too.
pub fn render_value(value: &Value, format: Format) -> anyhow::Result<String> {
    let json = || -> anyhow::Result<String> {
        let text = serde_json::to_string_pretty(value)? + "\n";
        Ok(text
            .chars()
            .map(|c| if c != '\n' && is_unsafe(c) { format!("\\u{:04x}", c as u32) } else { c.to_string() })
            .collect())
    };
    Ok(match format {
        Format::Json => json()?,
        Format::Yaml | Format::Table => {
            let yaml = serde_yaml_ng::to_string(value)?;
            if yaml.chars().any(|c| c != '\n' && is_unsafe(c)) {
                json()?
            } else {
                yaml
            }
        }
    })
}

/// Whether `c` could drive a terminal or disguise text: C0 and C1 control
/// characters (newline and ESC included) and bidirectional overrides.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` from the server made safe for a terminal: every [`is_unsafe`]
/// character is shown as an escape (`\n`, `\x1b`, `\u{202e}`), so a name or
/// message can neither move the cursor, clear the screen, nor fake a line
/// of output. Newlines in ternctl's output are only ever ternctl's own.
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.contains(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && is_unsafe(c) => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Renders rows under headers with columns padded to their widest cell.
/// Every cell is [`clean`]ed: cells come from the server.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> =
        rows.iter().map(|row| row.iter().map(|cell| clean(cell).into_owned()).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("   ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Columns for a kind: the identity, what is useful to see at a glance, AGE.
pub fn columns(kind: Kind) -> Vec<&'static str> {
    let mut cols = if kind.is_mesh_scoped() { vec!["MESH", "NAME"] } else { vec!["NAME"] };
    cols.extend(match kind {
        Kind::MeshOpenTelemetryBackend => vec!["ADDRESS", "PORT", "PROTOCOL", "ENV MODE", "REFERENCED"],
        Kind::MeshTrace | Kind::MeshMetric | Kind::MeshAccessLog => vec!["TARGETREF", "BACKENDS", "BACKENDREFS"],
        Kind::Dataplane => vec!["ADDRESS", "SERVICES"],
        _ => vec![],
    });
    cols.push("AGE");
    cols
}

pub fn row(kind: Kind, item: &Value, now: DateTime<Utc>) -> Vec<String> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut cells = Vec::new();
    if kind.is_mesh_scoped() {
        cells.push(s(&item["mesh"]));
    }
    cells.push(s(&item["name"]));
    let spec = &item["spec"];
    match kind {
        Kind::MeshOpenTelemetryBackend => {
            let address = spec["endpoint"]["address"].as_str().unwrap_or("(node-local)");
            let port = spec["endpoint"]["port"].as_i64().unwrap_or(4317);
            let protocol = spec["protocol"].as_str().unwrap_or("grpc");
            let mode = spec["env"]["mode"].as_str().unwrap_or("Optional");
            cells.extend([address.to_string(), port.to_string(), protocol.to_string(), mode.to_string()]);
            cells.push(condition(item, "ReferencedByPolicies", |c| match c["status"].as_str() {
                Some("True") => c["message"].as_str().unwrap_or("yes").replace("Referenced by ", ""),
                _ => "no".into(),
            }));
        }
        Kind::MeshTrace | Kind::MeshMetric | Kind::MeshAccessLog => {
            cells.push(target_ref(&spec["targetRef"]));
            cells.push(backends(spec));
            cells.push(condition(item, "BackendRefsResolved", |c| match c["status"].as_str() {
                Some("True") => "resolved".into(),
                _ => c["message"]
                    .as_str()
                    .map(|m| m.replace("Unresolved MeshOpenTelemetryBackend references: ", "unresolved: "))
                    .unwrap_or_else(|| "unresolved".into()),
            }));
        }
        Kind::Dataplane => {
            cells.push(s(&item["networking"]["address"]));
            let services: Vec<String> = item["networking"]["inbound"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["tags"]["kuma.io/service"].as_str().map(str::to_string))
                .collect();
            cells.push(services.join(","));
        }
        _ => {}
    }
    let created = item["creationTime"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    cells.push(created.map(|c| age(now - c.with_timezone(&Utc))).unwrap_or_else(|| "-".into()));
    cells
}

/// A condition from `status.conditions`, rendered by `show`; `-` until the
/// control plane has written it.
fn condition(item: &Value, type_: &str, show: impl Fn(&Value) -> String) -> String {
    item["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .map(show)
        .unwrap_or_else(|| "-".into())
}

fn target_ref(t: &Value) -> String {
    let kind = t["kind"].as_str().unwrap_or("Mesh");
    let detail = if let Some(name) = t["name"].as_str() {
        format!("/{name}")
    } else if let Some(map) = t["tags"].as_object().or(t["labels"].as_object()) {
        let pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
        format!("[{}]", pairs.join(","))
    } else {
        String::new()
    };
    format!("{kind}{detail}")
}

/// Every backend of a policy, OpenTelemetry ones as `motb/<name>`,
/// `motb[labels]` or `endpoint:<host:port>` (deprecated inline).
fn backends(spec: &Value) -> String {
    let mut confs = vec![&spec["default"]];
    for field in ["rules", "to", "from"] {
        confs.extend(spec[field].as_array().into_iter().flatten().map(|e| &e["default"]));
    }
    let mut out: Vec<String> = Vec::new();
    for conf in confs {
        for b in conf["backends"].as_array().into_iter().flatten() {
            let otel = &b["openTelemetry"];
            let label = if let Some(name) = otel["backendRef"]["name"].as_str() {
                format!("motb/{name}")
            } else if let Some(labels) = otel["backendRef"]["labels"].as_object() {
                let pairs: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
                format!("motb[{}]", pairs.join(","))
            } else if let Some(e) = otel["endpoint"].as_str() {
                format!("endpoint:{e}")
            } else {
                b["type"].as_str().unwrap_or("?").to_string()
            };
            if !out.contains(&label) {
                out.push(label);
            }
        }
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}

/// kubectl-style ages: 42s, 5m, 3h, 2d.
pub fn age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align() {
        let t = table(&["MESH", "NAME", "AGE"], &[vec!["default".into(), "a".into(), "3s".into()]]);
        assert_eq!(t, "MESH      NAME   AGE\ndefault   a      3s\n");
    }

    #[test]
    fn policy_rows_show_target_and_backends() {
        let item = json!({"mesh": "default", "name": "t", "spec": {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/zone": "us-east"}},
            "default": {"backends": [{"type": "OpenTelemetry", "openTelemetry": {"backendRef": {"kind": "MeshOpenTelemetryBackend", "name": "main"}}}]}}});
        let r = row(Kind::MeshTrace, &item, Utc::now());
        assert_eq!(r[..4], ["default", "t", "MeshSubset[kuma.io/zone=us-east]", "motb/main"]);
    }

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        let name = "evil\x1b[2J\nERROR forged line\u{9b}31m\u{202e}";
        assert_eq!(clean(name), "evil\\x1b[2J\\nERROR forged line\\u{009b}31m\\u{202e}");
        assert!(matches!(clean("main-collector ü"), Cow::Borrowed(_)), "ordinary text is left alone");
        let item = json!({"mesh": "default", "name": name, "spec": {"targetRef": {"kind": "Mesh"},
            "default": {"backends": [{"type": "OpenTelemetry", "openTelemetry": {"backendRef": {"kind": "MeshOpenTelemetryBackend", "name": name}}}]}},
            "status": {"conditions": [{"type": "BackendRefsResolved", "status": "False", "message": "Unresolved MeshOpenTelemetryBackend references: x\x1b[2J\ny"}]}});
        let t = table(&columns(Kind::MeshTrace), &[row(Kind::MeshTrace, &item, Utc::now())]);
        assert_eq!(t.lines().count(), 2, "one header, one row: {t}");
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert!(t.contains("evil\\x1b[2J\\nERROR"), "{t}");
        for format in [Format::Json, Format::Yaml] {
            let out = render_value(&item, format).expect("renders");
            assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{format:?}: {out:?}");
            assert!(!out.contains("\nERROR"), "{format:?}: {out}");
            let back: Value = serde_yaml_ng::from_str(&out).expect("still YAML (and JSON)");
            assert_eq!(back, item, "{format:?}: the data is unchanged");
        }
    }

    #[test]
    fn ages() {
        assert_eq!(age(chrono::Duration::seconds(5)), "5s");
        assert_eq!(age(chrono::Duration::minutes(10)), "10m");
        assert_eq!(age(chrono::Duration::hours(5)), "5h");
        assert_eq!(age(chrono::Duration::days(3)), "3d");
    }
}
