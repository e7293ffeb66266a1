//! Compose files: found as `docker compose` finds them, `.env` and the environment interpolated
//! as the compose specification says, every key checked against what bulkhead does (an unknown
//! or unsupported key is refused with its line, never ignored), then read into the model of
//! docker-compose-types. From the model: the order services start in (`depends_on`, cycles
//! refused) and the communication policy the file implies (see [`policy`]).

pub mod interpolate;
pub mod policy;
pub mod tree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use docker_compose_types as types;
use tree::Node;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something about line `line` of the file (0: the file as a whole).
    #[error("{}{msg}", if *.line > 0 { format!("line {line}: ") } else { String::new() })]
    At { line: usize, msg: String },
    #[error("{0}")]
    Io(String),
}

impl Error {
    /// An error about line `line`, on one line whatever the message holds.
    pub fn at(line: usize, msg: String) -> Self {
        let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
        Error::At { line, msg }
    }

    pub fn line(&self) -> Option<usize> {
        match self {
            Error::At { line, .. } => Some(*line),
            Error::Io(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The names `docker compose` looks for, in its order.
pub const FILE_NAMES: &[&str] = &["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"];

/// Bounds on what is read: a compose file and an env file are small.
const MAX_FILE: u64 = 4 << 20;

/// How a project is found (`-f`, `-p`, `--env-file`).
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub file: Option<PathBuf>,
    pub project: Option<String>,
    pub env_file: Option<PathBuf>,
    /// The directory to look in (the current one).
    pub dir: PathBuf,
}

/// A loaded project.
#[derive(Clone, Debug)]
pub struct Project {
    pub name: String,
    pub file: PathBuf,
    pub dir: PathBuf,
    pub model: types::Compose,
    /// The file, as a tree with lines (for the origins of derived rules).
    pub tree: Node,
    /// Services, each after those it depends on.
    pub order: Vec<String>,
    /// Keys of the specification the model's crate does not know (`pids_limit`, `cpus`), per
    /// service.
    pub extra: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Top-level `configs`, by name, as written (the model's crate has none).
    pub configs: BTreeMap<String, serde_json::Value>,
}

/// Reads a file of ours: a regular file (not a FIFO that would block, not a device), bounded.
fn read_small(p: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(p)
        .map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
    let md = f.metadata().map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
    if !md.is_file() {
        return Err(Error::Io(format!("{}: not a regular file", p.display())));
    }
    if md.len() > MAX_FILE {
        return Err(Error::Io(format!("{}: larger than {} MiB", p.display(), MAX_FILE >> 20)));
    }
    let mut s = String::new();
    f.take(MAX_FILE)
        .read_to_string(&mut s)
        .map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
    Ok(s)
}

/// `KEY=VALUE` lines of an env file (`#` comments, blank lines, optional `export `, values
/// optionally quoted), in order.
pub fn parse_env_file(text: &str) -> std::result::Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err((n + 1, format!("{line:?}: expected KEY=VALUE")));
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || k.as_bytes()[0].is_ascii_digit() {
            return Err((n + 1, format!("{k:?}: not a variable name")));
        }
        let v = v.trim();
        let v = if v.len() >= 2 && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\''))) {
            &v[1..v.len() - 1]
        } else {
            // An unquoted value ends at ` #`.
            v.split(" #").next().unwrap_or(v).trim_end()
        };
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// A project name as `docker compose` makes one from a directory's: lower case, only
/// `a-z0-9_-`, starting with a letter or digit.
pub fn normalize_project_name(s: &str) -> String {
    s.to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect::<String>()
        .trim_start_matches(['_', '-'])
        .to_owned()
}

fn valid_project_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The compose file: `-f`, or the first of [`FILE_NAMES`] in the directory.
pub fn find_file(opts: &Options) -> Result<PathBuf> {
    match &opts.file {
        Some(f) => Ok(opts.dir.join(f)),
        None => FILE_NAMES.iter().map(|n| opts.dir.join(n)).find(|p| p.exists()).ok_or_else(|| {
            Error::Io(format!(
                "no compose file in {} (looked for {})",
                opts.dir.display(),
                FILE_NAMES.join(", ")
            ))
        }),
    }
}

/// Finds, reads, interpolates, checks and loads a project.
pub fn load(opts: &Options) -> Result<Project> {
    let file = find_file(opts)?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| opts.dir.clone());
    let text = read_small(&file)?;
    // Variables: the environment wins over the env file (`.env` beside the compose file, or
    // --env-file), as with docker compose.
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let env_path = match &opts.env_file {
        // The user's own choice.
        Some(p) => Some(opts.dir.join(p)),
        // Beside the file: what came with the project, so it stays in the project (a link to
        // another project's `.env` would hand its secrets to this one's containers).
        None => {
            let p = dir.join(".env");
            if p.symlink_metadata().is_ok() {
                let real = p.canonicalize().map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
                let root = dir.canonicalize().map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
                if !real.starts_with(&root) {
                    return Err(Error::Io(format!("{}: a link out of the project's directory", p.display())));
                }
                Some(real)
            } else {
                None
            }
        }
    };
    if let Some(p) = &env_path {
        let t = read_small(p)?;
        for (k, v) in parse_env_file(&t).map_err(|(n, m)| Error::Io(format!("{}: line {n}: {m}", p.display())))? {
            vars.insert(k, v);
        }
    }
    let lookup = |k: &str| std::env::var(k).ok().or_else(|| vars.get(k).cloned());
    load_str(&text, &file, &dir, opts.project.as_deref(), &lookup)
}

