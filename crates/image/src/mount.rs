//! Overlay mounts of unpacked layers: the helper the runtime uses for container root filesystems,
//! and `image mount`, a read-only view of an image.

use std::fs;
use std::path::{Path, PathBuf};

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags};

use crate::error::{Error, IoContext, Result};
use crate::store::{ImageRecord, Store};

/// Mounts an overlay at `target`: `lowers` top-most first; with `upper` = (upperdir, workdir) it is
/// writable, without it read-only. One lower and no upper is a read-only bind mount (overlayfs needs
/// two lowers then).
pub fn mount_overlay(lowers: &[PathBuf], upper: Option<(&Path, &Path)>, target: &Path) -> Result<()> {
    if lowers.is_empty() {
        return Err(Error::invalid("an overlay needs at least one lower layer"));
    }
    if upper.is_none() && lowers.len() == 1 {
        rustix::mount::mount_bind(&lowers[0], target).at(target)?;
        let flags = MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
        return rustix::mount::mount_remount(target, flags, "").at(target);
    }
    // The new mount API takes each lower separately ("lowerdir+", Linux 6.8), so neither the page-size
    // limit of the option string nor ':' or ',' in paths can bite.
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).at(target)?;
    for l in lowers {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", l).at(l)?;
    }
    if let Some((u, w)) = upper {
        rustix::mount::fsconfig_set_string(&fs, "upperdir", u).at(u)?;
        rustix::mount::fsconfig_set_string(&fs, "workdir", w).at(w)?;
    }
    rustix::mount::fsconfig_create(&fs).at(target)?;
    let mut attrs = MountAttrFlags::MOUNT_ATTR_NODEV;
    if upper.is_none() {
        attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY | MountAttrFlags::MOUNT_ATTR_NOSUID;
    }
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).at(target)?;
    rustix::mount::move_mount(&mnt, "", rustix::fs::CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH).at(target)
}

/// Whether `path` is a mount point, from /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo").at("/proc/self/mountinfo")?;
    let want = path.to_string_lossy();
    Ok(info.lines().any(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(&*want)))
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

impl Store {
    fn mount_path(&self, rec: &ImageRecord) -> PathBuf {
        self.root().join("mounts").join(rec.config.hex())
    }

    /// Mounts the merged, read-only root filesystem of an image and returns where.
    pub fn mount_image(&self, rec: &ImageRecord) -> Result<PathBuf> {
        let _lock = self.lock_shared()?;
        let target = self.mount_path(rec);
        if is_mount_point(&target)? {
            return Ok(target);
        }
        let mut lowers = Vec::new();
        for l in rec.layers.iter().rev() {
            if self.get_layer(&l.chain_id)?.is_none() {
                return Err(Error::NotFound(format!(
                    "layer {} is not unpacked (run `bulkhead system check --repair`)",
                    l.chain_id
                )));
            }
            lowers.push(self.layer_diff(&l.chain_id));
        }
        fs::create_dir_all(&target).at(&target)?;
        if lowers.is_empty() {
            return Ok(target);
        }
        mount_overlay(&lowers, None, &target)?;
        Ok(target)
    }

    /// Unmounts what `mount_image` mounted.
    pub fn unmount_image(&self, rec: &ImageRecord) -> Result<()> {
        let target = self.mount_path(rec);
        if !is_mount_point(&target)? {
            return Err(Error::NotFound(format!("image {} is not mounted", rec.config.short())));
        }
        rustix::mount::unmount(&target, UnmountFlags::empty()).at(&target)?;
        fs::remove_dir(&target).at(&target)
    }

    pub(crate) fn is_mounted(&self, rec: &ImageRecord) -> Result<bool> {
        is_mount_point(&self.mount_path(rec))
    }

    pub(crate) fn refuse_if_mounted(&self, rec: &ImageRecord) -> Result<()> {
        if self.is_mounted(rec)? {
            return Err(Error::Conflict(format!(
                "image {} is mounted at {}; run `bulkhead image unmount` first",
                rec.config.short(),
                self.mount_path(rec).display()
            )));
        }
        Ok(())
    }
}
