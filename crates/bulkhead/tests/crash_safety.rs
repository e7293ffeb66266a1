//! `kill -9` at any point of an import leaves a store that `system check --repair` makes consistent,
//! after which the same import succeeds; corruption on disk is found and repaired.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn import_killed_at_several_points_is_repaired_and_reimported() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(
        &layout,
        &[&|r: &std::path::Path| {
            busybox_rootfs(r);
            for d in 0..20 {
                let dir = r.join(format!("data/{d}"));
                std::fs::create_dir_all(&dir).unwrap();
                for f in 0..150 {
                    std::fs::write(dir.join(f.to_string()), format!("{d}/{f}").repeat(50)).unwrap();
                }
            }
        }],
    );
    let bin = env!("CARGO_BIN_EXE_bulkhead");
    let mut killed_mid_way = 0;
    for delay_ms in [2u64, 10, 30, 60, 120, 250] {
        let mut child = Command::new(bin)
            .arg("--root")
            .arg(env.root())
            .args(["-q", "image", "import", layout.to_str().unwrap(), "--tag", "crash:1"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap(); // SIGKILL
            killed_mid_way += 1;
        }
        child.wait().unwrap();
        env.ok(&["system", "check", "--repair"]);
        let clean = env.ok(&["system", "check"]);
        assert!(clean.contains("consistent"), "after a kill at {delay_ms} ms: {clean}");
        let _ = env.run(&["image", "rm", "-f", "crash:1"]);
    }
    assert!(killed_mid_way > 0, "no import was interrupted; the test proves nothing");
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "crash:1"]);
    let mnt = env.ok(&["image", "mount", "crash:1"]);
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(mnt.trim()).join("data/19/149")).unwrap(),
        "19/149".repeat(50)
    );
    env.ok(&["image", "unmount", "crash:1"]);
    env.ok(&["system", "check"]);
}

#[test]
fn corrupt_blob_and_missing_layer_are_found_and_repaired() {
    let env = Env::new();
    let rootfs = env.path("rootfs");
    busybox_rootfs(&rootfs);
    env.ok(&["image", "import", "--rootfs", rootfs.to_str().unwrap(), "--tag", "a:1"]);
    let info = env.inspect("a:1");

    // A layer directory lost (as after a crash between blob and layer): repair unpacks it again.
    let chain = info["Bulkhead"]["Layers"][0]["ChainID"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    std::fs::remove_dir_all(env.root().join("layers").join(&chain)).unwrap();
    let o = env.run(&["system", "check"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("is not unpacked"));
    env.ok(&["system", "check", "--repair"]);
    assert!(env.root().join("layers").join(&chain).join("diff/bin/busybox").exists());
    env.ok(&["system", "check"]);

    // A blob whose content changed: found, removed with the image that needs it, reference dropped.
    let blob = info["Bulkhead"]["Layers"][0]["Blob"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let p = env.root().join("blobs/sha256").join(&blob);
    let mut data = std::fs::read(&p).unwrap();
    data[100] ^= 1;
    std::fs::write(&p, data).unwrap();
    let o = env.run(&["system", "check"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("does not match its digest"), "{out}");
    env.ok(&["system", "check", "--repair"]);
    env.ok(&["system", "check"]);
    env.fails(&["image", "inspect", "a:1"]);
    // And the image can be imported again.
    env.ok(&["image", "import", "--rootfs", rootfs.to_str().unwrap(), "--tag", "a:1"]);
    env.ok(&["system", "check"]);
}

/// A command waiting for the store's lock says, after a second, which process holds it and what
/// that process runs; `--lock-timeout` ends the wait with one line naming it.
#[test]
fn a_held_store_lock_is_named_and_the_wait_can_end() {
    let env = Env::new();
    env.ok(&["images"]);
    let lock = env.root().join("lock");
    // -o: flock itself holds the lock (its `sleep` child does not), so killing it frees the lock.
    let mut holder = std::process::Command::new("flock")
        .args(["-x", "-o"])
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    // Bounded wait until the holder has it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .contains(&format!(" {} ", holder.id()))
        && std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .all(|l| !l.contains("FLOCK"))
    {
        assert!(std::time::Instant::now() < deadline, "flock did not take the lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let err = env.fails(&["--lock-timeout", "2", "image", "prune"]);
    assert!(
        err.contains("is locked by pid") && err.contains("sleep 30") && err.contains("--lock-timeout"),
        "{err}"
    );
    // Without a timeout the command waits, says who holds the lock, and goes on once it is free.
    let waiter = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--root")
        .arg(env.root())
        .arg("--config")
        .arg(env.path("config"))
        .args(["image", "prune"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    holder.kill().unwrap();
    holder.wait().unwrap();
    let o = waiter.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("waiting for the store's lock, held by pid") && err.contains("sleep 30"),
        "{err}"
    );
}

/// flock(2) alone lets overlapping shared holders keep a writer out forever: a command that
/// would add to the store queues behind a command waiting to remove from it.
#[test]
fn a_waiting_writer_is_not_overtaken_by_new_readers() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    env.ok(&["images"]);
    let held_by = |pid: u32| {
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(pid.to_string().as_str()))
    };
    let wait_until = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // A long reader (as a pull is), holding the lock shared.
    let mut reader = Command::new("flock")
        .args(["-s", "-o"])
        .arg(env.root().join("lock"))
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    wait_until("flock did not take the lock", &|| held_by(reader.id()));
    // A writer arrives and waits.
    let writer = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--root")
        .arg(env.root())
        .arg("--config")
        .arg(env.path("config"))
        .args(["image", "prune"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let writer_pid = writer.id();
    // It holds the intent file while it waits (old code held nothing: give it time to start).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !held_by(writer_pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A new reader comes after it: it waits for the writer instead of joining the first reader.
    let err = env.fails(&[
        "--lock-timeout",
        "1",
        "image",
        "import",
        layout.to_str().unwrap(),
        "--tag",
        "late:1",
    ]);
    assert!(
        err.contains("--lock-timeout") && err.contains("waiting to change the store") && err.contains(&format!("pid {writer_pid} ")),
        "{err}"
    );
    assert!(env.fails(&["image", "inspect", "late:1"]).contains("late:1"));
    // Once the first reader is done, the writer goes first, then readers again.
    reader.kill().unwrap();
    reader.wait().unwrap();
    let o = writer.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.ok(&[
        "--lock-timeout",
        "5",
        "image",
        "import",
        layout.to_str().unwrap(),
        "--tag",
        "late:1",
    ]);
}
