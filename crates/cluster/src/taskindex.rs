//! The tasks as the orchestrator reads them, kept decoded beside the state machine.
//!
//! An orchestration pass looks at every task (the scheduler spreads over all of them); decoding
//! each stored record on every pass was most of a leader's time at 150,000 tasks. The state
//! machine updates this index as it applies each request, under its own lock, so a pass reads
//! what the store holds after the last write it awaited (a write returns once applied here),
//! never an older view that would make it create a slot's task twice.
//!
//! It holds what orchestration, scheduling and counting need of a task: not its template, which
//! a pass that changes a task reads from the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::orchestrator::TaskState;
use crate::services::{Desired, TaskStatus};
use crate::store::Op;

/// What the index keeps of a task record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskHead {
    pub id: String,
    pub service: String,
    /// The id of the service record it was made for (a service removed and made again under
    /// the same name has another).
    pub service_id: String,
    pub slot: u32,
    pub node: Option<String>,
    pub desired: Desired,
    pub version: u64,
    pub created: i64,
    /// The secret and config versions it pins (`secretdata/NAME/VERSION`,
    /// `configdata/NAME/VERSION`).
    pub pins: Vec<String>,
}

/// A task's head and the status its node last reported.
#[derive(Clone, Debug)]
pub struct Indexed {
    pub head: Arc<TaskHead>,
    pub status: Option<Arc<TaskStatus>>,
}

impl Indexed {
    /// The state that follows from both (as [`crate::services::TaskView`] has it).
    pub fn state(&self) -> TaskState {
        match (&self.status, &self.head.node) {
            (Some(s), _) => s.state,
            (None, Some(_)) => TaskState::Assigned,
            (None, None) => TaskState::Pending,
        }
    }
}

#[derive(Default)]
struct Entry {
    head: Option<Arc<TaskHead>>,
    status: Option<Arc<TaskStatus>>,
}

#[derive(Default)]
struct Inner {
    /// Service → task id → its head and status.
    tasks: BTreeMap<String, BTreeMap<String, Entry>>,
    /// How many tasks pin each secret or config version.
    pins: HashMap<String, usize>,
}

/// The index; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct TaskIndex {
    inner: Arc<Mutex<Inner>>,
}

/// The fields of a stored task record the index reads (the rest, the template's other fields
/// among them, are skipped unread).
#[derive(Deserialize)]
struct RawTask {
    id: String,
    service: String,
    #[serde(default)]
    service_id: String,
    slot: u32,
    node: Option<String>,
    desired: Desired,
    version: u64,
    created: i64,
    #[serde(default)]
    template: RawTemplate,
}

#[derive(Default, Deserialize)]
struct RawTemplate {
    #[serde(default)]
    secrets: Vec<RawPin>,
    #[serde(default)]
    configs: Vec<RawPin>,
}

#[derive(Deserialize)]
struct RawPin {
    source: String,
    #[serde(default)]
    version: u32,
}

/// `tasks/SERVICE/ID` or `taskstatus/SERVICE/ID`: which, and the service and id.
fn parse_key(key: &str) -> Option<(bool, &str, &str)> {
    let (status, rest) = if let Some(r) = key.strip_prefix("tasks/") {
        (false, r)
    } else {
        (true, key.strip_prefix("taskstatus/")?)
    };
    let (svc, id) = rest.split_once('/')?;
    Some((status, svc, id))
}

impl Inner {
    fn unpin(&mut self, head: &TaskHead) {
        for p in &head.pins {
            if let Some(n) = self.pins.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    self.pins.remove(p);
                }
            }
        }
    }

    fn put(&mut self, key: &str, value: &[u8]) {
        let Some((is_status, svc, id)) = parse_key(key) else { return };
        if is_status {
            // A status the index cannot read counts as none (as `TaskView` reads it).
            let status = serde_json::from_slice::<TaskStatus>(value).ok().map(Arc::new);
            self.entry(svc, id).status = status;
            return;
        }
        let head = serde_json::from_slice::<RawTask>(value).ok().map(|r| {
            let pins = (r.template.secrets.iter().map(|p| format!("secretdata/{}/{}", p.source, p.version)))
                .chain(r.template.configs.iter().map(|p| format!("configdata/{}/{}", p.source, p.version)))
                .collect();
            Arc::new(TaskHead {
                id: r.id,
                service: r.service,
                service_id: r.service_id,
                slot: r.slot,
                node: r.node,
                desired: r.desired,
                version: r.version,
                created: r.created,
                pins,
            })
        });
        if let Some(h) = &head {
            for p in &h.pins {
                *self.pins.entry(p.clone()).or_default() += 1;
            }
        }
        let old = std::mem::replace(&mut self.entry(svc, id).head, head);
        if let Some(old) = old {
            self.unpin(&old);
        }
        self.drop_if_empty(svc, id);
    }

    fn delete(&mut self, key: &str) {
        let Some((is_status, svc, id)) = parse_key(key) else { return };
        let Some(e) = self.tasks.get_mut(svc).and_then(|m| m.get_mut(id)) else {
            return;
        };
        if is_status {
            e.status = None;
        } else if let Some(old) = e.head.take() {
            self.unpin(&old);
        }
        self.drop_if_empty(svc, id);
    }

    fn entry(&mut self, svc: &str, id: &str) -> &mut Entry {
        self.tasks.entry(svc.to_owned()).or_default().entry(id.to_owned()).or_default()
    }

    fn drop_if_empty(&mut self, svc: &str, id: &str) {
        if let Some(m) = self.tasks.get_mut(svc) {
            if m.get(id).is_some_and(|e| e.head.is_none() && e.status.is_none()) {
                m.remove(id);
            }
            if m.is_empty() {
                self.tasks.remove(svc);
            }
        }
    }
}

