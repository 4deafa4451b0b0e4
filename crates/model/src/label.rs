//! Label keys and values, checked as Kubernetes checks them (and Kuma's API
//! with it): a key is a name of at most 63 characters with an optional DNS
//! subdomain prefix (`example.com/name`), a value is empty or at most 63
//! characters. Both keep to letters, digits, `-`, `_` and `.`, so a label can
//! never carry a control character into a log line or a terminal.

use crate::document::identifier_problem;
use crate::resource::{DISPLAY_NAME_LABEL, MESH_LABEL};
use crate::violation::{FieldPath, Violations};
use std::collections::BTreeMap;

/// The longest label value and key name (Kubernetes' limit).
pub const MAX_LABEL_LENGTH: usize = 63;

/// Letters, digits, `-`, `_` and `.`, beginning and ending with a letter or
/// digit: the shape of a key's name part and of a non-empty value.
fn is_label_word(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Why `key` is not a valid label key, if it is not.
pub fn key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if name.contains('/') {
        return Some(
            "label key must be a name with at most one DNS subdomain prefix and '/' (example.com/name)".into(),
        );
    }
    if let Some(prefix) = prefix {
        if prefix.is_empty() || identifier_problem(prefix, false).is_some() {
            return Some(
                "label key prefix (before '/') must be a lowercase DNS subdomain (RFC 1123) of at most 253 characters"
                    .into(),
            );
        }
    }
    if name.is_empty() || name.len() > MAX_LABEL_LENGTH || !is_label_word(name) {
        return Some(format!(
            "label key name must be 1-{MAX_LABEL_LENGTH} letters, digits, '-', '_' or '.', starting and ending with \
             a letter or digit"
        ));
    }
    None
}

/// Why `value` is not a valid label value, if it is not.
pub fn value_problem(value: &str) -> Option<String> {
    if value.len() > MAX_LABEL_LENGTH {
        return Some(format!("label value must be at most {MAX_LABEL_LENGTH} characters"));
    }
    if !value.is_empty() && !is_label_word(value) {
        return Some(
            "label value must be empty or letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                .into(),
        );
    }
    None
}

/// Why `value` is not a valid value for label `key`. The labels Tern sets
/// from names (`kuma.io/display-name`, `kuma.io/mesh`) may hold any valid
/// resource or mesh name, which can be longer than a label value: a
/// resource read back and applied again must pass.
fn value_problem_for(key: &str, value: &str) -> Option<String> {
    let problem = value_problem(value)?;
    let holds_name = match key {
        DISPLAY_NAME_LABEL => identifier_problem(value, false).is_none(),
        MESH_LABEL => identifier_problem(value, true).is_none(),
        _ => false,
    };
    (!holds_name).then_some(problem)
}

/// Checks every label of a resource; violations are reported at `at["key"]`.
pub fn validate_labels(v: &mut Violations, at: &FieldPath, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        for problem in [key_problem(key), value_problem_for(key, value)].into_iter().flatten() {
            v.add(&at.key(key), problem);
        }
    }
}

/// Checks a label selector (`backendRef.labels`), by the same rules: a
/// selector on `kuma.io/display-name` may name a resource.
pub fn validate_selector(v: &mut Violations, at: &FieldPath, selector: &BTreeMap<String, String>) {
    validate_labels(v, at, selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["app", "kuma.io/mesh", "kuma.io/display-name", "k8s.kuma.io/namespace", "My_Key.v2", "a"] {
            assert_eq!(key_problem(ok), None, "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "/app", "a/b/c", "Kuma.io/x", "kuma.io/", "-app", "app-", "a b", "x\nERROR", "é", &long] {
            assert!(key_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(key_problem(&"a".repeat(63)), None);
    }

    #[test]
    fn values() {
        for ok in ["", "default", "main-collector", "v1.2_3", "A", &"a".repeat(63)] {
            assert_eq!(value_problem(ok), None, "{ok}");
        }
        for bad in ["x\nERROR fake", "\u{1b}[2J", "-a", "a.", "a b", "a/b", "ü", &"a".repeat(64)] {
            assert!(value_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn violations_name_the_label() {
        let mut v = Violations::default();
        let labels = BTreeMap::from([("team".to_string(), "a\nERROR forged".to_string())]);
        validate_labels(&mut v, &FieldPath::root("metadata").field("labels"), &labels);
        assert_eq!(v.0.len(), 1);
        assert_eq!(v.0[0].field, r#"metadata.labels["team"]"#);
        assert!(v.0[0].message.starts_with("label value must be"), "{}", v.0[0].message);
    }

    #[test]
    fn display_name_selectors_may_hold_long_names() {
        let mut v = Violations::default();
        let long_name = format!("{}.example", "a".repeat(70));
        let selector = BTreeMap::from([(DISPLAY_NAME_LABEL.to_string(), long_name.clone())]);
        validate_selector(&mut v, &FieldPath::root("labels"), &selector);
        assert!(v.is_empty(), "{v}");
        let selector = BTreeMap::from([("team".to_string(), long_name)]);
        validate_selector(&mut v, &FieldPath::root("labels"), &selector);
        assert_eq!(v.0.len(), 1);
    }
}
