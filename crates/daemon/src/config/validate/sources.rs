//! Validation of `sources:` entries (Consul, etcd, file).

use std::time::Duration;

use kvsync_watch::Mode;

use crate::config::raw::*;
use crate::config::*;

use super::Validator;

impl Validator<'_> {
    pub(super) fn source(&mut self, s: &RawSource) -> Option<SourceConfig> {
        let what = format!("source `{}`", s.name);
        let name = s.name.as_str();
        let mode = match s.mode.as_deref() {
            None | Some("watch") => Mode::Watch,
            Some("poll") => {
                let interval = self.duration(&what, Some(name), "interval", &s.interval, Duration::from_secs(10));
                if interval.is_zero() {
                    self.err(&what, Some(name), "interval: must be longer than 0s");
                }
                Mode::Poll { interval: interval.max(Duration::from_millis(1)) }
            }
            Some(other) => {
                self.err(&what, Some(name), format!("mode: `{other}` is not a mode; use watch or poll"));
                Mode::Watch
            }
        };
        // Options that belong to another type are mistakes worth reporting.
        let misplaced = |opts: &[(&str, bool)]| -> Vec<String> {
            opts.iter().filter(|(_, set)| *set).map(|(n, _)| n.to_string()).collect()
        };
        let kind = match s.kind.as_str() {
            "consul" => {
                let bad = misplaced(&[
                    ("endpoints", s.endpoints.is_some()),
                    ("path", s.path.is_some()),
                    ("username", s.username.is_some()),
                    ("password_file", s.password_file.is_some()),
                ]);
                if !bad.is_empty() {
                    self.err(&what, Some(name), format!("{} do(es) not apply to type consul", bad.join(", ")));
                }
                let mut addresses = s.addresses.clone().unwrap_or_default();
                if let Some(a) = &s.address {
                    addresses.insert(0, a.clone());
                }
                if addresses.is_empty() {
                    addresses.push("http://127.0.0.1:8500".into());
                }
                self.urls(&what, name, "address", &addresses);
                let wait = self.duration(&what, Some(name), "wait", &s.wait, Duration::from_secs(60));
                if wait > Duration::from_secs(600) {
                    self.err(&what, Some(name), "wait: Consul caps blocking queries at 10m; use 10m or less");
                }
                let stale = s.stale.unwrap_or(false);
                let max_stale = s
                    .max_stale
                    .as_ref()
                    .map(|_| self.duration(&what, Some(name), "max_stale", &s.max_stale, Duration::from_secs(2)));
                if max_stale.is_some() && !stale {
                    self.err(&what, Some(name), "max_stale limits stale reads; set `stale: true` too, or remove it");
                }
                SourceKind::Consul {
                    addresses,
                    token_file: s.token_file.as_deref().map(|p| self.resolve(p)),
                    tls: self.tls(&what, name, &s.tls),
                    wait,
                    stale,
                    max_stale,
                    datacenter: s.datacenter.clone(),
                }
            }
            "etcd" => {
                let bad = misplaced(&[
                    ("address", s.address.is_some()),
                    ("addresses", s.addresses.is_some()),
                    ("path", s.path.is_some()),
                    ("token_file", s.token_file.is_some()),
                    ("wait", s.wait.is_some()),
                    ("stale", s.stale.is_some()),
                    ("max_stale", s.max_stale.is_some()),
                    ("datacenter", s.datacenter.is_some()),
                ]);
                if !bad.is_empty() {
                    self.err(&what, Some(name), format!("{} do(es) not apply to type etcd", bad.join(", ")));
                }
                let endpoints = s.endpoints.clone().unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()]);
                if endpoints.is_empty() {
                    self.err(&what, Some(name), "endpoints: list at least one, e.g. [http://127.0.0.1:2379]");
                }
                self.urls(&what, name, "endpoints", &endpoints);
                if s.username.is_some() != s.password_file.is_some() {
                    self.err(&what, Some(name), "username and password_file go together; set both, or neither");
                }
                SourceKind::Etcd {
                    endpoints,
                    tls: self.tls(&what, name, &s.tls),
                    username: s.username.clone(),
                    password_file: s.password_file.as_deref().map(|p| self.resolve(p)),
                }
            }
            "file" => {
                let bad = misplaced(&[
                    ("address", s.address.is_some()),
                    ("addresses", s.addresses.is_some()),
                    ("endpoints", s.endpoints.is_some()),
                    ("token_file", s.token_file.is_some()),
                    ("username", s.username.is_some()),
                    ("password_file", s.password_file.is_some()),
                    ("tls", s.tls.is_some()),
                    ("wait", s.wait.is_some()),
                    ("stale", s.stale.is_some()),
                    ("max_stale", s.max_stale.is_some()),
                    ("datacenter", s.datacenter.is_some()),
                ]);
                if !bad.is_empty() {
                    self.err(&what, Some(name), format!("{} do(es) not apply to type file", bad.join(", ")));
                }
                let Some(p) = &s.path else {
                    self.err(&what, Some(name), "type file needs `path:`, the directory to read keys from");
                    return None;
                };
                SourceKind::File { path: self.resolve(p) }
            }
            other => {
                self.err(&what, Some(name), format!("type: `{other}` is not a source type; use consul, etcd or file"));
                return None;
            }
        };
        Some(SourceConfig { name: s.name.clone(), mode, kind })
    }
}
