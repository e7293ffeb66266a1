//! Rules between containers: `network allow FROM TO[:PORT[/PROTO]]`, `network deny ...`. FROM and
//! TO are container names, aliases or labels (`app=web`); a rule names no address, so it follows
//! containers across restarts and address changes: the policy table's sets are computed from the
//! rules and the containers running now, on every change.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{Error, Lease, Result};

/// One end of a rule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// A container's name, or an alias it has on the network.
    Name(String),
    /// Containers with label KEY=VALUE.
    Label(String, String),
    /// Everything outside the host's bulkhead networks (for `deny`: egress).
    Outside,
}

impl Selector {
    pub fn parse(s: &str) -> Result<Self> {
        if s == "outside" {
            return Ok(Selector::Outside);
        }
        if let Some((k, v)) = s.split_once('=') {
            if k.is_empty() {
                return Err(Error::Invalid(format!("{s:?}: a label selector is KEY=VALUE")));
            }
            return Ok(Selector::Label(k.into(), v.into()));
        }
        if s.is_empty() || s.len() > 128 || !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
            return Err(Error::Invalid(format!("{s:?}: not a container name, alias or KEY=VALUE label")));
        }
        Ok(Selector::Name(s.into()))
    }

    fn matches(&self, l: &Lease) -> bool {
        match self {
            Selector::Name(n) => &l.name == n || l.aliases.iter().any(|a| a == n),
            Selector::Label(k, v) => l.labels.get(k) == Some(v),
            Selector::Outside => false,
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Name(n) => write!(f, "{n}"),
            Selector::Label(k, v) => write!(f, "{k}={v}"),
            Selector::Outside => write!(f, "outside"),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// Let new connections through and log each (a compose project's `policy: learn`): what an
    /// application really does, recorded rather than enforced.
    Learn,
}

/// A rule as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rule {
    pub id: u64,
    pub action: Action,
    pub from: Selector,
    pub to: Selector,
    /// None: every port (and protocol).
    pub port: Option<u16>,
    /// "tcp" or "udp" (with a port).
    pub proto: Option<String>,
    /// None: on every network both ends share.
    pub network: Option<String>,
    /// Who made it: "network allow", or "run NAME --allow-from", ...
    pub origin: String,
    /// The container whose creation made it (removed with that container).
    #[serde(default)]
    pub owner: Option<String>,
    pub created: chrono::DateTime<chrono::Utc>,
    /// Packets it let through (or stopped), summed across changes of the table.
    #[serde(default)]
    pub hits: u64,
}

impl Rule {
    /// `TO[:PORT[/PROTO]]`.
    pub fn parse_target(s: &str) -> Result<(Selector, Option<u16>, Option<String>)> {
        let (to, port) = match s.rsplit_once(':') {
            Some((t, p)) => (t, Some(p)),
            None => (s, None),
        };
        let (port, proto) = match port {
            None => (None, None),
            Some(p) => {
                let (n, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                let proto = proto.to_ascii_lowercase();
                if proto != "tcp" && proto != "udp" {
                    return Err(Error::Invalid(format!("{s:?}: protocol {proto:?} (tcp or udp)")));
                }
                let n: u16 = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Error::Invalid(format!("{s:?}: port {n:?} (1-65535)")))?;
                (Some(n), Some(proto))
            }
        };
        Ok((Selector::parse(to)?, port, proto))
    }

    pub fn describe(&self) -> String {
        let port = match (self.port, &self.proto) {
            (Some(p), Some(pr)) => format!(":{p}/{pr}"),
            _ => String::new(),
        };
        let net = self.network.as_deref().map(|n| format!(" on {n}")).unwrap_or_default();
        let action = match self.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Learn => "learn",
        };
        format!("{action} {} -> {}{port}{net}", self.from, self.to)
    }

    fn same_as(&self, other: &Rule) -> bool {
        (
            self.from.clone(),
            self.to.clone(),
            self.port,
            self.proto.clone(),
            self.network.clone(),
        ) == (
            other.from.clone(),
            other.to.clone(),
            other.port,
            other.proto.clone(),
            other.network.clone(),
        )
    }
}

/// What the rules allow and deny between the containers running now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// (source, destination, protocol, port) and the rule it came from.
    pub ports: Vec<(IpAddr, IpAddr, String, u16, u64)>,
    /// (source, destination): every port and protocol.
    pub any: Vec<(IpAddr, IpAddr, u64)>,
    /// Containers whose way out is denied.
    pub no_egress: Vec<(IpAddr, u64)>,
    /// (source, destination, protocol, port) a deny rule names: dropped before any allow.
    pub drops: Vec<(IpAddr, IpAddr, String, u16, u64)>,
    /// (source, destination) a learn rule names: what no allow takes is let through, logged.
    pub learn: Vec<(IpAddr, IpAddr, u64)>,
}

