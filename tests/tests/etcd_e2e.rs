//! The etcd source through the real `kvsync` binary against a real etcd (Debian's etcd-server).

use std::fs;
use std::path::Path;
use std::time::Duration;

use kvsync_tests::etcd_server::EtcdServer;
use kvsync_tests::fault_proxy::FaultProxy;
use kvsync_tests::kvsync::{self, Daemon};
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

fn config(dir: &Path, endpoint: &str, extra: &str, outputs: &str) -> String {
    let p = dir.join("k.yaml");
    fs::write(
        &p,
        format!(
            "sources:\n  - {{ name: e, type: etcd, endpoints: [{endpoint}]{extra} }}\nhttp: {{ listen: \"\" }}\n\
             retry: {{ initial: 50ms, max: 1s }}\noutputs:\n{outputs}"
        ),
    )
    .unwrap();
    p.display().to_string()
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn watch_propagates_survives_a_restart_and_a_compaction() {
    let rt = runtime();
    let mut etcd = rt.block_on(EtcdServer::start()).unwrap();
    let client = rt.block_on(etcd.client()).unwrap();
    rt.block_on(client.put("app/host", "h1")).unwrap();
    rt.block_on(client.put("app/gone", "soon")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("app.json");
    let cfg = config(
        dir.path(),
        &etcd.endpoint(),
        "",
        &format!("  - {{ name: app, source: e, prefix: app/, format: json, destination: {} }}\n", out.display()),
    );
    let d = Daemon::start(&["run", "--config", &cfg]);
    wait::until(T, "first render", || read(&out).contains("h1"));
    rt.block_on(client.put("app/host", "h2")).unwrap();
    wait::until(T, "the change", || read(&out).contains("h2"));

    // etcd goes down; kvsync keeps the last good file and resumes when it returns.
    rt.block_on(etcd.kill());
    std::thread::sleep(Duration::from_millis(300));
    assert!(read(&out).contains("h2"));
    rt.block_on(etcd.restart()).unwrap();
    let client = rt.block_on(etcd.client()).unwrap();
    rt.block_on(client.put("app/host", "h3")).unwrap();
    wait::until(T, "the change after the restart", || read(&out).contains("h3"));

    // Down again; right after it returns a key is deleted and the history compacted. Whether kvsync
    // reconnects before the compaction (plain events) or after (a compacted resume point: re-list and
    // reconcile the delete), the file must converge. The deterministic compaction-while-disconnected
    // case is covered at the source level (etcd_source.rs).
    rt.block_on(etcd.kill());
    rt.block_on(etcd.restart()).unwrap();
    let client = rt.block_on(etcd.client()).unwrap();
    rt.block_on(client.delete("app/gone")).unwrap();
    let rev = rt.block_on(client.put("app/host", "h4")).unwrap();
    rt.block_on(client.compact(rev)).unwrap();
    wait::until(T, "the state after the compaction", || read(&out).contains("h4") && !read(&out).contains("soon"));
    let j: serde_json::Value = serde_json::from_str(&read(&out)).unwrap();
    assert_eq!(j, serde_json::json!({"host": "h4"}));
    assert!(!d.has_exited());
}

#[test]
fn three_prefixes_use_one_connection() {
    let rt = runtime();
    let etcd = rt.block_on(EtcdServer::start()).unwrap();
    let client = rt.block_on(etcd.client()).unwrap();
    for p in ["a", "b", "c"] {
        rt.block_on(client.put(&format!("{p}/k"), "1")).unwrap();
    }
    let port: u16 = etcd.endpoint().rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap();
    let proxy = rt.block_on(FaultProxy::start(([127, 0, 0, 1], port).into())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path();
    let outputs: String = ["a", "b", "c"]
        .iter()
        .map(|p| {
            format!(
                "  - {{ name: {p}, source: e, prefix: {p}/, format: json, destination: {}/{p}.json }}\n",
                o.display()
            )
        })
        .collect();
    let cfg = config(dir.path(), &proxy.url(), "", &outputs);
    let _d = Daemon::start(&["run", "--config", &cfg]);
    wait::until(T, "three renders", || ["a", "b", "c"].iter().all(|p| o.join(format!("{p}.json")).exists()));
    rt.block_on(client.put("b/k", "2")).unwrap();
    wait::until(T, "the change", || read(&o.join("b.json")).contains("\"2\""));
    assert_eq!(proxy.accepted(), 1, "one TCP connection carries every prefix");
}

#[test]
fn poll_mode_and_once() {
    let rt = runtime();
    let etcd = rt.block_on(EtcdServer::start()).unwrap();
    let client = rt.block_on(etcd.client()).unwrap();
    rt.block_on(client.put("p/k", "one")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.properties");
    let cfg = config(
        dir.path(),
        &etcd.endpoint(),
        ", mode: poll, interval: 200ms",
        &format!("  - {{ name: p, source: e, prefix: p/, format: properties, destination: {} }}\n", out.display()),
    );
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg, "--timeout", "15s"], T);
    assert!(status.success(), "{err}");
    assert_eq!(read(&out), "k=one\n");
    let _d = Daemon::start(&["run", "--config", &cfg]);
    rt.block_on(client.put("p/k", "two")).unwrap();
    wait::file_is(&out, "k=two\n", T);
}

#[test]
fn unreachable_etcd_times_out_once_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = kvsync_tests::etcd_server::free_port().unwrap();
    let cfg = config(
        dir.path(),
        &format!("http://127.0.0.1:{port}"),
        "",
        &format!(
            "  - {{ name: x, source: e, prefix: x/, format: json, destination: {}/x.json }}\n",
            dir.path().display()
        ),
    );
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg, "--timeout", "2s"], T);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("output `x` needs source `e` prefix `x/`"), "{err}");
}
