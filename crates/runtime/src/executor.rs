//! Executors: what turns a bundle into running processes. The default embeds youki's libcontainer;
//! `--runtime runc|PATH` hands the same bundle to an external OCI runtime.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// How a container ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The status as a shell reports it: the exit code, or 128 + signal.
    pub code: i32,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

/// How a container's processes are started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Executor {
    /// youki's libcontainer, in this process (which must be single-threaded when it forks).
    Embedded,
    /// An OCI runtime binary with runc's command line (`--root DIR run --bundle B --pid-file F ID`).
    External(PathBuf),
}

impl Executor {
    /// `--runtime NAME|PATH`: a name is looked up in PATH; "libcontainer" or none is the default.
    pub fn from_flag(flag: Option<&str>) -> Result<Self> {
        match flag {
            None | Some("") | Some("libcontainer") | Some("bulkhead") => Ok(Executor::Embedded),
            Some(p) if p.contains('/') => Ok(Executor::External(PathBuf::from(p))),
            Some(name) => std::env::var_os("PATH")
                .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
                .map(Executor::External)
                .ok_or_else(|| Error::Invalid(format!("runtime {name:?} not found in PATH"))),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Executor::Embedded => "libcontainer".into(),
            Executor::External(p) => p.display().to_string(),
        }
    }

    /// Starts the container's first process with the given stdio (None: this process's own).
    pub fn start(&self, id: &str, bundle: &Path, state_dir: &Path, stdio: Stdio) -> Result<Started> {
        match self {
            Executor::Embedded => start_embedded(id, bundle, state_dir, stdio),
            Executor::External(bin) => start_external(bin, id, bundle, state_dir, stdio),
        }
    }

    /// Runs the container to completion with a pty (its spec must say process.terminal) proxied
    /// to our terminal and copied into `tty.log`. `on_start` gets the pid of the container's first
    /// process; `cgroup` is the spec's cgroupsPath, read for OOM kills.
    pub fn run_tty(
        &self,
        id: &str,
        bundle: &Path,
        state_dir: &Path,
        cgroup: &str,
        tty: Tty<'_>,
        on_start: impl FnOnce(i32),
    ) -> Result<Exit> {
        let dir = tty.socket_dir;
        let console = crate::tty::ConsoleSocket::new(dir)?;
        let stdio = Stdio {
            console_socket: Some(console.path().to_path_buf()),
            ..Stdio::default()
        };
        let mut started = self.start(id, bundle, state_dir, stdio)?;
        on_start(started.pid());
        let master = match console.receive_master() {
            Ok(m) => m,
            Err(e) => {
                let _ = started.wait();
                return Err(e);
            }
        };
        let code = crate::tty::proxy(&master, Some(tty.log), || started.try_wait())?;
        Ok(started.finish(cgroup, code))
    }
}

/// A foreground container's pty: where the socket that carries its master is made, and its log.
pub struct Tty<'a> {
    pub socket_dir: &'a Path,
    pub log: &'a mut crate::logs::LogWriter,
}

/// A process to run in an existing container (`exec`).
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub args: Vec<String>,
    /// KEY=VALUE pairs added to the container's environment.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// A pseudo-terminal, made in the container's devpts.
    pub tty: bool,
    /// The process is killed when the caller dies (a healthcheck's test, killed at its timeout,
    /// must not go on in the container). The embedded executor only.
    pub kill_with_client: bool,
}