/// Loads a project from `text` (the file at `file`), with `lookup` for its variables.
pub fn load_str(text: &str, file: &Path, dir: &Path, project: Option<&str>, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Project> {
    let tree = tree::parse(text)?;
    check_keys(&tree)?;
    let mut value = to_value(&tree, lookup, &std::cell::Cell::new(0))?;
    // Taken out before the typed model, which would refuse them, and kept beside it.
    let mut extra: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    if let Some(serde_norway::Value::Mapping(services)) = value.get_mut("services") {
        for (name, svc) in services.iter_mut() {
            if let (Some(name), serde_norway::Value::Mapping(m)) = (name.as_str(), svc) {
                // `uid`, `gid` and `mode` of secrets and configs are strings in the model (a mode
                // is octal): a plain number is taken as it is written.
                for key in ["secrets", "configs"] {
                    let Some(serde_norway::Value::Sequence(items)) = m.get_mut(key) else {
                        continue;
                    };
                    for (i, item) in items.iter_mut().enumerate() {
                        let serde_norway::Value::Mapping(item) = item else { continue };
                        for k in ["uid", "gid", "mode"] {
                            if let Some(v @ serde_norway::Value::Number(_)) = item.get_mut(k) {
                                let written = tree
                                    .get("services")
                                    .and_then(|t| t.get(name))
                                    .and_then(|t| t.get(key))
                                    .and_then(|t| t.items().get(i))
                                    .and_then(|t| t.get(k))
                                    .and_then(Node::as_str)
                                    .map(str::to_owned);
                                if let Some(w) = written {
                                    *v = serde_norway::Value::String(w);
                                }
                            }
                        }
                    }
                }
                for key in ["pids_limit", "cpus", "configs"] {
                    if let Some(v) = m.remove(key) {
                        let v = serde_json::to_value(&v).map_err(|e| Error::at(0, e.to_string()))?;
                        extra.entry(name.to_owned()).or_default().insert(key.to_owned(), v);
                    }
                }
            }
        }
    }
    // Top-level `configs` (the model's crate has none): kept as they are, per name.
    let mut configs = BTreeMap::new();
    if let Some(serde_norway::Value::Mapping(m)) = value.as_mapping_mut().and_then(|v| v.remove("configs")) {
        for (k, v) in m {
            if let Some(k) = k.as_str() {
                configs.insert(k.to_owned(), serde_json::to_value(&v).map_err(|e| Error::at(0, e.to_string()))?);
            }
        }
    }
    let model: types::Compose = {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let line = line_of(&tree, &e.path().to_string());
            Error::at(line, format!("{}: {}", e.path(), e.inner()))
        })?
    };
    let name = match project.map(str::to_owned).or_else(|| model.name.clone()) {
        Some(n) if valid_project_name(&n) => n,
        Some(n) => {
            return Err(Error::at(
                tree.get("name").map_or(0, Node::line),
                format!("project name {n:?}: lower-case letters, digits, '_' and '-', starting with a letter or digit"),
            ))
        }
        None => {
            let base = dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_default();
            let n = normalize_project_name(&base);
            if !valid_project_name(&n) {
                return Err(Error::Io(format!(
                    "no project name from the directory {base:?}: give one with -p or `name:`"
                )));
            }
            n
        }
    };
    let order = start_order(&model, &tree)?;
    Ok(Project {
        name,
        file: file.to_path_buf(),
        dir: dir.to_path_buf(),
        model,
        tree,
        order,
        extra,
        configs,
    })
}

