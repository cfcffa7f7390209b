//! Generates the gRPC code from `proto/coffer/v1` with a vendored `protoc`,
//! so that no system compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts run single-threaded before codegen.
    std::env::set_var("PROTOC", protoc);
    let root = "../../proto";
    let files = [
        "coffer/v1/meta.proto",
        "coffer/v1/storage.proto",
        "coffer/v1/raft.proto",
        "coffer/v1/maint.proto",
        "coffer/v1/access.proto",
    ];
    println!("cargo:rerun-if-changed=build.rs");
    for f in files {
        println!("cargo:rerun-if-changed={root}/{f}");
    }
    // The encoded descriptors, for gRPC server reflection (`pb::DESCRIPTORS`).
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("coffer_descriptors.bin");
    // Shard bodies travel as `Bytes`: a sender hands out slices of the
    // shard it already holds, and a receiver gets each frame as a view of
    // tonic's decode buffer, so neither side copies a frame into a fresh
    // `Vec` (two memcpys of every shard byte on a put and on a get). The
    // wire format is the same protobuf `bytes` field.
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .bytes(".coffer.v1.PutShardRequest.data")
        .bytes(".coffer.v1.ShardFrame.data")
        .compile_protos(&files.map(|f| format!("{root}/{f}")), &[root.to_string()])?;
    Ok(())
}
