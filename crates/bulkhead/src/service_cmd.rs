//! `bulkhead service`: replicated and global services on the cluster (issue 16), as
//! `docker service` has them. The spec goes to a manager; its leader orchestrates, schedules and
//! dispatches the tasks; each node's agent runs them as ordinary containers.

use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_cluster::node::ControlRequest;
use bulkhead_cluster::orchestrator::{Constraint, Mode, ServiceSpec};
use bulkhead_cluster::services::{Condition, FailureAction, FileRef, PortSpec, Restart, TaskTemplate, UpdateConfig};
use clap::{Args, Subcommand};

use crate::cluster_cmd::{call, call_stream};
use crate::output::{json, table, Output};
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// A new service.
    Create(CreateArgs),
    /// The services, with their running and desired task counts.
    #[command(alias = "list")]
    Ls,
    /// A service's tasks: where they run, and how they stand.
    Ps {
        service: String,
        /// Full ids and messages.
        #[arg(long)]
        no_trunc: bool,
    },
    /// A service's spec and where its last update stands.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Changes a service; its tasks roll to what changed.
    Update(UpdateArgs),
    /// `NAME=N`: how many tasks a replicated service runs.
    Scale {
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Back to the spec before the last update.
    Rollback { name: String },
    /// The output of the service's tasks, from the nodes that run them (on the leader).
    Logs {
        service: String,
        /// Keep following what the tasks write.
        #[arg(short, long)]
        follow: bool,
        /// The last N lines of each task.
        #[arg(long, short = 'n')]
        tail: Option<u32>,
        /// Lines without the task's name and node.
        #[arg(long)]
        no_task_ids: bool,
    },
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args, Debug, Default)]
pub struct CommonArgs {
    /// KEY=VALUE for each task.
    #[arg(short, long)]
    env: Vec<String>,
    /// source=NAME[,target=FILE|/PATH][,uid=N][,gid=N][,mode=0400], or NAME.
    #[arg(long)]
    secret: Vec<String>,
    /// A config: source=NAME,target=/PATH[,uid=N][,gid=N][,mode=0444], or NAME (Docker's
    /// `--config`; bulkhead's `--config` names its configuration directory).
    #[arg(long)]
    config_file: Vec<String>,
    /// node.labels.K==V, node.role==worker, node.hostname!=X, node.id==ID.
    #[arg(long)]
    constraint: Vec<String>,
    #[arg(long)]
    reserve_memory: Option<String>,
    /// CPUs (0.5).
    #[arg(long)]
    reserve_cpu: Option<f64>,
    #[arg(long)]
    limit_memory: Option<String>,
    #[arg(long)]
    limit_cpu: Option<f64>,
    #[arg(long)]
    read_only: bool,
    /// Only capabilities the cluster's policy allows (never CAP_SYS_ADMIN and the like).
    #[arg(long)]
    cap_add: Vec<String>,
    /// published=P,target=T[,protocol=tcp|udp][,mode=host], or P:T[/proto]: on each task's node.
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    #[arg(long)]
    network: Vec<String>,
    #[arg(long)]
    label: Vec<String>,
    #[arg(long)]
    update_parallelism: Option<u32>,
    /// 10s, 500ms.
    #[arg(long)]
    update_delay: Option<String>,
    /// pause or rollback.
    #[arg(long)]
    update_failure_action: Option<String>,
    /// How long a new task must run before its batch counts as done (default 5s).
    #[arg(long)]
    update_monitor: Option<String>,
    /// any, on-failure or none.
    #[arg(long)]
    restart_condition: Option<String>,
    #[arg(long)]
    restart_delay: Option<String>,
    /// A command run with /bin/sh -c in the task: it is `starting` until the command passes,
    /// and an unhealthy task is stopped and replaced.
    #[arg(long)]
    health_cmd: Option<String>,
    /// 30s, 500ms.
    #[arg(long)]
    health_interval: Option<String>,
    #[arg(long)]
    health_timeout: Option<String>,
    #[arg(long)]
    health_start_period: Option<String>,
    /// Failures in a row that make a task unhealthy (3 unless given).
    #[arg(long)]
    health_retries: Option<u32>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[arg(long)]
    name: String,
    #[arg(long, conflicts_with = "mode")]
    replicas: Option<u32>,
    /// replicated or global.
    #[arg(long)]
    mode: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    name: String,
    #[arg(long)]
    image: Option<String>,
    #[arg(long)]
    replicas: Option<u32>,
    #[arg(long)]
    env_add: Vec<String>,
    #[arg(long)]
    env_rm: Vec<String>,
    #[arg(long)]
    secret_add: Vec<String>,
    #[arg(long)]
    secret_rm: Vec<String>,
    #[arg(long)]
    config_add: Vec<String>,
    #[arg(long)]
    config_rm: Vec<String>,
    #[arg(long)]
    constraint_add: Vec<String>,
    #[arg(long)]
    constraint_rm: Vec<String>,
    #[arg(long)]
    limit_memory: Option<String>,
    #[arg(long)]
    limit_cpu: Option<f64>,
    /// The command and its arguments, as one shell-free list separated by spaces.
    #[arg(long)]
    args: Option<String>,
    #[arg(long)]
    update_parallelism: Option<u32>,
    #[arg(long)]
    update_delay: Option<String>,
    #[arg(long)]
    update_failure_action: Option<String>,
    #[arg(long)]
    update_monitor: Option<String>,
    #[arg(long)]
    restart_condition: Option<String>,
    #[arg(long)]
    health_cmd: Option<String>,
    /// Replace every task even if nothing changed.
    #[arg(long)]
    force: bool,
}

