//! TLS failure modes through the real binary, for both backends: a wrong CA, an expired server
//! certificate, a server name that does not match, and a missing client certificate.
//!
//! Each case runs `kvsync once --timeout` and proves three things:
//! - it exits non-zero, and its log names the source and the TLS cause (not just "connection error");
//! - nothing was rendered: the destination does not exist;
//! - no plain-text fallback happened: kvsync reaches each server through a front that accepts raw TCP
//!   and classifies each connection by its first bytes (a TLS handshake record, or anything else); in
//!   every case kvsync opened TLS connections and not one plain-text connection. Behind the front, the
//!   Consul test server counts the HTTP requests that got through a handshake (zero), the etcd
//!   stand-in counts completed handshakes (zero). A plain `http://` source pointed at the same front
//!   is counted as plain text, so a fallback would be seen.
//!
//! A positive control per backend (the right CA, name and client certificate render the output)
//! shows that each failure comes from the one thing the case changed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvsync_tests::consul_server::ConsulServer;
use kvsync_tests::etcd_server::{EtcdOptions, EtcdServer};
use kvsync_tests::kvsync;
use kvsync_tests::tls_front::TlsFront;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

const T: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// A CA of our own, able to sign server and client certificates (valid now, or expired).
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_file: PathBuf,
}

/// A certificate and its key, as PEM files.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(dir: &Path, tag: &str) -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, format!("kvsync test CA {tag}"));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let ca_file = dir.join(format!("ca-{tag}.pem"));
        fs::write(&ca_file, cert.pem()).unwrap();
        Pki { dir: dir.to_path_buf(), issuer: Issuer::new(p, key), ca_file }
    }

    /// A leaf for `localhost` and 127.0.0.1 (server) or with CN `client` (client). `expired` puts its
    /// whole validity period in 2020.
    fn leaf(&self, name: &str, server: bool, expired: bool) -> Leaf {
        let mut p = CertificateParams::new(if server { vec!["localhost".to_string()] } else { vec![] }).unwrap();
        if server {
            p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf { cert: self.dir.join(format!("{name}.pem")), key: self.dir.join(format!("{name}-key.pem")) };
        fs::write(&leaf.cert, cert.pem()).unwrap();
        fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    /// A rustls server configuration presenting `leaf`; with `client_auth`, a handshake needs a client
    /// certificate signed by this CA.
    fn server_config(&self, leaf: &Leaf, client_auth: bool) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_file_iter(&leaf.cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        let builder =
            ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions().unwrap();
        let builder = if client_auth {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&self.ca_file).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap(),
            )
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(builder.with_single_cert(chain, key).unwrap())
    }
}

/// The `tls:` block of a source.
fn tls_block(ca: &Path, client: Option<&Leaf>, server_name: Option<&str>) -> String {
    let mut s = format!("{{ ca_file: {}", ca.display());
    if let Some(c) = client {
        s += &format!(", cert_file: {}, key_file: {}", c.cert.display(), c.key.display());
    }
    if let Some(n) = server_name {
        s += &format!(", server_name: {n}");
    }
    s + " }"
}

/// Writes a config with one source (`source` is its YAML flow mapping) and a json output of `tls/`.
fn config(dir: &Path, source: &str) -> (String, PathBuf) {
    let out = dir.join("out.json");
    let _ = fs::remove_file(&out);
    let p = dir.join("k.yaml");
    fs::write(
        &p,
        format!(
            "sources:\n  - {source}\nhttp: {{ listen: \"\" }}\nretry: {{ initial: 50ms, max: 500ms }}\n\
             outputs:\n  - {{ name: o, source: s, prefix: tls/, format: json, destination: {} }}\n",
            out.display()
        ),
    )
    .unwrap();
    (p.display().to_string(), out)
}

