//! Containers on disk: `containers/<id>/` holds the record, the overlay upper and work directories,
//! the OCI bundle (config.json and the rootfs mount point) and the executor's state.
//!
//! ```text
//! containers/<id>/record.json     ContainerRecord, replaced atomically on every change of state
//! containers/<id>/upper, work     the container's own layer, owned by its root's host id
//! containers/<id>/bundle/         config.json + rootfs/ (the overlay, mounted while it runs)
//! containers/<id>/exec/           the executor's state (libcontainer or runc --root)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use bulkhead_image::{Digest, Store};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{io, lock_file, read_records};
use crate::profile::{SecurityProfile, UserNs, ID_RANGE};

/// At most this many distinct ranges of 65536 ids are drawn from bulkhead's reservation in
/// /etc/subuid (crate::subid), each container's its own.
const MAX_RANGES: u32 = 65_000;
/// Host-wide claims of id ranges, shared by every store on the machine.
pub const RANGE_REGISTRY: &str = "/var/lib/bulkhead-ranges";

/// The lifecycle state of a container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "Status")]
pub enum State {
    Created,
    Running {
        #[serde(rename = "Pid")]
        pid: i32,
        #[serde(rename = "StartedAt")]
        started: chrono::DateTime<chrono::Utc>,
    },
    Exited {
        #[serde(rename = "ExitCode")]
        code: i32,
        #[serde(rename = "FinishedAt")]
        finished: chrono::DateTime<chrono::Utc>,
        #[serde(rename = "OOMKilled")]
        oom_killed: bool,
    },
}

/// A container's healthcheck (`--health-cmd`, compose's `healthcheck`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Healthcheck {
    /// The command, as `exec` runs it.
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Failures in a row that make it unhealthy.
    pub retries: u32,
    /// Failures in this time after a start do not count.
    pub start_period_ms: u64,
}

/// What the health loop last found (`<container dir>/health.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Health {
    /// The start it is about (the container's first process then): another start's is stale.
    #[serde(default)]
    pub pid: i32,
    /// starting, healthy, unhealthy.
    pub status: String,
    pub failing_streak: u32,
    /// The last five checks: start, end, exit code, the first 4 KiB of output.
    pub log: Vec<HealthRun>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthRun {
    pub start: chrono::DateTime<chrono::Utc>,
    pub end: chrono::DateTime<chrono::Utc>,
    pub exit_code: i32,
    pub output: String,
}

/// Everything bulkhead records about one container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// The image as the user named it, and what it resolved to.
    pub image: String,
    pub image_id: Digest,
    /// Chain ids of the image's layers, bottom first.
    pub layers: Vec<Digest>,
    pub command: Vec<String>,
    pub created: chrono::DateTime<chrono::Utc>,
    /// Host id of the container's root (None with `--userns=host`).
    pub host_id: Option<u32>,
    /// The executor: "libcontainer", or the path of an OCI runtime.
    pub runtime: String,
    /// One line per default that this container weakens.
    pub warnings: Vec<String>,
    pub state: State,
    /// The shim that supervises it while it runs (detached containers).
    #[serde(default)]
    pub shim_pid: Option<i32>,
    /// Why it could not start, if it could not.
    #[serde(default)]
    pub error: Option<String>,
    /// Remove the container when it exits (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// `--restart`: `always`, `unless-stopped`, `on-failure[:N]` (none: `no`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// Starts the policy made since a user last started it.
    #[serde(default)]
    pub restart_count: u32,
    /// Stopped by a user (`stop`): the policy does not start it again until a user does.
    #[serde(default)]
    pub stopped_by_user: bool,
    /// `--health-cmd` and the rest: a command run in the container on an interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `-i`: a detached container's stdin stays open instead of reading /dev/null.
    #[serde(default)]
    pub open_stdin: bool,
    /// The signal `stop` sends first, and how long it waits before SIGKILL.
    #[serde(default = "default_stop_signal")]
    pub stop_signal: i32,
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: u64,
    /// `--label KEY=VALUE`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Bind mounts with `idmap`, attached by bulkhead into the root filesystem at each start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idmapped_volumes: Vec<IdmappedVolume>,
    /// Named volumes, attached (idmapped into its range) at each start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::volumes::VolumeMount>,
    /// Secrets and configs, read from their sources and attached at each start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::files::InjectedFile>,
    /// Its user's ids, the owner of secrets and configs that name none.
    #[serde(default)]
    pub user: (u32, u32),
    /// The networks it joins at each start (`--network`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// `--ip`: its address on its first network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// `--network-alias`: its other names on its networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// `-p` (and `-P`'s exposed ports), published at each start on its first network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Its host name (also its name on its networks).
    #[serde(default)]
    pub hostname: String,
}

