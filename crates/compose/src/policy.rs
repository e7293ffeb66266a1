//! The conversations a compose file declares, as rules: service A may open connections to
//! service B when A `depends_on` B, `links` to B, or lists B under `x-bulkhead: {talks-to: [...]}`;
//! only to the ports B `expose`s or publishes (or the one `talks-to` names). Everything else
//! between the project's containers stays denied (the networks' default). Each rule remembers
//! the line it came from.

use crate::tree::Node;
use crate::{line_of, Error, Project, Result};

/// One allowed conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Allow {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub proto: String,
    /// What in the file says so: `depends_on`, `links` or `x-bulkhead.talks-to`, and its line.
    pub because: String,
    pub line: usize,
}

/// What the file implies.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Policy {
    pub allow: Vec<Allow>,
    /// Declared conversations that open nothing (the target has no known port).
    pub warnings: Vec<String>,
    /// `x-bulkhead: {policy: learn}`: record instead of enforcing.
    pub learn: bool,
}

/// `PORT[/PROTO]`, or the container side of a `ports:` entry (`[[IP:]HOST:]CONTAINER[/PROTO]`).
fn container_port(spec: &str) -> std::result::Result<(u16, String), String> {
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, p.to_ascii_lowercase()),
        None => (spec, "tcp".to_owned()),
    };
    if proto != "tcp" && proto != "udp" {
        return Err(format!("{spec:?}: protocol {proto:?} (tcp or udp)"));
    }
    let port = rest.rsplit(':').next().unwrap_or(rest);
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((p, proto)),
        _ => Err(format!("{spec:?}: {port:?} is not a port (ranges are not supported)")),
    }
}

/// The ports service `name` listens on, as the file says (`expose`, `ports`), with the line of
/// each.
fn ports_of(p: &Project, name: &str) -> Result<Vec<(u16, String)>> {
    let mut out = Vec::new();
    let svc = p.tree.get("services").and_then(|s| s.get(name));
    for key in ["expose", "ports"] {
        for (i, item) in svc.and_then(|s| s.get(key)).map(Node::items).unwrap_or_default().iter().enumerate() {
            let spec = match item {
                Node::Scalar { text, .. } => text.clone(),
                Node::Map { .. } => {
                    let target = item.get("target").and_then(Node::as_str).unwrap_or_default();
                    let proto = item.get("protocol").and_then(Node::as_str).unwrap_or("tcp");
                    format!("{target}/{proto}")
                }
                Node::Seq { .. } => String::new(),
            };
            // Interpolated as the model was.
            let spec = model_port(p, name, key, i).unwrap_or(spec);
            let port = container_port(&spec).map_err(|m| Error::at(item.line(), format!("services.{name}.{key}[{i}]: {m}")))?;
            if !out.contains(&port) {
                out.push(port);
            }
        }
    }
    Ok(out)
}

/// The `i`th entry of `expose`/`ports` of service `name` in the (interpolated) model.
fn model_port(p: &Project, name: &str, key: &str, i: usize) -> Option<String> {
    let svc = p.model.services.0.get(name)?.as_ref()?;
    match key {
        "expose" => svc.expose.get(i).cloned(),
        _ => match &svc.ports {
            crate::types::Ports::Short(v) => v.get(i).cloned(),
            crate::types::Ports::Long(v) => v.get(i).map(|l| {
                let proto = l.protocol.clone().unwrap_or_else(|| "tcp".into());
                format!("{}/{proto}", l.target)
            }),
        },
    }
}

/// A declared conversation: its target, the port it names (if any), why, and its line.
type Want = (String, Option<(u16, String)>, &'static str, usize);

/// The policy of project `p`.
pub fn derive(p: &Project) -> Result<Policy> {
    let mut policy = Policy::default();
    let services: Vec<String> = p.model.services.0.keys().cloned().collect();
    if let Some(x) = p.tree.get("x-bulkhead") {
        crate::check_map(x, &["policy"], "x-bulkhead")?;
        match x.get("policy").and_then(Node::as_str) {
            None | Some("enforce") => {}
            Some("learn") => policy.learn = true,
            Some(other) => return Err(Error::at(x.line(), format!("x-bulkhead.policy: {other:?} (enforce or learn)"))),
        }
    }
    for from in &services {
        let svc_tree = p.tree.get("services").and_then(|s| s.get(from));
        let svc = p.model.services.0.get(from).and_then(Option::as_ref);
        let mut wants: Vec<Want> = Vec::new();
        for to in svc.map(crate::depends_on).unwrap_or_default() {
            wants.push((to, None, "depends_on", line_of(&p.tree, &format!("services.{from}.depends_on"))));
        }
        for (i, l) in svc.map(|s| s.links.clone()).unwrap_or_default().iter().enumerate() {
            let to = l.split(':').next().unwrap_or(l).to_owned();
            wants.push((to, None, "links", line_of(&p.tree, &format!("services.{from}.links[{i}]"))));
        }
        if let Some(x) = svc_tree.and_then(|s| s.get("x-bulkhead")) {
            crate::check_map(x, &["talks-to"], &format!("services.{from}.x-bulkhead"))?;
            for item in x.get("talks-to").map(Node::items).unwrap_or_default() {
                let Some(text) = item.as_str() else {
                    return Err(Error::at(
                        item.line(),
                        format!("services.{from}.x-bulkhead.talks-to: expected SERVICE or SERVICE:PORT[/PROTO]"),
                    ));
                };
                let (to, port) = match text.split_once(':') {
                    Some((t, spec)) => (
                        t.to_owned(),
                        Some(
                            container_port(spec)
                                .map_err(|m| Error::at(item.line(), format!("services.{from}.x-bulkhead.talks-to: {m}")))?,
                        ),
                    ),
                    None => (text.to_owned(), None),
                };
                wants.push((to, port, "x-bulkhead.talks-to", item.line()));
            }
        }
        for (to, port, why, line) in wants {
            if !services.contains(&to) {
                return Err(Error::at(line, format!("services.{from}.{why}: no service {to:?}")));
            }
            if to == *from {
                continue;
            }
            let ports = match port {
                Some(p) => vec![p],
                None => ports_of(p, &to)?,
            };
            if ports.is_empty() {
                policy.warnings.push(format!(
                    "line {line}: {from} -> {to} ({why}): {to} exposes and publishes no port, so nothing is allowed (give it `expose:`, or name the port: x-bulkhead talks-to [\"{to}:PORT\"])"
                ));
            }
            for (port, proto) in ports {
                let a = Allow {
                    from: from.clone(),
                    to: to.clone(),
                    port,
                    proto,
                    because: why.to_owned(),
                    line,
                };
                if !policy
                    .allow
                    .iter()
                    .any(|b| (&b.from, &b.to, b.port, &b.proto) == (&a.from, &a.to, a.port, &a.proto))
                {
                    policy.allow.push(a);
                }
            }
        }
    }
    Ok(policy)
}
