//! What a process costs, read from /proc: resident memory, CPU time, open TCP connections.

use std::collections::HashSet;
use std::time::Duration;

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// Current resident set size, in bytes.
pub fn rss(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:").unwrap_or(0) * 1024
}

/// Peak resident set size, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:").unwrap_or(0) * 1024
}

/// User + system CPU time consumed so far.
pub fn cpu(pid: u32) -> Duration {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Duration::ZERO };
    let Some((_, rest)) = s.rsplit_once(") ") else { return Duration::ZERO };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name: state(0) ... utime(11) stime(12), in clock ticks (100 Hz on Linux).
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Established TCP connections of `pid` to `remote_port` on loopback (IPv4 and IPv6).
pub fn tcp_connections(pid: u32, remote_port: u16) -> usize {
    let mut inodes = HashSet::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_link(e.path()) {
                let t = t.to_string_lossy().into_owned();
                if let Some(i) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(i.to_string());
                }
            }
        }
    }
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in s.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" {
                continue; // not ESTABLISHED
            }
            let port = f[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if port == Some(remote_port) && inodes.contains(f[9]) {
                n += 1;
            }
        }
    }
    n
}
