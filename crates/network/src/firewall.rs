//! The policy: two nftables tables of bulkhead's own per store, written whole in one transaction
//! from the networks and the running containers, so they can never disagree with them for longer
//! than a command takes. Nobody else's tables or chains are touched; removing ours removes every
//! rule bulkhead ever made.
//!
//! - `bridge <table>`: what enters the bridges from a container's port, before anything else:
//!   only IPv4, ARP and (on networks with IPv6) IPv6 frames, no VLAN tags, from the MAC and
//!   addresses its lease gives it (neighbour advertisements only for those addresses, no router
//!   advertisements or redirects), never to 127.0.0.0/8 or ::1. Stateless, so it needs no bridge
//!   conntrack; a container with NET_RAW or NET_ADMIN cannot spoof another's address.
//! - `inet <table>`: between containers (on one bridge or across bridges) everything is dropped
//!   unless a rule allows the pair (and port); replies to what was allowed pass (conntrack). From
//!   outside, a container is reached only through a published port (DNAT). Out of a container:
//!   allowed (masqueraded) unless its network is internal. Denied attempts are counted and logged
//!   (rate-limited) with a prefix `network events` reads back.

use serde_json::{json, Value};

use crate::Result;

/// One container's port on a bridge, as its lease pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub host_if: String,
    pub mac: String,
    pub ip: std::net::Ipv4Addr,
    pub ip6: Option<std::net::Ipv6Addr>,
}

/// What the tables are made from.
#[derive(Debug, Default)]
pub struct Policy {
    pub table: String,
    /// Every bridge of the store's networks.
    pub bridges: Vec<String>,
    /// Bridges of `--internal` networks.
    pub internal: Vec<String>,
    /// IPv4 subnets of networks that may go out (masqueraded).
    pub masquerade4: Vec<String>,
    /// IPv6 subnets of networks that may go out (masqueraded: unique local addresses).
    pub masquerade6: Vec<String>,
    /// The bridges' IPv6 addresses.
    pub gateways6: Vec<std::net::Ipv6Addr>,
    /// (bridge, its gateway address, whether it serves names there).
    pub gateways: Vec<(String, std::net::Ipv4Addr, bool)>,
    /// The running containers' ports.
    pub ports: Vec<Port>,
    /// The device group of this store's container ports: the bridge family sees every bridge of
    /// the host, and each store's table judges only its own ports (this kernel has no `meta
    /// ibrname` in the bridge family to tell bridges apart).
    pub port_group: u32,
    /// What the rules allow and deny now (each entry tagged with its rule's id, for counting).
    pub rules: crate::rules::Resolved,
    /// Published ports and the address each goes to.
    /// Published ports and the addresses each goes to (IPv4, and IPv6 where it has it).
    pub published: Vec<(crate::ports::Published, std::net::Ipv4Addr, Option<std::net::Ipv6Addr>)>,
    /// Forwarding was off before bulkhead turned it on: forwarding that is not ours stays off.
    pub forwarding_is_ours: bool,
    /// The same for IPv6.
    pub forwarding6_is_ours: bool,
}

/// The prefix of a denial logged by `table` (one line in the kernel log per denied packet).
pub fn log_prefix(table: &str) -> String {
    format!("bulkhead-deny:{table} ")
}

/// The prefix of a connection a learn rule let through (one line per new connection).
pub fn learn_prefix(table: &str) -> String {
    format!("bulkhead-learn:{table} ")
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}
fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}
fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}
fn verdict(v: &str) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(v.to_owned(), Value::Null);
    Value::Object(m)
}
fn loopback() -> Value {
    json!({"prefix": {"addr": "127.0.0.0", "len": 8}})
}
/// `ip` or `ip6`: the protocol of an address's header.
fn ip_proto(a: &std::net::IpAddr) -> &'static str {
    if a.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}
fn nfproto(family: &str) -> Value {
    matches("==", meta("nfproto"), json!(family))
}
/// Neighbour solicitations and advertisements (IPv6's ARP), as only a neighbour can send them.
fn neighbour_discovery() -> Vec<Value> {
    vec![
        matches("==", meta("l4proto"), json!("ipv6-icmp")),
        matches(
            "==",
            payload("icmpv6", "type"),
            json!({"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}),
        ),
        matches("==", payload("ip6", "hoplimit"), json!(255)),
    ]
}
/// The link-local address the kernel makes from `mac` (EUI-64).
pub fn link_local(mac: &str) -> Option<std::net::Ipv6Addr> {
    let b: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    let b: [u8; 6] = b.try_into().ok()?;
    Some(std::net::Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        b[0] ^ 2,
        b[1],
        b[2],
        0xff,
        0xfe,
        b[3],
        b[4],
        b[5],
    ]))
}

