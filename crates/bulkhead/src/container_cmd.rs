//! Container commands: run, ps, rm, inspect, diff.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_runtime::container::{Containers, State};
use bulkhead_runtime::engine::{CreateRequest, Runtime};
use bulkhead_runtime::executor::Executor;
use bulkhead_runtime::lifecycle;
use bulkhead_runtime::profile::{Network, Seccomp, SecurityProfile, UserNs};
use bulkhead_runtime::spec::{ProcessOverrides, Resources};
use clap::Args;

use crate::output::{ago, json, table, Output};
use crate::Ctx;

/// Exit status for errors of bulkhead itself, as Docker's 125.
pub const ENGINE_ERROR: u8 = 125;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A task of a stack, made by the cluster's agent: it may carry the stack's service label
    /// (which its stack's rules select) and share its service's names with its replicas.
    #[arg(skip)]
    pub(crate) stack_task: bool,
    /// Run in the background and print the container id (logs go to `bulkhead logs`).
    #[arg(short, long)]
    detach: bool,
    /// Give the container a pseudo-terminal (made in its own devpts).
    #[arg(short, long)]
    tty: bool,
    /// Keep standard input open (it always is in the foreground; accepted for Docker's habits).
    #[arg(short, long)]
    interactive: bool,
    /// Run a small init as PID 1 that reaps zombies and forwards signals to the command.
    #[arg(long)]
    init: bool,
    /// Start it again when it exits: no, always, unless-stopped, on-failure[:N] (with backoff
    /// from 100 ms; never after `stop`).
    #[arg(long, default_value = "no")]
    restart: String,
    /// A command (run with /bin/sh -c in the container) that says whether it is healthy.
    #[arg(long, conflicts_with = "health_cmd_exec")]
    health_cmd: Option<String>,
    /// The same as a JSON array run as it is, without a shell (compose's `["CMD", ...]`).
    #[arg(long)]
    health_cmd_exec: Option<String>,
    /// How often (30s, 500ms, 1m): default 30s.
    #[arg(long, default_value = "30s")]
    health_interval: String,
    /// How long a check may take: default 30s.
    #[arg(long, default_value = "30s")]
    health_timeout: String,
    /// Failures in a row that make it unhealthy: default 3.
    #[arg(long, default_value_t = 3)]
    health_retries: u32,
    /// Failures in this time after a start do not count: default 0s.
    #[arg(long, default_value = "0s")]
    health_start_period: String,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// The signal `stop` sends first (default: the image's StopSignal, else SIGTERM).
    #[arg(long)]
    stop_signal: Option<String>,
    /// Seconds `stop` waits before SIGKILL (default 10).
    #[arg(long)]
    stop_timeout: Option<u64>,
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
    /// A label KEY=VALUE (shown by inspect).
    #[arg(short, long)]
    label: Vec<String>,
    /// A resource limit NAME=SOFT[:HARD] (nofile, nproc, core, stack, memlock, ...).
    #[arg(long)]
    ulimit: Vec<String>,
    /// Bind-mount a host path, HOST:CONTAINER[:ro][,idmap], or mount a named volume,
    /// NAME:CONTAINER[:ro] (made if missing); always nosuid, nodev.
    #[arg(short, long)]
    volume: Vec<String>,
    /// type=bind,source=S,target=T[,readonly], type=volume,source=NAME,target=T[,readonly] or
    /// type=tmpfs,target=T[,tmpfs-size=N][,tmpfs-mode=M].
    #[arg(long)]
    mount: Vec<String>,
    /// A secret: src=HOST_FILE,target=NAME|/PATH[,uid=N,gid=N,mode=0400]. Read at each start into
    /// memory, mounted read-only at /run/secrets/NAME, owned by the container's user; never in
    /// the environment or the container's layer.
    #[arg(long)]
    secret: Vec<String>,
    /// A config file: src=HOST_FILE,target=/PATH[,uid=N,gid=N,mode=0444], as a secret is
    /// (`--config` is the global flag for bulkhead's own configuration).
    #[arg(long)]
    config_file: Vec<String>,
    /// A tmpfs: CONTAINER[:size=N,mode=M].
    #[arg(long)]
    tmpfs: Vec<String>,
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
    /// A network's name (default: the network `bulkhead`, made on first use), none (loopback
    /// only), or host (warns).
    #[arg(long, default_value = bulkhead_network::DEFAULT_NETWORK)]
    network: String,
    /// NAME[:PORT[/PROTO]]: NAME (a container, alias or KEY=VALUE label) may reach this container
    /// (on PORT only, if given). Repeatable; the rule goes with the container.
    #[arg(long)]
    allow_from: Vec<String>,
    /// NAME[:PORT[/PROTO]]: this container may reach NAME. Repeatable.
    #[arg(long)]
    allow_to: Vec<String>,
    /// Its IPv4 address on its network (default: the lowest free one).
    #[arg(long)]
    ip: Option<std::net::Ipv4Addr>,
    /// Another name for the container on its network (repeatable).
    #[arg(long)]
    network_alias: Vec<String>,
    /// Publish a port: [IP:][HOST:]CONTAINER[/tcp|udp] (no HOST: a free port). Repeatable.
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Publish every port the image EXPOSEs, each on a free host port.
    #[arg(short = 'P', long)]
    publish_all: bool,
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

