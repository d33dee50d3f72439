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

/// The remote ports of the established TCP connections whose local port is `port`, on loopback (IPv4
/// and IPv6): a server's accepted connections, counted from the host's tables alone (one read each,
/// cheap enough to sample often).
pub fn accepted_on(port: u16) -> Vec<u16> {
    let mut remote = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(s) = std::fs::read_to_string(table) else { continue };
        for line in s.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().take(4).collect();
            if f.len() < 4 || f[3] != "01" {
                continue; // not ESTABLISHED
            }
            let port_of = |a: &str| a.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if port_of(f[1]) == Some(port) {
                if let Some(r) = port_of(f[2]) {
                    remote.push(r);
                }
            }
        }
    }
    remote
}

/// The processes whose parent is `ppid`, with their command names.
pub fn children(ppid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let (Some(open), Some((_, rest))) = (s.find('('), s.rsplit_once(") ")) else { continue };
        let comm = s[open + 1..s.len() - rest.len() - 2].to_string();
        // After the name: state, then the parent's pid.
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(ppid) {
            out.push((pid, comm));
        }
    }
    out
}