fn rule_in(family: &str, table: &str, chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": family, "table": table, "chain": chain, "expr": expr}}})
}
fn rule(table: &str, chain: &str, expr: Vec<Value>) -> Value {
    rule_in("inet", table, chain, expr)
}

/// Rules per chain of both tables as `commands` writes them: compared with the kernel's.
fn rule_counts(cmds: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for c in cmds {
        if let Some(ch) = c["add"]["chain"].as_object() {
            out.entry(format!(
                "{} {}",
                ch["family"].as_str().unwrap_or(""),
                ch["name"].as_str().unwrap_or("")
            ))
            .or_insert(0);
        }
        if let Some(r) = c["add"]["rule"].as_object() {
            *out.entry(format!(
                "{} {}",
                r["family"].as_str().unwrap_or(""),
                r["chain"].as_str().unwrap_or("")
            ))
            .or_insert(0) += 1;
        }
    }
    out
}

/// The commands that make both tables what `p` says (as nft's JSON).
pub fn commands(p: &Policy) -> Value {
    let t = p.table.as_str();
    // Made anew (not flushed): nothing of an older version of the table survives.
    let mut cmds = vec![
        json!({"add": {"table": {"family": "inet", "name": t}}}),
        json!({"delete": {"table": {"family": "inet", "name": t}}}),
        json!({"add": {"table": {"family": "inet", "name": t}}}),
    ];
    let set = |name: &str, ty: Value, flags: &[&str], elems: Vec<Value>| -> Vec<Value> {
        let mut s = json!({"family": "inet", "table": t, "name": name, "type": ty});
        if !flags.is_empty() {
            s["flags"] = json!(flags);
        }
        let mut out = vec![json!({"add": {"set": s}})];
        if !elems.is_empty() {
            out.push(json!({"add": {"element": {"family": "inet", "table": t, "name": name, "elem": elems}}}));
        }
        out
    };
    cmds.extend(set("bridges", json!("ifname"), &[], p.bridges.iter().map(|b| json!(b)).collect()));
    cmds.extend(set("internal", json!("ifname"), &[], p.internal.iter().map(|b| json!(b)).collect()));
    cmds.extend(set(
        "subnets4",
        json!("ipv4_addr"),
        &["interval"],
        p.masquerade4.iter().map(|s| prefix_elem(s)).collect(),
    ));
    cmds.extend(set(
        "subnets6",
        json!("ipv6_addr"),
        &["interval"],
        p.masquerade6.iter().map(|s| prefix_elem(s)).collect(),
    ));
    for (name, ty) in [("denylog", "ipv4_addr"), ("denylog6", "ipv6_addr")] {
        cmds.push(json!({"add": {"set": {"family": "inet", "table": t, "name": name, "type": ty, "size": 65535, "flags": ["timeout"], "timeout": 60}}}));
    }
    cmds.extend(set(
        "gateways6",
        json!("ipv6_addr"),
        &[],
        p.gateways6.iter().map(|g| json!(g.to_string())).collect(),
    ));
    cmds.extend(set(
        "gateways4",
        json!("ipv4_addr"),
        &[],
        p.gateways.iter().map(|(_, g, _)| json!(g.to_string())).collect(),
    ));
    cmds.extend(set(
        "resolvers",
        json!(["ifname", "ipv4_addr"]),
        &[],
        p.gateways
            .iter()
            .filter(|(_, _, dns)| *dns)
            .map(|(b, g, _)| json!({"concat": [b, g.to_string()]}))
            .collect(),
    ));
    let chain_in = |family: &str, name: &str, base: Option<(&str, &str, i32)>| {
        let mut c = json!({"family": family, "table": t, "name": name});
        if let Some((ty, hook, prio)) = base {
            c["type"] = json!(ty);
            c["hook"] = json!(hook);
            c["prio"] = json!(prio);
            c["policy"] = json!("accept");
        }
        json!({"add": {"chain": c}})
    };
    let chain = |name: &str, base: Option<(&str, &str, i32)>| chain_in("inet", name, base);
    cmds.push(chain("guard", Some(("filter", "prerouting", -300))));
    cmds.push(chain("forward", Some(("filter", "forward", 0))));
    cmds.push(chain("between", None));
    cmds.push(chain("postrouting", Some(("nat", "postrouting", 100))));
    cmds.push(chain("prerouting", Some(("nat", "prerouting", -100))));
    cmds.push(chain("output", Some(("nat", "output", -100))));
    cmds.push(chain("input", Some(("filter", "input", 0))));

    let ours_in = matches("==", meta("iifname"), json!("@bridges"));
    let ours_out = matches("==", meta("oifname"), json!("@bridges"));
    let ct = |key: &str| json!({"ct": {"key": key}});

    // guard (before conntrack and NAT): nothing from a bridge to the host's loopback
    // (CVE-2020-8558: route_localnet is on for the bridges).
    cmds.push(rule(
        t,
        "guard",
        vec![
            ours_in.clone(),
            matches("==", payload("ip", "daddr"), loopback()),
            json!({"counter": null}),
            verdict("drop"),
        ],
    ));
    cmds.push(rule(
        t,
        "guard",
        vec![
            ours_in.clone(),
            matches("==", payload("ip6", "daddr"), json!("::1")),
            json!({"counter": null}),
            verdict("drop"),
        ],
    ));

    // forward. Traffic between containers is judged on every packet by its connection's original
    // direction (not let through as "established"): a rule taken back cuts what it had allowed.
    // A container whose way out a rule denies.
    for (ip, id) in &p.rules.no_egress {
        cmds.push(counted(
            t,
            "forward",
            vec![
                ours_in.clone(),
                matches("==", payload(ip_proto(ip), "saddr"), json!(ip.to_string())),
                matches("!=", meta("oifname"), json!("@bridges")),
            ],
            *id,
            "drop",
        ));
    }
    // An internal network reaches nothing beyond its own bridge, published ports included.
    for b in &p.internal {
        cmds.push(rule(
            t,
            "forward",
            vec![
                matches("==", meta("iifname"), json!(b)),
                matches("!=", meta("oifname"), json!(b)),
                json!({"counter": null}),
                verdict("drop"),
            ],
        ));
    }
    // A published port is open to everyone, other containers included; ICMP errors about such a
    // connection only from outside (a third container could otherwise inject them).
    cmds.push(rule(
        t,
        "forward",
        vec![
            ours_out.clone(),
            matches("in", ct("status"), json!("dnat")),
            matches("in", ct("state"), json!(["new", "established"])),
            verdict("accept"),
        ],
    ));
    cmds.push(rule(
        t,
        "forward",
        vec![
            matches("!=", meta("iifname"), json!("@bridges")),
            ours_out.clone(),
            matches("in", ct("status"), json!("dnat")),
            matches("in", ct("state"), json!(["related"])),
            verdict("accept"),
        ],
    ));
    cmds.push(rule(
        t,
        "forward",
        vec![ours_in.clone(), ours_out.clone(), json!({"jump": {"target": "between"}})],
    ));
    // Replies to what went out (and to the host's own connections).
    cmds.push(rule(
        t,
        "forward",
        vec![matches("in", ct("state"), json!(["established", "related"])), verdict("accept")],
    ));
    // Nothing else reaches a container from outside.
    cmds.push(rule(
        t,
        "forward",
        vec![ours_out.clone(), json!({"counter": null}), verdict("drop")],
    ));
    // An internal network has no way out.
    cmds.push(rule(
        t,
        "forward",
        vec![
            matches("==", meta("iifname"), json!("@internal")),
            json!({"counter": null}),
            verdict("drop"),
        ],
    ));
    for (ours, family) in [(p.forwarding_is_ours, "ipv4"), (p.forwarding6_is_ours, "ipv6")] {
        if !ours {
            continue;
        }
        // bulkhead turned forwarding on for its bridges: the host routes nothing else. By name
        // pattern, not this store's set: another store's bridges are bulkhead's too.
        let mut e = vec![nfproto(family)];
        for dir in ["iifname", "oifname"] {
            for pat in ["bh*", "bulkhead*"] {
                e.push(matches("!=", meta(dir), json!(pat)));
            }
        }
        e.push(verdict("drop"));
        cmds.push(rule(t, "forward", e));
    }
    // between: what a deny rule names first (it wins over a wider allow), then only what a rule
    // allows; one counted entry per pair, tagged with its rule.
    // Each entry names the connection by its original direction, so it covers both directions
    // of what it allows (and nothing a rule no longer allows).
    let orig = |ip: &std::net::IpAddr, key: &str| json!({"ct": {"key": format!("{} {key}", ip_proto(ip)), "dir": "original"}});
    let orig_l4 = |key: &str| json!({"ct": {"key": key, "dir": "original"}});
    // The packet's own ends too: conntrack files an ICMP error by the header inside it, so a
    // third container could otherwise pass one off as part of an allowed connection.
    let pair = |s: &std::net::IpAddr, d: &std::net::IpAddr| {
        let ends = json!({"set": [s.to_string(), d.to_string()]});
        vec![
            matches("==", orig(s, "saddr"), json!(s.to_string())),
            matches("==", orig(s, "daddr"), json!(d.to_string())),
            matches("==", payload(ip_proto(s), "saddr"), ends.clone()),
            matches("==", payload(ip_proto(s), "daddr"), ends),
        ]
    };
    // Neighbours find each other (IPv6's ARP; the bridge table pins what each may claim).
    let mut nd = neighbour_discovery();
    nd.push(verdict("accept"));
    cmds.push(rule(t, "between", nd));
    let port_of = |proto: &str, port: &u16| {
        vec![
            // The packet's protocol is its connection's, both ways (and gives proto-dst its type).
            matches("==", meta("l4proto"), json!(proto)),
            matches("==", orig_l4("proto-dst"), json!(port)),
        ]
    };
    for (s, d, proto, port, id) in &p.rules.drops {
        cmds.push(counted(t, "between", [pair(s, d), port_of(proto, port)].concat(), *id, "drop"));
    }
    for (s, d, proto, port, id) in &p.rules.ports {
        cmds.push(counted(t, "between", [pair(s, d), port_of(proto, port)].concat(), *id, "accept"));
        // Its ICMP errors (port unreachable, fragmentation needed), between the same two ends.
        cmds.push(counted(
            t,
            "between",
            [
                pair(s, d),
                // (Related to a connection between these two ends, which only an allow made.)
                vec![matches("in", ct("state"), json!(["related"]))],
            ]
            .concat(),
            *id,
            "accept",
        ));
    }
    for (s, d, id) in &p.rules.any {
        cmds.push(counted(t, "between", pair(s, d), *id, "accept"));
    }
    // Learning: what no rule allows passes, and each new connection is logged (bounded, as
    // denials are: the kernel's log is the host's).
    for (s, d, id) in &p.rules.learn {
        let mut e = pair(s, d);
        e.push(matches("in", ct("state"), json!(["new"])));
        e.push(json!({"limit": {"rate": 50, "burst": 100, "per": "second"}}));
        e.push(json!({"log": {"prefix": learn_prefix(t)}}));
        cmds.push(rule(t, "between", e));
        cmds.push(counted(t, "between", pair(s, d), *id, "accept"));
    }
    // Logged at most 10 a second per source (a burst of 20): one noisy container cannot crowd
    // the others' denials out of the log (sources are pinned to their ports, so there are no more
    // keys than containers). Every denial is still counted.
    for (family, ip, set) in [("ipv4", "ip", "@denylog"), ("ipv6", "ip6", "@denylog6")] {
        cmds.push(rule(
            t,
            "between",
            vec![
                nfproto(family),
                json!({"set": {"op": "update", "elem": payload(ip, "saddr"), "set": set, "stmt": [{"limit": {"rate": 10, "burst": 20, "per": "second"}}]}}),
                // And at most 100 a second in all: the kernel's log is the host's.
                json!({"limit": {"rate": 100, "burst": 200, "per": "second"}}),
                json!({"log": {"prefix": log_prefix(t)}}),
            ],
        ));
    }
    cmds.push(rule(t, "between", vec![json!({"counter": null}), verdict("drop")]));

    // input: a container asks for names only at its own network's resolver (names never cross
    // networks); an internal network reaches nothing on the host but replies.
    cmds.push(rule(
        t,
        "input",
        vec![
            ours_in.clone(),
            matches("==", payload("ip", "daddr"), json!("@gateways4")),
            matches("==", payload("th", "dport"), json!(53)),
            matches(
                "!=",
                json!({"concat": [meta("iifname"), payload("ip", "daddr")]}),
                json!("@resolvers"),
            ),
            json!({"counter": null}),
            verdict("drop"),
        ],
    ));
    // A container whose way out a rule denies reaches nothing on the host either but its
    // network's resolver.
    for (ip, id) in &p.rules.no_egress {
        let new_from = || {
            vec![
                ours_in.clone(),
                matches("==", payload(ip_proto(ip), "saddr"), json!(ip.to_string())),
                matches("in", ct("state"), json!(["new"])),
            ]
        };
        // (The resolvers listen on IPv4 only.)
        if ip.is_ipv4() {
            let mut dns = new_from();
            dns.push(matches("==", payload("th", "dport"), json!(53)));
            dns.push(matches(
                "==",
                json!({"concat": [meta("iifname"), payload("ip", "daddr")]}),
                json!("@resolvers"),
            ));
            dns.push(verdict("accept"));
            cmds.push(rule(t, "input", dns));
        }
        cmds.push(counted(t, "input", new_from(), *id, "drop"));
    }
    // The host is a neighbour on an internal network too.
    let mut nd = vec![ours_in.clone()];
    nd.extend(neighbour_discovery());
    nd.push(verdict("accept"));
    cmds.push(rule(t, "input", nd));
    cmds.push(rule(
        t,
        "input",
        vec![
            matches("==", meta("iifname"), json!("@internal")),
            matches("in", ct("state"), json!(["new", "invalid", "untracked"])),
            json!({"counter": null}),
            verdict("drop"),
        ],
    ));

    // Published ports: DNAT for what arrives (prerouting) and what the host itself sends
    // (output), to any local address or the one given; one published on loopback only from the
    // host itself. A network's resolver is never taken over (port 53 of the gateways).
    for c in ["prerouting", "output"] {
        cmds.push(rule(
            t,
            c,
            vec![
                matches("==", payload("ip", "daddr"), json!("@gateways4")),
                matches("==", payload("th", "dport"), json!(53)),
                verdict("accept"),
            ],
        ));
    }
    let local = matches("==", json!({"fib": {"result": "type", "flags": ["daddr"]}}), json!("local"));
    for (p, ip, ip6) in &p.published {
        let mut e = vec![nfproto("ipv4"), local.clone()];
        if let Some(h) = p.host_ip {
            e.push(matches("==", payload("ip", "daddr"), json!(h.to_string())));
        }
        e.push(matches("==", payload(&p.proto, "dport"), json!(p.host_port)));
        e.push(json!({"dnat": {"family": "ip", "addr": ip.to_string(), "port": p.container_port}}));
        if !p.host_ip.is_some_and(|h| h.is_loopback()) {
            cmds.push(rule(t, "prerouting", e.clone()));
        }
        cmds.push(rule(t, "output", e));
        // On the host's IPv6 addresses too, when published on all of them and the container has
        // one (not ::1: the kernel routes nothing from it to a bridge).
        if let (None, Some(ip6)) = (p.host_ip, ip6) {
            let e = vec![
                nfproto("ipv6"),
                local.clone(),
                matches("!=", payload("ip6", "daddr"), json!("::1")),
                matches("==", payload(&p.proto, "dport"), json!(p.host_port)),
                json!({"dnat": {"family": "ip6", "addr": ip6.to_string(), "port": p.container_port}}),
            ];
            cmds.push(rule(t, "prerouting", e.clone()));
            cmds.push(rule(t, "output", e));
        }
    }
    // From the host's own 127.0.0.1 to a container (route_localnet on the bridges): the source
    // becomes the bridge's address, or the reply would go to the container's own loopback.
    cmds.push(rule(
        t,
        "postrouting",
        vec![
            matches("==", payload("ip", "saddr"), loopback()),
            ours_out.clone(),
            json!({"masquerade": null}),
        ],
    ));
    // A container reaching a published port of a container on its own bridge: the reply must
    // come back through the host.
    cmds.push(rule(
        t,
        "postrouting",
        vec![
            matches("==", payload("ip", "saddr"), json!("@subnets4")),
            ours_out.clone(),
            matches("in", ct("status"), json!("dnat")),
            json!({"masquerade": null}),
        ],
    ));
    cmds.push(rule(
        t,
        "postrouting",
        vec![
            matches("==", payload("ip6", "saddr"), json!("@subnets6")),
            ours_out.clone(),
            matches("in", ct("status"), json!("dnat")),
            json!({"masquerade": null}),
        ],
    ));
    // Out of the host, a container's address is the host's (IPv6 too: its addresses are
    // unique local ones, which no one routes back).
    for (ip, set) in [("ip", "@subnets4"), ("ip6", "@subnets6")] {
        cmds.push(rule(
            t,
            "postrouting",
            vec![
                matches("==", payload(ip, "saddr"), json!(set)),
                matches("!=", meta("oifname"), json!("@bridges")),
                json!({"masquerade": null}),
            ],
        ));
    }
    // Last, a rule that does nothing but carry a digest of all the above and the number of rules
    // each chain should have: what is in the kernel can be compared with what should be without
    // rewriting it (see [`is_current`]).
    let digest = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(Value::Array(cmds.clone()).to_string().as_bytes());
        h.update(bridge_table(p).as_bytes());
        hex::encode(h.finalize())
    };
    cmds.push(chain("state", None));
    cmds.push(json!({"add": {"rule": {"family": "inet", "table": t, "chain": "state", "expr": [{"counter": null}], "comment": format!("policy:{digest}")}}}));
    json!({ "nftables": cmds })
}

