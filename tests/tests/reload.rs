//! Reloading kvsync's own config: SIGHUP, and edits of the config or a template (watched with
//! notify). Every wait is bounded.

use std::time::Duration;

use kvsync_tests::fixture::Fixture;
use kvsync_tests::kvsync::Daemon;
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(10);

/// Source `kv` feeds output a; source `other` (the same directory, another name) feeds output c.
const ONE_OUTPUT: &str = "sources:\n  - { name: kv, type: file, path: \"{kv}\" }\n  - { name: other, type: file, path: \"{kv}\" }\n\
    outputs:\n  - { name: a, source: kv, prefix: a/, format: json, destination: \"{out}/a.json\", on_change: [{ signal: SIGHUP, to: child }] }\n\
    \x20 - { name: c, source: other, prefix: c/, format: json, destination: \"{out}/c.json\" }\n\
    http: { listen: \"\" }\nwatch_config: WATCH\n";

/// The same plus output b, which reads a new prefix of `kv`: `kv` restarts, `other` keeps running.
const TWO_OUTPUTS: &str = "sources:\n  - { name: kv, type: file, path: \"{kv}\" }\n  - { name: other, type: file, path: \"{kv}\" }\n\
    outputs:\n  - { name: a, source: kv, prefix: a/, format: json, destination: \"{out}/a.json\", on_change: [{ signal: SIGHUP, to: child }] }\n\
    \x20 - { name: c, source: other, prefix: c/, format: json, destination: \"{out}/c.json\" }\n\
    \x20 - { name: b, source: kv, prefix: b/, format: yaml, destination: \"{out}/b.yaml\" }\n\
    http: { listen: \"\" }\nwatch_config: WATCH\n";

#[test]
fn sighup_applies_a_valid_config_keeps_the_old_on_an_invalid_one_and_leaves_the_child_alone() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    fx.put("b/y", "1");
    fx.put("c/z", "1");
    let cfg = fx.config(&ONE_OUTPUT.replace("WATCH", "false"));
    let c = cfg.display().to_string();
    let script = fx.child_script().display().to_string();
    let rec = fx.rec().display().to_string();
    let d = Daemon::start(&["exec", "--config", &c, "--", &script, &rec]);
    wait::until(T, "the child to start", || fx.starts().len() == 1);
    // A valid new config: output b appears; the child is neither restarted nor signalled.
    fx.config(&TWO_OUTPUTS.replace("WATCH", "false"));
    // The edit is not acted on: the log's reload lines are counted at the end, once kvsync has
    // stopped (an edit seen without the signal would add one).
    assert!(!fx.out("b.yaml").exists(), "watch_config: false: nothing happens without SIGHUP");
    d.signal(1);
    wait::file_is(&fx.out("b.yaml"), "y: '1'\n", T);
    d.wait_log("the new config is valid; applying it", T);
    d.wait_log("restarting sources and outputs with the new config (the child keeps running)", T);
    assert_eq!(std::fs::read_to_string(fx.out("c.json")).unwrap(), "{\n  \"z\": \"1\"\n}\n");
    fx.put("c/z", "2");
    wait::file_is(&fx.out("c.json"), "{\n  \"z\": \"2\"\n}\n", T);
    // Only the source whose prefixes changed was restarted (counted in the complete log at the end).
    assert_eq!(fx.starts().len(), 1, "the child keeps running: {:?}", fx.events());
    assert_eq!(fx.count("HUP"), 0, "SIGHUP reloads kvsync; it is not forwarded and a.json did not change");
    // An invalid new config: logged, the old one keeps running.
    fx.config("sources:\n  - { name: kv, type: nope }\n");
    d.signal(1);
    d.wait_log("is not valid; still running on the previous config", T);
    d.wait_log("source `kv`", T);
    fx.put("b/y", "2");
    wait::file_is(&fx.out("b.yaml"), "y: '2'\n", T);
    fx.put("a/x", "2");
    wait::until(T, "the child to get SIGHUP from output a", || fx.count("HUP") == 1);
    let mut d = d;
    d.signal(15);
    assert_eq!(d.wait(T).code(), Some(0));
    let log = d.log();
    assert_eq!(fx.starts().len(), 1);
    assert_eq!(fx.count("HUP"), 1, "{:?}", fx.events());
    // Two SIGHUPs, two reloads: the edit made with watch_config: false was not acted on by itself.
    assert_eq!(log.matches("reload after").count(), 2, "{log}");
    assert_eq!(log.matches("the new config is valid; applying it").count(), 1, "{log}");
    assert_eq!(log.matches("starting source source=kv ").count(), 2, "{log}");
    assert_eq!(log.matches("starting source source=other ").count(), 1, "{log}");
}