impl TaskIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("not poisoned")
    }

    /// Follows one applied request's operations (the state machine's lock held).
    pub(crate) fn apply<'a>(&self, ops: impl IntoIterator<Item = &'a Op>) {
        let mut inner = None;
        for op in ops {
            let Some(key) = op.key() else { continue };
            if !(key.starts_with("tasks/") || key.starts_with("taskstatus/")) {
                continue;
            }
            let i = inner.get_or_insert_with(|| self.lock());
            match op {
                Op::Put { key, value } => i.put(key, value),
                Op::Delete { key } => i.delete(key),
                Op::Part { .. } => {}
            }
        }
    }

    /// Made anew from the whole store (a snapshot loaded or installed).
    pub(crate) fn reset(&self, data: &BTreeMap<String, Vec<u8>>) {
        let mut i = self.lock();
        *i = Inner::default();
        for prefix in ["tasks/", "taskstatus/"] {
            for (k, v) in data.range(prefix.to_owned()..).take_while(|(k, _)| k.starts_with(prefix)) {
                i.put(k, v);
            }
        }
    }

    /// Every task with a record, by service.
    pub fn all(&self) -> BTreeMap<String, Vec<Indexed>> {
        let i = self.lock();
        i.tasks
            .iter()
            .map(|(svc, m)| {
                let list = m
                    .values()
                    .filter_map(|e| {
                        Some(Indexed {
                            head: e.head.clone()?,
                            status: e.status.clone(),
                        })
                    })
                    .collect();
                (svc.clone(), list)
            })
            .filter(|(_, l): &(String, Vec<Indexed>)| !l.is_empty())
            .collect()
    }

    /// How many of `service`'s tasks are meant to run and run (of `version`, if given).
    pub fn running(&self, service: &str, version: Option<u64>) -> usize {
        let i = self.lock();
        i.tasks.get(service).map_or(0, |m| {
            m.values()
                .filter(|e| {
                    e.head
                        .as_ref()
                        .is_some_and(|h| h.desired == Desired::Running && version.is_none_or(|v| h.version == v))
                        && e.status.as_ref().is_some_and(|s| s.state == TaskState::Running)
                })
                .count()
        })
    }

    /// Whether some task pins `key` (`secretdata/NAME/VERSION` or `configdata/NAME/VERSION`).
    pub fn pinned(&self, key: &str) -> bool {
        self.lock().pins.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, node: Option<&str>, secret: Option<(&str, u32)>) -> Vec<u8> {
        let secrets: Vec<serde_json::Value> = secret
            .iter()
            .map(|(s, v)| serde_json::json!({"source": s, "target": s, "version": v}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "id": id, "service": "web", "service_id": "x", "slot": 1, "node": node,
            "desired": "running", "version": 2, "created": 5,
            "template": {"image": "alpine", "secrets": secrets},
        }))
        .unwrap()
    }

    fn put(key: &str, value: Vec<u8>) -> Op {
        Op::Put { key: key.into(), value }
    }

    #[test]
    fn follows_puts_and_deletes_of_tasks_and_statuses_and_counts_pins() {
        let ix = TaskIndex::default();
        ix.apply(&[
            put("tasks/web/a", task("a", Some("n1"), Some(("db", 1)))),
            put("tasks/web/b", task("b", None, Some(("db", 1)))),
            put("services/web", b"{}".to_vec()),
            put(
                "taskstatus/web/a",
                serde_json::to_vec(&serde_json::json!({"state": "running"})).unwrap(),
            ),
        ]);
        let all = ix.all();
        assert_eq!(all["web"].len(), 2);
        let a = all["web"].iter().find(|t| t.head.id == "a").unwrap();
        assert_eq!(
            (a.state(), a.head.node.as_deref(), a.head.version),
            (TaskState::Running, Some("n1"), 2)
        );
        let b = all["web"].iter().find(|t| t.head.id == "b").unwrap();
        assert_eq!(b.state(), TaskState::Pending);
        assert_eq!(ix.running("web", None), 1);
        assert_eq!(ix.running("web", Some(1)), 0);
        assert!(ix.pinned("secretdata/db/1"));
        // A rewrite to another version unpins the old one only when no task pins it.
        ix.apply(&[put("tasks/web/a", task("a", Some("n1"), Some(("db", 2))))]);
        assert!(ix.pinned("secretdata/db/1") && ix.pinned("secretdata/db/2"));
        ix.apply(&[Op::Delete { key: "tasks/web/b".into() }]);
        assert!(!ix.pinned("secretdata/db/1"));
        // A status alone is no task; both gone, the service is gone.
        ix.apply(&[Op::Delete { key: "tasks/web/a".into() }]);
        assert!(ix.all().is_empty());
        ix.apply(&[Op::Delete {
            key: "taskstatus/web/a".into(),
        }]);
        assert!(ix.lock().tasks.is_empty());
        // Made anew from a store's contents.
        let data: BTreeMap<String, Vec<u8>> = [("tasks/web/c".to_owned(), task("c", Some("n2"), None))].into();
        ix.reset(&data);
        assert_eq!(ix.all()["web"][0].head.id, "c");
        // An unreadable record is no task.
        ix.apply(&[put("tasks/web/d", b"{".to_vec())]);
        assert_eq!(ix.all()["web"].len(), 1);
    }
}
