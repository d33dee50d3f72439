//! End to end through the real binary with the `file` source: edits propagate to every format, readers
//! never see a partial file, `once` and `check` behave, and bad input keeps the last good files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvsync_tests::kvsync::{self, Daemon};
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(20);

/// A temp directory with `kv/` (the watched tree), `out/` (destinations) and a config file.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("kv/app/db")).unwrap();
        fs::create_dir_all(dir.path().join("kv/flags")).unwrap();
        fs::create_dir_all(dir.path().join("out")).unwrap();
        Setup { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn put(&self, key: &str, value: &str) {
        let p = self.path("kv").join(key);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        // Write then rename, as an editor or a ConfigMap update does, so the source never reads half a value.
        let tmp = p.with_extension("..tmp");
        fs::write(&tmp, value).unwrap();
        fs::rename(&tmp, &p).unwrap();
    }

    fn config(&self, body: &str) -> String {
        let text = format!(
            "sources:\n  - name: local\n    type: file\n    path: {}\nhttp: {{ listen: \"\" }}\n{body}",
            self.path("kv").display()
        );
        let p = self.path("kvsync.yaml");
        fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn edits_reach_every_format() {
    let s = Setup::new();
    s.put("app/db/host", "db1");
    s.put("app/name", "demo");
    s.put("flags/a", "on");
    fs::write(s.path("t.j2"), "host={{ tree.db.host }} name={{ key('name') }}\n").unwrap();
    let cfg = s.config(&format!(
        "outputs:
  - {{ name: tmpl, source: local, prefix: app/, format: template, template: {t}, destination: {o}/app.conf }}
  - {{ name: json, source: local, prefix: app/, format: json, destination: {o}/app.json }}
  - {{ name: yaml, source: local, prefix: app/, format: yaml, destination: {o}/app.yaml }}
  - {{ name: env, source: local, prefix: app/, format: env, upcase: true, destination: {o}/app.env }}
  - {{ name: props, source: local, prefix: app/, format: properties, destination: {o}/app.properties }}
  - {{ name: raw, source: local, key: app/name, format: raw, destination: {o}/name.txt }}
  - {{ name: files, source: local, prefix: flags/, format: files, destination: {o}/flags }}
",
        t = s.path("t.j2").display(),
        o = s.path("out").display()
    ));
    let d = Daemon::start(&["run", "--config", &cfg]);
    let out = s.path("out");
    wait::file_is(&out.join("app.conf"), "host=db1 name=demo\n", T);
    wait::file_is(&out.join("flags/a"), "on", T);
    wait::file_is(&out.join("name.txt"), "demo", T);

    s.put("app/db/host", "db2");
    s.put("flags/b", "off");
    wait::file_is(&out.join("app.conf"), "host=db2 name=demo\n", T);
    wait::until(T, "json to change", || fs::read_to_string(out.join("app.json")).is_ok_and(|j| j.contains("db2")));
    let json: serde_json::Value = serde_json::from_str(&read(&out.join("app.json"))).unwrap();
    assert_eq!(json, serde_json::json!({"db": {"host": "db2"}, "name": "demo"}));
    wait::until(T, "yaml to change", || read(&out.join("app.yaml")).contains("db2"));
    wait::file_is(&out.join("app.env"), "DB_HOST=\"db2\"\nNAME=\"demo\"\n", T);
    wait::file_is(&out.join("app.properties"), "db.host=db2\nname=demo\n", T);
    wait::file_is(&out.join("flags/b"), "off", T);
    assert_eq!(fs::read_link(out.join("flags/b")).unwrap(), Path::new("..data/b"));

    // A removed key disappears from the `files` set.
    fs::remove_file(s.path("kv/flags/a")).unwrap();
    wait::until(T, "flags/a to disappear", || !out.join("flags/a").exists());
    assert!(d.log().contains("rendered and written"));
    assert!(d.stop().success());
}

/// Thousands of reads during a burst of edits: every read sees a complete old or new version.
#[test]
fn readers_never_see_partial_files() {
    let s = Setup::new();
    // Large values make a torn write visible: every version is 64 KiB of one repeated digit.
    let value = |i: usize| format!("{}", i % 10).repeat(64 * 1024);
    s.put("app/v", &value(0));
    s.put("flags/v", &value(0));
    let cfg = s.config(&format!(
        "outputs:
  - {{ name: json, source: local, prefix: app/, format: json, destination: {o}/app.json }}
  - {{ name: files, source: local, prefix: flags/, format: files, destination: {o}/flags }}
",
        o = s.path("out").display()
    ));
    let _d = Daemon::start(&["run", "--config", &cfg]);
    let json = s.path("out/app.json");
    let file = s.path("out/flags/v");
    wait::until(T, "first render", || json.exists() && file.exists());

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for path in [json.clone(), file.clone()] {
        let (stop, reads) = (Arc::clone(&stop), Arc::clone(&reads));
        let is_json = path == json;
        readers.push(std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                reads.fetch_add(1, Ordering::Relaxed);
                match fs::read_to_string(&path) {
                    Err(e) => bad.push(format!("{}: {e}", path.display())),
                    Ok(text) => {
                        let v = if is_json {
                            match serde_json::from_str::<serde_json::Value>(&text) {
                                Ok(j) => j["v"].as_str().unwrap_or("").to_string(),
                                Err(e) => {
                                    bad.push(format!("not JSON ({} bytes): {e}", text.len()));
                                    continue;
                                }
                            }
                        } else {
                            text
                        };
                        let first = v.chars().next().unwrap_or('?');
                        if v.len() != 64 * 1024 || v.chars().any(|c| c != first) {
                            bad.push(format!("torn value of {} bytes", v.len()));
                        }
                    }
                }
            }
            bad
        }));
    }
    // At least 60 versions, and on until the readers have made thousands of reads (bounded in time).
    let started = std::time::Instant::now();
    let mut i = 0;
    while i < 60 || (reads.load(Ordering::Relaxed) < 3000 && started.elapsed() < Duration::from_secs(30)) {
        i += 1;
        s.put("app/v", &value(i));
        s.put("flags/v", &value(i));
        std::thread::sleep(Duration::from_millis(15));
    }
    // Finish on a version whose digit is 0, which the wait below looks for.
    while i % 10 != 0 {
        i += 1;
        s.put("app/v", &value(i));
        s.put("flags/v", &value(i));
    }
    wait::until(T, "the last version", || {
        fs::read_to_string(&file).is_ok_and(|t| t.starts_with('0'))
            && fs::read_to_string(&json).is_ok_and(|t| t.contains("\"000"))
    });
    // The readers go on until each has read the last version at least once more.
    let after = reads.load(Ordering::Relaxed);
    wait::until(T, "more reads of the last version", || reads.load(Ordering::Relaxed) >= after + 20);
    stop.store(true, Ordering::Relaxed);
    let bad: Vec<String> = readers.into_iter().flat_map(|r| r.join().unwrap()).collect();
    let n = reads.load(Ordering::Relaxed);
    assert!(n >= 2000, "the readers made only {n} reads");
    assert!(bad.is_empty(), "{} of {n} reads saw a partial or missing file: {:?}", bad.len(), &bad[..bad.len().min(5)]);
}

