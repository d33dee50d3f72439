//! `keep: N` and `kvsync rollback`: kept versions beside the destination, published atomically while
//! a reader reads (never a mix), held until `kvsync release`; offline with `--config`; and admin
//! requests refused where they must be.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvsync_tests::fixture::Fixture;
use kvsync_tests::http;
use kvsync_tests::kvsync::{self, Daemon};
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(30);

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn actions(f: &Fixture) -> usize {
    read(&f.rec().join("actions")).lines().count()
}

fn config(f: &Fixture, format: &str, dest: &str, extra: &str) -> PathBuf {
    f.config(&format!(
        "sources:\n  - {{ name: s, type: file, path: {{kv}} }}\nhttp: {{ listen: \"127.0.0.1:0\" }}\n{extra}\
         outputs:\n  - name: app\n    source: s\n    prefix: app/\n    format: {format}\n    destination: {{out}}/{dest}\n\
         \x20   keep: 3\n    on_change:\n      - command: [\"sh\", \"-c\", \"echo fired >> {{rec}}/actions\"]\n"
    ))
}

fn rollback(addr: &str, to: u32) {
    let (status, o, e) = kvsync::run(&["rollback", "app", "--to", &to.to_string(), "--http", addr], T);
    assert_eq!(status.code(), Some(0), "{o}{e}");
    assert!(o.contains(&format!("output `app` rolled back to kept version {to}")), "{o}");
}

/// Publishes versions 1..=4 of `app/v`, each waited for with `seen`.
fn publish_versions(f: &Fixture, seen: impl Fn(u32) -> bool) {
    for v in 1..=4 {
        f.put("app/v", &format!("version-{v}"));
        wait::until(T, &format!("version {v} on disk"), || seen(v));
    }
}

#[test]
fn a_single_file_rolls_back_while_a_reader_reads_and_stays_held() {
    let f = Fixture::new();
    let cfg = config(&f, "json", "app.json", "");
    let out = f.out("app.json");
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap(), "--log-level", "debug"]);
    let addr = d.http_addr(T);
    let content = |v: u32| format!("{{\n  \"v\": \"version-{v}\"\n}}\n");
    publish_versions(&f, |v| read(&out) == content(v));
    // keep: 3 holds the three versions version 4 replaced, newest first.
    for (k, v) in [(1, 3), (2, 2), (3, 1)] {
        assert_eq!(read(&f.out(&format!("app.json.kvsync-{k}"))), content(v));
    }
    wait::until(T, "ready", || http::get(&addr, "/readyz").is_ok_and(|r| r.status == 200));
    let (status, table, _) = kvsync::run(&["status", "--http", &addr], T);
    assert_eq!(status.code(), Some(0), "{table}");
    for k in 1..=3 {
        assert!(table.contains(&format!("app     {k}  ")), "kept version {k} listed:\n{table}");
    }
    assert!(table.contains("OUTPUT  KEPT  PUBLISHED  PASS  PATH"), "{table}");
    let fired = actions(&f);

    // A reader reads the file all along: it only ever sees whole versions.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, out) = (Arc::clone(&stop), Arc::clone(&reads), out.clone());
        let whole: Vec<String> = (1..=4).map(content).collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = std::fs::read_to_string(&out).expect("the destination is never missing");
                assert!(whole.contains(&now), "a reader saw a mix: {now:?}");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for round in 0..6 {
        let (k, v) = if round % 2 == 0 { (2, 2) } else { (3, 1) };
        rollback(&addr, k);
        wait::file_is(&out, &content(v), T);
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("the reader saw only whole versions");
    assert!(reads.load(Ordering::Relaxed) > 0);
    wait::until(T, "the actions of the rollbacks", || actions(&f) == fired + 6);

    // Held: an upstream change does not overwrite the rolled-back version.
    d.wait_log("output `app`: rolled back to kept version 3", T);
    let ready = http::get(&addr, "/readyz").unwrap();
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("rolled back to kept version 3"), "{}", ready.body);
    f.put("app/v", "version-5");
    d.wait_log("output `app`: still held", T);
    assert_eq!(read(&out), content(1));
    // Release: upstream again.
    let (status, o, e) = kvsync::run(&["release", "app", "--http", &addr], T);
    assert_eq!(status.code(), Some(0), "{o}{e}");
    wait::file_is(&out, &content(5), T);
    wait::until(T, "ready after the release", || http::get(&addr, "/readyz").is_ok_and(|r| r.status == 200));
    let (status, _, e) = kvsync::run(&["rollback", "app", "--to", "9", "--http", &addr], T);
    assert_eq!(status.code(), Some(1));
    assert!(e.contains("output `app` has no kept version 9 (kept: 1, 2, 3)"), "{e}");
    d.stop();
}

