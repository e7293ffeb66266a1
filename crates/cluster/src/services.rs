//! Services and their tasks in the replicated store (issue 16), and the leader's orchestration
//! pass that runs [`crate::orchestrator`]'s pure decisions on it.
//!
//! Keys:
//! - `services/<name>`: a [`ServiceRecord`] (the spec, its version, the one before it, where an
//!   update stands);
//! - `tasks/<service>/<id>`: a [`TaskRecord`], written only by the leader's orchestrator (slot,
//!   node, desired state, the template it runs with the secret versions pinned);
//! - `taskstatus/<service>/<id>`: a [`TaskStatus`], what the node running it reported, written
//!   only by the leader's dispatcher (a node's reports are judged against `nodetasks/`);
//! - `nodetasks/<node>/<id>`: the task's key, for the tasks of one node (the dispatcher's view).
//!
//! A task's observed state: its status's, else `assigned` with a node, else `pending`.
//! Terminal tasks are kept as history, the newest [`HISTORY`] per slot (per node for a global
//! service), as Swarm keeps 5.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::manager::{Error, Manager, Result};
use crate::orchestrator::{self, Mode, ServiceSpec, TaskState};
use crate::store::{Check, Op, Request};

/// Ended tasks kept per slot.
pub const HISTORY: usize = 5;
/// At most this many replicas (the bench's 10,000 tasks fit in one service).
pub const MAX_REPLICAS: u32 = 100_000;
/// Writes of one orchestration pass go in requests of at most this many operations.
const OPS_PER_WRITE: usize = 2000;
/// And at most this many bytes of keys and values.
const BYTES_PER_WRITE: usize = 1 << 20;

/// Capabilities a service may add. Others (CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_PTRACE,
/// CAP_BPF, CAP_NET_ADMIN...) would undo the isolation: the cluster refuses them, as it refuses
/// privileged tasks, host namespaces and an unconfined seccomp filter (no flag exists for them).
pub const ALLOWED_CAP_ADD: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// A secret or config a task gets as a file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The secret's or config's name in the store.
    pub source: String,
    /// A file name under /run/secrets (secrets), or an absolute path.
    pub target: String,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// Default 0400 for a secret, 0444 for a config.
    #[serde(default)]
    pub mode: Option<u32>,
    /// The version a task runs (pinned when the task is made; 0 in a service's spec).
    #[serde(default)]
    pub version: u32,
}

/// A port published on the node of each task (`mode=host`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub published: u16,
    pub target: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
}

fn tcp() -> String {
    "tcp".into()
}

/// What every task of a service runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTemplate {
    pub image: String,
    /// The digest the manager resolved the image to, if a registry had it; else each node uses
    /// its own image of that name (and the task records the digest it ran).
    #[serde(default)]
    pub digest: Option<String>,
    /// Empty: the image's.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub secrets: Vec<FileRef>,
    #[serde(default)]
    pub configs: Vec<FileRef>,
    #[serde(default)]
    pub limit_memory: Option<u64>,
    /// Thousandths of a CPU.
    #[serde(default)]
    pub limit_cpu: Option<u64>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub networks: Vec<String>,
    /// A healthcheck command (run with `/bin/sh -c`): a task is `starting` until it passes, then
    /// `running`; a task it finds unhealthy is stopped and failed (and an update's new task
    /// that fails it pauses or rolls the update back).
    #[serde(default)]
    pub health_cmd: Option<String>,
    /// Its interval, timeout and start period (ms), and the failures in a row that make a task
    /// unhealthy; the runtime's defaults where not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_start_period_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_retries: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The stack the service belongs to (`stack deploy`).
    #[serde(default)]
    pub stack: Option<String>,
}

/// When a task that ended is replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    #[default]
    Any,
    OnFailure,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    pub condition: Condition,
    /// How long after a task ended its replacement starts.
    pub delay_ms: u64,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            condition: Condition::Any,
            delay_ms: 5000,
        }
    }
}

/// What an update does when a new task fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Rollback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at once.
    pub parallelism: u32,
    /// Between two batches.
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    /// How long a new task must keep running before its batch counts as done.
    pub monitor_ms: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5000,
        }
    }
}

/// Where a service's last update stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused { message: String },
    RollingBack { message: String },
    RolledBack { message: String },
    Completed,
}

/// A service as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: String,
    pub spec: ServiceSpec,
    /// Bumped by every change of the spec; a task runs the version it was made from.
    pub version: u64,
    /// The spec before the last update (`service rollback`).
    #[serde(default)]
    pub previous: Option<ServiceSpec>,
    pub created: i64,
    pub updated: i64,
    #[serde(default)]
    pub update: Option<UpdateState>,
    /// When the update's next batch may start (unix ms).
    #[serde(default)]
    pub next_batch_ms: i64,
}

/// Whether a task should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Shutdown,
}

/// A task as stored (the orchestrator's part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub service: String,
    pub service_id: String,
    /// 1..=replicas; 0 for a global service.
    pub slot: u32,
    pub node: Option<String>,
    pub desired: Desired,
    /// The service version it runs.
    pub version: u64,
    pub template: TaskTemplate,
    pub created: i64,
}

/// What the node running a task reported (the dispatcher's part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub container: Option<String>,
    /// The image digest the node ran.
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Unix ms of the report, as the leader received it.
    #[serde(default)]
    pub updated: i64,
}

pub fn service_key(name: &str) -> String {
    format!("services/{name}")
}
pub fn task_key(service: &str, id: &str) -> String {
    format!("tasks/{service}/{id}")
}
pub fn status_key(service: &str, id: &str) -> String {
    format!("taskstatus/{service}/{id}")
}
pub fn node_task_key(node: &str, id: &str) -> String {
    format!("nodetasks/{node}/{id}")
}

