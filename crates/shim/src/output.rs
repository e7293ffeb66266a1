//! The monitor's loop: the container's stdout and stderr go into its log (and, in the foreground,
//! to our own), until the container's first process has exited; then what is still in flight.

use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;

use crate::logs::LogWriter;
use crate::{Error, Result};

/// Copies the container's output into its log (and, with `tee`, to our own stdout and stderr)
/// until `exited` reports its status; then reads what is left and closes the log.
///
/// `streams` are stdout and stderr: two pipes, or a pty master as stdout alone. `exit` (a pidfd
/// of the container's first process) wakes the loop the moment it exits; without one the loop
/// looks every 200 ms.
pub fn copy_output<E: std::fmt::Display>(
    streams: [Option<OwnedFd>; 2],
    exit: Option<OwnedFd>,
    log: &mut LogWriter,
    tee: bool,
    mut exited: impl FnMut() -> std::result::Result<Option<i32>, E>,
) -> Result<i32> {
    let mut open = streams;
    let mut buf = vec![0u8; 64 << 10];
    let code = loop {
        if let Some(code) = exited().map_err(|e| Error(e.to_string()))? {
            break code;
        }
        let mut fds: Vec<PollFd> = open
            .iter()
            .flatten()
            .chain(exit.as_ref())
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        let timeout = rustix::event::Timespec {
            tv_sec: if exit.is_some() { 5 } else { 0 },
            tv_nsec: if exit.is_some() { 0 } else { 200_000_000 },
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(Error(format!("poll: {}", std::io::Error::from(e)))),
        }
        drop(fds);
        drain(&mut open, log, &mut buf, false, tee)?;
    };
    // The first process is gone: the kernel kills the rest of the pid namespace, so the pipes end.
    drain(&mut open, log, &mut buf, true, tee)?;
    log.close()?;
    Ok(code)
}

/// Copies what the streams hold into the log; at the end, reads until every writer is gone.
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
                    Err(e) => return Err(Error(format!("poll: {}", std::io::Error::from(e)))),
                }
            }
            match rustix::io::read(fd.as_fd(), &mut *buf) {
                // A pty master reads EIO once the last slave is closed: its end of file.
                Ok(0) | Err(Errno::IO) => {
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
                Err(e) => return Err(Error(format!("reading container output: {}", std::io::Error::from(e)))),
            }
        }
    }
    Ok(())
}
