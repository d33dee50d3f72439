//! `on_change` actions under `kvsync run`, with real processes and a real HTTP listener. Every wait
//! is bounded.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvsync_tests::fixture::{alive, Fixture, RECORDING_CHILD};
use kvsync_tests::kvsync::Daemon;
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(10);

fn run(fx: &Fixture, outputs: &str) -> Daemon {
    let cfg = fx.config(&format!(
        "sources:\n  - {{ name: kv, type: file, path: \"{{kv}}\" }}\noutputs:\n{outputs}\nhttp: {{ listen: \"\" }}\n"
    ));
    Daemon::start(&["run", "--config", &cfg.display().to_string()])
}

/// A process started apart from kvsync (the recording child under a name of its own), killed on drop.
struct Apart(std::process::Child);

impl Drop for Apart {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pidfile_and_process_targets_reach_a_process_started_apart() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    fx.put("b/y", "1");
    // A name unique to this test run, short enough for /proc/PID/comm (15 characters).
    let name = format!("kvt{}", std::process::id());
    let script = fx.write_file(&name, RECORDING_CHILD);
    kvsync_tests::fixture::make_executable(&script);
    let apart = Apart(std::process::Command::new(&script).arg(fx.rec()).spawn().unwrap());
    wait::until(T, "the process to start", || fx.starts().len() == 1);
    std::fs::write(fx.path().join("app.pid"), format!("{}\n", apart.0.id())).unwrap();
    let d = run(
        &fx,
        &format!(
            "  - {{ name: a, source: kv, prefix: a/, format: json, destination: \"{{out}}/a.json\", on_change: [{{ signal: SIGUSR1, to: \"pidfile:{{dir}}/app.pid\" }}] }}\n\
             \x20 - {{ name: b, source: kv, prefix: b/, format: json, destination: \"{{out}}/b.json\", on_change: [{{ signal: SIGUSR2, to: \"process:{name}\" }}] }}\n"
        ),
    );
    d.wait_log("every output has rendered", T);
    fx.put("a/x", "2");
    wait::until(T, "SIGUSR1 through the pidfile", || fx.count("USR1") == 1);
    fx.put("b/y", "2");
    wait::until(T, "SIGUSR2 by process name", || fx.count("USR2") == 1);
    assert_eq!(fx.count("USR1"), 1);
    d.stop();
}

#[test]
fn a_signal_to_a_missing_process_is_logged_and_kvsync_goes_on() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let d = run(
        &fx,
        "  - { name: a, source: kv, prefix: a/, format: json, destination: \"{out}/a.json\", on_change: [{ signal: SIGHUP, to: \"process:kvsync-no-such\" }, { signal: SIGHUP, to: \"pidfile:{dir}/none.pid\" }] }\n",
    );
    d.wait_log("every output has rendered", T);
    fx.put("a/x", "2");
    d.wait_log("no process named `kvsync-no-such`", T);
    d.wait_log("cannot read pidfile", T);
    fx.put("a/x", "3");
    wait::file_is(&fx.out("a.json"), "{\n  \"x\": \"3\"\n}\n", T);
    assert!(!d.has_exited());
    d.stop();
}

