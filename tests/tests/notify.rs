//! systemd's notification protocol, with the test as the service manager: a unix datagram socket
//! passed in NOTIFY_SOCKET, as systemd does for `Type=notify` units.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvsync_tests::fixture::Fixture;
use kvsync_tests::kvsync::{command, Daemon};
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(20);

/// Receives every datagram on `socket` into a channel, each with whether the destination file
/// existed when it arrived.
fn listen(socket: UnixDatagram, dest: std::path::PathBuf) -> mpsc::Receiver<(String, bool)> {
    let (tx, rx) = mpsc::channel();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if tx.send((msg, dest.exists())).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    // Nobody listens any more once the test has finished.
                    if tx.send(("".into(), false)).is_err() {
                        return;
                    }
                }
                Err(e) => panic!("recv on the notify socket: {e}"),
            }
        }
    });
    rx
}

/// Collects messages until `stop` holds for the collected list (bounded by `timeout`).
fn collect_until(
    rx: &mpsc::Receiver<(String, bool)>,
    got: &mut Vec<(String, bool)>,
    timeout: Duration,
    what: &str,
    stop: impl Fn(&[(String, bool)]) -> bool,
) {
    let start = Instant::now();
    while !stop(got) {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}; messages so far: {got:?}");
        if let Ok(m) = rx.recv_timeout(Duration::from_millis(50)) {
            if !m.0.is_empty() {
                got.push(m);
            }
        }
    }
}

fn config(f: &Fixture) -> String {
    // The on_change command records the environment kvsync's children get.
    let path = f.config(
        "sources:\n  - { name: main, type: file, path: ./kv }\n\
         outputs:\n  - name: app\n    source: main\n    prefix: app/\n    format: json\n    destination: ./out/app.json\n\
         \x20   on_change:\n      - command: [\"sh\", \"-c\", \"env > out/child.env\"]\n\
         retry: { initial: 50ms, max: 200ms }\n\
         http: { listen: \"\" }\n",
    );
    path.to_str().expect("UTF-8 temp path").to_string()
}

#[test]
fn ready_after_the_first_render_then_watchdog_pings_then_stopping() {
    let f = Fixture::new();
    // No key tree yet: the first render waits.
    std::fs::remove_dir(f.path().join("kv")).unwrap();
    let sock_path = f.path().join("notify.sock");
    let rx = listen(UnixDatagram::bind(&sock_path).unwrap(), f.path().join("out/app.json"));
    let mut cmd = command(&["run", "--config", &config(&f)]);
    cmd.current_dir(f.dir.path()).env("NOTIFY_SOCKET", sock_path.to_str().unwrap()).env("WATCHDOG_USEC", "200000");
    let d = Daemon::start_with(cmd);
    let mut got = Vec::new();

    // No keys yet: watchdog pings, but no READY while the first render waits.
    collect_until(&rx, &mut got, T, "two watchdog pings", |g| g.iter().filter(|m| m.0 == "WATCHDOG=1").count() >= 2);
    assert!(!got.iter().any(|m| m.0.contains("READY=1")), "READY before the first render: {got:?}");

    f.put("app/name", "demo");
    collect_until(&rx, &mut got, T, "READY=1", |g| g.iter().any(|m| m.0.starts_with("READY=1")));
    let ready = got.iter().find(|m| m.0.starts_with("READY=1")).unwrap();
    assert_eq!(ready.0, "READY=1\nSTATUS=1 outputs rendered");
    assert!(ready.1, "READY=1 arrived before the destination was written");

    // The watchdog keeps pinging at half of WATCHDOG_USEC (every 100ms).
    let n = got.len();
    collect_until(&rx, &mut got, T, "pings after READY", |g| {
        g[n..].iter().filter(|m| m.0 == "WATCHDOG=1").count() >= 3
    });

    d.signal(15);
    collect_until(&rx, &mut got, T, "STOPPING=1", |g| g.iter().any(|m| m.0 == "STOPPING=1"));
    let mut d = d;
    assert!(d.wait(T).success());
    // Nothing after STOPPING=1 (collected for a moment longer), and exactly one READY=1.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        if let Ok(m) = rx.recv_timeout(Duration::from_millis(50)) {
            if !m.0.is_empty() {
                got.push(m);
            }
        }
    }
    assert_eq!(got.last().unwrap().0, "STOPPING=1", "{got:?}");
    assert_eq!(got.iter().filter(|m| m.0.starts_with("READY=1")).count(), 1, "{got:?}");
    let msgs: Vec<&str> = got.iter().map(|m| m.0.as_str()).collect();
    for m in &msgs {
        assert!(
            *m == "WATCHDOG=1" || *m == "STOPPING=1" || m.starts_with("READY=1\n") || m.starts_with("STATUS="),
            "unexpected message {m:?} in {msgs:?}"
        );
    }

    // The on_change command ran without the notification variables: a child must not pose as the service.
    let env = std::fs::read_to_string(f.path().join("out/child.env")).unwrap();
    assert!(!env.contains("NOTIFY_SOCKET") && !env.contains("WATCHDOG_USEC"), "{env}");
}

