//! From an image config, the user's flags and a [`SecurityProfile`] to one OCI runtime spec
//! (`config.json`), the single document every executor (embedded or external) runs.

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::profile::{SecurityProfile, UserNs, ID_RANGE};
use crate::seccomp;

/// What the user asked for on the command line that shapes the process.
#[derive(Clone, Debug, Default)]
pub struct ProcessOverrides {
    /// `--entrypoint`: Some("") clears the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Arguments after the image name; replace the image's Cmd when not empty.
    pub cmd: Vec<String>,
    /// `-e KEY=VALUE` (or `-e KEY`, taken from `host_env`), applied over the image's Env.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub terminal: bool,
    pub hostname: Option<String>,
}

/// The process of a container, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub terminal: bool,
    pub hostname: String,
}

/// Resource limits beyond the profile's pids limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// `--memory`, bytes.
    pub memory: Option<i64>,
    /// `--cpus`, in CPUs (0.5 = half of one).
    pub cpus: Option<f64>,
    /// `--ulimit`: (RLIMIT_NAME, soft, hard).
    pub ulimits: Vec<(String, u64, u64)>,
}

/// `--ulimit nofile=1024[:2048]`: the name Docker uses, soft and hard. A limit above what this
/// process may raise to is refused here: inside a user namespace it could not be set anyway.
pub fn parse_ulimit(s: &str) -> Result<(String, u64, u64)> {
    let (name, vals) = s
        .split_once('=')
        .ok_or_else(|| Error::Invalid(format!("--ulimit {s:?}: expected NAME=SOFT[:HARD]")))?;
    let (soft, hard) = vals.split_once(':').unwrap_or((vals, vals));
    let num = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| Error::Invalid(format!("--ulimit {s:?}: {v:?} is not a number")))
    };
    let (soft, hard) = (num(soft)?, num(hard)?);
    if soft > hard {
        return Err(Error::Invalid(format!("--ulimit {s:?}: the soft limit is above the hard one")));
    }
    let (kind, resource) = match name {
        "nofile" => ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
        "nproc" => ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
        "core" => ("RLIMIT_CORE", libc::RLIMIT_CORE),
        "stack" => ("RLIMIT_STACK", libc::RLIMIT_STACK),
        "memlock" => ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK),
        "fsize" => ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE),
        "cpu" => ("RLIMIT_CPU", libc::RLIMIT_CPU),
        "data" => ("RLIMIT_DATA", libc::RLIMIT_DATA),
        "as" => ("RLIMIT_AS", libc::RLIMIT_AS),
        "msgqueue" => ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE),
        "nice" => ("RLIMIT_NICE", libc::RLIMIT_NICE),
        "rtprio" => ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO),
        "sigpending" => ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING),
        _ => return Err(Error::Invalid(format!("--ulimit {s:?}: unknown limit {name:?}"))),
    };
    let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid out-pointer.
    if unsafe { libc::getrlimit(resource, &mut cur) } == 0 && cur.rlim_max != libc::RLIM_INFINITY && hard > cur.rlim_max {
        return Err(Error::Invalid(format!(
            "--ulimit {s:?}: the hard limit is above this host's ({}), which a container cannot raise",
            cur.rlim_max
        )));
    }
    Ok((kind.to_owned(), soft, hard))
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's rules: the entrypoint is the override or the image's; the command is the user's
/// arguments, or the image's Cmd unless the entrypoint was overridden.
pub fn command_line(image_config: &Value, o: &ProcessOverrides) -> Result<Vec<String>> {
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let cfg = image_config.get("config");
    let entrypoint = match &o.entrypoint {
        Some(e) => e.iter().filter(|s| !s.is_empty()).cloned().collect(),
        None => strings(cfg.and_then(|c| c.get("Entrypoint"))),
    };
    let cmd = if !o.cmd.is_empty() {
        o.cmd.clone()
    } else if o.entrypoint.is_some() {
        Vec::new()
    } else {
        strings(cfg.and_then(|c| c.get("Cmd")))
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(Error::Invalid(
            "no command specified: the image has no Entrypoint or Cmd, and none was given".into(),
        ));
    }
    Ok(args)
}