/// What bulkhead mounts into a container's root filesystem before each start: bind mounts with
/// idmap, named volumes, then secrets and configs.
pub struct Attachments<'a> {
    pub host_id: Option<u32>,
    pub idmapped_volumes: &'a [IdmappedVolume],
    pub volumes: &'a [crate::volumes::VolumeMount],
    pub files: &'a [crate::files::InjectedFile],
    pub user: (u32, u32),
}

impl<'a> Attachments<'a> {
    pub fn of(rec: &'a ContainerRecord) -> Self {
        Attachments {
            host_id: rec.host_id,
            idmapped_volumes: &rec.idmapped_volumes,
            volumes: &rec.volumes,
            files: &rec.files,
            user: rec.user,
        }
    }

    pub fn attach(&self, cs: &Containers, rootfs: &Path) -> Result<()> {
        self.idmapped_volumes.iter().try_for_each(|v| v.attach(rootfs, self.host_id))?;
        if !self.volumes.is_empty() {
            let vols = crate::volumes::Volumes::open(cs.store_root())?;
            self.volumes.iter().try_for_each(|v| vols.attach(v, rootfs, self.host_id))?;
        }
        crate::files::attach_all(self.files, rootfs, self.host_id, self.user)
    }
}

/// `-v SOURCE:TARGET:idmap` (see [`crate::idmap::attach_idmapped_volume`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdmappedVolume {
    pub source: String,
    pub target: String,
    pub readonly: bool,
}

impl IdmappedVolume {
    pub fn attach(&self, rootfs: &Path, host_id: Option<u32>) -> Result<()> {
        let Some(h) = host_id else {
            return Err(Error::Invalid(format!(
                "-v {}:{}:idmap needs the container's own user namespace (not --userns=host)",
                self.source, self.target
            )));
        };
        crate::idmap::attach_idmapped_volume(rootfs, Path::new(&self.source), &self.target, self.readonly, h)
    }
}

fn default_stop_signal() -> i32 {
    libc::SIGTERM
}

fn default_stop_timeout() -> u64 {
    10
}

/// Containers under one store root.
#[derive(Clone, Debug)]
pub struct Containers {
    dir: PathBuf,
}

impl Containers {
    pub fn open(store: &Store) -> Result<Self> {
        let dir = store.root().join("containers");
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        // The container's own root (an unprivileged host id) must be able to reach its rootfs, and
        // nothing else: traverse, not list.
        set_mode(store.root(), 0o711)?;
        set_mode(&dir, 0o711)?;
        Ok(Containers { dir })
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir(id).join("bundle")
    }

    pub fn rootfs(&self, id: &str) -> PathBuf {
        self.bundle(id).join("rootfs")
    }

    /// Every container record, newest first; unreadable ones are skipped with a warning.
    pub fn list(&self) -> Result<Vec<ContainerRecord>> {
        let mut out = read_records(&self.dir, "container", |name| self.load(name))?;
        out.sort_by_key(|r| std::cmp::Reverse(r.created));
        Ok(out)
    }

