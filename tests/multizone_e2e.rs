//! Multi-zone with real binaries: one global `tern-cp` and two zone
//! `tern-cp`s on loopback, syncing over TLS with zone tokens; data planes
//! behind real Envoy in each zone, each zone with its own collector.

#[path = "support/collector.rs"]
mod collector;
mod support;

use collector::Collector;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::{eventually, free_port, ControlPlane, DataPlane};
use tern_kds::hashed_name;

const WAIT: Duration = Duration::from_secs(30);

fn global(dir: &Path, kds_port: u16) -> ControlPlane {
    let kds = format!("127.0.0.1:{kds_port}");
    ControlPlane::start_args(
        dir,
        None,
        "127.0.0.1",
        &["--mode", "global", "--kds-addr", &kds, "--zone-health-timeout", "3s"],
    )
}

/// A zone control plane admitted by a token the global issued.
fn zone(global: &ControlPlane, dir: &Path, name: &str, kds_port: u16) -> ControlPlane {
    std::fs::create_dir_all(dir).unwrap();
    let token = global.ternctl(&["generate", "zone-token", "--zone", name, "--valid-for", "1h"]).ok().stdout;
    let token_file = dir.join("zone-token");
    std::fs::write(&token_file, token.trim()).unwrap();
    zone_with_token(global, dir, name, kds_port, &token_file)
}

fn zone_with_token(global: &ControlPlane, dir: &Path, name: &str, kds_port: u16, token: &Path) -> ControlPlane {
    let address = format!("https://127.0.0.1:{kds_port}");
    let (ca, token) = (global.ca.display().to_string(), token.display().to_string());
    let args = [
        "--mode",
        "zone",
        "--zone",
        name,
        "--global-address",
        &address,
        "--global-ca-file",
        &ca,
        "--zone-token-file",
        &token,
    ];
    ControlPlane::start_args(dir, None, "127.0.0.1", &args)
}

fn json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cp.ternctl(&all).ok().stdout).expect("ternctl JSON")
}

/// Names of a kind on a control plane, across meshes.
fn names(cp: &ControlPlane, kind: &str) -> Vec<String> {
    let list = json(cp, &["get", kind, "-A"]);
    let mut out: Vec<String> =
        list["items"].as_array().into_iter().flatten().filter_map(|i| i["name"].as_str().map(str::to_string)).collect();
    out.sort();
    out
}

fn zone_row(global: &ControlPlane, zone: &str) -> String {
    let text = global.ternctl(&["inspect", "zones"]).ok().stdout;
    text.lines().find(|l| l.starts_with(&format!("{zone} "))).unwrap_or("").to_string()
}

