//! Compiles `infra/**/*.proto` with protox (pure Rust, no `protoc`) and
//! writes the encoded descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "infra/bus/v1/bus.proto",
        "infra/operator/v1/operator.proto",
        "infra/coordinator/v1/coordinator.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("infra_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Deterministic encoding: spec hashes are taken over encoded messages.
        .btree_map(".")
        // A request that does not decode is INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(fds)?;
    Ok(())
}
