//! Builds the two helper binaries that bulkhead embeds (include_bytes!):
//!
//! - bulkhead-init (init/init.c), a small static PID 1 for `run --init`, with the system C compiler;
//!   it is bind-mounted into containers.
//! - bulkhead-shim (crates/shim), the monitor that stays beside each detached container. It is built
//!   by a nested cargo, static (`+crt-static`, no dynamic loader and no shared libc pages, which
//!   halves its resident memory) and with the `shim` profile. Cargo cannot give one binary of a
//!   build its own target features, hence the nested build; it has its own target directory, so it
//!   never waits on the outer build's lock.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    build_init(&out.join("bulkhead-init"));
    let shim = out.join("bulkhead-shim");
    build_shim(&shim);
    println!("cargo:rustc-env=BULKHEAD_SHIM_BIN={}", shim.display());
}

fn build_init(out: &Path) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    println!("cargo:rerun-if-changed=init/init.c");
    let status = Command::new(&cc)
        .args(["-static", "-Os", "-s", "-Wall", "-o"])
        .arg(out)
        .arg("init/init.c")
        .status()
        .unwrap_or_else(|e| panic!("running {cc} to build bulkhead-init: {e} (scripts/setup installs gcc and libc6-dev)"));
    assert!(
        status.success(),
        "building bulkhead-init with {cc} failed (static glibc: libc6-dev)"
    );
}

fn build_shim(out: &Path) {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..").canonicalize().expect("workspace root");
    for p in ["crates/shim/src", "crates/shim/Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }
    let target = std::env::var("TARGET").expect("TARGET");
    // One directory per compiler: the stable build and the nightly fuzz check do not rebuild each
    // other's copy.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let tag: String = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("unknown")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
        .collect();
    let target_dir = workspace.join("target/shim-static").join(tag);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "--profile",
            "shim",
            "-p",
            "bulkhead-shim",
            "--bin",
            "bulkhead-shim",
        ])
        .args(["--target", &target])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags are not the monitor's: no sanitizers of a fuzz build, no clippy
    // wrapper, no coverage; with an explicit --target they apply to the monitor alone, not to
    // proc-macros.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTDOCFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {cargo} to build bulkhead-shim: {e}"));
    assert!(status.success(), "building bulkhead-shim (static) failed");
    let built = target_dir.join(&target).join("shim/bulkhead-shim");
    std::fs::copy(&built, out).unwrap_or_else(|e| panic!("{}: {e}", built.display()));
}
