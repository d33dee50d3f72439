//! Configuration: YAML parsed into raw structs (`raw`), then validated into the typed objects below.
//!
//! Validation collects every problem it finds, each naming the file, the line where the offending
//! source or output starts, and what to write instead.

mod raw;
pub mod units;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvsync_watch::{Mode, TlsFiles};

use crate::template::Template;
use raw::*;
use units::*;

/// A validated configuration.
#[derive(Debug)]
#[allow(dead_code)] // cache and http settings are read by the parts that implement them
pub struct Config {
    /// The file it was read from; relative paths inside it are resolved against its directory.
    pub path: PathBuf,
    pub sources: Vec<SourceConfig>,
    pub outputs: Vec<OutputConfig>,
    pub exec: ExecConfig,
    pub http: HttpConfig,
    pub retry: RetryConfig,
    pub cache: Option<CacheConfig>,
    pub log: LogConfig,
    pub limits: Limits,
    /// Re-render when the config file or a template changes.
    pub watch_config: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    pub mode: Mode,
    pub kind: SourceKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    Consul {
        addresses: Vec<String>,
        token_file: Option<PathBuf>,
        tls: Option<TlsFiles>,
        wait: Duration,
        stale: bool,
        datacenter: Option<String>,
    },
    Etcd {
        endpoints: Vec<String>,
        tls: Option<TlsFiles>,
        username: Option<String>,
        password_file: Option<PathBuf>,
    },
    File {
        path: PathBuf,
    },
}

/// One named prefix an output reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputConfig {
    /// The name a template sees it under (the output's name for single-input outputs).
    pub name: String,
    pub source: String,
    pub prefix: String,
}

#[derive(Debug)]
pub struct OutputConfig {
    pub name: String,
    pub inputs: Vec<InputConfig>,
    /// Whether the output was written with `source` + `prefix` (the template then sees `kv` and `tree`
    /// directly) rather than `inputs:`.
    pub single: bool,
    pub format: Format,
    pub destination: PathBuf,
    /// Mode for written files; None keeps an existing file's mode, else 0644.
    pub perms: Option<u32>,
    pub check: Option<CheckConfig>,
    pub on_change: Vec<Action>,
    /// Whether actions also fire for the first render after start; None: per action kind.
    pub on_start: Option<bool>,
    pub wait: Wait,
}

#[derive(Debug)]
pub enum Format {
    Template(Box<Template>),
    Json,
    Yaml,
    Env {
        upcase: bool,
    },
    Properties,
    Files,
    /// The bytes of one key (full key).
    Raw {
        key: String,
    },
}

impl Format {
    pub fn name(&self) -> &'static str {
        match self {
            Format::Template(_) => "template",
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Env { .. } => "env",
            Format::Properties => "properties",
            Format::Files => "files",
            Format::Raw { .. } => "raw",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// argv; `{{ staged }}` in any argument is replaced by the staged path.
    pub argv: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    Signal { signal: i32, to: Target },
    Command { argv: Vec<String>, timeout: Duration },
    Http { url: String, method: String, timeout: Duration, retries: u32 },
    Restart,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Child,
    Pidfile(PathBuf),
    Pid(i32),
    Process(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wait {
    pub min: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecConfig {
    pub command: Option<Vec<String>>,
    pub kill_signal: i32,
    pub kill_timeout: Duration,
    pub restart: RestartPolicy,
    /// Shortest time between two starts of the child.
    pub min_restart_interval: Duration,
    /// (initial, max) of the jittered backoff between restarts after the child exits.
    pub restart_backoff: (Duration, Duration),
    pub env: Option<ExecEnv>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecEnv {
    pub source: String,
    pub prefix: String,
    pub sanitize: bool,
    pub upcase: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// None: disabled.
    pub listen: Option<String>,
    /// How long a source may fail before /readyz reports it.
    pub max_stale: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    pub initial: Duration,
    pub max: Duration,
    pub attempts: Option<u32>,
}

impl RetryConfig {
    pub fn backoff(&self) -> kvsync_watch::Backoff {
        kvsync_watch::Backoff::new(self.initial, self.max, self.attempts)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub level: String,
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A single value larger than this is refused.
    pub max_value_size: u64,
    /// A rendered output larger than this is refused.
    pub max_output_size: u64,
    /// A prefix with more keys than this is refused.
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_value_size: 4 << 20, max_output_size: 256 << 20, max_keys: 1_000_000 }
    }
}

/// Everything wrong with a configuration file, each problem on its own line.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates a configuration file, compiling its templates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![format!("{}: cannot read the config file: {e}", path.display())],
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError { problems: vec![yaml_error(path, &e)] })?
        };
        let mut v = Validator { path, text, base: path.parent().unwrap_or(Path::new(".")), problems: Vec::new() };
        let cfg = v.config(raw);
        if v.problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError { problems: v.problems })
        }
    }

    /// Template files the config refers to (watched for edits alongside the config).
    pub fn template_files(&self) -> Vec<PathBuf> {
        self.outputs
            .iter()
            .filter_map(|o| match &o.format {
                Format::Template(t) => Some(t.path.clone()),
                _ => None,
            })
            .collect()
    }
}

