//! Test support: certificates made on the spot (feature `testing`).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A new CA and a daemon certificate it signed for `names` (host names or IP addresses), as
/// PEM files in `dir`: `[ca.pem, cert.pem, key.pem]`.
pub fn tls_files(dir: &Path, names: &[&str]) -> [PathBuf; 3] {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("daemon key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .and_then(|params| params.signed_by(&key, &issuer))
        .expect("daemon certificate");
    let files = [dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem")];
    for (file, pem) in files.iter().zip([ca.pem(), cert.pem(), key.serialize_pem()]) {
        std::fs::write(file, pem).expect("write a PEM file");
    }
    let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&files[2], private).expect("chmod the key");
    files
}
