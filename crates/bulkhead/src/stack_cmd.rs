//! `bulkhead stack`: a compose file's services on the cluster (issue 16), as `docker stack`
//! has them. The file is read by the same parser as `bulkhead compose`; each service becomes a
//! cluster service `<stack>_<service>` with the hardened defaults, and the conversations the
//! file allows become the stack's rules, programmed by every node that runs one of its tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_cluster::node::ControlRequest;
use bulkhead_cluster::orchestrator::{Constraint, Mode, ServiceSpec};
use bulkhead_cluster::secrets::Kind;
use bulkhead_cluster::services::{FileRef, PortSpec, Restart, TaskTemplate, UpdateConfig};
use bulkhead_cluster::stacks::{service_name, StackNetwork, StackRecord, StackRule};
use clap::Subcommand;

use crate::cluster_cmd::call;
use crate::output::{json, table, Output};
use crate::service_cmd as svc;
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum StackCommand {
    /// Makes or updates the stack's services from a compose file.
    #[command(alias = "up")]
    Deploy {
        /// The compose file.
        #[arg(short = 'c', long = "compose-file")]
        file: std::path::PathBuf,
        /// Remove the stack's services that the file no longer has.
        #[arg(long)]
        prune: bool,
        /// Let the file's `external: true` secrets and configs name the cluster's (a file from
        /// anywhere could otherwise hand any secret of the cluster to a task of its choosing).
        #[arg(long)]
        allow_external: bool,
        name: String,
    },
    /// The stacks, with their services' count.
    #[command(alias = "list")]
    Ls,
    /// The stack's tasks.
    Ps {
        name: String,
        #[arg(long)]
        no_trunc: bool,
    },
    /// The stack's services.
    Services { name: String },
    /// Removes the stacks' services, networks and rules.
    #[command(alias = "remove", alias = "down")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// The service keys `stack deploy` honours; any other key of a service is refused (a file never
/// runs with less than it asks for).
const HONOURED: &[&str] = &[
    "image",
    "command",
    "environment",
    "env_file",
    "ports",
    "expose",
    "networks",
    "depends_on",
    "links",
    "healthcheck",
    "restart",
    "read_only",
    "cap_add",
    "mem_limit",
    "cpus",
    "labels",
    "secrets",
    "configs",
    "deploy",
    "security_opt",
];

/// A secret or config the file brings: made in the cluster from the file if it has none of that
/// name.
struct FileSource {
    kind: Kind,
    name: String,
    path: std::path::PathBuf,
}

struct Plan {
    record: StackRecord,
    specs: Vec<ServiceSpec>,
    files: Vec<FileSource>,
}

fn load(file: &std::path::Path, name: &str) -> anyhow::Result<bulkhead_compose::Project> {
    let opts = bulkhead_compose::Options {
        file: Some(file.to_owned()),
        project: Some(name.to_owned()),
        env_file: None,
        dir: std::env::current_dir().context("the current directory")?,
    };
    bulkhead_compose::load(&opts).map_err(|e| match e.line() {
        Some(_) => anyhow::anyhow!("{}: {e}", file.display()),
        None => anyhow::anyhow!("{e}"),
    })
}

/// The stack's record and its services' specs, from the file; nothing is sent yet.
fn plan(p: &bulkhead_compose::Project, stack: &str, allow_external: bool) -> anyhow::Result<Plan> {
    use bulkhead_compose::types::{Labels, MapOrEmpty, Ports, PublishedPort};
    let policy = bulkhead_compose::policy::derive(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.file.display()))?;
    if policy.learn {
        bail!(
            "{}: x-bulkhead policy: learn is for `compose up` on one host, not for a stack",
            p.file.display()
        );
    }
    let mut networks: BTreeMap<String, StackNetwork> = BTreeMap::new();
    let mut files: BTreeMap<(bool, String), FileSource> = BTreeMap::new();
    let mut specs = Vec::new();
    for name in &p.order {
        let Some(Some(s)) = p.model.services.0.get(name) else { continue };
        let line = |key: &str| bulkhead_compose::line_of(&p.tree, &format!("services.{name}.{key}"));
        let refuse = |key: &str, why: &str| anyhow::anyhow!("{}: line {}: services.{name}.{key}: {why}", p.file.display(), line(key));
        if let Some(node) = p.tree.get("services").and_then(|x| x.get(name)) {
            for (k, _) in node.entries() {
                if !HONOURED.contains(&k.as_str()) && !k.starts_with("x-") {
                    return Err(refuse(k, "not honoured by `stack deploy` (yet): remove it or use `compose up`"));
                }
            }
        }
        let image = s.image.clone().ok_or_else(|| refuse("image", "no image"))?;
        let command: Vec<String> = match &s.command {
            None => Vec::new(),
            Some(bulkhead_compose::types::Command::Args(v)) => v.clone(),
            Some(bulkhead_compose::types::Command::Simple(c)) => shlex::split(c).ok_or_else(|| refuse("command", "unbalanced quotes"))?,
        };
        // The environment: env_files first, then `environment` (it wins), read here.
        let mut env: Vec<String> = Vec::new();
        for f in crate::compose_cmd::env_files(s) {
            let path = crate::compose_cmd::inside(p, &f, "env_file")?;
            let text = crate::container_cmd::read_env_file(&path).map_err(|e| refuse("env_file", &format!("{}: {e}", path.display())))?;
            let pairs = bulkhead_compose::parse_env_file(&text).map_err(|(l, m)| anyhow::anyhow!("{}:{l}: {m}", path.display()))?;
            env.extend(pairs.into_iter().map(|(k, v)| format!("{k}={v}")));
        }
        env.extend(crate::compose_cmd::service_environment(s));
        // Later wins: one entry per key.
        let mut seen = BTreeSet::new();
        let mut env: Vec<String> = env
            .into_iter()
            .rev()
            .filter(|e| seen.insert(e.split_once('=').map_or(e.clone(), |(k, _)| k.to_owned())))
            .collect();
        env.reverse();
        let mut ports = Vec::new();
        match &s.ports {
            Ports::Short(v) => {
                for x in v {
                    if x.matches(':').count() != 1 {
                        return Err(refuse(
                            "ports",
                            &format!("{x:?}: PUBLISHED:TARGET[/PROTO] (a task publishes on its node's addresses)"),
                        ));
                    }
                    ports.push(svc::port(x).map_err(|e| refuse("ports", &e.to_string()))?);
                }
            }
            Ports::Long(v) => {
                for x in v {
                    let published = match &x.published {
                        Some(PublishedPort::Single(h)) => *h,
                        Some(PublishedPort::Range(r)) => r.parse().map_err(|_| refuse("ports", &format!("published {r:?}: one port")))?,
                        None => return Err(refuse("ports", "published: a port on each task's node (there is no ingress mesh)")),
                    };
                    if x.host_ip.is_some() || x.mode.as_deref().is_some_and(|m| m != "host") {
                        return Err(refuse("ports", "only mode: host, without host_ip"));
                    }
                    ports.push(PortSpec {
                        published,
                        target: x.target,
                        protocol: x.protocol.clone().unwrap_or_else(|| "tcp".into()),
                    });
                }
            }
        }
        // One network per service (a node's bridge, made by the node for the stack).
        let nets = crate::compose_cmd::service_networks(s);
        if nets.len() > 1 {
            return Err(refuse("networks", "one network per service in a stack"));
        }
        let (key, aliases, ip) = &nets[0];
        if !aliases.is_empty() || ip.is_some() {
            return Err(refuse("networks", "aliases and addresses are not honoured in a stack"));
        }
        let settings = p.model.networks.0.get(key).and_then(|n| match n {
            MapOrEmpty::Map(s) => Some(s.clone()),
            MapOrEmpty::Empty => None,
        });
        if let Some(n) = p.tree.get("networks").and_then(|x| x.get(key)) {
            for (k, v) in n.entries() {
                let ok = match k.as_str() {
                    "internal" | "labels" => true,
                    "driver" => matches!(v.as_str(), Some("bridge")),
                    _ => false,
                };
                if !ok {
                    bail!(
                        "{}: line {}: networks.{key}.{k}: a stack's networks are bridges made on each node (internal, labels); no overlay, external, name or ipam yet",
                        p.file.display(),
                        v.line()
                    );
                }
            }
        }
        let net = format!("{stack}_{key}");
        networks.entry(net.clone()).or_insert(StackNetwork {
            name: net.clone(),
            internal: settings.as_ref().is_some_and(|s| s.internal),
        });
        let mut labels = BTreeMap::new();
        let list: Vec<String> = match &s.labels {
            Labels::List(v) => v.clone(),
            Labels::Map(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        };
        for l in list {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.starts_with("bulkhead.") {
                return Err(refuse(
                    "labels",
                    &format!("{k:?}: labels starting with `bulkhead.` are bulkhead's own"),
                ));
            }
            labels.insert(k.to_owned(), v.to_owned());
        }
        for o in &s.security_opt {
            if !matches!(
                o.as_str(),
                "no-new-privileges" | "no-new-privileges=true" | "no-new-privileges:true"
            ) {
                return Err(refuse(
                    "security_opt",
                    &format!("{o:?}: a cluster's tasks take no security options"),
                ));
            }
        }
        let mut health_cmd = None;
        let mut health: (Option<u64>, Option<u64>, Option<u64>, Option<u32>) = (None, None, None, None);
        if let Some(h) = s.healthcheck.as_ref().filter(|h| !h.disable) {
            use bulkhead_compose::types::HealthcheckTest;
            health_cmd = match &h.test {
                Some(HealthcheckTest::Single(c)) => Some(c.clone()),
                Some(HealthcheckTest::Multiple(v)) => match v.first().map(String::as_str) {
                    Some("NONE") => None,
                    Some("CMD-SHELL") if v.len() == 2 => Some(v[1].clone()),
                    _ => {
                        return Err(refuse(
                            "healthcheck",
                            "test: a string, [\"CMD-SHELL\", \"...\"] or [\"NONE\"] in a stack",
                        ))
                    }
                },
                None => return Err(refuse("healthcheck", "no test")),
            };
            let dur = |v: &Option<String>| -> anyhow::Result<Option<u64>> {
                v.as_deref()
                    .map(|v| crate::container_cmd::parse_duration_ms(v).map_err(|e| refuse("healthcheck", &e.to_string())))
                    .transpose()
            };
            health = (
                dur(&h.interval)?,
                dur(&h.timeout)?,
                dur(&h.start_period)?,
                (h.retries != 0).then(|| u32::try_from(h.retries).unwrap_or(u32::MAX)),
            );
        }
        if health_cmd.is_none() {
            health = (None, None, None, None);
        }
        let (secrets, configs) = file_refs(p, name, s, stack, allow_external, &mut files)?;
        let mut limit_memory = s
            .mem_limit
            .as_deref()
            .map(svc::bytes)
            .transpose()
            .map_err(|e| refuse("mem_limit", &e.to_string()))?;
        let mut limit_cpu = match p.extra.get(name).and_then(|e| e.get("cpus")) {
            None => None,
            Some(v) => Some(cpus(v).map_err(|e| refuse("cpus", &e))?),
        };
        let mut spec = ServiceSpec {
            name: service_name(stack, name),
            mode: Mode::Replicated { replicas: 1 },
            constraints: Vec::new(),
            reserve_memory: 0,
            reserve_cpu: 0,
            task: TaskTemplate::default(),
            restart: Restart::default(),
            update: UpdateConfig::default(),
        };
        if let Some(r) = s.restart.as_deref() {
            spec.restart.condition = match r {
                "no" => bulkhead_cluster::services::Condition::None,
                "always" | "unless-stopped" => bulkhead_cluster::services::Condition::Any,
                r if r.starts_with("on-failure") => bulkhead_cluster::services::Condition::OnFailure,
                r => return Err(refuse("restart", &format!("{r:?}"))),
            };
        }
        if let Some(d) = &s.deploy {
            let dline = |key: &str| line(&format!("deploy.{key}"));
            let at =
                |key: &str, why: String| anyhow::anyhow!("{}: line {}: services.{name}.deploy.{key}: {why}", p.file.display(), dline(key));
            spec.mode = match d.mode.as_deref() {
                None | Some("replicated") => {
                    let n = d.replicas.unwrap_or(1);
                    if !(0..=bulkhead_cluster::services::MAX_REPLICAS as i64).contains(&n) {
                        return Err(at("replicas", format!("{n}")));
                    }
                    Mode::Replicated { replicas: n as u32 }
                }
                Some("global") if d.replicas.is_none() => Mode::Global,
                Some(m) => return Err(at("mode", format!("{m:?}: replicated, or global without replicas"))),
            };
            if let Some(pl) = &d.placement {
                if !pl.preferences.is_empty() {
                    return Err(at("placement", "preferences are not honoured".into()));
                }
                for c in &pl.constraints {
                    spec.constraints.push(Constraint::parse(c).map_err(|e| at("placement", e))?);
                }
            }
            if let Some(r) = &d.resources {
                for (which, l) in [("limits", &r.limits), ("reservations", &r.reservations)] {
                    let Some(l) = l else { continue };
                    if l.devices.is_some() {
                        return Err(at("resources", "devices are not honoured".into()));
                    }
                    let mem = l
                        .memory
                        .as_deref()
                        .map(svc::bytes)
                        .transpose()
                        .map_err(|e| at("resources", e.to_string()))?;
                    let cpu = l
                        .cpus
                        .as_deref()
                        .map(|c| cpus(&serde_json::Value::String(c.to_owned())))
                        .transpose()
                        .map_err(|e| at("resources", e))?;
                    if which == "limits" {
                        limit_memory = mem.or(limit_memory);
                        limit_cpu = cpu.or(limit_cpu);
                    } else {
                        spec.reserve_memory = mem.unwrap_or(0);
                        spec.reserve_cpu = cpu.unwrap_or(0);
                    }
                }
            }
            if let Some(u) = &d.update_config {
                if let Some(n) = u.parallelism {
                    spec.update.parallelism = u32::try_from(n)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| at("update_config", format!("parallelism {n}")))?;
                }
                if let Some(x) = &u.delay {
                    spec.update.delay_ms = svc::ms(x).map_err(|e| at("update_config", e.to_string()))?;
                }
                if let Some(x) = &u.monitor {
                    spec.update.monitor_ms = svc::ms(x).map_err(|e| at("update_config", e.to_string()))?;
                }
                if let Some(x) = &u.failure_action {
                    spec.update.failure_action = svc::failure_action(x).map_err(|e| at("update_config", e.to_string()))?;
                }
            }
            if let Some(r) = &d.restart_policy {
                if let Some(c) = &r.condition {
                    spec.restart.condition = svc::condition(c).map_err(|e| at("restart_policy", e.to_string()))?;
                }
                if let Some(x) = &r.delay {
                    spec.restart.delay_ms = svc::ms(x).map_err(|e| at("restart_policy", e.to_string()))?;
                }
            }
        }
        spec.task = TaskTemplate {
            image,
            digest: None,
            command,
            env,
            secrets,
            configs,
            limit_memory,
            limit_cpu,
            read_only: s.read_only,
            cap_add: s.cap_add.clone(),
            ports,
            networks: vec![net],
            health_cmd,
            health_interval_ms: health.0,
            health_timeout_ms: health.1,
            health_start_period_ms: health.2,
            health_retries: health.3,
            labels,
            stack: Some(stack.to_owned()),
        };
        specs.push(spec);
    }
    let record = StackRecord {
        name: stack.to_owned(),
        services: p.order.clone(),
        networks: networks.into_values().collect(),
        rules: policy
            .allow
            .iter()
            .map(|r| StackRule {
                from: r.from.clone(),
                to: r.to.clone(),
                port: r.port,
                proto: r.proto.clone(),
                origin: format!("{}:{} {}", p.file.display(), r.line, r.because),
            })
            .collect(),
        secrets: files.values().filter(|f| f.kind == Kind::Secret).map(|f| f.name.clone()).collect(),
        configs: files.values().filter(|f| f.kind == Kind::Config).map(|f| f.name.clone()).collect(),
        created: 0,
        updated: 0,
    };
    for w in &policy.warnings {
        eprintln!("bulkhead: warning: {w}");
    }
    Ok(Plan {
        record,
        specs,
        files: files.into_values().collect(),
    })
}

