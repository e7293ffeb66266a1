//! Trust commands that need no registry: the passphrase prompt on a terminal (no echo), and the
//! one-line refusal without one.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_passphrase_is_asked_for_on_the_terminal_without_echo() {
    let env = Env::new();
    // python's pty.fork gives the child a controlling terminal, as a user's shell would.
    let script = r#"
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
deadline = time.time() + 20
while b"Passphrase" not in out and time.time() < deadline:
    out += os.read(fd, 1000)
os.write(fd, b"typed secret\n")
try:
    while True:
        chunk = os.read(fd, 1000)
        if not chunk:
            break
        out += chunk
except OSError:
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let o = Command::new("/usr/bin/python3")
        .args(["-c", script, env!("CARGO_BIN_EXE_bulkhead"), "--root"])
        .arg(env.root())
        .arg("--config")
        .arg(env.path("config"))
        .args(["trust", "key", "generate", "k1"])
        .env_remove("BULKHEAD_TRUST_KEY_PASSPHRASE")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("Passphrase for the key:"), "{out}");
    assert!(!out.contains("typed secret"), "the passphrase was echoed: {out}");
    let id = out
        .lines()
        .rev()
        .find(|l| l.trim().len() == 64)
        .expect("a key id")
        .trim()
        .to_owned();
    let pem = std::fs::read_to_string(env.path("config/trust/private").join(format!("{id}.key"))).unwrap();
    assert!(pem.contains("ENCRYPTED PRIVATE KEY"));
    // Without a terminal (a session of its own has none) and without the variable: one line
    // saying what to do.
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    // SAFETY: setsid in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let o = cmd
        .arg("--root")
        .arg(env.root())
        .arg("--config")
        .arg(env.path("config"))
        .args(["trust", "key", "generate", "k2"])
        .env_remove("BULKHEAD_TRUST_KEY_PASSPHRASE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("BULKHEAD_TRUST_KEY_PASSPHRASE"), "{err}");
}

/// Names are recorded under this machine's key: an image imported here runs; pointing its name at
/// another image by editing the store (not through bulkhead) is refused, with one line, and
/// `system check --repair` drops the names it cannot trust.
#[test]
fn names_changed_outside_bulkhead_are_refused() {
    let env = Env::new();
    let a = env.path("a");
    busybox_rootfs(&a);
    std::fs::write(a.join("which"), "a\n").unwrap();
    let b = env.path("b");
    busybox_rootfs(&b);
    std::fs::write(b.join("which"), "b\n").unwrap();
    env.ok(&["image", "import", "--rootfs", a.to_str().unwrap(), "--tag", "app:1"]);
    env.ok(&["image", "import", "--rootfs", b.to_str().unwrap(), "--tag", "other:1"]);
    assert_eq!(env.ok(&["run", "--rm", "app:1", "cat", "/which"]), "a\n");
    let key = env.path("config/trust/names.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // Someone with write access to the store, but not to the key, swaps the names.
    let refs_path = env.root().join("refs.json");
    let mut refs: serde_json::Value = serde_json::from_slice(&std::fs::read(&refs_path).unwrap()).unwrap();
    let (ka, kb) = ("docker.io/library/app:1", "docker.io/library/other:1");
    let (da, db) = (refs["refs"][ka].clone(), refs["refs"][kb].clone());
    refs["refs"][ka] = db;
    refs["refs"][kb] = da;
    std::fs::write(&refs_path, serde_json::to_vec(&refs).unwrap()).unwrap();
    let err = env.fails(&["run", "--rm", "app:1", "cat", "/which"]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("changed outside bulkhead"), "{err}");
    // Stripping the signature does not help.
    refs.as_object_mut().unwrap().remove("signature");
    std::fs::write(&refs_path, serde_json::to_vec(&refs).unwrap()).unwrap();
    assert!(env.fails(&["images"]).contains("signature is missing"));
    // system check reports it; --repair drops the untrusted names; the images stay, by id.
    let o = env.run(&["system", "check"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("changed outside bulkhead"));
    env.run(&["system", "check", "--repair"]);
    env.ok(&["image", "import", "--rootfs", a.to_str().unwrap(), "--tag", "app:1"]);
    assert_eq!(env.ok(&["run", "--rm", "app:1", "cat", "/which"]), "a\n");
}

/// Each command's help lists the flags it takes: the expiry flags only on commands that sign, and
/// `image import` none of the output formats that belong to save, sbom and scan.
#[test]
fn help_lists_only_a_commands_own_flags() {
    let env = Env::new();
    let help = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push("--help");
        env.ok(&all)
    };
    for signing in [
        &["trust", "sign"][..],
        &["trust", "init"],
        &["trust", "rotate"],
        &["trust", "timestamp", "refresh"],
    ] {
        assert!(help(signing).contains("--timestamp-expiry-days"), "{signing:?}");
    }
    for other in [
        &["trust", "key", "generate"][..],
        &["trust", "policy", "add"],
        &["trust", "inspect"],
    ] {
        assert!(!help(other).contains("expiry"), "{other:?}");
    }
    let import = help(&["image", "import"]);
    for foreign in ["sarif", "oci-dir", "spdx-json", "--policy"] {
        assert!(!import.contains(foreign), "image import --help names {foreign}: {import}");
    }
    assert!(help(&["image", "save"]).contains("docker-archive"));
    assert!(help(&["scan"]).contains("sarif"));
}
