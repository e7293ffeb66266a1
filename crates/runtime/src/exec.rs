//! `exec` for containers of the embedded executor, done by bulkhead itself: libcontainer 0.7's own
//! exec leaves out the user namespace and the seccomp filter.
//!
//! The order is runc's: open the namespaces of the container's first process; fork; the parent puts
//! the child into the container's cgroups; the child joins the user namespace first (so it holds
//! capabilities over the others), then mnt, ipc, uts, net, cgroup and pid, and forks again so that
//! the grandchild is inside the pid namespace. The grandchild drops the bounding set to the
//! container's capabilities, sets no_new_privs, takes its uid and gids, sets its capability sets,
//! loads the same seccomp filter as the container (the spec's, read the way runc reads it), and execs.
//!
//! What the exec'd process must not inherit from the caller (the class of runc's CVE-2024-21626):
//! - descriptors: the caller may hold any descriptor without close-on-exec (a shell's `exec 8</`
//!   is the host's root directory, and `/proc/self/fd/8/...` inside the container would reach the
//!   host's files). The grandchild closes every descriptor above stdio as soon as it has used the
//!   last one it needs, before it changes into the working directory: a container whose `/w` is a
//!   symlink to `/proc/self/fd/8` would otherwise give it the host's directory as its working
//!   directory, which survives exec. The working directory is resolved inside the container's
//!   root (no magic links) and refused if it is not under it, as runc does;
//! - the session: the caller's terminal, as a controlling terminal, lets `ioctl(TIOCSTI)` type
//!   commands into the operator's shell. Every exec'd process starts a session of its own (with
//!   `-t`, on the container's own pty), and the default filter denies TIOCSTI and TIOCLINUX too;
//! - inspection: both children are not dumpable until the exec, so processes of the container
//!   cannot ptrace them or open their /proc entries while they still hold the host's descriptors.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use rustix::thread::{CapabilitySet, CapabilitySets, LinkNameSpaceType};
use serde_json::Value;

use crate::container::{ContainerRecord, Containers, State};
use crate::error::{Error, Result};
use crate::executor::ExecRequest;
use crate::profile::ALL_CAPABILITIES;

/// Namespaces joined, in order: the user namespace first, the pid namespace last.
const NAMESPACES: [(&str, LinkNameSpaceType); 7] = [
    ("user", LinkNameSpaceType::User),
    ("mnt", LinkNameSpaceType::Mount),
    ("ipc", LinkNameSpaceType::InterProcessCommunication),
    ("uts", LinkNameSpaceType::HostNameAndNISDomainName),
    ("net", LinkNameSpaceType::Network),
    ("cgroup", LinkNameSpaceType::ControlGroup),
    ("pid", LinkNameSpaceType::ProcessID),
];

/// Everything the child needs, prepared before the fork (the child only applies it).
struct Plan {
    /// PR_SET_PDEATHSIG on the way: the client's death kills the process.
    kill_with_client: bool,
    namespaces: Vec<(LinkNameSpaceType, OwnedFd)>,
    cgroup_procs: Vec<std::path::PathBuf>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    path_dirs: Vec<String>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    caps: u64,
    no_new_privs: bool,
    seccomp: Option<ScmpFilterContext>,
    /// With a terminal: the grandchild's end of the socket that carries the pty master back.
    tty: Option<OwnedFd>,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Executor(msg.into())
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| err(format!("{s:?} contains a NUL byte")))
}

/// Runs `req` in the running container `rec` with the executor that runs it; returns its exit status.
pub fn exec(cs: &Containers, rec: &ContainerRecord, req: &ExecRequest) -> Result<i32> {
    match crate::executor::Executor::from_flag(Some(&rec.runtime))? {
        crate::executor::Executor::Embedded => exec_into(cs, rec, req),
        external => external.exec(&rec.id, &cs.dir(&rec.id).join("exec"), req),
    }
}

