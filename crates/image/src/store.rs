//! The content-addressed store on disk: verified blobs, image records and the reference table.
//!
//! ```text
//! <root>/lock                     flock: shared while adding content, exclusive while removing it
//! <root>/lock.intent              flock: held by a command waiting to remove, so new adders queue
//! <root>/tmp/                     staging on the same filesystem; anything here is garbage after a crash
//! <root>/blobs/<alg>/<hex>        manifests, configs and layers, only ever renamed in after verification
//! <root>/layers/<chain-hex>/      unpacked layers (see `layer`)
//! <root>/images/<alg>/<hex>.json  one record per image (by manifest digest), written after its content
//! <root>/refs.json                name:tag -> manifest digest, replaced atomically under refs.lock
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::limits::Limits;
use crate::reference::Reference;

/// An open store rooted at one directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    limits: Limits,
    /// Signs and checks the reference table (see [`crate::names`]); None: unsigned names.
    names_key: Option<crate::names::NamesKey>,
    /// How long to wait for the store's lock (None: for ever), and what to tell the user after a
    /// second of waiting.
    lock_wait: LockWait,
}

/// How a command waits for the store's lock.
#[derive(Clone, Copy, Debug, Default)]
pub struct LockWait {
    /// Give up after this long (`--lock-timeout`); None waits as long as it takes.
    pub timeout: Option<std::time::Duration>,
    /// Told, once, after a second of waiting, who holds the lock.
    pub notice: Option<fn(&str)>,
}

/// The processes that hold a lock on `f`'s file (from /proc/locks), with what they run.
fn lock_holders(f: &File) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok((dev, ino)) = f.metadata().map(|m| (m.dev(), m.ino())) else {
        return "another process".into();
    };
    // /proc/locks names the device as MAJOR:MINOR in hex.
    let dev_name = format!("{:02x}:{:02x}", rustix::fs::major(dev), rustix::fs::minor(dev));
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for line in fs::read_to_string("/proc/locks").unwrap_or_default().lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2b:5678 0 EOF" (a "->" marks a waiter).
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) == Some(&"->") {
            continue;
        }
        let (Some(pid), Some(dev_ino)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let (lock_dev, lock_ino) = dev_ino.rsplit_once(':').unwrap_or(("", ""));
        if lock_ino.parse::<u64>().ok() != Some(ino) || !lock_dev.eq_ignore_ascii_case(&dev_name) || *pid == me {
            continue;
        }
        let cmd = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                c.split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        // Another user's command line, shown on our terminal: no control characters.
        let cmd: String = cmd.chars().take(120).map(|c| if c.is_control() { '?' } else { c }).collect();
        let entry = format!("pid {pid} ({})", if cmd.is_empty() { "?" } else { &cmd });
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    if out.is_empty() {
        "another process".into()
    } else {
        out.join(", ")
    }
}

/// A held store lock; released when dropped.
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] File);