fn nft(doc: &Value) -> Result<()> {
    crate::nft::run(&doc.to_string()).map(|_| ())
}

/// The bridge table (nft's own syntax: JSON in nft 1.0 cannot declare the `typeof` set a
/// neighbour advertisement's target is looked up in): every container port carries only IPv4,
/// ARP and IPv6 frames, from its own MAC and addresses, as four sets of (port, MAC, address) say;
/// a port with no elements carries nothing (fail closed). Rules before the lookups drop what no
/// container may send at all.
pub fn bridge_table(p: &Policy) -> String {
    let t = &p.table;
    let rules = bridge_rules(p.port_group).join("\n    ");
    let local = bridge_local_rules(p.port_group).join("\n    ");
    format!(
        "table bridge {t} {{
  set own4 {{ type ifname . ether_addr . ipv4_addr; }}
  set ownarp {{ type ifname . ether_addr . ether_addr . ipv4_addr; }}
  set own6 {{ type ifname . ether_addr . ipv6_addr; }}
  set ownna {{ typeof iifname . ether saddr . @th,64,128; }}
  chain ports {{
    type filter hook prerouting priority -300; policy accept;
    {rules}
  }}
  chain local {{
    type filter hook input priority -300; policy accept;
    {local}
  }}
}}
"
    )
}

