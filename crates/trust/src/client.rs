//! The TUF client workflow (specification 5.3 to 5.7), on which every verification of this crate
//! runs: `pull` and `run` resolving a tag, `trust inspect`, and `bulkhead-tuf-client`, the
//! front end the public conformance suite drives.
//!
//! Why not tough's `RepositoryLoader`: it loads every delegated role up front (so a role that the
//! search never needs can break a download, and roles outside the search are fetched), re-encodes
//! what it stores instead of keeping the bytes it verified, writes files of its own into the
//! metadata directory, and runs its version checks only when the stored file still verifies under
//! the root it was handed. The workflow here follows the specification (and python-tuf, the
//! reference client) step for step:
//!
//! 1. **root**: from the trusted root (this machine's newest, stored as `root.json`), versions
//!    N+1, N+2, ... each signed by a threshold of the previous root's root keys and of its own,
//!    each exactly one version up; the final root must not have expired.
//! 2. **timestamp**: signed by the root's timestamp keys, never a lower version than the one
//!    trusted (an equal one is kept as is), never naming an older snapshot; not expired.
//! 3. **snapshot**: length and hashes as the timestamp says, signed, the version the timestamp
//!    names, no role it listed before dropped or gone back; not expired.
//! 4. **targets**, and delegated roles only when a target search reaches them: pre-order,
//!    depth-first, in the order the delegations list them, only into roles whose paths (or path
//!    hash prefixes) match, each role visited once, a terminating delegation ending the search,
//!    at most [`MAX_DELEGATIONS`] delegated roles (as python-tuf counts them); each with the length,
//!    hashes and version the snapshot says,
//!    signed by the threshold its delegator set.
//! 5. **artifacts**: length and every hash the metadata lists, checked before anything is kept.
//!
//! Metadata is stored exactly as received and verified, under the role's name percent-encoded
//! (`a/b` is `a%2Fb.json`), and nothing else is stored in the metadata directory. Signatures are
//! checked over the canonical JSON (OLPC) of the `signed` object as received, unknown fields
//! included; ed25519, ECDSA P-256 (SHA-256) and RSA-PSS (SHA-256) keys are supported, others never
//! count towards a threshold.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Error, Result};

/// How many new roots one refresh may walk through.
pub const MAX_ROOT_ROTATIONS: u64 = 256;
/// How many roles a target search visits at most.
pub const MAX_DELEGATIONS: usize = 32;
/// The most bytes read for a metadata file whose length nothing states.
pub const ROOT_MAX: u64 = 512_000;
pub const TIMESTAMP_MAX: u64 = 16_384;
pub const SNAPSHOT_MAX: u64 = 2_000_000;
pub const TARGETS_MAX: u64 = 5_000_000;

fn bad(msg: impl Into<String>) -> Error {
    Error::Metadata(msg.into())
}

/// Where metadata (or artifacts) come from: the file `name` relative to some base, read up to
/// `max` bytes (more is an error), or None if the repository has no such file.
pub trait Fetcher {
    fn fetch(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>>;
}

/// Files in a local directory (the registry's trust artifact, unpacked): names are single path
/// components (role names arrive percent-encoded).
pub struct DirFetcher(pub PathBuf);

impl Fetcher for DirFetcher {
    fn fetch(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(bad(format!("{name:?} is not a metadata file name")));
        }
        let f = match bulkhead_image::tree::open_regular(&self.0.join(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(format!("{name}: {e}"))),
        };
        read_capped(f, max, name).map(Some)
    }
}

/// Reads at most `max` bytes; more is an error naming `what`.
pub fn read_capped(r: impl std::io::Read, max: u64, what: &str) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut data = Vec::new();
    r.take(max.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("{what}: {e}")))?;
    if data.len() as u64 > max {
        return Err(bad(format!("{what} is larger than {max} bytes")));
    }
    Ok(data)
}

/// A role name or target path percent-encoded as python-tuf's `quote(name, "")` does: everything
/// but ASCII letters, digits and `_.-~`.
pub fn quote(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- keys and signatures ----

/// A public key that can check signatures, or one of a type this client does not know.
#[derive(Clone, Debug)]
enum Key {
    Known(&'static dyn aws_lc_rs::signature::VerificationAlgorithm, Vec<u8>),
    Unsupported,
}

impl Key {
    fn from_json(v: &Value) -> Result<Key> {
        let (Some(keytype), Some(scheme), Some(public)) = (v["keytype"].as_str(), v["scheme"].as_str(), v["keyval"]["public"].as_str())
        else {
            return Err(bad("a key without keytype, scheme or keyval.public"));
        };
        use aws_lc_rs::signature as s;
        let pem = |p: &str| -> Result<Vec<u8>> {
            pkcs8::der::pem::decode_vec(p.as_bytes())
                .map(|(_, der)| der)
                .map_err(|e| bad(format!("a {keytype} key that is not PEM: {e}")))
        };
        Ok(match (keytype, scheme) {
            ("ed25519", "ed25519") => Key::Known(&s::ED25519, hex::decode(public).map_err(|e| bad(format!("an ed25519 key: {e}")))?),
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
                let der = pem(public)?;
                Key::Known(&s::ECDSA_P256_SHA256_ASN1, der)
            }
            ("rsa", "rsassa-pss-sha256") => Key::Known(&s::RSA_PSS_2048_8192_SHA256, pem(public)?),
            _ => Key::Unsupported,
        })
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            Key::Known(alg, public) => aws_lc_rs::signature::UnparsedPublicKey::new(*alg, public).verify(msg, sig).is_ok(),
            Key::Unsupported => false,
        }
    }
}

