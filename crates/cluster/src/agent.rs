//! A node's agent (issue 16): takes its assignments from the leader's dispatcher over its own
//! stream, runs them through an [`Executor`] (the runtime's, given by the binary; a recording
//! one in the benchmark), and reports their states.
//!
//! - **Secrets only in memory, and only while needed.** The agent keeps the secrets of its last
//!   assignment message in memory (zeroed when dropped) and replaces them with each message: a
//!   secret that no task here needs any more is gone at the next message. For a start, each task
//!   gets its own tmpfs (root-only, nodev, nosuid, noexec) holding its files, which the runtime
//!   copies into the container's own tmpfs at `/run/secrets`; the agent's tmpfs is unmounted as
//!   soon as the start is over. Nothing of a secret goes to disk or into the agent's state file.
//! - **State across a restart** (never secrets): `agent.json` beside the node's files keeps each
//!   task's container and last state; the executor also lists the containers labelled with a
//!   task, so a crash between a start and the save loses nothing.
//! - **A task that is no longer assigned** is stopped and its container removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dispatcher::{Assignment, Assignments, Report, ReportItem, SessionHello};
use crate::orchestrator::TaskState;
use crate::proto;
use crate::services::Desired;

/// Statuses in one report (the leader takes at most `dispatcher::MAX_REPORT` in one).
const REPORT_CHUNK: usize = 1000;

/// A file handed to a task's container: read at its start from `path` (on the agent's tmpfs).
#[derive(Clone, Debug)]
pub struct TaskFile {
    pub path: PathBuf,
    /// A name under /run/secrets, or an absolute path.
    pub target: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
    pub secret: bool,
}

/// A started task's container.
#[derive(Clone, Debug)]
pub struct Started {
    pub container: String,
    /// The image digest it runs.
    pub digest: Option<String>,
}

/// What became of a task's container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Running,
    Exited(i32),
    Gone,
}

/// A task container's output, read as it grows (`service logs`).
pub trait LogSource: Send {
    /// What was written since the last call: (stream, text, RFC 3339 time).
    fn poll(&mut self) -> Result<Vec<(String, String, String)>, String>;
    /// Whether the container still runs (more may come).
    fn running(&self) -> bool;
}

/// What a running task's healthcheck last found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

/// A task's identity as its container gets it: the directory of its identity files (for
/// [`crate::workload::IDENTITY_TARGET`], owned by the task's user once the container is made)
/// and the Workload API's socket directory (for [`crate::workload::SOCKET_TARGET_DIR`]).
#[derive(Clone, Debug)]
pub struct IdentityMount {
    pub files: PathBuf,
    pub socket_dir: PathBuf,
}

/// What runs tasks on this node. Blocking calls: the agent makes them off its event loop.
pub trait Executor: Send + Sync + 'static {
    /// Creates and starts the task's container, with `files` as its secrets and configs and
    /// `identity` mounted read-only.
    fn start(&self, node: &str, task: &Assignment, files: &[TaskFile], identity: Option<&IdentityMount>) -> Result<Started, String>;
    fn observe(&self, container: &str) -> Observed;
    /// The container's output, from its start.
    fn logs(&self, _container: &str) -> Result<Box<dyn LogSource>, String> {
        Err("this node keeps no logs".into())
    }
    /// The container's health (None: no healthcheck, or no result yet).
    fn health(&self, _container: &str) -> Option<Health> {
        None
    }
    /// Stops the container (its stop signal, then SIGKILL).
    fn stop(&self, container: &str) -> Result<(), String>;
    /// Removes the container (killing it if it runs).
    fn remove(&self, container: &str) -> Result<(), String>;
    /// The containers this node has for tasks: (task id, container id).
    fn adopt(&self) -> Vec<(String, String)>;
    /// The container whose cgroup process `pid` (of this host) is in.
    fn container_of_pid(&self, _pid: i32) -> Option<String> {
        None
    }
    /// The host ids that own files of the container's user (for its identity files).
    fn owner(&self, _container: &str) -> Option<(u32, u32)> {
        None
    }
    /// Whether tasks get their identity as files (a tmpfs each) besides the Workload API; a
    /// harness that simulates many nodes in one process says no.
    fn identity_files(&self) -> bool {
        true
    }
    /// Makes the networks and rules of the stacks in `wanted` on this node, and takes away those
    /// of stacks no longer wanted. `Ok(false)`: something is left to take away later (a network
    /// a container still uses).
    fn stacks(&self, _wanted: &[crate::stacks::StackRecord]) -> Result<bool, String> {
        Ok(true)
    }
}

