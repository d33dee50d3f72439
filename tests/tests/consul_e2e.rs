//! The Consul source through the real `kvsync` binary against the Consul KV test server.

use std::fs;
use std::path::Path;
use std::time::Duration;

use kvsync_tests::consul_server::{Access, ConsulServer};
use kvsync_tests::kvsync::{self, Daemon};
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(20);

/// A Consul test server on its own runtime, so the test body can block.
struct Consul {
    server: ConsulServer,
    _rt: tokio::runtime::Runtime,
}

impl Consul {
    fn start() -> Consul {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let server = rt.block_on(ConsulServer::start()).unwrap();
        Consul { server, _rt: rt }
    }
}

fn config(dir: &Path, consul: &str, extra_source: &str, outputs: &str) -> String {
    let p = dir.join("k.yaml");
    fs::write(
        &p,
        format!(
            "sources:\n  - {{ name: c, type: consul, address: {consul}, wait: 2s{extra_source} }}\nhttp: {{ listen: \"\" }}\n\
             retry: {{ initial: 50ms, max: 500ms }}\noutputs:\n{outputs}"
        ),
    )
    .unwrap();
    p.display().to_string()
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn watch_propagates_and_resyncs_after_an_index_reset() {
    let c = Consul::start();
    c.server.put("config/app/host", "h1");
    c.server.put("config/app/port", "80");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("app.json");
    let cfg = config(
        dir.path(),
        &c.server.url(),
        "",
        &format!("  - {{ name: app, source: c, prefix: config/app/, format: json, destination: {} }}\n", out.display()),
    );
    let d = Daemon::start(&["run", "--config", &cfg]);
    wait::until(T, "first render", || read(&out).contains("h1"));
    c.server.put("config/app/host", "h2");
    wait::until(T, "the change", || read(&out).contains("h2"));

    // A snapshot restore: the index goes backwards and a key written since is gone.
    let snap = c.server.snapshot();
    c.server.put("config/app/extra", "later");
    wait::until(T, "extra", || read(&out).contains("later"));
    c.server.restore(snap);
    wait::until(T, "the resync to drop the key written after the snapshot", || !read(&out).contains("later"));
    let j: serde_json::Value = serde_json::from_str(&read(&out)).unwrap();
    assert_eq!(j, serde_json::json!({"host": "h2", "port": "80"}));
    c.server.put("config/app/port", "81");
    wait::until(T, "changes after the reset", || read(&out).contains("81"));
    assert!(!d.has_exited());
}

#[test]
fn outputs_sharing_prefixes_make_one_upstream_loop() {
    let c = Consul::start();
    c.server.put("config/app/a", "1");
    c.server.put("config/db/b", "2");
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path();
    let cfg = config(
        dir.path(),
        &c.server.url(),
        "",
        &format!(
            "  - {{ name: all, source: c, prefix: config/, format: json, destination: {o}/all.json }}\n\
             \x20 - {{ name: app1, source: c, prefix: config/app/, format: json, destination: {o}/app1.json }}\n\
             \x20 - {{ name: app2, source: c, prefix: config/app/, format: yaml, destination: {o}/app2.yaml }}\n",
            o = o.display()
        ),
    );
    let _d = Daemon::start(&["run", "--config", &cfg]);
    wait::until(T, "renders", || {
        o.join("all.json").exists() && o.join("app1.json").exists() && o.join("app2.yaml").exists()
    });
    c.server.put("config/app/a", "changed");
    wait::until(T, "the change in every output", || {
        read(&o.join("app1.json")).contains("changed")
            && read(&o.join("app2.yaml")).contains("changed")
            && read(&o.join("all.json")).contains("changed")
    });
    assert_eq!(c.server.requests("/v1/kv/config/app/"), 0, "the nested prefix is served by the wider watch");
    assert!(c.server.requests("/v1/kv/config/") >= 2);
}

#[test]
fn hostile_keys_are_refused_and_nothing_escapes() {
    let c = Consul::start();
    c.server.put("f/good", "ok");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("files");
    let cfg = config(
        dir.path(),
        &c.server.url(),
        "",
        &format!("  - {{ name: f, source: c, prefix: f/, format: files, destination: {} }}\n", dest.display()),
    );
    let d = Daemon::start(&["run", "--config", &cfg]);
    wait::until(T, "first render", || read(&dest.join("good")) == "ok");
    for (key, message) in [
        ("f/../escape", "would escape the destination"),
        ("f//abs", "is an absolute path"),
        ("f/a//b", "empty path segment"),
        (&*format!("f/{}", "n".repeat(300)), "longer than 255 bytes"),
        ("f/..data", "reserved for the generation layout"),
    ] {
        c.server.put(key, "evil");
        d.wait_log(message, T);
        c.server.delete(key);
    }
    assert_eq!(read(&dest.join("good")), "ok", "the last good generation stays");
    let outside: Vec<String> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!outside.iter().any(|n| n.contains("escape")), "nothing written outside: {outside:?}");
    c.server.put("f/good", "still ok");
    wait::until(T, "recovery", || read(&dest.join("good")) == "still ok");
}

#[test]
fn forbidden_is_reported_without_the_token_and_recovers() {
    let c = Consul::start();
    c.server.put("sec/k", "v1");
    c.server.enable_acl();
    c.server.set_token("tok-0123456789-secret", &[("sec/", Access::Read)]);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    fs::write(&token, "tok-0123456789-secret\n").unwrap();
    let out = dir.path().join("sec.json");
    let cfg = config(
        dir.path(),
        &c.server.url(),
        &format!(", token_file: {}", token.display()),
        &format!("  - {{ name: sec, source: c, prefix: sec/, format: json, destination: {} }}\n", out.display()),
    );
    let mut cmd = kvsync::command(&["run", "--config", &cfg, "--log-level", "trace"]);
    cmd.env("KVSYNC_LOG", "trace");
    let d = Daemon::start_with(cmd);
    wait::until(T, "first render", || read(&out).contains("v1"));
    // The request in flight still carries the good token; the next one (after the 2 s wait) the bad one.
    fs::write(&token, "wrong-token-value").unwrap();
    d.wait_log("permission denied reading prefix `sec/`", T);
    c.server.put("sec/k", "v2");
    std::thread::sleep(Duration::from_millis(700));
    assert!(read(&out).contains("v1"), "refused reads change nothing: the last good file stays");
    fs::write(&token, "tok-0123456789-secret").unwrap();
    c.server.put("sec/k", "v3");
    wait::until(T, "recovery after the token file is fixed", || read(&out).contains("v3"));
    let log = d.log();
    assert!(!log.contains("tok-0123456789-secret") && !log.contains("wrong-token-value"), "a token reached the log");
    assert!(!log.contains("v3\"") && !log.contains("\"v1"), "a value reached the log");
}

#[test]
fn poll_mode_and_once() {
    let c = Consul::start();
    c.server.put("p/k", "one");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.env");
    let cfg = config(
        dir.path(),
        &c.server.url(),
        ", mode: poll, interval: 200ms",
        &format!("  - {{ name: p, source: c, prefix: p/, format: env, destination: {} }}\n", out.display()),
    );
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg, "--timeout", "10s"], T);
    assert!(status.success(), "{err}");
    assert_eq!(read(&out), "k=\"one\"\n");
    let _d = Daemon::start(&["run", "--config", &cfg]);
    c.server.put("p/k", "two");
    wait::file_is(&out, "k=\"two\"\n", T);
}
