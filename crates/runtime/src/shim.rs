//! The per-container shim: one small process per running container that outlives the command which
//! started it. It starts the container (so it is the parent that can reap it), copies its output into
//! the hash-chained log, records the exit status and time atomically, and unmounts the root
//! filesystem. It stays single-threaded, so the executor's clone happens in a process with one
//! thread; it polls the output pipes and reaps with WNOHANG in the same loop.

use std::os::fd::{AsFd, OwnedFd};

use bulkhead_image::Store;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;

use crate::container::{Containers, State};
use crate::error::{Error, Result};
use crate::executor::{Executor, MonitorTarget, Stdio};
use crate::logs::{LogWriter, DEFAULT_MAX_FILES, DEFAULT_MAX_SIZE};
use crate::run::cgroup_path;

/// Runs container `id` under this process until it exits. Any failure to start is recorded in the
/// container's record (status 125 and the reason) as well as returned.
pub fn run_shim(store: &Store, cs: &Containers, id: &str) -> Result<()> {
    let mut rec = cs.load(id)?;
    let executor = Executor::from_flag(Some(&rec.runtime))?;
    let result = supervise(store, cs, &mut rec, &executor);
    if let Err(e) = &result {
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

/// A close-on-exec pipe (read end, write end) for a container's output.
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Error::Executor(format!("pipe: {}", std::io::Error::from(e))))
}

fn supervise(store: &Store, cs: &Containers, rec: &mut crate::container::ContainerRecord, executor: &Executor) -> Result<()> {
    cs.mount_rootfs(store, rec)?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let null = std::fs::File::open("/dev/null").map_err(|e| Error::Executor(format!("/dev/null: {e}")))?;
    let stdio = Stdio {
        stdin: Some(null.into()),
        stdout: Some(out_w),
        stderr: Some(err_w),
        console_socket: None,
    };
    let started = executor.start(&rec.id, &cs.bundle(&rec.id), &cs.dir(&rec.id).join("exec"), stdio)?;
    rec.state = State::Running {
        pid: started.pid(),
        started: chrono::Utc::now(),
    };
    rec.shim_pid = Some(std::process::id() as i32);
    rec.error = None;
    cs.save(rec)?;
    // The container runs. Exec a lean monitor in our place: it keeps our pid and so our children,
    // and leaves behind the pages that starting a container touched (libcontainer, libseccomp).
    let target = started.into_monitor();
    for fd in [&out_r, &err_r] {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(|e| Error::Executor(format!("fcntl: {e}")))?;
    }
    let (kind, runtime) = match &target {
        MonitorTarget::Embedded { .. } => ("embedded", String::new()),
        MonitorTarget::Adopted { runtime, .. } => ("adopted", runtime.display().to_string()),
    };
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new("/proc/self/exe")
        .arg("--root")
        .arg(store.root())
        .args([
            "shim-monitor",
            &rec.id,
            "--pid",
            &target.pid().to_string(),
            "--out-fd",
            &out_r.as_raw_fd().to_string(),
            "--err-fd",
            &err_r.as_raw_fd().to_string(),
            "--kind",
            kind,
            "--runtime",
            &runtime,
        ])
        .exec();
    // Only on failure: monitor here instead.
    tracing::warn!(error = %e, "could not exec the shim monitor; monitoring in place");
    monitor(store, cs, &rec.id, target, out_r, err_r)
}

/// Entry point of `shim-monitor`: takes over the inherited pipe descriptors (checked to be pipes)
/// and monitors; a failure is recorded in the container's record.
pub fn run_monitor(store: &Store, cs: &Containers, id: &str, target: MonitorTarget, out_fd: i32, err_fd: i32) -> Result<()> {
    let adopt = |fd: i32| -> Result<OwnedFd> {
        // SAFETY: fcntl(F_GETFD) only asks whether the descriptor is open.
        if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(Error::Executor(format!("descriptor {fd} is not open")));
        }
        // SAFETY: the descriptor is open, and this process was exec'd by its shim to own it.
        let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let st = rustix::fs::fstat(&owned).map_err(|e| Error::Executor(format!("fstat: {e}")))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Fifo {
            return Err(Error::Executor(format!("descriptor {fd} is not a pipe")));
        }
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC).map_err(|e| Error::Executor(format!("fcntl: {e}")))?;
        Ok(owned)
    };
    let result = adopt(out_fd)
        .and_then(|o| Ok((o, adopt(err_fd)?)))
        .and_then(|(o, e)| monitor(store, cs, id, target, o, e));
    if let Err(e) = &result {
        if let Ok(mut rec) = cs.load(id) {
            rec.error = Some(e.to_string());
            let _ = cs.save(&rec);
        }
    }
    result
}

