//! `kvsync exec`: the supervised child with real processes. Each test is bounded in time: every wait
//! has a timeout, and the recording child ends by itself after a minute.

use std::time::{Duration, Instant};

use kvsync_tests::fixture::{alive, signal, zombie_children, Fixture};
use kvsync_tests::kvsync::{self, Daemon};
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(10);

/// A `file` source over `kv/`, an output `a` (json of keys under a/) with `actions` as its
/// on_change, fast exec timings, and `exec_extra` appended under `exec:`.
fn config(fx: &Fixture, actions: &str, exec_extra: &str) -> std::path::PathBuf {
    fx.config(&format!(
        "sources:\n  - {{ name: kv, type: file, path: \"{{kv}}\" }}\n\
         outputs:\n  - name: a\n    source: kv\n    prefix: a/\n    format: json\n    destination: \"{{out}}/a.json\"\n    on_change:\n{actions}\n\
         http: {{ listen: \"\" }}\n\
         exec:\n  kill_timeout: 2s\n  min_restart_interval: 100ms\n  restart_backoff: {{ initial: 100ms, max: 400ms }}\n{exec_extra}\n"
    ))
}

fn exec(fx: &Fixture, cfg: &std::path::Path, extra_args: &[&str]) -> Daemon {
    let script = fx.child_script().display().to_string();
    let rec = fx.rec().display().to_string();
    let cfg = cfg.display().to_string();
    let mut args = vec!["exec", "--config", &cfg, "--", &script, &rec];
    args.extend_from_slice(extra_args);
    Daemon::start(&args)
}

#[test]
fn child_gets_sighup_on_change_but_not_on_first_render() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let cfg = config(&fx, "      - { signal: SIGHUP, to: child }", "");
    let d = exec(&fx, &cfg, &[]);
    wait::until(T, "the child to start", || fx.starts().len() == 1);
    // The child was started after the first render: the file is there, no signal (on_start: false).
    assert_eq!(std::fs::read_to_string(fx.out("a.json")).unwrap(), "{\n  \"x\": \"1\"\n}\n");
    fx.put("a/x", "2");
    wait::until(T, "the child to get SIGHUP", || fx.count("HUP") == 1);
    // Counted once kvsync has stopped, when nothing more can happen: one signal, for the change (a
    // signal for the first render would make two), sent once (one action line in the complete log).
    let (status, log) = stop(d);
    assert_eq!(status.code(), Some(0));
    assert_eq!(fx.count("HUP"), 1, "no signal for the first render: {:?}", fx.events());
    assert_eq!(log.matches("on_change SIGHUP to child").count(), 1, "{log}");
    assert_eq!(fx.starts().len(), 1, "signalled, not restarted: {:?}", fx.events());
}

/// Stops kvsync with SIGTERM and returns its status and its complete log. The recording child has
/// recorded every signal sent before its TERM (a trap for a lower-numbered signal runs first).
fn stop(mut d: Daemon) -> (std::process::ExitStatus, String) {
    d.signal(15);
    let status = d.wait(T);
    (status, d.log())
}

