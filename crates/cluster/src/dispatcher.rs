//! The leader's dispatcher (issue 16): each node's assignments over its own mutually
//! authenticated stream, its reports of its tasks, its heartbeats; and the loop that runs the
//! orchestrator when something changed.
//!
//! - **Only the leader dispatches.** A follower refuses with `not the leader` and the leader's
//!   address, and the agent moves there. Heartbeats live in the leader's memory (as Swarm's do):
//!   a node not heard for 3 heartbeats is down and its tasks are rescheduled; a new leader gives
//!   every node 3 heartbeats from its election.
//! - **A node sees and reports only its own tasks**: its id is its certificate's; the tasks of a
//!   report must be under `nodetasks/<its id>/`, or the whole report is refused.
//! - **Secrets go only where needed**: an assignment message carries the data of the secrets
//!   and configs that the node's tasks reference while they are between assigned and running,
//!   and nothing else; the next message without one tells the agent to drop it.
//! - **Changes, not polling**: the state machine announces the keys each apply changed; the hub
//!   wakes the sessions of the nodes concerned and marks the services to orchestrate.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use crate::manager::{Error, Manager};
use crate::orchestrator::TaskState;
use crate::pki::Role;
use crate::proto;
use crate::services::{Desired, TaskStatus, TaskTemplate, UpdateState};
use crate::store::{Check, Op, Request};

/// The first message of a session.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionHello {
    /// Must be the caller's own id if given (a node asks only for its own assignments).
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub hostname: String,
    /// The host's memory (bytes) and CPUs (thousandths), for reservations.
    #[serde(default)]
    pub resources: Option<(u64, u64)>,
}

/// The largest resources a node may report: 1 PiB of memory, 100,000 CPUs.
const MAX_RESOURCES: (u64, u64) = (1 << 50, 100_000_000);

/// One task as its node gets it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub id: String,
    pub service: String,
    pub service_id: String,
    pub slot: u32,
    pub desired: Desired,
    pub template: TaskTemplate,
    /// The state the store has (what the node last reported, or assigned).
    pub state: TaskState,
}

/// A secret's or config's data for a node; its `Debug` shows no data.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct FileData {
    pub name: String,
    pub version: u32,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for FileData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileData({} v{}, {} bytes)", self.name, self.version, self.data.len())
    }
}

impl Drop for FileData {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

/// Everything a node should run now, sent whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    pub tasks: Vec<Assignment>,
    pub secrets: Vec<FileData>,
    pub configs: Vec<FileData>,
    pub heartbeat_ms: u64,
    /// The stacks of the node's tasks that are not over: their networks and rules.
    #[serde(default)]
    pub stacks: Vec<crate::stacks::StackRecord>,
    /// The log streams asked of the node now (`service logs`).
    #[serde(default)]
    pub logs: Vec<crate::logs::LogRequest>,
}

/// A node's report of some of its tasks.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub statuses: Vec<ReportItem>,
}

/// One task's state as its node reports it (the leader sets `updated` itself).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "ReportWire", into = "ReportWire")]
pub struct ReportItem {
    pub task: String,
    pub status: TaskStatus,
}

/// A report item as it travels: the status's fields beside the task's id. Named fields, not
/// `#[serde(flatten)]`, which keeps every unknown field of the input in memory while it parses.
#[derive(Clone, Serialize, Deserialize)]
struct ReportWire {
    task: String,
    state: TaskState,
    #[serde(default)]
    message: String,
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    updated: i64,
}

impl From<ReportWire> for ReportItem {
    fn from(w: ReportWire) -> Self {
        ReportItem {
            task: w.task,
            status: TaskStatus {
                state: w.state,
                message: w.message,
                container: w.container,
                digest: w.digest,
                exit_code: w.exit_code,
                updated: w.updated,
            },
        }
    }
}

impl From<ReportItem> for ReportWire {
    fn from(i: ReportItem) -> Self {
        ReportWire {
            task: i.task,
            state: i.status.state,
            message: i.status.message,
            container: i.status.container,
            digest: i.status.digest,
            exit_code: i.status.exit_code,
            updated: i.status.updated,
        }
    }
}

