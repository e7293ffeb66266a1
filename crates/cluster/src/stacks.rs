//! Stacks (`stack deploy`): the services of one compose file, with the networks they share and
//! the conversations the file allows between them.
//!
//! Key `stacks/<name>`: a [`StackRecord`]. Its services are ordinary services named
//! `<stack>_<service>`, whose task template names the stack. The dispatcher sends a node the
//! records of the stacks its tasks belong to; the node's agent makes the stack's networks and
//! programs its rules there before it starts any of the stack's tasks, and takes both away once
//! the last of them has gone.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::manager::{Error, Manager, Result};
use crate::orchestrator::ServiceSpec;
use crate::store::{Check, Op, Request};

/// At most this many services, networks and rules in a stack.
pub const MAX_SERVICES: usize = 1000;
pub const MAX_NETWORKS: usize = 16;
pub const MAX_RULES: usize = 4096;

/// A network of a stack, made on each node that runs one of the stack's tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackNetwork {
    /// `<stack>_<key>`.
    pub name: String,
    #[serde(default)]
    pub internal: bool,
}

/// A conversation the file allows: tasks of `from` may open connections to tasks of `to` on
/// `port`/`proto` (service names within the stack).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRule {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub proto: String,
    /// What in the file says so (`compose.yaml:6 depends_on`).
    pub origin: String,
}

/// A stack as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRecord {
    pub name: String,
    /// The services' names within the stack (`web`; the service is `<stack>_web`).
    pub services: Vec<String>,
    pub networks: Vec<StackNetwork>,
    pub rules: Vec<StackRule>,
    /// The secrets and configs the file brings (`<stack>_<name>`, made from its files): they
    /// go with the stack.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub configs: Vec<String>,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub updated: i64,
}

pub fn stack_key(name: &str) -> String {
    format!("stacks/{name}")
}

/// The cluster's name of a stack's service.
pub fn service_name(stack: &str, service: &str) -> String {
    format!("{stack}_{service}")
}

impl StackRecord {
    /// Checks a record (one line for what is wrong); a node checks again what it is sent.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        // No '_' (the prefix of its services' and networks' names) and no '.' (the separator in
        // its tasks' label `<stack>.<service>`): no stack's names can read as another's.
        if !crate::secrets::valid_name(&self.name) || self.name == "default" || self.name.contains(['_', '.']) {
            return bad(format!(
                "stack name {:?}: a letter or digit, then letters, digits, '-' (not `default`)",
                self.name
            ));
        }
        if self.services.is_empty() || self.services.len() > MAX_SERVICES {
            return bad(format!("a stack has 1 to {MAX_SERVICES} services"));
        }
        let mut seen = BTreeSet::new();
        for s in &self.services {
            if !crate::secrets::valid_name(s) || !crate::secrets::valid_name(&service_name(&self.name, s)) {
                return bad(format!(
                    "service {s:?}: its name in the cluster, {}, is not a name",
                    service_name(&self.name, s)
                ));
            }
            if !seen.insert(s) {
                return bad(format!("service {s:?} twice"));
            }
        }
        if self.networks.len() > MAX_NETWORKS {
            return bad(format!("at most {MAX_NETWORKS} networks in a stack"));
        }
        let prefix = format!("{}_", self.name);
        let mut nets = BTreeSet::new();
        for n in &self.networks {
            if !crate::secrets::valid_name(&n.name) || !n.name.starts_with(&prefix) || n.name.len() == prefix.len() {
                return bad(format!("network {:?}: {prefix}NAME", n.name));
            }
            if !nets.insert(&n.name) {
                return bad(format!("network {:?} twice", n.name));
            }
        }
        for n in self.secrets.iter().chain(&self.configs) {
            if !n.starts_with(&prefix) || !crate::secrets::valid_name(n) {
                return bad(format!("secret or config {n:?}: {prefix}NAME"));
            }
        }
        if self.rules.len() > MAX_RULES {
            return bad(format!("at most {MAX_RULES} rules in a stack"));
        }
        for r in &self.rules {
            if !seen.contains(&r.from) || !seen.contains(&r.to) {
                return bad(format!("rule {} -> {}: not services of the stack", r.from, r.to));
            }
            if r.port == 0 || !matches!(r.proto.as_str(), "tcp" | "udp") {
                return bad(format!("rule {} -> {}: a port and tcp or udp", r.from, r.to));
            }
            if r.origin.len() > 512 || r.origin.chars().any(char::is_control) {
                return bad("a rule's origin: at most 512 characters, no control characters".into());
            }
        }
        Ok(())
    }

    /// Checks the stack's services against it: their names, their stack, their networks.
    pub fn check_services(&self, specs: &[ServiceSpec]) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if specs.len() != self.services.len() {
            return bad("one service spec for each of the stack's services".into());
        }
        for (short, spec) in self.services.iter().zip(specs) {
            if spec.name != service_name(&self.name, short) {
                return bad(format!("service {}: expected {}", spec.name, service_name(&self.name, short)));
            }
            if spec.task.stack.as_deref() != Some(self.name.as_str()) {
                return bad(format!("service {}: its tasks must name stack {}", spec.name, self.name));
            }
            for n in &spec.task.networks {
                if !self.networks.iter().any(|x| &x.name == n) {
                    return bad(format!("service {}: network {n:?} is not the stack's", spec.name));
                }
            }
            crate::services::validate(spec)?;
        }
        Ok(())
    }
}