#[test]
fn restart_action_restarts_the_child() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let cfg = config(&fx, "      - { restart: child }", "");
    let d = exec(&fx, &cfg, &[]);
    wait::until(T, "the child to start", || fx.starts().len() == 1);
    let first = fx.starts()[0];
    fx.put("a/x", "2");
    wait::until(T, "the child to start again", || fx.starts().len() == 2);
    let events = fx.events();
    assert_eq!(events[1], "TERM", "stopped with kill_signal before the new start: {events:?}");
    assert!(!alive(first), "the first child is gone");
    assert_ne!(fx.starts()[1], first);
    d.wait_log("restarting the child", T);
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn two_outputs_changing_in_one_pass_send_one_signal() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    fx.put("b/y", "1");
    let cfg = fx.config(
        "sources:\n  - { name: kv, type: file, path: \"{kv}\" }\n\
         outputs:\n\
         \x20 - { name: a, source: kv, prefix: a/, format: json, destination: \"{out}/a.json\", on_change: [{ signal: SIGHUP, to: child }] }\n\
         \x20 - { name: b, source: kv, prefix: b/, format: json, destination: \"{out}/b.json\", on_change: [{ signal: SIGHUP, to: child }] }\n\
         wait: { min: 300ms, max: 2s }\n\
         http: { listen: \"\" }\n",
    );
    let d = exec(&fx, &cfg, &[]);
    wait::until(T, "the child to start", || fx.starts().len() == 1);
    fx.put("a/x", "2");
    fx.put("b/y", "2");
    wait::file_is(&fx.out("b.json"), "{\n  \"y\": \"2\"\n}\n", T);
    wait::file_is(&fx.out("a.json"), "{\n  \"x\": \"2\"\n}\n", T);
    wait::until(T, "the child to get SIGHUP", || fx.count("HUP") >= 1);
    // Counted once kvsync has stopped: every pass and its actions are over and logged.
    let (_, log) = stop(d);
    assert_eq!(log.matches("on_change SIGHUP to child").count(), 1, "one pass, one signal: {log}");
    assert_eq!(fx.count("HUP"), 1, "one pass, one signal: {:?}\n{log}", fx.events());
}

#[test]
fn exit_code_of_the_child_is_kvsyncs() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let cfg = config(&fx, "      []", "");
    let c = cfg.display().to_string();
    let (status, _, err) = kvsync::run(&["exec", "--config", &c, "--", "sh", "-c", "exit 3"], T);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("the child exited; kvsync exits with its status"), "{err}");
}

#[test]
fn child_killed_by_sigkill_gives_137() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let cfg = config(&fx, "      []", "");
    let mut d = exec(&fx, &cfg, &[]);
    wait::until(T, "the child to start", || fx.starts().len() == 1);
    signal(fx.starts()[0], 9);
    assert_eq!(d.wait(T).code(), Some(137), "128 + SIGKILL");
}

#[test]
fn command_that_is_not_found_exits_127() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let cfg = config(&fx, "      []", "");
    let c = cfg.display().to_string();
    let (status, _, err) = kvsync::run(&["exec", "--config", &c, "--", "/nonexistent/kvsync-test-app"], T);
    assert_eq!(status.code(), Some(127), "{err}");
    assert!(err.contains("cannot start the child \"/nonexistent/kvsync-test-app\""), "{err}");
}

#[test]
fn exec_without_a_command_says_how_to_give_one() {
    let fx = Fixture::new();
    let cfg = config(&fx, "      []", "");
    let c = cfg.display().to_string();
    let (status, _, err) = kvsync::run(&["exec", "--config", &c], T);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("kvsync exec needs a command: give it after `--`"), "{err}");
}

#[test]
fn restart_on_failure_with_backoff_then_exit_on_success() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    // Fails twice, then succeeds: with on-failure kvsync restarts it twice, then exits 0.
    let script = fx.write_file(
        "flaky.sh",
        "#!/bin/sh\nn=$(cat {rec}/starts 2>/dev/null | wc -l)\ndate +%s%N >> {rec}/starts\n[ \"$n\" -ge 2 ] && exit 0\nexit 1\n",
    );
    kvsync_tests::fixture::make_executable(&script);
    let cfg = config(&fx, "      []", "  restart: on-failure");
    let c = cfg.display().to_string();
    let s = script.display().to_string();
    let (status, _, err) = kvsync::run(&["exec", "--config", &c, "--", &s], T);
    assert_eq!(status.code(), Some(0), "{err}");
    let starts: Vec<u128> =
        std::fs::read_to_string(fx.rec().join("starts")).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(starts.len(), 3, "{err}");
    // Backoff: initial 100ms with equal jitter -> at least 50ms (and min_restart_interval 100ms).
    for w in starts.windows(2) {
        let gap_ms = (w[1] - w[0]) / 1_000_000;
        assert!(gap_ms >= 90, "restarted after only {gap_ms}ms: {err}");
    }
    assert!(err.contains("the child exited; starting it again after a delay"), "{err}");
}