pub(crate) fn ms(s: &str) -> anyhow::Result<u64> {
    crate::container_cmd::parse_duration_ms(s)
}

fn file_ref(s: &str, secret: bool) -> anyhow::Result<FileRef> {
    let flag = if secret { "--secret" } else { "--config" };
    if !s.contains('=') {
        return Ok(FileRef {
            source: s.to_owned(),
            target: if secret { s.to_owned() } else { format!("/{s}") },
            ..Default::default()
        });
    }
    let mut f = FileRef::default();
    for kv in s.split(',') {
        let (k, v) = kv.split_once('=').with_context(|| format!("{flag} {s:?}: KEY=VALUE pairs"))?;
        let id = |v: &str| v.parse::<u32>().with_context(|| format!("{flag} {s:?}: {k} is a number"));
        match k {
            "source" | "src" => f.source = v.to_owned(),
            "target" | "dst" => f.target = v.to_owned(),
            "uid" => f.uid = Some(id(v)?),
            "gid" => f.gid = Some(id(v)?),
            "mode" => {
                f.mode = Some(u32::from_str_radix(v.trim_start_matches("0o"), 8).with_context(|| format!("{flag} {s:?}: mode in octal"))?)
            }
            _ => bail!("{flag} {s:?}: unknown key {k:?} (source, target, uid, gid, mode)"),
        }
    }
    if f.source.is_empty() {
        bail!("{flag} {s:?}: source= is required");
    }
    if f.target.is_empty() {
        f.target = if secret { f.source.clone() } else { format!("/{}", f.source) };
    }
    if !secret && !f.target.starts_with('/') {
        f.target = format!("/{}", f.target);
    }
    Ok(f)
}

pub(crate) fn port(s: &str) -> anyhow::Result<PortSpec> {
    let bad = || format!("-p {s:?}: published=P,target=T[,protocol=tcp|udp][,mode=host], or P:T[/tcp|udp]");
    if s.contains('=') {
        let (mut published, mut target, mut protocol) = (None, None, "tcp".to_owned());
        for kv in s.split(',') {
            let (k, v) = kv.split_once('=').with_context(bad)?;
            match k {
                "published" => published = Some(v.parse().with_context(bad)?),
                "target" => target = Some(v.parse().with_context(bad)?),
                "protocol" => protocol = v.to_owned(),
                "mode" if v == "host" => {}
                "mode" => bail!("-p {s:?}: only mode=host (published on each task's node; there is no routing mesh)"),
                _ => bail!(bad()),
            }
        }
        return Ok(PortSpec {
            published: published.with_context(bad)?,
            target: target.with_context(bad)?,
            protocol,
        });
    }
    let (ports, protocol) = s.split_once('/').unwrap_or((s, "tcp"));
    let (p, t) = ports.split_once(':').with_context(bad)?;
    Ok(PortSpec {
        published: p.parse().with_context(bad)?,
        target: t.parse().with_context(bad)?,
        protocol: protocol.to_owned(),
    })
}