/// Runs `req` in the running container `rec` by joining it ourselves; returns its exit status.
/// Stdio is ours.
pub fn exec_into(cs: &Containers, rec: &ContainerRecord, req: &ExecRequest) -> Result<i32> {
    let State::Running { pid, .. } = rec.state else {
        return Err(err(format!("container {} is not running", rec.name)));
    };
    if !crate::lifecycle::owns_pid(&rec.id, pid) {
        return Err(err(format!("container {} is not running", rec.name)));
    }
    let spec_path = cs.bundle(&rec.id).join("config.json");
    let spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).map_err(|e| err(format!("{}: {e}", spec_path.display())))?)
        .map_err(|e| err(format!("{}: {e}", spec_path.display())))?;
    let plan = plan(&spec, rec, pid, req)?;
    run(plan, req.tty)
}

fn plan(spec: &Value, rec: &ContainerRecord, pid: i32, req: &ExecRequest) -> Result<Plan> {
    let process = &spec["process"];
    let mut namespaces = Vec::new();
    for (name, kind) in NAMESPACES {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let (Ok(a), Ok(b)) = (std::fs::metadata(&theirs), std::fs::metadata(format!("/proc/self/ns/{name}"))) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        if a.ino() == b.ino() && a.dev() == b.dev() {
            continue; // shared with the host (e.g. --userns=host): nothing to join
        }
        let f = std::fs::File::open(&theirs).map_err(|e| err(format!("{theirs}: {e}")))?;
        namespaces.push((kind, OwnedFd::from(f)));
    }
    let rel = crate::cgroup::path(&rec.id);
    let rel = rel.trim_start_matches('/');
    let mut cgroup_procs = Vec::new();
    let roots: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    for r in roots.iter().map(|p| p.as_path()).chain([Path::new("/sys/fs/cgroup")]) {
        let p = r.join(rel).join("cgroup.procs");
        if p.exists() {
            cgroup_procs.push(p);
        }
    }
    let mut env: Vec<String> = process["env"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    for kv in &req.env {
        let key = kv.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    let path_dirs = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .split(':')
        .map(str::to_owned)
        .collect();
    let cwd = req
        .cwd
        .clone()
        .or_else(|| process["cwd"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "/".into());
    let uid = req.uid.unwrap_or_else(|| process["user"]["uid"].as_u64().unwrap_or(0) as u32);
    let gid = req.gid.unwrap_or_else(|| process["user"]["gid"].as_u64().unwrap_or(0) as u32);
    let groups = if req.uid.is_some() {
        Vec::new()
    } else {
        process["user"]["additionalGids"]
            .as_array()
            .map(|a| a.iter().filter_map(|g| g.as_u64().map(|g| g as u32)).collect())
            .unwrap_or_default()
    };
    let mut caps = 0u64;
    for c in process["capabilities"]["bounding"].as_array().into_iter().flatten() {
        let name = c.as_str().unwrap_or("");
        let bit = ALL_CAPABILITIES
            .iter()
            .position(|k| *k == name)
            .ok_or_else(|| err(format!("unknown capability {name} in the spec")))?;
        caps |= 1 << bit;
    }
    let seccomp = match spec["linux"].get("seccomp") {
        Some(s) if !s.is_null() => Some(filter(s)?),
        _ => None,
    };
    if req.args.is_empty() {
        return Err(err("exec needs a command"));
    }
    Ok(Plan {
        namespaces,
        cgroup_procs,
        argv: req.args.iter().map(|a| cstr(a)).collect::<Result<_>>()?,
        envp: env.iter().map(|e| cstr(e)).collect::<Result<_>>()?,
        path_dirs,
        cwd: cstr(&cwd)?,
        uid,
        gid,
        groups,
        caps,
        no_new_privs: process["noNewPrivileges"].as_bool().unwrap_or(true),
        seccomp,
        tty: None,
        kill_with_client: req.kill_with_client,
    })
}

fn action(name: &str, errno: Option<i64>) -> Result<ScmpAction> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno.unwrap_or(libc::EPERM as i64) as i32),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        other => return Err(err(format!("seccomp action {other} is not supported"))),
    })
}

