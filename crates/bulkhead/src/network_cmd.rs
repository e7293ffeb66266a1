//! `bulkhead network ...`, and the hooks that join containers to their networks as they start.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use bulkhead_network::{CreateRequest, Networks};
use clap::{Args, Subcommand};

use crate::output::{json, table};
use crate::{Ctx, Output};

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a bridge network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls,
    /// Show networks in detail (JSON), with the containers on them.
    Inspect { names: Vec<String> },
    /// Remove networks no running container uses.
    #[command(alias = "remove")]
    Rm { names: Vec<String> },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    name: String,
    /// bridge (the only driver).
    #[arg(long, short = 'd', default_value = "bridge")]
    driver: String,
    /// IPv4 subnet (CIDR); default: a free /24 from the pools in networks.json.
    #[arg(long)]
    subnet: Option<String>,
    /// The bridge's address (default: the subnet's first).
    #[arg(long)]
    gateway: Option<String>,
    /// No way out of the network.
    #[arg(long)]
    internal: bool,
    #[arg(long)]
    label: Vec<String>,
}

fn networks(ctx: &Ctx) -> anyhow::Result<Networks> {
    Ok(Networks::open(&ctx.root, &ctx.config)?)
}

pub fn run(ctx: &Ctx, c: NetworkCommand) -> anyhow::Result<ExitCode> {
    let nets = networks(ctx)?;
    match c {
        NetworkCommand::Create(a) => {
            if a.driver != "bridge" {
                bail!("--driver {:?}: only bridge exists", a.driver);
            }
            let mut labels = std::collections::BTreeMap::new();
            for l in &a.label {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                labels.insert(k.to_owned(), v.to_owned());
            }
            let n = nets.create(&CreateRequest {
                name: a.name.clone(),
                subnet: a
                    .subnet
                    .as_deref()
                    .map(|s| {
                        s.parse()
                            .with_context(|| format!("--subnet {s:?}: expected an IPv4 CIDR such as 10.1.2.0/24"))
                    })
                    .transpose()?,
                gateway: a
                    .gateway
                    .as_deref()
                    .map(|s| s.parse().with_context(|| format!("--gateway {s:?}: expected an IPv4 address")))
                    .transpose()?,
                internal: a.internal,
                labels,
            })?;
            println!("{}", n.id);
        }
        NetworkCommand::Ls => {
            let list = nets.list()?;
            match ctx.output()? {
                Output::Json => json(&serde_json::to_value(&list)?)?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|n| {
                            vec![
                                n.id[..12].to_owned(),
                                n.name.clone(),
                                n.driver.clone(),
                                n.subnet.to_string(),
                                if n.internal { "internal".into() } else { String::new() },
                            ]
                        })
                        .collect();
                    table(&["NETWORK ID", "NAME", "DRIVER", "SUBNET", ""], &rows)?;
                }
            }
        }
        NetworkCommand::Inspect { names } => {
            let leases = nets.live_leases()?;
            let policy = nets.policy()?;
            let mut out = Vec::new();
            for name in &names {
                let n = nets.get(name)?;
                let mut v = serde_json::to_value(&n)?;
                v["containers"] = serde_json::to_value(leases.iter().filter(|l| &l.network == name).collect::<Vec<_>>())?;
                v["nftables_table"] = serde_json::json!(format!("inet {}", policy.table));
                out.push(v);
            }
            json(&serde_json::Value::Array(out))?;
        }
        NetworkCommand::Rm { names } => {
            let mut failed = false;
            for name in &names {
                match nets.remove(name) {
                    Ok(_) => println!("{name}"),
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
    }
    Ok(ExitCode::SUCCESS)
}

/// Before a container is made: its networks exist (the default one is made on first use).
pub fn ensure_networks(ctx: &Ctx, names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let nets = networks(ctx)?;
    for n in names {
        if n == bulkhead_network::DEFAULT_NETWORK {
            nets.ensure_default()?;
        } else {
            nets.get(n)?;
        }
    }
    Ok(())
}

/// Joins containers to their networks between create and start, and lets go when they exit.
pub struct NetworkHooks {
    pub root: std::path::PathBuf,
    pub config: std::path::PathBuf,
}

impl bulkhead_runtime::hooks::ContainerHooks for NetworkHooks {
    fn created(&self, id: &str, pid: i32) -> bulkhead_runtime::error::Result<()> {
        use bulkhead_runtime::error::Error;
        let fail = |e: String| Error::Executor(format!("joining the container's networks: {e}"));
        let store = bulkhead_image::Store::open(&self.root)?;
        let cs = bulkhead_runtime::container::Containers::open(&store)?;
        let rec = cs.load(id)?;
        if rec.networks.is_empty() {
            return Ok(());
        }
        let nets = Networks::open(&self.root, &self.config).map_err(|e| fail(e.to_string()))?;
        let mut addrs = Vec::new();
        for n in &rec.networks {
            let lease = nets.attach(id, &rec.name, n, pid).map_err(|e| fail(e.to_string()))?;
            addrs.push(std::net::IpAddr::V4(lease.ip));
        }
        // In place: the container's bind mount holds this inode.
        let hosts = cs.dir(id).join("hosts");
        let text = bulkhead_runtime::run::hosts_file(&rec.hostname, &addrs);
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&hosts)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(|e| fail(format!("{}: {e}", hosts.display())))?;
        Ok(())
    }

    fn exited(&self, id: &str) {
        let nets = match Networks::open(&self.root, &self.config) {
            Ok(n) => n,
            Err(e) => return tracing::warn!(error = %e, "releasing the container's addresses"),
        };
        if let Err(e) = nets.detach(id) {
            tracing::warn!(error = %e, "releasing the container's addresses");
        }
    }
}
