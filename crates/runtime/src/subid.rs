//! The host id range that bulkhead draws every container's user namespace from, reserved the
//! standard way: an entry for the user `bulkhead` in `/etc/subuid` and `/etc/subgid`, as Podman
//! reserves one for `containers`.
//!
//! A container's root is an unprivileged host id; if that id is also a real account's, or inside a
//! range that `/etc/subuid` gives a real user for their own rootless containers, that user can
//! signal, ptrace or read the container's processes and files. So:
//! - the range is whatever `/etc/subuid` and `/etc/subgid` say `bulkhead` has (the same start and
//!   length in both: a container maps uids and gids with one base);
//! - if neither has an entry, one is added on first use: [`DEFAULT_START`] and [`DEFAULT_COUNT`]
//!   where that is free, else the first free stretch of that length above it;
//! - a range that another entry of either file overlaps, or that holds the uid of an account in
//!   `/etc/passwd` (or the gid of a group in `/etc/group`), is refused with one line naming it.
//!
//! Ids that only a network directory (SSSD, LDAP) knows cannot be seen in these files: a host that
//! has them reserves bulkhead's range itself by writing the entries, as it would for Podman.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::profile::ID_RANGE;

/// The name of the entry.
pub const USER: &str = "bulkhead";
/// Where a new reservation starts, if free: 2^20, above every range distributions give users
/// (useradd's SUB_UID_MIN is 100000 and gives 65536 each, so 2^20 is reached after 14 users).
pub const DEFAULT_START: u64 = 1 << 20;
/// How many ids a new reservation holds: 16,384 containers' ranges of 65,536.
pub const DEFAULT_COUNT: u64 = 1 << 30;

/// The files, which tests and unusual hosts may move (`BULKHEAD_SUBUID`, `BULKHEAD_SUBGID`,
/// `BULKHEAD_PASSWD`, `BULKHEAD_GROUP`).
#[derive(Clone, Debug)]
pub struct Files {
    pub subuid: PathBuf,
    pub subgid: PathBuf,
    pub passwd: PathBuf,
    pub group: PathBuf,
}

impl Files {
    pub fn from_env() -> Self {
        let f = |var: &str, default: &str| PathBuf::from(std::env::var_os(var).unwrap_or_else(|| default.into()));
        Files {
            subuid: f("BULKHEAD_SUBUID", "/etc/subuid"),
            subgid: f("BULKHEAD_SUBGID", "/etc/subgid"),
            passwd: f("BULKHEAD_PASSWD", "/etc/passwd"),
            group: f("BULKHEAD_GROUP", "/etc/group"),
        }
    }
}

/// One `name:start:count` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubId {
    pub owner: String,
    pub start: u64,
    pub count: u64,
}

impl SubId {
    fn end(&self) -> u64 {
        self.start.saturating_add(self.count)
    }
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end()
    }
}

/// The entries of a subuid/subgid file; lines that are not `owner:start:count` are ignored, as
/// shadow-utils ignores them.
pub fn parse(text: &str) -> Vec<SubId> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
            if owner.is_empty() || owner.starts_with('#') || f.next().is_some() {
                return None;
            }
            Some(SubId {
                owner: owner.to_owned(),
                start: start.parse().ok()?,
                count: count.parse().ok()?,
            })
        })
        .collect()
}

/// The numeric ids (third field) of a passwd or group file, with their names.
fn accounts(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((name.to_owned(), id))
        })
        .collect()
}

fn read(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::Invalid(format!("{}: {e}", path.display()))),
    }
}

/// What is wrong with giving [start, start+count) to bulkhead, given the other entries of both
/// files and the accounts, or None.
fn conflict(start: u64, count: u64, others: &[(&str, &SubId)], passwd: &str, group: &str) -> Option<String> {
    let end = start.saturating_add(count);
    if let Some((file, e)) = others.iter().find(|(_, e)| e.overlaps(start, end)) {
        return Some(format!("{file}'s entry for {} ({}:{}) overlaps it", e.owner, e.start, e.count));
    }
    for (kind, text) in [("user", passwd), ("group", group)] {
        if let Some((name, id)) = accounts(text).into_iter().find(|(_, id)| (start..end).contains(id)) {
            return Some(format!("the {kind} {name} has id {id} inside it"));
        }
    }
    None
}

