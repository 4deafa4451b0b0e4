//! Every YAML example of seed 000 parses and validates unchanged, and its
//! Kubernetes and Universal forms normalise to the same stored resources.

use std::path::PathBuf;
use tern_model::{parse_documents, resource_from_document, Kind, Resource};

fn examples(form: &str) -> Vec<(String, Vec<Resource>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(form);
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("examples dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(files.len() >= 6, "expected the seed examples in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            let docs = parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let resources = docs
                .iter()
                .map(|d| {
                    let parsed = resource_from_document(&d.value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    assert!(
                        parsed.warnings.is_empty(),
                        "{}: unexpected warnings {:?}",
                        path.display(),
                        parsed.warnings
                    );
                    parsed.resource
                })
                .collect();
            (path.file_name().expect("name").to_string_lossy().into_owned(), resources)
        })
        .collect()
}

#[test]
fn kubernetes_and_universal_forms_normalise_alike() {
    let k8s = examples("kubernetes");
    let universal = examples("universal");
    assert_eq!(k8s.len(), universal.len());
    for ((kf, kr), (uf, ur)) in k8s.iter().zip(&universal) {
        assert_eq!(kf, uf);
        assert_eq!(kr.len(), ur.len(), "{kf}");
        for (a, b) in kr.iter().zip(ur) {
            let mut a = a.clone();
            // Only the Kubernetes form knows a namespace; Tern records it as a label.
            assert_eq!(a.labels.remove("k8s.kuma.io/namespace").as_deref(), Some("kuma-system"));
            assert_eq!(&a, b, "{kf}: {}", b.name);
        }
    }
}

#[test]
fn single_collector_example_reads_as_the_seed_says() {
    let all = examples("kubernetes");
    let (_, resources) = all.iter().find(|(f, _)| f == "single-collector.yaml").expect("present");
    let kinds: Vec<Kind> = resources.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [Kind::MeshOpenTelemetryBackend, Kind::MeshMetric, Kind::MeshTrace, Kind::MeshAccessLog]);
    let backend = &resources[0];
    assert_eq!((backend.mesh.as_str(), backend.name.as_str()), ("default", "main-collector"));
    assert_eq!(backend.labels.get("kuma.io/display-name").map(String::as_str), Some("main-collector"));
    let spec: tern_model::spec::MeshOpenTelemetryBackendSpec =
        serde_json::from_value(backend.spec.clone()).expect("typed");
    assert_eq!(spec.address(), Some("otel-collector.observability"));
    assert_eq!(spec.port(), 4317);
    let trace: tern_model::spec::MeshTraceSpec = serde_json::from_value(resources[2].spec.clone()).expect("typed");
    let sampling = trace.default.and_then(|d| d.sampling).and_then(|s| s.overall).and_then(|o| o.value());
    assert_eq!(sampling, Some(80.0));
}

#[test]
fn empty_backend_takes_the_seed_defaults() {
    let all = examples("kubernetes");
    let (_, resources) = all.iter().find(|(f, _)| f == "node-local-collector.yaml").expect("present");
    let spec: tern_model::spec::MeshOpenTelemetryBackendSpec =
        serde_json::from_value(resources[0].spec.clone()).expect("typed");
    assert_eq!(spec.protocol(), tern_model::spec::motb::Protocol::Grpc);
    assert_eq!(spec.port(), 4317);
    assert_eq!(spec.address(), None);
    let env = spec.env_policy();
    assert_eq!(env.mode, tern_model::spec::motb::EnvMode::Optional);
    assert_eq!(env.precedence, tern_model::spec::motb::Precedence::EnvFirst);
    assert!(env.allow_signal_overrides);
}

#[test]
fn stored_json_reads_back_as_the_same_resource() {
    for (file, resources) in examples("universal").into_iter().chain(examples("kubernetes")) {
        for r in resources {
            let back = resource_from_document(&r.to_json()).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(back.resource, r, "{file}");
        }
    }
}
