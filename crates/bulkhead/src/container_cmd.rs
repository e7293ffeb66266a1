//! Container commands: run, ps, rm, inspect, diff.

use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_runtime::container::{Containers, State};
use bulkhead_runtime::executor::Executor;
use bulkhead_runtime::profile::{Network, Seccomp, SecurityProfile, UserNs};
use bulkhead_runtime::run::{create, remove, run_foreground, CreateRequest};
use bulkhead_runtime::spec::{ProcessOverrides, Resources};
use clap::Args;

use crate::output::{ago, json, table, Output};
use crate::Ctx;

/// Exit status for errors of bulkhead itself, as Docker's 125.
pub const ENGINE_ERROR: u8 = 125;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// A name for the container.
    #[arg(long)]
    name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to take it from here).
    #[arg(short, long)]
    env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines).
    #[arg(long)]
    env_file: Vec<std::path::PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// USER[:GROUP], names or numbers, resolved in the image's /etc/passwd and /etc/group.
    #[arg(short, long)]
    user: Option<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Mount the root filesystem read-only (tmpfs on /tmp, /run, /var/tmp).
    #[arg(long)]
    read_only: bool,
    #[arg(long)]
    hostname: Option<String>,
    /// Memory limit (bytes, or with k, m, g).
    #[arg(short, long)]
    memory: Option<String>,
    /// CPUs (e.g. 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Process limit (default 1024; -1 for none, which warns).
    #[arg(long, allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    #[arg(long)]
    cap_add: Vec<String>,
    #[arg(long)]
    cap_drop: Vec<String>,
    /// seccomp=FILE|unconfined, no-new-privileges=BOOL, unmask=PATH (each weakening warns).
    #[arg(long)]
    security_opt: Vec<String>,
    /// host (no user namespace, warns) or auto (the default: a private id range).
    #[arg(long, default_value = "auto")]
    userns: String,
    /// Every capability, no seccomp, no masked paths (warns).
    #[arg(long)]
    privileged: bool,
    /// none (default) or host (warns).
    #[arg(long, default_value = "none")]
    network: String,
    /// host to share the host's pid namespace (warns).
    #[arg(long)]
    pid: Option<String>,
    /// libcontainer (default, embedded), runc, or a path to an OCI runtime.
    #[arg(long)]
    runtime: Option<String>,
    /// The image.
    image: String,
    /// The command and its arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_bytes(s: &str) -> anyhow::Result<i64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m: i64 = match s[i..].trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                u => bail!("unknown unit {u:?} in {s:?} (b, k, m, g)"),
            };
            (&s[..i], m)
        }
        None => (s.as_str(), 1),
    };
    let n: i64 = num.parse().with_context(|| format!("{s:?} is not a size"))?;
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .with_context(|| format!("{s:?} is not a valid size"))
}

fn profile_from(a: &RunArgs) -> anyhow::Result<SecurityProfile> {
    let mut p = SecurityProfile {
        privileged: a.privileged,
        read_only_rootfs: a.read_only,
        ..Default::default()
    };
    p.cap_add = a.cap_add.clone();
    p.cap_drop = a.cap_drop.clone();
    match a.userns.as_str() {
        "auto" | "" => {}
        "host" => p.userns = UserNs::Host,
        u => bail!("--userns {u:?}: use auto or host"),
    }
    match a.network.as_str() {
        "none" => p.network = Network::None,
        "host" => p.network = Network::Host,
        n => bail!("--network {n:?}: only none and host exist until bridge networking lands"),
    }
    match a.pid.as_deref() {
        None => {}
        Some("host") => p.pid_host = true,
        Some(x) => bail!("--pid {x:?}: only host is supported"),
    }
    match a.pids_limit {
        None => {}
        Some(n) if n <= 0 => p.pids_limit = None,
        Some(n) => p.pids_limit = Some(n),
    }
    for opt in &a.security_opt {
        let (k, v) = opt
            .split_once(['=', ':'])
            .with_context(|| format!("--security-opt {opt:?}: expected KEY=VALUE"))?;
        match k {
            "seccomp" if v == "unconfined" => p.seccomp = Seccomp::Unconfined,
            "seccomp" => {
                let text = std::fs::read_to_string(v).with_context(|| format!("reading seccomp profile {v}"))?;
                let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("seccomp profile {v} is not JSON"))?;
                p.seccomp = Seccomp::Custom(value);
            }
            "no-new-privileges" => {
                p.no_new_privileges = v.parse::<bool>().with_context(|| format!("no-new-privileges={v}: true or false"))?
            }
            "unmask" => p.unmask.extend(v.split(':').map(str::to_owned)),
            _ => bail!("--security-opt {k:?} is not supported (seccomp, no-new-privileges, unmask)"),
        }
    }
    Ok(p)
}

