//! `bulkhead cluster ...` and `bulkhead node ...`: thin commands over bulkhead-cluster (the node
//! process runs `node serve`; the others talk to it over its control socket).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bulkhead_cluster::node::{self, ControlRequest, NodeConfig, Paths};
use bulkhead_cluster::pki::Role;
use clap::{Args, Subcommand};

use crate::output::{json, table};
use crate::{Ctx, Output};

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Make a new cluster with this node as its first manager.
    Init(InitArgs),
    /// Join a cluster through one of its managers, with a join token.
    Join(JoinArgs),
    /// Print (or rotate) the join token for workers or managers.
    JoinToken {
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
        /// A new token; the old one stops working at once.
        #[arg(long)]
        rotate: bool,
        /// How long the new token works (e.g. 30m, 2h, 7d).
        #[arg(long)]
        ttl: Option<String>,
        /// How many joins the new token admits.
        #[arg(long)]
        uses: Option<u32>,
    },
    /// The cluster as this manager sees it (JSON).
    Inspect,
    /// Give a locked manager (autolock) its unlock key, from a file or standard input.
    Unlock {
        /// A file holding the key (default: standard input).
        #[arg(long)]
        key_file: Option<std::path::PathBuf>,
    },
    /// Give this manager's store a new data key: the whole store sealed anew with it (each
    /// manager has its own; `unlock-key --rotate` also rotates every manager's).
    DataKey {
        #[arg(long, required = true)]
        rotate: bool,
    },
    /// Print the cluster's unlock key (autolock), or replace it (which turns autolock on).
    UnlockKey {
        #[arg(long)]
        rotate: bool,
    },
    /// The cluster's root CA (PEM); rotate it, or change how long node certificates last.
    ///
    /// A rotation makes a new root, cross-signed by the old, which issues every certificate from
    /// then on; nodes renew in batches, and when all have, the old root is no longer trusted and
    /// the join tokens change. Run it after removing a manager: the old root's key was on it.
    Ca {
        #[arg(long)]
        rotate: bool,
        /// How long node certificates last from their next renewal on (e.g. 90s, 30m, 24h).
        #[arg(long)]
        cert_expiry: Option<String>,
        /// How long tasks' X509-SVIDs last (1h unless set; from 10s to 7 days); each is renewed
        /// at half its life.
        #[arg(long, conflicts_with_all = ["issue_admin", "revoke_admin"])]
        svid_expiry: Option<String>,
        /// Return once the rotation has started, without waiting for it to finish.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Write an admin certificate, its key and the roots to FILE (0600), for
        /// `BULKHEAD_MANAGER=ADDR BULKHEAD_ADMIN_CERT=FILE bulkhead node ls` from elsewhere; it
        /// lasts 7 days, or --cert-expiry.
        #[arg(long, conflicts_with = "rotate")]
        issue_admin: Option<std::path::PathBuf>,
        /// Revoke the admin certificate of this name (as --issue-admin printed it).
        #[arg(long, conflicts_with_all = ["rotate", "issue_admin"])]
        revoke_admin: Option<String>,
    },
    /// Write the cluster's store to FILE, sealed (with the unlock key under autolock, else with a
    /// new key printed once): everything `cluster restore` needs, on any machine.
    Backup { file: std::path::PathBuf },
    /// Make this machine the only manager of the cluster in a backup (another address is fine);
    /// the backup's managers are removed, its workers stay.
    Restore {
        file: std::path::PathBuf,
        /// The backup's key, from a file (default: standard input).
        #[arg(long)]
        key_file: Option<std::path::PathBuf>,
        /// Where the other nodes reach this manager: ADDR[:PORT] (2377 unless given).
        #[arg(long)]
        advertise_addr: String,
        #[arg(long)]
        listen_addr: Option<String>,
    },
    /// Stop this node's process and forget the cluster (a manager needs --force).
    Leave {
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where the other nodes reach this manager: ADDR[:PORT] (port 2377 unless given).
    #[arg(long, required_unless_present = "force_new_cluster")]
    advertise_addr: Option<String>,
    /// Where to listen: ADDR[:PORT] (default: 0.0.0.0 and the advertised port).
    #[arg(long)]
    listen_addr: Option<String>,
    /// How long node certificates last (renewed at 50–80 % of that): e.g. 90s, 30m, 24h.
    #[arg(long)]
    cert_expiry: Option<String>,
    /// Keep the store's data key and the node's key sealed by an unlock key, printed once: a
    /// restarted manager waits for `cluster unlock`.
    #[arg(long)]
    autolock: bool,
    /// How often nodes check in with a manager (e.g. 500ms, 5s; 5s unless given).
    #[arg(long)]
    dispatcher_heartbeat: Option<String>,
    /// On a manager of a cluster that lost its quorum: start a new cluster of this manager
    /// alone, with everything its store holds; the other managers are removed (workers stay).
    #[arg(long, conflicts_with_all = ["autolock", "cert_expiry", "dispatcher_heartbeat"])]
    force_new_cluster: bool,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The join token (`--token-file` keeps it out of the process list and shell history).
    #[arg(long, required_unless_present = "token_file")]
    token: Option<String>,
    /// A file holding the join token (`-`: standard input).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
    /// A manager of the cluster: ADDR[:PORT] (2377 unless given).
    manager: String,
    /// Where the other managers reach this one (joining as a manager).
    #[arg(long)]
    advertise_addr: Option<String>,
    #[arg(long)]
    listen_addr: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// The node process, in the foreground (what `cluster init` and `join` start, and what a
    /// systemd unit runs).
    Serve,
    /// Start this node's process again, detached (after a reboot, or a kill).
    Start,
    /// The cluster's nodes (on a manager).
    #[command(alias = "list")]
    Ls,
    /// Remove a node: its certificate is refused from now on, by every manager, until it
    /// expires.
    #[command(alias = "remove")]
    Rm {
        node: String,
        /// Remove a manager without demoting it first (one that is gone for good).
        #[arg(long, short)]
        force: bool,
    },
    /// A node's record (JSON); `self` is this node.
    Inspect { node: String },
    /// Make workers managers: each renews into a manager's certificate at its next check-in,
    /// starts again as a manager and joins Raft (keep 3, 5 or 7 managers).
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers: each leaves Raft, renews into a worker's certificate and starts
    /// again as a worker, its copy of the store deleted. The last manager cannot be demoted.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability (active, pause, drain) or labels.
    Update {
        node: String,
        #[arg(long)]
        availability: Option<String>,
        /// KEY=VALUE
        #[arg(long)]
        label_add: Vec<String>,
        #[arg(long)]
        label_rm: Vec<String>,
    },
}