/// The largest report a node may send, checked before it is parsed (10,000 statuses of about
/// 400 bytes each).
pub const MAX_REPORT_BYTES: usize = 4 << 20;

/// The largest request for a task's identity (a CSR and a task id), checked before parsing.
pub const MAX_IDENTITY_BYTES: usize = 64 << 10;

/// How long a session's next message may wait for the node to read the last: a node that
/// stops reading loses its session, rather than holding the leader's task and buffers.
pub const SEND_WITHIN: Duration = Duration::from_secs(30);

/// How often a node's hostname and resources are written from its session's hello at most: a
/// node that reconnects with another name each time cannot make every session cost a Raft
/// write and a pass over the whole cluster.
const DESCRIBE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportReply {
    pub heartbeat_ms: u64,
}

/// At most this many statuses in one report.
pub const MAX_REPORT: usize = 1_000;

/// What the leader keeps in memory: heartbeats, sessions to wake, services to orchestrate.
#[derive(Default)]
pub struct Hub {
    seen: Mutex<HashMap<String, Instant>>,
    leading_since: Mutex<Option<Instant>>,
    /// Bumped to wake every session of a node (none misses a bump made while it was busy).
    sessions: Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>,
    dirty: Mutex<Option<BTreeSet<String>>>,
    all_dirty: std::sync::atomic::AtomicBool,
    kick: tokio::sync::Notify,
    /// Each node's open sessions, oldest first.
    open: Mutex<HashMap<String, Vec<OpenSession>>>,
    next_session: std::sync::atomic::AtomicU64,
    /// `service logs` subscriptions.
    pub(crate) logs: crate::logs::Subscriptions,
    /// When each node's description was last written from a session's hello.
    described: Mutex<HashMap<String, Instant>>,
    /// The term in which this manager leads and has applied everything committed before it
    /// (0: none): until then it neither orchestrates nor dispatches, since its store may lack
    /// the last leader's final writes.
    ready_term: std::sync::atomic::AtomicU64,
    /// Each node's reports being judged and written.
    reporting: Arc<Mutex<HashMap<String, usize>>>,
    /// The services in a rolling update or rollback, as the leader's loop last saw them.
    updating: Mutex<BTreeSet<String>>,
    /// When a service's replacements held back for their restart delay are due (unix ms).
    due: Mutex<BTreeMap<String, i64>>,
}

/// A session's serial, and what ends it when dropped.
type OpenSession = (u64, tokio::sync::oneshot::Sender<()>);

/// Sessions one node may hold at once: a reconnect may overlap the session it replaces, and a
/// third ends the oldest (a node cannot multiply the leader's work by opening more).
pub const MAX_SESSIONS_PER_NODE: usize = 2;

/// Reports of one node judged and written at once (an agent sends one at a time): a node
/// cannot fill the leader's queue of writes with reports that will not apply.
const MAX_REPORTS_PER_NODE: usize = 2;

/// The largest write of a report (its checks hold each task's record): a report of many tasks
/// is written in several.
pub const MAX_REPORT_WRITE: usize = 2 << 20;

impl Hub {
    pub fn new() -> Arc<Hub> {
        let h = Hub::default();
        h.all_dirty.store(true, std::sync::atomic::Ordering::SeqCst);
        Arc::new(h)
    }

    /// Refuses unless this manager leads and has caught up with its term's start (see
    /// `ready_term`).
    pub(crate) fn serving(&self, m: &Manager) -> std::result::Result<(), Status> {
        m.leading()?;
        let term = m.raft.metrics().borrow().current_term;
        if self.ready_term.load(std::sync::atomic::Ordering::SeqCst) != term {
            return Err(Status::unavailable(
                "this manager has just been elected and is catching up; try again",
            ));
        }
        Ok(())
    }

    /// Whether this manager dispatches now (it leads, and has caught up with its term's start).
    pub fn dispatching(&self, m: &Manager) -> bool {
        self.serving(m).is_ok()
    }

