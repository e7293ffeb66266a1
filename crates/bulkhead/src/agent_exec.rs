//! The cluster agent's executor: a task becomes an ordinary container of this node, made and
//! started through the runtime's one entry ([`bulkhead_runtime::engine::Runtime`]) with exactly
//! the flags of `bulkhead run`, so that it gets the same hardened defaults, the same trust and
//! scan gates, and `ps`, `exec`, `logs`, `inspect` and `diff` work on it. Its labels name its
//! service, task, slot and node.

use std::sync::Arc;

use bulkhead_cluster::agent::{Executor, IdentityMount, Observed, Started, TaskFile};
use bulkhead_cluster::dispatcher::Assignment;
use bulkhead_runtime::engine::{Runtime, State};
use clap::Parser;

use crate::container_cmd::RunArgs;
use crate::Ctx;

pub const TASK_LABEL: &str = "com.bulkhead.task.id";
pub const SERVICE_LABEL: &str = "com.bulkhead.service.name";
pub const SERVICE_ID_LABEL: &str = "com.bulkhead.service.id";
pub const SLOT_LABEL: &str = "com.bulkhead.task.slot";
pub const NODE_LABEL: &str = "com.bulkhead.node.id";
pub const STACK_LABEL: &str = "com.bulkhead.stack.namespace";
/// `<stack>.<service>` on a stack's tasks, and `<stack>` on the networks the agent made for it:
/// under the `bulkhead.` prefix, which `run --label` and compose files may not set, because
/// the stack's rules select containers by it.
pub const STACK_SERVICE_LABEL: &str = "bulkhead.stack.service";
pub const STACK_NETWORK_LABEL: &str = "bulkhead.stack";
/// The origin of a stack's rules starts with this and the stack's name.
const STACK_ORIGIN: &str = "stack ";

fn stack_origin(stack: &str) -> String {
    format!("{STACK_ORIGIN}{stack}: ")
}

#[derive(Parser)]
#[command(no_binary_name = true)]
struct Flags {
    #[command(flatten)]
    run: RunArgs,
}

pub struct RuntimeExecutor {
    ctx: Ctx,
}

impl RuntimeExecutor {
    pub fn shared(ctx: &Ctx) -> Arc<dyn Executor> {
        Arc::new(RuntimeExecutor { ctx: ctx.clone() })
    }

    /// Whether the container runs the image its service is pinned to (the tag was verified
    /// through this node's trust policy on the way in).
    fn is_pinned(
        &self,
        tpl: &bulkhead_cluster::services::TaskTemplate,
        rec: &bulkhead_runtime::container::ContainerRecord,
    ) -> Result<(), String> {
        let digest = tpl.digest.as_deref().unwrap_or_default();
        let name = bulkhead_image::Reference::parse(&tpl.image).map_err(|e| e.to_string())?.name();
        let store = self.ctx.store().map_err(|e| e.to_string())?;
        match store.resolve(&format!("{name}@{digest}")) {
            Ok(img) if img.config == rec.image_id => Ok(()),
            _ => Err(format!(
                "on this node {} is signed as another image than the service's pinned {digest}: `service update --image` moves the service",
                tpl.image
            )),
        }
    }

    fn runtime(&self) -> Result<Runtime, String> {
        let store = self.ctx.store().map_err(|e| e.to_string())?;
        Runtime::new(store).map_err(|e| e.to_string())
    }
}

