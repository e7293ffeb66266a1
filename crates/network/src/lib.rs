//! Bridge networks for bulkhead's containers: each network is a Linux bridge with a subnet; a
//! container joins it through a veth pair made when its namespaces exist and before its process
//! starts; addresses are leased from the subnet; one nftables table of bulkhead's own holds the
//! whole policy (see `firewall`). State lives under `<root>/networks/`:
//!
//! ```text
//! networks/lock            flock: every change to networks, leases or rules
//! networks/<name>.json     a network
//! networks/leases.json     the addresses held by running containers (checked against the kernel)
//! ```
//!
//! Host-wide, for every store: `/run/bulkhead/net.lock` (subnets are picked under it) and
//! `/run/bulkhead/forwarding` (bulkhead turned IPv4 forwarding on; it stays on, as Docker leaves
//! it, and every store's table then keeps the host from routing anything but bulkhead's bridges).
//!
//! Nothing here runs in the background: a container's veth pair dies with its network namespace,
//! and a lease whose namespace is gone is dead whoever notices it first.

pub mod conntrack;
pub mod dns;
pub mod firewall;
pub mod netlink;
pub mod nft;
pub mod ports;
pub mod rules;

pub use ipnet;

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Io(String),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("nftables: {0}")]
    Firewall(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(p: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("{}: {e}", p.display()))
}

/// The network a container joins when `--network` is not given.
pub const DEFAULT_NETWORK: &str = "bulkhead";
/// Where a store lives unless `--root` says otherwise: its table and default bridge have the
/// plain names.
const DEFAULT_ROOT: &str = "/var/lib/bulkhead";
const RUN_DIR: &str = "/run/bulkhead";
const FORWARDING_MARK: &str = "/run/bulkhead/forwarding";
const FORWARDING6_MARK: &str = "/run/bulkhead/forwarding6";

/// Subnets for networks made without `--subnet`, cut into /24s.
const DEFAULT_POOL: &str = "10.89.0.0/16";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub id: String,
    pub driver: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    /// Its IPv6 subnet (a /64) and the bridge's address there, if it has IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub internal: bool,
    /// Containers on it reach each other by name (user-defined networks; not the default one,
    /// as with Docker).
    #[serde(default)]
    pub dns: bool,
    pub created: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// An address a running container holds on a network.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    pub network: String,
    pub container: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// The host end of its veth pair.
    pub host_if: String,
    /// The container's first process and its network namespace (device, inode): the lease lives
    /// while that namespace does.
    pub pid: i32,
    pub netns: (u64, u64),
    /// Its other names on the network (`--network-alias`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Its labels, for rules that select by label.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its published ports.
    #[serde(default)]
    pub published: Vec<ports::Published>,
    /// The MAC address of its end of the pair (pinned to its port on the bridge).
    #[serde(default)]
    pub mac: String,
    /// Its end's name in the container (`eth0`, `eth1`, ...).
    #[serde(default)]
    pub inner: String,
}

/// Who joins: what rules and names see of a container.
#[derive(Clone, Debug, Default)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub aliases: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `-p`/`-P` (published on its first network).
    pub ports: Vec<ports::PortSpec>,
    /// `--ip`: its address on its first network.
    pub ip: Option<Ipv4Addr>,
}

impl Lease {
    /// Its addresses, IPv4 and IPv6.
    pub fn addrs(&self) -> Vec<std::net::IpAddr> {
        std::iter::once(std::net::IpAddr::V4(self.ip))
            .chain(self.ip6.map(std::net::IpAddr::V6))
            .collect()
    }

    fn alive(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(format!("/proc/{}/ns/net", self.pid)).is_ok_and(|m| (m.dev(), m.ino()) == self.netns)
    }
}

/// `network create`.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    /// `--ipv6` (with `subnet6`/`gateway6`, or a /64 from the IPv6 pool).
    pub ipv6: bool,
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    /// `--disable-dns`.
    pub no_dns: bool,
}

/// `<config>/networks.json`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Where subnets of new networks come from (each cut into /24s).
    #[serde(default)]
    pools: Vec<Ipv4Net>,
    /// Where IPv6 subnets come from (each cut into /64s); default: a unique local /48 of the
    /// store's own (RFC 4193, its global ID from the store's path and the host's machine id).
    #[serde(default)]
    pools6: Vec<Ipv6Net>,
}

/// The networks of one store.
pub struct Networks {
    root: PathBuf,
    dir: PathBuf,
    pools: Vec<Ipv4Net>,
    pools6: Vec<Ipv6Net>,
}

/// Held while networks, leases or rules change.
pub struct NetLock(#[allow(dead_code)] fs::File);

fn short_hash(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// State files beside the networks' own (`<name>.json`), and `host` and `none` (which `run
/// --network` reads as the host's namespace and no network): no network has these names.
const RESERVED: &[&str] = &["leases", "rules", "released", "host", "none"];

/// Network names as Docker accepts them (but the names of the state files beside them).
pub fn valid_name(name: &str) -> Result<()> {
    if RESERVED.contains(&name) {
        return Err(Error::Invalid(format!("network name {name:?} is reserved")));
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "network name {name:?}: letters, digits, '_', '.', '-', starting with a letter or digit, at most 63"
        )))
    }
}

