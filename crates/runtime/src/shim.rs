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
use crate::executor::{Executor, Stdio};
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
    } else if rec.auto_remove {
        crate::run::remove(store, cs, id, true)?;
    }
    result
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Error::Executor(format!("pipe: {}", std::io::Error::from(e))))
}

fn supervise(store: &Store, cs: &Containers, rec: &mut crate::container::ContainerRecord, executor: &Executor) -> Result<()> {
    cs.mount_rootfs(store, rec)?;
    let mut log = LogWriter::open(&cs.dir(&rec.id).join("logs"), DEFAULT_MAX_SIZE, DEFAULT_MAX_FILES)?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let null = std::fs::File::open("/dev/null").map_err(|e| Error::Executor(format!("/dev/null: {e}")))?;
    let stdio = Stdio {
        stdin: Some(null.into()),
        stdout: Some(out_w),
        stderr: Some(err_w),
        console_socket: None,
    };
    let mut started = executor.start(&rec.id, &cs.bundle(&rec.id), &cs.dir(&rec.id).join("exec"), stdio)?;
    rec.state = State::Running {
        pid: started.pid(),
        started: chrono::Utc::now(),
    };
    rec.shim_pid = Some(std::process::id() as i32);
    rec.error = None;
    cs.save(rec)?;

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
        drain(&mut open, &mut log, &mut buf, false)?;
        if let Some(code) = started.try_wait()? {
            break code;
        }
    };
    // The first process is gone: the kernel kills the rest of the pid namespace, so the pipes end.
    drain(&mut open, &mut log, &mut buf, true)?;
    log.close()?;
    let exit = started.finish(&cgroup_path(&rec.id), code);
    rec.state = State::Exited {
        code: exit.code,
        finished: chrono::Utc::now(),
        oom_killed: exit.oom_killed,
    };
    cs.save(rec)?;
    cs.unmount_rootfs(&rec.id)?;
    Ok(())
}

/// Copies what the pipes hold into the log; at the end, reads until every writer is gone.
fn drain(open: &mut [Option<OwnedFd>; 2], log: &mut LogWriter, buf: &mut [u8], to_end: bool) -> Result<()> {
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
                Ok(n) => log.write(stream, &buf[..n])?,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => break,
                Err(e) => return Err(Error::Executor(format!("reading container output: {}", std::io::Error::from(e)))),
            }
        }
    }
    Ok(())
}
