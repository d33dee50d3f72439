//! `kvsync once --dry-run` on the three sources and every format, and `kvsync check --render` offline:
//! diffs against disk, nothing written, exit 0 when nothing would change and 3 when something would,
//! and no value printed with `--no-values`.

use std::path::Path;
use std::time::Duration;

use kvsync_tests::consul_server::ConsulServer;
use kvsync_tests::etcd_server::EtcdServer;
use kvsync_tests::fixture::Fixture;
use kvsync_tests::kvsync;

const T: Duration = Duration::from_secs(60);

/// Every format, reading `app/` (and `blob/raw` for raw) from the source `s`.
const OUTPUTS: &str = "outputs:\n\
  - { name: tpl, source: s, prefix: app/, format: template, template: {dir}/t.j2, destination: {out}/app.conf }\n\
  - { name: json, source: s, prefix: app/, format: json, destination: {out}/app.json }\n\
  - { name: yaml, source: s, prefix: app/, format: yaml, destination: {out}/app.yaml }\n\
  - { name: env, source: s, prefix: app/, format: env, destination: {out}/app.env }\n\
  - { name: props, source: s, prefix: app/, format: properties, destination: {out}/app.properties }\n\
  - { name: files, source: s, prefix: app/, format: files, destination: {out}/files }\n\
  - { name: raw, source: s, key: blob/raw, format: raw, destination: {out}/blob }\n";

const NAMES: [&str; 7] = ["tpl", "json", "yaml", "env", "props", "files", "raw"];

fn dry_run(cfg: &Path, no_values: bool) -> (i32, String) {
    let mut args = vec!["once", "--dry-run", "--config", cfg.to_str().unwrap(), "--timeout", "30s"];
    if no_values {
        args.push("--no-values");
    }
    let (status, out, err) = kvsync::run(&args, T);
    (status.code().unwrap_or(-1), format!("{out}\n--- stderr ---\n{err}"))
}

fn out_entries(f: &Fixture) -> usize {
    std::fs::read_dir(f.path().join("out")).unwrap().count()
}

/// The whole dry-run story on one source: `put` sets a key in it.
fn dry_run_every_format(f: &Fixture, source: &str, put: &dyn Fn(&str, &str)) {
    f.write_file("t.j2", "host {{ kv['db/host'] }}\nport {{ kv.port }}\n");
    let cfg = f.config(&format!("sources:\n  - {source}\nhttp: {{ listen: \"\" }}\n{OUTPUTS}"));
    put("app/db/host", "secret-host-1");
    put("app/port", "secret-port-80");
    put("blob/raw", "secret-raw\n");

    // Nothing on disk yet: everything would be created; values are shown; nothing is written.
    let (code, text) = dry_run(&cfg, false);
    assert_eq!(code, 3, "{text}");
    for name in NAMES {
        assert!(text.contains(&format!("output `{name}` (")), "{name} missing:\n{text}");
    }
    assert!(text.contains("+host secret-host-1\n"), "{text}");
    assert!(text.contains("+db_host=\"secret-host-1\"\n"), "{text}");
    assert!(text.contains("+db.host=secret-host-1\n"), "{text}");
    assert!(text.contains("  added: db/host (+1 -0)\n"), "{text}");
    assert_eq!(out_entries(f), 0, "a dry run writes nothing");

    let (code, text) = dry_run(&cfg, true);
    assert_eq!(code, 3, "{text}");
    assert!(!text.contains("secret-"), "--no-values printed a value:\n{text}");
    assert!(text.contains("keys added: db/host, port"), "{text}");
    assert_eq!(text.matches("keys added: db/host, port\n").count(), 5, "{text}");

    // Rendered for real: a dry run now finds nothing to change.
    let (status, o, e) = kvsync::run(&["once", "--config", cfg.to_str().unwrap(), "--timeout", "30s"], T);
    assert_eq!(status.code(), Some(0), "{o}{e}");
    let (code, text) = dry_run(&cfg, false);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.matches(": unchanged\n").count(), NAMES.len(), "{text}");

    // One value changes upstream.
    put("app/db/host", "secret-host-2");
    let before = std::fs::read_to_string(f.out("app.json")).unwrap();
    let (code, text) = dry_run(&cfg, false);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("-host secret-host-1\n+host secret-host-2\n"), "{text}");
    assert!(text.contains("-    \"host\": \"secret-host-1\"\n+    \"host\": \"secret-host-2\"\n"), "{text}");
    assert!(text.contains("-db_host=\"secret-host-1\"\n+db_host=\"secret-host-2\"\n"), "{text}");
    assert!(text.contains("  changed: db/host (+1 -1)\n"), "{text}");
    assert!(text.contains("output `raw` (") && text.contains("/blob): unchanged"), "{text}");
    let (code, text) = dry_run(&cfg, true);
    assert_eq!(code, 3, "{text}");
    assert!(!text.contains("secret-"), "--no-values printed a value:\n{text}");
    assert!(text.contains("keys changed: db/host\n"), "{text}");
    assert!(text.contains("keys changed: db_host\n"), "{text}");
    assert!(text.contains("keys changed: db.host\n"), "{text}");
    assert_eq!(std::fs::read_to_string(f.out("app.json")).unwrap(), before, "a dry run writes nothing");
}

