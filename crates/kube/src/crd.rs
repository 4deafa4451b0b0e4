//! The CustomResourceDefinitions of every Tern kind, generated from the
//! Rust types: the policy and backend specs carry their JSON Schema
//! (schemars), rewritten into the structural form the apiserver requires, so
//! the apiserver itself refuses a wrong type or an unknown field; Kuma's
//! rules beyond types are the admission webhook's. Mesh, Dataplane and
//! DataplaneInsight keep a free-form spec, as Kuma's CRDs do.

use crate::resources::{plural, GROUP, VERSION};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use tern_model::spec::{
    mesh_access_log::MeshAccessLogSpec, mesh_metric::MeshMetricSpec, mesh_trace::MeshTraceSpec,
    motb::MeshOpenTelemetryBackendSpec,
};
use tern_model::Kind;

/// Every CRD, in `Kind::ALL` order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    Kind::ALL.iter().map(|k| crd(*k)).collect()
}

/// The CRDs as one YAML stream (what `ternctl install crds` prints).
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|c| format!("---\n{}", serde_yaml_ng::to_string(c).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("")
}

/// One kind's CRD.
pub fn crd(kind: Kind) -> CustomResourceDefinition {
    let lower = kind.name().to_ascii_lowercase();
    let plural = plural(kind);
    let mut names = json!({
        "kind": kind.name(),
        "listKind": format!("{}List", kind.name()),
        "plural": plural,
        "singular": lower,
        "categories": ["kuma"],
    });
    if let Some(short) = short_name(kind) {
        names["shortNames"] = json!([short]);
    }
    let schema = json!({
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(kind),
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    });
    let value = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{GROUP}")},
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": if crate::resources::is_namespaced(kind) { "Namespaced" } else { "Cluster" },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": printer_columns(kind),
            }],
        },
    });
    serde_json::from_value(value).expect("the CRD literal matches k8s-openapi's type")
}

/// Kuma's short names (Mesh `m`, MeshTrace `mtr`, ...).
fn short_name(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Mesh => Some("m"),
        Kind::DataplaneInsight | Kind::Zone | Kind::ZoneInsight => None,
        other => other.short_name(),
    }
}

/// The columns `kubectl get` shows, like `ternctl get`.
fn printer_columns(kind: Kind) -> Value {
    let column = |name: &str, path: &str| json!({"name": name, "type": "string", "jsonPath": path});
    let mut columns = match kind {
        Kind::MeshOpenTelemetryBackend => vec![
            column("Address", ".spec.endpoint.address"),
            json!({"name": "Port", "type": "integer", "jsonPath": ".spec.endpoint.port"}),
            column("Protocol", ".spec.protocol"),
            column("Referenced", ".status.conditions[?(@.type==\"ReferencedByPolicies\")].status"),
        ],
        Kind::MeshTrace | Kind::MeshMetric | Kind::MeshAccessLog => {
            vec![column("TargetRef Kind", ".spec.targetRef.kind"), column("TargetRef Name", ".spec.targetRef.name")]
        }
        Kind::Dataplane => vec![column("Address", ".spec.networking.address")],
        _ => vec![],
    };
    if kind.is_mesh_scoped() {
        columns.insert(0, column("Mesh", ".metadata.labels.kuma\\.io/mesh"));
    }
    columns.push(json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}));
    Value::Array(columns)
}

/// The spec's structural schema.
fn spec_schema(kind: Kind) -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let schema = match kind {
        Kind::MeshOpenTelemetryBackend => generator.into_root_schema_for::<MeshOpenTelemetryBackendSpec>(),
        Kind::MeshTrace => generator.into_root_schema_for::<MeshTraceSpec>(),
        Kind::MeshMetric => generator.into_root_schema_for::<MeshMetricSpec>(),
        Kind::MeshAccessLog => generator.into_root_schema_for::<MeshAccessLogSpec>(),
        _ => return json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    };
    structural(schema.to_value())
}

/// Rewrites a JSON Schema into the apiserver's structural subset: no
/// `$schema`, titles, definitions or `additionalProperties: false`; nullable
/// instead of `type: [T, null]`; int-or-string for number-or-string unions;
/// free-form values (`serde_json::Value`) kept whole.
fn structural(schema: Value) -> Value {
    let Value::Object(mut s) = schema else {
        // `true`: any value.
        return json!({"x-kubernetes-preserve-unknown-fields": true});
    };
    for drop in ["$schema", "title", "definitions", "$defs", "examples", "default"] {
        s.remove(drop);
    }
    if s.get("additionalProperties") == Some(&Value::Bool(false)) {
        s.remove("additionalProperties");
    }
    if let Some(Value::Array(types)) = s.get("type").cloned() {
        let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
        if real.len() == 1 {
            s.insert("type".into(), real[0].clone());
            s.insert("nullable".into(), Value::Bool(true));
        }
    }
    if let Some(format) = s.get("format").and_then(Value::as_str) {
        if !["int32", "int64", "double", "float"].contains(&format) {
            s.remove("format");
        }
    }
    for union in ["anyOf", "oneOf"] {
        if let Some(Value::Array(options)) = s.remove(union) {
            return union_schema(s, &options);
        }
    }
    if let Some(Value::Object(props)) = s.remove("properties") {
        let props: Map<String, Value> = props.into_iter().map(|(k, v)| (k, structural(v))).collect();
        s.insert("properties".into(), Value::Object(props));
    }
    if let Some(items) = s.remove("items") {
        s.insert("items".into(), structural(items));
    }
    match s.remove("additionalProperties") {
        Some(Value::Bool(true)) | None => {}
        Some(extra) => {
            s.insert("additionalProperties".into(), structural(extra));
        }
    }
    let free_object = s.get("type") == Some(&json!("object"))
        && !s.contains_key("properties")
        && !s.contains_key("additionalProperties");
    if s.is_empty() || s.keys().all(|k| k == "description" || k == "nullable") || free_object {
        s.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
    }
    Value::Object(s)
}

