//! Compiles `proto/` (our own minimal etcd v3 subset) into Rust with protox, a pure-Rust protobuf
//! compiler, so no `protoc` is needed on the build machine. Client stubs only.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [root.join("etcdserverpb/rpc.proto"), root.join("mvccpb/kv.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // Values and keys as `bytes::Bytes`: a large value is shared, not copied, on its way to the engine.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
