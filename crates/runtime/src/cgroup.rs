//! A container's cgroup: its path (the same under every v1 controller, or in the v2 tree), its
//! processes, and its removal.

use std::fs;
use std::path::PathBuf;

/// The cgroup path of a container.
pub fn path(id: &str) -> String {
    format!("/bulkhead/{id}")
}

/// The container whose cgroup process `pid` is in, read from `/proc/<pid>/cgroup` as this
/// host's cgroup namespace sees it: the `pids` controller's path on a v1 or hybrid host (every
/// container has one there), else the v2 path. Only the first component under `/bulkhead/`
/// counts: a process may make cgroups below its own, never beside it.
pub fn container_of(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let line = |want: &dyn Fn(&str) -> bool| {
        text.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, controllers, path) = (it.next()?, it.next()?, it.next()?);
            want(controllers).then(|| path.to_owned())
        })
    };
    let path = line(&|c: &str| c.split(',').any(|c| c == "pids")).or_else(|| line(&|c: &str| c.is_empty()))?;
    let id = path.strip_prefix("/bulkhead/")?.split('/').next()?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| id.to_owned())
}

/// The cgroup directories of `cgroup` under every hierarchy mounted in /sys/fs/cgroup.
fn dirs(cgroup: &str) -> Vec<PathBuf> {
    let rel = cgroup.trim_start_matches('/');
    let mut roots: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    roots.into_iter().map(|r| r.join(rel)).filter(|p| p.is_dir()).collect()
}

/// The processes in `cgroup` (under any hierarchy).
pub fn processes(cgroup: &str) -> std::collections::BTreeSet<i32> {
    dirs(cgroup)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
        .collect()
}

/// SIGKILLs every process in `cgroup` until none is left (or a second has passed).
pub fn kill_processes(cgroup: &str) {
    for _ in 0..100 {
        let pids = processes(cgroup);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2); the pid was read from the container's own cgroup just now.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!(cgroup, "processes are left in a removed container's cgroup");
}

/// Removes a container's cgroup directories under every hierarchy mounted in /sys/fs/cgroup (the v1
/// controllers, or the v2 tree); empty cgroups only, as rmdir allows.
pub fn remove(cgroup: &str) {
    for p in dirs(cgroup) {
        if let Err(e) = fs::remove_dir(&p) {
            tracing::warn!(path = %p.display(), error = %e, "removing a container cgroup");
        }
    }
}