/// Reads `v` and `w` of the `files` destination as a reader of a ConfigMap volume does: through the
/// generation `..data` points at, so both come from one version. None when the generation went away
/// between the two reads (a reader retries, as with kubelet's swaps).
fn read_set(dest: &Path) -> Option<(String, String)> {
    let generation = std::fs::read_link(dest.join("..data")).ok()?;
    let dir = dest.join(generation);
    Some((std::fs::read_to_string(dir.join("v")).ok()?, std::fs::read_to_string(dir.join("w")).ok()?))
}

#[test]
fn a_files_set_rolls_back_whole_while_a_reader_reads() {
    let f = Fixture::new();
    let cfg = config(&f, "files", "set", "");
    let dest = f.out("set");
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap(), "--log-level", "debug"]);
    let addr = d.http_addr(T);
    let is = |v: u32, w: u32| {
        read(&dest.join("v")) == format!("version-{v}") && read(&dest.join("w")) == format!("version-{w}")
    };
    // Published sets, one key at a time: (1,0) (1,1) (2,1) (2,2) (3,2) (3,3) (4,3) (4,4).
    f.put("app/w", "version-0");
    for v in 1..=4 {
        f.put("app/v", &format!("version-{v}"));
        wait::until(T, "v on disk", || is(v, v - 1));
        f.put("app/w", &format!("version-{v}"));
        wait::until(T, "w on disk", || is(v, v));
    }
    // keep: 3 holds (4,3) (3,3) (3,2).
    assert_eq!(read(&dest.join("..kvsync-keep-1/v")), "version-4");
    assert_eq!(read(&dest.join("..kvsync-keep-1/w")), "version-3");
    assert_eq!(read(&dest.join("..kvsync-keep-3/w")), "version-2");

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, dest) = (Arc::clone(&stop), Arc::clone(&reads), dest.clone());
        let whole = [("version-4", "version-4"), ("version-4", "version-3"), ("version-3", "version-2")];
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some((v, w)) = read_set(&dest) {
                    assert!(whole.contains(&(v.as_str(), w.as_str())), "a reader saw a mix: v={v} w={w}");
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                // The visible entries always resolve.
                assert!(dest.join("v").exists(), "a visible entry went missing");
            }
        })
    };
    for round in 0..6 {
        let (k, v, w) = if round % 2 == 0 { (1, 4, 3) } else { (3, 3, 2) };
        rollback(&addr, k);
        wait::until(T, &format!("kept version {k} published"), || is(v, w));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("the reader saw only whole sets");
    assert!(reads.load(Ordering::Relaxed) > 0);
    // Held, then released.
    f.put("app/v", "version-5");
    d.wait_log("output `app`: still held", T);
    assert!(is(3, 2));
    let (status, o, e) = kvsync::run(&["release", "app", "--http", &addr], T);
    assert_eq!(status.code(), Some(0), "{o}{e}");
    wait::until(T, "upstream again", || is(5, 4));
    // The kept generations survive the daemon's own generation cleanup.
    assert!(dest.join("..kvsync-keep-1").is_dir() && dest.join("..kvsync-keep-3").is_dir());
    d.stop();
}

/// With no daemon running, `--config` rolls back on the files themselves; a daemon started later
/// keeps the output held until released.
#[test]
fn an_offline_rollback_holds_across_the_next_start() {
    let f = Fixture::new();
    let cfg = config(&f, "json", "app.json", "");
    let out = f.out("app.json");
    let content = |v: u32| format!("{{\n  \"v\": \"version-{v}\"\n}}\n");
    {
        let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
        publish_versions(&f, |v| read(&out) == content(v));
        d.stop();
    }
    let before = actions(&f);
    let (status, o, e) = kvsync::run(&["rollback", "app", "--to", "2", "--config", cfg.to_str().unwrap()], T);
    assert_eq!(status.code(), Some(0), "{o}{e}");
    assert!(o.contains("no daemon answered; rolled back on disk"), "{o}");
    assert_eq!(read(&out), content(2));
    wait::until(T, "the rollback's action", || actions(&f) == before + 1);

    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = d.http_addr(T);
    d.wait_log("output `app`: rolled back to kept version 2", T);
    assert_eq!(read(&out), content(2), "the held output is not overwritten at start");
    d.stop();
    // Released offline too: the next start follows upstream.
    let (status, o, e) = kvsync::run(&["release", "app", "--config", cfg.to_str().unwrap()], T);
    assert_eq!(status.code(), Some(0), "{o}{e}");
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    wait::file_is(&out, &content(4), T);
    let _ = addr;
    d.stop();
}