/// The line of the node at `path` (serde_path_to_error's form: `services.web.ports[0]`), or
/// of its nearest ancestor that exists.
pub fn line_of(tree: &Node, path: &str) -> usize {
    let mut node = tree;
    let mut line = tree.line();
    for part in path.split('.').filter(|p| !p.is_empty() && *p != "?") {
        let (key, idx) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        match node.get(key) {
            Some(n) => node = n,
            None => return line,
        }
        line = node.line();
        if let Some(i) = idx {
            match node.items().get(i) {
                Some(n) => {
                    node = n;
                    line = node.line();
                }
                None => return line,
            }
        }
    }
    line
}

/// The keys bulkhead understands, per level; `x-` extensions anywhere a mapping of the
/// specification is.
const TOP: &[&str] = &["version", "name", "services", "networks", "volumes", "secrets", "configs"];
const SERVICE: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "networks",
    "depends_on",
    "links",
    "healthcheck",
    "restart",
    "volumes",
    "tmpfs",
    "read_only",
    "user",
    "working_dir",
    "hostname",
    "container_name",
    "cap_add",
    "cap_drop",
    "security_opt",
    "pids_limit",
    "mem_limit",
    "cpus",
    "labels",
    "secrets",
    "configs",
    "deploy",
    "init",
    "stop_signal",
    "stop_grace_period",
];
/// Keys of the specification bulkhead does not do (yet, or on purpose): refused by name, so a
/// file never runs with less than it asks for.
const SERVICE_REFUSED: &[(&str, &str)] = &[
    ("build", "build the image elsewhere and give `image:`"),
    (
        "privileged",
        "bulkhead has no privileged containers in compose files (use `run --privileged`, visibly)",
    ),
    ("network_mode", "not supported: use `networks:`"),
    ("pid", "not supported in compose files"),
    ("ipc", "not supported in compose files"),
    ("devices", "not supported in compose files"),
    ("userns_mode", "every container has its own user namespace"),
    ("volumes_from", "not supported: share a named volume"),
    ("extends", "not supported"),
    ("profiles", "not supported"),
    ("scale", "use deploy.replicas"),
];
/// `compose up` honours `replicas`; `stack deploy` all of these.
const DEPLOY: &[&str] = &["replicas", "mode", "placement", "resources", "update_config", "restart_policy"];
const DEPLOY_PLACEMENT: &[&str] = &["constraints"];
const DEPLOY_RESOURCES: &[&str] = &["limits", "reservations"];
const DEPLOY_RESOURCE: &[&str] = &["cpus", "memory"];
const DEPLOY_UPDATE: &[&str] = &["parallelism", "delay", "failure_action", "monitor"];
const DEPLOY_RESTART: &[&str] = &["condition", "delay"];
const HEALTHCHECK: &[&str] = &[
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "start_interval",
    "disable",
];
const DEPENDS_ON_LONG: &[&str] = &["condition", "restart", "required"];
const NETWORK: &[&str] = &["driver", "internal", "labels", "external", "name", "enable_ipv6", "ipam"];
const VOLUME: &[&str] = &["driver", "labels", "external", "name"];
const SECRET_CONFIG: &[&str] = &["file", "external", "name", "environment"];
const SERVICE_NETWORK: &[&str] = &["aliases", "ipv4_address"];
const SERVICE_SECRET: &[&str] = &["source", "target", "uid", "gid", "mode"];
const SERVICE_PORT: &[&str] = &["target", "published", "host_ip", "protocol", "mode"];
const SERVICE_VOLUME: &[&str] = &["type", "source", "target", "read_only", "volume", "bind", "tmpfs"];

/// Services a file may have (the start order is a walk of their dependencies).
const MAX_SERVICES: usize = 1000;

/// Service names as the compose specification allows them.
fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub(crate) fn check_map(node: &Node, known: &[&str], what: &str) -> Result<()> {
    if !matches!(node, Node::Map { .. }) {
        return Err(Error::at(node.line(), format!("{what}: expected a mapping")));
    }
    for (k, v) in node.entries() {
        if !known.contains(&k.as_str()) && !k.starts_with("x-") {
            return Err(Error::at(v.line(), format!("{what}.{k}: unknown key")));
        }
    }
    Ok(())
}