#[test]
fn an_edited_config_is_reloaded_without_a_signal() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    fx.put("b/y", "1");
    fx.put("c/z", "1");
    let cfg = fx.config(&ONE_OUTPUT.replace("WATCH", "true"));
    let d = Daemon::start(&["run", "--config", &cfg.display().to_string()]);
    d.wait_log("every output has rendered", T);
    fx.config(&TWO_OUTPUTS.replace("WATCH", "true"));
    wait::file_is(&fx.out("b.yaml"), "y: '1'\n", T);
    d.stop();
}

#[test]
fn a_template_edit_rerenders_without_a_signal() {
    let fx = Fixture::new();
    fx.put("a/host", "db1");
    fx.write_file("app.j2", "host = {{ kv.host }}\n");
    let cfg = fx.config(
        "sources:\n  - { name: kv, type: file, path: \"{kv}\" }\n\
         outputs:\n  - { name: a, source: kv, prefix: a/, format: template, template: app.j2, destination: \"{out}/app.conf\" }\n\
         http: { listen: \"\" }\n",
    );
    let d = Daemon::start(&["run", "--config", &cfg.display().to_string()]);
    wait::file_is(&fx.out("app.conf"), "host = db1\n", T);
    // Edited in place (as `echo >>` or an editor without rename would) and by rename: both seen.
    std::fs::write(fx.path().join("app.j2"), "server = {{ kv.host }}\n").unwrap();
    wait::file_is(&fx.out("app.conf"), "server = db1\n", T);
    // Same keys watched: the source was not restarted.
    d.wait_log("sources keep running", T);
    assert_eq!(d.log().matches("starting source").count(), 1, "{}", d.log());
    fx.write_file("app.j2", "db = {{ kv.host }}\n");
    wait::file_is(&fx.out("app.conf"), "db = db1\n", T);
    // A broken template: the last good file stays and kvsync goes on.
    fx.write_file("app.j2", "db = {{ kv.host \n");
    d.wait_log("is not valid; still running on the previous config", T);
    fx.put("a/host", "db2");
    wait::file_is(&fx.out("app.conf"), "db = db2\n", T);
    d.stop();
}

/// A config mounted from a Kubernetes ConfigMap: the visible file links through `..data`, and an
/// update swaps `..data` to a new timestamped directory with one rename. That swap is seen.
#[test]
fn a_configmap_style_update_of_the_config_is_seen() {
    use std::os::unix::fs::symlink;
    let fx = Fixture::new();
    fx.put("a/x", "1");
    fx.put("b/y", "1");
    fx.put("c/z", "1");
    let mount = fx.path().join("mount");
    std::fs::create_dir_all(mount.join("..2026_01")).unwrap();
    std::fs::write(mount.join("..2026_01/kvsync.yaml"), fx.expand(&ONE_OUTPUT.replace("WATCH", "true"))).unwrap();
    symlink("..2026_01", mount.join("..data")).unwrap();
    symlink("..data/kvsync.yaml", mount.join("kvsync.yaml")).unwrap();
    let d = Daemon::start(&["run", "--config", &mount.join("kvsync.yaml").display().to_string()]);
    d.wait_log("every output has rendered", T);
    // The kubelet's update: a new generation, a temporary link to it, renamed over ..data.
    std::fs::create_dir_all(mount.join("..2026_02")).unwrap();
    std::fs::write(mount.join("..2026_02/kvsync.yaml"), fx.expand(&TWO_OUTPUTS.replace("WATCH", "true"))).unwrap();
    symlink("..2026_02", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    wait::file_is(&fx.out("b.yaml"), "y: '1'\n", T);
    d.stop();
}