#[test]
fn once_writes_everything_and_exits_zero() {
    let s = Setup::new();
    s.put("app/name", "demo");
    s.put("flags/x", "1");
    let cfg = s.config(&format!(
        "outputs:
  - {{ name: json, source: local, prefix: app/, format: json, destination: {o}/app.json }}
  - {{ name: files, source: local, prefix: flags/, format: files, destination: {o}/flags }}
",
        o = s.path("out").display()
    ));
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg, "--timeout", "10s"], T);
    assert!(status.success(), "{err}");
    assert_eq!(read(&s.path("out/flags/x")), "1");
    assert!(read(&s.path("out/app.json")).contains("demo"));
}

#[test]
fn once_times_out_naming_what_is_missing() {
    let s = Setup::new();
    let cfg = format!(
        "sources:\n  - {{ name: gone, type: file, path: {} }}\nhttp: {{ listen: \"\" }}\nretry: {{ initial: 50ms, max: 200ms }}\n\
         outputs:\n  - {{ name: app, source: gone, prefix: app/, format: json, destination: {} }}\n",
        s.path("missing-dir").display(),
        s.path("out/app.json").display()
    );
    fs::write(s.path("c.yaml"), cfg).unwrap();
    let (status, _, err) =
        kvsync::run(&["once", "--config", &s.path("c.yaml").display().to_string(), "--timeout", "1s"], T);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("timed out after"), "{err}");
    assert!(err.contains("output `app` needs source `gone` prefix `app/`"), "{err}");
    assert!(!s.path("out/app.json").exists());
}

