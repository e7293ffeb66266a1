//! The default security profile, proven from inside real containers (libcontainer, user namespaces,
//! seccomp, cgroups v1): every claim of SECURITY-DEFAULTS.md that `run` makes is read back from
//! /proc, /sys or a system call made in the container.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The probe (tests/fixtures/probe.c), built static once per test binary.
fn probe() -> PathBuf {
    c_fixture("probe")
}

/// A busybox image with users, the probe, and a setuid-root copy of the probe.
fn image(env: &Env) -> &'static str {
    let rootfs = env.path("rootfs");
    busybox_rootfs(&rootfs);
    for a in [
        "true", "id", "stat", "touch", "mkdir", "rm", "echo", "seq", "sleep", "dd", "grep", "wc", "mv", "head", "ln", "httpd", "wget",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    for d in ["etc", "tmp", "data/dir", "data/replace"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    std::fs::write(rootfs.join("data/edit"), "old").unwrap();
    std::fs::write(rootfs.join("data/gone"), "x").unwrap();
    std::fs::write(rootfs.join("data/replace/old"), "x").unwrap();
    // Links an image could use to redirect a mount.
    std::os::unix::fs::symlink("/etc/passwd", rootfs.join("data/link")).unwrap();
    std::os::unix::fs::symlink("/etc", rootfs.join("data/dirlink")).unwrap();
    std::fs::copy(probe(), rootfs.join("bin/probe")).unwrap();
    std::fs::copy(probe(), rootfs.join("bin/suid-probe")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rootfs.join("bin/suid-probe"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    env.ok(&[
        "image",
        "import",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--tag",
        "sec",
        "--cmd",
        "/bin/sh",
    ]);
    "sec"
}

/// Runs a container; returns (exit code, stdout, stderr).
fn run(env: &Env, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["run", "--rm"];
    all.extend_from_slice(args);
    let o = env.run(&all);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

#[test]
fn default_profile_seen_from_inside() {
    let env = Env::new();
    let img = image(&env);
    let (code, out, err) = run(&env, &[img, "cat", "/proc/self/status"]);
    assert_eq!(code, 0, "{err}");
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT SETFCAP
    assert_eq!(status_field(&out, "CapEff"), "00000000800405fb");
    assert_eq!(status_field(&out, "CapBnd"), "00000000800405fb");
    assert_eq!(status_field(&out, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert_eq!(status_field(&out, "Seccomp"), "2");
    assert!(err.trim().is_empty(), "the default profile must not warn: {err}");
    // No standard signal ignored, in the first process or an exec'd one: the CLI's runtime
    // ignores SIGPIPE, and what is ignored survives fork and exec (a `yes | head` would spin
    // forever). (32 and 33 are the C library's own, and it sets them up itself.)
    let ignored = |s: &str| u64::from_str_radix(&status_field(s, "SigIgn"), 16).unwrap() & 0x7fff_ffff;
    assert_eq!(ignored(&out), 0, "run: {out}");
    env.ok(&["run", "-d", "--name", "sig", img, "sleep", "60"]);
    let out = env.ok(&["exec", "sig", "cat", "/proc/self/status"]);
    assert_eq!(ignored(&out), 0, "exec: {out}");
    env.ok(&["rm", "-f", "sig"]);

    let (_, out, _) = run(
        &env,
        &[
            img,
            "cat",
            "/proc/self/uid_map",
            "/proc/self/gid_map",
            "/sys/fs/cgroup/pids/pids.max",
            "/proc/self/cgroup",
        ],
    );
    let maps: Vec<Vec<&str>> = out.lines().take(2).map(|l| l.split_whitespace().collect()).collect();
    for m in &maps {
        assert_eq!(m[0], "0");
        assert_ne!(m[1], "0", "root in the container is root on the host: {out}");
        assert_eq!(m[2], "65536");
    }
    assert_eq!(out.lines().nth(2), Some("2048"), "{out}");
    assert!(
        out.lines().skip(3).all(|l| l.ends_with(":/")),
        "the cgroup namespace is not private: {out}"
    );
}

#[test]
fn each_container_gets_its_own_id_range() {
    // Containers that exist at the same time never share a range: in one store, or in two stores
    // (--root) on the same host (the registry of claims is host-wide).
    let a = Env::new();
    let b = Env::new();
    let (img_a, img_b) = (image(&a), image(&b));
    let host_of = |env: &Env, name: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", name])).unwrap();
        v[0]["Bulkhead"]["SecurityProfile"]["UserNamespace"][0]["hostID"].to_string()
    };
    a.ok(&["run", "-d", "--name", "a1", img_a, "sleep", "30"]);
    a.ok(&["run", "-d", "--name", "a2", img_a, "sleep", "30"]);
    b.ok(&["run", "-d", "--name", "b1", img_b, "sleep", "30"]);
    let hosts = [host_of(&a, "a1"), host_of(&a, "a2"), host_of(&b, "b1")];
    let distinct: std::collections::BTreeSet<&String> = hosts.iter().collect();
    assert_eq!(distinct.len(), 3, "ranges shared: {hosts:?}");
    // And it is what the container itself sees.
    let out = a.ok(&["exec", "a1", "cat", "/proc/self/uid_map"]);
    assert_eq!(out.split_whitespace().nth(1).unwrap(), hosts[0]);
    for (env, n) in [(&a, "a1"), (&a, "a2"), (&b, "b1")] {
        env.ok(&["rm", "-f", n]);
    }
}

/// Every container's ids come from bulkhead's reservation in /etc/subuid and /etc/subgid, made on
/// first use around the ranges that real users already have there, and a reservation that another
/// user's range overlaps is refused. (The files are moved into the test's directory.)
#[test]
fn id_ranges_come_from_a_reservation_in_subuid_that_overlaps_no_one() {
    let env = Env::new();
    let img = image(&env);
    let (subuid, subgid) = (env.path("subuid"), env.path("subgid"));
    // alice holds the stretch where the reservation would start by default.
    std::fs::write(&subuid, "alice:1048576:1048576\n").unwrap();
    std::fs::write(&subgid, "alice:1048576:1048576\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .env("BULKHEAD_SUBUID", &subuid)
            .env("BULKHEAD_SUBGID", &subgid)
            .arg("--root")
            .arg(env.root())
            .arg("--config")
            .arg(env.path("config"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["run", "--rm", img, "cat", "/proc/self/uid_map", "/proc/self/gid_map"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let reservation = std::fs::read_to_string(&subuid).unwrap();
    let line = reservation
        .lines()
        .find(|l| l.starts_with("bulkhead:"))
        .unwrap_or_else(|| panic!("no reservation: {reservation}"));
    let f: Vec<u64> = line.split(':').skip(1).map(|x| x.parse().unwrap()).collect();
    assert!(f[0] >= 2 * 1048576, "the reservation overlaps alice's range: {line}");
    assert!(std::fs::read_to_string(&subgid).unwrap().contains(line), "subgid differs");
    for map in out.lines() {
        let host: u64 = map.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(
            (f[0]..f[0] + f[1]).contains(&host),
            "host id {host} is outside the reservation {line}: {out}"
        );
    }
    // A reservation that bob's range overlaps is refused with one line, and nothing starts.
    std::fs::write(&subuid, "bulkhead:1048576:1048576\nbob:1114112:65536\n").unwrap();
    std::fs::write(&subgid, "bulkhead:1048576:1048576\n").unwrap();
    let o = run(&["run", "--rm", img, "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bob") && err.contains("overlaps"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "{err}");
}

/// Servers on 127.0.0.1 and ::1 are reachable from inside their own container: loopback is up in
/// every new network namespace, on both executors (libcontainer does not do it by itself).
#[test]
fn loopback_is_up_in_every_container() {
    let env = Env::new();
    let img = image(&env);
    for runtime in ["libcontainer", "runc"] {
        env.ok(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "--name",
            "web",
            img,
            "sh",
            "-c",
            "echo served > /tmp/page; httpd -p 127.0.0.1:8080 -h /tmp; httpd -f -p [::1]:8081 -h /tmp",
        ]);
        let mut last = String::new();
        // The servers start in the background of the container: a bounded wait for the first answer.
        for _ in 0..50 {
            let o = env.run(&[
                "exec",
                "web",
                "sh",
                "-c",
                "wget -qO- http://127.0.0.1:8080/page && wget -qO- http://[::1]:8081/page",
            ]);
            last = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            if o.status.success() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(last, "served\nserved\n", "{runtime}: loopback is not usable: {last}");
        env.ok(&["rm", "-f", "web"]);
    }
}

/// --network=host and --pid=host work under the default user namespace (the host's /sys and /proc
/// are bind-mounted, since a fresh sysfs or proc cannot be mounted there), and the container still
/// cannot write to /sys or read what the masks hide.
#[test]
fn host_network_and_host_pid_start_under_the_user_namespace() {
    let env = Env::new();
    let img = image(&env);
    for runtime in ["libcontainer", "runc"] {
        let (code, out, err) = run(
            &env,
            &[
                "--runtime",
                runtime,
                "--network",
                "host",
                img,
                "sh",
                "-c",
                "cat /proc/self/uid_map; ls /sys/class/net; touch /sys/x || echo sys-read-only; touch /sys/kernel/x || echo sub-read-only",
            ],
        );
        assert_eq!(code, 0, "{runtime}: {err}");
        assert!(err.contains("--network=host"), "{runtime}: the warning stays: {err}");
        assert!(
            !out.starts_with("         0          0"),
            "{runtime}: not in a user namespace: {out}"
        );
        let host_links: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for l in &host_links {
            assert!(out.lines().any(|x| x == l), "{runtime}: host link {l} missing: {out}");
        }
        assert!(out.contains("sys-read-only") && out.contains("sub-read-only"), "{runtime}: {out}");

        let (code, out, err) = run(
            &env,
            &["--runtime", runtime, "--pid", "host", img, "sh", "-c", "cat /proc/self/uid_map; test -d /proc/1 && echo sees-host-pid-1; stat -c %t:%T /proc/keys /proc/timer_list; echo x > /proc/sysrq-trigger || echo sysrq-refused"],
        );
        assert_eq!(code, 0, "{runtime}: {err}");
        assert!(err.contains("--pid=host"), "{runtime}: {err}");
        assert!(!out.starts_with("         0          0"), "{runtime}: {out}");
        assert!(out.contains("sees-host-pid-1") && out.contains("sysrq-refused"), "{runtime}: {out}");
        for l in out.lines().filter(|l| l.contains(':') && !l.contains(' ')) {
            assert_eq!(l, "1:3", "{runtime}: a masked path is not /dev/null: {out}");
        }
    }
}

#[test]
fn masked_paths_are_dev_null_and_kernel_interfaces_read_only() {
    let env = Env::new();
    let img = image(&env);
    let (_, out, _) = run(&env, &[img, "sh", "-c", "for p in /proc/timer_list /proc/keys /proc/sched_debug /proc/interrupts; do stat -c '%n %t:%T' $p; done; ls /sys/firmware | wc -l; cat /proc/keys | wc -c"]);
    for p in ["/proc/timer_list", "/proc/keys", "/proc/interrupts"] {
        assert!(out.contains(&format!("{p} 1:3")), "{p} is not /dev/null: {out}");
    }
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[lines.len() - 2].trim(), "0", "/sys/firmware is not empty: {out}");
    assert_eq!(lines[lines.len() - 1].trim(), "0", "/proc/keys is not empty: {out}");
    let (_, out, _) = run(&env, &[img, "sh", "-c", "echo 1 > /proc/sys/kernel/domainname; echo proc=$?; echo 1 > /sys/kernel/mm/ksm/run; echo sys=$?; echo 1 > /proc/sysrq-trigger; echo sysrq=$?"]);
    assert!(out.contains("proc=1") && out.contains("sys=1") && out.contains("sysrq=1"), "{out}");
}

#[test]
fn dangerous_system_calls_fail_with_eperm() {
    let env = Env::new();
    let img = image(&env);
    let calls = [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "keyctl",
        "add_key",
        "bpf",
        "io_uring_setup",
        "userfaultfd",
        "perf_event_open",
        "init_module",
        "open_tree",
        "fsopen",
        "clone_newuser",
        "socket_vsock",
        "socket_alg",
        // The same with high bits above the 32 the kernel reads.
        "socket_vsock_hi",
        "socket_alg_hi",
        "tiocsti",
        "tiocsti_hi",
        "tioclinux",
    ];
    let mut args = vec![img, "probe"];
    args.extend_from_slice(&calls);
    args.extend_from_slice(&["clone3", "clone_plain", "socket_unix", "socket_unix_hi", "tcgets", "getpid"]);
    let (code, out, err) = run(&env, &args);
    assert_eq!(code, 0, "{err}");
    let errno = |n: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{n} ")))
            .unwrap_or_else(|| panic!("{n} missing: {out}"))
            .to_owned()
    };
    for c in calls {
        assert_eq!(errno(c), "1", "{c} did not fail with EPERM: {out}");
    }
    assert_eq!(errno("clone3"), "38", "clone3 must say ENOSYS so libcs fall back to clone");
    assert_eq!(errno("clone_plain"), "0", "plain clone (fork) must work");
    assert_eq!(errno("socket_unix"), "0");
    assert_eq!(
        errno("socket_unix_hi"),
        "0",
        "the upper half of a 32-bit argument is ignored, as the kernel does"
    );
    assert_eq!(
        errno("tcgets"),
        "25",
        "other ioctls reach the kernel (ENOTTY: stdin is no terminal)"
    );
    assert_eq!(errno("getpid"), "0");
    // The filter, not only missing capabilities, is what stops these: unconfined, they get further.
    let (_, out, err) = run(
        &env,
        &[
            "--security-opt",
            "seccomp=unconfined",
            img,
            "probe",
            "keyctl",
            "io_uring_setup",
            "clone3",
        ],
    );
    assert!(err.contains("seccomp=unconfined"), "weakening must warn: {err}");
    for c in ["keyctl", "io_uring_setup", "clone3"] {
        let e = out.lines().find_map(|l| l.strip_prefix(&format!("{c} "))).unwrap();
        assert_ne!(e, "1", "{c} got EPERM without seccomp: the test proves nothing");
    }
}

#[test]
fn setuid_binary_cannot_raise_privilege() {
    let env = Env::new();
    let img = image(&env);
    let (code, out, err) = run(&env, &["-u", "1000", img, "suid-probe", "euid"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1000", "no_new_privs must stop setuid");
    // Without no_new_privs the same binary does become root (of the user namespace): the test is real.
    // (runc: libcontainer 0.7 cannot install a seccomp filter without no_new_privs, and says so.)
    let (code, _, err) = run(
        &env,
        &["-u", "1000", "--security-opt", "no-new-privileges=false", img, "suid-probe", "euid"],
    );
    assert_eq!(code, 125);
    assert!(err.contains("--runtime runc"), "{err}");
    let (_, out, err) = run(
        &env,
        &[
            "-u",
            "1000",
            "--security-opt",
            "no-new-privileges=false",
            "--runtime",
            "runc",
            img,
            "suid-probe",
            "euid",
        ],
    );
    assert!(err.contains("no-new-privileges=false"), "{err}");
    assert_eq!(out.trim(), "0", "{err}");
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    let env = Env::new();
    let img = image(&env);
    // The loop runs in a subshell: busybox sh gives up at the first fork that fails ("can't fork").
    let (_, out, err) = run(
        &env,
        &[
            "--pids-limit",
            "20",
            img,
            "sh",
            "-c",
            "(for i in $(seq 60); do sleep 3 & done) 2>/dev/null; cat /sys/fs/cgroup/pids/pids.current",
        ],
    );
    let current: u32 = out
        .trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out} {err}"));
    assert!(current <= 20, "{current} processes despite a limit of 20");
    // The host is unaffected: we are still able to fork here.
    assert!(Command::new("true").status().unwrap().success());
}

#[test]
fn memory_limit_oom_kills_and_inspect_says_so() {
    let env = Env::new();
    let img = image(&env);
    for runtime in ["libcontainer", "runc"] {
        let o = env.run(&[
            "run",
            "--name",
            "oom",
            "--runtime",
            runtime,
            "--memory",
            "32m",
            img,
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=128M",
            "count=1",
        ]);
        assert_eq!(o.status.code(), Some(137), "{runtime}: {}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "oom"])).unwrap();
        assert_eq!(v[0]["State"]["OOMKilled"], true, "{runtime}");
        assert_eq!(v[0]["State"]["ExitCode"], 137);
        env.ok(&["rm", "oom"]);
    }
}

#[test]
fn read_only_rootfs_allows_only_its_tmpfs() {
    let env = Env::new();
    let img = image(&env);
    let (_, out, _) = run(
        &env,
        &[
            "--read-only",
            img,
            "sh",
            "-c",
            "touch /etc/x; echo etc=$?; touch /tmp/x; echo tmp=$?; touch /run/x; echo run=$?",
        ],
    );
    assert!(out.contains("etc=1") && out.contains("tmp=0") && out.contains("run=0"), "{out}");
}

#[test]
fn workdir_through_proc_self_fd_is_refused() {
    // CVE-2024-21626: a working directory in /proc/self/fd reaches a leaked host descriptor.
    let env = Env::new();
    let img = image(&env);
    for fd in ["3", "4", "5", "7", "8"] {
        let (code, out, err) = run(&env, &["-w", &format!("/proc/self/fd/{fd}"), img, "sh", "-c", "ls ../../..; pwd"]);
        assert_eq!(code, 125, "-w /proc/self/fd/{fd} ran: {out}");
        assert!(err.contains("inside /proc"), "{err}");
    }
    let (code, _, err) = run(&env, &["-w", "//proc/./self/cwd", img, "true"]);
    assert_eq!(code, 125, "{err}");
}

#[test]
fn image_with_dev_symlink_cannot_redirect_masks() {
    let env = Env::new();
    let rootfs = env.path("evil-rootfs");
    busybox_rootfs(&rootfs);
    for a in ["stat", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    // /dev points at the canary on the host; /proc at a directory of the image.
    std::os::unix::fs::symlink(env.path("canary"), rootfs.join("dev")).unwrap();
    std::fs::create_dir(rootfs.join("fakeproc")).unwrap();
    std::os::unix::fs::symlink("fakeproc", rootfs.join("proc")).unwrap();
    env.ok(&["image", "import", "--rootfs", rootfs.to_str().unwrap(), "--tag", "evil"]);
    let (code, out, err) = run(
        &env,
        &[
            "evil",
            "sh",
            "-c",
            "stat -c '%n %F %t:%T' /dev /dev/null /proc/keys; echo x > /dev/null; echo written > /dev/probe",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/dev directory"), "{out}");
    assert!(out.contains("/dev/null character special file 1:3"), "{out}");
    assert!(out.contains("/proc/keys character special file 1:3"), "{out}");
    env.assert_canary_untouched();
}

/// The class of CVE-2018-15664: a container swaps a directory of its root filesystem for a symlink
/// to a host directory, over and over, while `export` and `diff` read that root from the host.
/// Neither may ever read, list or copy what is behind the link.
#[test]
fn export_and_diff_follow_no_symlink_swapped_in_by_the_container() {
    let env = Env::new();
    let img = image(&env);
    let host_dir = env.path("host-private");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("host-marker"), "HOST-SECRET-CONTENT").unwrap();
    let swapper = format!(
        "mkdir -p /d/sub; echo inside > /d/sub/file; \
         while true; do mv /d /d.real; ln -s {h} /d; mv /d /d.link; mv /d.real /d; rm /d.link; done",
        h = host_dir.display()
    );
    env.ok(&["run", "-d", "--name", "swap", img, "sh", "-c", &swapper]);
    let mut tars_read = 0;
    for i in 0..50 {
        let out = env.path("export.tar");
        let o = env.run(&["export", "swap", "-o", out.to_str().unwrap()]);
        assert!(o.status.success(), "export {i}: {}", String::from_utf8_lossy(&o.stderr));
        let mut ar = tar::Archive::new(std::fs::File::open(&out).unwrap());
        for entry in ar.entries().unwrap() {
            let mut entry = entry.unwrap_or_else(|e| panic!("export {i}: the tar is not readable: {e}"));
            let path = entry.path().unwrap().display().to_string();
            assert!(!path.contains("host-marker"), "export {i} listed the host's directory: {path}");
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            assert!(
                !String::from_utf8_lossy(&data).contains("HOST-SECRET"),
                "export {i} copied a host file into {path}"
            );
        }
        tars_read += 1;
        let o = env.run(&["diff", "swap"]);
        assert!(o.status.success(), "diff {i}: {}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!out.contains("host-marker"), "diff {i} listed the host's directory: {out}");
    }
    assert_eq!(tars_read, 50);
    // The swapper really ran all along.
    let top = env.ok(&["top", "swap"]);
    assert!(top.contains("while true"), "{top}");
    env.ok(&["rm", "-f", "swap"]);
    env.assert_canary_untouched();
}

#[test]
fn diff_lists_exactly_what_changed() {
    let env = Env::new();
    let img = image(&env);
    let script = "echo new > /data/edit; rm /data/gone; echo a > /data/added; mkdir /data/newdir; echo b > /data/newdir/f; rm -r /data/replace; mkdir /data/replace; echo n > /data/replace/new";
    env.ok(&["run", "--name", "d", img, "sh", "-c", script]);
    let out = env.ok(&["diff", "d"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "C /data",
            "A /data/added",
            "C /data/edit",
            "D /data/gone",
            "A /data/newdir",
            "A /data/newdir/f",
            "C /data/replace",
            "A /data/replace/new",
            "D /data/replace/old",
        ],
        "{out}"
    );
    env.ok(&["rm", "d"]);
}

#[test]
fn weakening_flags_warn_and_show_in_inspect() {
    let env = Env::new();
    let img = image(&env);
    let o = env.run(&[
        "run",
        "--name",
        "weak",
        "--cap-add",
        "NET_RAW",
        "--pids-limit",
        "-1",
        "--userns",
        "host",
        img,
        "true",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().filter(|l| l.starts_with("bulkhead: warning:")).count(), 3, "{err}");
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "weak"])).unwrap();
    assert_eq!(v[0]["Bulkhead"]["Warnings"].as_array().unwrap().len(), 3);
    assert_eq!(v[0]["Bulkhead"]["SecurityProfile"]["UserNamespace"], "host");
    env.ok(&["rm", "weak"]);
}

#[test]
fn runc_runs_the_same_bundle() {
    let env = Env::new();
    let img = image(&env);
    let (code, out, err) = run(
        &env,
        &[
            "--runtime",
            "runc",
            img,
            "sh",
            "-c",
            "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; cat /proc/self/uid_map",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("NoNewPrivs:\t1") && out.contains("Seccomp:\t2"), "{out}");
    assert!(!out.contains(" 0          0 "), "{out}");
    // runc reads the clone rule's operands as libseccomp documents them: namespaces are refused.
    let (_, out, _) = run(&env, &["--runtime", "runc", img, "probe", "clone_plain", "clone_newuser"]);
    assert!(out.contains("clone_plain 0") && out.contains("clone_newuser 1"), "{out}");
}

#[test]
fn exec_gets_the_same_restrictions_as_the_container() {
    let env = Env::new();
    let img = image(&env);
    for runtime in ["libcontainer", "runc"] {
        env.ok(&["run", "-d", "--runtime", runtime, "--name", "ex", img, "sleep", "30"]);
        // Compare the exec'd process with the container's first process, both read from inside.
        let o = env.run(&[
            "exec",
            "ex",
            "sh",
            "-c",
            "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/1/status /proc/self/status; cat /proc/1/uid_map /proc/self/uid_map; cat /proc/self/cgroup; probe clone_newuser mount unshare keyctl clone_plain",
        ]);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert_eq!(o.status.code(), Some(0), "{runtime}: {err}");
        for key in ["CapEff", "CapBnd", "NoNewPrivs", "Seccomp"] {
            let vals: Vec<&str> = out
                .lines()
                .filter(|l| l.contains(&format!("{key}:")))
                .map(|l| l.rsplit('\t').next().unwrap())
                .collect();
            assert_eq!(vals.len(), 2, "{out}");
            assert_eq!(vals[0], vals[1], "{runtime}: {key} differs between the container and exec: {out}");
        }
        assert!(out.contains("NoNewPrivs:\t1") && out.contains("Seccomp:\t2"), "{runtime}: {out}");
        let maps: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with("0 ")).collect();
        assert_eq!(maps.len(), 2, "{out}");
        assert_eq!(maps[0], maps[1], "{runtime}: exec is not in the container's user namespace: {out}");
        assert!(
            out.lines().filter(|l| l.contains(":pids:")).all(|l| l.ends_with(":/")),
            "{runtime}: exec is not in the container's cgroup: {out}"
        );
        for c in ["clone_newuser", "mount", "unshare", "keyctl"] {
            assert!(out.contains(&format!("{c} 1")), "{runtime}: {c} was not refused in exec: {out}");
        }
        assert!(out.contains("clone_plain 0"), "{out}");
        // Exit status, user, working directory and environment carry through.
        let o = env.run(&[
            "exec",
            "-u",
            "1000",
            "-w",
            "/tmp",
            "-e",
            "FOO=bar",
            "ex",
            "sh",
            "-c",
            "id -u; pwd; echo $FOO; exit 7",
        ]);
        assert_eq!(o.status.code(), Some(7), "{runtime}");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).lines().collect::<Vec<_>>(),
            vec!["1000", "/tmp", "bar"]
        );
        env.ok(&["rm", "-f", "ex"]);
    }
}

/// Runs `cmd` under script(1), so that a real terminal is its stdin, stdout and controlling
/// terminal, as in an operator's shell; returns what the terminal showed.
fn on_a_terminal(cmd: &str) -> String {
    let o = Command::new("script")
        .args(["-qefc", cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).replace('\r', "")
}

/// The class of runc's CVE-2024-21626: what the caller of `exec` holds must not reach the
/// container. A shell's open descriptor to the host's / and its terminal are the attacks.
#[test]
fn exec_inherits_no_descriptor_session_or_terminal_from_its_caller() {
    let env = Env::new();
    let img = image(&env);
    let bin = env!("CARGO_BIN_EXE_bulkhead");
    let root = format!("{} --config {}", env.root().display(), env.path("config").display());
    for runtime in ["libcontainer", "runc"] {
        env.ok(&["run", "-d", "--runtime", runtime, "--name", "fdx", img, "sleep", "60"]);
        // The caller holds fd 7 (the host's /) and 8 (a host file) open without close-on-exec.
        // A directory anyone may write to, as /tmp is: only the descriptor can be what stops a write.
        std::fs::create_dir_all(env.path("open")).unwrap();
        std::fs::set_permissions(env.path("open"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        std::fs::set_permissions(env.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let secret = env.path("host-secret");
        std::fs::write(&secret, "host-only").unwrap();
        let out = on_a_terminal(&format!(
            "exec 7</ 8<{secret}; {bin} --root {root} exec -u 1000 fdx sh -c \
             'probe fds; echo sid $$; probe session; probe tiocsti tioclinux tiocsti_hi; cat /proc/self/fd/7/etc/hostname /proc/self/fd/8 2>&1; touch /proc/self/fd/7{escaped} 2>&1; echo done'",
            secret = secret.display(),
            escaped = env.path("open/escaped").display()
        ));
        assert!(out.contains("done"), "{runtime}: {out}");
        assert!(
            out.lines().any(|l| l == "fds 0 1 2"),
            "{runtime}: the exec'd process holds more than stdio: {out}"
        );
        let sids: Vec<&str> = out.lines().filter(|l| l.starts_with("sid ")).collect();
        assert!(
            sids.len() == 2 && sids[0] == sids[1] && out.contains("tty_nr 0"),
            "{runtime}: the exec'd shell does not lead a session of its own without a terminal: {out}"
        );
        for c in ["tiocsti", "tioclinux", "tiocsti_hi"] {
            assert!(out.contains(&format!("{c} 1")), "{runtime}: {c} was not refused: {out}");
        }
        assert!(!out.contains("host-only"), "{runtime}: read the host's file: {out}");
        assert!(!env.path("open/escaped").exists(), "{runtime}: wrote a file on the host");
        // The container makes its working directory a link to the caller's descriptor 7 (the
        // class of CVE-2024-21626 through the working directory): refused, nothing of the host's.
        env.ok(&["exec", "fdx", "ln", "-s", "/proc/self/fd/7", "/w"]);
        let out = on_a_terminal(&format!(
            "exec 7<{dir}; {bin} --root {root} exec -w /w fdx sh -c 'pwd; ls; cat host-secret'; echo status=$?",
            dir = env.dir.path().display()
        ));
        assert!(
            !out.contains("host-only") && !out.contains("canary"),
            "{runtime}: the working directory reached the host: {out}"
        );
        assert!(!out.contains("status=0"), "{runtime}: {out}");
        // With -t, the process has the container's own pty; TIOCSTI into it is still refused by
        // the filter (the host's terminal was never its terminal).
        let out = on_a_terminal(&format!(
            "exec 7</; {bin} --root {root} exec -t fdx sh -c 'probe fds; probe tiocsti tcgets'"
        ));
        assert!(out.lines().any(|l| l.ends_with("fds 0 1 2")), "{runtime}: {out}");
        assert!(out.contains("tiocsti 1") && out.contains("tcgets 0"), "{runtime}: {out}");
        env.ok(&["rm", "-f", "fdx"]);
    }
    // Without the filter the container's own terminal accepts TIOCSTI: the filter is what refuses it
    // (unless this kernel refuses TIOCSTI to everyone: dev.tty.legacy_tiocsti = 0).
    if std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").is_ok_and(|v| v.trim() == "0") {
        return;
    }
    let out = on_a_terminal(&format!(
        "{bin} --root {root} run --rm -t --security-opt seccomp=unconfined {img} probe tiocsti"
    ));
    assert!(out.contains("tiocsti 0"), "{out}");
}

#[test]
fn exec_reports_a_missing_command_and_a_stopped_container() {
    let env = Env::new();
    let img = image(&env);
    // Docker's statuses for a command that cannot be run: 127 missing, 126 not executable.
    for runtime in ["libcontainer", "runc"] {
        let o = env.run(&["run", "--rm", "--runtime", runtime, img, "/nonexistent"]);
        assert_eq!(o.status.code(), Some(127), "{runtime}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("/nonexistent"),
            "{runtime}: the reason is named"
        );
        assert_eq!(
            env.run(&["run", "--rm", "--runtime", runtime, img, "/etc"]).status.code(),
            Some(126),
            "{runtime}"
        );
    }
    env.ok(&[
        "run",
        "-d",
        "--name",
        "emb",
        img,
        "sh",
        "-c",
        "sleep 30\n#\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
    ]);
    // A command holding a newline and characters of two bytes each: one row, cut between characters.
    let ps = env.ok(&["ps"]);
    assert_eq!(ps.lines().count(), 2, "{ps}");
    assert!(ps.contains("\\n"), "{ps}");
    let o = env.run(&["exec", "emb", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    env.ok(&["stop", "-t", "1", "emb"]);
    let o = env.run(&["exec", "emb", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not running"));
    env.ok(&["rm", "emb"]);
}

#[test]
fn volumes_bind_and_tmpfs() {
    let env = Env::new();
    let img = image(&env);
    let host = env.path("hostdir");
    std::fs::create_dir(&host).unwrap();
    // Root in the container is an unprivileged host id: it writes where others may write.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(host.join("from-host"), "h\n").unwrap();
    let v = format!("{}:/data", host.display());
    let (code, out, err) = run(
        &env,
        &[
            "-v",
            &v,
            "--tmpfs",
            "/cache:size=1m",
            img,
            "sh",
            "-c",
            "cat /data/from-host; echo c > /data/from-container; grep ' /cache ' /proc/mounts | cut -d' ' -f3",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["h", "tmpfs"]);
    assert_eq!(std::fs::read_to_string(host.join("from-container")).unwrap(), "c\n");
    let ro = format!("{}:/data:ro", host.display());
    let (_, out, _) = run(&env, &["-v", &ro, img, "sh", "-c", "echo x > /data/nope; echo rc=$?"]);
    assert!(out.contains("rc=1"), "{out}");
    assert!(!host.join("nope").exists());
    for bad in [
        format!("{}:/proc/x", host.display()),
        format!("{}:/", host.display()),
        "/no/such/dir:/data".to_owned(),
    ] {
        let (code, _, err) = run(&env, &["-v", &bad, img, "true"]);
        assert_eq!(code, 125, "{bad}: {err}");
    }
}

#[test]
fn idmapped_volumes_show_the_owner_as_the_containers_root() {
    let env = Env::new();
    let img = image(&env);
    // A directory of its own user (0755: nobody else may write), as a service's data would be.
    let host = env.path("owned");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("f"), "data\n").unwrap();
    for p in [&host, &host.join("f")] {
        rustix::fs::chown(
            p.as_path(),
            Some(rustix::fs::Uid::from_raw(1234)),
            Some(rustix::fs::Gid::from_raw(1235)),
        )
        .unwrap();
    }
    let owner = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    // Without idmap: owned by nobody in the container, and not writable for its root.
    let plain = format!("{}:/data/vol", host.display());
    let (code, out, err) = run(
        &env,
        &[
            "-v",
            &plain,
            img,
            "sh",
            "-c",
            "stat -c '%u:%g' /data/vol/f; echo x > /data/vol/new; echo rc=$?",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["65534:65534", "rc=1"]);
    // With idmap: the owner is the container's root, and what it writes belongs to the owner.
    let mapped = format!("{}:/data/vol:idmap", host.display());
    let (code, out, err) = run(
        &env,
        &[
            "-v",
            &mapped,
            img,
            "sh",
            "-c",
            "stat -c '%u:%g' /data/vol/f; echo c > /data/vol/new; mkdir /data/vol/d; echo rc=$?",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["0:0", "rc=0"]);
    assert_eq!(owner(&host.join("new")), (1234, 1235));
    assert_eq!(owner(&host.join("d")), (1234, 1235));
    // A single file, at a path the image does not have.
    let file = format!("{}:/etc/app/app.conf:idmap", host.join("f").display());
    let (code, out, err) = run(
        &env,
        &[
            "-v",
            &file,
            img,
            "sh",
            "-c",
            "stat -c '%u:%g' /etc/app/app.conf; cat /etc/app/app.conf",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "0:0\ndata\n"), "{err}");
    let (code, out, err) = run(
        &env,
        &["--runtime", "runc", "-v", &mapped, img, "stat", "-c", "%u:%g", "/data/vol/new"],
    );
    assert_eq!((code, out.as_str()), (0, "0:0\n"), "runc: {err}");
    // nosuid: a setuid bit set there does not count inside; read-only is read-only.
    let ro = format!("{}:/mnt/deep/vol:ro,idmap", host.display());
    let (code, out, err) = run(
        &env,
        &[
            "-v",
            &ro,
            img,
            "sh",
            "-c",
            "cat /mnt/deep/vol/f; echo y > /mnt/deep/vol/ro; echo rc=$?; grep ' /mnt/deep/vol ' /proc/mounts",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["data", "rc=1"]);
    assert!(
        lines[2].contains(" ro,") && lines[2].contains("nosuid") && lines[2].contains("nodev"),
        "{out}"
    );
    assert!(!host.join("ro").exists());
    // A directory of root's is refused: the container's root would create host-root files.
    let root_dir = env.path("rootdir");
    std::fs::create_dir(&root_dir).unwrap();
    let (code, _, err) = run(&env, &["-v", &format!("{}:/data/vol:idmap", root_dir.display()), img, "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("belongs to root"), "{err}");
    let (code, _, err) = run(&env, &["--userns", "host", "-v", &mapped, img, "true"]);
    assert_eq!(code, 125, "{err}");
    // A container created now and started later gets its volume again at each start.
    env.ok(&[
        "create",
        "--name",
        "iv",
        "-v",
        &mapped,
        img,
        "sh",
        "-c",
        "stat -c '%u' /data/vol/f >> /data/vol/starts",
    ]);
    for _ in 0..2 {
        env.ok(&["start", "iv"]);
        env.ok(&["wait", "iv"]);
    }
    assert_eq!(std::fs::read_to_string(host.join("starts")).unwrap(), "0\n0\n");
    env.ok(&["rm", "iv"]);
    // Nothing stays mounted on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(host.to_str().unwrap()), "{mounts}");
}

#[test]
fn mount_target_that_the_image_makes_a_symlink_is_refused() {
    // CVE-2021-30465 class: the image turns the mount target into a symlink to a host path.
    let env = Env::new();
    let rootfs = env.path("evil-rootfs");
    busybox_rootfs(&rootfs);
    std::os::unix::fs::symlink(env.path("canary"), rootfs.join("data")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../..", rootfs.join("up")).unwrap();
    env.ok(&["image", "import", "--rootfs", rootfs.to_str().unwrap(), "--tag", "evil"]);
    let host = env.path("hostdir");
    std::fs::create_dir(&host).unwrap();
    for target in ["/data", "/up"] {
        let v = format!("{}:{target}", host.display());
        let (code, _, err) = run(&env, &["-v", &v, "evil", "sh", "-c", "touch /data/pwned /up/pwned"]);
        assert_eq!(code, 125, "{target}: {err}");
        assert!(err.contains("symlink"), "{err}");
    }
    env.assert_canary_untouched();
}

#[test]
fn ulimits_and_labels() {
    let env = Env::new();
    let img = image(&env);
    let (code, out, err) = run(&env, &["--ulimit", "nofile=100:200", img, "sh", "-c", "ulimit -n; ulimit -Hn"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["100", "200"]);
    let (code, _, err) = run(&env, &["--ulimit", "nofile=10:999999999", img, "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("above this host's"), "{err}");
    env.ok(&["run", "--name", "lab", "--label", "team=infra", "--label", "tier=", img, "true"]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "lab"])).unwrap();
    assert_eq!(v[0]["Config"]["Labels"], serde_json::json!({"team": "infra", "tier": ""}));
    env.ok(&["rm", "lab"]);
}

/// Runs bulkhead with `input` on its standard input.
fn run_with_input(env: &Env, args: &[&str], input: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--root")
        .arg(env.root())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).replace('\r', ""))
}

#[test]
fn tty_for_run_and_exec() {
    let env = Env::new();
    let img = image(&env);
    let script = "tty; test -t 0 && echo stdin-is-a-tty; read x; echo got:$x; exit 4";
    for runtime in ["libcontainer", "runc"] {
        let (code, out) = run_with_input(
            &env,
            &["run", "--rm", "-t", "--runtime", runtime, img, "sh", "-c", script],
            "hello\n",
        );
        assert_eq!(code, 4, "{runtime}: {out}");
        assert!(
            out.contains("/dev/pts/0") && out.contains("stdin-is-a-tty") && out.contains("got:hello"),
            "{runtime}: {out}"
        );

        env.ok(&["run", "-d", "--runtime", runtime, "--name", "t", img, "sleep", "30"]);
        let (code, out) = run_with_input(&env, &["exec", "-t", "t", "sh", "-c", script], "there\n");
        assert_eq!(code, 4, "{runtime}: {out}");
        assert!(out.contains("/dev/pts/") && out.contains("got:there"), "{runtime}: {out}");
        let (_, out) = run_with_input(&env, &["exec", "t", "sh", "-c", "tty"], "");
        assert!(out.contains("not a tty"), "{runtime}: without -t there is no terminal: {out}");
        env.ok(&["rm", "-f", "t"]);
    }
}

/// Docker's habits: `run -dit sh` keeps a shell waiting on its pty, `run -di sh` on an open stdin,
/// `run -d sh` ends at once (stdin is /dev/null); a pty's output is logged, detached or not.
#[test]
fn detached_tty_and_open_stdin_keep_a_shell_and_log_its_output() {
    let env = Env::new();
    let img = image(&env);
    for runtime in ["libcontainer", "runc"] {
        env.ok(&["run", "-dit", "--runtime", runtime, "--name", "dit", img, "sh"]);
        env.ok(&["run", "-di", "--runtime", runtime, "--name", "di", img, "sh"]);
        env.ok(&["run", "-d", "--runtime", runtime, "--name", "d", img, "sh"]);
        env.ok(&[
            "run",
            "-dt",
            "--runtime",
            runtime,
            "--name",
            "dt",
            img,
            "sh",
            "-c",
            "tty; echo from-a-pty",
        ]);
        assert_eq!(env.ok(&["wait", "d"]).trim(), "0", "{runtime}");
        assert_eq!(env.ok(&["wait", "dt"]).trim(), "0", "{runtime}");
        let out = env.ok(&["logs", "dt"]);
        assert!(
            out.contains("/dev/pts/0\r\nfrom-a-pty\r\n"),
            "{runtime}: the pty's output, as written: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
        let ps = env.ok(&["ps"]);
        assert!(ps.contains("dit") && ps.contains(" di"), "{runtime}: the shells wait:\n{ps}");
        assert!(
            env.ok(&["exec", "dit", "sh", "-c", "readlink /proc/1/fd/0"]).contains("/dev/pts/0"),
            "{runtime}"
        );
        assert!(
            env.ok(&["exec", "di", "sh", "-c", "readlink /proc/1/fd/0"]).contains("pipe:"),
            "{runtime}"
        );
        assert!(
            env.ok(&["logs", "dit"]).contains("BusyBox"),
            "{runtime}: the shell's banner is logged"
        );
        env.ok(&["logs", "--verify", "dit"]);
        env.ok(&["rm", "-f", "dit", "di", "d", "dt"]);
    }
    // In the foreground too: shown and logged.
    let (code, out) = run_with_input(&env, &["run", "-t", "--name", "fg", img, "sh", "-c", "echo shown-and-logged"], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("shown-and-logged"));
    assert!(env.ok(&["logs", "fg"]).contains("shown-and-logged"));
    env.ok(&["rm", "fg"]);
}

/// CVE-2019-5736: the exploit keeps a descriptor to the runtime's /proc/PID/exe and, once the
/// runtime is gone (no more ETXTBSY), reopens it for writing. Against bulkhead's sealed copy that
/// fails: the file it runs is on a read-only overlayfs attached nowhere.
#[test]
fn runtime_binary_cannot_be_written_through_proc_exe() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let env = Env::new();
    let img = image(&env);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--root")
        .arg(env.root())
        .args(["run", "--rm", img, "sleep", "1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let exe = format!("/proc/{}/exe", child.id());
    // Once the process has re-executed itself (its exe is no longer the file we spawned).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_link(&exe).is_ok_and(|p| p == Path::new(env!("CARGO_BIN_EXE_bulkhead"))) {
        assert!(std::time::Instant::now() < deadline, "bulkhead never re-executed itself");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let path = std::ffi::CString::new(exe.clone()).unwrap();
    // SAFETY: open(2) with a valid path; the descriptor is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    assert!(fd >= 0, "{exe}: {}", std::io::Error::last_os_error());
    // SAFETY: just opened, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A read-only overlayfs here; a sealed memfd (tmpfs) where overlayfs cannot be mounted.
    let on_overlay = rustix::fs::fstatfs(&fd).unwrap().f_type as i64 == 0x794c_7630;
    assert!(child.wait().unwrap().success());
    let again = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let err = std::fs::OpenOptions::new().write(true).open(&again).unwrap_err();
    let expected = if on_overlay { libc::EROFS } else { libc::EPERM };
    assert_eq!(err.raw_os_error(), Some(expected), "{err}");
}

#[test]
fn other_host_users_cannot_read_a_containers_files() {
    let env = Env::new();
    let img = image(&env);
    let id = env
        .ok(&[
            "run",
            "-d",
            "--name",
            "priv",
            img,
            "sh",
            "-c",
            "echo secret > /etc/s; chmod 644 /etc/s; echo logged-secret; sleep 30",
        ])
        .trim()
        .to_owned();
    let dir = env.root().join("containers").join(&id);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The upper directory's path is in /proc/mounts for all to see; its files must still be root's.
    for path in [
        dir.join("upper/etc/s"),
        dir.join("logs/container.log"),
        dir.join("bundle/config.json"),
    ] {
        let o = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "cat"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!o.status.success(), "nobody could read {}", path.display());
    }
    assert!(
        std::fs::read_to_string(dir.join("upper/etc/s")).unwrap().contains("secret"),
        "the file is there, for root"
    );
    env.ok(&["rm", "-f", "priv"]);
}

/// A container that made a tree 2,040 directories deep (`mkdir d; cd d` in a loop) is removed
/// whole, and only then is its id range given back.
#[test]
fn a_container_with_a_very_deep_tree_is_removed() {
    let env = Env::new();
    let img = image(&env);
    env.ok(&[
        "run",
        "--name",
        "deep",
        img,
        "sh",
        "-c",
        "i=0; while [ $i -lt 2040 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; echo x > f",
    ]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "deep"])).unwrap();
    let host = v[0]["Bulkhead"]["SecurityProfile"]["UserNamespace"][0]["hostID"].to_string();
    let claim = std::path::Path::new("/var/lib/bulkhead-ranges").join(&host);
    let owner = std::fs::read_to_string(&claim).unwrap_or_else(|_| panic!("no claim for {host}"));
    env.ok(&["rm", "deep"]);
    assert!(env.ok(&["ps", "-a", "-q"]).trim().is_empty());
    // Given back: gone, or already claimed by another container (tests run side by side).
    let now = std::fs::read_to_string(&claim).unwrap_or_default();
    assert!(now.lines().next() != owner.lines().next(), "the id range was not given back");
}

#[test]
fn a_closed_stderr_does_not_abandon_a_run_halfway() {
    let env = Env::new();
    let img = image(&env);
    // `bulkhead --log-level debug run --rm IMG true 2>&1 | head -0`: the log lines meet a closed
    // pipe. The run finishes and leaves no container behind (it used to panic after creating it).
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--root")
        .arg(env.root())
        .arg("--config")
        .arg(env.path("config"))
        .args(["--log-level", "debug", "run", "--rm", img, "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(env.ok(&["ps", "-a", "-q"]).trim(), "", "a container was left behind");
}

#[test]
fn named_volumes_keep_owners_across_id_ranges_and_never_grant_setuid() {
    let env = Env::new();
    let img = image(&env);
    env.ok(&["volume", "create", "--label", "team=db", "data"]);
    // A writer and a reader that run at once, so their id ranges differ.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "writer",
        "-v",
        "data:/vol",
        img,
        "sh",
        "-c",
        "mkdir /vol/d && echo hi > /vol/d/f && busybox chown -R 1000:1000 /vol/d && cat /bin/suid-probe > /vol/suid && busybox chmod 4755 /vol/suid && touch /vol/done && sleep 100",
    ]);
    let o = env.run(&[
        "run",
        "-d",
        "--name",
        "reader",
        "-v",
        "data:/vol:ro",
        "-u",
        "1000",
        img,
        "sleep",
        "100",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ex = |who: &str, cmd: &str| env.ok(&["exec", who, "sh", "-c", cmd]);
    for _ in 0..50 {
        if ex("reader", "ls /vol").contains("done") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(ex("reader", "stat -c '%u:%g %a' /vol/d/f /vol/suid"), "1000:1000 644\n0:0 4755\n");
    assert_eq!(ex("writer", "stat -c '%u:%g' /vol/d/f"), "1000:1000\n");
    let ns = |n: &str| {
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", n])).unwrap();
        assert_eq!(v[0]["Mounts"][0]["Type"], "volume");
        v[0]["Bulkhead"]["SecurityProfile"]["UserNamespace"].to_string()
    };
    assert_ne!(ns("writer"), ns("reader"));
    // Read-only, nosuid and nodev where it is attached.
    let mi = ex("reader", "grep ' /vol ' /proc/self/mountinfo");
    assert!(mi.contains(" ro,nosuid,nodev"), "{mi}");
    assert!(env.run(&["exec", "reader", "touch", "/vol/x"]).status.code() != Some(0));
    // The setuid-root file a container put there raises no one, even without no_new_privs
    // (the same binary from the image does: see setuid_binary_cannot_raise_privilege).
    let (_, out, err) = run(
        &env,
        &[
            "-u",
            "1000",
            "--security-opt",
            "no-new-privileges=false",
            "--runtime",
            "runc",
            "-v",
            "data:/vol",
            img,
            "/vol/suid",
            "euid",
        ],
    );
    assert_eq!(out.trim(), "1000", "{err}");
    // ls, inspect, in use, prune.
    assert!(env.ok(&["volume", "ls"]).contains("local    data"));
    assert_eq!(env.ok(&["volume", "ls", "-q", "--filter", "label=team=db"]).trim(), "data");
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["volume", "inspect", "data"])).unwrap();
    assert_eq!(v[0]["Labels"]["team"], "db");
    assert_eq!(v[0]["UsedBy"].as_array().unwrap().len(), 2);
    assert!(env.fails(&["volume", "rm", "data"]).contains("in use by"));
    env.ok(&["run", "--rm", "-v", "scratch:/s", img, "true"]);
    env.ok(&["rm", "-f", "writer", "reader"]);
    assert!(env.root().join("volumes/data/_data/d/f").exists());
    let pruned = env.ok(&["volume", "prune"]);
    assert!(pruned.contains("data") && pruned.contains("scratch"), "{pruned}");
    assert_eq!(env.ok(&["volume", "ls", "-q"]).trim(), "");
    // Bad names and a corrupt record: one line each; a create cut short leaves nothing behind.
    for bad in ["-x", "a/b", "../v", ""] {
        env.fails(&["volume", "create", "--", bad]);
    }
    env.ok(&["volume", "create", "c"]);
    std::fs::write(env.root().join("volumes/c/volume.json"), "{").unwrap();
    assert!(env.fails(&["volume", "inspect", "c"]).contains("corrupt volume record"));
    std::fs::create_dir(env.root().join("volumes/.new-0123")).unwrap();
    assert_eq!(env.ok(&["volume", "ls", "-q"]).trim(), "");
    assert!(!env.root().join("volumes/.new-0123").exists());
}

#[test]
fn secrets_are_in_memory_read_only_and_owned_by_the_containers_user() {
    let env = Env::new();
    let img = image(&env);
    let pw = env.path("pw");
    std::fs::write(&pw, "hunter2\n").unwrap();
    let secret = format!("src={},target=db", pw.display());
    let conf = format!("src={},target=/etc/app/pw.conf,mode=0440,uid=1000", pw.display());
    let (code, out, err) = run(
        &env,
        &[
            "-u",
            "1000",
            "--secret",
            &secret,
            "--config-file",
            &conf,
            img,
            "sh",
            "-c",
            "cat /run/secrets/db; stat -c '%a %u:%g' /run/secrets/db /etc/app/pw.conf; grep -c hunter2 /proc/self/environ; grep ' /run/secrets/db ' /proc/self/mountinfo",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..4], ["hunter2", "400 1000:1000", "440 1000:1000", "0"], "{out}");
    assert!(
        lines[4].contains(" ro,nosuid,nodev,noexec") && lines[4].contains(" - tmpfs "),
        "{out}"
    );
    // Root in the container cannot write it either, nor unmount its way to another copy.
    let (_, out, _) = run(
        &env,
        &[
            "--secret",
            &secret,
            img,
            "sh",
            "-c",
            "echo x > /run/secrets/db; echo rc=$?; cat /run/secrets/db",
        ],
    );
    assert!(out.contains("rc=1") && out.contains("hunter2"), "{out}");
    // Sources that are not small regular files are refused at once, never waited on.
    assert!(std::process::Command::new("mkfifo")
        .arg(env.path("fifo"))
        .status()
        .unwrap()
        .success());
    for (src, why) in [
        (env.path("fifo"), "not a regular file"),
        (std::path::PathBuf::from("/dev/zero"), "not a regular file"),
        (env.path("missing"), "No such file"),
        (env.path("."), "not a regular file"),
    ] {
        let o = env.run_bounded(
            20,
            &["run", "--rm", "--secret", &format!("src={},target=x", src.display()), img, "true"],
        );
        assert_eq!(o.status.code(), Some(125), "{}", src.display());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(why),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The source is resolved when the container is made; a link swapped in later is not
    // followed at the next start, whatever it points to.
    let src = env.path("real");
    std::fs::write(&src, "v1\n").unwrap();
    std::os::unix::fs::symlink(&src, env.path("link")).unwrap();
    let via_link = format!("src={},target=s", env.path("link").display());
    env.ok(&["run", "--name", "later", "--secret", &via_link, img, "cat", "/run/secrets/s"]);
    assert_eq!(env.ok(&["logs", "later"]).trim(), "v1");
    std::fs::remove_file(&src).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", &src).unwrap();
    let e = env.fails(&["start", "later"]);
    assert!(e.contains("a symlink on the way"), "{e}");
    env.ok(&["rm", "-f", "later"]);
    std::fs::write(env.path("big"), vec![b'x'; 600 << 10]).unwrap();
    let big = format!("src={},target=x", env.path("big").display());
    assert!(env
        .fails(&["run", "--rm", "--secret", &big, img, "true"])
        .contains("larger than 500 KiB"));
    // The image cannot redirect a secret or a volume with a symlink at its target.
    let e = env.fails(&[
        "run",
        "--rm",
        "--secret",
        &format!("src={},target=/data/link", pw.display()),
        img,
        "true",
    ]);
    assert!(e.contains("is a symlink in the image"), "{e}");
    let e = env.fails(&["run", "--rm", "-v", "v:/data/dirlink", img, "true"]);
    assert!(e.contains("is a symlink in the image"), "{e}");
    assert!(!std::fs::read_to_string("/etc/passwd").unwrap().contains("hunter2"));
    // diff leaves out the mount points bulkhead made, not what a container did to them.
    let conf = format!("src={},target=/etc/app/pw.conf", pw.display());
    env.ok(&["run", "--name", "d", "--config-file", &conf, img, "true"]);
    assert_eq!(env.ok(&["diff", "d"]).trim(), "");
    env.ok(&["rm", "d"]);
    env.ok(&["run", "--name", "d", "--config-file", &conf, img, "busybox", "chmod", "777", "/etc"]);
    assert_eq!(env.ok(&["diff", "d"]).trim(), "C /etc");
    env.ok(&["rm", "d"]);
    assert_eq!(env.ok(&["ps", "-a", "-q"]).trim(), "");
}
