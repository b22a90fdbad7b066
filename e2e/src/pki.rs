//! Certificates for the test beds, made at run time with rcgen and never
//! committed: a CA, and one certificate for the servers (NATS clients and
//! routes: server and client use) naming every address they are reached at.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// `ca.pem`, `server.pem` and `server.key` in a folder.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The folder holding them.
    pub dir: PathBuf,
}

impl Pki {
    /// Makes the CA and a certificate for `names` (host names and IP
    /// addresses) in `dir` (created if missing).
    pub fn new(dir: &Path, names: &[String]) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "infra e2e CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, &ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut leaf = CertificateParams::new(names.to_vec()).expect("server params");
        leaf.distinguished_name
            .push(DnType::CommonName, names.first().map_or("localhost", String::as_str));
        // Routes: each server is the client of the others.
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = leaf.signed_by(&key, &issuer).expect("server certificate");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("ca.pem");
        std::fs::write(dir.join("server.pem"), cert.pem()).expect("server.pem");
        std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("server.key");
        Self { dir: dir.to_owned() }
    }

    /// The CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}
