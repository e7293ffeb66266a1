//! Where registries are and how to talk to them: `<config>/registries.json` (insecure registries,
//! mirrors), `<config>/certs.d/HOST[:PORT]/` (Docker's layout: `*.crt` are extra CAs for that
//! registry), and credentials in `<config>/auth.json` (Docker's `config.json` shape, mode 0600) or
//! through a `docker-credential-*` helper.
//!
//! ```json
//! // registries.json
//! {"insecure": ["10.0.0.5:5000"], "mirrors": {"docker.io": ["mirror.example:5000"]}}
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Docker Hub's names: how references say it, and where its registry API is.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistriesFile {
    #[serde(default)]
    insecure: Vec<String>,
    #[serde(default)]
    mirrors: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    timeouts: crate::deadline::Deadlines,
}

/// The registry configuration of this host.
#[derive(Debug)]
pub struct Registries {
    dir: PathBuf,
    insecure: Vec<String>,
    mirrors: BTreeMap<String, Vec<String>>,
    deadlines: crate::deadline::Deadlines,
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <secret>)"),
        }
    }
}

/// Docker's credential file: `auths` (base64 `user:password` per registry), a global helper
/// (`credsStore`) and per-registry helpers (`credHelpers`). Unknown keys are kept.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore", skip_serializing_if = "Option::is_none")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers", skip_serializing_if = "BTreeMap::is_empty")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    auth: String,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// The registry API host for a reference's domain (`docker.io` is served by `registry-1.docker.io`).
pub fn api_host(domain: &str) -> &str {
    if domain == DOCKER_HUB || domain == "index.docker.io" {
        DOCKER_HUB_API
    } else {
        domain
    }
}

/// The key of a registry in certs.d and auth.json: Docker Hub's is `docker.io`.
fn key_of(host: &str) -> &str {
    if host == DOCKER_HUB_API || host == "index.docker.io" {
        DOCKER_HUB
    } else {
        host
    }
}