pub(crate) fn bytes(s: &str) -> anyhow::Result<u64> {
    Ok(crate::container_cmd::parse_bytes(s)? as u64)
}

pub(crate) fn millicpu(c: f64) -> anyhow::Result<u64> {
    if !(c > 0.0 && c <= 1024.0) {
        bail!("{c}: CPUs between 0.001 and 1024");
    }
    Ok((c * 1000.0).round() as u64)
}

pub(crate) fn condition(s: &str) -> anyhow::Result<Condition> {
    Ok(match s {
        "any" => Condition::Any,
        "on-failure" => Condition::OnFailure,
        "none" => Condition::None,
        _ => bail!("--restart-condition {s:?}: any, on-failure or none"),
    })
}

pub(crate) fn failure_action(s: &str) -> anyhow::Result<FailureAction> {
    Ok(match s {
        "pause" => FailureAction::Pause,
        "rollback" => FailureAction::Rollback,
        _ => bail!("--update-failure-action {s:?}: pause or rollback"),
    })
}

fn spec_from(a: CreateArgs) -> anyhow::Result<ServiceSpec> {
    let c = a.common;
    let mode = match a.mode.as_deref() {
        None | Some("replicated") => Mode::Replicated {
            replicas: a.replicas.unwrap_or(1),
        },
        Some("global") => Mode::Global,
        Some(m) => bail!("--mode {m:?}: replicated or global"),
    };
    let labels = c
        .label
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    Ok(ServiceSpec {
        name: a.name,
        mode,
        constraints: c
            .constraint
            .iter()
            .map(|s| Constraint::parse(s))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?,
        reserve_memory: c.reserve_memory.as_deref().map(bytes).transpose()?.unwrap_or(0),
        reserve_cpu: c.reserve_cpu.map(millicpu).transpose()?.unwrap_or(0),
        task: TaskTemplate {
            image: a.image,
            digest: None,
            command: a.command,
            env: c.env,
            secrets: c.secret.iter().map(|s| file_ref(s, true)).collect::<anyhow::Result<_>>()?,
            configs: c.config_file.iter().map(|s| file_ref(s, false)).collect::<anyhow::Result<_>>()?,
            limit_memory: c.limit_memory.as_deref().map(bytes).transpose()?,
            limit_cpu: c.limit_cpu.map(millicpu).transpose()?,
            read_only: c.read_only,
            cap_add: c.cap_add,
            ports: c.publish.iter().map(|p| port(p)).collect::<anyhow::Result<_>>()?,
            networks: c.network,
            health_cmd: c.health_cmd,
            health_interval_ms: c.health_interval.as_deref().map(ms).transpose()?,
            health_timeout_ms: c.health_timeout.as_deref().map(ms).transpose()?,
            health_start_period_ms: c.health_start_period.as_deref().map(ms).transpose()?,
            health_retries: c.health_retries,
            labels,
            stack: None,
        },
        restart: Restart {
            condition: c.restart_condition.as_deref().map(condition).transpose()?.unwrap_or_default(),
            delay_ms: c
                .restart_delay
                .as_deref()
                .map(ms)
                .transpose()?
                .unwrap_or(Restart::default().delay_ms),
        },
        update: UpdateConfig {
            parallelism: c.update_parallelism.unwrap_or(1),
            delay_ms: c.update_delay.as_deref().map(ms).transpose()?.unwrap_or(0),
            failure_action: c
                .update_failure_action
                .as_deref()
                .map(failure_action)
                .transpose()?
                .unwrap_or_default(),
            monitor_ms: c
                .update_monitor
                .as_deref()
                .map(ms)
                .transpose()?
                .unwrap_or(UpdateConfig::default().monitor_ms),
        },
    })
}

