//! `pull`, `push`, `login`, `logout`, `manifest inspect`: images to and from registries.

use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_image::spec::PlatformSpec;
use bulkhead_image::Reference;
use bulkhead_registry::{PullEvent, Registries};
use clap::Args;

use crate::Ctx;

#[derive(Args, Debug)]
pub struct PullArgs {
    /// NAME[:TAG] or NAME@DIGEST (`alpine` is docker.io/library/alpine:latest).
    reference: String,
    /// The platform to take from a multi-platform image (os/arch[/variant]).
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Pull every tag of the repository.
    #[arg(short, long)]
    all_tags: bool,
    /// Pull a tag the trust policy covers without verifying its signature (warns; the policy may forbid it).
    #[arg(long)]
    insecure_skip_verify: bool,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The local image, by the name it is pushed as (NAME[:TAG]).
    reference: String,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The registry (default: Docker Hub).
    server: Option<String>,
    #[arg(short, long)]
    username: Option<String>,
    /// The password (visible to other users in the process list: prefer --password-stdin).
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
}

pub(crate) fn registries(ctx: &Ctx) -> anyhow::Result<Registries> {
    Ok(Registries::load(&ctx.config)?)
}

pub(crate) fn warn(msg: String) {
    eprintln!("bulkhead: warning: {msg}");
}

/// The registry host a server argument names (`docker.io` by default).
fn server_host(server: Option<&str>) -> String {
    let s = server.unwrap_or(bulkhead_registry::config::DOCKER_HUB);
    let s = s.trim_start_matches("https://").trim_start_matches("http://");
    s.split('/').next().unwrap_or(s).to_owned()
}

/// A progress display: one line per blob, redrawn in place on a terminal (size, rate, ETA);
/// plain lines otherwise.
struct Display {
    quiet: bool,
    tty: bool,
    started: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Display {
    fn new(quiet: bool) -> Self {
        Display {
            quiet,
            tty: std::io::stderr().is_terminal(),
            started: Default::default(),
        }
    }

    fn event(&self, e: PullEvent) {
        if self.quiet {
            return;
        }
        let mb = |b: u64| b as f64 / 1e6;
        match e {
            PullEvent::Host(h) => eprintln!("pulling from {h}"),
            PullEvent::Present { digest, size } => eprintln!("{}: already in the store ({:.1} MB)", digest.short(), mb(size)),
            PullEvent::Started { digest, size, offset } => {
                self.started.lock().unwrap().insert(digest.to_string(), std::time::Instant::now());
                if offset > 0 {
                    eprintln!("{}: resuming at {:.1} of {:.1} MB", digest.short(), mb(offset), mb(size));
                }
            }
            PullEvent::Progress { digest, done, size } if self.tty => {
                let t0 = self.started.lock().unwrap().get(&digest.to_string()).copied();
                let secs = t0.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0).max(1e-3);
                let rate = done as f64 / secs;
                let eta = if rate > 0.0 { (size - done.min(size)) as f64 / rate } else { 0.0 };
                eprint!(
                    "\r{}: {:>7.1}/{:.1} MB  {:>6.1} MB/s  ETA {:>4.0}s ",
                    digest.short(),
                    mb(done),
                    mb(size),
                    rate / 1e6,
                    eta
                );
            }
            PullEvent::Progress { .. } => {}
            PullEvent::Verified { digest } => {
                if self.tty {
                    eprint!("\r\x1b[K");
                }
                eprintln!("{}: downloaded and verified", digest.short());
            }
            PullEvent::Import(_) => {}
        }
    }
}

