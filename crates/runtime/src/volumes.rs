//! Named volumes (`volume create`, `run -v NAME:/path`).
//!
//! Every container has a host id range of its own, so a directory written by one container's root
//! would belong to nobody in another. A volume's files are therefore kept with the ids a container
//! sees (root is 0), as image layers are, in `<store>/volumes/<name>/_data`, and each container
//! gets it through an idmapped mount into its own range: on-disk id N is host id `host_id + N`
//! for that container, and two services with different ranges see the same owners.
//!
//! The volumes directory is 0700: on the host, only root reaches a volume's files (which, like a
//! layer's, may be setuid-root as a container made them; every attachment is nosuid and nodev).

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::mount::MountAttrFlags;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::io;

/// A volume's metadata (`volume.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub created: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A named volume a container mounts, attached by bulkhead at each start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub name: String,
    pub target: String,
    pub readonly: bool,
}

/// The volumes of one store.
#[derive(Clone, Debug)]
pub struct Volumes {
    dir: PathBuf,
}

/// Volume names as Docker takes them.
pub fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty() && b.len() <= 128 && b[0].is_ascii_alphanumeric() && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn check_name(n: &str) -> Result<()> {
    if valid_name(n) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "volume name {n:?}: letters, digits, '_', '.', '-', starting with a letter or digit, at most 128"
        )))
    }
}

impl Volumes {
    pub fn open(store_root: &Path) -> Result<Self> {
        let dir = store_root.join("volumes");
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| io(&dir, e))?;
        Ok(Volumes { dir })
    }

    /// Where the volume's files are.
    pub fn data(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    /// Reads a volume's metadata.
    pub fn get(&self, name: &str) -> Result<Volume> {
        check_name(name)?;
        let p = self.dir.join(name).join("volume.json");
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotFound(format!("no such volume: {name}"))),
            Err(e) => return Err(io(&p, e)),
        };
        serde_json::from_slice(&data).map_err(|e| Error::Invalid(format!("{}: corrupt volume record: {e}", p.display())))
    }

    /// Serialises making, removing and clearing volumes (within one store).
    fn lock(&self) -> Result<fs::File> {
        crate::fsutil::lock_file(&self.dir.join(".lock"))
    }

    /// Makes a volume, or returns the one of that name (`false`: it existed). A new volume's root
    /// directory belongs to the container's root (on-disk 0), mode 0755, as Docker's does.
    pub fn create(&self, name: &str, labels: BTreeMap<String, String>) -> Result<(Volume, bool)> {
        check_name(name)?;
        let _lock = self.lock()?;
        if let Ok(v) = self.get(name) {
            return Ok((v, false));
        }
        let vol = Volume {
            name: name.into(),
            created: chrono::Utc::now(),
            labels,
        };
        // Made aside and renamed into place: a volume is whole or absent, even after kill -9.
        let tmp = self.dir.join(format!(".new-{}", &crate::fsutil::random_id()?[..16]));
        let made = (|| -> Result<()> {
            fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
            fs::create_dir(tmp.join("_data")).map_err(|e| io(&tmp, e))?;
            let data = serde_json::to_vec_pretty(&vol).map_err(|e| Error::Invalid(e.to_string()))?;
            bulkhead_image::store::replace_file(&tmp.join("volume.json"), &data, true)?;
            fs::rename(&tmp, self.dir.join(name)).map_err(|e| io(&self.dir.join(name), e))
        })();
        match made {
            Ok(()) => Ok((vol, true)),
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                // Made by someone else in between.
                match self.get(name) {
                    Ok(v) => Ok((v, false)),
                    Err(_) => Err(e),
                }
            }
        }
    }

    /// Clears what an interrupted create or remove left (under the volumes' lock, so never a
    /// create in progress).
    pub fn clean(&self) -> Result<()> {
        let _lock = self.lock()?;
        for e in fs::read_dir(&self.dir).map_err(|e| io(&self.dir, e))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".new-") || name.starts_with(".gone-") {
                bulkhead_image::unpack::remove_all_at(&rustix::fs::CWD, e.path().as_os_str()).map_err(|err| io(&e.path(), err))?;
            }
        }
        Ok(())
    }

    /// Every volume, by name; unreadable ones are skipped with a warning.
    pub fn list(&self) -> Result<Vec<Volume>> {
        let mut out = crate::fsutil::read_records(&self.dir, "volume", |name| self.get(name))?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a volume no container mounts; `users` are the containers that do (see
    /// [`crate::container::Containers::volume_users`]), listed under the containers' lock, which the
    /// caller holds so that no container is made with it meanwhile.
    pub fn remove(&self, name: &str, users: &[String]) -> Result<()> {
        let _lock = self.lock()?;
        self.get(name)?;
        if !users.is_empty() {
            return Err(Error::Invalid(format!("volume {name} is in use by {}", users.join(", "))));
        }
        // Out of the way first: a removal cut short leaves no half volume under the name.
        let gone = self.dir.join(format!(".gone-{}", &crate::fsutil::random_id()?[..16]));
        fs::rename(self.dir.join(name), &gone).map_err(|e| io(&self.dir.join(name), e))?;
        bulkhead_image::unpack::remove_all_at(&rustix::fs::CWD, gone.as_os_str()).map_err(|e| io(&gone, e))
    }

    /// Attaches the volume at `target` in a container's mounted root filesystem: idmapped into
    /// the container's range (`host_id`), or as it is for `--userns=host`; nosuid, nodev.
    pub fn attach(&self, m: &VolumeMount, rootfs: &Path, host_id: Option<u32>) -> Result<()> {
        self.get(&m.name)?;
        let data = self.data(&m.name);
        let mut attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
        if m.readonly {
            attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
        }
        let view = match host_id {
            Some(h) => {
                let ns = crate::idmap::user_namespace(h, crate::profile::ID_RANGE)?;
                crate::idmap::clone_with(&data, Some(ns.as_fd()), attrs)?
            }
            None => crate::idmap::clone_with(&data, None, attrs)?,
        };
        crate::idmap::attach_at(&view, rootfs, &m.target, true, host_id.unwrap_or(0))
    }
}
