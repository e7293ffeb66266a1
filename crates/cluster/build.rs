// The gRPC services from proto/cluster.proto (protoc from Debian's protobuf-compiler, which
// scripts/setup installs).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    tonic_prost_build::configure().compile_protos(&["proto/cluster.proto"], &["proto"])?;
    Ok(())
}