impl Networks {
    /// The networks of the store at `root`; `config` is the directory of `networks.json`.
    pub fn open(root: &Path, config: &Path) -> Result<Self> {
        let dir = root.join("networks");
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| io(&dir, e))?;
        }
        let cfg_path = config.join("networks.json");
        let cfg: Config = match read_state(&cfg_path) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| Error::Invalid(format!("{}: {e}", cfg_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(e) => return Err(io(&cfg_path, e)),
        };
        let pools = if cfg.pools.is_empty() {
            vec![DEFAULT_POOL.parse().expect("the default pool parses")]
        } else {
            cfg.pools
        };
        let pools6 = if cfg.pools6.is_empty() {
            let machine = fs::read_to_string("/etc/machine-id").unwrap_or_default();
            let h = hex::decode(&short_hash(&[&root.to_string_lossy(), machine.trim()])[..10]).expect("hex");
            let mut o = [0u8; 16];
            o[0] = 0xfd;
            o[1..6].copy_from_slice(&h);
            vec![Ipv6Net::new(Ipv6Addr::from(o), 48).expect("a /48")]
        } else {
            cfg.pools6
        };
        Ok(Networks {
            root: root.to_path_buf(),
            dir,
            pools,
            pools6,
        })
    }

    fn is_default_root(&self) -> bool {
        self.root == Path::new(DEFAULT_ROOT)
    }

    /// The store's nftables table (`inet`): `bulkhead`, or `bulkhead_<hash>` for another root.
    pub fn table(&self) -> String {
        if self.is_default_root() {
            "bulkhead".into()
        } else {
            format!("bulkhead_{}", &short_hash(&[&self.root.to_string_lossy()])[..8])
        }
    }

    /// The name prefix of this store's container ports: `v` and 4 hex digits of the root's hash
    /// (15 characters in all with 9 of the container's id and its network's index).
    pub fn port_prefix(&self) -> String {
        format!("v{}", &short_hash(&[&self.root.to_string_lossy()])[..4])
    }

    /// The device group of this store's container ports (32 bits of the root's hash, never 0,
    /// the default group): the bridge family sees every bridge of the host, and each store's
    /// bridge table judges the ports in its group, and only those. (By name alone, 16 bits of
    /// the hash fit in an interface name: two stores of a host that shared them would drop each
    /// other's traffic.)
    pub fn port_group(&self) -> u32 {
        let h = hex::decode(&short_hash(&[&self.root.to_string_lossy()])[..8]).expect("hex");
        u32::from_be_bytes([h[0], h[1], h[2], h[3]]).max(1)
    }

    /// The bridge of network `name` of this store: `bulkhead0` for the default network of the
    /// default store, `bh` and 10 hex digits of the store's and the network's names otherwise.
    fn bridge_name(&self, name: &str) -> String {
        if self.is_default_root() && name == DEFAULT_NETWORK {
            "bulkhead0".to_owned()
        } else {
            format!("bh{}", &short_hash(&[&self.root.to_string_lossy(), name])[..10])
        }
    }

    /// Takes the networks' lock (exclusive; every change is short).
    pub fn lock(&self) -> Result<NetLock> {
        Ok(NetLock(lock_file(&self.dir.join("lock"))?))
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn list(&self) -> Result<Vec<Network>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(|e| io(&self.dir, e))? {
            let e = e.map_err(|e| io(&self.dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(".json") {
                if RESERVED.contains(&n) {
                    continue;
                }
                out.push(self.get(n)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Result<Network> {
        valid_name(name)?;
        let p = self.path_of(name);
        let n: Network = match read_state(&p) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotFound(format!("no network {name}"))),
            Err(e) => return Err(io(&p, e)),
        };
        // Its bridge is this store's own, whatever the file says (it would otherwise plug
        // containers into another store's bridge).
        if n.name != name || n.bridge != self.bridge_name(name) {
            return Err(Error::Invalid(format!(
                "{}: names bridge {} for network {}, not this store's",
                p.display(),
                n.bridge,
                n.name
            )));
        }
        Ok(n)
    }

    fn save(&self, n: &Network) -> Result<()> {
        write_atomic(
            &self.path_of(&n.name),
            &serde_json::to_vec_pretty(n).map_err(|e| Error::Invalid(e.to_string()))?,
        )
    }

    /// Makes a network (its bridge and its part of the policy table).
    pub fn create(&self, req: &CreateRequest) -> Result<Network> {
        valid_name(&req.name)?;
        let _lock = self.lock()?;
        // Host-wide while a subnet is picked and its bridge made: another store on this host
        // must not pick the same one.
        let _host = host_lock()?;
        if self.path_of(&req.name).exists() {
            return Err(Error::Conflict(format!("network {} exists already", req.name)));
        }
        let existing = self.list()?;
        let taken: Vec<Ipv4Net> = existing.iter().map(|n| n.subnet).chain(host_routes()).collect();
        let subnet = match req.subnet {
            Some(s) => {
                let s = s.trunc();
                let a = s.network();
                if a.is_loopback() || a.is_link_local() || a.is_multicast() || a.octets()[0] == 0 || a.octets()[0] >= 240 {
                    return Err(Error::Invalid(format!(
                        "subnet {s}: loopback, link-local (the cloud metadata service lives there), multicast and reserved ranges are refused"
                    )));
                }
                if s.prefix_len() > 30 {
                    return Err(Error::Invalid(format!("subnet {s}: too small (at most /30)")));
                }
                if let Some(t) = taken.iter().find(|t| t.contains(&s.network()) || s.contains(&t.network())) {
                    return Err(Error::Conflict(format!("subnet {s} overlaps {t}, already in use on this host")));
                }
                s
            }
            None => self.free_subnet(&taken)?,
        };
        let gateway = match req.gateway {
            Some(g) if subnet.contains(&g) && g != subnet.network() && g != subnet.broadcast() => g,
            Some(g) => return Err(Error::Invalid(format!("gateway {g} is not a host address of {subnet}"))),
            None => subnet
                .hosts()
                .next()
                .ok_or_else(|| Error::Invalid(format!("{subnet} has no host address")))?,
        };
        // IPv6: asked for (`--ipv6`), or on the default network when the host has it.
        let want6 = req.ipv6 || req.subnet6.is_some() || (req.name == DEFAULT_NETWORK && host_has_ipv6());
        let (subnet6, gateway6) = if want6 {
            if !host_has_ipv6() {
                return Err(Error::Invalid(
                    "--ipv6: this host has no IPv6 (no global address, or IPv6 is disabled)".into(),
                ));
            }
            let taken6: Vec<Ipv6Net> = existing.iter().filter_map(|n| n.subnet6).chain(host_routes6()).collect();
            let overlaps = |s: &Ipv6Net| {
                taken6
                    .iter()
                    .find(|t| t.contains(&s.network()) || s.contains(&t.network()))
                    .copied()
            };
            let s6 = match req.subnet6 {
                Some(s) => {
                    let s = s.trunc();
                    let a = s.network();
                    if a.is_loopback() || a.is_multicast() || (a.segments()[0] & 0xffc0) == 0xfe80 || a.is_unspecified() {
                        return Err(Error::Invalid(format!(
                            "subnet {s}: loopback, link-local and multicast ranges are refused"
                        )));
                    }
                    if s.prefix_len() > 64 {
                        return Err(Error::Invalid(format!("subnet {s}: IPv6 subnets are at least a /64")));
                    }
                    if let Some(t) = overlaps(&s) {
                        return Err(Error::Conflict(format!("subnet {s} overlaps {t}, already in use on this host")));
                    }
                    s
                }
                None => self
                    .pools6
                    .iter()
                    .flat_map(|p| p.subnets(p.prefix_len().max(64)).into_iter().flatten().take(65536))
                    .find(|s| overlaps(s).is_none())
                    .ok_or_else(|| Error::Conflict("no free IPv6 subnet left in the pools (set \"pools6\" in networks.json)".into()))?,
            };
            let g6 = match req.gateway6 {
                Some(g) if s6.contains(&g) && g != s6.network() => g,
                Some(g) => return Err(Error::Invalid(format!("gateway {g} is not a host address of {s6}"))),
                None => first_host6(&s6),
            };
            (Some(s6), Some(g6))
        } else {
            if req.gateway6.is_some() {
                return Err(Error::Invalid("an IPv6 gateway needs --ipv6".into()));
            }
            (None, None)
        };
        let id = short_hash(&[&self.root.to_string_lossy(), &req.name, &chrono::Utc::now().to_rfc3339()]);
        let bridge = self.bridge_name(&req.name);
        let n = Network {
            name: req.name.clone(),
            id,
            driver: "bridge".into(),
            subnet,
            gateway,
            bridge,
            subnet6,
            gateway6,
            internal: req.internal,
            // Not on internal networks: the resolver forwards what it does not know to the host's
            // resolvers, a way out an internal network must not have.
            dns: req.name != DEFAULT_NETWORK && !req.no_dns && !req.internal,
            created: chrono::Utc::now(),
            labels: req.labels.clone(),
        };
        netlink::ensure_bridge(&n)?;
        self.save(&n)?;
        if let Err(e) = self.sync() {
            let _ = fs::remove_file(self.path_of(&n.name));
            let _ = netlink::delete_link(&n.bridge);
            return Err(e);
        }
        Ok(n)
    }

    /// The default network, made on first use.
    pub fn ensure_default(&self) -> Result<Network> {
        match self.get(DEFAULT_NETWORK) {
            Ok(n) => Ok(n),
            Err(Error::NotFound(_)) => match self.create(&CreateRequest {
                name: DEFAULT_NETWORK.into(),
                ..Default::default()
            }) {
                Err(Error::Conflict(_)) => self.get(DEFAULT_NETWORK),
                other => other,
            },
            Err(e) => Err(e),
        }
    }

    fn free_subnet(&self, taken: &[Ipv4Net]) -> Result<Ipv4Net> {
        for pool in &self.pools {
            let len = pool.prefix_len().max(24);
            for s in pool.subnets(len).map_err(|e| Error::Invalid(e.to_string()))? {
                if !taken.iter().any(|t| t.contains(&s.network()) || s.contains(&t.network())) {
                    return Ok(s);
                }
            }
        }
        Err(Error::Conflict(format!(
            "no free subnet left in the pools {:?} (set \"pools\" in networks.json, or give --subnet)",
            self.pools.iter().map(|p| p.to_string()).collect::<Vec<_>>()
        )))
    }

    /// Removes a network no running container uses.
    pub fn remove(&self, name: &str) -> Result<Network> {
        let _lock = self.lock()?;
        let n = self.get(name)?;
        let users: Vec<String> = self
            .live_leases()?
            .into_iter()
            .filter(|l| l.network == name)
            .map(|l| l.name)
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "network {name} is in use by {} (stop or disconnect them first)",
                users.join(", ")
            )));
        }
        fs::remove_file(self.path_of(name)).map_err(|e| io(&self.path_of(name), e))?;
        netlink::delete_link(&n.bridge)?;
        self.sync()?;
        Ok(n)
    }

    fn dns_dir(&self) -> PathBuf {
        self.dir.join("dns")
    }

    fn leases_path(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    fn read_leases(&self) -> Result<Vec<Lease>> {
        let p = self.leases_path();
        match read_state(&p) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| Error::Invalid(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&p, e)),
        }
    }

    fn write_leases(&self, l: &[Lease]) -> Result<()> {
        // Forced to disk (0.3 ms here): a file a power loss left empty would stop every start
        // until a repair.
        write_replace(
            &self.leases_path(),
            &serde_json::to_vec(l).map_err(|e| Error::Invalid(e.to_string()))?,
            true,
        )
    }

    fn released_path(&self) -> PathBuf {
        self.dir.join("released.json")
    }

    /// Addresses containers held and let go whose tracked connections have not been forgotten
    /// yet. A flow a container had (a UDP exchange a server outside keeps alive, a connection
    /// through a published port) outlives it in the kernel's connection tracking, and would be
    /// handed, NAT and `ct state established` included, to the next container given the same
    /// address. Forgetting costs a walk of the whole table (~10 ms here, whatever it holds), so
    /// it is not done at every exit: a released address is not given out again until its
    /// connections are forgotten, which is done for all of them at once when no clean address is
    /// left, or when one is asked for by --ip, or by `system check --repair`.
    fn released(&self) -> Result<Vec<std::net::IpAddr>> {
        let p = self.released_path();
        match read_state(&p) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| Error::Invalid(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&p, e)),
        }
    }

    /// Records the addresses of `leases` as released (before the leases file forgets them: a
    /// crash between the two leaves an address marked, never one unmarked).
    fn mark_released(&self, leases: &[Lease]) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let mut all = self.released()?;
        all.extend(leases.iter().flat_map(Lease::addrs));
        all.sort();
        all.dedup();
        write_replace(
            &self.released_path(),
            &serde_json::to_vec(&all).map_err(|e| Error::Invalid(e.to_string()))?,
            true,
        )
    }

    /// Forgets the tracked connections of every released address, and that they were released.
    fn forget_released(&self, released: &mut Vec<std::net::IpAddr>) -> Result<()> {
        if released.is_empty() {
            return Ok(());
        }
        conntrack::forget(released)?;
        released.clear();
        write_replace(&self.released_path(), b"[]", true)
    }

    /// The leases of containers whose network namespace still exists.
    pub fn live_leases(&self) -> Result<Vec<Lease>> {
        Ok(self.read_leases()?.into_iter().filter(Lease::alive).collect())
    }

    /// Joins the container whose first process is `pid` (created, not started) to `network`:
    /// an address from its subnet, a veth pair into its bridge, the policy table updated.
    pub fn attach(&self, member: &Member, network: &str, pid: i32) -> Result<Lease> {
        let container = member.id.as_str();
        use std::os::unix::fs::MetadataExt;
        let t0 = std::time::Instant::now();
        let _lock = self.lock()?;
        let n = self.get(network)?;
        let ns_path = format!("/proc/{pid}/ns/net");
        let ns = fs::File::open(&ns_path).map_err(|e| io(Path::new(&ns_path), e))?;
        let md = ns.metadata().map_err(|e| io(Path::new(&ns_path), e))?;
        let (mut leases, dead): (Vec<Lease>, Vec<Lease>) = self.read_leases()?.into_iter().partition(Lease::alive);
        // Containers killed without their shim: their addresses are free again (and may still
        // have tracked connections, see `released`).
        self.mark_released(&dead)?;
        let mut released = self.released()?;
        leases.retain(|l| !(l.container == container && l.network == network));
        let used: std::collections::HashSet<Ipv4Addr> = leases.iter().filter(|l| l.network == network).map(|l| l.ip).collect();
        let first = !leases.iter().any(|l| l.container == container);
        let ip = match member.ip.filter(|_| first) {
            Some(want) => {
                if !n.subnet.contains(&want) || want == n.subnet.network() || want == n.subnet.broadcast() || want == n.gateway {
                    return Err(Error::Invalid(format!(
                        "--ip {want}: not a host address of network {network} ({}, gateway {})",
                        n.subnet, n.gateway
                    )));
                }
                if let Some(l) = leases.iter().find(|l| l.network == network && l.ip == want) {
                    return Err(Error::Conflict(format!(
                        "--ip {want}: container {} has it on network {network}",
                        l.name
                    )));
                }
                want
            }
            // The lowest free address no container held since its connections were last
            // forgotten; when there is none, all of those are forgotten at once (one walk of
            // the kernel's connection table, ~10 ms here, however many) and the lowest is taken.
            None => {
                let free = |released: &[std::net::IpAddr]| {
                    n.subnet
                        .hosts()
                        .find(|a| *a != n.gateway && !used.contains(a) && !released.contains(&std::net::IpAddr::V4(*a)))
                };
                match free(&released) {
                    Some(a) => a,
                    None => {
                        self.forget_released(&mut released)?;
                        free(&[]).ok_or_else(|| Error::Conflict(format!("network {network}: no free address left in {}", n.subnet)))?
                    }
                }
            }
        };
        // Its IPv6 address mirrors its IPv4 one (…::5 for .5) where that is free.
        let ip6 = match (n.subnet6, n.gateway6) {
            (Some(s6), Some(g6)) => {
                let used6: std::collections::HashSet<Ipv6Addr> =
                    leases.iter().filter(|l| l.network == network).filter_map(|l| l.ip6).collect();
                let base = u128::from(s6.network());
                let size = if s6.prefix_len() == 0 {
                    u128::MAX
                } else {
                    (1u128 << (128 - s6.prefix_len())) - 1
                };
                let offset = u128::from(u32::from(ip) - u32::from(n.subnet.network()));
                let free = |a: &Ipv6Addr| *a != g6 && *a != s6.network() && !used6.contains(a);
                let mirrored = Ipv6Addr::from(base + offset);
                Some(if offset <= size && free(&mirrored) {
                    mirrored
                } else {
                    (2..=size.min(1 << 20))
                        .map(|o| Ipv6Addr::from(base + o))
                        .find(free)
                        .ok_or_else(|| Error::Conflict(format!("network {network}: no free IPv6 address left")))?
                })
            }
            _ => None,
        };
        // An address asked for (--ip) that a container held before: its connections go now.
        let mine: Vec<std::net::IpAddr> = std::iter::once(std::net::IpAddr::V4(ip))
            .chain(ip6.map(std::net::IpAddr::V6))
            .collect();
        if mine.iter().any(|a| released.contains(a)) {
            self.forget_released(&mut released)?;
        }
        // eth0 on the first network (its default route), eth1... on the others: the lowest free
        // index (a network connected to a running container after one was disconnected).
        let mut k = 0;
        while leases.iter().any(|l| l.container == container && l.inner == format!("eth{k}")) {
            k += 1;
        }
        // Ports are published on the container's first network; an internal one has no way in.
        if first && !member.ports.is_empty() && n.internal {
            return Err(Error::Invalid(format!(
                "network {network} is internal: nothing on it can be published (-p/-P)"
            )));
        }
        let published = if first && !member.ports.is_empty() {
            let taken: Vec<(u16, String)> = leases
                .iter()
                .flat_map(|l| l.published.iter().map(|p| (p.host_port, p.proto.clone())))
                .collect();
            ports::assign(&member.ports, &taken)?
        } else {
            Vec::new()
        };
        let host_if = format!("{}{}{k}", self.port_prefix(), &container[..9.min(container.len())]);
        // The bridge is made again only if it is gone (a reboot, or someone removed it).
        if Path::new("/sys/class/net").join(&n.bridge).exists() {
            netlink::bridge_options(&n.bridge)?;
        } else {
            netlink::ensure_bridge(&n)?;
        }
        // A MAC address of its own, from its address (as Docker makes them): pinned to its port.
        let o = ip.octets();
        let mac = [0x02, 0x42, o[0], o[1], o[2], o[3]];
        if k > 9 {
            return Err(Error::Conflict(format!("{}: at most 10 networks per container", member.name)));
        }
        let inner = format!("eth{k}");
        let t_plan = t0.elapsed();
        netlink::attach(
            &ns,
            &n.bridge,
            &netlink::Plug {
                host_if: &host_if,
                inner: &inner,
                mac,
                addr: ip,
                prefix: n.subnet.prefix_len(),
                gateway: n.gateway,
                addr6: ip6.zip(n.subnet6).zip(n.gateway6).map(|((a, s), g)| (a, s.prefix_len(), g)),
                default_route: first,
                group: self.port_group(),
            },
        )?;
        let lease = Lease {
            network: network.into(),
            container: container.into(),
            name: member.name.clone(),
            aliases: member.aliases.clone(),
            labels: member.labels.clone(),
            published,
            mac: mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            inner,
            ip,
            ip6,
            host_if,
            pid,
            netns: (md.dev(), md.ino()),
        };
        leases.push(lease.clone());
        self.write_leases(&leases)?;
        if n.dns {
            dns::update(&self.dns_dir(), &self.list()?, &leases)?;
        }
        // Checked against the kernel on every start. The tables as they should be but for this port: the port alone is added (one small
        // transaction). Anything else (its rules, its published ports, a table flushed by a host
        // firewall reload): both tables are written whole, before the container runs.
        let t_links = t0.elapsed();
        let policy = self.policy()?;
        let kernel = firewall::Kernel::read(&policy.table);
        let t_check = t0.elapsed();
        let live: std::collections::HashSet<&str> = policy.ports.iter().map(|p| p.host_if.as_str()).collect();
        let current = kernel.as_ref().filter(|k| {
            k.matches_static(&policy)
                && policy.ports.iter().all(|p| p.host_if == lease.host_if || k.has_port(p))
                && k.ports().len() <= 64 + live.len()
        });
        if let Some(k) = current {
            // Ports of containers gone since stay (their veths are gone, so nothing can use
            // them, and a port's name is its container's own): taking them out costs a wait for
            // the kernel's RCU grace period. They go with the next rewrite, which comes after 64
            // of them at the latest.
            firewall::add_port(
                &policy.table,
                &firewall::Port {
                    host_if: lease.host_if.clone(),
                    mac: lease.mac.clone(),
                    ip: lease.ip,
                    ip6: lease.ip6,
                },
                k,
            )?;
        } else {
            // Anything else (its rules, its published ports, a table flushed by a host firewall
            // reload, too many elements of dead ports): both tables written whole.
            self.sync()?;
        }
        tracing::debug!(
            plan_ms = t_plan.as_secs_f64() * 1e3,
            links_ms = (t_links - t_plan).as_secs_f64() * 1e3,
            check_ms = (t_check - t_links).as_secs_f64() * 1e3,
            tables_ms = (t0.elapsed() - t_check).as_secs_f64() * 1e3,
            rewrite = current.is_none(),
            "joined {network}"
        );
        Ok(lease)
    }

    /// `network disconnect`: a running container leaves one network (its end goes with the host's).
    pub fn detach_one(&self, container: &str, network: &str) -> Result<()> {
        let _lock = self.lock()?;
        let all = self.read_leases()?;
        let Some(gone) = all.iter().find(|l| l.container == container && l.network == network).cloned() else {
            return Ok(());
        };
        netlink::delete_link(&gone.host_if)?;
        let keep: Vec<Lease> = all.into_iter().filter(|l| l != &gone && l.alive()).collect();
        self.mark_released(std::slice::from_ref(&gone))?;
        self.write_leases(&keep)?;
        if self.get(network).is_ok_and(|n| n.dns) {
            dns::update(&self.dns_dir(), &self.list()?, &keep)?;
        }
        self.sync()
    }

    /// `network prune`: removes every network no running container uses (the default one stays,
    /// as Docker's `bridge` does); returns their names.
    pub fn prune(&self, keep: &[String]) -> Result<Vec<String>> {
        let used: std::collections::HashSet<String> = self.live_leases()?.into_iter().map(|l| l.network).collect();
        let mut out = Vec::new();
        for n in self.list()? {
            if n.name != DEFAULT_NETWORK && !used.contains(&n.name) && !keep.contains(&n.name) {
                self.remove(&n.name)?;
                out.push(n.name);
            }
        }
        Ok(out)
    }

    /// The container left its networks (it exited): its leases are released.
    pub fn detach(&self, container: &str) -> Result<()> {
        let _lock = self.lock()?;
        let all = self.read_leases()?;
        let keep: Vec<Lease> = all.iter().filter(|l| l.container != container && l.alive()).cloned().collect();
        if keep.len() != all.len() {
            for l in all.iter().filter(|l| l.container == container && l.alive()) {
                // Gone with the namespace as a rule (the kernel takes it down in the background;
                // deleting it here would wait for RCU); removed here only if the process lingers.
                let _ = netlink::delete_link(&l.host_if);
            }
            let released: Vec<Lease> = all.iter().filter(|l| !keep.contains(l)).cloned().collect();
            self.mark_released(&released)?;
            self.write_leases(&keep)?;
            if all
                .iter()
                .any(|l| l.container == container && self.get(&l.network).is_ok_and(|n| n.dns))
            {
                dns::update(&self.dns_dir(), &self.list()?, &keep)?;
            }
            // The table changes only if the container was in it (a rule named it, or it published
            // ports): compared in memory, no `nft` when it was not. A start checks the kernel's
            // table anyway before its container runs.
            let mut with: Vec<Lease> = keep.clone();
            with.extend(all.iter().filter(|l| l.container == container).cloned());
            let digest = |p: firewall::Policy| firewall::commands(&p).to_string();
            if digest(self.policy_for(&with)?) != digest(self.policy_for(&keep)?) {
                self.sync()?;
            }
            // Else its port stays in the bridge table until the next start takes it out: its
            // veth is gone with its namespace, so nothing can use it, and nothing else changes.
        }
        Ok(())
    }

    fn rules_path(&self) -> PathBuf {
        self.dir.join("rules.json")
    }

    /// The rules, oldest first.
    pub fn rules(&self) -> Result<Vec<rules::Rule>> {
        let p = self.rules_path();
        match read_state(&p) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| Error::Invalid(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&p, e)),
        }
    }

    fn write_rules(&self, r: &[rules::Rule]) -> Result<()> {
        write_atomic(
            &self.rules_path(),
            &serde_json::to_vec_pretty(r).map_err(|e| Error::Invalid(e.to_string()))?,
        )
    }

    /// `network allow` / `network deny` (and `run --allow-from/--allow-to`): returns what changed.
    pub fn add_rule(&self, rule: rules::Rule) -> Result<String> {
        let _lock = self.lock()?;
        if let Some(n) = &rule.network {
            self.get(n)?;
        }
        let mut all = self.rules()?;
        let what = rules::add(&mut all, rule);
        self.write_rules(&all)?;
        self.sync()?;
        Ok(what)
    }

    /// Replaces every rule whose origin starts with `prefix` by `new` (a compose project's rules,
    /// derived from its file again at each `up`, gone at `down` with an empty `new`): one write
    /// of the rules, one of the tables.
    pub fn set_rules_of_origin(&self, prefix: &str, new: Vec<rules::Rule>) -> Result<()> {
        let _lock = self.lock()?;
        let mut all = self.rules()?;
        let before = all.clone();
        all.retain(|r| !r.origin.starts_with(prefix));
        for r in new {
            rules::add(&mut all, r);
        }
        if all != before {
            self.write_rules(&all)?;
            self.sync()?;
        }
        Ok(())
    }

    /// Removes the rules a container's creation made (when it is removed).
    pub fn remove_rules_of(&self, container: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut all = self.rules()?;
        let before = all.len();
        all.retain(|r| r.owner.as_deref() != Some(container));
        if all.len() != before {
            self.write_rules(&all)?;
            self.sync()?;
        }
        Ok(())
    }

    /// `system check`: what the networks' state says that the kernel no longer has (leases of
    /// containers whose namespace is gone, names they still have, host ends of veth pairs, rules
    /// of containers that no longer exist, a table that differs from what it should be, a bridge
    /// that is gone); with `repair`, each is put right. `containers`: the ids that exist.
    pub fn check(&self, repair: bool, containers: &[String]) -> Result<Vec<String>> {
        let _lock = self.lock()?;
        let fixed = |s: String| if repair { format!("{s} (repaired)") } else { s };
        let mut problems = Vec::new();
        let all = self.read_leases()?;
        let (live, dead): (Vec<Lease>, Vec<Lease>) = all.into_iter().partition(Lease::alive);
        for l in &dead {
            problems.push(fixed(format!(
                "network {}: {} ({}) holds {} but is not running",
                l.network,
                l.name,
                &l.container[..12.min(l.container.len())],
                l.ip
            )));
            if repair {
                let _ = netlink::delete_link(&l.host_if);
            }
        }
        let mut rules = self.rules()?;
        let orphans: Vec<String> = rules
            .iter()
            .filter(|r| r.owner.as_ref().is_some_and(|o| !containers.contains(o)))
            .map(|r| r.describe())
            .collect();
        for o in &orphans {
            problems.push(fixed(format!("rule of a removed container: {o}")));
        }
        let mut missing = Vec::new();
        for n in self.list()? {
            if !Path::new("/sys/class/net").join(&n.bridge).exists() {
                problems.push(fixed(format!("network {}: its bridge {} is gone", n.name, n.bridge)));
                missing.push(n);
            }
        }
        let policy = self.policy()?;
        let table_ok = policy.bridges.is_empty() || firewall::is_current(&policy);
        if !table_ok {
            problems.push(fixed(format!("the nftables table inet {} is not what it should be", policy.table)));
        }
        if repair {
            if !dead.is_empty() {
                self.mark_released(&dead)?;
                self.write_leases(&live)?;
            }
            // Everything released so far: a repair leaves no connection behind.
            let mut released = self.released()?;
            self.forget_released(&mut released)?;
            if !orphans.is_empty() {
                rules.retain(|r| r.owner.as_ref().is_none_or(|o| containers.contains(o)));
                self.write_rules(&rules)?;
            }
            for n in &missing {
                netlink::ensure_bridge(n)?;
            }
            dns::update(&self.dns_dir(), &self.list()?, &live)?;
            self.sync()?;
        }
        Ok(problems)
    }

    /// The policy table as the networks and leases are now.
    pub fn policy(&self) -> Result<firewall::Policy> {
        self.policy_for(&self.live_leases()?)
    }

    fn policy_for(&self, leases: &[Lease]) -> Result<firewall::Policy> {
        let nets = self.list()?;
        Ok(firewall::Policy {
            table: self.table(),
            bridges: nets.iter().map(|n| n.bridge.clone()).collect(),
            internal: nets.iter().filter(|n| n.internal).map(|n| n.bridge.clone()).collect(),
            masquerade4: nets.iter().filter(|n| !n.internal).map(|n| n.subnet.to_string()).collect(),
            masquerade6: nets
                .iter()
                .filter(|n| !n.internal)
                .filter_map(|n| n.subnet6.map(|s| s.to_string()))
                .collect(),
            gateways6: nets.iter().filter_map(|n| n.gateway6).collect(),
            rules: rules::resolve(&self.rules()?, leases),
            gateways: nets.iter().map(|n| (n.bridge.clone(), n.gateway, n.dns)).collect(),
            port_group: self.port_group(),
            ports: leases
                .iter()
                .map(|l| firewall::Port {
                    host_if: l.host_if.clone(),
                    mac: l.mac.clone(),
                    ip: l.ip,
                    ip6: l.ip6,
                })
                .collect(),
            published: leases
                .iter()
                .flat_map(|l| l.published.iter().map(move |p| (p.clone(), l.ip, l.ip6)))
                .collect(),
            forwarding_is_ours: Path::new(FORWARDING_MARK).exists(),
            forwarding6_is_ours: Path::new(FORWARDING6_MARK).exists(),
        })
    }

    /// Writes the policy table (or removes it with the last network).
    pub fn sync(&self) -> Result<()> {
        let policy = self.policy()?;
        // What the rules counted so far is kept before the table is rewritten.
        let mut all = self.rules()?;
        if !all.is_empty() {
            let hits = firewall::hits(&policy.table);
            if hits.values().any(|h| *h > 0) {
                rules::add_hits(&mut all, &hits);
                self.write_rules(&all)?;
            }
        }
        if policy.bridges.is_empty() {
            firewall::remove(&policy.table)?;
            // The guard against routing for others went with the table: if bulkhead turned
            // forwarding on and no store has a bridge left, it goes back off.
            if !bulkhead_bridges_exist() {
                if policy.forwarding_is_ours {
                    let _ = fs::write(FORWARD4, "0");
                    let _ = fs::remove_file(FORWARDING_MARK);
                }
                if policy.forwarding6_is_ours {
                    disable_forwarding6();
                }
            }
            return Ok(());
        }
        // Containers' traffic is routed: forwarding on, and remembered if it was off, so that the
        // table keeps the host from routing anything else. The mark first (the table then
        // carries the guard), the table, and only then the switch: never a moment of forwarding
        // without the guard, and nothing switched if the table cannot be written.
        let want6 = !policy.masquerade6.is_empty() || !policy.gateways6.is_empty();
        let flip4 = forwarding_off(FORWARD4)?;
        let flip6 = want6 && forwarding_off(FORWARD6)?;
        if flip4 {
            mark(FORWARDING_MARK, "")?;
        }
        if flip6 {
            mark(FORWARDING6_MARK, "")?;
        }
        let policy = if flip4 || flip6 { self.policy()? } else { policy };
        if let Err(e) = firewall::apply(&policy) {
            if flip4 {
                let _ = fs::remove_file(FORWARDING_MARK);
            }
            if flip6 {
                let _ = fs::remove_file(FORWARDING6_MARK);
            }
            return Err(e);
        }
        if flip4 {
            fs::write(FORWARD4, "1").map_err(|e| io(Path::new(FORWARD4), e))?;
        }
        if flip6 {
            enable_forwarding6()?;
        }
        Ok(())
    }
}

