//! The HTTP endpoint of a running daemon: readiness, metrics, and that no value leaks out of it or
//! out of the log.

use std::time::Duration;

use kvsync_tests::fixture::Fixture;
use kvsync_tests::http::{get, Scrape};
use kvsync_tests::kvsync::Daemon;
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(20);

/// One `file` source on ./kv, one JSON output of `app/`; the endpoint on a port the kernel picks.
fn config(f: &Fixture, extra_outputs: &str) -> String {
    let path = f.config(&format!(
        "sources:\n  - {{ name: main, type: file, path: ./kv }}\n\
         outputs:\n  - {{ name: app, source: main, prefix: app/, format: json, destination: ./out/app.json }}\n\
         {extra_outputs}\
         retry: {{ initial: 50ms, max: 200ms }}\n\
         http: {{ listen: \"127.0.0.1:0\", max_stale: 1s }}\n"
    ));
    path.to_str().expect("UTF-8 temp path").to_string()
}

fn readyz(addr: &str) -> (u16, serde_json::Value) {
    let a = get(addr, "/readyz").expect("/readyz answers");
    assert_eq!(a.headers.get("content-type").map(String::as_str), Some("application/json"));
    (a.status, serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("/readyz body is JSON: {e}: {}", a.body)))
}

#[test]
fn readyz_goes_503_to_200_after_the_first_render_and_back_when_the_source_stays_down() {
    let f = Fixture::new();
    let cfg = config(&f, "");
    // No key tree yet: the source fails and the output waits for its first snapshot.
    std::fs::remove_dir(f.path().join("kv")).unwrap();
    let d = Daemon::start(&["run", "--config", &cfg]);
    let addr = d.http_addr(T);
    assert_eq!(get(&addr, "/healthz").unwrap().status, 200);
    // The endpoint may answer before the outputs are registered; then it lists what is pending.
    let (code, body) = wait::for_some(T, "/readyz to list the pending output", || {
        let (code, body) = readyz(&addr);
        body["pending"][0].is_string().then_some((code, body))
    });
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["pending"][0], "output `app` needs source `main` prefix `app/`", "{body}");

    f.put("app/name", "demo");
    wait::file_is(&f.path().join("out/app.json"), "{\n  \"name\": \"demo\"\n}\n", T);
    wait::until(T, "/readyz to answer 200", || readyz(&addr).0 == 200);
    let (_, body) = readyz(&addr);
    assert_eq!(body, serde_json::json!({ "ready": true, "pending": [], "stale": [], "cached": [] }));

    // The directory disappears (one rename, so no partial tree is ever read): after max_stale (1s)
    // the daemon is no longer ready, and says which source and why; the last good file stays.
    std::fs::rename(f.path().join("kv"), f.path().join("kv.away")).unwrap();
    let body = wait::for_some(T, "/readyz to turn 503 on the stale source", || {
        let (code, body) = readyz(&addr);
        (code == 503).then_some(body)
    });
    let stale = body["stale"][0].as_str().expect("a stale entry");
    assert!(stale.starts_with("source `main` has been failing for "), "{stale}");
    // The last error names the directory (as a failed read, or a failed watch of it).
    assert!(stale.contains("(over http.max_stale 1s): cannot "), "{stale}");
    assert!(stale.contains("/kv"), "{stale}");
    assert_eq!(body["pending"], serde_json::json!([]), "every output has rendered once: {body}");
    assert_eq!(std::fs::read_to_string(f.path().join("out/app.json")).unwrap(), "{\n  \"name\": \"demo\"\n}\n");
    assert_eq!(get(&addr, "/healthz").unwrap().status, 200, "stale is not dead");

    // It comes back: ready again.
    std::fs::rename(f.path().join("kv.away"), f.path().join("kv")).unwrap();
    wait::until(T, "/readyz to answer 200 again", || readyz(&addr).0 == 200);
    assert!(d.stop().success());
}