/// What the agent knows of one task (persisted, without secrets).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Local {
    container: Option<String>,
    state: TaskState,
    #[serde(default)]
    message: String,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    digest: Option<String>,
    /// The leader has this state.
    #[serde(default)]
    reported: bool,
    /// A start, stop or removal is under way.
    #[serde(skip)]
    busy: bool,
}

/// A secret (true) or config (false), by name and version.
type FileKey = (bool, String, u32);

pub struct Agent {
    node: String,
    dir: PathBuf,
    exec: Arc<dyn Executor>,
    tasks: Mutex<BTreeMap<String, Local>>,
    /// The secrets and configs of the last assignment message, by (name, version).
    files: Mutex<HashMap<FileKey, zeroize::Zeroizing<Vec<u8>>>>,
    /// The tasks of the last assignment message (only those may be reported).
    assigned: Mutex<BTreeSet<String>>,
    /// The stacks of the last assignment message (none before the first: nothing is taken
    /// away until the leader has said what is wanted).
    stacks: Mutex<Option<Vec<crate::stacks::StackRecord>>>,
    /// Whether the stacks' networks and rules need making or taking away.
    stacks_dirty: std::sync::atomic::AtomicBool,
    stack_io: Mutex<()>,
    /// Held through each save of the state file: two saves at once shared one temporary file,
    /// and an older state could be renamed over a newer one.
    save_lock: Mutex<()>,
    /// `service logs` streams running from here, by request.
    log_jobs: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
    changed: tokio::sync::Notify,
    /// Running tasks' identities (keys only in memory and in each task's tmpfs).
    identities: Mutex<HashMap<String, crate::workload::TaskIdentity>>,
    /// Bumped at every change of an identity (the Workload API's streams watch it).
    identity_changed: tokio::sync::watch::Sender<u64>,
    /// The session's client, for identities asked during a start.
    client: Mutex<Option<proto::dispatcher_client::DispatcherClient<tonic::transport::Channel>>>,
    handle: Option<tokio::runtime::Handle>,
    /// When a failed renewal is tried again (unix s), by task.
    retry: Mutex<HashMap<String, i64>>,
    /// Held while identity files are written or dropped.
    identity_io: Mutex<()>,
}

impl Agent {
    /// The agent of node `node`, its state under `dir` (the node's cluster directory).
    pub fn new(node: &str, dir: &Path, exec: Arc<dyn Executor>) -> Arc<Agent> {
        let state = dir.join("agent.json");
        let mut tasks: BTreeMap<String, Local> = std::fs::read(&state)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default();
        for (task, container) in exec.adopt() {
            tasks.entry(task).or_insert(Local {
                container: Some(container),
                state: TaskState::Running,
                message: String::new(),
                exit_code: None,
                digest: None,
                reported: false,
                busy: false,
            });
        }
        for l in tasks.values_mut() {
            // Reported again to whichever leader there is now.
            l.reported = false;
            // A start cut short by a crash: it does not resume.
            if matches!(l.state, TaskState::Accepted | TaskState::Preparing | TaskState::Starting) && l.container.is_none() {
                l.state = TaskState::Rejected;
                l.message = "the node's agent stopped during the start".into();
            }
        }
        // Tmpfs of starts cut short by a crash (with the secrets they held), and identities
        // of tasks no longer here (those of running tasks stay mounted in their containers,
        // and are renewed in place).
        if let Ok(rd) = std::fs::read_dir(dir.join("tasks")) {
            for e in rd.flatten() {
                drop_files(&e.path());
            }
        }
        if let Ok(rd) = std::fs::read_dir(crate::workload::tasks_dir(dir)) {
            for e in rd.flatten() {
                let keep = tasks
                    .get(e.file_name().to_string_lossy().as_ref())
                    .is_some_and(|l| l.state == TaskState::Running && l.container.is_some());
                if !keep {
                    drop_files(&e.path());
                }
            }
        }
        Arc::new(Agent {
            node: node.to_owned(),
            dir: dir.to_owned(),
            exec,
            tasks: Mutex::new(tasks),
            files: Mutex::new(HashMap::new()),
            assigned: Mutex::new(BTreeSet::new()),
            stacks: Mutex::new(None),
            stacks_dirty: std::sync::atomic::AtomicBool::new(false),
            stack_io: Mutex::new(()),
            save_lock: Mutex::new(()),
            log_jobs: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
            identities: Mutex::new(HashMap::new()),
            identity_changed: tokio::sync::watch::Sender::new(0),
            client: Mutex::new(None),
            handle: tokio::runtime::Handle::try_current().ok(),
            retry: Mutex::new(HashMap::new()),
            identity_io: Mutex::new(()),
        })
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.exec
    }