/// Frames to the IEEE 802.1 link-local group addresses (01:80:c2:00:00:0X) never reach the
/// prerouting hook: the bridge hands them to the host's stack on the port itself (where no inet
/// rule of ours applies) or to the input hook. The bridges forward those they may (their
/// `group_fwd_mask`, so that prerouting judges them); what is left is dropped here.
fn bridge_local_rules(group: u32) -> Vec<String> {
    vec![format!(
        "meta iifgroup {group} ether daddr & ff:ff:ff:ff:ff:f0 == 01:80:c2:00:00:00 counter drop"
    )]
}

fn bridge_rules(group: u32) -> Vec<String> {
    let port = format!("meta iifgroup {group}");
    vec![
        // No VLAN tags, nothing but IPv4, ARP and IPv6.
        format!("{port} ether type != {{ ip, arp, ip6 }} counter drop"),
        // Never to the host's loopback (route_localnet is on for the bridges: CVE-2020-8558).
        format!("{port} ether type ip ip daddr 127.0.0.0/8 counter drop"),
        format!("{port} ether type ip6 ip6 daddr ::1 counter drop"),
        // No container plays router: its router advertisements and redirects go nowhere (a
        // rogue one would take over its neighbours' IPv6 routes, CVE-2020-13401).
        format!(
            "{port} ether type ip6 meta l4proto ipv6-icmp icmpv6 type {{ nd-router-advert, nd-redirect }} counter drop"
        ),
        format!("{port} ether type ip iifname . ether saddr . ip saddr @own4 accept"),
        format!("{port} ether type arp iifname . ether saddr . arp saddr ether . arp saddr ip @ownarp accept"),
        // No fragmented ICMPv6: the target below could hide in a second fragment.
        format!("{port} ether type ip6 exthdr frag exists meta l4proto ipv6-icmp counter drop"),
        // A neighbour advertisement claims only its sender's own addresses (its target, the 128
        // bits after the ICMPv6 header's first 8 bytes).
        format!(
            "{port} ether type ip6 meta l4proto ipv6-icmp icmpv6 type nd-neighbor-advert iifname . ether saddr . @th,64,128 != @ownna counter drop"
        ),
        format!("{port} ether type ip6 iifname . ether saddr . ip6 saddr @own6 accept"),
        format!("{port} counter drop"),
    ]
}