/// What `stack deploy` did to each service.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Deployed {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    /// Services of the stack that the file no longer has (removed with `--prune`).
    pub pruned: Vec<String>,
    pub left: Vec<String>,
}

impl Manager {
    pub fn stack(&self, name: &str) -> Option<StackRecord> {
        self.get(&stack_key(name))
    }

    pub fn stacks(&self) -> Vec<StackRecord> {
        self.sm
            .scan("stacks/")
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// The services of stack `name` in the store (by their template's stack).
    pub fn stack_services(&self, name: &str) -> Vec<crate::services::ServiceRecord> {
        self.services()
            .into_iter()
            .filter(|s| s.spec.task.stack.as_deref() == Some(name))
            .collect()
    }

    /// `stack deploy`: the record first (so that nodes have the networks and rules before any
    /// task of the stack runs), then each service made or updated (its tasks roll if what they
    /// run changed). A service of that name that belongs to no stack, or to another, is refused
    /// before anything is written.
    pub async fn deploy_stack(&self, mut rec: StackRecord, specs: Vec<ServiceSpec>, prune: bool, now: i64) -> Result<Deployed> {
        rec.validate()?;
        rec.check_services(&specs)?;
        for spec in &specs {
            if let Some(old) = self.service(&spec.name) {
                if old.spec.task.stack.as_deref() != Some(rec.name.as_str()) {
                    return Err(Error::Invalid(format!(
                        "a service named {} exists already and is not stack {}'s",
                        spec.name, rec.name
                    )));
                }
            }
            // Every secret and config must exist before anything is written.
            for f in spec.task.secrets.iter() {
                self.secret(crate::secrets::Kind::Secret, &f.source)
                    .ok_or_else(|| Error::Invalid(format!("service {}: no secret named {:?}", spec.name, f.source)))?;
            }
            for f in spec.task.configs.iter() {
                self.secret(crate::secrets::Kind::Config, &f.source)
                    .ok_or_else(|| Error::Invalid(format!("service {}: no config named {:?}", spec.name, f.source)))?;
            }
        }
        let key = stack_key(&rec.name);
        let raw = self.sm.get(&key);
        let old: Option<StackRecord> = raw.as_deref().and_then(|r| serde_json::from_slice(r).ok());
        rec.created = old.as_ref().map_or(now, |o| o.created);
        rec.updated = now;
        if old.is_none() && self.sm.scan("stacks/").len() >= 1000 {
            return Err(Error::Invalid("at most 1000 stacks".into()));
        }
        // The union of the old and new services stays in the record until the prune is done, so
        // a node never loses the rules of a task that still runs.
        let mut written = rec.clone();
        if let Some(o) = &old {
            for s in &o.services {
                if !written.services.contains(s) && self.service(&service_name(&rec.name, s)).is_some() {
                    written.services.push(s.clone());
                }
            }
        }
        let r = self
            .write(Request {
                checks: vec![Check::Is {
                    key: key.clone(),
                    value: raw,
                }],
                ops: vec![Op::Put {
                    key: key.clone(),
                    value: serde_json::to_vec(&written).expect("serialisable"),
                }],
            })
            .await?;
        if !r.applied {
            return Err(Error::Invalid(format!("stack {} changed meanwhile; try again", rec.name)));
        }
        let mut out = Deployed::default();
        for spec in specs {
            let name = spec.name.clone();
            match self.service(&name) {
                None => {
                    self.create_service(spec, now).await?;
                    out.created.push(name);
                }
                Some(old) if old.spec == spec => out.unchanged.push(name),
                Some(_) => {
                    self.update_service(&name, spec, now).await?;
                    out.updated.push(name);
                }
            }
        }
        let gone: Vec<String> = written.services.iter().filter(|s| !rec.services.contains(s)).cloned().collect();
        for s in gone {
            let full = service_name(&rec.name, &s);
            if prune {
                self.remove_service(&full).await?;
                out.pruned.push(full);
            } else {
                out.left.push(full);
            }
        }
        if prune && written != rec {
            let raw = self.sm.get(&key);
            let mut now_rec: StackRecord = raw
                .as_deref()
                .and_then(|r| serde_json::from_slice(r).ok())
                .ok_or_else(|| Error::Invalid(format!("stack {} went meanwhile", rec.name)))?;
            now_rec.services.retain(|s| rec.services.contains(s));
            self.write(Request {
                checks: vec![Check::Is {
                    key: key.clone(),
                    value: raw,
                }],
                ops: vec![Op::Put {
                    key,
                    value: serde_json::to_vec(&now_rec).expect("serialisable"),
                }],
            })
            .await?;
        }
        Ok(out)
    }

    /// `stack rm`: its services go (their tasks are shut down and their containers removed by
    /// the nodes), then its record; each node takes the stack's rules and networks away once
    /// its last task of the stack has gone.
    pub async fn remove_stack(&self, name: &str) -> Result<Vec<String>> {
        let raw = self.sm.get(&stack_key(name));
        let rec: StackRecord = raw
            .as_deref()
            .and_then(|r| serde_json::from_slice(r).ok())
            .ok_or_else(|| Error::Invalid(format!("no stack named {name:?}")))?;
        let mut removed = Vec::new();
        for s in self.stack_services(&rec.name) {
            self.remove_service(&s.spec.name).await?;
            removed.push(s.spec.name);
        }
        // The secrets and configs it brought, unless another service uses them now.
        for (kind, list) in [
            (crate::secrets::Kind::Secret, &rec.secrets),
            (crate::secrets::Kind::Config, &rec.configs),
        ] {
            for n in list {
                if self.secret(kind, n).is_some() && self.users_of(kind, n).is_empty() {
                    self.remove_secret(kind, n).await?;
                }
            }
        }
        // Only the record this began with: a deploy meanwhile has changed it, and its services
        // stay with it. Once the record is gone no service of the stack can be made (their
        // writes are conditioned on it), so those a deploy made since the list above go now.
        let r = self
            .write(Request {
                checks: vec![Check::Is {
                    key: stack_key(name),
                    value: raw,
                }],
                ops: vec![Op::Delete { key: stack_key(name) }],
            })
            .await?;
        if !r.applied {
            return Err(Error::Invalid(format!(
                "stack {name} was deployed again meanwhile: it stays; run stack rm again"
            )));
        }
        for s in self.stack_services(&rec.name) {
            self.remove_service(&s.spec.name).await?;
            removed.push(s.spec.name);
        }
        Ok(removed)
    }

    /// A spec that names a stack must be one of that stack's services (only `stack deploy`
    /// makes them: the stack's rules select its tasks by that name).
    pub(crate) fn check_stack_of(&self, spec: &ServiceSpec) -> Result<()> {
        let Some(stack) = &spec.task.stack else { return Ok(()) };
        let ok = self
            .stack(stack)
            .is_some_and(|r| r.services.iter().any(|s| service_name(stack, s) == spec.name));
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "service {}: only `stack deploy` makes the services of stack {stack}",
                spec.name
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> StackRecord {
        StackRecord {
            name: "shop".into(),
            services: vec!["web".into(), "db".into()],
            networks: vec![StackNetwork {
                name: "shop_default".into(),
                internal: false,
            }],
            rules: vec![StackRule {
                from: "web".into(),
                to: "db".into(),
                port: 5432,
                proto: "tcp".into(),
                origin: "compose.yaml:3 depends_on".into(),
            }],
            secrets: vec!["shop_token".into()],
            configs: vec![],
            created: 0,
            updated: 0,
        }
    }

    #[test]
    fn a_stack_that_would_reach_beyond_itself_is_refused() {
        assert!(rec().validate().is_ok());
        let refused = |f: &dyn Fn(&mut StackRecord)| {
            let mut r = rec();
            f(&mut r);
            r.validate().is_err()
        };
        // Another stack's network or secret, the host's network, a name that reads as another's.
        assert!(refused(&|r| r.networks[0].name = "other_default".into()));
        assert!(refused(&|r| r.networks[0].name = "host".into()));
        assert!(refused(&|r| r.networks[0].name = "shop_".into()));
        assert!(refused(&|r| r.secrets[0] = "other_token".into()));
        assert!(refused(&|r| r.name = "default".into()));
        assert!(refused(&|r| r.name = "sh_op".into()));
        assert!(refused(&|r| r.name = "shop.prod".into()));
        assert!(refused(&|r| r.name = "-shop".into()));
        // Rules between services of the stack only, with a port and tcp or udp.
        assert!(refused(&|r| r.rules[0].to = "elsewhere".into()));
        assert!(refused(&|r| r.rules[0].port = 0));
        assert!(refused(&|r| r.rules[0].proto = "icmp".into()));
        assert!(refused(&|r| r.rules[0].origin = "a\nb".into()));
        assert!(refused(&|r| r.services.push("web".into())));
        assert!(refused(&|r| r.services.push("a/b".into())));
    }

    #[test]
    fn a_stack_s_services_must_be_its_own() {
        let r = rec();
        let spec = |name: &str, stack: Option<&str>, net: &str| ServiceSpec {
            name: name.into(),
            mode: crate::orchestrator::Mode::Replicated { replicas: 1 },
            constraints: vec![],
            reserve_memory: 0,
            reserve_cpu: 0,
            task: crate::services::TaskTemplate {
                image: "busybox".into(),
                networks: vec![net.into()],
                stack: stack.map(str::to_owned),
                ..Default::default()
            },
            restart: Default::default(),
            update: Default::default(),
        };
        let good = vec![
            spec("shop_web", Some("shop"), "shop_default"),
            spec("shop_db", Some("shop"), "shop_default"),
        ];
        assert!(r.check_services(&good).is_ok());
        assert!(r
            .check_services(&[
                spec("shop_web", Some("shop"), "shop_default"),
                spec("db", Some("shop"), "shop_default")
            ])
            .is_err());
        assert!(r
            .check_services(&[
                spec("shop_web", None, "shop_default"),
                spec("shop_db", Some("shop"), "shop_default")
            ])
            .is_err());
        assert!(r
            .check_services(&[
                spec("shop_web", Some("shop"), "bridge"),
                spec("shop_db", Some("shop"), "shop_default")
            ])
            .is_err());
        assert!(r.check_services(&good[..1]).is_err());
    }
}