/// The shim after its exec: copies output into the log until the container exits, records the
/// exit, cleans up what the executor would have, unmounts, and removes an --rm container.
pub fn monitor(store: &Store, cs: &Containers, id: &str, target: MonitorTarget, out_r: OwnedFd, err_r: OwnedFd) -> Result<()> {
    let mut rec = cs.load(id)?;
    let mut log = LogWriter::open(&cs.dir(id).join("logs"), DEFAULT_MAX_SIZE, DEFAULT_MAX_FILES)?;
    let pid = target.pid();
    let code = copy_output(out_r, err_r, &mut log, false, || crate::executor::reap(pid, false))?;
    let cgroup = cgroup_path(id);
    let oom = crate::executor::oom_killed(&cgroup);
    target.cleanup(id, &cs.dir(id).join("exec"), &cgroup);
    rec.state = State::Exited {
        code,
        finished: chrono::Utc::now(),
        oom_killed: oom,
    };
    cs.save(&rec)?;
    cs.unmount_rootfs(id)?;
    if rec.auto_remove {
        crate::run::remove(store, cs, id, true)?;
    }
    Ok(())
}

/// Copies the container's output into its log (and, with `tee`, to our own stdout and stderr)
/// until `exited` reports its status; then reads what is left and closes the log.
pub fn copy_output(
    out_r: OwnedFd,
    err_r: OwnedFd,
    log: &mut LogWriter,
    tee: bool,
    mut exited: impl FnMut() -> Result<Option<i32>>,
) -> Result<i32> {
    let mut open = [Some(out_r), Some(err_r)];
    let mut buf = vec![0u8; 64 << 10];
    let code = loop {
        let mut fds: Vec<PollFd> = open.iter().flatten().map(|fd| PollFd::new(fd, PollFlags::IN)).collect();
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        if !fds.is_empty() {
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(Error::Executor(format!("poll: {}", std::io::Error::from(e)))),
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        drop(fds);
        drain(&mut open, log, &mut buf, false, tee)?;
        if let Some(code) = exited()? {
            break code;
        }
    };
    // The first process is gone: the kernel kills the rest of the pid namespace, so the pipes end.
    drain(&mut open, log, &mut buf, true, tee)?;
    log.close()?;
    Ok(code)
}

/// Copies what the pipes hold into the log; at the end, reads until every writer is gone.
fn drain(open: &mut [Option<OwnedFd>; 2], log: &mut LogWriter, buf: &mut [u8], to_end: bool, tee: bool) -> Result<()> {
    for (i, slot) in open.iter_mut().enumerate() {
        let stream = if i == 0 { "stdout" } else { "stderr" };
        let Some(fd) = slot.as_ref() else { continue };
        loop {
            // Never block on a quiet pipe. At the end, wait a little for what is still in flight
            // (a writer we cannot see may keep the pipe open, so EOF is not guaranteed).
            {
                let mut p = [PollFd::new(fd, PollFlags::IN)];
                let wait = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: if to_end { 300_000_000 } else { 0 },
                };
                match poll(&mut p, Some(&wait)) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(Error::Executor(format!("poll: {}", std::io::Error::from(e)))),
                }
            }
            match rustix::io::read(fd.as_fd(), &mut *buf) {
                Ok(0) => {
                    *slot = None;
                    break;
                }
                Ok(n) => {
                    if tee {
                        use std::io::Write;
                        // The user's terminal going away must not stop the log.
                        let _ = if i == 0 {
                            std::io::stdout().write_all(&buf[..n]).and_then(|_| std::io::stdout().flush())
                        } else {
                            std::io::stderr().write_all(&buf[..n])
                        };
                    }
                    log.write(stream, &buf[..n])?
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => break,
                Err(e) => return Err(Error::Executor(format!("reading container output: {}", std::io::Error::from(e)))),
            }
        }
    }
    Ok(())
}