fn with_port(a: &str) -> String {
    if a.parse::<std::net::SocketAddr>().is_ok()
        || (a.contains(':') && !a.contains("::") && a.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()))
    {
        a.to_owned()
    } else if a.contains(':') && !a.starts_with('[') {
        format!("[{a}]:2377")
    } else {
        format!("{a}:2377")
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// A manager to administer remotely (`BULKHEAD_MANAGER=ADDR[:PORT]`, with
/// `BULKHEAD_ADMIN_CERT=FILE` from `cluster ca --issue-admin`), as DOCKER_HOST does.
fn remote() -> Option<String> {
    std::env::var("BULKHEAD_MANAGER")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|a| with_port(&a))
}

/// One request to this node's process over its control socket, or to the remote manager.
/// A request answered in many lines (`service logs`), on this node's control socket.
pub(crate) fn call_stream(ctx: &Ctx, req: ControlRequest, each: impl FnMut(serde_json::Value)) -> anyhow::Result<serde_json::Value> {
    Ok(runtime()?.block_on(node::call_stream(&ctx.root, &req, each))?)
}

pub(crate) fn call(ctx: &Ctx, req: ControlRequest) -> anyhow::Result<serde_json::Value> {
    if let Some(addr) = remote().filter(|_| req.remote()) {
        let file = std::env::var_os("BULKHEAD_ADMIN_CERT")
            .context("BULKHEAD_MANAGER needs BULKHEAD_ADMIN_CERT: a file `bulkhead cluster ca --issue-admin FILE` wrote")?;
        return Ok(runtime()?.block_on(node::call_remote(&addr, std::path::Path::new(&file), &req))?);
    }
    Ok(runtime()?.block_on(node::call(&ctx.root, &req))?)
}

fn duration_secs(s: &str) -> anyhow::Result<i64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n.parse().with_context(|| format!("{s:?}: a number and a unit (s, m, h, d)"))?;
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("{s:?}: unit s, m, h or d"),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0 && *v <= 365 * 86400)
        .with_context(|| format!("{s:?}: between 1 s and 365 days"))
}