fn current(ctx: &Ctx, name: &str) -> anyhow::Result<bulkhead_cluster::services::ServiceRecord> {
    let v = call(
        ctx,
        ControlRequest::ServiceInspect {
            name: name.to_owned(),
            tasks: false,
        },
    )?;
    Ok(serde_json::from_value(v["service"].clone())?)
}

fn updated(ctx: &Ctx, a: UpdateArgs) -> anyhow::Result<ServiceSpec> {
    let mut s = current(ctx, &a.name)?.spec;
    let t = &mut s.task;
    if let Some(i) = a.image {
        t.image = i;
        t.digest = None;
    }
    if let Some(r) = a.replicas {
        match s.mode {
            Mode::Replicated { .. } => s.mode = Mode::Replicated { replicas: r },
            Mode::Global => bail!("--replicas: service {} is global", a.name),
        }
    }
    for k in &a.env_rm {
        t.env.retain(|e| e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) != k);
    }
    for e in a.env_add {
        let k = e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_owned();
        t.env.retain(|x| x.split_once('=').map_or(x.as_str(), |(xk, _)| xk) != k);
        t.env.push(e);
    }
    t.secrets.retain(|f| !a.secret_rm.contains(&f.source));
    for s in &a.secret_add {
        let f = file_ref(s, true)?;
        t.secrets.retain(|x| x.target != f.target);
        t.secrets.push(f);
    }
    t.configs.retain(|f| !a.config_rm.contains(&f.source));
    for s in &a.config_add {
        let f = file_ref(s, false)?;
        t.configs.retain(|x| x.target != f.target);
        t.configs.push(f);
    }
    if let Some(m) = a.limit_memory.as_deref() {
        t.limit_memory = Some(bytes(m)?);
    }
    if let Some(c) = a.limit_cpu {
        t.limit_cpu = Some(millicpu(c)?);
    }
    if let Some(args) = a.args {
        t.command = args.split_whitespace().map(str::to_owned).collect();
    }
    if let Some(h) = a.health_cmd {
        t.health_cmd = Some(h).filter(|h| !h.is_empty());
    }
    if a.force {
        // A label that changes: the tasks roll even though nothing else did (`--force`).
        t.labels.insert(
            "com.bulkhead.force".into(),
            format!("{}", chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)),
        );
    }
    for c in &a.constraint_rm {
        let c = Constraint::parse(c).map_err(anyhow::Error::msg)?;
        s.constraints.retain(|x| *x != c);
    }
    for c in &a.constraint_add {
        s.constraints.push(Constraint::parse(c).map_err(anyhow::Error::msg)?);
    }
    if let Some(p) = a.update_parallelism {
        s.update.parallelism = p;
    }
    if let Some(d) = a.update_delay.as_deref() {
        s.update.delay_ms = ms(d)?;
    }
    if let Some(f) = a.update_failure_action.as_deref() {
        s.update.failure_action = failure_action(f)?;
    }
    if let Some(m) = a.update_monitor.as_deref() {
        s.update.monitor_ms = ms(m)?;
    }
    if let Some(c) = a.restart_condition.as_deref() {
        s.restart.condition = condition(c)?;
    }
    Ok(s)
}

pub(crate) fn trunc(s: &str, n: usize, no_trunc: bool) -> String {
    if no_trunc {
        s.to_owned()
    } else {
        s.chars().take(n).collect()
    }
}

pub(crate) fn ago(ms: i64) -> String {
    let secs = (chrono::Utc::now().timestamp_millis() - ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} seconds ago"),
        60..=3599 => format!("{} minutes ago", secs / 60),
        _ => format!("{} hours ago", secs / 3600),
    }
}

