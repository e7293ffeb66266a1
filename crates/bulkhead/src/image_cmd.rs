//! `bulkhead image ...`: import, save, list, inspect, history, tag, rm, prune, mount, unmount.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_image::export::{save, Format};
use bulkhead_image::import::{import_path, ImportOptions};
use bulkhead_image::limits::Limits;
use bulkhead_image::rootfs::{import_rootfs, RootfsConfig};
use bulkhead_image::{Reference, Store};
use clap::{Args, Subcommand};

use crate::output::{ago, human_size, json, table, Output, Reporter};
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an OCI layout (directory or archive), a docker-archive, or with --rootfs a root filesystem.
    Import(Box<ImportArgs>),
    /// Write images to an OCI archive (default), an OCI layout directory, or a docker-archive.
    #[command(after_help = "--format: oci (default), oci-dir, docker-archive")]
    Save(SaveArgs),
    /// List images.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show images as JSON, in the shape of `docker image inspect`.
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show how an image was built, layer by layer.
    History { image: String },
    /// Give an image another name.
    Tag(TagArgs),
    /// Remove images.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Remove untagged images and every blob and layer nothing refers to.
    Prune {
        /// Accepted for Docker compatibility; prune never asks.
        #[arg(short, long)]
        force: bool,
    },
    /// Mount an image's root filesystem read-only and print where.
    Mount { image: String },
    /// Undo `image mount`.
    Unmount { image: String },
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// An OCI layout directory, an OCI archive, a docker-archive, or (with --rootfs) a directory or tarball.
    path: PathBuf,
    /// Name the imported image NAME[:TAG].
    #[arg(short, long)]
    tag: Option<String>,
    /// PATH is a root filesystem (a directory, or a tar, tar.gz or tar.zst of one).
    #[arg(long)]
    rootfs: bool,
    /// With --rootfs: the entrypoint, a JSON array or a command line split at spaces.
    #[arg(long, requires = "rootfs")]
    entrypoint: Option<String>,
    /// With --rootfs: the default command, a JSON array or a command line split at spaces.
    #[arg(long, requires = "rootfs")]
    cmd: Option<String>,
    /// With --rootfs: an environment variable KEY=VALUE (repeatable).
    #[arg(short, long, requires = "rootfs")]
    env: Vec<String>,
    /// With --rootfs: the default user.
    #[arg(short, long, requires = "rootfs")]
    user: Option<String>,
    /// With --rootfs: the working directory.
    #[arg(short, long, requires = "rootfs")]
    workdir: Option<String>,
    /// The platform to take from a multi-platform index (or to record, with --rootfs).
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// In an OCI layout with several images, the one with this org.opencontainers.image.ref.name.
    #[arg(long = "ref")]
    layout_ref: Option<String>,
    /// The largest a layer may expand to, in bytes.
    #[arg(long)]
    max_layer_size: Option<u64>,
    /// The largest compression ratio a layer may have (decompression bombs are refused).
    #[arg(long)]
    max_compression_ratio: Option<u64>,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    #[arg(required = true)]
    images: Vec<String>,
    /// Where to write.
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Args, Debug)]
pub struct LsArgs {}

#[derive(Args, Debug)]
pub struct TagArgs {
    source: String,
    target: String,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[arg(required = true)]
    images: Vec<String>,
    /// Remove an image that has several tags by id.
    #[arg(short, long)]
    force: bool,
}

