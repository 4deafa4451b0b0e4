//! Decoding a spec into its typed form without stopping at the first
//! structural error. Where serde gives up (a field of the wrong type, an
//! unknown field or enum value, a missing required field), the error becomes
//! a violation in Kuma's words at that field, the offending node is set
//! aside, and decoding starts over; the typed validator then runs on what
//! remains, so one document reports every violation at once.

use crate::violation::{Violation, Violations};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// At most this many structural errors are repaired in one document.
const MAX_REPAIRS: usize = 64;

/// A step into a JSON value.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The typed spec (if it could be repaired into one) and the structural
/// violations found on the way.
pub fn decode_repairing<T: DeserializeOwned>(value: &Value, root: &str) -> (Option<T>, Violations) {
    let mut work = if value.is_null() { Value::Object(Default::default()) } else { value.clone() };
    let mut found = Violations::default();
    // Nodes this function inserted, and the placeholders tried for each.
    let mut placeholders: Vec<(Vec<Step>, usize)> = Vec::new();
    // Fields already reported and removed: a required one comes back as
    // missing, which is not news.
    let mut removed: Vec<Vec<Step>> = Vec::new();
    for _ in 0..MAX_REPAIRS {
        let err = match serde_path_to_error::deserialize::<_, T>(&work) {
            Ok(typed) => return (Some(typed), found),
            Err(err) => err,
        };
        let mut at: Vec<Step> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
                _ => None,
            })
            .collect();
        let message = err.into_inner().to_string();
        let exact = placeholders.iter_mut().find(|(p, _)| *p == at);
        if let Some(slot) = exact.filter(|_| message.starts_with("invalid type")) {
            // A placeholder of the wrong type: try the next one.
            slot.1 += 1;
            let Some(next) = placeholder(slot.1) else { return (None, found) };
            if !set(&mut work, &at, next) {
                return (None, found);
            }
            continue;
        }
        // Errors inside a placeholder are about the placeholder, not the document.
        let synthetic = placeholders.iter().any(|(p, _)| at.starts_with(p));
        if let Some(missing) = quoted(&message).filter(|_| message.starts_with("missing field")) {
            at.push(Step::Key(missing.to_string()));
            if !synthetic && !removed.contains(&at) {
                found.0.push(Violation { field: field_path(root, &at), message: "must be defined".into() });
            }
            placeholders.push((at.clone(), 0));
            if !set(&mut work, &at, placeholder(0).unwrap_or(Value::Null)) {
                return (None, found);
            }
            continue;
        }
        if !synthetic {
            found.0.push(Violation { field: field_path(root, &at), message: kuma_message(&at, &message) });
        }
        if !set_aside(&mut work, &at, &mut placeholders) {
            return (None, found);
        }
        removed.push(at);
    }
    (None, found)
}

