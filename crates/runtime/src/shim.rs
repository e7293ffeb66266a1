//! The per-container shim: one small process per running container that outlives the command which
//! started it. It starts the container (so it is the parent that can reap it), copies its output into
//! the hash-chained log, records the exit status and time atomically, and unmounts the root
//! filesystem. It stays single-threaded, so the executor's clone happens in a process with one
//! thread; it polls the output pipes and reaps with WNOHANG in the same loop.

use std::os::fd::OwnedFd;

use bulkhead_image::Store;

use crate::container::{Containers, State};
use crate::error::{Error, Result};
use crate::executor::{Executor, MonitorTarget, Stdio};

/// Runs container `id` under this process until it exits. Any failure to start is recorded in the
/// container's record (status 125 and the reason) as well as returned.
pub fn run_shim(store: &Store, cs: &Containers, id: &str) -> Result<()> {
    let mut rec = cs.load(id)?;
    let executor = Executor::from_flag(Some(&rec.runtime))?;
    let result = supervise(store, cs, &mut rec, &executor);
    if let Err(e) = &result {
        crate::hooks::exited(id);
        rec.state = State::Exited {
            code: 125,
            finished: chrono::Utc::now(),
            oom_killed: false,
        };
        rec.error = Some(e.to_string());
        let _ = cs.save(&rec);
        let _ = cs.unmount_rootfs(id);
    }
    result
}

/// Where a detached container's output goes before the monitor takes it over.
enum Output {
    Pipes {
        out: OwnedFd,
        err: OwnedFd,
    },
    /// `-t`: the pty master (its slave is the container's stdin, stdout and stderr).
    Pty(OwnedFd),
}

fn supervise(store: &Store, cs: &Containers, rec: &mut crate::container::ContainerRecord, executor: &Executor) -> Result<()> {
    cs.mount_rootfs(store, rec)?;
    let spec: serde_json::Value = std::fs::read(cs.bundle(&rec.id).join("config.json"))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    let terminal = spec["process"]["terminal"].as_bool().unwrap_or(false);
    // `-i`: stdin is a pipe whose write end the monitor holds and never writes, so the container
    // reads no end of file (a shell waits, as under `docker run -di`). Otherwise /dev/null.
    let (stdin, hold) = if terminal {
        (None, None)
    } else if rec.open_stdin {
        let (r, w) = crate::executor::pipe()?;
        (Some(r), Some(w))
    } else {
        let null = std::fs::File::open("/dev/null").map_err(|e| Error::Executor(format!("/dev/null: {e}")))?;
        (Some(null.into()), None)
    };
    let console = if terminal {
        Some(crate::tty::ConsoleSocket::new(&store.root().join("tmp"))?)
    } else {
        None
    };
    let (pipes, stdout, stderr) = if terminal {
        (None, None, None)
    } else {
        let (out_r, out_w) = crate::executor::pipe()?;
        let (err_r, err_w) = crate::executor::pipe()?;
        (Some((out_r, err_r)), Some(out_w), Some(err_w))
    };
    let stdio = Stdio {
        stdin,
        stdout,
        stderr,
        console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
    };
    let started = executor.start(&rec.id, &cs.bundle(&rec.id), &cs.dir(&rec.id).join("exec"), stdio)?;
    let output = match (pipes, console) {
        (Some((out, err)), _) => Output::Pipes { out, err },
        (None, Some(console)) => match console.receive_master() {
            Ok(master) => Output::Pty(master),
            Err(e) => {
                // SAFETY: kill(2) of our child, which we reap below.
                unsafe { libc::kill(started.pid(), libc::SIGKILL) };
                let _ = crate::executor::reap(started.pid(), true);
                return Err(e);
            }
        },
        (None, None) => unreachable!("a terminal always has a console socket"),
    };
    rec.state = State::Running {
        pid: started.pid(),
        started: chrono::Utc::now(),
    };
    rec.shim_pid = Some(std::process::id() as i32);
    rec.error = None;
    cs.save_volatile(rec)?;
    if rec.healthcheck.is_some() {
        spawn_health_loop(store, &rec.id, started.pid());
    }
    // The container runs. Execute the lean monitor in our place: same pid, so still the parent
    // and the subreaper; it leaves behind every page that starting a container touched.
    let target = started.into_monitor();
    let inherited: Vec<&OwnedFd> = match &output {
        Output::Pipes { out, err } => vec![out, err],
        Output::Pty(m) => vec![m],
    };
    for fd in inherited.into_iter().chain(hold.as_ref()) {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(|e| Error::Executor(format!("fcntl: {e}")))?;
    }
    let e = exec_monitor(store, cs, &rec.id, &target, &output, hold.as_ref());
    // Only on failure: monitor here instead.
    tracing::warn!(error = %e, "could not execute the shim monitor; monitoring in place");
    let mut log = cs.log_writer(&rec.id, rec.auto_remove)?;
    let pid = target.pid();
    let streams = match output {
        Output::Pipes { out, err } => [Some(out), Some(err)],
        Output::Pty(m) => [Some(m), None],
    };
    let code = bulkhead_shim::output::copy_output(streams, None, &mut log, false, || crate::executor::reap(pid, false))?;
    drop(hold);
    // (The restart policy is the monitor's path's: this fallback only records the exit.)
    finish(store, cs, &rec.id, &target, code, chrono::Utc::now(), None).map(|_| ())
}