impl Executor {
    /// Runs a process in the running container `id`: it joins the container's namespaces and gets
    /// the same capabilities, seccomp filter and no_new_privs as its first process (through runc's
    /// exec; see below for the embedded executor). Returns its exit status; stdio is ours.
    pub fn exec(&self, id: &str, state_dir: &Path, req: &ExecRequest) -> Result<i32> {
        match self {
            // libcontainer 0.7's tenant builder joins every namespace but the user namespace and
            // drops the seccomp filter (seen from inside: uid_map "0 0 4294967295", Seccomp 0), so
            // bulkhead joins its containers itself (the exec module).
            Executor::Embedded => Err(Error::Executor("the embedded executor execs through bulkhead_runtime::exec".into())),
            Executor::External(bin) => {
                let mut cmd = Command::new(bin);
                cmd.arg("--root").arg(state_dir).arg("exec");
                for e in &req.env {
                    cmd.arg("--env").arg(e);
                }
                if let Some(c) = &req.cwd {
                    cmd.arg("--cwd").arg(c);
                }
                if let Some(u) = req.uid {
                    cmd.arg("--user").arg(format!("{u}:{}", req.gid.unwrap_or(0)));
                }
                if req.tty {
                    // As for run: a console socket needs --detach; we adopt the process and proxy.
                    // The store's tmp/ (state_dir is <root>/containers/<id>/exec) keeps the path short.
                    let dir = state_dir
                        .ancestors()
                        .nth(3)
                        .map(|r| r.join("tmp"))
                        .ok_or_else(|| Error::Executor("no store directory".into()))?;
                    let console = crate::tty::ConsoleSocket::new(&dir)?;
                    let pid_file = dir.join(format!("{id}.exec.pid"));
                    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
                        .map_err(|e| Error::Executor(format!("subreaper: {e}")))?;
                    cmd.arg("--tty")
                        .arg("--detach")
                        .arg("--console-socket")
                        .arg(console.path())
                        .arg("--pid-file")
                        .arg(&pid_file);
                    cmd.arg(id).args(&req.args);
                    let status = cmd
                        .status()
                        .map_err(|e| Error::Executor(format!("running {}: {e}", bin.display())))?;
                    if !status.success() {
                        return Ok(status_code(status));
                    }
                    let pid = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok());
                    let _ = std::fs::remove_file(&pid_file);
                    let pid = pid.ok_or_else(|| Error::Executor("the runtime wrote no pid".into()))?;
                    let master = console.receive_master()?;
                    return crate::tty::proxy(&master, None, || waitpid(pid, libc::WNOHANG));
                }
                cmd.arg(id).args(&req.args);
                let status = cmd
                    .status()
                    .map_err(|e| Error::Executor(format!("running {}: {e}", bin.display())))?;
                Ok(status_code(status))
            }
        }
    }
}

/// The container's standard streams; None inherits ours.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// With a terminal: where the runtime sends the pty master (the spec has process.terminal).
    pub console_socket: Option<PathBuf>,
}

/// A container whose first process runs.
pub struct Started {
    pid: i32,
    inner: Inner,
}

enum Inner {
    Embedded(Box<libcontainer::container::Container>),
    /// The external runtime detached; its container is our child now (we are its subreaper).
    /// The runtime and its state directory, for `delete` once it has exited.
    Adopted(PathBuf, PathBuf, String),
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").field("pid", &self.pid).finish()
    }
}

impl Started {
    /// The pid of the container's first process (0 if an external runtime did not say).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit status once the container's first process has ended, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<i32>> {
        match &mut self.inner {
            Inner::Embedded(_) | Inner::Adopted(..) => waitpid(self.pid, libc::WNOHANG),
        }
    }

    /// Blocks until the container's first process ends; returns its status.
    pub fn wait(&mut self) -> Result<i32> {
        match &mut self.inner {
            Inner::Embedded(_) | Inner::Adopted(..) => waitpid(self.pid, 0).map(|s| s.unwrap_or(255)),
        }
    }

    /// After the exit: reads the cgroup for OOM kills, then lets the executor clean up.
    pub fn finish(self, cgroup: &str, code: i32) -> Exit {
        let oom = oom_killed(cgroup);
        match self.inner {
            Inner::Embedded(mut c) => {
                if let Err(e) = c.delete(true) {
                    // The workload's status matters more than a cleanup problem (runc and crun do the same).
                    tracing::warn!(pid = self.pid, error = %e, "deleting the container after exit");
                }
            }
            Inner::Adopted(bin, state, id) => {
                let _ = Command::new(bin).arg("--root").arg(state).args(["delete", "--force", &id]).output();
            }
        }
        Exit { code, oom_killed: oom }
    }
}

