//! Our default seccomp profile against Docker's (moby/profiles default.json, read in place from
//! ../shared/data/seccomp, never copied) and against libseccomp's own system call table.

use std::collections::BTreeSet;

use bulkhead_runtime::profile::DEFAULT_CAPABILITIES;
use bulkhead_runtime::seccomp::{default_profile, ALLOWED, DENIED};
use serde_json::Value;

fn docker_profile() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/seccomp/moby-default.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e} (CI keeps ../shared beside the checkout)")))
        .unwrap()
}

/// Docker's rules that apply on amd64 for a container with our capabilities: (unconditional, conditional).
fn docker_allowed() -> (BTreeSet<String>, BTreeSet<String>) {
    let ours: BTreeSet<&str> = DEFAULT_CAPABILITIES.iter().copied().collect();
    let (mut plain, mut conditional) = (BTreeSet::new(), BTreeSet::new());
    for rule in docker_profile()["syscalls"].as_array().unwrap() {
        if rule["action"] != "SCMP_ACT_ALLOW" {
            continue;
        }
        let inc = &rule["includes"];
        let exc = &rule["excludes"];
        let arches_ok = inc["arches"].as_array().is_none_or(|a| a.iter().any(|x| x == "amd64"));
        let caps_ok = inc["caps"]
            .as_array()
            .is_none_or(|c| c.iter().all(|x| ours.contains(x.as_str().unwrap())));
        let excluded = exc["caps"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| ours.contains(x.as_str().unwrap())))
            || exc["arches"].as_array().is_some_and(|a| a.iter().any(|x| x == "amd64"));
        if !arches_ok || !caps_ok || excluded {
            continue;
        }
        let set = if rule.get("args").is_some_and(|a| a.as_array().is_some_and(|a| !a.is_empty())) {
            &mut conditional
        } else {
            &mut plain
        };
        for n in rule["names"].as_array().unwrap() {
            set.insert(n.as_str().unwrap().to_owned());
        }
    }
    (plain, conditional)
}

#[test]
fn at_least_as_strict_as_docker() {
    let (plain, conditional) = docker_allowed();
    let looser: Vec<&&str> = ALLOWED.iter().filter(|n| !plain.contains(**n)).collect();
    assert!(looser.is_empty(), "we allow unconditionally what Docker does not: {looser:?}");
    // What we allow only under conditions, Docker allows at least under conditions.
    for rule in default_profile()["syscalls"].as_array().unwrap() {
        if rule["action"] == "SCMP_ACT_ALLOW" && rule.get("args").is_some() {
            for n in rule["names"].as_array().unwrap() {
                let n = n.as_str().unwrap();
                assert!(
                    plain.contains(n) || conditional.contains(n),
                    "{n} is allowed conditionally by us, not at all by Docker"
                );
            }
        }
    }
    // The calls SECURITY-DEFAULTS.md names are denied (Docker 28 denies these too).
    for n in [
        "keyctl",
        "add_key",
        "request_key",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "userfaultfd",
    ] {
        assert!(!ALLOWED.contains(&n), "{n} must be denied");
    }
    // The comparison really read Docker's rules (a plain one, and one with minKernel).
    assert!(
        plain.contains("read") && plain.contains("ptrace") && plain.len() > 300,
        "Docker's profile was not read as expected"
    );
}

#[test]
fn denied_calls_appear_in_no_rule() {
    let profile = default_profile();
    for rule in profile["syscalls"].as_array().unwrap() {
        for n in rule["names"].as_array().unwrap() {
            assert!(!DENIED.contains(&n.as_str().unwrap()), "{n} is denied but appears in a rule");
        }
    }
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(profile["defaultErrnoRet"], 1);
}

#[test]
fn every_name_is_a_real_x86_64_system_call() {
    use libseccomp::{ScmpArch, ScmpSyscall};
    for n in ALLOWED
        .iter()
        .chain(DENIED)
        .chain(["clone", "clone3", "socket", "personality"].iter())
    {
        let sc = ScmpSyscall::from_name_by_arch(n, ScmpArch::X8664);
        assert!(sc.is_ok(), "libseccomp does not know {n} on x86_64");
    }
}
