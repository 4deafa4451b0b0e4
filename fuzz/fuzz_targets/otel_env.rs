//! OTLP environment discovery on any variables: the 38 names Tern reads (the
//! seeds hold them all) and any others, with any values. Nothing panics; the
//! inventory is one the control plane accepts and survives JSON; the
//! inventory, the problems and the debug views are made of Tern's own words
//! only, so no value can reach them; the exporters build.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use tern_otlp_config::env::{HOST_IP, KUBERNETES_MARKER};
use tern_otlp_config::parse::{ParsedEnv, KNOWN_MESSAGES};
use tern_otlp_config::{
    build_exporter, group_clients, resolve_signal, BackendSettings, EnvValues, Field, Inventory, Layer, Signal,
};

/// The input is an environment block as `/proc/<pid>/environ` holds it:
/// `KEY=VALUE` entries separated by NUL bytes. Entries that are not UTF-8
/// are skipped, as `std::env::var` skips them.
fn environ(data: &[u8]) -> BTreeMap<String, String> {
    data.split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .filter_map(|entry| entry.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the data plane may print or send about its environment.
fn outputs(values: &EnvValues, parsed: &ParsedEnv, inventory: &Inventory) -> Vec<String> {
    let mut out = vec![
        serde_json::to_string(inventory).expect("an inventory always encodes"),
        format!("{inventory:?}"),
        format!("{values:?}"),
        format!("{parsed:?}"),
    ];
    out.extend(parsed.problems.iter().map(|p| format!("{} {}", p.scope(), p.message)));
    out
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty())
}

/// Every word Tern itself writes in those outputs: variable names, problem
/// messages, and the outputs of environments that reach every field, every
/// problem, every override and both halves of an incomplete client key pair.
fn vocabulary() -> &'static BTreeSet<String> {
    static VOCABULARY: OnceLock<BTreeSet<String>> = OnceLock::new();
    VOCABULARY.get_or_init(|| {
        let mut names: Vec<String> =
            Layer::ALL.iter().flat_map(|l| Field::ALL.iter().map(move |f| f.var_name(*l))).collect();
        names.extend([HOST_IP.to_string(), KUBERNETES_MARKER.to_string()]);
        // Each layer its own value, so the signal layers override the shared one.
        let mut everything: BTreeMap<String, String> = Layer::ALL
            .iter()
            .flat_map(|l| Field::ALL.iter().map(move |f| (f.var_name(*l), l.as_str().to_string())))
            .collect();
        everything.extend([(HOST_IP.to_string(), "x".to_string()), (KUBERNETES_MARKER.to_string(), "x".to_string())]);
        let halves = |suffix: &str| -> BTreeMap<String, String> {
            names.iter().filter(|n| n.ends_with(suffix)).map(|n| (n.clone(), "x".to_string())).collect()
        };
        let mut text = names.join(" ") + " " + &KNOWN_MESSAGES.join(" ");
        for env in [everything, BTreeMap::new(), halves("_CLIENT_KEY"), halves("_CLIENT_CERTIFICATE")] {
            let (values, parsed, inventory) = Inventory::discover(&env);
            text = text + " " + &outputs(&values, &parsed, &inventory).join(" ");
        }
        words(&text).map(str::to_string).collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let env = environ(data);
    let (values, parsed, inventory) = Inventory::discover(&env);
    assert!(inventory.check_received().is_ok(), "the control plane accepts what the data plane sends");
    let json = serde_json::to_string(&inventory).expect("an inventory always encodes");
    let back: Inventory = serde_json::from_str(&json).expect("an encoded inventory decodes");
    assert_eq!(back, inventory, "the inventory survives a round trip");
    for out in outputs(&values, &parsed, &inventory) {
        for word in words(&out) {
            // The length only, never the word: it may be a secret.
            assert!(vocabulary().contains(word), "an output holds a word of {} bytes Tern does not write", word.len());
        }
    }

    // An empty backend taking env input, signal overrides allowed: the
    // settings under which every variable can reach an exporter.
    // A spec-less backend: seed 000's defaults (Optional, EnvFirst, overrides allowed).
    let backend = BackendSettings::from_spec(&Default::default());
    let configs: Vec<_> = Signal::ALL
        .into_iter()
        .filter_map(|signal| {
            let resolution = resolve_signal(&backend, signal, &inventory, false);
            build_exporter(&backend, &resolution, &parsed, values.host_ip.as_deref())
        })
        .collect();
    for config in &configs {
        let _ = config.redacted().to_string();
    }
    let _ = group_clients(&configs);
});
