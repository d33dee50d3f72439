//! Fault soak through the real binary: one kvsync watching a real etcd and the Consul test server,
//! each behind its own fault proxy, rendering four outputs (etcd json, Consul json, Consul `files`,
//! a template combining both), while two writers change keys the whole time and a schedule of faults
//! plays: etcd killed and restarted, etcd compaction, Consul 500 and 429 storms, Consul index resets,
//! hung Consul requests, server-side connection resets, stalls and resets through the proxies.
//!
//! At the end (faults stopped, a bounded settle period) every output must equal the rendering of
//! the final state of its backend, computed here from what the writers wrote: no change is lost for
//! good. RSS must not grow beyond a small bound after the first third of the run.
//!
//! About 60 s by default; `KVSYNC_SOAK_SECS=600` for a longer run. A summary of the faults played
//! and the writes made is printed (run with `--nocapture` to see it).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvsync_etcd_grpc::{Client, ConnectOptions};
use kvsync_tests::consul_server::ConsulServer;
use kvsync_tests::etcd_server::{EtcdServer, TestClient};
use kvsync_tests::fault_proxy::{FaultProxy, ProxyMode};
use kvsync_tests::kvsync::Daemon;

/// The keys both writers change: flat ones and a nested group (json nests `g/a0` as `{"g":{"a0":..}}`).
const KEYS: [&str; 14] = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "g/a0", "g/a1", "g/a2", "g/a3"];
const PREFIX: &str = "soak/";
/// How long the outputs may take to converge once the faults stop.
const SETTLE: Duration = Duration::from_secs(60);
/// Allowed RSS growth after the first third of the run.
const RSS_GROWTH_KIB: u64 = 16 * 1024;

type Model = BTreeMap<String, String>;

fn soak_duration() -> Duration {
    let secs = std::env::var("KVSYNC_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    Duration::from_secs(secs)
}

fn rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One write: a put of a fresh value (most of the time) or a delete.
fn next_op(rng: &mut fastrand::Rng, seq: u64) -> (&'static str, Option<String>) {
    let key = KEYS[rng.usize(..KEYS.len())];
    let value = if rng.u8(..100) < 15 { None } else { Some(format!("v{seq}")) };
    (key, value)
}

/// Writes to etcd until `stop`, retrying each operation until etcd acknowledges it (etcd is killed
/// from time to time), so that the model holds exactly what etcd holds. Writes go straight to etcd,
/// not through the proxy kvsync uses.
fn etcd_writer(endpoint: &str, stop: &AtomicBool, model: &Mutex<Model>, writes: &AtomicUsize) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let connect = || {
        rt.block_on(async {
            let opts = ConnectOptions { connect_timeout: Duration::from_secs(1), ..ConnectOptions::default() };
            Client::connect(endpoint, &opts).await.ok().map(|client| TestClient { client })
        })
    };
    let mut client = connect();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let (key, value) = next_op(&mut rng, seq);
        let full = format!("{PREFIX}{key}");
        loop {
            let done = match &client {
                Some(c) => match &value {
                    Some(v) => rt.block_on(c.put(&full, v.clone())).is_ok(),
                    None => rt.block_on(c.delete(&full)).is_ok(),
                },
                None => false,
            };
            if done {
                break;
            }
            // Not acknowledged: etcd is down (or just restarted). The same operation is retried, so
            // whether or not the failed attempt was applied, the end state is the one modelled.
            std::thread::sleep(Duration::from_millis(100));
            client = connect();
        }
        let mut m = model.lock().unwrap();
        match value {
            Some(v) => m.insert(key.to_string(), v),
            None => m.remove(key),
        };
        writes.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(rng.u64(5..40)));
    }
}

/// Writes to the Consul test server (in process: writes never fail) until `stop`.
fn consul_writer(consul: &ConsulServer, stop: &AtomicBool, model: &Mutex<Model>, writes: &AtomicUsize) {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let (key, value) = next_op(&mut rng, seq);
        let full = format!("{PREFIX}{key}");
        let mut m = model.lock().unwrap();
        match value {
            Some(v) => {
                consul.put(&full, v.clone());
                m.insert(key.to_string(), v);
            }
            None => {
                consul.delete(&full);
                m.remove(key);
            }
        }
        drop(m);
        writes.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(rng.u64(5..40)));
    }
}

/// The json output of a model: nested at `/`, values as strings.
fn expected_json(m: &Model) -> serde_json::Value {
    let mut root = serde_json::Map::new();
    for (k, v) in m {
        let mut node = &mut root;
        let mut parts: Vec<&str> = k.split('/').collect();
        let leaf = parts.pop().unwrap();
        for p in parts {
            node =
                node.entry(p).or_insert_with(|| serde_json::Value::Object(Default::default())).as_object_mut().unwrap();
        }
        node.insert(leaf.to_string(), serde_json::Value::String(v.clone()));
    }
    serde_json::Value::Object(root)
}

