//! `kvsync status` against a running daemon: ready (0), not ready (1), unreachable (2).

use std::time::Duration;

use kvsync_tests::fixture::Fixture;
use kvsync_tests::kvsync::{run, Daemon};
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(20);

fn config(f: &Fixture) -> String {
    let path = f.config(
        "sources:\n  - { name: main, type: file, path: ./kv }\n\
         outputs:\n  - { name: app, source: main, prefix: app/, format: json, destination: ./out/app.json }\n\
         \x20 - { name: app-env, source: main, prefix: app/, format: env, destination: ./out/app.env }\n\
         retry: { initial: 50ms, max: 200ms }\n\
         http: { listen: \"127.0.0.1:0\" }\n",
    );
    path.to_str().expect("UTF-8 temp path").to_string()
}

#[test]
fn ready_daemon_prints_a_table_and_exits_0() {
    const SECRET: &str = "v4lue-that-stays-inside";
    let f = Fixture::new();
    f.put("app/name", SECRET);
    let d = Daemon::start(&["run", "--config", &config(&f)]);
    let addr = d.http_addr(T);
    wait::file_is(&f.path().join("out/app.env"), &format!("name=\"{SECRET}\"\n"), T);
    wait::until(T, "status to say ready", || run(&["status", "--http", &addr], T).0.code() == Some(0));

    let (status, out, err) = run(&["status", "--http", &addr], T);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(&format!("kvsync {} at http://{addr}: ready, up ", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    // Columns line up: every row of a table starts its second column where the header does.
    let header = lines.iter().position(|l| l.starts_with("OUTPUT ")).expect("an OUTPUT table");
    let col = lines[header].find("DESTINATION").unwrap();
    for row in &lines[header + 1..header + 3] {
        assert_eq!(row.find('/'), Some(col), "misaligned row {row:?} in\n{out}");
    }
    assert!(lines[header + 1].starts_with("app "), "{out}");
    assert!(lines[header + 2].starts_with("app-env "), "{out}");
    let source = lines.iter().find(|l| l.starts_with("main ")).expect("the source row");
    assert!(source.contains(" file ") && source.contains(" yes "), "{source}");
    assert!(!out.contains("not ready"), "{out}");
    assert!(!out.contains(SECRET), "the table shows a value:\n{out}");

    let (status, out, _) = run(&["status", "--http", &format!("http://{addr}"), "--json"], T);
    assert_eq!(status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).expect("--json prints the JSON document");
    assert_eq!(v["ready"], true);
    assert_eq!(v["sources"][0]["name"], "main");
    assert_eq!(v["sources"][0]["connected"], true);
    assert_eq!(v["outputs"][1]["name"], "app-env");
    assert_eq!(v["outputs"][1]["writes"], 1);
    assert!(v["outputs"][1]["last_write"].as_str().unwrap().ends_with('Z'), "{v}");
    assert!(v.get("child").is_none(), "no child outside `kvsync exec`: {v}");
    assert!(!out.contains(SECRET), "--json shows a value:\n{out}");
    assert!(d.stop().success());
}

#[test]
fn waiting_daemon_exits_1_and_says_what_it_waits_for() {
    let f = Fixture::new();
    // No key tree: the source fails and nothing can render.
    std::fs::remove_dir(f.path().join("kv")).unwrap();
    let d = Daemon::start(&["run", "--config", &config(&f)]);
    let addr = d.http_addr(T);
    let (status, out, err) = run(&["status", "--http", &addr], T);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(out.lines().next().unwrap().contains(": NOT READY, up "), "{out}");
    assert!(out.contains("\nnot ready because:\n  - output `app` needs source `main` prefix `app/`\n"), "{out}");
    assert!(out.contains("  - output `app-env` needs source `main` prefix `app/`\n"), "{out}");
    // The source row shows it failing, with the error.
    wait::until(T, "the source error to show", || {
        let (_, out, _) = run(&["status", "--http", &addr], T);
        out.lines().any(|l| l.starts_with("main ") && l.contains(" no") && l.contains("cannot read "))
    });
    let (status, out, _) = run(&["status", "--http", &addr, "--json"], T);
    assert_eq!(status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(v["sources"][0]["connected"], false);
    assert!(v["sources"][0]["last_error"]["message"].as_str().unwrap().contains("cannot read"), "{v}");
    assert!(d.stop().success());
}

#[test]
fn unreachable_daemon_exits_2_naming_the_address() {
    // A port that was free a moment ago and has nobody listening now.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (status, out, err) = run(&["status", "--http", &addr], T);
    assert_eq!(status.code(), Some(2), "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.starts_with(&format!("kvsync status: cannot reach kvsync at http://{addr}: ")), "{err}");
    assert!(err.contains("--http ADDR"), "{err}");
    let (status, _, _) = run(&["status", "--http", &addr, "--json"], T);
    assert_eq!(status.code(), Some(2));
}

#[test]
fn something_else_on_the_port_exits_2() {
    // An HTTP server that is not kvsync: 404 for /status.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf);
        let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    let (status, _, err) = run(&["status", "--http", &addr], T);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("http://{addr}/status answered 404 Not Found; is this a kvsync endpoint?")), "{err}");
    server.join().unwrap();
}

#[test]
fn exec_child_and_actions_are_reported() {
    let f = Fixture::new();
    f.put("a/x", "1");
    let cfg = f.config(
        "sources:\n  - { name: kv, type: file, path: \"{kv}\" }\n\
         outputs:\n  - name: a\n    source: kv\n    prefix: a/\n    format: json\n    destination: \"{out}/a.json\"\n\
         \x20   on_change:\n      - { restart: child }\n\
         http: { listen: \"127.0.0.1:0\" }\n\
         exec:\n  kill_timeout: 2s\n  min_restart_interval: 100ms\n",
    );
    let (script, rec) = (f.child_script().display().to_string(), f.rec().display().to_string());
    let d = Daemon::start(&["exec", "--config", cfg.to_str().unwrap(), "--", &script, &rec]);
    let addr = d.http_addr(T);
    wait::until(T, "the child to start", || f.starts().len() == 1);
    let first = f.starts()[0];
    let child = |what: &str| {
        let (_, out, _) = run(&["status", "--http", &addr, "--json"], T);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: {e}: {out}"));
        v["child"].clone()
    };
    wait::until(T, "the child's pid in /status", || child("first")["pid"] == first);
    assert_eq!(child("first")["restarts"], 0);

    // A change restarts the child through the restart action: counted, and the new pid shows.
    f.put("a/x", "2");
    wait::until(T, "the child to start again", || f.starts().len() == 2);
    let second = f.starts()[1];
    wait::until(T, "the new pid in /status", || child("second")["pid"] == second);
    let c = child("second");
    assert!(c["uptime_seconds"].is_u64(), "{c}");
    let (status, table, _) = run(&["status", "--http", &addr], T);
    assert_eq!(status.code(), Some(0), "{table}");
    assert!(table.contains(&format!("\nCHILD  pid {second}, up ")), "{table}");
    let metrics = kvsync_tests::http::get(&addr, "/metrics").unwrap().body;
    let s = kvsync_tests::http::Scrape::parse(&metrics).unwrap();
    assert_eq!(s.get("kvsync_actions_total{kind=\"restart\",result=\"ok\"}"), Some(1.0), "{metrics}");
    assert_eq!(s.get("kvsync_child_up"), Some(1.0));
    assert!(d.stop().success());
}
