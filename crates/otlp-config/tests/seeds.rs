//! Every status example of seeds 000 and 001, through the engine: the control
//! plane's status from the inventory, and the data plane's exporters from the
//! same environment.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use tern_model::spec::MeshOpenTelemetryBackendSpec;
use tern_otlp_config::merge::BackendUse;
use tern_otlp_config::{
    build_exporter, group_clients, resolve_backends, BackendSettings, Inventory, Signal, SignalResolution, SignalStatus,
};

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn backend(spec_yaml: &str) -> BackendSettings {
    let value: Value = serde_yaml_ng::from_str(spec_yaml).expect("yaml");
    let value = if value.is_null() { json!({}) } else { value };
    let spec: MeshOpenTelemetryBackendSpec = serde_json::from_value(value).expect("spec");
    assert!(spec.validate().is_empty(), "test backends are valid");
    BackendSettings::from_spec(&spec)
}

/// Resolves `signals` of each backend on one dataplane with `vars`.
fn resolve(vars: &[(&str, &str)], backends: &[(&str, &BackendSettings, &[Signal])]) -> Vec<Vec<SignalResolution>> {
    let (_, _, inventory) = Inventory::discover(&env(vars));
    let uses: Vec<BackendUse> =
        backends.iter().map(|(name, settings, signals)| BackendUse { name, settings, signals }).collect();
    resolve_backends(&uses, &inventory)
}

fn status(r: &SignalResolution) -> Value {
    serde_json::to_value(SignalStatus::from(r)).expect("json")
}

const ALL: &[Signal] = &[Signal::Traces, Signal::Metrics, Signal::Logs];

#[test]
fn from_env_traces_to_tempo_logs_and_metrics_to_the_gateway() {
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel-gateway.observability:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://tempo.observability:4318"),
    ];
    let from_env = backend("");
    let resolved = resolve(&vars, &[("from-env", &from_env, ALL)]);
    let (_, parsed, _) = Inventory::discover(&env(&vars));
    for r in &resolved[0] {
        assert_eq!(status(r)["state"], "ready", "{:?}", r.signal);
        assert_eq!(status(r)["envInputPresent"], true);
    }
    assert_eq!(status(&resolved[0][0])["overrideKinds"], json!(["endpoint"]));
    let configs: Vec<_> =
        resolved[0].iter().map(|r| build_exporter(&from_env, r, &parsed, None).expect("exports")).collect();
    let by_signal = |s: Signal| configs.iter().find(|c| c.signal == s).expect("present");
    // The signal-specific endpoint is used as given; the shared one gets the signal path.
    assert_eq!(by_signal(Signal::Traces).endpoint.value, "https://tempo.observability:4318");
    assert_eq!(by_signal(Signal::Logs).endpoint.value, "https://otel-gateway.observability:4318/v1/logs");
    assert_eq!(by_signal(Signal::Metrics).endpoint.value, "https://otel-gateway.observability:4318/v1/metrics");
    for c in &configs {
        assert_eq!(c.protocol.value.as_str(), "http/protobuf");
        assert!(c.tls.value, "https means TLS");
    }
    // Logs and metrics share the default client; traces gets a dedicated one.
    assert_eq!(group_clients(&configs), vec![vec![Signal::Traces], vec![Signal::Metrics, Signal::Logs]]);
}

