//! Signing by several people: when the targets role needs more signatures than one signer holds
//! keys for, the first signer proposes the new targets version with their signatures
//! (`pending.targets.json`, published with the rest so the others can see it), each further signer
//! adds theirs, and once the threshold is met the version is finished: it becomes `targets.json`,
//! and snapshot and timestamp are signed over it. tough's editor cannot do this (it signs only
//! with keys it holds all at once and refuses below the threshold), so signatures are made here,
//! over the same canonical JSON, and the snapshot and timestamp are built as tough builds them.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use serde::Serialize as _;
use tough::editor::signed::SignedRole;
use tough::schema::{Hashes, KeyHolder, Metafile, RoleType, Root, Signature, Signed, Snapshot, Targets, Timestamp};
use tough::TargetName;

use crate::keys::PrivateKey;
use crate::repo::{latest_root, Expiry, NewTarget};
use crate::{Error, Result};

const PENDING: &str = "pending.targets.json";

fn read<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T> {
    let p = dir.join(name);
    let data = std::fs::read(&p).map_err(|e| Error::Metadata(format!("{}: {e}", p.display())))?;
    serde_json::from_slice(&data).map_err(|e| Error::Metadata(format!("{}: {e}", p.display())))
}

fn write(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::Metadata(format!("{}: {e}", path.display())))
}

fn root(dir: &Path) -> Result<Signed<Root>> {
    let latest = latest_root(dir)?;
    read(dir, &latest.file_name().unwrap_or_default().to_string_lossy())
}

/// Adds signatures by `keys` (those the root lists for the targets role) to `signed`.
fn sign_with(root: &Root, signed: &mut Signed<Targets>, keys: &[Arc<PrivateKey>]) -> Result<usize> {
    let role = root
        .roles
        .get(&RoleType::Targets)
        .ok_or_else(|| Error::Metadata("the root has no targets role".into()))?;
    sign_as(&role.keyids, "targets", signed, keys)
}

/// Adds signatures by `keys`, each of which must be one of `keyids` (the keys of `role`), to
/// `signed`, over the canonical JSON TUF signs; a key that signed already is skipped.
fn sign_as(
    keyids: &[tough::schema::decoded::Decoded<tough::schema::decoded::Hex>],
    role: &str,
    signed: &mut Signed<Targets>,
    keys: &[Arc<PrivateKey>],
) -> Result<usize> {
    let mut data = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut data, olpc_cjson::CanonicalFormatter::new());
    signed.signed.serialize(&mut ser).map_err(|e| Error::Metadata(e.to_string()))?;
    let rng = SystemRandom::new();
    let mut added = 0;
    for k in keys {
        let id = k.tuf_key()?.key_id().map_err(|e| Error::Metadata(e.to_string()))?;
        if !keyids.contains(&id) {
            return Err(Error::Key(format!(
                "key {} is not a {role} key of this repository",
                hex::encode(&*id)
            )));
        }
        if signed.signatures.iter().any(|s| s.keyid == id) {
            continue;
        }
        let sig = crate::repo::runtime()?
            .block_on(k.signer()?.sign(&data, &rng))
            .map_err(|e| Error::Key(format!("signing: {e}")))?;
        signed.signatures.push(Signature {
            keyid: id,
            sig: sig.into(),
        });
        added += 1;
    }
    Ok(added)
}