    /// The task whose container is `container`, if it is one of this node's live tasks.
    pub fn task_of_container(&self, container: &str) -> Option<String> {
        self.tasks
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|(_, l)| l.container.as_deref() == Some(container) && !l.state.terminal())
            .map(|(id, _)| id.clone())
    }

    pub fn identity_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.identity_changed.subscribe()
    }

    /// `f` of task `task`'s identity, if it has one.
    pub fn identity_of<R>(&self, task: &str, f: impl FnOnce(&crate::workload::TaskIdentity) -> R) -> Option<R> {
        self.identities.lock().expect("not poisoned").get(task).map(f)
    }

    fn identity_dir(&self, task: &str) -> PathBuf {
        crate::workload::tasks_dir(&self.dir).join(task)
    }

    /// A task's identity goes: from memory, and its tmpfs.
    fn drop_identity(&self, task: &str) {
        let _io = self.identity_io.lock().expect("not poisoned");
        self.retry.lock().expect("not poisoned").remove(task);
        let had = self.identities.lock().expect("not poisoned").remove(task).is_some();
        drop_files(&self.identity_dir(task));
        if had {
            self.identity_changed.send_modify(|g| *g += 1);
        }
    }

    /// A new identity for `task` into its tmpfs (made if `mount`) and memory; `starting`: for
    /// the task's start (which holds it busy), else a renewal.
    async fn renew_identity(
        &self,
        client: &mut proto::dispatcher_client::DispatcherClient<tonic::transport::Channel>,
        task: &str,
        starting: bool,
        mount: bool,
        owner: Option<(u32, u32)>,
    ) -> Result<(), String> {
        let f = crate::workload::fetch(client, task).await?;
        let dir = self.identity_dir(task);
        // Against a stop or removal meanwhile: a task that is no longer live gets nothing, and
        // files are written only into its tmpfs, never into the directory under it.
        let _io = self.identity_io.lock().expect("not poisoned");
        let live = self
            .tasks
            .lock()
            .expect("not poisoned")
            .get(task)
            .is_some_and(|l| !l.state.terminal() && (starting || !l.busy));
        if !live {
            return Err("the task is no longer running".into());
        }
        if mount {
            // Searchable by the container's user while its runtime mounts it (the owner becomes
            // that user once the container is made).
            mount_tmpfs(&dir, 64 << 10, 0o711, "bulkhead-identity")
                .map_err(|e| format!("the task's identity tmpfs at {}: {e}", dir.display()))?;
        }
        if is_mountpoint(&dir) {
            crate::workload::write_files(&dir, &f, owner).map_err(|e| format!("the task's identity files: {e}"))?;
        }
        self.identities.lock().expect("not poisoned").insert(task.to_owned(), f.identity);
        self.identity_changed.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Renews identities at about half their life, and gives one to a running task without
    /// (after the agent's restart); four at a time, beside the session (which goes on with its
    /// reports and heartbeats).
    async fn renew_identities(self: &Arc<Self>) {
        let Some(client) = self.client.lock().expect("not poisoned").clone() else {
            return;
        };
        let now = crate::services::now_ms() / 1000;
        let due: Vec<(String, String)> = {
            let tasks = self.tasks.lock().expect("not poisoned");
            let ids = self.identities.lock().expect("not poisoned");
            tasks
                .iter()
                .filter(|(_, l)| !l.busy && l.state == TaskState::Running)
                .filter(|(id, _)| ids.get(*id).is_none_or(|i| now >= i.renew_at))
                .filter_map(|(id, l)| Some((id.clone(), l.container.clone()?)))
                .collect()
        };
        let mut running = tokio::task::JoinSet::new();
        for (task, container) in due {
            if self.retry.lock().expect("not poisoned").get(&task).is_some_and(|&t| now < t) {
                continue;
            }
            while running.len() >= 4 {
                running.join_next().await;
            }
            let (me, mut client) = (self.clone(), client.clone());
            running.spawn(async move {
                let exec = me.exec.clone();
                let c = container.clone();
                let owner = tokio::task::spawn_blocking(move || exec.owner(&c)).await.ok().flatten();
                // Files the task's user cannot read are no renewal: the old ones stay until
                // the owner is known again.
                let r = match owner {
                    None if me.exec.identity_files() => Err(format!("the owner of container {container} is unknown")),
                    owner => me.renew_identity(&mut client, &task, false, false, owner).await,
                };
                match r {
                    Ok(()) => {
                        me.retry.lock().expect("not poisoned").remove(&task);
                    }
                    Err(e) => {
                        tracing::warn!(%task, error = %e, "renewing a task's identity (again in 5 s)");
                        me.retry.lock().expect("not poisoned").insert(task, now + 5);
                    }
                }
            });
        }
        while running.join_next().await.is_some() {}
    }

    fn save(&self) {
        // The state is read once this save holds the lock: the last save writes the newest.
        let _one = self.save_lock.lock().expect("not poisoned");
        let data = serde_json::to_vec(&*self.tasks.lock().expect("not poisoned")).expect("serialisable");
        let p = self.dir.join("agent.json");
        let tmp = self.dir.join("agent.json.new");
        if let Err(e) = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, &p)) {
            tracing::warn!(error = %e, "saving the agent's state");
        }
    }

    fn set(&self, task: &str, f: impl FnOnce(&mut Local)) {
        if let Some(l) = self.tasks.lock().expect("not poisoned").get_mut(task) {
            f(l);
            l.reported = false;
        }
        self.save();
        self.changed.notify_one();
    }

    /// Takes a new assignment message: starts, stops and removes what differs.
    pub fn apply(self: &Arc<Self>, a: Assignments) {
        {
            let mut files = self.files.lock().expect("not poisoned");
            files.clear();
            for (secret, list) in [(true, &a.secrets), (false, &a.configs)] {
                for f in list {
                    files.insert((secret, f.name.clone(), f.version), zeroize::Zeroizing::new(f.data.clone()));
                }
            }
        }
        *self.assigned.lock().expect("not poisoned") = a.tasks.iter().map(|t| t.id.clone()).collect();
        self.logs(&a.logs);
        {
            // A manager's word is not taken for these either.
            let valid: Vec<crate::stacks::StackRecord> = a
                .stacks
                .iter()
                .filter(|s| match s.validate() {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(stack = %crate::dispatcher::truncate(&s.name, 64), error = %e, "a stack that does not check: ignored");
                        false
                    }
                })
                .cloned()
                .collect();
            let mut stacks = self.stacks.lock().expect("not poisoned");
            if stacks.as_ref() != Some(&valid) {
                *stacks = Some(valid);
                self.stacks_dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let ids: BTreeSet<&str> = a.tasks.iter().map(|t| t.id.as_str()).collect();
        let mut starts = Vec::new();
        let mut stops = Vec::new();
        let mut removes = Vec::new();
        {
            let mut tasks = self.tasks.lock().expect("not poisoned");
            for t in &a.tasks {
                // A manager's word is not taken for what runs here: ids are ours to use as
                // paths and names, and the template is checked as the manager checks it.
                if t.id.len() != 16 || !t.id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    tracing::warn!(task = %crate::dispatcher::truncate(&t.id, 64), "an assignment with a malformed task id: ignored");
                    continue;
                }
                if let Err(e) = crate::services::validate_task(&t.template) {
                    if !tasks.contains_key(&t.id) {
                        tasks.insert(
                            t.id.clone(),
                            Local {
                                container: None,
                                state: TaskState::Rejected,
                                message: crate::dispatcher::truncate(&format!("refused by the node: {e}"), 1024),
                                exit_code: None,
                                digest: None,
                                reported: false,
                                busy: false,
                            },
                        );
                    }
                    continue;
                }
                match (t.desired, tasks.get_mut(&t.id)) {
                    (Desired::Running, None) if !t.state.terminal() => {
                        tasks.insert(
                            t.id.clone(),
                            Local {
                                container: None,
                                state: TaskState::Accepted,
                                message: String::new(),
                                exit_code: None,
                                digest: None,
                                reported: false,
                                busy: true,
                            },
                        );
                        starts.push(t.clone());
                    }
                    (Desired::Shutdown, Some(l)) if !l.busy && !l.state.terminal() => {
                        l.busy = true;
                        stops.push((t.id.clone(), l.container.clone()));
                    }
                    _ => {}
                }
            }
            for (id, l) in tasks.iter_mut() {
                if !ids.contains(id.as_str()) && !l.busy {
                    l.busy = true;
                    removes.push((id.clone(), l.container.clone()));
                }
            }
        }
        for t in starts {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.start(t));
        }
        for (id, c) in stops {
            let me = self.clone();
            tokio::task::spawn_blocking(move || {
                let r = c.as_deref().map(|c| me.exec.stop(c)).unwrap_or(Ok(()));
                me.drop_identity(&id);
                me.set(&id, |l| {
                    l.busy = false;
                    l.state = TaskState::Shutdown;
                    if let Err(e) = r {
                        l.message = format!("stopping: {e}");
                    }
                });
            });
        }
        for (id, c) in removes {
            let me = self.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(c) = c {
                    if let Err(e) = me.exec.remove(&c) {
                        tracing::warn!(task = %id, error = %e, "removing a task's container");
                    }
                }
                me.drop_identity(&id);
                me.tasks.lock().expect("not poisoned").remove(&id);
                me.save();
                me.stacks_dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            });
        }
        self.changed.notify_one();
    }

    /// A task's start: its files on a tmpfs of its own, its identity, the executor's start, the
    /// files' tmpfs gone.
    fn start(&self, t: Assignment) {
        self.set(&t.id, |l| l.state = TaskState::Preparing);
        let dir = self.dir.join("tasks").join(&t.id);
        let gated = t.template.health_cmd.is_some();
        let result = self
            .stack_for_start(&t)
            .and_then(|()| self.write_files(&t, &dir))
            .and_then(|files| {
                let identity = self.identity_for_start(&t.id)?;
                self.set(&t.id, |l| l.state = TaskState::Starting);
                self.exec.start(&self.node, &t, &files, identity.as_ref())
            });
        drop_files(&dir);
        if result.is_err() {
            self.drop_identity(&t.id);
        }
        self.set(&t.id, |l| {
            l.busy = false;
            match result {
                Ok(s) => {
                    // With a healthcheck, running once it passes (see `observe`).
                    l.state = if gated { TaskState::Starting } else { TaskState::Running };
                    l.container = Some(s.container);
                    l.digest = s.digest;
                }
                Err(e) => {
                    l.state = TaskState::Rejected;
                    l.message = crate::dispatcher::truncate(&e, 1024);
                }
            }
        });
    }

    /// The task's identity, asked of the leader over the session, on a tmpfs of its own.
    fn identity_for_start(&self, task: &str) -> Result<Option<IdentityMount>, String> {
        let (Some(handle), Some(mut client)) = (self.handle.clone(), self.client.lock().expect("not poisoned").clone()) else {
            return Err("no session with the leader for the task's identity".into());
        };
        let files = self.exec.identity_files();
        handle.block_on(self.renew_identity(&mut client, task, true, files, None))?;
        if !files {
            return Ok(None);
        }
        Ok(Some(IdentityMount {
            files: self.identity_dir(task),
            socket_dir: crate::workload::socket_path(&self.dir)
                .parent()
                .unwrap_or(Path::new("/"))
                .to_owned(),
        }))
    }

    /// The task's secrets and configs, each a file on a tmpfs made for this start.
    fn write_files(&self, t: &Assignment, dir: &Path) -> Result<Vec<TaskFile>, String> {
        if t.template.secrets.is_empty() && t.template.configs.is_empty() {
            return Ok(Vec::new());
        }
        let files = self.files.lock().expect("not poisoned");
        let mut need = Vec::new();
        for (secret, list) in [(true, &t.template.secrets), (false, &t.template.configs)] {
            for f in list {
                let data = files.get(&(secret, f.source.clone(), f.version)).ok_or_else(|| {
                    format!(
                        "the {} {} (version {}) did not come with the assignment",
                        if secret { "secret" } else { "config" },
                        f.source,
                        f.version
                    )
                })?;
                need.push((secret, f, data.clone()));
            }
        }
        drop(files);
        let size: usize = need.iter().map(|(_, _, d)| d.len() + 4096).sum::<usize>() + (64 << 10);
        mount_tmpfs(dir, size, 0o700, "bulkhead-task").map_err(|e| format!("the task's tmpfs at {}: {e}", dir.display()))?;
        let mut out = Vec::new();
        for (i, (secret, f, data)) in need.into_iter().enumerate() {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let p = dir.join(format!("{i}"));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .custom_flags(libc_o_nofollow())
                .open(&p)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            file.write_all(&data).map_err(|e| format!("{}: {e}", p.display()))?;
            let target = if secret && !f.target.starts_with('/') {
                format!("/run/secrets/{}", f.target)
            } else {
                f.target.clone()
            };
            out.push(TaskFile {
                path: p,
                target,
                uid: f.uid,
                gid: f.gid,
                mode: f.mode.unwrap_or(if secret { 0o400 } else { 0o444 }),
                secret,
            });
        }
        Ok(out)
    }

    /// Starts the log streams asked for that do not run yet; ends those no longer asked for
    /// (the user went).
    fn logs(self: &Arc<Self>, asked: &[crate::logs::LogRequest]) {
        let mut jobs = self.log_jobs.lock().expect("not poisoned");
        // One still asked whose job ended (its call failed) starts again; the leader refuses
        // a node that said it was done.
        jobs.retain(|id, job| {
            let asked = asked.iter().any(|r| r.id == *id);
            if !asked {
                job.abort();
            }
            asked && !job.is_finished()
        });
        let Some(handle) = &self.handle else { return };
        for r in asked.iter().take(crate::logs::MAX_SUBSCRIPTIONS) {
            if jobs.contains_key(&r.id) {
                continue;
            }
            let job = handle.spawn(self.clone().log_job(r.clone()));
            jobs.insert(r.id, job.abort_handle());
        }
    }

    /// One `service logs` stream: the asked tasks' lines (their last `tail` first), then with
    /// `follow` what they write until they stop or the request is withdrawn; sent in calls of
    /// at most [`crate::logs::SEGMENT`], the last ending with an empty batch (done).
    async fn log_job(self: Arc<Self>, r: crate::logs::LogRequest) {
        use crate::logs::{LogLine, MAX_BATCH, MAX_LINE, SEGMENT};
        let Some(client) = self.client.lock().expect("not poisoned").clone() else {
            return;
        };
        // Only tasks of this node, with a container (a manager's word is not taken for more).
        let containers: Vec<(String, String)> = {
            let tasks = self.tasks.lock().expect("not poisoned");
            r.tasks
                .iter()
                .filter_map(|t| Some((t.clone(), tasks.get(t)?.container.clone()?)))
                .collect()
        };
        // The logs are read off the event loop, and handed over in batches (none: the end).
        let (ptx, mut prx) = tokio::sync::mpsc::channel::<Vec<LogLine>>(8);
        let exec = self.exec.clone();
        let (follow, tail) = (r.follow, r.tail);
        let producer = tokio::task::spawn_blocking(move || {
            let line = |task: &str, (stream, line, time): (String, String, String)| LogLine {
                task: task.to_owned(),
                stream,
                line: crate::dispatcher::truncate(&line, MAX_LINE),
                time,
                node: String::new(),
            };
            let mut sources: Vec<(String, Box<dyn LogSource>)> =
                containers.into_iter().filter_map(|(t, c)| Some((t, exec.logs(&c).ok()?))).collect();
            for (t, s) in sources.iter_mut() {
                let all = s.poll().unwrap_or_default();
                let skip = tail.map_or(0, |n| all.len().saturating_sub(n as usize));
                let lines: Vec<LogLine> = all.into_iter().skip(skip).map(|x| line(t, x)).collect();
                if !lines.is_empty() && ptx.blocking_send(lines).is_err() {
                    return;
                }
            }
            while follow && !ptx.is_closed() {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let mut any = false;
                for (t, s) in sources.iter_mut() {
                    any |= s.running();
                    let lines: Vec<LogLine> = s.poll().unwrap_or_default().into_iter().map(|x| line(t, x)).collect();
                    if !lines.is_empty() && ptx.blocking_send(lines).is_err() {
                        return;
                    }
                }
                if !any {
                    return;
                }
            }
        });
        let payload = |v: &dyn erased::Json| proto::Payload { json: v.json() };
        let mut finished = false;
        while !finished {
            let (tx, rx) = tokio::sync::mpsc::channel::<proto::Payload>(8);
            if tx.send(payload(&crate::logs::LogHeader { id: r.id })).await.is_err() {
                break;
            }
            let call = {
                let mut c = client.clone();
                tokio::spawn(async move { c.logs(tokio_stream::wrappers::ReceiverStream::new(rx)).await })
            };
            let deadline = tokio::time::Instant::now() + SEGMENT;
            'segment: loop {
                match tokio::time::timeout_at(deadline, prx.recv()).await {
                    Ok(Some(lines)) => {
                        // Batches of at most MAX_BATCH lines and about 512 KiB.
                        let mut batch: Vec<LogLine> = Vec::new();
                        let mut bytes = 0;
                        for l in lines {
                            bytes += l.line.len() + l.task.len() + l.time.len() + 64;
                            batch.push(l);
                            if batch.len() >= MAX_BATCH || bytes >= 512 << 10 {
                                if tx.send(payload(&std::mem::take(&mut batch))).await.is_err() {
                                    break 'segment;
                                }
                                bytes = 0;
                            }
                        }
                        if !batch.is_empty() && tx.send(payload(&batch)).await.is_err() {
                            break 'segment;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(payload(&Vec::<LogLine>::new())).await;
                        finished = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            drop(tx);
            match call.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(request = r.id, error = %e.message(), "a log stream ended");
                    break;
                }
                Err(_) => break,
            }
        }
        drop(prx);
        let _ = producer.await;
    }

    /// The networks and rules of the stacks wanted, made; those of others taken away.
    fn sync_stacks(&self) -> Result<(), String> {
        let _io = self.stack_io.lock().expect("not poisoned");
        let Some(wanted) = self.stacks.lock().expect("not poisoned").clone() else {
            return Ok(());
        };
        self.stacks_dirty.store(false, std::sync::atomic::Ordering::SeqCst);
        match self.exec.stacks(&wanted) {
            Ok(settled) => {
                if !settled {
                    self.stacks_dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(())
            }
            Err(e) => {
                self.stacks_dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// A task of a stack starts only once its stack's networks and rules are in place here.
    fn stack_for_start(&self, t: &Assignment) -> Result<(), String> {
        let Some(stack) = &t.template.stack else { return Ok(()) };
        let known = self
            .stacks
            .lock()
            .expect("not poisoned")
            .as_ref()
            .is_some_and(|w| w.iter().any(|s| &s.name == stack));
        if !known {
            return Err(format!("stack {stack}: its networks and rules did not come with the task"));
        }
        // Another stack's failure (each is reported as `stack NAME: ...`) is not this task's.
        match self.sync_stacks() {
            Err(e) if e.split("; ").any(|x| x.starts_with(&format!("stack {stack}: "))) => Err(e),
            Err(e) if !e.starts_with("stack ") => Err(format!("stack {stack}: {e}")),
            _ => Ok(()),
        }
    }

    /// Checks the containers of running tasks: an exit is reported as complete or failed.
    pub fn observe(self: &Arc<Self>) {
        if self.stacks_dirty.load(std::sync::atomic::Ordering::SeqCst) {
            if let Err(e) = self.sync_stacks() {
                tracing::warn!(error = %e, "the stacks' networks and rules");
            }
        }
        let running: Vec<(String, String)> = self
            .tasks
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, l)| !l.busy && matches!(l.state, TaskState::Running | TaskState::Starting))
            .filter_map(|(id, l)| Some((id.clone(), l.container.clone()?)))
            .collect();
        for (id, c) in running {
            let seen = self.exec.observe(&c);
            if seen != Observed::Running {
                self.drop_identity(&id);
            }
            match seen {
                Observed::Running => match self.exec.health(&c) {
                    Some(Health::Healthy) => self.set(&id, |l| {
                        if l.state == TaskState::Starting {
                            l.state = TaskState::Running;
                        }
                    }),
                    // Unhealthy: stopped and failed, as Swarm does; the orchestrator replaces it
                    // (and an update's new task that fails pauses or rolls the update back).
                    // The stop (up to its grace period) runs on a thread of its own, as `apply`'s
                    // do: the session's loop keeps its heartbeats.
                    Some(Health::Unhealthy) => {
                        self.set(&id, |l| l.busy = true);
                        let me = self.clone();
                        let stop = move || {
                            if let Err(e) = me.exec.stop(&c) {
                                tracing::warn!(task = %id, error = %e, "stopping an unhealthy task");
                            }
                            me.drop_identity(&id);
                            me.set(&id, |l| {
                                l.busy = false;
                                l.state = TaskState::Failed;
                                l.message = "its healthcheck failed: stopped".into();
                            });
                        };
                        match &self.handle {
                            Some(h) => drop(h.spawn_blocking(stop)),
                            None => stop(),
                        }
                    }
                    Some(Health::Starting) | None => {}
                },
                Observed::Exited(code) => self.set(&id, |l| {
                    l.state = if code == 0 { TaskState::Complete } else { TaskState::Failed };
                    l.exit_code = Some(code);
                    l.message = if code == 0 {
                        "finished".into()
                    } else {
                        format!("exited with {code}")
                    };
                }),
                Observed::Gone => self.set(&id, |l| {
                    l.state = TaskState::Failed;
                    l.message = "the task's container is gone".into();
                }),
            }
        }
    }

    /// What to report: every assigned task's state (`all`), or those the leader does not have.
    fn report(&self, all: bool) -> Report {
        let assigned = self.assigned.lock().expect("not poisoned");
        let tasks = self.tasks.lock().expect("not poisoned");
        Report {
            statuses: tasks
                .iter()
                .filter(|(id, l)| assigned.contains(*id) && (all || !l.reported))
                .map(|(id, l)| ReportItem {
                    task: id.clone(),
                    status: crate::services::TaskStatus {
                        state: l.state,
                        message: l.message.clone(),
                        container: l.container.clone(),
                        digest: l.digest.clone(),
                        exit_code: l.exit_code,
                        updated: 0,
                    },
                })
                .collect(),
        }
    }

    fn reported(&self, r: &Report) {
        let mut tasks = self.tasks.lock().expect("not poisoned");
        for item in &r.statuses {
            if let Some(l) = tasks.get_mut(&item.task) {
                if l.state == item.status.state {
                    l.reported = true;
                }
            }
        }
    }
}

fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// A tmpfs at `dir` (made anew) whose root and parent directory have `mode`; `name` is its
/// source in the mount table.
fn mount_tmpfs(dir: &Path, size: usize, mode: u32, name: &str) -> std::io::Result<()> {
    use rustix::mount::MountFlags;
    std::fs::create_dir_all(dir.parent().unwrap_or(dir))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let parent = dir.parent().unwrap_or(dir);
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode))?;
    }
    drop_files(dir);
    std::fs::create_dir(dir)?;
    let mount = |options: String| {
        let options = std::ffi::CString::new(options).expect("no NUL");
        rustix::mount::mount(
            name,
            dir,
            "tmpfs",
            MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC,
            Some(options.as_c_str()),
        )
    };
    // noswap needs Linux 6.4.
    mount(format!("mode={mode:04o},size={size},noswap"))
        .or_else(|_| mount(format!("mode={mode:04o},size={size}")))
        .map_err(std::io::Error::from)
}