/// The keys a delegator lists for one role, and how many must sign.
#[derive(Clone, Debug)]
struct RoleKeys {
    keyids: Vec<String>,
    threshold: u64,
}

impl RoleKeys {
    fn from_json(v: &Value, what: &str) -> Result<RoleKeys> {
        let keyids: Vec<String> = v["keyids"]
            .as_array()
            .ok_or_else(|| bad(format!("{what}: no keyids")))?
            .iter()
            .map(|k| {
                k.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(format!("{what}: a keyid that is not a string")))
            })
            .collect::<Result<_>>()?;
        let unique: HashSet<&String> = keyids.iter().collect();
        if unique.len() != keyids.len() {
            return Err(bad(format!("{what}: a keyid listed twice")));
        }
        let threshold = v["threshold"]
            .as_u64()
            .filter(|t| *t >= 1)
            .ok_or_else(|| bad(format!("{what}: threshold must be a whole number of at least 1")))?;
        Ok(RoleKeys { keyids, threshold })
    }
}

fn parse_keys(v: &Value, what: &str) -> Result<HashMap<String, Key>> {
    let mut out = HashMap::new();
    for (id, k) in v.as_object().ok_or_else(|| bad(format!("{what}: keys is not an object")))? {
        out.insert(id.clone(), Key::from_json(k)?);
    }
    Ok(out)
}

/// One metadata file as received: its `signed` part, the canonical bytes signatures are over,
/// and the signatures.
#[derive(Clone, Debug)]
struct Envelope {
    signed: Value,
    canonical: Vec<u8>,
    signatures: Vec<(String, Vec<u8>)>,
    version: u64,
    expires: jiff::Timestamp,
}

impl Envelope {
    fn parse(data: &[u8], kind: &str) -> Result<Envelope> {
        let v: Value = serde_json::from_slice(data).map_err(|e| bad(format!("{kind}: not JSON: {e}")))?;
        let signed = v
            .get("signed")
            .filter(|s| s.is_object())
            .ok_or_else(|| bad(format!("{kind}: no signed object")))?
            .clone();
        let mut signatures = Vec::new();
        let mut seen = HashSet::new();
        for s in v["signatures"]
            .as_array()
            .ok_or_else(|| bad(format!("{kind}: no signatures list")))?
        {
            let (Some(keyid), Some(sig)) = (s["keyid"].as_str(), s["sig"].as_str()) else {
                return Err(bad(format!("{kind}: a signature without keyid or sig")));
            };
            if !seen.insert(keyid.to_owned()) {
                return Err(bad(format!("{kind}: two signatures by key {keyid}")));
            }
            // A signature that is not hex counts for nothing (it cannot verify).
            signatures.push((keyid.to_owned(), hex::decode(sig).unwrap_or_default()));
        }
        if signed["_type"].as_str() != Some(kind) {
            return Err(bad(format!("expected {kind} metadata, got {}", signed["_type"])));
        }
        let spec = signed["spec_version"]
            .as_str()
            .ok_or_else(|| bad(format!("{kind}: no spec_version")))?;
        let mut parts = spec.split('.');
        if parts.next() != Some("1") || parts.any(|p| p.parse::<u64>().is_err()) {
            return Err(bad(format!("{kind}: specification version {spec} is not supported (1.x is)")));
        }
        let version = signed["version"]
            .as_u64()
            .filter(|v| *v >= 1)
            .ok_or_else(|| bad(format!("{kind}: version must be a whole number of at least 1")))?;
        let expires_s = signed["expires"].as_str().ok_or_else(|| bad(format!("{kind}: no expires")))?;
        if !expires_s.ends_with('Z') || expires_s.len() != 20 {
            return Err(bad(format!("{kind}: expires {expires_s:?} is not YYYY-MM-DDTHH:MM:SSZ")));
        }
        let expires: jiff::Timestamp = expires_s.parse().map_err(|e| bad(format!("{kind}: expires {expires_s:?}: {e}")))?;
        let mut canonical = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut canonical, olpc_cjson::CanonicalFormatter::new());
        serde::Serialize::serialize(&signed, &mut ser).map_err(|e| bad(format!("{kind}: canonical form: {e}")))?;
        Ok(Envelope {
            signed,
            canonical,
            signatures,
            version,
            expires,
        })
    }

    /// At least `role.threshold` distinct keys of `role`, among `keys`, signed this.
    fn verify(&self, keys: &HashMap<String, Key>, role: &RoleKeys, name: &str) -> Result<()> {
        // Distinct keys, not distinct key ids: one key listed under two ids counts once.
        let mut signers: HashSet<&[u8]> = HashSet::new();
        for (keyid, sig) in &self.signatures {
            if !role.keyids.contains(keyid) {
                continue;
            }
            if let Some(k @ Key::Known(_, public)) = keys.get(keyid) {
                if k.verify(&self.canonical, sig) {
                    signers.insert(public.as_slice());
                }
            }
        }
        let good = signers.len() as u64;
        if good < role.threshold {
            return Err(bad(format!("{name}: {good} valid signature(s) of the {} required", role.threshold)));
        }
        Ok(())
    }

    fn expired(&self, now: jiff::Timestamp) -> bool {
        self.expires <= now
    }
}

