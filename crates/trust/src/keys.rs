//! Signing keys: Ed25519 and ECDSA P-256, made with aws-lc-rs, kept as PKCS#8 encrypted with a
//! passphrase (PBES2: scrypt + AES-256-CBC, the standard `ENCRYPTED PRIVATE KEY` PEM that openssl
//! reads too). A key is decrypted only in memory, for the signing that needs it.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use pkcs8::der::pem::LineEnding;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The kinds of key TUF metadata here is signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    EcdsaP256,
}

impl std::str::FromStr for KeyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ed25519" => Ok(KeyKind::Ed25519),
            "ecdsa-p256" | "p256" | "ecdsa" => Ok(KeyKind::EcdsaP256),
            _ => Err(Error::Key(format!("unknown key type {s:?} (ed25519 or ecdsa-p256)"))),
        }
    }
}

/// A private key, decrypted, in memory only (zeroed when dropped).
pub struct PrivateKey {
    der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({})", self.key_id().unwrap_or_default())
    }
}

impl PrivateKey {
    /// A new key of `kind`.
    pub fn generate(kind: KeyKind) -> Result<Self> {
        let rng = SystemRandom::new();
        let doc = match kind {
            KeyKind::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| Error::Key(format!("generating a key: {e}")))?,
            KeyKind::EcdsaP256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .map_err(|e| Error::Key(format!("generating a key: {e}")))?,
        };
        Ok(PrivateKey {
            der: Zeroizing::new(doc.as_ref().to_vec()),
        })
    }

    /// The key as TUF metadata names it (public part, scheme).
    pub fn tuf_key(&self) -> Result<tough::schema::key::Key> {
        Ok(self.signer()?.tuf_key())
    }

    /// Its TUF key id (hex).
    pub fn key_id(&self) -> Result<String> {
        let id = self.tuf_key()?.key_id().map_err(|e| Error::Key(format!("key id: {e}")))?;
        Ok(hex::encode(&*id))
    }

    pub(crate) fn signer(&self) -> Result<Box<dyn tough::sign::Sign>> {
        tough::sign::parse_keypair(&self.der)
            .map(|k| Box::new(k) as Box<dyn tough::sign::Sign>)
            .map_err(|e| Error::Key(format!("not a usable key: {e}")))
    }

    /// The key encrypted with `passphrase`, as PEM.
    pub fn to_encrypted_pem(&self, passphrase: &str) -> Result<String> {
        if passphrase.is_empty() {
            return Err(Error::Key("an empty passphrase would leave the key unprotected".into()));
        }
        let info = pkcs8::PrivateKeyInfo::try_from(self.der.as_slice()).map_err(|e| Error::Key(format!("encoding the key: {e}")))?;
        let doc = info
            .encrypt(pkcs8::rand_core::OsRng, passphrase.as_bytes())
            .map_err(|e| Error::Key(format!("encrypting the key: {e}")))?;
        let pem = doc
            .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
            .map_err(|e| Error::Key(format!("encoding the key: {e}")))?;
        Ok(pem.to_string())
    }

    /// Decrypts a key written by [`PrivateKey::to_encrypted_pem`].
    pub fn from_encrypted_pem(pem: &str, passphrase: &str) -> Result<Self> {
        let (label, doc) = pkcs8::SecretDocument::from_pem(pem).map_err(|_| Error::Key("not a PEM private key".into()))?;
        if label != "ENCRYPTED PRIVATE KEY" {
            return Err(Error::Key(format!(
                "a {label}, not an encrypted private key (keys are kept encrypted)"
            )));
        }
        let info =
            pkcs8::EncryptedPrivateKeyInfo::try_from(doc.as_bytes()).map_err(|e| Error::Key(format!("not an encrypted key: {e}")))?;
        let plain = info
            .decrypt(passphrase.as_bytes())
            .map_err(|_| Error::Key("wrong passphrase (or a damaged key file)".into()))?;
        let key = PrivateKey {
            der: Zeroizing::new(plain.as_bytes().to_vec()),
        };
        key.signer()?;
        Ok(key)
    }

    /// Reads and decrypts the key file at `path`.
    pub fn load(path: &Path, passphrase: &str) -> Result<Self> {
        let pem = std::fs::read_to_string(path).map_err(|e| Error::Key(format!("{}: {e}", path.display())))?;
        Self::from_encrypted_pem(&pem, passphrase).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }

    /// Writes the key encrypted to `path`, readable by its owner only; never over an existing file.
    pub fn save(&self, path: &Path, passphrase: &str) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let pem = self.to_encrypted_pem(passphrase)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Key(format!("{}: {e}", dir.display())))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::Key(format!("{}: {e}", path.display())))?;
        f.write_all(pem.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }
}

/// A decrypted key handed to tough's editor, which asks for signers through this trait.
#[derive(Debug)]
pub(crate) struct MemoryKeySource(pub(crate) std::sync::Arc<PrivateKey>);

#[async_trait::async_trait]
impl tough::key_source::KeySource for MemoryKeySource {
    async fn as_sign(&self) -> std::result::Result<Box<dyn tough::sign::Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0.signer().map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
    }

    async fn write(&self, _value: &str, _key_id_hex: &str) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err("keys are written encrypted by bulkhead, not through tough".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_encrypted_and_refuse_a_wrong_passphrase() {
        for kind in [KeyKind::Ed25519, KeyKind::EcdsaP256] {
            let k = PrivateKey::generate(kind).unwrap();
            let pem = k.to_encrypted_pem("open sesame").unwrap();
            assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{pem}");
            let back = PrivateKey::from_encrypted_pem(&pem, "open sesame").unwrap();
            assert_eq!(back.key_id().unwrap(), k.key_id().unwrap());
            let err = PrivateKey::from_encrypted_pem(&pem, "open sesam").unwrap_err().to_string();
            assert!(err.contains("wrong passphrase"), "{err}");
        }
        assert!(PrivateKey::generate(KeyKind::Ed25519).unwrap().to_encrypted_pem("").is_err());
    }
}
