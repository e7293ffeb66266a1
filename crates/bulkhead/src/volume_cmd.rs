//! `bulkhead volume ...`: named volumes (see bulkhead_runtime::volumes).

use std::collections::BTreeMap;
use std::process::ExitCode;

use bulkhead_runtime::container::Containers;
use bulkhead_runtime::volumes::Volumes;
use clap::Subcommand;

use crate::output::{json, table};
use crate::{Ctx, Output};

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (an existing one of that name is kept).
    Create {
        name: String,
        /// KEY=VALUE
        #[arg(short, long)]
        label: Vec<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// label=KEY[=VALUE]
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Show volumes in detail (JSON), with the containers that mount them.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes no container (running or not) mounts.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every volume no container mounts.
    Prune {
        /// label=KEY[=VALUE]: only volumes with it.
        #[arg(long)]
        filter: Vec<String>,
    },
}

fn matches(v: &bulkhead_runtime::volumes::Volume, filters: &[String]) -> anyhow::Result<bool> {
    for f in filters {
        let Some(l) = f.strip_prefix("label=") else {
            anyhow::bail!("--filter {f:?}: only label=KEY[=VALUE]");
        };
        let ok = match l.split_once('=') {
            Some((k, val)) => v.labels.get(k).is_some_and(|x| x == val),
            None => v.labels.contains_key(l),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

pub fn run(ctx: &Ctx, c: VolumeCommand) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    let vols = Volumes::open(store.root())?;
    match c {
        VolumeCommand::Create { name, label } => {
            let mut labels = BTreeMap::new();
            for l in &label {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                labels.insert(k.to_owned(), v.to_owned());
            }
            let _lock = cs.lock()?;
            vols.create(&name, labels)?;
            println!("{name}");
        }
        VolumeCommand::Ls { filter } => {
            vols.clean()?;
            let mut list = Vec::new();
            for v in vols.list()? {
                if matches(&v, &filter)? {
                    list.push(v);
                }
            }
            if ctx.quiet {
                list.iter().for_each(|v| println!("{}", v.name));
                return Ok(ExitCode::SUCCESS);
            }
            match ctx.output()? {
                Output::Json => json(&serde_json::to_value(&list)?)?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = list.iter().map(|v| vec!["local".into(), v.name.clone()]).collect();
                    table(&["DRIVER", "VOLUME NAME"], &rows)?;
                }
            }
        }
        VolumeCommand::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                let v = vols.get(n)?;
                out.push(serde_json::json!({
                    "Name": v.name,
                    "Driver": "local",
                    "CreatedAt": v.created.to_rfc3339(),
                    "Labels": v.labels,
                    "Mountpoint": vols.data(n),
                    "Scope": "local",
                    "UsedBy": cs.volume_users(n)?,
                }));
            }
            json(&serde_json::Value::Array(out))?;
        }
        VolumeCommand::Rm { names } => {
            let _lock = cs.lock()?;
            let mut failed = false;
            for n in &names {
                match vols.remove(n, &cs.volume_users(n)?) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("bulkhead: error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
        VolumeCommand::Prune { filter } => {
            let _lock = cs.lock()?;
            vols.clean()?;
            let used: Vec<String> = cs.list()?.into_iter().flat_map(|r| r.volumes.into_iter().map(|v| v.name)).collect();
            for v in vols.list()? {
                if !used.contains(&v.name) && matches(&v, &filter)? {
                    vols.remove(&v.name, &cs.volume_users(&v.name)?)?;
                    println!("{}", v.name);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
