//! `-u USER[:GROUP]` and an image's `User`, resolved the way Docker does against the container's own
//! /etc/passwd and /etc/group. Those files come from the image, so they are read confined to its root
//! (symlinks in them resolve inside it) and parsed without trusting their shape.

use std::io::Read;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::{Error, Result};

/// The ids a container process runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

const MAX_DB: u64 = 4 << 20;

/// Reads `rel` (e.g. "etc/passwd") inside `rootfs`, or an empty string if it is missing.
fn read_confined(rootfs: &Path, rel: &str) -> Result<String> {
    let root = rustix::fs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::Invalid(format!("{}: {}", rootfs.display(), std::io::Error::from(e))))?;
    let f = match bulkhead_image::tree::open_regular_at(
        std::os::fd::AsFd::as_fd(&root),
        Path::new(rel),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(Error::Invalid(format!("reading /{rel} in the image: {e}"))),
    };
    let mut data = Vec::new();
    f.take(MAX_DB)
        .read_to_end(&mut data)
        .map_err(|e| Error::Invalid(format!("reading /{rel} in the image: {e}")))?;
    Ok(String::from_utf8_lossy(&data).into_owned())
}

/// Resolves `spec` ("", "name", "uid", "name:group", "uid:gid", ...) inside `rootfs`.
pub fn resolve(rootfs: &Path, spec: &str) -> Result<ResolvedUser> {
    let passwd = read_confined(rootfs, "etc/passwd")?;
    let group = read_confined(rootfs, "etc/group")?;
    resolve_in(&passwd, &group, spec)
}

/// The same, from the contents of passwd and group.
pub fn resolve_in(passwd: &str, group: &str, spec: &str) -> Result<ResolvedUser> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    // name:x:uid:gid:gecos:home:shell
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let found = entries.iter().find(|f| f[0] == user).or_else(|| {
        user.parse::<u32>()
            .ok()
            .and_then(|n| entries.iter().find(|f| f[2].parse::<u32>().ok() == Some(n)))
    });
    // A numeric uid without a passwd entry runs with gid 0, as in Docker.
    let (uid, mut gid, home, name) = match (found, user.parse::<u32>()) {
        (Some(f), _) => {
            let uid = f[2]
                .parse::<u32>()
                .map_err(|_| Error::Invalid(format!("/etc/passwd entry for {user} has a bad uid")))?;
            let gid = f[3]
                .parse::<u32>()
                .map_err(|_| Error::Invalid(format!("/etc/passwd entry for {user} has a bad gid")))?;
            (uid, gid, f[5].to_owned(), Some(f[0]))
        }
        (None, Ok(n)) => (n, 0, "/".to_owned(), None),
        (None, Err(_)) => {
            return Err(Error::Invalid(format!(
                "unable to find user {user}: no matching entries in the image's /etc/passwd"
            )))
        }
    };
    // name:x:gid:members
    let groups: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    if let Some(g) = grp {
        gid = match groups.iter().find(|f| f[0] == g) {
            Some(f) => f[2]
                .parse::<u32>()
                .map_err(|_| Error::Invalid(format!("/etc/group entry for {g} has a bad gid")))?,
            None => g
                .parse::<u32>()
                .map_err(|_| Error::Invalid(format!("unable to find group {g}: no matching entries in the image's /etc/group")))?,
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(n) = name {
        for f in &groups {
            if f[3].split(',').any(|m| m == n) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if g != gid && !additional_gids.contains(&g) {
                        additional_gids.push(g);
                    }
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken-line\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app\napp:x:1000:\n";

    #[test]
    fn resolves_like_docker() {
        assert_eq!(
            resolve_in(PASSWD, GROUP, "").unwrap(),
            ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                home: "/root".into()
            }
        );
        let app = resolve_in(PASSWD, GROUP, "app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.additional_gids.clone(), app.home.as_str()),
            (1000, 1000, vec![50], "/home/app")
        );
        assert_eq!(resolve_in(PASSWD, GROUP, "1000").unwrap().gid, 1000);
        assert_eq!(
            resolve_in(PASSWD, GROUP, "4242").unwrap(),
            ResolvedUser {
                uid: 4242,
                gid: 0,
                additional_gids: vec![],
                home: "/".into()
            }
        );
        assert_eq!(resolve_in(PASSWD, GROUP, "app:staff").unwrap().gid, 50);
        assert_eq!(resolve_in(PASSWD, GROUP, "1:7").unwrap().gid, 7);
        assert!(resolve_in(PASSWD, GROUP, "nobody").is_err());
        assert!(resolve_in(PASSWD, GROUP, "app:nogroup").is_err());
    }
}
