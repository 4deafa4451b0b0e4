//! Property tests: the inventory never carries a value, and the control
//! plane's status always agrees with what the data plane does.

use proptest::prelude::*;
use std::collections::BTreeMap;
use tern_model::spec::motb::{EffectiveEnvPolicy, EnvMode, Precedence, Protocol};
use tern_otlp_config::merge::BackendUse;
use tern_otlp_config::{
    build_exporter, resolve_backends, resolve_signal, BackendSettings, BlockedReason, Field, HeaderSetting,
    HeaderSource, Inventory, Layer, Signal, Source, State, TlsSettings,
};

/// A secret-looking token: long and random enough that finding it anywhere
/// in the output can only mean it leaked.
fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{12,24}".prop_map(|s| format!("Zq{s}"))
}

/// Realistic and unrealistic values carrying a secret for any field.
fn value_with(secret: String) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(secret.clone()),
        Just(format!("https://{}.example:4318/{}", secret.to_lowercase(), secret)),
        Just(format!("http://collector:4317/{secret}")),
        Just(format!("authorization=Bearer%20{secret},x-tenant={secret}")),
        Just(format!("/etc/otel/{secret}.pem")),
        Just(format!("{secret}=")),
    ]
}

fn all_var_names() -> Vec<String> {
    let mut names: Vec<String> =
        Layer::ALL.iter().flat_map(|l| Field::ALL.iter().map(move |f| f.var_name(*l))).collect();
    names.push("HOST_IP".into());
    names
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn inventory_never_carries_a_value(
        secrets in proptest::collection::vec(secret().prop_flat_map(|s| (Just(s.clone()), value_with(s))), 37),
        mask in proptest::collection::vec(any::<bool>(), 37),
    ) {
        let names = all_var_names();
        let mut vars = BTreeMap::new();
        let mut tokens = Vec::new();
        for ((name, (token, value)), on) in names.iter().zip(&secrets).zip(&mask) {
            if *on {
                vars.insert(name.clone(), value.clone());
                tokens.push(token.clone());
            }
        }
        vars.insert("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into());
        let (values, parsed, inventory) = Inventory::discover(&vars);
        // Everything the data plane may send or log about its environment.
        let outputs = [
            serde_json::to_string(&inventory).expect("json"),
            format!("{inventory:?}"),
            format!("{values:?}"),
            format!("{parsed:?}"),
        ];
        for out in &outputs {
            for token in &tokens {
                prop_assert!(!out.contains(token.as_str()), "{token} leaked into {out}");
                prop_assert!(!out.to_lowercase().contains(&token.to_lowercase()), "{token} leaked (case-folded) into {out}");
            }
        }
        prop_assert!(inventory.check_received().is_ok(), "what the data plane sends, the control plane accepts");
        let back: Inventory = serde_json::from_str(&outputs[0]).expect("round trip");
        prop_assert_eq!(back, inventory);
    }
}

/// Env values that are valid or invalid in the ways that matter to the merge.
fn env_var() -> impl Strategy<Value = (String, String)> {
    let layer = prop::sample::select(Layer::ALL.to_vec());
    let field = prop::sample::select(Field::ALL.to_vec());
    (layer, field).prop_flat_map(|(l, f)| {
        let values: Vec<&'static str> = match f {
            Field::Endpoint => vec!["http://c:4317", "https://c:4318/base", "collector:4317", "http://other:4317"],
            Field::Protocol => vec!["grpc", "http/protobuf", "http/json"],
            Field::Headers => vec!["k=v", "novalue"],
            Field::Insecure => vec!["true", "false", "maybe"],
            Field::Timeout => vec!["1000", "-5"],
            Field::Compression => vec!["gzip", "none", "zstd"],
            _ => vec!["/path/a.pem", "/path/b.pem"],
        };
        (Just(f.var_name(l)), prop::sample::select(values).prop_map(str::to_string))
    })
}

fn backend_settings() -> impl Strategy<Value = BackendSettings> {
    (
        prop::option::of(prop::sample::select(vec!["collector.example", "10.0.0.9"])),
        prop::option::of(prop::sample::select(vec![4317u16, 4318, 443])),
        prop::option::of(Just("/base".to_string())),
        prop::option::of(prop::sample::select(vec![Protocol::Grpc, Protocol::Http])),
        prop::sample::select(vec![EnvMode::Disabled, EnvMode::Optional, EnvMode::Required]),
        prop::sample::select(vec![Precedence::EnvFirst, Precedence::ExplicitFirst]),
        any::<bool>(),
        prop::option::of(1u64..60_000),
    )
        .prop_map(|(address, port, path, protocol, mode, precedence, allow, timeout_ms)| BackendSettings {
            address: address.map(str::to_string),
            port,
            path: if protocol == Some(Protocol::Http) { path } else { None },
            protocol,
            env_policy: EffectiveEnvPolicy { mode, precedence, allow_signal_overrides: allow },
            timeout_ms,
            delivery: Default::default(),
            tls: None,
            headers: Vec::new(),
        })
}

