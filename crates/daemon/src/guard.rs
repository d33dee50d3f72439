//! Publish guards: data that is valid but wrong (an emptied prefix, a Consul restored from an old
//! snapshot, a half-finished migration) is held instead of published.
//!
//! Each output may set `guard: { min_keys, max_removed, max_changed, require }` (the top-level
//! `guard:` gives defaults, field by field). Before a render is staged, its keys are compared with
//! the last good version: the keys the output last published, or on the first render after start
//! what the destination holds (see `baseline`). A render that breaks a guard is *held*: the
//! destination stays as it is, no action fires, the output is not ready, and the hold is logged once
//! per distinct state. It resumes by itself when the data comes back within the guard, or once when
//! the operator releases it (`kvsync release OUTPUT`). A rollback holds the output the same way
//! (reason "rolled back") until it is released.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};

use crate::baseline::Baseline;

/// The keys of one render: key (relative to the output's prefix; `NAME/KEY` with `inputs:`) to value.
pub type Keys = BTreeMap<String, Bytes>;

/// `guard:` as written in YAML (an output's, or the top-level defaults).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub min_keys: Option<usize>,
    #[serde(default, deserialize_with = "share_text")]
    pub max_removed: Option<String>,
    #[serde(default, deserialize_with = "share_text")]
    pub max_changed: Option<String>,
    pub require: Option<Vec<String>>,
}

/// `max_removed: 50%` is a string in YAML, `max_removed: 20` a number: both reach validation as text.
fn share_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum T {
        S(String),
        I(u64),
        F(f64),
    }
    Ok(Option::<T>::deserialize(d)?.map(|t| match t {
        T::S(s) => s,
        T::I(i) => i.to_string(),
        T::F(f) => f.to_string(),
    }))
}

impl RawGuard {
    /// The output's own guard over the top-level defaults, field by field.
    pub fn over(own: Option<&RawGuard>, defaults: Option<&RawGuard>) -> Option<RawGuard> {
        match (own, defaults) {
            (None, None) => None,
            (Some(o), None) => Some(o.clone()),
            (None, Some(d)) => Some(d.clone()),
            (Some(o), Some(d)) => Some(RawGuard {
                min_keys: o.min_keys.or(d.min_keys),
                max_removed: o.max_removed.clone().or_else(|| d.max_removed.clone()),
                max_changed: o.max_changed.clone().or_else(|| d.max_changed.clone()),
                require: o.require.clone().or_else(|| d.require.clone()),
            }),
        }
    }

    /// Checks the values; each problem names the field and what to write instead.
    pub fn validate(&self) -> Result<GuardConfig, Vec<String>> {
        let mut problems = Vec::new();
        let mut share = |field: &str, v: &Option<String>| match v.as_deref().map(Share::parse) {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                problems.push(format!("guard.{field}: {e}"));
                None
            }
        };
        let max_removed = share("max_removed", &self.max_removed);
        let max_changed = share("max_changed", &self.max_changed);
        let require = self.require.clone().unwrap_or_default();
        for r in &require {
            if r.is_empty() || r.ends_with('/') {
                problems.push(format!(
                    "guard.require: `{r}` is not a key; name keys relative to the output's prefix, e.g. db/host"
                ));
            }
        }
        if problems.is_empty() {
            Ok(GuardConfig { min_keys: self.min_keys, max_removed, max_changed, require })
        } else {
            Err(problems)
        }
    }
}

/// A share of the last good version's keys: `50%`, or a count of keys (`20`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Share {
    Percent(f64),
    Count(usize),
}