// ---- the roles ----

#[derive(Clone, Debug)]
struct Root {
    env: Envelope,
    keys: HashMap<String, Key>,
    roles: HashMap<String, RoleKeys>,
    consistent_snapshot: bool,
}

impl Root {
    fn parse(data: &[u8]) -> Result<Root> {
        let env = Envelope::parse(data, "root")?;
        let keys = parse_keys(&env.signed["keys"], "root")?;
        let mut roles = HashMap::new();
        for name in ["root", "timestamp", "snapshot", "targets"] {
            let r = env.signed["roles"].get(name).ok_or_else(|| bad(format!("root: no {name} role")))?;
            roles.insert(name.to_owned(), RoleKeys::from_json(r, &format!("root's {name} role"))?);
        }
        let consistent_snapshot = env.signed["consistent_snapshot"].as_bool().unwrap_or(false);
        Ok(Root {
            env,
            keys,
            roles,
            consistent_snapshot,
        })
    }

    fn verify(&self, env: &Envelope, role: &str) -> Result<()> {
        env.verify(&self.keys, &self.roles[role], role)
    }
}

/// What a timestamp or snapshot says about another metadata file.
#[derive(Clone, Debug)]
struct MetaFile {
    version: u64,
    length: Option<u64>,
    hashes: Option<BTreeMap<String, String>>,
}

impl MetaFile {
    fn from_json(v: &Value, what: &str) -> Result<MetaFile> {
        let version = v["version"]
            .as_u64()
            .filter(|v| *v >= 1)
            .ok_or_else(|| bad(format!("{what}: no version")))?;
        let length = match v.get("length") {
            None => None,
            Some(l) => Some(l.as_u64().ok_or_else(|| bad(format!("{what}: length is not a whole number")))?),
        };
        let hashes = match v.get("hashes") {
            None => None,
            Some(h) => Some(parse_hashes(h, what)?),
        };
        Ok(MetaFile { version, length, hashes })
    }

    fn check(&self, data: &[u8], what: &str) -> Result<()> {
        check_length_and_hashes(data, self.length, self.hashes.as_ref(), what)
    }
}

fn parse_hashes(v: &Value, what: &str) -> Result<BTreeMap<String, String>> {
    let map = v
        .as_object()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad(format!("{what}: hashes must be a non-empty object")))?;
    map.iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                v.as_str()
                    .ok_or_else(|| bad(format!("{what}: a hash that is not a string")))?
                    .to_owned(),
            ))
        })
        .collect()
}