#[test]
fn dry_run_on_the_file_source() {
    let f = Fixture::new();
    let put = |k: &str, v: &str| f.put(k, v);
    dry_run_every_format(&f, "{ name: s, type: file, path: {kv} }", &put);
}

#[test]
fn dry_run_on_etcd() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let etcd = rt.block_on(EtcdServer::start()).unwrap();
    let client = rt.block_on(etcd.client()).unwrap();
    let f = Fixture::new();
    let put = |k: &str, v: &str| {
        rt.block_on(client.put(k, v.to_string())).unwrap();
    };
    dry_run_every_format(&f, &format!("{{ name: s, type: etcd, endpoints: [{}] }}", etcd.endpoint()), &put);
}

#[test]
fn dry_run_on_consul() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let consul = rt.block_on(ConsulServer::start()).unwrap();
    let f = Fixture::new();
    let put = |k: &str, v: &str| assert!(consul.put(k, v.to_string()));
    dry_run_every_format(&f, &format!("{{ name: s, type: consul, address: {}, wait: 2s }}", consul.url()), &put);
}

/// Offline: the source is never contacted (nothing listens at its address), keys come from a file.
#[test]
fn check_render_renders_a_snapshot_offline() {
    let f = Fixture::new();
    f.write_file("t.j2", "host {{ kv['db/host'] }}\n");
    let cfg = f.config(
        "sources:\n  - { name: c, type: consul, address: http://127.0.0.1:1 }\noutputs:\n\
         \x20 - { name: tpl, source: c, prefix: config/app/, format: template, template: {dir}/t.j2, destination: {out}/app.conf }\n\
         \x20 - { name: json, source: c, prefix: config/app/, format: json, destination: {out}/app.json }\n",
    );
    let snap = f.write_file("snap.json", "{\"config/app/db/host\": \"snap-host\", \"other/x\": \"1\"}");
    let check = |no_values: bool| {
        let mut args =
            vec!["check", "--config", cfg.to_str().unwrap(), "--render", "--snapshot", snap.to_str().unwrap()];
        if no_values {
            args.push("--no-values");
        }
        let (status, o, e) = kvsync::run(&args, T);
        (status.code().unwrap_or(-1), format!("{o}{e}"))
    };
    let (code, text) = check(false);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("+host snap-host\n"), "{text}");
    assert!(text.contains("+    \"host\": \"snap-host\"\n"), "{text}");
    assert_eq!(out_entries(&f), 0, "check --render writes nothing");
    let (code, text) = check(true);
    assert_eq!(code, 3, "{text}");
    assert!(!text.contains("snap-host"), "{text}");

    std::fs::write(f.out("app.conf"), "host snap-host\n").unwrap();
    std::fs::write(f.out("app.json"), "{\n  \"db\": {\n    \"host\": \"snap-host\"\n  }\n}\n").unwrap();
    let (code, text) = check(false);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.matches(": unchanged\n").count(), 2, "{text}");

    // A template that cannot render from the snapshot: exit 1, naming the output.
    f.write_file("snap.json", "{\"config/app/port\": \"80\"}");
    let (code, text) = check(false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("output `tpl`: "), "{text}");
    // A snapshot that is not one.
    f.write_file("snap.json", "[1, 2]");
    let (code, text) = check(false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("snap.json: a snapshot is a JSON object of keys to values"), "{text}");
    // --snapshot without --render is a usage error.
    let (status, _, e) =
        kvsync::run(&["check", "--config", cfg.to_str().unwrap(), "--snapshot", snap.to_str().unwrap()], T);
    assert_ne!(status.code(), Some(0), "{e}");
}