#[test]
fn admin_requests_are_refused_on_an_endpoint_other_hosts_can_reach() {
    let f = Fixture::new();
    f.put("app/v", "1");
    let cfg = f.config(
        "sources:\n  - { name: s, type: file, path: {kv} }\nhttp: { listen: \"0.0.0.0:0\" }\n\
         outputs:\n  - { name: app, source: s, prefix: app/, format: json, destination: {out}/app.json, keep: 1 }\n",
    );
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = d.http_addr(T).replace("0.0.0.0", "127.0.0.1");
    wait::until(T, "the first render", || !read(&f.out("app.json")).is_empty());
    for args in [vec!["release", "app"], vec!["rollback", "app"]] {
        let mut args = args.clone();
        args.extend(["--http", &addr]);
        let (status, _, e) = kvsync::run(&args, T);
        assert_eq!(status.code(), Some(1), "{e}");
        assert!(e.contains("admin requests are refused on this endpoint: it listens on 0.0.0.0:"), "{e}");
    }
    // And a request without the admin header (what a web page could send) is refused.
    let answer = post(&addr, "/admin/release/app", false);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    d.stop();
}

/// A plain POST, with or without the admin header; the whole answer.
fn post(addr: &str, path: &str, header: bool) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let h = if header { "X-Kvsync-Admin: 1\r\n" } else { "" };
    write!(s, "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{h}Content-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// The admin socket is 0600: another user cannot connect; and were its mode widened, the daemon
/// still refuses a request from another user (peer credentials). Needs root to act as another user.
#[test]
fn the_admin_socket_refuses_other_users() {
    let f = Fixture::new();
    f.put("app/v", "1");
    let is_root = rustix::process::geteuid().is_root();
    let setpriv = Path::new("/usr/bin/setpriv").exists();
    if !is_root || !setpriv {
        let why =
            format!("needs root and /usr/bin/setpriv to act as another user (root: {is_root}, setpriv: {setpriv})");
        kvsync_tests::skip::unavailable("rollback::the_admin_socket_refuses_other_users", &why);
        return;
    }
    // Another user may traverse the directories (so only the socket's own mode is in the way) and run
    // a copy of the binary.
    use std::os::unix::fs::PermissionsExt;
    let open = |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    open(f.path());
    let sockdir = f.path().join("run");
    std::fs::create_dir(&sockdir).unwrap();
    open(&sockdir);
    let bin = f.path().join("kvsync");
    std::fs::copy(kvsync::binary(), &bin).unwrap();
    open(&bin);
    let socket = sockdir.join("admin.sock");
    let cfg = f.config(
        "sources:\n  - { name: s, type: file, path: {kv} }\nhttp: { listen: \"\" }\nadmin: { socket: {dir}/run/admin.sock }\n\
         outputs:\n  - { name: app, source: s, prefix: app/, format: json, destination: {out}/app.json, guard: { min_keys: 5 } }\n",
    );
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    d.wait_log("admin requests (kvsync release, rollback) on", T);
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    d.wait_log("fewer than min_keys 5", T);
    let as_nobody = |sock: &Path| {
        let out = std::process::Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(["release", "app", "--socket"])
            .arg(sock)
            .env_remove("KVSYNC_LOG")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = as_nobody(&socket);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    // Widen the mode: the kernel lets the connection through, kvsync does not serve it.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, err) = as_nobody(&socket);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("admin requests are only served to uid 0 (kvsync's user) and root; you are uid 65534"),
        "{err}"
    );
    assert!(!f.out("app.json").exists(), "nothing was released");
    // The owner is served.
    let (status, o, e) = kvsync::run(&["release", "app", "--socket", socket.to_str().unwrap()], T);
    assert_eq!(status.code(), Some(0), "{o}{e}");
    wait::until(T, "the released render", || read(&f.out("app.json")).contains("\"v\": \"1\""));
    d.stop();
}