#[test]
fn check_reports_each_bad_input_with_its_place() {
    let s = Setup::new();
    fs::write(s.path("bad.j2"), "x\n{% if %}\n").unwrap();
    let o = s.path("out").display().to_string();
    let cases: Vec<(String, &str)> = vec![
        ("outputs:\n  - name: a: b\n".into(), "kvsync.yaml:7:"),
        (format!("outputs:\n  - {{ name: a, source: local, prefix: x/, format: json, destinaton: {o}/a }}\n"), "unknown field `destinaton`"),
        (format!("outputs:\n  - {{ name: a, source: nope, format: json, destination: {o}/a }}\n"), "source `nope` is not defined (defined: local)"),
        (
            format!("outputs:\n  - {{ name: a, source: local, format: json, destination: {o}/a }}\n  - {{ name: b, source: local, format: yaml, destination: {o}/a }}\n"),
            "is also the destination of output `a`",
        ),
        (
            format!("outputs:\n  - {{ name: a, source: local, format: template, template: {}, destination: {o}/a }}\n", s.path("bad.j2").display()),
            "bad.j2:2:",
        ),
    ];
    for (body, want) in cases {
        let cfg = s.config(&body);
        let (status, out, err) = kvsync::run(&["check", "--config", &cfg], T);
        assert_eq!(status.code(), Some(1), "check must fail for {body}: {out}{err}");
        assert!(err.contains(want), "for\n{body}\nwanted {want:?} in:\n{err}");
        assert!(err.contains("kvsync.yaml"), "the message names the file: {err}");
    }
    // A good config passes and touches nothing.
    let cfg = s.config(&format!("outputs:\n  - {{ name: a, source: local, format: json, destination: {o}/a.json }}\n"));
    let (status, out, err) = kvsync::run(&["check", "--config", &cfg], T);
    assert!(status.success(), "{err}");
    assert!(out.contains("ok (1 source, 1 output)"), "{out}");
    assert!(!s.path("out/a.json").exists(), "check writes nothing");
}

/// An undefined variable at render time: the old file stays, the error is logged, the daemon keeps
/// running and renders again once the data is fixed.
#[test]
fn render_error_keeps_the_last_good_file() {
    let s = Setup::new();
    s.put("app/host", "h1");
    fs::write(s.path("t.j2"), "host={{ kv.host }}\n").unwrap();
    let cfg = s.config(&format!(
        "outputs:\n  - {{ name: app, source: local, prefix: app/, format: template, template: {}, destination: {} }}\n",
        s.path("t.j2").display(),
        s.path("out/app.conf").display()
    ));
    let d = Daemon::start(&["run", "--config", &cfg]);
    let dest = s.path("out/app.conf");
    wait::file_is(&dest, "host=h1\n", T);
    fs::remove_file(s.path("kv/app/host")).unwrap();
    s.put("app/other", "x");
    d.wait_log("undefined variable `kv.host` (keys under local:app/: ", T);
    d.wait_log("the previous", T);
    assert_eq!(read(&dest), "host=h1\n", "the last good file stays");
    assert!(!d.has_exited(), "kvsync keeps running");
    s.put("app/host", "h2");
    wait::file_is(&dest, "host=h2\n", T);
}

