//! Links, addresses and routes, through rtnetlink (no `ip` processes: one netlink socket per
//! namespace, a few messages per container).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{Error, Result};

fn nl(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Netlink(format!("{what}: {e}"))
}

/// Runs `f` with a netlink handle of the current thread's network namespace, on a runtime of
/// its own (the CLI has none; each namespace needs its own socket anyway).
pub(crate) fn with_handle<T>(f: impl AsyncFnOnce(&Handle) -> Result<T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| nl("runtime", e))?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| nl("netlink socket", e))?;
        let task = tokio::spawn(conn);
        let out = f(&handle).await;
        task.abort();
        out
    })
}

pub(crate) async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(&format!("looking up {name}"), e)),
    }
}

/// The MAC address a bridge gets from its gateway address (02:42 and the address's octets).
pub fn gateway_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let o = gateway.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// Adds `addr/prefix` to link `index` unless it has it; IPv6 without duplicate address
/// detection (the address is bulkhead's to give, and usable at once).
async fn ensure_address(h: &Handle, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
    use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(a) = addrs.try_next().await.map_err(|e| nl("listing addresses", e))? {
        if a.attributes
            .iter()
            .any(|at| matches!(at, AddressAttribute::Address(v) if *v == addr))
        {
            return Ok(());
        }
    }
    let mut req = h.address().add(index, addr, prefix);
    if addr.is_ipv6() {
        req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute().await.map_err(|e| nl(&format!("adding {addr}/{prefix}"), e))
}

/// Makes the network's bridge with its gateway address(es) on it, up, with bridged IP traffic
/// passed through the inet hooks (so that the policy table sees traffic between containers on
/// one bridge: only this bridge's option, not the host-wide sysctl). Idempotent.
pub fn ensure_bridge(n: &crate::Network) -> Result<()> {
    let name = n.bridge.as_str();
    with_handle(async |h| {
        let index = match index_of(h, name).await? {
            Some(i) => i,
            None => {
                h.link()
                    // A MAC of its own from its gateway address (as containers' are from theirs):
                    // a bridge without one takes its lowest port's, and changes it as containers
                    // come and go, under its neighbours' ARP caches.
                    .add(LinkBridge::new(name).address(gateway_mac(n.gateway).to_vec()).build())
                    .execute()
                    .await
                    .map_err(|e| nl(&format!("creating bridge {name}"), e))?;
                index_of(h, name)
                    .await?
                    .ok_or_else(|| Error::Netlink(format!("bridge {name} vanished")))?
            }
        };
        ensure_address(h, index, n.gateway.into(), n.subnet.prefix_len()).await?;
        // The bridge takes no router advertisements (from a container, say: they are dropped at
        // its port anyway) and makes no addresses of its own from them.
        for opt in ["accept_ra", "autoconf"] {
            let p = format!("/proc/sys/net/ipv6/conf/{name}/{opt}");
            if std::path::Path::new(&p).exists() {
                std::fs::write(&p, "0").map_err(|e| nl(&p, e))?;
            }
        }
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| nl(&format!("bringing {name} up"), e))?;
        if let (Some(g6), Some(s6)) = (n.gateway6, n.subnet6) {
            ensure_address(h, index, g6.into(), s6.prefix_len()).await?;
        }
        Ok(())
    })?;
    bridge_options(name)
}

/// The bridge's own switches (idempotent, written at every start: a few sysfs writes): its IP
/// traffic through the inet hooks, and the host's 127.0.0.1 may be DNATed to a container behind
/// it (published ports; the policy table drops what a container sends to 127.0.0.0/8 through it).
pub fn bridge_options(name: &str) -> Result<()> {
    br_netfilter()?;
    // Link-local group frames (01:80:c2:00:00:0X): forwarded where the bridge may (so the
    // prerouting hook judges them; the rest meets the bridge table's input chain), and never a
    // lesson for the bridge's MAC table (a container could otherwise teach it that another's MAC
    // is behind its own port).
    for (opt, v) in [("group_fwd_mask", "0xfff8"), ("no_linklocal_learn", "1")] {
        let p = format!("/sys/class/net/{name}/bridge/{opt}");
        std::fs::write(&p, v).map_err(|e| nl(&p, e))?;
    }
    for opt in ["nf_call_iptables", "nf_call_ip6tables"] {
        let p = format!("/sys/class/net/{name}/bridge/{opt}");
        std::fs::write(&p, "1").map_err(|e| nl(&p, e))?;
    }
    let p = format!("/proc/sys/net/ipv4/conf/{name}/route_localnet");
    std::fs::write(&p, "1").map_err(|e| nl(&p, e))?;
    Ok(())
}

/// Bridged traffic reaches the inet hooks only through the kernel's br_netfilter: without it,
/// containers on one bridge would reach each other whatever the rules say, and the bridges'
/// `nf_call_iptables` switch would still write without an error. Loaded if it is a module (which
/// turns bridge filtering on for every bridge of the host, as Docker does); refused if absent.
pub fn br_netfilter() -> Result<()> {
    let ready = || std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists();
    if ready() {
        return Ok(());
    }
    let out = std::process::Command::new("modprobe")
        .arg("br_netfilter")
        .stdin(std::process::Stdio::null())
        .output();
    if ready() {
        return Ok(());
    }
    let why = match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        Err(e) => e.to_string(),
    };
    Err(Error::Netlink(format!(
        "traffic between containers cannot be filtered: the kernel's br_netfilter is not loaded (modprobe br_netfilter: {why})"
    )))
}