impl Share {
    pub fn parse(s: &str) -> Result<Share, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a share; write a percentage such as 50% or a count such as 20"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("`{s}` is not between 0% and 100%"));
            }
            return Ok(Share::Percent(v));
        }
        t.parse::<usize>()
            .map(Share::Count)
            .map_err(|_| format!("`{s}` is not a share; write a percentage such as 50% or a count such as 20"))
    }

    /// Whether `n` out of `of` is over this share.
    fn exceeded(self, n: usize, of: usize) -> bool {
        match self {
            Share::Count(c) => n > c,
            Share::Percent(p) => of > 0 && (n as f64) * 100.0 > p * of as f64,
        }
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Share::Percent(p) => write!(f, "{p}%"),
            Share::Count(c) => write!(f, "{c}"),
        }
    }
}

/// A validated guard.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GuardConfig {
    /// Fewer keys than this: hold.
    pub min_keys: Option<usize>,
    /// More of the last good version's keys removed at once than this: hold.
    pub max_removed: Option<Share>,
    /// More of the last good version's values changed at once than this: hold.
    pub max_changed: Option<Share>,
    /// Keys that must exist.
    pub require: Vec<String>,
}

/// Which guard holds an output (the `guard` label of `kvsync_output_held`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardKind {
    MinKeys,
    MaxRemoved,
    MaxChanged,
    Require,
    /// Not a guard: the operator rolled the output back to a kept version.
    RolledBack,
}

impl GuardKind {
    pub const ALL: [GuardKind; 5] =
        [GuardKind::MinKeys, GuardKind::MaxRemoved, GuardKind::MaxChanged, GuardKind::Require, GuardKind::RolledBack];

    pub fn as_str(self) -> &'static str {
        match self {
            GuardKind::MinKeys => "min_keys",
            GuardKind::MaxRemoved => "max_removed",
            GuardKind::MaxChanged => "max_changed",
            GuardKind::Require => "require",
            GuardKind::RolledBack => "rolled_back",
        }
    }
}

/// A render that breaks a guard: which one, and the figures, safe to log (names keys, never values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    pub guard: GuardKind,
    /// "97 of 100 keys removed at once (max_removed 50%)"
    pub figures: String,
}

/// The first guard `new` breaks, compared with the last good version `old` (None: nothing to compare
/// with, so only `min_keys` and `require` apply).
pub fn evaluate(g: &GuardConfig, old: Option<&Baseline>, new: &Keys) -> Option<Breach> {
    let missing: Vec<&str> = g.require.iter().filter(|k| !new.contains_key(k.as_str())).map(String::as_str).collect();
    if !missing.is_empty() {
        let list = missing.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        let (noun, verb) = if missing.len() == 1 { ("key", "is") } else { ("keys", "are") };
        return Some(Breach {
            guard: GuardKind::Require,
            figures: format!("required {noun} {list} {verb} missing (require)"),
        });
    }
    if let Some(min) = g.min_keys {
        if new.len() < min {
            return Some(Breach {
                guard: GuardKind::MinKeys,
                figures: format!("{} key{} under the inputs, fewer than min_keys {min}", new.len(), plural(new.len())),
            });
        }
    }
    let old = old?;
    if g.max_removed.is_none() && g.max_changed.is_none() {
        return None;
    }
    let cmp = old.compare(new)?;
    if let Some(max) = g.max_removed {
        if max.exceeded(cmp.removed, cmp.total) {
            return Some(Breach {
                guard: GuardKind::MaxRemoved,
                figures: format!(
                    "{} of {} key{} removed at once (max_removed {max})",
                    cmp.removed,
                    cmp.total,
                    plural(cmp.total)
                ),
            });
        }
    }
    if let Some(max) = g.max_changed {
        if max.exceeded(cmp.changed, cmp.total) {
            return Some(Breach {
                guard: GuardKind::MaxChanged,
                figures: format!("{} of {} values changed at once (max_changed {max})", cmp.changed, cmp.total),
            });
        }
    }
    None
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// An output held now, as reported (/readyz, /status, /metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldNow {
    pub guard: GuardKind,
    /// The whole sentence, as logged.
    pub message: String,
    pub since: SystemTime,
}