#[test]
fn failing_and_hanging_checks_keep_the_old_file() {
    let s = Setup::new();
    s.put("app/mode", "good");
    // The check accepts a file only if it contains "good"; a value "hang" makes it hang.
    let checker = s.path("check.sh");
    fs::write(&checker, "#!/bin/sh\ngrep -q hang \"$1\" && exec sleep 60\ngrep -q good \"$1\" || { echo \"bad mode in $1\" >&2; exit 2; }\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&checker, fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = s.config(&format!(
        "outputs:\n  - {{ name: app, source: local, prefix: app/, format: json, destination: {}, check: [\"{}\", \"{{{{ staged }}}}\"], check_timeout: 500ms }}\n",
        s.path("out/app.json").display(),
        checker.display()
    ));
    let d = Daemon::start(&["run", "--config", &cfg]);
    let dest = s.path("out/app.json");
    wait::until(T, "first render", || fs::read_to_string(&dest).is_ok_and(|t| t.contains("good")));
    s.put("app/mode", "evil");
    d.wait_log("failed with exit status 2", T);
    assert!(read(&dest).contains("good"));
    s.put("app/mode", "hang");
    d.wait_log("did not finish within 500ms", T);
    assert!(read(&dest).contains("good"));
    s.put("app/mode", "good again");
    wait::until(T, "recovery", || read(&dest).contains("good again"));
    // No staged temp file is left behind.
    let names: Vec<String> =
        fs::read_dir(s.path("out")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["app.json"], "{names:?}");
}