/// Every key of the file is one bulkhead understands (or an `x-` extension), with its line.
fn check_keys(t: &Node) -> Result<()> {
    check_map(t, TOP, "(top level)")?;
    let services = t.get("services").map(Node::entries).unwrap_or_default();
    if services.len() > MAX_SERVICES {
        return Err(Error::at(
            t.get("services").map_or(0, Node::line),
            format!("more than {MAX_SERVICES} services"),
        ));
    }
    for (name, svc) in services {
        if !valid_service_name(name) {
            return Err(Error::at(
                svc.line(),
                format!("service name {name:?}: letters, digits, '_', '.', '-', starting with a letter or digit, at most 63"),
            ));
        }
        let at = format!("services.{name}");
        if !matches!(svc, Node::Map { .. }) {
            return Err(Error::at(svc.line(), format!("{at}: expected a mapping")));
        }
        for (k, v) in svc.entries() {
            if let Some((_, why)) = SERVICE_REFUSED.iter().find(|(r, _)| r == k) {
                return Err(Error::at(v.line(), format!("{at}.{k}: {why}")));
            }
            if !SERVICE.contains(&k.as_str()) && !k.starts_with("x-") {
                return Err(Error::at(v.line(), format!("{at}.{k}: unknown key")));
            }
        }
        if let Some(d) = svc.get("deploy") {
            check_map(d, DEPLOY, &format!("{at}.deploy"))?;
            for (key, known) in [
                ("placement", DEPLOY_PLACEMENT),
                ("resources", DEPLOY_RESOURCES),
                ("update_config", DEPLOY_UPDATE),
                ("restart_policy", DEPLOY_RESTART),
            ] {
                if let Some(v) = d.get(key) {
                    check_map(v, known, &format!("{at}.deploy.{key}"))?;
                }
            }
            if let Some(r) = d.get("resources") {
                for key in ["limits", "reservations"] {
                    if let Some(v) = r.get(key) {
                        check_map(v, DEPLOY_RESOURCE, &format!("{at}.deploy.resources.{key}"))?;
                    }
                }
            }
        }
        if let Some(h) = svc.get("healthcheck") {
            check_map(h, HEALTHCHECK, &format!("{at}.healthcheck"))?;
        }
        if let Some(Node::Map { entries, .. }) = svc.get("depends_on") {
            for (dep, v) in entries {
                check_map(v, DEPENDS_ON_LONG, &format!("{at}.depends_on.{dep}"))?;
            }
        }
        if let Some(Node::Map { entries, .. }) = svc.get("networks") {
            for (n, v) in entries {
                if !matches!(v, Node::Scalar { .. }) {
                    check_map(v, SERVICE_NETWORK, &format!("{at}.networks.{n}"))?;
                }
            }
        }
        for (key, known) in [
            ("secrets", SERVICE_SECRET),
            ("configs", SERVICE_SECRET),
            ("ports", SERVICE_PORT),
            ("volumes", SERVICE_VOLUME),
        ] {
            for (i, item) in svc.get(key).map(Node::items).unwrap_or_default().iter().enumerate() {
                if matches!(item, Node::Map { .. }) {
                    check_map(item, known, &format!("{at}.{key}[{i}]"))?;
                }
            }
        }
    }
    for (key, known) in [
        ("networks", NETWORK),
        ("volumes", VOLUME),
        ("secrets", SECRET_CONFIG),
        ("configs", SECRET_CONFIG),
    ] {
        for (name, v) in t.get(key).map(Node::entries).unwrap_or_default() {
            if !matches!(v, Node::Scalar { text, plain: true, .. } if text.is_empty() || text == "~" || text == "null") {
                check_map(v, known, &format!("{key}.{name}"))?;
            }
        }
    }
    Ok(())
}

/// YAML's core schema for a plain scalar: null, booleans, integers, floats, else a string.
fn resolve_plain(s: &str) -> serde_norway::Value {
    use serde_norway::Value;
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Some(h) = s.strip_prefix("0x").and_then(|h| i64::from_str_radix(h, 16).ok()) {
        return Value::Number(h.into());
    }
    if let Some(o) = s.strip_prefix("0o").and_then(|o| i64::from_str_radix(o, 8).ok()) {
        return Value::Number(o.into());
    }
    if s.chars().any(|c| c.is_ascii_digit()) && !s.contains(':') {
        if let Ok(f) = s.parse::<f64>() {
            if f.is_finite() {
                return Value::Number(f.into());
            }
        }
    }
    Value::String(s.to_owned())
}

