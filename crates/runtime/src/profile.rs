//! The default security profile of a container, every row of SECURITY-DEFAULTS.md, and the explicit
//! ways to weaken it. Each weakening yields one warning line for the user.

use crate::error::{Error, Result};

/// Podman's default capabilities; inside a user namespace they hold only over the container's own
/// resources. Docker adds AUDIT_WRITE, MKNOD and NET_RAW.
pub const DEFAULT_CAPABILITIES: [&str; 11] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// Every capability the kernel knows (Linux 6.x), for `--privileged` and for validating names.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's masked paths plus /sys/fs/selinux (Podman's addition). Each is covered by /dev/null
/// (files) or an empty read-only tmpfs (directories).
pub const MASKED_PATHS: [&str; 13] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/fs/selinux",
];

/// Paths mounted read-only inside /proc.
pub const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The default limit on processes in a container: a fork bomb stops here.
pub const DEFAULT_PIDS_LIMIT: i64 = 2048;

/// Size of the id range a container's user namespace maps (uids and gids 0..65535 inside).
pub const ID_RANGE: u32 = 65536;

/// The user namespace of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserNs {
    /// Root inside is `host_id` outside; `ID_RANGE` ids are mapped.
    Private { host_id: u32 },
    /// `--userns=host`: no user namespace (root inside is root outside).
    Host,
}

/// The seccomp filter of a container.
#[derive(Clone, Debug, PartialEq)]
pub enum Seccomp {
    Default,
    /// `--security-opt seccomp=unconfined`.
    Unconfined,
    /// `--security-opt seccomp=FILE`: an OCI `linux.seccomp` object.
    Custom(serde_json::Value),
}

/// The network of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// A private network namespace with only loopback (`--network none`).
    None,
    /// A private network namespace joined to bridge networks (the container's record names them).
    Bridge,
    /// `--network=host`.
    Host,
}

/// Everything that decides how isolated a container is. `Default` is the safe profile.
#[derive(Clone, Debug, PartialEq)]
pub struct SecurityProfile {
    pub userns: UserNs,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub no_new_privileges: bool,
    pub seccomp: Seccomp,
    /// Paths taken out of `MASKED_PATHS` (`--security-opt unmask=PATH`, or `ALL`).
    pub unmask: Vec<String>,
    /// None means no limit (`--pids-limit -1`, which warns).
    pub pids_limit: Option<i64>,
    pub network: Network,
    /// `--pid=host`.
    pub pid_host: bool,
    pub read_only_rootfs: bool,
}

impl Default for SecurityProfile {
    fn default() -> Self {
        SecurityProfile {
            userns: UserNs::Private { host_id: 100_000 },
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            privileged: false,
            no_new_privileges: true,
            seccomp: Seccomp::Default,
            unmask: Vec::new(),
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
            network: Network::None,
            pid_host: false,
            read_only_rootfs: false,
        }
    }
}

/// Turns `chown`, `cap_chown` or `CAP_CHOWN` into `CAP_CHOWN`, refusing names the kernel does not know.
pub fn normalize_capability(name: &str) -> Result<String> {
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") { up } else { format!("CAP_{up}") };
    if full == "CAP_ALL" || ALL_CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(Error::Invalid(format!("unknown capability {name:?}")))
    }
}

impl SecurityProfile {
    /// The capability set of the container process (bounding = effective = permitted; inheritable
    /// and ambient stay empty).
    pub fn capabilities(&self) -> Result<Vec<String>> {
        let mut set: Vec<String> = if self.privileged {
            ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect()
        } else {
            DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
        };
        // Docker's order: dropping ALL empties the set first, then adds apply; otherwise adds, then drops.
        let drops = self.cap_drop.iter().map(|c| normalize_capability(c)).collect::<Result<Vec<_>>>()?;
        let adds = self.cap_add.iter().map(|c| normalize_capability(c)).collect::<Result<Vec<_>>>()?;
        if drops.iter().any(|c| c == "CAP_ALL") {
            set.clear();
        }
        for c in adds {
            if c == "CAP_ALL" {
                set = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
            } else if !set.contains(&c) {
                set.push(c);
            }
        }
        set.retain(|c| !drops.contains(c));
        set.sort();
        Ok(set)
    }

    /// The masked paths that remain after `unmask`.
    pub fn masked_paths(&self) -> Vec<String> {
        if self.privileged || self.unmask.iter().any(|u| u == "ALL") {
            return Vec::new();
        }
        MASKED_PATHS
            .iter()
            .filter(|p| !self.unmask.iter().any(|u| u == *p))
            .map(|p| p.to_string())
            .collect()
    }

