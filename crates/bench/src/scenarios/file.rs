//! The `file` source: a directory tree watched with inotify. Its reference is a bare inotify watcher
//! on the same directory inside the benchmark.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{burst, json_output, pace, scale, wait_for, write_config, Counts};
use crate::dest;
use crate::kvsync_proc::Kvsync;
use crate::measure::{value, Recorder};
use crate::procstat;
use crate::report::{BurstRow, IdleRow, LatencyRow, Reference, Report, ScaleRow};
use crate::Args;

const T: Duration = Duration::from_secs(120);

fn put(kv: &Path, key: &str, v: &[u8]) -> anyhow::Result<Instant> {
    let p = kv.join(key);
    let tmp = kv.join(format!(".{}.tmp", key.replace('/', "_")));
    fs::write(&tmp, v)?;
    fs::rename(&tmp, &p)?;
    Ok(Instant::now())
}

pub fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let c = Counts::of(args);
    if args.wants("latency") {
        eprintln!("file: latency ...");
        report.latency.push(latency(&c)?);
    }
    if args.wants("burst") {
        eprintln!("file: burst ...");
        report.burst.push(burst(&c)?);
    }
    if args.wants("scale") {
        for format in scale::FORMATS {
            eprintln!("file: scale ({format}) ...");
            report.scale.push(scale(&c, format)?);
        }
    }
    if args.wants("idle") {
        eprintln!("file: idle ...");
        report.idle.push(idle(&c)?);
    }
    Ok(())
}

fn setup(sources_dirs: &[&str]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for d in sources_dirs {
        fs::create_dir_all(dir.path().join("kv").join(d))?;
    }
    fs::create_dir_all(dir.path().join("out"))?;
    Ok(dir)
}

fn source(dir: &Path) -> String {
    format!("  - {{ name: local, type: file, path: {} }}\n", dir.join("kv").display())
}

fn latency(c: &Counts) -> anyhow::Result<LatencyRow> {
    let dir = setup(&["bench"])?;
    let kv = dir.path().join("kv");
    put(&kv, "bench/k", &value(0, 1024))?;
    let out = dir.path().join("out/app.json");
    let cfg = write_config(dir.path(), &source(dir.path()), &json_output("local", "bench/", &out))?;
    let (_kvsync, _) = Kvsync::start_rendered(&cfg, dir.path(), T)?;
    let subject = Arc::new(Recorder::default());
    let baseline = Arc::new(Recorder::default());
    let _w = dest::watch(&out, Arc::clone(&subject), false)?;
    let _r = dest::watch(&kv.join("bench/k"), Arc::clone(&baseline), false)?;
    let start = Instant::now();
    let n = c.latency_changes as u64;
    for seq in 1..=n {
        let at = put(&kv, "bench/k", &value(seq, 1024))?;
        subject.ack(seq, at);
        baseline.ack(seq, at);
        pace(start, seq, c.latency_rate_per_s);
    }
    wait_for("the last change on disk", T, || subject.has_seen(n))?;
    Ok(LatencyRow {
        mode: "file watch (inotify)".into(),
        references: vec![Reference { name: "bare inotify watcher".into(), samples: baseline.latencies() }],
        subject: subject.latencies(),
        changes: n as usize,
        versions: subject.observed(),
        target: None,
    })
}

fn burst(c: &Counts) -> anyhow::Result<BurstRow> {
    let dir = setup(&["bench"])?;
    let kv = dir.path().join("kv");
    for key in burst::keys(c) {
        put(&kv, &key, b"init")?;
    }
    let out = dir.path().join("out/app.json");
    let cfg = write_config(dir.path(), &source(dir.path()), &json_output("local", "bench/", &out))?;
    let (k, _) = Kvsync::start_rendered(&cfg, dir.path(), T)?;
    burst::measure("file", c, &k, &out, |key, v| put(&kv, key, &v))
}

fn scale(c: &Counts, format: &str) -> anyhow::Result<ScaleRow> {
    let dir = setup(&["bench"])?;
    let kv = dir.path().join("kv");
    for i in 0..c.scale_keys {
        let (key, size) = scale::key(i);
        fs::write(kv.join("bench").join(&key), vec![b'v'; size])?;
    }
    let (cfg, dest) = scale::config(dir.path(), &source(dir.path()), "local", format)?;
    let (k, synced) = Kvsync::start_rendered(&cfg, dir.path(), T)?;
    let row =
        scale::measure("file", format, c.scale_keys, &k, synced, &dest, |key, v| put(&kv, &format!("bench/{key}"), &v));
    drop(k);
    scale::keep(dir);
    row
}

fn idle(c: &Counts) -> anyhow::Result<IdleRow> {
    let dir = setup(&super::IDLE_PREFIXES)?;
    let kv = dir.path().join("kv");
    for p in super::IDLE_PREFIXES {
        put(&kv, &format!("{p}/k"), b"v")?;
    }
    let o = dir.path().join("out");
    let outputs = super::idle_outputs("local", &o);
    let cfg = write_config(dir.path(), &source(dir.path()), &outputs)?;
    let (k, _) = Kvsync::start_rendered(&cfg, dir.path(), T)?;
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = procstat::cpu(k.pid());
    std::thread::sleep(Duration::from_secs(c.idle_seconds));
    Ok(IdleRow {
        backend: "file".into(),
        mode: "watch".into(),
        seconds: c.idle_seconds,
        rss: procstat::rss(k.pid()),
        cpu: procstat::cpu(k.pid()).saturating_sub(cpu0),
        connections: 0,
        requests_per_min: None,
        requests_counted_by: "no server".into(),
        target_connections: None,
        target_requests_per_min: None,
    })
}
