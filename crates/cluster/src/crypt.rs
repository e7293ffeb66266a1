//! Encryption at rest for the cluster's store: every Raft log entry, the vote, and every snapshot
//! is sealed with XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) under a data key of the
//! manager's own, with what the record is (a log entry's index and term, a snapshot's id) as
//! associated data: a record moved to another place, or another store's, does not open.
//!
//! The data key is kept beside the node's TLS key: in clear in a 0600 file (no protection against
//! someone who can read that directory, as Swarm's design says of its own), or, with autolock,
//! sealed by an unlock key that is never written to disk; a manager restarted with autolock waits
//! for `cluster unlock`.

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A record that does not open: corrupt, moved, or sealed under another key.
    #[error("{0}: does not decrypt (corrupt, moved, or sealed under another key)")]
    Sealed(String),
    /// Autolock is on and the unlock key has not been given.
    #[error("the store is locked: give the unlock key (`bulkhead cluster unlock`)")]
    Locked,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Version of the sealed format (the first byte of every sealed record).
const VERSION: u8 = 1;
const NONCE: usize = 24;

/// Random bytes from the kernel.
pub fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    let mut filled = 0;
    while filled < N {
        filled += rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| Error::Invalid(format!("getrandom: {e}")))?;
    }
    Ok(b)
}

/// A 256-bit key, wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn generate() -> Result<Key> {
        Ok(Key(random::<32>()?))
    }

    pub fn from_slice(b: &[u8]) -> Result<Key> {
        let a: [u8; 32] = b.try_into().map_err(|_| Error::Invalid("a key is 32 bytes".into()))?;
        Ok(Key(a))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `version ‖ nonce ‖ ciphertext and tag`, the nonce random (192 bits: no counter to keep).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let nonce = random::<NONCE>()?;
        let ct = XChaCha20Poly1305::new(self.0.as_ref().into())
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| Error::Invalid("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`Key::seal`] made with the same `aad`; `what` names the record in errors.
    pub fn open(&self, aad: &[u8], sealed: &[u8], what: &str) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < 1 + NONCE + 16 || sealed[0] != VERSION {
            return Err(Error::Sealed(what.into()));
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE);
        XChaCha20Poly1305::new(self.0.as_ref().into())
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| Error::Sealed(what.into()))
    }
}

/// The unlock key's text form, as `cluster unlock-key` prints it.
const UNLOCK_PREFIX: &str = "BKUNLOCK-1-";
/// Associated data of the data key sealed by the unlock key.
const DATA_KEY_AAD: &[u8] = b"bulkhead cluster data key";

/// An unlock key (autolock): printed once, never stored.
pub fn unlock_key_text(k: &Key) -> String {
    format!("{UNLOCK_PREFIX}{}", hex::encode(k.as_bytes()))
}

/// Reads an unlock key as [`unlock_key_text`] writes it (surrounding white space ignored).
pub fn parse_unlock_key(s: &str) -> Result<Key> {
    let bad = || Error::Invalid("not an unlock key (BKUNLOCK-1-<64 hex digits>)".into());
    let hex_part = s.trim().strip_prefix(UNLOCK_PREFIX).ok_or_else(bad)?;
    let b = Zeroizing::new(hex::decode(hex_part).map_err(|_| bad())?);
    Key::from_slice(&b).map_err(|_| bad())
}

/// How the data key is kept on disk: `data.key`, 0600, either the key itself or the key sealed by
/// the unlock key.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyFile {
    /// "plain" or "locked".
    kind: String,
    /// The key (plain) or the sealed key (locked), hex.
    key: String,
}

/// Writes the data key into `path` (0600, atomically): sealed by `unlock` if given.
pub fn write_data_key(path: &Path, key: &Key, unlock: Option<&Key>) -> Result<()> {
    let file = match unlock {
        Some(u) => KeyFile {
            kind: "locked".into(),
            key: hex::encode(u.seal(DATA_KEY_AAD, key.as_bytes())?),
        },
        None => KeyFile {
            kind: "plain".into(),
            key: hex::encode(key.as_bytes()),
        },
    };
    let text = Zeroizing::new(serde_json::to_vec(&file).map_err(|e| Error::Invalid(e.to_string()))?);
    write_private(path, &text)
}

/// Whether the data key in `path` is sealed by an unlock key.
pub fn is_locked(path: &Path) -> Result<bool> {
    Ok(read_key_file(path)?.kind == "locked")
}