pub fn pull(ctx: &Ctx, a: PullArgs) -> anyhow::Result<ExitCode> {
    let regs = registries(ctx)?;
    let store = ctx.store()?;
    let platform: PlatformSpec = a.platform.parse()?;
    let reference = Reference::parse(&a.reference)?;
    let references = if a.all_tags {
        if reference.digest().is_some() || a.reference.contains(':') && reference.tag() != Some("latest") {
            bail!("--all-tags takes a repository name without a tag or digest");
        }
        let tags = bulkhead_registry::list_tags(&regs, &reference, &warn)?;
        tags.iter().map(|t| reference.with_tag(t)).collect::<Result<Vec<_>, _>>()?
    } else {
        vec![reference]
    };
    let display = Display::new(ctx.quiet);
    for r in references {
        // A tag the trust policy covers is pulled by the digest its signed metadata names, then
        // given the tag here.
        let signed = crate::trust_cmd::enforce(ctx, &regs, &r, a.insecure_skip_verify)?;
        let fetch = signed.as_ref().map_or_else(|| r.clone(), |d| r.with_digest(d.clone()));
        let pulled = bulkhead_registry::pull(&store, &regs, &fetch, &platform, &|e| display.event(e), &warn)
            .with_context(|| format!("pulling {r}"))?;
        if signed.is_some() {
            store.tag(&r, &pulled.record.manifest)?;
        }
        crate::output::warn_findings(&store, &pulled.record);
        if ctx.quiet {
            println!("{r}");
        } else {
            println!("{r}: digest {} ({} bytes transferred)", pulled.manifest, pulled.transferred);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn push(ctx: &Ctx, a: PushArgs) -> anyhow::Result<ExitCode> {
    let regs = registries(ctx)?;
    let store = ctx.store()?;
    let target = Reference::parse(&a.reference)?;
    let image = store
        .resolve(&a.reference)
        .with_context(|| format!("no local image {}", a.reference))?;
    let quiet = ctx.quiet;
    let pushed = bulkhead_registry::push(
        &store,
        &regs,
        &image,
        &target,
        &|line| {
            if !quiet {
                eprintln!("{line}")
            }
        },
        &warn,
    )
    .with_context(|| format!("pushing {target}"))?;
    println!("{target}: digest: {} size: {}", pushed.digest, pushed.size);
    Ok(ExitCode::SUCCESS)
}

pub fn login(ctx: &Ctx, a: LoginArgs) -> anyhow::Result<ExitCode> {
    let regs = registries(ctx)?;
    let host = server_host(a.server.as_deref());
    let api = bulkhead_registry::config::api_host(&host).to_owned();
    let Some(user) = a.username else {
        bail!("give a user name with -u (and the password with --password-stdin)");
    };
    let password = match (a.password, a.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin exclude each other"),
        (Some(p), false) => {
            warn("a password on the command line is visible to other users: prefer --password-stdin".into());
            p
        }
        (None, true) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the password")?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, false) => bail!("give the password with --password-stdin"),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    bulkhead_registry::login(&regs, &api, &user, &password, &warn)?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

pub fn logout(ctx: &Ctx, server: Option<String>) -> anyhow::Result<ExitCode> {
    let regs = registries(ctx)?;
    let host = server_host(server.as_deref());
    if regs.remove_credentials(&host)? {
        println!("Removing login credentials for {host}");
    } else {
        println!("Not logged in to {host}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn manifest_inspect(ctx: &Ctx, reference: &str) -> anyhow::Result<ExitCode> {
    let regs = registries(ctx)?;
    let r = Reference::parse(reference)?;
    let (data, digest) = bulkhead_registry::fetch_manifest(&regs, &r, &warn)?;
    let v: serde_json::Value = serde_json::from_slice(&data).context("the manifest is not JSON")?;
    if !ctx.quiet {
        eprintln!("digest: {digest}");
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Subcommand, Debug)]
pub enum ArtifactCommand {
    /// Attach a file to an image in its registry (an OCI 1.1 artifact whose subject is the image).
    Attach {
        reference: String,
        /// The artifact's type, e.g. application/spdx+json.
        #[arg(long)]
        artifact_type: String,
        /// The media type of the file (default: the artifact type).
        #[arg(long)]
        media_type: Option<String>,
        /// KEY=VALUE annotations of the artifact.
        #[arg(long = "annotation")]
        annotations: Vec<String>,
        file: std::path::PathBuf,
    },
    /// List the artifacts attached to an image.
    Ls {
        reference: String,
        #[arg(long)]
        artifact_type: Option<String>,
    },
}

pub fn artifact(ctx: &Ctx, c: ArtifactCommand) -> anyhow::Result<ExitCode> {
    let regs = registries(ctx)?;
    match c {
        ArtifactCommand::Attach {
            reference,
            artifact_type,
            media_type,
            annotations,
            file,
        } => {
            let r = Reference::parse(&reference)?;
            let data = std::fs::read(&file).with_context(|| file.display().to_string())?;
            let mut notes = std::collections::BTreeMap::new();
            for a in annotations {
                let (k, v) = a.split_once('=').with_context(|| format!("--annotation {a:?} is not KEY=VALUE"))?;
                notes.insert(k.to_owned(), v.to_owned());
            }
            let media_type = media_type.unwrap_or_else(|| artifact_type.clone());
            let d = bulkhead_registry::attach(&regs, &r, &artifact_type, &media_type, &data, &notes, &warn)?;
            println!("{d}");
        }
        ArtifactCommand::Ls { reference, artifact_type } => {
            let r = Reference::parse(&reference)?;
            let list = bulkhead_registry::referrers(&regs, &r, artifact_type.as_deref(), &warn)?;
            if ctx.output()? == crate::output::Output::Json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|x| serde_json::json!({"digest": x.digest, "artifactType": x.artifact_type, "size": x.size, "annotations": x.annotations}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for x in list {
                    println!("{}  {}  {}", x.digest, x.artifact_type.as_deref().unwrap_or("-"), x.size);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