#[test]
fn failing_and_hanging_commands_do_not_stop_kvsync_and_the_hanging_one_is_killed() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let d = run(
        &fx,
        "  - name: a\n    source: kv\n    prefix: a/\n    format: json\n    destination: \"{out}/a.json\"\n    on_change:\n\
         \x20     - command: [\"sh\", \"-c\", \"exit 3\"]\n\
         \x20     - command: [\"sh\", \"-c\", \"sleep 30 & echo $! > {rec}/hang.$KVSYNC_GENERATION; wait\"]\n\
         \x20       timeout: 500ms\n\
         \x20     - command: [\"sh\", \"-c\", \"echo \\\"$KVSYNC_OUTPUTS $KVSYNC_DESTINATIONS $KVSYNC_GENERATION\\\" >> {rec}/ran\"]\n",
    );
    // Commands fire on the first render too (on_start defaults to true for commands).
    let ran = fx.rec().join("ran");
    let dest = fx.out("a.json").display().to_string();
    wait::file_is(&ran, &format!("a {dest} 1\n"), T);
    d.wait_log("on_change command \"sh\" failed: exited with exit status: 3", T);
    d.wait_log("did not finish within 500ms; killed with its process group", T);
    // The hanging command's own child (the sleep) was killed with its group.
    let sleeper: u32 = std::fs::read_to_string(fx.rec().join("hang.1")).unwrap().trim().parse().unwrap();
    wait::until(T, "the hanging command's sleep to be gone", || !alive(sleeper));
    // kvsync goes on: the next change renders and runs the actions again.
    let started = Instant::now();
    fx.put("a/x", "2");
    wait::file_is(&ran, &format!("a {dest} 1\na {dest} 2\n"), T);
    assert!(started.elapsed() >= Duration::from_millis(450), "the third command ran after the second's timeout");
    assert!(!d.has_exited());
    d.stop();
}

/// A tiny HTTP/1.1 server: answers each request with the next status of `statuses` (then 200),
/// recording "METHOD PATH" per request.
fn serve(statuses: Vec<u16>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            // Skip the headers.
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let mut parts = line.split_whitespace();
            s.lock().unwrap().push(format!("{} {}", parts.next().unwrap_or(""), parts.next().unwrap_or("")));
            let status = statuses.next().unwrap_or(200);
            let _ = write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, seen)
}

#[test]
fn http_action_retries_on_500_until_a_2xx() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let (port, seen) = serve(vec![500, 503]);
    let d = run(
        &fx,
        &format!(
            "  - {{ name: a, source: kv, prefix: a/, format: json, destination: \"{{out}}/a.json\", on_start: false, on_change: [{{ http: \"http://127.0.0.1:{port}/-/reload\", retries: 3, timeout: 2s }}] }}\n"
        ),
    );
    d.wait_log("every output has rendered", T);
    fx.put("a/x", "2");
    d.wait_log("answered 200", T);
    // Exactly the three calls of the change: a call for the first render (on_start: false forbids
    // it) would have come before them and made four.
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["POST /-/reload"; 3],
        "two failures, then success, and no call for the first render"
    );
    assert!(d.log().contains("answered 500; retrying"), "{}", d.log());
    d.stop();
}

#[test]
fn http_action_gives_up_after_its_retries_and_kvsync_goes_on() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let (port, seen) = serve(vec![500; 10]);
    let d = run(
        &fx,
        &format!(
            "  - {{ name: a, source: kv, prefix: a/, format: json, destination: \"{{out}}/a.json\", on_change: [{{ http: \"http://127.0.0.1:{port}/r\", method: PUT, retries: 1 }}] }}\n"
        ),
    );
    d.wait_log("answered 500 (after 2 attempts)", T);
    assert_eq!(*seen.lock().unwrap(), vec!["PUT /r"; 2]);
    fx.put("a/x", "2");
    wait::file_is(&fx.out("a.json"), "{\n  \"x\": \"2\"\n}\n", T);
    d.stop();
}

#[test]
fn signal_to_child_under_run_is_an_error_not_a_crash() {
    let fx = Fixture::new();
    fx.put("a/x", "1");
    let d = run(
        &fx,
        "  - { name: a, source: kv, prefix: a/, format: json, destination: \"{out}/a.json\", on_change: [{ signal: SIGHUP, to: child }, { restart: child }] }\n",
    );
    d.wait_log("every output has rendered", T);
    fx.put("a/x", "2");
    d.wait_log("on_change SIGHUP to child failed: there is no supervised child", T);
    d.wait_log("on_change restart child failed: there is no supervised child", T);
    assert!(!d.has_exited());
    assert_eq!(d.stop().code(), Some(0));
}