/// A task with its status, and the state that follows from both.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskView {
    pub task: TaskRecord,
    pub status: Option<TaskStatus>,
    pub state: TaskState,
}

impl TaskView {
    fn new(task: TaskRecord, status: Option<TaskStatus>) -> TaskView {
        let state = match (&status, &task.node) {
            (Some(s), _) => s.state,
            (None, Some(_)) => TaskState::Assigned,
            (None, None) => TaskState::Pending,
        };
        TaskView { task, status, state }
    }
}

/// Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialisable")
}

/// Checks a spec (one line for what is wrong): names, replicas, image, environment,
/// capabilities, ports, files.
pub fn validate(spec: &ServiceSpec) -> Result<()> {
    let bad = |m: String| Err(Error::Invalid(m));
    if !crate::secrets::valid_name(&spec.name) {
        return bad(format!(
            "service name {:?}: a letter or digit, then letters, digits, '_', '.', '-' (at most 64)",
            spec.name
        ));
    }
    if let Mode::Replicated { replicas } = spec.mode {
        if replicas > MAX_REPLICAS {
            return bad(format!("at most {MAX_REPLICAS} replicas"));
        }
    }
    validate_task(&spec.task)?;
    if spec.update.parallelism == 0 {
        return bad("--update-parallelism: at least 1".into());
    }
    Ok(())
}

/// The largest task template, as JSON (it is copied into every task record).
pub const MAX_TEMPLATE: usize = 64 << 10;

/// Checks what a task runs: on the manager for every spec, and again on the node before it runs
/// anything (a manager's word is not taken for it).
pub fn validate_task(t: &TaskTemplate) -> Result<()> {
    let bad = |m: String| Err(Error::Invalid(m));
    if serde_json::to_vec(t).map_or(true, |j| j.len() > MAX_TEMPLATE) {
        return bad(format!("a service's task spec is at most {} KiB", MAX_TEMPLATE >> 10));
    }
    for k in t.labels.keys() {
        if (k.starts_with("com.bulkhead.") && k != "com.bulkhead.force") || k.starts_with("bulkhead.") {
            return bad(format!("label {k:?}: the com.bulkhead. and bulkhead. prefixes are the cluster's"));
        }
    }
    // Every value below ends up as a `bulkhead run` argument on the nodes: none may read as a
    // flag, or carry the separators of the flag it goes in (`,` and `=` in `--secret`).
    let plain = |v: &str| !v.is_empty() && !v.starts_with('-') && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@+".contains(&b));
    if t.image.len() > 512 || !plain(&t.image) {
        return bad(format!("image {:?}: a name or a digest", t.image));
    }
    if let Some(s) = &t.stack {
        // It names the tasks' SPIFFE ID's namespace, where `default` is that of services in no
        // stack.
        if !crate::secrets::valid_name(s) || s == "default" {
            return bad(format!("stack {s:?}: a name (and not `default`)"));
        }
    }
    if let Some(d) = &t.digest {
        let hex = d.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return bad(format!("digest {d:?}: sha256: and 64 hex digits"));
        }
    }
    for n in &t.networks {
        if n == "host" || n.starts_with("container:") || !crate::secrets::valid_name(n) {
            return bad(format!(
                "--network {n:?}: a network's name (the cluster refuses the host's network and another container's)"
            ));
        }
    }
    if t.networks.len() > 1 {
        return bad("one --network per service for now".into());
    }
    for (what, v) in [
        ("--health-interval", t.health_interval_ms),
        ("--health-timeout", t.health_timeout_ms),
        ("--health-start-period", t.health_start_period_ms),
    ] {
        if v.is_some_and(|ms| !(100..=86_400_000).contains(&ms)) || (v.is_some() && t.health_cmd.is_none()) {
            return bad(format!("{what}: from 100ms to 24h, with --health-cmd"));
        }
    }
    if t.health_retries.is_some_and(|r| !(1..=100).contains(&r)) || (t.health_retries.is_some() && t.health_cmd.is_none()) {
        return bad("--health-retries: from 1 to 100, with --health-cmd".into());
    }
    if t.health_cmd
        .as_ref()
        .is_some_and(|h| h.is_empty() || h.len() > 4096 || h.contains('\0'))
    {
        return bad("--health-cmd: at most 4 KiB".into());
    }
    for e in &t.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() && !k.contains('\0') => {}
            _ => return bad(format!("-e {e:?}: KEY=VALUE")),
        }
    }
    for c in &t.cap_add {
        let name = normalise_cap(c);
        if !ALLOWED_CAP_ADD.contains(&name.as_str()) {
            return bad(format!(
                "--cap-add {c}: refused by the cluster's policy (it may add only {})",
                ALLOWED_CAP_ADD.join(", ")
            ));
        }
    }
    let mut published = BTreeSet::new();
    for p in &t.ports {
        if p.published == 0 || p.target == 0 || !matches!(p.protocol.as_str(), "tcp" | "udp") {
            return bad(format!("-p {}:{}/{}: ports 1-65535, tcp or udp", p.published, p.target, p.protocol));
        }
        if !published.insert((p.published, p.protocol.clone())) {
            return bad(format!("-p: port {}/{} published twice", p.published, p.protocol));
        }
    }
    let mut targets = BTreeSet::new();
    for f in t.secrets.iter().chain(&t.configs) {
        if !crate::secrets::valid_name(&f.source) {
            return bad(format!("secret or config {:?}: no such name", f.source));
        }
        let chars = f.target.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        let ok_name = !f.target.contains('/') && f.target != "." && f.target != ".." && !f.target.starts_with('-');
        let ok_path = f.target.starts_with('/') && !f.target.split('/').any(|c| c == ".." || c == ".");
        if !chars || f.target.is_empty() || !(ok_name || ok_path) || f.target.len() > 256 {
            return bad(format!("target {:?}: a file name, or an absolute path without '..'", f.target));
        }
        if f.mode.is_some_and(|m| m > 0o777) {
            return bad(format!("mode {:o} of {}: at most 0777", f.mode.unwrap_or(0), f.source));
        }
        if !targets.insert(f.target.clone()) {
            return bad(format!("two files at {}", f.target));
        }
    }
    Ok(())
}

