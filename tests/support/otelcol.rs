//! The OpenTelemetry Collector (`tools/otelcol`, built from the Go module
//! proxy by scripts/install-tools.sh) as a test peer: OTLP receivers, each
//! on its own gRPC and HTTP ports, optionally serving TLS, requiring a
//! client certificate and checking a header's value (the contrib
//! bearer-token authenticator), forwarding all three signals over OTLP/gRPC
//! to the test collector behind it, which records what arrived.

use super::{eventually, free_port, repo_path};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The OpenTelemetry Collector the tests run (`TERN_TEST_OTELCOL`, else
/// `.tools/otelcol`). Never skipped: a missing build is a failure.
pub fn binary() -> PathBuf {
    let path = std::env::var("TERN_TEST_OTELCOL").map(PathBuf::from).unwrap_or_else(|_| {
        let local = repo_path(".tools/otelcol");
        assert!(
            local.exists(),
            "the OpenTelemetry Collector is not built: TERN_TEST_OTELCOL is unset and .tools/otelcol does not exist. \
             Run scripts/test.sh, or eval \"$(scripts/install-tools.sh)\", which builds tools/otelcol from the Go \
             module proxy (a few minutes the first time, cached after)"
        );
        local
    });
    assert!(path.exists(), "TERN_TEST_OTELCOL names {}, which does not exist", path.display());
    path
}

/// One OTLP receiver.
#[derive(Default, Clone)]
pub struct Receiver {
    /// Serve TLS with `<certs>/server.pem` and `server.key` (support::certs).
    pub tls: Option<PathBuf>,
    /// With `tls`: require a client certificate signed by `<certs>/ca.pem`.
    pub client_certificate: bool,
    /// Refuse requests whose `header` is not exactly `value` (at most one
    /// space, after a scheme).
    pub header: Option<(String, String)>,
}

/// How the collector passes data on.
#[derive(Clone, Copy, PartialEq)]
pub enum Forward {
    /// Batched, through the memory limiter and the exporter's queue, as
    /// collectors are deployed.
    Batched,
    /// Each request exported before it is answered: the test collector's
    /// answer (or its silence) is the answer the sender gets.
    Synchronous,
}

/// A running OpenTelemetry Collector, killed when dropped.
pub struct OtelCollector {
    child: Child,
    log: PathBuf,
    /// (gRPC port, HTTP port) per receiver, in the order given.
    pub ports: Vec<(u16, u16)>,
}

fn receiver_yaml(out: &mut String, i: usize, r: &Receiver, (grpc, http): (u16, u16)) {
    let mut server = String::new();
    if let Some(certs) = &r.tls {
        let file = |f: &str| certs.join(f).display().to_string();
        write!(server, "\n        tls: {{cert_file: '{}', key_file: '{}'", file("server.pem"), file("server.key"))
            .unwrap();
        if r.client_certificate {
            write!(server, ", client_ca_file: '{}'", file("ca.pem")).unwrap();
        }
        server.push('}');
    }
    if r.header.is_some() {
        write!(server, "\n        auth: {{authenticator: bearertokenauth/{i}}}").unwrap();
    }
    write!(
        out,
        "  otlp/{i}:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:{grpc}{server}\n      http:\n        endpoint: 127.0.0.1:{http}{server}\n"
    )
    .unwrap();
}

fn config(receivers: &[Receiver], ports: &[(u16, u16)], forward_to: u16, forward: Forward) -> String {
    let mut out = String::from("extensions:\n");
    for (i, r) in receivers.iter().enumerate() {
        if let Some((header, value)) = &r.header {
            // The authenticator takes a token without spaces, after an
            // optional scheme ("Bearer x"): split the value the same way.
            let (scheme, token) = value.split_once(' ').unwrap_or(("", value));
            writeln!(out, "  bearertokenauth/{i}: {{header: '{header}', scheme: '{scheme}', token: '{token}'}}")
                .unwrap();
        }
    }
    out.push_str("receivers:\n");
    for (i, r) in receivers.iter().enumerate() {
        receiver_yaml(&mut out, i, r, ports[i]);
    }
    let names: Vec<String> = (0..receivers.len()).map(|i| format!("otlp/{i}")).collect();
    let (processors, exporter) = match forward {
        Forward::Batched => ("[memory_limiter, batch]", ""),
        Forward::Synchronous => {
            ("[]", "\n    sending_queue: {enabled: false}\n    retry_on_failure: {enabled: false}\n    timeout: 60s")
        }
    };
    let pipeline = format!("{{receivers: [{}], processors: {processors}, exporters: [otlp_grpc]}}", names.join(", "));
    let auth: Vec<String> = (0..receivers.len())
        .filter(|&i| receivers[i].header.is_some())
        .map(|i| format!("bearertokenauth/{i}"))
        .collect();
    write!(
        out,
        "processors:
  memory_limiter: {{check_interval: 1s, limit_mib: 256, spike_limit_mib: 64}}
  batch: {{timeout: 200ms}}
exporters:
  otlp_grpc:
    endpoint: 127.0.0.1:{forward_to}
    tls: {{insecure: true}}{exporter}
service:
  extensions: [{}]
  telemetry:
    # No Prometheus endpoint of its own (a fixed port by default).
    metrics: {{level: none}}
  pipelines:
    traces: {pipeline}
    logs: {pipeline}
    metrics: {pipeline}
",
        auth.join(", ")
    )
    .unwrap();
    out
}

impl OtelCollector {
    /// Starts the collector with `receivers`, forwarding to the OTLP/gRPC
    /// collector on 127.0.0.1:`forward_to`; returns once every port listens.
    pub fn start(dir: &Path, receivers: &[Receiver], forward_to: u16, forward: Forward) -> OtelCollector {
        let ports: Vec<(u16, u16)> = receivers.iter().map(|_| (free_port(), free_port())).collect();
        let file = dir.join("otelcol.yaml");
        std::fs::write(&file, config(receivers, &ports, forward_to, forward)).expect("collector config");
        let log = dir.join("otelcol.log");
        let child = Command::new(binary())
            .arg(format!("--config=file:{}", file.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("the OpenTelemetry Collector starts");
        let mut otelcol = OtelCollector { child, log, ports };
        eventually(Duration::from_secs(30), "the OpenTelemetry Collector listens", || {
            if let Ok(Some(status)) = otelcol.child.try_wait() {
                panic!("the OpenTelemetry Collector exited with {status}:\n{}", otelcol.log_text());
            }
            for &(grpc, http) in &otelcol.ports {
                for port in [grpc, http] {
                    std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("{port}: {e}"))?;
                }
            }
            Ok(())
        });
        otelcol
    }

    /// The gRPC port of the first receiver.
    pub fn grpc(&self) -> u16 {
        self.ports[0].0
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OtelCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
