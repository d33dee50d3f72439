//! Fleet: N separate `kvsync run` processes (release build) against one etcd and one Consul KV test
//! server, measured from the server's side, per backend and mode (etcd watch, Consul watch, both in
//! poll mode at 10 s):
//!
//! - fan-out: from a put's acknowledgement to the moment all N destinations hold it, for a key every
//!   sidecar renders and for a key only one renders;
//! - the server's cost while the fleet idles and while it takes 10 changes/s (CPU seconds and RSS of
//!   the server process, TCP connections, requests or watchers), and each sidecar's RSS and CPU;
//! - in watch mode, a restart storm: the server stopped for 10 s and started again; how long until
//!   every sidecar renders a value written right after the restart, how spread their returns are, and
//!   the busiest second of reconnections the server saw.
//!
//! Each mode gets a fresh server and a fresh fleet. Everything runs on loopback and every wait is
//! bounded; the processes die with their handles, and `guard` kills them on a signal or a panic.

mod server;
mod sidecars;
mod table;

pub use table::{print, to_json, FleetRow};

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::server::Server;
use self::sidecars::{own_key, Fleet, SHARED_KEY};
use self::table::{FanOut, Storm, Window};
use crate::guard;
use crate::measure::value;
use crate::procstat;
use crate::report::Report;
use crate::Args;

/// Value size of every key the fleet renders.
const VALUE: usize = 100;
/// Poll interval of the poll modes, and Consul's blocking wait in watch mode.
const POLL_INTERVAL: &str = "10s";
const CONSUL_WAIT: Duration = Duration::from_secs(60);
/// kvsync's default retry.max (the fleet's configs leave `retry` at its defaults).
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Changes per second in the load window.
const LOAD_RATE: u64 = 10;

/// The sizes of a run.
struct Plan {
    sidecars: usize,
    puts: usize,
    idle: Duration,
    load: Duration,
    outage: Duration,
    /// The server alone, before the fleet starts: its own CPU use, taken off the fleet's.
    alone: Duration,
}

impl Plan {
    fn of(args: &Args) -> Plan {
        if args.quick {
            Plan {
                sidecars: args.fleet.unwrap_or(20),
                puts: 10,
                idle: Duration::from_secs(10),
                load: Duration::from_secs(5),
                outage: Duration::from_secs(10),
                alone: Duration::from_secs(3),
            }
        } else {
            Plan {
                sidecars: args.fleet.unwrap_or(200),
                puts: 50,
                idle: Duration::from_secs(60),
                load: Duration::from_secs(20),
                outage: Duration::from_secs(10),
                alone: Duration::from_secs(5),
            }
        }
    }
}

pub async fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let plan = Plan::of(args);
    anyhow::ensure!(plan.sidecars > 0, "--fleet must be at least 1");
    report.notes.push(check_limits(plan.sidecars)?);
    let handle = tokio::runtime::Handle::current();
    let mut modes = Vec::new();
    for mode in ["watch", "poll"] {
        for backend in ["etcd", "consul"] {
            if args.backend(backend) {
                modes.push((backend, mode));
            }
        }
    }
    // Sidecars and the measuring loops block; the etcd client runs on the runtime through `handle`.
    tokio::task::block_in_place(|| {
        for (backend, mode) in modes {
            eprintln!("fleet: {backend} {mode}, {} sidecars ...", plan.sidecars);
            let row = one_mode(&plan, &handle, backend, mode)?;
            report.fleet.push(row);
        }
        anyhow::Ok(())
    })
}