pub(crate) fn parse_bytes(s: &str) -> anyhow::Result<i64> {
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
        n => {
            bulkhead_network::valid_name(n)?;
            p.network = Network::Bridge
        }
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

/// A duration as Docker and compose write them: `1m30s`, `500ms`, `10s`, `2h` (a bare number is
/// seconds); in milliseconds.
pub fn parse_duration_ms(s: &str) -> anyhow::Result<u64> {
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    if s.trim().chars().all(|c| c.is_ascii_digit()) && !s.trim().is_empty() {
        return Ok(s.trim().parse::<u64>()?.saturating_mul(1000));
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push(chars.next().expect("peeked"));
        }
        let n: f64 = num
            .parse()
            .map_err(|_| anyhow::anyhow!("{s:?}: not a duration such as 30s or 500ms"))?;
        num.clear();
        let ms = match unit.as_str() {
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => bail!("{s:?}: not a duration such as 30s or 500ms"),
        };
        total = total.saturating_add((n * ms) as u64);
    }
    if !num.is_empty() || total == 0 && !s.trim().starts_with('0') {
        bail!("{s:?}: not a duration such as 30s or 500ms");
    }
    Ok(total)
}

/// The hidden `health-loop`: runs container `id`'s healthcheck on its interval while this start
/// of it (first process `pid`) runs, and keeps what it finds in `health.json` beside its record.
pub fn health_loop(ctx: &Ctx, id: &str, pid: i32) -> anyhow::Result<ExitCode> {
    use bulkhead_runtime::container::{Health, HealthRun};
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    let rec = cs.load(id)?;
    let Some(hc) = rec.healthcheck.clone() else {
        return Ok(ExitCode::SUCCESS);
    };
    let dir = cs.dir(id);
    let path = dir.join("health.json");
    let write = |h: &Health| -> anyhow::Result<()> {
        // Only while the container's directory is there (never one `rm` is taking away), through
        // a temporary file of its own.
        if !dir.is_dir() {
            return Ok(());
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        std::io::Write::write_all(&mut tmp, &serde_json::to_vec(h)?)?;
        tmp.persist(&path)?;
        Ok(())
    };
    let began = std::time::Instant::now();
    let mut health = Health {
        pid,
        status: "starting".into(),
        ..Default::default()
    };
    write(&health)?;
    let exe = std::env::current_exe().context("this program's path")?;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(hc.interval_ms));
        let still = cs
            .load(id)
            .ok()
            .is_some_and(|r| matches!(r.state, State::Running { pid: p, .. } if p == pid));
        if !still {
            return Ok(ExitCode::SUCCESS);
        }
        let start = chrono::Utc::now();
        let mut child = std::process::Command::new(&exe)
            .arg("--root")
            .arg(&ctx.root)
            .arg("exec")
            .arg("--kill-on-exit")
            .arg(id)
            // Nothing of the test is read as an option of `exec` (or of bulkhead).
            .arg("--")
            .args(&hc.test)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running the healthcheck")?;
        // Its output is drained as it comes (never blocking: what the test leaves running in
        // the container may hold the pipes open), 4 KiB kept.
        let outs: Vec<std::os::fd::OwnedFd> = [
            child.stdout.take().map(std::os::fd::OwnedFd::from),
            child.stderr.take().map(std::os::fd::OwnedFd::from),
        ]
        .into_iter()
        .flatten()
        .collect();
        for fd in &outs {
            let _ = rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::NONBLOCK);
        }
        let mut kept: Vec<u8> = Vec::new();
        let drain = |kept: &mut Vec<u8>| {
            let mut buf = [0u8; 4096];
            for fd in &outs {
                while let Ok(n) = rustix::io::read(fd, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    let room = 4096usize.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(hc.timeout_ms);
        let code = loop {
            drain(&mut kept);
            if let Some(st) = child.try_wait()? {
                drain(&mut kept);
                break st.code().unwrap_or(-1);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break -1;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut output = String::from_utf8_lossy(&kept).into_owned();
        if code == -1 && output.is_empty() {
            output = format!("timed out after {} ms", hc.timeout_ms);
        }
        health.log.push(HealthRun {
            start,
            end: chrono::Utc::now(),
            exit_code: code,
            output: output.chars().take(4096).collect(),
        });
        if health.log.len() > 5 {
            health.log.remove(0);
        }
        if code == 0 {
            health.failing_streak = 0;
            health.status = "healthy".into();
        } else if began.elapsed() >= std::time::Duration::from_millis(hc.start_period_ms) {
            health.failing_streak += 1;
            if health.failing_streak >= hc.retries {
                health.status = "unhealthy".into();
            }
        }
        write(&health)?;
    }
}

/// A container's health as its loop last wrote it (None: no healthcheck, or not yet).
pub fn health_of(cs: &Containers, r: &bulkhead_runtime::container::ContainerRecord) -> Option<bulkhead_runtime::container::Health> {
    r.healthcheck.as_ref()?;
    let State::Running { pid, .. } = r.state else { return None };
    let d = std::fs::read(cs.dir(&r.id).join("health.json")).ok()?;
    let h: bulkhead_runtime::container::Health = serde_json::from_slice(&d).ok()?;
    // Another start's health is not this one's.
    (h.pid == pid).then_some(h)
}

/// An env file: a regular file (not a FIFO to block on, not a device), at most 1 MiB.
pub(crate) fn read_env_file(p: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if md.len() > 1 << 20 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "larger than 1 MiB"));
    }
    let mut s = String::new();
    f.take(1 << 20).read_to_string(&mut s)?;
    Ok(s)
}