/// The address pairs of two containers on one network: IPv4, and IPv6 where both have it.
fn pairs(from: &Lease, to: &Lease) -> Vec<(IpAddr, IpAddr)> {
    let mut out = vec![(IpAddr::V4(from.ip), IpAddr::V4(to.ip))];
    if let (Some(a), Some(b)) = (from.ip6, to.ip6) {
        out.push((IpAddr::V6(a), IpAddr::V6(b)));
    }
    out
}

/// Every source address a container's port lets through on one network: with IPv6, its
/// link-local address and `::` too.
fn addrs(l: &Lease) -> Vec<IpAddr> {
    let mut out = vec![IpAddr::V4(l.ip)];
    if let Some(a) = l.ip6 {
        out.push(IpAddr::V6(a));
        out.extend(crate::firewall::link_local(&l.mac).map(IpAddr::V6));
        out.push(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    }
    out
}

/// Resolves `rules` against `leases`: a pair is allowed only on a network both ends are on
/// (containers on different networks never meet), and a deny rule wins over an allow rule.
pub fn resolve(rules: &[Rule], leases: &[Lease]) -> Resolved {
    let mut out = Resolved::default();
    let denied = |from: &Lease, to: &Lease, port: Option<u16>, proto: Option<&str>| {
        rules.iter().any(|r| {
            r.action == Action::Deny
                && r.from.matches(from)
                && r.to.matches(to)
                && r.network.as_deref().is_none_or(|n| n == from.network)
                && (r.port.is_none() || (r.port == port && r.proto.as_deref() == proto))
        })
    };
    for r in rules {
        if r.action == Action::Deny {
            if let (Some(port), Some(proto)) = (r.port, &r.proto) {
                for from in leases.iter().filter(|l| r.from.matches(l)) {
                    for to in leases.iter().filter(|l| r.to.matches(l) && l.network == from.network) {
                        if from.container != to.container && r.network.as_deref().is_none_or(|n| n == from.network) {
                            for (a, b) in pairs(from, to) {
                                out.drops.push((a, b, proto.clone(), port, r.id));
                            }
                        }
                    }
                }
            }
            if r.to == Selector::Outside {
                for l in leases
                    .iter()
                    .filter(|l| r.from.matches(l) && r.network.as_deref().is_none_or(|n| n == l.network))
                {
                    for a in addrs(l) {
                        out.no_egress.push((a, r.id));
                    }
                }
            }
            continue;
        }
        for from in leases.iter().filter(|l| r.from.matches(l)) {
            for to in leases.iter().filter(|l| r.to.matches(l)) {
                if from.container == to.container || from.network != to.network {
                    continue;
                }
                if r.network.as_deref().is_some_and(|n| n != from.network) {
                    continue;
                }
                if denied(from, to, r.port, r.proto.as_deref()) {
                    continue;
                }
                for (a, b) in pairs(from, to) {
                    match (r.action, r.port, &r.proto) {
                        (Action::Learn, _, _) => out.learn.push((a, b, r.id)),
                        (_, Some(p), Some(proto)) => out.ports.push((a, b, proto.clone(), p, r.id)),
                        _ => out.any.push((a, b, r.id)),
                    }
                }
            }
        }
    }
    out.ports.sort();
    out.ports.dedup_by(|a, b| (a.0, a.1, &a.2, a.3) == (b.0, b.1, &b.2, b.3));
    out.any.sort();
    out.any.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
    out.drops.sort();
    out.drops.dedup_by(|a, b| (a.0, a.1, &a.2, a.3) == (b.0, b.1, &b.2, b.3));
    out.no_egress.sort();
    out.no_egress.dedup_by(|a, b| a.0 == b.0);
    out.learn.sort();
    out.learn.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
    out
}

/// Adds `rule` (an allow that an identical deny cancels, or the reverse, replaces it); returns
/// what changed, in words.
pub fn add(rules: &mut Vec<Rule>, mut rule: Rule) -> String {
    if let Some(i) = rules.iter().position(|r| r.same_as(&rule)) {
        let old = rules.remove(i);
        if old.action == rule.action {
            rules.insert(i, old.clone());
            return format!("unchanged: {}", old.describe());
        }
        if rule.action == Action::Deny && rule.to != Selector::Outside {
            // Denying what was allowed: the allow goes; nothing between containers needs a
            // standing deny (that is the default).
            return format!("removed: {}", old.describe());
        }
    }
    rule.id = rules.iter().map(|r| r.id).max().unwrap_or(0) + 1;
    let what = format!("added: {}", rule.describe());
    rules.push(rule);
    what
}

/// Hits to add to each rule, from the table's counters before it is rewritten.
pub fn add_hits(rules: &mut [Rule], hits: &BTreeMap<u64, u64>) {
    for r in rules {
        r.hits += hits.get(&r.id).copied().unwrap_or(0);
    }
}
