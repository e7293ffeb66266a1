//! The kernel's connection tracking, as far as a released address needs it: its entries go
//! with it. Otherwise a flow a container had (a UDP exchange with a server outside that keeps
//! it alive, a connection through a published port) would outlive the container and be handed,
//! through `ct state established` and the NAT it recorded, to the next container given the same
//! address. Through ctnetlink (netlink-packet-netfilter, the rust-netlink family rtnetlink is
//! of): a dump of each family's table, filtered here, then one delete per entry, as
//! `conntrack -D -s ADDR` does.

use std::net::IpAddr;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, Tuple};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::{Error, Result};

fn ct(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Netlink(format!("conntrack: {what}: {e}"))
}

fn send(sock: &Socket, family: NetfilterProtoFamily, flags: u16, msg: ConntrackMessage) -> Result<()> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    let mut packet = NetlinkMessage::new(
        hdr,
        NetlinkPayload::from(NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), msg)),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    sock.send(&buf, 0).map_err(|e| ct("send", e))?;
    Ok(())
}

/// Reads replies until the dump is done (or, with `ack`, the acknowledgement came), handing
/// each conntrack entry to `f`.
fn receive(sock: &Socket, mut f: impl FnMut(Vec<ConntrackAttribute>)) -> Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0).map_err(|e| ct("receive", e))?;
        let mut off = 0;
        while off < n {
            let msg = <NetlinkMessage<NetfilterMessage>>::deserialize(&buf[off..n]).map_err(|e| ct("a reply", e))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(()), // the acknowledgement
                        // Gone since the dump (it timed out, or the flow ended): as wanted.
                        Some(c) if c.get() == -libc::ENOENT => Ok(()),
                        Some(c) => Err(ct("the kernel", std::io::Error::from_raw_os_error(-c.get()))),
                    };
                }
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                    ..
                }) => f(attrs),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

fn addrs_of(tuple: &[Tuple]) -> impl Iterator<Item = IpAddr> + '_ {
    tuple.iter().flat_map(|t| match t {
        Tuple::Ip(ips) => ips
            .iter()
            .filter_map(|i| match i {
                IPTuple::SourceAddress(a) | IPTuple::DestinationAddress(a) => Some(*a),
                _ => None,
            })
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    })
}

/// Deletes every tracked connection with one of `addrs` at either end, in either direction
/// (a masqueraded flow names the container only in its original tuple, a DNATed one only in its
/// reply tuple). Returns how many went.
pub fn forget(addrs: &[IpAddr]) -> Result<usize> {
    if addrs.is_empty() {
        return Ok(0);
    }
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| ct("socket", e))?;
    sock.bind_auto().map_err(|e| ct("bind", e))?;
    sock.connect(&SocketAddr::new(0, 0)).map_err(|e| ct("connect", e))?;
    let mut gone = 0;
    // One dump for both families (each walk of the table costs the same, whatever it holds).
    let mut doomed: Vec<(NetfilterProtoFamily, Vec<Tuple>)> = Vec::new();
    send(
        &sock,
        NetfilterProtoFamily::Unspec,
        NLM_F_REQUEST | NLM_F_DUMP,
        ConntrackMessage::Get(vec![]),
    )?;
    receive(&sock, |attrs| {
        let mut orig = None;
        let mut hit = false;
        for a in attrs {
            match a {
                ConntrackAttribute::CtaTupleOrig(t) => {
                    hit |= addrs_of(&t).any(|x| addrs.contains(&x));
                    orig = Some(t);
                }
                ConntrackAttribute::CtaTupleReply(t) => hit |= addrs_of(&t).any(|x| addrs.contains(&x)),
                _ => {}
            }
        }
        if let (true, Some(t)) = (hit, orig) {
            let v4 = addrs_of(&t).next().is_some_and(|a| a.is_ipv4());
            doomed.push((
                if v4 {
                    NetfilterProtoFamily::IPv4
                } else {
                    NetfilterProtoFamily::IPv6
                },
                t,
            ));
        }
    })?;
    for (family, t) in doomed {
        send(
            &sock,
            family,
            NLM_F_REQUEST | NLM_F_ACK,
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(t)]),
        )?;
        receive(&sock, |_| {})?;
        gone += 1;
    }
    Ok(gone)
}