/// `cpus: 0.5` or `"0.5"`: thousandths of a CPU.
fn cpus(v: &serde_json::Value) -> Result<u64, String> {
    let text = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    let c: f64 = text.trim().parse().map_err(|_| format!("{text:?}: a number of CPUs"))?;
    svc::millicpu(c).map_err(|e| e.to_string())
}

/// A service's secrets and configs as the cluster's: a top-level `file:` one is the cluster's
/// `<stack>_<name>` (made from the file if missing), an `external: true` one the cluster's of
/// its name.
fn file_refs(
    p: &bulkhead_compose::Project,
    name: &str,
    s: &bulkhead_compose::types::Service,
    stack: &str,
    allow_external: bool,
    files: &mut BTreeMap<(bool, String), FileSource>,
) -> anyhow::Result<(Vec<FileRef>, Vec<FileRef>)> {
    let at = |key: &str| {
        format!(
            "{}: line {}: services.{name}.{key}",
            p.file.display(),
            bulkhead_compose::line_of(&p.tree, &format!("services.{name}.{key}"))
        )
    };
    let (secrets, configs) = crate::compose_cmd::file_entries(p, name, s)?;
    let mut out = (Vec::new(), Vec::new());
    for (secret, (source, target, uid, gid, mode)) in secrets
        .into_iter()
        .map(|e| (true, e))
        .chain(configs.into_iter().map(|e| (false, e)))
    {
        let key = if secret { "secrets" } else { "configs" };
        // (the cluster's name, the file to make it from if it has none)
        let (cluster, file): (String, Option<String>) = if secret {
            use bulkhead_compose::types::ComposeSecret;
            match p.model.secrets.as_ref().and_then(|m| m.0.get(&source)) {
                None => bail!("{}: {source:?} is not declared under the top-level `secrets`", at(key)),
                Some(Some(ComposeSecret::File(f))) => (format!("{stack}_{source}"), Some(f.clone())),
                Some(Some(ComposeSecret::External { external: true, name })) => (if name.is_empty() { source.clone() } else { name.clone() }, None),
                Some(Some(ComposeSecret::External { .. })) | Some(None) => {
                    bail!("{}: secret {source:?}: `file:`, or `external: true` for one the cluster has", at(key))
                }
                Some(Some(ComposeSecret::Environment(_))) => bail!(
                    "{}: secret {source:?} from the environment: not supported (a process's environment is readable by others; give `file:`)",
                    at(key)
                ),
            }
        } else {
            match p.configs.get(&source) {
                None => bail!("{}: {source:?} is not declared under the top-level `configs`", at(key)),
                Some(c) => match (c.get("file").and_then(|f| f.as_str()), c.get("external").and_then(|e| e.as_bool())) {
                    (Some(f), None) => (format!("{stack}_{source}"), Some(f.to_owned())),
                    (None, Some(true)) => (c.get("name").and_then(|n| n.as_str()).unwrap_or(&source).to_owned(), None),
                    _ => bail!("{}: config {source:?}: `file:` or `external: true`", at(key)),
                },
            }
        };
        if file.is_none() && !allow_external {
            bail!(
                "{}: {source:?} names the cluster's {cluster:?}: give `stack deploy --allow-external` to hand it to this file's tasks",
                at(key)
            );
        }
        if let Some(f) = file {
            let path = crate::compose_cmd::inside(p, &f, key)?;
            files.entry((secret, cluster.clone())).or_insert(FileSource {
                kind: if secret { Kind::Secret } else { Kind::Config },
                name: cluster.clone(),
                path,
            });
        }
        let num = |v: Option<String>, what: &str, radix: u32| -> anyhow::Result<Option<u32>> {
            v.map(|x| u32::from_str_radix(x.trim(), radix).with_context(|| format!("{}: {source}: {what} {x:?}", at(key))))
                .transpose()
        };
        let f = FileRef {
            source: cluster,
            target: target.unwrap_or_else(|| if secret { source.clone() } else { format!("/{source}") }),
            uid: num(uid, "uid", 10)?,
            gid: num(gid, "gid", 10)?,
            mode: num(mode, "mode", 8)?,
            version: 0,
        };
        if secret {
            out.0.push(f);
        } else {
            out.1.push(f);
        }
    }
    Ok(out)
}