/// A port's elements, per set, as nft writes them back ("if mac addr"); the element syntax to
/// add one is the same with " . " between the parts and the name quoted.
fn port_elements(port: &Port) -> Vec<(&'static str, Vec<String>)> {
    let (i, m) = (&port.host_if, &port.mac);
    let mut out = vec![
        ("own4", vec![i.clone(), m.clone(), port.ip.to_string()]),
        ("ownarp", vec![i.clone(), m.clone(), m.clone(), port.ip.to_string()]),
    ];
    if let (Some(ip6), Some(ll)) = (port.ip6, link_local(&port.mac)) {
        // :: while the kernel checks its link-local address is unique.
        for a in [ip6, ll, std::net::Ipv6Addr::UNSPECIFIED] {
            out.push(("own6", vec![i.clone(), m.clone(), a.to_string()]));
        }
        for a in [ip6, ll] {
            out.push(("ownna", vec![i.clone(), m.clone(), format!("0x{:032x}", u128::from(a))]));
        }
    }
    out
}

fn element_syntax(parts: &[String]) -> String {
    let mut v = parts.to_vec();
    v[0] = format!("\"{}\"", v[0]);
    v.join(" . ")
}

/// Lets a container's port carry its traffic: its elements added in one small transaction (the
/// tables stay). Elements the kernel holds for the same port from before (the same container,
/// restarted with another address) go in the same transaction; elements of ports gone since
/// stay until the tables are next written whole (deleting costs the kernel an RCU grace period,
/// 7-16 ms here, adding ~1 ms).
pub fn add_port(table: &str, port: &Port, k: &Kernel) -> Result<()> {
    let want = port_elements(port);
    let mut cmds = Vec::new();
    for (set, elems) in &k.elements {
        for e in elems.iter().filter(|e| e.first() == Some(&port.host_if)) {
            if !want.iter().any(|(s, w)| s == set && w == e) {
                cmds.push(format!("delete element bridge {table} {set} {{ {} }}", element_syntax(e)));
            }
        }
    }
    for (set, e) in &want {
        cmds.push(format!("add element bridge {table} {set} {{ {} }}", element_syntax(e)));
    }
    crate::nft::run(&cmds.join("\n")).map(|_| ())
}