/// `trust sign --partial` by the first signer: the next targets version with `changes` (added or
/// replaced tags), signed by `keys`, kept pending until enough signers have signed it.
pub fn propose(dir: &Path, changes: &[NewTarget], keys: &[Arc<PrivateKey>], expiry: &Expiry) -> Result<usize> {
    if dir.join(PENDING).exists() {
        return Err(Error::Metadata(
            "a targets version is pending already: sign it (trust sign --partial) or discard it".into(),
        ));
    }
    let root = root(dir)?;
    let current: Signed<Targets> = read(dir, "targets.json")?;
    let mut next = current.signed.clone();
    next.version = next
        .version
        .checked_add(1)
        .ok_or_else(|| Error::Metadata("version overflow".into()))?;
    next.expires = jiff::Timestamp::from_second((jiff::Timestamp::now() + expiry.targets).as_second()).unwrap_or(next.expires);
    for (name, digest, length, custom) in changes {
        let target = crate::repo::target_of(digest, *length, custom.clone())?;
        next.targets
            .insert(TargetName::new(name.as_str()).map_err(|e| Error::Metadata(e.to_string()))?, target);
    }
    let mut signed = Signed {
        signed: next,
        signatures: Vec::new(),
    };
    let n = sign_with(&root.signed, &mut signed, keys)?;
    if n == 0 {
        return Err(Error::Key("none of the given keys signs targets".into()));
    }
    write(
        dir,
        PENDING,
        &serde_json::to_vec_pretty(&signed).map_err(|e| Error::Metadata(e.to_string()))?,
    )?;
    Ok(signed.signatures.len())
}

/// `trust sign --partial` by a further signer: adds their signatures to the pending version.
/// Returns (signatures, threshold).
pub fn countersign(dir: &Path, keys: &[Arc<PrivateKey>]) -> Result<(usize, u64)> {
    let root = root(dir)?;
    let mut pending: Signed<Targets> = read(dir, PENDING)?;
    sign_with(&root.signed, &mut pending, keys)?;
    write(
        dir,
        PENDING,
        &serde_json::to_vec_pretty(&pending).map_err(|e| Error::Metadata(e.to_string()))?,
    )?;
    let threshold = root.signed.roles.get(&RoleType::Targets).map_or(1, |r| r.threshold.get());
    Ok((pending.signatures.len(), threshold))
}

/// Takes in the signatures of another copy of the pending version (`other`, e.g. what a signer on
/// another machine published): the same content, signatures united; where this machine has no
/// pending version, `other` becomes it. Refuses a different proposal.
pub fn merge_pending(dir: &Path, other: &[u8]) -> Result<()> {
    let theirs: Signed<Targets> = serde_json::from_slice(other).map_err(|e| Error::Metadata(format!("pending targets: {e}")))?;
    let merged = if dir.join(PENDING).exists() {
        let mut ours: Signed<Targets> = read(dir, PENDING)?;
        let same = serde_json::to_value(&ours.signed).ok() == serde_json::to_value(&theirs.signed).ok();
        if !same {
            return Err(Error::Metadata(
                "another signer proposed a different release: finish or discard one of them first".into(),
            ));
        }
        for sig in theirs.signatures {
            if !ours.signatures.iter().any(|s| s.keyid == sig.keyid) {
                ours.signatures.push(sig);
            }
        }
        ours
    } else {
        theirs
    };
    write(
        dir,
        PENDING,
        &serde_json::to_vec_pretty(&merged).map_err(|e| Error::Metadata(e.to_string()))?,
    )
}

/// What a signer is asked to sign: the pending version's tags (name → sha256 hex).
pub fn pending_targets(dir: &Path) -> Result<Option<Vec<(String, String)>>> {
    if !dir.join(PENDING).exists() {
        return Ok(None);
    }
    let pending: Signed<Targets> = read(dir, PENDING)?;
    Ok(Some(
        pending
            .signed
            .targets
            .iter()
            .map(|(n, t)| (n.raw().to_owned(), hex::encode(&*t.hashes.sha256)))
            .collect(),
    ))
}

fn metafile(version: NonZeroU64, data: &[u8]) -> Metafile {
    Metafile {
        version,
        length: Some(data.len() as u64),
        hashes: Some(Hashes {
            sha256: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref().to_vec().into(),
            _extra: HashMap::new(),
        }),
        _extra: HashMap::new(),
    }
}