/// Checks `data` against a stated length and every stated hash (an algorithm this client cannot
/// compute fails the check: a hash that cannot be checked protects nothing).
pub fn check_length_and_hashes(data: &[u8], length: Option<u64>, hashes: Option<&BTreeMap<String, String>>, what: &str) -> Result<()> {
    if let Some(l) = length {
        if data.len() as u64 != l {
            return Err(bad(format!("{what}: {} bytes, {l} expected", data.len())));
        }
    }
    for (alg, want) in hashes.into_iter().flatten() {
        use aws_lc_rs::digest as d;
        let algorithm = match alg.as_str() {
            "sha256" => &d::SHA256,
            "sha384" => &d::SHA384,
            "sha512" => &d::SHA512,
            "sha224" => &d::SHA224,
            "sha512_256" | "sha512-256" => &d::SHA512_256,
            other => return Err(bad(format!("{what}: hash algorithm {other} is not supported"))),
        };
        let got = hex::encode(d::digest(algorithm, data));
        if !got.eq_ignore_ascii_case(want) {
            return Err(bad(format!("{what}: {alg} is {got}, {want} expected")));
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
struct Timestamp {
    env: Envelope,
    snapshot: MetaFile,
}

impl Timestamp {
    fn parse(data: &[u8]) -> Result<Timestamp> {
        let env = Envelope::parse(data, "timestamp")?;
        let meta = env.signed["meta"].as_object().ok_or_else(|| bad("timestamp: no meta"))?;
        let snapshot = MetaFile::from_json(
            meta.get("snapshot.json")
                .ok_or_else(|| bad("timestamp: no snapshot.json in meta"))?,
            "timestamp's snapshot.json",
        )?;
        Ok(Timestamp { env, snapshot })
    }
}

#[derive(Clone, Debug)]
struct Snapshot {
    env: Envelope,
    meta: BTreeMap<String, MetaFile>,
}

impl Snapshot {
    fn parse(data: &[u8]) -> Result<Snapshot> {
        let env = Envelope::parse(data, "snapshot")?;
        let mut meta = BTreeMap::new();
        for (name, v) in env.signed["meta"].as_object().ok_or_else(|| bad("snapshot: no meta"))? {
            meta.insert(name.clone(), MetaFile::from_json(v, &format!("snapshot's {name}"))?);
        }
        Ok(Snapshot { env, meta })
    }
}

/// A target as its signer describes it.
#[derive(Clone, Debug)]
pub struct TargetFile {
    pub path: String,
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    pub custom: Option<Value>,
}

impl TargetFile {
    fn from_json(path: &str, v: &Value) -> Result<TargetFile> {
        let what = format!("target {path}");
        Ok(TargetFile {
            path: path.to_owned(),
            length: v["length"].as_u64().ok_or_else(|| bad(format!("{what}: no length")))?,
            hashes: parse_hashes(&v["hashes"], &what)?,
            custom: v.get("custom").cloned(),
        })
    }

    /// Whether `data` is this target (length and every hash).
    pub fn check(&self, data: &[u8]) -> Result<()> {
        check_length_and_hashes(data, Some(self.length), Some(&self.hashes), &format!("target {}", self.path))
    }

    /// The sha256 hash, if the metadata lists one.
    pub fn sha256(&self) -> Option<&str> {
        self.hashes.get("sha256").map(String::as_str)
    }
}

#[derive(Clone, Debug)]
struct DelegatedRole {
    name: String,
    keys: RoleKeys,
    terminating: bool,
    paths: Option<Vec<String>>,
    prefixes: Option<Vec<String>>,
}

impl DelegatedRole {
    fn matches(&self, target: &str) -> bool {
        if let Some(paths) = &self.paths {
            return paths.iter().any(|p| path_matches(p, target));
        }
        if let Some(prefixes) = &self.prefixes {
            let h = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, target.as_bytes()));
            return prefixes.iter().any(|p| h.starts_with(p.as_str()));
        }
        false
    }
}

#[derive(Clone, Debug)]
struct Targets {
    env: Envelope,
    targets: BTreeMap<String, Value>,
    keys: HashMap<String, Key>,
    delegations: Vec<DelegatedRole>,
}

impl Targets {
    fn parse(data: &[u8]) -> Result<Targets> {
        let env = Envelope::parse(data, "targets")?;
        let targets: BTreeMap<String, Value> = env.signed["targets"]
            .as_object()
            .ok_or_else(|| bad("targets: no targets object"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut keys = HashMap::new();
        let mut delegations = Vec::new();
        if let Some(d) = env.signed.get("delegations") {
            keys = parse_keys(&d["keys"], "delegations")?;
            let mut names = HashSet::new();
            for r in d["roles"].as_array().ok_or_else(|| bad("delegations: no roles list"))? {
                let name = r["name"].as_str().ok_or_else(|| bad("a delegated role without a name"))?.to_owned();
                // A delegated role may not take a top-level role's name (its stored file would
                // replace the trusted root, timestamp or snapshot), nor be nameless.
                if name.is_empty() || ["root", "timestamp", "snapshot", "targets"].contains(&name.as_str()) {
                    return Err(bad(format!("a delegated role may not be named {name:?}")));
                }
                if !names.insert(name.clone()) {
                    return Err(bad(format!("delegated role {name} is listed twice")));
                }
                let list = |k: &str| -> Result<Option<Vec<String>>> {
                    match r.get(k) {
                        None => Ok(None),
                        Some(v) => Ok(Some(
                            v.as_array()
                                .ok_or_else(|| bad(format!("{name}: {k} is not a list")))?
                                .iter()
                                .map(|p| {
                                    p.as_str()
                                        .map(str::to_owned)
                                        .ok_or_else(|| bad(format!("{name}: {k} holds a non-string")))
                                })
                                .collect::<Result<_>>()?,
                        )),
                    }
                };
                let (paths, prefixes) = (list("paths")?, list("path_hash_prefixes")?);
                if paths.is_some() && prefixes.is_some() {
                    return Err(bad(format!("{name}: both paths and path_hash_prefixes")));
                }
                delegations.push(DelegatedRole {
                    keys: RoleKeys::from_json(r, &format!("delegated role {name}"))?,
                    terminating: r["terminating"].as_bool().unwrap_or(false),
                    paths,
                    prefixes,
                    name,
                });
            }
        }
        Ok(Targets {
            env,
            targets,
            keys,
            delegations,
        })
    }
}

/// A delegation's path pattern against a target path, as the specification (and python-tuf) say:
/// the same number of `/`-separated parts, each matched as a shell pattern (`*`, `?`, `[...]`).
pub fn path_matches(pattern: &str, target: &str) -> bool {
    let (p, t): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), target.split('/').collect());
    p.len() == t.len()
        && p.iter().zip(&t).all(|(p, t)| {
            let (p, t): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
            fnmatch(&p, &t)
        })
}

/// Shell-style matching of one path part: `*` any run, `?` one character, `[abc]`, `[a-z]`, `[!x]`.
/// Written here because no maintained crate does exactly Python's fnmatch (globset and glob treat
/// `/`, `**` and escapes differently), and this is the rule the delegations were written for.
fn fnmatch(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, len)) = class(&p[pi..], t[ti]) {
                        if matched {
                            pi += len;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A `[...]` class at the start of `p`: (whether `c` is in it, the class's length), or None if
/// the class is not closed (then `[` is literal, as in Python).
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = p.get(i).is_some_and(|&b| b == '!');
    if negate {
        i += 1;
    }
    let start = i;
    let mut found = false;
    while i < p.len() {
        if p[i] == ']' && i > start {
            return Some((found != negate, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                found = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                found = true;
            }
            i += 1;
        }
    }
    None
}

/// Checks that `roots` (versions 1, 2, ... in order) form a chain: each signed by its own root
/// keys' threshold and, from the second on, by the previous root's, each one version up. For a
/// signer that takes a repository's history of roots from a registry.
pub fn verify_root_chain(roots: &[Vec<u8>]) -> Result<()> {
    let mut prev: Option<Root> = None;
    for (i, data) in roots.iter().enumerate() {
        let r = Root::parse(data)?;
        if r.env.version != i as u64 + 1 {
            return Err(bad(format!("root {} is version {}", i + 1, r.env.version)));
        }
        r.verify(&r.env, "root")?;
        if let Some(p) = &prev {
            p.verify(&r.env, "root")?;
        }
        prev = Some(r);
    }
    Ok(())
}

/// Parses `data` as each kind of metadata this client reads (a root is also checked against its
/// own keys), for fuzzing the parsers that registry-supplied bytes meet first; the kind it parsed
/// as, if any.
pub fn parse_any(data: &[u8]) -> Option<&'static str> {
    if let Ok(r) = Root::parse(data) {
        let _ = r.verify(&r.env, "root");
        return Some("root");
    }
    if Timestamp::parse(data).is_ok() {
        return Some("timestamp");
    }
    if Snapshot::parse(data).is_ok() {
        return Some("snapshot");
    }
    if let Ok(t) = Targets::parse(data) {
        for d in &t.delegations {
            let _ = d.matches("a/b");
        }
        for (p, v) in &t.targets {
            let _ = TargetFile::from_json(p, v);
        }
        return Some("targets");
    }
    None
}

// ---- the updater ----

/// One run of the client workflow against one repository.
pub struct Updater<'a> {
    fetch: &'a dyn Fetcher,
    /// The trusted metadata directory: `root.json`, `timestamp.json`, ... exactly as verified.
    dir: PathBuf,
    now: jiff::Timestamp,
    root: Root,
    timestamp: Option<Timestamp>,
    snapshot: Option<Snapshot>,
    /// Verified targets roles, by name, with the delegator each was verified against.
    targets: HashMap<String, (Targets, String)>,
    refreshed: bool,
}

impl<'a> Updater<'a> {
    /// Starts from `dir/root.json`, or, on a machine that has none, from `bootstrap` (a root the
    /// caller trusts by other means: the policy's pinned key), which is then stored there.
    pub fn new(dir: &Path, bootstrap: Option<&[u8]>, fetch: &'a dyn Fetcher) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| bad(format!("{}: {e}", dir.display())))?;
        let stored = dir.join("root.json");
        let data = match std::fs::read(&stored) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let b = bootstrap.ok_or_else(|| bad(format!("{}: no trusted root (run init first)", stored.display())))?;
                b.to_vec()
            }
            Err(e) => return Err(bad(format!("{}: {e}", stored.display()))),
        };
        let root = Root::parse(&data)?;
        root.verify(&root.env, "root")?;
        let u = Updater {
            fetch,
            dir: dir.to_path_buf(),
            now: jiff::Timestamp::now(),
            root,
            timestamp: None,
            snapshot: None,
            targets: HashMap::new(),
            refreshed: false,
        };
        if !stored.exists() {
            u.persist("root", &data)?;
        }
        Ok(u)
    }

    /// The version of the trusted root.
    pub fn root_version(&self) -> u64 {
        self.root.env.version
    }

    /// Replaces a role's stored file atomically. Only the root is forced to disk: it is where
    /// trust starts. Losing a newer timestamp, snapshot or targets file to a power cut only takes
    /// this machine back to the previous verified one (as python-tuf, which forces none).
    fn persist(&self, role: &str, data: &[u8]) -> Result<()> {
        bulkhead_image::store::replace_file(&self.dir.join(format!("{}.json", quote(role))), data, role == "root")?;
        Ok(())
    }

    fn local(&self, role: &str) -> Option<Vec<u8>> {
        let f = bulkhead_image::tree::open_regular(&self.dir.join(format!("{}.json", quote(role)))).ok()?;
        read_capped(f, TARGETS_MAX.max(SNAPSHOT_MAX), role).ok()
    }

    fn download(&self, role: &str, max: u64, version: Option<u64>) -> Result<Vec<u8>> {
        let name = match version {
            Some(v) => format!("{v}.{}.json", quote(role)),
            None => format!("{}.json", quote(role)),
        };
        self.fetch
            .fetch(&name, max)?
            .ok_or_else(|| bad(format!("the repository has no {name}")))
    }

    /// Steps 1 to 4 for the top-level roles (delegated roles load during a target search).
    pub fn refresh(&mut self) -> Result<()> {
        if self.refreshed {
            return Ok(());
        }
        self.load_root()?;
        self.load_timestamp()?;
        self.load_snapshot()?;
        self.load_targets("targets", "root")?;
        self.refreshed = true;
        Ok(())
    }

    fn update_root(&mut self, data: &[u8]) -> Result<()> {
        let new = Root::parse(data)?;
        self.root.verify(&new.env, "root")?;
        let next = self
            .root
            .env
            .version
            .checked_add(1)
            .ok_or_else(|| bad("the trusted root has the last possible version"))?;
        if new.env.version != next {
            return Err(bad(format!("expected root version {next}, got version {}", new.env.version)));
        }
        new.verify(&new.env, "root")?;
        self.root = new;
        Ok(())
    }

    fn load_root(&mut self) -> Result<()> {
        let first = self.root.env.version;
        for v in first.saturating_add(1)..first.saturating_add(1).saturating_add(MAX_ROOT_ROTATIONS) {
            let Some(data) = self.fetch.fetch(&format!("{v}.root.json"), ROOT_MAX)? else {
                break;
            };
            self.update_root(&data)?;
            self.persist("root", &data)?;
        }
        if self.root.env.expired(self.now) {
            return Err(bad(format!("root version {} has expired", self.root.env.version)));
        }
        Ok(())
    }

    /// Ok(true) if taken, Ok(false) if it is the version already trusted.
    fn update_timestamp(&mut self, data: &[u8]) -> Result<bool> {
        let new = Timestamp::parse(data)?;
        self.root.verify(&new.env, "timestamp")?;
        if let Some(old) = &self.timestamp {
            if new.env.version < old.env.version {
                return Err(bad(format!(
                    "timestamp version {} is older than version {}, which is trusted",
                    new.env.version, old.env.version
                )));
            }
            if new.env.version == old.env.version {
                return Ok(false);
            }
            if new.snapshot.version < old.snapshot.version {
                return Err(bad(format!(
                    "the timestamp names snapshot version {}, older than version {}, which is trusted",
                    new.snapshot.version, old.snapshot.version
                )));
            }
        }
        self.timestamp = Some(new);
        Ok(true)
    }

    fn final_timestamp(&self) -> Result<&Timestamp> {
        let t = self.timestamp.as_ref().ok_or_else(|| bad("no timestamp"))?;
        if t.env.expired(self.now) {
            return Err(bad("timestamp.json has expired"));
        }
        Ok(t)
    }

    fn load_timestamp(&mut self) -> Result<()> {
        // The stored one, even if expired or no longer final, guards against rollback.
        if let Some(data) = self.local("timestamp") {
            let _ = self.update_timestamp(&data);
        }
        let data = self.download("timestamp", TIMESTAMP_MAX, None)?;
        let taken = self.update_timestamp(&data)?;
        self.final_timestamp()?;
        if taken {
            self.persist("timestamp", &data)?;
        }
        Ok(())
    }

    fn update_snapshot(&mut self, data: &[u8], trusted: bool) -> Result<()> {
        let meta = self.final_timestamp()?.snapshot.clone();
        if !trusted {
            meta.check(data, "snapshot.json")?;
        }
        let new = Snapshot::parse(data)?;
        self.root.verify(&new.env, "snapshot")?;
        if let Some(old) = &self.snapshot {
            for (name, info) in &old.meta {
                let Some(n) = new.meta.get(name) else {
                    return Err(bad(format!("the new snapshot drops {name}")));
                };
                if n.version < info.version {
                    return Err(bad(format!(
                        "the new snapshot names {name} version {}, older than version {}, which is trusted",
                        n.version, info.version
                    )));
                }
            }
        }
        self.snapshot = Some(new);
        self.final_snapshot()?;
        Ok(())
    }

    fn final_snapshot(&self) -> Result<&Snapshot> {
        let s = self.snapshot.as_ref().ok_or_else(|| bad("no snapshot"))?;
        if s.env.expired(self.now) {
            return Err(bad("snapshot.json has expired"));
        }
        let want = self.final_timestamp()?.snapshot.version;
        if s.env.version != want {
            return Err(bad(format!(
                "snapshot version {} is not the version {want} the timestamp names",
                s.env.version
            )));
        }
        Ok(s)
    }

    fn load_snapshot(&mut self) -> Result<()> {
        if let Some(data) = self.local("snapshot") {
            if self.update_snapshot(&data, true).is_ok() {
                return Ok(());
            }
        }
        let meta = self.final_timestamp()?.snapshot.clone();
        let version = self.root.consistent_snapshot.then_some(meta.version);
        let data = self.download("snapshot", meta.length.unwrap_or(SNAPSHOT_MAX), version)?;
        self.update_snapshot(&data, false)?;
        self.persist("snapshot", &data)
    }

    fn update_targets(&mut self, data: &[u8], role: &str, delegator: &str) -> Result<()> {
        let info = self
            .final_snapshot()?
            .meta
            .get(&format!("{role}.json"))
            .cloned()
            .ok_or_else(|| bad(format!("the snapshot has no {role}.json")))?;
        info.check(data, &format!("{role}.json"))?;
        let new = Targets::parse(data)?;
        if delegator == "root" {
            self.root.verify(&new.env, "targets")?;
        } else {
            let (d, _) = self
                .targets
                .get(delegator)
                .ok_or_else(|| bad(format!("{delegator} is not loaded")))?;
            let entry = d
                .delegations
                .iter()
                .find(|r| r.name == role)
                .ok_or_else(|| bad(format!("{delegator} does not delegate to {role}")))?;
            new.env.verify(&d.keys, &entry.keys, role)?;
        }
        if new.env.version != info.version {
            return Err(bad(format!(
                "{role} version {} is not the version {} the snapshot names",
                new.env.version, info.version
            )));
        }
        if new.env.expired(self.now) {
            return Err(bad(format!("{role} has expired")));
        }
        self.targets.insert(role.to_owned(), (new, delegator.to_owned()));
        Ok(())
    }

    fn load_targets(&mut self, role: &str, delegator: &str) -> Result<()> {
        if self.targets.get(role).is_some_and(|(_, d)| d == delegator) {
            return Ok(());
        }
        if let Some(data) = self.local(role) {
            if self.update_targets(&data, role, delegator).is_ok() {
                return Ok(());
            }
        }
        let info = self
            .final_snapshot()?
            .meta
            .get(&format!("{role}.json"))
            .cloned()
            .ok_or_else(|| bad(format!("{role} is delegated but not in the snapshot")))?;
        let version = self.root.consistent_snapshot.then_some(info.version);
        let data = self.download(role, info.length.unwrap_or(TARGETS_MAX), version)?;
        self.update_targets(&data, role, delegator)?;
        self.persist(role, &data)
    }

    /// The target `path`, found by the search of step 4, with the roles that were visited on the
    /// way to it (the one that names it last); None if no role reached names it.
    pub fn target(&mut self, path: &str) -> Result<Option<(TargetFile, String)>> {
        self.refresh()?;
        let mut to_visit = vec![("targets".to_owned(), "root".to_owned())];
        let mut visited = HashSet::new();
        while visited.len() <= MAX_DELEGATIONS {
            let Some((role, parent)) = to_visit.pop() else { break };
            if visited.contains(&role) {
                continue;
            }
            self.load_targets(&role, &parent)?;
            let (t, _) = &self.targets[&role];
            if let Some(v) = t.targets.get(path) {
                return Ok(Some((TargetFile::from_json(path, v)?, role)));
            }
            visited.insert(role.clone());
            let mut children = Vec::new();
            for d in &t.delegations {
                if d.matches(path) {
                    children.push((d.name.clone(), role.clone()));
                    if d.terminating {
                        to_visit.clear();
                        break;
                    }
                }
            }
            children.reverse();
            to_visit.extend(children);
        }
        Ok(None)
    }

    /// Every target a search ([`Updater::target`]) resolves, for `trust inspect`: each path any
    /// reachable role names, as the search resolves it (so a role's entry for a path outside what
    /// it was delegated, or shadowed by a more trusted role, is not shown as signed).
    pub fn all_targets(&mut self) -> Result<Vec<TargetFile>> {
        self.refresh()?;
        let mut paths = std::collections::BTreeSet::new();
        let mut to_visit = vec![("targets".to_owned(), "root".to_owned())];
        let mut visited = HashSet::new();
        while let Some((role, parent)) = to_visit.pop() {
            if visited.len() > MAX_DELEGATIONS || !visited.insert(role.clone()) {
                continue;
            }
            self.load_targets(&role, &parent)?;
            let (t, _) = &self.targets[&role];
            paths.extend(t.targets.keys().cloned());
            to_visit.extend(t.delegations.iter().rev().map(|d| (d.name.clone(), role.clone())));
        }
        let mut out = Vec::new();
        for p in paths {
            if let Some((t, _)) = self.target(&p)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The versions and expiries of the four top-level roles, the root's role keys and
    /// thresholds, and the delegated roles the top-level targets names, for `trust inspect`.
    pub fn summary(&self) -> Result<Value> {
        let t = self
            .targets
            .get("targets")
            .map(|(t, _)| t)
            .ok_or_else(|| bad("targets are not loaded"))?;
        let role = |e: &Envelope| serde_json::json!({"version": e.version, "expires": e.expires.to_string()});
        let thresholds: serde_json::Map<String, Value> = self
            .root
            .roles
            .iter()
            .map(|(r, k)| (r.clone(), serde_json::json!({"threshold": k.threshold, "keys": k.keyids})))
            .collect();
        Ok(serde_json::json!({
            "roles": thresholds,
            "root": role(&self.root.env),
            "timestamp": role(&self.final_timestamp()?.env),
            "snapshot": role(&self.final_snapshot()?.env),
            "targets": role(&t.env),
            "delegations": t.delegations.iter().map(|d| serde_json::json!({
                "name": d.name, "threshold": d.keys.threshold, "keys": d.keys.keyids,
                "paths": d.paths, "terminating": d.terminating,
            })).collect::<Vec<_>>(),
        }))
    }

    /// The roles that sign `target` as it is: the top-level targets role, and each role it
    /// delegates `target`'s path to (loaded if the search did not reach it; one that cannot be
    /// loaded signs nothing). For a policy that requires given signers.
    pub fn signed_by(&mut self, target: &TargetFile) -> Vec<String> {
        let same = |t: &Targets| {
            t.targets
                .get(&target.path)
                .and_then(|v| TargetFile::from_json(&target.path, v).ok())
                .is_some_and(|x| x.hashes == target.hashes && x.length == target.length)
        };
        let mut out = Vec::new();
        let Some((top, _)) = self.targets.get("targets") else { return out };
        if same(top) {
            out.push("targets".to_owned());
        }
        let children: Vec<String> = top
            .delegations
            .iter()
            .filter(|d| d.matches(&target.path))
            .map(|d| d.name.clone())
            .collect();
        for c in children {
            if self.load_targets(&c, "targets").is_ok() && self.targets.get(&c).is_some_and(|(t, _)| same(t)) {
                out.push(c);
            }
        }
        out
    }

    /// Whether the repository uses consistent snapshots (artifacts are then fetched as
    /// `dir/HASH.name`).
    pub fn consistent_snapshot(&self) -> bool {
        self.root.consistent_snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_python() {
        assert_eq!(quote("targets"), "targets");
        assert_eq!(quote("a/b"), "a%2Fb");
        assert_eq!(quote("../x?#"), "..%2Fx%3F%23");
        assert_eq!(quote("ä b"), "%C3%A4%20b");
    }

    #[test]
    fn path_patterns_match_part_by_part() {
        assert!(path_matches("*", "file.txt"));
        assert!(!path_matches("*", "dir/file.txt"));
        assert!(path_matches("dir/*", "dir/file.txt"));
        assert!(path_matches("*/*.txt", "dir/file.txt"));
        assert!(!path_matches("dir/*.txt", "dir/file.tar"));
        assert!(path_matches("f?le", "file"));
        assert!(path_matches("[a-c]x", "bx"));
        assert!(!path_matches("[!a-c]x", "bx"));
        assert!(path_matches("[x", "[x"));
        assert!(path_matches("a*b*c", "aXXbYYc"));
        assert!(!path_matches("a*b*c", "aXXbYY"));
    }

    /// An Ed25519 key pair and its TUF key object.
    fn keypair() -> (aws_lc_rs::signature::Ed25519KeyPair, Value) {
        use aws_lc_rs::signature::KeyPair as _;
        let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let kp = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = hex::encode(kp.public_key().as_ref());
        (
            kp,
            serde_json::json!({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": public}}),
        )
    }

    /// Metadata with `signed`, signed by each (keyid, key).
    fn signed(signed: Value, by: &[(&str, &aws_lc_rs::signature::Ed25519KeyPair)]) -> Vec<u8> {
        let mut canonical = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut canonical, olpc_cjson::CanonicalFormatter::new());
        serde::Serialize::serialize(&signed, &mut ser).unwrap();
        let sigs: Vec<Value> = by
            .iter()
            .map(|(id, k)| serde_json::json!({"keyid": id, "sig": hex::encode(k.sign(&canonical).as_ref())}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"signed": signed, "signatures": sigs})).unwrap()
    }

    #[test]
    fn one_key_under_two_ids_counts_once() {
        let (kp, key) = keypair();
        let role = serde_json::json!({"keyids": ["a", "b"], "threshold": 2});
        let body = |v: u64| {
            serde_json::json!({
                "_type": "root", "spec_version": "1.0.31", "version": v, "expires": "2100-01-01T00:00:00Z",
                "consistent_snapshot": false, "keys": {"a": key, "b": key},
                "roles": {"root": role, "timestamp": role, "snapshot": role, "targets": role},
            })
        };
        let root = Root::parse(&signed(body(1), &[("a", &kp), ("b", &kp)])).unwrap();
        let err = root.verify(&root.env, "root").unwrap_err().to_string();
        assert!(err.contains("1 valid signature(s) of the 2"), "{err}");
    }

    #[test]
    fn delegated_roles_may_not_take_top_level_names() {
        let (_, key) = keypair();
        for name in ["root", "timestamp", "snapshot", "targets", ""] {
            let t = serde_json::json!({
                "_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": "2100-01-01T00:00:00Z",
                "targets": {}, "delegations": {"keys": {"k": key}, "roles": [
                    {"name": name, "keyids": ["k"], "threshold": 1, "terminating": false, "paths": ["*"]}]},
            });
            let err = Targets::parse(&signed(t, &[])).unwrap_err().to_string();
            assert!(err.contains("may not be named"), "{name:?}: {err}");
        }
    }

    #[test]
    fn patterns_match_characters_not_bytes() {
        assert!(path_matches("?", "\u{e9}"));
        assert!(!path_matches("??", "\u{e9}"));
        assert!(path_matches("[\u{e0}-\u{ef}]x", "\u{e9}x"));
    }

    #[test]
    fn a_root_of_the_last_version_does_not_overflow() {
        let (kp, key) = keypair();
        let role = serde_json::json!({"keyids": ["a"], "threshold": 1});
        let body = serde_json::json!({
            "_type": "root", "spec_version": "1.0.31", "version": u64::MAX, "expires": "2100-01-01T00:00:00Z",
            "consistent_snapshot": false, "keys": {"a": key},
            "roles": {"root": role, "timestamp": role, "snapshot": role, "targets": role},
        });
        let dir = tempfile::tempdir().unwrap();
        let meta = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.json"), signed(body, &[("a", &kp)])).unwrap();
        let fetch = DirFetcher(meta.path().to_path_buf());
        let mut u = Updater::new(dir.path(), None, &fetch).unwrap();
        let err = u.refresh().unwrap_err().to_string();
        assert!(err.contains("timestamp"), "{err}");
    }

    #[test]
    fn lengths_and_every_hash_are_checked() {
        let data = b"abc";
        let mut h = BTreeMap::new();
        h.insert(
            "sha256".to_owned(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_owned(),
        );
        check_length_and_hashes(data, Some(3), Some(&h), "x").unwrap();
        assert!(check_length_and_hashes(data, Some(4), Some(&h), "x").is_err());
        h.insert("sha512".to_owned(), "00".to_owned());
        assert!(
            check_length_and_hashes(data, Some(3), Some(&h), "x").is_err(),
            "a wrong second hash fails"
        );
        let mut odd = BTreeMap::new();
        odd.insert("md5".to_owned(), "900150983cd24fb0d6963f7d28e17f72".to_owned());
        assert!(
            check_length_and_hashes(data, None, Some(&odd), "x").is_err(),
            "an unknown algorithm fails"
        );
    }
}
