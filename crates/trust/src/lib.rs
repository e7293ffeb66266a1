//! # bulkhead-trust
//!
//! Content trust: a tag means exactly the manifest its publisher signed, and nothing older. Each
//! image repository has a TUF repository (The Update Framework 1.0: root, targets, snapshot and
//! timestamp roles, each with keys and a threshold); a target per tag records the sha256 and length
//! of the manifest. Metadata is made and verified with `tough`; keys are Ed25519 or ECDSA P-256,
//! kept encrypted with a passphrase ([`keys`]).

pub mod client;
pub mod keys;
pub mod policy;
pub mod repo;
pub mod store;
pub mod threshold;

pub use keys::{KeyKind, PrivateKey};
pub use repo::{Expiry, Resolved, RoleSpec, Roles};

/// What can go wrong, as one line naming the role, version, key or date at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key that cannot be made, read, decrypted or used.
    #[error("{0}")]
    Key(String),
    /// Metadata that does not verify, or cannot be made.
    #[error("trust: {0}")]
    Metadata(String),
    /// The metadata verifies but does not name this tag.
    /// The policy file.
    #[error("policy: {0}")]
    Policy(String),
    #[error("trust: no signed target {0:?}: the tag is not signed (or was revoked)")]
    NotSigned(String),
    #[error(transparent)]
    Image(#[from] bulkhead_image::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses TUF metadata as a registry would hand it over (any of the four top-level roles), checking
/// a root's own signatures against itself; for fuzzing the parser that outside input meets first.
pub fn parse_metadata(data: &[u8]) -> Result<String> {
    use tough::schema::{Root, Signed, Snapshot, Targets, Timestamp};
    let bad = |e: serde_json::Error| Error::Metadata(format!("not TUF metadata: {e}"));
    if let Ok(root) = serde_json::from_slice::<Signed<Root>>(data) {
        root.signed
            .verify_role(&root)
            .map_err(|e| Error::Metadata(format!("root version {}: {e}", root.signed.version)))?;
        return Ok(format!("root {}", root.signed.version));
    }
    if let Ok(t) = serde_json::from_slice::<Signed<Targets>>(data) {
        return Ok(format!("targets {}", t.signed.version));
    }
    if let Ok(s) = serde_json::from_slice::<Signed<Snapshot>>(data) {
        return Ok(format!("snapshot {}", s.signed.version));
    }
    let t = serde_json::from_slice::<Signed<Timestamp>>(data).map_err(bad)?;
    Ok(format!("timestamp {}", t.signed.version))
}
