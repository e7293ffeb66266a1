//! Published ports: `-p [IP:][HOST:]CONTAINER[/tcp|udp]`, `-P`. A published port is a DNAT rule
//! in the store's table (no proxy process); a host port is checked free (nothing of ours
//! publishes it, and nothing on the host listens on it) when the container starts.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What was asked for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortSpec {
    /// None: every address of the host (and 127.0.0.1).
    pub host_ip: Option<Ipv4Addr>,
    /// None: a free port, picked at each start.
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub proto: String,
}

/// What a running container has.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Published {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: String,
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.host_ip.map_or("0.0.0.0".to_owned(), |i| i.to_string());
        write!(f, "{}/{} -> {ip}:{}", self.container_port, self.proto, self.host_port)
    }
}

fn port(s: &str, what: &str, spec: &str) -> Result<u16> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::Invalid(format!("-p {spec:?}: {what} port {s:?} is not 1-65535")))
}

impl PortSpec {
    /// `80`, `8080:80`, `127.0.0.1:8080:80`, `127.0.0.1::80`, each with `/tcp` or `/udp`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (rest, proto) = match spec.rsplit_once('/') {
            Some((r, p)) => (r, p.to_ascii_lowercase()),
            None => (spec, "tcp".to_owned()),
        };
        if proto != "tcp" && proto != "udp" {
            return Err(Error::Invalid(format!("-p {spec:?}: protocol {proto:?} (tcp or udp)")));
        }
        let parts: Vec<&str> = rest.split(':').collect();
        let (ip, host, cport) = match parts.as_slice() {
            [c] => (None, None, *c),
            [h, c] => (None, Some(*h), *c),
            [ip, h, c] => (Some(*ip), Some(*h).filter(|h| !h.is_empty()), *c),
            _ => {
                return Err(Error::Invalid(format!(
                    "-p {spec:?}: expected [IP:][HOST:]CONTAINER[/PROTO] (IPv6 host addresses are not published yet)"
                )))
            }
        };
        let host_ip = match ip {
            None | Some("") | Some("0.0.0.0") => None,
            Some(i) => Some(
                i.parse::<Ipv4Addr>()
                    .map_err(|_| Error::Invalid(format!("-p {spec:?}: {i:?} is not an IPv4 address")))?,
            ),
        };
        Ok(PortSpec {
            host_ip,
            host_port: host.map(|h| port(h, "host", spec)).transpose()?,
            container_port: port(cport, "container", spec)?,
            proto,
        })
    }
}

/// Whether something on the host listens on `ip:port` (we try to bind it, and let go at once):
/// on all addresses, IPv6 too (a service listening on `[::]` alone, IPv6-only, would otherwise
/// lose its IPv6 clients to the DNAT).
fn host_port_free(ip: Option<Ipv4Addr>, port: u16, proto: &str) -> bool {
    let addr = std::net::SocketAddrV4::new(ip.unwrap_or(Ipv4Addr::UNSPECIFIED), port);
    let v4 = match proto {
        "udp" => std::net::UdpSocket::bind(addr).is_ok(),
        _ => std::net::TcpListener::bind(addr).is_ok(),
    };
    v4 && (ip.is_some() || !crate::host_has_ipv6() || v6_port_free(port, proto))
}

fn v6_port_free(port: u16, proto: &str) -> bool {
    use rustix::net::{bind, socket, sockopt, AddressFamily, SocketAddrV6, SocketType};
    let ty = if proto == "udp" { SocketType::DGRAM } else { SocketType::STREAM };
    let Ok(s) = socket(AddressFamily::INET6, ty, None) else {
        return true;
    };
    let _ = sockopt::set_ipv6_v6only(&s, true);
    bind(&s, &SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, port, 0, 0)).is_ok()
}

/// A free port the kernel picks from its ephemeral range, not `taken`.
fn free_port(proto: &str, taken: &[(u16, String)]) -> Result<u16> {
    for _ in 0..64 {
        let p = match proto {
            "udp" => std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.local_addr()),
            _ => std::net::TcpListener::bind("0.0.0.0:0").and_then(|s| s.local_addr()),
        }
        .map_err(|e| Error::Io(format!("picking a free port: {e}")))?
        .port();
        if !taken.iter().any(|(t, pr)| *t == p && pr == proto) {
            return Ok(p);
        }
    }
    Err(Error::Conflict("no free host port found".into()))
}

/// Host ports for `specs`, given what the store's running containers publish already.
pub fn assign(specs: &[PortSpec], taken: &[(u16, String)]) -> Result<Vec<Published>> {
    let mut out: Vec<Published> = Vec::new();
    let mut taken = taken.to_vec();
    for s in specs {
        let host_port = match s.host_port {
            Some(p) => {
                if taken.iter().any(|(t, pr)| *t == p && *pr == s.proto) {
                    return Err(Error::Conflict(format!(
                        "host port {p}/{} is already published by another container",
                        s.proto
                    )));
                }
                if !host_port_free(s.host_ip, p, &s.proto) {
                    return Err(Error::Conflict(format!(
                        "host port {p}/{} is in use on this host (something listens on it)",
                        s.proto
                    )));
                }
                p
            }
            None => free_port(&s.proto, &taken)?,
        };
        taken.push((host_port, s.proto.clone()));
        out.push(Published {
            host_ip: s.host_ip,
            host_port,
            container_port: s.container_port,
            proto: s.proto.clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_docker_writes_them() {
        let p = PortSpec::parse("127.0.0.1:18080:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.proto.as_str()),
            (Some(Ipv4Addr::LOCALHOST), Some(18080), 80, "tcp")
        );
        let p = PortSpec::parse("53/udp").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.proto.as_str()),
            (None, None, 53, "udp")
        );
        let p = PortSpec::parse("127.0.0.1::80").unwrap();
        assert_eq!((p.host_port, p.container_port), (None, 80));
        assert_eq!(PortSpec::parse("8080:80").unwrap().host_port, Some(8080));
        for bad in ["0", "70000", "a:b", "1:2:3:4", "80/sctp", "300.1.1.1:80:80", ":80", "80:"] {
            assert!(PortSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
