//! Reading user documents: YAML or JSON, many per file, in Kubernetes form
//! (`apiVersion`, `kind`, `metadata`, `spec`) or Universal form (`type`,
//! `name`, `mesh`, `labels`, `spec`). Both become one [`Resource`].

use crate::kind::Kind;
use crate::label;
use crate::resource::{
    Meta, Resource, DEFAULT_MESH, DISPLAY_NAME_LABEL, MESH_LABEL, NAMESPACE_LABEL, SYSTEM_NAMESPACE,
};
use crate::spec::check_spec;
use crate::violation::{FieldPath, Violation, Violations};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The only `apiVersion` Tern reads.
pub const API_VERSION: &str = "kuma.io/v1alpha1";

/// A YAML syntax error, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SyntaxError {}

/// One document out of a file, with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceDocument {
    /// 1-based position of the document in the file.
    pub index: usize,
    pub line: usize,
    pub value: Value,
}

/// Splits YAML (or JSON) text into documents, skipping empty ones.
pub fn parse_documents(text: &str) -> Result<Vec<SourceDocument>, SyntaxError> {
    let starts = document_start_lines(text);
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de).map_err(|e| {
            let loc = e.location();
            SyntaxError {
                message: strip_location(&e.to_string()),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
            }
        })?;
        if value.is_null() {
            continue;
        }
        let line = starts.get(i).copied().unwrap_or(1);
        out.push(SourceDocument { index: out.len() + 1, line, value });
    }
    Ok(out)
}

/// Drops the parser's own " at line L column C" (the caller reports the
/// location in its own words).
fn strip_location(message: &str) -> String {
    let Some(start) = message.find(" at line ") else { return message.to_string() };
    let rest = &message[start + " at line ".len()..];
    let after_numbers = rest
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix(" column ")
        .map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit()));
    match after_numbers {
        Some(tail) => format!("{}{tail}", &message[..start]),
        None => message.to_string(),
    }
}

/// Line numbers (1-based) where each YAML document begins: its first line
/// with content. A section after `---` is a document even when empty (the
/// parser yields it as null); the part before the first `---` only counts
/// when it has content.
fn document_start_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    // (explicit, first content line) of the section being read.
    let mut section: (bool, Option<usize>) = (false, None);
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            if section.0 || section.1.is_some() {
                starts.push(section.1.unwrap_or(i + 1));
            }
            section = (true, None);
        } else if section.1.is_none() && !is_blank_or_comment(line) {
            section.1 = Some(i + 1);
        }
    }
    if section.0 || section.1.is_some() {
        starts.push(section.1.unwrap_or(text.lines().count()));
    }
    starts
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// A document turned into a validated resource.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedResource {
    pub resource: Resource,
    pub warnings: Vec<String>,
}

/// Why a document could not become a resource: its identity as far as it
/// could be read, and every violation.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentError {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub violations: Violations,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} is not valid: {}",
            self.kind.as_deref().unwrap_or("resource"),
            self.name.as_deref().unwrap_or(""),
            self.violations
        )
    }
}

/// Reads one document in either form, validates it, and returns the resource
/// in stored form. `status`, `creationTime` and `modificationTime` in the
/// input are ignored: the control plane owns them.
pub fn resource_from_document(doc: &Value) -> Result<ParsedResource, DocumentError> {
    let Value::Object(fields) = doc else {
        return Err(DocumentError {
            kind: None,
            name: None,
            violations: one("", "document must be a mapping with apiVersion/kind or type"),
        });
    };
    let header = if fields.contains_key("type") {
        universal_header(fields)
    } else if fields.contains_key("kind") || fields.contains_key("apiVersion") {
        kubernetes_header(fields)
    } else {
        Err(one("", "document has neither `type` (Universal form) nor `apiVersion` and `kind` (Kubernetes form)"))
    };
    let kind_text = fields.get("type").or_else(|| fields.get("kind")).and_then(Value::as_str).map(str::to_string);
    let name_text = fields
        .get("name")
        .or_else(|| fields.get("metadata").and_then(|m| m.get("name")))
        .and_then(Value::as_str)
        .map(str::to_string);
    let fail = |violations| DocumentError { kind: kind_text.clone(), name: name_text.clone(), violations };
    let header = header.map_err(fail)?;

    let mut violations = header.violations;
    let checked = match check_spec(header.kind, &header.spec) {
        Ok(c) => Some(c),
        Err(v) => {
            violations.extend(v);
            None
        }
    };
    let Some(checked) = checked.filter(|_| violations.is_empty()) else {
        return Err(fail(violations));
    };
    let mut labels = header.labels;
    if header.kind.is_mesh_scoped() {
        labels.insert(MESH_LABEL.into(), header.mesh.clone());
    }
    labels.entry(DISPLAY_NAME_LABEL.into()).or_insert_with(|| header.name.clone());
    Ok(ParsedResource {
        resource: Resource {
            kind: header.kind,
            mesh: header.mesh,
            name: header.name,
            labels,
            spec: checked.spec,
            status: None,
            meta: Meta::default(),
        },
        warnings: checked.warnings,
    })
}