/// The services of stack `name`, as `service ls` gives them.
fn services_of(ctx: &Ctx, name: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let v = call(ctx, ControlRequest::ServiceLs)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["service"]["spec"]["task"]["stack"].as_str() == Some(name))
        .cloned()
        .collect())
}

pub fn stack(ctx: &Ctx, c: StackCommand) -> anyhow::Result<ExitCode> {
    match c {
        StackCommand::Deploy {
            file,
            prune,
            allow_external,
            name,
        } => {
            let p = load(&file, &name)?;
            let mut plan = plan(&p, &name, allow_external)?;
            // Everything is checked here before anything is made: the record, the specs.
            plan.record.validate().map_err(|e| anyhow::anyhow!("stack {name}: {e}"))?;
            plan.record
                .check_services(&plan.specs)
                .map_err(|e| anyhow::anyhow!("stack {name}: {e}"))?;
            for spec in &mut plan.specs {
                spec.task.digest = svc::pin(ctx, &spec.task.image)?;
            }
            // A secret or config of the stack's name that the stack did not bring is not taken
            // (nor removed by its `rm`): checked for all before any is made.
            let stacks = call(ctx, ControlRequest::StackLs)?;
            let mine = stacks.as_array().into_iter().flatten().find(|s| s["name"].as_str() == Some(&name));
            let mut exists = BTreeSet::new();
            for f in &plan.files {
                let have = call(ctx, ControlRequest::SecretLs { kind: f.kind })?;
                let what = if f.kind == Kind::Secret { "secret" } else { "config" };
                if have.as_array().into_iter().flatten().any(|r| r["name"].as_str() == Some(&f.name)) {
                    let list = if f.kind == Kind::Secret { "secrets" } else { "configs" };
                    let ours = mine
                        .and_then(|m| m[list].as_array())
                        .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(&f.name)));
                    if !ours {
                        bail!("{what} {} exists and stack {name} did not make it: rename it in the file", f.name);
                    }
                    exists.insert((f.kind == Kind::Secret, f.name.clone()));
                }
            }
            for f in &plan.files {
                let what = if f.kind == Kind::Secret { "secret" } else { "config" };
                if exists.contains(&(f.kind == Kind::Secret, f.name.clone())) {
                    eprintln!("bulkhead: {what} {} exists: kept (`{what} rotate` gives it a new version)", f.name);
                    continue;
                }
                let data = zeroize::Zeroizing::new(crate::cluster_cmd::read_secret(&f.path)?);
                call(
                    ctx,
                    ControlRequest::SecretCreate {
                        kind: f.kind,
                        name: f.name.clone(),
                        data: data.to_vec(),
                    },
                )?;
                println!("{what} {} created", f.name);
            }
            let v = call(
                ctx,
                ControlRequest::StackDeploy {
                    stack: plan.record,
                    services: plan.specs,
                    prune,
                },
            )?;
            let done: bulkhead_cluster::stacks::Deployed = serde_json::from_value(v)?;
            for (what, list) in [
                ("created", &done.created),
                ("updated", &done.updated),
                ("unchanged", &done.unchanged),
                ("removed", &done.pruned),
            ] {
                for s in list {
                    println!("service {s} {what}");
                }
            }
            for s in &done.left {
                eprintln!("bulkhead: warning: service {s} is no longer in the file: kept (`stack deploy --prune` removes it)");
            }
        }
        StackCommand::Ls => {
            let v = call(ctx, ControlRequest::StackLs)?;
            match ctx.output()? {
                Output::Json => json(&v)?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| {
                            vec![
                                s["name"].as_str().unwrap_or_default().to_owned(),
                                s["services"].as_array().map_or(0, Vec::len).to_string(),
                            ]
                        })
                        .collect();
                    table(&["NAME", "SERVICES"], &rows)?;
                }
            }
        }
        StackCommand::Services { name } => {
            let list = services_of(ctx, &name)?;
            if matches!(ctx.output()?, Output::Json) {
                return json(&serde_json::Value::Array(list)).map(|()| ExitCode::SUCCESS);
            }
            svc::print_services(&list)?;
        }
        StackCommand::Ps { name, no_trunc } => {
            let mut all = Vec::new();
            for s in services_of(ctx, &name)? {
                let service = s["service"]["spec"]["name"].as_str().unwrap_or_default().to_owned();
                all.push(call(
                    ctx,
                    ControlRequest::ServiceInspect {
                        name: service,
                        tasks: true,
                    },
                )?);
            }
            if matches!(ctx.output()?, Output::Json) {
                let tasks: Vec<serde_json::Value> = all
                    .iter()
                    .flat_map(|v| v["tasks"].as_array().cloned().unwrap_or_default())
                    .collect();
                return json(&serde_json::Value::Array(tasks)).map(|()| ExitCode::SUCCESS);
            }
            svc::print_tasks(&all, no_trunc)?;
        }
        StackCommand::Rm { names } => {
            for name in names {
                let v = call(ctx, ControlRequest::StackRm { name: name.clone() })?;
                for s in v.as_array().into_iter().flatten() {
                    println!("service {} removed", s.as_str().unwrap_or_default());
                }
                println!("{name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