#[test]
fn write_rules_tokens_and_zone_health() {
    let dir = tempfile::tempdir().unwrap();
    let kds = free_port();
    let g = global(&dir.path().join("global"), kds);
    let mut z = zone(&g, &dir.path().join("us-east"), "us-east", kds);
    eventually(WAIT, "the zone online on the global", || {
        let row = zone_row(&g, "us-east");
        (row.contains("Online") && row.contains("sqlite")).then_some(()).ok_or(row)
    });
    eventually(WAIT, "the default mesh synced to the zone", || {
        (names(&z, "meshes") == ["default"]).then_some(()).ok_or(format!("{:?}", names(&z, "meshes")))
    });

    // Global -> zone: hashed name, origin label, read-only on the zone.
    let backend = "type: MeshOpenTelemetryBackend\nname: main\nmesh: default\nspec:\n  endpoint: {address: otel.internal, port: 4317}\n";
    g.ternctl_stdin(&["apply", "-f", "-"], backend).ok();
    let synced = hashed_name("default", "main", &[]);
    eventually(WAIT, "the backend on the zone", || {
        (names(&z, "motb") == [synced.clone()]).then_some(()).ok_or(format!("{:?}", names(&z, "motb")))
    });
    let on_zone = json(&z, &["get", "motb", &synced]);
    assert_eq!(on_zone["labels"]["kuma.io/origin"], "global");
    assert_eq!(on_zone["labels"]["kuma.io/display-name"], "main");
    let refused = z.ternctl(&["delete", "motb", &synced]).fails();
    assert!(
        refused.stderr.contains("synced from the global control plane")
            && refused.stderr.contains("edit it on the global"),
        "{}",
        refused.stderr
    );
    let mesh = "type: Mesh\nname: other\n";
    let refused = z.ternctl_stdin(&["apply", "-f", "-"], mesh).fails();
    assert!(refused.stderr.contains("meshes are created on the global control plane"), "{}", refused.stderr);

    // Zone -> global: zone labels, read-only on the global.
    let trace = "type: MeshTrace\nname: zone-traces\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef:\n            kind: MeshOpenTelemetryBackend\n            labels: {kuma.io/display-name: main}\n";
    z.ternctl_stdin(&["apply", "-f", "-"], trace).ok();
    let on_global = hashed_name("default", "zone-traces", &["us-east"]);
    eventually(WAIT, "the zone's policy on the global", || {
        (names(&g, "meshtraces") == [on_global.clone()]).then_some(()).ok_or(format!("{:?}", names(&g, "meshtraces")))
    });
    let policy = json(&g, &["get", "meshtrace", &on_global]);
    assert_eq!(
        (policy["labels"]["kuma.io/origin"].as_str(), policy["labels"]["kuma.io/zone"].as_str()),
        (Some("zone"), Some("us-east"))
    );
    let refused = g.ternctl(&["delete", "meshtrace", &on_global]).fails();
    assert!(
        refused.stderr.contains("synced from zone \"us-east\"") && refused.stderr.contains("edit it on that zone"),
        "{}",
        refused.stderr
    );
    let dp = "type: Dataplane\nname: web\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 8080\n      tags: {kuma.io/service: web}\n";
    let refused = g.ternctl_stdin(&["apply", "-f", "-"], dp).fails();
    assert!(refused.stderr.contains("data planes connect to a zone control plane"), "{}", refused.stderr);

    // A token for another zone, and garbage, are refused on both sides.
    let other = g.ternctl(&["generate", "zone-token", "--zone", "eu-west"]).ok().stdout;
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, other.trim()).unwrap();
    let impostor = zone_with_token(&g, &dir.path().join("impostor"), "ap-south", kds, &wrong);
    eventually(WAIT, "the impostor refused on both sides", || {
        let (zl, gl) = (impostor.log_text(), g.log_text());
        (zl.contains("the global control plane refused this zone: the zone token is for zone \"eu-west\"")
            && gl.contains("zone refused: its token is for another zone"))
        .then_some(())
        .ok_or(zl)
    });
    let garbage = dir.path().join("garbage-token");
    std::fs::write(&garbage, "not-a-token").unwrap();
    let forger = zone_with_token(&g, &dir.path().join("forger"), "ap-south", kds, &garbage);
    eventually(WAIT, "a garbage token refused", || {
        let zl = forger.log_text();
        zl.contains("zone token refused: not a token this global control plane issued").then_some(()).ok_or(zl)
    });
    // A data-plane token is not a zone token.
    let dp_token = g.dataplane_token("default", "web", &[]);
    let dp_as_zone = zone_with_token(&g, &dir.path().join("dp-as-zone"), "ap-south", kds, &dp_token);
    eventually(WAIT, "a data-plane token refused as a zone token", || {
        let zl = dp_as_zone.log_text();
        zl.contains("this is not a zone token").then_some(()).ok_or(zl)
    });
    assert!(!names(&g, "zones").contains(&"ap-south".to_string()), "no refused zone is registered");

    // A zone that stops checking in goes offline after the timeout, and comes back.
    let pid = z.pid().unwrap().to_string();
    std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    eventually(WAIT, "the silent zone offline", || {
        let row = zone_row(&g, "us-east");
        row.contains("Offline").then_some(()).ok_or(row)
    });
    std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    eventually(WAIT, "the zone online again", || {
        let row = zone_row(&g, "us-east");
        row.contains("Online").then_some(()).ok_or(row)
    });
    assert!(g.log_text().contains("zone sent no health check within the timeout; marked offline"));
    z.stop();
}
