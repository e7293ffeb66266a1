//! One TUF repository per image repository: root, targets, snapshot and timestamp roles, each with
//! its keys and threshold; a target per tag whose hash and length are the manifest's. Made and
//! signed here with tough's editor (the root by hand: tough has no root builder), verified with
//! tough's loader, which walks the root chain, checks thresholds, expiry, and versions against what
//! the client trusted before (its datastore).

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use bulkhead_image::Digest;
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::KeySource;
use tough::schema::{Hashes, KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::{ExpirationEnforcement, RepositoryLoader, TargetName};

use crate::keys::{MemoryKeySource, PrivateKey};
use crate::{Error, Result};

/// How long each role's metadata stays valid (TUF's defaults for a registry: the timestamp is
/// re-signed often, the root rarely).
#[derive(Clone, Debug)]
pub struct Expiry {
    pub root: jiff::SignedDuration,
    pub targets: jiff::SignedDuration,
    pub snapshot: jiff::SignedDuration,
    pub timestamp: jiff::SignedDuration,
}

impl Default for Expiry {
    fn default() -> Self {
        let days = |d: i64| jiff::SignedDuration::from_hours(24 * d);
        Expiry {
            root: days(365),
            targets: days(90),
            snapshot: days(30),
            timestamp: days(7),
        }
    }
}

/// The keys and threshold of one role.
#[derive(Clone, Debug)]
pub struct RoleSpec {
    pub keys: Vec<Arc<PrivateKey>>,
    pub threshold: u64,
}

/// The four top-level roles of a new repository.
#[derive(Clone, Debug)]
pub struct Roles {
    pub root: RoleSpec,
    pub targets: RoleSpec,
    pub snapshot: RoleSpec,
    pub timestamp: RoleSpec,
}

/// What a tag resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub digest: Digest,
    pub length: u64,
    pub custom: HashMap<String, serde_json::Value>,
    /// The roles whose verified metadata names this very target (`targets`, or a delegated role
    /// trusted for the tag's path): what a policy can require.
    pub signed_by: Vec<String>,
}

/// An expiry `d` from `now`, in whole seconds: the TUF specification's date format has none finer
/// (python-tuf refuses fractions).
fn expires(now: jiff::Timestamp, d: jiff::SignedDuration) -> jiff::Timestamp {
    jiff::Timestamp::from_second((now + d).as_second()).unwrap_or(now)
}

fn tuf(e: impl std::fmt::Display) -> Error {
    // tough's messages carry the role, version and date at fault; keep them on one line.
    Error::Metadata(e.to_string().replace('\n', " "))
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Metadata(format!("runtime: {e}")))
}

fn sources(keys: &[Arc<PrivateKey>]) -> Vec<Box<dyn KeySource>> {
    keys.iter()
        .map(|k| Box::new(MemoryKeySource(k.clone())) as Box<dyn KeySource>)
        .collect()
}

/// tough's file transport reads through tokio::fs, one blocking-pool hand-off per chunk (about 600
/// thread wake-ups to load 1,000 targets): metadata files are small, so this one reads each whole,
/// at once.
#[derive(Clone, Copy, Debug)]
struct WholeFiles;

#[async_trait::async_trait]
impl tough::Transport for WholeFiles {
    async fn fetch(&self, url: url::Url) -> std::result::Result<tough::TransportStream, tough::TransportError> {
        use tough::{TransportError, TransportErrorKind};
        if url.scheme() != "file" {
            return Err(TransportError::new(TransportErrorKind::UnsupportedUrlScheme, url));
        }
        let path = url
            .to_file_path()
            .map_err(|_| TransportError::new(TransportErrorKind::Other, url.as_str()))?;
        match std::fs::read(&path) {
            Ok(data) => Ok(Box::pin(futures_util::stream::once(async move { Ok(bytes::Bytes::from(data)) }))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(TransportError::new_with_cause(TransportErrorKind::FileNotFound, url, e))
            }
            Err(e) => Err(TransportError::new_with_cause(TransportErrorKind::Other, url, e)),
        }
    }
}

fn dir_url(dir: &Path) -> Result<url::Url> {
    let abs = std::path::absolute(dir).map_err(|e| Error::Metadata(format!("{}: {e}", dir.display())))?;
    url::Url::from_directory_path(&abs).map_err(|_| Error::Metadata(format!("{} is not a usable directory", abs.display())))
}

/// The newest root in `dir` (`N.root.json` with the highest N).
pub fn latest_root(dir: &Path) -> Result<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(dir).map_err(|e| Error::Metadata(format!("{}: {e}", dir.display())))? {
        let e = e.map_err(|e| Error::Metadata(e.to_string()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(".root.json").and_then(|v| v.parse::<u64>().ok()) {
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, e.path()));
            }
        }
    }
    best.map(|(_, p)| p)
        .ok_or_else(|| Error::Metadata(format!("{}: no N.root.json", dir.display())))
}

