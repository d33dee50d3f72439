//! Validation of the `exec:` section (`kvsync exec`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::raw::*;
use crate::config::units::*;
use crate::config::*;

use super::Validator;

impl Validator<'_> {
    pub(super) fn exec(&mut self, e: Option<&RawExec>, sources: &BTreeMap<&str, &SourceConfig>) -> ExecConfig {
        let Some(e) = e else {
            return ExecConfig {
                command: None,
                kill_signal: 15,
                kill_timeout: Duration::from_secs(10),
                restart: RestartPolicy::Never,
                min_restart_interval: Duration::from_secs(1),
                restart_backoff: (Duration::from_secs(1), Duration::from_secs(30)),
                env: None,
            };
        };
        let kill_signal = match e.kill_signal.as_deref().map(parse_signal) {
            None => 15,
            Some(Ok(s)) => s,
            Some(Err(m)) => {
                self.err("exec", None, format!("kill_signal: {m}"));
                15
            }
        };
        let restart = match e.restart.as_deref() {
            None | Some("never") => RestartPolicy::Never,
            Some("on-failure") => RestartPolicy::OnFailure,
            Some("always") => RestartPolicy::Always,
            Some(other) => {
                self.err("exec", None, format!("restart: `{other}` is not a policy; use never, on-failure or always"));
                RestartPolicy::Never
            }
        };
        if e.command.as_ref().is_some_and(|c| c.is_empty()) {
            self.err("exec", None, "command is empty; give argv as a list, e.g. [\"/usr/bin/app\"]");
        }
        let env = e.env.as_ref().map(|env| {
            if !sources.contains_key(env.source.as_str()) {
                self.err("exec", None, format!("env: source `{}` is not defined", env.source));
            }
            ExecEnv {
                source: env.source.clone(),
                prefix: env.prefix.clone(),
                sanitize: env.sanitize.unwrap_or(true),
                upcase: env.upcase.unwrap_or(false),
            }
        });
        let min_restart_interval =
            self.duration("exec", None, "min_restart_interval", &e.min_restart_interval, Duration::from_secs(1));
        let restart_backoff = match &e.restart_backoff {
            None => (Duration::from_secs(1), Duration::from_secs(30)),
            Some(b) => {
                let initial =
                    self.duration("exec", None, "restart_backoff.initial", &b.initial, Duration::from_secs(1));
                let max = self.duration("exec", None, "restart_backoff.max", &b.max, Duration::from_secs(30));
                if max < initial {
                    self.err("exec", None, "restart_backoff: max is shorter than initial; make max at least as long");
                }
                (initial, max)
            }
        };
        ExecConfig {
            command: e.command.clone(),
            kill_signal,
            kill_timeout: self.duration("exec", None, "kill_timeout", &e.kill_timeout, Duration::from_secs(10)),
            restart,
            min_restart_interval,
            restart_backoff,
            env,
        }
    }
}