/// The environment: the image's, then the user's by key, with PATH and HOSTNAME always present.
pub fn environment(image_config: &Value, o: &ProcessOverrides, hostname: &str, host_env: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut env: Vec<String> = image_config
        .get("config")
        .and_then(|c| c.get("Env"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or("").to_owned();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(kv);
    };
    for e in &o.env {
        if e.contains('=') {
            set(e.clone());
        } else if let Some(v) = host_env(e) {
            set(format!("{e}={v}"));
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.into());
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={hostname}"));
    }
    env
}

/// Builds the runtime spec. `rootfs` is the path the executor will find the root filesystem at.
pub fn build_spec(profile: &SecurityProfile, p: &ProcessConfig, res: &Resources, rootfs: &str) -> Result<Spec> {
    let caps = profile.capabilities()?;
    let mut namespaces = vec![
        json!({"type": "mount"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "cgroup"}),
    ];
    if !profile.pid_host {
        namespaces.push(json!({"type": "pid"}));
    }
    if profile.network != crate::profile::Network::Host {
        namespaces.push(json!({"type": "network"}));
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "maskedPaths": profile.masked_paths(),
        "readonlyPaths": if profile.privileged { Vec::new() } else { crate::profile::READONLY_PATHS.to_vec() },
        "resources": resources(profile, res),
    });
    if let UserNs::Private { host_id } = profile.userns {
        if let Some(n) = linux["namespaces"].as_array_mut() {
            n.push(json!({"type": "user"}));
        }
        let map = json!([{"containerID": 0, "hostID": host_id, "size": ID_RANGE}]);
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
    }
    match (&profile.seccomp, profile.privileged) {
        (_, true) | (crate::profile::Seccomp::Unconfined, _) => {}
        (crate::profile::Seccomp::Default, false) => linux["seccomp"] = seccomp::default_profile(),
        (crate::profile::Seccomp::Custom(v), false) => linux["seccomp"] = v.clone(),
    }
    // A user namespace may mount a fresh proc only over a pid namespace it owns, and a fresh sysfs
    // only over a network namespace it owns. Sharing the host's (--pid=host, --network=host) under
    // the default user namespace, the host's own are bind-mounted instead, as Podman does: /sys
    // read-only all the way down, /proc with the same masks and read-only paths as ever.
    let private_userns = matches!(profile.userns, UserNs::Private { .. });
    let proc_mount = if private_userns && profile.pid_host {
        json!({"destination": "/proc", "type": "bind", "source": "/proc", "options": ["rbind", "nosuid", "noexec", "nodev"]})
    } else {
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]})
    };
    let sys_mount = if private_userns && profile.network == crate::profile::Network::Host {
        json!({"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "rro", "nosuid", "noexec", "nodev", "ro"]})
    } else {
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]})
    };
    let mut mounts = vec![
        proc_mount,
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        sys_mount,
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    if profile.read_only_rootfs {
        for d in ["/tmp", "/run", "/var/tmp"] {
            mounts.push(json!({"destination": d, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}));
        }
    }
    let spec = json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": p.terminal,
            "user": {"uid": p.uid, "gid": p.gid, "additionalGids": p.additional_gids},
            "args": p.args,
            "env": p.env,
            "cwd": p.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []},
            "noNewPrivileges": profile.no_new_privileges,
        },
        "root": {"path": rootfs, "readonly": profile.read_only_rootfs},
        "hostname": p.hostname,
        "mounts": mounts,
        "linux": linux,
    });
    let mut spec = spec;
    if !res.ulimits.is_empty() {
        spec["process"]["rlimits"] = res
            .ulimits
            .iter()
            .map(|(t, s, h)| json!({"type": t, "soft": s, "hard": h}))
            .collect();
    }
    serde_json::from_value(spec).map_err(|e| Error::Invalid(format!("generated runtime spec is invalid: {e}")))
}