/// `sys_admin`, `CAP_SYS_ADMIN`, `cap_sys_admin`: one spelling.
pub fn normalise_cap(c: &str) -> String {
    let up = c.trim().to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

impl Manager {
    pub fn service(&self, name: &str) -> Option<ServiceRecord> {
        self.get(&service_key(name))
    }

    pub fn services(&self) -> Vec<ServiceRecord> {
        self.sm
            .scan("services/")
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// A service's tasks, with their statuses.
    pub fn tasks_of(&self, service: &str) -> Vec<TaskView> {
        let statuses: BTreeMap<String, TaskStatus> = self
            .sm
            .scan(&format!("taskstatus/{service}/"))
            .into_iter()
            .filter_map(|(k, v)| Some((k.rsplit('/').next()?.to_owned(), serde_json::from_slice(&v).ok()?)))
            .collect();
        self.sm
            .scan(&format!("tasks/{service}/"))
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice::<TaskRecord>(&v).ok())
            .map(|t| {
                let s = statuses.get(&t.id).cloned();
                TaskView::new(t, s)
            })
            .collect()
    }

    /// The tasks the store gives node `node`, with their statuses.
    pub fn node_tasks(&self, node: &str) -> Vec<TaskView> {
        self.sm
            .scan(&format!("nodetasks/{node}/"))
            .into_iter()
            .filter_map(|(_, key)| {
                let key = String::from_utf8(key).ok()?;
                let t: TaskRecord = self.get(&key)?;
                let s = self.get(&status_key(&t.service, &t.id));
                Some(TaskView::new(t, s))
            })
            .collect()
    }

    /// The secrets' and configs' current versions, for pinning; an error names one that is gone.
    fn pin(&self, template: &TaskTemplate) -> Result<TaskTemplate> {
        let mut t = template.clone();
        for (files, kind) in [
            (&mut t.secrets, crate::secrets::Kind::Secret),
            (&mut t.configs, crate::secrets::Kind::Config),
        ] {
            for f in files.iter_mut() {
                let rec = self
                    .secret(kind, &f.source)
                    .ok_or_else(|| Error::Invalid(format!("no {} named {:?}", kind.what(), f.source)))?;
                f.version = rec.version;
            }
        }
        Ok(t)
    }

    /// What a write of `spec` must find unchanged: the records of the secrets and configs it
    /// names (a `secret rm` between the check and the write would leave a service naming
    /// nothing), and its stack's record (a `stack rm` meanwhile would leave a service of no
    /// stack).
    fn spec_checks(&self, spec: &ServiceSpec) -> Result<Vec<Check>> {
        let mut checks = Vec::new();
        for (files, kind) in [
            (&spec.task.secrets, crate::secrets::Kind::Secret),
            (&spec.task.configs, crate::secrets::Kind::Config),
        ] {
            for f in files {
                let (key, raw, _) = self.existing(kind, &f.source)?;
                checks.push(Check::Is { key, value: Some(raw) });
            }
        }
        if let Some(stack) = &spec.task.stack {
            let key = crate::stacks::stack_key(stack);
            let raw = self
                .sm
                .get(&key)
                .ok_or_else(|| Error::Invalid(format!("no stack named {stack:?}")))?;
            checks.push(Check::Is { key, value: Some(raw) });
        }
        Ok(checks)
    }

    /// A new service; refused if the name is taken or a secret or config it names is missing.
    pub async fn create_service(&self, mut spec: ServiceSpec, now: i64) -> Result<ServiceRecord> {
        validate(&spec)?;
        self.check_stack_of(&spec)?;
        for f in spec.task.secrets.iter_mut().chain(spec.task.configs.iter_mut()) {
            f.version = 0;
        }
        self.pin(&spec.task)?;
        if self.sm.scan("services/").len() >= 10_000 {
            return Err(Error::Invalid("at most 10000 services".into()));
        }
        let rec = ServiceRecord {
            id: crate::manager::new_node_id()?,
            spec,
            version: 1,
            previous: None,
            created: now,
            updated: now,
            update: None,
            next_batch_ms: 0,
        };
        let key = service_key(&rec.spec.name);
        let mut checks = vec![Check::Is {
            key: key.clone(),
            value: None,
        }];
        checks.extend(self.spec_checks(&rec.spec)?);
        let r = self
            .write(Request {
                checks,
                ops: vec![Op::Put {
                    key: key.clone(),
                    value: json(&rec),
                }],
            })
            .await?;
        if !r.applied {
            if self.sm.get(&key).is_some() {
                return Err(Error::Invalid(format!("a service named {:?} exists already", rec.spec.name)));
            }
            return Err(Error::Invalid(format!(
                "a secret, config or stack that service {:?} names changed meanwhile; try again",
                rec.spec.name
            )));
        }
        Ok(rec)
    }

    /// Changes a service with `change` (applied to its spec), as one conditional write. A change
    /// of what tasks run starts a rolling update; a change of the count only scales.
    pub async fn change_service(
        &self,
        name: &str,
        now: i64,
        change: impl FnOnce(&ServiceRecord) -> Result<ServiceRecord>,
    ) -> Result<ServiceRecord> {
        let key = service_key(name);
        let raw = self
            .sm
            .get(&key)
            .ok_or_else(|| Error::Invalid(format!("no service named {name:?}")))?;
        let old: ServiceRecord = serde_json::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut new = change(&old)?;
        validate(&new.spec)?;
        if new.spec.task.stack != old.spec.task.stack {
            return Err(Error::Invalid(format!("service {name}: its stack cannot change")));
        }
        self.pin(&new.spec.task)?;
        new.updated = now;
        let mut checks = vec![Check::Is {
            key: key.clone(),
            value: Some(raw),
        }];
        checks.extend(self.spec_checks(&new.spec)?);
        let r = self
            .write(Request {
                checks,
                ops: vec![Op::Put { key, value: json(&new) }],
            })
            .await?;
        if !r.applied {
            return Err(Error::Invalid(format!(
                "the service {name:?}, or a secret, config or stack it names, changed meanwhile; try again"
            )));
        }
        Ok(new)
    }

    /// `service update`: a new spec; its tasks roll to it if what they run changed.
    pub async fn update_service(&self, name: &str, spec: ServiceSpec, now: i64) -> Result<ServiceRecord> {
        if spec.name != name {
            return Err(Error::Invalid("a service cannot be renamed".into()));
        }
        self.change_service(name, now, |old| {
            if (matches!(old.spec.mode, Mode::Global)) != (matches!(spec.mode, Mode::Global)) {
                return Err(Error::Invalid("a service's mode (replicated or global) cannot change".into()));
            }
            let rolls = rolls(&old.spec, &spec);
            Ok(ServiceRecord {
                version: if rolls { old.version + 1 } else { old.version },
                previous: if rolls { Some(old.spec.clone()) } else { old.previous.clone() },
                update: if rolls { Some(UpdateState::Updating) } else { old.update.clone() },
                next_batch_ms: 0,
                spec,
                ..old.clone()
            })
        })
        .await
    }

    /// `service rollback`: the spec before the last update, rolled out as an update is.
    pub async fn rollback_service(&self, name: &str, message: &str, now: i64) -> Result<ServiceRecord> {
        self.change_service(name, now, |old| {
            let prev = old
                .previous
                .clone()
                .ok_or_else(|| Error::Invalid(format!("service {name} has no previous spec to roll back to")))?;
            Ok(ServiceRecord {
                version: old.version + 1,
                previous: Some(old.spec.clone()),
                update: Some(UpdateState::RollingBack {
                    message: message.to_owned(),
                }),
                next_batch_ms: 0,
                spec: ServiceSpec {
                    // The count stays as it is now (as Swarm's rollback does not undo a scale).
                    mode: old.spec.mode.clone(),
                    ..prev
                },
                ..old.clone()
            })
        })
        .await
    }

    /// `service scale NAME=N`.
    pub async fn scale_service(&self, name: &str, replicas: u32, now: i64) -> Result<ServiceRecord> {
        self.change_service(name, now, |old| match old.spec.mode {
            Mode::Global => Err(Error::Invalid(format!("service {name} is global: it cannot be scaled"))),
            Mode::Replicated { .. } => {
                let mut s = old.clone();
                s.spec.mode = Mode::Replicated { replicas };
                Ok(s)
            }
        })
        .await
    }

    /// `service rm`: the service goes; its tasks are shut down and then forgotten by the
    /// orchestrator.
    pub async fn remove_service(&self, name: &str) -> Result<ServiceRecord> {
        let key = service_key(name);
        let raw = self
            .sm
            .get(&key)
            .ok_or_else(|| Error::Invalid(format!("no service named {name:?}")))?;
        let rec: ServiceRecord = serde_json::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))?;
        let r = self
            .write(Request {
                checks: vec![Check::Is {
                    key: key.clone(),
                    value: Some(raw),
                }],
                ops: vec![Op::Delete { key }],
            })
            .await?;
        if !r.applied {
            return Err(Error::Invalid(format!("the service {name:?} changed meanwhile; try again")));
        }
        Ok(rec)
    }

    /// The services that use secret or config `name`.
    pub fn users_of(&self, kind: crate::secrets::Kind, name: &str) -> Vec<String> {
        self.services()
            .into_iter()
            .filter(|s| {
                let files = match kind {
                    crate::secrets::Kind::Secret => &s.spec.task.secrets,
                    crate::secrets::Kind::Config => &s.spec.task.configs,
                };
                files.iter().any(|f| f.source == name)
            })
            .map(|s| s.spec.name)
            .collect()
    }

    /// The leader's orchestration pass over `services` (None: every service, and the tasks of
    /// services that are gone): rolling updates, the orchestrator's changes, the scheduler's
    /// placements and the history's trimming, written in batches. `down`: nodes that missed
    /// their heartbeats. Returns how many operations it wrote.
    ///
    /// It reads the tasks from the state machine's index (decoded once per change, not once per
    /// pass), and a task it changes from the store.
    pub async fn orchestrate(&self, only: Option<&BTreeSet<String>>, down: &BTreeSet<String>) -> Result<Pass> {
        // The plan is CPU work over every task (a second or more at 150,000 tasks): it runs on a
        // blocking thread, so that it holds up none of the runtime's workers, which send Raft's
        // heartbeats (a leader that held one up for seconds was voted out in the 150k run).
        // Written only while this manager leads in the term it planned in.
        let term = self.raft.metrics().borrow().current_term;
        let (m, only_owned, down_owned) = (self.clone(), only.cloned(), down.clone());
        let Plan { ops, service_writes, due } = tokio::task::spawn_blocking(move || m.plan(only_owned.as_ref(), &down_owned))
            .await
            .map_err(|e| Error::Invalid(format!("an orchestration pass: {e}")))??;
        let n = ops.len();
        // In writes of at most OPS_PER_WRITE operations and BYTES_PER_WRITE bytes (templates
        // differ in size; a Raft message must stay under the transport's limit).
        let mut batch: Vec<Op> = Vec::new();
        let mut bytes = 0;
        for op in ops {
            let size = op.size();
            if !batch.is_empty() && (batch.len() >= OPS_PER_WRITE || bytes + size > BYTES_PER_WRITE) {
                self.write_as_leader(
                    Request {
                        checks: vec![],
                        ops: std::mem::take(&mut batch),
                    },
                    term,
                )
                .await?;
                bytes = 0;
            }
            bytes += size;
            batch.push(op);
        }
        if !batch.is_empty() {
            self.write_as_leader(
                Request {
                    checks: vec![],
                    ops: batch,
                },
                term,
            )
            .await?;
        }
        for w in service_writes {
            self.write_as_leader(w, term).await?;
        }
        Ok(Pass { operations: n, due })
    }

    /// What a pass writes: the tasks' operations, and the services' conditional writes; and
    /// when replacements it held back for their restart delay are due, by service (unix ms).
    fn plan(&self, only: Option<&BTreeSet<String>>, down: &BTreeSet<String>) -> Result<Plan> {
        let now = now_ms();
        let nodes = self.nodes();
        let node_ids: BTreeSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        let raw_services: BTreeMap<String, Vec<u8>> = self
            .sm
            .scan("services/")
            .into_iter()
            .map(|(k, v)| (k["services/".len()..].to_owned(), v))
            .collect();
        let services: BTreeMap<String, ServiceRecord> = raw_services
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::from_slice(v).ok()?)))
            .collect();
        let mut service_writes: Vec<Request> = Vec::new();
        let mut due: BTreeMap<String, i64> = BTreeMap::new();
        // Every task, for the scheduler's spread and reservations.
        let all = self.sm.tasks.all();
        let mut ops: Vec<Op> = Vec::new();
        // New tasks are written after every other change of the pass: a pass cut short (its
        // leader deposed, no quorum) has then shut down what it replaces before it made the
        // replacements, and leaves a slot with at most one task meant to run, never two (seen
        // as 79,000 tasks running for 75,000 replicas when every pass of a thrashing leader
        // was cut short after its creations).
        let mut creations: Vec<Op> = Vec::new();
        // Services that are gone: their tasks stop, then go. So do the tasks of a service removed
        // and made again under its name (another id): they must not fill the new one's slots.
        let ours = |v: &crate::taskindex::Indexed| services.get(&v.head.service).is_some_and(|s| s.id == v.head.service_id);
        for (svc, tasks) in &all {
            if only.is_some_and(|o| !o.contains(svc)) {
                continue;
            }
            for v in tasks.iter().filter(|v| !ours(v)) {
                let (h, state) = (&v.head, v.state());
                let gone_node = h.node.as_ref().is_none_or(|n| !node_ids.contains(n.as_str()));
                if state.terminal() || gone_node || state == TaskState::Pending {
                    forget(&mut ops, h);
                } else if h.desired == Desired::Running {
                    let mut seen = Seen::new(v);
                    seen.desired = Desired::Shutdown;
                    self.rewrite(&mut ops, &seen);
                }
            }
        }
        // Each node's live tasks and their reservations, kept up to date as this pass places.
        let mut total: BTreeMap<String, usize> = BTreeMap::new();
        let mut reserved: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for v in all.values().flatten() {
            let h = &v.head;
            if let (Some(n), true) = (&h.node, h.desired == Desired::Running && !v.state().terminal()) {
                *total.entry(n.clone()).or_default() += 1;
                if let Some(s) = services.get(&h.service) {
                    let r = reserved.entry(n.clone()).or_default();
                    r.0 += s.spec.reserve_memory;
                    r.1 += s.spec.reserve_cpu;
                }
            }
        }
        let capacity: BTreeMap<String, orchestrator::Capacity> = nodes
            .iter()
            .filter_map(|n| {
                let (memory, cpu) = n.resources?;
                Some((
                    n.id.clone(),
                    orchestrator::Capacity {
                        memory: Some(memory),
                        cpu: Some(cpu),
                    },
                ))
            })
            .collect();
        for (name, svc) in &services {
            if only.is_some_and(|o| !o.contains(name)) {
                continue;
            }
            let mut tasks: Vec<Seen> = all
                .get(name)
                .map_or_else(Vec::new, |l| l.iter().filter(|v| ours(v)).map(Seen::new).collect());
            let mut svc = svc.clone();
            let svc_changed = roll(&mut svc, &mut tasks, now);
            // A task that ended and is replaced is no longer meant to run (as Swarm marks it).
            for v in tasks.iter_mut() {
                if v.state.terminal() && v.desired == Desired::Running && !stays(&svc.spec, v) {
                    v.desired = Desired::Shutdown;
                    v.dirty = true;
                }
            }
            let mut orch: Vec<orchestrator::Task> = tasks
                .iter()
                .map(|v| {
                    let mut t = v.as_orch();
                    t.stays = stays(&svc.spec, v);
                    t
                })
                .collect();
            let mut made: Vec<TaskRecord> = Vec::new();
            // By id, and the slots (or nodes) whose last task ended within the restart delay:
            // looked up per change, not searched (a service of 150,000 tasks).
            let index: std::collections::HashMap<&str, usize> = tasks.iter().enumerate().map(|(i, v)| (v.head.id.as_str(), i)).collect();
            let waiting = restart_waits(&svc.spec, &tasks, now);
            let mut shut: Vec<usize> = Vec::new();
            for c in orchestrator::reconcile(&svc.spec, &orch, &nodes, down) {
                match c {
                    orchestrator::Change::Shutdown { task } => {
                        if let Some(&i) = index.get(task.as_str()) {
                            shut.push(i);
                        }
                    }
                    orchestrator::Change::Create { slot, node } => {
                        // A replacement waits out the restart delay after the slot's last task
                        // ended (not after a scale, an update or a node's loss).
                        let key = if slot == 0 { (0, node.clone()) } else { (slot, None) };
                        if let Some(&end) = waiting.get(&key) {
                            let d = due.entry(name.clone()).or_insert(end);
                            *d = (*d).min(end);
                            continue;
                        }
                        let template = match self.pin(&svc.spec.task) {
                            Ok(t) => t,
                            Err(e) => {
                                tracing::warn!(service = %name, error = %e, "cannot make a task");
                                continue;
                            }
                        };
                        let t = TaskRecord {
                            id: crate::manager::new_node_id()?,
                            service: name.clone(),
                            service_id: svc.id.clone(),
                            slot,
                            node,
                            desired: Desired::Running,
                            version: svc.version,
                            template,
                            created: now,
                        };
                        orch.push(orchestrator::Task {
                            id: t.id.clone(),
                            service: name.clone(),
                            slot,
                            node: t.node.clone(),
                            state: if t.node.is_some() {
                                TaskState::Assigned
                            } else {
                                TaskState::Pending
                            },
                            desired_running: true,
                            stays: false,
                        });
                        made.push(t);
                    }
                }
            }
            drop(index);
            for i in shut {
                tasks[i].desired = Desired::Shutdown;
                tasks[i].dirty = true;
                // (`orch` was made from `tasks`, in the same order.)
                orch[i].desired_running = false;
            }
            // Pending tasks (new, or left pending before) get a node.
            let places: BTreeMap<String, String> = orchestrator::schedule(&svc.spec, &orch, &total, &nodes, down, &capacity, &reserved)
                .into_iter()
                .collect();
            let mut placed = |node: &str| {
                *total.entry(node.to_owned()).or_default() += 1;
                let r = reserved.entry(node.to_owned()).or_default();
                r.0 += svc.spec.reserve_memory;
                r.1 += svc.spec.reserve_cpu;
            };
            for t in &mut made {
                if let Some(n) = places.get(&t.id) {
                    t.node = Some(n.clone());
                }
                if let Some(n) = &t.node {
                    placed(n);
                }
                put_task(&mut creations, t);
            }
            for v in tasks.iter_mut().filter(|v| v.node.is_none()) {
                if let Some(n) = places.get(&v.head.id) {
                    v.node = Some(n.clone());
                    v.dirty = true;
                    placed(n);
                }
            }
            for v in tasks.iter().filter(|v| v.dirty) {
                self.rewrite(&mut ops, v);
            }
            trim_history(&tasks, &node_ids, &mut ops);
            if svc_changed {
                // Only over the record this pass read: a `service rm` or `update` meanwhile wins.
                service_writes.push(Request {
                    checks: vec![Check::Is {
                        key: service_key(name),
                        value: raw_services.get(name).cloned(),
                    }],
                    ops: vec![Op::Put {
                        key: service_key(name),
                        value: json(&svc),
                    }],
                });
            }
        }
        // Secret and config versions no task pins any more go (a rotation's old versions).
        if only.is_none() {
            self.drop_unpinned(&mut ops);
        }
        ops.append(&mut creations);
        Ok(Plan { ops, service_writes, due })
    }

    /// Writes what a pass changed of a task (whether it should run, its node) over its stored
    /// record; nothing if the record is gone.
    fn rewrite(&self, ops: &mut Vec<Op>, v: &Seen) {
        let Some(mut t) = self.get::<TaskRecord>(&task_key(&v.head.service, &v.head.id)) else {
            return;
        };
        t.desired = v.desired;
        t.node = v.node.clone();
        put_task(ops, &t);
    }

    fn drop_unpinned(&self, ops: &mut Vec<Op>) {
        for (kind, prefix) in [
            (crate::secrets::Kind::Secret, "secretdata/"),
            (crate::secrets::Kind::Config, "configdata/"),
        ] {
            for (k, _) in self.sm.scan(prefix) {
                let Some((name, ver)) = k[prefix.len()..].rsplit_once('/') else {
                    continue;
                };
                let current = self.secret(kind, name).map(|r| r.version);
                let ver: u32 = ver.parse().unwrap_or(0);
                if current != Some(ver) && !self.sm.tasks.pinned(&k) {
                    ops.push(Op::Delete { key: k });
                }
            }
        }
    }

    /// How many of `service`'s tasks are meant to run and run (of `version`, if given).
    pub fn running(&self, service: &str, version: Option<u64>) -> usize {
        self.sm.tasks.running(service, version)
    }
}

