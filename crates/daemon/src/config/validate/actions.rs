//! Validation of `on_change` actions and signal targets.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::raw::*;
use crate::config::units::*;
use crate::config::*;

use super::Validator;

impl Validator<'_> {
    pub(super) fn action(&mut self, what: &str, n: Option<&str>, i: usize, a: &RawAction) -> Option<Action> {
        let set = [a.signal.is_some(), a.command.is_some(), a.http.is_some(), a.restart.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            self.err(what, n, format!("on_change[{i}]: give exactly one of signal, command, http, restart"));
            return None;
        }
        let field = format!("on_change[{i}]");
        if let Some(sig) = &a.signal {
            let signal = match parse_signal(sig) {
                Ok(s) => s,
                Err(e) => {
                    self.err(what, n, format!("{field}: {e}"));
                    return None;
                }
            };
            let to = match a.to.as_deref() {
                None => {
                    self.err(
                        what,
                        n,
                        format!("{field}: signal needs `to:` (child, pidfile:PATH, pid:N or process:NAME)"),
                    );
                    return None;
                }
                Some(t) => match parse_target(t) {
                    Ok(t) => match t {
                        Target::Pidfile(p) => Target::Pidfile(self.resolve(&p.to_string_lossy())),
                        t => t,
                    },
                    Err(e) => {
                        self.err(what, n, format!("{field}: {e}"));
                        return None;
                    }
                },
            };
            return Some(Action::Signal { signal, to });
        }
        if a.to.is_some() {
            self.err(what, n, format!("{field}: `to:` only applies to signal"));
        }
        if let Some(argv) = &a.command {
            if argv.is_empty() {
                self.err(
                    what,
                    n,
                    format!("{field}: command is empty; give argv as a list, e.g. [\"/usr/local/bin/reload\"]"),
                );
                return None;
            }
            let timeout = self.duration(what, n, &format!("{field}.timeout"), &a.timeout, Duration::from_secs(30));
            return Some(Action::Command { argv: argv.clone(), timeout });
        }
        if let Some(url) = &a.http {
            if !url.starts_with("http://") {
                self.err(what, n, format!("{field}: http: `{url}` must be an http:// URL"));
            }
            let method = a.method.clone().unwrap_or_else(|| "POST".into()).to_ascii_uppercase();
            if !["GET", "POST", "PUT"].contains(&method.as_str()) {
                self.err(what, n, format!("{field}: method `{method}` is not supported; use POST, PUT or GET"));
            }
            let timeout = self.duration(what, n, &format!("{field}.timeout"), &a.timeout, Duration::from_secs(10));
            return Some(Action::Http { url: url.clone(), method, timeout, retries: a.retries.unwrap_or(3) });
        }
        match a.restart.as_deref() {
            Some("child") => Some(Action::Restart),
            Some(other) => {
                self.err(what, n, format!("{field}: restart: `{other}` is not a target; the only one is `child`"));
                None
            }
            None => None,
        }
    }
}

/// Parses a signal target: `child`, `pidfile:PATH`, `pid:N`, `process:NAME`.
pub fn parse_target(s: &str) -> Result<Target, String> {
    let bad = || format!("`{s}` is not a signal target; use child, pidfile:/run/app.pid, pid:123 or process:nginx");
    if s == "child" {
        return Ok(Target::Child);
    }
    let (kind, arg) = s.split_once(':').ok_or_else(bad)?;
    if arg.is_empty() {
        return Err(bad());
    }
    match kind {
        "pidfile" => Ok(Target::Pidfile(PathBuf::from(arg))),
        "pid" => arg.parse::<i32>().ok().filter(|p| *p > 0).map(Target::Pid).ok_or_else(bad),
        "process" => Ok(Target::Process(arg.to_string())),
        _ => Err(bad()),
    }
}