/// The digest every node runs for `image`, resolved once here on the manager: a tag the trust
/// policy covers through its signed metadata (and refused as `pull` refuses it), any other name
/// through its registry. Where no registry has it (an air-gapped cluster, images loaded with
/// `image import` on each node) each node runs its own image of that name, as Swarm does, and
/// the task records the digest each one ran.
pub(crate) fn pin(ctx: &Ctx, image: &str) -> anyhow::Result<Option<String>> {
    let Ok(r) = bulkhead_image::Reference::parse(image) else {
        eprintln!("bulkhead: warning: {image} is not a registry name: each node runs its own image of it");
        return Ok(None);
    };
    if let Some(d) = r.digest() {
        return Ok(Some(d.to_string()));
    }
    let regs = crate::registry_cmd::registries(ctx)?;
    if let Some(d) = crate::trust_cmd::enforce(ctx, &regs, &r, false)? {
        return Ok(Some(d.to_string()));
    }
    match bulkhead_registry::fetch_manifest(&regs, &r, &crate::registry_cmd::warn) {
        Ok((_, d)) => Ok(Some(d.to_string())),
        Err(e) => {
            eprintln!(
                "bulkhead: warning: {r} could not be resolved to a digest ({}): each node runs its own image of that name",
                e.to_string().lines().next().unwrap_or_default()
            );
            Ok(None)
        }
    }
}

