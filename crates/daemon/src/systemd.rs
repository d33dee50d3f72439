//! systemd's service notification protocol (sd_notify(3)), for `Type=notify` units.
//!
//! systemd passes a unix datagram socket in `NOTIFY_SOCKET` (a path, or `@name` for a socket in the
//! abstract namespace); the service sends it newline-separated `KEY=value` assignments:
//! - `READY=1` once the service is up: for kvsync, after the first full render, so units ordered
//!   `After=kvsync.service` start with their configuration files in place;
//! - `WATCHDOG=1` pings, when `WatchdogSec=` is set (systemd passes it as `WATCHDOG_USEC`, and
//!   `WATCHDOG_PID` naming the process it is meant for); we ping at half that interval;
//! - `RELOADING=1` with `MONOTONIC_USEC=` while reloading, then `READY=1` again;
//! - `STOPPING=1` when shutting down; `STATUS=` a line shown by `systemctl status`.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every function here does nothing. The protocol is a few
//! lines over `std::os::unix::net::UnixDatagram`, which needs no dependency and no unsafe code.

use std::ffi::OsString;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The process's notifier, set once by [`init`] from the environment.
static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Half of `WATCHDOG_USEC`, when the watchdog is enabled for this process.
    watchdog_every: Option<Duration>,
}

impl Notifier {
    /// A notifier for `notify_socket` (`/run/systemd/notify` or `@abstract-name`), with the watchdog
    /// settings systemd passes (`WATCHDOG_USEC`, `WATCHDOG_PID`; the pid check stops a child that
    /// inherited them from pinging on its parent's behalf).
    pub fn new(notify_socket: &OsString, watchdog_usec: Option<&str>, watchdog_pid: Option<&str>) -> io::Result<Self> {
        let addr = socket_addr(notify_socket)?;
        let socket = UnixDatagram::unbound()?;
        let for_us = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog_every = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(|u| Duration::from_micros(u) / 2);
        Ok(Notifier { socket, addr, watchdog_every })
    }

    /// Sends one datagram of `KEY=value` lines.
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr).map(|_| ())
    }

    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }
}

/// `/path` or `@abstract`, as sd_notify(3) reads `NOTIFY_SOCKET`.
fn socket_addr(s: &OsString) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = s.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(s),
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={s:?} is neither an absolute path nor an @abstract name"),
        )),
    }
}

/// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, and removes them from the environment
/// so that processes kvsync starts (check commands, actions, the `exec` child) do not talk to systemd
/// as if they were the service. Call once, at the start of `main`, before any thread is started.
pub fn init() {
    let socket = std::env::var_os("NOTIFY_SOCKET");
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    for v in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        std::env::remove_var(v);
    }
    let notifier = socket.and_then(|s| match Notifier::new(&s, usec.as_deref(), pid.as_deref()) {
        Ok(n) => Some(n),
        Err(e) => {
            // Logging is not set up yet this early.
            eprintln!("kvsync: cannot use NOTIFY_SOCKET {s:?} for systemd notifications: {e}");
            None
        }
    });
    let _ = NOTIFIER.set(notifier);
}

fn send(state: &str) {
    if let Some(Some(n)) = NOTIFIER.get() {
        match n.send(state) {
            Ok(()) => debug!(state, "sent to systemd"),
            Err(e) => warn!(error = %e, state, "cannot notify systemd"),
        }
    }
}

/// `READY=1` with a `STATUS=` line: the first full render is on disk.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
}

/// `STATUS=` alone: what `systemctl status` shows (for example what the first render waits for).
pub fn status(status: &str) {
    send(&format!("STATUS={status}"));
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    send("STOPPING=1");
}

/// `RELOADING=1` with `MONOTONIC_USEC=`: a reload of kvsync's own configuration has begun (SIGHUP,
/// or an edited config or template). The reload ends with [`ready`] once the new configuration is in
/// force (or the old one is kept); `Type=notify-reload` units need the timestamp.
pub fn reloading() {
    send(&reloading_message());
}

fn reloading_message() -> String {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

/// Pings `WATCHDOG=1` at half the interval systemd asked for, until `cancel` fires; does nothing
/// when the watchdog is off. The pings come from a task of the daemon's own runtime, so a runtime
/// that stops scheduling (a deadlock, a blocked worker) stops them and systemd restarts the service.
pub fn spawn_watchdog(cancel: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let every = NOTIFIER.get()?.as_ref()?.watchdog_every()?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Shutdown: STOPPING=1 follows from the daemon.
                _ = cancel.cancelled() => return,
                // Half the watchdog interval has passed.
                _ = tick.tick() => send("WATCHDOG=1"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(s: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(&path.clone().into_os_string(), None, None).unwrap();
        n.send("READY=1\nSTATUS=ok").unwrap();
        assert_eq!(recv(&server), "READY=1\nSTATUS=ok");
        assert_eq!(n.watchdog_every(), None);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("kvsync-test-{}-{}", std::process::id(), fastrand::u64(..));
        let server = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(&format!("@{name}").into(), None, None).unwrap();
        n.send("STOPPING=1").unwrap();
        assert_eq!(recv(&server), "STOPPING=1");
    }

    #[test]
    fn watchdog_at_half_the_interval_and_only_for_this_process() {
        let s: OsString = "/run/systemd/notify".into();
        let me = std::process::id().to_string();
        assert_eq!(Notifier::new(&s, Some("4000000"), None).unwrap().watchdog_every(), Some(Duration::from_secs(2)));
        assert_eq!(
            Notifier::new(&s, Some("4000000"), Some(&me)).unwrap().watchdog_every(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(Notifier::new(&s, Some("4000000"), Some("1")).unwrap().watchdog_every(), None);
        assert_eq!(Notifier::new(&s, Some("0"), None).unwrap().watchdog_every(), None);
        assert_eq!(Notifier::new(&s, Some("soon"), None).unwrap().watchdog_every(), None);
    }

    #[test]
    fn a_relative_socket_is_refused_with_its_name() {
        let err = Notifier::new(&"notify.sock".into(), None, None).unwrap_err();
        assert!(err.to_string().contains("\"notify.sock\" is neither an absolute path"), "{err}");
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let m = reloading_message();
        let usec: u64 = m.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").expect(&m).parse().unwrap();
        assert!(usec > 0);
    }
}