/// The `bulkhead run` flags of a task; its image by the digest the manager pinned if `pin`.
pub fn run_flags(node: &str, t: &Assignment, files: &[TaskFile], identity: Option<&IdentityMount>, pin: bool) -> Vec<String> {
    let tpl = &t.template;
    let short = &t.id[..t.id.len().min(12)];
    let name = if t.slot > 0 {
        format!("{}.{}.{short}", t.service, t.slot)
    } else {
        format!("{}.{}.{short}", t.service, &node[..node.len().min(12)])
    };
    // Every value goes as `--flag=VALUE`, so that none can read as a flag of its own, and the
    // image after `--`; the manager has checked the values that go inside a flag's own syntax.
    let mut a: Vec<String> = vec!["-d".into(), format!("--name={name}"), "--restart=no".into()];
    for (k, v) in [
        (TASK_LABEL, t.id.as_str()),
        (SERVICE_LABEL, t.service.as_str()),
        (SERVICE_ID_LABEL, t.service_id.as_str()),
        (NODE_LABEL, node),
    ] {
        a.push(format!("--label={k}={v}"));
    }
    a.push(format!("--label={SLOT_LABEL}={}", t.slot));
    if let Some(s) = &tpl.stack {
        a.push(format!("--label={STACK_LABEL}={s}"));
        // Its stack's rules select it by this label; the replicas of a service share its names
        // (`web` within the stack, `shop_web` as the cluster calls it) on this node's network.
        let short = t.service.strip_prefix(&format!("{s}_")).unwrap_or(&t.service);
        a.push(format!("--label={STACK_SERVICE_LABEL}={s}.{short}"));
        a.push(format!("--network-alias={short}"));
        if short != t.service {
            a.push(format!("--network-alias={}", t.service));
        }
    }
    for (k, v) in &tpl.labels {
        a.push(format!("--label={k}={v}"));
    }
    for e in &tpl.env {
        a.push(format!("--env={e}"));
    }
    for f in files {
        let mut spec = format!("src={},target={}", f.path.display(), f.target);
        if let Some(u) = f.uid {
            spec.push_str(&format!(",uid={u}"));
        }
        if let Some(g) = f.gid {
            spec.push_str(&format!(",gid={g}"));
        }
        spec.push_str(&format!(",mode={:o}", f.mode));
        a.push(format!("{}={spec}", if f.secret { "--secret" } else { "--config-file" }));
    }
    if let Some(m) = tpl.limit_memory {
        a.push(format!("--memory={m}"));
    }
    if let Some(c) = tpl.limit_cpu {
        a.push(format!("--cpus={}", c as f64 / 1000.0));
    }
    if tpl.read_only {
        a.push("--read-only".into());
    }
    for c in &tpl.cap_add {
        a.push(format!("--cap-add={c}"));
    }
    for p in &tpl.ports {
        a.push(format!("--publish={}:{}/{}", p.published, p.target, p.protocol));
    }
    if let Some(n) = tpl.networks.first() {
        a.push(format!("--network={n}"));
    }
    if let Some(h) = &tpl.health_cmd {
        a.push(format!("--health-cmd={h}"));
        for (flag, v) in [
            ("--health-interval", tpl.health_interval_ms),
            ("--health-timeout", tpl.health_timeout_ms),
            ("--health-start-period", tpl.health_start_period_ms),
        ] {
            if let Some(ms) = v {
                a.push(format!("{flag}={ms}ms"));
            }
        }
        if let Some(r) = tpl.health_retries {
            a.push(format!("--health-retries={r}"));
        }
    }
    // The task's identity, read-only: its files, and the Workload API's socket (the agent's
    // paths, checked by the caller to carry no `,`).
    if let Some(i) = identity {
        use bulkhead_cluster::workload::{endpoint_env, IDENTITY_TARGET, SOCKET_TARGET_DIR};
        a.push(format!("--mount=type=bind,src={},dst={IDENTITY_TARGET},ro", i.files.display()));
        a.push(format!(
            "--mount=type=bind,src={},dst={SOCKET_TARGET_DIR},ro",
            i.socket_dir.display()
        ));
        a.push(format!("--env={}", endpoint_env()));
    }
    a.push("--".into());
    // The digest the manager resolved, if it did: every node runs the same image whatever the
    // tag says by now (the name keeps the registry to pull it from).
    let pinned = tpl.digest.as_ref().filter(|_| pin).and_then(|d| {
        let r = bulkhead_image::Reference::parse(&tpl.image).ok()?;
        Some(r.with_digest(d.parse().ok()?).to_string())
    });
    a.push(pinned.unwrap_or_else(|| tpl.image.clone()));
    a.extend(tpl.command.iter().cloned());
    a
}