/// Identity, labels and raw spec read from a document, plus the violations
/// found in them (reported together with the spec's).
struct Header {
    kind: Kind,
    mesh: String,
    name: String,
    labels: BTreeMap<String, String>,
    spec: Value,
    violations: Violations,
}

fn one(field: &str, message: &str) -> Violations {
    Violations(vec![Violation { field: field.into(), message: message.into() }])
}

fn read_kind(value: Option<&Value>, field: &str) -> Result<Kind, Violations> {
    let text = value.and_then(Value::as_str).unwrap_or("");
    if text.is_empty() {
        return Err(one(field, "must be defined"));
    }
    Kind::from_name(text).filter(|k| !k.is_internal()).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        one(field, &format!("unknown kind {text:?}; known kinds: {}", known.join(", ")))
    })
}

fn read_labels(value: Option<&Value>, at: &FieldPath, v: &mut Violations) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, val) in map {
                match val {
                    Value::String(s) => {
                        labels.insert(k.clone(), s.clone());
                    }
                    _ => v.add(&at.key(k), "label values must be strings (quote them in YAML)"),
                }
            }
        }
        Some(_) => v.add(at, "must be a mapping of strings"),
    }
    label::validate_labels(v, at, &labels);
    labels
}

fn universal_header(fields: &Map<String, Value>) -> Result<Header, Violations> {
    let kind = read_kind(fields.get("type"), "type")?;
    let mut v = Violations::default();
    let name = fields.get("name").and_then(Value::as_str).unwrap_or("").to_string();
    let labels = read_labels(fields.get("labels"), &FieldPath::root("labels"), &mut v);
    const META_KEYS: &[&str] = &["type", "name", "mesh", "labels", "creationTime", "modificationTime", "kri", "status"];
    let spec = if kind.spec_is_inlined() {
        let inlined: Map<String, Value> = fields
            .iter()
            .filter(|(k, _)| !META_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Value::Object(inlined)
    } else {
        for key in fields.keys() {
            if !META_KEYS.contains(&key.as_str()) && key != "spec" {
                v.add(
                    &FieldPath::root(key),
                    "unknown field; a Universal document has type, name, mesh, labels and spec",
                );
            }
        }
        fields.get("spec").cloned().unwrap_or(Value::Null)
    };
    let mesh = if kind.is_mesh_scoped() {
        match fields.get("mesh").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => {
                v.add(&FieldPath::root("mesh"), "cannot be empty");
                String::new()
            }
        }
    } else {
        String::new()
    };
    validate_identity(kind, &name, &mesh, "name", "mesh", &mut v);
    Ok(Header { kind, mesh, name, labels, spec, violations: v })
}

