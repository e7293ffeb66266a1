//! Names on user-defined networks, served by aardvark-dns (Podman's resolver, Debian's package),
//! driven through its documented configuration directory: one file per network, its first line
//! the addresses to listen on (the bridge's), then one line per container: id, IPv4 addresses,
//! IPv6 addresses, names. It answers for the containers and forwards the rest to the host's
//! resolvers. It runs only while some container is on such a network: started with the first,
//! told to reload (SIGHUP) on every change, and it exits when its directory has no network left.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{io, Error, Lease, Network, Result};

/// Where Debian (and Fedora) install it.
const CANDIDATES: &[&str] = &["/usr/lib/podman/aardvark-dns", "/usr/libexec/podman/aardvark-dns"];

pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BULKHEAD_AARDVARK_DNS") {
        return Some(PathBuf::from(p));
    }
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The running resolver of config directory `dir`, if any: its pid, checked against its
/// command line (a pid file outlives its process, and pids are reused).
pub fn running(dir: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(dir.join("aardvark.pid")).ok()?.trim().parse().ok()?;
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // Exactly as we started it (a substring would take another store's resolver for ours).
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    let ours = args.len() >= 5
        && args[0].ends_with(b"aardvark-dns")
        && args[1] == b"--config"
        && args[2] == dir.as_os_str().as_encoded_bytes()
        && args[3..5] == [b"-p".as_slice(), b"53".as_slice()];
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A zombie is not running.
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (ours && state != "Z").then_some(pid)
}

/// Writes the configuration for `networks` (those with names) and their `leases`, then starts,
/// reloads or stops the resolver to match.
pub fn update(dir: &Path, networks: &[Network], leases: &[Lease]) -> Result<()> {
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(dir, e))?;
    }
    // Every file in it that is not a network's is removed below: never through a link to
    // somewhere else, never in a directory someone else could have put there.
    {
        use std::os::unix::fs::MetadataExt;
        let md = fs::symlink_metadata(dir).map_err(|e| io(dir, e))?;
        if !md.is_dir() || md.uid() != rustix::process::geteuid().as_raw() || md.mode() & 0o022 != 0 {
            return Err(Error::Invalid(format!(
                "{}: not a directory of ours (a link, another owner's, or writable by others)",
                dir.display()
            )));
        }
    }
    let mut wanted = Vec::new();
    for n in networks.iter().filter(|n| n.dns) {
        let members: Vec<&Lease> = leases.iter().filter(|l| l.network == n.name).collect();
        if members.is_empty() {
            continue;
        }
        let mut text = format!("{}\n", n.gateway);
        for l in members {
            let mut names = vec![l.name.clone()];
            names.extend(l.aliases.iter().cloned());
            names.push(l.container[..12.min(l.container.len())].to_owned());
            let ip6 = l.ip6.map(|a| a.to_string()).unwrap_or_default();
            text.push_str(&format!("{} {} {ip6} {}\n", l.container, l.ip, names.join(",")));
        }
        let p = dir.join(&n.name);
        if fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
            crate::write_replace(&p, text.as_bytes(), false)?;
        }
        wanted.push(n.name.clone());
    }
    for e in fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != "aardvark.pid" && !name.starts_with('.') && !wanted.contains(&name) {
            let _ = fs::remove_file(e.path());
        }
    }
    match (running(dir), wanted.is_empty()) {
        (Some(pid), true) => {
            // Nothing to serve: it goes.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).expect("positive"),
                rustix::process::Signal::TERM,
            );
            let _ = fs::remove_file(dir.join("aardvark.pid"));
        }
        (Some(pid), false) => {
            let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid).expect("positive"), rustix::process::Signal::HUP);
        }
        (None, false) => start(dir)?,
        (None, true) => {}
    }
    Ok(())
}

fn start(dir: &Path) -> Result<()> {
    let bin = binary().ok_or_else(|| {
        Error::NotFound("names on this network need aardvark-dns (Debian package aardvark-dns), which is not installed".into())
    })?;
    // It daemonizes: its daemon must be re-parented to init, not to this process (a shim is a
    // child subreaper, and would collect it as a zombie it never reaps).
    let was = rustix::process::child_subreaper().ok().flatten();
    if was.is_some() {
        let _ = rustix::process::set_child_subreaper(None);
    }
    let mut cmd = std::process::Command::new(&bin);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: close_range is async-signal-safe and touches no memory of the parent. The
        // resident resolver keeps none of our descriptors (a shim's pipes, a user's `9>file`).
        unsafe {
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
                Ok(())
            });
        }
    }
    let status = cmd
        .arg("--config")
        .arg(dir)
        .args(["-p", "53", "run"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if was.is_some() {
        let _ = rustix::process::set_child_subreaper(was);
    }
    let status = status.map_err(|e| Error::Io(format!("{}: {e}", bin.display())))?;
    if !status.success() {
        return Err(Error::Io(format!("{} could not start ({status})", bin.display())));
    }
    Ok(())
}
