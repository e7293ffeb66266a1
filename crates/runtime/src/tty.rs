//! `-t`: a real pseudo-terminal for the container's process. The pty pair is made inside the
//! container's own devpts; its master reaches us over a unix socket (the OCI console socket), is
//! checked to really be a pty master (a hostile container could send another descriptor,
//! CVE-2025-52565 class), and is proxied to our terminal, which is put in raw mode meanwhile.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use crate::error::{Error, Result};

fn err(msg: impl Into<String>) -> Error {
    Error::Executor(msg.into())
}

/// A listening console socket.
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// A socket in `dir` under a short random name (unix socket paths are limited to 108 bytes).
    pub fn new(dir: &Path) -> Result<Self> {
        let mut b = [0u8; 6];
        rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).map_err(|e| err(format!("getrandom: {e}")))?;
        let path = dir.join(format!("tty-{}.sock", b.iter().map(|x| format!("{x:02x}")).collect::<String>()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|e| err(format!("console socket {}: {e}", path.display())))?;
        Ok(ConsoleSocket { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the runtime's connection and receives the pty master it sends.
    pub fn receive_master(&self) -> Result<OwnedFd> {
        let (conn, _) = self.listener.accept().map_err(|e| err(format!("console socket: {e}")))?;
        receive_fd(conn.as_fd())
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives one descriptor sent with SCM_RIGHTS and checks that it is a pty master.
pub fn receive_fd(sock: BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut buf = [0u8; 256];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(sock, &mut [IoSliceMut::new(&mut buf)], &mut cmsg, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| err(format!("receiving the pty: {e}")))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(r) = m {
            fds.extend(r);
        }
    }
    if fds.len() != 1 {
        return Err(err(format!("expected one pty descriptor, got {}", fds.len())));
    }
    let fd = fds.remove(0);
    let st = rustix::fs::fstat(&fd).map_err(|e| err(format!("pty: {e}")))?;
    let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::CharacterDevice || (major, minor) != (5, 2) {
        return Err(err("the container sent something that is not a pty master; refused"));
    }
    Ok(fd)
}

/// Our terminal in raw mode until dropped (only when stdin is a terminal).
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let Ok(orig) = rustix::termios::tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = orig.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
        RawMode(Some(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, t);
        }
    }
}

/// Copies between our stdin/stdout and the pty master until `done` reports the process's exit
/// status (polled between reads); returns it. What the process writes also goes to `log`.
pub fn proxy(master: &OwnedFd, mut log: Option<&mut crate::logs::LogWriter>, mut done: impl FnMut() -> Result<Option<i32>>) -> Result<i32> {
    if let Ok(ws) = rustix::termios::tcgetwinsize(std::io::stdout()) {
        let _ = rustix::termios::tcsetwinsize(master, ws);
    }
    let _raw = RawMode::enter();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut stdin_open = true;
    let mut master_open = true;
    let mut buf = vec![0u8; 32 << 10];
    let mut size = rustix::termios::tcgetwinsize(std::io::stdout()).ok();
    loop {
        // Follow our terminal's size (cheaper to look than to catch SIGWINCH in this loop).
        if let Ok(now) = rustix::termios::tcgetwinsize(std::io::stdout()) {
            if size.is_none_or(|s| (s.ws_row, s.ws_col) != (now.ws_row, now.ws_col)) {
                let _ = rustix::termios::tcsetwinsize(master, now);
                size = Some(now);
            }
        }
        if master_open {
            let mut fds = vec![PollFd::new(master, PollFlags::IN)];
            if stdin_open {
                fds.push(PollFd::new(&stdin, PollFlags::IN));
            }
            let timeout = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(err(format!("poll: {e}"))),
            }
            let master_ready = !fds[0].revents().is_empty();
            let stdin_ready = stdin_open && !fds[1].revents().is_empty();
            drop(fds);
            if master_ready {
                match rustix::io::read(master, &mut buf) {
                    Ok(0) | Err(Errno::IO) => master_open = false,
                    Ok(n) => {
                        if let Some(log) = log.as_deref_mut() {
                            log.write("stdout", &buf[..n])?;
                        }
                        write_all(stdout.as_fd(), &buf[..n])?
                    }
                    Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                    Err(e) => return Err(err(format!("reading the pty: {e}"))),
                }
            }
            if stdin_ready {
                match rustix::io::read(&stdin, &mut buf) {
                    Ok(0) => stdin_open = false,
                    Ok(n) => write_all(master.as_fd(), &buf[..n])?,
                    Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                    Err(_) => stdin_open = false,
                }
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if let Some(code) = done()? {
            // Whatever is still buffered in the pty.
            while let Ok(n) = read_now(master, &mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(log) = log.as_deref_mut() {
                    log.write("stdout", &buf[..n])?;
                }
                write_all(stdout.as_fd(), &buf[..n])?;
            }
            if let Some(log) = log {
                log.close()?;
            }
            return Ok(code);
        }
    }
}

fn read_now(fd: &OwnedFd, buf: &mut [u8]) -> std::result::Result<usize, Errno> {
    let mut p = [PollFd::new(fd, PollFlags::IN)];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    if poll(&mut p, Some(&zero))? == 0 {
        return Ok(0);
    }
    rustix::io::read(fd, buf)
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) | Err(Errno::AGAIN) => {}
            Err(e) => return Err(err(format!("writing: {e}"))),
        }
    }
    Ok(())
}