#[test]
fn restart_always_restarts_a_child_that_succeeded() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let script = fx.write_file("once.sh", "#!/bin/sh\necho start >> {rec}/events\nexit 0\n");
    kvsync_tests::fixture::make_executable(&script);
    let cfg = config(&fx, "      []", "  restart: always");
    let s = script.display().to_string();
    let c = cfg.display().to_string();
    let d = Daemon::start(&["exec", "--config", &c, "--", &s]);
    wait::until(T, "three starts", || fx.count("start") >= 3);
    assert!(!d.has_exited());
    d.stop();
}

#[test]
fn sigterm_is_forwarded_and_kvsync_exits_with_the_childs_status() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let cfg = config(&fx, "      []", "");
    // The child exits 7 on SIGTERM.
    let mut d = exec(&fx, &cfg, &["7"]);
    wait::until(T, "the child to start", || fx.starts().len() == 1);
    // Forwarded signals reach the child as they are.
    for (sig, name) in [(10, "USR1"), (12, "USR2"), (28, "WINCH"), (3, "QUIT")] {
        d.signal(sig);
        wait::until(T, &format!("the child to get {name}"), || fx.count(name) == 1);
    }
    assert!(!d.has_exited(), "forwarded signals do not stop kvsync");
    d.signal(15);
    let status = d.wait(T);
    assert_eq!(status.code(), Some(7), "{}", d.log());
    assert_eq!(fx.count("TERM"), 1);
}

#[test]
fn a_child_that_ignores_kill_signal_is_killed_at_kill_timeout() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let script = fx.write_file(
        "stubborn.sh",
        "#!/bin/sh\ntrap 'echo TERM >> {rec}/events' TERM\necho \"start $$\" >> {rec}/events\ni=0\nwhile [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n",
    );
    kvsync_tests::fixture::make_executable(&script);
    let cfg = fx.config(
        "sources:\n  - { name: kv, type: file, path: \"{kv}\" }\noutputs: []\nhttp: { listen: \"\" }\nexec: { kill_timeout: 500ms }\n",
    );
    let c = cfg.display().to_string();
    let s = script.display().to_string();
    let mut d = Daemon::start(&["exec", "--config", &c, "--", &s]);
    wait::until(T, "the child to start", || fx.starts().len() == 1);
    let started = Instant::now();
    d.signal(15);
    let status = d.wait(T);
    assert_eq!(status.code(), Some(137), "SIGKILLed after kill_timeout: {}", d.log());
    assert!(started.elapsed() >= Duration::from_millis(450), "waited for kill_timeout");
    assert_eq!(fx.count("TERM"), 1, "got kill_signal first");
    assert!(!alive(fx.starts()[0]));
}

/// The child leaves orphans behind (a subshell that backgrounds `sleep` and exits): they are
/// re-parented to kvsync (child subreaper) and must be reaped, while the child's own exit status
/// still reaches kvsync.
#[test]
fn orphans_are_reaped_with_subreaper_and_the_childs_status_is_kept() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let script = fx.write_file(
        "orphans.sh",
        "#!/bin/sh\nfor i in 1 2 3 4 5; do (sleep 0.1 & echo $! >> {rec}/orphans) ; done\n\
         i=0\nwhile [ ! -e {rec}/done ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\nexit 5\n",
    );
    kvsync_tests::fixture::make_executable(&script);
    let cfg = config(&fx, "      []", "");
    let c = cfg.display().to_string();
    let s = script.display().to_string();
    let mut d = Daemon::start(&["--log-level", "debug", "exec", "--config", &c, "--", &s]);
    let pid = d.pid();
    wait::until(T, "five orphans", || {
        std::fs::read_to_string(fx.rec().join("orphans")).unwrap_or_default().lines().count() == 5
    });
    d.wait_log("reaped orphaned processes", T);
    // While the child still runs (until rec/done exists), no zombie is left under a live kvsync.
    wait::until(T, "no zombie children of a live kvsync", || zombie_children(pid).is_empty() && alive(pid));
    std::fs::write(fx.rec().join("done"), "").unwrap();
    assert_eq!(d.wait(T).code(), Some(5), "the child's own status was not stolen: {}", d.log());
}