/// Finishes the pending version once its signatures meet the targets threshold (checked the way
/// clients check it): it becomes targets.json, and snapshot and timestamp are signed anew with
/// `keys`. Returns false (and changes nothing) while signatures are missing.
pub fn finish(dir: &Path, keys: &[Arc<PrivateKey>], expiry: &Expiry) -> Result<bool> {
    let root = root(dir)?;
    let pending: Signed<Targets> = read(dir, PENDING)?;
    if root.signed.verify_role(&pending).is_err() {
        return Ok(false);
    }
    publish_role(dir, &root.signed, "targets.json", &pending, keys, expiry)?;
    std::fs::remove_file(dir.join(PENDING)).map_err(|e| Error::Metadata(format!("{PENDING}: {e}")))?;
    Ok(true)
}

/// Writes the targets-type role `signed` as `file` and signs new snapshot (its meta updated for
/// that file, the rest kept) and timestamp versions over it with `keys`, as tough builds them.
fn publish_role(dir: &Path, root: &Root, file: &str, signed: &Signed<Targets>, keys: &[Arc<PrivateKey>], expiry: &Expiry) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(signed).map_err(|e| Error::Metadata(e.to_string()))?;
    bytes.push(b'\n');
    let old_snapshot: Signed<Snapshot> = read(dir, "snapshot.json")?;
    let old_timestamp: Signed<Timestamp> = read(dir, "timestamp.json")?;
    let bump = |v: NonZeroU64| v.checked_add(1).ok_or_else(|| Error::Metadata("version overflow".into()));
    let now = jiff::Timestamp::now();
    let at = |d: jiff::SignedDuration| jiff::Timestamp::from_second((now + d).as_second()).unwrap_or(now);
    let mut snapshot = Snapshot::new("1.0.0".into(), bump(old_snapshot.signed.version)?, at(expiry.snapshot));
    snapshot.meta = old_snapshot.signed.meta.clone();
    snapshot.meta.insert(file.into(), metafile(signed.signed.version, &bytes));
    let holder = KeyHolder::Root(root.clone());
    let sources: Vec<Box<dyn tough::key_source::KeySource>> = keys
        .iter()
        .map(|k| Box::new(crate::keys::MemoryKeySource(k.clone())) as Box<dyn tough::key_source::KeySource>)
        .collect();
    let rng = SystemRandom::new();
    let signed_snapshot = crate::repo::runtime()?
        .block_on(SignedRole::new(snapshot, &holder, &sources, &rng))
        .map_err(|e| Error::Metadata(format!("snapshot: {e}")))?;
    let mut timestamp = Timestamp::new("1.0.0".into(), bump(old_timestamp.signed.version)?, at(expiry.timestamp));
    timestamp.meta.insert(
        "snapshot.json".into(),
        metafile(signed_snapshot.signed().signed.version, signed_snapshot.buffer()),
    );
    let signed_timestamp = crate::repo::runtime()?
        .block_on(SignedRole::new(timestamp, &holder, &sources, &rng))
        .map_err(|e| Error::Metadata(format!("timestamp: {e}")))?;
    write(dir, file, &bytes)?;
    write(dir, "snapshot.json", signed_snapshot.buffer())?;
    write(dir, "timestamp.json", signed_timestamp.buffer())
}

