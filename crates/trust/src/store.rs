//! Where trust lives on a machine (`<config>/trust/`):
//!
//! ```text
//! private/<keyid>.key     signing keys, encrypted (0600); the root key belongs offline
//! names.json              key name -> key id
//! repos/<host>/<repo>/    a publisher's metadata for one image repository (N.root.json, targets.json, ...)
//! ```
//!
//! Passphrases come from `BULKHEAD_TRUST_<ROLE>_PASSPHRASE` (ROOT, TARGETS, SNAPSHOT, TIMESTAMP), so
//! that the root's is asked for only by the operations that sign the root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::keys::{KeyKind, PrivateKey};
use crate::repo::{Expiry, RoleSpec, Roles};
use crate::{Error, Result};

/// The roles whose keys sign an ordinary `trust sign` (the root's stay offline).
pub const ONLINE_ROLES: [&str; 3] = ["targets", "snapshot", "timestamp"];

/// The trust directory of a machine.
#[derive(Clone, Debug)]
pub struct TrustDir {
    dir: PathBuf,
}

/// The passphrase for `role`'s keys: from the environment, else asked for on the terminal
/// (without echo).
pub fn passphrase(role: &str) -> Result<String> {
    let var = format!("BULKHEAD_TRUST_{}_PASSPHRASE", role.to_ascii_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return Ok(p);
    }
    let what = if role == "key" {
        "the key".to_owned()
    } else {
        format!("the {role} key")
    };
    prompt(&format!("Passphrase for {what}: "))
        .ok_or_else(|| Error::Key(format!("{what}'s passphrase is needed: set {var}, or run on a terminal")))
}

/// Reads a line from the controlling terminal with echo off; None without a terminal.
fn prompt(question: &str) -> Option<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    use std::io::{BufRead as _, Write as _};
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").ok()?;
    let saved = tcgetattr(&tty).ok()?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&tty, OptionalActions::Now, &quiet).ok()?;
    let mut out = &tty;
    let _ = write!(out, "{question}");
    let _ = out.flush();
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(&tty, OptionalActions::Now, &saved);
    let _ = writeln!(out);
    read.ok()?;
    Some(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// The metadata directory name of an image repository (`host/path`), confined to safe names.
fn repo_dir_name(repo: &str) -> Result<PathBuf> {
    let ok = !repo.is_empty()
        && repo
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b)));
    if !ok {
        return Err(Error::Metadata(format!("{repo:?} is not a repository name")));
    }
    Ok(PathBuf::from(repo.replace(':', "_")))
}

impl TrustDir {
    pub fn new(config_dir: &Path) -> Self {
        TrustDir {
            dir: config_dir.join("trust"),
        }
    }

    fn names_path(&self) -> PathBuf {
        self.dir.join("names.json")
    }

