//! Validation results: every violation at once, each naming its field the
//! way Kuma prints it (`spec.default.backends[0].openTelemetry.backendRef`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// One broken rule: the field it is about and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// A path into a document, rendered as Kuma renders field paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root(field: &str) -> Self {
        FieldPath(field.to_string())
    }

    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            FieldPath(name.to_string())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    pub fn index(&self, i: usize) -> Self {
        FieldPath(format!("{}[{i}]", self.0))
    }

    pub fn key(&self, key: &str) -> Self {
        FieldPath(format!("{}[{key:?}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Collects violations while a validator walks a resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violations(pub Vec<Violation>);

impl Violations {
    pub fn add(&mut self, field: &FieldPath, message: impl Into<String>) {
        self.0.push(Violation { field: field.0.clone(), message: message.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: Violations) {
        self.0.extend(other.0);
    }

    pub fn into_result(self) -> Result<(), Violations> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.0.iter()
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for Violations {}

/// Kuma's wording for a closed set of values: `"mode" must be one of ["A", "B"]`.
pub fn must_be_one_of(name: &str, allowed: &[&str]) -> String {
    let quoted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    format!("{name:?} must be one of [{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_kuma() {
        let p = FieldPath::root("spec").field("default").field("backends").index(0).field("openTelemetry");
        assert_eq!(p.as_str(), "spec.default.backends[0].openTelemetry");
        assert_eq!(FieldPath::root("tags").key("kuma.io/service").as_str(), r#"tags["kuma.io/service"]"#);
    }

    #[test]
    fn one_of_message_is_exact() {
        assert_eq!(must_be_one_of("protocol", &["grpc", "http"]), r#""protocol" must be one of ["grpc", "http"]"#);
    }
}