/// A number-or-string union becomes Kubernetes' int-or-string; a union
/// with null becomes its one other branch, nullable; anything else is kept
/// whole (validated by the webhook).
fn union_schema(mut s: Map<String, Value>, options: &[Value]) -> Value {
    let is_null = |o: &Value| o.get("type") == Some(&json!("null")) || o.get("enum") == Some(&json!([null]));
    let types: Vec<&str> = options.iter().filter_map(|o| o.get("type").and_then(Value::as_str)).collect();
    let non_null: Vec<&Value> = options.iter().filter(|o| !is_null(o)).collect();
    if types.contains(&"string") && (types.contains(&"number") || types.contains(&"integer")) {
        s.insert("x-kubernetes-int-or-string".into(), Value::Bool(true));
    } else if non_null.len() == 1 && non_null.len() < options.len() {
        let Value::Object(inner) = structural(non_null[0].clone()) else { unreachable!() };
        s.extend(inner);
        s.insert("nullable".into(), Value::Bool(true));
    } else {
        s.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
    }
    Value::Object(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks a schema and returns the first thing the apiserver's
    /// structural-schema rules refuse.
    fn not_structural(v: &Value, at: &str) -> Option<String> {
        let s = v.as_object()?;
        for key in ["$ref", "$schema", "anyOf", "oneOf", "allOf", "definitions", "$defs"] {
            if s.contains_key(key) {
                return Some(format!("{at}: {key}"));
            }
        }
        if s.get("additionalProperties") == Some(&Value::Bool(false)) {
            return Some(format!("{at}: additionalProperties false"));
        }
        if s.get("type").is_some_and(Value::is_array) {
            return Some(format!("{at}: type list"));
        }
        let typed = s.contains_key("type")
            || s.contains_key("x-kubernetes-preserve-unknown-fields")
            || s.contains_key("x-kubernetes-int-or-string");
        if !typed {
            return Some(format!("{at}: no type"));
        }
        let props = s.get("properties").and_then(Value::as_object).into_iter().flatten();
        props
            .filter_map(|(k, p)| not_structural(p, &format!("{at}.{k}")))
            .chain(s.get("items").and_then(|i| not_structural(i, &format!("{at}[]"))))
            .chain(s.get("additionalProperties").and_then(|i| not_structural(i, &format!("{at}{{}}"))))
            .next()
    }

    #[test]
    fn every_spec_schema_is_structural() {
        for kind in Kind::ALL {
            let schema = spec_schema(kind);
            assert_eq!(not_structural(&schema, "spec"), None, "{kind}: {schema:#}");
        }
    }

    #[test]
    fn policy_schemas_name_their_fields_and_types() {
        let motb = spec_schema(Kind::MeshOpenTelemetryBackend);
        assert_eq!(motb["properties"]["endpoint"]["properties"]["port"]["type"], "integer");
        assert_eq!(motb["properties"]["protocol"]["type"], "string");
        let trace = spec_schema(Kind::MeshTrace);
        let sampling = &trace["properties"]["default"]["properties"]["sampling"]["properties"]["overall"];
        assert_eq!(sampling["x-kubernetes-int-or-string"], true, "{sampling:#}");
        assert_eq!(trace["properties"]["targetRef"]["properties"]["kind"]["type"], "string");
    }

    #[test]
    fn crds_carry_kumas_names_scope_and_status() {
        let all = crds();
        assert_eq!(all.len(), Kind::ALL.len());
        let motb = crd(Kind::MeshOpenTelemetryBackend);
        assert_eq!(motb.metadata.name.as_deref(), Some("meshopentelemetrybackends.kuma.io"));
        assert_eq!(motb.spec.names.short_names, Some(vec!["motb".to_string()]));
        assert_eq!(motb.spec.scope, "Namespaced");
        assert!(motb.spec.versions[0].subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
        assert_eq!(crd(Kind::Mesh).spec.scope, "Cluster");
        assert!(crds_yaml().matches("kind: CustomResourceDefinition").count() == Kind::ALL.len());
    }
}
