//! Looking into a container from the host: its processes (`top`) and its filesystem as a tar
//! (`export`).

use std::io::Write;
use std::path::PathBuf;

use bulkhead_image::Store;

use crate::container::{ContainerRecord, Containers};
use crate::error::{Error, Result};
use crate::profile::ID_RANGE;

/// One process of a container, as `top` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// The uid inside the container (the host uid shifted back).
    pub uid: u64,
    pub pid: i32,
    pub ppid: i32,
    /// CPU time, in clock ticks.
    pub ticks: u64,
    pub command: String,
}

/// The processes in the container's cgroup, by host pid.
pub fn top(rec: &ContainerRecord) -> Result<Vec<Process>> {
    let rel = crate::cgroup::path(&rec.id);
    let rel = rel.trim_start_matches('/');
    let procs = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|r| PathBuf::from(r).join(rel).join("cgroup.procs"))
        .find(|p| p.exists())
        .ok_or_else(|| Error::Invalid(format!("container {} is not running", rec.name)))?;
    let text = std::fs::read_to_string(&procs).map_err(|e| Error::Invalid(format!("{}: {e}", procs.display())))?;
    let mut out = Vec::new();
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let host_uid = field("Uid:").unwrap_or(0);
        let uid = match rec.host_id {
            Some(h) if (h as u64..h as u64 + ID_RANGE as u64).contains(&host_uid) => host_uid - h as u64,
            _ => host_uid,
        };
        // Fields after the command name, which is in parentheses and may contain spaces.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ppid = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let command = cmd
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        out.push(Process {
            uid,
            pid,
            ppid,
            ticks,
            command,
        });
    }
    Ok(out)
}

/// Writes the container's filesystem (image plus its changes) as a tar to `out`, with owners as
/// the container sees them.
pub fn export(store: &Store, cs: &Containers, rec: &ContainerRecord, out: &mut dyn Write) -> Result<()> {
    let host = rec.host_id.map(u64::from);
    let unshift = move |id: u64| match host {
        Some(h) if (h..h + ID_RANGE as u64).contains(&id) => id - h,
        _ => id,
    };
    let mut b = tar::Builder::new(out);
    // A running container: read its live root filesystem (its upper directory must not be used by
    // a second overlay while it is one's upper).
    let live = cs.rootfs(&rec.id);
    if bulkhead_image::mount::is_mount_point(&live)? {
        return bulkhead_image::rootfs::write_tree(&mut b, &live, &unshift).map_err(Error::from);
    }
    // A stopped one: its own layer becomes the top of a read-only stack; its whiteouts and opaque
    // directories work in a lower layer as they do in an upper one.
    let mut lowers = vec![cs.dir(&rec.id).join("upper")];
    lowers.extend(cs.lowers(store, rec));
    let stage = store.staging()?;
    let target = stage.path().join("merged");
    std::fs::create_dir(&target).map_err(|e| Error::Invalid(format!("{}: {e}", target.display())))?;
    bulkhead_image::mount::mount_overlay(&lowers, None, &target)?;
    let written = bulkhead_image::rootfs::write_tree(&mut b, &target, &unshift);
    let unmounted = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH);
    written?;
    unmounted.map_err(|e| Error::Invalid(format!("{}: {}", target.display(), std::io::Error::from(e))))?;
    Ok(())
}