impl Registries {
    /// Reads the configuration in `dir` (missing files mean defaults).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("registries.json");
        let file: RegistriesFile = match fs::read(&path) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RegistriesFile::default(),
            Err(e) => return Err(Error::Config(format!("{}: {e}", path.display()))),
        };
        Ok(Registries {
            dir: dir.to_path_buf(),
            insecure: file.insecure,
            mirrors: file.mirrors,
            deadlines: file.timeouts,
        })
    }

    /// The deadlines every transfer runs under (`timeouts` in registries.json).
    pub fn deadlines(&self) -> crate::deadline::Deadlines {
        self.deadlines
    }

    /// The configuration directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `host` may be spoken to in plain HTTP (listed as insecure).
    pub fn is_insecure(&self, host: &str) -> bool {
        self.insecure.iter().any(|h| h == key_of(host) || h == host)
    }

    /// The hosts to try for pulling from `domain`: its mirrors first, then itself.
    pub fn pull_hosts(&self, domain: &str) -> Vec<String> {
        let mut out: Vec<String> = self.mirrors.get(key_of(domain)).cloned().unwrap_or_default();
        out.push(api_host(domain).to_owned());
        out
    }

    /// PEM certificate authorities to trust for `host`, besides the system's: every `*.crt` in
    /// certs.d/HOST (Docker's layout). Client certificates there (`*.cert` + `*.key`) are returned
    /// by [`Registries::client_certificates`].
    pub fn ca_certificates(&self, host: &str) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for (name, data) in self.certs_d(host)? {
            if name.ends_with(".crt") {
                out.push(data);
            }
        }
        Ok(out)
    }

    /// The client certificates in certs.d/HOST (names of `*.cert` files).
    pub fn client_certificates(&self, host: &str) -> Result<Vec<String>> {
        Ok(self
            .certs_d(host)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.ends_with(".cert"))
            .collect())
    }

    fn certs_d(&self, host: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.dir.join("certs.d").join(key_of(host));
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::Config(format!("{}: {e}", dir.display()))),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let data = fs::read(e.path()).map_err(|err| Error::Config(format!("{}: {err}", e.path().display())))?;
            out.push((name, data));
        }
        out.sort();
        Ok(out)
    }

    fn auth_path(&self) -> PathBuf {
        self.dir.join("auth.json")
    }

    /// Reads auth.json, refusing one that other users can read (it holds passwords).
    fn read_auth(&self) -> Result<AuthFile> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.auth_path();
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AuthFile::default()),
            Err(e) => return Err(Error::Config(format!("{}: {e}", path.display()))),
        };
        let mode = fs::metadata(&path).map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(Error::Config(format!(
                "{} holds credentials but is readable by others (mode {:o}): chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
        serde_json::from_slice(&data).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    fn write_auth(&self, file: &AuthFile) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.auth_path();
        fs::create_dir_all(&self.dir).map_err(|e| Error::Config(format!("{}: {e}", self.dir.display())))?;
        let data = serde_json::to_vec_pretty(file).map_err(|e| Error::Config(e.to_string()))?;
        let tmp = self.dir.join(".auth.json.tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::Config(format!("{}: {e}", tmp.display())))?;
        f.write_all(&data)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::Config(format!("{}: {e}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The credentials for `host`: its credential helper, the global one, or auth.json; else none.
    pub fn credentials(&self, host: &str) -> Result<Credentials> {
        let key = key_of(host);
        let file = self.read_auth()?;
        if let Some(helper) = file.cred_helpers.get(key).or(file.creds_store.as_ref()) {
            return helper_get(helper, key);
        }
        let Some(entry) = file.auths.get(key).filter(|e| !e.auth.is_empty()) else {
            return Ok(Credentials::Anonymous);
        };
        let bad = || {
            Error::Config(format!(
                "{}: the entry for {key} is not base64 of user:password",
                self.auth_path().display()
            ))
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(entry.auth.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (u, p) = text.split_once(':').ok_or_else(bad)?;
        Ok(Credentials::Basic {
            username: u.to_owned(),
            password: p.to_owned(),
        })
    }

    /// Stores credentials for `host` (in its helper if one is configured).
    pub fn store_credentials(&self, host: &str, username: &str, password: &str) -> Result<()> {
        let key = key_of(host);
        let mut file = self.read_auth()?;
        if let Some(helper) = file.cred_helpers.get(key).or(file.creds_store.as_ref()) {
            return helper_store(helper, key, username, password);
        }
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        file.auths.entry(key.to_owned()).or_default().auth = auth;
        self.write_auth(&file)
    }

    /// Forgets the credentials for `host`; false if there were none.
    pub fn remove_credentials(&self, host: &str) -> Result<bool> {
        let key = key_of(host);
        let mut file = self.read_auth()?;
        if let Some(helper) = file.cred_helpers.get(key).or(file.creds_store.as_ref()) {
            return helper_erase(helper, key);
        }
        let had = file.auths.remove(key).is_some();
        if had {
            self.write_auth(&file)?;
        }
        Ok(had)
    }
}

/// Runs `docker-credential-HELPER ACTION` with `input` on stdin (Docker's credential helper
/// protocol) and returns its stdout.
fn helper(helper: &str, action: &str, input: &[u8]) -> Result<Vec<u8>> {
    use std::process::{Command, Stdio};
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(Error::Config(format!("invalid credential helper name {helper:?}")));
    }
    let prog = format!("docker-credential-{helper}");
    let mut child = Command::new(&prog)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Config(format!("{prog}: {e}")))?;
    child
        .stdin
        .take()
        .map(|mut s| s.write_all(input))
        .transpose()
        .map_err(|e| Error::Config(format!("{prog}: {e}")))?;
    let out = child.wait_with_output().map_err(|e| Error::Config(format!("{prog}: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let msg = if msg.is_empty() {
            String::from_utf8_lossy(&out.stderr).trim().to_owned()
        } else {
            msg
        };
        return Err(Error::Config(format!(
            "{prog} {action}: {}",
            msg.lines().next().unwrap_or("failed")
        )));
    }
    Ok(out.stdout)
}

fn helper_get(name: &str, server: &str) -> Result<Credentials> {
    #[derive(Deserialize)]
    struct Got {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    match helper(name, "get", server.as_bytes()) {
        Ok(out) => {
            let got: Got = serde_json::from_slice(&out)
                .map_err(|e| Error::Config(format!("docker-credential-{name} get: not the helper protocol's answer: {e}")))?;
            Ok(Credentials::Basic {
                username: got.username,
                password: got.secret,
            })
        }
        // The protocol's "nothing stored for this server".
        Err(Error::Config(m)) if m.contains("credentials not found") => Ok(Credentials::Anonymous),
        Err(e) => Err(e),
    }
}

fn helper_store(name: &str, server: &str, username: &str, password: &str) -> Result<()> {
    let input = serde_json::json!({"ServerURL": server, "Username": username, "Secret": password});
    helper(name, "store", input.to_string().as_bytes()).map(|_| ())
}

fn helper_erase(name: &str, server: &str) -> Result<bool> {
    match helper(name, "erase", server.as_bytes()) {
        Ok(_) => Ok(true),
        Err(Error::Config(m)) if m.contains("credentials not found") => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_is_registry_1() {
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("127.0.0.1:5000"), "127.0.0.1:5000");
        let d = tempfile::tempdir().unwrap();
        let r = Registries::load(d.path()).unwrap();
        assert_eq!(r.pull_hosts("docker.io"), vec!["registry-1.docker.io".to_owned()]);
    }

    #[test]
    fn mirrors_come_first_and_insecure_is_explicit() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("registries.json"),
            r#"{"insecure": ["10.0.0.5:5000"], "mirrors": {"docker.io": ["mirror.example:5000"]}}"#,
        )
        .unwrap();
        let r = Registries::load(d.path()).unwrap();
        assert_eq!(
            r.pull_hosts("docker.io"),
            vec!["mirror.example:5000".to_owned(), "registry-1.docker.io".to_owned()]
        );
        assert!(r.is_insecure("10.0.0.5:5000"));
        assert!(!r.is_insecure("10.0.0.5:5001"));
        fs::write(d.path().join("registries.json"), r#"{"insecur": []}"#).unwrap();
        assert!(Registries::load(d.path()).unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn credentials_round_trip_in_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let r = Registries::load(d.path()).unwrap();
        assert_eq!(r.credentials("h:5000").unwrap(), Credentials::Anonymous);
        r.store_credentials("h:5000", "alice", "s3:cret").unwrap();
        let mode = fs::metadata(d.path().join("auth.json")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            r.credentials("h:5000").unwrap(),
            Credentials::Basic {
                username: "alice".into(),
                password: "s3:cret".into()
            }
        );
        assert!(!format!("{:?}", r.credentials("h:5000").unwrap()).contains("s3:cret"));
        assert!(r.remove_credentials("h:5000").unwrap());
        assert_eq!(r.credentials("h:5000").unwrap(), Credentials::Anonymous);
        fs::set_permissions(d.path().join("auth.json"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(r.credentials("h:5000").unwrap_err().to_string().contains("chmod 600"));
    }
}
