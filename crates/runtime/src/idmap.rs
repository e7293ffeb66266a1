//! Root filesystems for containers in a user namespace, without copying or chowning a layer.
//!
//! Layers on disk belong to host ids (root is 0). A container's root is an unprivileged host id, so
//! seen from inside it those files would belong to nobody. Instead of unpacking a shifted copy of
//! every layer for every id range, each layer is given an *idmapped mount* (Linux 5.12+, overlayfs on
//! idmapped layers 5.19+): a view of the same directory in which on-disk id N appears as host id
//! `host_id + N`. The overlay is stacked on those views, with an upper directory owned by the
//! container's root, and the shared layers are never written.
//!
//! The kernel wants the mapping as a user namespace file descriptor; we make one by starting a child
//! that unshares a user namespace, writing its maps, opening `/proc/PID/ns/user`, and letting it go.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags};

use crate::error::{Error, Result};

fn sys(what: &str, path: &Path, e: impl Into<std::io::Error>) -> Error {
    Error::Invalid(format!("{what} {}: {}", path.display(), e.into()))
}

/// A user namespace whose uid and gid maps send 0..size inside to host_id..host_id+size outside.
pub fn user_namespace(host_id: u32, size: u32) -> Result<OwnedFd> {
    let map = format!("0 {host_id} {size}\n");
    user_namespace_with(&map, &map)
}