/// Creates a repository's metadata in `dir`: `1.root.json` signed by the root keys, and empty
/// targets, snapshot and timestamp at version 1.
pub fn init(dir: &Path, roles: &Roles, expiry: &Expiry) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Metadata(format!("{}: {e}", dir.display())))?;
    let now = jiff::Timestamp::now();
    let mut keys = HashMap::new();
    let mut role_keys = HashMap::new();
    for (role, spec) in [
        (RoleType::Root, &roles.root),
        (RoleType::Targets, &roles.targets),
        (RoleType::Snapshot, &roles.snapshot),
        (RoleType::Timestamp, &roles.timestamp),
    ] {
        let threshold = NonZeroU64::new(spec.threshold).ok_or_else(|| Error::Metadata(format!("{role}: a threshold of 0")))?;
        if (spec.keys.len() as u64) < spec.threshold {
            return Err(Error::Metadata(format!(
                "{role}: threshold {} with only {} key(s)",
                spec.threshold,
                spec.keys.len()
            )));
        }
        let mut ids = Vec::new();
        for k in &spec.keys {
            let tk = k.tuf_key()?;
            let id = tk.key_id().map_err(tuf)?;
            keys.insert(id.clone(), tk);
            ids.push(id);
        }
        role_keys.insert(
            role,
            RoleKeys {
                keyids: ids,
                threshold,
                _extra: HashMap::new(),
            },
        );
    }
    let root = Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: false,
        version: NonZeroU64::MIN,
        expires: expires(now, expiry.root),
        keys,
        roles: role_keys,
        _extra: HashMap::new(),
    };
    let rt = runtime()?;
    rt.block_on(async {
        let rng = SystemRandom::new();
        let signed = SignedRole::new(root.clone(), &KeyHolder::Root(root), &sources(&roles.root.keys), &rng)
            .await
            .map_err(tuf)?;
        let root_path = dir.join("1.root.json");
        std::fs::write(&root_path, signed.buffer()).map_err(|e| Error::Metadata(format!("{}: {e}", root_path.display())))?;
        let mut editor = RepositoryEditor::new(&root_path).await.map_err(tuf)?;
        editor
            .targets_version(NonZeroU64::MIN)
            .map_err(tuf)?
            .targets_expires(expires(now, expiry.targets))
            .map_err(tuf)?
            .snapshot_version(NonZeroU64::MIN)
            .snapshot_expires(expires(now, expiry.snapshot))
            .timestamp_version(NonZeroU64::MIN)
            .timestamp_expires(expires(now, expiry.timestamp));
        let all: Vec<Arc<PrivateKey>> = [&roles.targets, &roles.snapshot, &roles.timestamp]
            .iter()
            .flat_map(|r| r.keys.iter().cloned())
            .collect();
        let repo = editor.sign(&sources(&all)).await.map_err(tuf)?;
        write_atomically(&repo, dir).await
    })
}

/// Rotates the root keys: root version N+1 lists `new_keys` (with `threshold`) for the root role
/// and is signed by both the old root keys (`old_keys`, which the clients trust) and the new ones,
/// as TUF requires of every step of the root chain. Written as `N+1.root.json`.
pub fn rotate_root(dir: &Path, old_keys: &[Arc<PrivateKey>], new_keys: &[Arc<PrivateKey>], threshold: u64, expiry: &Expiry) -> Result<()> {
    let (version, data) = next_root(dir, RoleType::Root, old_keys, new_keys, threshold, expiry)?;
    let path = dir.join(format!("{version}.root.json"));
    let tmp = dir.join(format!(".{version}.root.json.tmp"));
    std::fs::write(&tmp, &data)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::Metadata(format!("{}: {e}", path.display())))
}

/// Rotates the keys of an online role (targets, snapshot or timestamp): root version N+1 lists
/// `new_keys` (with `threshold`) for it, signed by the current root keys `root_keys`, and every
/// online role is signed anew under it with `online_keys` (which hold the new keys), in one step:
/// metadata signed by a retired key never stands beside a root that retired it.
pub fn rotate(
    dir: &Path,
    role: RoleType,
    root_keys: &[Arc<PrivateKey>],
    new_keys: &[Arc<PrivateKey>],
    threshold: u64,
    online_keys: &[Arc<PrivateKey>],
    expiry: &Expiry,
) -> Result<()> {
    if role == RoleType::Root {
        return rotate_root(dir, root_keys, new_keys, threshold, expiry);
    }
    let (_, data) = next_root(dir, role, root_keys, new_keys, threshold, expiry)?;
    let staged = tempfile::NamedTempFile::new().map_err(|e| Error::Metadata(format!("a temporary file: {e}")))?;
    std::fs::write(staged.path(), &data).map_err(|e| Error::Metadata(format!("{}: {e}", staged.path().display())))?;
    runtime()?.block_on(async {
        // Loaded under the current root; signed under the new one.
        let (_, repo) = load_for_edit(dir).await?;
        let next = |v: NonZeroU64| v.checked_add(1).ok_or_else(|| Error::Metadata("version overflow".into()));
        let (tv, sv, tsv) = (
            next(repo.targets().signed.version)?,
            next(repo.snapshot().signed.version)?,
            next(repo.timestamp().signed.version)?,
        );
        let mut editor = RepositoryEditor::from_repo(staged.path(), repo).await.map_err(tuf)?;
        editor
            .targets_version(tv)
            .map_err(tuf)?
            .targets_expires(expires(jiff::Timestamp::now(), expiry.targets))
            .map_err(tuf)?;
        sign_and_write(editor, sv, tsv, online_keys, expiry, dir).await
    })
}

