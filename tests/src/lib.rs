//! Test support for kvsync's integration tests: the real `kvsync` binary as a child process, a plain
//! HTTP client for its endpoint, and bounded waiting helpers. Backend fakes and launchers live in their own modules.
#![forbid(unsafe_code)]

pub mod consul_server;
pub mod etcd_server;
pub mod fault_proxy;
pub mod fixture;
pub mod http;
pub mod kvsync;
pub mod leaks;
pub mod namespace;
pub mod skip;
pub mod tls_front;
pub mod wait;