/// Raises RLIMIT_NOFILE for the servers (inherited by every process started from here) and checks
/// that the machine can hold the fleet: ephemeral ports and inotify watches. Returns what it found.
fn check_limits(n: usize) -> anyhow::Result<String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // The Consul test server holds two connections per sidecar, more while a restart storm overlaps
    // old and new ones; etcd one per sidecar.
    let need = 4 * n as u64 + 1024;
    let lim = getrlimit(Resource::Nofile);
    let (soft, hard) = (lim.current.unwrap_or(u64::MAX), lim.maximum.unwrap_or(u64::MAX));
    anyhow::ensure!(
        hard >= need,
        "the fleet of {n} needs {need} open files per server process, but the hard RLIMIT_NOFILE is {hard}; raise it (`ulimit -Hn`) or use a smaller --fleet"
    );
    if soft < need {
        setrlimit(Resource::Nofile, Rlimit { current: Some(need), maximum: lim.maximum })?;
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let range: Vec<u64> =
        read("/proc/sys/net/ipv4/ip_local_port_range").split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let ports = match range[..] {
        [lo, hi] => hi.saturating_sub(lo) + 1,
        _ => 0,
    };
    // Each mode: up to two connections per sidecar, left in TIME_WAIT for a minute when the fleet stops.
    let ports_needed = 8 * n as u64 + 1000;
    anyhow::ensure!(
        ports >= ports_needed,
        "the fleet of {n} needs about {ports_needed} ephemeral ports, but net.ipv4.ip_local_port_range allows {ports}; widen it or use a smaller --fleet"
    );
    let watches: u64 = read("/proc/sys/fs/inotify/max_user_watches").trim().parse().unwrap_or(0);
    anyhow::ensure!(
        watches >= 2 * n as u64 + 1000,
        "the fleet of {n} watches {} destination directories, but fs.inotify.max_user_watches is {watches}",
        2 * n
    );
    Ok(format!(
        "fleet: {n} sidecars; RLIMIT_NOFILE {} (needs {need}), {ports} ephemeral ports (needs about {ports_needed}), \
         {watches} inotify watches per user (the benchmark uses {} in one instance; the sidecars run with \
         watch_config: false, so they take none of the 128 inotify instances a user has by default)",
        soft.max(need.min(hard)),
        2 * n
    ))
}

fn one_mode(plan: &Plan, handle: &tokio::runtime::Handle, backend: &str, mode: &str) -> anyhow::Result<FleetRow> {
    let began = Instant::now();
    let mut server = if backend == "etcd" { Server::start_etcd(handle)? } else { Server::start_consul()? };
    let n = plan.sidecars;
    let val = |seq: u64| value(seq, VALUE);
    server.put(SHARED_KEY, &val(0))?;
    for i in 0..n {
        server.put(&own_key(i), &val(0))?;
    }
    let port = server.port();
    let own_connections = procstat::accepted_on(port).len();
    let rss_before = server.pid().map(procstat::rss).unwrap_or(0);
    let pid = server.pid().ok_or_else(|| anyhow::anyhow!("the {backend} server is not running"))?;
    let cpu0 = procstat::cpu(pid);
    std::thread::sleep(plan.alone);
    let alone = Alone {
        rss: rss_before,
        cpu_per_s: procstat::cpu(pid).saturating_sub(cpu0).as_secs_f64() / plan.alone.as_secs_f64(),
    };
    let root = tempfile::Builder::new().prefix("kvsync-fleet-").tempdir()?;
    guard::remove_on_interrupt(root.path());
    let source = server.source(mode, POLL_INTERVAL, &format!("{}s", CONSUL_WAIT.as_secs()));
    let fleet = Fleet::start(root.path(), n, &source, Duration::from_secs(60 + n as u64 / 2))?;
    eprintln!("fleet: {n} sidecars rendered {:.1} s after the first started", fleet.start_took.as_secs_f64());
    // Let the start-up work end (first renders, connection set-up) before anything is measured.
    std::thread::sleep(Duration::from_secs(2));

    let mut seq = 0u64;
    let fanout = fan_out(plan, &mut server, &fleet, mode, &mut seq)?;
    eprintln!("fleet: fan-out done; idle {} s ...", plan.idle.as_secs());
    let idle = window(&mut server, &fleet, "idle", plan.idle, 0, &mut seq, own_connections, &alone)?;
    eprintln!("fleet: {LOAD_RATE} changes/s for {} s ...", plan.load.as_secs());
    let load = window(&mut server, &fleet, "10 changes/s", plan.load, LOAD_RATE, &mut seq, own_connections, &alone)?;
    // Every sidecar holds the last change before the next step (in poll mode, within an interval).
    let last = seq;
    fleet.wait_all("the load's last change everywhere", Duration::from_secs(60), |s| {
        s.json.seen_at_or_after(last).is_some()
    })?;
    let storm = if mode == "watch" {
        eprintln!("fleet: restart storm ({} s outage) ...", plan.outage.as_secs());
        Some(storm(plan, &mut server, &fleet, &mut seq)?)
    } else {
        None
    };
    let exited = fleet.exited();
    let row = FleetRow {
        backend: backend.into(),
        mode: if mode == "watch" {
            if backend == "consul" {
                format!("watch (wait {}s)", CONSUL_WAIT.as_secs())
            } else {
                "watch".into()
            }
        } else {
            format!("poll ({POLL_INTERVAL})")
        },
        sidecars: n,
        start_took: fleet.start_took,
        fanout,
        idle,
        load,
        storm,
        prefixes: 2,
        consul_wait: (backend == "consul" && mode == "watch").then_some(CONSUL_WAIT),
        exited,
        took: Duration::ZERO,
    };
    drop(fleet);
    drop(server);
    Ok(FleetRow { took: began.elapsed(), ..row })
}

