//! Logging to stderr: the level and format from the command line, else from the config; `KVSYNC_LOG`
//! works like RUST_LOG and wins over both.

use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Installs the global subscriber. `level` and `json` come from the command line (None: the config's,
/// else info and text).
pub fn init(cfg: Option<&Config>, level: Option<&str>, json: Option<bool>) {
    let level = level.map(str::to_string).or_else(|| cfg.map(|c| c.log.level.clone())).unwrap_or_else(|| "info".into());
    let filter = std::env::var("KVSYNC_LOG").ok().and_then(|v| EnvFilter::try_new(v).ok()).unwrap_or_else(|| {
        let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
        // The file watcher's own trace lines name every event in the config's directory: with the
        // log written there, each line would cause the next. Asked for by name, they still show.
        match "notify=info".parse() {
            Ok(quiet) if !level.contains("notify") => filter.add_directive(quiet),
            _ => filter,
        }
    });
    let json = json.unwrap_or_else(|| cfg.map(|c| c.log.json).unwrap_or(false));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(false).init();
    }
}
