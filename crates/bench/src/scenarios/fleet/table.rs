//! The fleet scenario's figures: the "fleet" tables, the ×10,000 extrapolation, and their JSON.

use std::time::Duration;

use serde_json::json;

use crate::measure::{ms, summarize, Summary};

/// Fan-out: from a put's acknowledgement to the moment the destinations hold it.
#[derive(Debug, Default)]
pub struct FanOut {
    /// Shared key: until all N json outputs hold it (or a later version), and until the first does.
    pub all: Vec<Duration>,
    pub first: Vec<Duration>,
    /// A key only one sidecar renders: until its env output holds it.
    pub single: Vec<Duration>,
    /// Puts of each kind.
    pub puts: usize,
}

/// The server's and the fleet's cost over a window.
#[derive(Debug, Default)]
pub struct Window {
    pub what: String,
    pub seconds: f64,
    /// Changes written to the shared key during the window.
    pub changes: usize,
    pub server_cpu: Duration,
    /// What the server used by itself over as long a time, before the fleet started.
    pub server_cpu_alone: Duration,
    pub server_rss: u64,
    /// The server's RSS before the fleet started.
    pub server_rss_before: u64,
    /// Established connections to the server's port, not counting the benchmark's own.
    pub connections: usize,
    /// The most any one sidecar holds.
    pub max_connections_per_sidecar: usize,
    /// etcd: gRPC messages received; Consul: HTTP requests.
    pub requests: f64,
    pub watchers: Option<f64>,
    pub watch_streams: Option<f64>,
    /// Per sidecar: CPU seconds used in the window (mean, max) and RSS at its end (mean, max).
    pub sidecar_cpu_mean: f64,
    pub sidecar_cpu_max: f64,
    pub sidecar_rss_mean: f64,
    pub sidecar_rss_max: u64,
}

impl Window {
    fn cpu_pct(s: f64, seconds: f64) -> f64 {
        s / seconds.max(1e-9) * 100.0
    }

    /// The server's CPU that the fleet caused: its CPU in the window less its own.
    fn fleet_cpu(&self) -> f64 {
        self.server_cpu.saturating_sub(self.server_cpu_alone).as_secs_f64()
    }

    fn requests_per_min(&self) -> f64 {
        self.requests * 60.0 / self.seconds.max(1e-9)
    }
}

/// A restart storm: the server stopped for `outage` and started again.
#[derive(Debug, Default)]
pub struct Storm {
    pub outage: Duration,
    /// Per sidecar: from the moment the server answered again to the sidecar's fresh render (a value
    /// written right after the restart), sorted. Missing sidecars are not in it.
    pub back: Vec<Duration>,
    pub missing: usize,
    /// New connections the server saw in the busiest second, and in the first second after it answered.
    pub peak_connections_per_s: usize,
    pub connections_first_s: usize,
    /// Consul: requests in the busiest second (the test server's counter, sampled every 100 ms).
    pub peak_requests_per_s: Option<f64>,
    /// The target: every sidecar back within retry.max + 2 s.
    pub bound: Duration,
}

impl Storm {
    fn at(&self, q: f64) -> Duration {
        if self.back.is_empty() {
            return Duration::ZERO;
        }
        self.back[((self.back.len() as f64 - 1.0) * q).round() as usize]
    }

    pub fn spread(&self) -> Duration {
        self.at(1.0).saturating_sub(self.at(0.0))
    }

    pub fn pass(&self) -> bool {
        self.missing == 0 && self.at(1.0) <= self.bound && self.spread() >= Duration::from_secs(1)
    }
}

#[derive(Debug, Default)]
pub struct FleetRow {
    pub backend: String,
    pub mode: String,
    pub sidecars: usize,
    pub start_took: Duration,
    pub fanout: FanOut,
    pub idle: Window,
    pub load: Window,
    pub storm: Option<Storm>,
    /// Prefixes per sidecar, and Consul's blocking wait (watch mode) for the request target.
    pub prefixes: usize,
    pub consul_wait: Option<Duration>,
    /// Sidecars that had exited by the end (none should).
    pub exited: usize,
    pub took: Duration,
}

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

fn verdict(missed: &[&str]) -> String {
    if missed.is_empty() {
        "PASS".into()
    } else {
        format!("FAIL ({})", missed.join(", "))
    }
}

fn s3(s: Summary) -> String {
    format!("{:.1} / {:.1} / {:.1}", ms(s.p50), ms(s.p99), ms(s.max))
}