const FORWARD4: &str = "/proc/sys/net/ipv4/ip_forward";
const FORWARD6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

fn forwarding_off(sysctl: &str) -> Result<bool> {
    Ok(fs::read_to_string(sysctl).map_err(|e| io(Path::new(sysctl), e))?.trim() == "0")
}

fn mark(path: &str, text: &str) -> Result<()> {
    fs::create_dir_all(RUN_DIR).map_err(|e| io(Path::new(RUN_DIR), e))?;
    fs::write(path, text).map_err(|e| io(Path::new(path), e))
}

/// Turns IPv6 forwarding on. Before, every interface that takes router advertisements
/// (`accept_ra` 1) is told to keep taking them as a router (2): forwarding would otherwise drop
/// the host's own addresses and routes learnt from them. Those interfaces are listed in the mark,
/// and put back when forwarding goes off again.
fn enable_forwarding6() -> Result<()> {
    let conf = Path::new("/proc/sys/net/ipv6/conf");
    let mut changed = Vec::new();
    for e in fs::read_dir(conf).map_err(|e| io(conf, e))? {
        let e = e.map_err(|e| io(conf, e))?;
        let p = e.path().join("accept_ra");
        if fs::read_to_string(&p).is_ok_and(|v| v.trim() == "1") {
            fs::write(&p, "2").map_err(|e| io(&p, e))?;
            changed.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    mark(FORWARDING6_MARK, &changed.join("\n"))?;
    fs::write(FORWARD6, "1").map_err(|e| io(Path::new(FORWARD6), e))
}

/// IPv6 forwarding back off, and `accept_ra` back to 1 where bulkhead made it 2.
fn disable_forwarding6() {
    let _ = fs::write(FORWARD6, "0");
    for name in fs::read_to_string(FORWARDING6_MARK).unwrap_or_default().lines() {
        if !name.is_empty() && !name.contains('/') && name != ".." {
            let p = Path::new("/proc/sys/net/ipv6/conf").join(name).join("accept_ra");
            if fs::read_to_string(&p).is_ok_and(|v| v.trim() == "2") {
                let _ = fs::write(&p, "1");
            }
        }
    }
    let _ = fs::remove_file(FORWARDING6_MARK);
}

/// Whether the host has IPv6 to give containers: enabled, with an address beyond link-local
/// and loopback.
pub fn host_has_ipv6() -> bool {
    fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").is_ok_and(|v| v.trim() == "0")
        && fs::read_to_string("/proc/net/if_inet6").is_ok_and(|t| {
            t.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // scope 00: global (ULA included); not on lo, not a bulkhead bridge.
                f.len() == 6 && f[3] == "00" && f[5] != "lo" && !f[5].starts_with("bh") && !f[5].starts_with("bulkhead")
            })
        })
}