/// Root version N+1 with `new_keys` (and `threshold`) for `role`, signed by the current root keys
/// `old_keys` and, when the root role itself rotates, by the new keys too.
fn next_root(
    dir: &Path,
    role: RoleType,
    old_keys: &[Arc<PrivateKey>],
    new_keys: &[Arc<PrivateKey>],
    threshold: u64,
    expiry: &Expiry,
) -> Result<(u64, Vec<u8>)> {
    let latest = latest_root(dir)?;
    let old: tough::schema::Signed<Root> =
        serde_json::from_slice(&std::fs::read(&latest).map_err(|e| Error::Metadata(format!("{}: {e}", latest.display())))?)
            .map_err(|e| Error::Metadata(format!("{}: {e}", latest.display())))?;
    let threshold = NonZeroU64::new(threshold).ok_or_else(|| Error::Metadata(format!("{role}: a threshold of 0")))?;
    if (new_keys.len() as u64) < threshold.get() {
        return Err(Error::Metadata(format!(
            "{role}: threshold {threshold} with only {} key(s)",
            new_keys.len()
        )));
    }
    let mut root = old.signed.clone();
    root.version = root
        .version
        .checked_add(1)
        .ok_or_else(|| Error::Metadata("version overflow".into()))?;
    root.expires = expires(jiff::Timestamp::now(), expiry.root);
    let mut ids = Vec::new();
    for k in new_keys {
        let tk = k.tuf_key()?;
        let id = tk.key_id().map_err(tuf)?;
        root.keys.insert(id.clone(), tk);
        ids.push(id);
    }
    let retired: Vec<_> = root.roles.get(&role).map(|r| r.keyids.clone()).unwrap_or_default();
    root.roles.insert(
        role,
        RoleKeys {
            keyids: ids,
            threshold,
            _extra: HashMap::new(),
        },
    );
    // Keys no role lists any more leave the root.
    for id in retired {
        if !root.roles.values().any(|r| r.keyids.contains(&id)) {
            root.keys.remove(&id);
        }
    }
    let rng = SystemRandom::new();
    // The new root keys sign the new root; for another role, the root keys are unchanged.
    let new_root_keys = if role == RoleType::Root { new_keys } else { old_keys };
    let (by_new, by_old) = runtime()?.block_on(async {
        let by_new = SignedRole::new(root.clone(), &KeyHolder::Root(root.clone()), &sources(new_root_keys), &rng)
            .await
            .map_err(tuf)?;
        let by_old = SignedRole::new(root.clone(), &KeyHolder::Root(old.signed.clone()), &sources(old_keys), &rng)
            .await
            .map_err(tuf)?;
        Ok::<_, Error>((by_new, by_old))
    })?;
    let mut signed = by_new.signed().clone();
    for sig in &by_old.signed().signatures {
        if !signed.signatures.iter().any(|s| s.keyid == sig.keyid) {
            signed.signatures.push(sig.clone());
        }
    }
    let data = serde_json::to_vec(&signed).map_err(|e| Error::Metadata(e.to_string()))?;
    Ok((root.version.get(), data))
}

/// Delegates the tags matching `patterns` (shell-style, e.g. `1.*`) to a new targets role `role`
/// with `signers` (whose keys are needed to sign its first, empty version) and `threshold`; the
/// top-level targets (with `keys`' targets key), snapshot and timestamp are signed anew.
pub fn add_delegation(
    dir: &Path,
    role: &str,
    patterns: &[String],
    signers: &[Arc<PrivateKey>],
    threshold: u64,
    keys: &[Arc<PrivateKey>],
    expiry: &Expiry,
) -> Result<()> {
    use tough::schema::{PathPattern, PathSet};
    let threshold = NonZeroU64::new(threshold).ok_or_else(|| Error::Metadata(format!("{role}: a threshold of 0")))?;
    let paths = patterns
        .iter()
        .map(|p| PathPattern::new(p.as_str()).map_err(tuf))
        .collect::<Result<Vec<_>>>()?;
    let role = role.to_owned();
    let signers = sources(signers);
    let until = expires(jiff::Timestamp::now(), expiry.targets);
    edit(dir, keys, expiry, move |editor| {
        Box::pin(async move {
            editor
                .delegate_role(&role, &signers, PathSet::Paths(paths), false, threshold, until, NonZeroU64::MIN)
                .await
                .map_err(tuf)?;
            Ok(())
        })
    })
}

/// Signs tag `name` in the delegated role `role` with that role's keys (`role_keys`); snapshot
/// and timestamp are signed anew with `keys` (no top-level targets key is needed). A tag outside
/// the role's patterns is refused.
#[allow(clippy::too_many_arguments)]
pub fn sign_delegated_target(
    dir: &Path,
    role: &str,
    name: &str,
    digest: &Digest,
    length: u64,
    role_keys: &[Arc<PrivateKey>],
    keys: &[Arc<PrivateKey>],
    expiry: &Expiry,
) -> Result<()> {
    crate::threshold::sign_delegated(
        dir,
        role,
        &[(name.to_owned(), digest.clone(), length, HashMap::new())],
        role_keys,
        keys,
        expiry,
    )
}