    pub fn load(&self, id: &str) -> Result<ContainerRecord> {
        let p = self.dir(id).join("record.json");
        let data = fs::read(&p).map_err(|e| io(&p, e))?;
        serde_json::from_slice(&data).map_err(|e| Error::Invalid(format!("{}: corrupt container record: {e}", p.display())))
    }

    pub fn save(&self, rec: &ContainerRecord) -> Result<()> {
        self.write_record(rec, !rec.auto_remove)
    }

    /// Saves a state that is worthless after a reboot (running, with this pid): replaced
    /// atomically, but not forced to disk. After a power loss, the record says what it said before
    /// (created or exited), which `refresh` would conclude anyway.
    pub fn save_volatile(&self, rec: &ContainerRecord) -> Result<()> {
        self.write_record(rec, false)
    }

    fn write_record(&self, rec: &ContainerRecord, durable: bool) -> Result<()> {
        let data = serde_json::to_vec_pretty(rec).map_err(|e| Error::Invalid(e.to_string()))?;
        bulkhead_image::store::replace_file(&self.dir(&rec.id).join("record.json"), &data, durable).map_err(Error::from)
    }

    /// Finds a container by full id, unique id prefix, or name.
    pub fn find(&self, key: &str) -> Result<ContainerRecord> {
        let all = self.list()?;
        if let Some(r) = all.iter().find(|r| r.id == key || r.name == key) {
            return Ok(r.clone());
        }
        let matches: Vec<&ContainerRecord> = all.iter().filter(|r| key.len() >= 3 && r.id.starts_with(key)).collect();
        match matches.len() {
            1 => Ok(matches[0].clone()),
            0 => Err(Error::NotFound(format!("no such container: {key}"))),
            n => Err(Error::Invalid(format!("{key} matches {n} containers; give more of the id"))),
        }
    }

    /// Claims, for container `id` (whose directory must exist), a host id range that no other
    /// container on this host uses, whatever store it belongs to. Claims live in RANGE_REGISTRY, one
    /// file per range naming the store and container; a claim whose container directory is gone is
    /// stale and taken over. `taken` (this store's records) covers containers made before claims.
    /// Without `durable` (an `--rm` container) a power loss may lose the claim along with the
    /// container.
    pub fn allocate_host_id(&self, id: &str, taken: &[ContainerRecord], durable: bool) -> Result<u32> {
        let reg = Path::new(RANGE_REGISTRY);
        fs::create_dir_all(reg).map_err(|e| io(reg, e))?;
        set_mode(reg, 0o700)?;
        let _lock = lock_file(&reg.join(".lock"))?;
        // Under the registry's lock, so that two first runs do not both add the reservation.
        let (start, count) = crate::subid::reserved(&crate::subid::Files::from_env())?;
        let ranges = (count / u64::from(ID_RANGE)).min(u64::from(MAX_RANGES)) as u32;
        // Every range in use, as an interval: this store's records, and each claim whose
        // container still exists (claims made under another reservation may start anywhere).
        let mut used: Vec<u64> = taken.iter().filter_map(|r| r.host_id.map(u64::from)).collect();
        for e in fs::read_dir(reg).map_err(|e| io(reg, e))?.flatten() {
            let Some(h) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let owner = fs::read_to_string(e.path()).ok().and_then(|t| t.lines().next().map(PathBuf::from));
            if owner.is_some_and(|dir| dir.exists()) {
                used.push(u64::from(h));
            }
        }
        let size = u64::from(ID_RANGE);
        for k in 0..ranges {
            let h = start + u64::from(k) * size;
            if used.iter().any(|&u| u < h + size && h < u + size) {
                continue;
            }
            let h = h as u32;
            let claim = reg.join(h.to_string());
            let me = format!("{}\n", self.dir(id).display());
            bulkhead_image::store::replace_file(&claim, me.as_bytes(), durable)?;
            return Ok(h);
        }
        Err(Error::Invalid(format!(
            "no free user namespace id range left in {}'s {count} ids: remove containers or give it more in /etc/subuid and /etc/subgid",
            crate::subid::USER
        )))
    }