fn duration_ms(s: &str) -> anyhow::Result<u64> {
    let ms = match s.strip_suffix("ms") {
        Some(n) => n
            .parse::<u64>()
            .with_context(|| format!("{s:?}: a number and a unit (ms, s, m, h)"))?,
        None => duration_secs(s)? as u64 * 1000,
    };
    if !(200..=60_000).contains(&ms) {
        bail!("{s:?}: between 200ms and 60s");
    }
    Ok(ms)
}

/// Starts the node process and, when it waits locked (autolock), gives it `unlock`, which this
/// command made or read; returns once it is ready.
fn start_unlocked(ctx: &Ctx, unlock: Option<&bulkhead_cluster::crypt::Key>) -> anyhow::Result<()> {
    let status = start_node(ctx)?;
    if let (Some(u), true) = (unlock, status["locked"] == true) {
        call(
            ctx,
            ControlRequest::Unlock {
                key: bulkhead_cluster::crypt::unlock_key_text(u),
            },
        )?;
    }
    wait_ready(ctx)
}

/// Starts `node serve` for this root in its own session, its output in the node's log, and waits
/// (30 s at most) until it answers on its control socket; on failure, the log's last lines say why.
fn start_node(ctx: &Ctx) -> anyhow::Result<serde_json::Value> {
    let paths = Paths::new(&ctx.root);
    use std::os::unix::fs::OpenOptionsExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(paths.log())
        .with_context(|| paths.log().display().to_string())?;
    let mut cmd = std::process::Command::new(std::env::current_exe().context("this program's path")?);
    // The node's agent pulls and gates images as this command would: the same registry
    // configuration and trust policy.
    cmd.arg("--root").arg(&ctx.root).arg("--config").arg(&ctx.config);
    if let Some(p) = &ctx.policy {
        cmd.arg("--policy").arg(p);
    }
    cmd.args(["--log-level", "info", "node", "serve"]);
    let mut child = bulkhead_runtime::lifecycle::spawn_detached_logging(cmd, false, Some(log)).context("starting the node process")?;
    for _ in 0..300 {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the node process ended ({status}): {}", last_lines(&paths.log()));
        }
        if let Ok(v) = call(ctx, ControlRequest::Status) {
            bulkhead_cluster::crypt::write_private(&paths.dir.join("node.pid"), child.id().to_string().as_bytes())?;
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    bail!("the node process did not answer within 30 s: {}", last_lines(&paths.log()))
}

/// `cluster join` on a node that is in a cluster: allowed only when its certificate has expired
/// (it was away too long to renew), to come back as itself with a new token.
fn rejoin(ctx: &Ctx, paths: &Paths, a: &JoinArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = NodeConfig::load(paths)?;
    let cert = std::fs::read_to_string(paths.cert()).with_context(|| paths.cert().display().to_string())?;
    let ident = bulkhead_cluster::pki::identity(cert.as_bytes())?;
    let now = bulkhead_cluster::node::now();
    if ident.not_after > now {
        bail!(
            "this node is in cluster {} already, and its certificate is valid: `cluster leave` first",
            cfg.cluster_id
        );
    }
    let key = bulkhead_cluster::crypt::read_node_key(&paths.key(), None)
        .context("the node's key is sealed (autolock): this node cannot rejoin by itself")?;
    let token = read_token(a)?;
    let manager = with_port(&a.manager);
    let previous = bulkhead_cluster::manager::Previous {
        node_id: &cfg.node_id,
        cert_pem: &cert,
        key_pem: &key,
    };
    let joined = runtime()?.block_on(bulkhead_cluster::manager::rejoin_cluster(&manager, token.trim(), previous))?;
    stop_node(ctx, paths);
    bulkhead_cluster::crypt::write_private(&paths.key(), joined.key_pem.as_bytes())?;
    bulkhead_cluster::crypt::write_private(&paths.cert(), joined.cert_pem.as_bytes())?;
    if !cfg.managers.contains(&manager) {
        cfg.managers.insert(0, manager);
    }
    cfg.save(paths)?;
    start_node(ctx)?;
    println!(
        "back in cluster {} as {} ({})",
        cfg.cluster_id,
        cfg.node_id,
        if joined.role == Role::Manager { "manager" } else { "worker" }
    );
    Ok(ExitCode::SUCCESS)
}

/// The join token from `--token` or `--token-file` (`-`: standard input).
fn read_token(a: &JoinArgs) -> anyhow::Result<String> {
    Ok(match (&a.token, &a.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut t = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), 1024), &mut t)?;
            t
        }
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| f.display().to_string())?,
        (None, None) => bail!("give --token or --token-file"),
    })
}