/// A destination directory that does not exist, and one that is not writable. Root writes into a
/// 0555 directory anyway (CAP_DAC_OVERRIDE), so as root kvsync runs without capabilities (`setpriv`),
/// as a non-root user does; where that cannot be done the test fails unless the skip is allowed.
#[test]
fn missing_and_read_only_destination_directories() {
    const TEST: &str = "file_source::missing_and_read_only_destination_directories";
    use kvsync_tests::namespace;
    let root = namespace::is_root();
    if root {
        if let Some(why) = namespace::capability_drop_unavailable() {
            kvsync_tests::skip::unavailable(TEST, &format!("running as root without capabilities: {why}"));
            return;
        }
    }
    let s = Setup::new();
    s.put("app/a", "1");
    fs::create_dir(s.path("ro")).unwrap();
    let cfg = s.config(&format!(
        "outputs:\n  - {{ name: nodir, source: local, prefix: app/, format: json, destination: {} }}\n  - {{ name: ro, source: local, prefix: app/, format: yaml, destination: {} }}\n",
        s.path("no/such/dir/a.json").display(),
        s.path("ro/a.yaml").display()
    ));
    // The same user and privileges for kvsync and for the probe below.
    let unprivileged = |program: &Path, args: &[&str]| {
        let mut c = std::process::Command::new(if root { Path::new("setpriv") } else { program });
        if root {
            c.args(namespace::WITHOUT_CAPABILITIES).arg(program);
        }
        c.args(args).env_remove("KVSYNC_LOG").env("NO_COLOR", "1").stdin(std::process::Stdio::null());
        c
    };
    let d = Daemon::start_with(unprivileged(&kvsync::binary(), &["run", "--config", &cfg]));
    d.wait_log(&format!("destination directory {} does not exist", s.path("no/such/dir").display()), T);
    wait::until(T, "ro output", || s.path("ro/a.yaml").exists());
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(s.path("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    // The directory is read-only for kvsync's privileges: a probe with them cannot create a file.
    let probe = unprivileged(Path::new("touch"), &[&s.path("ro/probe").display().to_string()]).output().unwrap();
    assert!(!probe.status.success() && !s.path("ro/probe").exists(), "the 0555 directory is not writable for kvsync");
    s.put("app/a", "2");
    d.wait_log(&format!("cannot create {}", s.path("ro").display()), T);
    assert!(read(&s.path("ro/a.yaml")).contains("'1'"), "the last good file stays");
    assert!(!d.has_exited());
    fs::set_permissions(s.path("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    // Writable again: the next change is written.
    s.put("app/a", "3");
    wait::until(T, "the write once the directory is writable", || read(&s.path("ro/a.yaml")).contains("'3'"));
}

#[test]
fn unchanged_content_is_not_rewritten() {
    let s = Setup::new();
    s.put("app/a", "1");
    s.put("other/x", "1");
    let cfg = s.config(&format!(
        "outputs:\n  - {{ name: app, source: local, prefix: app/, format: json, destination: {} }}\n  - {{ name: o, source: local, prefix: other/, format: json, destination: {} }}\n",
        s.path("out/app.json").display(),
        s.path("out/o.json").display()
    ));
    let d = Daemon::start(&["run", "--config", &cfg]);
    wait::until(T, "first render", || s.path("out/app.json").exists() && s.path("out/o.json").exists());
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(s.path("out/app.json")).unwrap().ino();
    s.put("other/x", "2");
    wait::until(T, "o.json update", || read(&s.path("out/o.json")).contains("\"2\""));
    // Same bytes for app: rewrite it with the same value, which re-reads the tree.
    s.put("app/a", "1");
    s.put("other/x", "3");
    wait::until(T, "o.json update", || read(&s.path("out/o.json")).contains("\"3\""));
    assert_eq!(fs::metadata(s.path("out/app.json")).unwrap().ino(), ino, "app.json must not be rewritten");
    drop(d);
}

/// A Kubernetes ConfigMap volume updates by swapping its `..data` symlink; kvsync follows it.
#[test]
fn configmap_data_swap_is_followed() {
    let s = Setup::new();
    let cm = s.path("cm");
    fs::create_dir_all(cm.join("..gen1")).unwrap();
    fs::write(cm.join("..gen1/host"), "a").unwrap();
    std::os::unix::fs::symlink("..gen1", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/host", cm.join("host")).unwrap();
    let cfg = format!(
        "sources:\n  - {{ name: cm, type: file, path: {} }}\nhttp: {{ listen: \"\" }}\noutputs:\n  - {{ name: o, source: cm, format: json, destination: {} }}\n",
        cm.display(),
        s.path("out/o.json").display()
    );
    fs::write(s.path("c.yaml"), cfg).unwrap();
    let _d = Daemon::start(&["run", "--config", &s.path("c.yaml").display().to_string()]);
    wait::until(T, "first render", || fs::read_to_string(s.path("out/o.json")).is_ok_and(|t| t.contains("\"a\"")));
    // What the kubelet does: write a new generation, point a temp link at it, rename it over ..data.
    fs::create_dir_all(cm.join("..gen2")).unwrap();
    fs::write(cm.join("..gen2/host"), "b").unwrap();
    std::os::unix::fs::symlink("..gen2", cm.join("..data_tmp")).unwrap();
    fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    fs::remove_dir_all(cm.join("..gen1")).unwrap();
    wait::until(T, "the swapped value", || fs::read_to_string(s.path("out/o.json")).is_ok_and(|t| t.contains("\"b\"")));
    let json: serde_json::Value = serde_json::from_str(&read(&s.path("out/o.json"))).unwrap();
    assert_eq!(json, serde_json::json!({"host": "b"}), "`..`-prefixed entries are not keys");
}

/// `wait.min` coalesces a burst of edits into one write.
#[test]
fn quiescence_coalesces_a_burst() {
    let s = Setup::new();
    s.put("app/v", "0");
    let cfg = s.config(&format!(
        "outputs:\n  - {{ name: app, source: local, prefix: app/, format: json, destination: {}, wait: {{ min: 700ms, max: 5s }} }}\n",
        s.path("out/app.json").display()
    ));
    let d = Daemon::start(&["run", "--config", &cfg]);
    wait::until(T, "first render", || s.path("out/app.json").exists());
    d.wait_log("every output has rendered", T);
    let writes_before = d.log().matches("rendered and written").count();
    for i in 1..=10 {
        s.put("app/v", &i.to_string());
        std::thread::sleep(Duration::from_millis(30));
    }
    wait::until(T, "final value", || read(&s.path("out/app.json")).contains("\"10\""));
    // The write of the final value is logged right after its commit; any earlier write of the burst
    // was logged before that commit, so once that line is there the count is complete.
    wait::until(T, "the write of the final value to be logged", || {
        d.log().matches("rendered and written").count() > writes_before
    });
    let writes = d.log().matches("rendered and written").count() - writes_before;
    assert_eq!(writes, 1, "ten edits within the quiet period make one write; log:\n{}", d.log());
}

/// With `cache:` set, a start during an outage renders from the last-known-good snapshot; a corrupt
/// cache is ignored with a warning, never trusted.
#[test]
fn cache_renders_through_an_outage_at_start() {
    let s = Setup::new();
    s.put("app/secret", "s3cr3t-value");
    let cache = s.path("cache");
    let cfg = s.config(&format!(
        "cache: {{ dir: {}, max_age: 1h }}\nretry: {{ initial: 50ms, max: 200ms }}\noutputs:\n  - {{ name: app, source: local, prefix: app/, format: json, destination: {} }}\n",
        cache.display(),
        s.path("out/app.json").display()
    ));
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg, "--timeout", "10s"], T);
    assert!(status.success(), "{err}");
    // The snapshot was persisted with mode 0600, and only there.
    wait::until(T, "a cache file", || fs::read_dir(&cache).map(|d| d.count() == 1).unwrap_or(false));
    let file = fs::read_dir(&cache).unwrap().next().unwrap().unwrap().path();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    // The backend goes away and the output is lost: `once` still renders, from the cache.
    fs::remove_dir_all(s.path("kv")).unwrap();
    fs::remove_file(s.path("out/app.json")).unwrap();
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg, "--timeout", "10s"], T);
    assert!(status.success(), "{err}");
    assert!(err.contains("serving the cached snapshot"), "{err}");
    assert!(err.contains("rendered from the last-known-good cache"), "{err}");
    assert!(read(&s.path("out/app.json")).contains("s3cr3t-value"));
    assert!(!err.contains("s3cr3t-value"), "values never reach the log");

    // A corrupt cache file is refused with a warning; with no backend, `once` then times out.
    let mut data = fs::read(&file).unwrap();
    let n = data.len() - 40;
    data[n] ^= 0x55;
    fs::write(&file, data).unwrap();
    fs::remove_file(s.path("out/app.json")).unwrap();
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg, "--timeout", "1s"], T);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("is corrupt (checksum mismatch); ignoring it"), "{err}");
    assert!(!s.path("out/app.json").exists());

    // The backend returns: the live snapshot replaces the cache and the output converges.
    s.put("app/secret", "rotated");
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg, "--timeout", "10s"], T);
    assert!(status.success(), "{err}");
    assert!(read(&s.path("out/app.json")).contains("rotated"));
}

/// While an output waits for its first data, kvsync says every few seconds exactly what for.
#[test]
fn pending_inputs_are_logged_until_data_arrives() {
    let s = Setup::new();
    let cfg = format!(
        "sources:\n  - {{ name: late, type: file, path: {} }}\nhttp: {{ listen: \"\" }}\nretry: {{ initial: 50ms, max: 100ms }}\n\
         outputs:\n  - {{ name: app, source: late, prefix: app/, format: json, destination: {} }}\n",
        s.path("later").display(),
        s.path("out/app.json").display()
    );
    fs::write(s.path("c.yaml"), cfg).unwrap();
    let d = Daemon::start(&["run", "--config", &s.path("c.yaml").display().to_string()]);
    d.wait_log(
        "waiting for the first data of: output `app` needs source `late` prefix `app/`",
        Duration::from_secs(15),
    );
    assert!(!s.path("out/app.json").exists(), "no render on incomplete data");
    fs::create_dir_all(s.path("later/app")).unwrap();
    fs::write(s.path("later/app/k"), "v").unwrap();
    wait::until(T, "the first render once the data exists", || s.path("out/app.json").exists());
}