/// Store locks this process holds (see `Store::lock`).
static HELD_LOCKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for StoreLock {
    fn drop(&mut self) {
        HELD_LOCKS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What the store knows of one image, written once all of its content is in place.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// Digest of the manifest: the identity of the image in a registry.
    pub manifest: Digest,
    pub manifest_media_type: String,
    /// Digest of the config: the image id, as Docker shows it.
    pub config: Digest,
    /// The layers, bottom first.
    pub layers: Vec<LayerRef>,
    /// `os/arch[/variant]` from the config.
    pub platform: String,
    /// When this store first recorded the image.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

/// One layer of an image: the blob as distributed and the unpacked layer it became.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRef {
    pub blob: Digest,
    pub blob_size: u64,
    pub media_type: String,
    pub diff_id: Digest,
    pub chain_id: Digest,
}

#[derive(Default, Serialize, Deserialize)]
struct RefTable {
    refs: BTreeMap<String, Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<crate::names::NamesSignature>,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with_limits(root, Limits::default())
    }

    /// Opens the store with non-default unpacking limits.
    pub fn open_with_limits(root: impl Into<PathBuf>, limits: Limits) -> Result<Self> {
        let root = root.into();
        for d in ["", "tmp", "blobs/sha256", "layers", "images/sha256", "mounts", "leases"] {
            let p = root.join(d);
            fs::create_dir_all(&p).at(&p)?;
        }
        // The store holds other people's files with their owners and setuid bits: nobody else may
        // list or change it. Search (x) is left as it is: containers' unprivileged roots need it to
        // reach their root filesystems (the runtime sets 0711), and taking it away here would race
        // with a container being started by another command.
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&root).at(&root)?.permissions().mode() & 0o7777;
        let private = mode & !0o066;
        if private != mode {
            fs::set_permissions(&root, fs::Permissions::from_mode(private)).at(&root)?;
        }
        Ok(Store {
            root,
            limits,
            names_key: None,
            lock_wait: LockWait::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Taken by every command that adds to the store; many may hold it at once.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        self.lock(rustix::fs::FlockOperation::LockShared)
    }

    /// Taken by commands that remove content (rm, prune, repair), alone.
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        self.lock(rustix::fs::FlockOperation::LockExclusive)
    }

    /// How lock waits behave (see [`LockWait`]).
    pub fn with_lock_wait(mut self, wait: LockWait) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Takes the lock, polling: after a second the user is told which process holds it and what
    /// it runs, and past the timeout the command ends with one line naming it.
    ///
    /// Writers are not starved: flock(2) alone would let a stream of overlapping shared holders
    /// (pulls, runs) keep an exclusive waiter (prune, repair) out forever. A second file,
    /// `lock.intent`, orders them: an exclusive waiter holds it exclusively while it waits, and a
    /// new shared holder passes through it (shared) before taking the lock, so it queues behind
    /// a waiting writer. A process that holds the store's lock already takes it again without the
    /// intent step: waiting behind a writer that waits for us would never end.
    fn lock(&self, op: rustix::fs::FlockOperation) -> Result<StoreLock> {
        use rustix::fs::FlockOperation as F;
        let started = std::time::Instant::now();
        let mut told = false;
        let exclusive = op != F::LockShared;
        let intent = if HELD_LOCKS.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            let f = self.lock_file("lock.intent")?;
            let mode = if exclusive {
                F::NonBlockingLockExclusive
            } else {
                F::NonBlockingLockShared
            };
            self.poll_flock(&f, mode, started, &mut told, "lock.intent")?;
            Some(f)
        } else {
            None
        };
        let f = self.lock_file("lock")?;
        let mode = if exclusive {
            F::NonBlockingLockExclusive
        } else {
            F::NonBlockingLockShared
        };
        self.poll_flock(&f, mode, started, &mut told, "lock")?;
        drop(intent);
        HELD_LOCKS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(StoreLock(f))
    }

    /// Opens one of the store's lock files. Root's alone: any user who can open the file can hold
    /// a flock on it, and every command would wait behind them.
    fn lock_file(&self, name: &str) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.root.join(name);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            // Never blocks in open (a FIFO put there) nor follows a link.
            .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
            .open(&p)
            .at(&p)?;
        if !f.metadata().at(&p)?.is_file() {
            return Err(Error::invalid(format!("{}: not a regular file", p.display())));
        }
        rustix::fs::fchmod(&f, rustix::fs::Mode::from_raw_mode(0o600)).at(&p)?;
        Ok(f)
    }

    fn poll_flock(
        &self,
        f: &File,
        mode: rustix::fs::FlockOperation,
        started: std::time::Instant,
        told: &mut bool,
        name: &str,
    ) -> Result<()> {
        loop {
            match rustix::fs::flock(f, mode) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::WOULDBLOCK) => {}
                Err(e) => {
                    return Err(Error::Io {
                        path: self.root.join(name),
                        source: e.into(),
                    })
                }
            }
            // Whoever holds the intent file is a command waiting its turn for the lock itself.
            let holders = || {
                let h = lock_holders(f);
                if name == "lock" {
                    h
                } else {
                    format!("{h}, waiting to change the store")
                }
            };
            let waited = started.elapsed();
            if let Some(limit) = self.lock_wait.timeout {
                if waited >= limit {
                    return Err(Error::Conflict(format!(
                        "the store {} is locked by {}; gave up after {} s (--lock-timeout)",
                        self.root.display(),
                        holders(),
                        limit.as_secs()
                    )));
                }
            }
            if !*told && waited >= std::time::Duration::from_secs(1) {
                *told = true;
                if let Some(notice) = self.lock_wait.notice {
                    notice(&format!("waiting for the store's lock, held by {}", holders()));
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// A fresh staging directory on the store's filesystem, removed when dropped.
    pub fn staging(&self) -> Result<tempfile::TempDir> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new().prefix("stage-").tempdir_in(&tmp).at(&tmp)
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.algorithm().name()).join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Copies `reader` into the store as blob `expected`, checking digest and size before it becomes
    /// visible. Returns the size. If the blob is present already, `reader` is not read.
    pub fn put_blob(&self, reader: impl Read, expected: &Digest, expected_size: Option<u64>) -> Result<u64> {
        let dest = self.blob_path(expected);
        if let Ok(md) = fs::metadata(&dest) {
            if let Some(s) = expected_size {
                if md.len() != s {
                    return Err(Error::Mismatch {
                        what: format!("size of blob {expected}"),
                        expected: s.to_string(),
                        actual: md.len().to_string(),
                    });
                }
            }
            return Ok(md.len());
        }
        let tmp_dir = self.root.join("tmp");
        let tmp = tempfile::Builder::new().prefix("blob-").tempfile_in(&tmp_dir).at(&tmp_dir)?;
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp), expected.algorithm());
        // Read one byte past the promised size, to notice a blob that is longer than it should be.
        let copied = match expected_size {
            Some(s) => io::copy(&mut reader.take(s.saturating_add(1)), &mut w),
            None => io::copy(&mut { reader }, &mut w),
        };
        copied.map_err(|e| Error::invalid(format!("reading blob {expected}: {e}")))?;
        let (buf, digest, size) = w.finish();
        if let Some(s) = expected_size {
            if size != s {
                return Err(Error::Mismatch {
                    what: format!("size of blob {expected}"),
                    expected: s.to_string(),
                    actual: size.to_string(),
                });
            }
        }
        if &digest != expected {
            return Err(Error::Mismatch {
                what: "blob digest".into(),
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        let tmp = buf.into_inner().map_err(|e| e.into_error()).at(&tmp_dir)?;
        self.publish(tmp, &dest)?;
        Ok(size)
    }

    /// Stores content that we produced ourselves (a manifest or config we wrote), returning its digest.
    pub fn write_blob(&self, data: &[u8]) -> Result<Digest> {
        let d = Digest::sha256_of(data);
        self.put_blob(data, &d, Some(data.len() as u64))?;
        Ok(d)
    }

    /// Streams content we produce into a new blob; the digest is known only at the end.
    pub fn write_blob_with(&self, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<(Digest, u64)> {
        let tmp_dir = self.root.join("tmp");
        let tmp = tempfile::Builder::new().prefix("blob-").tempfile_in(&tmp_dir).at(&tmp_dir)?;
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp), Algorithm::Sha256);
        f(&mut w)?;
        let (buf, digest, size) = w.finish();
        let tmp = buf.into_inner().map_err(|e| e.into_error()).at(&tmp_dir)?;
        let dest = self.blob_path(&digest);
        if !dest.exists() {
            self.publish(tmp, &dest)?;
        }
        Ok((digest, size))
    }

    fn publish(&self, tmp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
        tmp.as_file().sync_all().at(tmp.path())?;
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).at(&parent)?;
        tmp.persist(dest).map_err(|e| e.error).at(dest)?;
        fsync_dir(&parent)
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("blob {d} is not in the store")),
            _ => Error::Io { path: p, source: e },
        })
    }

    /// Reads a small blob (a manifest or config) whole, checking its digest again on the way.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let f = self.open_blob(d)?;
        let mut data = Vec::new();
        f.take(self.limits.max_json_bytes + 1)
            .read_to_end(&mut data)
            .at(self.blob_path(d))?;
        if data.len() as u64 > self.limits.max_json_bytes {
            return Err(Error::invalid(format!(
                "blob {d} is larger than {} bytes",
                self.limits.max_json_bytes
            )));
        }
        d.verify(&data, "stored blob (run `bulkhead system check --repair`)")?;
        Ok(data)
    }

    /// Every blob digest in the store.
    pub fn list_blobs(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.root.join("blobs").join(alg.name());
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd {
                let e = e.at(&dir)?;
                if let Some(d) = e.file_name().to_str().and_then(|n| Digest::new(alg, n).ok()) {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    // ---- image records ----

    fn image_path(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("images")
            .join(manifest.algorithm().name())
            .join(format!("{}.json", manifest.hex()))
    }

    /// Writes an image record; its content must be in the store already.
    pub fn put_image(&self, rec: &ImageRecord) -> Result<()> {
        let data = serde_json::to_vec_pretty(rec).map_err(|e| Error::invalid(e.to_string()))?;
        atomic_write(&self.image_path(&rec.manifest), &data)
    }

    /// The record of image `manifest`, authenticated against the manifest and config blobs.
    pub fn get_image(&self, manifest: &Digest) -> Result<Option<ImageRecord>> {
        let p = self.image_path(manifest);
        let Some(rec) = read_json_optional::<ImageRecord>(&p, "image record")? else {
            return Ok(None);
        };
        if &rec.manifest != manifest {
            return Err(self.forged(manifest, "it names another manifest"));
        }
        self.authenticate(&rec)?;
        Ok(Some(rec))
    }

    /// A record is a cache of what its manifest says, and the file is as writable as any other in
    /// the store: whoever edits one could otherwise start another image's layers under a name whose
    /// signature verifies (the signature covers the manifest digest). So every read derives the
    /// config digest, the layer blobs, diff_ids and chain ids again from the manifest and config
    /// blobs (whose digests are checked on the way; both are small) and refuses a record that
    /// differs.
    fn authenticate(&self, rec: &ImageRecord) -> Result<()> {
        let data = self.read_blob(&rec.manifest)?;
        let m = crate::spec::parse_manifest(&data, Some(&rec.manifest_media_type))?;
        if m.config_digest != rec.config {
            return Err(self.forged(&rec.manifest, "its config differs"));
        }
        if m.layers.len() != rec.layers.len() || m.layers.iter().zip(&rec.layers).any(|((_, b), l)| b != &l.blob) {
            return Err(self.forged(&rec.manifest, "its layers differ"));
        }
        let cfg = crate::spec::parse_config(&self.read_blob(&rec.config)?, m.layers.len())?;
        let chains = crate::layer::chain_ids(&cfg.diff_ids);
        for (i, l) in rec.layers.iter().enumerate() {
            if l.diff_id != cfg.diff_ids[i] || l.chain_id != chains[i] {
                return Err(self.forged(&rec.manifest, "its layer digests differ"));
            }
        }
        Ok(())
    }

    fn forged(&self, manifest: &Digest, what: &str) -> Error {
        Error::invalid(format!(
            "the store's record of image {manifest} does not match its manifest ({what}): it was edited; run `bulkhead system check --repair`"
        ))
    }

    pub fn remove_image_record(&self, manifest: &Digest) -> Result<()> {
        let p = self.image_path(manifest);
        match fs::remove_file(&p) {
            Ok(()) => fsync_dir(p.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io { path: p, source: e }),
        }
    }

    /// Every image record; a record that cannot be read is returned as an error next to the others.
    pub fn list_images(&self) -> Result<Vec<std::result::Result<ImageRecord, (PathBuf, String)>>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.root.join("images").join(alg.name());
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd {
                let e = e.at(&dir)?;
                let p = e.path();
                if p.extension().and_then(|x| x.to_str()) != Some("json") {
                    continue;
                }
                let rec = fs::read(&p)
                    .map_err(|e| e.to_string())
                    .and_then(|d| serde_json::from_slice::<ImageRecord>(&d).map_err(|e| e.to_string()))
                    .and_then(|rec| {
                        if p.file_stem().and_then(|s| s.to_str()) != Some(rec.manifest.hex()) {
                            return Err(self.forged(&rec.manifest, "it is stored under another name").to_string());
                        }
                        self.authenticate(&rec).map(|()| rec).map_err(|e| e.to_string())
                    });
                out.push(rec.map_err(|e| (p, e)));
            }
        }
        Ok(out)
    }

    // ---- leases: who else (a container) keeps an image alive ----

    /// Records that `holder` (a container id) uses the image `manifest`: it is not removed or pruned
    /// while the lease exists. Without `durable` (an `--rm` container), a power loss may lose it.
    pub fn add_lease(&self, holder: &str, manifest: &Digest, durable: bool) -> Result<()> {
        if holder.is_empty() || !holder.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Error::invalid(format!("invalid lease holder {holder:?}")));
        }
        replace_file(&self.root.join("leases").join(holder), manifest.to_string().as_bytes(), durable)
    }

    pub fn remove_lease(&self, holder: &str) -> Result<()> {
        let p = self.root.join("leases").join(holder);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io { path: p, source: e }),
        }
    }

    /// holder -> image manifest, for every lease.
    pub fn leases(&self) -> Result<BTreeMap<String, Digest>> {
        let dir = self.root.join("leases");
        let mut out = BTreeMap::new();
        let Ok(rd) = fs::read_dir(&dir) else { return Ok(out) };
        for e in rd {
            let e = e.at(&dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let text = fs::read_to_string(e.path()).at(e.path())?;
            if let Ok(d) = text.trim().parse::<Digest>() {
                out.insert(name, d);
            }
        }
        Ok(out)
    }

    // ---- references ----

    /// The reference table: full `name:tag` -> manifest digest.
    pub fn refs(&self) -> Result<BTreeMap<String, Digest>> {
        let p = self.root.join("refs.json");
        let table = read_json_optional::<RefTable>(&p, "reference table")?.unwrap_or_default();
        // No names (a missing table included) is nothing to redirect: only names are checked.
        if let (Some(k), false) = (&self.names_key, table.refs.is_empty()) {
            k.verify(&names_bytes(&table.refs)?, table.signature.as_ref())?;
        }
        Ok(table.refs)
    }

    /// Signs the reference table with `key` from now on, and checks it when reading.
    pub fn with_names_key(mut self, key: crate::names::NamesKey) -> Self {
        self.names_key = Some(key);
        self
    }

    /// Changes the reference table under its lock and replaces it atomically.
    pub fn update_refs<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Digest>) -> Result<T>) -> Result<T> {
        let lp = self.root.join("refs.lock");
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lp).at(&lp)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).at(&lp)?;
        let mut refs = self.refs()?;
        let out = f(&mut refs)?;
        let signature = match &self.names_key {
            Some(k) => Some(k.sign(&names_bytes(&refs)?)?),
            None => None,
        };
        let data = serde_json::to_vec_pretty(&RefTable { refs, signature }).map_err(|e| Error::invalid(e.to_string()))?;
        atomic_write(&self.root.join("refs.json"), &data)?;
        if let Some(k) = &self.names_key {
            k.committed()?;
        }
        Ok(out)
    }

    /// Points `reference` (which must carry a tag) at `manifest`.
    pub fn tag(&self, reference: &Reference, manifest: &Digest) -> Result<()> {
        let key = tag_key(reference)?;
        self.update_refs(|refs| {
            refs.insert(key, manifest.clone());
            Ok(())
        })
    }
}