/// Starts the loop that runs the container's healthcheck on its interval (`bulkhead
/// health-loop`, a process of its own in its own session: the monitor stays as small as it
/// is). It ends when this start of the container does. A failure to start it is recorded as the
/// container's health.
fn spawn_health_loop(store: &Store, id: &str, pid: i32) {
    let Some(exe) = std::env::var_os("BULKHEAD_EXE").filter(|p| std::path::Path::new(p).is_absolute()) else {
        tracing::warn!("no bulkhead binary for the healthcheck");
        return;
    };
    let mut c = std::process::Command::new(exe);
    c.arg("--root").arg(store.root()).args(["health-loop", id, &format!("--pid={pid}")]);
    // Gone with this start of the container: the monitor (this pid, after its exec) exits when
    // the container does.
    if let Err(e) = crate::lifecycle::spawn_detached(c, true) {
        tracing::warn!(error = %e, "starting the healthcheck");
    }
}

/// The monitor binary (crates/shim), built static by build.rs and embedded.
static MONITOR: &[u8] = include_bytes!(env!("BULKHEAD_SHIM_BIN"));

/// Executes the embedded monitor from a sealed memfd in this process's place, with the output
/// pipes and the `shim-finish` command it runs after the exit. Returns only on failure.
fn exec_monitor(
    store: &Store,
    cs: &Containers,
    id: &str,
    target: &MonitorTarget,
    output: &Output,
    hold: Option<&OwnedFd>,
) -> std::io::Error {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // The finishing half is the full binary again, from where the user installed it; it never
    // enters the container, so it need not run sealed.
    let Some(bulkhead) = std::env::var_os("BULKHEAD_EXE")
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute())
    else {
        return std::io::Error::other("BULKHEAD_EXE does not name the bulkhead binary");
    };
    let memfd = match sealed_memfd("bulkhead-shim", MONITOR) {
        Ok(fd) => fd,
        Err(e) => return e,
    };
    let mut cmd = std::process::Command::new(format!("/proc/self/fd/{}", memfd.as_raw_fd()));
    cmd.arg0("bulkhead-shim")
        .arg("--log")
        .arg(cs.dir(id).join("logs"))
        .args(["--pid", &target.pid().to_string()]);
    match output {
        Output::Pipes { out, err } => cmd.args(["--out", &out.as_raw_fd().to_string(), "--err", &err.as_raw_fd().to_string()]),
        Output::Pty(master) => cmd.args(["--tty", &master.as_raw_fd().to_string()]),
    };
    if let Some(fd) = hold {
        cmd.args(["--hold", &fd.as_raw_fd().to_string()]);
    }
    if cs.load(id).is_ok_and(|r| r.auto_remove) {
        cmd.arg("--volatile");
    }
    cmd.arg("--")
        .arg(bulkhead)
        .arg("--root")
        .arg(store.root())
        .args(["shim-finish", id, "--pid", &target.pid().to_string()]);
    if let MonitorTarget::Adopted { runtime, .. } = target {
        cmd.arg("--runtime").arg(runtime);
    }
    cmd.exec()
}

/// A close-on-exec memfd holding `data`, sealed against any change.
fn sealed_memfd(name: &str, data: &[u8]) -> std::io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, data)?;
    let fd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE)?;
    Ok(fd)
}

/// After the exit (`shim-finish`, which the monitor executes in its own place, or the shim itself
/// when it monitored in place): cleans up what the executor would have, records the exit
/// atomically, unmounts, and removes an --rm container. Only the container's shim may do this
/// (the same pid as recorded).
pub fn finish(
    store: &Store,
    cs: &Containers,
    id: &str,
    target: &MonitorTarget,
    code: i32,
    finished: chrono::DateTime<chrono::Utc>,
    error: Option<String>,
) -> Result<Option<std::time::Duration>> {
    let me = std::process::id() as i32;
    // The record's change under the containers' lock (a user's `stop` marks it at the same time).
    let lock = cs.lock()?;
    let mut rec = cs.load(id)?;
    let started = match rec.state {
        State::Running { pid, started } if pid == target.pid() && rec.shim_pid == Some(me) => started,
        _ => {
            return Err(Error::Invalid(format!(
                "shim-finish: process {me} is not the shim of a running container {id}"
            )))
        }
    };
    let cgroup = crate::cgroup::path(id);
    let oom = crate::executor::oom_killed(&cgroup);
    target.cleanup(id, &cs.dir(id).join("exec"), &cgroup);
    crate::hooks::exited(id);
    rec.state = State::Exited {
        code,
        finished,
        oom_killed: oom,
    };
    if error.is_some() {
        rec.error = error;
    }
    cs.save(&rec)?;
    drop(lock);
    cs.unmount_rootfs(id)?;
    if rec.auto_remove {
        crate::lifecycle::remove(store, cs, id, true)?;
        return Ok(None);
    }
    let ran = (finished - started).to_std().unwrap_or_default();
    Ok(crate::lifecycle::restart_due(&rec, code, ran))
}