impl FleetRow {
    fn label(&self) -> String {
        format!("{} {}", self.backend, self.mode)
    }

    fn watch(&self) -> bool {
        self.mode.starts_with("watch")
    }

    fn fanout_verdict(&self) -> String {
        if self.backend != "etcd" || !self.watch() {
            return "-".into();
        }
        let s = summarize(&self.fanout.all);
        let mut missed = Vec::new();
        if self.fanout.all.len() < self.fanout.puts {
            missed.push("incomplete");
        }
        if ms(s.p50) > 50.0 {
            missed.push("p50");
        }
        if ms(s.p99) > 200.0 {
            missed.push("p99");
        }
        verdict(&missed)
    }

    /// Server-side targets of the idle window (watch modes).
    fn server_verdict(&self, w: &Window) -> (String, String) {
        if !self.watch() {
            return ("-".into(), "-".into());
        }
        let n = self.sidecars;
        let mut missed = Vec::new();
        if self.backend == "etcd" {
            if w.connections > n || w.max_connections_per_sidecar > 1 {
                missed.push("connections");
            }
            if w.watch_streams.is_some_and(|s| s > n as f64) {
                missed.push("streams");
            }
            if w.requests > 0.0 {
                missed.push("requests");
            }
            ("1 conn. + 1 stream per sidecar, 0 requests".into(), verdict(&missed))
        } else {
            let wait = self.consul_wait.unwrap_or(Duration::from_secs(60)).as_secs_f64();
            let allowed = (self.prefixes * n) as f64 * (w.seconds / wait).ceil().max(1.0);
            if w.requests > allowed {
                missed.push("requests");
            }
            (format!("≤ 1 request per prefix per wait ({allowed:.0})"), verdict(&missed))
        }
    }

    fn sidecar_verdict(&self, w: &Window) -> String {
        let mut missed = Vec::new();
        if mib(w.sidecar_rss_max as f64) > 10.0 {
            missed.push("RSS");
        }
        if Window::cpu_pct(w.sidecar_cpu_max, w.seconds) >= 0.5 {
            missed.push("CPU");
        }
        verdict(&missed)
    }
}