/// After an edit by tough's editor: entries of the previous snapshot (`before`, its file) that the
/// new snapshot dropped are put back, and snapshot and timestamp re-signed (same versions: neither
/// was published yet).
pub(crate) async fn keep_snapshot_entries(dir: &Path, before: &[u8], keys: &[Arc<PrivateKey>]) -> Result<()> {
    let old: Signed<Snapshot> = serde_json::from_slice(before).map_err(|e| Error::Metadata(format!("snapshot: {e}")))?;
    let new: Signed<Snapshot> = read(dir, "snapshot.json")?;
    let missing: Vec<_> = old.signed.meta.iter().filter(|(k, _)| !new.signed.meta.contains_key(*k)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = root(dir)?;
    let mut snapshot = new.signed.clone();
    for (k, v) in missing {
        snapshot.meta.insert(k.clone(), v.clone());
    }
    let timestamp: Signed<Timestamp> = read(dir, "timestamp.json")?;
    let holder = KeyHolder::Root(root.signed.clone());
    let sources: Vec<Box<dyn tough::key_source::KeySource>> = keys
        .iter()
        .map(|k| Box::new(crate::keys::MemoryKeySource(k.clone())) as Box<dyn tough::key_source::KeySource>)
        .collect();
    let rng = SystemRandom::new();
    let signed_snapshot = SignedRole::new(snapshot, &holder, &sources, &rng)
        .await
        .map_err(|e| Error::Metadata(format!("snapshot: {e}")))?;
    let mut ts = timestamp.signed.clone();
    ts.meta.insert(
        "snapshot.json".into(),
        metafile(signed_snapshot.signed().signed.version, signed_snapshot.buffer()),
    );
    let signed_timestamp = SignedRole::new(ts, &holder, &sources, &rng)
        .await
        .map_err(|e| Error::Metadata(format!("timestamp: {e}")))?;
    write(dir, "snapshot.json", signed_snapshot.buffer())?;
    write(dir, "timestamp.json", signed_timestamp.buffer())
}

/// Signs tags in the delegated role `role` with its keys (`role_keys`, which must meet its
/// threshold), and snapshot and timestamp over it with `keys`: no top-level targets key is needed,
/// so a team's signer holds only its own. A tag outside the role's path patterns is refused.
pub fn sign_delegated(
    dir: &Path,
    role: &str,
    changes: &[NewTarget],
    role_keys: &[Arc<PrivateKey>],
    keys: &[Arc<PrivateKey>],
    expiry: &Expiry,
) -> Result<()> {
    let root = root(dir)?;
    let top: Signed<Targets> = read(dir, "targets.json")?;
    let delegations = top
        .signed
        .delegations
        .as_ref()
        .ok_or_else(|| Error::Metadata("the repository delegates nothing".into()))?;
    let entry = delegations
        .roles
        .iter()
        .find(|r| r.name == role)
        .ok_or_else(|| Error::Metadata(format!("no delegated role {role:?}")))?;
    // Only this role's patterns count: a copy of the delegations with it alone.
    let mut only = delegations.clone();
    only.roles.retain(|r| r.name == role);
    let file = format!("{role}.json");
    let mut signed: Signed<Targets> = read(dir, &file)?;
    next_version(&mut signed, expiry)?;
    for (name, digest, length, custom) in changes {
        let tname = TargetName::new(name.as_str()).map_err(|e| Error::Metadata(e.to_string()))?;
        if !only.target_is_delegated(&tname) {
            return Err(Error::Metadata(format!("{role} may not sign {name:?}: outside its path patterns")));
        }
        signed
            .signed
            .targets
            .insert(tname, crate::repo::target_of(digest, *length, custom.clone())?);
    }
    let n = sign_as(&entry.keyids, role, &mut signed, role_keys)?;
    if (n as u64) < entry.threshold.get() {
        return Err(Error::Key(format!(
            "{role} needs {} signatures; the given keys make {n}",
            entry.threshold
        )));
    }
    publish_role(dir, &root.signed, &file, &signed, keys, expiry)
}

/// The next version of a targets-type role: unsigned, version + 1, a fresh expiry.
fn next_version(signed: &mut Signed<Targets>, expiry: &Expiry) -> Result<()> {
    signed.signatures.clear();
    signed.signed.version = signed
        .signed
        .version
        .checked_add(1)
        .ok_or_else(|| Error::Metadata("version overflow".into()))?;
    signed.signed.expires =
        jiff::Timestamp::from_second((jiff::Timestamp::now() + expiry.targets).as_second()).unwrap_or(signed.signed.expires);
    Ok(())
}

/// `trust signer remove`: the delegated role `role` and its keys leave the top-level targets,
/// signed anew by `targets_keys` (meeting the root's targets threshold); snapshot and timestamp
/// are signed with `keys`. Its tags stop resolving.
pub fn remove_delegation(
    dir: &Path,
    role: &str,
    targets_keys: &[Arc<PrivateKey>],
    keys: &[Arc<PrivateKey>],
    expiry: &Expiry,
) -> Result<()> {
    let root = root(dir)?;
    let mut top: Signed<Targets> = read(dir, "targets.json")?;
    let delegations = top
        .signed
        .delegations
        .as_mut()
        .ok_or_else(|| Error::Metadata("the repository delegates nothing".into()))?;
    let before = delegations.roles.len();
    delegations.roles.retain(|r| r.name != role);
    if delegations.roles.len() == before {
        return Err(Error::Metadata(format!("no delegated role {role:?}")));
    }
    let used: std::collections::HashSet<_> = delegations.roles.iter().flat_map(|r| r.keyids.iter().cloned()).collect();
    delegations.keys.retain(|id, _| used.contains(id));
    next_version(&mut top, expiry)?;
    sign_with(&root.signed, &mut top, targets_keys)?;
    root.signed
        .verify_role(&top)
        .map_err(|e| Error::Key(format!("targets: not enough signatures: {e}")))?;
    // The role's file stays, and stays in the snapshot (TUF forbids a snapshot to drop a targets
    // file the previous one listed); nothing delegates to it any more.
    publish_role(dir, &root.signed, "targets.json", &top, keys, expiry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyKind;
    use crate::repo::{init, resolve, RoleSpec, Roles};
    use bulkhead_image::Digest;

    #[test]
    fn two_signers_each_with_one_key_sign_a_release_together() {
        let d = tempfile::tempdir().unwrap();
        let meta = d.path().join("meta");
        let key = |k| Arc::new(PrivateKey::generate(k).unwrap());
        let (alice, bob) = (key(KeyKind::Ed25519), key(KeyKind::EcdsaP256));
        let (s, ts) = (key(KeyKind::Ed25519), key(KeyKind::Ed25519));
        let one = |k: &Arc<PrivateKey>| RoleSpec {
            keys: vec![k.clone()],
            threshold: 1,
        };
        let roles = Roles {
            root: one(&key(KeyKind::Ed25519)),
            targets: RoleSpec {
                keys: vec![alice.clone(), bob.clone()],
                threshold: 2,
            },
            snapshot: one(&s),
            timestamp: one(&ts),
        };
        init(&meta, &roles, &Expiry::default()).unwrap();
        let root = std::fs::read(meta.join("1.root.json")).unwrap();
        let digest = Digest::sha256_of(b"release 1.4");
        let mechanics = vec![s, ts];
        // Alice proposes; one signature is not enough, nothing changes for clients.
        let change = vec![("1.4".to_owned(), digest.clone(), 99, HashMap::new())];
        assert_eq!(
            propose(&meta, &change, std::slice::from_ref(&alice), &Expiry::default()).unwrap(),
            1
        );
        assert!(
            propose(&meta, &change, std::slice::from_ref(&alice), &Expiry::default()).is_err(),
            "one pending at a time"
        );
        assert!(!finish(&meta, &mechanics, &Expiry::default()).unwrap());
        assert!(resolve(&root, &meta, &d.path().join("state"), "1.4").is_err());
        assert_eq!(
            pending_targets(&meta).unwrap().unwrap(),
            vec![("1.4".to_owned(), digest.hex().to_owned())]
        );
        // Signing twice with the same key does not count twice; a stranger's key is refused.
        assert_eq!(countersign(&meta, std::slice::from_ref(&alice)).unwrap(), (1, 2));
        assert!(countersign(&meta, &[key(KeyKind::Ed25519)]).is_err());
        // Bob countersigns: the threshold is met, the version is finished, clients see it.
        assert_eq!(countersign(&meta, std::slice::from_ref(&bob)).unwrap(), (2, 2));
        assert!(finish(&meta, &mechanics, &Expiry::default()).unwrap());
        assert!(pending_targets(&meta).unwrap().is_none());
        let r = resolve(&root, &meta, &d.path().join("state"), "1.4").unwrap();
        assert_eq!((r.digest, r.length), (digest, 99));
    }
}