#[test]
fn metrics_parse_as_prometheus_text_and_counters_move() {
    let f = Fixture::new();
    f.put("app/name", "one");
    // A second output whose check always refuses: counted as a failure by reason, never written.
    let cfg = config(
        &f,
        "  - { name: guarded, source: main, prefix: app/, format: env, destination: ./out/app.env, check: [\"sh\", \"-c\", \"exit 3\"] }\n",
    );
    let d = Daemon::start(&["run", "--config", &cfg]);
    let addr = d.http_addr(T);
    wait::file_is(&f.path().join("out/app.json"), "{\n  \"name\": \"one\"\n}\n", T);

    let scrape = |what: &str| {
        let a = get(&addr, "/metrics").expect("/metrics answers");
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
        Scrape::parse(&a.body).unwrap_or_else(|e| panic!("{what}: /metrics is not Prometheus text: {e}\n{}", a.body))
    };
    // The file is renamed into place just before the write is counted, and the guarded output
    // renders after it in the same pass.
    wait::until(T, "the first pass to be counted", || {
        let s = scrape("first");
        s.get("kvsync_output_writes_total{output=\"app\"}") == Some(1.0)
            && s.get("kvsync_output_failures_total{output=\"guarded\",reason=\"check\"}") >= Some(1.0)
    });
    let s = scrape("first");
    assert_eq!(s.types["kvsync_output_writes_total"], "counter");
    assert_eq!(s.types["kvsync_change_to_disk_latency_seconds"], "histogram");
    assert_eq!(s.get("kvsync_output_writes_total{output=\"app\"}"), Some(1.0));
    assert_eq!(s.get("kvsync_change_to_disk_latency_seconds_count{output=\"app\"}"), Some(1.0));
    assert_eq!(s.get("kvsync_source_connected{source=\"main\"}"), Some(1.0));
    assert_eq!(s.get("kvsync_source_info{source=\"main\",type=\"file\"}"), Some(1.0));
    assert!(s.get("kvsync_source_requests_total{source=\"main\"}").unwrap() >= 1.0);
    assert!(s.get("kvsync_output_last_success_timestamp_seconds{output=\"app\"}").unwrap() > 1.6e9);
    assert_eq!(s.get("kvsync_output_writes_total{output=\"guarded\"}"), Some(0.0));
    assert!(s.get("kvsync_output_failures_total{output=\"guarded\",reason=\"check\"}").unwrap() >= 1.0);
    assert_eq!(s.get("kvsync_output_failures_total{output=\"app\",reason=\"check\"}"), Some(0.0));
    // The guarded output never rendered: not ready, and /readyz says why.
    assert_eq!(s.get("kvsync_ready"), Some(0.0));
    let (code, body) = readyz(&addr);
    assert_eq!(code, 503);
    assert_eq!(
        body["pending"][0],
        "output `guarded` has not rendered yet: check failed: check command `sh -c exit 3` failed with exit status 3",
        "{body}"
    );

    // A change: one more write and one more latency observation; the same content again: skipped.
    f.put("app/name", "two");
    wait::file_is(&f.path().join("out/app.json"), "{\n  \"name\": \"two\"\n}\n", T);
    // (The key is written through a temporary file next to it, which the source may see as one more
    // change: count at least one more write, and one latency observation per write.)
    wait::until(T, "the second pass to be counted", || {
        let s = scrape("second");
        let writes = s.get("kvsync_output_writes_total{output=\"app\"}").unwrap();
        writes >= 2.0
            && s.get("kvsync_change_to_disk_latency_seconds_count{output=\"app\"}") == Some(writes)
            && s.get("kvsync_change_to_disk_latency_seconds_bucket{output=\"app\",le=\"+Inf\"}") == Some(writes)
            && s.get("kvsync_output_failures_total{output=\"guarded\",reason=\"check\"}") >= Some(2.0)
    });
    let s = scrape("second");
    assert!(s.get("kvsync_source_last_version{source=\"main\"}").unwrap() >= 2.0);
    assert!(s.get("kvsync_output_failures_total{output=\"guarded\",reason=\"check\"}").unwrap() >= 2.0);
    assert!(d.stop().success());
}

