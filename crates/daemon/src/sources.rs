//! Builds the configured sources.

use std::sync::Arc;

use kvsync_watch::{Source, SourceStats};

use crate::config::{Config, SourceConfig, SourceKind};

/// A configured source, built and ready to run, with the counters it keeps.
pub struct BuiltSource {
    pub name: String,
    pub source: Box<dyn Source>,
    pub stats: Arc<SourceStats>,
}

/// Builds one source from its configuration.
pub fn build(cfg: &Config, s: &SourceConfig) -> Result<BuiltSource, String> {
    let backoff = cfg.retry.backoff();
    let max_value_bytes = usize::try_from(cfg.limits.max_value_size).unwrap_or(usize::MAX);
    let source: Box<dyn Source> = match &s.kind {
        SourceKind::File { path } => {
            Box::new(kvsync_watch::file::FileSource { root: path.clone(), mode: s.mode, max_value_bytes, backoff })
        }
        SourceKind::Consul { addresses, token_file, tls, wait, stale, max_stale, datacenter } => Box::new(
            kvsync_watch::consul::ConsulSource::new(kvsync_watch::consul::ConsulConfig {
                addresses: addresses.clone(),
                token_file: token_file.clone(),
                tls: tls.clone(),
                wait: *wait,
                mode: s.mode,
                stale: *stale,
                max_stale: *max_stale,
                datacenter: datacenter.clone(),
                backoff,
                max_value_bytes,
                max_keys: cfg.limits.max_keys,
                idle_timeout: kvsync_watch::consul::DEFAULT_IDLE_TIMEOUT,
            })
            .map_err(|e| format!("source `{}`: {e}", s.name))?,
        ),
        SourceKind::Etcd { endpoints, tls, username, password_file } => Box::new(
            kvsync_watch::EtcdSource::new(kvsync_watch::EtcdConfig {
                endpoints: endpoints.clone(),
                tls: tls.clone(),
                username: username.clone(),
                password_file: password_file.clone(),
                mode: s.mode,
                backoff,
                // The etcd source leaves an over-limit value out as if the key were deleted, which
                // would render the output without that key. The render refuses such a value instead
                // (limits.max_value_size), keeping the last good output. What can arrive is bounded
                // by etcd's own request limit and the client's gRPC decode limit.
                max_value_bytes: usize::MAX,
            })
            .map_err(|e| format!("source `{}`: {e}", s.name))?,
        ),
    };
    Ok(BuiltSource { name: s.name.clone(), source, stats: Arc::default() })
}