/// "config.yaml:3:5: outputs[0]: unknown field `fromat`, expected one of ..."
fn yaml_error(path: &Path, e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    // The library appends " at line L column C"; put the location first, as compilers do.
    let msg = match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    match e.location() {
        Some(loc) => format!("{}:{}:{}: {msg}", path.display(), loc.line(), loc.column()),
        None => format!("{}: {msg}", path.display()),
    }
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    base: &'a Path,
    problems: Vec<String>,
}

impl Validator<'_> {
    /// The line of the first `name: <name>` in the file, for pointing at a source or output.
    fn line_of(&self, name: &str) -> Option<usize> {
        self.text.lines().position(|l| {
            let t = l.trim_start().trim_start_matches("- ").trim_start();
            t.strip_prefix("name:").map(|r| r.trim().trim_matches(|c| c == '"' || c == '\'') == name).unwrap_or(false)
        })
    }

    fn err(&mut self, what: &str, name: Option<&str>, msg: impl fmt::Display) {
        let loc = match name.and_then(|n| self.line_of(n)) {
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
        for s in &raw.sources {
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
        for o in raw.outputs {
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
            if let Some(oc) = self.output(o, dest, &names, default_wait) {
                outputs.push(oc);
            }
        }
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

    fn source(&mut self, s: &RawSource) -> Option<SourceConfig> {
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
                SourceKind::Consul {
                    addresses,
                    token_file: s.token_file.as_deref().map(|p| self.resolve(p)),
                    tls: self.tls(&what, name, &s.tls),
                    wait,
                    stale: s.stale.unwrap_or(false),
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

    fn output(
        &mut self,
        o: RawOutput,
        destination: PathBuf,
        sources: &BTreeMap<&str, &SourceConfig>,
        default_wait: Wait,
    ) -> Option<OutputConfig> {
        let what = format!("output `{}`", o.name);
        let name = o.name.clone();
        let n = Some(name.as_str());
        let list = |m: &BTreeMap<&str, &SourceConfig>| m.keys().copied().collect::<Vec<_>>().join(", ");
        let format_name =
            o.format.clone().unwrap_or_else(|| if o.template.is_some() { "template".into() } else { String::new() });
        // Inputs: either source + prefix (or key for raw), or inputs: [...].
        let (inputs, single) = match (&o.inputs, &o.source) {
            (Some(_), Some(_)) => {
                self.err(
                    &what,
                    n,
                    "has both `source` and `inputs`; use source + prefix for one prefix, inputs for several",
                );
                return None;
            }
            (Some(ins), None) => {
                if format_name != "template" {
                    self.err(&what, n, "`inputs` combine several prefixes and need format: template");
                }
                let mut seen = BTreeSet::new();
                let mut v = Vec::new();
                for i in ins {
                    if !seen.insert(i.name.clone()) {
                        self.err(&what, n, format!("input `{}` is named twice", i.name));
                    }
                    if !is_identifier(&i.name) {
                        self.err(
                            &what,
                            n,
                            format!("input name `{}` must be a template identifier (letters, digits, _)", i.name),
                        );
                    }
                    v.push(InputConfig { name: i.name.clone(), source: i.source.clone(), prefix: i.prefix.clone() });
                }
                if v.is_empty() {
                    self.err(&what, n, "`inputs` is empty; list at least one { name, source, prefix }");
                }
                (v, false)
            }
            (None, Some(src)) => {
                let prefix = match (&o.prefix, &o.key) {
                    (Some(p), None) => p.clone(),
                    (None, Some(k)) => k.clone(),
                    (Some(_), Some(_)) => {
                        self.err(
                            &what,
                            n,
                            "has both `prefix` and `key`; `key` is for format raw, `prefix` for the rest",
                        );
                        return None;
                    }
                    (None, None) if format_name == "raw" => {
                        self.err(
                            &what,
                            n,
                            "format raw needs `key:` (or `prefix:`), the one key whose bytes are written",
                        );
                        return None;
                    }
                    (None, None) => String::new(),
                };
                (vec![InputConfig { name: o.name.clone(), source: src.clone(), prefix }], true)
            }
            (None, None) => {
                self.err(&what, n, "names no data; add `source:` and `prefix:` (or `inputs:` for a template)");
                return None;
            }
        };
        for i in &inputs {
            if !sources.contains_key(i.source.as_str()) {
                let msg = format!(
                    "source `{}` is not defined (defined: {}); add it under `sources:` or fix the name",
                    i.source,
                    list(sources)
                );
                self.err(&what, n, msg);
            }
        }
        let format = match format_name.as_str() {
            "template" => {
                let Some(t) = &o.template else {
                    self.err(&what, n, "format template needs `template:`, the path of a minijinja template file");
                    return None;
                };
                let path = self.resolve(t);
                let names: Vec<String> =
                    if single { Vec::new() } else { inputs.iter().map(|i| i.name.clone()).collect() };
                match Template::load(&path, &names) {
                    Ok(t) => Format::Template(Box::new(t)),
                    Err(e) => {
                        self.err(&what, n, e);
                        return None;
                    }
                }
            }
            "json" => Format::Json,
            "yaml" => Format::Yaml,
            "env" => Format::Env { upcase: o.upcase.unwrap_or(false) },
            "properties" => Format::Properties,
            "files" => Format::Files,
            "raw" => Format::Raw { key: inputs[0].prefix.clone() },
            "" => {
                self.err(&what, n, "has no `format:`; use template, json, yaml, env, properties, files or raw");
                return None;
            }
            other => {
                let msg = format!(
                    "format: `{other}` is not a format; use template, json, yaml, env, properties, files or raw"
                );
                self.err(&what, n, msg);
                return None;
            }
        };
        if o.template.is_some() && !matches!(format, Format::Template(_)) {
            self.err(
                &what,
                n,
                format!("`template:` only applies to format template (this output is {})", format.name()),
            );
        }
        if o.upcase.is_some() && !matches!(format, Format::Env { .. }) {
            self.err(&what, n, "`upcase:` only applies to format env");
        }
        let perms = o.perms.as_deref().and_then(|p| match parse_perms(p) {
            Ok(m) => Some(m),
            Err(e) => {
                self.err(&what, n, format!("perms: {e}"));
                None
            }
        });
        let check = match &o.check {
            None => None,
            Some(argv) if argv.is_empty() => {
                self.err(
                    &what,
                    n,
                    "check: give the command as a list, e.g. [\"nginx\", \"-t\", \"-c\", \"{{ staged }}\"]",
                );
                None
            }
            Some(argv) => Some(CheckConfig {
                argv: argv.clone(),
                timeout: self.duration(&what, n, "check_timeout", &o.check_timeout, Duration::from_secs(30)),
            }),
        };
        let mut on_change = Vec::new();
        for (i, a) in o.on_change.iter().enumerate() {
            if let Some(a) = self.action(&what, n, i, a) {
                on_change.push(a);
            }
        }
        let wait = match &o.wait {
            None => default_wait,
            Some(w) => self.wait(&what, n, w, default_wait),
        };
        Some(OutputConfig {
            name,
            inputs,
            single,
            format,
            destination,
            perms,
            check,
            on_change,
            on_start: o.on_start,
            wait,
        })
    }

    fn action(&mut self, what: &str, n: Option<&str>, i: usize, a: &RawAction) -> Option<Action> {
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

    fn exec(&mut self, e: Option<&RawExec>, sources: &BTreeMap<&str, &SourceConfig>) -> ExecConfig {
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

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
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

#[cfg(test)]
mod tests;
