//! Compares Tern's validation with every case of Kuma's own validator tests,
//! as `scripts/kuma-parity/cases.py` extracted them into a JSON file: each
//! case's spec is validated as a Tern document and its violations (field and
//! message) compared with Kuma's. Prints every case that differs and the
//! totals per kind. Run by `scripts/kuma-parity.sh`.

use std::collections::BTreeMap;
use tern_model::{parse_documents, resource_from_document};

type Violations = Vec<(String, String)>;

#[derive(serde::Deserialize)]
struct Case {
    kind: String,
    name: String,
    spec: String,
    expected: Vec<(String, String)>,
}

fn violations(kind: &str, spec: &str) -> Result<Violations, String> {
    let indented: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    let docs = parse_documents(&format!("type: {kind}\nname: p\nmesh: default\nspec:\n{indented}"))
        .map_err(|e| format!("not YAML: {e:?}"))?;
    let doc = docs.first().ok_or("no document")?;
    Ok(match resource_from_document(&doc.value) {
        Ok(_) => vec![],
        Err(e) => e.violations.0.into_iter().map(|v| (v.field, v.message)).collect(),
    })
}

fn sorted(mut v: Violations) -> Violations {
    v.sort();
    v
}

/// How Tern's answer compares with Kuma's.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Verdict {
    Same,
    /// The same violations in another order (Kuma's MeshMetric tests compare sets).
    SameSet,
    /// Equal once Kuma's MeshMetric `backends.backend[i]` reads `backends[i]` (README).
    SamePathAside,
    Differs,
}

fn verdict(case: &Case, tern: &Violations) -> Verdict {
    let path_aside: Violations =
        case.expected.iter().map(|(f, m)| (f.replace("backends.backend[", "backends["), m.clone())).collect();
    if *tern == case.expected {
        Verdict::Same
    } else if sorted(tern.clone()) == sorted(case.expected.clone()) {
        Verdict::SameSet
    } else if sorted(tern.clone()) == sorted(path_aside) {
        Verdict::SamePathAside
    } else {
        Verdict::Differs
    }
}

fn main() -> Result<(), String> {
    let path = std::env::args().nth(1).ok_or("usage: kuma_parity CASES.json")?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let cases: Vec<Case> = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let mut totals: BTreeMap<&str, BTreeMap<Verdict, usize>> = BTreeMap::new();
    for case in &cases {
        let tern = violations(&case.kind, &case.spec)?;
        let verdict = verdict(case, &tern);
        *totals.entry(&case.kind).or_default().entry(verdict).or_default() += 1;
        if verdict == Verdict::Differs {
            println!("{} | {}\n  kuma: {:?}\n  tern: {tern:?}", case.kind, case.name, case.expected);
        }
    }
    let mut agree = 0;
    for (kind, counts) in &totals {
        println!("{kind}: {counts:?}");
        agree += counts.iter().filter(|(v, _)| **v != Verdict::Differs).map(|(_, n)| n).sum::<usize>();
    }
    println!("agree: {agree} of {} cases", cases.len());
    Ok(())
}