    /// One line for each way this profile is weaker than the default, for the user to see.
    pub fn warnings(&self) -> Result<Vec<String>> {
        let mut w = Vec::new();
        if self.privileged {
            w.push("--privileged: all capabilities, no seccomp filter, no masked paths; the container can take over the host".into());
        }
        if self.userns == UserNs::Host {
            w.push("--userns=host: root in the container is root on the host".into());
        }
        let extra: Vec<String> = self
            .capabilities()?
            .into_iter()
            .filter(|c| !DEFAULT_CAPABILITIES.contains(&c.as_str()))
            .collect();
        if !extra.is_empty() && !self.privileged {
            w.push(format!("--cap-add: the container gets {} beyond the default set", extra.join(", ")));
        }
        if !self.no_new_privileges {
            w.push("no-new-privileges=false: setuid and file-capability binaries can raise privileges".into());
        }
        match &self.seccomp {
            Seccomp::Unconfined if !self.privileged => w.push("seccomp=unconfined: every system call is allowed".into()),
            Seccomp::Custom(_) => w.push("seccomp=FILE: a custom seccomp profile replaces the default".into()),
            _ => {}
        }
        if !self.unmask.is_empty() && !self.privileged {
            w.push(format!(
                "unmask={}: kernel information under /proc or /sys is visible",
                self.unmask.join(",")
            ));
        }
        match self.pids_limit {
            None => w.push("--pids-limit -1: no limit on processes (a fork bomb can exhaust the host)".into()),
            Some(n) if n > DEFAULT_PIDS_LIMIT => w.push(format!("--pids-limit {n}: above the default of {DEFAULT_PIDS_LIMIT}")),
            _ => {}
        }
        if self.network == Network::Host {
            w.push("--network=host: the container shares the host's network stack".into());
        }
        if self.pid_host {
            w.push("--pid=host: the container sees and can signal host processes".into());
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_is_the_documented_one_and_warns_nothing() {
        let p = SecurityProfile::default();
        assert_eq!(p.capabilities().unwrap().len(), 11);
        assert_eq!(p.masked_paths().len(), 13);
        assert!(p.warnings().unwrap().is_empty());
    }

    #[test]
    fn each_weakening_warns() {
        let cases: Vec<(SecurityProfile, &str)> = vec![
            (
                SecurityProfile {
                    privileged: true,
                    ..Default::default()
                },
                "--privileged",
            ),
            (
                SecurityProfile {
                    userns: UserNs::Host,
                    ..Default::default()
                },
                "--userns=host",
            ),
            (
                SecurityProfile {
                    cap_add: vec!["sys_admin".into()],
                    ..Default::default()
                },
                "CAP_SYS_ADMIN",
            ),
            (
                SecurityProfile {
                    no_new_privileges: false,
                    ..Default::default()
                },
                "no-new-privileges",
            ),
            (
                SecurityProfile {
                    seccomp: Seccomp::Unconfined,
                    ..Default::default()
                },
                "seccomp=unconfined",
            ),
            (
                SecurityProfile {
                    unmask: vec!["/proc/kcore".into()],
                    ..Default::default()
                },
                "unmask",
            ),
            (
                SecurityProfile {
                    pids_limit: None,
                    ..Default::default()
                },
                "--pids-limit",
            ),
            (
                SecurityProfile {
                    network: Network::Host,
                    ..Default::default()
                },
                "--network=host",
            ),
            (
                SecurityProfile {
                    pid_host: true,
                    ..Default::default()
                },
                "--pid=host",
            ),
        ];
        for (p, needle) in cases {
            let w = p.warnings().unwrap();
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].contains(needle), "{w:?} lacks {needle}");
        }
    }

    #[test]
    fn capability_names_are_validated_and_dropping_works() {
        assert!(normalize_capability("net_raw").is_ok());
        assert!(normalize_capability("CAP_NOT_A_THING").is_err());
        let p = SecurityProfile {
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["chown".into()],
            ..Default::default()
        };
        assert_eq!(p.capabilities().unwrap(), vec!["CAP_CHOWN".to_string()]);
        let p = SecurityProfile {
            cap_drop: vec!["kill".into()],
            ..Default::default()
        };
        assert!(!p.capabilities().unwrap().contains(&"CAP_KILL".to_string()));
    }
}