    /// Whether a session's hello may write the node's description now.
    fn may_describe(&self, node: &str) -> bool {
        let mut d = self.described.lock().expect("not poisoned");
        if d.get(node).is_some_and(|t| t.elapsed() < DESCRIBE_EVERY) {
            return false;
        }
        d.insert(node.to_owned(), Instant::now());
        true
    }

    fn seen(&self, node: &str) {
        self.seen.lock().expect("not poisoned").insert(node.to_owned(), Instant::now());
    }

    /// The nodes not heard for `3 × heartbeat` (counting from this manager's election for nodes
    /// it has not heard at all).
    pub fn down(&self, nodes: &[String], heartbeat: Duration) -> BTreeSet<String> {
        let Some(since) = *self.leading_since.lock().expect("not poisoned") else {
            return BTreeSet::new();
        };
        let seen = self.seen.lock().expect("not poisoned");
        let limit = heartbeat * 3;
        nodes
            .iter()
            .filter(|n| seen.get(*n).copied().unwrap_or(since).elapsed() > limit)
            .cloned()
            .collect()
    }

    /// A new session of `node`: its serial, and what fires when a newer one ends it.
    fn open_session(&self, node: &str) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let serial = self.next_session.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut open = self.open.lock().expect("not poisoned");
        let list = open.entry(node.to_owned()).or_default();
        list.push((serial, tx));
        while list.len() > MAX_SESSIONS_PER_NODE {
            // Dropping its sender ends the oldest.
            list.remove(0);
        }
        (serial, rx)
    }

    fn close_session(&self, node: &str, serial: u64) {
        let mut open = self.open.lock().expect("not poisoned");
        if let Some(list) = open.get_mut(node) {
            list.retain(|(s, _)| *s != serial);
            if list.is_empty() {
                open.remove(node);
            }
        }
    }

    fn notifier(&self, node: &str) -> tokio::sync::watch::Receiver<u64> {
        self.sessions
            .lock()
            .expect("not poisoned")
            .entry(node.to_owned())
            .or_insert_with(|| tokio::sync::watch::Sender::new(0))
            .subscribe()
    }

    pub(crate) fn wake(&self, node: &str) {
        if let Some(n) = self.sessions.lock().expect("not poisoned").get(node) {
            n.send_modify(|g| *g += 1);
        }
    }

    fn wake_all(&self) {
        for n in self.sessions.lock().expect("not poisoned").values() {
            n.send_modify(|g| *g += 1);
        }
    }

    fn mark(&self, service: &str) {
        self.dirty
            .lock()
            .expect("not poisoned")
            .get_or_insert_with(BTreeSet::new)
            .insert(service.to_owned());
        self.kick.notify_one();
    }

    fn mark_all(&self) {
        self.all_dirty.store(true, std::sync::atomic::Ordering::SeqCst);
        self.kick.notify_one();
    }

    /// Follows the store's changes: wakes the sessions of the nodes concerned and marks the
    /// services to orchestrate.
    pub async fn follow(self: Arc<Hub>, m: Manager) {
        let mut rx = m.sm.subscribe();
        loop {
            let keys = match rx.recv().await {
                Ok(k) => k,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Arc::new(vec!["*".to_owned()]),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            for k in keys.iter() {
                let mut parts = k.splitn(3, '/');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("nodetasks"), Some(node), _) => self.wake(node),
                    // Only a pass writes task records: what it wrote asks for no other pass (at
                    // 75,000 tasks a service, each such pass was a second of CPU that found
                    // nothing to do). A pass cut short marks everything; a new leader does too.
                    (Some("tasks"), Some(_), Some(_)) => {
                        if let Some(node) = m.get::<crate::services::TaskRecord>(k).and_then(|t| t.node) {
                            self.wake(&node);
                        }
                    }
                    // A task that ended may need a replacement; one that moved on towards
                    // running matters only to a rolling update. (A status goes only with its
                    // task, forgotten by a pass.)
                    (Some("taskstatus"), Some(svc), _) => {
                        let ended = m.get::<crate::services::TaskStatus>(k).is_some_and(|s| s.state.terminal());
                        if ended || self.updating.lock().expect("not poisoned").contains(svc) {
                            self.mark(svc);
                        }
                    }
                    (Some("services"), Some(svc), _) => self.mark(svc),
                    (Some("nodes"), _, _) | (Some("*"), _, _) => {
                        self.mark_all();
                        self.wake_all();
                    }
                    _ => {}
                }
            }
        }
    }

    /// The leader's loop: on each change (or every second), orchestrate the services marked;
    /// every 5 s, or when the nodes that are down change, all of them.
    pub async fn orchestrate(self: Arc<Hub>, m: Manager) {
        let mut last_full = Instant::now() - Duration::from_secs(60);
        let mut last_down = BTreeSet::new();
        let mut disrupted = false;
        // The term this manager last led in (0: not leading): a new term is a new leadership,
        // even if this loop did not see the terms between (a pass can take long).
        let mut led_term = 0;
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.kick.notified()).await;
            // Changes come in bursts: gather them for a moment.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (leading, term) = {
                let metrics = m.raft.metrics().borrow().clone();
                (metrics.current_leader == Some(metrics.id), metrics.current_term)
            };
            if !leading {
                led_term = 0;
                self.ready_term.store(0, std::sync::atomic::Ordering::SeqCst);
                *self.leading_since.lock().expect("not poisoned") = None;
                continue;
            }
            if self.ready_term.load(std::sync::atomic::Ordering::SeqCst) != term {
                // Elected: the previous leader's last entries may be committed but not yet
                // applied here. A pass on that store would see a slot empty that is not, and
                // fill it twice; a session would send a node assignments without its newest
                // tasks. Wait until everything committed before this term is applied.
                match tokio::time::timeout(Duration::from_secs(5), m.raft.ensure_linearizable()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "not yet caught up as leader");
                        continue;
                    }
                    Err(_) => continue,
                }
                self.ready_term.store(term, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(term, "leading and caught up: orchestrating and dispatching");
                self.mark_all();
                self.wake_all();
            }
            if led_term != term {
                led_term = term;
                *self.leading_since.lock().expect("not poisoned") = Some(Instant::now());
                self.seen.lock().expect("not poisoned").clear();
                self.mark_all();
            }
            let ids: Vec<String> = m.nodes().into_iter().map(|n| n.id).collect();
            let mut down = self.down(&ids, m.heartbeat());
            // More than half the nodes silent at once is more likely this manager's trouble (an
            // overload, a partition) than theirs: their tasks stay where they are, as
            // Kubernetes stops evicting in a "full disruption".
            if full_disruption(ids.len(), down.len()) {
                if !disrupted {
                    disrupted = true;
                    tracing::warn!(
                        down = down.len(),
                        nodes = ids.len(),
                        "more than half of the nodes missed their heartbeats: nothing is rescheduled until they are back"
                    );
                }
                down = BTreeSet::new();
            } else {
                disrupted = false;
            }
            if down != last_down {
                if !down.is_empty() {
                    tracing::warn!(?down, "nodes missed 3 heartbeats: their tasks are rescheduled");
                }
                last_down = down.clone();
                self.mark_all();
            }
            let full = self.all_dirty.swap(false, std::sync::atomic::Ordering::SeqCst) || last_full.elapsed() > Duration::from_secs(5);
            let mut marked = self.dirty.lock().expect("not poisoned").take();
            // A rolling update waits on time (its monitor period, its delay), which no store
            // change announces: its service is looked at again every second, and at every
            // status of its tasks (`follow`).
            let updating: BTreeSet<String> =
                m.sm.scan("services/")
                    .into_iter()
                    .filter_map(|(_, v)| serde_json::from_slice::<crate::services::ServiceRecord>(&v).ok())
                    .filter(|r| matches!(r.update, Some(UpdateState::Updating | UpdateState::RollingBack { .. })))
                    .map(|r| r.spec.name)
                    .collect();
            if !full && !updating.is_empty() {
                marked.get_or_insert_with(BTreeSet::new).extend(updating.iter().cloned());
            }
            // Replacements whose restart delay has ended.
            {
                let now = crate::services::now_ms();
                let mut due = self.due.lock().expect("not poisoned");
                let ready: Vec<String> = due.iter().filter(|(_, &at)| at <= now).map(|(s, _)| s.clone()).collect();
                for s in ready {
                    due.remove(&s);
                    if !full {
                        marked.get_or_insert_with(BTreeSet::new).insert(s);
                    }
                }
            }
            *self.updating.lock().expect("not poisoned") = updating;
            let only = if full {
                last_full = Instant::now();
                None
            } else {
                match marked {
                    Some(s) => Some(s),
                    None => continue,
                }
            };
            let started = Instant::now();
            match m.orchestrate(only.as_ref(), &down).await {
                Ok(pass) => {
                    if started.elapsed() > Duration::from_secs(1) {
                        tracing::info!(
                            operations = pass.operations,
                            seconds = started.elapsed().as_secs_f64(),
                            "a long orchestration pass"
                        )
                    }
                    let mut due = self.due.lock().expect("not poisoned");
                    for (s, at) in pass.due {
                        let d = due.entry(s).or_insert(at);
                        *d = (*d).min(at);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "orchestrating");
                    self.mark_all();
                }
            }
        }
    }
}

