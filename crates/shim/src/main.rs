//! `bulkhead-shim`: the process that stays beside a detached container for its whole life.
//!
//! The full `bulkhead` binary starts the container (as the shim, so that it is the container's
//! parent) and then executes this small static binary in its own place: same pid, so still the
//! parent and still the subreaper, with the container's output pipes inherited. This copies the
//! output into the hash-chained log until the container's first process exits, then executes
//! the command after `--` with `--code N --finished TIME` (and `--error MSG` if logging failed)
//! appended: the full binary again, which records the exit and cleans up.
//!
//! ```text
//! bulkhead-shim --log DIR --pid PID (--out FD --err FD | --tty FD) [--hold FD]... -- PROGRAM ARGS...
//! ```
//!
//! `--out`/`--err` are the read ends of the container's stdout and stderr pipes; `--tty` is the
//! master of its pty instead (held open, so a shell waits for input as with `docker run -dit`);
//! `--hold` keeps a descriptor open without using it (the write end of an `-i` container's stdin);
//! `--volatile` does not force the log to disk at the end (the container is removed at its exit).
#![warn(clippy::undocumented_unsafe_blocks)]

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use bulkhead_shim::logs::{LogWriter, DEFAULT_MAX_FILES, DEFAULT_MAX_SIZE};
use bulkhead_shim::{Error, Result};

struct Args {
    log: PathBuf,
    pid: i32,
    out: Option<i32>,
    err: Option<i32>,
    tty: Option<i32>,
    hold: Vec<i32>,
    volatile: bool,
    then: Vec<OsString>,
}

fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Args> {
    let (mut log, mut pid, mut out, mut err, mut tty, mut hold) = (None, None, None, None, None, Vec::new());
    let mut volatile = false;
    let number = |v: Option<OsString>, name: &str| -> Result<i32> {
        v.and_then(|v| v.to_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| Error(format!("{name} needs a number")))
    };
    loop {
        let Some(a) = args.next() else {
            return Err(Error("missing `-- PROGRAM` to run after the exit".into()));
        };
        match a.to_str() {
            Some("--log") => log = args.next().map(PathBuf::from),
            Some("--pid") => pid = Some(number(args.next(), "--pid")?),
            Some("--out") => out = Some(number(args.next(), "--out")?),
            Some("--err") => err = Some(number(args.next(), "--err")?),
            Some("--tty") => tty = Some(number(args.next(), "--tty")?),
            Some("--hold") => hold.push(number(args.next(), "--hold")?),
            Some("--volatile") => volatile = true,
            Some("--") => break,
            _ => return Err(Error(format!("unexpected argument {a:?}"))),
        }
    }
    let then: Vec<OsString> = args.collect();
    let missing = |what: &str| Error(format!("{what} is required"));
    if then.is_empty() {
        return Err(missing("a PROGRAM after --"));
    }
    match (out, err, tty) {
        (Some(_), Some(_), None) | (None, None, Some(_)) => {}
        _ => return Err(Error("give --out and --err, or --tty".into())),
    }
    Ok(Args {
        log: log.ok_or_else(|| missing("--log"))?,
        pid: pid.filter(|p| *p > 0).ok_or_else(|| missing("--pid"))?,
        out,
        err,
        tty,
        hold,
        volatile,
        then,
    })
}

/// Takes over an inherited descriptor, which must be an open pipe (or, with `tty`, a pty master),
/// and closes it on exec.
fn adopt(fd: i32, kind: rustix::fs::FileType) -> Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) only asks whether the descriptor is open.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Error(format!("descriptor {fd} is not open")));
    }
    // SAFETY: the descriptor is open, and this process was executed by its shim to own it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = rustix::fs::fstat(&owned).map_err(|e| Error(format!("fstat: {e}")))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != kind {
        return Err(Error(format!("descriptor {fd} is not a {kind:?}")));
    }
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC).map_err(|e| Error(format!("fcntl: {e}")))?;
    Ok(owned)
}

