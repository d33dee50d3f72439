//! The burst scenario's shared part: changes as fast as the backend takes them, then the time until
//! the final state is on disk and how many renders it took.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{wait_for, Counts};
use crate::dest;
use crate::kvsync_proc::Kvsync;
use crate::measure::{value, Recorder};
use crate::procstat;
use crate::report::BurstRow;

const T: Duration = Duration::from_secs(120);

/// The key change `seq` of a burst writes.
fn key(c: &Counts, seq: u64) -> String {
    format!("bench/k{:05}", seq as usize % c.burst_keys)
}

/// The keys a burst writes, before kvsync starts: each once, with a placeholder value.
pub fn keys(c: &Counts) -> impl Iterator<Item = String> {
    (0..c.burst_keys).map(|i| format!("bench/k{i:05}"))
}

/// Writes `c.burst_changes` changes to `c.burst_keys` keys with `put` (one after the other, each
/// after the previous one's acknowledgement; `put` returns when it was acknowledged), then waits for
/// kvsync (already rendered once into the json file `out`) to put the final state on disk.
pub fn measure(
    backend: &str,
    c: &Counts,
    k: &Kvsync,
    out: &Path,
    mut put: impl FnMut(&str, Vec<u8>) -> anyhow::Result<Instant>,
) -> anyhow::Result<BurstRow> {
    let writes_before = k.writes();
    let rec = Arc::new(Recorder::default());
    let _w = dest::watch(out, Arc::clone(&rec), true)?;
    let n = c.burst_changes as u64;
    let start = Instant::now();
    let mut last_ack = start;
    for seq in 1..=n {
        last_ack = put(&key(c, seq), value(seq, 100))?;
    }
    rec.ack(n, last_ack);
    wait_for("the final state on disk", T, || rec.has_seen(n))?;
    // Lets a render that was still in flight reach the log before counting.
    std::thread::sleep(Duration::from_millis(200));
    Ok(BurstRow {
        backend: backend.into(),
        changes: n as usize,
        keys: c.burst_keys,
        write_time: last_ack - start,
        final_after: rec.latencies().first().copied().unwrap_or_default(),
        renders: k.writes() - writes_before,
        peak_rss: procstat::peak_rss(k.pid()),
    })
}
