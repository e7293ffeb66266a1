//! `trust ...`: signing tags, and the verified resolution of tags that `pull` and `run` use for
//! every reference the policy covers.

use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_image::Reference;
use bulkhead_registry::Registries;
use bulkhead_trust::policy::{Default_, Policy};
use bulkhead_trust::store::TrustDir;
use bulkhead_trust::{Expiry, KeyKind};
use clap::Subcommand;

use crate::Ctx;

/// The tag under which a repository's trust metadata is kept, and its artifact type.
pub const TRUST_TAG: &str = "_bulkhead.trust";
const ARTIFACT_TYPE: &str = "application/vnd.bulkhead.tuf.v1";
const METADATA_TYPE: &str = "application/vnd.tuf.metadata+json";
/// Bounds on what a registry may hand over as trust metadata.
const MAX_FILE: u64 = 4 << 20;
const MAX_FILES: usize = 256;

/// `trust`: what to do.
#[derive(clap::Args, Debug)]
pub struct TrustArgs {
    #[command(subcommand)]
    command: TrustCommand,
}

/// How long what a signing command signs stays valid: only on the commands that sign.
#[derive(clap::Args, Debug, Clone)]
pub struct ExpiryArgs {
    /// Days the root metadata it signs stays valid.
    #[arg(long, default_value = "365")]
    root_expiry_days: i64,
    /// Days the targets metadata (and delegated roles) stay valid.
    #[arg(long, default_value = "90")]
    targets_expiry_days: i64,
    /// Days the snapshot stays valid.
    #[arg(long, default_value = "30")]
    snapshot_expiry_days: i64,
    /// Days the timestamp stays valid (refresh it from cron or CI: trust timestamp refresh).
    #[arg(long, default_value = "7")]
    timestamp_expiry_days: i64,
}

impl ExpiryArgs {
    fn expiry(&self) -> anyhow::Result<Expiry> {
        let days = |d: i64, what: &str| -> anyhow::Result<jiff::SignedDuration> {
            if !(1..=3650).contains(&d) {
                bail!("--{what}-expiry-days must be between 1 and 3650");
            }
            Ok(jiff::SignedDuration::from_hours(24 * d))
        };
        Ok(Expiry {
            root: days(self.root_expiry_days, "root")?,
            targets: days(self.targets_expiry_days, "targets")?,
            snapshot: days(self.snapshot_expiry_days, "snapshot")?,
            timestamp: days(self.timestamp_expiry_days, "timestamp")?,
        })
    }
}

/// The expiry flags of a command that signs (the defaults for one that does not: never used).
fn expiry_of(c: &TrustCommand) -> anyhow::Result<Expiry> {
    match c {
        TrustCommand::Init { expiry, .. }
        | TrustCommand::Sign { expiry, .. }
        | TrustCommand::Revoke { expiry, .. }
        | TrustCommand::Rotate { expiry, .. }
        | TrustCommand::Signer(SignerCommand::Add { expiry, .. })
        | TrustCommand::Signer(SignerCommand::Remove { expiry, .. })
        | TrustCommand::Timestamp(TimestampCommand::Refresh { expiry, .. }) => expiry.expiry(),
        _ => Ok(Expiry::default()),
    }
}

