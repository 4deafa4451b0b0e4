//! How ternctl prints resources: kumactl-style tables, YAML or JSON.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tern_model::Kind;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

pub fn print_value(value: &Value, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml | Format::Table => print!("{}", serde_yaml_ng::to_string(value)?),
    }
    Ok(())
}

/// Renders rows under headers with columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("   ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
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
    fn ages() {
        assert_eq!(age(chrono::Duration::seconds(5)), "5s");
        assert_eq!(age(chrono::Duration::minutes(10)), "10m");
        assert_eq!(age(chrono::Duration::hours(5)), "5h");
        assert_eq!(age(chrono::Duration::days(3)), "3d");
    }
}
