//! Builds bulkhead-init (init/init.c), a small static PID 1 for `run --init`, with the system C
//! compiler; the binary is embedded in bulkhead (include_bytes!) and bind-mounted into containers.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("bulkhead-init");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    println!("cargo:rerun-if-changed=init/init.c");
    let status = Command::new(&cc)
        .args(["-static", "-Os", "-s", "-Wall", "-o"])
        .arg(&out)
        .arg("init/init.c")
        .status()
        .unwrap_or_else(|e| panic!("running {cc} to build bulkhead-init: {e} (scripts/setup installs gcc and libc6-dev)"));
    assert!(
        status.success(),
        "building bulkhead-init with {cc} failed (static glibc: libc6-dev)"
    );
}
