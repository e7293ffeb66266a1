//! `service logs [-f]`: a service's task logs, gathered from the nodes that run its tasks.
//!
//! The CLI asks the leader on its control socket. The leader opens a subscription
//! ([`Hub::open_logs`]) that names, per node, the tasks whose logs it wants. Each node hears of
//! it in its session's assignments ([`LogRequest`]) and streams the lines back over
//! `Dispatcher.Logs`: first a [`LogHeader`], then batches of [`LogLine`]s. The leader takes only
//! lines of the tasks the subscription asked that node for, and passes them to the CLI. When the
//! CLI goes, the subscription goes; the next assignments no longer carry it, and the node stops.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::dispatcher::Hub;

/// Subscriptions open at once on a leader.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// The longest line passed on (longer ones are cut).
pub const MAX_LINE: usize = 16 << 10;
/// Lines in one batch from a node.
pub const MAX_BATCH: usize = 1000;

/// What a node is asked for: the logs of some of its tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    pub id: u64,
    pub tasks: Vec<String>,
    pub follow: bool,
    /// The last lines of each task only.
    #[serde(default)]
    pub tail: Option<u32>,
}

/// The first message of a node's `Logs` stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogHeader {
    pub id: u64,
}

/// One line of a task's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub task: String,
    /// stdout or stderr.
    pub stream: String,
    pub line: String,
    /// RFC 3339, as the runtime recorded it.
    #[serde(default)]
    pub time: String,
    /// Set by the leader: the node it came from.
    #[serde(default)]
    pub node: String,
}

pub(crate) struct Subscription {
    /// The tasks asked of each node.
    nodes: BTreeMap<String, BTreeSet<String>>,
    follow: bool,
    tail: Option<u32>,
    tx: tokio::sync::mpsc::Sender<LogLine>,
    /// Nodes whose stream has ended (without `follow`, the subscription ends with the last).
    done: BTreeSet<String>,
}

#[derive(Default)]
pub(crate) struct Subscriptions(std::sync::Mutex<HashMap<u64, Subscription>>);

/// Ends a subscription when dropped (the CLI went, or every node is done).
pub struct LogGuard {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(s) = self.hub.logs.0.lock().expect("not poisoned").remove(&self.id) {
            for n in s.nodes.keys() {
                self.hub.wake(n);
            }
        }
    }
}

impl Hub {
    /// A subscription to the tasks of `nodes`; its lines come on the receiver until every node
    /// is done (without `follow`) or the guard is dropped.
    pub fn open_logs(
        self: &Arc<Self>,
        nodes: BTreeMap<String, BTreeSet<String>>,
        follow: bool,
        tail: Option<u32>,
    ) -> std::result::Result<(tokio::sync::mpsc::Receiver<LogLine>, LogGuard), String> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let id = loop {
            let id = u64::from_le_bytes(crate::crypt::random::<8>().map_err(|e| e.to_string())?);
            if id != 0 {
                break id;
            }
        };
        {
            let mut subs = self.logs.0.lock().expect("not poisoned");
            if subs.len() >= MAX_SUBSCRIPTIONS {
                return Err(format!("at most {MAX_SUBSCRIPTIONS} log streams at once"));
            }
            subs.insert(
                id,
                Subscription {
                    nodes: nodes.clone(),
                    follow,
                    tail,
                    tx,
                    done: BTreeSet::new(),
                },
            );
        }
        for n in nodes.keys() {
            self.wake(n);
        }
        Ok((rx, LogGuard { hub: self.clone(), id }))
    }

    /// What node `node` is asked for now.
    pub fn log_requests(&self, node: &str) -> Vec<LogRequest> {
        let subs = self.logs.0.lock().expect("not poisoned");
        let mut out: Vec<LogRequest> = subs
            .iter()
            .filter(|(_, s)| !s.done.contains(node))
            .filter_map(|(id, s)| {
                Some(LogRequest {
                    id: *id,
                    tasks: s.nodes.get(node)?.iter().cloned().collect(),
                    follow: s.follow,
                    tail: s.tail,
                })
            })
            .collect();
        out.sort_by_key(|r| r.id);
        out
    }

    /// Where the lines of subscription `id` go, if `node` was asked for it; and the tasks it
    /// may send.
    fn log_sink(&self, id: u64, node: &str) -> Option<(tokio::sync::mpsc::Sender<LogLine>, BTreeSet<String>)> {
        let subs = self.logs.0.lock().expect("not poisoned");
        let s = subs.get(&id)?;
        Some((s.tx.clone(), s.nodes.get(node)?.clone()))
    }

    fn log_done(&self, id: u64, node: &str) {
        let removed = {
            let mut subs = self.logs.0.lock().expect("not poisoned");
            let finished = subs.get_mut(&id).is_some_and(|s| {
                s.done.insert(node.to_owned());
                s.done.len() >= s.nodes.len()
            });
            // Its sender goes: the CLI's stream ends once it has read what came.
            finished.then(|| subs.remove(&id)).flatten()
        };
        // The node (and, once it is over, every node of it) no longer hears of the request.
        self.wake(node);
        for n in removed.iter().flat_map(|s| s.nodes.keys()) {
            self.wake(n);
        }
    }

    /// A node's `Logs` stream: its header names a subscription that asked this node, and each
    /// line is of a task the subscription asked it for; anything else ends the stream.
    pub async fn take_logs(&self, node: &str, mut stream: tonic::Streaming<crate::proto::Payload>) -> std::result::Result<(), Status> {
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("logs: no header"))?;
        let header: LogHeader = serde_json::from_slice(&first.json).map_err(|e| Status::invalid_argument(format!("logs: {e}")))?;
        let (tx, tasks) = self
            .log_sink(header.id, node)
            .ok_or_else(|| Status::not_found("no such log request for this node (it may have ended)"))?;
        while let Some(p) = stream.message().await? {
            let lines: Vec<LogLine> = serde_json::from_slice(&p.json).map_err(|e| Status::invalid_argument(format!("logs: {e}")))?;
            if lines.len() > MAX_BATCH {
                return Err(Status::invalid_argument(format!("logs: at most {MAX_BATCH} lines at once")));
            }
            for mut l in lines {
                if !tasks.contains(&l.task) {
                    return Err(Status::permission_denied(format!(
                        "logs: task {} was not asked of this node",
                        crate::dispatcher::truncate(&l.task, 64)
                    )));
                }
                if l.stream != "stdout" && l.stream != "stderr" {
                    l.stream = "stdout".into();
                }
                l.line = crate::dispatcher::truncate(&l.line, MAX_LINE);
                l.time = crate::dispatcher::truncate(&l.time, 64);
                l.node = node.to_owned();
                if tx.send(l).await.is_err() {
                    return Err(Status::cancelled("the log request ended"));
                }
            }
        }
        drop(tx);
        self.log_done(header.id, node);
        Ok(())
    }
}
