// The gRPC services from proto/cluster.proto, and the server side of the SPIFFE Workload API
// from the workload.proto that the `spiffe` crate ships (the client the tests use is that
// crate's). protoc comes from Debian's protobuf-compiler, which scripts/setup installs.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    println!("cargo:rerun-if-changed=../../Cargo.lock");
    tonic_prost_build::configure().compile_protos(&["proto/cluster.proto"], &["proto"])?;
    let dir = spiffe_protos()?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(&[dir.join("workload.proto")], &[dir])?;
    Ok(())
}

/// `src/proto` of the `spiffe` package the lock file names, in cargo's registry sources (where
/// cargo unpacked it for the dev-dependency) or in a `vendor/` directory.
fn spiffe_protos() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let lock = std::fs::read_to_string("../../Cargo.lock")?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"spiffe\"\n"))
        .and_then(|p| {
            p.lines()
                .find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned))
        })
        .ok_or("Cargo.lock names no spiffe package")?;
    let want = format!("spiffe-{version}");
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or("no CARGO_HOME")?;
    let mut places = vec![PathBuf::from("../../vendor/spiffe")];
    if let Ok(rd) = std::fs::read_dir(home.join("registry/src")) {
        places.extend(rd.flatten().map(|e| e.path().join(&want)));
    }
    places
        .into_iter()
        .map(|p| p.join("src/proto"))
        .find(|p| p.join("workload.proto").is_file())
        .ok_or_else(|| format!("{want}'s src/proto/workload.proto is not in cargo's registry sources (cargo fetch brings it)").into())
}