/// A task as an orchestration pass sees it: its indexed head and status, and what the pass
/// decides (whether it should run, its node; `dirty`: to be written).
struct Seen {
    head: std::sync::Arc<crate::taskindex::TaskHead>,
    status: Option<std::sync::Arc<TaskStatus>>,
    state: TaskState,
    desired: Desired,
    node: Option<String>,
    dirty: bool,
}

impl Seen {
    fn new(v: &crate::taskindex::Indexed) -> Seen {
        Seen {
            head: v.head.clone(),
            status: v.status.clone(),
            state: v.state(),
            desired: v.head.desired,
            node: v.head.node.clone(),
            dirty: false,
        }
    }

    fn as_orch(&self) -> orchestrator::Task {
        orchestrator::Task {
            id: self.head.id.clone(),
            service: self.head.service.clone(),
            slot: self.head.slot,
            node: self.node.clone(),
            state: self.state,
            desired_running: self.desired == Desired::Running,
            stays: false,
        }
    }
}

/// A rolling update's step: tasks of an older version are shut down `parallelism` at a time
/// once the previous batch has run for the monitor period; a new task that fails pauses the
/// update or rolls it back. Returns whether the service's record changed.
fn roll(svc: &mut ServiceRecord, tasks: &mut [Seen], now: i64) -> bool {
    let Some(state) = svc.update.clone() else { return false };
    if !matches!(state, UpdateState::Updating | UpdateState::RollingBack { .. }) {
        return false;
    }
    let cfg = svc.spec.update;
    let new: Vec<&Seen> = tasks.iter().filter(|v| v.head.version == svc.version).collect();
    let failed = new.iter().find(|v| matches!(v.state, TaskState::Failed | TaskState::Rejected));
    if let (Some(f), UpdateState::Updating) = (failed, &state) {
        let why = format!(
            "task {} failed: {}",
            &f.head.id,
            f.status.as_ref().map(|s| s.message.as_str()).unwrap_or("")
        );
        match (cfg.failure_action, &svc.previous) {
            (FailureAction::Rollback, Some(prev)) => {
                let cur = svc.spec.clone();
                svc.spec = ServiceSpec {
                    mode: cur.mode.clone(),
                    ..prev.clone()
                };
                svc.previous = Some(cur);
                svc.version += 1;
                svc.update = Some(UpdateState::RollingBack {
                    message: format!("update rolled back: {why}"),
                });
                svc.next_batch_ms = 0;
            }
            _ => {
                svc.update = Some(UpdateState::Paused {
                    message: format!("update paused: {why}"),
                })
            }
        }
        return true;
    }
    // The batch in flight: new tasks not yet running for the monitor period.
    let in_flight = new
        .iter()
        .filter(|v| v.desired == Desired::Running && !v.state.terminal())
        .filter(|v| v.state < TaskState::Running || v.status.as_ref().is_some_and(|s| now - s.updated < cfg.monitor_ms as i64))
        .count();
    let outdated: Vec<usize> = (0..tasks.len())
        .filter(|&i| {
            let v = &tasks[i];
            v.head.version < svc.version && v.desired == Desired::Running && !v.state.terminal()
        })
        .collect();
    if outdated.is_empty() && in_flight == 0 {
        svc.update = Some(match state {
            UpdateState::RollingBack { message } => UpdateState::RolledBack { message },
            _ => UpdateState::Completed,
        });
        return true;
    }
    if now < svc.next_batch_ms || in_flight >= cfg.parallelism as usize {
        return false;
    }
    if outdated.is_empty() {
        // Only the last batch's monitor period is left: nothing to write until it ends.
        return false;
    }
    let mut order = outdated;
    order.sort_by(|&a, &b| (tasks[a].head.slot, &tasks[a].node).cmp(&(tasks[b].head.slot, &tasks[b].node)));
    for i in order.into_iter().take(cfg.parallelism as usize - in_flight) {
        tasks[i].desired = Desired::Shutdown;
        tasks[i].dirty = true;
    }
    svc.next_batch_ms = now + cfg.delay_ms as i64;
    true
}