/// The first aligned stretch of `count` ids at or above [`DEFAULT_START`] that conflicts with
/// nothing.
fn free_stretch(count: u64, others: &[(&str, &SubId)], passwd: &str, group: &str) -> Option<u64> {
    let mut start = DEFAULT_START;
    while start.checked_add(count)? <= u64::from(u32::MAX) {
        if conflict(start, count, others, passwd, group).is_none() {
            return Some(start);
        }
        // Past the end of whatever overlaps, rounded up to a whole container range.
        let end = start + count;
        let next = others
            .iter()
            .filter(|(_, e)| e.overlaps(start, end))
            .map(|(_, e)| e.end())
            .chain(
                accounts(passwd)
                    .into_iter()
                    .chain(accounts(group))
                    .map(|(_, id)| id + 1)
                    .filter(|id| (start + 1..=end).contains(id)),
            )
            .max()
            .unwrap_or(end);
        start = next.div_ceil(u64::from(ID_RANGE)) * u64::from(ID_RANGE);
    }
    None
}

/// bulkhead's reserved range (start, count), read from the files, made on first use.
pub fn reserved(files: &Files) -> Result<(u64, u64)> {
    let (uids, gids) = (read(&files.subuid)?, read(&files.subgid)?);
    let (passwd, group) = (read(&files.passwd)?, read(&files.group)?);
    let (u, g) = (parse(&uids), parse(&gids));
    let mine = |v: &[SubId]| v.iter().find(|e| e.owner == USER).cloned();
    let others: Vec<(&str, &SubId)> = u
        .iter()
        .filter(|e| e.owner != USER)
        .map(|e| ("/etc/subuid", e))
        .chain(g.iter().filter(|e| e.owner != USER).map(|e| ("/etc/subgid", e)))
        .collect();
    let (start, count) = match (mine(&u), mine(&g)) {
        (Some(a), Some(b)) if a.start == b.start && a.count == b.count => (a.start, a.count),
        (Some(a), Some(b)) => {
            return Err(Error::Invalid(format!(
                "{USER}'s ranges differ between {} ({}:{}) and {} ({}:{}); give both the same start and count",
                files.subuid.display(),
                a.start,
                a.count,
                files.subgid.display(),
                b.start,
                b.count
            )))
        }
        (None, None) => {
            let start = free_stretch(DEFAULT_COUNT, &others, &passwd, &group).ok_or_else(|| {
                Error::Invalid(format!(
                    "no free stretch of {DEFAULT_COUNT} ids for {USER} in {}; add a {USER}:START:COUNT line to it and to {}",
                    files.subuid.display(),
                    files.subgid.display()
                ))
            })?;
            // shadow-utils' own locks, so that a useradd at the same moment is not lost; the
            // files are read again under them.
            let _locks = [ShadowLock::take(&files.subuid)?, ShadowLock::take(&files.subgid)?];
            let (uids, gids) = (read(&files.subuid)?, read(&files.subgid)?);
            if parse(&uids)
                .iter()
                .chain(parse(&gids).iter())
                .any(|e| e.owner != USER && e.overlaps(start, start + DEFAULT_COUNT))
            {
                return Err(Error::Invalid(format!(
                    "{} changed while a range for {USER} was being reserved; run again",
                    files.subuid.display()
                )));
            }
            for (path, text) in [(&files.subuid, &uids), (&files.subgid, &gids)] {
                append_entry(path, text, start, DEFAULT_COUNT)?;
            }
            (start, DEFAULT_COUNT)
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Invalid(format!(
                "{USER} has a range in only one of {} and {}; give both the same start and count",
                files.subuid.display(),
                files.subgid.display()
            )))
        }
    };
    if count < u64::from(ID_RANGE) || start.saturating_add(count) > u64::from(u32::MAX) || start == 0 {
        return Err(Error::Invalid(format!(
            "{USER}'s range {start}:{count} in {} must hold at least {ID_RANGE} ids, above 0 and below 2^32",
            files.subuid.display()
        )));
    }
    if let Some(why) = conflict(start, count, &others, &passwd, &group) {
        return Err(Error::Invalid(format!(
            "{USER}'s id range {start}:{count} cannot be used for containers: {why}; give {USER} a range of its own in {} and {}",
            files.subuid.display(),
            files.subgid.display()
        )));
    }
    Ok((start, count))
}

