//! `system check` for containers: what a crash (a `kill -9` of the CLI in the middle of `create`,
//! of a shim, of the host) can leave behind, and `--repair` for each: container directories
//! without a readable record, root filesystems still mounted for containers that do not run,
//! cgroups of containers that no longer exist, and image leases without their container.

use std::fs;

use bulkhead_image::Store;

use crate::container::{remove_cgroups, Containers, State};
use crate::error::Result;
use crate::lifecycle::{is_running, refresh};

/// Returns one line per problem (with " (repaired)" when `repair` fixed it).
pub fn check_containers(store: &Store, cs: &Containers, repair: bool) -> Result<Vec<String>> {
    let _lock = cs.lock()?;
    let fixed = |s: String| if repair { format!("{s} (repaired)") } else { s };
    let mut problems = Vec::new();
    let mut known = std::collections::BTreeSet::new();
    let dir = store.root().join("containers");
    for e in fs::read_dir(&dir).map_err(|e| crate::container::io(&dir, e))? {
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
                remove_cgroups(&crate::run::cgroup_path(&holder));
                store.remove_lease(&holder)?;
            }
        }
    }
    Ok(problems)
}
