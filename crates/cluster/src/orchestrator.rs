//! Services, their tasks, and where tasks go (issue 16): the orchestrator's and the scheduler's
//! decisions as pure functions of the desired state and the nodes, so that they are tested
//! without a cluster and run the same on whichever manager leads.
//!
//! - **The orchestrator** ([`reconcile`]) makes a service's tasks match its spec: one task per
//!   slot of a replicated service (slots 1..=N), one per eligible node of a global one. A task on a
//!   node that is gone, drained or no longer eligible is shut down and replaced; slots above N go.
//! - **The scheduler** ([`schedule`]) gives each pending task a node: active, satisfying the
//!   service's constraints, with room for its reservations, spreading a service's tasks (fewest of
//!   that service first, then fewest tasks overall, then the node id, so that every manager
//!   decides alike).
//!
//! The leader runs them on the store: `services::Manager::orchestrate`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::pki::Role;
use crate::records::NodeRecord;

/// How many of a service's tasks run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Replicated { replicas: u32 },
    Global,
}

/// A placement constraint: `node.labels.K==V`, `node.labels.K!=V`, `node.role==worker`,
/// `node.id!=X`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub field: Field,
    pub equal: bool,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    Id,
    Hostname,
    Role,
    Label(String),
}

impl Constraint {
    /// Parses `node.labels.K==V` and the like (one line of error for anything else).
    pub fn parse(s: &str) -> Result<Constraint, String> {
        let (lhs, equal, rhs) = if let Some((l, r)) = s.split_once("!=") {
            (l, false, r)
        } else if let Some((l, r)) = s.split_once("==") {
            (l, true, r)
        } else {
            return Err(format!("constraint {s:?}: FIELD==VALUE or FIELD!=VALUE"));
        };
        let (lhs, rhs) = (lhs.trim(), rhs.trim());
        if rhs.is_empty() || rhs.contains("==") || rhs.contains("!=") {
            return Err(format!("constraint {s:?}: one value"));
        }
        let field = match lhs {
            "node.id" => Field::Id,
            "node.hostname" => Field::Hostname,
            "node.role" if matches!(rhs, "manager" | "worker") => Field::Role,
            "node.role" => return Err(format!("constraint {s:?}: node.role is manager or worker")),
            l => match l.strip_prefix("node.labels.") {
                Some(k) if !k.is_empty() => Field::Label(k.to_owned()),
                _ => return Err(format!("constraint {s:?}: node.id, node.hostname, node.role or node.labels.KEY")),
            },
        };
        Ok(Constraint {
            field,
            equal,
            value: rhs.to_owned(),
        })
    }

    fn holds(&self, n: &NodeRecord) -> bool {
        let have = match &self.field {
            Field::Id => Some(n.id.as_str()),
            Field::Hostname => Some(n.hostname.as_str()),
            Field::Role => Some(match n.role {
                Role::Manager => "manager",
                Role::Worker => "worker",
                Role::Admin => "admin",
            }),
            Field::Label(k) => n.labels.get(k).map(String::as_str),
        };
        (have == Some(self.value.as_str())) == self.equal
    }
}

/// What the scheduler needs of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub mode: Mode,
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// Reservations: memory in bytes, CPU in thousandths of a CPU.
    #[serde(default)]
    pub reserve_memory: u64,
    #[serde(default)]
    pub reserve_cpu: u64,
    /// What each task runs.
    #[serde(default)]
    pub task: crate::services::TaskTemplate,
    /// When a task that ended is replaced.
    #[serde(default)]
    pub restart: crate::services::Restart,
    /// How an update rolls.
    #[serde(default)]
    pub update: crate::services::UpdateConfig,
}

/// A task's life, as Swarm names its states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Starting,
    Running,
    Complete,
    Failed,
    Shutdown,
    Rejected,
    Orphaned,
}

impl TaskState {
    /// Done: it will not run again.
    pub fn terminal(self) -> bool {
        self >= TaskState::Complete
    }
}

/// A task: one container of a service, on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service: String,
    /// A replicated service's slot (1..=replicas); 0 for a global one.
    pub slot: u32,
    pub node: Option<String>,
    pub state: TaskState,
    /// Whether it should run (false: being shut down).
    pub desired_running: bool,
    /// It ended, and its restart condition keeps it in its slot (`--restart-condition none`, or
    /// `on-failure` after a clean exit): no task replaces it.
    #[serde(default)]
    pub stays: bool,
}

