//! `bulkhead network ...`, and the hooks that join containers to their networks as they start.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use bulkhead_network::rules::{Action, Rule, Selector};
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
    /// Allow FROM to reach TO (on TO's PORT only, if given). FROM and TO: a container's name, an
    /// alias, or a label KEY=VALUE.
    Allow(RuleArgs),
    /// Take an allow back (or deny TO=outside: FROM's way out).
    Deny(RuleArgs),
    /// List the rules, with where each came from and the packets it let through.
    Rules {
        #[arg(long)]
        network: Option<String>,
    },
    /// Join a container to a network (now, if it runs, and at every start).
    Connect { network: String, container: String },
    /// Take a container off a network.
    Disconnect { network: String, container: String },
    /// Remove every network no container uses (the default network stays).
    Prune,
    /// Connections the policy refused (JSON lines): both ends, protocol and port.
    Events {
        /// Keep printing new ones.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Args, Debug)]
pub struct RuleArgs {
    from: String,
    /// TO[:PORT[/tcp|udp]]
    to: String,
    /// Only on this network (default: every network both ends are on).
    #[arg(long)]
    network: Option<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    name: String,
    /// bridge (the only driver).
    #[arg(long, short = 'd', default_value = "bridge")]
    driver: String,
    /// Subnet (CIDR), IPv4 and/or IPv6 (repeat the option); default: a free /24 from the pools
    /// in networks.json, and with --ipv6 a free /64 of the store's unique local /48.
    #[arg(long)]
    subnet: Vec<String>,
    /// The bridge's address in a subnet (default: the subnet's first); repeat for IPv6.
    #[arg(long)]
    gateway: Vec<String>,
    /// IPv6 too (the default network has it whenever the host does).
    #[arg(long)]
    ipv6: bool,
    /// No way out of the network.
    #[arg(long)]
    internal: bool,
    /// No names: containers on it do not resolve each other.
    #[arg(long)]
    disable_dns: bool,
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
                // Which compose project or stack a network is decides who may join it.
                if k.starts_with("bulkhead.") {
                    bail!("--label {k}: labels starting with `bulkhead.` are bulkhead's own");
                }
                labels.insert(k.to_owned(), v.to_owned());
            }
            let mut req = CreateRequest {
                name: a.name.clone(),
                ipv6: a.ipv6,
                internal: a.internal,
                labels,
                no_dns: a.disable_dns,
                ..Default::default()
            };
            for s in &a.subnet {
                match s
                    .parse::<bulkhead_network::ipnet::IpNet>()
                    .with_context(|| format!("--subnet {s:?}: expected a CIDR such as 10.1.2.0/24 or fd00:1:2:3::/64"))?
                {
                    bulkhead_network::ipnet::IpNet::V4(n) if req.subnet.is_none() => req.subnet = Some(n),
                    bulkhead_network::ipnet::IpNet::V6(n) if req.subnet6.is_none() => req.subnet6 = Some(n),
                    _ => bail!("--subnet {s}: one IPv4 and one IPv6 subnet at most"),
                }
            }
            for g in &a.gateway {
                match g
                    .parse::<std::net::IpAddr>()
                    .with_context(|| format!("--gateway {g:?}: expected an IP address"))?
                {
                    std::net::IpAddr::V4(x) if req.gateway.is_none() => req.gateway = Some(x),
                    std::net::IpAddr::V6(x) if req.gateway6.is_none() => req.gateway6 = Some(x),
                    _ => bail!("--gateway {g}: one IPv4 and one IPv6 gateway at most"),
                }
            }
            if req.subnet6.is_some() && !a.ipv6 {
                bail!("an IPv6 --subnet needs --ipv6");
            }
            let n = nets.create(&req)?;
            println!("{}", n.id);
        }
        NetworkCommand::Ls => {
            let list = nets.list()?;
            if ctx.quiet {
                list.iter().for_each(|n| println!("{}", n.name));
                return Ok(ExitCode::SUCCESS);
            }
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
                                std::iter::once(n.subnet.to_string())
                                    .chain(n.subnet6.map(|s| s.to_string()))
                                    .collect::<Vec<_>>()
                                    .join(","),
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
        NetworkCommand::Allow(a) => println!("{}", nets.add_rule(rule(&a, Action::Allow, "network allow", None)?)?),
        NetworkCommand::Deny(a) => println!("{}", nets.add_rule(rule(&a, Action::Deny, "network deny", None)?)?),
        NetworkCommand::Rules { network } => {
            // Counts since the table was last written are added to what the rules kept.
            let live = bulkhead_network::firewall::hits(&nets.table());
            let mut list = nets.rules()?;
            bulkhead_network::rules::add_hits(&mut list, &live);
            list.retain(|r| network.is_none() || r.network.is_none() || r.network == network);
            match ctx.output()? {
                Output::Json => json(&serde_json::to_value(&list)?)?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|r| vec![r.id.to_string(), r.describe(), r.origin.clone(), r.hits.to_string()])
                        .collect();
                    table(&["ID", "RULE", "ORIGIN", "PACKETS"], &rows)?;
                }
            }
        }
        NetworkCommand::Events { follow } => events(&nets, follow)?,
        NetworkCommand::Connect { network, container } => {
            refuse_stack_networks(ctx, std::slice::from_ref(&network))?;
            connect(ctx, &nets, &network, &container, true)?
        }
        NetworkCommand::Disconnect { network, container } => connect(ctx, &nets, &network, &container, false)?,
        NetworkCommand::Prune => {
            // A network a stopped container names is kept: it joins it again at its next start.
            let store = ctx.store()?;
            let cs = bulkhead_runtime::container::Containers::open(&store)?;
            let named: Vec<String> = cs.list()?.into_iter().flat_map(|r| r.networks).collect();
            for n in nets.prune(&named)? {
                println!("{n}");
            }
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

fn rule(a: &RuleArgs, action: Action, origin: &str, owner: Option<&str>) -> anyhow::Result<Rule> {
    let (to, port, proto) = Rule::parse_target(&a.to)?;
    let from = Selector::parse(&a.from)?;
    if from == Selector::Outside || (to == Selector::Outside && action == Action::Allow) {
        bail!("the outside is reached by default and reaches containers only through published ports: only `network deny NAME outside` takes a way out");
    }
    if to == Selector::Outside && port.is_some() {
        bail!("`deny NAME outside` takes no port");
    }
    Ok(Rule {
        id: 0,
        action,
        from,
        to,
        port,
        proto,
        network: a.network.clone(),
        origin: origin.to_owned(),
        owner: owner.map(str::to_owned),
        created: chrono::Utc::now(),
        hits: 0,
    })
}

/// `run --allow-from FROM[:PORT[/PROTO]]` (FROM may reach this container) and `--allow-to
/// TO[:PORT[/PROTO]]` (this container may reach TO): rules owned by the container.
pub fn container_rules(ctx: &Ctx, id: &str, name: &str, from: &[String], to: &[String]) -> anyhow::Result<()> {
    if from.is_empty() && to.is_empty() {
        return Ok(());
    }
    let nets = networks(ctx)?;
    for f in from {
        let (src, port) = match f.split_once(':') {
            Some((s, p)) => (s, format!("{name}:{p}")),
            None => (f.as_str(), name.to_owned()),
        };
        let a = RuleArgs {
            from: src.to_owned(),
            to: port,
            network: None,
        };
        nets.add_rule(rule(&a, Action::Allow, &format!("run {name} --allow-from {f}"), Some(id))?)?;
    }
    for t in to {
        let a = RuleArgs {
            from: name.to_owned(),
            to: t.clone(),
            network: None,
        };
        nets.add_rule(rule(&a, Action::Allow, &format!("run {name} --allow-to {t}"), Some(id))?)?;
    }
    Ok(())
}

/// Reads the kernel's log for the table's denials (and connections learn rules let through):
/// one JSON line each, the addresses named by the containers that hold them now.
fn events(nets: &Networks, follow: bool) -> anyhow::Result<()> {
    use std::io::Read;
    let prefixes = [
        (bulkhead_network::firewall::log_prefix(&nets.table()), "denied"),
        (bulkhead_network::firewall::learn_prefix(&nets.table()), "learned"),
    ];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .context("/dev/kmsg")?;
    use std::os::unix::fs::OpenOptionsExt as _;
    // Kernel time is microseconds since boot: the wall clock of boot turns it into a date.
    let boot = {
        let now = chrono::Utc::now();
        let up: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|u| u.parse().ok()))
            .unwrap_or(0.0);
        now - chrono::Duration::milliseconds((up * 1000.0) as i64)
    };
    let mut f = f;
    let mut buf = vec![0u8; 8192];
    let out = std::io::stdout();
    loop {
        match f.read(&mut buf) {
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                if let Some(ev) = prefixes.iter().find_map(|(p, verdict)| parse_denial(&rec, p, verdict, boot, nets)) {
                    let mut o = out.lock();
                    std::io::Write::write_all(&mut o, format!("{ev}\n").as_bytes())?;
                    std::io::Write::flush(&mut o)?;
                }
            }
            // Records overwritten before we read them: go on from the oldest kept.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !follow {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e).context("/dev/kmsg"),
        }
    }
}