/// The end of every edit: new snapshot and timestamp versions, everything signed with `keys`,
/// written atomically into `dir`.
async fn sign_and_write(
    mut editor: RepositoryEditor,
    snapshot: NonZeroU64,
    timestamp: NonZeroU64,
    keys: &[Arc<PrivateKey>],
    expiry: &Expiry,
    dir: &Path,
) -> Result<()> {
    let now = jiff::Timestamp::now();
    let before = std::fs::read(dir.join("snapshot.json")).ok();
    editor
        .snapshot_version(snapshot)
        .snapshot_expires(expires(now, expiry.snapshot))
        .timestamp_version(timestamp)
        .timestamp_expires(expires(now, expiry.timestamp));
    let signed = editor.sign(&sources(keys)).await.map_err(tuf)?;
    write_atomically(&signed, dir).await?;
    // tough's editor lists only the roles delegated now; TUF clients refuse a snapshot that drops
    // a file the previous one listed (a removed signer's), so such entries are carried over.
    if let Some(before) = before {
        crate::threshold::keep_snapshot_entries(dir, &before, keys).await?;
    }
    Ok(())
}

/// `trust timestamp refresh`: a new timestamp version with a fresh expiry, signed by the timestamp
/// keys alone (what a cron job or CI holds), the snapshot it names unchanged.
pub fn refresh_timestamp(dir: &Path, keys: &[Arc<PrivateKey>], expiry: &Expiry) -> Result<u64> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| Error::Metadata(format!("{}: {e}", p.display())))
    };
    let root: tough::schema::Signed<Root> =
        serde_json::from_slice(&read(&latest_root(dir)?.file_name().unwrap_or_default().to_string_lossy())?)
            .map_err(|e| Error::Metadata(format!("root: {e}")))?;
    let ts: tough::schema::Signed<tough::schema::Timestamp> =
        serde_json::from_slice(&read("timestamp.json")?).map_err(|e| Error::Metadata(format!("timestamp: {e}")))?;
    let mut next = ts.signed.clone();
    next.version = next
        .version
        .checked_add(1)
        .ok_or_else(|| Error::Metadata("version overflow".into()))?;
    next.expires = expires(jiff::Timestamp::now(), expiry.timestamp);
    let version = next.version.get();
    let signed = runtime()?.block_on(async {
        SignedRole::new(next, &KeyHolder::Root(root.signed), &sources(keys), &SystemRandom::new())
            .await
            .map_err(tuf)
    })?;
    let path = dir.join("timestamp.json");
    let tmp = dir.join(".timestamp.json.tmp");
    std::fs::write(&tmp, signed.buffer())
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::Metadata(format!("{}: {e}", path.display())))?;
    Ok(version)
}

/// Writes signed metadata into `dir` so that a reader (or a crash) sees each file old or new, never
/// cut short: tough writes files in place, so it writes into a staging directory first, and each
/// file is then renamed over the old one.
async fn write_atomically(signed: &tough::editor::signed::SignedRepository, dir: &Path) -> Result<()> {
    let staging = dir.join(".staging");
    let _ = std::fs::remove_dir_all(&staging);
    signed.write(&staging).await.map_err(tuf)?;
    let io = |p: &Path, e: std::io::Error| Error::Metadata(format!("{}: {e}", p.display()));
    for e in std::fs::read_dir(&staging).map_err(|e| io(&staging, e))? {
        let e = e.map_err(|e| io(&staging, e))?;
        std::fs::File::open(e.path())
            .and_then(|f| f.sync_all())
            .map_err(|err| io(&e.path(), err))?;
        std::fs::rename(e.path(), dir.join(e.file_name())).map_err(|err| io(&e.path(), err))?;
    }
    std::fs::remove_dir(&staging).map_err(|e| io(&staging, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))
}

/// Loads the repository in `dir` as its owner does to edit it (expiry not enforced: refreshing
/// expired metadata is what editing is for).
async fn load_for_edit(dir: &Path) -> Result<(PathBuf, tough::Repository)> {
    let root_path = latest_root(dir)?;
    let root = std::fs::read(&root_path).map_err(|e| Error::Metadata(format!("{}: {e}", root_path.display())))?;
    let url = dir_url(dir)?;
    let repo = RepositoryLoader::new(&root, url.clone(), url)
        .transport(WholeFiles)
        .expiration_enforcement(ExpirationEnforcement::Unsafe)
        .load()
        .await
        .map_err(tuf)?;
    Ok((root_path, repo))
}

/// Adds (or replaces) target `name` = the manifest `digest` of `length` bytes, and signs new
/// targets, snapshot and timestamp versions with `keys`.
pub fn sign_target(
    dir: &Path,
    name: &str,
    digest: &Digest,
    length: u64,
    custom: HashMap<String, serde_json::Value>,
    keys: &[Arc<PrivateKey>],
    expiry: &Expiry,
) -> Result<()> {
    sign_targets(dir, &[(name.to_owned(), digest.clone(), length, custom)], keys, expiry)
}