/// What a process that takes over from `Started` after an exec (the shim's lean monitor) must
/// wait for and clean up: it keeps the pid and so the children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorTarget {
    /// libcontainer's container: reap it, then remove its cgroups and libcontainer's state.
    Embedded { pid: i32 },
    /// An external runtime that detached: reap the container, then `RUNTIME --root STATE delete`.
    Adopted { pid: i32, runtime: PathBuf },
}

impl MonitorTarget {
    pub fn pid(&self) -> i32 {
        match self {
            MonitorTarget::Embedded { pid } | MonitorTarget::Adopted { pid, .. } => *pid,
        }
    }

    /// After the exit: the cleanup the executor would have done.
    pub fn cleanup(&self, id: &str, state_dir: &Path, cgroup: &str) {
        match self {
            MonitorTarget::Embedded { .. } => {
                crate::cgroup::remove(cgroup);
                let _ = std::fs::remove_dir_all(state_dir.join(id));
            }
            MonitorTarget::Adopted { runtime, .. } => {
                let _ = Command::new(runtime)
                    .arg("--root")
                    .arg(state_dir)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
    }
}

impl Started {
    /// Hands the container over to a monitor that will exec in this process's place.
    pub fn into_monitor(self) -> MonitorTarget {
        match self.inner {
            Inner::Embedded(_) => MonitorTarget::Embedded { pid: self.pid },
            Inner::Adopted(bin, _, _) => MonitorTarget::Adopted {
                pid: self.pid,
                runtime: bin,
            },
        }
    }
}

/// waitpid for a monitor (the process may not be a `Started` of this process image).
pub fn reap(pid: i32, block: bool) -> Result<Option<i32>> {
    waitpid(pid, if block { 0 } else { libc::WNOHANG })
}

fn status_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// libcontainer 0.7 reads the operands of SCMP_CMP_MASKED_EQ the other way round from libseccomp's
/// convention (`SCMP_CMP(arg, SCMP_CMP_MASKED_EQ, mask, datum)`), which runc, crun and Docker's
/// profile follow (`value` = mask, `valueTwo` = datum): it takes `valueTwo` as the mask. Given the
/// spec as written, `clone` with namespace flags got through (a test from inside found it). So the
/// embedded executor gets its own copy of the bundle's config.json with those operands swapped, and
/// the filter means what the spec means. The rootfs path in the spec is absolute, so the copy can
/// live in the executor's state directory.
fn libcontainer_bundle(bundle: &Path, state_dir: &Path) -> Result<PathBuf> {
    let src = bundle.join("config.json");
    let text = std::fs::read(&src).map_err(|e| Error::Executor(format!("{}: {e}", src.display())))?;
    let mut spec: serde_json::Value = serde_json::from_slice(&text).map_err(|e| Error::Executor(format!("{}: {e}", src.display())))?;
    if let Some(rules) = spec.pointer_mut("/linux/seccomp/syscalls").and_then(|v| v.as_array_mut()) {
        for rule in rules {
            for arg in rule.get_mut("args").and_then(|a| a.as_array_mut()).into_iter().flatten() {
                if arg.get("op").and_then(|o| o.as_str()) == Some("SCMP_CMP_MASKED_EQ") {
                    let mask = arg.get("value").cloned().unwrap_or(serde_json::json!(0));
                    let datum = arg.get("valueTwo").cloned().unwrap_or(serde_json::json!(0));
                    arg["value"] = datum;
                    arg["valueTwo"] = mask;
                }
            }
        }
    }
    let dir = state_dir.join("bundle");
    std::fs::create_dir_all(&dir).map_err(|e| Error::Executor(format!("{}: {e}", dir.display())))?;
    let data = serde_json::to_vec(&spec).map_err(|e| Error::Executor(e.to_string()))?;
    std::fs::write(dir.join("config.json"), data).map_err(|e| Error::Executor(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

fn start_embedded(id: &str, bundle: &Path, state_dir: &Path, stdio: Stdio) -> Result<Started> {
    use libcontainer::container::builder::ContainerBuilder;
    let bundle = &libcontainer_bundle(bundle, state_dir)?;
    let err = |what: &str, e: libcontainer::error::LibcontainerError| Error::Executor(format!("{what}: {e}"));
    let mut b = ContainerBuilder::new(id.to_owned(), libcontainer::syscall::syscall::SyscallType::default())
        .with_root_path(state_dir)
        .map_err(|e| err("state directory", e))?
        .validate_id()
        .map_err(|e| err("container id", e))?;
    if let Some(fd) = stdio.stdin {
        b = b.with_stdin(fd);
    }
    if let Some(fd) = stdio.stdout {
        b = b.with_stdout(fd);
    }
    if let Some(fd) = stdio.stderr {
        b = b.with_stderr(fd);
    }
    if let Some(p) = &stdio.console_socket {
        b = b.with_console_socket(Some(p));
    }
    let mut c = b
        .with_executor(DefaultSignals)
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| err("creating the container", e))?;
    // Created, not started: its first process waits for start before it execs.
    if let Some(pid) = c.pid() {
        if let Err(e) = loopback_up(pid.as_raw()).and_then(|()| crate::hooks::created(id, pid.as_raw())) {
            let _ = c.delete(true);
            crate::hooks::exited(id);
            return Err(e);
        }
    }
    if let Err(e) = c.start() {
        let _ = c.delete(true);
        crate::hooks::exited(id);
        return Err(err("starting the container", e));
    }
    let Some(pid) = c.pid() else {
        let _ = c.delete(true);
        return Err(Error::Executor("the container has no process".into()));
    };
    Ok(Started {
        pid: pid.as_raw(),
        inner: Inner::Embedded(Box::new(c)),
    })
}

/// Puts every standard signal this process ignores back to its default disposition (SIGPIPE,
/// which Rust's runtime ignores; SIGHUP under nohup; ...): what a process ignores survives fork
/// and exec, and a container's processes must start as they would under init (a `yes | head -1`
/// in one would otherwise spin forever on EPIPE). Only in the process about to exec: the CLI
/// itself keeps ignoring SIGPIPE (its stderr may be a closed pipe).
pub(crate) fn default_ignored_signals() {
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction(2) reads the current disposition into a zeroed struct we own, and
        // SIG_DFL installs no handler.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// libcontainer's own executor, run in the container's init right before it execs the workload,
/// with the signals put back first (see [`default_ignored_signals`]).
#[derive(Clone)]
struct DefaultSignals;

impl libcontainer::workload::Executor for DefaultSignals {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> std::result::Result<(), libcontainer::workload::ExecutorError> {
        default_ignored_signals();
        libcontainer::workload::default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> std::result::Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)
    }
}

/// Brings `lo` up in the network namespace of `pid`, if it has one of its own. runc does this for
/// every new network namespace; libcontainer 0.7 does not, and a container cannot (it has no
/// CAP_NET_ADMIN), so without it nothing in a container could reach 127.0.0.1 or ::1, not even its
/// own servers. setns(2) moves only the calling thread, so a short-lived thread does it and the
/// CLI stays single-threaded afterwards.
fn loopback_up(pid: i32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let theirs = format!("/proc/{pid}/ns/net");
    let (a, b) = (std::fs::metadata(&theirs), std::fs::metadata("/proc/self/ns/net"));
    if let (Ok(a), Ok(b)) = (&a, &b) {
        if a.ino() == b.ino() && a.dev() == b.dev() {
            return Ok(()); // --network=host
        }
    }
    let ns = std::fs::File::open(&theirs).map_err(|e| Error::Executor(format!("{theirs}: {e}")))?;
    let up = std::thread::spawn(move || -> std::io::Result<()> {
        rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(&ns), Some(rustix::thread::LinkNameSpaceType::Network))?;
        let sock = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq we own; ifru_flags is
        // the union member those requests use.
        unsafe {
            if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    });
    up.join()
        .map_err(|_| Error::Executor("bringing up loopback: the thread panicked".into()))?
        .map_err(|e| Error::Executor(format!("bringing up loopback in the container's network namespace: {e}")))
}

fn start_external(bin: &Path, id: &str, bundle: &Path, state_dir: &Path, stdio: Stdio) -> Result<Started> {
    let pid_file = state_dir.join("pid");
    let _ = std::fs::remove_file(&pid_file);
    // Always detached, with us as the subreaper: the container becomes our child once the runtime
    // exits, we reap it ourselves, and its cgroup stays until our `delete`, so an OOM kill can be
    // read first (a foreground runc removes the cgroup as the container exits). A console socket
    // also needs --detach.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(|e| Error::Executor(format!("subreaper: {e}")))?;
    let log = state_dir.join("runtime.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(bin);
    cmd.arg("--root")
        .arg(state_dir)
        // The runtime's own errors go to its log (its stderr is the container's): read back below.
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json"])
        // Created first, started after the hooks (its networks) had the namespaces to work on.
        .arg("create")
        .arg("--bundle")
        .arg(bundle)
        .arg("--pid-file")
        .arg(&pid_file);
    if let Some(p) = &stdio.console_socket {
        cmd.arg("--console-socket").arg(p);
    }
    cmd.arg(id);
    if let Some(fd) = stdio.stdin {
        cmd.stdin(std::process::Stdio::from(fd));
    }
    if let Some(fd) = stdio.stdout {
        cmd.stdout(std::process::Stdio::from(fd));
    }
    if let Some(fd) = stdio.stderr {
        cmd.stderr(std::process::Stdio::from(fd));
    }
    let status = cmd
        .status()
        .map_err(|e| Error::Executor(format!("starting {}: {e}", bin.display())))?;
    if !status.success() {
        let _ = Command::new(bin)
            .arg("--root")
            .arg(state_dir)
            .args(["delete", "--force", id])
            .output();
        // The last error the runtime logged says why (e.g. the command does not exist).
        let why = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["level"] == "error")
            .find_map(|v| v["msg"].as_str().map(str::to_owned));
        return Err(Error::Executor(match why {
            Some(msg) => format!("{} could not start the container: {msg}", bin.display()),
            None => format!("{} could not start the container ({status})", bin.display()),
        }));
    }
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .ok_or_else(|| Error::Executor("the runtime wrote no pid".into()));
    let delete = || {
        let _ = Command::new(bin)
            .arg("--root")
            .arg(state_dir)
            .args(["delete", "--force", id])
            .output();
        crate::hooks::exited(id);
    };
    let pid = match pid.and_then(|pid| crate::hooks::created(id, pid).map(|()| pid)) {
        Ok(pid) => pid,
        Err(e) => {
            delete();
            return Err(e);
        }
    };
    let started = Command::new(bin)
        .arg("--root")
        .arg(state_dir)
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "start", id])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Executor(format!("starting {}: {e}", bin.display())))?;
    if !started.status.success() {
        delete();
        return Err(Error::Executor(format!(
            "{} could not start the container: {}",
            bin.display(),
            String::from_utf8_lossy(&started.stderr).trim()
        )));
    }
    Ok(Started {
        pid,
        inner: Inner::Adopted(bin.to_path_buf(), state_dir.to_path_buf(), id.to_owned()),
    })
}

/// waitpid(2) on our own child; `flags` 0 blocks, WNOHANG does not. Returns the status as a shell
/// reports it, or None if the child is still running.
fn waitpid(pid: i32, flags: i32) -> Result<Option<i32>> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            break;
        }
        if r == 0 {
            return Ok(None);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Executor(format!("waiting for the container: {e}")));
        }
    }
    Ok(Some(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }))
}

/// Whether the kernel OOM-killed a process of the container's cgroup (v1 memory.oom_control, or v2
/// memory.events); read after it exits and before its cgroup is removed.
pub fn oom_killed(cgroup: &str) -> bool {
    let rel = cgroup.trim_start_matches('/');
    let v1 = Path::new("/sys/fs/cgroup/memory").join(rel).join("memory.oom_control");
    let v2 = Path::new("/sys/fs/cgroup").join(rel).join("memory.events");
    [v1, v2].iter().filter_map(|p| std::fs::read_to_string(p).ok()).any(|s| {
        s.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    })
}

/// A close-on-exec pipe (read end, write end) for a container's output.
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Error::Executor(format!("pipe: {}", std::io::Error::from(e))))
}