impl Manager {
    /// What node `node` should run now, with the data of the secrets and configs its tasks need
    /// while between assigned and running.
    pub fn assignments(&self, node: &str) -> Assignments {
        let mut out = Assignments {
            heartbeat_ms: self.heartbeat().as_millis() as u64,
            ..Default::default()
        };
        let mut secrets: BTreeSet<(String, u32)> = BTreeSet::new();
        let mut configs: BTreeSet<(String, u32)> = BTreeSet::new();
        let mut stacks: BTreeSet<String> = BTreeSet::new();
        for v in self.node_tasks(node) {
            let live = v.task.desired == Desired::Running && !v.state.terminal();
            if let Some(s) = v.task.template.stack.as_ref().filter(|_| !v.state.terminal()) {
                stacks.insert(s.clone());
            }
            if live {
                secrets.extend(v.task.template.secrets.iter().map(|f| (f.source.clone(), f.version)));
                configs.extend(v.task.template.configs.iter().map(|f| (f.source.clone(), f.version)));
            }
            out.tasks.push(Assignment {
                id: v.task.id,
                service: v.task.service,
                service_id: v.task.service_id,
                slot: v.task.slot,
                desired: v.task.desired,
                template: v.task.template,
                state: v.state,
            });
        }
        let data = |prefix: &str, set: BTreeSet<(String, u32)>| -> Vec<FileData> {
            set.into_iter()
                .filter_map(|(name, version)| {
                    let data = self.sm.get(&format!("{prefix}/{name}/{version}"))?;
                    Some(FileData { name, version, data })
                })
                .collect()
        };
        out.secrets = data("secretdata", secrets);
        out.configs = data("configdata", configs);
        out.stacks = stacks.iter().filter_map(|s| self.stack(s)).collect();
        out
    }