/// kvsync as PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`, with `--user
/// --map-root-user` when not root): orphans come to it without any subreaper registration, and none
/// is left a zombie.
#[test]
fn orphans_are_reaped_as_pid_1() {
    const TEST: &str = "exec::orphans_are_reaped_as_pid_1";
    let userns: &[&str] = if kvsync_tests::namespace::is_root() { &[] } else { &["--user", "--map-root-user"] };
    let probe =
        std::process::Command::new("unshare").args(userns).args(["--pid", "--fork", "--mount-proc", "true"]).output();
    let why = match &probe {
        Err(e) => Some(format!("cannot run unshare: {e}")),
        Ok(o) if !o.status.success() => {
            Some(format!("unshare --pid --fork --mount-proc failed: {}", String::from_utf8_lossy(&o.stderr).trim()))
        }
        Ok(_) => None,
    };
    if let Some(why) = why {
        kvsync_tests::skip::unavailable(TEST, &why);
        return;
    }
    let fx = Fixture::new();
    fx.put("a/x", "1");
    // The child runs until the test creates rec/done (at most ~60 s), so the zombie check below runs
    // while kvsync and its child are alive.
    let script = fx.write_file(
        "orphans.sh",
        "#!/bin/sh\necho $PPID > {rec}/inner.ppid\nfor i in 1 2 3 4 5; do (sleep 0.1 &) ; done\n\
         i=0\nwhile [ ! -e {rec}/done ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\nexit 4\n",
    );
    kvsync_tests::fixture::make_executable(&script);
    let cfg = config(&fx, "      []", "");
    let mut cmd = std::process::Command::new("unshare");
    // --mount-proc: a /proc of the new namespace, as a container has (the reaper reads it).
    cmd.args(userns)
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(kvsync::binary())
        .args(["--log-level", "debug", "exec", "--config"])
        .arg(&cfg)
        .arg("--")
        .arg(&script)
        .env_remove("KVSYNC_LOG");
    let mut d = Daemon::start_with(cmd);
    let ppid = wait::for_some(T, "the child to start", || {
        let s = std::fs::read_to_string(fx.rec().join("inner.ppid")).ok()?;
        s.ends_with('\n').then(|| s.trim().to_string())
    });
    // Inside the namespace the child's parent, kvsync, is PID 1.
    assert_eq!(ppid, "1");
    // kvsync's pid outside the namespace: unshare's only child (found through /proc/*/stat, which
    // every kernel has).
    let kv = wait::for_some(T, "kvsync as unshare's child", || {
        kvsync_tests::namespace::children_of(d.pid()).first().copied()
    });
    let exe = std::fs::read_link(format!("/proc/{kv}/exe")).unwrap();
    assert_eq!(exe, kvsync::binary().canonicalize().unwrap(), "unshare's child is kvsync");
    d.wait_log("reaped orphaned processes", T);
    // While the child still runs, no zombie is left under kvsync (which is still alive, so the check
    // is about its reaping, not about its exit).
    wait::until(T, "no zombie children of a live kvsync", || zombie_children(kv).is_empty() && alive(kv));
    std::fs::write(fx.rec().join("done"), "").unwrap();
    assert_eq!(d.wait(T).code(), Some(4), "{}", d.log());
}