#[derive(Subcommand, Debug)]
pub enum TrustCommand {
    /// Signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Create a repository's trust metadata and keys, publish it, and pin its root here.
    Init {
        /// The image repository (registry/name).
        repository: String,
        #[arg(long = "type", default_value = "ed25519")]
        kind: String,
        /// Existing keys (names) for the targets role, instead of a new one: several signers.
        #[arg(long = "targets-key")]
        targets_keys: Vec<String>,
        /// How many of the targets keys must sign a release.
        #[arg(long, default_value = "1")]
        targets_threshold: u64,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Sign a tag: its target becomes the local image of that name (as the registry has it).
    Sign {
        image: String,
        /// Sign in this delegated role (with its key) instead of the top-level targets.
        #[arg(long)]
        role: Option<String>,
        /// Add this machine's signature to a release that needs several signers (the first
        /// signer proposes it; it is published once enough have signed).
        #[arg(long)]
        partial: bool,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Signers: delegated targets roles, each trusted for tags matching its patterns.
    #[command(subcommand)]
    Signer(SignerCommand),
    /// Remove a tag's signature: it no longer resolves.
    Revoke {
        image: String,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Rotate a role's keys: root (a new root key, signed by the old and the new one), or targets,
    /// snapshot, timestamp (a new key in a new root version, which needs the root key).
    Rotate {
        repository: String,
        role: String,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// The timestamp role (for cron or CI).
    #[command(subcommand)]
    Timestamp(TimestampCommand),
    /// Show the verified signed tags of a repository.
    Inspect { repository: String },
    /// The local trust policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Generate a key, encrypted with $BULKHEAD_TRUST_KEY_PASSPHRASE.
    Generate {
        name: String,
        #[arg(long = "type", default_value = "ed25519")]
        kind: String,
    },
    /// Print a key's public part and id (TUF JSON); with --private, the encrypted key file.
    Export {
        name: String,
        #[arg(long)]
        private: bool,
    },
    /// Store an encrypted private key (PEM) under NAME; $BULKHEAD_TRUST_KEY_PASSPHRASE must open it.
    Import { name: String, file: std::path::PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum SignerCommand {
    /// Delegate tags matching --paths (e.g. '1.*') to role ROLE, signed with key KEY (a name from
    /// `trust key generate`, whose passphrase is BULKHEAD_TRUST_<ROLE>_PASSPHRASE).
    Add {
        key: String,
        #[arg(long)]
        role: String,
        #[arg(long = "paths", required = true)]
        paths: Vec<String>,
        /// More keys for the role (names), for a threshold above one.
        #[arg(long = "key")]
        more_keys: Vec<String>,
        /// How many of the role's keys must sign.
        #[arg(long, default_value = "1")]
        threshold: u64,
        repository: String,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Remove a delegated role: its tags stop resolving (needs the top-level targets key).
    Remove {
        #[arg(long)]
        role: String,
        repository: String,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum TimestampCommand {
    /// Re-sign the timestamp with a fresh expiry (needs only the timestamp key), and publish it.
    Refresh {
        repository: String,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Require signatures for a repository (or registry), rooted in these pinned root keys.
    Add {
        repository: String,
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<String>,
        /// Roles that must each have signed a tag (e.g. releases); default: any trusted role.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Show the policy.
    Show,
}

fn policy_path(ctx: &Ctx) -> std::path::PathBuf {
    ctx.policy.clone().unwrap_or_else(|| Policy::path(&ctx.config))
}

/// The machine's policy (`--policy`, else `<config>/policy.toml`).
pub fn load_policy(ctx: &Ctx) -> anyhow::Result<Policy> {
    Ok(Policy::load(&policy_path(ctx))?)
}

fn warn(msg: String) {
    eprintln!("bulkhead: warning: {msg}");
}

/// `host/path` of a reference: what the policy and the trust directory name.
pub fn repository_of(r: &Reference) -> String {
    r.canonical_repository()
}

/// The repository a user names (no tag or digest allowed).
fn parse_repository(s: &str) -> anyhow::Result<Reference> {
    let r = Reference::parse_name_only(s)?;
    if r.tag().is_some() || r.digest().is_some() {
        bail!("{s}: give a repository, without a tag or digest");
    }
    Ok(r)
}

fn publish(regs: &Registries, td: &TrustDir, repo: &Reference) -> anyhow::Result<()> {
    let files = td.metadata_files(&td.repo_dir(&repository_of(repo))?)?;
    bulkhead_registry::push_files(regs, repo, TRUST_TAG, ARTIFACT_TYPE, METADATA_TYPE, &files, &warn)
        .with_context(|| format!("publishing the trust metadata of {}", repository_of(repo)))?;
    Ok(())
}

/// Before a signer adds to a release: a machine that has no copy of the repository's metadata
/// takes the registry's (verified from the pinned root, like any client's), and a pending release
/// that another signer published is merged with the local one.
fn sync_for_signing(ctx: &Ctx, regs: &Registries, td: &TrustDir, r: &Reference) -> anyhow::Result<()> {
    let policy = Policy::load(&policy_path(ctx))?;
    let Some(rule) = policy.rule_for(&repository_of(r)) else {
        return Ok(());
    };
    let local = td.repo_dir(&repository_of(r))?;
    let (fetched, root, state) = fetch_metadata(ctx, regs, r, &rule.root_keys)?;
    let version = |dir: &std::path::Path| -> u64 {
        std::fs::read(dir.join("timestamp.json"))
            .ok()
            .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
            .and_then(|v| v["signed"]["version"].as_u64())
            .unwrap_or(0)
    };
    // No copy here, or the registry's is newer (another signer finished a release): take it.
    if !local.join("1.root.json").exists() || version(fetched.path()) > version(&local) {
        // Only verified bytes are taken: the role files as this machine's client stored them
        // after verifying them (the registry's copies may differ: a client that already had a
        // role reads its own copy and never looks at the registry's again), and the roots the
        // registry offers only as far as the chain verifies up to the trusted one.
        bulkhead_trust::repo::describe(&root, fetched.path(), &state)?;
        let trusted_root = std::fs::read(state.join("root.json"))?;
        let v = serde_json::from_slice::<serde_json::Value>(&trusted_root)?["signed"]["version"]
            .as_u64()
            .context("the trusted root has no version")?;
        let mut chain = Vec::new();
        for n in 1..v {
            chain.push(
                std::fs::read(fetched.path().join(format!("{n}.root.json")))
                    .with_context(|| format!("root version {n} is missing from the registry"))?,
            );
        }
        chain.push(trusted_root);
        bulkhead_trust::client::verify_root_chain(&chain)?;
        let _ = std::fs::remove_file(local.join("pending.targets.json"));
        std::fs::create_dir_all(&local)?;
        for (i, data) in chain.iter().enumerate() {
            bulkhead_image::store::atomic_write(&local.join(format!("{}.root.json", i + 1)), data)?;
        }
        for e in std::fs::read_dir(&state)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "root.json" && name.ends_with(".json") {
                std::fs::copy(e.path(), local.join(&name))?;
            }
        }
        // A release other signers proposed: checked signature by signature when merged.
        if let Ok(pending) = std::fs::read(fetched.path().join("pending.targets.json")) {
            bulkhead_image::store::atomic_write(&local.join("pending.targets.json"), &pending)?;
        }
        return Ok(());
    }
    if let Ok(pending) = std::fs::read(fetched.path().join("pending.targets.json")) {
        bulkhead_trust::threshold::merge_pending(&local, &pending)?;
    }
    Ok(())
}

/// The registry's trust metadata for `r`'s repository, in a temporary directory, with its first
/// root checked against the pinned `root_keys`; and this machine's state for it (what it trusted
/// before). The rest of TUF's checks run when it is loaded from there.
fn fetch_metadata(
    ctx: &Ctx,
    regs: &Registries,
    r: &Reference,
    root_keys: &[String],
) -> anyhow::Result<(tempfile::TempDir, Vec<u8>, std::path::PathBuf)> {
    let repo = repository_of(r);
    let files = bulkhead_registry::fetch_files(regs, r, TRUST_TAG, ARTIFACT_TYPE, MAX_FILE, MAX_FILES, &warn)?
        .with_context(|| format!("{repo} must be signed (trust policy), but the registry has no trust metadata for it"))?;
    let dir = tempfile::tempdir().context("a temporary directory")?;
    for (name, data) in &files {
        std::fs::write(dir.path().join(name), data).with_context(|| name.clone())?;
    }
    // The newest root that the pinned keys sign is where trust starts (after a root rotation,
    // machines that pinned the new key start there; those that pinned the old one walk to it).
    let mut roots: Vec<(u64, &Vec<u8>)> = files
        .iter()
        .filter_map(|(n, d)| n.strip_suffix(".root.json").and_then(|v| v.parse().ok()).map(|v| (v, d)))
        .collect();
    roots.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
    let mut last = None;
    let mut root = None;
    for (_, d) in roots {
        match bulkhead_trust::store::verify_pinned_root(d, root_keys) {
            Ok(()) => {
                root = Some(d.clone());
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let root = match (root, last) {
        (Some(r), _) => r,
        (None, Some(e)) => return Err(e.into()),
        (None, None) => bail!("{repo}: the trust metadata has no root"),
    };
    // What this machine trusts for the repository lives with its trust keys and policy, outside
    // any store, so that every --root on the machine starts from the same newest root.
    let state = ctx.config.join("trust").join("clients").join(repo.replace(':', "_"));
    Ok((dir, root, state))
}

/// The verified target of `r` (a tag), from metadata rooted in the pinned `root_keys`.
pub fn resolve(ctx: &Ctx, regs: &Registries, r: &Reference, root_keys: &[String]) -> anyhow::Result<bulkhead_trust::Resolved> {
    let tag = r.tag().context("only a tag is resolved through trust metadata")?;
    let (dir, root, state) = fetch_metadata(ctx, regs, r, root_keys)?;
    Ok(bulkhead_trust::repo::resolve(&root, dir.path(), &state, tag)?)
}

/// What `pull` does with a reference under the policy: Some(digest) to pull instead of the tag
/// (covered), None (not covered: a notice, or an error if the policy denies).
pub fn enforce(ctx: &Ctx, regs: &Registries, r: &Reference, skip_verify: bool) -> anyhow::Result<Option<bulkhead_image::Digest>> {
    let policy = Policy::load(&policy_path(ctx))?;
    let repo = repository_of(r);
    if skip_verify {
        if policy.forbid_skip_verify {
            bail!("--insecure-skip-verify is forbidden by the trust policy");
        }
        warn(format!("--insecure-skip-verify: {r} is pulled without checking its signature"));
        return Ok(None);
    }
    match policy.rule_for(&repo) {
        Some(rule) if r.digest().is_none() => {
            let resolved = resolve(ctx, regs, r, &rule.root_keys).with_context(|| format!("verifying {r}"))?;
            let missing: Vec<&String> = rule.roles.iter().filter(|role| !resolved.signed_by.contains(role)).collect();
            if !missing.is_empty() {
                bail!(
                    "verifying {r}: the policy requires signatures by {}; it is signed by {}",
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    if resolved.signed_by.is_empty() {
                        "none of them".to_owned()
                    } else {
                        resolved.signed_by.join(", ")
                    }
                );
            }
            if !ctx.quiet {
                eprintln!("trust: {r} is signed as {}", resolved.digest);
            }
            Ok(Some(resolved.digest))
        }
        Some(_) => Ok(None),
        None if policy.default == Default_::Deny => {
            bail!("{r} is not covered by the trust policy, whose default is deny")
        }
        None => {
            if !ctx.quiet {
                eprintln!("notice: {repo} is not covered by a trust policy: its tags are not verified");
            }
            Ok(None)
        }
    }
}

/// Whether `run` must go through a verifying pull even for an image the store has.
pub fn covers(ctx: &Ctx, r: &Reference) -> anyhow::Result<bool> {
    let policy = Policy::load(&policy_path(ctx))?;
    Ok(r.digest().is_none() && policy.rule_for(&repository_of(r)).is_some())
}

pub fn run(ctx: &Ctx, a: TrustArgs) -> anyhow::Result<ExitCode> {
    let c = a.command;
    let expiry = expiry_of(&c)?;
    let td = TrustDir::new(&ctx.config);
    let regs = Registries::load(&ctx.config)?;
    match c {
        TrustCommand::Key(KeyCommand::Generate { name, kind }) => {
            let kind: KeyKind = kind.parse()?;
            let pass = bulkhead_trust::store::passphrase("key")?;
            let id = td.generate_key(&name, kind, &pass)?;
            println!("{id}");
        }
        TrustCommand::Key(KeyCommand::Export { name, private }) => {
            print!("{}", td.export_key(&name, private)?);
            if !private {
                println!();
            }
        }
        TrustCommand::Key(KeyCommand::Import { name, file }) => {
            let pem = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            let id = td.import_key(&name, &pem, &bulkhead_trust::store::passphrase("key")?)?;
            println!("{id}");
        }
        TrustCommand::Init {
            repository,
            kind,
            targets_keys,
            targets_threshold,
            ..
        } => {
            let repo = parse_repository(&repository)?;
            let kind: KeyKind = kind.parse()?;
            let targets = (!targets_keys.is_empty()).then_some((targets_keys.as_slice(), targets_threshold));
            let root = td.init_repo(&repository_of(&repo), kind, &expiry, targets)?;
            publish(&regs, &td, &repo)?;
            let path = policy_path(ctx);
            let mut policy = Policy::load(&path)?;
            policy.pin(&repository_of(&repo), vec![root.clone()]);
            policy.save(&path)?;
            eprintln!(
                "trust: {} initialised; its root key {root} is pinned in {} (keep that key offline)",
                repository_of(&repo),
                path.display()
            );
            println!("{root}");
        }
        TrustCommand::Signer(SignerCommand::Remove { role, repository, .. }) => {
            let repo = parse_repository(&repository)?;
            let dir = td.repo_dir(&repository_of(&repo))?;
            let targets = td.role_keys(&dir, "targets")?;
            let mut mechanics = td.role_keys(&dir, "snapshot")?;
            mechanics.extend(td.role_keys(&dir, "timestamp")?);
            bulkhead_trust::threshold::remove_delegation(&dir, &role, &targets, &mechanics, &expiry)?;
            publish(&regs, &td, &repo)?;
            println!("{}: {role} removed", repository_of(&repo));
        }
        TrustCommand::Signer(SignerCommand::Add {
            key,
            role,
            paths,
            more_keys,
            threshold,
            repository,
            ..
        }) => {
            let repo = parse_repository(&repository)?;
            if ["root", "targets", "snapshot", "timestamp"].contains(&role.as_str()) {
                bail!("{role} is a top-level role; a signer gets a role of its own");
            }
            let dir = td.repo_dir(&repository_of(&repo))?;
            let signers = std::iter::once(&key)
                .chain(&more_keys)
                .map(|k| td.load_key(&td.key_id(k)?, &role))
                .collect::<Result<Vec<_>, _>>()?;
            let keys = td.online_keys(&dir)?;
            bulkhead_trust::repo::add_delegation(&dir, &role, &paths, &signers, threshold, &keys, &expiry)?;
            publish(&regs, &td, &repo)?;
            println!("{}: {role} signs {}", repository_of(&repo), paths.join(" "));
        }
        TrustCommand::Sign { image, role, partial, .. } => {
            let r = Reference::parse(&image)?;
            let tag = r.tag().context("sign a tag: NAME:TAG")?.to_owned();
            // What is signed is the image in this store under that name (the one the publisher
            // pushed), checked to be in the registry byte for byte; only an image this store does
            // not have is taken as the registry names it now, with a warning.
            let local = ctx.store().ok().and_then(|s| s.resolve(&image).ok());
            let (data, digest) = match &local {
                Some(rec) => bulkhead_registry::fetch_manifest(&regs, &r.with_digest(rec.manifest.clone()), &warn)
                    .with_context(|| format!("{r}: the local image {} is not in the registry (push it first)", rec.manifest))?,
                None => {
                    let (data, digest) = bulkhead_registry::fetch_manifest(&regs, &r, &warn)?;
                    warn(format!(
                        "{r} is not in the local store: signing what the registry names now, {digest}"
                    ));
                    (data, digest)
                }
            };
            let dir = td.repo_dir(&repository_of(&r))?;
            let length = data.len() as u64;
            if partial {
                sync_for_signing(ctx, &regs, &td, &r)?;
                let mine = td.role_keys(&dir, "targets")?;
                let status = match bulkhead_trust::threshold::pending_targets(&dir)? {
                    None => {
                        let change = vec![(tag.clone(), digest.clone(), length, Default::default())];
                        bulkhead_trust::threshold::propose(&dir, &change, &mine, &expiry)?;
                        bulkhead_trust::threshold::countersign(&dir, &[])?
                    }
                    Some(pending) => {
                        // A signer vouches for what they have: the pending tag must be this image.
                        if !pending.iter().any(|(n, h)| n == &tag && h == digest.hex()) {
                            bail!("the pending release does not sign {tag} as {digest}: not countersigning");
                        }
                        bulkhead_trust::threshold::countersign(&dir, &mine)?
                    }
                };
                // Finishing needs the snapshot and timestamp keys; a signer without them leaves the
                // complete proposal for a machine that has them (it runs trust sign --partial too).
                let mechanics = match (td.role_keys(&dir, "snapshot"), td.role_keys(&dir, "timestamp")) {
                    (Ok(mut s), Ok(t)) => {
                        s.extend(t);
                        Some(s)
                    }
                    _ => None,
                };
                let done = match &mechanics {
                    Some(keys) => bulkhead_trust::threshold::finish(&dir, keys, &expiry)?,
                    None => false,
                };
                publish(&regs, &td, &r)?;
                if done {
                    println!("{r}: signed {digest} ({} of {} signatures)", status.0, status.1);
                } else if status.0 as u64 >= status.1 {
                    println!(
                        "{r}: {} of {} signatures; a holder of the snapshot and timestamp keys publishes it (trust sign --partial)",
                        status.0, status.1
                    );
                } else {
                    println!(
                        "{r}: {} of {} signatures; pending until another signer runs trust sign --partial",
                        status.0, status.1
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let keys = match &role {
                None => td.online_keys(&dir)?,
                Some(_) => {
                    let mut k = td.role_keys(&dir, "snapshot")?;
                    k.extend(td.role_keys(&dir, "timestamp")?);
                    k
                }
            };
            match &role {
                None => bulkhead_trust::repo::sign_target(&dir, &tag, &digest, length, Default::default(), &keys, &expiry)?,
                Some(role) => {
                    // A team's signer needs its own key and the snapshot and timestamp keys, not
                    // the top-level targets key.
                    let signer = td.delegated_keys(&dir, role)?;
                    bulkhead_trust::repo::sign_delegated_target(&dir, role, &tag, &digest, length, &signer, &keys, &expiry)?
                }
            }
            publish(&regs, &td, &r)?;
            println!("{r}: signed {digest}");
        }
        TrustCommand::Revoke { image, .. } => {
            let r = Reference::parse(&image)?;
            let tag = r.tag().context("revoke a tag: NAME:TAG")?.to_owned();
            let dir = td.repo_dir(&repository_of(&r))?;
            let keys = td.online_keys(&dir)?;
            bulkhead_trust::repo::remove_target(&dir, &tag, &keys, &expiry)?;
            publish(&regs, &td, &r)?;
            println!("{r}: revoked");
        }
        TrustCommand::Rotate { repository, role, .. } => {
            let repo = parse_repository(&repository)?;
            let name = repository_of(&repo);
            if role != "root" {
                let id = td.rotate_online(&name, &role, KeyKind::Ed25519, &expiry)?;
                publish(&regs, &td, &repo)?;
                eprintln!("trust: {name} has a new {role} key {id}");
                println!("{id}");
                return Ok(ExitCode::SUCCESS);
            }
            let new = td.rotate_root(&name, KeyKind::Ed25519, &expiry)?;
            publish(&regs, &td, &repo)?;
            let path = policy_path(ctx);
            let mut policy = Policy::load(&path)?;
            policy.pin(&name, vec![new.clone()]);
            policy.save(&path)?;
            eprintln!("trust: {name} has a new root key {new}, pinned in {}", path.display());
            println!("{new}");
        }
        TrustCommand::Timestamp(TimestampCommand::Refresh { repository, .. }) => {
            let repo = parse_repository(&repository)?;
            let dir = td.repo_dir(&repository_of(&repo))?;
            let keys = td.role_keys(&dir, "timestamp")?;
            let v = bulkhead_trust::repo::refresh_timestamp(&dir, &keys, &expiry)?;
            publish(&regs, &td, &repo)?;
            println!("{}: timestamp version {v}", repository_of(&repo));
        }
        TrustCommand::Inspect { repository } => {
            let repo = parse_repository(&repository)?;
            let policy = Policy::load(&policy_path(ctx))?;
            let rule = policy.rule_for(&repository_of(&repo)).with_context(|| {
                format!(
                    "{} is not in the trust policy: pin its root first (trust policy add)",
                    repository_of(&repo)
                )
            })?;
            let view = inspect(ctx, &regs, &repo, &rule.root_keys)?;
            if ctx.output()? == crate::output::Output::Json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                let mut rows = Vec::new();
                for (tag, t) in view["tags"].as_object().into_iter().flatten() {
                    rows.push(vec![
                        tag.clone(),
                        t["digest"].as_str().unwrap_or("").to_owned(),
                        t["length"].to_string(),
                    ]);
                }
                crate::output::table(&["TAG", "DIGEST", "SIZE"], &rows)?;
                println!();
                let mut rows = Vec::new();
                for role in ["root", "targets", "snapshot", "timestamp"] {
                    let keys = view["roles"][role]["keys"].as_array().map(|k| {
                        k.iter()
                            .map(|i| i.as_str().unwrap_or("").chars().take(12).collect::<String>())
                            .collect::<Vec<_>>()
                            .join(",")
                    });
                    rows.push(vec![
                        role.to_owned(),
                        view[role]["version"].to_string(),
                        view[role]["expires"].as_str().unwrap_or("").to_owned(),
                        view["roles"][role]["threshold"].to_string(),
                        keys.unwrap_or_default(),
                    ]);
                }
                crate::output::table(&["ROLE", "VERSION", "EXPIRES", "THRESHOLD", "KEYS"], &rows)?;
            }
        }
        TrustCommand::Policy(PolicyCommand::Add {
            repository,
            root_keys,
            roles,
        }) => {
            let path = policy_path(ctx);
            let mut policy = Policy::load(&path)?;
            let keys = root_keys
                .iter()
                .map(|k| {
                    td.key_id(k).or_else(|_| {
                        if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) {
                            Ok(k.clone())
                        } else if std::path::Path::new(k).is_file() {
                            // A public key as `trust key export` prints it.
                            let v: serde_json::Value =
                                serde_json::from_slice(&std::fs::read(k)?).with_context(|| format!("{k}: not a key file"))?;
                            v["keyid"].as_str().map(str::to_owned).with_context(|| format!("{k}: no keyid"))
                        } else {
                            bail!("{k}: not a key name, a 64-hex key id or a key file")
                        }
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            policy.pin(&repository, keys);
            // The roles as given (none: any role the metadata trusts).
            if let Some(rule) = policy.trust.iter_mut().find(|r| r.repository == repository) {
                rule.roles = roles;
            }
            policy.save(&path)?;
        }
        TrustCommand::Policy(PolicyCommand::Show) => {
            print!("{}", std::fs::read_to_string(policy_path(ctx)).unwrap_or_default());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The verified metadata of `repo`: every signed tag with its digest, and each role's version and
/// expiry.
fn inspect(ctx: &Ctx, regs: &Registries, repo: &Reference, root_keys: &[String]) -> anyhow::Result<serde_json::Value> {
    let (dir, root, state) = fetch_metadata(ctx, regs, repo, root_keys)?;
    Ok(bulkhead_trust::repo::describe(&root, dir.path(), &state)?)
}
