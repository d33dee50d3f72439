//! The render pass: which outputs are due (their inputs changed and their quiescence is over), render
//! them, commit them, and report what was written for the actions.

use std::sync::Arc;

use kvsync_watch::{Subscription, View};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::actions::PassReport;
use crate::config::Config;
use crate::daemon::{DaemonError, RunMode, Session};
use crate::guard::{Gate, Verdict};
use crate::output::{Outcome, OutputRuntime, OutputStats};
use crate::state::{OutputState, Shared};

/// Changes not yet rendered for one output: when the first and the last arrived.
#[derive(Debug, Clone, Copy)]
struct Dirty {
    first: Instant,
    last: Instant,
}

/// One output at work: what it reads, how it renders, what it counts, what is not rendered yet.
struct OutputSlot {
    subs: Vec<Subscription>,
    runtime: OutputRuntime,
    stats: Arc<OutputStats>,
    dirty: Option<Dirty>,
    /// Its guards, and whether it is held.
    gate: Gate,
}

impl OutputSlot {
    fn ready(&self) -> bool {
        self.subs.iter().all(|s| s.latest().is_some())
    }

    fn touch(&mut self, now: Instant) {
        self.dirty = Some(match self.dirty {
            Some(d) => Dirty { first: d.first, last: now },
            None => Dirty { first: now, last: now },
        });
    }
}

/// What is due now: the outputs to render, else when the next one will be.
pub struct Due {
    pub outputs: Vec<usize>,
    pub next: Option<Instant>,
}

/// Every output of one config, and the passes that render them.
pub struct RenderPass {
    slots: Vec<OutputSlot>,
}

impl RenderPass {
    /// Subscribes every output of `cfg` to its inputs (sources `session.watches` runs) and registers
    /// it in `shared` for reporting. Outputs whose inputs already hold a view (sources kept across a
    /// reload) are due at once: unchanged bytes are not rewritten.
    pub fn new(cfg: &Config, mode: RunMode, session: &Session, shared: &mut Shared) -> Result<RenderPass, DaemonError> {
        let mut slots = Vec::with_capacity(cfg.outputs.len());
        let now = Instant::now();
        for o in &cfg.outputs {
            let mut subs = Vec::new();
            for i in &o.inputs {
                subs.push(session.watches.subscription(&i.source, &i.prefix).map_err(DaemonError::Setup)?);
            }
            let stats: Arc<OutputStats> = Arc::default();
            let gate = crate::admin::gate(o);
            shared.outputs.push(OutputState {
                name: o.name.clone(),
                destination: o.destination.display().to_string(),
                stats: Arc::clone(&stats),
                hold: Arc::clone(&gate.state),
                kept: crate::keep::KeepSpec::of(o, o.keep),
            });
            let dirty = subs.iter().all(|s| s.latest().is_some()).then_some(Dirty { first: now, last: now });
            let runtime = match mode {
                RunMode::Run => OutputRuntime::new(),
                RunMode::Once { .. } => OutputRuntime::single_pass(),
            };
            slots.push(OutputSlot { subs, runtime, stats, dirty, gate });
        }
        Ok(RenderPass { slots })
    }

    /// Carries out an admin request (`kvsync release`, `kvsync rollback`); an output it releases is
    /// due at once.
    pub async fn admin(
        &mut self,
        cfg: &Config,
        action: crate::admin::Action,
        reach: &crate::actions::Reach<'_>,
        passes: &mut u64,
    ) -> crate::admin::Answer {
        let mut now_due = vec![false; self.slots.len()];
        let answer = {
            let mut slots: Vec<crate::admin::Slot> = self
                .slots
                .iter_mut()
                .zip(&mut now_due)
                .map(|(s, due)| crate::admin::Slot { gate: &mut s.gate, runtime: &mut s.runtime, dirty: due })
                .collect();
            crate::admin::handle(cfg, &mut slots, action, reach, passes).await
        };
        let now = Instant::now();
        for (slot, due) in self.slots.iter_mut().zip(now_due) {
            if due {
                slot.dirty = Some(Dirty { first: now, last: now });
            }
        }
        answer
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Notes the outputs whose inputs received a new view since the last look.
    pub fn note_changes(&mut self, now: Instant) {
        for slot in &mut self.slots {
            let mut changed = false;
            for s in &mut slot.subs {
                if s.has_changed() {
                    s.mark_seen();
                    changed = true;
                }
            }
            if changed {
                slot.touch(now);
            }
        }
    }

    /// Marks every output to be rendered again (a reload that changed how outputs render).
    pub fn touch_all(&mut self, now: Instant) {
        for slot in &mut self.slots {
            slot.dirty = Some(Dirty { first: now, last: now });
        }
    }

    /// The outputs due at `now` (changed, every input present, quiescence over), else when the next
    /// quiescence period ends.
    pub fn due(&self, cfg: &Config, now: Instant) -> Due {
        let mut next: Option<Instant> = None;
        let mut outputs = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(d) = slot.dirty else { continue };
            if !slot.ready() {
                continue;
            }
            let w = cfg.outputs[i].wait;
            let at = if w.min.is_zero() { now } else { (d.last + w.min).min(d.first + w.max) };
            if at <= now {
                outputs.push(i);
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        Due { outputs, next }
    }

    /// Whether every output has rendered successfully since start.
    pub fn all_rendered(&self) -> bool {
        self.slots.iter().all(|s| s.runtime.rendered)
    }

    /// "output `app` needs source `main` prefix `config/app/`" for every input without a first view.
    pub fn pending_inputs(&self, cfg: &Config) -> Vec<String> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            for (input, sub) in cfg.outputs[i].inputs.iter().zip(&slot.subs) {
                if sub.latest().is_none() {
                    out.push(format!(
                        "output `{}` needs source `{}` prefix `{}`",
                        cfg.outputs[i].name, input.source, input.prefix
                    ));
                }
            }
        }
        out
    }