#[test]
fn env_from_kv_reaches_the_child_and_a_change_restarts_it() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    fx.put("env/db-host", "db1");
    fx.put("env/port", "5432");
    let cfg = config(&fx, "      - { signal: SIGHUP, to: child }", "  env: { source: kv, prefix: env/, upcase: true }");
    let d = exec(&fx, &cfg, &[]);
    wait::until(T, "the child to start", || fx.starts().len() == 1);
    let env = fx.child_env(fx.starts()[0]);
    assert!(env.contains(&"DB_HOST=db1".to_string()), "{env:?}");
    assert!(env.contains(&"PORT=5432".to_string()), "{env:?}");
    // A change to an env key: the child is restarted with the new value.
    fx.put("env/db-host", "db2");
    wait::until(T, "the child to start again", || fx.starts().len() == 2);
    let env = fx.child_env(fx.starts()[1]);
    assert!(env.contains(&"DB_HOST=db2".to_string()), "{env:?}");
    assert_eq!(fx.count("HUP"), 0, "an env change restarts, it does not signal");
    // A change elsewhere only signals.
    fx.put("a/x", "2");
    wait::until(T, "the child to get SIGHUP", || fx.count("HUP") == 1);
    // Counted once kvsync has stopped, when no restart can still be on its way.
    let (_, log) = stop(d);
    assert_eq!(fx.starts().len(), 2, "no restart for an unrelated change: {:?}", fx.events());
    assert_eq!(log.matches("the keys under exec.env changed").count(), 1, "{log}");
}

/// SIGTERM while a render pass is committing (its check command is running): the commit finishes
/// (new content, no temp file left), then the child is stopped and kvsync exits with its status.
#[test]
fn sigterm_during_a_commit_lets_it_finish_then_stops_the_child() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let cfg = fx.config(
        "sources:\n  - { name: kv, type: file, path: \"{kv}\" }\n\
         outputs:\n  - name: a\n    source: kv\n    prefix: a/\n    format: json\n    destination: \"{out}/a.json\"\n\
         \x20   check: [\"sh\", \"-c\", \"touch {rec}/checking; sleep 1\"]\n\
         http: { listen: \"\" }\n",
    );
    let mut d = exec(&fx, &cfg, &["9"]);
    wait::until(T, "the child to start", || fx.starts().len() == 1);
    std::fs::remove_file(fx.rec().join("checking")).unwrap();
    fx.put("a/x", "2");
    wait::until(T, "the check of the second render to run", || fx.rec().join("checking").exists());
    d.signal(15);
    let status = d.wait(T);
    assert_eq!(status.code(), Some(9), "the child's status (it exits 9 on SIGTERM): {}", d.log());
    assert_eq!(std::fs::read_to_string(fx.out("a.json")).unwrap(), "{\n  \"x\": \"2\"\n}\n", "{}", d.log());
    let left: Vec<String> = std::fs::read_dir(fx.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["a.json"], "no temp file left behind");
    assert_eq!(fx.count("TERM"), 1);
}

/// Changes that each ask for a restart, in quick succession: the child is never started twice
/// within min_restart_interval.
#[test]
fn restarts_are_at_least_min_restart_interval_apart() {
    let fx = Fixture::new();
    fx.put("a/x", "0");
    let cfg = fx.config(
        "sources:\n  - { name: kv, type: file, path: \"{kv}\" }\n\
         outputs:\n  - { name: a, source: kv, prefix: a/, format: json, destination: \"{out}/a.json\", on_change: [{ restart: child }] }\n\
         http: { listen: \"\" }\n\
         exec: { kill_timeout: 2s, min_restart_interval: 700ms }\n",
    );
    let d = exec(&fx, &cfg, &[]);
    wait::until(T, "the child to start", || fx.starts().len() == 1);
    let mut seen = vec![Instant::now()];
    // The first change asks for a restart within the interval; two more come while it waits.
    fx.put("a/x", "1");
    d.wait_log("restart requested; waiting for min_restart_interval", T);
    fx.put("a/x", "2");
    wait::file_is(&fx.out("a.json"), "{\n  \"x\": \"2\"\n}\n", T);
    fx.put("a/x", "3");
    // Note when each new start appears.
    let deadline = Instant::now() + T;
    while seen.len() < 3 && Instant::now() < deadline {
        if fx.starts().len() > seen.len() {
            seen.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(seen.len() >= 3, "at least two restarts: {:?}", fx.events());
    for w in seen.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(600), "restarted {gap:?} after the previous start: {}", d.log());
    }
    d.stop();
}
