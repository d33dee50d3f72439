//! Test certificates made on the spot with rcgen: a CA, a server certificate for `localhost` and
//! 127.0.0.1, and a client certificate, written as PEM files for a client's configuration.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// A throwaway PKI in a temporary directory.
pub struct TestPki {
    /// Holds the files; removed when the PKI is dropped.
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

impl TestPki {
    pub fn generate() -> anyhow::Result<TestPki> {
        let dir = tempfile::tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "kvsync test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server_params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        server_params.distinguished_name.push(DnType::CommonName, "consul test server");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let client_key = KeyPair::generate()?;
        let mut client_params = CertificateParams::new(Vec::<String>::new())?;
        client_params.distinguished_name.push(DnType::CommonName, "kvsync test client");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params.signed_by(&client_key, &issuer)?;

        let write = |name: &str, pem: String| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, pem)?;
            Ok(path)
        };
        Ok(TestPki {
            ca_file: write("ca.pem", ca_cert.pem())?,
            server_cert_file: write("server.pem", server_cert.pem())?,
            server_key_file: write("server-key.pem", server_key.serialize_pem())?,
            client_cert_file: write("client.pem", client_cert.pem())?,
            client_key_file: write("client-key.pem", client_key.serialize_pem())?,
            dir,
        })
    }

    /// A rustls server configuration with the server certificate; with `require_client_cert`, only
    /// clients presenting a certificate signed by the CA get through the handshake.
    pub fn server_config(&self, require_client_cert: bool) -> anyhow::Result<Arc<ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_file_iter(&self.server_cert_file)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&self.server_key_file)?;
        let builder =
            ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&self.ca_file)? {
                roots.add(cert?)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        Ok(Arc::new(builder.with_single_cert(chain, key)?))
    }
}