    fn names(&self) -> Result<BTreeMap<String, String>> {
        match std::fs::read(self.names_path()) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| Error::Key(format!("{}: {e}", self.names_path().display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(Error::Key(format!("{}: {e}", self.names_path().display()))),
        }
    }

    /// Generates key `name`, encrypted with `passphrase`; returns its key id.
    pub fn generate_key(&self, name: &str, kind: KeyKind, passphrase: &str) -> Result<String> {
        let names = self.names()?;
        if names.contains_key(name) {
            return Err(Error::Key(format!("a key named {name:?} exists already")));
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(Error::Key(format!("{name:?} is not a key name ([A-Za-z0-9._-])")));
        }
        let key = PrivateKey::generate(kind)?;
        self.store_key(names, name, &key, passphrase)
    }

    /// Key `name_or_id` for another machine: the public key (TUF's JSON form, with its id), or with
    /// `private` the encrypted private key file as it is stored (never decrypted on the way out).
    pub fn export_key(&self, name_or_id: &str, private: bool) -> Result<String> {
        let id = self.key_id(name_or_id)?;
        let path = self.dir.join("private").join(format!("{id}.key"));
        let pem = std::fs::read_to_string(&path).map_err(|e| Error::Key(format!("{}: {e}", path.display())))?;
        if private {
            return Ok(pem);
        }
        let key = PrivateKey::from_encrypted_pem(&pem, &passphrase("key")?)?;
        let public = serde_json::to_value(key.tuf_key()?).map_err(|e| Error::Key(e.to_string()))?;
        serde_json::to_string_pretty(&serde_json::json!({"keyid": id, "key": public})).map_err(|e| Error::Key(e.to_string()))
    }

    /// Stores an encrypted private key file (from [`TrustDir::export_key`] or openssl) as `name`,
    /// after checking that `passphrase` opens it. Returns its key id.
    pub fn import_key(&self, name: &str, pem: &str, passphrase: &str) -> Result<String> {
        let key = PrivateKey::from_encrypted_pem(pem, passphrase)?;
        let names = self.names()?;
        if names.contains_key(name) {
            return Err(Error::Key(format!("a key named {name:?} exists already")));
        }
        self.store_key(names, name, &key, passphrase)
    }

    /// Saves `key` encrypted under its id and records `name` for it. Returns the id.
    fn store_key(&self, mut names: BTreeMap<String, String>, name: &str, key: &PrivateKey, passphrase: &str) -> Result<String> {
        let id = key.key_id()?;
        key.save(&self.dir.join("private").join(format!("{id}.key")), passphrase)?;
        names.insert(name.to_owned(), id.clone());
        let data = serde_json::to_vec_pretty(&names).map_err(|e| Error::Key(e.to_string()))?;
        std::fs::write(self.names_path(), data).map_err(|e| Error::Key(format!("{}: {e}", self.names_path().display())))?;
        Ok(id)
    }

    /// The key id of `name_or_id`.
    pub fn key_id(&self, name_or_id: &str) -> Result<String> {
        if let Some(id) = self.names()?.get(name_or_id) {
            return Ok(id.clone());
        }
        if name_or_id.len() == 64 && self.dir.join("private").join(format!("{name_or_id}.key")).exists() {
            return Ok(name_or_id.to_owned());
        }
        Err(Error::Key(format!("no key {name_or_id:?}")))
    }

    /// Decrypts key `id` with the passphrase of `role`.
    pub fn load_key(&self, id: &str, role: &str) -> Result<Arc<PrivateKey>> {
        let path = self.dir.join("private").join(format!("{id}.key"));
        Ok(Arc::new(PrivateKey::load(&path, &passphrase(role)?)?))
    }

    /// Whether this machine holds key `id`.
    pub fn has_key(&self, id: &str) -> bool {
        self.dir.join("private").join(format!("{id}.key")).exists()
    }

    /// The metadata directory of image repository `repo` (`host/path`).
    pub fn repo_dir(&self, repo: &str) -> Result<PathBuf> {
        Ok(self.dir.join("repos").join(repo_dir_name(repo)?))
    }

    /// `trust init`: a new root key (`<repo>-root`) and one key per online role, each encrypted with
    /// its role's passphrase, and version 1 of the repository's metadata. Returns the root key id.
    /// With `targets`, the targets role gets those existing keys (names or ids) and threshold
    /// instead of a new key of its own (several signers: `trust sign --partial`).
    pub fn init_repo(&self, repo: &str, kind: KeyKind, expiry: &Expiry, targets: Option<(&[String], u64)>) -> Result<String> {
        let dir = self.repo_dir(repo)?;
        if dir.join("1.root.json").exists() {
            return Err(Error::Metadata(format!(
                "{repo} has trust metadata already (trust rotate changes keys)"
            )));
        }
        let base = repo.replace(['/', ':'], "-");
        let mut spec = BTreeMap::new();
        for role in ["root", "targets", "snapshot", "timestamp"] {
            if role == "targets" && targets.is_some() {
                continue;
            }
            let pass = passphrase(role)?;
            let id = self.generate_key(&format!("{base}-{role}"), kind, &pass)?;
            spec.insert(role, self.load_key(&id, role)?);
        }
        let one = |role: &str| RoleSpec {
            keys: vec![spec[role].clone()],
            threshold: 1,
        };
        let targets = match targets {
            None => one("targets"),
            Some((names, threshold)) => RoleSpec {
                keys: names
                    .iter()
                    .map(|n| self.load_key(&self.key_id(n)?, "targets"))
                    .collect::<Result<Vec<_>>>()?,
                threshold,
            },
        };
        let roles = Roles {
            root: one("root"),
            targets,
            snapshot: one("snapshot"),
            timestamp: one("timestamp"),
        };
        crate::repo::init(&dir, &roles, expiry)?;
        spec["root"].key_id()
    }

    /// `trust rotate REPO root`: a new root key (encrypted with the root passphrase) replaces the
    /// current ones, in root version N+1 signed by both. Returns the new key id.
    pub fn rotate_root(&self, repo: &str, kind: KeyKind, expiry: &Expiry) -> Result<String> {
        let dir = self.repo_dir(repo)?;
        let root = crate::repo::latest_root(&dir)?;
        let signed: tough::schema::Signed<tough::schema::Root> = read_json(&root)?;
        let current = signed
            .signed
            .roles
            .get(&tough::schema::RoleType::Root)
            .ok_or_else(|| Error::Metadata("the root has no root role".into()))?;
        let mut old = Vec::new();
        for id in &current.keyids {
            let id = hex::encode(&**id);
            if self.has_key(&id) {
                old.push(self.load_key(&id, "root")?);
            }
        }
        if (old.len() as u64) < current.threshold.get() {
            return Err(Error::Key(format!(
                "rotating the root needs {} of its current keys here; {} are",
                current.threshold,
                old.len()
            )));
        }
        let version = signed.signed.version.get() + 1;
        let id = self.generate_key(
            &format!("{}-root-{version}", repo.replace(['/', ':'], "-")),
            kind,
            &passphrase("root")?,
        )?;
        let new = self.load_key(&id, "root")?;
        crate::repo::rotate_root(&dir, &old, &[new], 1, expiry)?;
        Ok(id)
    }

    /// `trust rotate REPO targets|snapshot|timestamp`: a new key for the role (encrypted with its
    /// passphrase) in root version N+1, signed by the root keys, and every online role signed anew
    /// under it. Returns the new key id.
    pub fn rotate_online(&self, repo: &str, role: &str, kind: KeyKind, expiry: &Expiry) -> Result<String> {
        let rt = serde_plain_role(role)?;
        if !ONLINE_ROLES.contains(&role) {
            return Err(Error::Metadata(format!(
                "{role} is not an online role (targets, snapshot or timestamp)"
            )));
        }
        let dir = self.repo_dir(repo)?;
        let root_keys = self.role_keys(&dir, "root")?;
        let version = crate::repo::latest_root(&dir)?
            .file_name()
            .and_then(|n| n.to_string_lossy().split('.').next().and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(0)
            + 1;
        let id = self.generate_key(
            &format!("{}-{role}-{version}", repo.replace(['/', ':'], "-")),
            kind,
            &passphrase(role)?,
        )?;
        let new = self.load_key(&id, role)?;
        let mut online = vec![new.clone()];
        for other in ONLINE_ROLES.iter().filter(|r| **r != role) {
            online.extend(self.role_keys(&dir, other)?);
        }
        crate::repo::rotate(&dir, rt, &root_keys, &[new], 1, &online, expiry)?;
        Ok(id)
    }

    /// The keys this machine holds for the online roles of the repository in `dir`, decrypted.
    pub fn online_keys(&self, dir: &Path) -> Result<Vec<Arc<PrivateKey>>> {
        let mut out = Vec::new();
        for role in ONLINE_ROLES {
            out.extend(self.role_keys(dir, role)?);
        }
        Ok(out)
    }

    /// The keys this machine holds for `role` of the repository in `dir`, decrypted with that
    /// role's passphrase.
    pub fn role_keys(&self, dir: &Path, role: &str) -> Result<Vec<Arc<PrivateKey>>> {
        let root = crate::repo::latest_root(dir)?;
        let signed: tough::schema::Signed<tough::schema::Root> = read_json(&root)?;
        let rt: tough::schema::RoleType = serde_plain_role(role)?;
        let keys = signed
            .signed
            .roles
            .get(&rt)
            .ok_or_else(|| Error::Metadata(format!("the root has no {role} role")))?;
        self.held_keys(&keys.keyids, role)
    }

    /// The keys this machine holds for the delegated role `role` (listed in the top-level targets'
    /// delegations), decrypted with that role's passphrase.
    pub fn delegated_keys(&self, dir: &Path, role: &str) -> Result<Vec<Arc<PrivateKey>>> {
        let path = dir.join("targets.json");
        let targets: tough::schema::Signed<tough::schema::Targets> = read_json(&path)?;
        let d = targets
            .signed
            .delegations
            .as_ref()
            .and_then(|d| d.roles.iter().find(|r| r.name == role))
            .ok_or_else(|| Error::Metadata(format!("no delegated role {role:?}")))?;
        self.held_keys(&d.keyids, role)
    }

    /// Those of `keyids` this machine holds, decrypted with `role`'s passphrase; at least one.
    fn held_keys(
        &self,
        keyids: &[tough::schema::decoded::Decoded<tough::schema::decoded::Hex>],
        role: &str,
    ) -> Result<Vec<Arc<PrivateKey>>> {
        let mut out = Vec::new();
        for id in keyids {
            let id = hex::encode(&**id);
            if self.has_key(&id) {
                out.push(self.load_key(&id, role)?);
            }
        }
        if out.is_empty() {
            return Err(Error::Key(format!("this machine holds no key of the {role} role")));
        }
        Ok(out)
    }

    /// Every metadata file of the repository in `dir` (name, content), for publishing.
    pub fn metadata_files(&self, dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| Error::Metadata(format!("{}: {e}", dir.display())))? {
            let e = e.map_err(|e| Error::Metadata(e.to_string()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                out.push((
                    name,
                    std::fs::read(e.path()).map_err(|err| Error::Metadata(format!("{}: {err}", e.path().display())))?,
                ));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Reads TUF metadata (or any JSON) from `path`.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let data = std::fs::read(path).map_err(|e| Error::Metadata(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&data).map_err(|e| Error::Metadata(format!("{}: {e}", path.display())))
}

fn serde_plain_role(role: &str) -> Result<tough::schema::RoleType> {
    serde_json::from_value(serde_json::Value::String(role.to_owned())).map_err(|e| Error::Metadata(format!("role {role}: {e}")))
}

/// Checks that `root` (a `1.root.json` fetched from a registry) is signed by enough of the `pinned`
/// root keys to meet its own root threshold: what lets a client trust a repository it has never
/// seen without trusting the registry.
pub fn verify_pinned_root(root: &[u8], pinned: &[String]) -> Result<()> {
    let signed: tough::schema::Signed<tough::schema::Root> =
        serde_json::from_slice(root).map_err(|e| Error::Metadata(format!("root: not TUF metadata: {e}")))?;
    signed
        .signed
        .verify_role(&signed)
        .map_err(|e| Error::Metadata(format!("root version {}: {e}", signed.signed.version)))?;
    let role = signed
        .signed
        .roles
        .get(&tough::schema::RoleType::Root)
        .ok_or_else(|| Error::Metadata("root: no root role".into()))?;
    // Count only valid signatures by pinned keys: the same check with the root role narrowed to
    // them (key ids are hashes of the keys, so a pinned id is the pinned key).
    let mut narrowed = signed.signed.clone();
    let keep: Vec<_> = role
        .keyids
        .iter()
        .filter(|k| pinned.contains(&hex::encode(&***k)))
        .cloned()
        .collect();
    if keep.is_empty() {
        return Err(Error::Metadata(format!(
            "root version {}: none of the pinned root keys is a root key of this repository",
            signed.signed.version
        )));
    }
    if let Some(r) = narrowed.roles.get_mut(&tough::schema::RoleType::Root) {
        r.keyids = keep;
    }
    narrowed.verify_role(&signed).map_err(|e| {
        Error::Metadata(format!(
            "root version {}: not signed by enough of the pinned root keys ({} needed): {e}",
            signed.signed.version, role.threshold
        ))
    })?;
    Ok(())
}
