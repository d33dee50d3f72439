//! Secrets through the real binary: tokens, passwords and values never reach the logs (at trace
//! level), stdout, error messages or the HTTP endpoint (`/status`, `/metrics`, `/readyz`), in any form
//! (as is, JSON-escaped, debug-escaped, percent-encoded, base64: see `kvsync_tests::leaks`); token and
//! password files are re-read when they change; destination files carry their configured mode from
//! the first byte written.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvsync_tests::consul_server::{Access, ConsulServer};
use kvsync_tests::etcd_server::EtcdServer;
use kvsync_tests::fault_proxy::FaultProxy;
use kvsync_tests::kvsync::{self, Daemon};
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(30);

const CONSUL_TOKEN: &str = "ctok-1f2e3d4c-secret";
const CONSUL_TOKEN_2: &str = "ctok-rotated-99aa-secret";
const ETCD_PASSWORD: &str = "epw-5b6a7980-secret";
const ETCD_PASSWORD_2: &str = "epw-rotated-77cc-secret";
/// Values with characters that escaping changes (quotes, backslashes, a newline, a tab), so that an
/// escaped rendering differs from the raw one and is searched for as such.
const VALUES: [&str; 5] = [
    "cval-one \"0a1b2c\" back\\slash",
    "cval-two\n3d4e5f\tend",
    "eval-one '6a7b8c' x=y",
    "eval-two \"9d0e1f\"\nlast",
    "bad-val-4c5d6e \"conflict\"",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

/// Every secret the test used that appears in `text`, in any form, with the form.
fn leaked(text: &str) -> Vec<String> {
    let secrets: Vec<&str> =
        [CONSUL_TOKEN, CONSUL_TOKEN_2, ETCD_PASSWORD, ETCD_PASSWORD_2].into_iter().chain(VALUES).collect();
    kvsync_tests::leaks::found(text, &secrets)
}

/// The JSON string of `v` as the json format renders it, to find a value in an output file.
fn rendered(v: &str) -> String {
    serde_json::to_string(v).unwrap()
}

#[test]
fn no_secret_in_any_output_at_trace_level_and_credential_files_rotate() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let consul = rt.block_on(ConsulServer::start()).unwrap();
    consul.put("sec/password", VALUES[0]);
    // A key that is both a value and a folder: the `bad` output cannot render, and its error message
    // names the key, never the values.
    consul.put("bad/conflict", VALUES[4]);
    consul.put("bad/conflict/inner", VALUES[4]);
    consul.enable_acl();
    consul.set_token(CONSUL_TOKEN, &[("sec/", Access::Read), ("bad/", Access::Read)]);
    let token_file = d.join("consul-token");
    fs::write(&token_file, format!("{CONSUL_TOKEN}\n")).unwrap();

    let mut etcd = rt.block_on(EtcdServer::start()).unwrap();
    rt.block_on(etcd.enable_auth("root-pw", "reader", ETCD_PASSWORD, &["sec/"])).unwrap();
    let ec = rt.block_on(etcd.client()).unwrap();
    rt.block_on(ec.put("sec/db", VALUES[2])).unwrap();
    // kvsync reaches etcd through a proxy, so that the test can break its connection: an open watch
    // stream outlives a password change, a new connection has to authenticate again.
    let proxy = rt.block_on(FaultProxy::start(([127, 0, 0, 1], etcd.client_port).into())).unwrap();
    let password_file = d.join("etcd-password");
    fs::write(&password_file, format!("{ETCD_PASSWORD}\n")).unwrap();

    let (cout, eout) = (d.join("c.json"), d.join("e.json"));
    // Two configs: `good` with the two outputs that render, `all` with the `bad` one too.
    let write_config = |name: &str, bad: bool| -> String {
        let cfg = d.join(name);
        let mut text = format!(
            "sources:\n\
             \x20 - {{ name: c, type: consul, address: {}, wait: 1s, token_file: {} }}\n\
             \x20 - {{ name: e, type: etcd, endpoints: [{}], username: reader, password_file: {} }}\n\
             http: {{ listen: \"127.0.0.1:0\" }}\nretry: {{ initial: 50ms, max: 500ms }}\noutputs:\n\
             \x20 - {{ name: co, source: c, prefix: sec/, format: json, destination: {}, perms: \"0600\" }}\n\
             \x20 - {{ name: eo, source: e, prefix: sec/, format: json, destination: {}, perms: \"0600\" }}\n",
            consul.url(),
            token_file.display(),
            proxy.url(),
            password_file.display(),
            cout.display(),
            eout.display(),
        );
        if bad {
            text += &format!(
                "\x20 - {{ name: bad, source: c, prefix: bad/, format: json, destination: {} }}\n",
                d.join("bad.json").display()
            );
        }
        fs::write(&cfg, text).unwrap();
        cfg.display().to_string()
    };
    let good = write_config("good.yaml", false);
    let cfg = write_config("all.yaml", true);

    // `once` at trace level: both stdout and stderr are searched.
    let once = |cfg: &str| {
        let mut cmd = kvsync::command(&["once", "--config", cfg, "--timeout", "15s", "--log-level", "trace"]);
        cmd.env("KVSYNC_LOG", "trace");
        let out = cmd.output().unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert_eq!(leaked(&stdout), Vec::<String>::new(), "secrets on stdout:\n{stdout}");
        assert_eq!(leaked(&stderr), Vec::<String>::new(), "secrets in the log:\n{stderr}");
        assert!(stderr.lines().count() > 20, "trace logging is on: {stderr}");
        (out.status, stderr)
    };
    let (status, stderr) = once(&good);
    assert!(status.success(), "{stderr}");
    assert!(read(&cout).contains(&rendered(VALUES[0])) && read(&eout).contains(&rendered(VALUES[2])), "{stderr}");
    // The `bad` output cannot render: the error message names the output and the key, not the values.
    let (status, stderr) = once(&cfg);
    assert!(!status.success(), "`once` cannot succeed with the `bad` output: {stderr}");
    assert!(stderr.contains("output `bad`") && stderr.contains("conflict"), "the error names the key: {stderr}");

    let mut cmd = kvsync::command(&["run", "--config", &cfg, "--log-level", "trace"]);
    cmd.env("KVSYNC_LOG", "trace");
    let daemon = Daemon::start_with(cmd);
    daemon.wait_log("starting source", T);
    let addr = daemon.http_addr(T);
    // What the endpoint says while the `bad` output fails and the others have rendered.
    daemon.wait_log("output `bad`", T);
    let endpoint = |what: &str| -> Vec<(String, String)> {
        ["/status", "/metrics", "/readyz", "/healthz"]
            .iter()
            .map(|p| (format!("{p} ({what})"), kvsync_tests::http::get(&addr, p).map(|a| a.body).unwrap_or_else(|e| e)))
            .collect()
    };
    let mut answers = endpoint("before the rotations");
    assert!(answers[0].1.contains("\"bad\""), "/status lists the outputs: {}", answers[0].1);

    // Consul token rotation: a new token is issued and the old one revoked; the server drops
    // its connections, so that the blocking query in flight (authorized with the old token when it
    // started) ends. The old token is refused; once the file is rewritten, kvsync reads it again and
    // the next change comes through.
    consul.set_token(CONSUL_TOKEN_2, &[("sec/", Access::Read), ("bad/", Access::Read)]);
    consul.remove_token(CONSUL_TOKEN);
    consul.reset_connections();
    daemon.wait_log("permission denied reading prefix `sec/`", T);
    fs::write(&token_file, CONSUL_TOKEN_2).unwrap();
    consul.put("sec/password", VALUES[1]);
    wait::until(T, "the Consul change read with the rotated token", || read(&cout).contains(&rendered(VALUES[1])));

    // etcd password rotation: the user is re-created with a new password and kvsync's connection is
    // reset. Authenticating with the old password fails; once the file is rewritten, kvsync reads it
    // again and the next change comes through.
    for args in [
        &["user", "delete", "reader"][..],
        &["user", "add", &format!("reader:{ETCD_PASSWORD_2}"), "--interactive=false"],
        &["user", "grant-role", "reader", "user-role"],
    ] {
        rt.block_on(etcd.etcdctl(args)).unwrap();
    }
    proxy.reset_all();
    daemon.wait_log("the content of `password_file`", T);
    fs::write(&password_file, ETCD_PASSWORD_2).unwrap();
    let ec = rt.block_on(etcd.client()).unwrap();
    rt.block_on(ec.put("sec/db", VALUES[3])).unwrap();
    wait::until(T, "the etcd change read with the rotated password", || read(&eout).contains(&rendered(VALUES[3])));
    answers.extend(endpoint("after the rotations"));

    for f in [&cout, &eout] {
        assert_eq!(fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
    }
    let log = daemon.log();
    drop(daemon);
    assert_eq!(leaked(&log), Vec::<String>::new(), "secrets in the daemon's log:\n{log}");
    for (what, text) in answers {
        assert_eq!(leaked(&text), Vec::<String>::new(), "secrets in {what}:\n{text}");
    }
    // etcd is kept until here so that its directory outlives the daemon.
    rt.block_on(etcd.kill());
}

/// The temp file a destination is staged in is created with the configured mode: a reader polling
/// the directory during large writes never sees a staged file that group or others may read.
#[test]
fn destination_mode_is_set_from_the_first_byte() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv");
    let dest_dir = dir.path().join("dest");
    fs::create_dir_all(&kv).unwrap();
    fs::create_dir_all(&dest_dir).unwrap();
    let dest = dest_dir.join("big.json");
    // A 3 MB value: writing and fsyncing it keeps the staged file around long enough to be seen.
    let big = |c: char| c.to_string().repeat(3 << 20);
    fs::write(kv.join("v"), big('a')).unwrap();
    let cfg = dir.path().join("k.yaml");
    fs::write(
        &cfg,
        format!(
            "sources:\n  - {{ name: f, type: file, path: {} }}\nhttp: {{ listen: \"\" }}\noutputs:\n\
             \x20 - {{ name: big, source: f, prefix: \"\", format: json, destination: {}, perms: \"0600\" }}\n",
            kv.display(),
            dest.display()
        ),
    )
    .unwrap();

    // The watcher: stats every entry of the destination directory in a tight loop.
    let stop = Arc::new(AtomicBool::new(false));
    let staged_seen = Arc::new(AtomicUsize::new(0));
    // Distinct findings (the same staged file is seen many times while it is written).
    let too_open: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
    let watcher = {
        let (stop, staged_seen, too_open, dest_dir) =
            (Arc::clone(&stop), Arc::clone(&staged_seen), Arc::clone(&too_open), dest_dir.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(entries) = fs::read_dir(&dest_dir) else { continue };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // A file gone between readdir and stat was renamed into place: not a finding.
                    let Ok(m) = fs::symlink_metadata(e.path()) else { continue };
                    let mode = m.permissions().mode() & 0o777;
                    if name != "big.json" {
                        staged_seen.fetch_add(1, Ordering::SeqCst);
                    }
                    if mode & 0o077 != 0 {
                        too_open.lock().unwrap().insert(format!("{name}: {mode:o}"));
                    }
                }
            }
        })
    };

    let _d = Daemon::start(&["run", "--config", &cfg.display().to_string()]);
    wait::until(T, "the first render", || fs::metadata(&dest).map(|m| m.len() > 3_000_000).unwrap_or(false));
    for (i, c) in ['b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'].into_iter().enumerate() {
        fs::write(kv.join("v"), big(c)).unwrap();
        let expected_start = format!("{{\n  \"v\": \"{c}");
        wait::until(T, &format!("change {i}"), || {
            fs::read(&dest).map(|b| b.starts_with(expected_start.as_bytes())).unwrap_or(false)
        });
    }
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let too_open = too_open.lock().unwrap().clone();
    assert!(too_open.is_empty(), "files readable by group or others in the destination directory: {too_open:?}");
    assert!(
        staged_seen.load(Ordering::SeqCst) > 0,
        "the watcher never saw a staged file, so it proved nothing; make the values larger"
    );
}
