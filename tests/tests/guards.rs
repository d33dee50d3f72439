//! Publish guards through the real binary: each guard holds a render (destination untouched, no
//! action, not ready, logged once, counted in /metrics) and resumes when the data comes back within
//! it or when `kvsync release` is run; the first render after a start is compared with what is on disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kvsync_tests::consul_server::{ConsulServer, KvSnapshot};
use kvsync_tests::fixture::Fixture;
use kvsync_tests::http;
use kvsync_tests::kvsync::{self, Daemon};
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(30);

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn remove_key(f: &Fixture, key: &str) {
    std::fs::remove_file(f.path().join("kv").join(key)).unwrap();
}

type Keys = BTreeMap<String, String>;

/// The keys under `app/` in a Consul KV test server, each state of a test prepared beforehand and
/// then put in place whole by a snapshot restore (what an operator's restore of an old snapshot
/// does), so kvsync sees each state at once, never half of it.
struct Upstream {
    server: ConsulServer,
    states: Vec<KvSnapshot>,
    _rt: tokio::runtime::Runtime,
}

impl Upstream {
    fn new(states: &[Keys]) -> Upstream {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let server = rt.block_on(ConsulServer::start()).unwrap();
        let mut snaps = Vec::new();
        for state in states {
            server.delete_tree("app/");
            for (k, v) in state {
                assert!(server.put(&format!("app/{k}"), v.clone()));
            }
            snaps.push(server.snapshot());
        }
        let up = Upstream { server, states: snaps, _rt: rt };
        up.show(0);
        up
    }

    /// Puts state `i` in place.
    fn show(&self, i: usize) {
        self.server.restore(self.states[i].clone());
    }

    fn source(&self) -> String {
        format!("{{ name: s, type: consul, address: {}, wait: 2s }}", self.server.url())
    }
}

