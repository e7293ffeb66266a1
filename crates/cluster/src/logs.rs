//! `service logs [-f]`: a service's task logs, gathered from the nodes that run its tasks.
//!
//! The CLI asks the leader on its control socket. The leader opens a subscription
//! ([`Hub::open_logs`]) that names, per node, the tasks whose logs it wants. Each node hears of
//! it in its session's assignments ([`LogRequest`]) and streams the lines back over
//! `Dispatcher.Logs`: first a [`LogHeader`], then batches of [`LogLine`]s, in calls of at most
//! [`SEGMENT`] each (a call's deadline is short), the last one ending with an empty batch: done.
//! The leader takes only lines of the tasks the subscription asked that node for, one call of a
//! node at a time, and passes them on with their control characters escaped. When the CLI goes,
//! the subscription goes; the next assignments no longer carry it, and the node stops.

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
/// The largest message of a node's stream, read before it is parsed.
pub const MAX_MESSAGE: usize = 1 << 20;
/// How long one `Logs` call of a node lasts at most before the next one carries on.
pub const SEGMENT: std::time::Duration = std::time::Duration::from_secs(8);

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
    /// Nodes that said they are done (the subscription ends with the last).
    done: BTreeSet<String>,
    /// Nodes with a call open now (one each).
    streaming: BTreeSet<String>,
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
                    streaming: BTreeSet::new(),
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

    /// Where the lines of subscription `id` go, if `node` was asked for it, is not done, and
    /// has no other call open; and the tasks it may send.
    fn log_sink(&self, id: u64, node: &str) -> Option<(tokio::sync::mpsc::Sender<LogLine>, BTreeSet<String>)> {
        let mut subs = self.logs.0.lock().expect("not poisoned");
        let s = subs.get_mut(&id)?;
        let tasks = s.nodes.get(node)?.clone();
        if s.done.contains(node) || !s.streaming.insert(node.to_owned()) {
            return None;
        }
        Some((s.tx.clone(), tasks))
    }

    fn log_release(&self, id: u64, node: &str) {
        if let Some(s) = self.logs.0.lock().expect("not poisoned").get_mut(&id) {
            s.streaming.remove(node);
        }
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
            .ok_or_else(|| Status::not_found("no such log request for this node (it may have ended, or a call of it is open)"))?;
        struct Release<'a>(&'a Hub, u64, &'a str);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.log_release(self.1, self.2);
            }
        }
        let _release = Release(self, header.id, node);
        let mut done = false;
        while let Some(p) = stream.message().await? {
            if done {
                return Err(Status::invalid_argument("logs: nothing after the end"));
            }
            if p.json.len() > MAX_MESSAGE {
                return Err(Status::invalid_argument(format!(
                    "logs: a message of more than {} KiB",
                    MAX_MESSAGE >> 10
                )));
            }
            let lines: Vec<LogLine> = serde_json::from_slice(&p.json).map_err(|e| Status::invalid_argument(format!("logs: {e}")))?;
            if lines.len() > MAX_BATCH {
                return Err(Status::invalid_argument(format!("logs: at most {MAX_BATCH} lines at once")));
            }
            // An empty batch: the node is done.
            done = lines.is_empty();
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
                l.line = escape(&crate::dispatcher::truncate(&l.line, MAX_LINE));
                l.time = escape(&crate::dispatcher::truncate(&l.time, 64));
                l.node = node.to_owned();
                if tx.send(l).await.is_err() {
                    return Err(Status::cancelled("the log request ended"));
                }
            }
        }
        drop(tx);
        if done {
            self.log_done(header.id, node);
        }
        Ok(())
    }
}

/// A line as it may reach a terminal: control characters (escape sequences, carriage returns,
/// a line break inside that would start a forged line) written out as `\xNN` or `\u{N}`; a tab
/// and the line's own final break stay.
pub fn escape(s: &str) -> String {
    let (body, end) = match s.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (s, ""),
    };
    let mut out = String::with_capacity(s.len());
    for c in body.chars() {
        match c {
            '\t' => out.push(c),
            c if (c as u32) < 0x100 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push_str(end);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_never_reach_a_terminal() {
        use super::escape;
        assert_eq!(escape("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(escape("\x1b]52;c;aGk=\x07x"), "\\x1b]52;c;aGk=\\x07x");
        assert_eq!(escape("a\rb"), "a\\x0db");
        assert_eq!(escape("x\nweb.1.abc@h2    | fake\n"), "x\\x0aweb.1.abc@h2    | fake\n");
        assert_eq!(escape("\u{9b}31m"), "\\x9b31m");
        assert_eq!(escape("\u{202e}evil"), "\\u{202e}evil");
    }
}
