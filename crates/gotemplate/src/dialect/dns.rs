//! DNS at render time, for confd's `lookupIP` and `lookupSRV`.
//!
//! Addresses come from the system resolver (`getaddrinfo` through std's `ToSocketAddrs`). SRV records
//! are asked with one DNS query over UDP to the first `nameserver` of `/etc/resolv.conf` (2 s timeout,
//! one retry; no TCP fallback for truncated answers, no search domains), as Go's resolver would for a
//! fully qualified name.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use crate::value::{Record, Value};

/// The sorted, distinct addresses of `host`; empty when it does not resolve (as confd does).
pub fn lookup_ip(host: &str) -> Vec<String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip.to_string()];
    }
    let set: BTreeSet<String> = match (host, 0u16).to_socket_addrs() {
        Ok(it) => it.map(|a| a.ip().to_string()).collect(),
        Err(_) => BTreeSet::new(),
    };
    set.into_iter().collect()
}

/// One SRV record (Go's `net.SRV`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub target: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

impl Srv {
    pub fn to_value(&self) -> Value {
        Value::Object(Arc::new(Record {
            type_name: "net.SRV",
            pointer: true,
            fields: vec![
                ("Target", Value::String(self.target.clone())),
                ("Port", Value::Int(self.port as i64)),
                ("Priority", Value::Int(self.priority as i64)),
                ("Weight", Value::Int(self.weight as i64)),
            ],
        }))
    }
}

/// The first nameserver of a resolv.conf text.
pub fn nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        if w.next() != Some("nameserver") {
            return None;
        }
        let ip: IpAddr = w.next()?.split('%').next()?.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

/// SRV records of `_service._proto.name` (or of `name` when service and proto are empty), asked from
/// the system's nameserver.
pub fn lookup_srv(service: &str, proto: &str, name: &str) -> std::io::Result<Vec<Srv>> {
    let conf = std::fs::read_to_string("/etc/resolv.conf")?;
    let server = nameserver(&conf)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no nameserver in /etc/resolv.conf"))?;
    let qname =
        if service.is_empty() && proto.is_empty() { name.to_string() } else { format!("_{service}._{proto}.{name}") };
    query_srv(server, &qname, Duration::from_secs(2))
}

/// Asks `server` for the SRV records of `qname`.
pub fn query_srv(server: SocketAddr, qname: &str, timeout: Duration) -> std::io::Result<Vec<Srv>> {
    let bind: SocketAddr =
        if server.is_ipv4() { "0.0.0.0:0".parse().unwrap_or(server) } else { "[::]:0".parse().unwrap_or(server) };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(timeout))?;
    let id: u16 = (std::process::id() as u16)
        ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos()
            as u16);
    let q = build_query(id, qname)?;
    let mut buf = [0u8; 4096];
    for _attempt in 0..2 {
        sock.send_to(&q, server)?;
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == server => {
                    if let Some(r) = parse_response(&buf[..n], id) {
                        return r;
                    }
                }
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer from {server} for {qname}")))
}

fn build_query(id: u16, qname: &str) -> std::io::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in qname.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("invalid DNS name {qname:?}")));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 33, 0, 1]); // SRV, IN
    Ok(q)
}

/// Reads a possibly compressed name at `pos`; returns it and the position after it.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            pos += 1;
            break;
        }
        if len & 0xC0 == 0xC0 {
            let ptr = ((len & 0x3F) << 8) | *msg.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            pos = ptr;
            continue;
        }
        labels.push(String::from_utf8_lossy(msg.get(pos + 1..pos + 1 + len)?).into_owned());
        pos += 1 + len;
    }
    Some((format!("{}.", labels.join(".")), end.unwrap_or(pos)))
}

fn u16_at(msg: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]))
}

/// `None` when the message is not the answer to our query.
fn parse_response(msg: &[u8], id: u16) -> Option<std::io::Result<Vec<Srv>>> {
    if u16_at(msg, 0)? != id || msg.get(2)? & 0x80 == 0 {
        return None;
    }
    let rcode = msg.get(3)? & 0x0F;
    if rcode == 3 {
        return Some(Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such host")));
    }
    if rcode != 0 {
        return Some(Err(std::io::Error::other(format!("DNS server answered with code {rcode}"))));
    }
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut pos = 12;
    for _ in 0..qd {
        let (_, p) = read_name(msg, pos)?;
        pos = p + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        let (_, p) = read_name(msg, pos)?;
        let typ = u16_at(msg, p)?;
        let rdlen = u16_at(msg, p + 8)? as usize;
        let rdata = p + 10;
        if typ == 33 {
            let priority = u16_at(msg, rdata)?;
            let weight = u16_at(msg, rdata + 2)?;
            let port = u16_at(msg, rdata + 4)?;
            let (target, _) = read_name(msg, rdata + 6)?;
            out.push(Srv { target, port, priority, weight });
        }
        pos = rdata + rdlen;
    }
    Some(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_query_against_a_loopback_server() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            server.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let q = &buf[..n];
            let mut r = q.to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            r[7] = 2; // two answers
            for (prio, weight, port, target) in [(10u16, 5u16, 8080u16, "b.example."), (5, 1, 80, "a.example.")] {
                r.extend_from_slice(&[0xC0, 12, 0, 33, 0, 1, 0, 0, 0, 60]);
                let mut rd = Vec::new();
                rd.extend_from_slice(&prio.to_be_bytes());
                rd.extend_from_slice(&weight.to_be_bytes());
                rd.extend_from_slice(&port.to_be_bytes());
                for l in target.trim_end_matches('.').split('.') {
                    rd.push(l.len() as u8);
                    rd.extend_from_slice(l.as_bytes());
                }
                rd.push(0);
                r.extend_from_slice(&(rd.len() as u16).to_be_bytes());
                r.extend_from_slice(&rd);
            }
            server.send_to(&r, from).unwrap();
        });
        let recs = query_srv(addr, "_http._tcp.example.org", Duration::from_secs(20)).unwrap();
        t.join().unwrap();
        assert_eq!(
            recs,
            vec![
                Srv { target: "b.example.".into(), port: 8080, priority: 10, weight: 5 },
                Srv { target: "a.example.".into(), port: 80, priority: 5, weight: 1 },
            ]
        );
    }

    #[test]
    fn nameserver_is_read_from_resolv_conf() {
        let conf = "# comment\nsearch example.org\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n";
        assert_eq!(nameserver(conf), Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(nameserver("search x\n"), None);
    }

    #[test]
    fn lookup_ip_of_literals_and_localhost() {
        assert_eq!(lookup_ip("127.0.0.1"), vec!["127.0.0.1".to_string()]);
        assert!(lookup_ip("localhost").iter().any(|a| a == "127.0.0.1" || a == "::1"));
        assert!(lookup_ip("no-such-host.invalid").is_empty());
    }
}