/// `bulkhead run`: create the container and run it in the foreground; exits with its status.
pub fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    let profile = profile_from(&a)?;
    let executor = Executor::from_flag(a.runtime.as_deref())?;
    let mut env = Vec::new();
    for f in &a.env_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        env.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    env.extend(a.env.iter().cloned());
    let overrides = ProcessOverrides {
        entrypoint: a
            .entrypoint
            .as_deref()
            .map(|e| if e.is_empty() { vec![String::new()] } else { vec![e.to_owned()] }),
        cmd: a.command.clone(),
        env,
        workdir: a.workdir.clone(),
        terminal: false,
        hostname: a.hostname.clone(),
    };
    let resources = Resources {
        memory: a.memory.as_deref().map(parse_bytes).transpose()?,
        cpus: a.cpus,
    };
    let req = CreateRequest {
        image: a.image.clone(),
        name: a.name.clone(),
        overrides,
        user: a.user.clone(),
        profile,
        resources,
        executor: executor.clone(),
    };
    let mut rec = {
        let _lock = store.lock_shared()?;
        create(&store, &cs, req)?
    };
    for w in &rec.warnings {
        eprintln!("bulkhead: warning: {w}");
    }
    let result = run_foreground(&cs, &mut rec, &executor);
    if a.rm {
        if let Err(e) = remove(&store, &cs, &rec.id, true) {
            eprintln!("bulkhead: warning: removing {}: {e}", rec.name);
        }
    }
    let exit = result?;
    Ok(ExitCode::from(exit.code.clamp(0, 255) as u8))
}

pub fn ps(ctx: &Ctx, all: bool) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    let list: Vec<_> = cs
        .list()?
        .into_iter()
        .filter(|r| all || matches!(r.state, State::Running { .. }))
        .collect();
    if ctx.quiet {
        list.iter().for_each(|r| println!("{}", &r.id[..12]));
        return Ok(ExitCode::SUCCESS);
    }
    match ctx.output()? {
        Output::Json => json(&serde_json::to_value(&list)?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    let status = match &r.state {
                        State::Created => "Created".to_owned(),
                        State::Running { started, .. } => format!("Up {}", ago(Some(*started)).trim_end_matches(" ago")),
                        State::Exited { code, finished, .. } => format!("Exited ({code}) {}", ago(Some(*finished))),
                    };
                    let mut cmd = r.command.join(" ");
                    if cmd.len() > 30 {
                        cmd.truncate(27);
                        cmd.push_str("...");
                    }
                    vec![
                        r.id[..12].to_owned(),
                        r.image.clone(),
                        format!("\"{cmd}\""),
                        ago(Some(r.created)),
                        status,
                        r.name.clone(),
                    ]
                })
                .collect();
            table(&["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"], &rows)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rm(ctx: &Ctx, names: &[String], force: bool) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    let mut failed = false;
    for n in names {
        match remove(&store, &cs, n, force) {
            Ok(_) => println!("{n}"),
            Err(e) => {
                eprintln!("bulkhead: error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn inspect(ctx: &Ctx, names: &[String]) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    let mut out = Vec::new();
    for n in names {
        let r = cs.find(n)?;
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(cs.bundle(&r.id).join("config.json"))?)?;
        let (status, running, pid, code, oom, started, finished) = match &r.state {
            State::Created => ("created", false, 0, 0, false, None, None),
            State::Running { pid, started } => ("running", true, *pid, 0, false, Some(started.to_rfc3339()), None),
            State::Exited {
                code,
                finished,
                oom_killed,
            } => ("exited", false, 0, *code, *oom_killed, None, Some(finished.to_rfc3339())),
        };
        let linux = &spec["linux"];
        out.push(serde_json::json!({
            "Id": r.id,
            "Name": format!("/{}", r.name),
            "Created": r.created.to_rfc3339(),
            "Path": r.command.first(),
            "Args": r.command.get(1..).unwrap_or_default(),
            "State": {"Status": status, "Running": running, "Pid": pid, "ExitCode": code, "OOMKilled": oom, "StartedAt": started, "FinishedAt": finished},
            "Image": r.image_id.to_string(),
            "Config": {"Image": r.image, "Env": spec["process"]["env"], "WorkingDir": spec["process"]["cwd"], "User": format!("{}:{}", spec["process"]["user"]["uid"], spec["process"]["user"]["gid"]), "Hostname": spec["hostname"]},
            "Bulkhead": {
                "Runtime": r.runtime,
                "Warnings": r.warnings,
                "SecurityProfile": {
                    "UserNamespace": linux.get("uidMappings").cloned().unwrap_or(serde_json::json!("host")),
                    "Capabilities": spec["process"]["capabilities"]["effective"],
                    "NoNewPrivileges": spec["process"]["noNewPrivileges"],
                    "Seccomp": if linux.get("seccomp").is_some() { serde_json::json!({"DefaultAction": linux["seccomp"]["defaultAction"], "Rules": linux["seccomp"]["syscalls"].as_array().map_or(0, |a| a.len())}) } else { serde_json::json!("unconfined") },
                    "MaskedPaths": linux["maskedPaths"],
                    "ReadonlyPaths": linux["readonlyPaths"],
                    "PidsLimit": linux["resources"]["pids"]["limit"],
                    "Namespaces": linux["namespaces"],
                    "ReadonlyRootfs": spec["root"]["readonly"],
                },
            },
        }));
    }
    json(&serde_json::Value::Array(out))?;
    Ok(ExitCode::SUCCESS)
}

pub fn diff(ctx: &Ctx, name: &str) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    let r = cs.find(name)?;
    let lowers = cs.lowers(&store, &r);
    let changes = bulkhead_runtime::diff::changes(&cs.dir(&r.id).join("upper"), &lowers)?;
    match ctx.output()? {
        Output::Json => json(&serde_json::to_value(&changes)?)?,
        Output::Table => changes.iter().for_each(|c| println!("{} {}", c.letter(), c.path)),
    }
    Ok(ExitCode::SUCCESS)
}