/// The bytes the names signature is over: the table in its (sorted) JSON form.
fn names_bytes(refs: &BTreeMap<String, Digest>) -> Result<Vec<u8>> {
    serde_json::to_vec(refs).map_err(|e| Error::invalid(e.to_string()))
}

/// The key of a tagged reference in the table.
pub fn tag_key(reference: &Reference) -> Result<String> {
    match reference.tag() {
        Some(t) => Ok(format!("{}:{t}", reference.name())),
        None => Err(Error::InvalidReference {
            input: reference.to_string(),
            reason: "a tag is needed here".into(),
        }),
    }
}

/// Writes `data` to `path` so that readers see either the old file or the new one, never a mix,
/// and the new one survives a crash once this returns.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    replace_file(path, data, true)
}

/// As [`atomic_write`]; without `durable`, readers still see the old file or the new one, never a
/// mix, but a power loss may leave the old one (for state that is worthless after a reboot, such
/// as the records of an `--rm` container, and that costs no fsync on the way to a container).
pub fn replace_file(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::invalid(format!("{} has no parent", path.display())))?;
    fs::create_dir_all(dir).at(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).at(dir)?;
    tmp.write_all(data).at(tmp.path())?;
    if durable {
        tmp.as_file().sync_all().at(tmp.path())?;
    }
    tmp.persist(path).map_err(|e| e.error).at(path)?;
    if durable {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Makes a rename or removal in `dir` durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Reads a JSON record of ours, or None if the file does not exist; `what` names it in errors.
pub(crate) fn read_json_optional<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(d) => serde_json::from_slice(&d)
            .map(Some)
            .map_err(|e| Error::invalid(format!("{}: corrupt {what}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            path: path.into(),
            source: e,
        }),
    }
}

impl Store {
    /// How a stored layer blob is compressed, from its first bytes.
    pub fn sniff_compression(&self, d: &Digest) -> Result<crate::limits::Compression> {
        let mut head = [0u8; 4];
        let n = self.open_blob(d)?.read(&mut head).at(self.blob_path(d))?;
        Ok(crate::limits::Compression::detect(&head[..n]))
    }
}
