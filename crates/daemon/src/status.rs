//! `kvsync status`: asks a running daemon's `/status` and prints it as a table a person reads at a
//! glance, or the JSON as it came with `--json`.
//!
//! Exit status: 0 ready, 1 not ready, 2 unreachable (or not a kvsync endpoint), so scripts and probes
//! can use it without parsing.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::report::StatusReport;
use crate::timefmt::{human, parse_rfc3339};

/// The address `status` asks when none is given: `http.listen`'s default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9101";
/// A daemon that does not answer within this long is reported unreachable.
const TIMEOUT: Duration = Duration::from_secs(5);

pub const EXIT_READY: u8 = 0;
pub const EXIT_NOT_READY: u8 = 1;
pub const EXIT_UNREACHABLE: u8 = 2;

/// Runs `kvsync status`; prints to stdout, problems to stderr.
pub fn run(addr: &str, json: bool) -> ExitCode {
    let addr = addr.trim_start_matches("http://").trim_end_matches('/');
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvsync status: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    // The timer is created inside the runtime: tokio's timers need its context.
    let body = match rt.block_on(async { tokio::time::timeout(TIMEOUT, fetch(addr, "/status")).await }) {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            eprintln!("kvsync status: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
        Err(_) => {
            eprintln!(
                "kvsync status: http://{addr}/status did not answer within {}s; is the daemon stuck?",
                TIMEOUT.as_secs()
            );
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let report: StatusReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kvsync status: http://{addr}/status did not answer with a kvsync status document: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if json {
        print!("{}", String::from_utf8_lossy(&body));
    } else {
        print!("{}", table(&report, addr));
    }
    ExitCode::from(if report.ready { EXIT_READY } else { EXIT_NOT_READY })
}

/// GET `path` from `addr` over HTTP/1.1; the body of a 200 answer.
async fn fetch(addr: &str, path: &str) -> Result<Bytes, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        format!(
            "cannot reach kvsync at http://{addr}: {e}; is the daemon running, with http.listen set to this \
             address? (choose another with --http ADDR)"
        )
    })?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http://{addr}: HTTP handshake failed: {e}"))?;
    // The connection is driven by its own task; it ends when the answer is read.
    let driver = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("http://{addr}{path}: {e}"))?;
    let resp = sender.send_request(req).await.map_err(|e| format!("http://{addr}{path}: {e}"))?;
    let code = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| format!("http://{addr}{path}: {e}"))?.to_bytes();
    driver.abort();
    if code != http::StatusCode::OK {
        return Err(format!("http://{addr}{path} answered {code}; is this a kvsync endpoint?"));
    }
    Ok(body)
}