/// Compiles an OCI `linux.seccomp` object, reading SCMP_CMP_MASKED_EQ as runc does
/// (`value` = mask, `valueTwo` = datum).
fn filter(s: &Value) -> Result<ScmpFilterContext> {
    let e = |what: &str, x: libseccomp::error::SeccompError| err(format!("seccomp {what}: {x}"));
    let default = action(
        s["defaultAction"].as_str().unwrap_or("SCMP_ACT_ERRNO"),
        s["defaultErrnoRet"].as_i64(),
    )?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|x| e("context", x))?;
    // no_new_privs is set by us, explicitly.
    ctx.set_ctl_nnp(false).map_err(|x| e("nnp", x))?;
    for rule in s["syscalls"].as_array().into_iter().flatten() {
        let act = action(rule["action"].as_str().unwrap_or(""), rule["errnoRet"].as_i64())?;
        if act == default {
            continue;
        }
        let mut cmps = Vec::new();
        for a in rule["args"].as_array().into_iter().flatten() {
            let index = a["index"].as_u64().unwrap_or(0) as u32;
            let value = a["value"].as_u64().unwrap_or(0);
            let two = a["valueTwo"].as_u64().unwrap_or(0);
            let (op, datum) = match a["op"].as_str().unwrap_or("") {
                "SCMP_CMP_NE" => (ScmpCompareOp::NotEqual, value),
                "SCMP_CMP_LT" => (ScmpCompareOp::Less, value),
                "SCMP_CMP_LE" => (ScmpCompareOp::LessOrEqual, value),
                "SCMP_CMP_EQ" => (ScmpCompareOp::Equal, value),
                "SCMP_CMP_GE" => (ScmpCompareOp::GreaterEqual, value),
                "SCMP_CMP_GT" => (ScmpCompareOp::Greater, value),
                "SCMP_CMP_MASKED_EQ" => (ScmpCompareOp::MaskedEqual(value), two),
                other => return Err(err(format!("seccomp operator {other} is not supported"))),
            };
            cmps.push(ScmpArgCompare::new(index, op, datum));
        }
        for name in rule["names"].as_array().into_iter().flatten().filter_map(|n| n.as_str()) {
            // Names this libseccomp does not know are skipped, as runc does.
            let Ok(sc) = ScmpSyscall::from_name(name) else { continue };
            if cmps.is_empty() {
                ctx.add_rule(act, sc).map_err(|x| e(name, x))?;
            } else {
                ctx.add_rule_conditional(act, sc, &cmps).map_err(|x| e(name, x))?;
            }
        }
    }
    Ok(ctx)
}