/// A user namespace with these uid and gid maps (`inside outside count` lines).
pub fn user_namespace_with(uid_map: &str, gid_map: &str) -> Result<OwnedFd> {
    let (ready_r, ready_w) = rustix::pipe::pipe().map_err(|e| sys("pipe", Path::new("-"), e))?;
    let (done_r, done_w) = rustix::pipe::pipe().map_err(|e| sys("pipe", Path::new("-"), e))?;
    // SAFETY: the child only calls async-signal-safe functions (unshare, write, read, _exit) on
    // file descriptors that exist before the fork, then exits without returning.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys("fork", Path::new("-"), std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above; raw calls on fds owned by this (forked) process.
        unsafe {
            // Our copies of the parent's ends, or the read below would never see EOF.
            libc::close(done_w.as_raw_fd());
            libc::close(ready_r.as_raw_fd());
            let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
            let b = [u8::from(ok)];
            libc::write(ready_w.as_raw_fd(), b.as_ptr().cast(), 1);
            let mut buf = [0u8; 1];
            libc::read(done_r.as_raw_fd(), buf.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(done_r);
    let result = (|| {
        let mut b = [0u8; 1];
        let n = rustix::io::read(&ready_r, &mut b).map_err(|e| sys("waiting for", Path::new("the user namespace child"), e))?;
        if n != 1 || b[0] != 1 {
            return Err(Error::Invalid(
                "cannot create a user namespace (are user namespaces enabled?)".into(),
            ));
        }
        for (f, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
            let p = PathBuf::from(format!("/proc/{pid}/{f}"));
            std::fs::write(&p, map).map_err(|e| sys("writing", &p, e))?;
        }
        let p = PathBuf::from(format!("/proc/{pid}/ns/user"));
        let f = std::fs::File::open(&p).map_err(|e| sys("opening", &p, e))?;
        Ok(OwnedFd::from(f))
    })();
    drop(done_w);
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached, read-only, idmapped view of `dir` (not attached anywhere yet).
pub fn idmapped_view(dir: &Path, userns: &impl AsFd) -> Result<OwnedFd> {
    idmapped_clone(dir, userns, MountAttrFlags::MOUNT_ATTR_RDONLY | MountAttrFlags::MOUNT_ATTR_NODEV)
}

/// A detached clone of the mount at `dir`, idmapped through `userns`, with `attrs` set.
fn idmapped_clone(dir: &Path, userns: &impl AsFd, attrs: MountAttrFlags) -> Result<OwnedFd> {
    clone_with(dir, Some(userns.as_fd()), attrs)
}

/// A detached clone of the mount at `dir` (a directory or a file, not followed if a link), with
/// `attrs` set, and idmapped through `userns` if one is given.
pub(crate) fn clone_with(dir: &Path, userns: Option<std::os::fd::BorrowedFd<'_>>, attrs: MountAttrFlags) -> Result<OwnedFd> {
    clone_at(rustix::fs::CWD, dir, userns, attrs)
}

/// [`clone_with`] of `dir` looked up from `at` (a directory, or a detached mount: Linux 6.15+
/// clones from those too).
pub(crate) fn clone_at(at: impl AsFd, dir: &Path, userns: Option<std::os::fd::BorrowedFd<'_>>, attrs: MountAttrFlags) -> Result<OwnedFd> {
    let tree = rustix::mount::open_tree(
        at,
        dir,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| sys("open_tree", dir, e))?;
    let idmap = if userns.is_some() {
        MountAttrFlags::MOUNT_ATTR_IDMAP
    } else {
        MountAttrFlags::empty()
    };
    let attr = MountAttr {
        attr_set: (idmap | attrs).bits() as u64,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    let empty = CString::default();
    // mount_setattr(2) is not wrapped by rustix (1.1) or nix; the struct layout is the kernel's
    // `struct mount_attr` (include/uapi/linux/mount.h, MOUNT_ATTR_SIZE_VER0 = 32 bytes).
    // SAFETY: valid fd, NUL-terminated empty path with AT_EMPTY_PATH, and a pointer to a live,
    // correctly sized struct for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(sys("setting the mount attributes of", dir, std::io::Error::last_os_error()));
    }
    Ok(tree)
}

/// Mounts a writable overlay at `target` on idmapped views of `lowers` (top-most first), with
/// `upper`/`work` owned by the container's root. With `userns` None, the layers are used as they are.
pub fn mount_container_rootfs(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path, userns: Option<&OwnedFd>) -> Result<()> {
    let Some(ns) = userns else {
        return bulkhead_image::mount::mount_overlay(lowers, Some((upper, work)), target).map_err(Error::from);
    };
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| sys("fsopen overlay for", target, e))?;
    let mut views = Vec::new();
    for l in lowers {
        let view = idmapped_view(l, ns)?;
        // Layers by file descriptor ("lowerdir+" with FSCONFIG_SET_FD, Linux 6.13): the idmapped
        // views never need a path of their own.
        rustix::mount::fsconfig_set_fd(&fs, "lowerdir+", &view).map_err(|e| sys("adding idmapped layer", l, e))?;
        views.push(view);
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", upper).map_err(|e| sys("upperdir", upper, e))?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", work).map_err(|e| sys("workdir", work, e))?;
    rustix::mount::fsconfig_create(&fs).map_err(|e| sys("creating overlay for", target, e))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::MOUNT_ATTR_NODEV)
        .map_err(|e| sys("fsmount", target, e))?;
    rustix::mount::move_mount(&mnt, "", rustix::fs::CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        .map_err(|e| sys("move_mount to", target, e))?;
    // The overlay holds its own references to the layers; the detached views can go.
    drop(views);
    Ok(())
}

/// Makes `dir` belong to the container's root (`host_id`), for upper and work directories.
pub fn chown_to(dir: &Path, host_id: u32) -> Result<()> {
    let id = Some(rustix::fs::Uid::from_raw(host_id));
    let gid = Some(rustix::fs::Gid::from_raw(host_id));
    rustix::fs::chown(dir, id, gid).map_err(|e| sys("chown", dir, e))
}

/// A host directory or file bind-mounted with `idmap`: what the host's owner of `source` owns
/// appears in the container as owned by its root, and what the container's root creates there
/// belongs on the host to that same owner, never to anyone else. Only the owner's uid and gid are
/// mapped (other ids show as nobody), and a source owned by host root is refused: mapping it would
/// let the container create files owned by the host's root (a setuid binary, say) on the host.
///
/// The view is attached at the target inside the container's mounted root filesystem, looked up
/// there with symlinks resolved inside it (the target itself must not be one), missing directories
/// created for the container's root; it goes away with the root filesystem's mount.
pub fn attach_idmapped_volume(rootfs: &Path, source: &Path, target: &str, readonly: bool, host_id: u32) -> Result<()> {
    use rustix::fs::FileType;
    let st = rustix::fs::stat(source).map_err(|e| sys("idmapped volume", source, e))?;
    let (uid, gid) = (st.st_uid, st.st_gid);
    if uid == 0 || gid == 0 {
        return Err(Error::Invalid(format!(
            "-v {}:{target}:idmap: the source belongs to root ({uid}:{gid}); with idmap the container's root would create files owned by the host's root there. Give it an owner of its own (chown) or drop idmap",
            source.display()
        )));
    }
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    let ns = user_namespace_with(&format!("{uid} {host_id} 1\n"), &format!("{gid} {host_id} 1\n"))?;
    let mut attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
    if readonly {
        attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    let view = idmapped_clone(source, &ns, attrs)?;

    attach_at(&view, rootfs, target, is_dir, host_id)
}

/// Attaches the detached mount `view` at `target` inside the container's mounted root filesystem,
/// looked up there with symlinks resolved inside it (the target itself must not be one); what is
/// missing on the way (and at the end a directory or an empty file, as `is_dir` says) is made for
/// the container's root, `host_id`. The mount goes away with the root filesystem's.
pub(crate) fn attach_at(view: &OwnedFd, rootfs: &Path, target: &str, is_dir: bool, host_id: u32) -> Result<()> {
    use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
    let root = rustix::fs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| sys("opening", rootfs, e))?;
    let in_root = |p: &str, flags: OFlags| {
        rustix::fs::openat2(
            &root,
            p,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    };
    let parts: Vec<&str> = target.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let target_path = Path::new(target);
    let fail = |what: &'static str| move |e: rustix::io::Errno| sys(what, target_path, e);
    // Each component looked up inside the root; what is missing is made for the container's root:
    // directories, and at the end a directory or an empty file, as the source is.
    let mut target_fd = None;
    for i in 1..=parts.len() {
        let last = i == parts.len();
        let flags = if last {
            OFlags::PATH | OFlags::NOFOLLOW
        } else {
            OFlags::PATH | OFlags::DIRECTORY
        };
        let fd = match in_root(&parts[..i].join("/"), flags) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                let parent = if i == 1 {
                    root.try_clone().map_err(|e| sys("dup", rootfs, e))?
                } else {
                    in_root(&parts[..i - 1].join("/"), OFlags::PATH | OFlags::DIRECTORY).map_err(fail("opening"))?
                };
                let name = parts[i - 1];
                if last && !is_dir {
                    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC;
                    rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(0o644)).map_err(fail("creating"))?;
                } else {
                    rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)).map_err(fail("creating"))?;
                }
                let made = rustix::fs::openat(&parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                    .map_err(fail("opening"))?;
                let id = (Some(rustix::fs::Uid::from_raw(host_id)), Some(rustix::fs::Gid::from_raw(host_id)));
                rustix::fs::chownat(&made, "", id.0, id.1, rustix::fs::AtFlags::EMPTY_PATH).map_err(fail("chown"))?;
                made
            }
            Err(e) => return Err(sys("opening", target_path, e)),
        };
        if last {
            target_fd = Some(fd);
        }
    }
    let target_fd = target_fd.ok_or_else(|| Error::Invalid(format!("mount target {target:?}: empty")))?;
    let tst = rustix::fs::fstat(&target_fd).map_err(|e| sys("stat", target_path, e))?;
    let tty = FileType::from_raw_mode(tst.st_mode);
    if tty == FileType::Symlink {
        return Err(Error::Invalid(format!(
            "mount target {target} is a symlink in the image; refused (a mount must not be redirected by the image)"
        )));
    }
    if (tty == FileType::Directory) != is_dir {
        return Err(Error::Invalid(format!(
            "mount target {target}: a {} cannot be mounted on a {}",
            if is_dir { "directory" } else { "file" },
            if tty == FileType::Directory { "directory" } else { "file" }
        )));
    }
    rustix::mount::move_mount(
        view,
        "",
        &target_fd,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| sys("attaching a mount at", target_path, e))
}