fn read_key_file(path: &Path) -> Result<KeyFile> {
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let text = Zeroizing::new(std::fs::read(path).map_err(io)?);
    serde_json::from_slice(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// Reads the data key from `path`; a locked one needs `unlock` (else [`Error::Locked`]).
pub fn read_data_key(path: &Path, unlock: Option<&Key>) -> Result<Key> {
    let f = read_key_file(path)?;
    let raw = Zeroizing::new(hex::decode(&f.key).map_err(|_| Error::Invalid(format!("{}: not hex", path.display())))?);
    match (f.kind.as_str(), unlock) {
        ("plain", _) => Key::from_slice(&raw),
        ("locked", None) => Err(Error::Locked),
        ("locked", Some(u)) => {
            let k = u
                .open(DATA_KEY_AAD, &raw, "the data key")
                .map_err(|_| Error::Invalid("wrong unlock key".into()))?;
            Key::from_slice(&k)
        }
        (other, _) => Err(Error::Invalid(format!("{}: unknown kind {other:?}", path.display()))),
    }
}

/// Writes `data` to `path` atomically, 0600 from the start (never readable by others, even
/// briefly), and forced to disk.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        hex::encode(random::<8>()?)
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let done = f
        .write_all(data)
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// The prefix of a node key file sealed by the unlock key (a plain one is PEM).
const SEALED_KEY_PREFIX: &str = "BKSEALED-1:";
const NODE_KEY_AAD: &[u8] = b"bulkhead node key";

/// Writes the node's TLS key (PEM) into `path`, 0600: sealed by `unlock` when autolock is on.
pub fn write_node_key(path: &Path, pem: &str, unlock: Option<&Key>) -> Result<()> {
    match unlock {
        Some(u) => {
            let sealed = format!("{SEALED_KEY_PREFIX}{}\n", hex::encode(u.seal(NODE_KEY_AAD, pem.as_bytes())?));
            write_private(path, sealed.as_bytes())
        }
        None => write_private(path, pem.as_bytes()),
    }
}

/// Reads the node's TLS key (PEM) from `path`, opening it with `unlock` if it is sealed.
pub fn read_node_key(path: &Path, unlock: Option<&Key>) -> Result<Zeroizing<String>> {
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
    let Some(hex_part) = text.trim().strip_prefix(SEALED_KEY_PREFIX) else {
        return Ok(text);
    };
    let u = unlock.ok_or(Error::Locked)?;
    let sealed = hex::decode(hex_part).map_err(|_| Error::Invalid(format!("{}: not hex", path.display())))?;
    let pem = u
        .open(NODE_KEY_AAD, &sealed, "the node key")
        .map_err(|_| Error::Invalid("wrong unlock key".into()))?;
    String::from_utf8(pem.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| Error::Invalid(format!("{}: not text", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_only_in_their_place_under_their_key() {
        let k = Key::generate().unwrap();
        let s = k.seal(b"log:7:2", b"marker").unwrap();
        assert!(!s.windows(6).any(|w| w == b"marker"));
        assert_eq!(&**k.open(b"log:7:2", &s, "entry 7").unwrap(), b"marker");
        assert!(k.open(b"log:8:2", &s, "entry 8").is_err(), "moved");
        assert!(Key::generate().unwrap().open(b"log:7:2", &s, "e").is_err(), "another key");
        let mut t = s.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(k.open(b"log:7:2", &t, "e").is_err(), "tampered");
        assert!(k.open(b"log:7:2", &s[..10], "e").is_err(), "cut short");
        // Two seals of one text differ (random nonces).
        assert_ne!(k.seal(b"a", b"x").unwrap(), k.seal(b"a", b"x").unwrap());
    }

    #[test]
    fn the_data_key_is_kept_plain_or_sealed_by_the_unlock_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("data.key");
        let key = Key::generate().unwrap();
        write_data_key(&p, &key, None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_data_key(&p, None).unwrap().as_bytes(), key.as_bytes());
        let unlock = Key::generate().unwrap();
        write_data_key(&p, &key, Some(&unlock)).unwrap();
        assert!(is_locked(&p).unwrap());
        assert!(!std::fs::read_to_string(&p).unwrap().contains(&hex::encode(key.as_bytes())));
        assert!(matches!(read_data_key(&p, None), Err(Error::Locked)));
        assert!(read_data_key(&p, Some(&Key::generate().unwrap()))
            .unwrap_err()
            .to_string()
            .contains("wrong unlock key"));
        let text = unlock_key_text(&unlock);
        let again = parse_unlock_key(&format!(" {text}\n")).unwrap();
        assert_eq!(read_data_key(&p, Some(&again)).unwrap().as_bytes(), key.as_bytes());
        for bad in ["", "BKUNLOCK-1-zz", "BKUNLOCK-2-00", &text[..text.len() - 2]] {
            assert!(parse_unlock_key(bad).is_err(), "{bad}");
        }
    }
}