/// One kmsg record ("6,1234,5678901,-;bulkhead-deny:T IN=... SRC=a DST=b ... PROTO=TCP SPT=1 DPT=80 ..."),
/// a denial or (`verdict` "learned") a connection a learn rule let through.
fn parse_denial(rec: &str, prefix: &str, verdict: &str, boot: chrono::DateTime<chrono::Utc>, nets: &Networks) -> Option<serde_json::Value> {
    let (head, msg) = rec.split_once(';')?;
    let msg = msg.lines().next()?.strip_prefix(prefix)?;
    let usec: i64 = head.split(',').nth(2)?.parse().ok()?;
    let field = |k: &str| {
        msg.split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
    };
    let leases = nets.live_leases().unwrap_or_default();
    // By the bridge port the packet came in and went out on (the veth is the container's own,
    // named from its id, and its addresses are pinned to it), never by address: an address is
    // reused, and a container that held it then is not this one.
    let who = |port: &Option<String>| {
        port.as_deref()
            .and_then(|p| leases.iter().find(|l| l.host_if == p))
            .map(|l| serde_json::json!({"container": l.name, "network": l.network}))
            .unwrap_or(serde_json::Value::Null)
    };
    // As `inspect` writes them (the kernel writes IPv6 addresses in full, unabbreviated).
    let addr = |k: &str| field(k).map(|a| a.parse::<std::net::IpAddr>().map(|a| a.to_string()).unwrap_or(a));
    let (src, dst) = (addr("SRC"), addr("DST"));
    Some(serde_json::json!({
        "time": (boot + chrono::Duration::microseconds(usec)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "verdict": verdict,
        "from": {"ip": src, "port": field("SPT").and_then(|p| p.parse::<u16>().ok()), "owner": who(&field("PHYSIN"))},
        "to": {"ip": dst, "port": field("DPT").and_then(|p| p.parse::<u16>().ok()), "owner": who(&field("PHYSOUT"))},
        "protocol": field("PROTO").map(|p| p.to_ascii_lowercase()),
    }))
}

/// `network connect|disconnect`: the container's record, and its running namespace.
fn connect(ctx: &Ctx, nets: &Networks, network: &str, name: &str, join: bool) -> anyhow::Result<()> {
    use bulkhead_runtime::container::State;
    let store = ctx.store()?;
    let cs = bulkhead_runtime::container::Containers::open(&store)?;
    // Under the containers' lock: names are checked, and taken, as creation does.
    let _lock = cs.lock()?;
    let mut rec = bulkhead_runtime::lifecycle::refresh(&cs, cs.find(name)?)?;
    nets.get(network)?;
    if join {
        // Its name and aliases must be free on the network it joins.
        bulkhead_runtime::run::Names {
            id: &rec.id,
            name: &rec.name,
            aliases: &rec.aliases,
            labels: &rec.labels,
            networks: &[network.to_owned()],
            group_label: Some(crate::compose_cmd::SERVICE_LABEL),
        }
        .check(&cs.list()?)?;
    }
    if rec.networks.is_empty() {
        bail!("container {} has no network of its own (--network none or host)", rec.name);
    }
    let running = match rec.state {
        State::Running { pid, .. } if bulkhead_runtime::lifecycle::is_running(&rec) => Some(pid),
        _ => None,
    };
    if join {
        if rec.networks.iter().any(|n| n == network) {
            bail!("container {} is on network {network} already", rec.name);
        }
        if let Some(pid) = running {
            let member = bulkhead_network::Member {
                id: rec.id.clone(),
                name: rec.name.clone(),
                aliases: rec.aliases.clone(),
                labels: rec.labels.clone(),
                ports: Vec::new(),
                ip: None,
            };
            nets.attach(&member, network, pid)?;
        }
        rec.networks.push(network.to_owned());
    } else {
        if !rec.networks.iter().any(|n| n == network) {
            bail!("container {} is not on network {network}", rec.name);
        }
        if rec.networks.first().map(String::as_str) == Some(network) {
            bail!(
                "network {network} is container {}'s first (its default route{}): it stays; disconnect the others",
                rec.name,
                if rec.ip.is_some() { " and its --ip" } else { "" }
            );
        }
        if rec.networks.len() == 1 {
            bail!(
                "network {network} is container {}'s only one: it keeps it (run it with --network none instead)",
                rec.name
            );
        }
        if running.is_some() {
            nets.detach_one(&rec.id, network)?;
        }
        rec.networks.retain(|n| n != network);
    }
    cs.save(&rec)?;
    // Its /etc/hosts names it on the addresses it has now.
    if running.is_some() {
        let addrs: Vec<std::net::IpAddr> = nets
            .live_leases()?
            .into_iter()
            .filter(|l| l.container == rec.id)
            .flat_map(|l| std::iter::once(std::net::IpAddr::V4(l.ip)).chain(l.ip6.map(std::net::IpAddr::V6)))
            .collect();
        let p = cs.dir(&rec.id).join("hosts");
        rewrite_in_place(&p, &bulkhead_runtime::run::hosts_file(&rec.hostname, &addrs)).with_context(|| p.display().to_string())?;
    }
    Ok(())
}

/// Replaces a bind-mounted name file's content in place: the container's mount holds this inode,
/// a renamed-in file would never be seen.
fn rewrite_in_place(p: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
}

/// `bulkhead port NAME`: what a running container publishes.
pub fn port(ctx: &Ctx, name: &str) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let cs = bulkhead_runtime::container::Containers::open(&store)?;
    let rec = cs.find(name)?;
    let nets = networks(ctx)?;
    let published: Vec<_> = nets
        .live_leases()?
        .into_iter()
        .filter(|l| l.container == rec.id)
        .flat_map(|l| l.published)
        .collect();
    match ctx.output()? {
        Output::Json => json(&serde_json::to_value(&published)?)?,
        Output::Table => published.iter().for_each(|p| println!("{p}")),
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

/// Runs its closure when dropped.
struct Defer<F: FnMut()>(F);
impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
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
        let t0 = std::time::Instant::now();
        let store = bulkhead_image::Store::open(&self.root)?;
        let cs = bulkhead_runtime::container::Containers::open(&store)?;
        let rec = cs.load(id)?;
        if rec.networks.is_empty() {
            return Ok(());
        }
        let nets = Networks::open(&self.root, &self.config).map_err(|e| fail(e.to_string()))?;
        let mut addrs = Vec::new();
        let mut resolvers = Vec::new();
        let ports = rec
            .ports
            .iter()
            .map(|p| bulkhead_network::ports::PortSpec::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        let member = bulkhead_network::Member {
            id: id.to_owned(),
            name: rec.name.clone(),
            aliases: rec.aliases.clone(),
            labels: rec.labels.clone(),
            ports,
            ip: rec.ip,
        };
        for n in &rec.networks {
            let lease = nets.attach(&member, n, pid).map_err(|e| fail(e.to_string()))?;
            if let Ok(net) = nets.get(n) {
                if net.dns {
                    resolvers.push(net.gateway);
                }
            }
            addrs.push(std::net::IpAddr::V4(lease.ip));
            addrs.extend(lease.ip6.map(std::net::IpAddr::V6));
        }
        // In place: the container's bind mounts hold these inodes.
        let rewrite = |file: &str, text: String| {
            let p = cs.dir(id).join(file);
            rewrite_in_place(&p, &text).map_err(|e| fail(format!("{}: {e}", p.display())))
        };
        rewrite("hosts", bulkhead_runtime::run::hosts_file(&rec.hostname, &addrs))?;
        if !resolvers.is_empty() {
            // On a network with names, its resolver answers (and forwards the rest upstream).
            let host = bulkhead_runtime::run::resolv_conf();
            let mut text = String::from("# written by bulkhead: the network's resolver\n");
            for r in &resolvers {
                text.push_str(&format!("nameserver {r}\n"));
            }
            for l in host.lines().filter(|l| l.starts_with("search ") || l.starts_with("options ")) {
                text.push_str(l);
                text.push('\n');
            }
            rewrite("resolv.conf", text)?;
        }
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "networks joined");
        Ok(())
    }

    fn exited(&self, id: &str) {
        let t0 = std::time::Instant::now();
        let _done = Defer(move || tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "networks left"));
        let nets = match Networks::open(&self.root, &self.config) {
            Ok(n) => n,
            Err(e) => return tracing::warn!(error = %e, "releasing the container's addresses"),
        };
        if let Err(e) = nets.detach(id) {
            tracing::warn!(error = %e, "releasing the container's addresses");
        }
    }

    fn removed(&self, id: &str) {
        match Networks::open(&self.root, &self.config).and_then(|n| n.remove_rules_of(id)) {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "removing the container's rules"),
        }
    }
}

/// A stack's networks are its tasks' alone (the cluster's agent makes them): a container of
/// `run` or `network connect` there would answer to, and reach, what the stack's names and
/// rules mean for its tasks.
pub(crate) fn refuse_stack_networks(ctx: &Ctx, names: &[String]) -> anyhow::Result<()> {
    let nets = networks(ctx)?;
    for n in names {
        if let Ok(net) = nets.get(n) {
            if let Some(stack) = net.labels.get(crate::agent_exec::STACK_NETWORK_LABEL) {
                bail!("network {n} is stack {stack}'s: only its tasks join it");
            }
        }
    }
    Ok(())
}