pub fn print(rows: &[FleetRow]) {
    if rows.is_empty() {
        return;
    }
    let n = rows[0].sidecars;
    println!("\n## Fleet ({n} kvsync processes against one server; each renders a shared prefix into json and its own prefix into env)\n");
    println!("### Fan-out (ms: p50 / p99 / max over the puts)\n");
    println!("| backend | mode | sidecars | fleet start | shared put: all N hold it | shared put: first holds it (p50) | own put: its one sidecar holds it | puts | target (etcd watch: all N p50 ≤ 50, p99 ≤ 200) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let f = &r.fanout;
        println!(
            "| {} | {} | {} | {:.1} s | {} | {:.1} | {} | {} + {} | {} |",
            r.backend,
            r.mode,
            r.sidecars,
            r.start_took.as_secs_f64(),
            s3(summarize(&f.all)),
            ms(summarize(&f.first).p50),
            s3(summarize(&f.single)),
            f.all.len(),
            f.single.len(),
            r.fanout_verdict()
        );
    }
    println!("\n### Server cost\n");
    println!("| backend | mode | window | server CPU (its own before the fleet) | server RSS (before the fleet) | TCP connections (max per sidecar) | requests/min (per sidecar) | watchers / streams | target | verdict |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        for (i, w) in [&r.idle, &r.load].into_iter().enumerate() {
            let (target, v) = if i == 0 { r.server_verdict(w) } else { ("-".into(), "-".into()) };
            println!(
                "| {} | {} | {} | {:.2} s ({:.2}), {:.1} % of a core | {:.1} MiB ({:.1}) | {} ({}) | {:.1} ({:.3}) | {} | {} | {} |",
                r.backend,
                r.mode,
                w.what,
                w.server_cpu.as_secs_f64(),
                w.server_cpu_alone.as_secs_f64(),
                Window::cpu_pct(w.server_cpu.as_secs_f64(), w.seconds),
                mib(w.server_rss as f64),
                mib(w.server_rss_before as f64),
                w.connections,
                w.max_connections_per_sidecar,
                w.requests_per_min(),
                w.requests_per_min() / r.sidecars.max(1) as f64,
                match (w.watchers, w.watch_streams) {
                    (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
                    _ => "-".into(),
                },
                target,
                v
            );
        }
    }
    println!("\n### kvsync per sidecar\n");
    println!("| backend | mode | window | RSS mean / max | CPU mean / max (% of a core) | target (idle: RSS ≤ 10 MiB, CPU < 0.5 %) |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        for (i, w) in [&r.idle, &r.load].into_iter().enumerate() {
            println!(
                "| {} | {} | {} | {:.1} / {:.1} MiB | {:.3} / {:.3} % | {} |",
                r.backend,
                r.mode,
                w.what,
                mib(w.sidecar_rss_mean),
                mib(w.sidecar_rss_max as f64),
                Window::cpu_pct(w.sidecar_cpu_mean, w.seconds),
                Window::cpu_pct(w.sidecar_cpu_max, w.seconds),
                if i == 0 { r.sidecar_verdict(w) } else { "-".into() }
            );
        }
    }
    if rows.iter().any(|r| r.storm.is_some()) {
        println!("\n### Restart storm (server stopped, then started again on the same port with its data)\n");
        println!("| backend | mode | outage | all back after | sidecars back: first / p50 / p90 / last | spread (first to last) | new connections: first second / busiest second | requests in the busiest second | target (back ≤ retry.max + 2 s, spread ≥ 1 s) |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for r in rows {
            let Some(s) = &r.storm else { continue };
            let sec = |d: Duration| format!("{:.2}", d.as_secs_f64());
            println!(
                "| {} | {} | {:.1} s | {} | {} / {} / {} / {} s | {:.2} s | {} / {} | {} | {} (≤ {:.0} s) |",
                r.backend,
                r.mode,
                s.outage.as_secs_f64(),
                if s.missing > 0 { format!("{} missing", s.missing) } else { format!("{} s", sec(s.at(1.0))) },
                sec(s.at(0.0)),
                sec(s.at(0.5)),
                sec(s.at(0.9)),
                sec(s.at(1.0)),
                s.spread().as_secs_f64(),
                s.connections_first_s,
                s.peak_connections_per_s,
                s.peak_requests_per_s.map_or("-".into(), |r| format!("{r:.0}")),
                verdict(if s.pass() { &[] } else { &["see figures"] }),
                s.bound.as_secs_f64()
            );
        }
    }
    println!("\n### Extrapolation to 10,000 sidecars (per-sidecar figures measured above × 10,000)\n");
    println!("| backend | mode | figure (window) | per sidecar | × 10,000 |");
    println!("|---|---|---|---|---|");
    for r in rows {
        for line in extrapolation(r) {
            println!("| {} | {} | {} | {} | {} |", r.backend, r.mode, line.0, line.1, line.2);
        }
    }
    println!(
        "\nFan-out: from the put's acknowledgement to the moment the watcher (one inotify instance on every \
         destination directory, reading a file when it is renamed into place) saw the value in all N json \
         outputs; a version coalesced away counts until a later one was there. Server CPU and RSS are the \
         server process's (etcd; the Consul KV test server, a Rust emulation in a process of its own, so its \
         CPU and memory are not a real Consul's, while its request and connection counts are what kvsync \
         asked of it). Connections are the server's established ones, the benchmark's own taken off."
    );
    for r in rows.iter().filter(|r| r.exited > 0) {
        println!("\nwarning: {}: {} sidecars had exited by the end; their figures are missing", r.label(), r.exited);
    }
    let total: f64 = rows.iter().map(|r| r.took.as_secs_f64()).sum();
    println!("\nThe fleet scenario took {total:.0} s.");
}

/// (figure, per sidecar, × 10,000) lines of a row.
fn extrapolation(r: &FleetRow) -> Vec<(String, String, String)> {
    let n = r.sidecars.max(1) as f64;
    let k = 10_000.0;
    let mut v = Vec::new();
    let i = &r.idle;
    let l = &r.load;
    v.push((
        "TCP connections (idle)".into(),
        format!("{:.2}", i.connections as f64 / n),
        format!("{:.0}", i.connections as f64 / n * k),
    ));
    if let (Some(w), Some(s)) = (i.watchers, i.watch_streams) {
        v.push((
            "watchers / watch streams (idle)".into(),
            format!("{:.2} / {:.2}", w / n, s / n),
            format!("{:.0} / {:.0}", w / n * k, s / n * k),
        ));
    }
    for w in [i, l] {
        let rps = w.requests / w.seconds.max(1e-9) / n;
        v.push((format!("requests/s ({})", w.what), format!("{rps:.4}"), format!("{:.0}", rps * k)));
    }
    for w in [i, l] {
        let cores = w.fleet_cpu() / w.seconds.max(1e-9) / n;
        v.push((
            format!("server CPU above its own, cores ({})", w.what),
            format!("{:.6}", cores),
            format!("{:.2}", cores * k),
        ));
    }
    let rss = i.server_rss.saturating_sub(i.server_rss_before) as f64 / n;
    v.push((
        "server RSS above its own (idle)".into(),
        format!("{:.1} KiB", rss / 1024.0),
        format!("{:.1} GiB", rss * k / (1u64 << 30) as f64),
    ));
    if let Some(s) = &r.storm {
        let per = s.peak_connections_per_s as f64 / n;
        v.push((
            "new connections in the busiest second of a restart".into(),
            format!("{per:.3}"),
            format!("{:.0}", per * k),
        ));
        if let Some(p) = s.peak_requests_per_s {
            v.push((
                "requests in the busiest second of a restart".into(),
                format!("{:.3}", p / n),
                format!("{:.0}", p / n * k),
            ));
        }
    }
    v
}

