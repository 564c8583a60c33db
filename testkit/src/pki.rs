//! A throwaway certificate authority for TLS tests: a CA, a server certificate for the
//! control plane, a client certificate from the same CA and one from another CA.

use std::path::{Path, PathBuf};

/// PEM files of a CA and certificates it signed, in one directory.
pub struct Pki {
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The control plane's certificate and key (`xds.shadowmesh.test`, `127.0.0.1`).
    pub server: (PathBuf, PathBuf),
    /// A client certificate and key signed by the CA (`edge-1.shadowmesh.test`).
    pub client: (PathBuf, PathBuf),
    /// A client certificate and key with the same name, signed by another CA.
    pub rogue_client: (PathBuf, PathBuf),
}

/// The name the server certificate carries (for SNI and verification).
pub const SERVER_NAME: &str = "xds.shadowmesh.test";

/// Issues a CA and its certificates as PEM files in `dir`.
pub fn issue(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("a PEM file");
        p
    };
    let authority = |cn: &str| {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.self_signed(&key).expect("a CA certificate");
        (cert, Issuer::new(params, key))
    };
    let leaf = |names: &[&str], cn: &str, issuer: &Issuer<'_, KeyPair>, file: &str| {
        let key = KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, issuer).expect("a leaf certificate");
        (
            write(&format!("{file}.pem"), cert.pem()),
            write(&format!("{file}.key"), key.serialize_pem()),
        )
    };
    let (ca_cert, ca) = authority("shadowmesh test CA");
    let (_, rogue) = authority("someone else's CA");
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server: leaf(&[SERVER_NAME, "127.0.0.1"], "shadowmesh-xds", &ca, "server"),
        client: leaf(&["edge-1.shadowmesh.test"], "edge-1", &ca, "client"),
        rogue_client: leaf(&["edge-1.shadowmesh.test"], "edge-1", &rogue, "rogue"),
    }
}