#[test]
fn no_value_reaches_an_endpoint_or_the_log_at_trace_level() {
    const SECRET: &str = "hunter2-s3cr3t-value-7f3a";
    let f = Fixture::new();
    f.put("app/db/password", SECRET);
    f.put("app/db/host", "db.internal");
    // A template that uses the value, and one that fails on it (a render error must not quote it).
    f.write_file("app.conf.j2", "password={{ kv['db/password'] }}\n");
    f.write_file("bad.j2", "{{ kv['db/password'] | int + missing }}\n");
    let cfg = config(
        &f,
        concat!(
            "  - { name: conf, source: main, prefix: app/, format: template, template: ./app.conf.j2, destination: ./out/app.conf }\n",
            "  - { name: broken, source: main, prefix: app/, format: template, template: ./bad.j2, destination: ./out/bad.conf }\n",
        ),
    );
    for format in ["text", "json"] {
        let d = Daemon::start(&["run", "--config", &cfg, "--log-level", "trace", "--log-format", format]);
        let addr = d.http_addr(T);
        wait::file_is(&f.path().join("out/app.conf"), &format!("password={SECRET}\n"), T);
        wait::until(T, "the broken output's failure to be reported", || {
            get(&addr, "/status").map(|a| a.body.contains("\"reason\": \"render\"")).unwrap_or(false)
        });
        for path in ["/metrics", "/status", "/readyz", "/healthz"] {
            let a = get(&addr, path).unwrap();
            assert!(!a.body.contains(SECRET), "{path} reveals a value:\n{}", a.body);
        }
        let status = get(&addr, "/status").unwrap().body;
        assert!(!status.contains("db.internal"), "/status shows values: {status}");
        std::fs::rename(f.path().join("kv"), f.path().join("kv.away")).unwrap();
        d.wait_log("read failed", T);
        std::fs::rename(f.path().join("kv.away"), f.path().join("kv")).unwrap();
        let log = d.log();
        assert!(d.stop().success());
        assert!(log.lines().count() > 10, "trace logging is on:\n{log}");
        for line in log.lines() {
            assert!(!line.contains(SECRET), "a {format} log line reveals a value: {line}");
        }
    }
}

#[test]
fn json_logs_carry_stable_field_names() {
    let f = Fixture::new();
    f.put("app/name", "demo");
    let cfg = config(&f, "");
    let d = Daemon::start(&["run", "--config", &cfg, "--log-format", "json"]);
    d.wait_log("rendered and written", T);
    std::fs::rename(f.path().join("kv"), f.path().join("kv.away")).unwrap();
    d.wait_log("read failed", T);
    let log = d.log();
    assert!(d.stop().success());
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}")))
        .collect();
    let find = |message: &str| {
        events
            .iter()
            .find(|e| e["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} event in:\n{log}"))
            .clone()
    };
    for e in &events {
        assert!(e["timestamp"].is_string() && e["level"].is_string() && e["message"].is_string(), "{e}");
    }
    let received = find("change received");
    assert_eq!(received["source"], "main");
    assert_eq!(received["prefix"], "app/");
    assert!(received["version"].is_u64(), "{received}");
    let rendered = find("rendered and written");
    assert_eq!(rendered["output"], "app");
    assert!(rendered["destination"].as_str().unwrap().ends_with("out/app.json"), "{rendered}");
    assert!(rendered["latency_us"].is_u64(), "{rendered}");
    let failed = find("read failed; will retry");
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["source"], "main");
    assert!(failed["error"].as_str().unwrap().contains("kv"), "{failed}");
    let listening = events.iter().find(|e| e["addr"].is_string()).expect("the endpoint's listening event");
    assert!(listening["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{listening}");
}

