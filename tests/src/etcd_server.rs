//! A real etcd for tests: one member or a three-member cluster on loopback.
//!
//! Each member gets a temporary data directory and free 127.0.0.1 ports, runs with `--unsafe-no-fsync`
//! and a fast heartbeat/election (it is ready in about 0.1 s), and counts as started only when a
//! Status RPC answers (the port accepts TCP before gRPC is ready). It is killed on drop, and can be
//! killed and restarted on the same data directory and ports. Optional: TLS with certificates made by
//! rcgen for the test (server SAN 127.0.0.1, client certificate with a chosen CN), client-certificate
//! auth, and etcd users/roles set up with `etcdctl`. [`TestClient`] writes through the gRPC client.
//! To cut a source off from a member, put a [`crate::fault_proxy::FaultProxy`] in front of its client port.
//!
//! `etcd` and `etcdctl` must be on PATH (Debian's etcd-server and etcd-client; `scripts/test` installs them).

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kvsync_etcd_grpc::pb::etcdserverpb::{DeleteRangeRequest, PutRequest};
use kvsync_etcd_grpc::{prefix_range, Client, ConnectOptions, TlsPem};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::process::{Child, Command};

/// How long a member may take to answer its first Status.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-call timeout of the test client.
const CALL: Duration = Duration::from_secs(10);

/// How to start a member.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Serve clients over TLS with certificates generated for the test.
    pub tls: bool,
    /// Require client certificates (`--client-cert-auth`); implies `tls`.
    pub client_cert_auth: bool,
    /// Common name of the generated client certificate: under `--client-cert-auth` with auth enabled,
    /// etcd takes it as the user name of calls that carry no token. Default `root`.
    pub client_cn: Option<String>,
    /// `--auth-token-ttl` in seconds (simple tokens).
    pub auth_token_ttl: Option<u32>,
    /// `--max-request-bytes`.
    pub max_request_bytes: Option<usize>,
    /// Anything else to pass to etcd.
    pub extra_args: Vec<String>,
}

/// Certificates for a TLS test: a CA, a server certificate for 127.0.0.1/localhost, a client certificate.
#[derive(Debug)]
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCerts {
    /// Writes a fresh CA, server and client (CN `client_cn`, which etcd takes as the user name under
    /// `--client-cert-auth`) certificate set into `dir`.
    pub fn generate(dir: &Path, client_cn: &str) -> Result<TestCerts> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "kvsync test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

        let leaf = |cn: &str, server: bool| -> Result<(String, String)> {
            let mut p = CertificateParams::new(if server { vec!["localhost".to_string()] } else { vec![] })?;
            if server {
                p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse()?));
            }
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            // etcd uses its server certificate as a client too (its own gateway calls).
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate()?;
            let cert = p.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf("127.0.0.1", true)?;
        let (client_cert, client_key) = leaf(client_cn, false)?;
        let write = |name: &str, content: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        };
        Ok(TestCerts {
            ca: write("ca.pem", &ca.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server-key.pem", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client-key.pem", &client_key)?,
        })
    }

    /// The client side's TLS material (CA + client certificate).
    pub fn client_pem(&self) -> Result<TlsPem> {
        Ok(TlsPem {
            ca: Some(std::fs::read(&self.ca)?),
            identity: Some((std::fs::read(&self.client_cert)?, std::fs::read(&self.client_key)?)),
            server_name: None,
        })
    }
}

/// A free loopback port (bound and released; the kernel does not hand it out again at once).
pub fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One etcd member.
pub struct EtcdServer {
    pub name: String,
    /// Keeps the data directory, logs and certificates alive as long as the member.
    dir: tempfile::TempDir,
    pub client_port: u16,
    pub peer_port: u16,
    /// `--initial-cluster` (this member alone, or every member of a cluster).
    initial_cluster: String,
    options: EtcdOptions,
    certs: Option<Arc<TestCerts>>,
    child: Option<Child>,
    /// Credentials the test client uses once auth is enabled.
    root: Option<(String, String)>,
}

impl EtcdServer {
    /// A plain single member.
    pub async fn start() -> Result<EtcdServer> {
        Self::start_with(EtcdOptions::default()).await
    }

