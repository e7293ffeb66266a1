//! `bulkhead sbom`, `bulkhead scan`, `bulkhead db ...`, and the vulnerability gate of `run`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_scan::db::Db;
use bulkhead_scan::matcher::{blocking, Finding};
use bulkhead_scan::severity::Severity;
use bulkhead_scan::Bom;
use clap::{Args, Subcommand};

use crate::output::table;
use crate::Ctx;

/// Exit status of `scan --fail-on` when findings reach the threshold (errors exit 1).
pub const FINDINGS_EXIT: u8 = 3;

#[derive(Args, Debug)]
pub struct SbomArgs {
    /// The image (name[:tag], name@digest or id).
    image: String,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Catalog the image again instead of using the cached bill of materials.
    #[arg(long)]
    no_cache: bool,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// The image (name[:tag], name@digest or id).
    image: String,
    /// Exit with status 3 if a finding is at least this severe: critical, high, medium or low.
    #[arg(long)]
    fail_on: Option<String>,
    /// What an advisory without any rating counts as (default: the policy's, else high).
    #[arg(long)]
    unknown_as: Option<String>,
    /// A TOML file of ignore rules: [[ignore]] id, reason, expires (YYYY-MM-DD).
    #[arg(long)]
    ignore: Option<PathBuf>,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Catalog the image again instead of using the cached bill of materials.
    #[arg(long)]
    no_cache: bool,
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Import OSV advisories: directories of JSON files, zip archives (as osv.dev publishes them), or files.
    Import {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The source name (default: each path's file name); importing a source again replaces it.
        #[arg(long)]
        source: Option<String>,
    },
    /// The sources in the database, how many advisories each brought, and how old they are.
    Status,
    /// Download OSV's ecosystem archives and import them (needs network access to osv.dev's storage).
    Update {
        /// OSV ecosystems to fetch (default: Debian, Ubuntu, Alpine, PyPI, npm, Go, crates.io, Maven).
        #[arg(long = "ecosystem")]
        ecosystems: Vec<String>,
        /// Where the archives are, `<URL>/<ecosystem>/all.zip`.
        #[arg(long, default_value = "https://osv-vulnerabilities.storage.googleapis.com")]
        mirror: String,
    },
}

fn db_path(ctx: &Ctx) -> PathBuf {
    bulkhead_scan::db::default_path(&ctx.root)
}

fn severity(s: &str, what: &str) -> anyhow::Result<Severity> {
    match Severity::parse(s) {
        Some(Severity::Unknown) | None => bail!("{what} {s:?}: expected critical, high, medium or low"),
        Some(v) => Ok(v),
    }
}

fn load_bom(ctx: &Ctx, image: &str, cached: bool) -> anyhow::Result<Bom> {
    let store = ctx.store()?;
    // A name the store lacks is pulled first, as `run` does (and a tag the trust policy covers is
    // resolved through its signed metadata): what is scanned is what would run.
    crate::container_cmd::pull_if_missing(ctx, &store, image)?;
    let _lock = store.lock_shared()?;
    let rec = store.resolve(image)?;
    let bom = if cached {
        bulkhead_scan::walk::catalog_image_cached(&store, &rec, image)?
    } else {
        bulkhead_scan::walk::catalog_image(&store, &rec, image)?
    };
    for w in &bom.warnings {
        let kind = if w.incomplete { "incomplete" } else { "skipped" };
        eprintln!("bulkhead: warning: layer {} {}: {} ({kind})", w.layer, w.path, w.message);
    }
    Ok(bom)
}

fn write_out(output: Option<&Path>, v: &serde_json::Value) -> anyhow::Result<()> {
    match output {
        Some(p) => {
            let data = serde_json::to_vec_pretty(v)?;
            std::fs::write(p, data).with_context(|| p.display().to_string())?;
            Ok(())
        }
        None => crate::output::json(v),
    }
}

pub fn sbom(ctx: &Ctx, a: SbomArgs) -> anyhow::Result<ExitCode> {
    let bom = load_bom(ctx, &a.image, !a.no_cache)?;
    match ctx.format.as_deref() {
        None | Some("table") => {
            let rows: Vec<Vec<String>> = bom
                .packages
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.version.clone(),
                        p.ecosystem.to_string(),
                        p.layer.to_string(),
                        p.path.clone(),
                    ]
                })
                .collect();
            if let Some(o) = &a.output {
                let mut f = std::fs::File::create(o).with_context(|| o.display().to_string())?;
                writeln!(f, "NAME\tVERSION\tTYPE\tLAYER\tPATH")?;
                for r in &rows {
                    writeln!(f, "{}", r.join("\t"))?;
                }
            } else {
                table(&["NAME", "VERSION", "TYPE", "LAYER", "PATH"], &rows)?;
            }
        }
        Some("json") => write_out(a.output.as_deref(), &serde_json::to_value(&bom)?)?,
        Some("cyclonedx-json" | "cyclonedx") => write_out(a.output.as_deref(), &bulkhead_scan::format::cyclonedx::render(&bom, None))?,
        Some("spdx-json" | "spdx") => write_out(a.output.as_deref(), &bulkhead_scan::format::spdx::render(&bom))?,
        Some(f) => bail!("unknown --format {f:?} for sbom (table, json, cyclonedx-json or spdx-json)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Match, then apply the ignore rules (the `--ignore` file, else the policy's).
fn findings(bom: &Bom, db: &Db, ignore: Option<&Path>) -> anyhow::Result<Vec<Finding>> {
    let mut findings = bulkhead_scan::matcher::match_bom(bom, db)?;
    if let Some(path) = ignore {
        let rules = bulkhead_scan::ignore::load(path)?;
        for n in bulkhead_scan::ignore::apply(&mut findings, &rules, chrono::Utc::now().date_naive()) {
            eprintln!("bulkhead: notice: {n}");
        }
    }
    Ok(findings)
}

fn open_db(ctx: &Ctx) -> anyhow::Result<Db> {
    let path = db_path(ctx);
    match Db::open_existing(&path)? {
        Some(db) => Ok(db),
        None => bail!(
            "no vulnerability database at {}: run `bulkhead db import PATH` or `bulkhead db update`",
            path.display()
        ),
    }
}

pub fn scan(ctx: &Ctx, a: ScanArgs) -> anyhow::Result<ExitCode> {
    let policy = crate::trust_cmd::load_policy(ctx)?;
    let fail_on = a.fail_on.as_deref().map(|l| severity(l, "--fail-on")).transpose()?;
    let db = open_db(ctx)?;
    let bom = load_bom(ctx, &a.image, !a.no_cache)?;
    let ignore = a.ignore.clone().or_else(|| policy.scan.ignore.clone());
    let findings = findings(&bom, &db, ignore.as_deref())?;
    let unknown_as = severity(a.unknown_as.as_deref().unwrap_or(&policy.scan.unknown_as), "--unknown-as")?;
    match ctx.format.as_deref() {
        None | Some("table") => {
            let shown: Vec<&Finding> = findings.iter().filter(|f| f.ignored.is_none()).collect();
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|f| {
                    let advisory = if f.aliases.is_empty() {
                        f.id.clone()
                    } else {
                        format!("{} ({})", f.id, f.aliases.join(", "))
                    };
                    vec![
                        f.name.clone(),
                        f.ecosystem.to_string(),
                        f.installed.clone(),
                        if f.fixed.is_empty() { "-".into() } else { f.fixed.join(", ") },
                        advisory,
                        f.severity().to_string(),
                        f.layer.to_string(),
                        f.path.clone(),
                    ]
                })
                .collect();
            table(
                &["PACKAGE", "TYPE", "INSTALLED", "FIXED IN", "ADVISORY", "SEVERITY", "LAYER", "PATH"],
                &rows,
            )?;
            let ignored = findings.len() - shown.len();
            if !ctx.quiet {
                eprintln!(
                    "{} packages, {} vulnerabilities{}",
                    bom.packages.len(),
                    shown.len(),
                    if ignored > 0 {
                        format!(" ({ignored} more ignored by rules)")
                    } else {
                        String::new()
                    }
                );
            }
        }
        Some("json") => write_out(a.output.as_deref(), &serde_json::json!({"bom": bom, "findings": findings}))?,
        Some("sarif") => write_out(
            a.output.as_deref(),
            &bulkhead_scan::format::sarif::render(&bom, &findings, unknown_as),
        )?,
        Some("cyclonedx-json" | "cyclonedx") => write_out(
            a.output.as_deref(),
            &bulkhead_scan::format::cyclonedx::render(&bom, Some(&findings)),
        )?,
        Some(f) => bail!("unknown --format {f:?} for scan (table, json, sarif or cyclonedx-json)"),
    }
    if let Some(level) = fail_on {
        let incomplete = bom.warnings.iter().filter(|w| w.incomplete).count();
        if incomplete > 0 {
            eprintln!("bulkhead: the scan is incomplete: {incomplete} files not read for a limit (see the warnings above)");
            return Ok(ExitCode::from(FINDINGS_EXIT));
        }
        let bad = blocking(&findings, level, unknown_as);
        if !bad.is_empty() {
            eprintln!(
                "bulkhead: {} vulnerabilities at or above {level} (unrated ones count as {unknown_as})",
                bad.len()
            );
            return Ok(ExitCode::from(FINDINGS_EXIT));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn db(ctx: &Ctx, c: DbCommand) -> anyhow::Result<ExitCode> {
    match c {
        DbCommand::Import { paths, source } => {
            if source.is_some() && paths.len() > 1 {
                bail!("--source names one source: import one path at a time with it");
            }
            let mut db = Db::open_rw(&db_path(ctx))?;
            for p in &paths {
                let name = match &source {
                    Some(s) => s.clone(),
                    None => p
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .context("the path has no name: give --source")?
                        .to_string(),
                };
                let r = db.import(p, &name, &mut |_| {})?;
                if !r.skipped.is_empty() {
                    for (file, why) in r.skipped.iter().take(5) {
                        eprintln!("bulkhead: warning: {file}: {why} (skipped)");
                    }
                    if r.skipped.len() > 5 {
                        eprintln!("bulkhead: warning: {} more files skipped", r.skipped.len() - 5);
                    }
                }
                if !ctx.quiet {
                    println!(
                        "{name}: {} advisories imported{}",
                        r.imported,
                        if r.other_ecosystems > 0 {
                            format!(", {} of other ecosystems kept", r.other_ecosystems)
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
        DbCommand::Status => {
            let db = open_db(ctx)?;
            let st = db.status()?;
            if ctx.format.as_deref() == Some("json") {
                crate::output::json(&serde_json::to_value(&st)?)?;
            } else {
                let rows: Vec<Vec<String>> = st
                    .sources
                    .iter()
                    .map(|s| {
                        let age = chrono::DateTime::parse_from_rfc3339(&s.imported_at)
                            .ok()
                            .map(|t| t.with_timezone(&chrono::Utc));
                        vec![
                            s.name.clone(),
                            s.records.to_string(),
                            crate::output::ago(age),
                            s.newest_modified.clone().unwrap_or_else(|| "-".into()),
                            s.path.clone(),
                        ]
                    })
                    .collect();
                table(&["SOURCE", "ADVISORIES", "IMPORTED", "NEWEST RECORD", "FROM"], &rows)?;
                let ecos: Vec<String> = st.ecosystems.iter().map(|(e, n)| format!("{e} {n}")).collect();
                println!("\n{} advisories; by ecosystem: {}", st.advisories, ecos.join(", "));
            }
        }
        DbCommand::Update { ecosystems, mirror } => {
            let ecosystems = if ecosystems.is_empty() {
                ["Debian", "Ubuntu", "Alpine", "PyPI", "npm", "Go", "crates.io", "Maven"]
                    .map(String::from)
                    .to_vec()
            } else {
                ecosystems
            };
            let path = db_path(ctx);
            let mut db = Db::open_rw(&path)?;
            let dir = path.parent().context("database path")?;
            for eco in ecosystems {
                let url = format!("{}/{}/all.zip", mirror.trim_end_matches('/'), eco);
                let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
                let n = bulkhead_registry::download::download(&url, tmp.as_file_mut(), 4 << 30, &regs_deadlines(ctx)?)?;
                let r = db.import(tmp.path(), &format!("osv-{eco}"), &mut |_| {})?;
                if !ctx.quiet {
                    println!("osv-{eco}: {} advisories imported ({} MB downloaded)", r.imported, n / 1_000_000);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The gate of `run`/`create`: with a vulnerability database present, what the policy's `[scan]`
/// says about this image's findings. Warns (default) or refuses; `gate = "off"` skips it.
pub fn gate(ctx: &Ctx, store: &bulkhead_image::Store, image: &str) -> anyhow::Result<()> {
    let policy = crate::trust_cmd::load_policy(ctx)?;
    if policy.scan.gate == bulkhead_trust::policy::Gate::Off {
        return Ok(());
    }
    let Some(db) = Db::open_existing(&db_path(ctx))? else {
        return Ok(());
    };
    let fail_on = severity(&policy.scan.fail_on, "policy [scan] fail_on")?;
    let unknown_as = severity(&policy.scan.unknown_as, "policy [scan] unknown_as")?;
    let bom = {
        let _lock = store.lock_shared()?;
        let rec = store.resolve(image)?;
        bulkhead_scan::walk::catalog_image_cached(store, &rec, image)?
    };
    let findings = findings(&bom, &db, policy.scan.ignore.as_deref())?;
    let bad = blocking(&findings, fail_on, unknown_as);
    // A scan that left files unread for a limit cannot say the image is clean: a hostile image
    // could hide its packages behind the limits.
    if let Some(w) = bom.warnings.iter().find(|w| w.incomplete) {
        let n = bom.warnings.iter().filter(|w| w.incomplete).count();
        let what = format!(
            "the scan of {image} is incomplete ({n} files not read, first {} in layer {}: {})",
            w.path, w.layer, w.message
        );
        match policy.scan.gate {
            bulkhead_trust::policy::Gate::Deny => bail!("refusing to run {image}: {what}"),
            _ => {
                if !ctx.quiet {
                    eprintln!("bulkhead: warning: {what}");
                }
            }
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    let mut names: Vec<String> = bad
        .iter()
        .take(3)
        .map(|f| format!("{} in {} {}", f.id, f.name, f.installed))
        .collect();
    if bad.len() > 3 {
        names.push(format!("{} more", bad.len() - 3));
    }
    let what = format!(
        "{image} has {} vulnerabilities at or above {fail_on} ({})",
        bad.len(),
        names.join(", ")
    );
    match policy.scan.gate {
        bulkhead_trust::policy::Gate::Deny => bail!("refusing to run {what}; see `bulkhead scan {image}`"),
        _ => {
            if !ctx.quiet {
                eprintln!("bulkhead: warning: {what}; see `bulkhead scan {image}`");
            }
            Ok(())
        }
    }
}

/// `system check`: the vulnerability database is sound, and the cached bills of materials belong
/// to images the store has. With `repair`: stale caches go, and an unreadable database is removed
/// (it holds only what `db import`/`db update` can bring back; the problem says so).
pub fn check(ctx: &Ctx, store: &bulkhead_image::Store, repair: bool) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let path = db_path(ctx);
    let broken = match Db::open_existing(&path) {
        Ok(None) => None,
        Ok(Some(db)) => match db.check() {
            Ok(p) if p.is_empty() => None,
            Ok(p) => Some(p.join("; ")),
            Err(e) => Some(e.to_string()),
        },
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = broken {
        problems.push(format!(
            "vulnerability database {} is unreadable ({why}); import the advisories again",
            path.display()
        ));
        if repair {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    if repair {
        let _lock = store.lock_exclusive()?;
        bulkhead_scan::walk::prune_cache(store)?;
    }
    Ok(problems)
}

/// The network deadlines in force (`timeouts` in `<config>/registries.json`).
fn regs_deadlines(ctx: &Ctx) -> anyhow::Result<bulkhead_registry::deadline::Deadlines> {
    Ok(bulkhead_registry::Registries::load(&ctx.config)?.deadlines())
}