fn run(mut plan: Plan, tty: bool) -> Result<i32> {
    let (go_r, go_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| err(format!("pipe: {e}")))?;
    let mut ours = None;
    if tty {
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| err(format!("socketpair: {e}")))?;
        ours = Some(a);
        plan.tty = Some(b);
    }
    let client = rustix::process::getpid();
    // SAFETY: this process is single-threaded here (the CLI), so the child may allocate; it only
    // ever leaves through exec or _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(err(format!("fork: {}", std::io::Error::last_os_error())));
    }
    if child == 0 {
        drop(go_w);
        if plan.kill_with_client {
            // SAFETY: prctl(PR_SET_PDEATHSIG) on ourselves.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            if rustix::process::getppid() != Some(client) {
                // SAFETY: the client died before the signal was armed.
                unsafe { libc::_exit(137) };
            }
        }
        // SAFETY: prctl(PR_SET_DUMPABLE, 0) on ourselves; inherited by the grandchild, reset by
        // the kernel at its exec.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        let mut b = [0u8; 1];
        let _ = rustix::io::read(&go_r, &mut b);
        let code = match join_and_fork(&plan) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("bulkhead: error: exec: {e}");
                125
            }
        };
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    drop(go_r);
    // Into the container's cgroups before it joins anything (its children inherit them).
    let mut joined = Ok(());
    for p in &plan.cgroup_procs {
        if let Err(e) = std::fs::write(p, child.to_string()) {
            joined = Err(err(format!("joining {}: {e}", p.display())));
            break;
        }
    }
    if joined.is_err() {
        // SAFETY: our own child, not yet past its first read.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
    let _ = rustix::io::write(&go_w, b"g");
    drop(go_w);
    // Our copy of the grandchild's end goes, so a child that dies before sending shows as EOF.
    plan.tty = None;
    let decode = |status: i32| {
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        }
    };
    if let (Some(sock), true) = (ours, joined.is_ok()) {
        match crate::tty::receive_fd(std::os::fd::AsFd::as_fd(&sock)) {
            Ok(master) => {
                return crate::tty::proxy(&master, None, || {
                    let mut status = 0;
                    // SAFETY: polling our own child.
                    let r = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
                    Ok((r == child).then(|| decode(status)))
                });
            }
            Err(e) => tracing::debug!(error = %e, "no pty from the exec'd process"),
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    joined?;
    Ok(decode(status))
}

/// In the first child: join the namespaces, then fork into the pid namespace and wait.
fn join_and_fork(plan: &Plan) -> Result<i32> {
    for (kind, fd) in &plan.namespaces {
        rustix::thread::move_into_link_name_space(fd.as_fd(), Some(*kind))
            .map_err(|e| err(format!("joining the {kind:?} namespace: {e}")))?;
    }
    // SAFETY: single-threaded child; the grandchild leaves through exec or _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(err(format!("fork: {}", std::io::Error::last_os_error())));
    }
    if pid == 0 {
        let e = become_and_exec(plan);
        eprintln!("bulkhead: error: exec: {e}");
        let code = if matches!(&e, Error::NotFound(_)) { 127 } else { 126 };
        // SAFETY: leaving the forked grandchild.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}

/// In the grandchild, inside every namespace: take on the container's restrictions and exec.
/// Returns only on failure.
fn become_and_exec(plan: &Plan) -> Error {
    let step = || -> Result<std::convert::Infallible> {
        match &plan.tty {
            Some(sock) => attach_pty(sock)?,
            None => {
                rustix::process::setsid().map_err(|e| err(format!("setsid: {e}")))?;
            }
        }
        // Nothing of the caller's may be open from here on: not for the exec (it would survive
        // it), and not for the chdir below (a working directory survives exec too, and a
        // container's `/w -> /proc/self/fd/N` would make an inherited descriptor our cwd).
        close_from(3)?;
        enter_workdir(&plan.cwd)?;
        for cap in 0..=40u32 {
            if plan.caps & (1 << cap) == 0 {
                // SAFETY: prctl(PR_CAPBSET_DROP, cap); EINVAL for caps this kernel lacks is fine.
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            }
        }
        if plan.no_new_privs {
            rustix::thread::set_no_new_privs(true).map_err(|e| err(format!("no_new_privs: {e}")))?;
        }
        // SAFETY: plain credential calls in a single-threaded process.
        unsafe {
            if libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) != 0
                || libc::setresgid(plan.gid, plan.gid, plan.gid) != 0
                || libc::setresuid(plan.uid, plan.uid, plan.uid) != 0
            {
                return Err(err(format!(
                    "setting uid {} gid {}: {}",
                    plan.uid,
                    plan.gid,
                    std::io::Error::last_os_error()
                )));
            }
        }
        // Root keeps the container's set; another uid lost its capabilities at setresuid already.
        let set = if plan.uid == 0 {
            CapabilitySet::from_bits_retain(plan.caps)
        } else {
            CapabilitySet::empty()
        };
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: set,
                permitted: set,
                inheritable: CapabilitySet::empty(),
            },
        )
        .map_err(|e| err(format!("capabilities: {e}")))?;
        if plan.kill_with_client {
            // After the change of credentials, which clears it. The parent (outside the pid
            // namespace) shows as 0; any other parent means it is gone already.
            // SAFETY: prctl(PR_SET_PDEATHSIG) on ourselves.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            if rustix::process::getppid().is_some() {
                return Err(err("the client is gone"));
            }
        }
        if let Some(f) = &plan.seccomp {
            f.load().map_err(|e| err(format!("loading the seccomp filter: {e}")))?;
        }
        let prog = &plan.argv[0];
        let candidates: Vec<CString> = if prog.as_bytes().contains(&b'/') {
            vec![prog.clone()]
        } else {
            plan.path_dirs
                .iter()
                .filter_map(|d| CString::new(format!("{d}/{}", prog.to_string_lossy())).ok())
                .collect()
        };
        let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        // What this process ignores survives exec (SIGPIPE: Rust's runtime ignores it).
        crate::executor::default_ignored_signals();
        for c in &candidates {
            // SAFETY: NUL-terminated strings and NULL-terminated arrays that outlive the call.
            unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        }
        Err(Error::NotFound(format!(
            "{}: executable not found in the container",
            prog.to_string_lossy()
        )))
    };
    match step() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Closes every descriptor from `first` up (close_range(2), Linux 5.9; before that, one close
/// per open descriptor as /proc/self/fd lists them).
fn close_from(first: u32) -> Result<()> {
    // SAFETY: close_range on this process's own descriptors; nothing above `first` is used again.
    if unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0 as libc::c_uint) } == 0 {
        return Ok(());
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| err(format!("/proc/self/fd: {e}")))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|fd| *fd >= first as i32)
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor number of our own; the directory's is already gone (EBADF).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Changes into `cwd` resolved inside the container's root (symlinks resolve there, magic links
/// not at all), then refuses a working directory outside that root, as runc does.
fn enter_workdir(cwd: &CString) -> Result<()> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let root =
        rustix::fs::open("/", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| err(format!("/: {e}")))?;
    let dir = rustix::fs::openat2(
        &root,
        cwd.as_c_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| err(format!("working directory {:?}: {e}", cwd)))?;
    rustix::process::fchdir(&dir).map_err(|e| err(format!("working directory {:?}: {e}", cwd)))?;
    let now = rustix::process::getcwd(Vec::new()).map_err(|e| err(format!("getcwd: {e}")))?;
    if !now.as_bytes().starts_with(b"/") {
        return Err(err(format!("working directory {cwd:?} is outside the container")));
    }
    Ok(())
}