/// Whether an output is held, shared with whoever reports on it.
#[derive(Debug, Default)]
pub struct HoldState {
    held: Mutex<Option<HeldNow>>,
}

impl HoldState {
    pub fn get(&self) -> Option<HeldNow> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, h: Option<HeldNow>) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = h;
    }
}

/// The sentence logged (and shown by /readyz and `kvsync status`) for a held output.
pub fn held_message(output: &str, b: &Breach) -> String {
    match b.guard {
        GuardKind::RolledBack => format!(
            "output `{output}`: {}; holding it so upstream changes do not overwrite it; `kvsync release {output}` resumes",
            b.figures
        ),
        GuardKind::Require | GuardKind::MinKeys => format!(
            "output `{output}`: {}; holding the last good version; `kvsync release {output}` or restoring the keys resumes",
            b.figures
        ),
        GuardKind::MaxRemoved | GuardKind::MaxChanged => format!(
            "output `{output}`: {}; holding the last good version; `kvsync release {output}` or restoring the keys resumes",
            b.figures
        ),
    }
}

/// What the gate says about a render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Publish it.
    Go,
    /// Publish it once although a guard or a rollback holds the output: the operator released it.
    Released,
    /// Leave the destination as it is. `first_time` is true when this held state was not the last
    /// one logged (log it).
    Hold { breach: Breach, message: String, first_time: bool },
}

/// One output's guard at run time: the last good version, whether it is held, and the release the
/// operator asked for.
#[derive(Debug)]
pub struct Gate {
    output: String,
    guard: Option<GuardConfig>,
    /// The keys of the last version published (or found on disk at start); None until known.
    last_good: Option<Baseline>,
    /// Whether `last_good` has been looked for (on disk, at the first render).
    looked: bool,
    /// Held by a rollback until released (survives restarts through the hold marker).
    rolled_back: Option<String>,
    /// The operator released the output: the next render is published once, whatever the guards say.
    release: bool,
    /// The held state last logged, so each distinct one is logged once.
    logged: Option<Breach>,
    /// What reporting sees.
    pub state: std::sync::Arc<HoldState>,
}

impl Gate {
    pub fn new(output: &str, guard: Option<GuardConfig>) -> Gate {
        Gate {
            output: output.to_string(),
            guard,
            last_good: None,
            looked: false,
            rolled_back: None,
            release: false,
            logged: None,
            state: Default::default(),
        }
    }

    /// Whether a render must look at its keys (a guard is set or the output is held by a rollback).
    pub fn active(&self) -> bool {
        self.guard.is_some() || self.rolled_back.is_some()
    }

    /// Decides about a render with `keys`. `on_disk` gives the last good version found on disk; it is
    /// called once, at the first render that needs it.
    pub fn admit(&mut self, keys: &Keys, on_disk: impl FnOnce() -> Option<Baseline>) -> Verdict {
        if self.release {
            self.release = false;
            return Verdict::Released;
        }
        let breach = if let Some(reason) = &self.rolled_back {
            Some(Breach { guard: GuardKind::RolledBack, figures: reason.clone() })
        } else if let Some(g) = &self.guard {
            if !self.looked {
                self.looked = true;
                if self.last_good.is_none() {
                    self.last_good = on_disk();
                }
            }
            evaluate(g, self.last_good.as_ref(), keys)
        } else {
            None
        };
        match breach {
            None => Verdict::Go,
            Some(b) => {
                let message = held_message(&self.output, &b);
                let first_time = self.logged.as_ref() != Some(&b);
                if first_time {
                    self.state.set(Some(HeldNow {
                        guard: b.guard,
                        message: message.clone(),
                        since: SystemTime::now(),
                    }));
                    self.logged = Some(b.clone());
                }
                Verdict::Hold { breach: b, message, first_time }
            }
        }
    }