#[test]
fn missing_endpoint_on_kubernetes_without_host_ip() {
    let from_env = backend("");
    let r = &resolve(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")], &[("from-env", &from_env, &[Signal::Metrics])])[0][0];
    assert_eq!(
        status(r),
        json!({"enabled": true, "state": "missing", "envAllowed": true, "envInputPresent": false, "missingFields": ["endpoint"]})
    );
    assert!(!r.exports);
}

#[test]
fn node_local_collector_is_ready_where_its_address_is_known() {
    let node = backend("");
    let (_, parsed, _) = Inventory::discover(&env(&[]));
    let r = &resolve(&[], &[("node-collector", &node, &[Signal::Traces])])[0][0];
    assert_eq!(status(r)["state"], "ready");
    let c = build_exporter(&node, r, &parsed, None).expect("exports");
    assert_eq!(c.endpoint.value, "http://127.0.0.1:4317", "Universal: 127.0.0.1:4317");

    let vars = [("KUBERNETES_SERVICE_HOST", "10.96.0.1"), ("HOST_IP", "10.0.0.12")];
    let (values, parsed, _) = Inventory::discover(&env(&vars));
    let r = &resolve(&vars, &[("node-collector", &node, &[Signal::Traces])])[0][0];
    let c = build_exporter(&node, r, &parsed, values.host_ip.as_deref()).expect("exports");
    assert_eq!(c.endpoint.value, "http://10.0.0.12:4317", "Kubernetes: HOST_IP:4317");

    let http = backend("endpoint: {port: 4318, path: /otlp}\nprotocol: http");
    let r = &resolve(&[], &[("node-collector", &http, &[Signal::Logs])])[0][0];
    let (_, parsed, _) = Inventory::discover(&env(&[]));
    let c = build_exporter(&http, r, &parsed, None).expect("exports");
    assert_eq!(
        c.endpoint.value, "http://127.0.0.1:4318/otlp/v1/logs",
        "the path is a base; the signal suffix is appended"
    );
}

#[test]
fn required_without_env_is_blocked() {
    let tenant = backend("endpoint: {address: cloud.example, port: 4317}\nenv: {mode: Required}");
    let r = &resolve(&[], &[("tenant-cloud", &tenant, &[Signal::Traces])])[0][0];
    assert_eq!(
        status(r),
        json!({"enabled": true, "state": "blocked", "envAllowed": true, "envInputPresent": false, "blockedReasons": ["RequiredEnvMissing"]})
    );
    assert!(!r.exports, "explicit config does not fill the gap under Required");
}

#[test]
fn required_with_incomplete_input_names_the_missing_field() {
    let tenant = backend("endpoint: {address: cloud.example}\nenv: {mode: Required}");
    let vars = [("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=a"), ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/tls/key.pem")];
    let r = &resolve(&vars, &[("tenant-cloud", &tenant, &[Signal::Traces])])[0][0];
    assert_eq!(status(r)["state"], "blocked");
    assert_eq!(status(r)["missingFields"], json!(["client_certificate"]));
    assert_eq!(status(r)["blockedReasons"], json!(["RequiredEnvMissing"]));
    // With the pair complete, the same backend is ready and uses the env.
    let vars = [
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=a"),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k"),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c"),
    ];
    let r = &resolve(&vars, &[("tenant-cloud", &tenant, &[Signal::Traces])])[0][0];
    assert_eq!(status(r)["state"], "ready");
}

#[test]
fn two_backends_competing_for_traces_are_both_ambiguous() {
    let a = backend("endpoint: {address: a.example}");
    let b = backend("");
    let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")];
    let resolved = resolve(&vars, &[("backend-a", &a, &[Signal::Traces]), ("backend-b", &b, &[Signal::Traces])]);
    for r in [&resolved[0][0], &resolved[1][0]] {
        assert_eq!(
            status(r),
            json!({"enabled": true, "state": "ambiguous", "envAllowed": true, "envInputPresent": true, "blockedReasons": ["MultipleBackendsForSignal"]})
        );
    }
    // Env input is dropped: a exports on its explicit address, b (no address) exports nothing.
    let (_, parsed, _) = Inventory::discover(&env(&vars));
    let ca = build_exporter(&a, &resolved[0][0], &parsed, None).expect("explicit config still applies");
    assert_eq!(ca.endpoint.value, "http://a.example:4317");
    assert!(build_exporter(&b, &resolved[1][0], &parsed, None).is_none());
    // A backend with mode Disabled does not compete.
    let d = backend("endpoint: {address: d.example}\nenv: {mode: Disabled}");
    let resolved = resolve(&vars, &[("backend-a", &a, &[Signal::Traces]), ("backend-d", &d, &[Signal::Traces])]);
    assert_eq!(status(&resolved[0][0])["state"], "ready");
    assert_eq!(status(&resolved[1][0])["blockedReasons"], json!(["EnvDisabledByPolicy"]));
}

#[test]
fn disabled_with_env_present_stays_ready_on_explicit_config() {
    let regulated = backend("endpoint: {address: regulated.example, port: 4317}\nenv: {mode: Disabled}");
    let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4317"), ("OTEL_EXPORTER_OTLP_HEADERS", "k=v")];
    let r = &resolve(&vars, &[("regulated", &regulated, &[Signal::Logs])])[0][0];
    assert_eq!(
        status(r),
        json!({"enabled": true, "state": "ready", "envAllowed": false, "envInputPresent": true, "blockedReasons": ["EnvDisabledByPolicy"]})
    );
    let (_, parsed, _) = Inventory::discover(&env(&vars));
    let c = build_exporter(&regulated, r, &parsed, None).expect("exports");
    assert_eq!(c.endpoint.value, "http://regulated.example:4317");
    assert!(c.headers.is_none(), "env headers are ignored");
}

#[test]
fn signal_overrides_disallowed_is_a_soft_block() {
    let b = backend("env: {allowSignalOverrides: false}");
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://shared:4317"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
    ];
    let r = &resolve(&vars, &[("b", &b, &[Signal::Traces])])[0][0];
    assert_eq!(
        status(r),
        json!({"enabled": true, "state": "ready", "envAllowed": true, "envInputPresent": true,
               "overrideKinds": ["endpoint"], "blockedReasons": ["SignalOverridesDisallowed"]})
    );
    let (_, parsed, _) = Inventory::discover(&env(&vars));
    assert_eq!(build_exporter(&b, r, &parsed, None).expect("exports").endpoint.value, "http://shared:4317");
}