pub fn run(ctx: &Ctx, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Import(a) => import(ctx, *a)?,
        ImageCommand::Save(a) => {
            let format = match ctx.format.as_deref() {
                None | Some("oci") | Some("oci-archive") => Format::OciArchive,
                Some("oci-dir") => Format::OciDir,
                Some("docker-archive") | Some("docker") => Format::DockerArchive,
                Some(f) => bail!("unknown --format {f:?} for image save (oci, oci-dir or docker-archive)"),
            };
            let store = ctx.store()?;
            let _lock = store.lock_shared()?;
            let mut images = Vec::new();
            for i in &a.images {
                let rec = store.resolve(i)?;
                // Saved under the name it was asked by, or its first tag when asked by id.
                let reference = Reference::parse(i)
                    .ok()
                    .filter(|r| r.tag().is_some() && store.tags_of(&rec.manifest).map(|t| t.contains(r)).unwrap_or(false));
                let reference = match reference {
                    Some(r) => Some(r),
                    None => store.tags_of(&rec.manifest)?.into_iter().next(),
                };
                images.push((rec, reference));
            }
            save(&store, &images, &a.output, format).with_context(|| format!("saving to {}", a.output.display()))?;
        }
        ImageCommand::Ls(_) => ls(ctx)?,
        ImageCommand::Inspect { images } => {
            let store = ctx.store()?;
            let mut out = Vec::new();
            for i in &images {
                out.push(store.info(&store.resolve(i)?)?.inspect_json());
            }
            json(&serde_json::Value::Array(out))?;
        }
        ImageCommand::History { image } => {
            let store = ctx.store()?;
            let info = store.info(&store.resolve(&image)?)?;
            let rows = info.history();
            match ctx.output()? {
                Output::Json => json(&serde_json::json!(rows
                    .iter()
                    .map(|(c, by, size, comment)| serde_json::json!({"Created": c, "CreatedBy": by, "Size": size, "Comment": comment}))
                    .collect::<Vec<_>>()))?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = rows
                        .into_iter()
                        .map(|(c, by, size, comment)| {
                            let when = c
                                .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok())
                                .map(|d| d.with_timezone(&chrono::Utc));
                            vec![ago(when), by, human_size(size), comment]
                        })
                        .collect();
                    table(&["CREATED", "CREATED BY", "SIZE", "COMMENT"], &rows)?;
                }
            }
        }
        ImageCommand::Tag(a) => {
            let store = ctx.store()?;
            // Shared: an `rm` or `prune` (exclusive) cannot remove the image between resolve and tag.
            let _lock = store.lock_shared()?;
            let rec = store.resolve(&a.source)?;
            let target = Reference::parse(&a.target)?;
            if target.digest().is_some() {
                bail!("a tag cannot contain a digest: {}", a.target);
            }
            store.tag(&target, &rec.manifest)?;
        }
        ImageCommand::Rm(a) => {
            let store = ctx.store()?;
            let mut failed = false;
            for i in &a.images {
                match store.remove_image(i, a.force) {
                    Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                    Err(e) => {
                        eprintln!("bulkhead: error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        ImageCommand::Prune { .. } => {
            let store = ctx.store()?;
            let (removed, freed) = store.prune()?;
            {
                let _lock = store.lock_exclusive()?;
                bulkhead_scan::walk::prune_cache(&store)?;
            }
            if !ctx.quiet {
                removed.iter().for_each(|l| println!("{l}"));
            }
            println!("Total reclaimed space: {}", human_size(freed));
        }
        ImageCommand::Mount { image } => {
            let store = ctx.store()?;
            let rec = store.resolve(&image)?;
            println!("{}", store.mount_image(&rec)?.display());
        }
        ImageCommand::Unmount { image } => {
            let store = ctx.store()?;
            let rec = store.resolve(&image)?;
            store.unmount_image(&rec)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn split_command(s: &str) -> anyhow::Result<Vec<String>> {
    if s.trim_start().starts_with('[') {
        return serde_json::from_str(s).with_context(|| format!("{s:?} is not a JSON array of strings"));
    }
    Ok(s.split_whitespace().map(str::to_owned).collect())
}

fn import(ctx: &Ctx, a: ImportArgs) -> anyhow::Result<()> {
    let mut limits = Limits::default();
    if let Some(m) = a.max_layer_size {
        limits.max_layer_bytes = m;
    }
    if let Some(r) = a.max_compression_ratio {
        limits.max_ratio = r;
    }
    let store = Store::open_with_limits(&ctx.root, limits)?
        .with_names_key(ctx.names_key())
        .with_lock_wait(ctx.lock_wait());
    let _lock = store.lock_shared()?;
    let tag = a.tag.as_deref().map(Reference::parse).transpose()?;
    let platform = a.platform.parse()?;
    let reporter = Reporter::new(ctx.quiet);
    let progress = |p| reporter.event(p);
    let what = a.path.display().to_string();
    let imported = if a.rootfs {
        let cfg = RootfsConfig {
            entrypoint: a.entrypoint.as_deref().map(split_command).transpose()?,
            cmd: a.cmd.as_deref().map(split_command).transpose()?,
            env: a.env.clone(),
            user: a.user.clone(),
            workdir: a.workdir.clone(),
            platform,
        };
        vec![import_rootfs(&store, &a.path, &cfg, tag, &progress).with_context(|| format!("importing {what}"))?]
    } else {
        let opts = ImportOptions {
            tag,
            platform,
            layout_ref: a.layout_ref.clone(),
        };
        import_path(&store, &a.path, &opts, &progress).with_context(|| format!("importing {what}"))?
    };
    for i in &imported {
        crate::output::warn_findings(&store, &i.record);
    }
    match ctx.output()? {
        Output::Json => json(&serde_json::json!(imported
            .iter()
            .map(|i| serde_json::json!({
                "Id": i.record.config.to_string(),
                "ManifestDigest": i.record.manifest.to_string(),
                "RepoTags": i.tags.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>()))?,
        Output::Table => {
            for i in &imported {
                if ctx.quiet {
                    println!("{}", i.record.config);
                } else if i.tags.is_empty() {
                    println!("Loaded image ID: {}", i.record.config);
                } else {
                    for t in &i.tags {
                        println!("Loaded image: {}:{}", t.familiar_name(), t.tag().unwrap_or("latest"));
                    }
                }
            }
        }
    }
    Ok(())
}

fn ls(ctx: &Ctx) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let refs = store.refs()?;
    let mut by_manifest: BTreeMap<String, Vec<Reference>> = BTreeMap::new();
    for (k, d) in &refs {
        if let Ok(r) = Reference::parse(k) {
            by_manifest.entry(d.to_string()).or_default().push(r);
        }
    }
    let mut infos = Vec::new();
    for rec in store.records()? {
        infos.push(store.info(&rec)?);
    }
    infos.sort_by_key(|i| std::cmp::Reverse(i.created()));
    if ctx.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for i in &infos {
            if seen.insert(i.id().clone()) {
                println!("{}", i.id().short());
            }
        }
        return Ok(());
    }
    match ctx.output()? {
        Output::Json => json(&serde_json::json!(infos
            .iter()
            .map(|i| serde_json::json!({
                "Id": i.id().to_string(),
                "RepoTags": i.tags.iter().map(|t| format!("{}:{}", t.familiar_name(), t.tag().unwrap_or("latest"))).collect::<Vec<_>>(),
                "ManifestDigest": i.record.manifest.to_string(),
                "Created": i.created().map(|c| c.to_rfc3339()),
                "Size": i.size(),
            }))
            .collect::<Vec<_>>())),
        Output::Table => {
            let mut rows = Vec::new();
            for i in &infos {
                let tags = by_manifest.get(&i.record.manifest.to_string()).cloned().unwrap_or_default();
                let names: Vec<(String, String)> = if tags.is_empty() {
                    vec![("<none>".into(), "<none>".into())]
                } else {
                    tags.iter()
                        .map(|t| (t.familiar_name(), t.tag().unwrap_or("latest").to_owned()))
                        .collect()
                };
                for (repo, tag) in names {
                    rows.push(vec![repo, tag, i.id().short().to_owned(), ago(i.created()), human_size(i.size())]);
                }
            }
            table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows)
        }
    }
}

pub fn system_check(ctx: &Ctx, repair: bool) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    // Containers first: a repair there releases leases and mounts the image check then sees.
    let cs = bulkhead_runtime::container::Containers::open(&store)?;
    let mut problems = bulkhead_runtime::check::check_containers(&store, &cs, repair)?;
    // Networks next: leases, names and rules of containers that are gone, the policy table.
    let ids: Vec<String> = cs.list()?.into_iter().map(|r| r.id).collect();
    problems.extend(bulkhead_network::Networks::open(&ctx.root, &ctx.config)?.check(repair, &ids)?);
    problems.extend(store.check(repair)?);
    problems.extend(crate::scan_cmd::check(ctx, &store, repair)?);
    if ctx.output()? == Output::Json {
        json(&serde_json::json!({"problems": problems, "repaired": repair}))?;
    } else {
        problems.iter().for_each(|p| println!("{p}"));
        if problems.is_empty() {
            println!("store at {} is consistent", ctx.root.display());
        }
    }
    Ok(if problems.is_empty() || repair {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