    /// A render with `keys` was published (or found already on disk): it is the last good version,
    /// and the output is no longer held.
    pub fn published(&mut self, keys: Keys) {
        self.looked = true;
        self.last_good = Some(Baseline::keys(keys));
        self.rolled_back = None;
        self.logged = None;
        self.state.set(None);
    }

    /// The operator released the output: the next render is published once.
    pub fn release(&mut self) {
        self.release = true;
    }

    /// Whether the output is held now (by a guard or a rollback).
    pub fn held(&self) -> bool {
        self.state.get().is_some()
    }

    /// The output was rolled back (by this daemon, or before it started): hold it with `reason`
    /// until released. The last good version is looked for on disk again at the next render.
    pub fn rolled_back(&mut self, reason: String) {
        let b = Breach { guard: GuardKind::RolledBack, figures: reason.clone() };
        let message = held_message(&self.output, &b);
        self.state.set(Some(HeldNow { guard: b.guard, message, since: SystemTime::now() }));
        self.rolled_back = Some(reason);
        self.last_good = None;
        self.looked = false;
        // Whoever rolled it back said so: the renders it holds are not logged again.
        self.logged = Some(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Keys {
        (0..n).map(|i| (format!("k{i:03}"), Bytes::from(format!("v{i}")))).collect()
    }

    fn guard(yaml: &str) -> GuardConfig {
        serde_yaml::from_str::<RawGuard>(yaml).unwrap().validate().unwrap()
    }

    #[test]
    fn shares_parse_and_bad_ones_say_what_to_write() {
        assert_eq!(Share::parse("50%"), Ok(Share::Percent(50.0)));
        assert_eq!(Share::parse("20"), Ok(Share::Count(20)));
        assert_eq!(
            Share::parse("half").unwrap_err(),
            "`half` is not a share; write a percentage such as 50% or a count such as 20"
        );
        assert_eq!(Share::parse("150%").unwrap_err(), "`150%` is not between 0% and 100%");
        let raw: RawGuard = serde_yaml::from_str("{ max_removed: 20, max_changed: 90%, min_keys: 3 }").unwrap();
        let g = raw.validate().unwrap();
        assert_eq!(g.max_removed, Some(Share::Count(20)));
        assert_eq!(g.max_changed, Some(Share::Percent(90.0)));
        let raw: RawGuard = serde_yaml::from_str("{ max_removed: lots, require: [db/] }").unwrap();
        assert_eq!(
            raw.validate().unwrap_err(),
            vec![
                "guard.max_removed: `lots` is not a share; write a percentage such as 50% or a count such as 20"
                    .to_string(),
                "guard.require: `db/` is not a key; name keys relative to the output's prefix, e.g. db/host"
                    .to_string()
            ]
        );
        let e = serde_yaml::from_str::<RawGuard>("{ min_key: 3 }").unwrap_err().to_string();
        assert!(e.contains("unknown field `min_key`"), "{e}");
    }

    #[test]
    fn an_output_guard_overrides_the_defaults_field_by_field() {
        let d: RawGuard = serde_yaml::from_str("{ min_keys: 3, max_removed: 50% }").unwrap();
        let o: RawGuard = serde_yaml::from_str("{ max_removed: 10 }").unwrap();
        let g = RawGuard::over(Some(&o), Some(&d)).unwrap().validate().unwrap();
        assert_eq!(g.min_keys, Some(3));
        assert_eq!(g.max_removed, Some(Share::Count(10)));
        assert_eq!(RawGuard::over(None, None), None);
    }

    #[test]
    fn each_guard_holds_with_its_figures() {
        let old = Baseline::keys(keys(100));
        let g = guard("{ max_removed: 50% }");
        let b = evaluate(&g, Some(&old), &keys(3)).unwrap();
        assert_eq!(b.guard, GuardKind::MaxRemoved);
        assert_eq!(
            held_message("app", &b),
            "output `app`: 97 of 100 keys removed at once (max_removed 50%); holding the last good version; \
             `kvsync release app` or restoring the keys resumes"
        );
        // Exactly at the share is within the guard.
        assert_eq!(evaluate(&g, Some(&old), &keys(50)), None);
        assert_eq!(
            evaluate(&guard("{ max_removed: 49 }"), Some(&old), &keys(50)).unwrap().guard,
            GuardKind::MaxRemoved
        );

        let mut changed = keys(100);
        for (i, v) in changed.values_mut().enumerate() {
            if i < 95 {
                *v = Bytes::from_static(b"new");
            }
        }
        let b = evaluate(&guard("{ max_changed: 90% }"), Some(&old), &changed).unwrap();
        assert_eq!(b.figures, "95 of 100 values changed at once (max_changed 90%)");

        let b = evaluate(&guard("{ min_keys: 3 }"), None, &keys(2)).unwrap();
        assert_eq!(b.figures, "2 keys under the inputs, fewer than min_keys 3");
        assert_eq!(evaluate(&guard("{ min_keys: 3 }"), None, &keys(3)), None);

        let b = evaluate(&guard("{ require: [k001, db/host, db/port] }"), None, &keys(2)).unwrap();
        assert_eq!(b.figures, "required keys `db/host`, `db/port` are missing (require)");
        // Without a last good version there is nothing to compare removals with.
        assert_eq!(evaluate(&guard("{ max_removed: 0 }"), None, &keys(0)), None);
    }

    #[test]
    fn a_gate_logs_each_held_state_once_and_resumes_by_data_or_release() {
        let mut gate = Gate::new("app", Some(guard("{ max_removed: 50% }")));
        assert_eq!(gate.admit(&keys(10), || None), Verdict::Go);
        gate.published(keys(10));
        let Verdict::Hold { first_time: true, breach, .. } = gate.admit(&keys(2), || unreachable!()) else {
            panic!("held")
        };
        assert_eq!(breach.guard, GuardKind::MaxRemoved);
        assert!(gate.held());
        // The same state again: not logged again.
        assert!(matches!(gate.admit(&keys(2), || None), Verdict::Hold { first_time: false, .. }));
        // Another state: logged.
        assert!(matches!(gate.admit(&keys(1), || None), Verdict::Hold { first_time: true, .. }));
        // Data back within the guard.
        assert_eq!(gate.admit(&keys(9), || None), Verdict::Go);
        gate.published(keys(9));
        assert!(!gate.held());
        // Held again, then released once by the operator.
        assert!(matches!(gate.admit(&keys(1), || None), Verdict::Hold { .. }));
        gate.release();
        assert_eq!(gate.admit(&keys(1), || None), Verdict::Released);
        gate.published(keys(1));
        assert_eq!(gate.admit(&keys(1), || None), Verdict::Go);
    }

    #[test]
    fn the_first_render_compares_with_what_is_on_disk() {
        let mut gate = Gate::new("app", Some(guard("{ max_removed: 50% }")));
        let v = gate.admit(&keys(1), || Some(Baseline::keys(keys(10))));
        assert!(
            matches!(v, Verdict::Hold { ref breach, .. } if breach.figures == "9 of 10 keys removed at once (max_removed 50%)"),
            "{v:?}"
        );
    }

    #[test]
    fn a_rollback_holds_until_released() {
        let mut gate = Gate::new("app", None);
        assert!(!gate.active());
        gate.rolled_back("rolled back to kept version 2".into());
        assert!(gate.active() && gate.held());
        let Verdict::Hold { message, .. } = gate.admit(&keys(5), || None) else { panic!("held") };
        assert_eq!(
            message,
            "output `app`: rolled back to kept version 2; holding it so upstream changes do not overwrite it; \
             `kvsync release app` resumes"
        );
        gate.release();
        assert_eq!(gate.admit(&keys(5), || None), Verdict::Released);
        gate.published(keys(5));
        assert!(!gate.active() && !gate.held());
    }
}
