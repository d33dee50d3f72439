//! Configuration: YAML parsed into raw structs (`raw`), validated (`validate`) into the typed objects
//! below.
//!
//! Validation collects every problem it finds, each naming the file, the line where the offending
//! source or output starts, and what to write instead.

mod raw;
pub mod units;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvsync_watch::{Mode, TlsFiles};

use crate::template::Template;
use raw::*;
pub use validate::parse_target;

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
    /// The Unix socket for admin requests (`admin.socket`); None: admin requests only on a loopback
    /// HTTP endpoint.
    pub admin_socket: Option<PathBuf>,
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
        /// With `stale`: re-read consistently when the answering server's leader contact is older.
        max_stale: Option<Duration>,
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
    /// Publish guards: a render that breaks one is held (`guard`).
    pub guard: Option<crate::guard::GuardConfig>,
    /// Published versions kept for `kvsync rollback` (`keep`, default 0).
    pub keep: u32,
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
            // The syntax of the whole document first: deserializing stops at the first mapping that
            // ends early (a line indented one space too few), and would report the field that mapping
            // lacks instead of the line that is wrong.
            serde_yaml::from_str::<serde_yaml::Value>(text)
                .map_err(|e| ConfigError { problems: vec![yaml_error(path, &e)] })?;
            serde_yaml::from_str(text).map_err(|e| ConfigError { problems: vec![yaml_error(path, &e)] })?
        };
        validate::validate(path, text, raw).map_err(|problems| ConfigError { problems })
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

#[cfg(test)]
mod tests;
