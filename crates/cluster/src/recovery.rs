//! Backups of the replicated store, and the seed a manager recovers from (`cluster backup`,
//! `cluster restore`, `cluster init --force-new-cluster`).
//!
//! A backup is the store's contents (every key, the CA's key among them), sealed with
//! XChaCha20-Poly1305 under a key the user keeps: the cluster's unlock key with autolock, else
//! one made for the backup and printed once. The cluster id and the time are in the clear, and
//! bound to the sealed part as associated data. Nothing in it names a host or an address, so it
//! restores anywhere.
//!
//! The same form, sealed with a node's data key, is the seed a recovering manager writes before
//! it starts afresh, so that a recovery cut short starts again from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypt::{Error, Key, Result};

const FORMAT: &str = "bulkhead-cluster-backup-1";
/// The largest backup read (the store is bounded far below this).
pub const MAX_BACKUP: u64 = 1 << 30;

#[derive(Serialize, Deserialize)]
struct File {
    format: String,
    cluster_id: String,
    created: i64,
    /// Hex of the sealed contents.
    sealed: String,
}

/// What a backup holds.
pub struct Backup {
    pub cluster_id: String,
    pub created: i64,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Backup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backup({}, {} keys)", self.cluster_id, self.data.len())
    }
}

impl Drop for Backup {
    fn drop(&mut self) {
        for v in self.data.values_mut() {
            zeroize::Zeroize::zeroize(v);
        }
    }
}

fn aad(cluster_id: &str, created: i64) -> Vec<u8> {
    format!("{FORMAT}\n{cluster_id}\n{created}").into_bytes()
}

/// The store's contents, sealed with `key`, as a file's bytes.
pub fn seal(cluster_id: &str, created: i64, data: &BTreeMap<String, Vec<u8>>, key: &Key) -> Result<Vec<u8>> {
    let plain: BTreeMap<&str, String> = data.iter().map(|(k, v)| (k.as_str(), hex::encode(v))).collect();
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(&plain).map_err(|e| Error::Invalid(e.to_string()))?);
    let f = File {
        format: FORMAT.into(),
        cluster_id: cluster_id.into(),
        created,
        sealed: hex::encode(key.seal(&aad(cluster_id, created), &plain)?),
    };
    let mut out = serde_json::to_vec_pretty(&f).map_err(|e| Error::Invalid(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// Opens a backup (or a seed) with `key`: one line of error for anything but a backup sealed by
/// that key, unchanged.
pub fn open(bytes: &[u8], key: &Key) -> Result<Backup> {
    let f: File = serde_json::from_slice(bytes).map_err(|e| Error::Invalid(format!("not a cluster backup: {e}")))?;
    if f.format != FORMAT {
        return Err(Error::Invalid(format!("not a cluster backup (format {:?})", f.format)));
    }
    let sealed = hex::decode(&f.sealed).map_err(|_| Error::Invalid("not a cluster backup: its sealed part is not hex".into()))?;
    let plain = key
        .open(&aad(&f.cluster_id, f.created), &sealed, "the backup")
        .map_err(|_| Error::Invalid("the backup does not open with this key (another key, or it was changed)".into()))?;
    let map: BTreeMap<String, String> =
        serde_json::from_slice(&plain).map_err(|e| Error::Invalid(format!("the backup's contents: {e}")))?;
    let mut data = BTreeMap::new();
    for (k, v) in map {
        let v = hex::decode(&v).map_err(|_| Error::Invalid(format!("the backup's {k:?} is not hex")))?;
        data.insert(k, v);
    }
    if data.get("cluster/id").map(Vec::as_slice) != Some(f.cluster_id.as_bytes()) {
        return Err(Error::Invalid("the backup's contents are not of the cluster it names".into()));
    }
    Ok(Backup {
        cluster_id: f.cluster_id,
        created: f.created,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_opens_only_with_its_key_and_unchanged() {
        let key = Key::generate().unwrap();
        let mut data = BTreeMap::new();
        data.insert("cluster/id".to_owned(), b"c0ffee".to_vec());
        data.insert("ca/key".to_owned(), b"MARKER-SECRET".to_vec());
        let file = seal("c0ffee", 1_800_000_000, &data, &key).unwrap();
        assert!(!file.windows(13).any(|w| w == b"MARKER-SECRET"));
        let b = open(&file, &key).unwrap();
        assert_eq!((b.cluster_id.as_str(), b.data.len()), ("c0ffee", 2));
        assert!(open(&file, &Key::generate().unwrap())
            .unwrap_err()
            .to_string()
            .contains("does not open"));
        // Another cluster's name or time on it, a flipped byte, a truncation, garbage: refused.
        let text = String::from_utf8(file.clone()).unwrap();
        for bad in [
            text.replace("c0ffee", "c0ffef"),
            text.replace("1800000000", "1800000001"),
            text[..text.len() / 2].to_owned(),
            "{}".to_owned(),
            String::new(),
        ] {
            assert!(open(bad.as_bytes(), &key).is_err());
        }
        let mut flipped = file.clone();
        let i = flipped.len() - 10;
        flipped[i] = if flipped[i] == b'0' { b'1' } else { b'0' };
        assert!(open(&flipped, &key).is_err());
    }
}