/// waitpid for our child `pid`: its exit code (128+N for signal N), or None while it runs.
fn reap(pid: i32, block: bool) -> Result<Option<i32>> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid pointer to a local.
        let r = unsafe { libc::waitpid(pid, &mut status, if block { 0 } else { libc::WNOHANG }) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Error(format!("waiting for the container's process {pid}: {e}")));
        }
        if libc::WIFEXITED(status) {
            return Ok(Some(libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(Some(128 + libc::WTERMSIG(status)));
        }
    }
}

fn monitor(args: &Args) -> Result<i32> {
    use rustix::fs::FileType;
    let streams = match args.tty {
        Some(t) => [Some(adopt(t, FileType::CharacterDevice)?), None],
        None => [
            args.out.map(|fd| adopt(fd, FileType::Fifo)).transpose()?,
            args.err.map(|fd| adopt(fd, FileType::Fifo)).transpose()?,
        ],
    };
    let _held: Vec<OwnedFd> = args.hold.iter().map(|&fd| adopt(fd, FileType::Fifo)).collect::<Result<_>>()?;
    // Wakes us the moment the container exits (the pid is our child: it cannot be reused before
    // we reap it).
    let pid = rustix::process::Pid::from_raw(args.pid).ok_or_else(|| Error("--pid must be positive".into()))?;
    let exit = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
    let mut log = LogWriter::open(&args.log, DEFAULT_MAX_SIZE, DEFAULT_MAX_FILES)?;
    if args.volatile {
        log = log.volatile();
    }
    bulkhead_shim::output::copy_output(streams, exit, &mut log, false, || reap(args.pid, false))
}

fn main() -> ExitCode {
    // Executed from a memfd, the process would be named after its descriptor.
    let _ = rustix::thread::set_name(c"bulkhead-shim");
    let args = match parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bulkhead-shim: {e}");
            return ExitCode::from(2);
        }
    };
    let (code, error) = match monitor(&args) {
        Ok(code) => (code, None),
        // The log failed (a full disk, say): the exit must still be recorded.
        Err(e) => match reap(args.pid, true) {
            Ok(code) => (code.unwrap_or(-1), Some(e.to_string())),
            Err(w) => (-1, Some(format!("{e}; {w}"))),
        },
    };
    let finished = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut cmd = std::process::Command::new(&args.then[0]);
    cmd.args(&args.then[1..])
        .args(["--code", &code.to_string(), "--finished", &finished]);
    if let Some(e) = error {
        cmd.args(["--error", &e]);
    }
    let e = cmd.exec();
    eprintln!("bulkhead-shim: cannot execute {:?} to record the exit: {e}", args.then[0]);
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> impl Iterator<Item = OsString> {
        v.iter().map(OsString::from).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn arguments() {
        let a = parse(os(&[
            "--log", "/l", "--pid", "7", "--out", "3", "--err", "4", "--", "/bin/x", "finish",
        ]))
        .unwrap();
        assert_eq!((a.pid, a.out, a.err, a.tty), (7, Some(3), Some(4), None));
        assert_eq!(a.then, vec![OsString::from("/bin/x"), OsString::from("finish")]);
        let a = parse(os(&[
            "--log",
            "/l",
            "--pid",
            "7",
            "--tty",
            "5",
            "--hold",
            "6",
            "--volatile",
            "--",
            "p",
        ]))
        .unwrap();
        assert_eq!((a.tty, a.hold, a.volatile), (Some(5), vec![6], true));
        for bad in [
            &["--log", "/l", "--pid", "7", "--out", "3", "--err", "4"][..],
            &["--log", "/l", "--pid", "x", "--out", "3", "--err", "4", "--", "p"],
            &["--log", "/l", "--pid", "0", "--out", "3", "--err", "4", "--", "p"],
            &["--pid", "7", "--out", "3", "--err", "4", "--", "p"],
            &["--bogus", "--", "p"],
            &["--log", "/l", "--pid", "7", "--out", "3", "--tty", "4", "--", "p"],
            &["--log", "/l", "--pid", "7", "--out", "3", "--", "p"],
        ] {
            assert!(parse(os(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_pipes_are_adopted() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::IntoRawFd;
        let fd = f.into_raw_fd();
        assert!(adopt(fd, rustix::fs::FileType::Fifo)
            .unwrap_err()
            .to_string()
            .contains("not a Fifo"));
        assert!(adopt(1000, rustix::fs::FileType::Fifo).is_err());
    }
}
