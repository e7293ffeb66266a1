//! The store's names, signed: every change to the reference table is signed with a machine key kept
//! outside the store (`<config>/trust/names.key`, root's alone), and reading the table checks the
//! signature. Whoever can write the store but not read that key (a restored backup, a process that
//! reached /var/lib/bulkhead, another user with write access) cannot point a name at another image
//! unnoticed: images imported or built here are recorded under a local key, so running them is
//! verified too.
//!
//! Which stores have been signed is recorded beside the key (`signed-stores/<sha256 of the store
//! path>`), so stripping the signature from a store's table is noticed as well; a store that was
//! never signed (made before this existed) is accepted until its first change signs it.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext as _, Result};

/// A signature over the reference table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamesSignature {
    /// sha256 of the public key, hex.
    pub keyid: String,
    /// Ed25519 signature, hex.
    pub sig: String,
}

/// The key that signs one store's names, and where that store is recorded as signed.
#[derive(Clone, Debug)]
pub struct NamesKey {
    key: PathBuf,
    marker: PathBuf,
}

impl NamesKey {
    /// The key in `trust_dir`, for the store at `store_root`.
    pub fn new(trust_dir: &Path, store_root: &Path) -> Self {
        let canonical = fs::canonicalize(store_root).unwrap_or_else(|_| store_root.to_path_buf());
        let id = crate::digest::Digest::sha256_of(canonical.as_os_str().as_encoded_bytes());
        NamesKey {
            key: trust_dir.join("names.key"),
            marker: trust_dir.join("signed-stores").join(id.hex()),
        }
    }

    fn load(&self, create: bool) -> Result<Option<Ed25519KeyPair>> {
        match fs::read(&self.key) {
            Ok(der) => Ed25519KeyPair::from_pkcs8(&der)
                .map(Some)
                .map_err(|_| Error::invalid(format!("{}: not an Ed25519 key", self.key.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                use std::os::unix::fs::OpenOptionsExt;
                let doc =
                    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| Error::invalid("generating the names key failed"))?;
                if let Some(d) = self.key.parent() {
                    fs::create_dir_all(d).at(d)?;
                }
                match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&self.key) {
                    Ok(mut f) => {
                        f.write_all(doc.as_ref()).and_then(|_| f.sync_all()).at(&self.key)?;
                    }
                    // Another process made it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e).at(&self.key),
                }
                self.load(false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&self.key),
        }
    }

    fn keyid(kp: &Ed25519KeyPair) -> String {
        crate::digest::Digest::sha256_of(kp.public_key().as_ref()).hex().to_owned()
    }

    /// Signs `table` (the canonical bytes of the reference table); the store is recorded as
    /// signed once `committed` is called after the signed table is written.
    pub(crate) fn sign(&self, table: &[u8]) -> Result<NamesSignature> {
        let kp = self.load(true)?.ok_or_else(|| Error::invalid("no names key"))?;
        Ok(NamesSignature {
            keyid: Self::keyid(&kp),
            sig: hex::encode(kp.sign(table).as_ref()),
        })
    }

    /// Records that this store's table is signed from now on.
    pub(crate) fn committed(&self) -> Result<()> {
        if self.marker.exists() {
            return Ok(());
        }
        if let Some(d) = self.marker.parent() {
            fs::create_dir_all(d).at(d)?;
        }
        fs::write(&self.marker, b"").at(&self.marker)
    }

    /// Checks `sig` over `table`: required once the store has been signed.
    pub(crate) fn verify(&self, table: &[u8], sig: Option<&NamesSignature>) -> Result<()> {
        if !self.marker.exists() {
            return Ok(());
        }
        let tampered = |why: &str| {
            Error::invalid(format!(
                "the store's names were changed outside bulkhead ({why}): refs.json does not carry this machine's signature (system check --repair drops the names)"
            ))
        };
        let sig = sig.ok_or_else(|| tampered("the signature is missing"))?;
        let kp = self
            .load(false)?
            .ok_or_else(|| tampered(&format!("{} is missing", self.key.display())))?;
        if sig.keyid != Self::keyid(&kp) {
            return Err(tampered("signed by another key"));
        }
        let raw = hex::decode(&sig.sig).map_err(|_| tampered("the signature is not hex"))?;
        UnparsedPublicKey::new(&ED25519, kp.public_key().as_ref())
            .verify(table, &raw)
            .map_err(|_| tampered("the signature does not match"))
    }
}
