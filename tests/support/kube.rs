//! A real Kubernetes control plane for the tests, the way controller-runtime's
//! envtest runs one: etcd and kube-apiserver (built from the Go module proxy
//! by scripts/install-tools.sh: TERN_TEST_ETCD, TERN_TEST_KUBE_APISERVER, and
//! kubectl of the same release, TERN_TEST_KUBECTL) on
//! free loopback ports, with a CA and serving certificate made here, a
//! service-account key pair, an admin bearer token (group system:masters)
//! and a kubeconfig for it. No kubelet: Pods are stored objects only.

use super::{free_port, Run};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct KubeCluster {
    etcd: Option<Child>,
    apiserver: Option<Child>,
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// A kubeconfig for the admin, for kubectl and tern-cp.
    pub kubeconfig: PathBuf,
}

fn tool(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests through scripts/test.sh, which builds etcd, kube-apiserver and kubectl")
    })
}

impl KubeCluster {
    /// Starts etcd and kube-apiserver in `dir` and waits for `/readyz`.
    pub fn start(dir: &Path) -> KubeCluster {
        std::fs::create_dir_all(dir).expect("cluster dir");
        let pki = write_pki(dir);
        let (client, peer, port) = (free_port(), free_port(), free_port());
        let etcd = Command::new(tool("TERN_TEST_ETCD"))
            .arg("--name=tern-test")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-cluster=tern-test=http://127.0.0.1:{peer}"))
            .arg("--unsafe-no-fsync")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).expect("etcd log"))
            .spawn()
            .expect("etcd starts");
        let p = |name: &str| pki.join(name).display().to_string();
        let apiserver = Command::new(tool("TERN_TEST_KUBE_APISERVER"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{client}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", dir.join("apiserver-certs").display()))
            .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
            .arg(format!("--client-ca-file={}", p("ca.crt")))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!("--service-account-signing-key-file={}", p("sa.key")))
            .args(["--service-cluster-ip-range=10.0.0.0/24", "--authorization-mode=RBAC"])
            .arg(format!("--token-auth-file={}", p("tokens.csv")))
            .args(["--disable-admission-plugins=ServiceAccount", "--allow-privileged=true"])
            // One apiserver on loopback: no kubernetes Service endpoints to keep.
            .arg("--endpoint-reconciler-type=none")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("kube-apiserver.log")).expect("apiserver log"))
            .spawn()
            .expect("kube-apiserver starts");
        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&server, &pki)).expect("kubeconfig");
        let mut cluster =
            KubeCluster { etcd: Some(etcd), apiserver: Some(apiserver), dir: dir.into(), server, kubeconfig };
        cluster.wait_ready();
        cluster
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let run = self.kubectl(&["get", "--raw", "/readyz"], None);
            if run.code == 0 && run.stdout.trim() == "ok" {
                return;
            }
            let exited = |child: &mut Option<Child>| child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited(&mut self.etcd) {
                panic!("etcd exited with {status}:\n{}", self.log("etcd"));
            }
            if let Some(status) = exited(&mut self.apiserver) {
                panic!("kube-apiserver exited with {status}:\n{}", self.log("kube-apiserver"));
            }
            assert!(Instant::now() < deadline, "kube-apiserver not ready in 90s:\n{}", self.log("kube-apiserver"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of a component's log.
    pub fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs kubectl as `alice`, another cluster admin than the kubeconfig's
    /// (the user a control plane tells from itself).
    pub fn kubectl_as_user(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut all = vec!["--token", USER_TOKEN];
        all.extend(args);
        self.kubectl(&all, stdin)
    }

    /// Runs kubectl as the admin, with `stdin` piped in.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = Command::new(tool("TERN_TEST_KUBECTL"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        super::run_with_stdin(cmd, stdin)
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()].into_iter().flatten() {
            super::terminate(child, Duration::from_secs(10));
        }
    }
}

/// The CA, the apiserver's serving certificate, the service-account keys
/// and the admin's token, in `dir/pki`.
fn write_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let (ca, cert, key) = super::test_certificate(&["localhost", "127.0.0.1"], "kube-apiserver");
    let sa = rcgen::KeyPair::generate().expect("service-account key");
    for (name, text) in [
        ("ca.crt", ca),
        ("apiserver.crt", cert),
        ("apiserver.key", key),
        ("sa.key", sa.serialize_pem()),
        ("sa.pub", sa.public_key_pem()),
        (
            "tokens.csv",
            format!(
                "{ADMIN_TOKEN},tern-admin,tern-admin-uid,\"system:masters\"\n{USER_TOKEN},alice,alice-uid,\"system:masters\"\n"
            ),
        ),
    ] {
        std::fs::write(pki.join(name), text).expect("pki file");
    }
    pki
}

/// The admin's bearer token (the apiserver runs on loopback, for one test).
const ADMIN_TOKEN: &str = "tern-test-admin-token";
/// Another cluster admin, `alice`: a user, where the kubeconfig is the
/// control plane's own identity.
const USER_TOKEN: &str = "tern-test-alice-token";

fn kubeconfig_yaml(server: &str, pki: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    \
         certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\ncontexts:\n- name: \
         test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n",
        ca = pki.join("ca.crt").display()
    )
}