/// The TUF target for a manifest: its sha256 and length.
pub(crate) fn target_of(digest: &Digest, length: u64, custom: HashMap<String, serde_json::Value>) -> Result<Target> {
    if digest.algorithm() != bulkhead_image::digest::Algorithm::Sha256 {
        return Err(Error::Metadata(format!("{digest}: targets are named by sha256")));
    }
    Ok(Target {
        length,
        hashes: Hashes {
            sha256: hex::decode(digest.hex()).map_err(|e| Error::Metadata(e.to_string()))?.into(),
            _extra: HashMap::new(),
        },
        custom,
        _extra: HashMap::new(),
    })
}

/// A tag to sign: its name, manifest digest and length, and custom fields.
pub type NewTarget = (String, Digest, u64, HashMap<String, serde_json::Value>);

/// [`sign_target`] for several tags at once (one new version of each role).
pub fn sign_targets(dir: &Path, targets: &[NewTarget], keys: &[Arc<PrivateKey>], expiry: &Expiry) -> Result<()> {
    let mut made = Vec::new();
    for (name, digest, length, custom) in targets {
        let target = target_of(digest, *length, custom.clone())?;
        made.push((TargetName::new(name.as_str()).map_err(tuf)?, target));
    }
    edit(dir, keys, expiry, |editor| {
        Box::pin(async move {
            for (name, target) in made {
                editor.add_target(name, target).map_err(tuf)?;
            }
            Ok(())
        })
    })
}

/// Removes target `name` (a revoked tag) and signs new versions.
pub fn remove_target(dir: &Path, name: &str, keys: &[Arc<PrivateKey>], expiry: &Expiry) -> Result<()> {
    let name = TargetName::new(name).map_err(tuf)?;
    edit(dir, keys, expiry, |editor| {
        Box::pin(async move {
            editor.remove_target(&name).map_err(tuf)?;
            Ok(())
        })
    })
}

/// Loads the repository in `dir`, lets `change` edit it (asynchronously: tough's editor is async),
/// bumps and re-signs the targets, snapshot and timestamp versions with `keys`, and writes it.
fn edit(
    dir: &Path,
    keys: &[Arc<PrivateKey>],
    expiry: &Expiry,
    change: impl for<'a> FnOnce(&'a mut RepositoryEditor) -> futures_util::future::LocalBoxFuture<'a, Result<()>>,
) -> Result<()> {
    runtime()?.block_on(async {
        let (root_path, repo) = load_for_edit(dir).await?;
        let next = |v: NonZeroU64| v.checked_add(1).ok_or_else(|| Error::Metadata("version overflow".into()));
        let (tv, sv, tsv) = (
            next(repo.targets().signed.version)?,
            next(repo.snapshot().signed.version)?,
            next(repo.timestamp().signed.version)?,
        );
        let mut editor = RepositoryEditor::from_repo(&root_path, repo).await.map_err(tuf)?;
        change(&mut editor).await?;
        let now = jiff::Timestamp::now();
        editor
            .targets_version(tv)
            .map_err(tuf)?
            .targets_expires(expires(now, expiry.targets))
            .map_err(tuf)?;
        sign_and_write(editor, sv, tsv, keys, expiry, dir).await
    })
}

/// The client workflow ([`crate::client::Updater`]) over the metadata in `dir` (the registry's
/// trust artifact, unpacked), with `state` as this machine's trusted metadata directory for the
/// repository.
///
/// Trust starts from the newest root this machine has verified (`state/root.json`), never from
/// what the registry offers: `pinned_root` (the newest root the policy's keys sign) only bootstraps
/// a machine that has verified none. The chain only walks forward, so a registry that replays an
/// old, consistent set (root v1 after a rotation to v4, signed by keys since retired, which may
/// have leaked) is refused with both versions named; metadata newly signed with retired keys does
/// not verify under the trusted root. Versions of timestamp and snapshot never go back while their
/// keys stay (TUF 5.3.11: a rotation of those keys is how a repository recovers from a
/// fast-forward attack, and the retired keys then sign nothing the root accepts).
fn updater<'a>(pinned_root: &[u8], dir: &Path, state: &Path, fetch: &'a crate::client::DirFetcher) -> Result<crate::client::Updater<'a>> {
    let u = crate::client::Updater::new(state, Some(pinned_root), fetch)?;
    let trusted = u.root_version();
    let offered = std::fs::read_dir(dir)
        .map_err(|e| Error::Metadata(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".root.json")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    if offered < trusted {
        return Err(Error::Metadata(format!(
            "the registry offers root version {offered} at most, but this machine already trusts root version {trusted}: refusing to go back (old metadata replayed?)"
        )));
    }
    Ok(u)
}

/// Verifies the metadata in `dir` (see [`updater`]) and resolves target `name` by the
/// specification's search through delegations.
pub fn resolve(pinned_root: &[u8], dir: &Path, state: &Path, name: &str) -> Result<Resolved> {
    let fetch = crate::client::DirFetcher(dir.to_path_buf());
    let mut u = updater(pinned_root, dir, state, &fetch)?;
    let (t, _) = u.target(name)?.ok_or_else(|| Error::NotSigned(name.to_owned()))?;
    let sha256 = t
        .sha256()
        .ok_or_else(|| Error::Metadata(format!("target {name} has no sha256 hash")))?;
    let digest = Digest::new(bulkhead_image::digest::Algorithm::Sha256, &sha256.to_ascii_lowercase())?;
    let custom = t
        .custom
        .as_ref()
        .and_then(|c| c.as_object())
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let signed_by = u.signed_by(&t);
    Ok(Resolved {
        digest,
        length: t.length,
        custom,
        signed_by,
    })
}