fn signals() -> impl Strategy<Value = Vec<Signal>> {
    prop::sample::subsequence(Signal::ALL.to_vec(), 1..=3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn status_agrees_with_what_the_data_plane_does(
        vars in proptest::collection::btree_map(any::<u8>(), env_var(), 0..8),
        backends in proptest::collection::vec((backend_settings(), signals()), 1..4),
        kubernetes in any::<bool>(),
        host_ip in any::<bool>(),
    ) {
        let mut env: BTreeMap<String, String> = vars.into_values().collect();
        if kubernetes { env.insert("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()); }
        if host_ip { env.insert("HOST_IP".into(), "10.0.0.12".into()); }

        // Control plane: status from the inventory the data plane sent.
        let (values, parsed, inventory) = Inventory::discover(&env);
        let sent: Inventory = serde_json::from_str(&serde_json::to_string(&inventory).expect("json")).expect("json");
        let names: Vec<String> = (0..backends.len()).map(|i| format!("b{i}")).collect();
        let uses: Vec<BackendUse> = backends.iter().zip(&names)
            .map(|((settings, signals), name)| BackendUse { name, settings, signals })
            .collect();
        let statuses = resolve_backends(&uses, &sent);

        // Data plane: its own resolution with the plan's ambiguity flag, then the exporter.
        for ((settings, signals), cp) in backends.iter().zip(&statuses) {
            for (signal, status) in signals.iter().zip(cp) {
                let ambiguous = status.blocked_reasons.contains(&BlockedReason::MultipleBackendsForSignal);
                let local = resolve_signal(settings, *signal, &inventory, ambiguous);
                prop_assert_eq!(&local, status, "data plane and control plane resolve alike");
                let config = build_exporter(settings, &local, &parsed, values.host_ip.as_deref());

                // ready exactly when an endpoint results (ambiguous may still
                // export on an explicit address, by Tern's reading).
                if status.state == State::Ready {
                    prop_assert!(config.is_some(), "ready but no exporter: {:?}", status);
                }
                if config.is_some() {
                    prop_assert!(
                        status.state == State::Ready
                            || (status.state == State::Ambiguous && settings.address.is_some()),
                        "exports while {:?}", status
                    );
                }
                if status.state == State::Missing {
                    prop_assert!(status.missing_fields.contains(&"endpoint".to_string()));
                }
                // Never a layer the status says was blocked.
                if let Some(c) = &config {
                    let used: Vec<Source> = [
                        Some(c.protocol.source), Some(c.endpoint.source), Some(c.tls.source),
                        c.headers.as_ref().map(|h| h.source), c.certificate.as_ref().map(|x| x.source),
                        c.client_pair.as_ref().map(|x| x.source), Some(c.compression.source), Some(c.timeout.source),
                    ].into_iter().flatten().collect();
                    let env_blocked = status.blocked_reasons.iter().any(|r| matches!(r,
                        BlockedReason::EnvDisabledByPolicy | BlockedReason::MultipleBackendsForSignal));
                    if env_blocked || !status.env_allowed {
                        prop_assert!(!used.iter().any(|s| matches!(s, Source::SignalEnv | Source::SharedEnv)), "{:?} used env", used);
                    }
                    if status.blocked_reasons.contains(&BlockedReason::SignalOverridesDisallowed) || !settings.env_policy.allow_signal_overrides {
                        prop_assert!(!used.contains(&Source::SignalEnv), "{:?} used the signal layer", used);
                    }
                    // The backend's own timeout is the explicit source, first under ExplicitFirst.
                    if c.timeout.source == Source::Explicit {
                        prop_assert_eq!(Some(c.timeout.value.as_millis() as u64), settings.timeout_ms);
                    }
                    if settings.timeout_ms.is_some() && settings.env_policy.precedence == Precedence::ExplicitFirst {
                        prop_assert_eq!(c.timeout.source, Source::Explicit);
                    }
                    let expected_scheme = if c.tls.value { "https://" } else { "http://" };
                    prop_assert!(c.endpoint.value.starts_with(expected_scheme), "{} vs tls {}", c.endpoint.value, c.tls.value);
                }
            }
        }
    }
}

/// Arbitrary text of the kinds that break hand-written parsers: any Unicode
/// (multi-byte characters where byte offsets land mid-character), controls,
/// and near misses of real values (schemes, userinfo, brackets, escapes).
fn unicode() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC*",
        "[\\PC\\x00-\\x1f\\x7f\\u{85}\\u{2028}\\u{feff}]{0,40}",
        "(?i:https?)(://)?[\\PC\\t\\n%@:\\[\\]/\\\\?#]{0,30}",
        "([\\PC%=,]{0,8}=[\\PC%]{0,12},?){1,4}",
    ]
}

/// Every variable discovery reads: the 36 OTLP ones and the two Kubernetes ones.
fn every_var_name() -> Vec<String> {
    let mut names = all_var_names();
    names.push(tern_otlp_config::env::KUBERNETES_MARKER.into());
    names
}

/// A value around `token` in one of the shapes that reach each parser.
fn unicode_value_with(token: String) -> impl Strategy<Value = String> {
    (unicode(), unicode(), 0..5usize).prop_map(move |(a, b, shape)| match shape {
        0 => format!("{a}{token}{b}"),
        1 => format!("http://{a}:{token}@{b}:4317"),
        2 => format!("https://{a}{token}{b}"),
        3 => format!("{a}={token}{b}"),
        _ => token.clone(),
    })
}

/// Header-shaped values whose token is in a header *value*, which the
/// exporter's redacted view must hide (its keys are shown by design).
fn header_value_with(token: String) -> impl Strategy<Value = String> {
    let key = prop_oneof!["[A-Za-z0-9-]{1,8}", "[^=,]{0,8}"];
    let rest = prop_oneof!["[A-Za-z0-9%]{0,8}", unicode()];
    (key, rest).prop_map(move |(key, rest)| format!("{key}={token}{rest}"))
}

fn leaks(out: &str, token: &str) -> bool {
    out.contains(token) || out.to_lowercase().contains(&token.to_lowercase())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Each parser, on any text: no panic, and a refusal is one of the fixed
    /// messages (which the control plane checks), never the value.
    #[test]
    fn parsers_take_any_text(v in unicode()) {
        use tern_otlp_config::parse::*;
        let results = [
            parse_endpoint(&v).map(|_| ()),
            parse_protocol(&v).map(|_| ()),
            parse_headers(&v).map(|_| ()),
            parse_bool(&v).map(|_| ()),
            parse_timeout(&v).map(|_| ()),
            parse_compression(&v).map(|_| ()),
        ];
        for r in results {
            if let Err(message) = r {
                prop_assert!(KNOWN_MESSAGES.contains(&message), "{message}");
            }
        }
    }

    /// A usable endpoint is what a client can dial: an ASCII host without
    /// spaces, a port, and a URL that parses back to itself once rebuilt the
    /// way the exporter rebuilds it.
    #[test]
    fn usable_endpoints_rebuild_to_themselves(v in unicode()) {
        use tern_otlp_config::parse::parse_endpoint;
        if let Ok(e) = parse_endpoint(&v) {
            prop_assert!(!e.host.is_empty() && e.host.is_ascii() && !e.host.contains(char::is_whitespace));
            prop_assert!(e.port > 0 && !e.path.ends_with('/'));
            let scheme = if e.tls { "https" } else { "http" };
            let rebuilt = format!("{scheme}://{}:{}{}", e.host, e.port, e.path);
            prop_assert_eq!(parse_endpoint(&rebuilt), Ok(e));
        }
    }

}

proptest! {
    // 76 arbitrary Unicode strings a case: slower to generate than to check.
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Every variable discovery reads, filled with arbitrary Unicode around
    /// a secret token: nothing panics, and the token appears in no output
    /// the data plane prints or sends.
    #[test]
    fn no_value_leaks_on_any_unicode(
        values in proptest::collection::vec(secret().prop_flat_map(|s| (Just(s.clone()), unicode_value_with(s))), 38),
        headers in secret().prop_flat_map(|s| (Just(s.clone()), header_value_with(s))),
        mask in proptest::collection::vec(any::<bool>(), 38),
    ) {
        let names = every_var_name();
        prop_assert_eq!(names.len(), 38);
        let mut vars = BTreeMap::new();
        let mut tokens = Vec::new();
        // An exporter shows its endpoint and header keys (not secrets), where
        // a token in an endpoint or a headers value of any shape may land;
        // file paths and header values must stay hidden there too.
        let mut hidden_by_exporters = vec![headers.0.clone()];
        for ((name, (token, value)), on) in names.iter().zip(&values).zip(&mask) {
            if *on {
                vars.insert(name.clone(), value.clone());
                tokens.push(token.clone());
                if name.ends_with("CERTIFICATE") || name.ends_with("CLIENT_KEY") {
                    hidden_by_exporters.push(token.clone());
                }
            }
        }
        vars.insert("OTEL_EXPORTER_OTLP_HEADERS".into(), headers.1.clone());
        tokens.push(headers.0.clone());

        let (values, parsed, inventory) = Inventory::discover(&vars);
        let mut outputs = vec![
            serde_json::to_string(&inventory).expect("json"),
            format!("{inventory:?}"),
            format!("{values:?}"),
            format!("{parsed:?}"),
        ];
        for p in &parsed.problems {
            outputs.push(format!("{p:?} {} {}", p.scope(), p.message));
        }
        if let Err(e) = inventory.check_received() {
            outputs.push(e);
        }
        for out in &outputs {
            for token in &tokens {
                prop_assert!(!leaks(out, token), "{token} leaked into {out}");
            }
        }
        prop_assert!(inventory.check_received().is_ok(), "what the data plane sends, the control plane accepts");

        // The exporters built from the same environment show endpoints, but
        // never header values or file paths.
        let backend = BackendSettings {
            address: None,
            port: None,
            path: None,
            protocol: None,
            env_policy: EffectiveEnvPolicy {
                mode: EnvMode::Optional,
                precedence: Precedence::EnvFirst,
                allow_signal_overrides: true,
            },
            timeout_ms: None,
            delivery: Default::default(),
            tls: None,
            headers: Vec::new(),
        };
        for signal in Signal::ALL {
            let resolution = resolve_signal(&backend, signal, &inventory, false);
            if let Some(config) = build_exporter(&backend, &resolution, &parsed, values.host_ip.as_deref()) {
                let shown = [format!("{config:?}"), config.redacted().to_string()];
                for out in &shown {
                    for token in &hidden_by_exporters {
                        prop_assert!(!leaks(out, token), "{token} leaked into {out}");
                    }
                }
            }
        }

        // A backend's own headers read on the host (a variable and a file)
        // and its TLS files: filled into the exporter, shown by neither its
        // debug form, its redacted view, the status, nor a failure message.
        let file_secret = format!("{}-from-file", headers.0);
        let explicit = BackendSettings {
            address: Some("collector".into()),
            tls: Some(TlsSettings { enabled: true, ca_file: Some(headers.0.clone().into()), cert_file: None, key_file: None }),
            headers: vec![
                HeaderSetting { name: "x-env".into(), from: HeaderSource::Env("TERN_SECRET".into()) },
                HeaderSetting { name: "x-file".into(), from: HeaderSource::File("/run/secret".into()) },
            ],
            env_policy: EffectiveEnvPolicy { precedence: Precedence::ExplicitFirst, ..backend.env_policy },
            ..backend.clone()
        };
        let host: BTreeMap<String, String> = [("TERN_SECRET".to_string(), headers.0.clone())].into();
        for signal in Signal::ALL {
            let resolution = resolve_signal(&explicit, signal, &inventory, false);
            let status = serde_json::to_string(&tern_otlp_config::SignalStatus::from(&resolution)).expect("json");
            let Some(mut config) = build_exporter(&explicit, &resolution, &parsed, values.host_ip.as_deref()) else { continue };
            let filled = config.fill_headers(&explicit, &host, &|_| Ok(file_secret.clone()));
            let missing = config.clone().fill_headers(&explicit, &BTreeMap::<String, String>::new(), &|_| Ok(String::new()));
            prop_assert_eq!(config.headers.as_ref().map(|h| h.source), Some(Source::Explicit), "ExplicitFirst");
            {
                prop_assert!(filled.is_ok());
                prop_assert_eq!(config.headers.as_ref().map(|h| h.value["x-env"].clone()), Some(headers.0.clone()));
                prop_assert!(missing.is_err());
            }
            let shown = [format!("{config:?}"), config.redacted().to_string(), status, format!("{missing:?}")];
            for out in &shown {
                for token in [&headers.0, &file_secret] {
                    prop_assert!(!leaks(out, token), "{token} leaked into {out}");
                }
            }
        }
    }
}