impl Executor for RuntimeExecutor {
    fn start(&self, node: &str, t: &Assignment, files: &[TaskFile], identity: Option<&IdentityMount>) -> Result<Started, String> {
        if let Some(i) = identity {
            if [&i.files, &i.socket_dir].iter().any(|p| p.to_string_lossy().contains(',')) {
                return Err(format!(
                    "the node's directory {} has a ',' in its path: no --mount of it",
                    i.files.display()
                ));
            }
        }
        // A repository this node's trust policy covers is verified here, as `run` verifies it:
        // the task runs the tag, which must be signed as the digest the service is pinned to.
        let signed_here = t.template.digest.is_some()
            && bulkhead_image::Reference::parse(&t.template.image)
                .ok()
                .map(|r| crate::trust_cmd::covers(&self.ctx, &r))
                .transpose()
                .map_err(|e| format!("{e:#}"))?
                .unwrap_or(false);
        let mut flags = Flags::try_parse_from(run_flags(node, t, files, identity, !signed_here))
            .map_err(|e| e.to_string().lines().next().unwrap_or("").to_owned())?;
        flags.run.stack_task = t.template.stack.is_some();
        let (rt, rec) = crate::container_cmd::create_container(&self.ctx, &flags.run, false).map_err(|e| format!("{e:#}"))?;
        if signed_here {
            if let Err(e) = self.is_pinned(&t.template, &rec) {
                let _ = rt.remove(&rec.id, true);
                return Err(e);
            }
        }
        // The identity files become the task's user's (as it maps on the host), before it runs.
        if let Some(i) = identity {
            let owner = owner_of(&rec).ok_or_else(|| format!("the task's user {:?} is outside its id range", rec.user));
            if let Err(e) = owner.and_then(|o| own_identity(&i.files, o).map_err(|e| e.to_string())) {
                let _ = rt.remove(&rec.id, true);
                return Err(format!("the task's identity files: {e}"));
            }
        }
        if let Err(e) = rt.start(&rec.id) {
            let _ = rt.remove(&rec.id, true);
            return Err(e.to_string());
        }
        Ok(Started {
            container: rec.id,
            digest: Some(rec.image_id.to_string()),
        })
    }

    fn observe(&self, container: &str) -> Observed {
        let Ok(rt) = self.runtime() else { return Observed::Running };
        match rt.status(container) {
            Ok(r) => match r.state {
                State::Exited { code, .. } => Observed::Exited(code),
                _ => Observed::Running,
            },
            Err(bulkhead_runtime::error::Error::NotFound(_)) => Observed::Gone,
            Err(_) => Observed::Running,
        }
    }

    fn logs(&self, container: &str) -> Result<Box<dyn bulkhead_cluster::agent::LogSource>, String> {
        let rt = self.runtime()?;
        let follower = rt.logs(container).map_err(|e| e.to_string())?;
        Ok(Box::new(TaskLog {
            rt,
            container: container.to_owned(),
            follower,
        }))
    }

    fn health(&self, container: &str) -> Option<bulkhead_cluster::agent::Health> {
        let store = self.ctx.store().ok()?;
        let cs = bulkhead_runtime::container::Containers::open(&store).ok()?;
        let rec = self.runtime().ok()?.status(container).ok()?;
        let h = crate::container_cmd::health_of(&cs, &rec)?;
        Some(match h.status.as_str() {
            "healthy" => bulkhead_cluster::agent::Health::Healthy,
            "unhealthy" => bulkhead_cluster::agent::Health::Unhealthy,
            _ => bulkhead_cluster::agent::Health::Starting,
        })
    }