    /// A node's report: each task must be the node's; states only move forward. Returns the
    /// writes that record what changed, conditioned on the task records and statuses it was
    /// judged against (a task forgotten, or another report of it, meanwhile: nothing of that
    /// write applies), each of at most [`MAX_REPORT_WRITE`] bytes (the checks hold each task's
    /// whole record).
    pub fn judge_report(&self, node: &str, report: &Report, now_ms: i64) -> std::result::Result<Vec<Request>, Status> {
        if report.statuses.len() > MAX_REPORT {
            return Err(Status::invalid_argument(format!("at most {MAX_REPORT} statuses in a report")));
        }
        let mut writes = Vec::new();
        let mut w = Request::default();
        let mut size = 0;
        let mut seen = BTreeSet::new();
        for item in &report.statuses {
            if !seen.insert(item.task.as_str()) {
                return Err(Status::invalid_argument(format!("task {} twice in one report", item.task)));
            }
            let key = self
                .sm
                .get(&crate::services::node_task_key(node, &item.task))
                .and_then(|k| String::from_utf8(k).ok())
                .ok_or_else(|| Status::permission_denied(format!("task {} is not assigned to this node", item.task)))?;
            let Some(raw_task) = self.sm.get(&key) else { continue };
            let Ok(task) = serde_json::from_slice::<crate::services::TaskRecord>(&raw_task) else {
                continue;
            };
            if task.node.as_deref() != Some(node) {
                return Err(Status::permission_denied(format!(
                    "task {} is not assigned to this node",
                    item.task
                )));
            }
            let (id, item) = (&item.task, &item.status);
            if item.state < TaskState::Accepted || item.state == TaskState::Orphaned {
                return Err(Status::invalid_argument(format!(
                    "task {id}: a node reports accepted and later states, and never orphaned"
                )));
            }
            let short = |v: &Option<String>| v.as_ref().is_none_or(|s| s.len() <= 256);
            if !short(&item.container) || !short(&item.digest) {
                return Err(Status::invalid_argument(format!(
                    "task {id}: a container id or digest of more than 256 bytes"
                )));
            }
            let skey = crate::services::status_key(&task.service, &task.id);
            let raw_old = self.sm.get(&skey);
            let old: Option<TaskStatus> = raw_old.as_deref().and_then(|r| serde_json::from_slice(r).ok());
            // States only move forward; the same state is taken once more only to add the
            // container a task got (a task with a healthcheck is `starting` before and after).
            let adds_container = |o: &TaskStatus| {
                matches!(item.state, TaskState::Starting | TaskState::Running)
                    && o.state == item.state
                    && o.container.is_none()
                    && item.container.is_some()
            };
            if old.as_ref().is_some_and(|o| o.state >= item.state && !adds_container(o)) {
                continue;
            }
            let status = TaskStatus {
                state: item.state,
                message: truncate(&item.message, 1024),
                container: item.container.clone().or(old.as_ref().and_then(|o| o.container.clone())),
                digest: item.digest.clone().or(old.as_ref().and_then(|o| o.digest.clone())),
                exit_code: item.exit_code,
                updated: now_ms,
            };
            let checks = [
                Check::Is {
                    key: key.clone(),
                    value: Some(raw_task),
                },
                Check::Is {
                    key: skey.clone(),
                    value: raw_old,
                },
            ];
            let op = Op::Put {
                key: skey,
                value: serde_json::to_vec(&status).expect("serialisable"),
            };
            let item_size = checks.iter().map(Check::size).sum::<usize>() + op.size();
            if !w.ops.is_empty() && size + item_size > MAX_REPORT_WRITE {
                writes.push(std::mem::take(&mut w));
                size = 0;
            }
            size += item_size;
            w.checks.extend(checks);
            w.ops.push(op);
        }
        if !w.ops.is_empty() {
            writes.push(w);
        }
        Ok(writes)
    }