/// Fan-out of `plan.puts` puts on the shared key and as many on single sidecars' own keys. Watch mode:
/// one put at a time, each waited for. Poll mode (a change waits up to an interval): a shared and an
/// own put every 100 ms each, then a wait for the last ones; a version coalesced into a later one
/// counts until the later one is there.
fn fan_out(plan: &Plan, server: &mut Server, fleet: &Fleet, mode: &str, seq: &mut u64) -> anyhow::Result<FanOut> {
    let n = fleet.len();
    let bound = Duration::from_secs(60);
    let mut shared = Vec::new();
    let mut single = Vec::new();
    // Sidecars of the own puts, spread over the fleet.
    let pick = |k: usize| (k * 7919) % n;
    if mode == "watch" {
        for _ in 0..plan.puts {
            *seq += 1;
            let s = *seq;
            shared.push((s, server.put(SHARED_KEY, &value(s, VALUE))?));
            fleet.wait_all("a shared put in every sidecar", bound, |x| x.json.seen_at_or_after(s).is_some())?;
            std::thread::sleep(Duration::from_millis(20));
        }
        for k in 0..plan.puts {
            *seq += 1;
            let (s, j) = (*seq, pick(k));
            single.push((s, j, server.put(&own_key(j), &value(s, VALUE))?));
            let sc = &fleet.sidecars[j];
            fleet.wait_all("an own put in its sidecar", bound, |_| sc.env.seen_at_or_after(s).is_some())?;
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        for k in 0..plan.puts {
            *seq += 1;
            let s = *seq;
            shared.push((s, server.put(SHARED_KEY, &value(s, VALUE))?));
            std::thread::sleep(Duration::from_millis(100));
            *seq += 1;
            let (s, j) = (*seq, pick(k));
            single.push((s, j, server.put(&own_key(j), &value(s, VALUE))?));
            std::thread::sleep(Duration::from_millis(100));
        }
        let last = shared.last().map(|x| x.0).unwrap_or(0);
        fleet.wait_all("the last shared put in every sidecar", bound, |x| x.json.seen_at_or_after(last).is_some())?;
        for &(s, j, _) in &single {
            let sc = &fleet.sidecars[j];
            fleet.wait_all("each own put in its sidecar", bound, |_| sc.env.seen_at_or_after(s).is_some())?;
        }
    }
    let mut f = FanOut { puts: plan.puts, ..FanOut::default() };
    for (s, ack) in shared {
        let times: Vec<Instant> = fleet.sidecars.iter().filter_map(|x| x.json.seen_at_or_after(s)).collect();
        if times.len() == n {
            // A sighting before the acknowledgement (the watch raced the put's reply) counts as zero.
            f.all.extend(times.iter().max().map(|t| t.saturating_duration_since(ack)));
            f.first.extend(times.iter().min().map(|t| t.saturating_duration_since(ack)));
        }
    }
    for (s, j, ack) in single {
        f.single.extend(fleet.sidecars[j].env.seen_at_or_after(s).map(|t| t.saturating_duration_since(ack)));
    }
    f.all.sort();
    f.first.sort();
    f.single.sort();
    Ok(f)
}

/// The server before the fleet started: its RSS, and the CPU it uses by itself (etcd's heartbeats).
struct Alone {
    rss: u64,
    cpu_per_s: f64,
}

/// Measures a window of `length`: the server's CPU, RSS, connections and requests or watchers, and
/// each sidecar's CPU and RSS. With `rate` > 0 the shared key changes `rate` times a second (those
/// writes are the benchmark's and are not counted as the fleet's requests).
#[allow(clippy::too_many_arguments)]
fn window(
    server: &mut Server,
    fleet: &Fleet,
    what: &str,
    length: Duration,
    rate: u64,
    seq: &mut u64,
    own_connections: usize,
    alone: &Alone,
) -> anyhow::Result<Window> {
    let pid = server.pid().ok_or_else(|| anyhow::anyhow!("the server is not running"))?;
    let c0 = server.counters()?;
    let cpu0 = procstat::cpu(pid);
    let costs0 = fleet.costs();
    let start = Instant::now();
    let mut changes = 0;
    if rate == 0 {
        std::thread::sleep(length);
    } else {
        let total = length.as_secs() * rate;
        for k in 1..=total {
            *seq += 1;
            server.put(SHARED_KEY, &value(*seq, VALUE))?;
            changes += 1;
            crate::scenarios::pace(start, k, rate);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu1 = procstat::cpu(pid);
    let costs1 = fleet.costs();
    let c1 = server.counters()?;
    let n = fleet.len().max(1) as f64;
    let cpu: Vec<f64> = costs0.iter().zip(&costs1).map(|(a, b)| b.cpu.saturating_sub(a.cpu).as_secs_f64()).collect();
    Ok(Window {
        what: what.into(),
        seconds,
        changes,
        server_cpu: cpu1.saturating_sub(cpu0),
        server_cpu_alone: Duration::from_secs_f64(alone.cpu_per_s * seconds),
        server_rss: procstat::rss(pid),
        server_rss_before: alone.rss,
        connections: procstat::accepted_on(server.port()).len().saturating_sub(own_connections),
        max_connections_per_sidecar: fleet.max_connections(server.port()),
        requests: c1.requests - c0.requests - if server.puts_are_requests() { changes as f64 } else { 0.0 },
        watchers: c1.watchers,
        watch_streams: c1.watch_streams,
        sidecar_cpu_mean: cpu.iter().sum::<f64>() / n,
        sidecar_cpu_max: cpu.iter().cloned().fold(0.0, f64::max),
        sidecar_rss_mean: costs1.iter().map(|c| c.rss as f64).sum::<f64>() / n,
        sidecar_rss_max: costs1.iter().map(|c| c.rss).max().unwrap_or(0),
    })
}

/// The server's established connections, sampled every 50 ms on a thread of its own (one read of the
/// kernel's TCP tables each): when each new one first appeared.
struct ConnectionSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Instant>>,
}

impl ConnectionSampler {
    fn start(port: u16) -> ConnectionSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut known: HashSet<u16> = procstat::accepted_on(port).into_iter().collect();
            let mut new = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let now: HashSet<u16> = procstat::accepted_on(port).into_iter().collect();
                let at = Instant::now();
                new.extend(now.difference(&known).map(|_| at));
                known = now;
            }
            new
        });
        ConnectionSampler { stop, thread }
    }

    fn finish(self) -> Vec<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The most events within any one second.