    fn stop(&self, container: &str) -> Result<(), String> {
        let rt = self.runtime()?;
        match rt.stop(container, None) {
            Ok(_) | Err(bulkhead_runtime::error::Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn remove(&self, container: &str) -> Result<(), String> {
        let rt = self.runtime()?;
        match rt.remove(container, true) {
            Ok(_) | Err(bulkhead_runtime::error::Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn stacks(&self, wanted: &[bulkhead_cluster::stacks::StackRecord]) -> Result<bool, String> {
        let nets = bulkhead_network::Networks::open(&self.ctx.root, &self.ctx.config).map_err(|e| e.to_string())?;
        let existing = nets.list().map_err(|e| e.to_string())?;
        let mut settled = true;
        // Each stack on its own: one that cannot be made here (a network of its name that is
        // not its own) fails only its own tasks' starts.
        let mut failed = Vec::new();
        for s in wanted {
            if let Err(e) = self.one_stack(&nets, &existing, s) {
                failed.push(format!("stack {}: {e}", s.name));
            }
        }
        // What stacks no longer here left: their rules at once, their networks once no
        // container uses them.
        let wanted_names: std::collections::BTreeSet<&str> = wanted.iter().map(|s| s.name.as_str()).collect();
        let stale: std::collections::BTreeSet<String> = nets
            .rules()
            .map_err(|e| e.to_string())?
            .iter()
            .filter_map(|r| r.origin.strip_prefix(STACK_ORIGIN)?.split_once(": ").map(|(s, _)| s.to_owned()))
            .filter(|s| !wanted_names.contains(s.as_str()))
            .collect();
        for s in stale {
            nets.set_rules_of_origin(&stack_origin(&s), Vec::new()).map_err(|e| e.to_string())?;
        }
        for n in existing {
            let Some(owner) = n.labels.get(STACK_NETWORK_LABEL) else { continue };
            let in_use = wanted
                .iter()
                .any(|s| &s.name == owner && s.networks.iter().any(|x| x.name == n.name));
            if !in_use && nets.remove(&n.name).is_err() {
                settled = false;
            }
        }
        if failed.is_empty() {
            Ok(settled)
        } else {
            Err(failed.join("; "))
        }
    }

    fn container_of_pid(&self, pid: i32) -> Option<String> {
        bulkhead_runtime::cgroup::container_of(pid)
    }

    fn owner(&self, container: &str) -> Option<(u32, u32)> {
        let rt = self.runtime().ok()?;
        owner_of(&rt.status(container).ok()?)
    }

    fn adopt(&self) -> Vec<(String, String)> {
        let Ok(rt) = self.runtime() else { return Vec::new() };
        rt.list()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| Some((r.labels.get(TASK_LABEL)?.clone(), r.id)))
            .collect()
    }
}

impl RuntimeExecutor {
    /// One stack's networks (made if missing) and rules (written if they differ) on this node.
    fn one_stack(
        &self,
        nets: &bulkhead_network::Networks,
        existing: &[bulkhead_network::Network],
        s: &bulkhead_cluster::stacks::StackRecord,
    ) -> Result<(), String> {
        use bulkhead_network::rules::{Action, Rule, Selector};
        for n in &s.networks {
            match existing.iter().find(|x| x.name == n.name) {
                Some(x) if x.labels.get(STACK_NETWORK_LABEL) == Some(&s.name) => {}
                Some(_) => return Err(format!("network {} exists on this node and is not stack {}'s", n.name, s.name)),
                None => {
                    let mut labels = std::collections::BTreeMap::new();
                    labels.insert(STACK_NETWORK_LABEL.to_owned(), s.name.clone());
                    nets.create(&bulkhead_network::CreateRequest {
                        name: n.name.clone(),
                        internal: n.internal,
                        labels,
                        ..Default::default()
                    })
                    .map_err(|e| format!("network {}: {e}", n.name))?;
                }
            }
        }
        let origin = stack_origin(&s.name);
        let sel = |svc: &str| Selector::Label(STACK_SERVICE_LABEL.into(), format!("{}.{svc}", s.name));
        let new: Vec<Rule> = s
            .rules
            .iter()
            .map(|r| Rule {
                id: 0,
                action: Action::Allow,
                from: sel(&r.from),
                to: sel(&r.to),
                port: Some(r.port),
                proto: Some(r.proto.clone()),
                network: None,
                origin: format!("{origin}{}", r.origin),
                owner: None,
                created: chrono::Utc::now(),
                hits: 0,
            })
            .collect();
        // Written only when they differ (every write reprograms the node's tables).
        let key = |r: &Rule| (r.from.to_string(), r.to.to_string(), r.port, r.proto.clone(), r.origin.clone());
        let have: std::collections::BTreeSet<_> = nets
            .rules()
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|r| r.origin.starts_with(&origin))
            .map(key)
            .collect();
        if have != new.iter().map(key).collect() {
            nets.set_rules_of_origin(&origin, new).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A task container's log as the runtime keeps it (the same records `bulkhead logs` reads).
struct TaskLog {
    rt: Runtime,
    container: String,
    follower: bulkhead_runtime::logs::Follower,
}

impl bulkhead_cluster::agent::LogSource for TaskLog {
    fn poll(&mut self) -> Result<Vec<(String, String, String)>, String> {
        Ok(self
            .follower
            .poll()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|r| (r.stream, r.log, r.time))
            .collect())
    }

    fn running(&self) -> bool {
        self.rt.status(&self.container).is_ok_and(|r| self.rt.is_running(&r))
    }
}

/// The host ids of a container's user: inside its range, or none.
fn owner_of(rec: &bulkhead_runtime::container::ContainerRecord) -> Option<(u32, u32)> {
    let (u, g) = rec.user;
    match rec.host_id {
        None => Some((u, g)),
        Some(_) if u >= bulkhead_runtime::profile::ID_RANGE || g >= bulkhead_runtime::profile::ID_RANGE => None,
        Some(h) => Some((h.checked_add(u)?, h.checked_add(g)?)),
    }
}

/// The identity directory, and everything in it, to `owner` (no link followed: the agent
/// wrote all of it, the task has not run yet); the directory readable and searchable by it alone.
fn own_identity(dir: &std::path::Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let (u, g) = (Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)));
    fn walk(d: &std::path::Path, u: Option<rustix::fs::Uid>, g: Option<rustix::fs::Gid>) -> std::io::Result<()> {
        for e in std::fs::read_dir(d)? {
            let e = e?;
            rustix::fs::chownat(rustix::fs::CWD, e.path(), u, g, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
            if e.file_type()?.is_dir() {
                walk(&e.path(), u, g)?;
            }
        }
        Ok(())
    }
    walk(dir, u, g)?;
    rustix::fs::chownat(rustix::fs::CWD, dir, u, g, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_cluster::services::{Desired, TaskTemplate};

    /// Values that look like flags stay values: the parsed run has the defaults, and the image
    /// and command are what the spec says.
    #[test]
    fn values_never_become_flags() {
        let t = Assignment {
            id: "0123456789abcdef".into(),
            service: "web".into(),
            service_id: "s".into(),
            slot: 1,
            desired: Desired::Running,
            template: TaskTemplate {
                image: "box".into(),
                command: vec!["--privileged".into(), "--network=host".into()],
                env: vec!["A=--privileged".into()],
                labels: [("k".to_owned(), "--userns=host".to_owned())].into(),
                health_cmd: Some("--pid=host".into()),
                ..Default::default()
            },
            state: bulkhead_cluster::orchestrator::TaskState::Assigned,
        };
        let flags = Flags::try_parse_from(run_flags("node1", &t, &[], None, true)).unwrap();
        let dbg = format!("{:?}", flags.run);
        assert!(dbg.contains("privileged: false"), "{dbg}");
        assert!(dbg.contains("userns: \"auto\""), "{dbg}");
        assert!(dbg.contains("pid: None"), "{dbg}");
        assert!(
            dbg.contains("network: \"bridge\"") || dbg.contains(&format!("network: {:?}", bulkhead_network::DEFAULT_NETWORK)),
            "{dbg}"
        );
        assert!(dbg.contains("image: \"box\""), "{dbg}");
        assert!(dbg.contains("command: [\"--privileged\", \"--network=host\"]"), "{dbg}");
    }
}