fn request(a: &RunArgs, auto_remove: bool) -> anyhow::Result<CreateRequest> {
    let profile = profile_from(a)?;
    let executor = Executor::from_flag(a.runtime.as_deref())?;
    let mut env = Vec::new();
    for f in &a.env_file {
        let text = read_env_file(f).with_context(|| format!("reading {}", f.display()))?;
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
        terminal: a.tty,
        hostname: a.hostname.clone(),
    };
    let ulimits = a
        .ulimit
        .iter()
        .map(|u| bulkhead_runtime::spec::parse_ulimit(u))
        .collect::<Result<Vec<_>, _>>()?;
    let resources = Resources {
        memory: a.memory.as_deref().map(parse_bytes).transpose()?,
        cpus: a.cpus,
        ulimits,
    };
    let mut labels = std::collections::BTreeMap::new();
    for l in &a.label {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            bail!("--label {l:?}: expected KEY=VALUE");
        }
        // Which compose project and service a container belongs to decides its rules and the
        // names it may share: set by `compose` alone.
        let agents = a.stack_task && (k == crate::agent_exec::STACK_SERVICE_LABEL);
        let composes = k.starts_with("bulkhead.compose.") && std::env::var_os(crate::compose_cmd::COMPOSE_CHILD).is_some();
        if k.starts_with("bulkhead.") && !agents && !composes {
            bail!("--label {k}: labels starting with `bulkhead.` are bulkhead's own");
        }
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok(CreateRequest {
        labels,
        image: a.image.clone(),
        name: a.name.clone(),
        overrides,
        user: a.user.clone(),
        profile,
        resources,
        executor,
        auto_remove,
        healthcheck: {
            let test = match (&a.health_cmd, &a.health_cmd_exec) {
                (Some(cmd), _) => Some(vec!["/bin/sh".into(), "-c".into(), cmd.clone()]),
                (None, Some(json)) => {
                    let v: Vec<String> = serde_json::from_str(json).context("--health-cmd-exec: a JSON array of strings")?;
                    if v.first().is_none_or(|p| p.is_empty() || p.starts_with('-')) {
                        bail!("--health-cmd-exec {json}: a program first");
                    }
                    Some(v)
                }
                (None, None) => None,
            };
            // Between 100 ms and a day: a check neither hammers the host nor sleeps for ever.
            let bounded = |v: &str, what: &str| -> anyhow::Result<u64> {
                let ms = parse_duration_ms(v).with_context(|| what.to_owned())?;
                if ms > 86_400_000 {
                    bail!("{what} {v}: at most 24h");
                }
                Ok(ms)
            };
            match test {
                None => None,
                Some(test) => Some(bulkhead_runtime::container::Healthcheck {
                    test,
                    interval_ms: bounded(&a.health_interval, "--health-interval")?.max(100),
                    timeout_ms: bounded(&a.health_timeout, "--health-timeout")?.max(100),
                    retries: a.health_retries.clamp(1, 1000),
                    start_period_ms: bounded(&a.health_start_period, "--health-start-period")?,
                }),
            }
        },
        restart: {
            let r = bulkhead_runtime::lifecycle::restart_policy(&a.restart)?;
            if r.is_some() && auto_remove {
                bail!(
                    "--restart {} and --rm: a container removed when it exits cannot be started again",
                    a.restart
                );
            }
            r
        },
        open_stdin: a.interactive,
        init: a.init,
        mounts: {
            use bulkhead_runtime::mounts::{parse_mount, parse_tmpfs, parse_volume};
            let mut m = Vec::new();
            for v in &a.volume {
                m.push(parse_volume(v)?);
            }
            for v in &a.mount {
                m.push(parse_mount(v)?);
            }
            for v in &a.tmpfs {
                m.push(parse_tmpfs(v)?);
            }
            m
        },
        files: {
            let mut f = Vec::new();
            // Sources resolved once, now: each start reads that very path, following no link.
            for (v, secret) in a.secret.iter().map(|s| (s, true)).chain(a.config_file.iter().map(|c| (c, false))) {
                let mut file = bulkhead_runtime::files::parse(v, secret)?;
                bulkhead_runtime::files::resolve_source(&mut file)?;
                f.push(file);
            }
            f
        },
        stop_signal: a.stop_signal.clone(),
        stop_timeout: a.stop_timeout,
        ports: {
            for p in &a.publish {
                bulkhead_network::ports::PortSpec::parse(p)?;
            }
            if (!a.publish.is_empty() || a.publish_all) && matches!(a.network.as_str(), "none" | "host") {
                bail!("-p/-P: a container on --network {} has no ports to publish", a.network);
            }
            a.publish.clone()
        },
        publish_all: a.publish_all,
        ip: {
            if a.ip.is_some() && matches!(a.network.as_str(), "none" | "host") {
                bail!("--ip: a container on --network {} has no address of its own", a.network);
            }
            a.ip
        },
        aliases: {
            for al in &a.network_alias {
                if !matches!(
                    bulkhead_network::rules::Selector::parse(al)?,
                    bulkhead_network::rules::Selector::Name(_)
                ) {
                    bail!("--network-alias {al:?}: letters, digits, '_', '.', '-'");
                }
            }
            a.network_alias.clone()
        },
        // The replicas of a compose service, or of a stack's service on this node, share its names.
        alias_group_label: Some(if a.stack_task {
            crate::agent_exec::STACK_SERVICE_LABEL.to_owned()
        } else {
            crate::compose_cmd::SERVICE_LABEL.to_owned()
        }),
        networks: match a.network.as_str() {
            "none" | "host" => Vec::new(),
            "bridge" => vec![bulkhead_network::DEFAULT_NETWORK.to_owned()],
            n => vec![n.to_owned()],
        },
    })
}