/// Removes link `name` if it exists.
pub fn delete_link(name: &str) -> Result<()> {
    with_handle(async |h| {
        if let Some(i) = index_of(h, name).await? {
            h.link().del(i).execute().await.map_err(|e| nl(&format!("removing {name}"), e))?;
        }
        Ok(())
    })
}

/// Plugs the network namespace `netns` into `bridge`: a veth pair whose host end `host_if` joins
/// the bridge and whose other end is made inside the namespace as `eth0`, with `addr/prefix` and
/// a default route through `gateway`.
/// One end of a container on a network: its names, its MAC and address, its gateway.
pub struct Plug<'a> {
    /// The host's end (a port of the bridge).
    pub host_if: &'a str,
    /// The container's end (`eth0`, `eth1`, ...).
    pub inner: &'a str,
    pub mac: [u8; 6],
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// Its IPv6 address, prefix and gateway, on a network with IPv6.
    pub addr6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
    /// Whether the container's default route goes this way (its first network).
    pub default_route: bool,
    /// The device group of the host's end: its store's (see `Networks::port_group`).
    pub group: u32,
}

pub fn attach(netns: &std::fs::File, bridge: &str, plug: &Plug<'_>) -> Result<()> {
    let (host_if, mac, addr, prefix, gateway, default_route) =
        (plug.host_if, &plug.mac, plug.addr, plug.prefix, plug.gateway, plug.default_route);
    let inner = plug.inner.to_owned();
    let addr6 = plug.addr6;
    let fd = netns.as_raw_fd();
    with_handle(async |h| {
        let br = index_of(h, bridge)
            .await?
            .ok_or_else(|| Error::Netlink(format!("bridge {bridge} does not exist")))?;
        // A leftover of a container that held this name (a crash between the two steps).
        if let Some(i) = index_of(h, host_if).await? {
            let _ = h.link().del(i).execute().await;
        }
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(inner.clone())
            .address(mac.to_vec())
            .setns_by_fd(fd)
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_if.to_owned())
            // Its store's mark from the start, before it is a port of any bridge.
            .link_group(plug.group)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        h.link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| nl(&format!("creating {host_if}"), e))?;
        let i = index_of(h, host_if)
            .await?
            .ok_or_else(|| Error::Netlink(format!("{host_if} vanished")))?;
        h.link()
            .set(LinkUnspec::new_with_index(i).controller(br).up().build())
            .execute()
            .await
            .map_err(|e| nl(&format!("plugging {host_if} into {bridge}"), e))?;
        Ok(())
    })?;
    // Hairpin: a container reaching its own published port (through the host's DNAT) gets the
    // packet back out of the port it came in on.
    let p = format!("/sys/class/net/{host_if}/brport/hairpin_mode");
    std::fs::write(&p, "1").map_err(|e| nl(&p, e))?;
    // The host's end is a bridge port, nothing more: no IPv6 of its own on it.
    let p = format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6");
    if std::path::Path::new(&p).exists() {
        std::fs::write(&p, "1").map_err(|e| nl(&p, e))?;
    }
    in_netns(netns, move || {
        with_handle(async |h| {
            let i = index_of(h, &inner)
                .await?
                .ok_or_else(|| Error::Netlink(format!("{inner} is not in the container")))?;
            ensure_address(h, i, addr.into(), prefix).await?;
            h.link()
                .set(LinkUnspec::new_with_index(i).up().build())
                .execute()
                .await
                .map_err(|e| nl(&format!("bringing {inner} up"), e))?;
            let lo = index_of(h, "lo").await?.ok_or_else(|| Error::Netlink("no lo".into()))?;
            h.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(|e| nl("bringing lo up", e))?;
            if default_route {
                h.route()
                    .add(RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build())
                    .execute()
                    .await
                    .map_err(|e| nl(&format!("default route via {gateway}"), e))?;
            }
            if let Some((a6, p6, g6)) = addr6 {
                // After the link is up: its prefix route comes with the address.
                ensure_address(h, i, a6.into(), p6).await?;
                if default_route {
                    h.route()
                        .add(RouteMessageBuilder::<Ipv6Addr>::new().gateway(g6).build())
                        .execute()
                        .await
                        .map_err(|e| nl(&format!("default route via {g6}"), e))?;
                }
            }
            Ok(())
        })
    })
}

/// Runs `f` on a short-lived thread inside network namespace `netns` (setns moves only the
/// calling thread; the caller stays where it is).
pub fn in_netns<T: Send + 'static>(netns: &std::fs::File, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns = netns.try_clone().map_err(|e| nl("netns", e))?;
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(&ns), Some(rustix::thread::LinkNameSpaceType::Network))
            .map_err(|e| nl("entering the container's network namespace", e))?;
        f()
    })
    .join()
    .map_err(|_| Error::Netlink("a network thread panicked".into()))?
}