pub fn to_json(rows: &[FleetRow]) -> serde_json::Value {
    let sum = |v: &[Duration]| {
        let s = summarize(v);
        json!({"n": s.n, "p50_ms": ms(s.p50), "p90_ms": ms(s.p90), "p99_ms": ms(s.p99), "max_ms": ms(s.max)})
    };
    let window = |w: &Window| {
        json!({"what": w.what, "seconds": w.seconds, "changes": w.changes, "server_cpu_s": w.server_cpu.as_secs_f64(), "server_cpu_alone_s": w.server_cpu_alone.as_secs_f64(),
            "server_rss": w.server_rss, "server_rss_before": w.server_rss_before, "connections": w.connections,
            "max_connections_per_sidecar": w.max_connections_per_sidecar, "requests": w.requests,
            "requests_per_min": w.requests_per_min(), "watchers": w.watchers, "watch_streams": w.watch_streams,
            "sidecar_cpu_mean_s": w.sidecar_cpu_mean, "sidecar_cpu_max_s": w.sidecar_cpu_max,
            "sidecar_rss_mean": w.sidecar_rss_mean, "sidecar_rss_max": w.sidecar_rss_max})
    };
    json!(rows
        .iter()
        .map(|r| {
            json!({"backend": r.backend, "mode": r.mode, "sidecars": r.sidecars, "prefixes_per_sidecar": r.prefixes,
                "fleet_start_s": r.start_took.as_secs_f64(), "took_s": r.took.as_secs_f64(), "exited": r.exited,
                "fanout": {"puts": r.fanout.puts, "shared_all": sum(&r.fanout.all), "shared_first": sum(&r.fanout.first),
                    "own": sum(&r.fanout.single), "verdict": r.fanout_verdict()},
                "idle": window(&r.idle), "load": window(&r.load),
                "idle_server_verdict": r.server_verdict(&r.idle).1, "idle_sidecar_verdict": r.sidecar_verdict(&r.idle),
                "storm": r.storm.as_ref().map(|s| json!({"outage_s": s.outage.as_secs_f64(),
                    "back_s": s.back.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(), "missing": s.missing,
                    "spread_s": s.spread().as_secs_f64(), "peak_connections_per_s": s.peak_connections_per_s,
                    "connections_first_s": s.connections_first_s, "peak_requests_per_s": s.peak_requests_per_s,
                    "bound_s": s.bound.as_secs_f64(), "pass": s.pass()})),
                "extrapolation_10000": extrapolation(r).into_iter().map(|(f, p, x)| json!({"figure": f, "per_sidecar": p, "x10000": x})).collect::<Vec<_>>()})
        })
        .collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_passes_only_when_every_sidecar_is_back_in_time_and_spread() {
        let secs = |v: &[f64]| v.iter().map(|s| Duration::from_secs_f64(*s)).collect::<Vec<_>>();
        let bound = Duration::from_secs(32);
        let spread = Storm { back: secs(&[0.2, 1.0, 3.5]), bound, ..Storm::default() };
        assert_eq!(spread.spread(), Duration::from_secs_f64(3.3));
        assert!(spread.pass());
        let bunched = Storm { back: secs(&[0.2, 0.3, 0.4]), bound, ..Storm::default() };
        assert!(!bunched.pass());
        let late = Storm { back: secs(&[0.2, 40.0]), bound, ..Storm::default() };
        assert!(!late.pass());
        let missing = Storm { back: secs(&[0.2, 3.0]), missing: 1, bound, ..Storm::default() };
        assert!(!missing.pass());
    }
}
