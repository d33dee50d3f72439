//! Validation: raw values as parsed turned into the typed config, every problem collected with the
//! place it concerns and what to write instead. One module per part of the file: sources, outputs,
//! actions, exec; the shared checks (durations, TLS, URLs, limits, quiescence) are here.

mod actions;
mod exec;
mod outputs;
mod sources;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvsync_watch::TlsFiles;

use crate::config::raw::*;
use crate::config::units::*;
use crate::config::*;

pub use actions::parse_target;

/// Validates `raw`, read from `path` whose text is `text`: the typed config, or every problem found.
pub(super) fn validate(path: &Path, text: &str, raw: RawConfig) -> Result<Config, Vec<String>> {
    let mut v = Validator { path, text, base: path.parent().unwrap_or(Path::new(".")), problems: Vec::new(), at: None };
    let cfg = v.config(raw);
    if v.problems.is_empty() {
        Ok(cfg)
    } else {
        Err(v.problems)
    }
}

/// Collects problems while turning raw values into typed ones.
struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    base: &'a Path,
    problems: Vec<String>,
    /// The line (0-based) of the `sources:` or `outputs:` entry being validated: its problems point
    /// there, whatever other entry shares its name.
    at: Option<usize>,
}

impl Validator<'_> {
    /// The lines (0-based) where the entries of the top-level block sequence `section:` start.
    fn entry_lines(&self, section: &str) -> Vec<usize> {
        let mut lines = self.text.lines().enumerate();
        let header = format!("{section}:");
        if !lines.any(|(_, l)| l.trim_end() == header || l.starts_with(&format!("{header} "))) {
            return Vec::new();
        }
        let mut indent = None;
        let mut out = Vec::new();
        for (i, l) in lines {
            let t = l.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let n = l.len() - t.len();
            if n == 0 && !t.starts_with('-') {
                break; // the next top-level key
            }
            if (t == "-" || t.starts_with("- ")) && *indent.get_or_insert(n) == n {
                out.push(i);
            }
        }
        out
    }

    /// The line of the `name: <name>` of a source or an output (searched in its own section when
    /// `what` says which), for problems found outside the walk over the entries.
    fn line_of(&self, what: &str, name: &str) -> Option<usize> {
        let section = if what.starts_with("source ") {
            Some("sources")
        } else if what.starts_with("output ") {
            Some("outputs")
        } else {
            None
        };
        let entries = section.map(|s| self.entry_lines(s)).unwrap_or_default();
        let first = entries.first().copied().unwrap_or(0);
        let last = match section {
            Some(_) => self.text.lines().enumerate().skip(first + 1).find(|(_, l)| {
                let t = l.trim_start();
                !t.is_empty() && !t.starts_with('#') && l.len() == t.len() && !t.starts_with('-')
            }),
            None => None,
        }
        .map(|(i, _)| i)
        .unwrap_or(usize::MAX);
        self.text.lines().enumerate().skip(first).take(last.saturating_sub(first)).find_map(|(i, l)| {
            let t = l.trim_start().trim_start_matches("- ").trim_start();
            let named =
                t.strip_prefix("name:").is_some_and(|r| r.trim().trim_matches(|c| c == '"' || c == '\'') == name);
            named.then_some(i)
        })
    }

    fn err(&mut self, what: &str, name: Option<&str>, msg: impl fmt::Display) {
        let line = match name {
            Some(n) => self.at.or_else(|| self.line_of(what, n)),
            None => None,
        };
        let loc = match line {
            Some(l) => format!("{}:{}", self.path.display(), l + 1),
            None => self.path.display().to_string(),
        };
        self.problems.push(format!("{loc}: {what}: {msg}"));
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn duration(
        &mut self,
        what: &str,
        name: Option<&str>,
        field: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.err(what, name, format!("{field}: {e}"));
                    default
                }
            },
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let retry = match &raw.retry {
            None => RetryConfig { initial: Duration::from_millis(250), max: Duration::from_secs(30), attempts: None },
            Some(r) => {
                let initial = self.duration("retry", None, "initial", &r.initial, Duration::from_millis(250));
                let max = self.duration("retry", None, "max", &r.max, Duration::from_secs(30));
                if max < initial {
                    self.err("retry", None, "max is shorter than initial; make max at least as long");
                }
                RetryConfig { initial, max, attempts: r.attempts }
            }
        };
        let limits = self.limits(raw.limits.as_ref());
        let mut sources = Vec::new();
        let mut seen = BTreeSet::new();
        let source_lines = self.entry_lines("sources");
        for (i, s) in raw.sources.iter().enumerate() {
            self.at = source_lines.get(i).copied();
            if !seen.insert(s.name.clone()) {
                self.err(
                    &format!("source `{}`", s.name),
                    Some(&s.name),
                    "defined twice; give each source its own name",
                );
                continue;
            }
            if let Some(sc) = self.source(s) {
                sources.push(sc);
            }
        }
        self.at = None;
        if raw.sources.is_empty() {
            self.err("sources", None, "no source is defined; add one under `sources:` (e.g. type: file, path: ./kv)");
        }
        let default_wait = match &raw.wait {
            None => Wait::default(),
            Some(w) => self.wait("wait", None, w, Wait::default()),
        };
        let names: BTreeMap<&str, &SourceConfig> = sources.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut outputs = Vec::new();
        let mut out_names = BTreeSet::new();
        let mut dests: BTreeMap<PathBuf, String> = BTreeMap::new();
        let output_lines = self.entry_lines("outputs");
        for (i, o) in raw.outputs.into_iter().enumerate() {
            self.at = output_lines.get(i).copied();
            let what = format!("output `{}`", o.name);
            if !out_names.insert(o.name.clone()) {
                self.err(&what, Some(&o.name), "defined twice; give each output its own name");
                continue;
            }
            let dest = self.resolve(&o.destination);
            if let Some(other) = dests.get(&dest) {
                let msg = format!(
                    "destination {} is also the destination of output `{other}`; two outputs would overwrite each other",
                    dest.display()
                );
                self.err(&what, Some(&o.name), msg);
                continue;
            }
            dests.insert(dest.clone(), o.name.clone());
            let guard = crate::guard::RawGuard::over(o.guard.as_ref(), raw.guard.as_ref());
            let keep = o.keep.or(raw.keep).unwrap_or(0);
            if let Some(mut oc) = self.output(o, dest, &names, default_wait) {
                if let Some(g) = guard {
                    match g.validate() {
                        Ok(g) => oc.guard = Some(g),
                        Err(problems) => {
                            let what = format!("output `{}`", oc.name);
                            problems.into_iter().for_each(|p| self.err(&what, Some(&oc.name), p));
                        }
                    }
                }
                oc.keep = keep;
                outputs.push(oc);
            }
        }
        self.at = None;
        // Nested destinations: a file output inside a `files` directory would be wiped by its generations.
        for (d, n) in &dests {
            for (d2, n2) in &dests {
                if d != d2
                    && d2.starts_with(d)
                    && outputs.iter().any(|o| &o.name == n && matches!(o.format, Format::Files))
                {
                    let msg = format!(
                        "destination {} lies inside the `files` directory of output `{n}`; move it out",
                        d2.display()
                    );
                    self.err(&format!("output `{n2}`"), Some(n2), msg);
                }
            }
        }
        let exec = self.exec(raw.exec.as_ref(), &names);
        let http = match &raw.http {
            None => HttpConfig { listen: Some("127.0.0.1:9101".into()), max_stale: Duration::from_secs(60) },
            Some(h) => HttpConfig {
                listen: match h.listen.as_deref() {
                    None => Some("127.0.0.1:9101".into()),
                    Some("") => None,
                    Some(l) => {
                        if l.parse::<std::net::SocketAddr>().is_err() {
                            self.err("http", None, format!("listen: `{l}` is not an address; write e.g. \"127.0.0.1:9101\", or \"\" to disable"));
                        }
                        Some(l.to_string())
                    }
                },
                max_stale: self.duration("http", None, "max_stale", &h.max_stale, Duration::from_secs(60)),
            },
        };
        let cache = raw.cache.as_ref().map(|c| CacheConfig {
            dir: self.resolve(&c.dir),
            max_age: self.duration("cache", None, "max_age", &c.max_age, Duration::from_secs(24 * 3600)),
        });
        let log = match &raw.log {
            None => LogConfig { level: "info".into(), json: false },
            Some(l) => {
                let json = match l.format.as_deref() {
                    None | Some("text") => false,
                    Some("json") => true,
                    Some(other) => {
                        self.err("log", None, format!("format: `{other}` is not a log format; use text or json"));
                        false
                    }
                };
                LogConfig { level: l.level.clone().unwrap_or_else(|| "info".into()), json }
            }
        };
        Config {
            path: self.path.to_path_buf(),
            sources,
            outputs,
            exec,
            http,
            retry,
            cache,
            log,
            limits,
            watch_config: raw.watch_config.unwrap_or(true),
            admin_socket: raw.admin.as_ref().and_then(|a| a.socket.as_deref()).map(|s| self.resolve(s)),
        }
    }

    fn limits(&mut self, raw: Option<&RawLimits>) -> Limits {
        let mut l = Limits::default();
        if let Some(r) = raw {
            for (field, v, slot) in [
                ("max_value_size", &r.max_value_size, &mut l.max_value_size),
                ("max_output_size", &r.max_output_size, &mut l.max_output_size),
            ] {
                if let Some(s) = v {
                    match parse_size(s) {
                        Ok(n) => *slot = n,
                        Err(e) => self.problems.push(format!("{}: limits: {field}: {e}", self.path.display())),
                    }
                }
            }
            if let Some(k) = r.max_keys {
                l.max_keys = k;
            }
        }
        l
    }

    fn wait(&mut self, what: &str, name: Option<&str>, w: &RawWait, default: Wait) -> Wait {
        let min = self.duration(what, name, "wait.min", &w.min, default.min);
        let max = self.duration(what, name, "wait.max", &w.max, default.max.max(min));
        if max < min {
            self.err(what, name, "wait.max is shorter than wait.min; make max at least min (or 0s for no quiescence)");
        }
        Wait { min, max: max.max(min) }
    }

    fn tls(&mut self, what: &str, name: &str, t: &Option<RawTls>) -> Option<TlsFiles> {
        let t = t.as_ref()?;
        if t.cert_file.is_some() != t.key_file.is_some() {
            self.err(
                what,
                Some(name),
                "tls: cert_file and key_file go together; set both for a client certificate, or neither",
            );
        }
        Some(TlsFiles {
            ca_file: t.ca_file.as_deref().map(|p| self.resolve(p)),
            cert_file: t.cert_file.as_deref().map(|p| self.resolve(p)),
            key_file: t.key_file.as_deref().map(|p| self.resolve(p)),
            server_name: t.server_name.clone(),
        })
    }

    fn urls(&mut self, what: &str, name: &str, field: &str, urls: &[String]) {
        for u in urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                self.err(what, Some(name), format!("{field}: `{u}` needs a scheme; write http://{u} or https://{u}"));
            }
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