/// Whether `field` lies in (or is) one of the structural violations' fields:
/// what the typed validator says there is about a placeholder.
pub fn under_structural(structural: &Violations, field: &str) -> bool {
    structural.0.iter().any(|s| {
        field == s.field
            || field.strip_prefix(s.field.as_str()).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// Placeholders for a required node of unknown type, in the order tried.
fn placeholder(attempt: usize) -> Option<Value> {
    [Value::Object(Default::default()), Value::String(String::new()), Value::Array(Vec::new()), Value::Bool(false)]
        .get(attempt)
        .cloned()
        .or_else(|| (attempt == 4).then(|| Value::from(0)))
}

/// Removes a bad field from its object, or swaps a bad list item for a
/// placeholder (removing it would renumber the items after it).
fn set_aside(work: &mut Value, at: &[Step], placeholders: &mut Vec<(Vec<Step>, usize)>) -> bool {
    let Some((last, parent)) = at.split_last() else { return false };
    match (last, node_mut(work, parent)) {
        (Step::Key(key), Some(Value::Object(map))) => map.remove(key).is_some(),
        (Step::Index(_), Some(Value::Array(_))) => {
            placeholders.push((at.to_vec(), 0));
            set(work, at, placeholder(0).unwrap_or(Value::Null))
        }
        _ => false,
    }
}

fn node_mut<'v>(value: &'v mut Value, at: &[Step]) -> Option<&'v mut Value> {
    at.iter().try_fold(value, |v, step| match (step, v) {
        (Step::Key(k), Value::Object(map)) => map.get_mut(k),
        (Step::Index(i), Value::Array(items)) => items.get_mut(*i),
        _ => None,
    })
}

/// Sets the node at `at` (creating the last key of an object).
fn set(work: &mut Value, at: &[Step], new: Value) -> bool {
    let Some((last, parent)) = at.split_last() else { return false };
    match (last, node_mut(work, parent)) {
        (Step::Key(key), Some(Value::Object(map))) => {
            map.insert(key.clone(), new);
            true
        }
        (Step::Index(i), Some(Value::Array(items))) if *i < items.len() => {
            items[*i] = new;
            true
        }
        _ => false,
    }
}

fn field_path(root: &str, at: &[Step]) -> String {
    let mut out = root.to_string();
    for step in at {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The first `` `quoted` `` word of a serde message.
fn quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// A serde message in Kuma's words: `"type" must be one of [...]` for an
/// unknown enum value, `must be a string` (and so on) for a wrong type.
fn kuma_message(at: &[Step], message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let name = match at.last() {
            Some(Step::Key(k)) => k.as_str(),
            _ => "value",
        };
        let allowed: Vec<String> = rest
            .split_once("expected ")
            .map_or("", |(_, list)| list)
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|v| format!("\"{v}\""))
            .collect();
        return format!("\"{name}\" must be one of [{}]", allowed.join(", "));
    }
    if message.starts_with("data did not match any variant of untagged enum Percentage") {
        return "must be a number or a string holding one".into();
    }
    if let Some((_, expected)) = message.strip_prefix("invalid type: ").and_then(|m| m.rsplit_once(", expected ")) {
        let kind = match expected {
            "a string" | "a borrowed string" => "a string",
            "a boolean" => "a boolean",
            "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "an integer" => "an integer",
            "f32" | "f64" => "a number",
            "a sequence" => "a list",
            e if e.starts_with("struct ") || e == "a map" => "an object",
            other => other,
        };
        return format!("must be {kind}");
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        key: String,
        value: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        items: Vec<Item>,
        #[serde(default)]
        count: Option<u16>,
    }

    #[test]
    fn every_structural_error_at_once() {
        let value = json!({"name": 5, "items": [{"key": "a"}, 7, {"key": "b", "value": "c", "extra": 1}, {"key": "d", "value": 1}], "count": "x", "odd": 1});
        let (typed, found) = decode_repairing::<Doc>(&value, "spec");
        assert!(typed.is_some(), "repaired into a typed value: {found:?}");
        let got: Vec<(String, String)> = found.0.into_iter().map(|v| (v.field, v.message)).collect();
        let has = |f: &str, m: &str| got.iter().any(|(gf, gm)| gf == f && gm.starts_with(m));
        assert!(has("spec.name", "must be a string"), "{got:?}");
        assert!(has("spec.items[0].value", "must be defined"), "{got:?}");
        assert!(has("spec.items[1]", "must be an object"), "{got:?}");
        assert!(has("spec.items[2].extra", "unknown field `extra`"), "{got:?}");
        assert!(has("spec.count", "must be an integer"), "{got:?}");
        assert!(has("spec.odd", "unknown field `odd`"), "{got:?}");
        // A required field of the wrong type is reported once, not again as missing.
        assert!(has("spec.items[3].value", "must be a string"), "{got:?}");
        assert_eq!(got.len(), 7, "{got:?}");
    }

    #[test]
    fn a_spec_of_the_wrong_shape_is_one_violation() {
        let (typed, found) = decode_repairing::<Doc>(&json!("text"), "spec");
        assert!(typed.is_none());
        assert_eq!(found.0.len(), 1);
        assert_eq!(found.0[0].field, "spec");
    }

    #[test]
    fn structural_fields_cover_their_subtrees() {
        let v = Violations(vec![Violation { field: "spec.to[0].targetRef".into(), message: "must be defined".into() }]);
        assert!(under_structural(&v, "spec.to[0].targetRef.kind"));
        assert!(under_structural(&v, "spec.to[0].targetRef"));
        assert!(!under_structural(&v, "spec.to[0].targetRefs"));
        assert!(!under_structural(&v, "spec.to[1].targetRef"));
    }
}
