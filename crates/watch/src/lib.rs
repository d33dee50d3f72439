//! The kvsync watch engine.
//!
//! Sources (`file`, and the Consul and etcd clients) watch key prefixes and report what they see as
//! [`Update`]s. The [`Engine`] applies them to one versioned [`Snapshot`] per watched prefix, drops
//! updates that change nothing, and publishes the latest state to every [`Subscription`] through a
//! latest-value channel: a slow consumer skips intermediate states instead of queueing them.
//!
//! The engine knows nothing about files on disk, templates or processes; that is the daemon's job.
#![forbid(unsafe_code)]

pub mod cache;
pub mod consul;
pub mod engine;
pub mod etcd;
pub mod file;
pub mod hash;
pub mod prefix;
pub mod retry;
pub mod snapshot;
pub mod source;
pub mod stats;

pub use cache::Cache;
pub use consul::{ConsulConfig, ConsulSource};
pub use engine::{Engine, EngineBuilder, EngineStopped, Subscription, View, Wake};
pub use etcd::{EtcdConfig, EtcdSource};
pub use retry::Backoff;
pub use snapshot::{Change, Entries, Snapshot, Update};
pub use source::{Mode, Source, SourceError, TlsFiles, UpdateSink};
pub use stats::SourceStats;
