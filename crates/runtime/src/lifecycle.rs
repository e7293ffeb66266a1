//! Starting detached containers through their shim, and the verbs that act on running ones: signals,
//! stop, wait. The truth about a container is its record plus a check of the kernel: a pid is only
//! the container's while it is alive and still in the container's cgroup (so a reused pid is never
//! signalled), and a record that says "running" with no such process is corrected.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::container::{ContainerRecord, Containers, State};
use crate::error::{Error, Result};

/// Whether `pid` is alive and belongs to container `id` (its cgroup, as the host sees it).
pub fn owns_pid(id: &str, pid: i32) -> bool {
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|c| c.lines().any(|l| l.ends_with(&crate::cgroup::path(id))))
            .unwrap_or(false)
}

/// The record with its state checked against the kernel: a "running" container whose process is
/// gone, and whose shim is gone too, is recorded as exited (255, shim lost).
pub fn refresh(cs: &Containers, mut rec: ContainerRecord) -> Result<ContainerRecord> {
    if let State::Running { pid, .. } = rec.state {
        let shim_alive = rec.shim_pid.is_some_and(|s| Path::new(&format!("/proc/{s}")).exists());
        if !owns_pid(&rec.id, pid) && !shim_alive {
            rec.state = State::Exited {
                code: 255,
                finished: chrono::Utc::now(),
                oom_killed: false,
            };
            rec.error = Some("the container's shim died; its exit status is unknown".into());
            cs.save(&rec)?;
            let _ = cs.unmount_rootfs(&rec.id);
        }
    }
    Ok(rec)
}

/// Whether the container's first process runs now.
pub fn is_running(rec: &ContainerRecord) -> bool {
    matches!(rec.state, State::Running { pid, .. } if owns_pid(&rec.id, pid))
}

/// Starts the shim of container `id` in its own session, detached from this process. The binary
/// is `/proc/self/exe`: the sealed copy we run from.
pub fn spawn_shim(root: &Path, id: &str) -> Result<()> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("--root").arg(root).arg("shim").arg(id);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid and close_range are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Whatever the user's shell left open (`9>file`) is not the shim's to keep: it
            // outlives the command, and a resolver it starts would inherit it too.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    cmd.spawn()
        .map(|_| ())
        .map_err(|e| Error::Executor(format!("starting the shim: {e}")))
}

/// Waits until the record leaves `Created` (the shim started it, or failed to). A container that
/// is gone already ran and removed itself (`--rm`): that is a start too.
pub fn wait_started(cs: &Containers, id: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let rec = match cs.load(id) {
            Ok(r) => r,
            Err(_) if !cs.dir(id).exists() => return Ok(()),
            Err(e) => return Err(e),
        };
        match &rec.state {
            State::Created if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            State::Created => return Err(Error::Executor("the container did not start in time".into())),
            State::Exited { .. } if rec.error.is_some() => return Err(Error::Executor(rec.error.clone().unwrap_or_default())),
            _ => return Ok(()),
        }
    }
}

/// Waits until the container has exited (None: forever); returns its record.
pub fn wait_exited(cs: &Containers, id: &str, timeout: Option<Duration>) -> Result<ContainerRecord> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let rec = refresh(cs, cs.load(id)?)?;
        if matches!(rec.state, State::Exited { .. } | State::Created) {
            return Ok(rec);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::Executor(format!("container {} is still running", rec.name)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to the container's first process (only if it is still the container's).
pub fn signal(rec: &ContainerRecord, signal: i32) -> Result<()> {
    match rec.state {
        State::Running { pid, .. } if owns_pid(&rec.id, pid) => {
            // SAFETY: kill(2) on a pid just checked to be the container's.
            if unsafe { libc::kill(pid, signal) } != 0 {
                return Err(Error::Executor(format!(
                    "signalling {}: {}",
                    rec.name,
                    std::io::Error::last_os_error()
                )));
            }
            Ok(())
        }
        _ => Err(Error::Invalid(format!("container {} is not running", rec.name))),
    }
}

/// `stop`: the stop signal, then SIGKILL after `timeout`; waits for the shim to record the exit.
pub fn stop(cs: &Containers, rec: &ContainerRecord, stop_signal: i32, timeout: Duration) -> Result<ContainerRecord> {
    // A user stopped it: its restart policy leaves it stopped, also when it is between two
    // starts (recorded under the containers' lock, before it exits, so the shim's last step and
    // a pending restart both see it).
    if rec.restart.is_some() {
        mark_stopped(cs, &rec.id)?;
    }
    if !is_running(rec) {
        return refresh(cs, rec.clone());
    }
    signal(rec, stop_signal)?;
    match wait_exited(cs, &rec.id, Some(timeout)) {
        Ok(r) => Ok(r),
        Err(_) => {
            let _ = signal(rec, libc::SIGKILL);
            wait_exited(cs, &rec.id, Some(Duration::from_secs(10)))
        }
    }
}

/// Starts `cmd` as a helper of its own (the health loop, a pending restart): its own session,
/// standard streams on /dev/null, none of our other descriptors (a shim's hold the container's
/// output pipes); with `die_with_parent`, killed when this process goes.
pub fn spawn_detached(cmd: std::process::Command, die_with_parent: bool) -> std::io::Result<std::process::Child> {
    spawn_detached_logging(cmd, die_with_parent, None)
}

/// As [`spawn_detached`], its output and errors into `log` if given (a node process's log).
pub fn spawn_detached_logging(
    mut cmd: std::process::Command,
    die_with_parent: bool,
    log: Option<std::fs::File>,
) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::null());
    match log {
        Some(f) => cmd.stdout(f.try_clone()?).stderr(f),
        None => cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()),
    };
    // SAFETY: setsid(2), close_range(2) and prctl(2) in the child before exec touch no memory of
    // the parent.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            if die_with_parent {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Records that a user stopped (or removes) container `id`: no restart policy starts it again.