    /// "output `app` has not rendered successfully" for every output that has not.
    pub fn not_rendered(&self, cfg: &Config) -> Vec<String> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.runtime.rendered)
            .map(|(i, _)| format!("output `{}` has not rendered successfully", cfg.outputs[i].name))
            .collect()
    }

    /// Renders the outputs `due` and commits them; returns what was written and the first error, if any.
    pub fn render(&mut self, cfg: &Config, due: &[usize], session: &mut Session) -> (PassReport, Result<(), String>) {
        let mut report = PassReport::default();
        let mut first_error = Ok(());
        tokio::task::block_in_place(|| {
            for &i in due {
                let slot = &mut self.slots[i];
                let o = &cfg.outputs[i];
                slot.dirty = None;
                let views: Vec<View> = slot.subs.iter().filter_map(|s| s.latest()).collect();
                let first = !session.rendered.contains(&o.name);
                // Guards: a render that breaks one (or of an output rolled back) is held.
                let keys = if slot.gate.active() {
                    let keys = crate::baseline::keys_of(o, &views);
                    match slot.gate.admit(&keys, || crate::baseline::on_disk(o)) {
                        Verdict::Hold { message, first_time, breach } => {
                            if first_time {
                                warn!(output = %o.name, guard = breach.guard.as_str(), "{message}");
                            } else {
                                debug!(output = %o.name, "output `{}`: still held ({})", o.name, breach.figures);
                            }
                            // The last good version on disk serves meanwhile (`exec` starts the child on it).
                            if o.destination.exists() {
                                slot.runtime.rendered = true;
                            }
                            if first_error.is_ok() {
                                first_error = Err(message);
                            }
                            continue;
                        }
                        Verdict::Released => {
                            info!(output = %o.name, "output `{}`: released by the operator; publishing the held render", o.name)
                        }
                        Verdict::Go => {}
                    }
                    Some(keys)
                } else {
                    None
                };
                let result = slot.runtime.render_commit(o, &views, &cfg.limits, &slot.stats);
                if let (Ok(outcome), Some(keys)) = (&result, keys) {
                    if o.guard.is_some() && *outcome == Outcome::Written && crate::baseline::needs_record(&o.format) {
                        if let Err(e) = crate::baseline::write_record(&o.destination, &keys) {
                            warn!(output = %o.name, "output `{}`: cannot save the record of its keys: {e}", o.name);
                        }
                    }
                    slot.gate.published(keys);
                }
                if result == Ok(Outcome::Written) && o.keep > 0 {
                    let p = crate::keep::Published::now(session.passes + 1);
                    if let Err(e) = crate::keep::KeepSpec::of(o, o.keep).published(p) {
                        warn!(output = %o.name, "output `{}`: cannot record the version published: {e}", o.name);
                    }
                }
                match result {
                    Ok(outcome) if views.iter().any(|v| v.stale) => {
                        let stale: Vec<&str> = views.iter().filter(|v| v.stale).map(|v| &*v.source).collect();
                        warn!(output = %o.name, sources = ?stale, ?outcome,
                            "rendered from the last-known-good cache: the backend has not answered since start");
                        session.rendered.insert(o.name.clone());
                        if outcome == Outcome::Written {
                            report.written.push(i);
                            if first {
                                report.first.push(i);
                            }
                        }
                    }
                    Ok(Outcome::Written) => {
                        let latency = slot.runtime.last_latency.unwrap_or_default();
                        info!(output = %o.name, destination = %o.destination.display(), latency_us = latency.as_micros() as u64, "rendered and written");
                        report.written.push(i);
                        if first {
                            report.first.push(i);
                        }
                        session.rendered.insert(o.name.clone());
                    }
                    Ok(Outcome::Unchanged) => {
                        session.rendered.insert(o.name.clone());
                        info!(output = %o.name, "rendered; content unchanged, not rewritten");
                    }
                    Err(e) => {
                        let msg = format!("output `{}`: {e}; the previous {} stays", o.name, o.destination.display());
                        // The sentence for people, the fields for log queries.
                        error!(output = %o.name, destination = %o.destination.display(), error = %e, "{msg}");
                        if first_error.is_ok() {
                            first_error = Err(msg);
                        }
                    }
                }
            }
        });
        if !report.written.is_empty() {
            session.passes += 1;
            report.pass = session.passes;
        }
        (report, first_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvsync_watch::source::BoxFuture;
    use kvsync_watch::{Change, EngineBuilder, Source, SourceError, Update, UpdateSink};
    use std::path::Path;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    /// A source that sends what the test hands it.
    struct Scripted(mpsc::UnboundedReceiver<Update>);

    impl Source for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }
        fn run(
            mut self: Box<Self>,
            _prefixes: Vec<String>,
            sink: UpdateSink,
            cancel: CancellationToken,
        ) -> BoxFuture<Result<(), SourceError>> {
            Box::pin(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        u = self.0.recv() => match u {
                            Some(u) => { let _ = sink.send(u).await; }
                            None => return Ok(()),
                        },
                    }
                }
            })
        }
    }

    fn put(version: u64, value: &str) -> Update {
        Update {
            prefix: "app/".into(),
            version,
            change: Change::Delta(vec![("app/k".into(), Some(bytes::Bytes::from(value.to_string())))]),
        }
    }

    /// Waits (in paused time, without moving the clock) until the source's task has published.
    async fn published(pass: &RenderPass) {
        for _ in 0..1000 {
            if pass.slots[0].subs[0].has_changed() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the change was not published");
    }

    /// wait.min: rendered once the changes have stopped for `min`; wait.max: at the latest `max` after
    /// the first change, however often changes keep coming.
    #[tokio::test(start_paused = true)]
    async fn quiescence_waits_min_after_the_last_change_and_at_most_max() {
        let cfg = Config::parse(
            Path::new("/etc/kvsync/k.yaml"),
            "sources:\n  - name: main\n    type: file\n    path: /tmp\noutputs:\n  - name: a\n    source: main\n    \
             prefix: app/\n    format: json\n    destination: /tmp/a.json\n    wait: {min: 1s, max: 3s}\n",
        )
        .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut b = EngineBuilder::new();
        b.add_source("main", Box::new(Scripted(rx)), Arc::default());
        let sub = b.subscribe("main", "app/").unwrap();
        let cancel = CancellationToken::new();
        let engine = b.start(cancel.clone());
        let mut pass = RenderPass {
            slots: vec![OutputSlot {
                subs: vec![sub],
                runtime: OutputRuntime::new(),
                stats: Arc::default(),
                dirty: None,
                gate: Gate::new("a", None),
            }],
        };
        let t0 = Instant::now();
        tx.send(put(1, "1")).unwrap();
        published(&pass).await;
        pass.note_changes(Instant::now());
        let due = pass.due(&cfg, Instant::now());
        assert!(due.outputs.is_empty());
        assert_eq!(due.next, Some(t0 + Duration::from_secs(1)), "min after the change");

        // A change every 600 ms keeps pushing the render back by min...
        for (i, at) in [600u64, 1200, 1800, 2400].into_iter().enumerate() {
            tokio::time::advance(Duration::from_millis(600)).await;
            assert!(pass.due(&cfg, Instant::now()).outputs.is_empty(), "not due at {at} ms");
            tx.send(put(2 + i as u64, &format!("v{i}"))).unwrap();
            published(&pass).await;
            pass.note_changes(Instant::now());
            let next = pass.due(&cfg, Instant::now()).next.unwrap();
            let want = (t0 + Duration::from_millis(at + 1000)).min(t0 + Duration::from_secs(3));
            assert_eq!(next, want, "after the change at {at} ms");
        }
        // ...but never beyond max after the first one.
        tokio::time::advance(Duration::from_millis(599)).await;
        assert!(pass.due(&cfg, Instant::now()).outputs.is_empty(), "not due before max");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(pass.due(&cfg, Instant::now()).outputs, vec![0], "due at max");

        // Rendering clears it; one quiet change is due exactly min later.
        pass.slots[0].dirty = None;
        let t1 = Instant::now();
        tx.send(put(10, "quiet")).unwrap();
        published(&pass).await;
        pass.note_changes(t1);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(pass.due(&cfg, Instant::now()).outputs.is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(pass.due(&cfg, Instant::now()).outputs, vec![0]);
        cancel.cancel();
        engine.wait().await;
    }
}
