//! Creating and running containers: image + request -> record, root filesystem, bundle; then the
//! executor runs it, and the record follows each change of state.

use bulkhead_image::Store;

use crate::container::{ContainerRecord, Containers, State};
use crate::error::{Error, Result};
use crate::executor::{Executor, Exit};
use crate::profile::{SecurityProfile, UserNs};
use crate::spec::{build_spec, command_line, environment, ProcessConfig, ProcessOverrides, Resources};

/// What `create` or `run` asks for.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    pub image: String,
    pub name: Option<String>,
    pub overrides: ProcessOverrides,
    /// `-u`; None takes the image's User.
    pub user: Option<String>,
    pub profile: SecurityProfile,
    pub resources: Resources,
    pub executor: Executor,
    pub auto_remove: bool,
    /// `--restart` (checked by [`crate::lifecycle::restart_policy`]).
    pub restart: Option<String>,
    pub healthcheck: Option<crate::container::Healthcheck>,
    /// `-i` on a detached container: its stdin stays open (a pipe nobody writes), as Docker's does.
    pub open_stdin: bool,
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--init`: bulkhead-init as PID 1 (reaps zombies, forwards signals).
    pub init: bool,
    /// `-v`, `--mount`, `--tmpfs`.
    pub mounts: Vec<crate::mounts::UserMount>,
    /// `--secret`, `--config`.
    pub files: Vec<crate::files::InjectedFile>,
    /// `--stop-signal` (else the image's StopSignal, else SIGTERM) and `--stop-timeout` (else 10 s).
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<u64>,
    /// Networks to join (with `Network::Bridge`).
    pub networks: Vec<String>,
    /// `-p` as given.
    pub ports: Vec<String>,
    /// `-P`: every port the image exposes.
    pub publish_all: bool,
    /// `--network-alias`.
    pub aliases: Vec<String>,
    /// `--ip`.
    pub ip: Option<std::net::Ipv4Addr>,
    /// Containers carrying the same value of this label may share aliases (the replicas of one
    /// compose service share its name).
    pub alias_group_label: Option<String>,
}

/// bulkhead-init (init/init.c), built static by build.rs.
const INIT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bulkhead-init"));
/// Where `--init` puts it in the container.
const INIT_PATH: &str = "/dev/init";

fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Creates a container: its record, its mounted root filesystem and its bundle. Nothing runs yet.
pub fn create(store: &Store, cs: &Containers, req: CreateRequest) -> Result<ContainerRecord> {
    let _lock = cs.lock()?;
    let image = store.resolve(&req.image)?;
    let info = store.info(&image)?;
    let id = Containers::new_id()?;
    let all = cs.list()?;
    let name = match req.name.clone() {
        Some(n) if !valid_name(&n) => {
            return Err(Error::Invalid(format!(
                "invalid container name {n:?} (allowed: [a-zA-Z0-9][a-zA-Z0-9_.-]*)"
            )))
        }
        Some(n) if all.iter().any(|r| r.name == n) => return Err(Error::Invalid(format!("the container name {n:?} is already in use"))),
        Some(n) => n,
        None => format!("bulkhead-{}", &id[..12]),
    };
    check_names(&all, &name, &req)?;
    let mut profile = req.profile;
    let host_id = match profile.userns {
        UserNs::Private { .. } => {
            // The container's directory first: it is what marks the claim as live.
            std::fs::create_dir_all(cs.dir(&id)).map_err(|e| Error::Invalid(format!("{}: {e}", cs.dir(&id).display())))?;
            let h = cs.allocate_host_id(&id, &all, !req.auto_remove)?;
            profile.userns = UserNs::Private { host_id: h };
            Some(h)
        }
        UserNs::Host => None,
    };
    let warnings = profile.warnings()?;
    if req.executor == Executor::Embedded
        && !profile.no_new_privileges
        && !profile.privileged
        && profile.seccomp != crate::profile::Seccomp::Unconfined
    {
        // The kernel installs a seccomp filter without no_new_privs only for CAP_SYS_ADMIN, and
        // libcontainer 0.7 installs it after dropping capabilities; runc installs it before.
        return Err(Error::Invalid("no-new-privileges=false with a seccomp filter needs --runtime runc (the embedded libcontainer cannot install the filter without no_new_privs)".into()));
    }
    let layers: Vec<_> = image.layers.iter().map(|l| l.chain_id.clone()).collect();
    store.add_lease(&id, &image.manifest, !req.auto_remove)?;
    let made = (|| {
        cs.prepare_rootfs(store, &id, &layers, &profile)?;
        let rootfs = cs.rootfs(&id);
        crate::mounts::check_targets_in(&rootfs, &req.mounts)?;
        let idmapped_volumes: Vec<crate::container::IdmappedVolume> = req
            .mounts
            .iter()
            .filter_map(|m| match m {
                crate::mounts::UserMount::Bind {
                    source,
                    target,
                    readonly,
                    idmap: true,
                } => Some(crate::container::IdmappedVolume {
                    source: source.clone(),
                    target: target.clone(),
                    readonly: *readonly,
                }),
                _ => None,
            })
            .collect();
        // Named volumes: made if missing (as `docker run -v NAME:/path` does), under the
        // containers' lock, so that `volume rm` cannot take one away meanwhile.
        let volumes: Vec<crate::volumes::VolumeMount> = req
            .mounts
            .iter()
            .filter_map(|m| match m {
                crate::mounts::UserMount::Volume { name, target, readonly } => Some(crate::volumes::VolumeMount {
                    name: name.clone(),
                    target: target.clone(),
                    readonly: *readonly,
                }),
                _ => None,
            })
            .collect();
        if !volumes.is_empty() {
            let vols = crate::volumes::Volumes::open(store.root())?;
            for v in &volumes {
                vols.create(&v.name, Default::default())?;
            }
        }
        crate::files::check(&req.files)?;
        let image_user = info
            .config
            .get("config")
            .and_then(|c| c.get("User"))
            .and_then(|u| u.as_str())
            .unwrap_or("");
        let user = crate::user::resolve(&rootfs, req.user.as_deref().unwrap_or(image_user))?;
        // Attached as each start attaches them: a missing or unreadable source fails here.
        crate::container::Attachments {
            host_id,
            idmapped_volumes: &idmapped_volumes,
            volumes: &volumes,
            files: &req.files,
            user: (user.uid, user.gid),
        }
        .attach(cs, &rootfs)?;
        let hostname = req.overrides.hostname.clone().unwrap_or_else(|| id[..12].to_owned());
        let mut args = command_line(&info.config, &req.overrides)?;
        let mut mounts: Vec<_> = req
            .mounts
            .iter()
            .filter(|m| {
                !matches!(
                    m,
                    crate::mounts::UserMount::Bind { idmap: true, .. } | crate::mounts::UserMount::Volume { .. }
                )
            })
            .cloned()
            .collect();
        if req.init {
            // The embedded init goes next to the container's state and is bind-mounted read-only
            // into /dev (the runtime's tmpfs): nothing is written into the container's own layer.
            let bin = cs.dir(&id).join("init-bin");
            std::fs::write(&bin, INIT_BINARY).map_err(|e| Error::Invalid(format!("{}: {e}", bin.display())))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o555))
                .map_err(|e| Error::Invalid(format!("{}: {e}", bin.display())))?;
            mounts.push(crate::mounts::UserMount::Bind {
                source: bin.to_string_lossy().into_owned(),
                target: INIT_PATH.into(),
                readonly: true,
                idmap: false,
            });
            args.insert(0, INIT_PATH.into());
        }
        if !req.networks.is_empty() {
            // The container's own name files, bind-mounted read-only; /etc/hosts gets its address
            // when it joins its networks (written in place: the mount holds the inode).
            for (file, content) in [
                ("resolv.conf", resolv_conf()),
                ("hosts", hosts_file(&hostname, &[])),
                ("hostname", format!("{hostname}\n")),
            ] {
                let p = cs.dir(&id).join(file);
                std::fs::write(&p, content).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
                mounts.push(crate::mounts::UserMount::Bind {
                    source: p.to_string_lossy().into_owned(),
                    target: format!("/etc/{file}"),
                    readonly: true,
                    idmap: false,
                });
            }
        }
        let mut env = environment(&info.config, &req.overrides, &hostname, |k| std::env::var(k).ok());
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", user.home));
        }
        let image_wd = info
            .config
            .get("config")
            .and_then(|c| c.get("WorkingDir"))
            .and_then(|w| w.as_str())
            .filter(|w| !w.is_empty());
        let cwd = req
            .overrides
            .workdir
            .clone()
            .or(image_wd.map(str::to_owned))
            .unwrap_or_else(|| "/".into());
        check_workdir(&cwd)?;
        let process = ProcessConfig {
            args: args.clone(),
            env,
            cwd,
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids,
            terminal: req.overrides.terminal,
            hostname: hostname.clone(),
        };
        let process_hostname = hostname;
        let mut spec = build_spec(&profile, &process, &req.resources, &rootfs.to_string_lossy())?;
        if !mounts.is_empty() {
            let user_mounts = mounts;
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            for m in &user_mounts {
                mounts.push(serde_json::from_value(m.to_spec()).map_err(|e| Error::Invalid(format!("mount {}: {e}", m.target())))?);
            }
            spec.set_mounts(Some(mounts));
        }
        if let Some(mut linux) = spec.linux().clone() {
            linux.set_cgroups_path(Some(crate::cgroup::path(&id).into()));
            spec.set_linux(Some(linux));
        }
        let image_stop = info
            .config
            .get("config")
            .and_then(|c| c.get("StopSignal"))
            .and_then(|s| s.as_str())
            .map(str::to_owned);
        let stop_signal = match req.stop_signal.clone().or(image_stop) {
            Some(s) => crate::lifecycle::parse_signal(&s)?,
            None => libc::SIGTERM,
        };
        let data = serde_json::to_vec_pretty(&spec).map_err(|e| Error::Invalid(e.to_string()))?;
        bulkhead_image::store::replace_file(&cs.bundle(&id).join("config.json"), &data, !req.auto_remove)?;
        let rec = ContainerRecord {
            id: id.clone(),
            name,
            image: req.image.clone(),
            image_id: image.config.clone(),
            layers,
            command: args,
            created: chrono::Utc::now(),
            host_id,
            runtime: req.executor.name(),
            warnings,
            state: State::Created,
            shim_pid: None,
            error: None,
            auto_remove: req.auto_remove,
            restart: req.restart.clone(),
            restart_count: 0,
            stopped_by_user: false,
            healthcheck: req.healthcheck.clone(),
            open_stdin: req.open_stdin,
            stop_signal,
            stop_timeout: req.stop_timeout.unwrap_or(10),
            labels: req.labels.clone(),
            idmapped_volumes,
            volumes,
            files: req.files.clone(),
            user: (user.uid, user.gid),
            networks: req.networks.clone(),
            aliases: req.aliases.clone(),
            ip: req.ip,
            ports: {
                let mut ports = req.ports.clone();
                if req.publish_all {
                    // "80/tcp" keys of the image's ExposedPorts, each on a free host port.
                    let exposed = info
                        .config
                        .get("config")
                        .and_then(|c| c.get("ExposedPorts"))
                        .and_then(|e| e.as_object())
                        .map(|o| o.keys().cloned().collect::<Vec<_>>())
                        .unwrap_or_default();
                    // PORT[/PROTO] only: the image says which ports; the host's side is always a
                    // free port (an image never picks a host address or port, as with Docker).
                    for key in &exposed {
                        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
                        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || !matches!(proto, "tcp" | "udp") {
                            return Err(Error::Invalid(format!("-P: the image exposes {key:?}, not PORT[/tcp|udp]")));
                        }
                    }
                    ports.extend(exposed);
                }
                ports
            },
            hostname: process_hostname,
        };
        cs.save(&rec)?;
        Ok(rec)
    })();
    if made.is_err() {
        let _ = cs.remove_dir(&id);
        let _ = store.remove_lease(&id);
    }
    made
}

/// A name on a network is one container's: an alias may not take another's name, alias or short
/// id (it would take its rules and its answers too), nor a name another's alias. Names are per
/// network (as a network's resolver serves them): only containers that share a network with this
/// one are compared (two compose projects may both have a `db`). Containers with the same value
/// of `alias_group_label` may share an alias, as the replicas of a compose service do. Checked
/// under the containers' lock, so that two creations cannot both take a name.
fn check_names(all: &[ContainerRecord], name: &str, req: &CreateRequest) -> Result<()> {
    Names {
        id: "",
        name,
        aliases: &req.aliases,
        labels: &req.labels,
        networks: &req.networks,
        group_label: req.alias_group_label.as_deref(),
    }
    .check(all)
}

/// A container's names on some networks, to check against the others' (see [`check_names`]).
pub struct Names<'a> {
    /// Its id (empty for one being made): it is not compared with itself.
    pub id: &'a str,
    pub name: &'a str,
    pub aliases: &'a [String],
    pub labels: &'a std::collections::BTreeMap<String, String>,
    /// The networks on which the names must be free.
    pub networks: &'a [String],
    pub group_label: Option<&'a str>,
}

impl Names<'_> {
    pub fn check(&self, all: &[ContainerRecord]) -> Result<()> {
        let group = |l: &std::collections::BTreeMap<String, String>| self.group_label.and_then(|k| l.get(k)).cloned();
        let mine = group(self.labels);
        for other in all
            .iter()
            .filter(|o| o.id != self.id && o.networks.iter().any(|n| self.networks.contains(n)))
        {
            let shared = mine.is_some() && group(&other.labels) == mine;
            let theirs: Vec<&str> = std::iter::once(other.name.as_str())
                .chain(other.aliases.iter().map(String::as_str).filter(|_| !shared))
                .chain(std::iter::once(&other.id[..12]))
                .collect();
            if let Some(al) = self.aliases.iter().find(|al| theirs.contains(&al.as_str())) {
                return Err(Error::Invalid(format!(
                    "--network-alias {al}: the name of container {} already",
                    other.name
                )));
            }
            if other.aliases.iter().any(|x| x == self.name) {
                return Err(Error::Invalid(format!(
                    "--name {}: an alias of container {} already",
                    self.name, other.name
                )));
            }
        }
        Ok(())
    }
}

/// The container's /etc/resolv.conf: the host's resolvers, unless they are on the host's loopback
/// (systemd-resolved's 127.0.0.53, a local dnsmasq), unreachable from a container: then the
/// upstream servers systemd-resolved lists, as Docker does; search and options are kept.
pub fn resolv_conf() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let usable = |text: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .map(str::trim)
            .filter(|a| a.parse::<std::net::IpAddr>().is_ok_and(|ip| !ip.is_loopback()))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let host = read("/etc/resolv.conf");
    let mut servers = usable(&host);
    if servers.is_empty() {
        servers = usable(&read("/run/systemd/resolve/resolv.conf"));
    }
    let mut out = String::from("# written by bulkhead\n");
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    for l in host.lines().map(str::trim) {
        if l.starts_with("search ") || l.starts_with("options ") {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The container's /etc/hosts: loopback names, and its own name on each of its addresses.
pub fn hosts_file(hostname: &str, addrs: &[std::net::IpAddr]) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for a in addrs {
        out.push_str(&format!("{a}\t{hostname}\n"));
    }
    out
}

/// A working directory must be an absolute path outside /proc: through /proc/self/fd a process can
/// start in a directory the runtime left open on the host (CVE-2024-21626). The executor checks
/// again after chdir; this gives the user a clear reason first.
pub fn check_workdir(cwd: &str) -> Result<()> {
    if !cwd.starts_with('/') {
        return Err(Error::Invalid(format!("the working directory {cwd:?} is not absolute")));
    }
    let parts: Vec<&str> = cwd.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.contains(&"..") {
        return Err(Error::Invalid(format!("the working directory {cwd:?} contains '..'")));
    }
    if parts.first() == Some(&"proc") {
        return Err(Error::Invalid(format!(
            "the working directory {cwd:?} is inside /proc, which is refused (it can reach host file descriptors)"
        )));
    }
    Ok(())
}

/// Runs a created container in the foreground and records how it ended; the root filesystem is
/// unmounted afterwards (the upper directory stays, for `diff`).
pub fn run_foreground(cs: &Containers, rec: &mut ContainerRecord, executor: &Executor) -> Result<Exit> {
    let state_dir = cs.dir(&rec.id).join("exec");
    let spec: serde_json::Value = std::fs::read(cs.bundle(&rec.id).join("config.json"))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    let terminal = spec["process"]["terminal"].as_bool().unwrap_or(false);
    // The store's tmp/: a short path for the console socket.
    let console_dir = if terminal {
        cs.dir(&rec.id).parent().and_then(|p| p.parent()).map(|root| root.join("tmp"))
    } else {
        None
    };
    let running = rec.clone();
    let on_start = |pid: i32| {
        let mut r = running.clone();
        r.state = State::Running {
            pid,
            started: chrono::Utc::now(),
        };
        if let Err(e) = cs.save_volatile(&r) {
            tracing::warn!(error = %e, "recording the running state");
        }
        forward_signals(pid);
    };
    let cgroup = crate::cgroup::path(&rec.id);
    let exit = if let Some(socket_dir) = console_dir.as_deref() {
        // A pty's output is shown and logged (as one stream, stdout, like Docker's).
        let mut log = cs.log_writer(&rec.id, rec.auto_remove)?;
        let tty = crate::executor::Tty { socket_dir, log: &mut log };
        executor.run_tty(&rec.id, &cs.bundle(&rec.id), &state_dir, &cgroup, tty, on_start)
    } else {
        // Shown on our stdout/stderr and kept in the container's log, as for detached containers.
        run_logged(cs, rec, executor, &state_dir, &cgroup, on_start)
    };
    crate::hooks::exited(&rec.id);
    let exit = match exit {
        Ok(x) => x,
        Err(e) => {
            rec.state = State::Exited {
                code: 125,
                finished: chrono::Utc::now(),
                oom_killed: false,
            };
            let _ = cs.save(rec);
            let _ = cs.unmount_rootfs(&rec.id);
            return Err(e);
        }
    };
    rec.state = State::Exited {
        code: exit.code,
        finished: chrono::Utc::now(),
        oom_killed: exit.oom_killed,
    };
    cs.save(rec)?;
    cs.unmount_rootfs(&rec.id)?;
    Ok(exit)
}

/// Runs the container with its stdout/stderr on pipes that we copy to ours and into its log.
fn run_logged(
    cs: &Containers,
    rec: &ContainerRecord,
    executor: &Executor,
    state_dir: &std::path::Path,
    cgroup: &str,
    on_start: impl FnOnce(i32),
) -> Result<Exit> {
    let (out_r, out_w) = crate::executor::pipe()?;
    let (err_r, err_w) = crate::executor::pipe()?;
    let id = rec.id.as_str();
    let mut log = cs.log_writer(id, rec.auto_remove)?;
    let stdio = crate::executor::Stdio {
        stdin: None,
        stdout: Some(out_w),
        stderr: Some(err_w),
        console_socket: None,
    };
    let mut started = executor.start(id, &cs.bundle(id), state_dir, stdio)?;
    on_start(started.pid());
    let exit = rustix::process::Pid::from_raw(started.pid())
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    let code = bulkhead_shim::output::copy_output([Some(out_r), Some(err_r)], exit, &mut log, true, || started.try_wait())?;
    Ok(started.finish(cgroup, code))
}

/// Passes the signals a user sends to `bulkhead run` (Ctrl-C, kill) on to the container's first
/// process, as Docker's sig-proxy does, instead of dying and leaving the container unsupervised.
/// The thread starts after the container was cloned, so the clone still happened single-threaded.
fn forward_signals(pid: i32) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]) else {
        return;
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            // SAFETY: kill(2) of the container's first process, our child until we reap it.
            unsafe { libc::kill(pid, sig) };
        }
    });
}