/// This host's memory (bytes, /proc/meminfo's MemTotal) and CPUs (thousandths, those this
/// process may use).
fn host_resources() -> Option<(u64, u64)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())?;
    let cpus = std::thread::available_parallelism().ok()?.get() as u64;
    Some((kib * 1024, cpus * 1000))
}

/// Whether `dir` is a mount point (another filesystem than its parent's).
fn is_mountpoint(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(d), Some(Ok(p))) = (std::fs::symlink_metadata(dir), dir.parent().map(std::fs::metadata)) else {
        return false;
    };
    d.is_dir() && d.dev() != p.dev()
}

/// Unmounts and removes a task's tmpfs directory, if there is one.
fn drop_files(dir: &Path) {
    let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_dir(dir);
}

/// The agent's loop: a session with the leader (found through `targets`, the managers this
/// node knows), its messages applied, reports sent when something changed and every heartbeat.
pub async fn run(agent: Arc<Agent>, tls: Arc<rustls::ClientConfig>, targets: Arc<std::sync::RwLock<Vec<String>>>) {
    let a = agent.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            a.renew_identities().await;
        }
    });
    let hostname = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let mut leader: Option<String> = None;
    loop {
        let mut order: Vec<String> = targets.read().expect("not poisoned").clone();
        if let Some(l) = leader.take() {
            order.retain(|t| *t != l);
            order.insert(0, l);
        }
        for target in order {
            match session(&agent, &tls, &target, &hostname).await {
                Ok(()) => {}
                Err(s) => {
                    if let Some(l) = crate::dispatcher::leader_hint(&s) {
                        leader = Some(l);
                        break;
                    }
                    tracing::debug!(manager = %target, error = %s, "dispatcher session");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn session(agent: &Arc<Agent>, tls: &Arc<rustls::ClientConfig>, target: &str, hostname: &str) -> Result<(), tonic::Status> {
    let ch = crate::transport::connect(target, tls.clone())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = proto::dispatcher_client::DispatcherClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(16 << 20);
    let hello = SessionHello {
        node: Some(agent.node.clone()),
        hostname: hostname.to_owned(),
        resources: host_resources(),
    };
    let mut stream = client
        .session(proto::Payload {
            json: serde_json::to_vec(&hello).expect("serialisable"),
        })
        .await?
        .into_inner();
    tracing::info!(manager = %target, "dispatcher session open");
    *agent.client.lock().expect("not poisoned") = Some(client.clone());
    let mut heartbeat = Duration::from_secs(5);
    let mut last_full = Instant::now() - Duration::from_secs(3600);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            msg = stream.message() => {
                match msg? {
                    Some(p) => {
                        let a: Assignments = serde_json::from_slice(&p.json)
                            .map_err(|e| tonic::Status::invalid_argument(format!("assignments: {e}")))?;
                        heartbeat = Duration::from_millis(a.heartbeat_ms.clamp(200, 60_000));
                        agent.apply(a);
                    }
                    None => return Ok(()),
                }
            }
            _ = tick.tick() => {
                let me = agent.clone();
                let _ = tokio::task::spawn_blocking(move || me.observe()).await;
            }
            _ = agent.changed.notified() => {}
        }
        let all = last_full.elapsed() >= heartbeat;
        let r = agent.report(all);
        if all || !r.statuses.is_empty() {
            // In parts: the leader takes a bounded write per report (the first part, even
            // empty, is the heartbeat).
            let mut parts = r.statuses.chunks(REPORT_CHUNK).peekable();
            let mut first = true;
            while first || parts.peek().is_some() {
                first = false;
                let part = Report {
                    statuses: parts.next().unwrap_or_default().to_vec(),
                };
                client
                    .report(proto::Payload {
                        json: serde_json::to_vec(&part).expect("serialisable"),
                    })
                    .await?;
                agent.reported(&part);
            }
            if all {
                last_full = Instant::now();
            }
        }
    }
}

/// Any serialisable value as a payload's JSON (for [`Agent::log_job`]'s messages).
mod erased {
    pub trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("serialisable")
        }
    }
}