pub(crate) fn create_container(
    ctx: &Ctx,
    a: &RunArgs,
    auto_remove: bool,
) -> anyhow::Result<(Runtime, bulkhead_runtime::container::ContainerRecord)> {
    let store = ctx.store()?;
    pull_if_missing(ctx, &store, &a.image)?;
    crate::scan_cmd::gate(ctx, &store, &a.image)?;
    let req = request(a, auto_remove)?;
    crate::network_cmd::ensure_networks(ctx, &req.networks)?;
    if !a.stack_task {
        crate::network_cmd::refuse_stack_networks(ctx, &req.networks)?;
    }
    // A compose project's volume is its containers' (and those of files that share it, asked
    // with --allow-shared-volumes), not any container's that names it.
    let vols = bulkhead_runtime::volumes::Volumes::open(store.root())?;
    for m in &req.mounts {
        if let bulkhead_runtime::mounts::UserMount::Volume { name, .. } = m {
            let owner = vols
                .get(name)
                .ok()
                .and_then(|v| v.labels.get(crate::compose_cmd::PROJECT_LABEL).cloned());
            if let Some(owner) = owner {
                if !req.labels.contains_key(crate::compose_cmd::PROJECT_LABEL) {
                    bail!("volume {name} belongs to compose project {owner}: mount it from a compose file (external), not with run -v");
                }
            }
        }
    }
    let rt = Runtime::new(store)?;
    let rec = rt.create(req)?;
    if let Err(e) = crate::network_cmd::container_rules(ctx, &rec.id, &rec.name, &a.allow_from, &a.allow_to) {
        let _ = rt.remove(&rec.id, true);
        return Err(e);
    }
    for w in &rec.warnings {
        eprintln!("bulkhead: warning: {w}");
    }
    Ok((rt, rec))
}

