//! `bulkhead compose`: a compose file's model and the communication policy derived from it.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::output::{json, table};
use crate::{Ctx, Output};

#[derive(Args, Debug)]
pub struct ComposeArgs {
    /// The compose file (default: compose.yaml, compose.yml, docker-compose.yml or
    /// docker-compose.yaml in the current directory).
    #[arg(short = 'f', long = "file")]
    file: Option<std::path::PathBuf>,
    /// The project's name (default: `name:` in the file, else the directory's name).
    #[arg(short = 'p', long = "project-name")]
    project: Option<String>,
    /// Variables for interpolation (default: `.env` beside the compose file); the environment
    /// wins over it.
    #[arg(long)]
    env_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: ComposeCommand,
}

#[derive(Subcommand, Debug)]
pub enum ComposeCommand {
    /// The resolved, validated model (interpolated, merged), as JSON or YAML.
    Config {
        #[arg(long, default_value = "yaml", value_parser = ["json", "yaml"])]
        format: String,
    },
    /// The conversations the file allows between its services, and where each comes from.
    Policy {
        /// What the services did while the file said `x-bulkhead: {policy: learn}` that it does
        /// not allow yet, as `x-bulkhead` blocks to paste into the file.
        #[arg(long)]
        learned: bool,
    },
    /// Makes the project's networks, its rules (derived from the file), and its containers, each
    /// service after those it depends on.
    Up {
        /// Detached (the only way for now: follow with `bulkhead logs -f`).
        #[arg(short, long)]
        detach: bool,
        /// Returns when every container runs.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        allow: Allow,
        /// Only these services (and what they depend on).
        services: Vec<String>,
    },
    /// Removes the project's containers, rules and networks.
    Down {
        /// Also its named volumes (not the external ones).
        #[arg(short, long)]
        volumes: bool,
        /// Containers of the project whose service is no longer in the file go too (they always
        /// do: every container of the project is removed).
        #[arg(long)]
        remove_orphans: bool,
    },
    /// The project's containers.
    Ps {
        #[arg(short, long)]
        all: bool,
    },
    /// The services' output, each line prefixed with its container.
    Logs {
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        tail: Option<usize>,
        services: Vec<String>,
    },
    /// Runs a command in a service's (first) container.
    Exec {
        #[arg(short = 'T', long = "no-tty")]
        no_tty: bool,
        service: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Runs a one-off container of a service (its networks, rules and settings), with a command.
    Run {
        #[arg(long)]
        rm: bool,
        #[command(flatten)]
        allow: Allow,
        service: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Starts the services' stopped containers.
    Start { services: Vec<String> },
    /// Stops the services' containers.
    Stop {
        #[arg(short = 't', long)]
        timeout: Option<u64>,
        services: Vec<String>,
    },
    /// Stops and starts the services' containers.
    Restart {
        #[arg(short = 't', long)]
        timeout: Option<u64>,
        services: Vec<String>,
    },
    /// Pulls the services' images.
    Pull { services: Vec<String> },
    /// Connections the policy refused between the project's containers (JSON lines).
    Events {
        #[arg(short, long)]
        follow: bool,
    },
}

/// The labels that tie a container to its project and service.
pub const PROJECT_LABEL: &str = "bulkhead.compose.project";
/// The project's directory (links resolved): a project is its name *and* where its file is.
const DIR_LABEL: &str = "bulkhead.compose.dir";
pub const SERVICE_LABEL: &str = "bulkhead.compose.service";
/// A volume's key in its project's file.
const VOLUME_LABEL: &str = "bulkhead.compose.volume";

fn load(a: &ComposeArgs) -> anyhow::Result<bulkhead_compose::Project> {
    let opts = bulkhead_compose::Options {
        file: a.file.clone(),
        project: a.project.clone(),
        env_file: a.env_file.clone(),
        dir: std::env::current_dir().context("the current directory")?,
    };
    bulkhead_compose::load(&opts).map_err(|e| match (e.line(), bulkhead_compose::find_file(&opts)) {
        (Some(_), Ok(file)) => anyhow::anyhow!("{}: {e}", file.display()),
        _ => anyhow::anyhow!("{e}"),
    })
}

pub fn run(ctx: &Ctx, a: ComposeArgs) -> anyhow::Result<ExitCode> {
    let p = load(&a)?;
    match &a.command {
        ComposeCommand::Up {
            detach,
            wait,
            services,
            allow,
        } => return up(ctx, &p, *detach, *wait, services, *allow),
        ComposeCommand::Down { volumes, .. } => return down(ctx, &p, *volumes),
        ComposeCommand::Ps { all } => return ps(ctx, &p, *all),
        ComposeCommand::Logs { follow, tail, services } => return logs(ctx, &p, *follow, *tail, services),
        ComposeCommand::Exec { service, command, .. } => {
            let c = first_container(ctx, &p, service)?;
            let mut args = vec!["exec".to_owned(), c];
            args.extend(command.iter().cloned());
            return passthrough(ctx, &args);
        }
        ComposeCommand::Run {
            rm,
            service,
            command,
            allow,
        } => {
            let allow = *allow;
            let svc = service_of(&p, service)?;
            let name = format!("{}-{service}-run-{:08x}", p.name, rand32());
            let (mut args, env) = run_args(&p, service, svc, &name, 1, true, allow)?;
            // Attached: -d out, --rm in if asked, the command in place of the service's.
            args.remove(1); // the "-d" after "run" (not one of the command's)
            if *rm {
                args.insert(1, "--rm".into());
            }
            if !command.is_empty() {
                // The image follows the `--` that ends the options.
                let at = args.iter().position(|x| x == "--").expect("run_args ends its options");
                args.truncate(at + 2);
                args.extend(command.iter().cloned());
            }
            ensure_networks_and_rules(ctx, &p, allow)?;
            return with_env(&args, &env, |args| passthrough(ctx, args));
        }
        ComposeCommand::Start { services } => return each(ctx, &p, services, &["start"]),
        ComposeCommand::Stop { timeout, services } => {
            let t = timeout.map(|t| t.to_string());
            let mut a = vec!["stop"];
            if let Some(t) = &t {
                a.extend(["-t", t]);
            }
            return each(ctx, &p, services, &a);
        }
        ComposeCommand::Restart { timeout, services } => {
            let t = timeout.map(|t| t.to_string());
            let mut a = vec!["stop"];
            if let Some(t) = &t {
                a.extend(["-t", t]);
            }
            // With `depends_on: {X: {restart: true}}`, restarting X restarts its dependents
            // too, stopped after it and started after it (as docker compose does).
            let all = if services.is_empty() {
                Vec::new()
            } else {
                with_restarting_dependents(&p, services)
            };
            each(ctx, &p, &all, &a)?;
            return each(ctx, &p, &all, &["start"]);
        }
        ComposeCommand::Pull { services } => {
            for name in &p.order {
                if !services.is_empty() && !services.contains(name) {
                    continue;
                }
                if let Some(img) = p.model.services.0.get(name).and_then(Option::as_ref).and_then(|s| s.image.clone()) {
                    print!("{}", bulkhead(ctx, &["pull".into(), img])?);
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        ComposeCommand::Events { follow } => return events(ctx, &p, *follow),
        _ => {}
    }
    let file = p.file.display().to_string();
    match &a.command {
        ComposeCommand::Config { format } => {
            if format == "json" {
                json(&serde_json::to_value(&p.model)?)?;
            } else {
                print!("{}", serde_norway::to_string(&p.model).context("writing the model")?);
            }
        }
        ComposeCommand::Policy { learned: true } => return learned(ctx, &p),
        ComposeCommand::Policy { learned: false } => {
            let pol = bulkhead_compose::policy::derive(&p).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            for w in &pol.warnings {
                eprintln!("warning: {file}: {w}");
            }
            match ctx.output()? {
                Output::Json => json(&serde_json::to_value(&pol)?)?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = pol
                        .allow
                        .iter()
                        .map(|r| {
                            vec![
                                r.from.clone(),
                                r.to.clone(),
                                format!("{}/{}", r.port, r.proto),
                                format!("{file}:{} {}", r.line, r.because),
                            ]
                        })
                        .collect();
                    table(&["FROM", "TO", "PORT", "BECAUSE"], &rows)?;
                    println!(
                        "everything else between the services of {} is denied{}",
                        p.name,
                        if pol.learn {
                            " (x-bulkhead policy: learn: recorded, not enforced)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        _ => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// This binary, with the same store, config, trust policy and lock timeout.
fn base(ctx: &Ctx) -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe().context("this program's path")?;
    let mut c = std::process::Command::new(exe);
    c.arg("--root").arg(&ctx.root).arg("--config").arg(&ctx.config);
    if let Some(p) = &ctx.policy {
        c.arg("--policy").arg(p);
    }
    if let Some(t) = ctx.lock_timeout {
        c.arg(format!("--lock-timeout={t}"));
    }
    // The project's labels (bulkhead.compose.*) are set by compose alone.
    c.env(COMPOSE_CHILD, "1");
    Ok(c)
}

/// Set in the environment of the `bulkhead` children compose runs: `run --label bulkhead.*` is
/// refused without it.
pub const COMPOSE_CHILD: &str = "BULKHEAD_COMPOSE_CHILD";

/// Runs this binary (`run`, `rm`, `network`, ...): each container is made exactly as `bulkhead
/// run` makes one, hardened defaults included. Its warnings are passed on.
fn bulkhead(ctx: &Ctx, args: &[String]) -> anyhow::Result<String> {
    use std::os::unix::process::CommandExt;
    // In a process group of its own: a Ctrl-C at the terminal stops compose, never a `run` or
    // `rm` halfway (a container made halfway would keep its mounts and its id range).
    let o = base(ctx)?
        .process_group(0)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("bulkhead {}", args.join(" ")))?;
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        let line = err.lines().last().unwrap_or("failed").trim_start_matches("bulkhead: error: ");
        anyhow::bail!("{line}");
    }
    for l in err.lines().filter(|l| l.contains("warning")) {
        eprintln!("{l}");
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The name of network `key` of project `p` on this host.
fn network_name(p: &bulkhead_compose::Project, key: &str) -> String {
    let external = p.model.networks.0.get(key).and_then(|n| match n {
        bulkhead_compose::types::MapOrEmpty::Map(s) => Some(s),
        bulkhead_compose::types::MapOrEmpty::Empty => None,
    });
    match external {
        Some(s) if s.external.is_some() => s.name.clone().unwrap_or_else(|| key.to_owned()),
        Some(s) if s.name.is_some() => s.name.clone().unwrap_or_default(),
        _ => format!("{}_{key}", p.name),
    }
}

/// A service's networks (the project's `default` if it names none), with its aliases on each.
pub(crate) fn service_networks(s: &bulkhead_compose::types::Service) -> Vec<(String, Vec<String>, Option<String>)> {
    use bulkhead_compose::types::{MapOrEmpty, Networks};
    match &s.networks {
        Networks::Simple(v) if v.is_empty() => vec![("default".into(), Vec::new(), None)],
        Networks::Simple(v) => v.iter().map(|n| (n.clone(), Vec::new(), None)).collect(),
        Networks::Advanced(a) if a.0.is_empty() => vec![("default".into(), Vec::new(), None)],
        Networks::Advanced(a) => {
            a.0.iter()
                .map(|(n, m)| match m {
                    MapOrEmpty::Map(s) => (n.clone(), s.aliases.clone(), s.ipv4_address.clone()),
                    MapOrEmpty::Empty => (n.clone(), Vec::new(), None),
                })
                .collect()
        }
    }
}

/// Where `run_args` wants the file of the service's environment (see [`with_env`]).
const ENV_PLACEHOLDER: &str = "--env-file=\u{0}";

/// Runs `f` with `args` whose environment placeholder is replaced by a private file holding
/// `env` (removed afterwards).
fn with_env<T>(args: &[String], env: &[String], f: impl FnOnce(&[String]) -> anyhow::Result<T>) -> anyhow::Result<T> {
    if env.is_empty() {
        return f(args);
    }
    let mut file = tempfile::Builder::new()
        .prefix("bulkhead-compose-env-")
        .tempfile()
        .context("a file for the environment")?;
    for e in env {
        // One variable a line: a value with a newline would become two (refused, as the
        // specification's `.env` has no multi-line values either).
        if e.contains('\n') {
            anyhow::bail!("environment {:?}: a value with a newline", e.split('=').next().unwrap_or(""));
        }
        std::io::Write::write_all(&mut file, format!("{e}\n").as_bytes()).context("writing the environment")?;
    }
    let path = file.path().display().to_string();
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a == ENV_PLACEHOLDER {
                format!("--env-file={path}")
            } else {
                a.clone()
            }
        })
        .collect();
    f(&args)
}

/// One container `up` makes: its name, its `run` arguments and environment, the networks it
/// joins after its first.
struct Planned {
    service: String,
    container: String,
    args: Vec<String>,
    env: Vec<String>,
    more: Vec<String>,
}

/// Waits (at most 5 minutes) until every container of service `dep` meets `condition`:
/// `service_healthy` (its healthcheck passes), `service_completed_successfully` (it exited with
/// 0); `service_started` is met by the order alone.
fn wait_condition(ctx: &Ctx, p: &bulkhead_compose::Project, dep: &str, condition: &str) -> anyhow::Result<()> {
    use bulkhead_runtime::container::State;
    if condition == "service_started" {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let store = ctx.store()?;
    let cs = bulkhead_runtime::container::Containers::open(&store)?;
    loop {
        let list = containers_of(ctx, p, &[dep.to_owned()])?;
        let met = !list.is_empty()
            && list.iter().all(|r| match condition {
                "service_healthy" => crate::container_cmd::health_of(&cs, r).is_some_and(|h| h.status == "healthy"),
                _ => matches!(r.state, State::Exited { code: 0, .. }),
            });
        if met {
            return Ok(());
        }
        for r in &list {
            if condition == "service_healthy" && r.healthcheck.is_none() {
                anyhow::bail!("{dep} has no healthcheck: service_healthy cannot be met");
            }
            if condition == "service_healthy" && crate::container_cmd::health_of(&cs, r).is_some_and(|h| h.status == "unhealthy") {
                anyhow::bail!("{} is unhealthy ({dep}, which others wait for)", r.name);
            }
            if let State::Exited { code, .. } = r.state {
                if condition == "service_completed_successfully" && code != 0 {
                    anyhow::bail!("{} exited with {code} ({dep}, which others wait for)", r.name);
                }
                if condition == "service_healthy" {
                    anyhow::bail!("{} exited ({dep}, which others wait for to be healthy)", r.name);
                }
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{dep}: {condition} not met after 5 minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Weakenings the user allowed, each visibly (`up` and `run`).
#[derive(Args, Clone, Copy, Debug)]
pub struct Allow {
    /// Bind mounts, secrets and configs may name host paths outside the project's directory (a
    /// weakening: a compose file from anywhere could otherwise read the host's files).
    #[arg(long = "allow-host-paths")]
    host_paths: bool,
    /// The file may add capabilities, security options and process limits beyond the defaults
    /// (each is printed).
    #[arg(long = "allow-weakening")]
    weakening: bool,
    /// An `external` volume may be one another compose project made (its data is then shared
    /// with this file's containers).
    #[arg(long = "allow-shared-volumes")]
    shared_volumes: bool,
}

/// What `bulkhead run -d` is given for one container of service `name`; a key bulkhead reads but
/// cannot yet honour at `up` is refused here, with its line, rather than left out.
fn run_args(
    p: &bulkhead_compose::Project,
    name: &str,
    s: &bulkhead_compose::types::Service,
    container: &str,
    replicas: i64,
    one_off: bool,
    allow: Allow,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let Allow {
        host_paths: allow_host_paths,
        weakening: allow_weakening,
        ..
    } = allow;
    use bulkhead_compose::types::{Command, Entrypoint, Labels, Ports, PublishedPort, Tmpfs, Volumes};
    let line = |key: &str| bulkhead_compose::line_of(&p.tree, &format!("services.{name}.{key}"));
    let refuse = |key: &str, why: &str| anyhow::anyhow!("{}: line {}: services.{name}.{key}: {why}", p.file.display(), line(key));
    // A limit asked for is never dropped (`up` and `run` alike).
    if s.deploy.as_ref().is_some_and(|d| d.resources.is_some()) {
        return Err(refuse(
            "deploy",
            "resources: `stack deploy` honours it; on one host give mem_limit and cpus",
        ));
    }
    let mut health: Vec<String> = Vec::new();
    if let Some(h) = s.healthcheck.as_ref().filter(|h| !h.disable) {
        use bulkhead_compose::types::HealthcheckTest;
        let cmd = match &h.test {
            None => return Err(refuse("healthcheck", "no test")),
            Some(HealthcheckTest::Single(c)) => Some(c.clone()),
            Some(HealthcheckTest::Multiple(v)) => match v.first().map(String::as_str) {
                Some("NONE") => None,
                Some("CMD") if v.len() > 1 => {
                    health.push(format!("--health-cmd-exec={}", serde_json::to_string(&v[1..])?));
                    None
                }
                Some("CMD-SHELL") if v.len() > 1 => Some(v[1..].join(" ")),
                _ => {
                    return Err(refuse(
                        "healthcheck",
                        "test: [\"CMD\", ...], [\"CMD-SHELL\", \"...\"], [\"NONE\"] or a string",
                    ))
                }
            },
        };
        if let Some(cmd) = cmd {
            health.push(format!("--health-cmd={cmd}"));
        }
        if !health.is_empty() {
            for (flag, v) in [
                ("--health-interval", &h.interval),
                ("--health-timeout", &h.timeout),
                ("--health-start-period", &h.start_period),
            ] {
                if let Some(v) = v {
                    crate::container_cmd::parse_duration_ms(v).map_err(|e| refuse("healthcheck", &e.to_string()))?;
                    health.push(format!("{flag}={v}"));
                }
            }
            if h.retries > 0 {
                health.push(format!("--health-retries={}", h.retries.min(1000)));
            }
        }
    }
    let restart = match s.restart.as_deref() {
        None => None,
        Some(r) => bulkhead_runtime::lifecycle::restart_policy(r).map_err(|e| refuse("restart", &e.to_string()))?,
    };
    if let bulkhead_compose::types::DependsOnOptions::Conditional(m) = &s.depends_on {
        if let Some((d, c)) = m.iter().find(|(_, c)| {
            !matches!(
                c.condition.as_str(),
                "service_started" | "service_healthy" | "service_completed_successfully"
            )
        }) {
            return Err(refuse("depends_on", &format!("{d}: condition {:?}", c.condition)));
        }
    }
    if replicas > 1 && s.container_name.is_some() {
        return Err(refuse("container_name", "a fixed name cannot be given to several replicas"));
    }
    let image = s
        .image
        .clone()
        .ok_or_else(|| refuse("image", "no image (build is not supported: give `image:`)"))?;
    let mut a: Vec<String> = vec!["run".into(), "-d".into(), format!("--name={container}")];
    // The service's environment goes to `run` in a file of ours (0600), after its env_files (so
    // it wins over them, as the specification says): never in the argv every user can read.
    let mut env: Vec<String> = Vec::new();
    let nets = service_networks(s);
    let (first, _, ip) = &nets[0];
    a.push(format!("--network={}", network_name(p, first)));
    // Its service's name and every alias it is given, on each of its networks (a container's
    // aliases are its own, not per network, here).
    let mut aliases = vec![name.to_owned()];
    for (_, al, _) in &nets {
        aliases.extend(al.iter().filter(|x| !aliases.contains(x)).cloned().collect::<Vec<_>>());
    }
    // (A one-off `compose run` container answers to no name of the service's.)
    for al in aliases.into_iter().filter(|_| !one_off) {
        a.push(format!("--network-alias={}", al));
    }
    if let Some(ip) = ip {
        a.push(format!("--ip={}", ip.clone()));
    }
    a.push(format!("--label={PROJECT_LABEL}={}", p.name));
    a.push(format!("--label={SERVICE_LABEL}={}.{name}", p.name));
    a.push(format!("--label={DIR_LABEL}={}", project_dir(p)?.display()));
    let labels: Vec<String> = match &s.labels {
        Labels::List(v) => v.clone(),
        Labels::Map(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    };
    for l in labels {
        // The project's own labels say which rules and names a container has: never the file's.
        if l.starts_with("bulkhead.") {
            return Err(refuse(
                "labels",
                &format!("{l:?}: labels starting with `bulkhead.` are bulkhead's own"),
            ));
        }
        a.push(format!("--label={l}"));
    }
    env.extend(service_environment(s));
    for f in env_files(s) {
        a.push(format!("--env-file={}", inside(p, &f, "env_file")?.display()));
    }
    match &s.ports {
        Ports::Short(v) => v.iter().for_each(|x| a.push(format!("--publish={}", x.clone()))),
        Ports::Long(v) => {
            for x in v {
                let host = match &x.published {
                    Some(PublishedPort::Single(h)) => h.to_string(),
                    Some(PublishedPort::Range(r)) => r.clone(),
                    None => String::new(),
                };
                let ip = x.host_ip.clone().map(|i| format!("{i}:")).unwrap_or_default();
                let proto = x.protocol.clone().unwrap_or_else(|| "tcp".into());
                let spec = if host.is_empty() && ip.is_empty() {
                    format!("{}/{proto}", x.target)
                } else {
                    format!("{ip}{host}:{}/{proto}", x.target)
                };
                a.push(format!("--publish={}", spec));
            }
        }
    }
    for v in &s.volumes {
        // A source that is not a path names a volume of the file's top-level `volumes`.
        let path_like = |x: &str| x.starts_with('/') || x.starts_with('.') || x.starts_with('~');
        let (src, dst, ro, named) = match v {
            Volumes::Simple(x) => {
                let parts: Vec<&str> = x.split(':').collect();
                let (src, dst, ro) = match parts.as_slice() {
                    [src, dst] => (src.to_string(), dst.to_string(), false),
                    [src, dst, "ro"] => (src.to_string(), dst.to_string(), true),
                    [src, dst, "rw"] => (src.to_string(), dst.to_string(), false),
                    _ => {
                        return Err(refuse(
                            "volumes",
                            &format!("{x:?}: SOURCE:TARGET[:ro|:rw] (no other options; an anonymous volume needs a name here)"),
                        ))
                    }
                };
                let named = !path_like(&src);
                (src, dst, ro, named)
            }
            Volumes::Advanced(x) if x._type == "bind" => (x.source.clone().unwrap_or_default(), x.target.clone(), x.read_only, false),
            Volumes::Advanced(x) if x._type == "volume" => match &x.source {
                Some(src) if !path_like(src) => (src.clone(), x.target.clone(), x.read_only, true),
                _ => {
                    return Err(refuse(
                        "volumes",
                        "type volume: `source:` names a volume of the top-level `volumes`",
                    ))
                }
            },
            Volumes::Advanced(x) => {
                return Err(refuse(
                    "volumes",
                    &format!("type {:?}: bind and volume (tmpfs: use `tmpfs:`)", x._type),
                ))
            }
        };
        // The target is one path: nothing that `run -v` would read as more options (`:idmap`).
        if dst.contains([':', ',']) || !dst.starts_with('/') {
            return Err(refuse("volumes", &format!("target {dst:?}: an absolute path, without ':' or ','")));
        }
        if named {
            let (vol, _) = volume_name(p, &src).map_err(|e| refuse("volumes", &e.to_string()))?;
            a.push(format!("--volume={vol}:{dst}{}", if ro { ":ro" } else { "" }));
            continue;
        }
        let src = if let Some(rest) = src.strip_prefix("~/") {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(rest)
        } else {
            p.dir.join(&src)
        };
        // A file from anywhere may not mount the host: only what is inside the project's
        // directory (links resolved), unless `up --allow-host-paths` says otherwise, visibly.
        let src = match src.canonicalize() {
            Ok(c) => c,
            Err(e) => return Err(refuse("volumes", &format!("{}: {e}", src.display()))),
        };
        if !allow_host_paths && !src.starts_with(project_dir(p)?) {
            return Err(refuse(
                "volumes",
                &format!(
                    "{}: outside the project's directory (give `compose up --allow-host-paths` to mount host paths)",
                    src.display()
                ),
            ));
        }
        a.push(format!("--volume={}:{dst}{}", src.display(), if ro { ":ro" } else { "" }));
    }
    for f in injected_files(p, name, s, allow)? {
        a.push(f);
    }
    match &s.tmpfs {
        None => {}
        Some(Tmpfs::Simple(t)) => a.push(format!("--tmpfs={}", t.clone())),
        Some(Tmpfs::List(v)) => v.iter().for_each(|t| a.push(format!("--tmpfs={}", t.clone()))),
    }
    if let Some(r) = &restart {
        a.push(format!("--restart={r}"));
    }
    a.extend(health);
    if s.read_only {
        a.push("--read-only".into());
    }
    if s.init {
        a.push("--init".into());
    }
    for (flag, v) in [
        ("--user", &s.user),
        ("--workdir", &s.working_dir),
        ("--hostname", &s.hostname),
        ("--memory", &s.mem_limit),
        ("--stop-signal", &s.stop_signal),
    ] {
        if let Some(v) = v {
            a.push(format!("{flag}={v}"));
        }
    }
    if let Some(g) = &s.stop_grace_period {
        let secs = g
            .trim_end_matches('s')
            .parse::<u64>()
            .map_err(|_| refuse("stop_grace_period", &format!("{g:?}: seconds, such as 10s")))?;
        a.push(format!("--stop-timeout={secs}"));
    }
    // What would make the container weaker than `bulkhead run`'s defaults is refused unless
    // `--allow-weakening` says so (as `privileged` is refused outright): a file from anywhere
    // must not turn the defaults off.
    let weakening = |key: &str, what: String| -> anyhow::Result<()> {
        if allow_weakening {
            eprintln!(
                "warning: {}: line {}: services.{name}.{key}: {what} (allowed by --allow-weakening)",
                p.file.display(),
                line(key)
            );
            Ok(())
        } else {
            Err(refuse(
                key,
                &format!("{what} weakens the container's defaults (give `compose up --allow-weakening` to accept it)"),
            ))
        }
    };
    for (key, flag) in [("cpus", "--cpus"), ("pids_limit", "--pids-limit")] {
        if let Some(v) = p.extra.get(name).and_then(|e| e.get(key)) {
            let v = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
            let limit = bulkhead_runtime::profile::DEFAULT_PIDS_LIMIT;
            if key == "pids_limit" && !v.parse::<i64>().is_ok_and(|n| (1..=limit).contains(&n)) {
                weakening(key, format!("pids_limit {v} (the default is {limit})"))?;
            }
            a.push(format!("{flag}={v}"));
        }
    }
    for c in &s.cap_add {
        let upper = c.to_ascii_uppercase();
        if !bulkhead_runtime::profile::DEFAULT_CAPABILITIES.contains(&upper.trim_start_matches("CAP_")) {
            weakening("cap_add", format!("capability {c}"))?;
        }
        a.push(format!("--cap-add={c}"));
    }
    for c in &s.cap_drop {
        a.push(format!("--cap-drop={}", c.clone()));
    }
    for o in &s.security_opt {
        if !matches!(
            o.as_str(),
            "no-new-privileges" | "no-new-privileges=true" | "no-new-privileges:true"
        ) {
            weakening("security_opt", format!("{o:?}"))?;
        }
        a.push(format!("--security-opt={o}"));
    }
    let mut command: Vec<String> = match &s.command {
        None => Vec::new(),
        Some(Command::Args(v)) => v.clone(),
        Some(Command::Simple(c)) => shlex::split(c).ok_or_else(|| refuse("command", "unbalanced quotes"))?,
    };
    match &s.entrypoint {
        None => {}
        Some(Entrypoint::Simple(e)) => {
            let mut parts = shlex::split(e).ok_or_else(|| refuse("entrypoint", "unbalanced quotes"))?;
            if parts.is_empty() {
                return Err(refuse("entrypoint", "empty"));
            }
            a.push(format!("--entrypoint={}", parts.remove(0)));
            parts.extend(command);
            command = parts;
        }
        Some(Entrypoint::List(v)) => {
            let mut parts = v.clone();
            if parts.is_empty() {
                return Err(refuse("entrypoint", "empty"));
            }
            a.push(format!("--entrypoint={}", parts.remove(0)));
            parts.extend(command);
            command = parts;
        }
    }
    // Every option above is `--flag=value`, and `--` ends them: nothing the file says (an image
    // named `--privileged`, a user `-v...`) is ever read as an option of `run`.
    if !env.is_empty() {
        a.push(ENV_PLACEHOLDER.into());
    }
    a.push("--".into());
    a.push(image);
    a.extend(command);
    Ok((a, env))
}

/// A service's `environment` as `KEY=VALUE` (a `KEY` alone takes compose's own value, if it has
/// one), as `compose up` and `stack deploy` read it.
pub(crate) fn service_environment(s: &bulkhead_compose::types::Service) -> Vec<String> {
    use bulkhead_compose::types::Environment;
    match &s.environment {
        Environment::List(v) => v.clone(),
        Environment::KvPair(m) => m
            .iter()
            .filter_map(|(k, v)| match v {
                Some(v) => Some(format!("{k}={v}")),
                None => std::env::var(k).ok().map(|v| format!("{k}={v}")),
            })
            .collect(),
    }
}

/// A service's `env_file` entries, as written.
pub(crate) fn env_files(s: &bulkhead_compose::types::Service) -> Vec<String> {
    use bulkhead_compose::types::StringOrList;
    match &s.env_file {
        None => Vec::new(),
        Some(StringOrList::Simple(f)) => vec![f.clone()],
        Some(StringOrList::List(v)) => v.clone(),
    }
}

/// The project's directory, links resolved.
/// The store's name of the file's volume `key` (top-level `volumes`): `<project>_<key>`, or
/// its `name:`; an external one is used as it is named, and must exist.
fn volume_name(p: &bulkhead_compose::Project, key: &str) -> anyhow::Result<(String, bool)> {
    use bulkhead_compose::types::{ExternalVolume, MapOrEmpty};
    let Some(decl) = p.model.volumes.0.get(key) else {
        anyhow::bail!("volume {key:?} is not declared under the top-level `volumes`");
    };
    let v = match decl {
        MapOrEmpty::Map(v) => v.clone(),
        MapOrEmpty::Empty => return Ok((format!("{}_{key}", p.name), false)),
    };
    if v.driver.as_deref().is_some_and(|d| d != "local") || !v.driver_opts.is_empty() {
        anyhow::bail!("volume {key:?}: only the local driver, without driver_opts");
    }
    let (name, external) = match &v.external {
        Some(ExternalVolume::Bool(true)) => (v.name.clone().unwrap_or_else(|| key.to_owned()), true),
        Some(ExternalVolume::Name { name }) => (name.clone(), true),
        _ => (v.name.clone().unwrap_or_else(|| format!("{}_{key}", p.name)), false),
    };
    if !bulkhead_runtime::volumes::valid_name(&name) {
        anyhow::bail!("volume {key:?}: {name:?} is not a volume name");
    }
    // A project's own volumes are named after it: a file from anywhere may not claim a name
    // another project, or a user's `run -v NAME`, would take for theirs.
    if !external && !name.starts_with(&format!("{}_", p.name)) {
        anyhow::bail!(
            "volume {key:?}: name {name:?} must start with \"{}_\" (a volume of another name is `external: true`)",
            p.name
        );
    }
    Ok((name, external))
}

/// A service's secret and config entries as written: (source, target, uid, gid, mode), short
/// and long forms alike (`compose up` and `stack deploy` read them the same way).
pub(crate) type FileEntry = (String, Option<String>, Option<String>, Option<String>, Option<String>);

pub(crate) fn file_entries(
    p: &bulkhead_compose::Project,
    name: &str,
    s: &bulkhead_compose::types::Service,
) -> anyhow::Result<(Vec<FileEntry>, Vec<FileEntry>)> {
    let at = |key: &str| {
        format!(
            "{}: line {}: services.{name}.{key}",
            p.file.display(),
            bulkhead_compose::line_of(&p.tree, &format!("services.{name}.{key}"))
        )
    };
    // (source, target, uid, gid, mode) as the service writes them.
    let secrets: Vec<FileEntry> = match &s.secrets {
        None => Vec::new(),
        Some(bulkhead_compose::types::Secrets::Simple(v)) => v.iter().map(|x| (x.clone(), None, None, None, None)).collect(),
        Some(bulkhead_compose::types::Secrets::Advanced(v)) => v
            .iter()
            .map(|x| (x.source.clone(), x.target.clone(), x.uid.clone(), x.gid.clone(), x.mode.clone()))
            .collect(),
    };
    let configs: Vec<FileEntry> = match p.extra.get(name).and_then(|e| e.get("configs")) {
        None => Vec::new(),
        Some(serde_json::Value::Array(items)) => {
            let mut v = Vec::new();
            for item in items {
                let text = |k: &str| match &item[k] {
                    serde_json::Value::String(x) => Some(x.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                };
                match item {
                    serde_json::Value::String(x) => v.push((x.clone(), None, None, None, None)),
                    serde_json::Value::Object(_) => match text("source") {
                        Some(src) => v.push((src, text("target"), text("uid"), text("gid"), text("mode"))),
                        None => anyhow::bail!("{}: an entry without `source:`", at("configs")),
                    },
                    _ => anyhow::bail!("{}: a name or a mapping per entry", at("configs")),
                }
            }
            v
        }
        Some(_) => anyhow::bail!("{}: a list", at("configs")),
    };
    Ok((secrets, configs))
}

/// The `--secret` and `--config-file` options of service `name`: each file the top level names
/// (`file:`, inside the project's directory unless host paths are allowed), at its target.
fn injected_files(
    p: &bulkhead_compose::Project,
    name: &str,
    s: &bulkhead_compose::types::Service,
    allow: Allow,
) -> anyhow::Result<Vec<String>> {
    let at = |key: &str| {
        format!(
            "{}: line {}: services.{name}.{key}",
            p.file.display(),
            bulkhead_compose::line_of(&p.tree, &format!("services.{name}.{key}"))
        )
    };
    let (secrets, configs) = file_entries(p, name, s)?;
    let mut out = Vec::new();
    for (secret, (source, target, uid, gid, mode)) in secrets
        .into_iter()
        .map(|e| (true, e))
        .chain(configs.into_iter().map(|e| (false, e)))
    {
        let key = if secret { "secrets" } else { "configs" };
        let file = if secret {
            use bulkhead_compose::types::ComposeSecret;
            match p.model.secrets.as_ref().and_then(|m| m.0.get(&source)) {
                None => anyhow::bail!("{}: {source:?} is not declared under the top-level `secrets`", at(key)),
                Some(Some(ComposeSecret::File(f))) => f.clone(),
                Some(Some(ComposeSecret::Environment(_))) => anyhow::bail!(
                    "{}: secret {source:?} from the environment: not supported (a process's environment is readable by others; give `file:`)",
                    at(key)
                ),
                Some(_) => anyhow::bail!("{}: secret {source:?}: external secrets belong to a cluster (`stack deploy`); give `file:`", at(key)),
            }
        } else {
            match p.configs.get(&source) {
                None => anyhow::bail!("{}: {source:?} is not declared under the top-level `configs`", at(key)),
                Some(c) => match c.get("file").and_then(|f| f.as_str()) {
                    Some(f) if c.as_object().is_some_and(|o| o.len() == 1) => f.to_owned(),
                    _ => anyhow::bail!("{}: config {source:?}: only `file:` configs are supported", at(key)),
                },
            }
        };
        let path = p
            .dir
            .join(&file)
            .canonicalize()
            .with_context(|| format!("{}: {source}: {file}", at(key)))?;
        if !allow.host_paths && !path.starts_with(project_dir(p)?) {
            anyhow::bail!(
                "{}: {source}: {} is outside the project's directory (give `--allow-host-paths` to read host files)",
                at(key),
                path.display()
            );
        }
        // Default targets: /run/secrets/<name> for a secret, /<name> for a config.
        let target = target.unwrap_or_else(|| if secret { source.clone() } else { format!("/{source}") });
        // One option each: nothing in a path or value may read as another option.
        let values = [
            Some(path.to_string_lossy().into_owned()),
            Some(target.clone()),
            uid.clone(),
            gid.clone(),
            mode.clone(),
        ];
        if values.iter().flatten().any(|v| v.contains([',', '='])) {
            anyhow::bail!("{}: {source}: ',' and '=' are not allowed in its path or values", at(key));
        }
        let mut opt = format!("src={},target={target}", path.display());
        for (k, v) in [("uid", uid), ("gid", gid), ("mode", mode)] {
            if let Some(v) = v {
                opt.push_str(&format!(",{k}={v}"));
            }
        }
        bulkhead_runtime::files::parse(&opt, secret).map_err(|e| anyhow::anyhow!("{}: {source}: {e}", at(key)))?;
        out.push(format!("{}={opt}", if secret { "--secret" } else { "--config-file" }));
    }
    Ok(out)
}

pub(crate) fn project_dir(p: &bulkhead_compose::Project) -> anyhow::Result<std::path::PathBuf> {
    p.dir.canonicalize().with_context(|| p.dir.display().to_string())
}

/// `rel` (a path the file names, for `key`) inside the project's directory, links resolved:
/// a file from anywhere never reads the host's files into a container (an `env_file:
/// /etc/shadow` would).
pub(crate) fn inside(p: &bulkhead_compose::Project, rel: &str, key: &str) -> anyhow::Result<std::path::PathBuf> {
    let full = p
        .dir
        .join(rel)
        .canonicalize()
        .with_context(|| format!("{}: {key} {rel}", p.file.display()))?;
    if !full.starts_with(project_dir(p)?) {
        anyhow::bail!("{}: {key} {rel}: outside the project's directory", p.file.display());
    }
    Ok(full)
}

/// Refuses to touch a project of this name that another directory's file made (its containers
/// or networks carry another directory): a file from anywhere naming itself `shop` must not
/// take over the `shop` a user runs, its rules, its names or its `down`.
fn check_owner(ctx: &Ctx, p: &bulkhead_compose::Project) -> anyhow::Result<()> {
    let mine = project_dir(p)?.display().to_string();
    let theirs = project_containers(ctx, &p.name)?
        .into_iter()
        .filter_map(|r| r.labels.get(DIR_LABEL).cloned())
        .chain(
            bulkhead_network::Networks::open(&ctx.root, &ctx.config)?
                .list()?
                .into_iter()
                .filter(|n| n.labels.get(PROJECT_LABEL) == Some(&p.name))
                .filter_map(|n| n.labels.get(DIR_LABEL).cloned()),
        )
        .chain(
            bulkhead_runtime::volumes::Volumes::open(ctx.store()?.root())?
                .list()?
                .into_iter()
                .filter(|v| v.labels.get(PROJECT_LABEL) == Some(&p.name))
                .filter_map(|v| v.labels.get(DIR_LABEL).cloned()),
        )
        .find(|d| *d != mine);
    if let Some(d) = theirs {
        anyhow::bail!("project {} belongs to {d}, not {mine} (give this one another name with -p)", p.name);
    }
    Ok(())
}

fn project_containers(ctx: &Ctx, project: &str) -> anyhow::Result<Vec<bulkhead_runtime::container::ContainerRecord>> {
    let store = ctx.store()?;
    let cs = bulkhead_runtime::container::Containers::open(&store)?;
    let mut out = Vec::new();
    for r in cs.list()? {
        if r.labels.get(PROJECT_LABEL).map(String::as_str) == Some(project) {
            out.push(bulkhead_runtime::lifecycle::refresh(&cs, r)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The project's networks (its own made if missing; external ones must exist), and the rules
/// its file implies, written before any container runs.
fn prepare(ctx: &Ctx, p: &bulkhead_compose::Project, policy: &bulkhead_compose::policy::Policy, allow: Allow) -> anyhow::Result<()> {
    check_owner(ctx, p)?;
    // Networks: the project's own, made if missing; external ones must exist.
    let nets = bulkhead_network::Networks::open(&ctx.root, &ctx.config)?;
    let mut keys: Vec<String> = p.model.networks.0.keys().cloned().collect();
    if !keys.contains(&"default".to_owned()) {
        keys.push("default".into());
    }
    for key in keys {
        let used = p
            .model
            .services
            .0
            .values()
            .flatten()
            .any(|s| service_networks(s).iter().any(|(n, _, _)| *n == key));
        if !used {
            continue;
        }
        let name = network_name(p, &key);
        let settings = p.model.networks.0.get(&key).and_then(|n| match n {
            bulkhead_compose::types::MapOrEmpty::Map(s) => Some(s.clone()),
            bulkhead_compose::types::MapOrEmpty::Empty => None,
        });
        if settings.as_ref().is_some_and(|s| s.external.is_some()) {
            nets.get(&name).with_context(|| format!("external network {name}"))?;
            continue;
        }
        if nets.get(&name).is_ok() {
            continue;
        }
        let mut labels = std::collections::BTreeMap::new();
        labels.insert(PROJECT_LABEL.to_owned(), p.name.clone());
        labels.insert(DIR_LABEL.to_owned(), project_dir(p)?.display().to_string());
        nets.create(&bulkhead_network::CreateRequest {
            name: name.clone(),
            internal: settings.as_ref().is_some_and(|s| s.internal),
            ipv6: settings.as_ref().is_some_and(|s| s.enable_ipv6),
            labels,
            ..Default::default()
        })
        .with_context(|| format!("network {name}"))?;
        println!("network {name} created");
    }
    prepare_volumes(ctx, p, allow)?;
    // The conversations the file allows, before any container runs.
    let origin = format!("compose {}: ", p.name);
    let rules = policy
        .allow
        .iter()
        .map(|r| bulkhead_network::rules::Rule {
            id: 0,
            action: bulkhead_network::rules::Action::Allow,
            from: bulkhead_network::rules::Selector::Label(SERVICE_LABEL.into(), format!("{}.{}", p.name, r.from)),
            to: bulkhead_network::rules::Selector::Label(SERVICE_LABEL.into(), format!("{}.{}", p.name, r.to)),
            port: Some(r.port),
            proto: Some(r.proto.clone()),
            network: None,
            origin: format!("{origin}{}:{} {}", p.file.display(), r.line, r.because),
            owner: None,
            created: chrono::Utc::now(),
            hits: 0,
        })
        .collect();
    let mut rules: Vec<bulkhead_network::rules::Rule> = rules;
    if policy.learn {
        let project = bulkhead_network::rules::Selector::Label(PROJECT_LABEL.into(), p.name.clone());
        rules.push(bulkhead_network::rules::Rule {
            id: 0,
            action: bulkhead_network::rules::Action::Learn,
            from: project.clone(),
            to: project,
            port: None,
            proto: None,
            network: None,
            origin: format!("{origin}{}: x-bulkhead policy: learn", p.file.display()),
            owner: None,
            created: chrono::Utc::now(),
            hits: 0,
        });
    }
    nets.set_rules_of_origin(&origin, rules)?;
    Ok(())
}

/// `compose policy --learned`: the connections between the project's services that a learn
/// rule let through (the kernel's log, as `network events` reads it), as `x-bulkhead: talks-to`
/// entries per service.
fn learned(ctx: &Ctx, p: &bulkhead_compose::Project) -> anyhow::Result<ExitCode> {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::BufRead;
    let service_of: BTreeMap<String, String> = project_containers(ctx, &p.name)?
        .into_iter()
        .filter_map(|r| {
            let svc = r.labels.get(SERVICE_LABEL)?.split_once('.')?.1.to_owned();
            Some((r.name, svc))
        })
        .collect();
    let mut c = base(ctx)?;
    c.args(["network", "events"]);
    let out = c.stdin(std::process::Stdio::null()).output().context("network events")?;
    if !out.status.success() {
        anyhow::bail!("network events: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut events = 0;
    for line in out.stdout.lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["verdict"] != "learned" {
            continue;
        }
        let svc = |end: &str| v[end]["owner"]["container"].as_str().and_then(|n| service_of.get(n)).cloned();
        let (Some(from), Some(to), Some(port)) = (svc("from"), svc("to"), v["to"]["port"].as_u64()) else {
            continue;
        };
        if from == to {
            continue;
        }
        events += 1;
        let proto = v["protocol"].as_str().unwrap_or("tcp");
        let entry = if proto == "tcp" {
            format!("{to}:{port}")
        } else {
            format!("{to}:{port}/{proto}")
        };
        seen.entry(from).or_default().insert(entry);
    }
    if seen.is_empty() {
        println!(
            "# nothing learned for {}: no connection between its services outside what the file allows was let through (with `x-bulkhead: {{policy: learn}}`, while its containers ran, as far back as the kernel's log keeps)",
            p.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "# {events} connections between the services of {} that the file does not allow; to allow them, add under each service:",
        p.name
    );
    println!("services:");
    for (from, tos) in &seen {
        let list: Vec<String> = tos.iter().map(|t| format!("{t:?}")).collect();
        println!(
            "  {from}:
    x-bulkhead:
      talks-to: [{}]",
            list.join(", ")
        );
    }
    println!("# then remove `policy: learn` from the top-level x-bulkhead to enforce");
    Ok(ExitCode::SUCCESS)
}

/// The project's volumes that its services use: its own made if missing (labelled with the
/// project and its directory); one of that name made otherwise (by hand, by another project) is
/// refused unless the file declares it `external`, which must exist.
fn prepare_volumes(ctx: &Ctx, p: &bulkhead_compose::Project, allow: Allow) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let vols = bulkhead_runtime::volumes::Volumes::open(store.root())?;
    let mine = project_dir(p)?.display().to_string();
    for key in p.model.volumes.0.keys() {
        let (name, external) = volume_name(p, key)?;
        if external {
            let v = vols.get(&name).with_context(|| format!("external volume {name}"))?;
            // Another project's data is not a file's to take: only when the user says so.
            if let Some(owner) = v.labels.get(PROJECT_LABEL) {
                if (owner != &p.name || v.labels.get(DIR_LABEL) != Some(&mine)) && !allow.shared_volumes {
                    anyhow::bail!(
                        "external volume {name} belongs to compose project {owner} (give `--allow-shared-volumes` to share it with this file's containers)"
                    );
                }
            }
            continue;
        }
        match vols.get(&name) {
            Ok(v) => {
                if v.labels.get(PROJECT_LABEL) != Some(&p.name) || v.labels.get(DIR_LABEL) != Some(&mine) {
                    anyhow::bail!(
                        "volume {name} exists and is not this project's (a volume is shared only when the file declares it `external: true`)"
                    );
                }
            }
            Err(_) => {
                let mut labels = std::collections::BTreeMap::new();
                labels.insert(PROJECT_LABEL.to_owned(), p.name.clone());
                labels.insert(DIR_LABEL.to_owned(), mine.clone());
                labels.insert(VOLUME_LABEL.to_owned(), key.clone());
                let (_, made) = vols.create(&name, labels)?;
                if made {
                    println!("volume {name} created");
                }
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn up(ctx: &Ctx, p: &bulkhead_compose::Project, detach: bool, wait: bool, only: &[String], allow: Allow) -> anyhow::Result<ExitCode> {
    use bulkhead_runtime::container::State;
    if !detach {
        return foreground(ctx, p, wait, only, allow);
    }
    let policy = bulkhead_compose::policy::derive(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.file.display()))?;
    for w in &policy.warnings {
        eprintln!("warning: {}: {w}", p.file.display());
    }
    if policy.learn {
        eprintln!(
            "warning: {}: x-bulkhead policy: learn: connections between the services that the file does not allow are let through and recorded, not denied; `compose policy --learned` suggests what to allow",
            p.file.display()
        );
    }
    // What to start: the services asked for and what they depend on, in order.
    for s in only {
        if !p.order.contains(s) {
            anyhow::bail!("no service {s:?} in {}", p.file.display());
        }
    }
    let mut wanted: std::collections::BTreeSet<String> = only.iter().cloned().collect();
    if wanted.is_empty() {
        wanted = p.order.iter().cloned().collect();
    }
    for s in p.order.iter().rev() {
        if wanted.contains(s) {
            if let Some(Some(svc)) = p.model.services.0.get(s) {
                wanted.extend(bulkhead_compose::depends_on(svc));
            }
        }
    }
    // Everything checked before anything is made.
    // (container, its `run` arguments, the networks it joins after its first)
    let mut plan: Vec<Planned> = Vec::new();
    for name in p.order.iter().filter(|s| wanted.contains(*s)) {
        let Some(Some(svc)) = p.model.services.0.get(name) else { continue };
        let replicas = svc.deploy.as_ref().and_then(|d| d.replicas).unwrap_or(1);
        if let Some(d) = &svc.deploy {
            // What only a cluster can do is said (resources are refused by `run_args`).
            for (key, set) in [
                ("mode", d.mode.is_some()),
                ("placement", d.placement.is_some()),
                ("update_config", d.update_config.is_some()),
                ("restart_policy", d.restart_policy.is_some()),
            ] {
                if set {
                    eprintln!("bulkhead: warning: services.{name}.deploy.{key}: honoured by `stack deploy` only");
                }
            }
        }
        if !(0..=100).contains(&replicas) {
            anyhow::bail!("{}: services.{name}.deploy.replicas: {replicas} (0 to 100)", p.file.display());
        }
        for i in 1..=replicas {
            let container = svc.container_name.clone().unwrap_or_else(|| format!("{}-{name}-{i}", p.name));
            let (args, env) = run_args(p, name, svc, &container, replicas, false, allow)?;
            let more: Vec<String> = service_networks(svc)
                .into_iter()
                .skip(1)
                .map(|(n, _, _)| network_name(p, &n))
                .collect();
            plan.push(Planned {
                service: name.clone(),
                container,
                args,
                env,
                more,
            });
        }
    }
    prepare(ctx, p, &policy, allow)?;
    // Containers, each service after what it depends on.
    let existing = project_containers(ctx, &p.name)?;
    let mut waited: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for Planned {
        service,
        container,
        args,
        env,
        more,
    } in &plan
    {
        // Its conditions on what it depends on (once per service): healthy, or done well.
        if waited.insert(service.clone()) {
            if let Some(Some(svc)) = p.model.services.0.get(service) {
                if let bulkhead_compose::types::DependsOnOptions::Conditional(m) = &svc.depends_on {
                    for (dep, c) in m {
                        match wait_condition(ctx, p, dep, &c.condition) {
                            Ok(()) => {}
                            // `required: false`: a dependency that does not come up is a warning.
                            Err(e) if c.required == Some(false) => {
                                eprintln!("warning: {service}: {e} (not required: going on)");
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
        match existing.iter().find(|r| r.name == *container) {
            Some(r) if matches!(r.state, State::Running { .. }) => {
                println!("{container} running");
                continue;
            }
            Some(_) => {
                bulkhead(ctx, &["start".into(), container.clone()])?;
            }
            None => {
                with_env(args, env, |args| bulkhead(ctx, args))?;
                for net in more {
                    bulkhead(ctx, &["network".into(), "connect".into(), net.clone(), container.clone()])?;
                }
            }
        }
        println!("{container} started");
    }
    if wait {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let now = project_containers(ctx, &p.name)?;
            let store = ctx.store()?;
            let cs = bulkhead_runtime::container::Containers::open(&store)?;
            // Running, and healthy where it has a healthcheck.
            let ready = |r: &bulkhead_runtime::container::ContainerRecord| {
                matches!(r.state, State::Running { .. })
                    && (r.healthcheck.is_none() || crate::container_cmd::health_of(&cs, r).is_some_and(|h| h.status == "healthy"))
            };
            if let Some(r) = now
                .iter()
                .find(|r| crate::container_cmd::health_of(&cs, r).is_some_and(|h| h.status == "unhealthy"))
            {
                anyhow::bail!("{} is unhealthy", r.name);
            }
            let waiting: Vec<&str> = plan
                .iter()
                .filter(|x| !now.iter().any(|r| r.name == x.container && ready(r)))
                .map(|x| x.container.as_str())
                .collect();
            if waiting.is_empty() {
                break;
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("not running after 60 s: {}", waiting.join(", "));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `up` without `-d`, as docker compose does it: the services come up, their output follows,
/// and Ctrl-C (or SIGTERM) stops them; it returns when they have all stopped.
fn foreground(ctx: &Ctx, p: &bulkhead_compose::Project, wait: bool, only: &[String], allow: Allow) -> anyhow::Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("signal handler")?;
    }
    let code = up(ctx, p, true, wait, only, allow)?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let services: Vec<String> = only.to_vec();
    // The followers are in a process group of their own: a Ctrl-C at the terminal is ours to
    // act on, and they go on printing while the services stop.
    std::thread::scope(|scope| {
        let follow = scope.spawn(|| logs_grouped(ctx, p, true, None, &services, true));
        while !follow.is_finished() {
            if stop.load(Ordering::Relaxed) {
                eprintln!("stopping {}", p.name);
                each(ctx, p, &services, &["stop"])?;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = follow.join();
        Ok(ExitCode::SUCCESS)
    })
}

fn rand32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom(2) writes at most 4 bytes into the buffer we own.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u32::from_ne_bytes(b)
}

fn service_of<'a>(p: &'a bulkhead_compose::Project, name: &str) -> anyhow::Result<&'a bulkhead_compose::types::Service> {
    p.model
        .services
        .0
        .get(name)
        .and_then(Option::as_ref)
        .ok_or_else(|| anyhow::anyhow!("no service {name:?} in {}", p.file.display()))
}

/// The project's containers of `services` (all when empty), checked to be services of the file.
fn containers_of(
    ctx: &Ctx,
    p: &bulkhead_compose::Project,
    services: &[String],
) -> anyhow::Result<Vec<bulkhead_runtime::container::ContainerRecord>> {
    check_owner(ctx, p)?;
    for s in services {
        service_of(p, s)?;
    }
    Ok(project_containers(ctx, &p.name)?
        .into_iter()
        .filter(|r| {
            services.is_empty()
                || r.labels
                    .get(SERVICE_LABEL)
                    .is_some_and(|l| services.iter().any(|s| *l == format!("{}.{s}", p.name)))
        })
        .collect())
}

fn first_container(ctx: &Ctx, p: &bulkhead_compose::Project, service: &str) -> anyhow::Result<String> {
    containers_of(ctx, p, &[service.to_owned()])?
        .into_iter()
        .map(|r| r.name)
        .next()
        .ok_or_else(|| anyhow::anyhow!("service {service} has no container (compose up first)"))
}

/// `bulkhead ARGS` with this terminal (exec, run): its exit status becomes ours.
fn passthrough(ctx: &Ctx, args: &[String]) -> anyhow::Result<ExitCode> {
    let st = base(ctx)?.args(args).status().context("bulkhead")?;
    Ok(ExitCode::from(st.code().unwrap_or(1).clamp(0, 255) as u8))
}

/// `bulkhead VERB NAME` for each container of `services`.
/// `services`, then every service that depends on one of them with `restart: true` (and so on),
/// in start order.
fn with_restarting_dependents(p: &bulkhead_compose::Project, services: &[String]) -> Vec<String> {
    let mut set: std::collections::BTreeSet<String> = services.iter().cloned().collect();
    loop {
        let before = set.len();
        for (name, svc) in &p.model.services.0 {
            if let Some(bulkhead_compose::types::DependsOnOptions::Conditional(m)) = svc.as_ref().map(|s| &s.depends_on) {
                if m.iter().any(|(dep, c)| c.restart == Some(true) && set.contains(dep)) {
                    set.insert(name.clone());
                }
            }
        }
        if set.len() == before {
            break;
        }
    }
    p.order.iter().filter(|s| set.contains(*s)).cloned().collect()
}

fn each(ctx: &Ctx, p: &bulkhead_compose::Project, services: &[String], verb: &[&str]) -> anyhow::Result<ExitCode> {
    for r in containers_of(ctx, p, services)? {
        let mut a: Vec<String> = verb.iter().map(|s| s.to_string()).collect();
        a.push(r.id.clone());
        bulkhead(ctx, &a)?;
        println!("{} {}", r.name, verb[0]);
    }
    Ok(ExitCode::SUCCESS)
}

fn logs(ctx: &Ctx, p: &bulkhead_compose::Project, follow: bool, tail: Option<usize>, services: &[String]) -> anyhow::Result<ExitCode> {
    logs_grouped(ctx, p, follow, tail, services, false)
}

/// `logs`; with `own_group`, the followers are in a process group of their own.
fn logs_grouped(
    ctx: &Ctx,
    p: &bulkhead_compose::Project,
    follow: bool,
    tail: Option<usize>,
    services: &[String],
    own_group: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let list = containers_of(ctx, p, services)?;
    let width = list.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let out = std::sync::Arc::new(std::sync::Mutex::new(()));
    let mut threads = Vec::new();
    for r in list {
        let mut c = base(ctx)?;
        c.arg("logs");
        if follow {
            c.arg("-f");
        }
        if let Some(t) = tail {
            c.args(["--tail", &t.to_string()]);
        }
        if own_group {
            c.process_group(0);
        }
        let mut child = c
            .arg(&r.id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("bulkhead logs")?;
        let stdout = child.stdout.take().expect("piped");
        let out = out.clone();
        let name = r.name.clone();
        threads.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _one = out.lock();
                println!("{name:width$} | {line}");
            }
            let _ = child.wait();
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

/// `network events`, only the denials that name a container of the project at either end.
fn events(ctx: &Ctx, p: &bulkhead_compose::Project, follow: bool) -> anyhow::Result<ExitCode> {
    use std::io::BufRead;
    let names: Vec<String> = project_containers(ctx, &p.name)?.into_iter().map(|r| r.name).collect();
    let mut c = base(ctx)?;
    c.args(["network", "events"]);
    if follow {
        c.arg("-f");
    }
    let mut child = c
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("network events")?;
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let ours = |end: &str| v[end]["owner"]["container"].as_str().is_some_and(|n| names.iter().any(|x| x == n));
        if ours("from") || ours("to") {
            println!("{line}");
        }
    }
    let _ = child.wait();
    Ok(ExitCode::SUCCESS)
}

/// Networks and rules as `up` makes them (for `run` before `up`).
fn ensure_networks_and_rules(ctx: &Ctx, p: &bulkhead_compose::Project, allow: Allow) -> anyhow::Result<()> {
    prepare(
        ctx,
        p,
        &bulkhead_compose::policy::derive(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.file.display()))?,
        allow,
    )
}

fn down(ctx: &Ctx, p: &bulkhead_compose::Project, volumes: bool) -> anyhow::Result<ExitCode> {
    check_owner(ctx, p)?;
    for r in project_containers(ctx, &p.name)? {
        bulkhead(ctx, &["rm".into(), "-f".into(), r.id.clone()])?;
        println!("{} removed", r.name);
    }
    let nets = bulkhead_network::Networks::open(&ctx.root, &ctx.config)?;
    nets.set_rules_of_origin(&format!("compose {}: ", p.name), Vec::new())?;
    // A network another container still uses (one run by hand on it) stays, with a line; the
    // rest of down goes on.
    let mut left = false;
    for n in nets.list()? {
        if n.labels.get(PROJECT_LABEL) == Some(&p.name) {
            match nets.remove(&n.name) {
                Ok(_) => println!("network {} removed", n.name),
                Err(e) => {
                    eprintln!("bulkhead: error: network {}: {e}", n.name);
                    left = true;
                }
            }
        }
    }
    if volumes {
        // The project's own volumes; an external one is not the project's to remove.
        let store = ctx.store()?;
        let cs = bulkhead_runtime::container::Containers::open(&store)?;
        let vols = bulkhead_runtime::volumes::Volumes::open(store.root())?;
        let _lock = cs.lock()?;
        for v in vols.list()? {
            if v.labels.get(PROJECT_LABEL) == Some(&p.name) {
                match vols.remove(&v.name, &cs.volume_users(&v.name)?) {
                    Ok(()) => println!("volume {} removed", v.name),
                    Err(e) => {
                        eprintln!("bulkhead: error: {e}");
                        left = true;
                    }
                }
            }
        }
    }
    Ok(if left { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn ps(ctx: &Ctx, p: &bulkhead_compose::Project, all: bool) -> anyhow::Result<ExitCode> {
    use bulkhead_runtime::container::State;
    let list: Vec<_> = project_containers(ctx, &p.name)?
        .into_iter()
        .filter(|r| all || matches!(r.state, State::Running { .. }))
        .collect();
    match ctx.output()? {
        Output::Json => json(&serde_json::to_value(&list)?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    let service = r
                        .labels
                        .get(SERVICE_LABEL)
                        .and_then(|s| s.split_once('.'))
                        .map_or("", |(_, s)| s)
                        .to_owned();
                    let status = match &r.state {
                        State::Created => "created".to_owned(),
                        State::Running { .. } => "running".to_owned(),
                        State::Exited { code, .. } => format!("exited ({code})"),
                    };
                    vec![r.name.clone(), service, r.image.clone(), status]
                })
                .collect();
            table(&["NAME", "SERVICE", "IMAGE", "STATUS"], &rows)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
