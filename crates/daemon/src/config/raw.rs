//! The configuration exactly as written in YAML (stage one of two). Unknown keys are errors.
//! `validate.rs` turns this into typed, checked objects.

use serde::{Deserialize, Deserializer};

/// Accepts a string, a number or a bool and keeps its text, so that `wait: 60s`, `interval: 0`
/// and `perms: 0640` (unquoted) all reach validation, which explains what is wrong with them.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum T {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    Ok(Option::<T>::deserialize(d)?.map(|t| match t {
        T::S(s) => s,
        T::I(i) => i.to_string(),
        T::F(f) => f.to_string(),
        T::B(b) => b.to_string(),
    }))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub outputs: Vec<RawOutput>,
    pub wait: Option<RawWait>,
    pub exec: Option<RawExec>,
    pub http: Option<RawHttp>,
    pub retry: Option<RawRetry>,
    pub cache: Option<RawCache>,
    pub log: Option<RawLog>,
    pub limits: Option<RawLimits>,
    /// Re-render when the config or a template file changes (default true).
    pub watch_config: Option<bool>,
    /// Defaults for every output's `guard:` (field by field) and `keep:`.
    pub guard: Option<crate::guard::RawGuard>,
    pub keep: Option<u32>,
    /// Admin requests (`kvsync release`, `kvsync rollback`): the Unix socket.
    pub admin: Option<RawAdmin>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub socket: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub mode: Option<String>,
    pub address: Option<String>,
    pub addresses: Option<Vec<String>>,
    pub endpoints: Option<Vec<String>>,
    pub path: Option<String>,
    pub token_file: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub tls: Option<RawTls>,
    #[serde(default, deserialize_with = "text")]
    pub wait: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub interval: Option<String>,
    pub stale: Option<bool>,
    #[serde(default, deserialize_with = "text")]
    pub max_stale: Option<String>,
    pub datacenter: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInput {
    pub name: String,
    pub source: String,
    pub prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    pub name: String,
    pub source: Option<String>,
    pub prefix: Option<String>,
    pub key: Option<String>,
    pub inputs: Option<Vec<RawInput>>,
    pub format: Option<String>,
    pub template: Option<String>,
    pub destination: String,
    #[serde(default, deserialize_with = "text")]
    pub perms: Option<String>,
    pub check: Option<Vec<String>>,
    #[serde(default, deserialize_with = "text")]
    pub check_timeout: Option<String>,
    #[serde(default)]
    pub on_change: Vec<RawAction>,
    pub on_start: Option<bool>,
    pub wait: Option<RawWait>,
    /// `env` format: upcase names.
    pub upcase: Option<bool>,
    /// Publish guards (over the top-level defaults).
    pub guard: Option<crate::guard::RawGuard>,
    /// How many published versions to keep for `kvsync rollback`.
    pub keep: Option<u32>,
}

/// One `on_change` entry; exactly one of signal, command, http, restart.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    pub signal: Option<String>,
    pub to: Option<String>,
    pub command: Option<Vec<String>>,
    pub http: Option<String>,
    pub method: Option<String>,
    pub restart: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub timeout: Option<String>,
    pub retries: Option<u32>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawWait {
    #[serde(default, deserialize_with = "text")]
    pub min: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub max: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    pub command: Option<Vec<String>>,
    pub kill_signal: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub kill_timeout: Option<String>,
    pub restart: Option<String>,
    /// Shortest time between two starts of the child (restart actions and crashes).
    #[serde(default, deserialize_with = "text")]
    pub min_restart_interval: Option<String>,
    /// Backoff between restarts after the child exits (on-failure, always).
    pub restart_backoff: Option<RawBackoff>,
    pub env: Option<RawExecEnv>,
}

/// A backoff: `{ initial, max }` durations.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    #[serde(default, deserialize_with = "text")]
    pub initial: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub max: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawExecEnv {
    pub source: String,
    pub prefix: String,
    pub sanitize: Option<bool>,
    pub upcase: Option<bool>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub max_stale: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    #[serde(default, deserialize_with = "text")]
    pub initial: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub max: Option<String>,
    pub attempts: Option<u32>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub dir: String,
    #[serde(default, deserialize_with = "text")]
    pub max_age: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default, deserialize_with = "text")]
    pub max_value_size: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub max_output_size: Option<String>,
    pub max_keys: Option<usize>,
}
