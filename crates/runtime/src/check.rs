//! `system check` for containers: what a crash (a `kill -9` of the CLI in the middle of `create`,
//! of a shim, of the host) can leave behind, and `--repair` for each: container directories
//! without a readable record, root filesystems still mounted for containers that do not run,
//! cgroups of containers that no longer exist, and image leases without their container.

use std::fs;

use bulkhead_image::Store;

use crate::cgroup::remove as remove_cgroups;
use crate::container::{Containers, State};
use crate::error::Result;
use crate::lifecycle::{is_running, refresh};

/// Returns one line per problem (with " (repaired)" when `repair` fixed it).
pub fn check_containers(store: &Store, cs: &Containers, repair: bool) -> Result<Vec<String>> {
    let _lock = cs.lock()?;
    let fixed = |s: String| if repair { format!("{s} (repaired)") } else { s };
    let mut problems = Vec::new();
    let mut known = std::collections::BTreeSet::new();
    let dir = store.root().join("containers");
    for e in fs::read_dir(&dir).map_err(|e| crate::fsutil::io(&dir, e))? {
        let Ok(e) = e else { continue };
        let id = e.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') {
            continue;
        }
        match cs.load(&id) {
            Err(_) => {
                problems.push(fixed(format!("container directory {id}: no readable record (interrupted create)")));
                if repair {
                    cs.remove_dir(&id)?;
                    store.remove_lease(&id)?;
                }
            }
            Ok(rec) => {
                known.insert(id.clone());
                let rec = refresh(cs, rec)?;
                let mounted = bulkhead_image::mount::is_mount_point(&cs.rootfs(&id))?;
                let shim_alive = rec.shim_pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
                if mounted && !is_running(&rec) && !shim_alive && !matches!(rec.state, State::Created) {
                    problems.push(fixed(format!(
                        "container {}: root filesystem still mounted though it does not run",
                        rec.name
                    )));
                    if repair {
                        cs.unmount_rootfs(&id)?;
                    }
                }
            }
        }
    }
    // A container that is gone leaves its lease, and with it the name of any cgroup it left.
    for (holder, _) in store.leases()? {
        if !known.contains(&holder) {
            problems.push(fixed(format!("image lease {holder}: its container is gone")));
            if repair {
                remove_cgroups(&crate::cgroup::path(&holder));
                store.remove_lease(&holder)?;
            }
            known.insert(holder);
        }
    }
    // Cgroups are host-wide: one of ours whose container exists in no store (this one's records,
    // or any store's id-range claims) and that holds no process, or only the orphaned setup
    // processes of a start whose CLI was killed, is left over, whatever left it.
    for id in stray_cgroups(&known) {
        problems.push(fixed(format!("cgroup bulkhead/{id}: no container, and no container process in it")));
        if repair {
            crate::cgroup::kill_processes(&crate::cgroup::path(&id));
            remove_cgroups(&crate::cgroup::path(&id));
        }
    }
    Ok(problems)
}

/// Whether `pid` is an orphaned setup process of the embedded executor (its parent, the CLI or
/// shim that started it, is gone; it waits forever for a message that will not come).
fn orphaned_setup_process(pid: i32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let ppid = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().to_owned())));
    comm.starts_with("youki:[") && ppid.as_deref() == Some("1")
}

/// Ids of bulkhead cgroups (under any controller) that belong to no known container and hold no
/// process but orphaned setup processes.
fn stray_cgroups(known: &std::collections::BTreeSet<String>) -> std::collections::BTreeSet<String> {
    let claimed: std::collections::BTreeSet<String> = fs::read_dir(crate::container::RANGE_REGISTRY)
        .into_iter()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|t| {
            let dir = std::path::PathBuf::from(t.lines().next()?);
            dir.exists().then(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))?
        })
        .collect();
    let mut roots: Vec<std::path::PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    roots.push("/sys/fs/cgroup".into());
    let ids: std::collections::BTreeSet<String> = roots
        .iter()
        .flat_map(|r| fs::read_dir(r.join("bulkhead")).into_iter().flatten().flatten())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .filter(|id| !known.contains(id) && !claimed.contains(id))
        .collect();
    ids.into_iter()
        .filter(|id| {
            crate::cgroup::processes(&crate::cgroup::path(id))
                .into_iter()
                .all(orphaned_setup_process)
        })
        .collect()
}