#[test]
fn precedence_decides_between_env_and_explicit() {
    let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-env:4317")];
    let (_, parsed, _) = Inventory::discover(&env(&vars));
    let env_first = backend("endpoint: {address: explicit.example}");
    let r = &resolve(&vars, &[("b", &env_first, &[Signal::Traces])])[0][0];
    assert_eq!(build_exporter(&env_first, r, &parsed, None).expect("exports").endpoint.value, "http://from-env:4317");
    let explicit_first = backend("endpoint: {address: explicit.example}\nenv: {precedence: ExplicitFirst}");
    let r = &resolve(&vars, &[("b", &explicit_first, &[Signal::Traces])])[0][0];
    assert_eq!(
        build_exporter(&explicit_first, r, &parsed, None).expect("exports").endpoint.value,
        "http://explicit.example:4317"
    );
    // ExplicitFirst with no explicit address: env fills the gap before the node-local default.
    let no_address = backend("env: {precedence: ExplicitFirst}");
    let r = &resolve(&vars, &[("b", &no_address, &[Signal::Traces])])[0][0];
    assert_eq!(build_exporter(&no_address, r, &parsed, None).expect("exports").endpoint.value, "http://from-env:4317");
}

#[test]
fn env_values_reach_the_exporter_with_their_sources() {
    let vars = [
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret,tenant=acme"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_INSECURE", "false"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/otel/ca.pem"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "not-a-number"),
    ];
    let b = backend("endpoint: {address: collector.example}");
    let (_, parsed, inventory) = Inventory::discover(&env(&vars));
    assert_eq!(inventory.validation_errors, ["metrics.timeout"]);
    let resolved = resolve(&vars, &[("b", &b, ALL)]);
    let traces = build_exporter(&b, &resolved[0][0], &parsed, None).expect("exports");
    assert_eq!(traces.endpoint.value, "https://collector.example:4317", "INSECURE=false turns TLS on");
    assert_eq!(traces.headers.as_ref().expect("headers").value.get("api-key").map(String::as_str), Some("s=cret"));
    assert_eq!(traces.timeout.value.as_millis(), 2500);
    let metrics = build_exporter(&b, &resolved[0][1], &parsed, None).expect("exports");
    assert_eq!(metrics.timeout.value.as_millis(), 2500, "an invalid signal timeout falls back to the shared one");
    let redacted = traces.redacted().to_string();
    assert!(!redacted.contains("s=cret") && !redacted.contains("ca.pem"), "{redacted}");
    assert!(redacted.contains("\"api-key\":\"<redacted>\""), "{redacted}");
}

#[test]
fn http_json_is_reported_not_guessed() {
    let (_, _, inventory) = Inventory::discover(&env(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")]));
    assert_eq!(inventory.validation_errors, ["traces.protocol"]);
    assert_eq!(inventory.problems[0].message, "http/json is not supported; use http/protobuf or grpc");
}