/// The report as aligned tables: a headline, sources, outputs, the child, and why it is not ready.
pub fn table(r: &StatusReport, addr: &str) -> String {
    let now = parse_rfc3339(&r.now).unwrap_or_else(SystemTime::now);
    let ago = |t: &Option<String>| match t.as_deref().and_then(parse_rfc3339) {
        Some(t) => format!("{} ago", human(now.duration_since(t).unwrap_or_default())),
        None => "-".to_string(),
    };
    let mut out = String::new();
    let verdict = if r.ready { "ready" } else { "NOT READY" };
    out.push_str(&format!(
        "kvsync {} at http://{addr}: {verdict}, up {}\n",
        r.kvsync_version,
        human(Duration::from_secs(r.uptime_seconds))
    ));

    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .sources
        .iter()
        .map(|s| {
            let mut connected = match (s.connected, s.failing_seconds) {
                (true, _) => "yes".to_string(),
                (false, Some(f)) => format!("no, {}", human(Duration::from_secs(f))),
                (false, None) => "no".to_string(),
            };
            if s.serving_cache {
                connected.push_str(" (cache)");
            }
            let error = match &s.last_error {
                Some(e) => format!("{}: {}", ago(&Some(e.at.clone())), e.message),
                None => "-".to_string(),
            };
            vec![
                s.name.clone(),
                s.kind.clone(),
                connected,
                s.version.to_string(),
                ago(&s.last_change),
                s.errors.to_string(),
                error,
            ]
        })
        .collect();
    out.push_str(&align(&["SOURCE", "TYPE", "CONNECTED", "VERSION", "LAST CHANGE", "ERRORS", "LAST ERROR"], &rows));

    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .outputs
        .iter()
        .map(|o| {
            let failure = match &o.last_failure {
                Some(f) => format!("{}: {}: {}", ago(&Some(f.at.clone())), f.reason, f.message),
                None => "-".to_string(),
            };
            vec![
                o.name.clone(),
                o.destination.clone(),
                o.renders.to_string(),
                o.writes.to_string(),
                ago(&o.last_render),
                ago(&o.last_write),
                failure,
            ]
        })
        .collect();
    out.push_str(&align(
        &["OUTPUT", "DESTINATION", "RENDERS", "WRITES", "LAST RENDER", "LAST WRITE", "LAST FAILURE"],
        &rows,
    ));

    let kept: Vec<Vec<String>> = r
        .outputs
        .iter()
        .flat_map(|o| {
            o.kept.iter().map(|k| {
                let pass = if k.pass == 0 { "-".to_string() } else { k.pass.to_string() };
                vec![o.name.clone(), k.version.to_string(), ago(&k.published), pass, k.path.clone()]
            })
        })
        .collect();
    if !kept.is_empty() {
        out.push('\n');
        out.push_str(&align(&["OUTPUT", "KEPT", "PUBLISHED", "PASS", "PATH"], &kept));
    }

    if let Some(c) = &r.child {
        out.push('\n');
        let state = match (c.pid, c.uptime_seconds) {
            (Some(pid), Some(up)) => format!("pid {pid}, up {}", human(Duration::from_secs(up))),
            (Some(pid), None) => format!("pid {pid}"),
            (None, _) => "not running".to_string(),
        };
        out.push_str(&format!("CHILD  {state}, restarts {}\n", c.restarts));
    }

    if !r.ready {
        out.push_str("\nnot ready because:\n");
        for p in r.pending.iter().chain(&r.stale).chain(&r.held) {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    if !r.cached.is_empty() {
        out.push_str("\nserved from the last-known-good cache:\n");
        for c in &r.cached {
            out.push_str(&format!("  - {c}\n"));
        }
    }
    out
}

/// Left-aligned columns two spaces apart; the last column is not padded (it holds long messages).
fn align(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i < last {
                l.push_str(&" ".repeat(width[i] - c.chars().count() + 2));
            }
        }
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::*;

    fn report() -> StatusReport {
        StatusReport {
            kvsync_version: "0.1.0".into(),
            now: "2026-11-25T18:30:00Z".into(),
            started: "2026-11-25T18:00:00Z".into(),
            uptime_seconds: 1800,
            ready: false,
            pending: vec![],
            stale: vec!["source `main` has been failing for 2m0s (over http.max_stale 1m): cannot read /kv".into()],
            cached: vec![],
            held: vec!["output `flags-json`: 3 of 4 keys removed at once (max_removed 50%); holding the last good version; `kvsync release flags-json` or restoring the keys resumes".into()],
            sources: vec![SourceReport {
                name: "main".into(),
                kind: "file".into(),
                connected: false,
                version: 7,
                requests: 9,
                errors: 2,
                reconnects: 0,
                last_change: Some("2026-11-25T18:29:48Z".into()),
                last_error: Some(ErrorReport { at: "2026-11-25T18:29:58Z".into(), message: "cannot read /kv".into() }),
                failing_seconds: Some(120),
                serving_cache: false,
            }],
            outputs: vec![
                OutputReport {
                    name: "app".into(),
                    destination: "/etc/app/app.conf".into(),
                    renders: 3,
                    writes: 2,
                    skipped_unchanged: 1,
                    failures: 0,
                    last_render: Some("2026-11-25T18:29:48Z".into()),
                    last_write: Some("2026-11-25T18:29:48Z".into()),
                    last_failure: None,
                    held: None,
                    kept: vec![
                        KeptReport {
                            version: 1,
                            path: "/etc/app/app.conf.kvsync-1".into(),
                            published: Some("2026-11-25T18:20:00Z".into()),
                            pass: 7,
                        },
                        KeptReport { version: 2, path: "/etc/app/app.conf.kvsync-2".into(), published: None, pass: 0 },
                    ],
                },
                OutputReport {
                    name: "flags-json".into(),
                    destination: "/etc/app/flags.json".into(),
                    renders: 1,
                    writes: 0,
                    skipped_unchanged: 0,
                    failures: 1,
                    last_render: Some("2026-11-25T18:00:01Z".into()),
                    last_write: None,
                    last_failure: Some(FailureReport {
                        at: "2026-11-25T18:00:01Z".into(),
                        reason: "render".into(),
                        message: "key `a` is both a value and a folder".into(),
                    }),
                    held: Some(HeldReport {
                        guard: "max_removed".into(),
                        since: "2026-11-25T18:29:00Z".into(),
                        message: "output `flags-json`: 3 of 4 keys removed at once (max_removed 50%); holding the last good version; `kvsync release flags-json` or restoring the keys resumes".into(),
                    }),
                    kept: vec![],
                },
            ],
            child: Some(ChildReport { pid: Some(4242), restarts: 1, uptime_seconds: Some(65), orphans_reaped: 0 }),
        }
    }

    #[test]
    fn table_is_aligned_and_says_why_not_ready() {
        let t = table(&report(), "127.0.0.1:9101");
        let expected = "\
kvsync 0.1.0 at http://127.0.0.1:9101: NOT READY, up 30m0s

SOURCE  TYPE  CONNECTED  VERSION  LAST CHANGE  ERRORS  LAST ERROR
main    file  no, 2m0s   7        12s ago      2       2s ago: cannot read /kv

OUTPUT      DESTINATION          RENDERS  WRITES  LAST RENDER  LAST WRITE  LAST FAILURE
app         /etc/app/app.conf    3        2       12s ago      12s ago     -
flags-json  /etc/app/flags.json  1        0       29m59s ago   -           29m59s ago: render: key `a` is both a value and a folder

OUTPUT  KEPT  PUBLISHED  PASS  PATH
app     1     10m0s ago  7     /etc/app/app.conf.kvsync-1
app     2     -          -     /etc/app/app.conf.kvsync-2

CHILD  pid 4242, up 1m5s, restarts 1

not ready because:
  - source `main` has been failing for 2m0s (over http.max_stale 1m): cannot read /kv
  - output `flags-json`: 3 of 4 keys removed at once (max_removed 50%); holding the last good version; `kvsync release flags-json` or restoring the keys resumes
";
        assert_eq!(t, expected, "\n{t}");
    }
}