/// The template output of both models (see the template in the test).
fn expected_template(e: &Model, c: &Model) -> String {
    let mut s = String::new();
    for (k, v) in e {
        s += &format!("e {k}={v}\n");
    }
    for (k, v) in c {
        s += &format!("c {k}={v}\n");
    }
    s
}

/// The visible content of a `files` destination: every regular file reached through the top-level
/// entries (which link through `..data`), by relative path.
fn files_tree(root: &Path) -> Model {
    fn walk(dir: &Path, rel: &str, out: &mut Model) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("..") {
                continue; // the generation layout, not keys
            }
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let p = e.path();
            if p.is_dir() {
                walk(&p, &r, out);
            } else if let Ok(v) = fs::read_to_string(&p) {
                out.insert(r, v);
            }
        }
    }
    let mut out = Model::new();
    walk(root, "", &mut out);
    out
}

fn read_json(p: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&fs::read_to_string(p).ok()?).ok()
}

#[test]
fn outputs_converge_after_a_schedule_of_faults() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut etcd = rt.block_on(EtcdServer::start()).unwrap();
    let consul = rt.block_on(ConsulServer::start()).unwrap();
    let etcd_proxy = rt.block_on(FaultProxy::start(([127, 0, 0, 1], etcd.client_port).into())).unwrap();
    let consul_proxy = rt.block_on(FaultProxy::start(consul.addr())).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let template = d.join("both.j2");
    fs::write(
        &template,
        "{% for k, v in e.kv|items %}e {{ k }}={{ v }}\n{% endfor %}{% for k, v in c.kv|items %}c {{ k }}={{ v }}\n{% endfor %}",
    )
    .unwrap();
    let cfg = d.join("k.yaml");
    fs::write(
        &cfg,
        format!(
            "sources:\n\
             \x20 - {{ name: e, type: etcd, endpoints: [{etcd}] }}\n\
             \x20 - {{ name: c, type: consul, address: {consul}, wait: 2s }}\n\
             http: {{ listen: \"\" }}\nretry: {{ initial: 50ms, max: 1s }}\noutputs:\n\
             \x20 - {{ name: ej, source: e, prefix: {PREFIX}, format: json, destination: {d}/e.json }}\n\
             \x20 - {{ name: cj, source: c, prefix: {PREFIX}, format: json, destination: {d}/c.json }}\n\
             \x20 - {{ name: cf, source: c, prefix: {PREFIX}, format: files, destination: {d}/cfiles }}\n\
             \x20 - name: both\n\
             \x20   inputs:\n\
             \x20     - {{ name: e, source: e, prefix: {PREFIX} }}\n\
             \x20     - {{ name: c, source: c, prefix: {PREFIX} }}\n\
             \x20   format: template\n\
             \x20   template: {tpl}\n\
             \x20   destination: {d}/both.txt\n",
            etcd = etcd_proxy.url(),
            consul = consul_proxy.url(),
            d = d.display(),
            tpl = template.display(),
        ),
    )
    .unwrap();

    // Both backends hold every key before kvsync starts, so the first render is complete.
    let (e_model, c_model) = (Mutex::new(Model::new()), Mutex::new(Model::new()));
    {
        let client = rt.block_on(etcd.client()).unwrap();
        for k in KEYS {
            rt.block_on(client.put(&format!("{PREFIX}{k}"), "init")).unwrap();
            consul.put(&format!("{PREFIX}{k}"), "init");
            e_model.lock().unwrap().insert(k.to_string(), "init".into());
            c_model.lock().unwrap().insert(k.to_string(), "init".into());
        }
    }
    let daemon = Daemon::start(&["run", "--config", &cfg.display().to_string()]);
    let pid = daemon.pid();
    kvsync_tests::wait::until(Duration::from_secs(30), "the first render", || {
        d.join("both.txt").exists() && d.join("e.json").exists() && d.join("cfiles").exists()
    });

    let total = soak_duration();
    let stop = AtomicBool::new(false);
    let (e_writes, c_writes) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rss_baseline = 0u64;
    let mut rss_later_max = 0u64;
    let endpoint = etcd.endpoint();

    std::thread::scope(|s| {
        s.spawn(|| etcd_writer(&endpoint, &stop, &e_model, &e_writes));
        s.spawn(|| consul_writer(&consul, &stop, &c_model, &c_writes));
        let start = Instant::now();
        let mut step = 0usize;
        while start.elapsed() < total {
            // One fault every ~2.5 s, in a fixed rotation so that every kind plays in a 60 s run.
            let name = match step % 10 {
                0 => {
                    rt.block_on(etcd.kill());
                    std::thread::sleep(Duration::from_millis(1500));
                    rt.block_on(etcd.restart()).unwrap();
                    "etcd killed (SIGKILL) and restarted"
                }
                1 => {
                    consul.fail_for(500, Duration::from_secs(2));
                    "Consul 500 storm (2 s)"
                }
                2 => {
                    etcd_proxy.set_mode(ProxyMode::Stall);
                    std::thread::sleep(Duration::from_secs(2));
                    etcd_proxy.set_mode(ProxyMode::Pass);
                    "etcd connection stalled (2 s)"
                }
                3 => {
                    let client = rt.block_on(etcd.client()).unwrap();
                    let rev = rt.block_on(client.revision()).unwrap();
                    rt.block_on(client.compact(rev)).unwrap();
                    "etcd compaction to the current revision"
                }
                4 => {
                    consul.fail_for(429, Duration::from_secs(2));
                    "Consul 429 storm (2 s)"
                }
                5 => {
                    consul.force_index_reset();
                    "Consul index reset"
                }
                6 => {
                    consul_proxy.set_mode(ProxyMode::Stall);
                    std::thread::sleep(Duration::from_secs(2));
                    consul_proxy.set_mode(ProxyMode::Pass);
                    "Consul connection stalled (2 s)"
                }
                7 => {
                    etcd_proxy.reset_all();
                    consul_proxy.reset_all();
                    "connections reset (RST) through both proxies"
                }
                8 => {
                    consul.hang_next(3);
                    "Consul requests hung (next 3)"
                }
                _ => {
                    consul.reset_connections();
                    etcd_proxy.set_mode(ProxyMode::Drop);
                    std::thread::sleep(Duration::from_millis(500));
                    etcd_proxy.set_mode(ProxyMode::Pass);
                    "Consul server-side resets; new etcd connections dropped (0.5 s)"
                }
            };
            *faults.entry(name).or_default() += 1;
            step += 1;
            std::thread::sleep(Duration::from_millis(2500));
            let rss = rss_kib(pid);
            if start.elapsed() < total / 3 {
                rss_baseline = rss_baseline.max(rss);
            } else {
                rss_later_max = rss_later_max.max(rss);
            }
            assert!(!daemon.has_exited(), "kvsync exited during the soak; log:\n{}", daemon.log());
        }
        stop.store(true, Ordering::SeqCst);
    });

    // Faults off; everything must converge to the final state of each backend.
    consul.clear_faults();
    etcd_proxy.set_mode(ProxyMode::Pass);
    consul_proxy.set_mode(ProxyMode::Pass);
    let (e_final, c_final) = (e_model.into_inner().unwrap(), c_model.into_inner().unwrap());
    let (ej, cj, tpl) = (expected_json(&e_final), expected_json(&c_final), expected_template(&e_final, &c_final));
    let settle_start = Instant::now();
    let converged = || {
        read_json(&d.join("e.json")).as_ref() == Some(&ej)
            && read_json(&d.join("c.json")).as_ref() == Some(&cj)
            && files_tree(&d.join("cfiles")) == c_final
            && fs::read_to_string(d.join("both.txt")).ok().as_deref() == Some(tpl.as_str())
    };
    while !converged() {
        if settle_start.elapsed() > SETTLE {
            panic!(
                "outputs did not converge within {SETTLE:?} after the faults stopped\n\
                 e.json: {:?}\nexpected: {ej}\nc.json: {:?}\nexpected: {cj}\ncfiles: {:?}\nexpected: {c_final:?}\n\
                 both.txt: {:?}\nexpected: {tpl:?}\nlog tail:\n{}",
                fs::read_to_string(d.join("e.json")),
                fs::read_to_string(d.join("c.json")),
                files_tree(&d.join("cfiles")),
                fs::read_to_string(d.join("both.txt")),
                tail(&daemon.log(), 60)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let settle = settle_start.elapsed();

    // Still live after all that: one more change on each backend arrives.
    let client = rt.block_on(etcd.client()).unwrap();
    rt.block_on(client.put(&format!("{PREFIX}k0"), "after")).unwrap();
    consul.put(&format!("{PREFIX}k0"), "after");
    kvsync_tests::wait::until(Duration::from_secs(30), "a change after the soak", || {
        let t = fs::read_to_string(d.join("both.txt")).unwrap_or_default();
        t.contains("e k0=after\n") && t.contains("c k0=after\n")
    });

    eprintln!("fault soak: {total:?}, converged {settle:?} after the faults stopped");
    eprintln!(
        "writes acknowledged: etcd {}, Consul {}",
        e_writes.load(Ordering::SeqCst),
        c_writes.load(Ordering::SeqCst)
    );
    for (name, n) in &faults {
        eprintln!("  {n:>3} x {name}");
    }
    eprintln!("RSS: {rss_baseline} KiB (max over the first third), {rss_later_max} KiB (max after)");
    assert!(faults.len() == 10, "every kind of fault played (run at least 25 s): {faults:?}");
    assert!(
        rss_later_max <= rss_baseline + RSS_GROWTH_KIB,
        "RSS grew from {rss_baseline} KiB to {rss_later_max} KiB (bound: +{RSS_GROWTH_KIB} KiB)"
    );
    assert!(!daemon.has_exited());
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