/// Whether a change from `a` to `b` replaces tasks (what they run, or where they may run), not
/// only their count.
fn rolls(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    a.task != b.task || a.constraints != b.constraints || a.reserve_cpu != b.reserve_cpu || a.reserve_memory != b.reserve_memory
}

/// An ended task its restart condition keeps in its slot.
fn stays(spec: &ServiceSpec, v: &Seen) -> bool {
    if !v.state.terminal() || v.desired != Desired::Running {
        return false;
    }
    match spec.restart.condition {
        Condition::Any => false,
        Condition::None => true,
        Condition::OnFailure => v.state == TaskState::Complete,
    }
}

/// What a pass means to write, planned on a blocking thread.
struct Plan {
    ops: Vec<Op>,
    service_writes: Vec<Request>,
    due: BTreeMap<String, i64>,
}

/// What a pass did: the operations it wrote, and when replacements it held back for their
/// restart delay are due, by service (unix ms): the leader's loop looks at those services
/// again then, not at its next full pass.
#[derive(Debug, Default)]
pub struct Pass {
    pub operations: usize,
    pub due: BTreeMap<String, i64>,
}

/// The slots (`(slot, None)`) and, for a global service, nodes (`(0, Some(node))`) whose task
/// ended less than the restart delay ago: a replacement there waits.
fn restart_waits(spec: &ServiceSpec, tasks: &[Seen], now: i64) -> BTreeMap<(u32, Option<String>), i64> {
    let mut waits = BTreeMap::new();
    for v in tasks
        .iter()
        .filter(|v| matches!(v.state, TaskState::Complete | TaskState::Failed | TaskState::Rejected))
    {
        let Some(end) = v.status.as_ref().map(|s| s.updated + spec.restart.delay_ms as i64) else {
            continue;
        };
        if now >= end {
            continue;
        }
        let key = if v.head.slot == 0 {
            (0, v.node.clone())
        } else {
            (v.head.slot, None)
        };
        let e = waits.entry(key).or_insert(end);
        *e = (*e).max(end);
    }
    waits
}

