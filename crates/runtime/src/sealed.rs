//! CVE-2019-5736: a container must never be able to overwrite the binary that starts it (through
//! `/proc/self/exe` of a runtime process that enters the container, or a descriptor to it kept
//! until that process is gone). So every command that creates or enters a container first
//! re-executes itself from a copy nothing can write:
//!
//! 1. a private, detached, read-only overlayfs whose top layer is the directory of our binary
//!    (two lower layers and no upper: overlayfs's lower-only mode, where every write fails with
//!    EROFS and there is nothing to remount). Nothing is copied, so it costs a fraction of a
//!    millisecond. runc does the same since 1.2.
//! 2. Where that cannot be done (no overlayfs, no privilege to mount), a sealed memfd copy of the
//!    binary (pentacle), which costs a copy of the whole binary (~8 ms for 13 MB here).
//!
//! Whether we already run from such a copy is decided by what /proc/self/exe is, never by the
//! environment alone.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Marks a process that executed itself from the overlay (checked together with the mount).
const MARKER: &str = "_BULKHEAD_SEALED_EXE";
/// overlayfs's f_type.
const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;
/// The empty bottom layer of the sealing overlay.
const EMPTY_LAYER: &str = "/run/bulkhead/seal-empty";

/// Whether this process runs from a copy of its binary that cannot be written.
pub fn is_sealed() -> bool {
    pentacle::is_sealed() || (std::env::var_os(MARKER).is_some() && exe_on_readonly_overlay())
}

fn exe_on_readonly_overlay() -> bool {
    let Ok(exe) = std::fs::File::open("/proc/self/exe") else {
        return false;
    };
    rustix::fs::fstatfs(&exe)
        .is_ok_and(|s| u64::try_from(s.f_type).ok() == Some(OVERLAYFS_SUPER_MAGIC) && (s.f_flags as u64 & libc::ST_RDONLY) != 0)
}

/// Re-executes this process from a sealed copy of its binary unless it already runs from one.
/// Returns only when it already does, or with the error that made both ways fail.
pub fn ensure_sealed() -> io::Result<()> {
    if is_sealed() {
        return Ok(());
    }
    let overlay = sealed_overlay_exe().and_then(|exe| exec_self(&exe));
    tracing::debug!(error = %overlay.unwrap_err(), "no sealed overlayfs for our binary; copying it into a memfd");
    pentacle::ensure_sealed()
}

/// Escapes a path for overlayfs's `lowerdir` list (`:` separates layers, `\` escapes).
fn escape_layer(p: &Path) -> OsString {
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        if b == b':' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    std::os::unix::ffi::OsStringExt::from_vec(out)
}

/// An O_PATH descriptor of our binary as seen through a new read-only, lower-only overlayfs
/// that is attached nowhere (it lives as long as a descriptor or an executing process holds it).
fn sealed_overlay_exe() -> io::Result<OwnedFd> {
    use rustix::mount::{fsconfig_create, fsconfig_set_string, fsmount, fsopen, FsMountFlags, FsOpenFlags, MountAttrFlags};
    let exe: PathBuf = std::fs::read_link("/proc/self/exe")?;
    let (Some(dir), Some(name)) = (exe.parent(), exe.file_name()) else {
        return Err(io::Error::other(format!("{}: not a file in a directory", exe.display())));
    };
    std::fs::create_dir_all(EMPTY_LAYER)?;
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    let mut lower = escape_layer(dir);
    lower.push(":");
    lower.push(escape_layer(Path::new(EMPTY_LAYER)));
    fsconfig_set_string(fs.as_fd(), "lowerdir", lower.as_os_str())?;
    // Only to keep overlayfs quiet when the layers are on different filesystems.
    let _ = fsconfig_set_string(fs.as_fd(), "xino", "off");
    fsconfig_create(fs.as_fd())?;
    let mnt = fsmount(
        fs.as_fd(),
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY | MountAttrFlags::MOUNT_ATTR_NODEV | MountAttrFlags::MOUNT_ATTR_NOSUID,
    )?;
    let file = rustix::fs::openat(
        mnt.as_fd(),
        name,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok(file)
}

/// execveat(exe, "", our argv, our environment + MARKER, AT_EMPTY_PATH). Returns only on failure.
fn exec_self(exe: &OwnedFd) -> io::Result<()> {
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("an argument or variable holds a NUL byte"));
    let argv: Vec<CString> = std::env::args_os().map(|a| cstr(a.as_bytes())).collect::<io::Result<_>>()?;
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != MARKER)
        .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<io::Result<_>>()?;
    envp.push(cstr(format!("{MARKER}=overlay").as_bytes())?);
    let mut argv_p: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv_p.push(std::ptr::null_mut());
    let mut envp_p: Vec<*mut libc::c_char> = envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp_p.push(std::ptr::null_mut());
    // SAFETY: NUL-terminated arrays of pointers to NUL-terminated strings that outlive the call;
    // execveat only returns on failure.
    unsafe {
        libc::execveat(exe.as_raw_fd(), c"".as_ptr(), argv_p.as_ptr(), envp_p.as_ptr(), libc::AT_EMPTY_PATH);
    }
    Err(io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_paths_are_escaped() {
        assert_eq!(escape_layer(Path::new("/a:b\\c")), OsString::from("/a\\:b\\\\c"));
        assert_eq!(escape_layer(Path::new("/usr/bin")), OsString::from("/usr/bin"));
    }
}