    /// Refuses unless this manager leads, naming the leader's address.
    pub(crate) fn leading(&self) -> std::result::Result<(), Status> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(m.id) {
            return Ok(());
        }
        let addr = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        Err(Status::failed_precondition(format!("not the leader; leader={addr}")))
    }
}

/// The leader's address in a follower's refusal.
pub fn leader_hint(s: &Status) -> Option<String> {
    s.message()
        .split_once("leader=")
        .map(|(_, a)| a.to_owned())
        .filter(|a| !a.is_empty())
}

/// The gRPC side.
pub struct DispatcherService {
    pub manager: Manager,
    pub hub: Arc<Hub>,
}

impl DispatcherService {
    fn caller<T>(&self, req: &GrpcRequest<T>) -> std::result::Result<crate::pki::Identity, Status> {
        let id = self.manager.auth.require(req, None)?;
        if id.role == Role::Admin {
            return Err(Status::permission_denied("the dispatcher serves nodes, not admins"));
        }
        Ok(id)
    }
}

type SessionStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::result::Result<proto::Payload, Status>> + Send>>;

#[tonic::async_trait]
impl proto::dispatcher_server::Dispatcher for DispatcherService {
    type SessionStream = SessionStream;

    async fn session(&self, req: GrpcRequest<proto::Payload>) -> std::result::Result<GrpcResponse<SessionStream>, Status> {
        let id = self.caller(&req)?;
        self.hub.serving(&self.manager)?;
        let hello: SessionHello =
            serde_json::from_slice(&req.get_ref().json).map_err(|e| Status::invalid_argument(format!("session: {e}")))?;
        if hello.node.as_ref().is_some_and(|n| *n != id.node_id) {
            return Err(Status::permission_denied("a node asks only for its own assignments"));
        }
        let node = id.node_id.clone();
        self.hub.seen(&node);
        let id = id.clone();
        // A host name's characters only: it is printed to users (`service ps`, `service logs`).
        let hostname = Some(hello.hostname.clone())
            .filter(|h| !h.is_empty() && h.len() <= 253 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)));
        let resources = hello.resources.filter(|r| r.0 <= MAX_RESOURCES.0 && r.1 <= MAX_RESOURCES.1);
        if (hostname.is_some() || resources.is_some()) && self.hub.may_describe(&node) {
            let m = self.manager.clone();
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(e) = record_description(&m, &node, hostname, resources).await {
                    tracing::debug!(%node, error = %e, "recording a node's hostname and resources");
                }
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (m, hub) = (self.manager.clone(), self.hub.clone());
        let (serial, mut ended) = hub.open_session(&node);
        tokio::spawn(async move {
            let mut wake = hub.notifier(&node);
            let mut last: Option<Vec<u8>> = None;
            struct Close(Arc<Hub>, String, u64);
            impl Drop for Close {
                fn drop(&mut self) {
                    self.0.close_session(&self.1, self.2);
                }
            }
            let _close = Close(hub.clone(), node.clone(), serial);
            loop {
                // Judged again at every message: a node removed or denied meanwhile gets
                // nothing more (its stream ends).
                if let Err(s) = hub.serving(&m).and_then(|()| m.auth.record(&id).map(|_| ())) {
                    let _ = tx.try_send(Err(s));
                    return;
                }
                let mut a = m.assignments(&node);
                a.logs = hub.log_requests(&node);
                let bytes = serde_json::to_vec(&a).expect("serialisable");
                if last.as_ref() != Some(&bytes) {
                    // A node that does not read within SEND_WITHIN loses its session.
                    match tokio::time::timeout(SEND_WITHIN, tx.send(Ok(proto::Payload { json: bytes.clone() }))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            tracing::info!(%node, "a node did not read its assignments within {SEND_WITHIN:?}: its session ends");
                            return;
                        }
                    }
                    if let Some(mut old) = last.replace(bytes) {
                        zeroize::Zeroize::zeroize(&mut old);
                    }
                }
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(m.heartbeat()) => {}
                    _ = tx.closed() => return,
                    _ = &mut ended => {
                        let _ = tx.try_send(Err(Status::resource_exhausted("a newer session of this node ended this one")));
                        return;
                    }
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(GrpcResponse::new(Box::pin(stream) as SessionStream))
    }

    async fn report(&self, req: GrpcRequest<proto::Payload>) -> std::result::Result<GrpcResponse<proto::Payload>, Status> {
        let id = self.caller(&req)?;
        self.hub.serving(&self.manager)?;
        if req.get_ref().json.len() > MAX_REPORT_BYTES {
            return Err(Status::invalid_argument(format!("a report of more than {MAX_REPORT_BYTES} bytes")));
        }
        // Counted before it is parsed, and until its writes are settled: the work goes on in a
        // task of its own, so a caller that cancels does not give its slot back early.
        let Some(reporting) = crate::transport::Held::take(&self.hub.reporting, id.node_id.clone(), MAX_REPORTS_PER_NODE) else {
            return Err(Status::resource_exhausted(format!(
                "{MAX_REPORTS_PER_NODE} reports of this node are being written: send the next one after them"
            )));
        };
        let (m, hub, node, json) = (self.manager.clone(), self.hub.clone(), id.node_id.clone(), req.into_inner().json);
        let written = tokio::spawn(async move {
            let _reporting = reporting;
            let report: Report = serde_json::from_slice(&json).map_err(|e| Status::invalid_argument(format!("report: {e}")))?;
            hub.seen(&node);
            for w in m.judge_report(&node, &report, crate::services::now_ms())? {
                let r = m.write(w).await.map_err(|e: Error| Status::unavailable(e.to_string()))?;
                if !r.applied {
                    // A task went, or another report of it landed, since this one was judged.
                    return Err(Status::aborted("the tasks changed while this report was judged; report again"));
                }
            }
            Ok(())
        });
        written.await.map_err(|e| Status::internal(format!("a report: {e}")))??;
        let reply = ReportReply {
            heartbeat_ms: self.manager.heartbeat().as_millis() as u64,
        };
        Ok(GrpcResponse::new(proto::Payload {
            json: serde_json::to_vec(&reply).expect("serialisable"),
        }))
    }

    async fn identity(&self, req: GrpcRequest<proto::Payload>) -> std::result::Result<GrpcResponse<proto::Payload>, Status> {
        self.identity_of(req).await
    }

    async fn logs(&self, req: GrpcRequest<tonic::Streaming<proto::Payload>>) -> std::result::Result<GrpcResponse<proto::Payload>, Status> {
        let id = self.caller(&req)?;
        self.hub.serving(&self.manager)?;
        self.hub.take_logs(&id.node_id, req.into_inner()).await?;
        Ok(GrpcResponse::new(proto::Payload { json: b"{}".to_vec() }))
    }
}

impl DispatcherService {
    async fn identity_of(&self, req: GrpcRequest<proto::Payload>) -> std::result::Result<GrpcResponse<proto::Payload>, Status> {
        let id = self.caller(&req)?;
        self.hub.serving(&self.manager)?;
        if req.get_ref().json.len() > MAX_IDENTITY_BYTES {
            return Err(Status::invalid_argument(format!(
                "an identity request of more than {MAX_IDENTITY_BYTES} bytes"
            )));
        }
        let ask: crate::identity::IdentityRequest =
            serde_json::from_slice(&req.get_ref().json).map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
        let now = crate::services::now_ms() / 1000;
        let reply = self.manager.issue_identity(&id.node_id, &ask, now).await.map_err(|e| match e {
            Error::Invalid(m) => Status::permission_denied(m),
            Error::Pki(e) => Status::invalid_argument(e.to_string()),
            Error::Busy(m) => Status::resource_exhausted(m),
            e => Status::unavailable(e.to_string()),
        })?;
        Ok(GrpcResponse::new(proto::Payload {
            json: serde_json::to_vec(&reply).expect("serialisable"),
        }))
    }
}

/// Whether `down` of `nodes` missing their heartbeats at once is a "full disruption" in which
/// nothing is rescheduled: more than half of four or more.
fn full_disruption(nodes: usize, down: usize) -> bool {
    nodes >= 4 && down * 2 > nodes
}

/// What a node says of its host, into its record (written only if it changed).
async fn record_description(
    m: &Manager,
    node: &str,
    hostname: Option<String>,
    resources: Option<(u64, u64)>,
) -> crate::manager::Result<()> {
    let key = crate::records::node_key(node);
    let Some(raw) = m.sm.get(&key) else { return Ok(()) };
    let mut rec: crate::records::NodeRecord = serde_json::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))?;
    let old = (rec.hostname.clone(), rec.resources);
    if let Some(h) = hostname {
        rec.hostname = h;
    }
    if resources.is_some() {
        rec.resources = resources;
    }
    if (rec.hostname.clone(), rec.resources) == old {
        return Ok(());
    }
    m.write(Request {
        checks: vec![crate::store::Check::Is {
            key: key.clone(),
            value: Some(raw),
        }],
        ops: vec![Op::Put {
            key,
            value: serde_json::to_vec(&rec).expect("serialisable"),
        }],
    })
    .await?;
    Ok(())
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn more_than_half_of_four_or_more_nodes_down_reschedules_nothing() {
        use super::full_disruption;
        // Small clusters: a node down is a node down.
        assert!(!full_disruption(1, 1));
        assert!(!full_disruption(3, 2));
        // Half is not more than half.
        assert!(!full_disruption(4, 2));
        assert!(full_disruption(4, 3));
        assert!(!full_disruption(5000, 2500));
        assert!(full_disruption(5000, 2501));
        assert!(!full_disruption(5000, 0));
    }
}