fn keys(kv: &[(&str, &str)]) -> Keys {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// How many times the output's command action ran.
fn actions(f: &Fixture) -> usize {
    read(&f.rec().join("actions")).lines().count()
}

fn held_line(fig: &str) -> String {
    format!("output `app`: {fig}; holding the last good version; `kvsync release app` or restoring the keys resumes")
}

const FILE_SOURCE: &str = "{ name: s, type: file, path: {kv} }";

fn config(f: &Fixture, source: &str, guard: &str, extra: &str) -> std::path::PathBuf {
    f.config(&format!(
        "sources:\n  - {source}\nhttp: {{ listen: \"127.0.0.1:0\" }}\n\
         outputs:\n  - name: app\n    source: s\n    prefix: app/\n    format: json\n    destination: {{out}}/app.json\n\
         \x20   guard: {guard}\n{extra}"
    ))
}

const COMMAND_ACTION: &str = "    on_change:\n      - command: [\"sh\", \"-c\", \"echo fired >> {rec}/actions\"]\n";

/// One guard's whole life: held by `breach`, resumed by `restore`, held again and released by
/// command. `fig` is the figures the hold names; `poke` changes the data without changing them.
fn guard_holds_and_resumes(
    guard: &str,
    label: &str,
    initial: Keys,
    breach: impl Fn(&mut Keys),
    fig: &str,
    poke: impl Fn(&mut Keys),
    restore: impl Fn(&mut Keys),
) {
    let f = Fixture::new();
    // The states the test goes through, in order.
    let mut states = vec![initial];
    for step in [&breach as &dyn Fn(&mut Keys), &poke, &restore, &breach] {
        let mut next = states.last().unwrap().clone();
        step(&mut next);
        states.push(next);
    }
    let up = Upstream::new(&states);
    let cfg = config(&f, &up.source(), guard, COMMAND_ACTION);
    let out = f.out("app.json");
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap(), "--log-level", "debug"]);
    let addr = d.http_addr(T);
    wait::until(T, "the first render", || !read(&out).is_empty());
    wait::until(T, "the first action", || actions(&f) == 1);
    let good = read(&out);

    up.show(1);
    d.wait_log(&held_line(fig), T);
    assert_eq!(read(&out), good, "a held render leaves the destination as it is");
    let ready = http::get(&addr, "/readyz").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains(fig), "/readyz names the reason: {}", ready.body);
    let metrics = http::get(&addr, "/metrics").unwrap().body;
    assert!(metrics.contains(&format!("kvsync_output_held{{output=\"app\",guard=\"{label}\"}} 1")), "{metrics}");
    let (status, table, _) = kvsync::run(&["status", "--http", &addr], T);
    assert_eq!(status.code(), Some(1), "held is not ready:\n{table}");
    assert!(table.contains(&held_line(fig)), "{table}");
    // Another render of the same held state is not logged again.
    up.show(2);
    d.wait_log("output `app`: still held", T);
    assert_eq!(d.log().matches(&held_line(fig)).count(), 1, "{}", d.log());
    assert_eq!(actions(&f), 1, "a held render fires no action");

    // The data comes back within the guard: published by itself.
    up.show(3);
    wait::until(T, "the render after the data came back", || read(&out) != good);
    wait::until(T, "its action", || actions(&f) == 2);
    wait::until(T, "ready again", || http::get(&addr, "/readyz").is_ok_and(|r| r.status == 200));
    let metrics = http::get(&addr, "/metrics").unwrap().body;
    assert!(metrics.contains(&format!("kvsync_output_held{{output=\"app\",guard=\"{label}\"}} 0")), "{metrics}");

    // Held again; the operator releases it: the held render is published once.
    let before = read(&out);
    up.show(4);
    let start = std::time::Instant::now();
    while d.log().matches(&held_line(fig)).count() != 2 {
        assert!(start.elapsed() < T, "not held a second time; log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(read(&out), before);
    let (status, o, e) = kvsync::run(&["release", "app", "--http", &addr], T);
    assert_eq!(status.code(), Some(0), "{o}{e}");
    assert!(o.contains("output `app` released"), "{o}");
    wait::until(T, "the released render", || read(&out) != before);
    wait::until(T, "its action", || actions(&f) == 3);
    wait::until(T, "ready after the release", || http::get(&addr, "/readyz").is_ok_and(|r| r.status == 200));
    d.stop();
}

fn ten_keys() -> Keys {
    (0..10).map(|i| (format!("k{i}"), format!("v{i}"))).collect()
}

#[test]
fn max_removed_holds_and_resumes() {
    guard_holds_and_resumes(
        "{ max_removed: 50% }",
        "max_removed",
        ten_keys(),
        |d| (0..6).for_each(|i| drop(d.remove(&format!("k{i}")))),
        "6 of 10 keys removed at once (max_removed 50%)",
        |d| drop(d.insert("k9".into(), "v9b".into())),
        |d| (0..6).for_each(|i| drop(d.insert(format!("k{i}"), format!("back{i}")))),
    );
}

#[test]
fn max_changed_holds_and_resumes() {
    guard_holds_and_resumes(
        "{ max_changed: 5 }",
        "max_changed",
        ten_keys(),
        |d| (0..7).for_each(|i| drop(d.insert(format!("k{i}"), format!("changed-{i}")))),
        "7 of 10 values changed at once (max_changed 5)",
        |d| drop(d.insert("k0".into(), "changed-0-again".into())),
        |d| {
            (1..7).for_each(|i| drop(d.insert(format!("k{i}"), format!("v{i}"))));
            d.insert("k0".into(), "restored".into());
        },
    );
}

#[test]
fn min_keys_holds_and_resumes() {
    guard_holds_and_resumes(
        "{ min_keys: 3 }",
        "min_keys",
        keys(&[("a", "1"), ("b", "2"), ("c", "3")]),
        |d| {
            d.remove("b");
            d.remove("c");
        },
        "1 key under the inputs, fewer than min_keys 3",
        |d| drop(d.insert("a".into(), "1b".into())),
        |d| {
            d.insert("b".into(), "2".into());
            d.insert("c".into(), "3".into());
        },
    );
}

#[test]
fn require_holds_and_resumes() {
    guard_holds_and_resumes(
        "{ require: [db/host] }",
        "require",
        keys(&[("db/host", "h1"), ("db/port", "5432")]),
        |d| drop(d.remove("db/host")),
        "required key `db/host` is missing (require)",
        |d| drop(d.insert("db/port".into(), "5433".into())),
        |d| drop(d.insert("db/host".into(), "h2".into())),
    );
}

/// Under `kvsync exec` a held render does not signal the child; the release does.
#[test]
fn a_held_render_does_not_signal_the_child_until_released() {
    let f = Fixture::new();
    let mut states = vec![ten_keys()];
    let mut less = ten_keys();
    less.remove("k0");
    states.push(less.clone());
    (1..5).for_each(|i| drop(less.remove(&format!("k{i}"))));
    states.push(less);
    let up = Upstream::new(&states);
    let cfg =
        config(&f, &up.source(), "{ max_removed: 2 }", "    on_change:\n      - signal: SIGHUP\n        to: child\n");
    let out = f.out("app.json");
    let child = f.child_script();
    let d = Daemon::start(&[
        "exec",
        "--config",
        cfg.to_str().unwrap(),
        "--",
        child.to_str().unwrap(),
        f.rec().to_str().unwrap(),
    ]);
    let addr = d.http_addr(T);
    wait::until(T, "the child's start", || f.starts().len() == 1);
    let good = read(&out);
    // Within the guard: signalled.
    up.show(1);
    wait::until(T, "the first HUP", || f.count("HUP") == 1);
    // Over it: held, no signal.
    up.show(2);
    d.wait_log(&held_line("4 of 9 keys removed at once (max_removed 2)"), T);
    assert_ne!(read(&out), good);
    let held = read(&out);
    let (status, o, e) = kvsync::run(&["release", "app", "--http", &addr], T);
    assert_eq!(status.code(), Some(0), "{o}{e}");
    wait::until(T, "the released render's HUP", || f.count("HUP") == 2);
    assert_ne!(read(&out), held);
    // Two signals in all: the change within the guard and the release; none for the held render.
    assert_eq!(d.log().matches("on_change SIGHUP to child").count(), 2, "{}", d.log());
    assert_eq!(f.starts().len(), 1, "the child keeps running");
    d.stop();
}

/// A restart in the middle of an upstream incident: the first render is compared with what the
/// destination holds, for a format read back from disk and for a template (through its key record).
#[test]
fn the_first_render_after_a_start_is_compared_with_the_destination() {
    let f = Fixture::new();
    for (k, v) in ten_keys() {
        f.put(&format!("app/{k}"), &v);
    }
    f.write_file("t.j2", "{% for k, v in kv | items %}{{ k }}={{ v }}\n{% endfor %}");
    let outputs = "outputs:\n  - { name: app, source: s, prefix: app/, format: env, destination: {out}/app.env, guard: { max_removed: 50% } }\n  \
                   - { name: tpl, source: s, prefix: app/, format: template, template: {dir}/t.j2, destination: {out}/app.conf, guard: { max_removed: 50% } }\n";
    let cfg = f.config(&format!(
        "sources:\n  - {{ name: s, type: file, path: {{kv}} }}\nhttp: {{ listen: \"127.0.0.1:0\" }}\n{outputs}"
    ));
    let (env, tpl) = (f.out("app.env"), f.out("app.conf"));
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    wait::until(T, "both outputs", || read(&env).contains("k9") && read(&tpl).contains("k9=v9"));
    d.stop();
    let (env_good, tpl_good) = (read(&env), read(&tpl));

    // The upstream loses most keys while kvsync is down.
    (0..8).for_each(|i| remove_key(&f, &format!("app/k{i}")));
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = d.http_addr(T);
    d.wait_log(&held_line("8 of 10 keys removed at once (max_removed 50%)"), T);
    d.wait_log(
        "output `tpl`: 8 of 10 keys removed at once (max_removed 50%); holding the last good version; \
         `kvsync release tpl` or restoring the keys resumes",
        T,
    );
    assert_eq!(read(&env), env_good);
    assert_eq!(read(&tpl), tpl_good);
    let ready = http::get(&addr, "/readyz").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    let (status, o, e) = kvsync::run(&["release", "tpl", "--http", &addr], T);
    assert_eq!(status.code(), Some(0), "{o}{e}");
    wait::file_is(&tpl, "k8=v8\nk9=v9\n", T);
    assert_eq!(read(&env), env_good, "only the released output is published");
    d.stop();
}

#[test]
fn a_bad_guard_is_a_config_error_naming_the_output() {
    let f = Fixture::new();
    let cfg = config(&f, FILE_SOURCE, "{ max_removed: most }", "");
    let (status, _, err) = kvsync::run(&["check", "--config", cfg.to_str().unwrap()], T);
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("output `app`: guard.max_removed: `most` is not a share; write a percentage such as 50% or a count such as 20"),
        "{err}"
    );
    assert!(err.contains("kvsync.yaml:"), "the message names the file: {err}");
}

#[test]
fn release_of_an_unknown_or_unheld_output_says_so() {
    let f = Fixture::new();
    f.put("app/a", "1");
    let cfg = config(&f, FILE_SOURCE, "{ min_keys: 1 }", "");
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = d.http_addr(T);
    wait::until(T, "the first render", || !read(&f.out("app.json")).is_empty());
    let (status, _, e) = kvsync::run(&["release", "nope", "--http", &addr], T);
    assert_eq!(status.code(), Some(1));
    assert!(e.contains("no output is named `nope` (outputs: app)"), "{e}");
    let (status, o, e) = kvsync::run(&["release", "app", "--http", &addr], T);
    assert_eq!(status.code(), Some(1), "{o}");
    assert!(e.contains("output `app` is not held"), "{e}");
    d.stop();
}