/// The first address of `s` after its network address (the gateway by default).
fn first_host6(s: &Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(s.network()) + 1)
}

/// IPv6 routes of the host (not the default route, not link-local or multicast): subnets a new
/// network must not overlap.
fn host_routes6() -> Vec<Ipv6Net> {
    let text = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u128::from_str_radix(f.first()?, 16).ok()?;
            let len = u8::from_str_radix(f.get(1)?, 16).ok()?;
            let net = Ipv6Net::new(Ipv6Addr::from(dest), len).ok()?;
            let a = net.network();
            (len > 0 && len < 128 && !a.is_multicast() && (a.segments()[0] & 0xffc0) != 0xfe80).then_some(net)
        })
        .collect()
}

/// Whether any store's bridge is on this host (by name: `bh*`, `bulkhead*`).
fn bulkhead_bridges_exist() -> bool {
    fs::read_dir("/sys/class/net").is_ok_and(|rd| {
        rd.filter_map(|e| e.ok()).any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.starts_with("bh") || n.starts_with("bulkhead")) && e.path().join("bridge").exists()
        })
    })
}

fn host_lock() -> Result<fs::File> {
    fs::create_dir_all(RUN_DIR).map_err(|e| io(Path::new(RUN_DIR), e))?;
    lock_file(&Path::new(RUN_DIR).join("net.lock"))
}

