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
    let mut data = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut data, olpc_cjson::CanonicalFormatter::new());
    signed.signed.serialize(&mut ser).map_err(|e| Error::Metadata(e.to_string()))?;
    let rng = SystemRandom::new();
    let mut added = 0;
    for k in keys {
        let id = k.tuf_key()?.key_id().map_err(|e| Error::Metadata(e.to_string()))?;
        if !role.keyids.contains(&id) {
            return Err(Error::Key(format!(
                "key {} is not a targets key of this repository",
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
    let mut targets_bytes = serde_json::to_vec_pretty(&pending).map_err(|e| Error::Metadata(e.to_string()))?;
    targets_bytes.push(b'\n');
    let old_snapshot: Signed<Snapshot> = read(dir, "snapshot.json")?;
    let old_timestamp: Signed<Timestamp> = read(dir, "timestamp.json")?;
    let bump = |v: NonZeroU64| v.checked_add(1).ok_or_else(|| Error::Metadata("version overflow".into()));
    let now = jiff::Timestamp::now();
    let at = |d: jiff::SignedDuration| jiff::Timestamp::from_second((now + d).as_second()).unwrap_or(now);
    let mut snapshot = Snapshot::new("1.0.0".into(), bump(old_snapshot.signed.version)?, at(expiry.snapshot));
    snapshot.meta = old_snapshot.signed.meta.clone();
    snapshot
        .meta
        .insert("targets.json".into(), metafile(pending.signed.version, &targets_bytes));
    let holder = KeyHolder::Root(root.signed.clone());
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
    write(dir, "targets.json", &targets_bytes)?;
    write(dir, "snapshot.json", signed_snapshot.buffer())?;
    write(dir, "timestamp.json", signed_timestamp.buffer())?;
    std::fs::remove_file(dir.join(PENDING)).map_err(|e| Error::Metadata(format!("{PENDING}: {e}")))?;
    Ok(true)
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