    /// Gives a container's range back (only if the claim is still this container's).
    fn release_host_id(&self, id: &str, host_id: u32) {
        let claim = Path::new(RANGE_REGISTRY).join(host_id.to_string());
        if fs::read_to_string(&claim).is_ok_and(|t| t.lines().next() == Some(&*self.dir(id).to_string_lossy())) {
            let _ = fs::remove_file(claim);
        }
    }

    /// A fresh, random 64-hex-character id.
    pub fn new_id() -> Result<String> {
        crate::fsutil::random_id()
    }

    /// The containers (any state) that mount volume `name`.
    pub fn volume_users(&self, name: &str) -> Result<Vec<String>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.volumes.iter().any(|v| v.name == name))
            .map(|r| r.name)
            .collect())
    }

    /// Takes the container-wide lock (creating, naming and removing containers are serialised).
    pub fn lock(&self) -> Result<fs::File> {
        lock_file(&self.dir.join(".lock"))
    }

    /// Prepares the directories and mounts the root filesystem of a new container.
    pub fn prepare_rootfs(&self, store: &Store, id: &str, layers: &[Digest], profile: &SecurityProfile) -> Result<()> {
        let dir = self.dir(id);
        for d in ["upper", "work", "bundle/rootfs", "exec"] {
            let p = dir.join(d);
            fs::create_dir_all(&p).map_err(|e| io(&p, e))?;
        }
        // Only root, and the container's own root (through its group), may pass: nobody else on the
        // host reaches its files (the upper directory's path shows in /proc/mounts to everyone).
        let gid = match profile.userns {
            UserNs::Private { host_id } => host_id,
            UserNs::Host => 0,
        };
        for d in [dir.clone(), self.bundle(id)] {
            rustix::fs::chown(&d, Some(rustix::fs::Uid::ROOT), Some(rustix::fs::Gid::from_raw(gid))).map_err(|e| io(&d, e))?;
            set_mode(&d, 0o710)?;
        }
        let init = self.init_layer(id, profile)?;
        let lowers: Vec<PathBuf> = std::iter::once(init)
            .chain(layers.iter().rev().map(|c| store.layer_diff(c)))
            .collect();
        match profile.userns {
            UserNs::Private { host_id } => {
                check_reachable(&self.rootfs(id), host_id)?;
                crate::idmap::chown_to(&dir.join("upper"), host_id)?;
                crate::idmap::chown_to(&dir.join("work"), host_id)?;
                let ns = crate::idmap::user_namespace(host_id, ID_RANGE)?;
                crate::idmap::mount_container_rootfs(&lowers, &dir.join("upper"), &dir.join("work"), &self.rootfs(id), Some(&ns))
            }
            UserNs::Host => crate::idmap::mount_container_rootfs(&lowers, &dir.join("upper"), &dir.join("work"), &self.rootfs(id), None),
        }
    }

    /// The container's init layer: a read-only layer just under its own, holding the mount points the
    /// runtime needs (as Docker's "-init" layer), so that they are neither created in the container's
    /// layer nor reported by `diff`.
    pub fn init_layer(&self, id: &str, profile: &SecurityProfile) -> Result<PathBuf> {
        let init = self.dir(id).join("init");
        let mut dirs = vec!["dev", "proc", "sys"];
        if profile.read_only_rootfs {
            dirs.extend(["tmp", "run", "var/tmp"]);
        }
        for d in dirs {
            let p = init.join(d);
            fs::create_dir_all(&p).map_err(|e| io(&p, e))?;
            set_mode(&p, 0o755)?;
        }
        Ok(init)
    }

    /// The lower layers of a container as `diff` should see them: its init layer, then the image's.
    pub fn lowers(&self, store: &Store, rec: &ContainerRecord) -> Vec<PathBuf> {
        std::iter::once(self.dir(&rec.id).join("init"))
            .chain(rec.layers.iter().rev().map(|c| store.layer_diff(c)))
            .collect()
    }

    /// Mounts the root filesystem of an existing container again (to start it once more).
    pub fn mount_rootfs(&self, store: &Store, rec: &ContainerRecord) -> Result<()> {
        let rootfs = self.rootfs(&rec.id);
        if bulkhead_image::mount::is_mount_point(&rootfs)? {
            return Ok(());
        }
        let dir = self.dir(&rec.id);
        let lowers = self.lowers(store, rec);
        match rec.host_id {
            Some(h) => {
                let ns = crate::idmap::user_namespace(h, ID_RANGE)?;
                crate::idmap::mount_container_rootfs(&lowers, &dir.join("upper"), &dir.join("work"), &rootfs, Some(&ns))?
            }
            None => crate::idmap::mount_container_rootfs(&lowers, &dir.join("upper"), &dir.join("work"), &rootfs, None)?,
        }
        let attached = Attachments::of(rec).attach(self, &rootfs);
        if attached.is_err() {
            let _ = self.unmount_rootfs(&rec.id);
        }
        attached
    }

    /// The store's root directory.
    pub fn store_root(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// The log of container `id`; one that is removed at its exit is not forced to disk.
    pub fn log_writer(&self, id: &str, auto_remove: bool) -> Result<crate::logs::LogWriter> {
        let log = crate::logs::LogWriter::open(
            &self.dir(id).join("logs"),
            crate::logs::DEFAULT_MAX_SIZE,
            crate::logs::DEFAULT_MAX_FILES,
        )?;
        Ok(if auto_remove { log.volatile() } else { log })
    }

    /// Unmounts the root filesystem if it is mounted.
    pub fn unmount_rootfs(&self, id: &str) -> Result<()> {
        let r = self.rootfs(id);
        if bulkhead_image::mount::is_mount_point(&r)? {
            match rustix::mount::unmount(&r, rustix::mount::UnmountFlags::DETACH) {
                // Unmounted in between by the container's shim finishing (`rm -f` races it).
                Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                Err(e) => return Err(io(&r, e)),
            }
        }
        Ok(())
    }

    /// Removes everything of a stopped container: mounts, cgroups (left behind when its shim was
    /// killed before the executor could clean up) and its directory.
    pub fn remove_dir(&self, id: &str) -> Result<()> {
        self.unmount_rootfs(id)?;
        // Whatever still runs in the container's cgroups is the container's (the first process of a
        // container whose CLI was killed mid-start waits forever for a parent that is gone).
        crate::cgroup::kill_processes(&crate::cgroup::path(id));
        crate::cgroup::remove(&crate::cgroup::path(id));
        // The id range goes back only once the files that its ids own are gone: if removal fails,
        // the container stays, with its range, for the next `rm` to finish.
        let host_id = self.load(id).ok().and_then(|r| r.host_id);
        let d = self.dir(id);
        bulkhead_image::unpack::remove_all_at(&rustix::fs::CWD, d.as_os_str()).map_err(|e| io(&d, e))?;
        if let Some(h) = host_id {
            self.release_host_id(id, h);
        }
        Ok(())
    }
}

/// The container's root is an unprivileged host user, which must be able to search every directory
/// on the way to its root filesystem; say which one it cannot, instead of failing inside the runtime.
fn check_reachable(rootfs: &Path, host_id: u32) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for dir in rootfs.ancestors().skip(1) {
        let Ok(md) = fs::metadata(dir) else { continue };
        let by_group = md.gid() == host_id && md.permissions().mode() & 0o010 != 0;
        if md.permissions().mode() & 0o001 == 0 && !by_group {
            return Err(Error::Invalid(format!(
                "{} is not searchable by other users (mode {:o}), but a container's root is an unprivileged host user that must reach its root filesystem: use a --root under searchable directories, or chmod o+x it",
                dir.display(),
                md.permissions().mode() & 0o7777
            )));
        }
    }
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(|e| io(p, e))
}