pub fn mark_stopped(cs: &Containers, id: &str) -> Result<()> {
    let _lock = cs.lock()?;
    let mut r = cs.load(id)?;
    if !r.stopped_by_user {
        r.stopped_by_user = true;
        cs.save(&r)?;
    }
    Ok(())
}

/// A restart policy as `--restart` takes it: `no`, `always`, `unless-stopped`,
/// `on-failure[:N]` (N at least 1). None for `no`.
pub fn restart_policy(s: &str) -> Result<Option<String>> {
    match s {
        "no" => Ok(None),
        "always" | "unless-stopped" | "on-failure" => Ok(Some(s.to_owned())),
        _ => match s.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) if n >= 1 => Ok(Some(s.to_owned())),
            _ => Err(Error::Invalid(format!(
                "--restart {s:?}: no, always, unless-stopped or on-failure[:N]"
            ))),
        },
    }
}

/// Whether `rec` (just exited with `code`) is to be started again by its policy, and after how
/// long: 100 ms, doubling with each start in a row, at most 30 s (a container that ran 10 s
/// or more starts the count again).
pub fn restart_due(rec: &ContainerRecord, code: i32, ran: Duration) -> Option<Duration> {
    let policy = rec.restart.as_deref()?;
    if rec.stopped_by_user || rec.auto_remove {
        return None;
    }
    let count = if ran >= Duration::from_secs(10) { 0 } else { rec.restart_count };
    let again = match policy {
        "always" | "unless-stopped" => true,
        "on-failure" => code != 0,
        p => {
            code != 0
                && p.strip_prefix("on-failure:")
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| rec.restart_count < n)
        }
    };
    again.then(|| Duration::from_millis(100u64 << count.min(9)).min(Duration::from_secs(30)))
}

/// Parses a signal as `docker kill -s` takes it: a number, or a name with or without SIG.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        _ => return Err(Error::Invalid(format!("unknown signal {s:?}"))),
    };
    Ok(n)
}

/// Removes a container that is not running (or, with `force`, kills it first): its mounts, cgroup,
/// directory and image lease.
pub fn remove(store: &bulkhead_image::Store, cs: &Containers, key: &str, force: bool) -> Result<ContainerRecord> {
    let mut rec = refresh(cs, cs.find(key)?)?;
    if rec.restart.is_some() && force {
        // No restart may begin now; one already begun is let finish starting, then killed.
        mark_stopped(cs, &rec.id)?;
        if matches!(rec.state, crate::container::State::Created) {
            let _ = wait_started(cs, &rec.id, std::time::Duration::from_secs(10));
        }
        rec = refresh(cs, cs.load(&rec.id)?)?;
    }
    if is_running(&rec) {
        if !force {
            return Err(Error::Invalid(format!(
                "container {} is running: stop it first, or use --force",
                rec.name
            )));
        }
        signal(&rec, libc::SIGKILL)?;
        // Let the shim record the exit and unmount; go on regardless after a while.
        let _ = wait_exited(cs, &rec.id, Some(std::time::Duration::from_secs(10)));
    }
    let _lock = cs.lock()?;
    cs.remove_dir(&rec.id)?;
    store.remove_lease(&rec.id)?;
    crate::hooks::exited(&rec.id);
    crate::hooks::removed(&rec.id);
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signals() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("hup").unwrap(), libc::SIGHUP);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }
}