#[test]
fn a_taken_listen_address_is_an_error_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let f = Fixture::new();
    f.put("app/name", "demo");
    let cfg = f.config(&format!(
        "sources:\n  - {{ name: main, type: file, path: ./kv }}\n\
         outputs:\n  - {{ name: app, source: main, prefix: app/, format: json, destination: ./out/app.json }}\n\
         http: {{ listen: \"{addr}\" }}\n"
    ));
    let cfg = cfg.to_str().unwrap();
    let (status, _, err) = kvsync_tests::kvsync::run(&["run", "--config", cfg], T);
    assert!(!status.success());
    assert!(err.contains(&format!("http.listen: cannot listen on {addr}: ")), "{err}");
    assert!(err.contains("set http.listen to \"\" to disable"), "{err}");
}

/// A Consul test server on its own runtime, so the test body can block.
struct Consul {
    server: kvsync_tests::consul_server::ConsulServer,
    _rt: tokio::runtime::Runtime,
}

impl Consul {
    fn start() -> Consul {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let server = rt.block_on(kvsync_tests::consul_server::ConsulServer::start()).unwrap();
        Consul { server, _rt: rt }
    }
}

#[test]
fn no_token_or_value_reaches_an_endpoint_or_the_log_when_consul_refuses() {
    use kvsync_tests::consul_server::Access;
    const TOKEN: &str = "0b7c1e7a-good-token-5ecret";
    const WRONG: &str = "9d2f44aa-wrong-token-5ecret";
    const VALUE: &str = "consul-v4lue-that-stays-inside";
    let c = Consul::start();
    c.server.put("config/app/password", VALUE);
    c.server.enable_acl();
    c.server.set_token(TOKEN, &[("config/", Access::Read)]);
    let f = Fixture::new();
    f.write_file("consul-token", TOKEN);
    let cfg = f.config(&format!(
        "sources:\n  - {{ name: c, type: consul, address: {}, wait: 1s, token_file: ./consul-token }}\n\
         outputs:\n  - {{ name: app, source: c, prefix: config/app/, format: json, destination: ./out/app.json }}\n\
         retry: {{ initial: 50ms, max: 200ms }}\n\
         http: {{ listen: \"127.0.0.1:0\", max_stale: 1s }}\n",
        c.server.url()
    ));
    let cfg = cfg.to_str().unwrap();
    let d = Daemon::start(&["run", "--config", cfg, "--log-level", "trace", "--log-format", "json"]);
    let addr = d.http_addr(T);
    wait::until(T, "the first render", || {
        std::fs::read_to_string(f.path().join("out/app.json")).map(|s| s.contains(VALUE)).unwrap_or(false)
    });
    // The token goes bad: every request is refused with 403 until the source is stale.
    f.write_file("consul-token", WRONG);
    c.server.put("config/app/password", "changed");
    let body = wait::for_some(T, "/readyz to report the refused source", || {
        let (code, body) = readyz(&addr);
        (code == 503 && body["stale"][0].is_string()).then_some(body)
    });
    assert!(body["stale"][0].as_str().unwrap().starts_with("source `c` has been failing for "), "{body}");
    let status = get(&addr, "/status").unwrap().body;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(v["sources"][0]["last_error"]["message"].as_str().unwrap().contains("403"), "{status}");
    let metrics = get(&addr, "/metrics").unwrap().body;
    assert!(
        Scrape::parse(&metrics).unwrap().get("kvsync_source_errors_total{source=\"c\",kind=\"status\"}") >= Some(1.0)
    );
    for (what, text) in [("/status", status), ("/metrics", metrics), ("/readyz", body.to_string()), ("log", d.log())] {
        let found = kvsync_tests::leaks::found(&text, &[TOKEN, WRONG, VALUE]);
        assert!(found.is_empty(), "{what} reveals {found:?}:\n{text}");
    }
    assert!(d.stop().success());
}