/// What a node can give, as its agent reports it (None: not reported, no bound).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub memory: Option<u64>,
    pub cpu: Option<u64>,
}

/// A decision of the orchestrator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new task for slot `slot` (replicated) or for node `node` (global), pending.
    Create { slot: u32, node: Option<String> },
    /// This task should stop.
    Shutdown { task: String },
}

fn eligible(spec: &ServiceSpec, n: &NodeRecord) -> bool {
    n.availability == "active" && !n.demoting && spec.constraints.iter().all(|c| c.holds(n))
}

/// Whether a task still has a place: its node exists and may keep it (a paused node keeps its
/// tasks; a drained one does not).
fn placed_well(spec: &ServiceSpec, t: &Task, nodes: &BTreeMap<String, &NodeRecord>) -> bool {
    match t.node.as_ref().and_then(|id| nodes.get(id)) {
        Some(n) => n.availability != "drain" && spec.constraints.iter().all(|c| c.holds(n)),
        // Not assigned yet: the scheduler's business.
        None => t.node.is_none(),
    }
}

/// The orchestrator: what to change so that `spec`'s live tasks (those meant to run, not done)
/// match it on `nodes` (`down`: nodes that missed their heartbeats).
pub fn reconcile(spec: &ServiceSpec, tasks: &[Task], nodes: &[NodeRecord], down: &BTreeSet<String>) -> Vec<Change> {
    let live_nodes: BTreeMap<String, &NodeRecord> = nodes.iter().filter(|n| !down.contains(&n.id)).map(|n| (n.id.clone(), n)).collect();
    let mut out = Vec::new();
    let mut live: Vec<&Task> = Vec::new();
    for t in tasks
        .iter()
        .filter(|t| t.service == spec.name && t.desired_running && (!t.state.terminal() || t.stays))
    {
        if t.stays || placed_well(spec, t, &live_nodes) {
            live.push(t);
        } else {
            out.push(Change::Shutdown { task: t.id.clone() });
        }
    }
    match spec.mode {
        Mode::Replicated { replicas } => {
            let mut by_slot: BTreeMap<u32, Vec<&Task>> = BTreeMap::new();
            for t in live {
                by_slot.entry(t.slot).or_default().push(t);
            }
            for (slot, ts) in &by_slot {
                // Above the count, or a second task in a slot: shut down.
                let keep = usize::from(*slot >= 1 && *slot <= replicas);
                for t in ts.iter().skip(keep) {
                    out.push(Change::Shutdown { task: t.id.clone() });
                }
            }
            for slot in 1..=replicas {
                if !by_slot.contains_key(&slot) {
                    out.push(Change::Create { slot, node: None });
                }
            }
        }
        Mode::Global => {
            let mut on: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
            for t in live {
                if let Some(n) = &t.node {
                    on.entry(n.clone()).or_default().push(t);
                }
            }
            for (id, n) in &live_nodes {
                let here = on.get(id).map_or(&[][..], Vec::as_slice);
                if eligible(spec, n) && here.is_empty() {
                    out.push(Change::Create {
                        slot: 0,
                        node: Some(id.clone()),
                    });
                }
                for t in here.iter().skip(1) {
                    out.push(Change::Shutdown { task: t.id.clone() });
                }
            }
        }
    }
    out
}