/// The tree as a value for the typed model, each scalar interpolated (keys are not, as the
/// specification says).
/// Bounds on what interpolation makes: per value, and in all.
const MAX_VALUE: usize = 1 << 20;
const MAX_TOTAL: usize = 64 << 20;

fn to_value(n: &Node, lookup: &dyn Fn(&str) -> Option<String>, total: &std::cell::Cell<usize>) -> Result<serde_norway::Value> {
    use serde_norway::Value;
    Ok(match n {
        Node::Scalar { text, plain, line } => {
            let s = interpolate::interpolate(text, lookup).map_err(|m| Error::at(*line, m))?;
            total.set(total.get() + s.len());
            if s.len() > MAX_VALUE || total.get() > MAX_TOTAL {
                return Err(Error::at(
                    *line,
                    format!(
                        "a value (or all of them) larger than interpolation may make ({} MiB, {} MiB in all)",
                        MAX_VALUE >> 20,
                        MAX_TOTAL >> 20
                    ),
                ));
            }
            if *plain {
                resolve_plain(&s)
            } else {
                Value::String(s)
            }
        }
        Node::Seq { items, .. } => Value::Sequence(items.iter().map(|i| to_value(i, lookup, total)).collect::<Result<_>>()?),
        Node::Map { entries, .. } => {
            let mut m = serde_norway::Mapping::new();
            for (k, v) in entries {
                // Extensions are kept as they are written (they are ours to read, later).
                let v = if k.starts_with("x-") {
                    to_value(v, &|_| None, total).unwrap_or(Value::Null)
                } else {
                    to_value(v, lookup, total)?
                };
                m.insert(Value::String(k.clone()), v);
            }
            Value::Mapping(m)
        }
    })
}

/// The services a service depends on (`depends_on`, short or long form).
pub fn depends_on(s: &types::Service) -> Vec<String> {
    match &s.depends_on {
        types::DependsOnOptions::Simple(v) => v.clone(),
        types::DependsOnOptions::Conditional(m) => m.keys().cloned().collect(),
    }
}

/// Services in an order that starts each after what it depends on; unknown services and cycles
/// refused with their line.
fn start_order(model: &types::Compose, tree: &Node) -> Result<Vec<String>> {
    let services: Vec<String> = model.services.0.keys().cloned().collect();
    let deps: BTreeMap<String, Vec<String>> = model
        .services
        .0
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(depends_on).unwrap_or_default()))
        .collect();
    for (s, ds) in &deps {
        for d in ds {
            if !services.contains(d) {
                return Err(Error::at(
                    line_of(tree, &format!("services.{s}.depends_on")),
                    format!("services.{s}.depends_on: no service {d:?}"),
                ));
            }
        }
    }
    // Depth-first, in the file's order; a service met again while on the path is a cycle.
    let mut order = Vec::new();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1: on the path, 2: done
    fn visit<'a>(
        s: &'a str,
        deps: &'a BTreeMap<String, Vec<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
        order: &mut Vec<String>,
    ) -> std::result::Result<(), Vec<String>> {
        match state.get(s) {
            Some(2) => return Ok(()),
            Some(1) => {
                let from = path.iter().position(|p| *p == s).unwrap_or(0);
                let mut cycle: Vec<String> = path[from..].iter().map(|p| p.to_string()).collect();
                cycle.push(s.to_owned());
                return Err(cycle);
            }
            _ => {}
        }
        state.insert(s, 1);
        path.push(s);
        for d in &deps[s] {
            visit(d, deps, state, path, order)?;
        }
        path.pop();
        state.insert(s, 2);
        order.push(s.to_owned());
        Ok(())
    }
    for s in &services {
        let mut path = Vec::new();
        if let Err(cycle) = visit(s, &deps, &mut state, &mut path, &mut order) {
            return Err(Error::at(
                line_of(tree, &format!("services.{}.depends_on", cycle[0])),
                format!("depends_on makes a cycle: {}", cycle.join(" -> ")),
            ));
        }
    }
    Ok(order)
}