/// `run`/`create` of an image the store does not have pull it first, as Docker does. The pull runs
/// in a child process: this one may create the container itself, and must still be single-threaded
/// then (the registry client is not).
pub(crate) fn pull_if_missing(ctx: &Ctx, store: &bulkhead_image::Store, image: &str) -> anyhow::Result<()> {
    // A tag the trust policy covers is verified on every run (the pull is quick when the signed
    // image is in the store, and re-tags the name if it points elsewhere).
    let covered = bulkhead_image::Reference::parse(image)
        .ok()
        .map(|r| crate::trust_cmd::covers(ctx, &r))
        .transpose()?
        .unwrap_or(false);
    match store.resolve(image) {
        Ok(_) if !covered => return Ok(()),
        Ok(_) => {}
        Err(bulkhead_image::Error::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // Only a name can be pulled (not an image id).
    let Ok(reference) = bulkhead_image::Reference::parse(image) else {
        return Ok(());
    };
    if !covered {
        eprintln!("Unable to find image '{reference}' locally");
    }
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg("--root").arg(&ctx.root).arg("--config").arg(&ctx.config);
    if let Some(p) = &ctx.policy {
        cmd.arg("--policy").arg(p);
    }
    if let Some(t) = ctx.lock_timeout {
        cmd.arg("--lock-timeout").arg(t.to_string());
    }
    if ctx.quiet {
        cmd.arg("-q");
    }
    let status = cmd
        .args(["pull", image])
        .stdout(std::process::Stdio::null())
        .status()
        .context("starting the pull")?;
    if !status.success() {
        // `run real/nginx` means real/nginx:latest, as in Docker: say so when the store has the
        // repository under other tags.
        let others: Vec<String> = store
            .refs()
            .unwrap_or_default()
            .keys()
            .filter_map(|k| bulkhead_image::Reference::parse(k).ok())
            .filter(|r| r.name() == reference.name() && r.tag() != reference.tag())
            .map(|r| format!("{}:{}", r.familiar_name(), r.tag().unwrap_or("latest")))
            .collect();
        if !others.is_empty() && !image.contains(':') {
            bail!(
                "cannot run {image}: the pull of {reference} failed; the store has {} (a name without a tag means :latest)",
                others.join(", ")
            );
        }
        bail!("cannot run {image}: the pull failed");
    }
    Ok(())
}

/// `bulkhead create`: a container with its root filesystem and bundle, not started.
pub fn create_cmd(ctx: &Ctx, a: RunArgs) -> anyhow::Result<ExitCode> {
    let (rt, rec) = create_container(ctx, &a, a.rm)?;
    // A created container is started by `start`, which mounts its root filesystem again.
    rt.containers().unmount_rootfs(&rec.id)?;
    println!("{}", rec.id);
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead run`: create and run; in the foreground exits with the container's status, with -d
/// leaves it to its shim and prints its id.
pub fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<ExitCode> {
    let (rt, mut rec) = create_container(ctx, &a, a.rm)?;
    if a.detach {
        rt.start(&rec.id)?;
        println!("{}", rec.id);
        return Ok(ExitCode::SUCCESS);
    }
    let executor = Executor::from_flag(a.runtime.as_deref())?;
    let result = rt.run_foreground(&mut rec, &executor);
    if a.rm {
        if let Err(e) = rt.remove(&rec.id, true) {
            eprintln!("bulkhead: warning: removing {}: {e}", rec.name);
        }
    }
    let exit = result?;
    Ok(ExitCode::from(exit.code.clamp(0, 255) as u8))
}

/// `bulkhead start`: (re)start stopped or created containers under a new shim.
pub fn start(ctx: &Ctx, names: &[String]) -> anyhow::Result<ExitCode> {
    let rt = Runtime::new(ctx.store()?)?;
    for n in names {
        rt.start(n)?;
        println!("{n}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stop(ctx: &Ctx, names: &[String], timeout: Option<u64>) -> anyhow::Result<ExitCode> {
    let rt = Runtime::new(ctx.store()?)?;
    for n in names {
        rt.stop(n, timeout.map(std::time::Duration::from_secs))?;
        println!("{n}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn kill(ctx: &Ctx, names: &[String], sig: &str) -> anyhow::Result<ExitCode> {
    let rt = Runtime::new(ctx.store()?)?;
    let sig = lifecycle::parse_signal(sig)?;
    for n in names {
        rt.kill(n, sig)?;
        println!("{n}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn wait(ctx: &Ctx, names: &[String]) -> anyhow::Result<ExitCode> {
    let rt = Runtime::new(ctx.store()?)?;
    for n in names {
        let rec = rt.wait(n, None)?;
        match rec.state {
            State::Exited { code, .. } => println!("{code}"),
            _ => println!("0"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    container: String,
    /// Keep printing new output until the container exits.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<usize>,
    /// Only records at or after this time (RFC 3339, or a duration like 10m, 2h).
    #[arg(long)]
    since: Option<String>,
    /// Check the hash chain instead of printing: detects edited, removed or cut-off records.
    #[arg(long)]
    verify: bool,
}

fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .with_context(|| format!("--since {s:?}: a time (RFC 3339) or a duration (30s, 10m, 2h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("--since {s:?}: unknown unit {unit:?} (s, m, h)"),
    };
    Ok(chrono::Utc::now() - chrono::Duration::seconds(secs))
}

pub fn logs(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let rt = Runtime::new(ctx.store()?)?;
    let rec = rt.containers().find(&a.container)?;
    let dir = rt.containers().dir(&rec.id).join("logs");
    if a.verify {
        let n = bulkhead_runtime::logs::verify(&dir)?;
        println!("{n} records verified: the log is complete and unaltered");
        return Ok(ExitCode::SUCCESS);
    }
    let since = a.since.as_deref().map(parse_since).transpose()?;
    let print = |recs: &[bulkhead_runtime::logs::Record]| -> anyhow::Result<()> {
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        for r in recs {
            if since.is_some_and(|s| chrono::DateTime::parse_from_rfc3339(&r.time).map(|t| t < s).unwrap_or(false)) {
                continue;
            }
            if r.stream == "stderr" {
                err.write_all(r.log.as_bytes())?;
            } else {
                out.write_all(r.log.as_bytes())?;
            }
        }
        out.flush()?;
        Ok(())
    };
    let mut follower = rt.logs(&rec.id)?;
    let all = follower.poll()?;
    let start = a.tail.map_or(0, |t| all.len().saturating_sub(t));
    print(&all[start..])?;
    if !a.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // From here on only what was written since the last poll is read.
    loop {
        let running = rt.is_running(&rt.status(&rec.id)?);
        print(&follower.poll()?)?;
        if !running {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Give the process a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// Keep standard input open (it always is; accepted for Docker's habits).
    #[arg(short, long)]
    interactive: bool,
    /// Set an environment variable (KEY=VALUE).
    #[arg(short, long)]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// USER[:GROUP], resolved in the container's /etc/passwd and /etc/group.
    #[arg(short, long)]
    user: Option<String>,
    /// The process dies with this command (used by healthchecks, whose test is killed at its
    /// timeout).
    #[arg(long, hide = true)]
    kill_on_exit: bool,
    container: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `bulkhead exec`: a process in a running container, with the container's restrictions.
pub fn exec(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    let rec = lifecycle::refresh(&cs, cs.find(&a.container)?)?;
    if !lifecycle::is_running(&rec) {
        bail!("container {} is not running", rec.name);
    }
    if let Some(w) = &a.workdir {
        bulkhead_runtime::run::check_workdir(w)?;
    }
    let (uid, gid) = match &a.user {
        Some(u) => {
            let r = bulkhead_runtime::user::resolve(&cs.rootfs(&rec.id), u)?;
            (Some(r.uid), Some(r.gid))
        }
        None => (None, None),
    };
    for e in &a.env {
        if !e.contains('=') {
            bail!("-e {e:?}: expected KEY=VALUE");
        }
    }
    let req = bulkhead_runtime::executor::ExecRequest {
        args: a.command.clone(),
        env: a.env.clone(),
        cwd: a.workdir.clone(),
        uid,
        gid,
        tty: a.tty,
        kill_with_client: a.kill_on_exit,
    };
    let code = bulkhead_runtime::exec::exec(&cs, &rec, &req)?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// `bulkhead top`: the processes of a running container (host pids, container uids).
pub fn top(ctx: &Ctx, name: &str) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    let rec = lifecycle::refresh(&cs, cs.find(name)?)?;
    if !lifecycle::is_running(&rec) {
        bail!("container {} is not running", rec.name);
    }
    let procs = bulkhead_runtime::inspect_fs::top(&rec)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    match ctx.output()? {
        Output::Json => json(&serde_json::json!(procs
            .iter()
            .map(|p| serde_json::json!({"UID": p.uid, "PID": p.pid, "PPID": p.ppid, "CPUSeconds": p.ticks / hz, "CMD": p.command}))
            .collect::<Vec<_>>()))?,
        Output::Table => {
            let rows: Vec<Vec<String>> = procs
                .iter()
                .map(|p| {
                    let s = p.ticks / hz;
                    vec![
                        p.uid.to_string(),
                        p.pid.to_string(),
                        p.ppid.to_string(),
                        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60),
                        p.command.clone(),
                    ]
                })
                .collect();
            table(&["UID", "PID", "PPID", "TIME", "CMD"], &rows)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead export`: the container's filesystem as a tar, to a file or stdout.
pub fn export(ctx: &Ctx, name: &str, output: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    let rec = cs.find(name)?;
    match output {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let mut tmp = tempfile_in(dir)?;
            bulkhead_runtime::inspect_fs::export(&store, &cs, &rec, tmp.as_file_mut())?;
            tmp.as_file().sync_all()?;
            tmp.persist(path)
                .map_err(|e| e.error)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => {
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                bail!("refusing to write a tar archive to a terminal: use -o FILE or a redirection");
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            bulkhead_runtime::inspect_fs::export(&store, &cs, &rec, &mut out)?;
            std::io::Write::flush(&mut out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tempfile_in(dir: &std::path::Path) -> anyhow::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".bulkhead-export-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))
}

/// The hidden `shim-finish` command: the shim's monitor hands over here after the container exited.
pub fn shim_finish(
    ctx: &Ctx,
    id: &str,
    pid: i32,
    runtime: Option<PathBuf>,
    code: i32,
    finished: &str,
    error: Option<String>,
) -> anyhow::Result<ExitCode> {
    use bulkhead_runtime::executor::MonitorTarget;
    let target = match runtime {
        None => MonitorTarget::Embedded { pid },
        Some(runtime) => MonitorTarget::Adopted { pid, runtime },
    };
    let finished = chrono::DateTime::parse_from_rfc3339(finished)
        .with_context(|| format!("--finished {finished:?}"))?
        .with_timezone(&chrono::Utc);
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    if let Some(delay) = bulkhead_runtime::shim::finish(&store, &cs, id, &target, code, finished, error)? {
        // Its restart policy starts it again, after the delay, from a process of its own (no
        // daemon: the shim's last step hands over to it and ends).
        let exe = std::env::current_exe().context("this program's path")?;
        let mut c = std::process::Command::new(exe);
        c.arg("--root").arg(&ctx.root).arg("--config").arg(&ctx.config).args([
            "restart-after",
            &format!("--delay-ms={}", delay.as_millis()),
            // The exit it answers: a later one (after a user's start) is not its own.
            &format!("--after={}", finished.to_rfc3339()),
            id,
        ]);
        // Its own session: it outlives this last step of the shim.
        lifecycle::spawn_detached(c, false).context("starting the restart")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The hidden `restart-after`: waits `delay`, then starts container `id` again if its policy
/// still wants it (it was not removed, started or stopped by a user meanwhile).
pub fn restart_after(ctx: &Ctx, id: &str, delay: std::time::Duration, after: &str) -> anyhow::Result<ExitCode> {
    std::thread::sleep(delay);
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    // Under the containers' lock, as `stop`, `start`, `rm` and the shim's last step change the
    // record: still the exit this restart answers, not stopped or removed by a user since.
    let _lock = cs.lock()?;
    let Ok(mut r) = cs.load(id) else { return Ok(ExitCode::SUCCESS) };
    let same_exit = matches!(&r.state, State::Exited { finished, .. } if finished.to_rfc3339() == after);
    if !same_exit || r.stopped_by_user || r.restart.is_none() || !cs.dir(id).is_dir() {
        return Ok(ExitCode::SUCCESS);
    }
    r.restart_count += 1;
    r.state = State::Created;
    r.error = None;
    cs.save(&r)?;
    lifecycle::spawn_shim(&ctx.root, id)?;
    Ok(ExitCode::SUCCESS)
}

/// The hidden `shim` command: supervise one container until it exits.
pub fn shim(ctx: &Ctx, id: &str) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let cs = Containers::open(&store)?;
    bulkhead_runtime::shim::run_shim(&store, &cs, id)?;
    Ok(ExitCode::SUCCESS)
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
                        State::Running { started, .. } => format!(
                            "Up {}{}",
                            ago(Some(*started)).trim_end_matches(" ago"),
                            health_of(&cs, r).map(|h| format!(" ({})", h.status)).unwrap_or_default()
                        ),
                        State::Exited { code, finished, .. } => format!("Exited ({code}) {}", ago(Some(*finished))),
                    };
                    // One line per container: control characters shown escaped (a command may hold
                    // a newline), and cut by characters, never inside one.
                    let full: String = r.command.join(" ").chars().flat_map(char::escape_debug).collect();
                    let cmd = if full.chars().count() > 30 {
                        format!("{}...", full.chars().take(27).collect::<String>())
                    } else {
                        full
                    };
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
    let rt = Runtime::new(ctx.store()?)?;
    let mut failed = false;
    for n in names {
        match rt.remove(n, force) {
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
        // As `docker inspect`: a container by that name or id, else an image.
        let r = match cs.find(n) {
            Ok(r) => r,
            Err(bulkhead_runtime::error::Error::NotFound(_)) => match store.resolve(n) {
                Ok(img) => {
                    out.push(store.info(&img)?.inspect_json());
                    continue;
                }
                Err(_) => bail!("no such container or image: {n}"),
            },
            Err(e) => return Err(e.into()),
        };
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
        // What is mounted into it: binds the runtime makes (not bulkhead's own files), then what
        // bulkhead attaches. A secret shows where it is, never what it holds.
        let own = cs.dir(&r.id);
        let mut mounts: Vec<serde_json::Value> = spec["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["type"] == "bind" && !m["source"].as_str().is_some_and(|s| std::path::Path::new(s).starts_with(&own)))
            .map(|m| serde_json::json!({"Type": "bind", "Source": m["source"], "Destination": m["destination"], "RW": !m["options"].as_array().is_some_and(|o| o.iter().any(|x| x == "ro"))}))
            .collect();
        mounts.extend(
            r.idmapped_volumes.iter().map(
                |v| serde_json::json!({"Type": "bind", "Source": v.source, "Destination": v.target, "RW": !v.readonly, "Idmap": true}),
            ),
        );
        mounts.extend(
            r.volumes
                .iter()
                .map(|v| serde_json::json!({"Type": "volume", "Name": v.name, "Destination": v.target, "RW": !v.readonly})),
        );
        mounts.extend(r.files.iter().map(|f| serde_json::json!({"Type": if f.secret { "secret" } else { "config" }, "Destination": f.target, "RW": false, "Mode": format!("{:04o}", f.mode)})));
        out.push(serde_json::json!({
            "Id": r.id,
            "Name": format!("/{}", r.name),
            "Created": r.created.to_rfc3339(),
            "Path": r.command.first(),
            "Args": r.command.get(1..).unwrap_or_default(),
            "State": {"Status": status, "Running": running, "Pid": pid, "ExitCode": code, "OOMKilled": oom, "StartedAt": started, "FinishedAt": finished, "Health": health_of(&cs, &r)},
            "Image": r.image_id.to_string(),
            "Mounts": mounts,
            "Config": {"Image": r.image, "Labels": r.labels, "Env": spec["process"]["env"], "WorkingDir": spec["process"]["cwd"], "User": format!("{}:{}", spec["process"]["user"]["uid"], spec["process"]["user"]["gid"]), "Hostname": spec["hostname"]},
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
    let upper = cs.dir(&r.id).join("upper");
    let mut changes = bulkhead_runtime::diff::changes(&upper, &lowers)?;
    // The empty files and directories made to mount things on (the name files, volumes,
    // secrets, configs) are bulkhead's doing, not the container's (Docker leaves them out too):
    // shown only if the container wrote into them, and so are the directories made on the way.
    let mut targets: Vec<String> = Vec::new();
    if !r.networks.is_empty() {
        targets.extend(["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"].map(String::from));
    }
    targets.extend(r.files.iter().map(|f| f.target.clone()));
    targets.extend(r.volumes.iter().map(|v| v.target.clone()));
    targets.extend(r.idmapped_volumes.iter().map(|v| v.target.clone()));
    let empty = |path: &str| {
        let p = upper.join(path.trim_start_matches('/'));
        std::fs::symlink_metadata(&p)
            .is_ok_and(|m| (m.is_file() && m.len() == 0) || (m.is_dir() && std::fs::read_dir(&p).is_ok_and(|mut d| d.next().is_none())))
    };
    let dropped: Vec<String> = changes
        .iter()
        .filter(|c| c.kind == 1 && targets.contains(&c.path) && empty(&c.path))
        .map(|c| c.path.clone())
        .collect();
    changes.retain(|c| !dropped.contains(&c.path));
    // A directory bulkhead made on the way to a target (added, or changed by the addition) stays
    // only if something else changed under it.
    let under = |dir: &str, p: &str| p.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'));
    let mut parents: Vec<String> = Vec::new();
    for d in &dropped {
        let mut p = std::path::Path::new(d).parent();
        while let Some(dir) = p.filter(|x| x != &std::path::Path::new("/")) {
            parents.push(dir.to_string_lossy().into_owned());
            p = dir.parent();
        }
    }
    // Such a directory is dropped only as bulkhead left it: one it made (added) is its root's and
    // 0755; one the image had (changed) keeps the image's mode and owner. A container's chmod or
    // chown of it shows.
    let as_left = |dir: &str, kind: u8| {
        use std::os::unix::fs::MetadataExt;
        let rel = dir.trim_start_matches('/');
        let Ok(up) = std::fs::symlink_metadata(upper.join(rel)) else {
            return false;
        };
        let shift = |id: u32| r.host_id.map_or(Some(id), |h| id.checked_sub(h));
        if kind == 1 {
            return up.is_dir() && up.mode() & 0o7777 == 0o755 && shift(up.uid()) == Some(0) && shift(up.gid()) == Some(0);
        }
        lowers
            .iter()
            .find_map(|l| std::fs::symlink_metadata(l.join(rel)).ok())
            .is_some_and(|low| up.mode() == low.mode() && shift(up.uid()) == Some(low.uid()) && shift(up.gid()) == Some(low.gid()))
    };
    // Deepest first, so that a directory emptied of such changes goes too.
    parents.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for dir in &parents {
        if let Some(i) = changes.iter().position(|c| &c.path == dir && c.kind != 2) {
            if !changes.iter().any(|o| under(dir, &o.path)) && as_left(dir, changes[i].kind) {
                changes.remove(i);
            }
        }
    }
    match ctx.output()? {
        Output::Json => json(&serde_json::to_value(&changes)?)?,
        Output::Table => changes.iter().for_each(|c| println!("{} {}", c.letter(), c.path)),
    }
    Ok(ExitCode::SUCCESS)
}