/// In the grandchild: a pty pair from the container's own devpts; the master goes to the CLI, the
/// slave becomes our controlling terminal and stdio.
fn attach_pty(sock: &OwnedFd) -> Result<()> {
    use rustix::fs::{Mode, OFlags};
    let master = rustix::fs::open("/dev/pts/ptmx", OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| err(format!("/dev/pts/ptmx: {e}")))?;
    rustix::pty::unlockpt(&master).map_err(|e| err(format!("unlockpt: {e}")))?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(|e| err(format!("ptsname: {e}")))?;
    let slave =
        rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY, Mode::empty()).map_err(|e| err(format!("{name:?}: {e}")))?;
    let fds = [master.as_fd()];
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
    cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(sock, &[std::io::IoSlice::new(b"pty")], &mut cmsg, rustix::net::SendFlags::empty())
        .map_err(|e| err(format!("sending the pty: {e}")))?;
    drop(master);
    rustix::process::setsid().map_err(|e| err(format!("setsid: {e}")))?;
    rustix::process::ioctl_tiocsctty(&slave).map_err(|e| err(format!("TIOCSCTTY: {e}")))?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&slave), target) } < 0 {
            return Err(err(format!("dup2: {}", std::io::Error::last_os_error())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_are_in_kernel_order() {
        assert_eq!(ALL_CAPABILITIES.iter().position(|c| *c == "CAP_SYS_ADMIN"), Some(21));
        assert_eq!(ALL_CAPABILITIES.iter().position(|c| *c == "CAP_SETFCAP"), Some(31));
        assert_eq!(ALL_CAPABILITIES.iter().position(|c| *c == "CAP_CHECKPOINT_RESTORE"), Some(40));
    }

    #[test]
    fn our_default_filter_compiles() {
        filter(&crate::seccomp::default_profile()).unwrap();
    }
}
