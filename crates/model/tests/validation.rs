//! Kuma's validation rules, as a table: each invalid document, and exactly
//! the violations (field and message) it must produce, all at once.

use tern_model::{parse_documents, resource_from_document};

fn violations(yaml: &str) -> Vec<(String, String)> {
    let docs = parse_documents(yaml).expect("test yaml parses");
    assert_eq!(docs.len(), 1);
    match resource_from_document(&docs[0].value) {
        Ok(_) => vec![],
        Err(e) => e.violations.0.into_iter().map(|v| (v.field, v.message)).collect(),
    }
}

fn motb(spec: &str) -> String {
    format!("type: MeshOpenTelemetryBackend\nname: b\nmesh: default\nspec:\n{}", indent(spec, 2))
}

fn indent(text: &str, n: usize) -> String {
    text.lines().map(|l| format!("{}{l}\n", " ".repeat(n))).collect()
}

/// (case name, spec YAML, expected violations as (field, message)).
type Case = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(f, m)| (f.to_string(), m.to_string())).collect()
}

#[test]
fn motb_cases_match_kuma_testdata() {
    let cases: &[Case] = &[
        ("minimal-valid", "endpoint:\n  address: otel-collector.observability\n  port: 4317", &[]),
        ("full-valid-http", "endpoint:\n  address: c\n  port: 4318\n  path: /v1/custom\nprotocol: http", &[]),
        ("grpc-with-path", "endpoint:\n  path: /some/path\nprotocol: grpc", &[("spec.endpoint.path", "must not be set when protocol is grpc")]),
        ("grpc-by-default-with-path", "endpoint:\n  path: /some/path", &[("spec.endpoint.path", "must not be set when protocol is grpc")]),
        ("address-optional", "endpoint:\n  port: 4317", &[]),
        ("port-optional", "endpoint:\n  address: otel", &[]),
        ("invalid-address", "endpoint:\n  address: not a valid address!@#", &[("spec.endpoint.address", "address has to be a valid IP or hostname")]),
        ("ip-address", "endpoint:\n  address: 10.0.0.7", &[]),
        ("port-out-of-range", "endpoint:\n  port: 70000", &[("spec.endpoint.port", "port must be a valid (1-65535)")]),
        ("port-zero", "endpoint:\n  port: 0", &[("spec.endpoint.port", "port must be a valid (1-65535)")]),
        ("port-negative", "endpoint:\n  port: -1", &[("spec.endpoint.port", "port must be a valid (1-65535)")]),
        ("invalid-protocol", "protocol: tcp", &[("spec.protocol", r#""protocol" must be one of ["grpc", "http"]"#)]),
        ("path-no-slash", "endpoint:\n  path: v1/traces\nprotocol: http", &[("spec.endpoint.path", "must start with /")]),
        ("path-with-query", "endpoint:\n  path: /v1/traces?format=json\nprotocol: http", &[("spec.endpoint.path", "must not contain query or fragment")]),
        ("path-both", "endpoint:\n  path: v1#x\nprotocol: http", &[("spec.endpoint.path", "must start with /"), ("spec.endpoint.path", "must not contain query or fragment")]),
        ("env-defaults", "env: {}", &[]),
        ("env-full", "env:\n  mode: Required\n  precedence: ExplicitFirst\n  allowSignalOverrides: false", &[]),
        ("env-invalid-mode", "env:\n  mode: Sometimes", &[("spec.env.mode", r#""mode" must be one of ["Disabled", "Optional", "Required"]"#)]),
        ("env-invalid-precedence", "env:\n  precedence: Maybe", &[("spec.env.precedence", r#""precedence" must be one of ["ExplicitFirst", "EnvFirst"]"#)]),
        ("empty-spec", "{}", &[]),
        ("empty-address", "endpoint:\n  address: \"\"\n  port: 4317", &[("spec.endpoint.address", "must not be empty")]),
        (
            "every-violation-at-once",
            "endpoint:\n  address: bad address\n  port: 70000\n  path: x?\nprotocol: tcp\nenv:\n  mode: Sometimes\n  precedence: Maybe",
            &[
                ("spec.endpoint.address", "address has to be a valid IP or hostname"),
                ("spec.endpoint.port", "port must be a valid (1-65535)"),
                ("spec.endpoint.path", "must start with /"),
                ("spec.endpoint.path", "must not contain query or fragment"),
                ("spec.protocol", r#""protocol" must be one of ["grpc", "http"]"#),
                ("spec.env.mode", r#""mode" must be one of ["Disabled", "Optional", "Required"]"#),
                ("spec.env.precedence", r#""precedence" must be one of ["ExplicitFirst", "EnvFirst"]"#),
            ],
        ),
    ];
    for (name, spec, expected) in cases {
        assert_eq!(violations(&motb(spec)), pairs(expected), "case {name}");
    }
}

#[test]
fn motb_without_spec_is_valid() {
    assert_eq!(violations("type: MeshOpenTelemetryBackend\nname: b\nmesh: default\n"), vec![]);
}

#[test]
fn unknown_spec_fields_are_named() {
    let v = violations(&motb("endpoint:\n  adress: x"));
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].0, "spec.endpoint.adress");
    assert!(v[0].1.contains("unknown field `adress`"), "{v:?}");
}

#[test]
fn motb_only_in_system_namespace_on_kubernetes() {
    let doc = "apiVersion: kuma.io/v1alpha1\nkind: MeshOpenTelemetryBackend\nmetadata:\n  name: b\n  namespace: apps\n  labels:\n    kuma.io/mesh: default\n";
    assert_eq!(
        violations(doc),
        pairs(&[(
            "metadata.namespace",
            "resource type MeshOpenTelemetryBackend can be created only in the system namespace:kuma-system"
        )])
    );
    let no_ns = doc.replace("  namespace: apps\n", "");
    assert_eq!(violations(&no_ns).len(), 1);
    assert_eq!(violations(&doc.replace("apps", "kuma-system")), vec![]);
}

fn policy(kind: &str, body: &str) -> String {
    format!("type: {kind}\nname: p\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n{}", indent(body, 2))
}

const RFC_1123: &str = "invalid characters. A lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE: &str =
    "label value must be empty or letters, digits, '-', '_' or '.', starting and ending with a letter or digit";

const REF: &str = "backendRef:\n  kind: MeshOpenTelemetryBackend\n  name: main";

fn otel_backend(block: &str) -> String {
    format!("default:\n  backends:\n    - type: OpenTelemetry\n      openTelemetry:\n{}", indent(block, 8))
}

#[test]
fn backend_ref_rules_apply_to_every_signal() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        (REF, &[]),
        ("backendRef:\n  kind: MeshOpenTelemetryBackend\n  labels:\n    kuma.io/display-name: main", &[]),
        (
            "backendRef:\n  kind: MeshService\n  name: main",
            &[(".backendRef.kind", r#""kind" must be one of ["MeshOpenTelemetryBackend"]"#)],
        ),
        ("backendRef:\n  name: main", &[(".backendRef.kind", r#""kind" must be one of ["MeshOpenTelemetryBackend"]"#)]),
        (
            "backendRef:\n  kind: MeshOpenTelemetryBackend",
            &[(".backendRef", "backendRef must have exactly one defined: name, labels")],
        ),
        (
            "backendRef:\n  kind: MeshOpenTelemetryBackend\n  labels: {}",
            &[(".backendRef", "backendRef must have exactly one defined: name, labels")],
        ),
        (
            "backendRef:\n  kind: MeshOpenTelemetryBackend\n  name: a\n  labels:\n    x: y",
            &[(".backendRef", "backendRef must have only one type defined: name, labels")],
        ),
        (
            "backendRef:\n  kind: Other\n  name: a\n  labels:\n    x: y",
            &[
                (".backendRef.kind", r#""kind" must be one of ["MeshOpenTelemetryBackend"]"#),
                (".backendRef", "backendRef must have only one type defined: name, labels"),
            ],
        ),
        (
            "endpoint: collector:4317\nbackendRef:\n  kind: MeshOpenTelemetryBackend\n  name: a",
            &[("", "openTelemetry must have only one type defined: endpoint, backendRef")],
        ),
        ("{}", &[("", "openTelemetry must have exactly one defined: endpoint, backendRef")]),
        // A name or selector that could forge a log line or reach a terminal.
        (
            "backendRef:\n  kind: MeshOpenTelemetryBackend\n  name: \"main\\n2026-01-01T00:00:00Z ERROR forged\"",
            &[(".backendRef.name", RFC_1123)],
        ),
        ("backendRef:\n  kind: MeshOpenTelemetryBackend\n  name: \"x\\e[2J\"", &[(".backendRef.name", RFC_1123)]),
        (
            "backendRef:\n  kind: MeshOpenTelemetryBackend\n  labels:\n    team: \"a\\nERROR\"",
            &[(".backendRef.labels[\"team\"]", LABEL_VALUE)],
        ),
        ("endpoint: http://collector:4317/x", &[(".endpoint", "must be in host:port format, not a URL")]),
    ];
    for (kind, prefix) in [
        ("MeshTrace", "spec.default.backends[0].openTelemetry"),
        ("MeshMetric", "spec.default.backends[0].openTelemetry"),
        ("MeshAccessLog", "spec.default.backends[0].openTelemetry"),
    ] {
        for (block, expected) in cases {
            let expected: Vec<(String, String)> =
                expected.iter().map(|(f, m)| (format!("{prefix}{f}"), m.to_string())).collect();
            assert_eq!(violations(&policy(kind, &otel_backend(block))), expected, "{kind}: {block}");
        }
    }
}

#[test]
fn inline_endpoint_is_accepted_with_a_deprecation_warning() {
    for kind in ["MeshTrace", "MeshMetric", "MeshAccessLog"] {
        let docs = parse_documents(&policy(kind, &otel_backend("endpoint: otel-collector:4317"))).expect("parses");
        let parsed = resource_from_document(&docs[0].value).expect("valid");
        assert_eq!(
            parsed.warnings,
            vec!["openTelemetry.endpoint is deprecated, use openTelemetry.backendRef with a MeshOpenTelemetryBackend resource instead"],
            "{kind}"
        );
    }
}

#[test]
fn metric_endpoint_needs_a_port() {
    assert_eq!(
        violations(&policy("MeshMetric", &otel_backend("endpoint: collector"))),
        pairs(&[("spec.default.backends[0].openTelemetry.endpoint", "must be in host:port format")])
    );
    assert_eq!(violations(&policy("MeshTrace", &otel_backend("endpoint: collector"))), vec![]);
}

#[test]
fn signal_specific_fields() {
    let trace = "default:\n  backends: []\n  sampling:\n    overall: 101\n    client: \"abc\"\n    random: \"50.5\"\n  tags:\n    - name: team\n      literal: core\n      header:\n        name: x-team\n    - literal: x";
    assert_eq!(
        violations(&policy("MeshTrace", trace)),
        pairs(&[
            ("spec.default.tags[0]", "tag must have only one type defined: header, literal"),
            ("spec.default.tags[1].name", "must not be empty"),
            ("spec.default.sampling.client", "string is not a number"),
            ("spec.default.sampling.overall", "must be between 0 and 100"),
        ])
    );
    assert_eq!(violations(&policy("MeshTrace", "default: {}")), pairs(&[("spec.default.backends", "must be defined")]));
    let two = format!("{}\n    - type: OpenTelemetry\n      openTelemetry:\n{}", otel_backend(REF), indent(REF, 8));
    assert_eq!(
        violations(&policy("MeshTrace", &two)),
        pairs(&[("spec.default.backends", "must have zero or one backend defined")])
    );

    let metric = otel_backend(&format!("{REF}\nrefreshInterval: 30x"));
    assert_eq!(
        violations(&policy("MeshMetric", &metric)),
        pairs(&[(
            "spec.default.backends[0].openTelemetry.refreshInterval",
            "must be a valid duration such as 30s, 1m or 1h30m"
        )])
    );
    let metric = otel_backend(&format!("{REF}\nrefreshInterval: 30"));
    assert_eq!(
        violations(&policy("MeshMetric", &metric)),
        pairs(&[("spec.default.backends[0].openTelemetry.refreshInterval", "must be a string")])
    );
    let metric = format!(
        "{}\n  applications:\n    - port: 0\n  sidecar:\n    profiles:\n      appendProfiles:\n        - name: Most",
        otel_backend(REF)
    );
    assert_eq!(
        violations(&policy("MeshMetric", &metric)),
        pairs(&[
            (
                "spec.default.sidecar.profiles.appendProfiles[0].name",
                "unrecognized profile name 'Most' - 'All', 'None', 'Basic' are supported"
            ),
            ("spec.default.applications[0].port", "port must be a valid (1-65535)"),
        ])
    );

    let log = otel_backend(&format!(
        "{REF}\nattributes:\n  - key: http.method\n    value: \"%REQ(:METHOD)%\"\n  - key: \"%REQ(x)%\"\n    value: v\n  - key: otel.x\n    value: v\n  - key: Bad\n    value: v\nbody: \"%RESPONSE_CODE%\""
    ));
    let at = "spec.default.backends[0].openTelemetry.attributes";
    assert_eq!(
        violations(&policy("MeshAccessLog", &log)),
        pairs(&[
            (&format!("{at}[1].key"), "must be a static OpenTelemetry attribute name; placeholders are only supported in values"),
            (&format!("{at}[2].key"), "must not use the reserved OpenTelemetry prefix 'otel.'"),
            (
                &format!("{at}[3].key"),
                "must start with a lowercase letter, use only lowercase letters, digits, '.' or '_', avoid consecutive delimiters, and end with a letter or digit",
            ),
        ])
    );
    let rules = format!(
        "rules:\n  - default:\n      backends:\n        - type: OpenTelemetry\n          openTelemetry:\n{}",
        indent("backendRef:\n  kind: X\n  name: a", 12)
    );
    assert_eq!(
        violations(&policy("MeshAccessLog", &rules)),
        pairs(&[(
            "spec.rules[0].default.backends[0].openTelemetry.backendRef.kind",
            r#""kind" must be one of ["MeshOpenTelemetryBackend"]"#
        )])
    );
}

#[test]
fn target_refs() {
    let doc = |target: &str| {
        format!(
            "type: MeshTrace\nname: p\nmesh: default\nspec:\n  targetRef:\n{}  default:\n    backends: []\n",
            indent(target, 4)
        )
    };
    assert_eq!(violations(&doc("kind: MeshSubset\ntags:\n  kuma.io/zone: us-east")), vec![]);
    assert_eq!(violations(&doc("kind: Dataplane\nname: dp-1")), vec![]);
    assert_eq!(violations(&doc("kind: Dataplane\nlabels:\n  app: web")), vec![]);
    // Kuma 2.14's service kinds at the top level (selected by kuma.io/service).
    assert_eq!(violations(&doc("kind: MeshService\nname: x")), vec![]);
    assert_eq!(violations(&doc("kind: MeshServiceSubset\nname: x\ntags:\n  version: '*'\n  zone: a/b")), vec![]);
    assert_eq!(
        violations(&doc("kind: MeshService\nname: Web\ntags:\n  a: b")),
        pairs(&[
            (
                "spec.targetRef.name",
                "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'."
            ),
            ("spec.targetRef.tags", "must not be set with kind MeshService"),
        ])
    );
    assert_eq!(
        violations(&doc("kind: MeshServiceSubset\ntags:\n  version: v 1\nlabels:\n  a: b\nsectionName: http")),
        pairs(&[
            ("spec.targetRef.name", "must be set when kind is MeshServiceSubset"),
            (
                "spec.targetRef.tags[\"version\"]",
                r#"tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be "*""#
            ),
            ("spec.targetRef.labels", "must not be set with kind MeshServiceSubset"),
            ("spec.targetRef.sectionName", "must not be set with kind MeshServiceSubset"),
        ])
    );
    assert_eq!(
        violations(&doc("kind: MeshGateway\nname: edge")),
        pairs(&[("spec.targetRef.kind", "value 'MeshGateway' is not supported")])
    );
    assert_eq!(
        violations(&doc("kind: Mesh\ntags:\n  a: b")),
        pairs(&[("spec.targetRef.tags", "must not be set with kind Mesh")])
    );
    assert_eq!(
        violations(&doc("kind: Dataplane\nname: a\nlabels:\n  x: y")),
        pairs(&[("spec.targetRef.labels", "either labels or name and namespace must be specified")])
    );
    assert_eq!(violations(&doc("name: x")), pairs(&[("spec.targetRef.kind", "must be defined")]));
}

#[test]
fn dataplane_rules() {
    let ok = "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 8080\n      servicePort: 80\n      tags:\n        kuma.io/service: web\n        kuma.io/protocol: http\n  outbound:\n    - port: 9000\n      tags:\n        kuma.io/service: backend\n";
    assert_eq!(violations(ok), vec![]);
    let bad = "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: \"\"\n  admin:\n    port: 8080\n  inbound:\n    - port: 8080\n      servicePort: 70000\n      tags:\n        kuma.io/protocol: smtp\n  outbound:\n    - port: 0\n      tags: {}\n";
    assert_eq!(
        violations(bad),
        pairs(&[
            ("networking.address", "address can't be empty"),
            ("networking.inbound[0].servicePort", "port must be in the range [1, 65535]"),
            (
                r#"networking.inbound[0].tags["kuma.io/protocol"]"#,
                r#"tag "kuma.io/protocol" has an invalid value "smtp". Allowed values: grpc, http, http2, kafka, tcp"#,
            ),
            (r#"networking.inbound[0].tags["kuma.io/service"]"#, "tag has to exist"),
            ("networking.outbound[0].port", "port must be in the range [1, 65535]"),
            ("networking.outbound[0].tags", r#"mandatory tag "kuma.io/service" is missing"#),
        ])
    );
    assert_eq!(violations("type: Dataplane\nname: d\nmesh: default\n"), pairs(&[("networking", "must be defined")]));
}

/// A policy whose spec is `body` as written (indented two spaces).
fn spec_of(kind: &str, body: &str) -> String {
    format!("type: {kind}\nname: p\nmesh: default\nspec:\n{body}")
}

/// The cases issue 18 names and Kuma 2.14's own test data for them.
#[test]
fn kuma_validator_parity() {
    let dp = |admin: u16, inbound: &str, outbound: &str| {
        format!(
            "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 192.168.0.1\n  admin:\n    port: {admin}\n  inbound:\n    - {inbound}\n      tags:\n        kuma.io/service: web\n{outbound}"
        )
    };
    // Kuma: "different network interfaces" is valid; the same interface is not.
    assert_eq!(violations(&dp(8080, "port: 8080\n      servicePort: 7777\n      address: 192.168.0.1", "")), vec![]);
    assert_eq!(
        violations(&dp(8080, "port: 8080\n      servicePort: 7777\n      address: 127.0.0.1", "")),
        pairs(&[("networking.admin.port", "must differ from inbound")])
    );
    assert_eq!(
        violations(&dp(
            3333,
            "port: 8080",
            "  outbound:\n    - port: 3333\n      address: 127.0.0.1\n      tags:\n        kuma.io/service: db\n"
        )),
        pairs(&[("networking.admin.port", "must differ from outbound")])
    );
    assert_eq!(
        violations(&dp(9901, "port: 70000", "")),
        pairs(&[("networking.inbound[0].port", "port must be in the range [1, 65535]")])
    );
    let subset = spec_of("MeshTrace", "  targetRef:\n    kind: MeshSubset\n    tags:\n      invalidTag*: x\n      tag1: invalidValue?\n  default:\n    backends: []\n");
    assert_eq!(
        violations(&subset),
        pairs(&[
            (
                "spec.targetRef.tags[\"invalidTag*\"]",
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores"
            ),
            (
                "spec.targetRef.tags[\"tag1\"]",
                "tag value must consist of alphanumeric characters, dots, dashes and underscores"
            ),
        ])
    );
    let access_log = |default: &str| {
        spec_of("MeshAccessLog", &format!("  targetRef: {{kind: Mesh}}\n  rules:\n    - default:\n{default}"))
    };
    assert_eq!(
        violations(&access_log("        {}\n")),
        pairs(&[("spec.rules[0].default.backends", "must be defined")])
    );
    assert_eq!(violations(&access_log("        backends: []\n")), vec![], "an empty list is Kuma's valid case");
    let backend = |b: &str| access_log(&format!("        backends:\n          - {b}\n"));
    assert_eq!(
        violations(&backend("type: File\n            file:\n              path: \"\"")),
        pairs(&[("spec.rules[0].default.backends[0].file.path", "file backend requires a valid path")])
    );
    assert_eq!(
        violations(&backend("type: File\n            file:\n              path: \"#not_valid\"")),
        pairs(&[("spec.rules[0].default.backends[0].file.path", "file backend requires a valid path")])
    );
    assert_eq!(violations(&backend("type: File\n            file:\n              path: /dev/stdout")), vec![]);
    assert_eq!(
        violations(&backend("type: Tcp\n            tcp:\n              address: not_valid_url")),
        pairs(&[("spec.rules[0].default.backends[0].tcp.address", "tcp backend requires valid address")])
    );
    assert_eq!(violations(&backend("type: Tcp\n            tcp:\n              address: 127.0.0.1:5000")), vec![]);
    for hostile in ["é:5000", "tcp://", ":", "[::1", "a:99999999", "C:\\\\x"] {
        let found = violations(&backend(&format!("type: Tcp\n            tcp:\n              address: '{hostile}'")));
        assert_eq!(
            found,
            pairs(&[("spec.rules[0].default.backends[0].tcp.address", "tcp backend requires valid address")]),
            "{hostile}"
        );
    }
    for hostile in ["é", "C:", "C:\\\\", "\\x"] {
        let found = violations(&backend(&format!("type: File\n            file:\n              path: '{hostile}'")));
        assert!(found.iter().all(|(f, _)| f.ends_with("file.path")), "{hostile}: {found:?}");
    }
    assert_eq!(
        violations(&backend("type: Tcp\n            tcp:\n              address: tcp://logs.internal:5000")),
        vec![]
    );
    assert_eq!(
        violations(&backend("type: File\n            file:\n              path: /tmp/a.log\n              format:\n                type: Json\n                json:\n                  - key: \"\"\n                    value: \"%START_TIME%\"\n                  - key: 'a\"'\n                    value: x")),
        pairs(&[
            ("spec.rules[0].default.backends[0].file.format.json[0].key", "key cannot be empty"),
            ("spec.rules[0].default.backends[0].file.format.json[1]", "is not a valid JSON object"),
        ])
    );
    assert_eq!(
        violations(&backend("type: Tcp\n            tcp:\n              address: 127.0.0.1:5000\n              format:\n                type: Plain\n                plain: \"\"")),
        pairs(&[("spec.rules[0].default.backends[0].tcp.format.plain", "must not be empty")])
    );
    let trace = |backend: &str| {
        spec_of("MeshTrace", &format!("  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n      - {backend}\n"))
    };
    let zipkin = |url: &str| trace(&format!("type: Zipkin\n        zipkin:\n          url: \"{url}\""));
    assert_eq!(violations(&zipkin("http://zipkin.observability:9411/api/v2/spans")), vec![]);
    assert_eq!(violations(&zipkin("")), pairs(&[("spec.default.backends[0].zipkin.url", "must not be empty")]));
    assert_eq!(
        violations(&zipkin("not_valid_url")),
        pairs(&[("spec.default.backends[0].zipkin.url", "must be a valid url")])
    );
    assert_eq!(
        violations(&trace("type: Zipkin\n        zipkin:\n          url: http://z:9411\n          apiVersion: thrift")),
        pairs(&[(
            "spec.default.backends[0].zipkin.apiVersion",
            "\"apiVersion\" must be one of [\"httpJson\", \"httpProto\"]"
        )])
    );
    let datadog = |url: &str| {
        trace(&format!("type: Datadog\n        datadog:\n          url: \"{url}\"\n          splitService: true"))
    };
    assert_eq!(violations(&datadog("http://127.0.0.1:8126")), vec![]);
    let at = "spec.default.backends[0].datadog.url";
    assert_eq!(violations(&datadog("not_valid_url")), pairs(&[(at, "must be a valid url")]));
    assert_eq!(violations(&datadog("https://agent:8126")), pairs(&[(at, "scheme must be http")]));
    assert_eq!(violations(&datadog("http://agent")), pairs(&[(at, "port must be defined")]));
    assert_eq!(violations(&datadog("http://agent:999999")), pairs(&[(at, "port must be a valid (1-65535)")]));
    assert_eq!(violations(&datadog("http://agent:8126/v1")), pairs(&[(at, "path must not be defined")]));
    // Hostile URLs: non-ASCII, truncated, brackets, huge; a message, never a panic.
    for url in [
        "http://é:1/",
        "http://",
        "http://:",
        "http://[::1]:8126",
        "http://a:1?",
        "://x",
        &format!("http://{}:1", "a".repeat(100_000)),
    ] {
        let found = violations(&datadog(url));
        assert!(found.iter().all(|(f, _)| f == at), "{url}: {found:?}");
        let found = violations(&zipkin(url));
        assert!(found.iter().all(|(f, _)| f == "spec.default.backends[0].zipkin.url"), "{url}: {found:?}");
    }
    assert_eq!(violations(&datadog("http://[::1]:8126")), vec![]);
    let target = |t: &str| spec_of("MeshTrace", &format!("  targetRef:\n{t}\n  default:\n    backends: []\n"));
    assert_eq!(
        violations(&target("    kind: Mesh\n    name: x")),
        pairs(&[("spec.targetRef.name", "using name with kind Mesh is not yet supported")])
    );
    assert_eq!(
        violations(&target("    kind: Mesh\n    proxyTypes: []")),
        pairs(&[("spec.targetRef.proxyTypes", "must be undefined or have at least one element")])
    );
    assert_eq!(
        violations(&target("    kind: Dataplane\n    name: web\n    proxyTypes: [Sidecar]")),
        pairs(&[("spec.targetRef.proxyTypes", "must not be set with kind Dataplane")])
    );
    let regex = spec_of("MeshMetric", "  targetRef: {kind: Mesh}\n  default:\n    sidecar:\n      profiles:\n        exclude:\n          - type: Regex\n            match: \"(\"\n");
    assert_eq!(violations(&regex), pairs(&[("spec.default.sidecar.profiles.exclude[0].match", "invalid regex")]));
}

#[test]
fn identity_rules() {
    assert_eq!(
        violations("type: MeshOpenTelemetryBackend\nname: Main_Collector\nmesh: default\n"),
        pairs(&[(
            "name",
            "invalid characters. A lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )])
    );
    assert_eq!(violations("type: MeshOpenTelemetryBackend\nname: m\n"), pairs(&[("mesh", "cannot be empty")]));
    assert_eq!(violations("type: MeshWidget\nname: m\n"), pairs(&[("type", "unknown kind \"MeshWidget\"; known kinds: Mesh, Dataplane, DataplaneInsight, MeshOpenTelemetryBackend, MeshTrace, MeshMetric, MeshAccessLog, Zone, ZoneInsight")]));
    assert_eq!(
        violations("apiVersion: kuma.io/v1beta9\nkind: Mesh\nmetadata:\n  name: m\n"),
        pairs(&[("apiVersion", "must be kuma.io/v1alpha1")])
    );
    assert_eq!(
        violations(
            "type: Mesh\nname: other\nmtls:\n  enabledBackend: ca-1\n  backends: [{name: ca-1, type: builtin}]\n"
        ),
        vec![]
    );
}

#[test]
fn labels_follow_kubernetes_rules_in_both_forms() {
    let universal = |labels: &str| {
        violations(&format!("type: MeshOpenTelemetryBackend\nname: b\nmesh: default\nlabels:\n{}", indent(labels, 2)))
    };
    assert_eq!(universal("team: core\nexample.com/tier: Gold_1\nempty: \"\""), vec![]);
    assert_eq!(
        universal(&format!("team: {}", "a".repeat(64))),
        pairs(&[(r#"labels["team"]"#, "label value must be at most 63 characters")])
    );
    assert_eq!(universal("team: \"x\\e[2J\""), pairs(&[(r#"labels["team"]"#, LABEL_VALUE)]));
    let bad_key = universal("\"bad key\\n\": x");
    assert_eq!(bad_key.len(), 1);
    assert_eq!(bad_key[0].0, r#"labels["bad key\n"]"#, "the key is escaped in the field path");
    assert!(bad_key[0].1.starts_with("label key name must be"), "{}", bad_key[0].1);
    let kubernetes = format!("apiVersion: kuma.io/v1alpha1\nkind: MeshTrace\nmetadata:\n  name: t\n  namespace: \"apps\\n\"\n  labels:\n    kuma.io/mesh: default\n    Team/x: y\nspec:\n  targetRef:\n    kind: Mesh\n{}", indent(&otel_backend(REF), 2));
    let found = violations(&kubernetes);
    let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, [r#"metadata.labels["Team/x"]"#, "metadata.namespace"], "{found:?}");
    // The labels Tern sets itself pass: a Kubernetes document with a
    // namespace gets kuma.io/mesh, kuma.io/display-name and k8s.kuma.io/namespace.
    let fine = format!("apiVersion: kuma.io/v1alpha1\nkind: MeshTrace\nmetadata:\n  name: t\n  namespace: apps\n  labels:\n    kuma.io/mesh: default\nspec:\n  targetRef:\n    kind: Mesh\n{}", indent(&otel_backend(REF), 2));
    let docs = parse_documents(&fine).expect("yaml");
    let parsed = resource_from_document(&docs[0].value).expect("valid");
    let mut check = tern_model::Violations::default();
    tern_model::label::validate_labels(&mut check, &tern_model::FieldPath::root("labels"), &parsed.resource.labels);
    assert!(check.is_empty(), "{check}");
}

#[test]
fn long_names_survive_a_round_trip() {
    // Names may be 253 characters; the labels Tern derives from them must not
    // make the resource it prints invalid when applied again (found by fuzzing).
    let (mesh, name) = ("m".repeat(70), "n".repeat(100));
    for doc in
        [format!("type: Mesh\nname: {name}\n"), format!("type: MeshOpenTelemetryBackend\nname: {name}\nmesh: {mesh}\n")]
    {
        let parsed = resource_from_document(&parse_documents(&doc).expect("yaml")[0].value).expect("valid");
        let again = resource_from_document(&parsed.resource.to_json());
        assert!(again.is_ok(), "{doc}: {:?}", again.err().map(|e| e.violations.to_string()));
    }
    // A user's own long label value is still refused.
    let refused = violations(&format!("type: Mesh\nname: x\nlabels:\n  team: {name}\n"));
    assert_eq!(refused.len(), 1, "{refused:?}");
}

/// (case name, whole document, expected violations as (field, message)).
type DocCase = (&'static str, String, &'static [(&'static str, &'static str)]);

/// (case name, kind, spec YAML, expected violations as (field, message)).
type KindCase = (&'static str, &'static str, &'static str, &'static [(&'static str, &'static str)]);

/// Kuma 2.14's rules for where MeshAccessLog items may point, `rules`
/// beside `to`/`from`, `sectionName`, and MeshMetric's messages for profiles
/// and selectors (Tern keeps its own field paths there; see the README).
#[test]
fn target_positions_and_metric_messages() {
    let cases: &[KindCase] = &[
        (
            "rules beside to and from; from only Mesh; sectionName on MeshService",
            "MeshAccessLog",
            "targetRef: {kind: Mesh}\nrules:\n  - default: {backends: []}\nto:\n  - targetRef: {kind: MeshService, name: x, sectionName: http}\n    default: {backends: []}\nfrom:\n  - targetRef: {kind: Mesh, sectionName: x}\n    default: {backends: []}",
            &[
                ("spec.from[0].targetRef.sectionName", "must not be set with kind Mesh"),
                ("spec", "fields 'to' and 'from' must be empty when 'rules' is defined"),
            ],
        ),
        (
            "Dataplane sectionName without an inbound part; MeshService without a name",
            "MeshAccessLog",
            "targetRef: {kind: Dataplane, sectionName: http}\nto:\n  - targetRef: {kind: MeshService}\n    default: {backends: []}",
            &[
                ("spec.targetRef.sectionName", "can only be used with inbound policies"),
                ("spec.to[0].targetRef", "name or labels must be set when kind is MeshService"),
            ],
        ),
        (
            "Dataplane sectionName with rules is an inbound policy",
            "MeshAccessLog",
            "targetRef: {kind: Dataplane, sectionName: http}\nrules:\n  - default: {backends: []}",
            &[],
        ),
        (
            "from takes Mesh only; to takes no MeshGateway",
            "MeshAccessLog",
            "targetRef: {kind: Mesh}\nfrom:\n  - targetRef: {kind: MeshService, name: a}\n    default: {backends: []}\nto:\n  - targetRef: {kind: MeshGateway, name: g}\n    default: {backends: []}",
            &[
                ("spec.to[0].targetRef.kind", "value 'MeshGateway' is not supported"),
                ("spec.from[0].targetRef.kind", "value 'MeshService' is not supported"),
            ],
        ),
        (
            "MeshTrace refuses a Dataplane sectionName",
            "MeshTrace",
            "targetRef: {kind: Dataplane, sectionName: http}\ndefault: {backends: []}",
            &[("spec.targetRef.sectionName", "can only be used with inbound policies")],
        ),
        (
            "MeshMetric profile names and selector types in Kuma's words",
            "MeshMetric",
            "targetRef: {kind: Mesh}\ndefault:\n  sidecar:\n    profiles:\n      appendProfiles: [{name: Some}]\n      exclude: [{type: Regex, match: '('}, {type: Glob, match: x}]",
            &[
                ("spec.default.sidecar.profiles.appendProfiles[0].name", "unrecognized profile name 'Some' - 'All', 'None', 'Basic' are supported"),
                ("spec.default.sidecar.profiles.exclude[0].match", "invalid regex"),
                ("spec.default.sidecar.profiles.exclude[1].type", "unrecognized type 'Glob' - 'Regex', 'Prefix', 'Exact' are supported"),
            ],
        ),
    ];
    for (name, kind, body, expected) in cases {
        assert_eq!(violations(&spec_of(kind, &indent(body, 2))), pairs(expected), "case {name}");
    }
}

/// What only Kuma's schema would refuse (a wrong type, a missing required
/// field, an unknown value) is named at its field in the schema's words,
/// and every other violation of the document is still reported.
#[test]
fn schema_errors_never_hide_the_rest() {
    let cases: &[KindCase] = &[
        (
            "missing targetRef of a to item, beside a bad path",
            "MeshAccessLog",
            "targetRef: {kind: Mesh}\nto:\n  - default: {backends: []}\nfrom:\n  - targetRef: {kind: Mesh}\n    default: {backends: [{type: File, file: {path: rel}}]}",
            &[
                ("spec.to[0].targetRef", "must be defined"),
                ("spec.from[0].default.backends[0].file.path", "file backend requires a valid path"),
            ],
        ),
        (
            "wrong types everywhere",
            "MeshTrace",
            "targetRef: {kind: Mesh}\ndefault:\n  backends:\n    - type: Zipkin\n      zipkin: {url: 5, traceId128bit: maybe}\n  sampling: {overall: [1], client: 101}",
            &[
                ("spec.default.backends[0].zipkin.url", "must be a string"),
                ("spec.default.backends[0].zipkin.traceId128bit", "must be a boolean"),
                ("spec.default.sampling.overall", "must be a number or a string holding one"),
                ("spec.default.sampling.client", "must be between 0 and 100"),
            ],
        ),
        (
            "a port that is not a number, and one out of range",
            "MeshMetric",
            "targetRef: {kind: Mesh}\ndefault:\n  applications:\n    - port: abc\n    - port: 0",
            &[
                ("spec.default.applications[0].port", "must be an integer"),
                ("spec.default.applications[1].port", "port must be a valid (1-65535)"),
            ],
        ),
        (
            "a json entry without its value, and a relative path",
            "MeshAccessLog",
            "targetRef: {kind: Mesh}\nrules:\n  - default:\n      backends:\n        - type: File\n          file: {path: /x, format: {type: Json, json: [{key: a}]}}\n        - type: File\n          file: {path: rel}",
            &[
                ("spec.rules[0].default.backends[0].file.format.json[0].value", "value cannot be empty"),
                ("spec.rules[0].default.backends[1].file.path", "file backend requires a valid path"),
            ],
        ),
        (
            "a list where an object belongs, and an unknown field",
            "MeshAccessLog",
            "targetRef: {kind: Mesh}\nrules:\n  - default:\n      backends:\n        - 5\n        - type: File\n          file: {path: /x, colour: red}",
            &[
                ("spec.rules[0].default.backends[0]", "must be an object"),
                ("spec.rules[0].default.backends[1].file.colour", "unknown field `colour`, expected `path` or `format`"),
            ],
        ),
    ];
    for (name, kind, body, expected) in cases {
        assert_eq!(violations(&spec_of(kind, &indent(body, 2))), pairs(expected), "case {name}");
    }
}

/// Kuma 2.14's Dataplane rules beyond the basics: what it accepts (no inbound
/// tags, any case of a protocol, `tls`, `backendRef` outbounds) and what it
/// refuses (backendRef, serviceAddress overlap, inbound `protocol`, service
/// probes, virtual probes, gateways), with its messages and order.
#[test]
fn dataplane_parity() {
    let dp =
        |networking: &str| format!("type: Dataplane\nname: d\nmesh: default\nnetworking:\n{}", indent(networking, 2));
    let cases: &[DocCase] = &[
        ("inbound without tags", dp("address: 10.0.0.1\ninbound: [{port: 8080}]"), &[]),
        (
            "protocol in capitals, tls and mysql",
            dp("address: 10.0.0.1\ninbound:\n  - {port: 8080, tags: {kuma.io/service: a, kuma.io/protocol: HTTP}}\n  - {port: 8081, tags: {kuma.io/service: b, kuma.io/protocol: tls}}\n  - {port: 8082, tags: {kuma.io/service: c, kuma.io/protocol: mysql}}"),
            &[],
        ),
        (
            "backendRef outbound",
            dp("address: 10.0.0.1\noutbound: [{port: 3333, backendRef: {kind: MeshService, name: redis, port: 6379}}]"),
            &[],
        ),
        (
            "empty backendRef",
            dp("address: 10.0.0.1\noutbound: [{port: 3333, backendRef: {}}]"),
            &[
                ("networking.outbound[0].backendRef.kind", "invalid value. Available values are: MeshExternalService,MeshMultiZoneService,MeshService"),
                ("networking.outbound[0].backendRef", "either 'name' or 'labels' should be specified"),
                ("networking.outbound[0].backendRef.port", "port must be in the range [1, 65535]"),
            ],
        ),
        (
            "backendRef beside tags",
            dp("address: 10.0.0.1\noutbound: [{port: 3333, tags: {kuma.io/service: x}, backendRef: {kind: MeshService, name: x, port: 80}}]"),
            &[("networking.outbound[0].backendRef", "both backendRef and tags/service cannot be defined")],
        ),
        (
            "outbound tags without a service: tag rules first",
            dp("address: 10.0.0.1\noutbound: [{port: 3333, tags: {version: 'v 1'}}]"),
            &[
                (r#"networking.outbound[0].tags["version"]"#, "tag value must consist of alphanumeric characters, dots, dashes and underscores"),
                ("networking.outbound[0].tags", r#"mandatory tag "kuma.io/service" is missing"#),
            ],
        ),
        (
            "serviceAddress on the data plane's own address and port",
            dp("address: 192.168.0.1\ninbound: [{port: 10001, serviceAddress: 192.168.0.1, tags: {kuma.io/service: b}}]"),
            &[("networking.inbound[0].serviceAddress", "serviceAddress and servicePort has to differ from address and port")],
        ),
        (
            "inbound protocol field and service probe",
            dp("address: 10.0.0.1\ninbound: [{port: 8080, protocol: smtp, serviceProbe: {interval: 0s, timeout: soon, unhealthyThreshold: 0}, tags: {kuma.io/service: b}}]"),
            &[
                ("networking.inbound[0].protocol", r#"has an invalid value "smtp". Allowed values: grpc, http, http2, kafka, tcp"#),
                ("networking.inbound[0].serviceProbe.interval", "must have a positive value"),
                ("networking.inbound[0].serviceProbe.timeout", "must have a valid value"),
                ("networking.inbound[0].serviceProbe.unhealthyThreshold", "must have a positive value"),
            ],
        ),
        (
            "delegated gateway with an inbound and an http protocol tag",
            dp("address: 10.0.0.1\ngateway: {tags: {kuma.io/service: kong, kuma.io/protocol: http}}\ninbound: [{port: 8080, tags: {kuma.io/service: b}}]"),
            &[
                ("networking.inbound", "inbound cannot be defined for delegated gateways"),
                (r#"networking.gateway.tags["kuma.io/protocol"]"#, r#"other values than tcp are not allowed, provided value "http""#),
            ],
        ),
        (
            "builtin gateway with an outbound",
            dp("address: 10.0.0.1\ngateway: {type: BUILTIN, tags: {kuma.io/service: gw}}\noutbound: [{port: 3333, tags: {kuma.io/service: r}}]"),
            &[("networking.outbound", "outbound cannot be defined for builtin gateways")],
        ),
        (
            "virtual probes",
            dp("address: 10.0.0.1\ninbound: [{port: 8080, tags: {kuma.io/service: b}}]")
                + "probes: {port: 0, endpoints: [{inboundPort: 8080, inboundPath: /healthz, path: healthz}]}\n",
            &[
                ("probes.port", "port must be in the range [1, 65535]"),
                ("probes.endpoints[0].path", "should be a valid URL Path"),
            ],
        ),
    ];
    for (name, doc, expected) in cases {
        assert_eq!(violations(doc), pairs(expected), "case {name}");
    }
}

/// Kuma 2.14's `Mesh` rules (its `Validate()`), all at once and in its order;
/// a Mesh Kuma accepts stays exactly as written.
#[test]
fn mesh_parity() {
    let mesh = |body: &str| format!("type: Mesh\nname: m\n{body}");
    let cases: &[DocCase] = &[
        ("empty", mesh(""), &[]),
        (
            "mtls: two backends, a duplicate name, a bad expiration, an unknown enabled backend",
            mesh("mtls:\n  enabledBackend: ca-3\n  backends:\n    - {name: ca-1, type: builtin, dpCert: {rotation: {expiration: 1day}}}\n    - {name: ca-1, type: builtin}\n"),
            &[
                ("mtls.backends", "cannot have more than 1 backends"),
                ("mtls.dpcert.rotation.expiration", "has to be a valid format"),
                ("mtls.backends[1].name", r#""ca-1" name is already used for another backend"#),
                ("mtls.enabledBackend", "has to be set to one of the backends in the mesh"),
            ],
        ),
        (
            "a provided CA without its files",
            mesh("mtls:\n  enabledBackend: p\n  backends:\n    - {name: p, type: provided, conf: {}}\n"),
            &[("mtls.backends[0].conf.cert", "has to be defined"), ("mtls.backends[0].conf.key", "has to be defined")],
        ),
        (
            "an unknown CA type",
            mesh("mtls:\n  enabledBackend: ca-1\n  backends: [{name: ca-1, type: bulitin}]\n"),
            &[("mtls.backends[0].type", "could not find installed plugin for this type")],
        ),
        (
            "old-style logging, tracing and metrics backends",
            mesh("logging:\n  defaultBackend: nope\n  backends:\n    - {name: '', type: tcp, conf: {address: logstash}}\n    - {name: f, type: file, conf: {}}\n    - {name: s, type: syslog}\ntracing:\n  backends:\n    - {name: z, type: zipkin, sampling: 120, conf: {url: 'http://zipkin/api/v2/spans', apiVersion: v3}}\n    - {name: d, type: datadog, conf: {port: 0}}\nmetrics:\n  enabledBackend: prom\n  backends:\n    - {name: p, type: graphite}\n"),
            &[
                ("logging.backends[0].name", "cannot be empty"),
                ("logging.backends[0].config.address", "has to be in format of HOST:PORT"),
                ("logging.backends[1].config.path", "cannot be empty"),
                ("logging.backends[2].type", r#"unknown backend type. Available backends: "tcp", "file""#),
                ("logging.defaultBackend", "has to be set to one of the logging backend in mesh"),
                ("tracing.backends[0].sampling", "has to be in [0.0 - 100.0] range"),
                ("tracing.backends[0].config.apiVersion", "has invalid value. Allowed values: httpJsonV1, httpJson, httpProto"),
                ("tracing.backends[0].config.url", "port has to be explicitly specified"),
                ("tracing.backends[1].config.address", "cannot be empty"),
                ("tracing.backends[1].config.port", "port must be in the range [1, 65535]"),
                ("metrics.backends[0].type", r#"unknown backend type. Available backends: "prometheus""#),
                ("metrics.enabledBackend", "has to be set to one of the backends in the mesh"),
            ],
        ),
        (
            "constraints and zone egress",
            mesh("constraints:\n  dataplaneProxy:\n    requirements:\n      - tags: {}\n      - tags: {kuma.io/zone: '*', team: 'a b'}\nrouting:\n  zoneEgress: true\n"),
            &[
                ("constraints.dataplaneProxy.requirements[0].tags", "must have at least one tag"),
                (
                    r#"constraints.dataplaneProxy.requirements[1].tags["team"]"#,
                    r#"tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be "*""#,
                ),
                ("mtls", "has to be set when zoneEgress enabled"),
            ],
        ),
        (
            "wrong types are named, the rest still checked",
            mesh("mtls: {enabledBackend: 5, backends: [{name: a, type: builtin}]}\nrouting: {zoneEgress: maybe}\n"),
            &[("mtls.enabledBackend", "must be a string"), ("routing.zoneEgress", "must be a boolean")],
        ),
    ];
    for (name, doc, expected) in cases {
        assert_eq!(violations(doc), pairs(expected), "case {name}");
    }
    // Accepted Meshes keep every field as written, unknown ones included.
    let doc = mesh("mtls:\n  enabledBackend: ca-1\n  backends: [{name: ca-1, type: builtin}]\nmeshServices: {mode: Exclusive}\nsomethingNew: 1\n");
    let docs = tern_model::parse_documents(&doc).expect("parses");
    let resource = tern_model::resource_from_document(&docs[0].value).expect("valid");
    assert_eq!(resource.resource.spec["meshServices"]["mode"], "Exclusive");
    assert_eq!(resource.resource.spec["somethingNew"], 1);
}

/// Tern's extensions of MeshOpenTelemetryBackend: `timeout`, `retry` and
/// `queue`, each rule with its message, all at once.
#[test]
fn backend_delivery_extensions() {
    assert_eq!(
        violations(&motb("timeout: 2s\nretry: {initialBackoff: 100ms, maxBackoff: 5s, maxElapsedTime: '0'}\nqueue: {maxRequests: 64, maxBytes: 1048576}")),
        vec![]
    );
    assert_eq!(
        violations(&motb("timeout: 0s\nretry: {initialBackoff: 10s, maxBackoff: 1s, maxElapsedTime: soon}\nqueue: {maxRequests: 0, maxBytes: 10}")),
        pairs(&[
            ("spec.timeout", "must be greater than 0"),
            ("spec.retry.maxElapsedTime", "must be a valid duration such as 30s, 1m or 1h30m"),
            ("spec.retry.initialBackoff", "must not be greater than maxBackoff"),
            ("spec.queue.maxRequests", "must be between 1 and 1000000"),
            ("spec.queue.maxBytes", "must be between 1024 and 4294967296"),
        ])
    );
    assert_eq!(violations(&motb("timeout: -1s")), pairs(&[("spec.timeout", "must not be negative when defined")]));
}

/// The rest of Kuma 2.14's Dataplane rules: reachable backends of a
/// transparent proxy, zone ingress/egress listeners, the old-style metrics.
#[test]
fn dataplane_parity_rest() {
    let dp = |body: &str| format!("type: Dataplane\nname: d\nmesh: default\n{body}");
    let cases: &[DocCase] = &[
        (
            "reachable backends",
            dp("networking:\n  address: 10.0.0.1\n  transparentProxying:\n    reachableBackends:\n      refs:\n        - {kind: MeshGateway, name: Bad_Name}\n        - {kind: MeshService, namespace: ns}\n        - {kind: MeshService, name: a, labels: {app: a}}\n"),
            &[
                ("networking.transparentProxing.reachableBackends.refs[0].kind", "invalid value. Available values are: MeshExternalService,MeshMultiZoneService,MeshService"),
                ("networking.transparentProxing.reachableBackends.refs[0].name", "invalid characters. A lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
                ("networking.transparentProxing.reachableBackends.refs[1].name", "name or labels are required"),
                ("networking.transparentProxing.reachableBackends.refs[1].name", "name is required, when namespace is defined"),
                ("networking.transparentProxing.reachableBackends.refs[2].labels", "labels cannot be defined when name is specified"),
            ],
        ),
        (
            "listeners",
            dp("networking:\n  address: 10.0.0.1\n  inbound: [{port: 8080, name: main, tags: {kuma.io/service: a}}]\n  listeners:\n    - {type: Sidecar, address: 0.0.0.0, port: 0, name: main}\n    - {type: ZoneEgress, address: 10.0.0.1, port: 10002}\n"),
            &[
                ("networking.listeners[0].type", "type must be ZoneIngress or ZoneEgress"),
                ("networking.listeners[0].address", "must not be 0.0.0.0 or ::"),
                ("networking.listeners[0].port", "port must be in the range [1, 65535]"),
                ("networking.listeners[0].name", r#"name "main" must be unique across inbounds and listeners"#),
            ],
        ),
        (
            "old-style metrics",
            dp("networking: {address: 10.0.0.1}\nmetrics:\n  type: prometheus\n  conf:\n    aggregate:\n      - {name: app, port: 1234}\n      - {name: app, port: 1235}\n"),
            &[("metrics.conf.aggregate[1].name", "duplicate entry: app, values have to be unique")],
        ),
        (
            "metrics of another type, and skipMTLS against tls",
            dp("networking: {address: 10.0.0.1}\nmetrics: {type: statsd}\n"),
            &[("metrics.type", r#"unknown backend type. Available backends: "prometheus""#)],
        ),
        (
            "skipMTLS with a TLS mode that contradicts it",
            dp("networking: {address: 10.0.0.1}\nmetrics: {type: prometheus, conf: {skipMTLS: true, tls: {mode: providedTLS}}}\n"),
            &[("metrics.conf", "skipMTLS and tls configuration cannot be defined together")],
        ),
    ];
    for (name, doc, expected) in cases {
        assert_eq!(violations(doc), pairs(expected), "case {name}");
    }
    let bad_regex = violations(&dp(
        "networking: {address: 10.0.0.1}\nmetrics: {type: prometheus, conf: {envoy: {filterRegex: '('}}}\n",
    ));
    assert_eq!(bad_regex.len(), 1);
    assert_eq!(bad_regex[0].0, "metrics.conf.envoy.filterRegex");
    assert!(bad_regex[0].1.starts_with("provided regexp isn't correct: "), "{bad_regex:?}");
}

/// Tern's extensions of MeshOpenTelemetryBackend: `tls` and `headers`.
#[test]
fn backend_tls_and_headers_extensions() {
    assert_eq!(
        violations(&motb("tls: {mode: Provided, caFile: /etc/ca.pem, certFile: /etc/c.pem, keyFile: /etc/c.key}\nheaders:\n  - {name: x-team, value: payments}\n  - {name: authorization, valueFrom: {env: OTLP_TOKEN}}\n  - {name: x-key, valueFrom: {file: /run/secrets/key}}")),
        vec![]
    );
    assert_eq!(
        violations(&motb("tls: {mode: Sometimes, caFile: ca.pem, certFile: /c.pem}\nheaders:\n  - {name: 'bad header', value: a}\n  - {name: x-a}\n  - {name: x-b, value: a, valueFrom: {env: B}}\n  - {name: x-c, valueFrom: {env: '1BAD'}}\n  - {name: x-d, valueFrom: {env: D, file: /d}}\n  - {name: X-Team, value: a}\n  - {name: x-team, value: b}")),
        pairs(&[
            ("spec.tls.mode", r#""mode" must be one of ["Disabled", "System", "Provided"]"#),
            ("spec.tls.caFile", "must not be set when mode is Sometimes"),
            ("spec.tls.certFile", "must not be set when mode is Sometimes"),
            ("spec.tls.keyFile", "must be set with certFile"),
            ("spec.headers[0].name", "must be a valid HTTP header name"),
            ("spec.headers[1]", "must have exactly one defined: value, valueFrom"),
            ("spec.headers[2]", "must have exactly one defined: value, valueFrom"),
            ("spec.headers[3].valueFrom.env", "must be a valid environment variable name"),
            ("spec.headers[4].valueFrom", "must have exactly one defined: env, file"),
            ("spec.headers[6].name", r#""x-team" is already defined"#),
        ])
    );
    assert_eq!(
        violations(&motb("tls: {mode: Disabled, caFile: /ca.pem}")),
        pairs(&[("spec.tls.caFile", "must not be set when mode is Disabled")])
    );
    assert_eq!(
        violations(&motb("tls: {mode: Provided}\nheaders: [{name: x, valueFrom: {file: rel/path}}]")),
        pairs(&[
            ("spec.tls", "mode Provided needs caFile, or certFile and keyFile"),
            ("spec.headers[0].valueFrom.file", "must be an absolute path"),
        ])
    );
}

/// Tern's extension of MeshTrace: `propagators`, checked against what the
/// backend's tracer in Envoy can do.
#[test]
fn trace_propagators() {
    let trace = |backend: &str, list: &str| {
        spec_of(
            "MeshTrace",
            &indent(&format!("targetRef: {{kind: Mesh}}\ndefault:\n  backends: [{backend}]\n  propagators: {list}"), 2),
        )
    };
    const OTEL: &str =
        "{type: OpenTelemetry, openTelemetry: {backendRef: {kind: MeshOpenTelemetryBackend, name: main}}}";
    const ZIPKIN: &str = "{type: Zipkin, zipkin: {url: 'http://zipkin:9411/api/v2/spans'}}";
    assert_eq!(violations(&trace(OTEL, "[w3c_tracecontext, w3c_baggage]")), vec![]);
    assert_eq!(violations(&trace(ZIPKIN, "[b3, w3c_tracecontext]")), vec![]);
    assert_eq!(
        violations(&trace(OTEL, "[b3, jaeger, b3, w3c_baggage]")),
        pairs(&[
            (
                "spec.default.propagators[0]",
                "b3 is not available with the OpenTelemetry backend (Envoy's OpenTelemetry tracer propagates w3c_tracecontext, w3c_baggage)"
            ),
            (
                "spec.default.propagators[1]",
                r#""propagators" must be one of ["w3c_tracecontext", "w3c_baggage", "b3", "b3multi", "datadog"]"#
            ),
            ("spec.default.propagators[2]", "b3 is listed more than once"),
            ("spec.default.propagators", "must include w3c_tracecontext with the OpenTelemetry backend"),
        ])
    );
}