/// Runs `once` with a short timeout and checks the failure: non-zero exit, the source named, one
/// of `causes` in the log, and no output.
#[track_caller]
fn once_fails(cfg: &str, out: &Path, case: &str, causes: &[&str]) -> String {
    let (status, _, err) = kvsync::run(&["once", "--config", cfg, "--timeout", "3s"], T);
    assert!(!status.success(), "{case}: `once` succeeded; log:\n{err}");
    assert!(err.contains("source `s`"), "{case}: the log does not name the source:\n{err}");
    assert!(
        causes.iter().any(|c| err.contains(c)),
        "{case}: the log does not give the cause (one of {causes:?}):\n{err}"
    );
    assert!(!out.exists(), "{case}: an output was rendered");
    err
}

/// Since `before`, the front saw TLS connections from kvsync and no plain-text one.
#[track_caller]
fn only_tls_since(front: &TlsFront, tls_before: usize, case: &str) -> usize {
    let seen = front.seen();
    assert!(
        seen.plain.is_empty(),
        "{case}: kvsync opened a plain-text connection: {:?}",
        seen.plain.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>()
    );
    assert!(seen.tls > tls_before, "{case}: kvsync opened no TLS connection, so the case proved nothing");
    seen.tls
}

/// The control for the classification: a source with `http://` at a TLS front is seen as plain text.
#[track_caller]
fn plain_text_is_seen(dir: &Path, front: &TlsFront, source: impl Fn(&str) -> String) {
    let (cfg, _) = config(dir, &source(&front.url("http")));
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg, "--timeout", "2s"], T);
    assert!(!status.success(), "plain text against a TLS server rendered:\n{err}");
    let plain = front.seen().plain;
    assert!(!plain.is_empty(), "the front did not see the plain-text attempt, so it could not see a fallback");
}

#[test]
fn consul_tls_failures_are_reported_and_never_fall_back_to_plain_text() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good");
    let other = Pki::new(dir.path(), "other");
    let server_leaf = pki.leaf("server", true, false);
    let client = pki.leaf("client", false, false);
    let expired_leaf = pki.leaf("expired-server", true, true);

    // Requires a client certificate: the missing-certificate case and the others share it.
    let server = rt.block_on(ConsulServer::start_tls(pki.server_config(&server_leaf, true))).unwrap();
    server.put("tls/k", "secure");
    let expired = rt.block_on(ConsulServer::start_tls(pki.server_config(&expired_leaf, true))).unwrap();
    expired.put("tls/k", "secure");
    // kvsync reaches both through fronts that classify every connection.
    let front = rt.block_on(TlsFront::start(server.addr())).unwrap();
    let expired_front = rt.block_on(TlsFront::start(expired.addr())).unwrap();
    let url = front.url("https");
    let src = |url: &str, tls: String| format!("{{ name: s, type: consul, address: {url}, wait: 1s, tls: {tls} }}");

    // Positive control: the right CA, name and client certificate.
    let (cfg, out) = config(dir.path(), &src(&url, tls_block(&pki.ca_file, Some(&client), None)));
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg, "--timeout", "10s"], T);
    assert!(status.success(), "the control case failed:\n{err}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "{\n  \"k\": \"secure\"\n}\n");
    let served = server.total_requests();
    assert!(served > 0);
    let mut tls = only_tls_since(&front, 0, "control");

    let (cfg, out) = config(dir.path(), &src(&url, tls_block(&other.ca_file, Some(&client), None)));
    once_fails(&cfg, &out, "wrong CA", &["UnknownIssuer", "unknown issuer"]);
    tls = only_tls_since(&front, tls, "wrong CA");
    let (cfg, out) =
        config(dir.path(), &src(&expired_front.url("https"), tls_block(&pki.ca_file, Some(&client), None)));
    once_fails(&cfg, &out, "expired certificate", &["Expired", "expired"]);
    only_tls_since(&expired_front, 0, "expired certificate");
    let (cfg, out) = config(dir.path(), &src(&url, tls_block(&pki.ca_file, Some(&client), Some("consul.example"))));
    once_fails(&cfg, &out, "wrong server name", &["NotValidForName", "not valid for name"]);
    tls = only_tls_since(&front, tls, "wrong server name");
    let (cfg, out) = config(dir.path(), &src(&url, tls_block(&pki.ca_file, None, None)));
    once_fails(&cfg, &out, "missing client certificate", &["CertificateRequired", "certificate required"]);
    only_tls_since(&front, tls, "missing client certificate");

    // Not one request got through after the control run: no plain-text retry, no request on a
    // half-trusted connection.
    assert_eq!(server.total_requests(), served, "a request reached the server in a failure case");
    assert_eq!(expired.total_requests(), 0, "a request reached the server with the expired certificate");

    // The front would have seen a fallback: plain HTTP to it is counted as such.
    plain_text_is_seen(dir.path(), &front, |u| format!("{{ name: s, type: consul, address: {u}, wait: 1s }}"));
    assert_eq!(server.total_requests(), served, "the plain-text attempt reached no server");
}