/// What the kernel holds of a store's two tables, read back as nft's JSON (~1.5 ms each here, in
/// process).
#[derive(Debug, Default)]
pub struct Kernel {
    /// Rules per chain, "family chain" -> count.
    rules: std::collections::BTreeMap<String, usize>,
    marker: Option<String>,
    /// The bridge table's port elements, per set, each split in its parts.
    pub elements: std::collections::BTreeMap<String, Vec<Vec<String>>>,
    /// The elements of the named sets, as strings.
    sets: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// A set element as a string: an address, a name, "addr/len", or "a b" for a concatenation.
fn elem_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) if o.contains_key("prefix") => {
            format!("{}/{}", o["prefix"]["addr"].as_str().unwrap_or(""), o["prefix"]["len"])
        }
        Value::Object(o) if o.contains_key("concat") => o["concat"]
            .as_array()
            .map(|a| a.iter().map(elem_string).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        Value::Object(o) if o.contains_key("elem") => elem_string(&o["elem"]["val"]),
        other => other.to_string(),
    }
}

/// What `p` puts in the named sets (compared with the kernel's).
fn expected_sets(p: &Policy) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut m = std::collections::BTreeMap::new();
    m.insert("bridges".to_owned(), p.bridges.iter().cloned().collect());
    m.insert("internal".to_owned(), p.internal.iter().cloned().collect());
    m.insert("subnets4".to_owned(), p.masquerade4.iter().cloned().collect());
    m.insert("subnets6".to_owned(), p.masquerade6.iter().cloned().collect());
    m.insert("gateways6".to_owned(), p.gateways6.iter().map(|g| g.to_string()).collect());
    m.insert("gateways4".to_owned(), p.gateways.iter().map(|(_, g, _)| g.to_string()).collect());
    m.insert(
        "resolvers".to_owned(),
        p.gateways
            .iter()
            .filter(|(_, _, d)| *d)
            .map(|(b, g, _)| format!("{b} {g}"))
            .collect(),
    );
    m
}