/// Stops this root's node process, if it runs (only ours: its command line names this root).
fn stop_node(ctx: &Ctx, paths: &Paths) {
    let Some(pid) = std::fs::read_to_string(paths.dir.join("node.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(&*ctx.root.to_string_lossy()) {
        return;
    }
    // SAFETY: kill(2) with a pid we started and just identified.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..100 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (30 s at most) until the node answers as unlocked and ready.
fn wait_ready(ctx: &Ctx) -> anyhow::Result<()> {
    for _ in 0..300 {
        if call(ctx, ControlRequest::Status).is_ok_and(|v| v["ready"] == true) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "the node did not become ready within 30 s: {}",
        last_lines(&Paths::new(&ctx.root).log())
    )
}

fn last_lines(p: &std::path::Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

pub fn run(ctx: &Ctx, c: ClusterCommand) -> anyhow::Result<ExitCode> {
    let paths = Paths::new(&ctx.root);
    match c {
        ClusterCommand::Init(a) if a.force_new_cluster => {
            let mut cfg = NodeConfig::load(&paths)?;
            if cfg.role != Role::Manager {
                bail!("--force-new-cluster: this node is a worker; run it on a manager");
            }
            if let Some(adv) = &a.advertise_addr {
                cfg.advertise = with_port(adv);
            }
            if let Some(l) = &a.listen_addr {
                cfg.listen = with_port(l);
            }
            stop_node(ctx, &paths);
            cfg.recover = true;
            cfg.needs_membership = false;
            cfg.save(&paths)?;
            let status = start_node(ctx)?;
            if status["locked"] == true {
                println!("started, locked (autolock): `bulkhead cluster unlock` finishes the recovery");
            } else {
                println!(
                    "cluster {}: a new cluster of this manager alone ({}), with its store; the other managers were removed",
                    cfg.cluster_id, cfg.node_id
                );
            }
        }
        ClusterCommand::Backup { file } => {
            let v = call(ctx, ControlRequest::Backup)?;
            bulkhead_cluster::crypt::write_private(&file, v["sealed"].as_str().context("the node's answer")?.as_bytes())?;
            println!(
                "{} written. Its key (shown only here; keep it apart from the file):\n    {}",
                file.display(),
                v["key"].as_str().unwrap_or_default()
            );
        }
        ClusterCommand::Restore {
            file,
            key_file,
            advertise_addr,
            listen_addr,
        } => {
            if paths.config().exists() {
                bail!(
                    "this node is in a cluster already ({}): `cluster leave` first",
                    paths.config().display()
                );
            }
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(
                    std::fs::File::open(&file).with_context(|| file.display().to_string())?,
                    bulkhead_cluster::recovery::MAX_BACKUP,
                ),
                &mut bytes,
            )?;
            let key_text = match key_file {
                Some(f) => std::fs::read_to_string(&f).with_context(|| f.display().to_string())?,
                None => {
                    let mut t = String::new();
                    std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), 1024), &mut t)?;
                    t
                }
            };
            let key = bulkhead_cluster::crypt::parse_unlock_key(&key_text)?;
            let backup = bulkhead_cluster::recovery::open(&bytes, &key).with_context(|| file.display().to_string())?;
            let unlock = backup
                .data
                .get("config/unlock_key")
                .map(|k| bulkhead_cluster::crypt::parse_unlock_key(&String::from_utf8_lossy(k)))
                .transpose()?;
            paths.create()?;
            let data_key = bulkhead_cluster::crypt::Key::generate()?;
            bulkhead_cluster::crypt::write_data_key(&paths.data_key(), &data_key, unlock.as_ref())?;
            bulkhead_cluster::crypt::write_private(
                &paths.seed(),
                &bulkhead_cluster::recovery::seal(&backup.cluster_id, backup.created, &backup.data, &data_key)?,
            )?;
            let advertise = with_port(&advertise_addr);
            let port = advertise.rsplit_once(':').map_or("2377", |(_, p)| p).to_owned();
            let cfg = NodeConfig {
                node_id: bulkhead_cluster::manager::new_node_id()?,
                role: Role::Manager,
                cluster_id: backup.cluster_id.clone(),
                raft_id: Some(bulkhead_cluster::manager::new_raft_id()?),
                listen: listen_addr.as_deref().map(with_port).unwrap_or_else(|| format!("0.0.0.0:{port}")),
                advertise: advertise.clone(),
                managers: vec![advertise.clone()],
                bootstrap: false,
                needs_membership: false,
                cert_expiry: None,
                heartbeat_ms: None,
                recover: true,
            };
            cfg.save(&paths)?;
            start_unlocked(ctx, unlock.as_ref())?;
            println!(
                "cluster {} restored from {}: this node ({}) is its only manager, at {advertise}",
                cfg.cluster_id,
                file.display(),
                cfg.node_id
            );
        }
        ClusterCommand::Init(a) => {
            if paths.config().exists() {
                bail!(
                    "this node is in a cluster already ({}): `cluster leave` first",
                    paths.config().display()
                );
            }
            paths.create()?;
            let advertise = with_port(a.advertise_addr.as_deref().unwrap_or_default());
            let port = advertise.rsplit_once(':').map_or("2377", |(_, p)| p).to_owned();
            let listen = a.listen_addr.as_deref().map(with_port).unwrap_or_else(|| format!("0.0.0.0:{port}"));
            let cfg = NodeConfig {
                node_id: bulkhead_cluster::manager::new_node_id()?,
                role: Role::Manager,
                cluster_id: bulkhead_cluster::manager::new_node_id()?,
                raft_id: Some(bulkhead_cluster::manager::new_raft_id()?),
                listen,
                advertise: advertise.clone(),
                managers: vec![advertise.clone()],
                bootstrap: true,
                needs_membership: false,
                cert_expiry: a.cert_expiry.as_deref().map(duration_secs).transpose()?.map(|s| s.max(60)),
                heartbeat_ms: a.dispatcher_heartbeat.as_deref().map(duration_ms).transpose()?,
                recover: false,
            };
            let unlock = if a.autolock {
                Some(bulkhead_cluster::crypt::Key::generate()?)
            } else {
                None
            };
            bulkhead_cluster::crypt::write_data_key(&paths.data_key(), &bulkhead_cluster::crypt::Key::generate()?, unlock.as_ref())?;
            cfg.save(&paths)?;
            start_unlocked(ctx, unlock.as_ref())?;
            let token = call(
                ctx,
                ControlRequest::JoinToken {
                    role: Role::Worker,
                    rotate: false,
                    ttl: None,
                    uses: None,
                },
            )?;
            println!(
                "cluster {} initialised: this node ({}) is its first manager, at {advertise}.",
                cfg.cluster_id, cfg.node_id
            );
            println!(
                "To add a worker:\n    bulkhead cluster join --token {} {advertise}",
                token["token"].as_str().unwrap_or("")
            );
            println!("To add a manager: `bulkhead cluster join-token manager`.");
            match &unlock {
                Some(u) => {
                    println!(
                        "Autolock is on. The unlock key (keep it safe: a restarted manager waits for it, and it is shown only here and by `cluster unlock-key`):\n    {}",
                        bulkhead_cluster::crypt::unlock_key_text(u)
                    );
                }
                None => eprintln!(
                    "note: the store's data key is kept in a 0600 file beside the node's key, which protects copies of the store, not the machine; `cluster init --autolock` keeps it sealed instead"
                ),
            }
        }
        ClusterCommand::Join(a) => {
            if paths.config().exists() {
                return rejoin(ctx, &paths, &a);
            }
            let manager = with_port(&a.manager);
            let token = read_token(&a)?;
            let joined = runtime()?.block_on(bulkhead_cluster::manager::join_cluster(&manager, token.trim()))?;
            paths.create()?;
            bulkhead_cluster::crypt::write_private(&paths.key(), joined.key_pem.as_bytes())?;
            bulkhead_cluster::crypt::write_private(&paths.cert(), joined.cert_pem.as_bytes())?;
            bulkhead_cluster::crypt::write_private(&paths.ca(), joined.ca_pem.as_bytes())?;
            bulkhead_cluster::crypt::write_data_key(&paths.data_key(), &bulkhead_cluster::crypt::Key::generate()?, None)?;
            let manager_role = joined.role == Role::Manager;
            let advertise = match (&a.advertise_addr, manager_role) {
                (Some(x), _) => with_port(x),
                (None, true) => bail!("joining as a manager: give --advertise-addr (where the other managers reach this one)"),
                (None, false) => String::new(),
            };
            let port = advertise.rsplit_once(':').map_or("2377", |(_, p)| p).to_owned();
            let cfg = NodeConfig {
                node_id: joined.node_id.clone(),
                role: joined.role,
                cluster_id: joined.cluster_id.clone(),
                raft_id: joined.raft_id,
                listen: a.listen_addr.as_deref().map(with_port).unwrap_or_else(|| format!("0.0.0.0:{port}")),
                advertise,
                managers: vec![manager],
                bootstrap: false,
                needs_membership: manager_role,
                cert_expiry: None,
                heartbeat_ms: None,
                recover: false,
            };
            cfg.save(&paths)?;
            start_node(ctx)?;
            println!(
                "joined cluster {} as a {} ({})",
                cfg.cluster_id,
                if manager_role { "manager" } else { "worker" },
                cfg.node_id
            );
        }
        ClusterCommand::JoinToken { role, rotate, ttl, uses } => {
            let role = if role == "manager" { Role::Manager } else { Role::Worker };
            let ttl = ttl.as_deref().map(duration_secs).transpose()?;
            let v = call(ctx, ControlRequest::JoinToken { role, rotate, ttl, uses })?;
            let token = v["token"].as_str().unwrap_or_default();
            if ctx.quiet {
                println!("{token}");
            } else {
                let at = match remote() {
                    Some(a) => a,
                    None => NodeConfig::load(&paths)?.advertise,
                };
                println!(
                    "To add a {}:\n    bulkhead cluster join --token {token} {at}",
                    if role == Role::Manager { "manager" } else { "worker" },
                );
            }
        }
        ClusterCommand::Inspect => json(&call(ctx, ControlRequest::Inspect)?)?,
        ClusterCommand::Unlock { key_file } => {
            let key = match key_file {
                Some(f) => std::fs::read_to_string(&f).with_context(|| f.display().to_string())?,
                None => {
                    let mut t = String::new();
                    std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), 1024), &mut t)?;
                    t
                }
            };
            call(
                ctx,
                ControlRequest::Unlock {
                    key: key.trim().to_owned(),
                },
            )?;
            wait_ready(ctx)?;
            println!("unlocked");
        }
        ClusterCommand::UnlockKey { rotate } => {
            let v = call(ctx, ControlRequest::UnlockKey { rotate })?;
            let k = v["key"].as_str().unwrap_or_default();
            if ctx.quiet {
                println!("{k}");
            } else {
                println!("The cluster's unlock key (a restarted manager waits for it):\n    {k}");
            }
        }
        ClusterCommand::Ca {
            revoke_admin: Some(name), ..
        } => {
            let v = call(ctx, ControlRequest::RevokeAdmin { name })?;
            println!("revoked {}", v["revoked"].as_str().unwrap_or_default());
        }
        ClusterCommand::Ca {
            issue_admin: Some(file),
            cert_expiry,
            ..
        } => {
            if remote().is_some() {
                bail!("admin certificates are issued on a manager's own machine");
            }
            let (key, csr) = bulkhead_cluster::pki::key_and_request()?;
            let lifetime = cert_expiry.as_deref().map(duration_secs).transpose()?;
            let v = call(ctx, ControlRequest::IssueAdmin { csr, lifetime })?;
            let f = node::AdminFile {
                cluster_id: v["cluster_id"].as_str().unwrap_or_default().to_owned(),
                cert: v["cert"].as_str().unwrap_or_default().to_owned(),
                key: key.serialize_pem(),
                ca: v["ca"].as_str().unwrap_or_default().to_owned(),
            };
            bulkhead_cluster::crypt::write_private(&file, &serde_json::to_vec_pretty(&f)?)?;
            println!(
                "{} written ({}): BULKHEAD_MANAGER=<a manager> BULKHEAD_ADMIN_CERT={} bulkhead node ls",
                file.display(),
                v["name"].as_str().unwrap_or_default(),
                file.display()
            );
        }
        ClusterCommand::Ca {
            rotate,
            cert_expiry,
            svid_expiry,
            detach,
            issue_admin: None,
            revoke_admin: None,
        } => {
            let cert_expiry = cert_expiry.as_deref().map(duration_secs).transpose()?;
            let svid_expiry = svid_expiry.as_deref().map(duration_secs).transpose()?;
            let mut v = call(
                ctx,
                ControlRequest::Ca {
                    rotate,
                    cert_expiry,
                    svid_expiry,
                },
            )?;
            if rotate && !detach {
                // Until every node has a certificate of the new root (a node that is down and
                // not removed holds it up: `node rm` it, or bring it back).
                let mut last = usize::MAX;
                while v["rotating"] == true {
                    let n = v["pending"].as_array().map_or(0, |a| a.len());
                    if n != last && !ctx.quiet {
                        eprintln!("CA rotation: {n} node(s) to renew");
                        last = n;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    v = call(
                        ctx,
                        ControlRequest::Ca {
                            rotate: false,
                            cert_expiry: None,
                            svid_expiry: None,
                        },
                    )?;
                }
                if !ctx.quiet {
                    eprintln!("CA rotation done: the old root is no longer trusted, and the join tokens changed");
                }
            }
            if ctx.quiet || !rotate {
                print!("{}", v["roots"].as_str().unwrap_or_default());
            }
        }
        ClusterCommand::DataKey { .. } => {
            call(ctx, ControlRequest::RotateDataKey)?;
            println!("this manager's data key rotated");
        }
        ClusterCommand::Leave { force } => {
            let cfg = NodeConfig::load(&paths)?;
            if cfg.role == Role::Manager && !force {
                bail!("this node is a manager: leaving may cost the cluster its quorum; give --force (demote it first when the cluster must keep running)");
            }
            stop_node(ctx, &paths);
            std::fs::remove_dir_all(&paths.dir).with_context(|| paths.dir.display().to_string())?;
            println!("left cluster {}", cfg.cluster_id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn node(ctx: &Ctx, c: NodeCommand) -> anyhow::Result<ExitCode> {
    match c {
        NodeCommand::Serve => {
            let rt = runtime()?;
            rt.block_on(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                let stop = async move {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                };
                node::serve_with(&ctx.root, stop, Some(crate::agent_exec::RuntimeExecutor::shared(ctx)))
                    .await
                    .map_err(anyhow::Error::from)
            })?;
        }
        NodeCommand::Inspect { node } => json(&call(ctx, ControlRequest::NodeInspect { node })?)?,
        NodeCommand::Update {
            node,
            availability,
            label_add,
            label_rm,
        } => {
            let mut adds = Vec::new();
            for l in &label_add {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                adds.push((k.to_owned(), v.to_owned()));
            }
            let v = call(
                ctx,
                ControlRequest::NodeUpdate {
                    node,
                    availability,
                    label_add: adds,
                    label_rm,
                },
            )?;
            println!("{}", v["id"].as_str().unwrap_or(""));
        }
        NodeCommand::Start => {
            let v = start_node(ctx)?;
            if v["locked"] == true {
                println!("started, locked: give it its unlock key with `bulkhead cluster unlock`");
            } else {
                println!("started");
            }
        }
        NodeCommand::Promote { nodes: ref n } | NodeCommand::Demote { nodes: ref n } => {
            let role = if matches!(c, NodeCommand::Promote { .. }) {
                Role::Manager
            } else {
                Role::Worker
            };
            for node in n.clone() {
                let v = call(ctx, ControlRequest::NodeRole { node, role })?;
                let what = if v["demoting"] == true {
                    "is leaving Raft, to be a worker".to_owned()
                } else {
                    format!("is a {}", v["role"].as_str().unwrap_or_default())
                };
                println!("{} {what}", v["node"].as_str().unwrap_or_default());
            }
        }
        NodeCommand::Rm { node, force } => {
            let v = call(ctx, ControlRequest::NodeRm { node, force })?;
            println!("{}", v["removed"].as_str().unwrap_or(""));
            if v["role"] == "manager" && !ctx.quiet {
                eprintln!("note: a manager's copy of the store holds the CA's key: run `bulkhead cluster ca --rotate`");
            }
        }
        NodeCommand::Ls => {
            let v = call(ctx, ControlRequest::Nodes)?;
            let nodes = v.as_array().cloned().unwrap_or_default();
            if ctx.quiet {
                nodes.iter().for_each(|n| println!("{}", n["id"].as_str().unwrap_or("")));
                return Ok(ExitCode::SUCCESS);
            }
            match ctx.output()? {
                Output::Json => json(&v)?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = nodes
                        .iter()
                        .map(|n| {
                            let s = |k: &str| n[k].as_str().unwrap_or("").to_owned();
                            vec![s("id"), s("role"), s("availability"), s("manager_status"), s("addr")]
                        })
                        .collect();
                    table(&["ID", "ROLE", "AVAILABILITY", "MANAGER STATUS", "ADDRESS"], &rows)?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// A new secret from FILE (`-`: standard input), at most 500 KiB.
    Create { name: String, file: std::path::PathBuf },
    /// A new version of a secret, under the same name.
    Rotate { name: String, file: std::path::PathBuf },
    /// The secrets (never their data).
    #[command(alias = "list")]
    Ls,
    /// A secret's record (never its data).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// A new config from FILE (`-`: standard input), at most 500 KiB.
    Create { name: String, file: std::path::PathBuf },
    #[command(alias = "list")]
    Ls,
    /// A config's record and data.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// A secret's or config's data from `file` (`-`: standard input): a regular file only (a FIFO or
/// a device is refused, never waited on), at most 500 KiB.
pub(crate) fn read_secret(file: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let max = bulkhead_cluster::secrets::MAX_SIZE;
    let mut data = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin().take(max as u64 + 1).read_to_end(&mut data)?;
    } else {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(file)
            .with_context(|| file.display().to_string())?;
        if !f.metadata()?.is_file() {
            bail!("{}: not a regular file", file.display());
        }
        f.take(max as u64 + 1).read_to_end(&mut data)?;
    }
    if data.len() > max {
        bail!("{}: more than 500 KiB", file.display());
    }
    Ok(data)
}

fn secret_rows(v: &serde_json::Value) -> Vec<Vec<String>> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    vec![
                        r["id"].as_str().unwrap_or_default().to_owned(),
                        r["name"].as_str().unwrap_or_default().to_owned(),
                        r["version"].to_string(),
                        r["size"].to_string(),
                        r["updated"].to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
}

fn secrets_common(ctx: &Ctx, kind: bulkhead_cluster::secrets::Kind, c: SecretCommand) -> anyhow::Result<ExitCode> {
    match c {
        SecretCommand::Create { name, file } => {
            let data = read_secret(&file)?;
            let v = call(ctx, ControlRequest::SecretCreate { kind, name, data })?;
            println!("{}", v["id"].as_str().unwrap_or_default());
        }
        SecretCommand::Rotate { name, file } => {
            let data = read_secret(&file)?;
            let v = call(ctx, ControlRequest::SecretRotate { kind, name, data })?;
            println!("{} version {}", v["name"].as_str().unwrap_or_default(), v["version"]);
        }
        SecretCommand::Ls => {
            let v = call(ctx, ControlRequest::SecretLs { kind })?;
            if ctx.quiet {
                for r in v.as_array().into_iter().flatten() {
                    println!("{}", r["name"].as_str().unwrap_or_default());
                }
                return Ok(ExitCode::SUCCESS);
            }
            match ctx.output()? {
                Output::Json => json(&v)?,
                Output::Table => table(&["ID", "NAME", "VERSION", "SIZE", "UPDATED"], &secret_rows(&v))?,
            }
        }
        SecretCommand::Inspect { names } => {
            let mut all = Vec::new();
            for name in names {
                all.push(call(ctx, ControlRequest::SecretInspect { kind, name })?);
            }
            json(&serde_json::Value::Array(all))?;
        }
        SecretCommand::Rm { names } => {
            for name in names {
                let v = call(ctx, ControlRequest::SecretRm { kind, name })?;
                println!("{}", v["name"].as_str().unwrap_or_default());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn secret(ctx: &Ctx, c: SecretCommand) -> anyhow::Result<ExitCode> {
    secrets_common(ctx, bulkhead_cluster::secrets::Kind::Secret, c)
}

pub fn config(ctx: &Ctx, c: ConfigCommand) -> anyhow::Result<ExitCode> {
    let c = match c {
        ConfigCommand::Create { name, file } => SecretCommand::Create { name, file },
        ConfigCommand::Ls => SecretCommand::Ls,
        ConfigCommand::Inspect { names } => SecretCommand::Inspect { names },
        ConfigCommand::Rm { names } => SecretCommand::Rm { names },
    };
    secrets_common(ctx, bulkhead_cluster::secrets::Kind::Config, c)
}
