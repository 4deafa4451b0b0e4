//! Inputs a backend reads on the data-plane host (header variables and
//! files, TLS files): which are missing, how a received inventory reporting
//! them is checked, and what they do to the status.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tern_model::spec::MeshOpenTelemetryBackendSpec;
use tern_otlp_config::merge::BackendUse;
use tern_otlp_config::{resolve_backends, BackendSettings, Inventory, Signal, State};

fn backend(spec_yaml: &str) -> BackendSettings {
    let value: Value = serde_yaml_ng::from_str(spec_yaml).expect("yaml");
    let spec: MeshOpenTelemetryBackendSpec = serde_json::from_value(value).expect("spec");
    assert!(spec.validate().is_empty(), "test backends are valid: {:?}", spec.validate());
    BackendSettings::from_spec(&spec)
}

const SPEC: &str = "endpoint: {address: otel.example, port: 4317}
tls: {mode: Provided, caFile: /etc/ca.pem, certFile: /etc/client.pem, keyFile: /etc/client.key}
headers:
  - {name: x-literal, value: plain}
  - {name: authorization, valueFrom: {env: OTEL_TOKEN}}
  - {name: x-api-key, valueFrom: {file: /etc/api-key}}
";

#[test]
fn unset_variables_and_unreadable_files_are_named_not_shown() {
    let b = backend(SPEC);
    let readable = |p: &Path| p == Path::new("/etc/ca.pem");
    let none: BTreeMap<String, String> = BTreeMap::new();
    assert_eq!(
        b.missing_host_inputs(&none, &readable),
        ["headers.authorization", "headers.x-api-key", "tls.certFile", "tls.keyFile"]
    );
    let env: BTreeMap<String, String> = [("OTEL_TOKEN".to_string(), "Bearer s3cret".to_string())].into();
    let all = |_: &Path| true;
    assert!(b.missing_host_inputs(&env, &all).is_empty());
}

fn resolve(spec: &str, missing: &[&str]) -> tern_otlp_config::SignalResolution {
    let settings = backend(spec);
    let mut inventory = Inventory::default();
    inventory.missing_host_inputs.insert("main".into(), missing.iter().map(|s| s.to_string()).collect());
    inventory.check_received().expect("a valid report");
    let uses = [BackendUse { name: "main", settings: &settings, signals: &[Signal::Traces] }];
    resolve_backends(&uses, &inventory).remove(0).remove(0)
}

#[test]
fn a_missing_host_input_takes_the_signal_out_of_ready() {
    let r = resolve(SPEC, &["headers.x-api-key"]);
    assert_eq!((r.state, r.exports), (State::Missing, false));
    assert_eq!(r.missing_fields, ["headers.x-api-key"]);
    assert!(r.blocked_reasons.is_empty());

    let required = format!("{SPEC}env: {{mode: Required}}\n");
    let r = resolve(&required, &["tls.caFile"]);
    assert_eq!(r.state, State::Blocked);
    assert!(r.missing_fields.contains(&"tls.caFile".to_string()), "{:?}", r.missing_fields);
    assert!(r.blocked_reasons.contains(&tern_otlp_config::BlockedReason::RequiredEnvMissing));

    let r = resolve(SPEC, &[]);
    assert_eq!((r.state, r.exports), (State::Ready, true));
}

#[test]
fn a_received_report_names_host_inputs_only() {
    for bad in ["/etc/api-key", "headers.", "headers.a b", "tls.other", "s3cret"] {
        let mut inventory = Inventory::default();
        inventory.missing_host_inputs.insert("main".into(), vec![bad.to_string()]);
        let err = inventory.check_received().expect_err(bad);
        assert!(err.starts_with("missingHostInputs: "), "{err}");
    }
    let mut inventory = Inventory::default();
    inventory.missing_host_inputs.insert("main".into(), vec!["headers.x".to_string(); 65]);
    assert!(inventory.check_received().is_err(), "bounded");
}