pub fn service(ctx: &Ctx, c: ServiceCommand) -> anyhow::Result<ExitCode> {
    match c {
        ServiceCommand::Create(a) => {
            let mut spec = spec_from(a)?;
            spec.task.digest = pin(ctx, &spec.task.image)?;
            let v = call(ctx, ControlRequest::ServiceCreate { spec })?;
            println!("{}", v["id"].as_str().unwrap_or_default());
        }
        ServiceCommand::Ls => {
            let v = call(ctx, ControlRequest::ServiceLs)?;
            if ctx.quiet {
                for s in v.as_array().into_iter().flatten() {
                    println!("{}", s["service"]["spec"]["name"].as_str().unwrap_or_default());
                }
                return Ok(ExitCode::SUCCESS);
            }
            match ctx.output()? {
                Output::Json => json(&v)?,
                Output::Table => print_services(v.as_array().map(Vec::as_slice).unwrap_or_default())?,
            }
        }
        ServiceCommand::Ps { service, no_trunc } => {
            let v = call(
                ctx,
                ControlRequest::ServiceInspect {
                    name: service,
                    tasks: true,
                },
            )?;
            if matches!(ctx.output()?, Output::Json) {
                return json(&v["tasks"]).map(|()| ExitCode::SUCCESS);
            }
            print_tasks(&[v], no_trunc)?;
        }
        ServiceCommand::Inspect { names } => {
            let mut all = Vec::new();
            for name in names {
                all.push(call(ctx, ControlRequest::ServiceInspect { name, tasks: false })?["service"].clone());
            }
            json(&serde_json::Value::Array(all))?;
        }
        ServiceCommand::Update(a) => {
            let name = a.name.clone();
            let new_image = a.image.is_some();
            let mut spec = updated(ctx, a)?;
            if new_image {
                spec.task.digest = pin(ctx, &spec.task.image)?;
            }
            call(ctx, ControlRequest::ServiceUpdate { spec })?;
            println!("{name}");
        }
        ServiceCommand::Scale { pairs } => {
            for p in pairs {
                let (name, n) = p.split_once('=').with_context(|| format!("{p:?}: NAME=REPLICAS"))?;
                let replicas: u32 = n.parse().with_context(|| format!("{p:?}: NAME=REPLICAS"))?;
                call(
                    ctx,
                    ControlRequest::ServiceScale {
                        name: name.to_owned(),
                        replicas,
                    },
                )?;
                println!("{name} scaled to {replicas}");
            }
        }
        ServiceCommand::Logs {
            service,
            follow,
            tail,
            no_task_ids,
        } => {
            use std::io::Write;
            // Each task by `service.slot.id@host`, as `docker service logs` names it.
            let v = call(
                ctx,
                ControlRequest::ServiceInspect {
                    name: service.clone(),
                    tasks: true,
                },
            )?;
            let tasks: Vec<bulkhead_cluster::services::TaskView> = serde_json::from_value(v["tasks"].clone())?;
            let names: std::collections::HashMap<String, String> = tasks
                .iter()
                .map(|t| {
                    let slot = if t.task.slot > 0 {
                        format!(".{}", t.task.slot)
                    } else {
                        String::new()
                    };
                    (t.task.id.clone(), format!("{service}{slot}.{}", trunc(&t.task.id, 12, false)))
                })
                .collect();
            let hosts = v["hostnames"].clone();
            call_stream(
                ctx,
                ControlRequest::ServiceLogs {
                    name: service,
                    follow,
                    tail,
                },
                |l| {
                    let Ok(mut l) = serde_json::from_value::<bulkhead_cluster::logs::LogLine>(l) else {
                        return;
                    };
                    // (The leader has written out control characters; a line always ends here.)
                    if !l.line.ends_with('\n') {
                        l.line.push('\n');
                    }
                    let text = if no_task_ids {
                        l.line.clone()
                    } else {
                        let host = hosts[&l.node].as_str().filter(|h| !h.is_empty()).unwrap_or(&l.node).to_owned();
                        let task = names.get(&l.task).cloned().unwrap_or_else(|| l.task.clone());
                        format!("{task}@{host}    | {}", l.line)
                    };
                    let _ = if l.stream == "stderr" {
                        std::io::stderr().lock().write_all(text.as_bytes())
                    } else {
                        let mut out = std::io::stdout().lock();
                        out.write_all(text.as_bytes()).and_then(|()| out.flush())
                    };
                },
            )?;
        }
        ServiceCommand::Rollback { name } => {
            call(ctx, ControlRequest::ServiceRollback { name: name.clone() })?;
            println!("{name}");
        }
        ServiceCommand::Rm { names } => {
            for name in names {
                call(ctx, ControlRequest::ServiceRm { name: name.clone() })?;
                println!("{name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `service ls`'s table of the entries of a `ServiceLs` answer.
pub(crate) fn print_services(list: &[serde_json::Value]) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = list
        .iter()
        .filter_map(|s| {
            let rec: bulkhead_cluster::services::ServiceRecord = serde_json::from_value(s["service"].clone()).ok()?;
            let (mode, want) = match rec.spec.mode {
                Mode::Replicated { replicas } => ("replicated", replicas.to_string()),
                Mode::Global => ("global", "global".into()),
            };
            Some(vec![
                rec.id.chars().take(12).collect(),
                rec.spec.name.clone(),
                mode.into(),
                format!("{}/{}", s["running"], want),
                rec.spec.task.image.clone(),
            ])
        })
        .collect();
    table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE"], &rows)?;
    Ok(())
}

/// `service ps`'s table of `ServiceInspect` answers with their tasks.
pub(crate) fn print_tasks(answers: &[serde_json::Value], no_trunc: bool) -> anyhow::Result<()> {
    let mut all_rows = Vec::new();
    for v in answers {
        let tasks: Vec<bulkhead_cluster::services::TaskView> = serde_json::from_value(v["tasks"].clone())?;
        let name = v["service"]["spec"]["name"].as_str().unwrap_or_default().to_owned();
        let hosts = &v["hostnames"];
        let rows: Vec<Vec<String>> = tasks
            .iter()
            .map(|t| {
                let node = t.task.node.clone().unwrap_or_default();
                let host = hosts[&node].as_str().filter(|h| !h.is_empty()).map(str::to_owned).unwrap_or(node);
                let since = t.status.as_ref().map(|s| ago(s.updated)).unwrap_or_default();
                let msg = t.status.as_ref().map(|s| s.message.clone()).unwrap_or_default();
                vec![
                    trunc(&t.task.id, 12, no_trunc),
                    if t.task.slot > 0 {
                        format!("{name}.{}", t.task.slot)
                    } else {
                        name.clone()
                    },
                    t.task.template.image.clone(),
                    host,
                    format!("{:?}", t.task.desired).to_lowercase(),
                    format!("{} {since}", format!("{:?}", t.state).to_lowercase()),
                    trunc(&msg, 40, no_trunc),
                ]
            })
            .collect();
        all_rows.extend(rows);
    }
    table(
        &["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"],
        &all_rows,
    )?;
    Ok(())
}
