//! Test certificates on disk, for collectors that serve TLS and check a
//! client's certificate: `ca.pem` (the test CA), `server.pem`/`server.key`
//! (localhost and 127.0.0.1, signed by it), `client.pem`/`client.key`
//! (signed by it) and `wrong-ca.pem` (an unrelated CA).

use std::path::{Path, PathBuf};

struct Authority {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn authority(name: &str) -> Authority {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    Authority { cert: params.self_signed(&key).expect("CA"), key }
}

fn leaf(ca: &Authority, sans: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

/// Writes the files above into `dir` (created) and returns it.
pub fn write(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("certificates directory");
    let ca = authority("tern-test-ca");
    let (server, server_key) = leaf(&ca, &["localhost", "127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (client, client_key) = leaf(&ca, &["client"], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let files = [
        ("ca.pem", ca.cert.pem()),
        ("wrong-ca.pem", authority("wrong-ca").cert.pem()),
        ("server.pem", server),
        ("server.key", server_key),
        ("client.pem", client),
        ("client.key", client_key),
    ];
    for (name, pem) in files {
        std::fs::write(dir.join(name), pem).expect("certificate file");
    }
    dir.to_path_buf()
}
