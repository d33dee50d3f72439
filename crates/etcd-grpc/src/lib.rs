//! A minimal etcd v3 gRPC client for kvsync.
//!
//! The message and service types in [`pb`] are generated at build time from `proto/` (our own
//! wire-compatible subset of etcd's API) by prost/tonic, compiled with protox so no `protoc` is needed.
//! On top of them sits a thin typed layer:
//! - [`Client::connect`]: one HTTP/2 connection (tonic `Channel`) to one endpoint, optionally over
//!   rustls (ring) with a custom CA, a client certificate and a server name; HTTP/2 keepalive no closer
//!   than 10 s and only while a stream is open (etcd answers closer pings with GOAWAY `too_many_pings`);
//!   a raised decode limit so large Range pages and watch catch-ups are not refused.
//! - [`Client::authenticate`]: username + password -> a token sent as `token` metadata on every call.
//! - [`prefix_range`]: the `[key, range_end)` pair that selects every key under a prefix.
//! - [`Client::watch`]: opens the bidirectional Watch stream with `hasleader=true`, so a member that
//!   loses its leader ends the stream instead of letting it stall silently.
#![forbid(unsafe_code)]

mod client;
mod prefix;

pub use client::{Client, ConnectError, ConnectOptions, TlsPem};
pub use prefix::prefix_range;

/// The generated protobuf messages and gRPC client stubs.
pub mod pb {
    /// Storage messages: `KeyValue`, `Event`.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// KV, Watch, Auth and Maintenance services and their messages.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

pub use tonic::{Code, Status, Streaming};