fn resources(profile: &SecurityProfile, res: &Resources) -> Value {
    // Only the default devices; no others without --device.
    let dev = |major: i64, minor: Option<i64>| {
        let mut d = json!({"allow": true, "type": "c", "major": major, "access": "rwm"});
        // No minor means every minor of that major.
        if let Some(m) = minor {
            d["minor"] = json!(m);
        }
        d
    };
    let mut r = json!({
        "devices": [
            {"allow": false, "access": "rwm"},
            dev(1, Some(3)), dev(1, Some(5)), dev(1, Some(7)), dev(1, Some(8)), dev(1, Some(9)), dev(5, Some(0)), dev(5, Some(2)), dev(136, None),
        ],
    });
    if let Some(n) = profile.pids_limit {
        r["pids"] = json!({"limit": n});
    }
    if let Some(m) = res.memory {
        // No swap beyond the memory limit, so an OOM kill happens at the limit.
        r["memory"] = json!({"limit": m, "swap": m});
    }
    if let Some(c) = res.cpus {
        let period = 100_000u64;
        r["cpu"] = json!({"period": period, "quota": (c * period as f64) as i64});
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Value {
        json!({"config": {"Entrypoint": ["/bin/ep"], "Cmd": ["default"], "Env": ["PATH=/x", "A=1"]}})
    }

    #[test]
    fn command_line_follows_docker() {
        let o = ProcessOverrides::default();
        assert_eq!(command_line(&image(), &o).unwrap(), vec!["/bin/ep", "default"]);
        let o = ProcessOverrides {
            cmd: vec!["arg".into()],
            ..Default::default()
        };
        assert_eq!(command_line(&image(), &o).unwrap(), vec!["/bin/ep", "arg"]);
        let o = ProcessOverrides {
            entrypoint: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        };
        assert_eq!(command_line(&image(), &o).unwrap(), vec!["/bin/sh"]);
        let o = ProcessOverrides {
            entrypoint: Some(vec!["".into()]),
            cmd: vec!["true".into()],
            ..Default::default()
        };
        assert_eq!(command_line(&image(), &o).unwrap(), vec!["true"]);
        assert!(command_line(&json!({}), &ProcessOverrides::default()).is_err());
    }

    #[test]
    fn environment_overrides_by_key() {
        let o = ProcessOverrides {
            env: vec!["A=2".into(), "FROM_HOST".into(), "UNSET".into()],
            ..Default::default()
        };
        let env = environment(&image(), &o, "h", |k| (k == "FROM_HOST").then(|| "v".to_owned()));
        assert_eq!(env, vec!["PATH=/x", "A=2", "FROM_HOST=v", "HOSTNAME=h"]);
    }

    fn process() -> ProcessConfig {
        ProcessConfig {
            args: vec!["/bin/true".into()],
            env: vec![],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            terminal: false,
            hostname: "c".into(),
        }
    }

    #[test]
    fn default_spec_carries_every_default() {
        let spec = build_spec(&SecurityProfile::default(), &process(), &Resources::default(), "rootfs").unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for want in ["mount", "ipc", "uts", "cgroup", "pid", "network", "user"] {
            assert!(ns.contains(&want), "namespace {want} missing: {ns:?}");
        }
        assert_eq!(v["linux"]["uidMappings"][0]["hostID"], 100_000);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["capabilities"]["effective"].as_array().unwrap().len(), 11);
        assert_eq!(v["process"]["capabilities"]["ambient"], json!([]));
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 2048);
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(v["linux"]["maskedPaths"].as_array().unwrap().iter().any(|p| p == "/sys/fs/selinux"));
        assert!(v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/sys" && m["options"].as_array().unwrap().contains(&json!("ro"))));
    }

    #[test]
    fn weakened_spec_reflects_each_flag() {
        let p = SecurityProfile {
            userns: UserNs::Host,
            seccomp: crate::profile::Seccomp::Unconfined,
            pids_limit: None,
            read_only_rootfs: true,
            ..Default::default()
        };
        let v = serde_json::to_value(
            build_spec(
                &p,
                &process(),
                &Resources {
                    memory: Some(64 << 20),
                    cpus: Some(0.5),
                    ulimits: vec![("RLIMIT_NOFILE".into(), 10, 20)],
                },
                "rootfs",
            )
            .unwrap(),
        )
        .unwrap();
        assert!(v["linux"].get("uidMappings").is_none());
        assert!(v["linux"].get("seccomp").is_none());
        assert!(v["linux"]["resources"].get("pids").is_none());
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["rlimits"][0]["hard"], 20);
        assert!(v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/tmp" && m["type"] == "tmpfs"));
    }
}