#[test]
fn abstract_socket_and_no_watchdog_without_watchdog_usec() {
    use std::os::linux::net::SocketAddrExt;
    let f = Fixture::new();
    f.put("app/name", "demo");
    let name = format!("kvsync-notify-test-{}", std::process::id());
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let rx = listen(sock, f.path().join("out/app.json"));
    let mut cmd = command(&["run", "--config", &config(&f)]);
    cmd.current_dir(f.dir.path()).env("NOTIFY_SOCKET", format!("@{name}")).env_remove("WATCHDOG_USEC");
    let mut d = Daemon::start_with(cmd);
    let mut got = Vec::new();
    collect_until(&rx, &mut got, T, "READY=1", |g| g.iter().any(|m| m.0.starts_with("READY=1")));
    wait::file_is(&f.path().join("out/app.json"), "{\n  \"name\": \"demo\"\n}\n", T);
    // Half a second: a watchdog would have pinged several times by now.
    std::thread::sleep(Duration::from_millis(500));
    d.signal(15);
    collect_until(&rx, &mut got, T, "STOPPING=1", |g| g.iter().any(|m| m.0 == "STOPPING=1"));
    assert!(d.wait(T).success());
    assert!(!got.iter().any(|m| m.0.contains("WATCHDOG")), "pings without WATCHDOG_USEC: {got:?}");
}

#[test]
fn without_notify_socket_nothing_is_sent_and_all_works() {
    let f = Fixture::new();
    f.put("app/name", "demo");
    let mut cmd = command(&["run", "--config", &config(&f)]);
    cmd.current_dir(f.dir.path()).env_remove("NOTIFY_SOCKET").env("WATCHDOG_USEC", "200000");
    let d = Daemon::start_with(cmd);
    wait::file_is(&f.path().join("out/app.json"), "{\n  \"name\": \"demo\"\n}\n", T);
    assert!(d.stop().success());
}

#[test]
fn a_reload_is_bracketed_by_reloading_and_ready() {
    let f = Fixture::new();
    f.put("app/name", "demo");
    f.put("flags/dark", "on");
    let sock_path = f.path().join("notify.sock");
    let rx = listen(UnixDatagram::bind(&sock_path).unwrap(), f.path().join("out/app.json"));
    let mut cmd = command(&["run", "--config", &config(&f)]);
    cmd.current_dir(f.path()).env("NOTIFY_SOCKET", sock_path.to_str().unwrap());
    let mut d = Daemon::start_with(cmd);
    let mut got = Vec::new();
    collect_until(&rx, &mut got, T, "READY=1", |g| g.iter().any(|m| m.0.starts_with("READY=1")));

    // SIGHUP with the same config: RELOADING=1 (with the monotonic clock), then READY=1.
    let n = got.len();
    d.signal(1);
    collect_until(&rx, &mut got, T, "READY=1 after SIGHUP", |g| g[n..].iter().any(|m| m.0.starts_with("READY=1")));
    let reload: Vec<&str> = got[n..].iter().map(|m| m.0.as_str()).collect();
    assert!(reload[0].starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reload:?}");
    assert_eq!(reload.last().unwrap(), &"READY=1\nSTATUS=reloaded: the config is unchanged");

    // A config that reads another prefix: the render loop restarts; READY=1 once it has rendered.
    let n = got.len();
    std::fs::write(
        f.path().join("kvsync.yaml"),
        "sources:\n  - { name: main, type: file, path: ./kv }\n\
         outputs:\n  - { name: app, source: main, prefix: app/, format: json, destination: ./out/app.json }\n\
         \x20 - { name: flags, source: main, prefix: flags/, format: json, destination: ./out/flags.json }\n\
         retry: { initial: 50ms, max: 200ms }\n\
         http: { listen: \"\" }\n",
    )
    .unwrap();
    d.signal(1);
    collect_until(&rx, &mut got, T, "READY=1 after the new config", |g| {
        g[n..].iter().any(|m| m.0 == "READY=1\nSTATUS=2 outputs rendered")
    });
    let reload: Vec<&str> = got[n..].iter().map(|m| m.0.as_str()).collect();
    assert!(reload[0].starts_with("RELOADING=1\n"), "{reload:?}");
    assert!(f.path().join("out/flags.json").exists(), "READY=1 came before the new output was written");
    d.signal(15);
    assert!(d.wait(T).success());
}
