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

/// python's http.server on a free loopback port, serving `dir`; stopped when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &std::path::Path) -> (Server, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = Server(
        Command::new(python())
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
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
    (server, port)
}

/// bulkhead-tuf-client (the CLIENT-CLI protocol) against metadata and targets served on `port`.
fn conformance_client(dir: &std::path::Path, out: &std::path::Path, port: u16, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bulkhead-tuf-client"))
        .arg("--metadata-dir")
        .arg(dir)
        .args(["--metadata-url", &format!("http://127.0.0.1:{port}/metadata")])
        .args(["--target-base-url", &format!("http://127.0.0.1:{port}/targets")])
        .arg("--target-dir")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

/// `bulkhead-tuf-client init ROOT` into `dir`.
fn conformance_init(dir: &std::path::Path, root: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bulkhead-tuf-client"))
        .arg("--metadata-dir")
        .arg(dir)
        .arg("init")
        .arg(root)
        .output()
        .unwrap()
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

    let (_server, port) = serve(&served);
    let client_dir = d.path().join("client");
    let out_dir = d.path().join("downloads");
    let client = |args: &[&str]| conformance_client(&client_dir, &out_dir, port, args);
    let init = conformance_init(&client_dir, &meta.join("1.root.json"));
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

/// The scenarios python-tuf builds (tests/python/scenarios.py), in a temporary directory.
fn scenarios() -> (tempfile::TempDir, serde_json::Value) {
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(python()).arg(script("scenarios.py")).arg(d.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected = serde_json::from_slice(&std::fs::read(d.path().join("expected.json")).unwrap()).unwrap();
    (d, expected)
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Pre-order, depth-first, only into roles whose paths match, a terminating delegation ending the
/// search, a role the search never reaches never fetched (the repository withholds it), role names
/// percent-encoded, and the trusted metadata stored byte for byte as served, with nothing else.
#[test]
fn delegations_are_searched_as_the_specification_says() {
    let (d, expected) = scenarios();
    let meta = d.path().join("good/metadata");
    let root = std::fs::read(meta.join("1.root.json")).unwrap();
    let state = d.path().join("state");
    let digest_of = |name: &str| resolve(&root, &meta, &state, name).unwrap_or_else(|e| panic!("{name}: {e}")).digest;
    for name in ["a/x1", "b", "q/1", "dir/sub/file"] {
        assert_eq!(digest_of(name).hex(), expected[name].as_str().unwrap(), "{name}");
    }
    assert_ne!(
        digest_of("b").hex(),
        expected["b-in-C"].as_str().unwrap(),
        "C is after the terminating B"
    );
    // No role's paths match a two-part name but A's and A1's ("a/*"): not signed.
    assert!(matches!(
        resolve(&root, &meta, &state, "z/nowhere"),
        Err(bulkhead_trust::Error::NotSigned(_))
    ));
    // A one-part name the terminating B does not cover leads the search into C, which the
    // repository withholds: that target cannot be resolved, but nothing above broke.
    assert!(resolve(&root, &meta, &state, "elsewhere")
        .unwrap_err()
        .to_string()
        .contains("C.json"));
    assert_eq!(
        names(&state),
        [
            "..%2Fodd%3F%23name.json",
            "A.json",
            "A1.json",
            "B.json",
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
    for (stored, served) in [
        ("..%2Fodd%3F%23name.json", "1...%2Fodd%3F%23name.json"),
        ("A1.json", "1.A1.json"),
        ("snapshot.json", "1.snapshot.json"),
        ("timestamp.json", "timestamp.json"),
        ("root.json", "1.root.json"),
    ] {
        assert_eq!(
            std::fs::read(state.join(stored)).unwrap(),
            std::fs::read(meta.join(served)).unwrap(),
            "{stored} is not what was served"
        );
    }
    assert_eq!(
        names(d.path()).iter().filter(|n| n.contains("odd")).count(),
        0,
        "a role name escaped its directory"
    );
}

/// What a client must refuse, each from the same trusted state: an unsigned timestamp, an expired
/// one, a snapshot that is not the version the timestamp names, a missing snapshot. A role whose
/// signature does not meet its delegator's threshold breaks only the targets the search reaches
/// through it. The trusted root never moves.
#[test]
fn broken_repositories_are_refused() {
    let (d, _) = scenarios();
    let good = d.path().join("good/metadata");
    let root = std::fs::read(good.join("1.root.json")).unwrap();
    let trusted = d.path().join("trusted");
    resolve(&root, &good, &trusted, "a/x1").unwrap();
    for (variant, says) in [
        ("unsigned_timestamp", "timestamp: 0 valid signature"),
        ("expired_timestamp", "timestamp.json has expired"),
        ("snapshot_version_mismatch", "snapshot"),
        ("no_snapshot", "snapshot.json"),
    ] {
        let state = d.path().join(format!("state-{variant}"));
        if variant == "no_snapshot" {
            // From a machine with a snapshot already, the one it has is still the one the
            // timestamp names (nothing to fetch): a first-time client needs the missing one.
            std::fs::create_dir(&state).unwrap();
        } else {
            sh_cp(&trusted, &state);
        }
        let err = match resolve(&root, &d.path().join(variant).join("metadata"), &state, "dir/sub/file") {
            Ok(r) => panic!("{variant}: accepted ({r:?})"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(says), "{variant}: {err}");
        assert_eq!(std::fs::read(state.join("root.json")).unwrap(), root, "{variant}");
    }
    let state = d.path().join("state-wrong-key");
    std::fs::create_dir(&state).unwrap();
    let meta = d.path().join("wrong_key_for_A1/metadata");
    assert!(
        resolve(&root, &meta, &state, "dir/sub/file").is_ok(),
        "A1 is not on the way to dir/sub/file"
    );
    let err = resolve(&root, &meta, &state, "a/x1").unwrap_err().to_string();
    assert!(err.contains("A1: 0 valid signature"), "{err}");
    assert!(!state.join("A1.json").exists(), "an unverified role was stored");
}

fn sh_cp(from: &std::path::Path, to: &std::path::Path) {
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
}

/// The conformance client over HTTP against a consistent-snapshot repository: artifacts in
/// sub-directories fetched by hash-prefixed name and checked against both hashes, several
/// targets in one run, and an artifact already downloaded not fetched again (served copies gone).
#[test]
fn the_conformance_client_downloads_by_consistent_name_and_reuses_what_it_has() {
    let (d, expected) = scenarios();
    let served = d.path().join("good");
    let (_server, port) = serve(&served);
    let (client_dir, out_dir) = (d.path().join("client"), d.path().join("downloads"));
    let client = |args: &[&str]| conformance_client(&client_dir, &out_dir, port, args);
    let init = conformance_init(&client_dir, &served.join("metadata/1.root.json"));
    assert!(init.status.success());
    let o = client(&["--target-name", "dir/sub/file", "--target-name", "a/x1", "download"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = std::fs::read(out_dir.join("dir%2Fsub%2Ffile")).unwrap();
    assert_eq!(Digest::sha256_of(&got).hex(), expected["dir/sub/file"].as_str().unwrap());
    assert!(out_dir.join("a%2Fx1").exists());
    // Every file in the metadata directory is trusted metadata, by its role's name.
    for n in names(&client_dir) {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(client_dir.join(&n)).unwrap()).unwrap();
        assert!(v["signed"]["_type"].is_string(), "{n} is not metadata");
    }
    // The served artifacts go away: what was downloaded is reused, not fetched again.
    std::fs::remove_dir_all(served.join("targets")).unwrap();
    let o = client(&["--target-name", "dir/sub/file", "download"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A local copy that no longer matches is fetched again (and here cannot be).
    std::fs::write(out_dir.join("dir%2Fsub%2Ffile"), b"changed").unwrap();
    assert_eq!(client(&["--target-name", "dir/sub/file", "download"]).status.code(), Some(1));
}