impl Kernel {
    /// None if either table is missing or unreadable.
    pub fn read(table: &str) -> Option<Kernel> {
        let mut k = Kernel::default();
        for family in ["inet", "bridge"] {
            let out = crate::nft::run(&format!("list table {family} {table}")).ok()?;
            let v: Value = serde_json::from_str(&out).ok()?;
            for o in v["nftables"].as_array().into_iter().flatten() {
                if let Some(c) = o["chain"].as_object() {
                    let name = c["name"].as_str().unwrap_or("");
                    k.rules.entry(format!("{family} {name}")).or_insert(0);
                }
                if let Some(st) = o["set"].as_object() {
                    let name = st["name"].as_str().unwrap_or("").to_owned();
                    if family == "bridge" {
                        let elems = st.get("elem").and_then(|e| e.as_array()).cloned().unwrap_or_default();
                        k.elements.insert(
                            name,
                            elems
                                .iter()
                                .map(|e| match e.get("concat").and_then(|c| c.as_array()) {
                                    Some(parts) => parts.iter().map(elem_string).collect(),
                                    None => vec![elem_string(e)],
                                })
                                .collect(),
                        );
                    } else if !name.starts_with("denylog") {
                        let elems = st.get("elem").and_then(|e| e.as_array()).cloned().unwrap_or_default();
                        k.sets.insert(name, elems.iter().map(elem_string).collect());
                    }
                }
                if let Some(r) = o["rule"].as_object() {
                    *k.rules
                        .entry(format!("{family} {}", r["chain"].as_str().unwrap_or("")))
                        .or_insert(0) += 1;
                    if let Some(m) = r.get("comment").and_then(|c| c.as_str()).and_then(|c| c.strip_prefix("policy:")) {
                        k.marker = Some(m.to_owned());
                    }
                }
            }
        }
        Some(k)
    }