    pub async fn start_with(options: EtcdOptions) -> Result<EtcdServer> {
        let mut m = Self::prepare("n0", options)?;
        m.initial_cluster = format!("{}=http://127.0.0.1:{}", m.name, m.peer_port);
        m.spawn()?;
        m.wait_ready().await?;
        Ok(m)
    }

    fn prepare(name: &str, mut options: EtcdOptions) -> Result<EtcdServer> {
        if options.client_cert_auth {
            options.tls = true;
        }
        let dir = tempfile::tempdir()?;
        let certs = if options.tls {
            Some(Arc::new(TestCerts::generate(dir.path(), options.client_cn.as_deref().unwrap_or("root"))?))
        } else {
            None
        };
        Ok(EtcdServer {
            name: name.to_string(),
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            initial_cluster: String::new(),
            options,
            certs,
            child: None,
            root: None,
        })
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn certs(&self) -> Option<&TestCerts> {
        self.certs.as_deref()
    }

    /// A directory that lives as long as the member, for the test's own files.
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log"))?;
        let url = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&url)
            .arg("--advertise-client-urls")
            .arg(&url)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("kvsync-test")
            .args(["--unsafe-no-fsync", "--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(c) = &self.certs {
            cmd.arg("--cert-file").arg(&c.server_cert).arg("--key-file").arg(&c.server_key);
            if self.options.client_cert_auth {
                cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(&c.ca);
            }
        }
        if let Some(ttl) = self.options.auth_token_ttl {
            cmd.arg("--auth-token-ttl").arg(ttl.to_string());
        }
        if let Some(b) = self.options.max_request_bytes {
            cmd.arg("--max-request-bytes").arg(b.to_string());
        }
        cmd.args(&self.options.extra_args);
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log)).kill_on_drop(true);
        self.child = Some(cmd.spawn().context("starting `etcd` (is etcd-server installed?)")?);
        Ok(())
    }

    /// Waits until a Status RPC answers (or the process dies, or START_TIMEOUT passes).
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    bail!("etcd {} exited with {status} while starting:\n{}", self.name, self.log_tail());
                }
            }
            if let Ok(c) = self.raw_client().await {
                if c.status(Duration::from_secs(1)).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("etcd {} did not answer Status within {START_TIMEOUT:?}:\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the member's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills the member (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts the member again on the same data directory and ports, and waits until it answers.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await;
        self.spawn()?;
        self.wait_ready().await
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    async fn raw_client(&self) -> Result<Client> {
        let tls = match &self.certs {
            Some(c) => Some(c.client_pem()?),
            None => None,
        };
        let opts = ConnectOptions { tls, connect_timeout: Duration::from_secs(2), ..ConnectOptions::default() };
        Ok(Client::connect(&self.endpoint(), &opts).await?)
    }

    /// A client for writing test data (authenticated as root once auth is enabled).
    pub async fn client(&self) -> Result<TestClient> {
        let mut client = self.raw_client().await?;
        if let Some((u, p)) = &self.root {
            client.authenticate(u, p, CALL).await.context("authenticating the test client as root")?;
        }
        Ok(TestClient { client })
    }

    /// Runs `etcdctl` against this member (with the test certificates and root credentials if set).
    pub async fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("etcdctl");
        cmd.arg(format!("--endpoints={}", self.endpoint()));
        if let Some(c) = &self.certs {
            cmd.arg(format!("--cacert={}", c.ca.display()));
            cmd.arg(format!("--cert={}", c.client_cert.display()));
            cmd.arg(format!("--key={}", c.client_key.display()));
        }
        if let Some((u, p)) = &self.root {
            cmd.arg(format!("--user={u}:{p}"));
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
        let out = tokio::time::timeout(CALL, cmd.output()).await.context("etcdctl timed out")??;
        if !out.status.success() {
            bail!("etcdctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Enables auth: a `root` user (password `root_password`), and `user` (password `password`) whose
    /// role `user-role` may read (only) the given prefixes.
    pub async fn enable_auth(
        &mut self,
        root_password: &str,
        user: &str,
        password: &str,
        readable: &[&str],
    ) -> Result<()> {
        self.etcdctl(&["user", "add", &format!("root:{root_password}"), "--interactive=false"]).await?;
        self.etcdctl(&["user", "grant-role", "root", "root"]).await?;
        self.etcdctl(&["user", "add", &format!("{user}:{password}"), "--interactive=false"]).await?;
        self.etcdctl(&["role", "add", "user-role"]).await?;
        for p in readable {
            self.etcdctl(&["role", "grant-permission", "user-role", "--prefix=true", "read", p]).await?;
        }
        self.etcdctl(&["user", "grant-role", user, "user-role"]).await?;
        self.etcdctl(&["auth", "enable"]).await?;
        self.root = Some(("root".to_string(), root_password.to_string()));
        Ok(())
    }
}

/// A cluster of members on loopback.
pub struct EtcdCluster {
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one answers Status and a leader is elected.
    pub async fn start(n: usize) -> Result<EtcdCluster> {
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            members.push(EtcdServer::prepare(&format!("n{i}"), EtcdOptions::default())?);
        }
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = initial.clone();
            m.spawn()?;
        }
        for m in &mut members {
            m.wait_ready().await?;
        }
        let c = EtcdCluster { members };
        c.wait_for_leader(START_TIMEOUT).await?;
        Ok(c)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// Starts a killed member again (without waiting for it: alone it cannot answer until quorum is back).
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        if !self.members[i].is_running() {
            self.members[i].spawn()?;
        }
        Ok(())
    }

    /// Waits until a running member knows a leader; returns the leader's index in `members`.
    pub async fn wait_for_leader(&self, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            for m in self.members.iter().filter(|m| m.is_running()) {
                let Ok(c) = m.raw_client().await else { continue };
                let Ok(s) = c.status(Duration::from_secs(1)).await else { continue };
                if s.leader == 0 {
                    continue;
                }
                for (i, other) in self.members.iter().enumerate().filter(|(_, m)| m.is_running()) {
                    let Ok(oc) = other.raw_client().await else { continue };
                    if let Ok(os) = oc.status(Duration::from_secs(1)).await {
                        if os.header.map(|h| h.member_id) == Some(s.leader) {
                            return Ok(i);
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no etcd member reported a leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client on the first running member that has a leader.
    pub async fn client(&self) -> Result<TestClient> {
        for m in self.members.iter().filter(|m| m.is_running()) {
            if let Ok(c) = m.client().await {
                if c.client.status(Duration::from_secs(1)).await.is_ok_and(|s| s.leader != 0) {
                    return Ok(c);
                }
            }
        }
        bail!("no running etcd member with a leader")
    }
}

/// Writes test data through the gRPC client.
pub struct TestClient {
    pub client: Client,
}

impl TestClient {
    /// Puts a key; returns the revision of the write.
    pub async fn put(&self, key: &str, value: impl Into<bytes::Bytes>) -> Result<i64> {
        let req = PutRequest { key: key.as_bytes().to_vec().into(), value: value.into(), ..PutRequest::default() };
        let resp = self.client.put(req, CALL).await.with_context(|| format!("put {key}"))?;
        Ok(resp.header.map(|h| h.revision).unwrap_or(0))
    }

    /// Deletes one key; returns the revision.
    pub async fn delete(&self, key: &str) -> Result<i64> {
        let req = DeleteRangeRequest { key: key.as_bytes().to_vec().into(), ..DeleteRangeRequest::default() };
        let resp = self.client.delete_range(req, CALL).await.with_context(|| format!("delete {key}"))?;
        Ok(resp.header.map(|h| h.revision).unwrap_or(0))
    }

    /// Deletes every key under a prefix in one revision; returns (revision, deleted count).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(i64, i64)> {
        let (key, end) = prefix_range(prefix.as_bytes());
        let req = DeleteRangeRequest { key: key.into(), range_end: end.into(), ..DeleteRangeRequest::default() };
        let resp = self.client.delete_range(req, CALL).await.with_context(|| format!("delete prefix {prefix}"))?;
        Ok((resp.header.map(|h| h.revision).unwrap_or(0), resp.deleted))
    }

    /// Compacts history up to `revision`.
    pub async fn compact(&self, revision: i64) -> Result<()> {
        self.client.compact(revision, CALL).await.with_context(|| format!("compact at {revision}"))?;
        Ok(())
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<i64> {
        let s = self.client.status(CALL).await.context("status")?;
        Ok(s.header.map(|h| h.revision).unwrap_or(0))
    }
}