/// The lock shadow-utils takes on a file it edits (`FILE.lock`, made exclusively, holding the
/// locker's pid); a lock whose process is gone is stale and taken over. Removed when dropped.
struct ShadowLock(PathBuf);

impl ShadowLock {
    fn take(file: &Path) -> Result<ShadowLock> {
        use std::io::Write;
        let mut name = file.as_os_str().to_owned();
        name.push(".lock");
        let lock = PathBuf::from(name);
        for _ in 0..50 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(ShadowLock(lock));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&lock).ok().and_then(|t| t.trim().parse::<i32>().ok());
                    if holder.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                        let _ = std::fs::remove_file(&lock);
                        continue;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(Error::Invalid(format!("{}: {e}", lock.display()))),
            }
        }
        Err(Error::Invalid(format!(
            "{} is held by another program (useradd?); try again",
            lock.display()
        )))
    }
}

impl Drop for ShadowLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Adds `bulkhead:START:COUNT` to a subuid/subgid file, replacing it atomically with the mode it had
/// (0644 for a new one).
fn append_entry(path: &Path, text: &str, start: u64, count: u64) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
    let mut new = text.to_owned();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&format!("{USER}:{start}:{count}\n"));
    bulkhead_image::store::replace_file(path, new.as_bytes(), true)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    tracing::info!(file = %path.display(), start, count, "reserved an id range for containers");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, subuid: &str, subgid: &str, passwd: &str) -> Files {
        let f = Files {
            subuid: dir.join("subuid"),
            subgid: dir.join("subgid"),
            passwd: dir.join("passwd"),
            group: dir.join("group"),
        };
        std::fs::write(&f.subuid, subuid).unwrap();
        std::fs::write(&f.subgid, subgid).unwrap();
        std::fs::write(&f.passwd, passwd).unwrap();
        std::fs::write(&f.group, "root:x:0:\n").unwrap();
        f
    }

    #[test]
    fn parses_entries_and_skips_junk() {
        let v = parse("alice:100000:65536\n# comment\nbad\n1001:200000:10\nx:1:2:3\n");
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].owner, "1001");
    }

    #[test]
    fn a_new_reservation_avoids_other_users_and_accounts() {
        let dir = tempfile::tempdir().unwrap();
        // alice's range sits where the default would start; an account's uid just above it.
        let f = files(
            dir.path(),
            "alice:1048576:131072\n",
            "alice:1048576:131072\n",
            "root:x:0:0::/:/bin/sh\nsvc:x:1200000:1200000::/:/bin/sh\n",
        );
        let (start, count) = reserved(&f).unwrap();
        assert_eq!(count, DEFAULT_COUNT);
        assert!(start > 1200000, "past alice's range and the account above it: {start}");
        assert_eq!(start % u64::from(ID_RANGE), 0);
        for p in [&f.subuid, &f.subgid] {
            let t = std::fs::read_to_string(p).unwrap();
            assert!(
                t.starts_with("alice:1048576:131072\n") && t.ends_with(&format!("bulkhead:{start}:{count}\n")),
                "{t}"
            );
        }
        // Read back, the same.
        assert_eq!(reserved(&f).unwrap(), (start, count));
    }

    #[test]
    fn an_overlapping_or_lopsided_reservation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(
            dir.path(),
            "bulkhead:1048576:1048576\nbob:1114112:65536\n",
            "bulkhead:1048576:1048576\n",
            "root:x:0:0::/:/bin/sh\n",
        );
        let e = reserved(&f).unwrap_err().to_string();
        assert!(e.contains("bob") && e.contains("overlaps"), "{e}");
        let f = files(
            dir.path(),
            "bulkhead:1048576:1048576\n",
            "bulkhead:1048576:1048576\n",
            "x:x:1048577:0::/:/bin/sh\n",
        );
        let e = reserved(&f).unwrap_err().to_string();
        assert!(e.contains("user x has id 1048577"), "{e}");
        let f = files(dir.path(), "bulkhead:1048576:1048576\n", "bulkhead:2097152:1048576\n", "");
        assert!(reserved(&f).unwrap_err().to_string().contains("differ"));
        let f = files(dir.path(), "bulkhead:1048576:1048576\n", "", "");
        assert!(reserved(&f).unwrap_err().to_string().contains("only one"));
    }
}
