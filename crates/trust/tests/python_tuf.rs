//! Interoperability with python-tuf (PyPI `tuf` 7.x, the reference implementation; scripts/setup
//! puts it in .venv): a repository python-tuf builds verifies with our client, and metadata we
//! write verifies with python-tuf's client.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use bulkhead_image::Digest;
use bulkhead_trust::repo::{init, resolve, sign_target, Expiry, RoleSpec, Roles};
use bulkhead_trust::{KeyKind, PrivateKey};

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(p.exists(), "{} is missing: scripts/setup makes it", p.display());
    p
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(name)
}

#[test]
fn a_python_tuf_repository_verifies_with_our_client() {
    let d = tempfile::tempdir().unwrap();
    let meta = d.path().join("meta");
    std::fs::create_dir_all(&meta).unwrap();
    let digest = Digest::sha256_of(b"a manifest");
    let o = Command::new(python())
        .arg(script("make_repository.py"))
        .arg(&meta)
        .args(["1.0", digest.hex(), "10"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = std::fs::read(meta.join("1.root.json")).unwrap();
    let r = resolve(&root, &meta, &d.path().join("state"), "1.0").unwrap();
    assert_eq!((r.digest, r.length), (digest, 10));
}

#[test]
fn our_metadata_verifies_with_python_tuf() {
    let d = tempfile::tempdir().unwrap();
    let meta = d.path().join("meta");
    let key = |k: KeyKind| Arc::new(PrivateKey::generate(k).unwrap());
    let one = |k: Arc<PrivateKey>| RoleSpec {
        keys: vec![k],
        threshold: 1,
    };
    let (t, s, ts) = (key(KeyKind::EcdsaP256), key(KeyKind::Ed25519), key(KeyKind::Ed25519));
    let roles = Roles {
        root: one(key(KeyKind::Ed25519)),
        targets: one(t.clone()),
        snapshot: one(s.clone()),
        timestamp: one(ts.clone()),
    };
    init(&meta, &roles, &Expiry::default()).unwrap();
    let digest = Digest::sha256_of(b"another manifest");
    sign_target(&meta, "2.1", &digest, 1234, HashMap::new(), &[t, s, ts], &Expiry::default()).unwrap();
    let o = Command::new(python())
        .arg(script("verify_repository.py"))
        .arg(meta.join("1.root.json"))
        .arg(&meta)
        .arg("2.1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python-tuf refused our metadata: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("{} 1234", digest.hex()));
}
