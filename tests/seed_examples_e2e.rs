//! Done-when of the foundation: every YAML example of seed 000 applies
//! unchanged through `ternctl` (Kubernetes and Universal form), `get motb`
//! lists them, and they survive a `tern-cp` restart, on SQLite and PostgreSQL.

mod support;

use support::{repo_path, ControlPlane};

const EXAMPLES: &[&str] = &[
    "single-collector.yaml",
    "node-local-collector.yaml",
    "node-local-http.yaml",
    "from-env.yaml",
    "per-zone-collectors.yaml",
    "cross-zone-reference.yaml",
];

const BACKENDS: &[&str] = &["collector-us-east", "from-env", "main-collector", "node-collector", "node-collector-http"];

fn apply_all_and_check(cp: &mut ControlPlane) {
    for form in ["kubernetes", "universal"] {
        for file in EXAMPLES {
            let path = repo_path(&format!("examples/{form}/{file}"));
            let run = cp.ternctl(&["apply", "-f", path.to_str().expect("utf8 path")]).ok();
            assert!(run.stderr.is_empty(), "{form}/{file}: no warnings expected, got {}", run.stderr);
            assert!(
                run.stdout.contains("created") || run.stdout.contains("updated") || run.stdout.contains("unchanged")
            );
        }
    }
    let check = |cp: &ControlPlane| {
        let out = cp.ternctl(&["get", "motb", "-m", "default"]).ok().stdout;
        let names: Vec<&str> = out.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).collect();
        assert_eq!(names, BACKENDS, "{out}");
        assert!(out.starts_with("MESH"), "{out}");
        let traces = cp.ternctl(&["get", "meshtraces"]).ok().stdout;
        assert!(traces.contains("all-traces") && traces.contains("motb/main-collector"), "{traces}");
        assert!(traces.contains("motb[kuma.io/display-name=main-collector]"), "{traces}");
        let metric = cp.ternctl(&["get", "meshmetric", "metrics-us-east", "-o", "json"]).ok().stdout;
        let metric: serde_json::Value = serde_json::from_str(&metric).expect("json");
        assert_eq!(metric["spec"]["targetRef"]["tags"]["kuma.io/zone"], "us-east");
        assert_eq!(metric["spec"]["default"]["backends"][0]["openTelemetry"]["refreshInterval"], "30s");
        let logs = cp.ternctl(&["get", "mal", "all-access-logs", "-o", "yaml"]).ok().stdout;
        assert!(logs.contains("name: main-collector"), "{logs}");
    };
    check(cp);
    cp.restart();
    check(cp);
}

#[test]
fn seed_examples_apply_and_survive_restart_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path());
    apply_all_and_check(&mut cp);
    assert!(dir.path().join("tern.db").exists(), "the embedded store lives in the data directory");
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_examples_apply_and_survive_restart_on_postgres() {
    let url = support::fresh_postgres_database().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start_with(dir.path(), Some(&url), "127.0.0.1");
    tokio::task::spawn_blocking(move || {
        apply_all_and_check(&mut cp);
        assert!(cp.log_text().contains("postgres://"), "the log names the store");
    })
    .await
    .expect("test body");
    assert!(!dir.path().join("tern.db").exists(), "nothing went to SQLite");
}