/// The verified state of the metadata in `dir` (as [`resolve`] checks it): each tag the
/// top-level targets role or a role it delegates to signs, with its digest and length, and each
/// role's version and expiry.
pub fn describe(pinned_root: &[u8], dir: &Path, state: &Path) -> Result<serde_json::Value> {
    let fetch = crate::client::DirFetcher(dir.to_path_buf());
    let mut u = updater(pinned_root, dir, state, &fetch)?;
    u.refresh()?;
    let mut tags = serde_json::Map::new();
    for t in u.all_targets()? {
        let digest = t.sha256().map(|h| format!("sha256:{}", h.to_ascii_lowercase())).unwrap_or_default();
        tags.entry(t.path.clone())
            .or_insert_with(|| serde_json::json!({"digest": digest, "length": t.length}));
    }
    let mut v = u.summary()?;
    v["tags"] = serde_json::Value::Object(tags);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyKind;

    fn key(kind: KeyKind) -> Arc<PrivateKey> {
        Arc::new(PrivateKey::generate(kind).unwrap())
    }

    fn one(k: &Arc<PrivateKey>) -> RoleSpec {
        RoleSpec {
            keys: vec![k.clone()],
            threshold: 1,
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        root_key: Arc<PrivateKey>,
        online: Vec<Arc<PrivateKey>>,
    }

    impl Fixture {
        fn new(expiry: &Expiry) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let root_key = key(KeyKind::Ed25519);
            let (t, s, ts) = (key(KeyKind::EcdsaP256), key(KeyKind::Ed25519), key(KeyKind::Ed25519));
            let roles = Roles {
                root: one(&root_key),
                targets: one(&t),
                snapshot: one(&s),
                timestamp: one(&ts),
            };
            init(&dir.path().join("meta"), &roles, expiry).unwrap();
            Fixture {
                dir,
                root_key,
                online: vec![t, s, ts],
            }
        }
        fn meta(&self) -> PathBuf {
            self.dir.path().join("meta")
        }
        fn root(&self) -> Vec<u8> {
            std::fs::read(self.meta().join("1.root.json")).unwrap()
        }
        fn state(&self) -> PathBuf {
            self.dir.path().join("state")
        }
    }

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn a_signed_tag_resolves_to_its_manifest_digest() {
        let f = Fixture::new(&Expiry::default());
        sign_target(&f.meta(), "1.4", &digest(1), 1234, HashMap::new(), &f.online, &Expiry::default()).unwrap();
        let r = resolve(&f.root(), &f.meta(), &f.state(), "1.4").unwrap();
        assert_eq!((r.digest, r.length), (digest(1), 1234));
        let err = resolve(&f.root(), &f.meta(), &f.state(), "1.5").unwrap_err().to_string();
        assert!(err.contains("not signed"), "{err}");
        // Re-signing moves the tag; revoking removes it.
        sign_target(&f.meta(), "1.4", &digest(2), 99, HashMap::new(), &f.online, &Expiry::default()).unwrap();
        assert_eq!(resolve(&f.root(), &f.meta(), &f.state(), "1.4").unwrap().digest, digest(2));
        remove_target(&f.meta(), "1.4", &f.online, &Expiry::default()).unwrap();
        assert!(resolve(&f.root(), &f.meta(), &f.state(), "1.4").is_err());
    }

    #[test]
    fn expired_timestamp_is_refused_naming_it() {
        let expiry = Expiry {
            timestamp: jiff::SignedDuration::from_secs(-60),
            ..Expiry::default()
        };
        let f = Fixture::new(&Expiry::default());
        sign_target(&f.meta(), "1", &digest(1), 1, HashMap::new(), &f.online, &expiry).unwrap();
        let err = resolve(&f.root(), &f.meta(), &f.state(), "1").unwrap_err().to_string();
        assert!(
            err.to_lowercase().contains("timestamp") && err.to_lowercase().contains("expire"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1);
    }

    #[test]
    fn an_expired_timestamp_is_refreshed_with_the_timestamp_key_alone() {
        let stale = Expiry {
            timestamp: jiff::SignedDuration::from_secs(-60),
            ..Expiry::default()
        };
        let f = Fixture::new(&Expiry::default());
        sign_target(&f.meta(), "1", &digest(1), 1, HashMap::new(), &f.online, &stale).unwrap();
        assert!(resolve(&f.root(), &f.meta(), &f.state(), "1").is_err());
        let timestamp_key = &f.online[2..];
        assert_eq!(refresh_timestamp(&f.meta(), timestamp_key, &Expiry::default()).unwrap(), 3);
        assert_eq!(resolve(&f.root(), &f.meta(), &f.state(), "1").unwrap().digest, digest(1));
        // Another key cannot do it.
        assert!(refresh_timestamp(&f.meta(), &f.online[..1], &Expiry::default()).is_err());
    }

    #[test]
    fn a_rollback_to_older_metadata_is_refused() {
        let f = Fixture::new(&Expiry::default());
        sign_target(&f.meta(), "1", &digest(1), 1, HashMap::new(), &f.online, &Expiry::default()).unwrap();
        let old = f.dir.path().join("old");
        std::fs::create_dir_all(&old).unwrap();
        for e in std::fs::read_dir(f.meta()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), old.join(e.file_name())).unwrap();
        }
        sign_target(&f.meta(), "1", &digest(2), 1, HashMap::new(), &f.online, &Expiry::default()).unwrap();
        assert_eq!(resolve(&f.root(), &f.meta(), &f.state(), "1").unwrap().digest, digest(2));
        // The registry now serves the older, validly signed metadata: the client has seen newer.
        let err = resolve(&f.root(), &old, &f.state(), "1").unwrap_err().to_string();
        assert!(
            err.contains("version") || err.contains("rollback") || err.contains("older"),
            "{err}"
        );
    }

    #[test]
    fn edited_targets_and_foreign_keys_are_refused() {
        let f = Fixture::new(&Expiry::default());
        sign_target(&f.meta(), "1", &digest(1), 1, HashMap::new(), &f.online, &Expiry::default()).unwrap();
        // Point the tag elsewhere without signing: the snapshot's hash of targets no longer matches.
        let t = f.meta().join("targets.json");
        let text = std::fs::read_to_string(&t).unwrap();
        let edited = text.replace(digest(1).hex(), digest(9).hex());
        assert_ne!(text, edited);
        std::fs::write(&t, edited).unwrap();
        assert!(resolve(&f.root(), &f.meta(), &f.state(), "1").is_err());
        // Signing with keys the root does not list produces metadata no client accepts.
        let g = Fixture::new(&Expiry::default());
        let strangers = vec![key(KeyKind::Ed25519), key(KeyKind::Ed25519), key(KeyKind::Ed25519)];
        assert!(sign_target(&g.meta(), "1", &digest(1), 1, HashMap::new(), &strangers, &Expiry::default()).is_err());
        // A root pinned for another repository does not verify this one.
        let err = resolve(&g.root(), &f.meta(), &f.dir.path().join("state2"), "1")
            .unwrap_err()
            .to_string();
        assert!(!err.is_empty());
        let _ = &f.root_key;
    }

    #[test]
    fn a_rotated_root_is_followed_and_a_rotation_the_old_root_did_not_sign_is_refused() {
        let f = Fixture::new(&Expiry::default());
        sign_target(&f.meta(), "1", &digest(1), 1, HashMap::new(), &f.online, &Expiry::default()).unwrap();
        assert_eq!(resolve(&f.root(), &f.meta(), &f.state(), "1").unwrap().digest, digest(1));
        // The publisher rotates the root key; a client that trusted version 1 walks to version 2.
        let new_root = key(KeyKind::EcdsaP256);
        rotate_root(
            &f.meta(),
            std::slice::from_ref(&f.root_key),
            std::slice::from_ref(&new_root),
            1,
            &Expiry::default(),
        )
        .unwrap();
        assert!(f.meta().join("2.root.json").exists());
        sign_target(&f.meta(), "2", &digest(2), 1, HashMap::new(), &f.online, &Expiry::default()).unwrap();
        assert_eq!(resolve(&f.root(), &f.meta(), &f.state(), "2").unwrap().digest, digest(2));
        // An attacker's version 3, signed by a key of its own but not by the current root key.
        let thief = key(KeyKind::Ed25519);
        // The tools refuse to sign it with keys the current root does not list...
        assert!(rotate_root(
            &f.meta(),
            std::slice::from_ref(&thief),
            std::slice::from_ref(&thief),
            1,
            &Expiry::default()
        )
        .is_err());
        // ...so it is made by hand: version 3 naming the thief's key, signed by it alone.
        let v2: tough::schema::Signed<Root> = serde_json::from_slice(&std::fs::read(f.meta().join("2.root.json")).unwrap()).unwrap();
        let mut v3 = v2.signed.clone();
        v3.version = NonZeroU64::new(3).unwrap();
        let tk = thief.tuf_key().unwrap();
        let id = tk.key_id().unwrap();
        v3.keys.insert(id.clone(), tk);
        v3.roles.get_mut(&RoleType::Root).unwrap().keyids = vec![id];
        let forged = runtime()
            .unwrap()
            .block_on(SignedRole::new(
                v3.clone(),
                &KeyHolder::Root(v3),
                &sources(&[thief]),
                &SystemRandom::new(),
            ))
            .unwrap();
        std::fs::write(f.meta().join("3.root.json"), forged.buffer()).unwrap();
        let err = resolve(&f.root(), &f.meta(), &f.dir.path().join("fresh"), "2")
            .unwrap_err()
            .to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("root") || err.contains("signature") || err.contains("threshold"),
            "{err}"
        );
    }

    #[test]
    fn a_delegated_role_signs_only_within_its_patterns() {
        let f = Fixture::new(&Expiry::default());
        let releaser = key(KeyKind::EcdsaP256);
        add_delegation(
            &f.meta(),
            "releases",
            &["1.*".to_owned()],
            std::slice::from_ref(&releaser),
            1,
            &f.online,
            &Expiry::default(),
        )
        .unwrap();
        assert!(f.meta().join("releases.json").exists());
        // The releaser's key and the snapshot and timestamp keys: not the top-level targets key.
        let mechanics = &f.online[1..];
        sign_delegated_target(
            &f.meta(),
            "releases",
            "1.2",
            &digest(12),
            12,
            std::slice::from_ref(&releaser),
            mechanics,
            &Expiry::default(),
        )
        .unwrap();
        let r = resolve(&f.root(), &f.meta(), &f.state(), "1.2").unwrap();
        assert_eq!((r.digest, r.length), (digest(12), 12));
        assert_eq!(r.signed_by, vec!["releases".to_owned()]);
        // Outside its patterns: the tools refuse, and nothing resolves.
        let err = sign_delegated_target(
            &f.meta(),
            "releases",
            "2.0",
            &digest(20),
            1,
            &[releaser],
            mechanics,
            &Expiry::default(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(resolve(&f.root(), &f.meta(), &f.state(), "2.0")
            .unwrap_err()
            .to_string()
            .contains("not signed"));
        // Someone else's key cannot sign for the role.
        let stranger = key(KeyKind::Ed25519);
        assert!(sign_delegated_target(
            &f.meta(),
            "releases",
            "1.3",
            &digest(13),
            1,
            &[stranger],
            mechanics,
            &Expiry::default()
        )
        .is_err());
        assert!(resolve(&f.root(), &f.meta(), &f.state(), "1.3").is_err());
        // Removing the signer: its tags stop resolving.
        crate::threshold::remove_delegation(&f.meta(), "releases", &f.online[..1], &f.online[1..], &Expiry::default()).unwrap();
        let err = resolve(&f.root(), &f.meta(), &f.state(), "1.2")
            .map(|r| r.digest.to_string())
            .map_err(|e| e.to_string());
        assert!(err.as_ref().is_err_and(|e| e.contains("not signed")), "{err:?}");
    }

    #[test]
    fn a_rotated_targets_key_signs_and_the_old_one_no_longer_does() {
        let f = Fixture::new(&Expiry::default());
        sign_target(&f.meta(), "1", &digest(1), 1, HashMap::new(), &f.online, &Expiry::default()).unwrap();
        assert!(resolve(&f.root(), &f.meta(), &f.state(), "1").is_ok());
        let new_targets = key(KeyKind::Ed25519);
        let rotated = vec![new_targets.clone(), f.online[1].clone(), f.online[2].clone()];
        rotate(
            &f.meta(),
            RoleType::Targets,
            std::slice::from_ref(&f.root_key),
            std::slice::from_ref(&new_targets),
            1,
            &rotated,
            &Expiry::default(),
        )
        .unwrap();
        sign_target(&f.meta(), "2", &digest(2), 1, HashMap::new(), &rotated, &Expiry::default()).unwrap();
        // The client walks to root version 2 and accepts targets signed by the new key.
        assert_eq!(resolve(&f.root(), &f.meta(), &f.state(), "2").unwrap().digest, digest(2));
        // The retired key cannot sign any more.
        assert!(sign_target(&f.meta(), "3", &digest(3), 1, HashMap::new(), &f.online, &Expiry::default()).is_err());
    }

    #[test]
    fn a_threshold_of_two_needs_two_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (key(KeyKind::Ed25519), key(KeyKind::EcdsaP256));
        let (s, ts) = (key(KeyKind::Ed25519), key(KeyKind::Ed25519));
        let roles = Roles {
            root: one(&key(KeyKind::Ed25519)),
            targets: RoleSpec {
                keys: vec![a.clone(), b.clone()],
                threshold: 2,
            },
            snapshot: one(&s),
            timestamp: one(&ts),
        };
        let meta = dir.path().join("meta");
        init(&meta, &roles, &Expiry::default()).unwrap();
        let root = std::fs::read(meta.join("1.root.json")).unwrap();
        // One of two targets keys: the new targets version is not trusted.
        let half = vec![a.clone(), s.clone(), ts.clone()];
        // The tools refuse to sign with one of two targets keys.
        assert!(sign_target(&meta, "1", &digest(1), 1, HashMap::new(), &half, &Expiry::default()).is_err());
        assert!(resolve(&root, &meta, &dir.path().join("state"), "1")
            .unwrap_err()
            .to_string()
            .contains("not signed"));
        let both = vec![a, b, s, ts];
        sign_target(&meta, "1", &digest(1), 1, HashMap::new(), &both, &Expiry::default()).unwrap();
        assert_eq!(resolve(&root, &meta, &dir.path().join("state3"), "1").unwrap().digest, digest(1));
        // And a client refuses targets metadata that carries one of the two signatures.
        let t = meta.join("targets.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&t).unwrap()).unwrap();
        assert_eq!(v["signatures"].as_array().unwrap().len(), 2);
        v["signatures"].as_array_mut().unwrap().pop();
        std::fs::write(&t, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = resolve(&root, &meta, &dir.path().join("state4"), "1").unwrap_err().to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