/// Opens (making it, root's alone) and locks exclusively the lock file `p`: never through a
/// link, never blocking in open on a FIFO put there.
fn lock_file(p: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(p)
        .map_err(|e| io(p, e))?;
    if !f.metadata().map_err(|e| io(p, e))?.is_file() {
        return Err(Error::Invalid(format!("{}: not a regular file", p.display())));
    }
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| io(p, e.into()))?;
    Ok(f)
}

/// IPv4 routes of the host (other than the default route): subnets a new network must not
/// overlap.
fn host_routes() -> Vec<Ipv4Net> {
    let text = fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            if mask == 0 {
                return None;
            }
            // Little-endian words in the file.
            let dest = Ipv4Addr::from(dest.swap_bytes());
            let len = mask.count_ones() as u8;
            Ipv4Net::new(dest, len).ok()
        })
        .collect()
}

/// Reads one of the networks' state files: a regular file only, never through a link, never
/// blocking in open on a FIFO put in its place (`list` runs under the host-wide lock).
fn read_state(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(p)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"));
    }
    let mut out = Vec::new();
    // Bounded: these files are small; one that is not was not written by us.
    f.by_ref().take(64 << 20).read_to_end(&mut out)?;
    Ok(out)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_replace(path, data, true)
}

pub(crate) fn write_replace(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(data).map_err(|e| io(&tmp.0, e))?;
    if durable {
        tmp.1.sync_all().map_err(|e| io(&tmp.0, e))?;
    }
    fs::rename(&tmp.0, path).map_err(|e| io(path, e))
}

fn tempfile_in(dir: &Path) -> Result<(PathBuf, fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    for _ in 0..16 {
        let mut b = [0u8; 8];
        rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).map_err(|e| Error::Io(e.to_string()))?;
        let p = dir.join(format!(".tmp-{}", hex::encode(b)));
        match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&p, e)),
        }
    }
    Err(Error::Io(format!("{}: no temporary name free", dir.display())))
}