fn put_task(ops: &mut Vec<Op>, t: &TaskRecord) {
    let key = task_key(&t.service, &t.id);
    if let Some(n) = &t.node {
        ops.push(Op::Put {
            key: node_task_key(n, &t.id),
            value: key.clone().into_bytes(),
        });
    }
    ops.push(Op::Put { key, value: json(t) });
}

fn forget(ops: &mut Vec<Op>, t: &crate::taskindex::TaskHead) {
    ops.push(Op::Delete {
        key: task_key(&t.service, &t.id),
    });
    ops.push(Op::Delete {
        key: status_key(&t.service, &t.id),
    });
    if let Some(n) = &t.node {
        ops.push(Op::Delete {
            key: node_task_key(n, &t.id),
        });
    }
}

/// Ended tasks beyond [`HISTORY`] per slot go, and so do ended tasks whose node is gone.
fn trim_history(tasks: &[Seen], nodes: &BTreeSet<&str>, ops: &mut Vec<Op>) {
    let mut by_slot: BTreeMap<(u32, Option<&str>), Vec<&Seen>> = BTreeMap::new();
    for v in tasks {
        let dead = v.desired == Desired::Shutdown && (v.state.terminal() || v.state <= TaskState::Assigned && v.status.is_none());
        let node_gone = v.node.as_deref().is_some_and(|n| !nodes.contains(n));
        if node_gone && (dead || v.desired == Desired::Shutdown) {
            forget(ops, &v.head);
            continue;
        }
        if dead {
            let key = if v.head.slot == 0 {
                (0, v.node.as_deref())
            } else {
                (v.head.slot, None)
            };
            by_slot.entry(key).or_default().push(v);
        }
    }
    for (_, mut dead) in by_slot {
        dead.sort_by_key(|v| std::cmp::Reverse(v.head.created));
        for v in dead.into_iter().skip(HISTORY) {
            forget(ops, &v.head);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot waits out the restart delay after its latest ended task, until then only; the
    /// pass says when, so that the leader looks again at that moment.
    #[test]
    fn a_slot_waits_until_its_last_ended_task_plus_the_delay() {
        let mut spec = ServiceSpec {
            name: "web".into(),
            mode: Mode::Replicated { replicas: 3 },
            constraints: vec![],
            reserve_memory: 0,
            reserve_cpu: 0,
            task: Default::default(),
            restart: Default::default(),
            update: Default::default(),
        };
        spec.restart.delay_ms = 5000;
        let seen = |slot: u32, node: &str, state: TaskState, updated: i64| Seen {
            head: std::sync::Arc::new(crate::taskindex::TaskHead {
                id: format!("{slot}-{updated}"),
                service: "web".into(),
                service_id: "s".into(),
                slot,
                node: Some(node.into()),
                desired: Desired::Running,
                version: 1,
                created: 0,
                pins: vec![],
            }),
            status: Some(std::sync::Arc::new(TaskStatus {
                state,
                message: String::new(),
                container: None,
                digest: None,
                exit_code: None,
                updated,
            })),
            state,
            desired: Desired::Running,
            node: Some(node.into()),
            dirty: false,
        };
        let tasks = [
            seen(1, "a", TaskState::Failed, 500),
            seen(1, "a", TaskState::Failed, 1000),
            seen(2, "a", TaskState::Running, 0),
            seen(3, "b", TaskState::Complete, 100),
            seen(0, "c", TaskState::Rejected, 2000),
        ];
        let w = restart_waits(&spec, &tasks, 5500);
        assert_eq!(w.get(&(1, None)), Some(&6000), "the latest end counts");
        assert_eq!(w.get(&(2, None)), None, "a running task makes no wait");
        assert_eq!(w.get(&(3, None)), None, "a wait that is over");
        assert_eq!(w.get(&(0, Some("c".into()))), Some(&7000), "a global task waits on its node");
        assert!(restart_waits(&spec, &tasks, 7000).is_empty());
    }

    fn spec(f: impl FnOnce(&mut ServiceSpec)) -> Result<()> {
        let mut s = ServiceSpec {
            name: "web".into(),
            mode: Mode::Replicated { replicas: 1 },
            constraints: vec![],
            reserve_memory: 0,
            reserve_cpu: 0,
            task: TaskTemplate {
                image: "registry.example/box:1@sha256:abc".into(),
                ..Default::default()
            },
            restart: Default::default(),
            update: Default::default(),
        };
        f(&mut s);
        validate(&s)
    }

    fn secret(target: &str) -> FileRef {
        FileRef {
            source: "pw".into(),
            target: target.into(),
            ..Default::default()
        }
    }

    /// What would change a task's `bulkhead run` flags, or weaken it, is refused in one line.
    #[test]
    fn specs_that_would_inject_flags_or_weaken_tasks_are_refused() {
        spec(|_| {}).unwrap();
        spec(|s| s.task.secrets = vec![secret("pw"), secret("/etc/app/pw")]).unwrap();
        for image in ["--privileged", "-v", "box --privileged", "box,x", ""] {
            assert!(spec(|s| s.task.image = image.into()).is_err(), "{image}");
        }
        for target in ["/x,src=/etc/shadow", "pw,uid=0", "/a/../b", "-x", "a=b", "/a/./b", ".."] {
            assert!(spec(|s| s.task.secrets = vec![secret(target)]).is_err(), "{target}");
        }
        for net in ["host", "container:abc", "-x"] {
            assert!(spec(|s| s.task.networks = vec![net.into()]).is_err(), "{net}");
        }
        for cap in ["SYS_ADMIN", "cap_sys_ptrace", "CAP_BPF", "NET_ADMIN", "ALL"] {
            let e = spec(|s| s.task.cap_add = vec![cap.into()]).unwrap_err().to_string();
            assert!(e.contains("policy"), "{e}");
        }
        spec(|s| s.task.cap_add = vec!["net_bind_service".into()]).unwrap();
        assert!(spec(|s| s.name = "../x".into()).is_err());
        assert!(spec(|s| s.mode = Mode::Replicated {
            replicas: MAX_REPLICAS + 1
        })
        .is_err());
    }
}