    /// Whether everything but the container ports is as `p` would write it: the marker's digest,
    /// and as many rules in every chain (a chain flushed by someone else is noticed).
    pub fn matches_static(&self, p: &Policy) -> bool {
        let doc = commands(p);
        let cmds = doc["nftables"].as_array().cloned().unwrap_or_default();
        let digest = cmds.iter().rev().find_map(|c| {
            c["add"]["rule"]["comment"]
                .as_str()
                .and_then(|s| s.strip_prefix("policy:"))
                .map(str::to_owned)
        });
        let mut counts = rule_counts(&cmds);
        counts.insert("bridge ports".into(), bridge_rules(p.port_group).len());
        counts.insert("bridge local".into(), bridge_local_rules(p.port_group).len());
        digest.is_some() && self.marker == digest && self.rules == counts && self.sets == expected_sets(p)
    }

    /// Whether `port` has its elements, and no others (of an address it held before).
    pub fn has_port(&self, port: &Port) -> bool {
        let want = port_elements(port);
        let held = self
            .elements
            .values()
            .map(|v| v.iter().filter(|e| e.first() == Some(&port.host_if)).count())
            .sum::<usize>();
        held == want.len() && want.iter().all(|(set, e)| self.elements.get(*set).is_some_and(|v| v.contains(e)))
    }

    /// Ports with elements in the bridge table.
    pub fn ports(&self) -> std::collections::BTreeSet<&str> {
        self.elements
            .values()
            .flatten()
            .filter_map(|e| e.first().map(String::as_str))
            .collect()
    }
}

/// Whether the kernel holds both tables exactly as `p` would write them, ports included. False
/// if either is gone (a host firewall reload that flushed every table, say).
pub fn is_current(p: &Policy) -> bool {
    Kernel::read(&p.table).is_some_and(|k| k.matches_static(p) && p.ports.iter().all(|x| k.has_port(x)))
}

/// A rule entry that counts what it matches, tagged `rule:<id>` (read back by [`hits`]).
fn counted(table: &str, chain: &str, mut expr: Vec<Value>, id: u64, verdict: &str) -> Value {
    expr.push(json!({"counter": null}));
    let mut v = serde_json::Map::new();
    v.insert(verdict.to_owned(), Value::Null);
    expr.push(Value::Object(v));
    json!({"add": {"rule": {"family": "inet", "table": table, "chain": chain, "expr": expr, "comment": format!("rule:{id}")}}})
}

/// Packets counted per rule id in `table` now (nothing if it does not exist).
pub fn hits(table: &str) -> std::collections::BTreeMap<u64, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(text) = crate::nft::run(&format!("list table inet {table}")) else {
        return out;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else { return out };
    for obj in v["nftables"].as_array().into_iter().flatten() {
        let r = &obj["rule"];
        let Some(id) = r["comment"]
            .as_str()
            .and_then(|c| c.strip_prefix("rule:"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let packets: u64 = r["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["counter"]["packets"].as_u64())
            .sum();
        *out.entry(id).or_default() += packets;
    }
    out
}

fn prefix_elem(cidr: &str) -> Value {
    match cidr.split_once('/') {
        Some((a, l)) => json!({"prefix": {"addr": a, "len": l.parse::<u32>().unwrap_or(32)}}),
        None => json!(cidr),
    }
}

/// Applies `p`. The policy is handed to nft as JSON (built here: the nftables crate's typed
/// schema, 0.6, lacks expressions nft 1.0 has and these tables need, such as `ct original ip
/// saddr`), and nft itself validates the whole transaction before any of it applies.
pub fn apply(p: &Policy) -> Result<()> {
    let t = &p.table;
    let mut bridge = format!("add table bridge {t}\ndelete table bridge {t}\n{}", bridge_table(p));
    for port in &p.ports {
        for (set, e) in port_elements(port) {
            bridge.push_str(&format!("add element bridge {t} {set} {{ {} }}\n", element_syntax(&e)));
        }
    }
    // Two transactions, each whole: the bridge table first (a port it does not know carries
    // nothing), then the policy.
    crate::nft::run(&bridge)?;
    nft(&commands(p))
}

/// Removes table `table` if it exists.
pub fn remove(table: &str) -> Result<()> {
    let doc = json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": table}}},
        {"delete": {"table": {"family": "inet", "name": table}}},
        {"add": {"table": {"family": "bridge", "name": table}}},
        {"delete": {"table": {"family": "bridge", "name": table}}},
    ]});
    nft(&doc)
}