fn kubernetes_header(fields: &Map<String, Value>) -> Result<Header, Violations> {
    let mut v = Violations::default();
    match fields.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        _ => v.add(&FieldPath::root("apiVersion"), format!("must be {API_VERSION}")),
    }
    let kind = read_kind(fields.get("kind"), "kind").inspect_err(|e| v.extend(e.clone()));
    let Ok(kind) = kind else { return Err(v) };
    for key in fields.keys() {
        if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()) {
            v.add(
                &FieldPath::root(key),
                "unknown field; a Kubernetes document has apiVersion, kind, metadata and spec",
            );
        }
    }
    let empty = Map::new();
    let metadata = fields.get("metadata").and_then(Value::as_object).unwrap_or(&empty);
    let meta_at = FieldPath::root("metadata");
    let name = metadata.get("name").and_then(Value::as_str).unwrap_or("").to_string();
    let namespace = metadata.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty());
    let mut labels = read_labels(metadata.get("labels"), &meta_at.field("labels"), &mut v);
    let mesh = if kind.is_mesh_scoped() {
        labels.get(MESH_LABEL).cloned().unwrap_or_else(|| DEFAULT_MESH.to_string())
    } else {
        String::new()
    };
    if kind == Kind::MeshOpenTelemetryBackend && namespace != Some(SYSTEM_NAMESPACE) {
        v.add(
            &meta_at.field("namespace"),
            format!("resource type {kind} can be created only in the system namespace:{SYSTEM_NAMESPACE}"),
        );
    }
    if namespace.is_some_and(|ns| !is_namespace(ns)) {
        v.add(
            &meta_at.field("namespace"),
            "must be a Kubernetes namespace name: at most 63 lowercase letters, digits and '-', starting and ending \
             with a letter or digit",
        );
    }
    if let (Some(ns), true) = (namespace, kind.is_mesh_scoped()) {
        labels.insert(NAMESPACE_LABEL.into(), ns.to_string());
    }
    validate_identity(kind, &name, &mesh, "metadata.name", &format!("metadata.labels[{MESH_LABEL:?}]"), &mut v);
    let spec = fields.get("spec").cloned().unwrap_or(Value::Null);
    Ok(Header { kind, mesh, name, labels, spec, violations: v })
}

/// A Kubernetes namespace name: an RFC 1123 label (no dots, at most 63).
fn is_namespace(ns: &str) -> bool {
    ns.len() <= label::MAX_LABEL_LENGTH && !ns.contains('.') && identifier_problem(ns, false).is_none()
}

/// Kuma's `ValidateMeta`: names are lowercase RFC 1123 subdomains; mesh names
/// may also contain `_` (Kuma keeps that for meshes created long ago).
fn validate_identity(kind: Kind, name: &str, mesh: &str, name_field: &str, mesh_field: &str, v: &mut Violations) {
    if let Some(msg) = identifier_problem(name, false) {
        v.add(&FieldPath::root(name_field), msg);
    }
    if kind.is_mesh_scoped() && !mesh.is_empty() {
        if let Some(msg) = identifier_problem(mesh, true) {
            v.add(&FieldPath::root(mesh_field), msg);
        }
    }
}

/// Why `id` is not a valid resource name, if it is not.
pub fn identifier_problem(id: &str, allow_underscore: bool) -> Option<String> {
    if id.is_empty() {
        return Some("cannot be empty".into());
    }
    if id.len() > 253 {
        return Some("value length must less or equal 253".into());
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || (allow_underscore && c == b'_'))
    };
    if id.split('.').all(label_ok) {
        None
    } else if allow_underscore {
        Some("invalid characters. Valid characters are numbers, lowercase latin letters and '-', '_' symbols.".into())
    } else {
        Some("invalid characters. A lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lines_are_found() {
        let text = "a: 1\n---\nb: 2\nc: 3\n---\n# only a comment\n---\nd: 4\n";
        let docs = parse_documents(text).expect("valid yaml");
        assert_eq!(docs.len(), 3);
        assert_eq!(docs.iter().map(|d| d.line).collect::<Vec<_>>(), vec![1, 3, 8]);
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let err = parse_documents("a: 1\nb: [1, 2\n").expect_err("broken yaml");
        assert!(err.line.is_some() && err.column.is_some(), "{err:?}");
        let primary = format!("at line {} column {}", err.line.unwrap_or(0), err.column.unwrap_or(0));
        assert!(!err.message.contains(&primary), "the error's own location is reported once: {err}");
    }

    #[test]
    fn identifiers() {
        assert_eq!(identifier_problem("main-collector", false), None);
        assert_eq!(identifier_problem("a.b", false), None);
        assert!(identifier_problem("Main", false).is_some());
        assert!(identifier_problem("a_b", false).is_some());
        assert_eq!(identifier_problem("a_b", true), None);
        assert_eq!(identifier_problem("", false).as_deref(), Some("cannot be empty"));
    }
}