/// A TLS endpoint that completes handshakes and counts them, then closes: it stands in for an etcd
/// member serving an expired certificate (etcd's own readiness check would refuse such a member).
async fn counting_tls_endpoint(config: Arc<ServerConfig>) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                if acceptor.accept(tcp).await.is_ok() {
                    c.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (port, count)
}

#[test]
fn etcd_tls_failures_are_reported_and_never_fall_back_to_plain_text() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let etcd =
        rt.block_on(EtcdServer::start_with(EtcdOptions { client_cert_auth: true, ..Default::default() })).unwrap();
    rt.block_on(async { etcd.client().await.unwrap().put("tls/k", "secure").await.unwrap() });
    let certs = etcd.certs().unwrap();
    let client = Leaf { cert: certs.client_cert.clone(), key: certs.client_key.clone() };
    let other = Pki::new(dir.path(), "other");
    let src = |ep: &str, tls: String| format!("{{ name: s, type: etcd, endpoints: [{ep}], tls: {tls} }}");

    // kvsync reaches etcd through a front that classifies every connection.
    let etcd_addr: std::net::SocketAddr =
        etcd.endpoint().strip_prefix("https://").expect("an https endpoint").parse().unwrap();
    let front = rt.block_on(TlsFront::start(etcd_addr)).unwrap();
    let ep = front.url("https");

    let (cfg, out) = config(dir.path(), &src(&ep, tls_block(&certs.ca, Some(&client), None)));
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg, "--timeout", "10s"], T);
    assert!(status.success(), "the control case failed:\n{err}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "{\n  \"k\": \"secure\"\n}\n");
    let mut tls = only_tls_since(&front, 0, "control");

    let (cfg, out) = config(dir.path(), &src(&ep, tls_block(&other.ca_file, Some(&client), None)));
    once_fails(&cfg, &out, "wrong CA", &["UnknownIssuer", "unknown issuer"]);
    tls = only_tls_since(&front, tls, "wrong CA");
    let (cfg, out) = config(dir.path(), &src(&ep, tls_block(&certs.ca, Some(&client), Some("etcd.example"))));
    once_fails(&cfg, &out, "wrong server name", &["NotValidForName", "not valid for name"]);
    tls = only_tls_since(&front, tls, "wrong server name");
    let (cfg, out) = config(dir.path(), &src(&ep, tls_block(&certs.ca, None, None)));
    once_fails(
        &cfg,
        &out,
        "missing client certificate",
        &["CertificateRequired", "certificate required", "bad certificate", "BadCertificate"],
    );
    only_tls_since(&front, tls, "missing client certificate");

    let pki = Pki::new(dir.path(), "exp");
    let expired_leaf = pki.leaf("expired-etcd", true, true);
    let (port, handshakes) = rt.block_on(counting_tls_endpoint(pki.server_config(&expired_leaf, false)));
    let expired_front = rt.block_on(TlsFront::start(([127, 0, 0, 1], port).into())).unwrap();
    let (cfg, out) = config(dir.path(), &src(&expired_front.url("https"), tls_block(&pki.ca_file, None, None)));
    once_fails(&cfg, &out, "expired certificate", &["Expired", "expired"]);
    assert_eq!(handshakes.load(Ordering::SeqCst), 0, "kvsync completed a handshake with an expired certificate");
    only_tls_since(&expired_front, 0, "expired certificate");

    // The front would have seen a fallback: plain HTTP/2 to it is counted as such.
    plain_text_is_seen(dir.path(), &front, |u| format!("{{ name: s, type: etcd, endpoints: [{u}] }}"));
}
