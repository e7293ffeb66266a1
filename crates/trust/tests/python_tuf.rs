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

/// The conformance client (the suite's CLIENT-CLI protocol) against a python-tuf repository over
/// HTTP: init, refresh, download verify and fetch; a target whose bytes differ is refused.
#[test]
fn the_conformance_client_refreshes_and_downloads_over_http() {
    let d = tempfile::tempdir().unwrap();
    let served = d.path().join("served");
    let (meta, targets) = (served.join("metadata"), served.join("targets"));
    std::fs::create_dir_all(&meta).unwrap();
    std::fs::create_dir_all(&targets).unwrap();
    let content = b"the manifest a tag names\n";
    let digest = Digest::sha256_of(content);
    let o = Command::new(python())
        .arg(script("make_repository.py"))
        .arg(&meta)
        .args(["app-1.0", digest.hex(), &content.len().to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(targets.join("app-1.0"), content).unwrap();
    std::fs::write(targets.join("app-2.0"), b"not what any metadata says").unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        Command::new(python())
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(&served)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the HTTP server did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let client_dir = d.path().join("client");
    let out_dir = d.path().join("downloads");
    let client = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bulkhead-tuf-client"))
            .arg("--metadata-dir")
            .arg(&client_dir)
            .args(["--metadata-url", &format!("http://127.0.0.1:{port}/metadata")])
            .args(["--target-base-url", &format!("http://127.0.0.1:{port}/targets")])
            .arg("--target-dir")
            .arg(&out_dir)
            .args(args)
            .output()
            .unwrap()
    };
    let init = Command::new(env!("CARGO_BIN_EXE_bulkhead-tuf-client"))
        .arg("--metadata-dir")
        .arg(&client_dir)
        .arg("init")
        .arg(meta.join("1.root.json"))
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let o = client(&["refresh"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(client_dir.join("timestamp.json").exists(), "the trusted metadata is kept");
    let o = client(&["--target-name", "app-1.0", "download"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(out_dir.join("app-1.0")).unwrap(), content);
    // A target no metadata names, and a served target whose bytes changed: refused (exit 1).
    assert_eq!(client(&["--target-name", "app-2.0", "download"]).status.code(), Some(1));
    std::fs::write(targets.join("app-1.0"), b"the manifest a tag names, edited\n").unwrap();
    std::fs::remove_file(out_dir.join("app-1.0")).unwrap();
    assert_eq!(client(&["--target-name", "app-1.0", "download"]).status.code(), Some(1));
}