fn busiest_second(mut events: Vec<Instant>) -> usize {
    events.sort();
    let mut best = 0;
    let mut from = 0;
    for to in 0..events.len() {
        while events[to] - events[from] >= Duration::from_secs(1) {
            from += 1;
        }
        best = best.max(to - from + 1);
    }
    best
}

/// Stops the server for `plan.outage`, starts it again, writes a new shared value at once, and follows
/// the fleet's return: each sidecar's fresh render, the connections and (Consul) requests per second.
fn storm(plan: &Plan, server: &mut Server, fleet: &Fleet, seq: &mut u64) -> anyhow::Result<Storm> {
    let port = server.port();
    server.stop()?;
    let stopped = Instant::now();
    std::thread::sleep(plan.outage);
    let sampler = ConnectionSampler::start(port);
    server.start()?;
    let up = Instant::now();
    let outage = up - stopped;
    *seq += 1;
    let s = *seq;
    server.put(SHARED_KEY, &value(s, VALUE))?;
    let bound = RETRY_MAX + Duration::from_secs(30);
    // Consul's request counter, every 100 ms while the fleet comes back.
    let mut requests: Vec<(Instant, f64)> = Vec::new();
    loop {
        if let Server::Consul(_) = server {
            requests.push((Instant::now(), server.counters()?.requests));
        }
        if fleet.sidecars.iter().all(|x| x.json.seen_at_or_after(s).is_some()) || up.elapsed() > bound {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // One more second of samples: what follows the last return.
    std::thread::sleep(Duration::from_secs(1));
    if let Server::Consul(_) = server {
        requests.push((Instant::now(), server.counters()?.requests));
    }
    let connections = sampler.finish();
    let mut back: Vec<Duration> = fleet
        .sidecars
        .iter()
        .filter_map(|x| x.json.seen_at_or_after(s))
        .map(|t| t.saturating_duration_since(up))
        .collect();
    back.sort();
    let missing = fleet.len() - back.len();
    let connections_first_s =
        connections.iter().filter(|t| t.saturating_duration_since(up) < Duration::from_secs(1)).count();
    let peak_requests_per_s = (!requests.is_empty()).then(|| {
        let mut best = 0.0f64;
        for (i, (t, r)) in requests.iter().enumerate() {
            // The first sample at least a second later: the requests of that second (or a little more).
            if let Some((t2, r2)) = requests[i..].iter().find(|(t2, _)| *t2 - *t >= Duration::from_secs(1)) {
                best = best.max((r2 - r) / (*t2 - *t).as_secs_f64());
            }
        }
        best
    });
    Ok(Storm {
        outage,
        back,
        missing,
        peak_connections_per_s: busiest_second(connections),
        connections_first_s,
        peak_requests_per_s,
        bound: RETRY_MAX + Duration::from_secs(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvsync_tests::consul_server::ConsulServer;

    #[test]
    fn the_busiest_second_counts_events_within_one_second() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 3 within [100, 1099], then 4 within [2000, 2999].
        let events = vec![at(100), at(600), at(1099), at(2000), at(2100), at(2200), at(2999), at(3000)];
        assert_eq!(busiest_second(events), 4);
        assert_eq!(busiest_second(Vec::new()), 0);
    }

    #[tokio::test]
    async fn a_stopped_consul_server_comes_back_on_its_port_with_its_data_and_indexes() {
        let s = ConsulServer::start().await.unwrap();
        let addr = s.addr();
        s.put("shared/k", "one");
        s.put("shared/k", "two");
        let before = s.prefix_index("shared/");
        let data = s.snapshot();
        drop(s);
        let mut again = None;
        for _ in 0..200 {
            // The old listener closes on the runtime's threads: retry briefly.
            match ConsulServer::start_on(addr, data.clone()).await {
                Ok(s) => {
                    again = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let s = again.expect("the port was not free again within 2 s");
        assert_eq!(s.get("shared/k").and_then(|e| e.value), Some(bytes::Bytes::from("two")));
        assert_eq!(s.prefix_index("shared/"), before);
        s.put("shared/k", "three");
        assert!(s.prefix_index("shared/") > before, "a write after the restart must take a higher index");
    }
}