/// The scheduler: a node for each of `spec`'s tasks without one (`tasks`: the service's tasks,
/// placed or not), given how many live tasks of every service each node has (`total`), each
/// node's capacity and what is reserved on it. Tasks that fit nowhere stay pending (absent from
/// the result).
pub fn schedule(
    spec: &ServiceSpec,
    tasks: &[Task],
    total: &BTreeMap<String, usize>,
    nodes: &[NodeRecord],
    down: &BTreeSet<String>,
    capacity: &BTreeMap<String, Capacity>,
    reserved: &BTreeMap<String, (u64, u64)>,
) -> Vec<(String, String)> {
    let mut mine: BTreeMap<&str, usize> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.desired_running && !t.state.terminal()) {
        if let Some(n) = &t.node {
            *mine.entry(n).or_default() += 1;
        }
    }
    let mut used: BTreeMap<&str, (u64, u64)> = reserved.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    // The candidates in the order they are chosen in (fewest of this service's tasks, then
    // fewest tasks, then id): the first that fits is taken, and goes back in with its new
    // counts. A placement costs a few steps in the order, not a look at every node (150,000
    // tasks over 5,000 nodes).
    let mut order: BTreeSet<(usize, usize, &str)> = nodes
        .iter()
        .filter(|n| !down.contains(&n.id) && eligible(spec, n))
        .map(|n| {
            let id = n.id.as_str();
            (mine.get(id).copied().unwrap_or(0), total.get(id).copied().unwrap_or(0), id)
        })
        .collect();
    let reserves = spec.reserve_memory > 0 || spec.reserve_cpu > 0;
    let mut out = Vec::new();
    for t in tasks.iter().filter(|t| t.node.is_none() && t.desired_running) {
        let fits = |id: &str, used: &BTreeMap<&str, (u64, u64)>| {
            if !reserves {
                return true;
            }
            let cap = capacity.get(id).copied().unwrap_or_default();
            let (m, c) = used.get(id).copied().unwrap_or_default();
            cap.memory.is_none_or(|cm| m + spec.reserve_memory <= cm) && cap.cpu.is_none_or(|cc| c + spec.reserve_cpu <= cc)
        };
        let Some(&best) = order.iter().find(|(_, _, id)| fits(id, &used)) else {
            continue;
        };
        order.remove(&best);
        let (m, n, id) = best;
        order.insert((m + 1, n + 1, id));
        let u = used.entry(id).or_default();
        u.0 += spec.reserve_memory;
        u.1 += spec.reserve_cpu;
        out.push((t.id.clone(), id.to_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, role: Role, labels: &[(&str, &str)]) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            role,
            raft_id: None,
            addr: None,
            serial: "s".into(),
            previous_serial: None,
            not_after: 0,
            issuer: None,
            joined: 0,
            availability: "active".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            hostname: format!("host-{id}"),
            resources: None,
            demoting: false,
        }
    }

    fn spec(mode: Mode, constraints: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            mode,
            constraints: constraints.iter().map(|c| Constraint::parse(c).unwrap()).collect(),
            reserve_memory: 0,
            reserve_cpu: 0,
            task: Default::default(),
            restart: Default::default(),
            update: Default::default(),
        }
    }

    /// Applies the orchestrator's changes and the scheduler's placements, as the leader will.
    fn run(spec: &ServiceSpec, tasks: &mut Vec<Task>, nodes: &[NodeRecord], down: &BTreeSet<String>) {
        for c in reconcile(spec, tasks, nodes, down) {
            match c {
                Change::Create { slot, node } => {
                    let id = format!("t{}", tasks.len() + 1);
                    tasks.push(Task {
                        id,
                        service: spec.name.clone(),
                        slot,
                        state: if node.is_some() { TaskState::Assigned } else { TaskState::Pending },
                        node,
                        desired_running: true,
                        stays: false,
                    });
                }
                Change::Shutdown { task } => {
                    let t = tasks.iter_mut().find(|t| t.id == task).unwrap();
                    t.desired_running = false;
                    t.state = TaskState::Shutdown;
                }
            }
        }
        let mut total = BTreeMap::new();
        for t in tasks.iter().filter(|t| t.desired_running && !t.state.terminal()) {
            if let Some(n) = &t.node {
                *total.entry(n.clone()).or_insert(0) += 1;
            }
        }
        for (t, n) in schedule(spec, tasks, &total, nodes, down, &BTreeMap::new(), &BTreeMap::new()) {
            let t = tasks.iter_mut().find(|x| x.id == t).unwrap();
            t.node = Some(n);
            t.state = TaskState::Assigned;
        }
    }

    fn running_on(tasks: &[Task]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in tasks.iter().filter(|t| t.desired_running) {
            *m.entry(t.node.clone().unwrap_or_default()).or_insert(0) += 1;
        }
        m
    }

    #[test]
    fn replicas_spread_and_move_off_drained_and_down_nodes() {
        let mut nodes = vec![
            node("a", Role::Worker, &[]),
            node("b", Role::Worker, &[]),
            node("c", Role::Manager, &[]),
        ];
        let s = spec(Mode::Replicated { replicas: 6 }, &[]);
        let mut tasks = Vec::new();
        run(&s, &mut tasks, &nodes, &BTreeSet::new());
        assert_eq!(
            running_on(&tasks),
            BTreeMap::from([("a".into(), 2), ("b".into(), 2), ("c".into(), 2)])
        );
        // Run again: nothing to change.
        assert!(reconcile(&s, &tasks, &nodes, &BTreeSet::new()).is_empty());
        // Drained: its two tasks go elsewhere.
        nodes[0].availability = "drain".into();
        run(&s, &mut tasks, &nodes, &BTreeSet::new());
        assert_eq!(running_on(&tasks), BTreeMap::from([("b".into(), 3), ("c".into(), 3)]));
        // Down (missed heartbeats): the same.
        let down = BTreeSet::from(["b".to_owned()]);
        run(&s, &mut tasks, &nodes, &down);
        assert_eq!(running_on(&tasks), BTreeMap::from([("c".into(), 6)]));
        // Scaled down: the highest slots go.
        let s2 = spec(Mode::Replicated { replicas: 2 }, &[]);
        run(&s2, &mut tasks, &nodes, &down);
        let slots: BTreeSet<u32> = tasks.iter().filter(|t| t.desired_running).map(|t| t.slot).collect();
        assert_eq!(slots, BTreeSet::from([1, 2]));
    }

    #[test]
    fn constraints_and_reservations_decide_where_tasks_may_go() {
        let nodes = vec![
            node("a", Role::Worker, &[("zone", "x")]),
            node("b", Role::Worker, &[("zone", "y")]),
            node("m", Role::Manager, &[("zone", "x")]),
        ];
        let mut tasks = Vec::new();
        let s = spec(Mode::Replicated { replicas: 4 }, &["node.labels.zone==x", "node.role==worker"]);
        run(&s, &mut tasks, &nodes, &BTreeSet::new());
        assert_eq!(running_on(&tasks), BTreeMap::from([("a".into(), 4)]));
        // A global service on every node but the manager.
        let g = ServiceSpec {
            name: "agent".into(),
            ..spec(Mode::Global, &["node.role!=manager"])
        };
        let mut gt = Vec::new();
        run(&g, &mut gt, &nodes, &BTreeSet::new());
        assert_eq!(running_on(&gt), BTreeMap::from([("a".into(), 1), ("b".into(), 1)]));
        // Reservations: 3 tasks of 1 GiB on nodes of 2 GiB: two fit on one, one on the other;
        // a fourth fits nowhere and stays pending.
        let r = ServiceSpec {
            name: "db".into(),
            reserve_memory: 1 << 30,
            ..spec(Mode::Replicated { replicas: 5 }, &["node.role==worker"])
        };
        let cap: BTreeMap<String, Capacity> = ["a", "b"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Capacity {
                        memory: Some(2 << 30),
                        cpu: None,
                    },
                )
            })
            .collect();
        let pending: Vec<Task> = (1..=5)
            .map(|i| Task {
                id: format!("d{i}"),
                service: "db".into(),
                slot: i,
                node: None,
                state: TaskState::Pending,
                desired_running: true,
                stays: false,
            })
            .collect();
        let placed = schedule(&r, &pending, &BTreeMap::new(), &nodes, &BTreeSet::new(), &cap, &BTreeMap::new());
        assert_eq!(placed.len(), 4);
        let on_a = placed.iter().filter(|(_, n)| n == "a").count();
        assert_eq!((on_a, placed.len() - on_a), (2, 2));
    }

    #[test]
    fn constraints_parse_or_say_why_not() {
        assert_eq!(
            Constraint::parse("node.labels.zone==a").unwrap(),
            Constraint {
                field: Field::Label("zone".into()),
                equal: true,
                value: "a".into()
            }
        );
        assert!(!Constraint::parse("node.role!=manager").unwrap().equal);
        for bad in [
            "node.labels.==a",
            "zone==a",
            "node.role==boss",
            "node.id=a",
            "node.id==",
            "node.id==a==b",
        ] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
    }
}
