//! Bridge networks with real namespaces and real traffic: containers on a network are isolated
//! from each other unless a rule allows it, reach the outside through NAT (not from an internal
//! network), and nothing is left on the host afterwards.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// A busybox image with the tools the tests use.
fn image(env: &Env) -> &'static str {
    busybox_image(
        env,
        "net",
        &[
            "httpd", "wget", "sleep", "echo", "ip", "hostname", "timeout", "nslookup", "nc", "wc",
        ],
        false,
    )
}

/// "The outside": a network namespace routed to the host over a veth pair (198.19.N.0/30 and
/// fdbb:0:0:N::/64), with a web server on 198.19.N.2:8080 and [fdbb:0:0:N::2]:8080. Removed when
/// dropped.
struct Outside {
    ns: String,
    server: std::process::Child,
    addr: String,
    addr6: String,
    /// The host's IPv6 address on the link.
    host6: String,
}

impl Outside {
    fn new(n: u8) -> Self {
        let ns = format!("bh-test-out-{}-{n}", std::process::id());
        let host_if = format!("xto{n}-{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(Command::new("ip").args(["netns", "add", &ns]));
        sh(Command::new("ip").args(["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns]));
        sh(Command::new("ip").args(["addr", "add", &format!("198.19.{n}.1/30"), "dev", &host_if]));
        sh(Command::new("ip").args(["link", "set", &host_if, "up"]));
        let (host6, addr6) = (format!("fdbb:0:0:{n}::1"), format!("fdbb:0:0:{n}::2"));
        let v6 = bulkhead_network::host_has_ipv6();
        if v6 {
            sh(Command::new("ip").args(["addr", "add", &format!("{host6}/64"), "dev", &host_if, "nodad"]));
            sh(Command::new("ip").args(["-n", &ns, "addr", "add", &format!("{addr6}/64"), "dev", "eth0", "nodad"]));
        }
        for c in [
            vec!["addr", "add", &format!("198.19.{n}.2/30"), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            sh(Command::new("ip").args(["-n", &ns]).args(c));
        }
        let addr = format!("198.19.{n}.2");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "outside\n").unwrap();
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                if v6 { "::" } else { &addr },
                "--directory",
            ])
            .arg(dir.keep())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Outside {
            ns,
            server,
            addr,
            addr6,
            host6,
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// Runs wget in container `c` (bounded), returning whether it got the page and what it said.
fn fetch(env: &Env, c: &str, url: &str) -> (bool, String) {
    // Not wget -T: Debian's static busybox 1.35 crashes on it.
    let o = env.run_bounded(20, &["exec", c, "timeout", "-s", "KILL", "3", "wget", "-qO-", url]);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text)
}

fn ip_of(env: &Env, network: &str, container: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", network])).unwrap();
    v[0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == container)
        .unwrap_or_else(|| panic!("{container} is not on {network}: {v:#}"))["ip"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits (bounded) until the web server in `c` answers on its own address.
fn wait_served(env: &Env, c: &str, ip: &str) {
    let mut last = String::new();
    for _ in 0..50 {
        let (ok, text) = fetch(env, c, &format!("http://{ip}/"));
        if ok {
            return;
        }
        last = text;
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{c}'s web server never answered: {last}");
}

#[test]
fn containers_are_isolated_by_default_and_reach_the_outside_through_nat() {
    let env = Env::new();
    let img = image(&env);
    let outside = Outside::new(1);
    let table = table_of(&env);
    let serve = "httpd -f -p 80 -h /www";
    for name in ["a", "b"] {
        env.ok(&["run", "-d", "--name", name, img, "sh", "-c", serve]);
    }
    let (a, b) = (ip_of(&env, "bulkhead", "a"), ip_of(&env, "bulkhead", "b"));
    assert!(a.starts_with("198.18.") && b.starts_with("198.18.") && a != b, "{a} {b}");
    wait_served(&env, "a", &a);
    wait_served(&env, "b", &b);
    // From inside: an address, a default route, its name files.
    let o = env.ok(&["exec", "a", "cat", "/etc/hosts"]);
    assert!(o.contains(&a), "{o}");

    // a -> b is denied, and logged with both ends and the port.
    let (ok, text) = fetch(&env, "a", &format!("http://{b}/"));
    assert!(!ok, "a reached b without a rule: {text}");
    let ruleset = String::from_utf8(Command::new("nft").args(["list", "table", "inet", &table]).output().unwrap().stdout).unwrap();
    assert!(ruleset.contains("jump between"), "{ruleset}");
    let log = String::from_utf8_lossy(&Command::new("dmesg").output().unwrap().stdout).into_owned();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("bulkhead-deny:{table}")) && l.contains(&format!("SRC={a} DST={b}")) && l.contains("DPT=80")),
        "no denial logged"
    );

    // `network events -f` follows: a denial made after it started shows up while it runs.
    let follower = std::thread::scope(|s| {
        let f = s.spawn(|| env.run_bounded(6, &["network", "events", "-f"]));
        std::thread::sleep(Duration::from_millis(1500));
        let _ = fetch(&env, "a", &format!("http://{b}:8123/"));
        f.join().unwrap()
    });
    let out = String::from_utf8_lossy(&follower.stdout);
    assert!(
        out.lines()
            .any(|l| l.contains("\"port\":8123") && l.contains("\"container\":\"b\"")),
        "events -f did not follow: {out}"
    );

    // The outside is reachable (NAT): the server sees the host's address, not the container's.
    let (ok, text) = fetch(&env, "a", &format!("http://{}:8080/", outside.addr));
    assert!(ok && text.contains("outside"), "{text}");

    // An internal network has no way out; containers on different networks never meet.
    env.ok(&["network", "create", "--internal", "--subnet", "198.18.250.0/24", "inner"]);
    env.ok(&["run", "-d", "--name", "c", "--network", "inner", img, "sh", "-c", serve]);
    let c = ip_of(&env, "inner", "c");
    wait_served(&env, "c", &c);
    let (ok, text) = fetch(&env, "c", &format!("http://{}:8080/", outside.addr));
    assert!(!ok, "an internal network reached the outside: {text}");
    let (ok, text) = fetch(&env, "c", &format!("http://{a}/"));
    assert!(!ok, "c reached a on another network: {text}");
    let err = env.fails(&["network", "rm", "inner"]);
    assert!(err.contains("in use by c"), "{err}");
    // Nor does it reach published ports (through the host's addresses), nor publish any.
    env.ok(&["run", "-d", "--name", "p", "-p", "18089:80", img, "sh", "-c", serve]);
    assert!(
        http_get_eventually("127.0.0.1:18089").is_some(),
        "the published port does not answer"
    );
    let (ok, text) = fetch(&env, "c", "http://198.18.250.1:18089/");
    assert!(!ok, "an internal network reached a published port: {text}");
    let err = env.fails(&[
        "run",
        "-d",
        "--name",
        "q",
        "--network",
        "inner",
        "-p",
        "18088:80",
        img,
        "sh",
        "-c",
        serve,
    ]);
    assert!(err.contains("is internal"), "{err}");

    // Everything goes with the containers and the networks.
    let mut veths = Vec::new();
    for net in ["bulkhead", "inner"] {
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", net])).unwrap();
        for l in v[0]["containers"].as_array().unwrap() {
            veths.push(l["host_if"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(veths.len(), 4, "{veths:?}");
    env.ok(&["rm", "-f", "a", "b", "c", "p"]);
    env.ok(&["network", "rm", "inner", "bulkhead"]);
    let tables = String::from_utf8(Command::new("nft").args(["list", "tables"]).output().unwrap().stdout).unwrap();
    assert!(!tables.contains(&table), "{tables}");
    let links = String::from_utf8(Command::new("ip").args(["-br", "link"]).output().unwrap().stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["--format", "json", "network", "ls"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0);
    for v in &veths {
        assert!(!links.contains(v.as_str()), "{v} is left: {links}");
    }
    drop(outside);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

use sha2::Digest as _;

/// Waits (bounded) until `c` can fetch `url` (a rule was just written, or a server is starting).
fn reaches(env: &Env, c: &str, url: &str) -> bool {
    for _ in 0..30 {
        if fetch(env, c, url).0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn rules_open_exactly_what_they_name_and_follow_containers() {
    let env = Env::new();
    let img = image(&env);
    let two = "httpd -p 80 -h /www; httpd -f -p 81 -h /www";
    env.ok(&["run", "-d", "--name", "a", img, "sh", "-c", two]);
    env.ok(&["run", "-d", "--name", "b", img, "sh", "-c", two]);
    let (a, b) = (ip_of(&env, "bulkhead", "a"), ip_of(&env, "bulkhead", "b"));
    wait_served(&env, "b", &b);
    wait_served(&env, "a", &a);
    assert!(!fetch(&env, "a", &format!("http://{b}/")).0, "a reached b without a rule");

    // allow a b:80 -> port 80 only, one way.
    let out = env.ok(&["network", "allow", "a", "b:80"]);
    assert!(out.contains("added: allow a -> b:80/tcp"), "{out}");
    assert!(reaches(&env, "a", &format!("http://{b}/")), "the rule did not open a -> b:80");
    assert!(!fetch(&env, "a", &format!("http://{b}:81/")).0, "a reached b:81");
    assert!(!fetch(&env, "b", &format!("http://{a}/")).0, "b reached a: a rule is one way");
    let rules: serde_json::Value = serde_json::from_str(&env.ok(&["--format", "json", "network", "rules"])).unwrap();
    assert_eq!(rules.as_array().unwrap().len(), 1, "{rules:#}");
    assert_eq!(rules[0]["origin"], "network allow");
    assert!(rules[0]["hits"].as_u64().unwrap() > 0, "no hits counted: {rules:#}");

    // The refused attempts are events: both ends by name, and the port.
    let events = env.ok(&["network", "events"]);
    let seen = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|e| {
            e["from"]["owner"]["container"] == "a"
                && e["to"]["owner"]["container"] == "b"
                && e["to"]["port"] == 81
                && e["protocol"] == "tcp"
        });
    assert!(seen, "a -> b:81 is not among the events: {events}");

    // The rule follows b to a new address: c takes b's old one while b is stopped.
    env.ok(&["stop", "-t", "1", "b"]);
    env.ok(&["run", "-d", "--name", "c", "--ip", &b, img, "sh", "-c", two]);
    assert_eq!(ip_of(&env, "bulkhead", "c"), b, "c did not take b's old address");
    env.ok(&["start", "b"]);
    let b2 = ip_of(&env, "bulkhead", "b");
    assert_ne!(b2, b);
    wait_served(&env, "b", &b2);
    wait_served(&env, "c", &b);
    assert!(reaches(&env, "a", &format!("http://{b2}/")), "the rule did not follow b");
    assert!(
        !fetch(&env, "a", &format!("http://{b}/")).0,
        "the rule stayed with b's old address (now c's)"
    );

    // deny takes it back.
    let out = env.ok(&["network", "deny", "a", "b:80"]);
    assert!(out.contains("removed"), "{out}");
    assert!(!fetch(&env, "a", &format!("http://{b2}/")).0, "a still reaches b after deny");

    // Labels, and rules made with a container, which go with it.
    env.ok(&["run", "-d", "--name", "d", "--label", "app=web", img, "sh", "-c", two]);
    let d = ip_of(&env, "bulkhead", "d");
    wait_served(&env, "d", &d);
    env.ok(&["network", "allow", "a", "app=web:81"]);
    assert!(
        reaches(&env, "a", &format!("http://{d}:81/")),
        "a label rule did not open a -> d:81"
    );
    env.ok(&["run", "-d", "--name", "e", "--allow-to", "d:80", img, "sh", "-c", two]);
    assert!(reaches(&env, "e", &format!("http://{d}/")), "--allow-to did not open e -> d:80");
    let listed = env.ok(&["network", "rules"]);
    assert!(listed.contains("run e --allow-to d:80"), "{listed}");
    env.ok(&["rm", "-f", "e"]);
    let listed = env.ok(&["network", "rules"]);
    assert!(!listed.contains("run e"), "the container's rule outlived it: {listed}");

    // A way out can be denied.
    env.ok(&["network", "deny", "d", "outside"]);
    let rules = env.ok(&["network", "rules"]);
    assert!(rules.contains("deny d -> outside"), "{rules}");
    let bad = env.fails(&["network", "allow", "a", "nobody:99999"]);
    assert!(bad.contains("port"), "{bad}");
    let bad = env.fails(&["network", "allow", "outside", "a"]);
    assert!(bad.contains("published ports"), "{bad}");
}

/// GET / from `addr` ("ip:port") with a short timeout; the body, if any answer came.
fn http_get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn http_get_eventually(addr: &str) -> Option<String> {
    for _ in 0..50 {
        if let Some(a) = http_get(addr).filter(|a| a.contains("200 OK")) {
            return Some(a);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn published_ports_answer_on_loopback_and_to_other_hosts() {
    let env = Env::new();
    let img = image(&env);
    let outside = Outside::new(2);
    let serve = "httpd -f -p 80 -h /www";
    // An image that EXPOSEs 80, for -P.
    let layout = env.path("exposed");
    umoci_image(
        &layout,
        &[&|r: &std::path::Path| {
            busybox_rootfs(r);
            std::os::unix::fs::symlink("busybox", r.join("bin/httpd")).unwrap();
            std::fs::create_dir_all(r.join("www")).unwrap();
            std::fs::write(r.join("www/index.html"), "exposed\n").unwrap();
        }],
    );
    sh(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{}:t", layout.display()),
        "--config.exposedports",
        "80/tcp",
    ]));
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "exposed"]);

    env.ok(&["run", "-d", "--name", "w1", "-p", "127.0.0.1:18080:80", img, "sh", "-c", serve]);
    let got = http_get_eventually("127.0.0.1:18080").expect("no answer on 127.0.0.1:18080");
    assert!(got.contains("hello"), "{got}");
    assert_eq!(env.ok(&["port", "w1"]).trim(), "80/tcp -> 127.0.0.1:18080");
    // Bound to 127.0.0.1: not on the host's other addresses.
    assert!(
        http_get("198.19.2.1:18080").is_none(),
        "published on 127.0.0.1 only, reached elsewhere"
    );

    // On every address: from the host and from another host.
    env.ok(&["run", "-d", "--name", "w2", "-p", "18081:80", img, "sh", "-c", serve]);
    assert!(http_get_eventually("127.0.0.1:18081").is_some_and(|g| g.contains("hello")));
    let o = Command::new("ip")
        .args(["netns", "exec", &outside.ns, "python3", "-c"])
        .arg("import urllib.request as u; print(u.urlopen('http://198.19.2.1:18081/', timeout=5).read().decode())")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("hello"),
        "another host could not reach the published port: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The same host port twice is refused, with a reason.
    let err = env.fails(&["run", "-d", "--name", "w2b", "-p", "18081:80", img, "sh", "-c", serve]);
    assert!(err.contains("18081/tcp is already published"), "{err}");

    // -P: every exposed port on a free one, as `port` says.
    env.ok(&[
        "run", "-d", "--name", "w3", "-P", "exposed", "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    let line = env.ok(&["port", "w3"]);
    let host_port = line.trim().rsplit(':').next().unwrap().to_owned();
    assert!(line.starts_with("80/tcp -> 0.0.0.0:"), "{line}");
    let got = http_get_eventually(&format!("127.0.0.1:{host_port}")).expect("-P port does not answer");
    assert!(got.contains("exposed"), "{got}");
    // An image never picks the host's side: an exposed key with an address and a host port
    // is refused, nothing published.
    sh(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{}:t", layout.display()),
        "--config.exposedports",
        "127.0.0.1:15432:5432/tcp",
    ]));
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "greedy"]);
    let err = env.fails(&["run", "-d", "--name", "g", "-P", "greedy", "httpd", "-f", "-p", "80", "-h", "/www"]);
    assert!(err.contains("not PORT[/tcp|udp]"), "{err}");

    // A container reaches published ports through the host, its own included (hairpin).
    env.ok(&["run", "-d", "--name", "w4", "-p", "18082:80", img, "sh", "-c", serve]);
    let gw = {
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", "bulkhead"])).unwrap();
        v[0]["gateway"].as_str().unwrap().to_owned()
    };
    assert!(
        reaches(&env, "w4", &format!("http://{gw}:18082/")),
        "w4 cannot reach its own published port"
    );
    assert!(
        reaches(&env, "w1", &format!("http://{gw}:18082/")),
        "w1 cannot reach w4's published port"
    );
    env.ok(&["rm", "-f", "w4"]);

    // Bad specs are one line each.
    for bad in ["70000:80", "80/sctp", "x:80"] {
        let err = env.fails(&["create", "-p", bad, img]);
        assert!(err.lines().count() == 1 && err.contains(bad), "{err}");
    }
    env.ok(&["rm", "-f", "w1", "w2", "w3"]);
    assert!(http_get("127.0.0.1:18081").is_none(), "the published port outlived its container");
}

/// Whether `name` resolves inside container `c`, and to what.
fn resolve(env: &Env, c: &str, name: &str) -> Option<String> {
    let o = env.run_bounded(20, &["exec", c, "timeout", "-s", "KILL", "3", "nslookup", name]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return None;
    }
    // busybox: "Name: b\nAddress: 198.18.x.y" after the server's lines.
    out.split("Name:")
        .nth(1)?
        .lines()
        .find_map(|l| l.trim().strip_prefix("Address:").map(|a| a.trim().to_owned()))
}

#[test]
fn names_on_a_user_network_follow_the_containers() {
    let env = Env::new();
    let rootfs = env.path("rootfs");
    let img = image(&env);
    let _ = rootfs;
    env.ok(&["network", "create", "--subnet", "198.18.251.0/24", "app"]);
    let serve = "httpd -f -p 80 -h /www";
    env.ok(&["run", "-d", "--name", "a", "--network", "app", img, "sh", "-c", serve]);
    // b starts after a: a still finds it, by name and by alias.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "b",
        "--network",
        "app",
        "--network-alias",
        "db",
        img,
        "sh",
        "-c",
        serve,
    ]);
    let b = ip_of(&env, "app", "b");
    let resolv = env.ok(&["exec", "a", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 198.18.251.1"), "{resolv}");
    let mut found = None;
    for _ in 0..30 {
        found = resolve(&env, "a", "b");
        if found.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(found.as_deref(), Some(b.as_str()), "a does not resolve b");
    assert_eq!(resolve(&env, "a", "db").as_deref(), Some(b.as_str()), "the alias does not resolve");
    // A name is not a permission: the connection still needs a rule.
    assert!(!fetch(&env, "a", "http://b/").0, "a reached b by name without a rule");
    env.ok(&["network", "allow", "a", "db:80"]);
    assert!(reaches(&env, "a", "http://b/"), "a cannot reach b by name after the rule");
    // Gone with the container, back with it.
    env.ok(&["stop", "-t", "1", "b"]);
    assert_eq!(resolve(&env, "a", "b"), None, "b's name outlived it");
    env.ok(&["start", "b"]);
    let b2 = ip_of(&env, "app", "b");
    let mut again = None;
    for _ in 0..30 {
        again = resolve(&env, "a", "b");
        if again.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(again.as_deref(), Some(b2.as_str()), "b's name did not come back with it");
    // Names never cross networks: the default network has none, and app's are app's.
    env.ok(&["run", "-d", "--name", "c", img, "sh", "-c", serve]);
    assert_eq!(resolve(&env, "c", "b"), None, "a container on another network resolved b");
    // A network made with --disable-dns has no names, and its containers ask the host's
    // resolvers.
    env.ok(&["network", "create", "--disable-dns", "--subnet", "198.18.239.0/24", "quiet"]);
    for n in ["d", "e"] {
        env.ok(&["run", "-d", "--name", n, "--network", "quiet", img, "sh", "-c", serve]);
    }
    let resolv = env.ok(&["exec", "d", "cat", "/etc/resolv.conf"]);
    assert!(!resolv.contains("198.18.239.1"), "{resolv}");
    assert_eq!(resolve(&env, "d", "e"), None, "names on a network without them");
    assert!(!env.root().join("networks/dns/quiet").exists());
    env.ok(&["rm", "-f", "d", "e"]);
    // The resolver is there only while containers need it.
    let pid_file = env.root().join("networks/dns/aardvark.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    eprintln!("aardvark-dns {}", rss.lines().find(|l| l.starts_with("VmRSS")).unwrap_or(""));
    env.ok(&["rm", "-f", "a", "b"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|s| s.contains(") Z ")),
        "the resolver outlived the last container of its network"
    );
    env.ok(&["rm", "-f", "c"]);
}

#[test]
fn a_container_killed_with_its_shim_leaves_nothing_after_repair() {
    let env = Env::new();
    let img = image(&env);
    env.ok(&["network", "create", "--subnet", "198.18.252.0/24", "crash"]);
    let serve = "httpd -f -p 80 -h /www";
    env.ok(&["run", "-d", "--name", "a", "--network", "crash", img, "sh", "-c", serve]);
    env.ok(&[
        "run",
        "-d",
        "--name",
        "v",
        "--network",
        "crash",
        "--allow-to",
        "a:80",
        img,
        "sh",
        "-c",
        serve,
    ]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", "crash"])).unwrap();
    let lease = v[0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "v")
        .unwrap()
        .clone();
    let (host_if, pid) = (lease["host_if"].as_str().unwrap().to_owned(), lease["pid"].as_i64().unwrap());
    // kill -9 the shim first (nothing will record the exit), then the container.
    let rec: serde_json::Value = serde_json::from_str(&env.ok(&["--format", "json", "ps", "-a"])).unwrap();
    let shim = rec.as_array().unwrap().iter().find(|r| r["name"] == "v").unwrap()["shim_pid"]
        .as_i64()
        .unwrap();
    unsafe {
        libc::kill(shim as i32, libc::SIGKILL);
        libc::kill(pid as i32, libc::SIGKILL);
    }
    for _ in 0..50 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let check = env.run(&["system", "check"]);
    let out = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(out.contains("network crash: v") && out.contains("is not running"), "{out}");
    // The dead container's name is still served until the repair.
    let dns_file = env.root().join("networks/dns/crash");
    assert!(std::fs::read_to_string(&dns_file).unwrap().contains(" v,"));
    env.ok(&["system", "check", "--repair"]);
    let links = String::from_utf8(Command::new("ip").args(["-br", "link"]).output().unwrap().stdout).unwrap();
    assert!(!links.contains(&host_if), "{host_if} is left: {links}");
    assert!(
        !std::fs::read_to_string(&dns_file).unwrap().contains(" v,"),
        "v's name outlived the repair"
    );
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", "crash"])).unwrap();
    assert_eq!(v[0]["containers"].as_array().unwrap().len(), 1, "{v:#}");
    // Removing the dead container takes its rule; a second check finds nothing.
    env.ok(&["rm", "-f", "v"]);
    assert!(!env.ok(&["network", "rules"]).contains("run v"));
    let again = env.ok(&["system", "check"]);
    assert!(!again.contains("network"), "{again}");
    // A flushed table (a host firewall reload) is put back by the next start, and by repair.
    let table = table_of(&env);
    sh(Command::new("nft").args(["delete", "table", "inet", &table]));
    assert!(
        env.run(&["system", "check"]).stdout.starts_with(b"the nftables table"),
        "a missing table is not noticed"
    );
    env.ok(&["run", "-d", "--name", "w", "--network", "crash", img, "sh", "-c", serve]);
    assert!(Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .unwrap()
        .status
        .success());
    // Emptied sets are noticed too (the digest alone would not see them), by check and by a start.
    sh(Command::new("nft").args(["flush", "set", "inet", &table, "bridges"]));
    assert!(
        env.run(&["system", "check"]).stdout.starts_with(b"the nftables table"),
        "an emptied set is not noticed"
    );
    env.ok(&["run", "-d", "--name", "w2", "--network", "crash", img, "sh", "-c", serve]);
    let bridges = String::from_utf8(
        Command::new("nft")
            .args(["list", "set", "inet", &table, "bridges"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(bridges.contains("elements"), "the next start did not put the set back: {bridges}");
    // The ports' sets emptied by someone else: every port drops its frames (fail closed), and it
    // is noticed.
    let a_ip = ip_of(&env, "crash", "a");
    env.ok(&["network", "allow", "w", "a:80"]);
    assert!(reaches(&env, "w", &format!("http://{a_ip}/")));
    sh(Command::new("nft").args(["flush", "set", "bridge", &table, "own4"]));
    assert!(
        !fetch(&env, "w", &format!("http://{a_ip}/")).0,
        "an emptied port set let its container's traffic through"
    );
    assert!(
        env.run(&["system", "check"]).stdout.starts_with(b"the nftables table"),
        "an emptied port set is not noticed"
    );
    env.ok(&["system", "check", "--repair"]);
    assert!(reaches(&env, "w", &format!("http://{a_ip}/")), "repair did not restore the port");
    env.ok(&["rm", "-f", "a", "w", "w2"]);
}

fn lease_of(env: &Env, network: &str, container: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", network])).unwrap();
    v[0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == container)
        .cloned()
        .unwrap_or_else(|| panic!("{container} not on {network}"))
}

#[test]
fn raw_frames_cannot_spoof_tag_or_reach_loopback_and_names_stay_on_their_network() {
    let env = Env::new();
    busybox_image(&env, "raw", &["sleep", "timeout", "nslookup", "httpd", "wget"], true);
    env.ok(&["network", "create", "--subnet", "198.18.253.0/24", "lan"]);
    env.ok(&["network", "create", "--subnet", "198.18.254.0/24", "lan2"]);
    env.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "lan",
        "raw",
        "sh",
        "-c",
        "frames listen 5000 120 > /tmp/got",
    ]);
    env.ok(&[
        "run",
        "-d",
        "--name",
        "client",
        "--network",
        "lan",
        "--cap-add",
        "NET_RAW",
        "raw",
        "sleep",
        "1000",
    ]);
    env.ok(&[
        "run",
        "-d",
        "--name",
        "attacker",
        "--network",
        "lan",
        "--cap-add",
        "NET_RAW",
        "raw",
        "sleep",
        "1000",
    ]);
    env.ok(&["network", "allow", "client", "web:5000/udp"]);
    let (web, client, attacker) = (
        lease_of(&env, "lan", "web"),
        lease_of(&env, "lan", "client"),
        lease_of(&env, "lan", "attacker"),
    );
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap().to_owned();
    let bridge = {
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", "lan"])).unwrap();
        v[0]["bridge"].as_str().unwrap().to_owned()
    };
    let bridge_mac = std::fs::read_to_string(format!("/sys/class/net/{bridge}/address"))
        .unwrap()
        .trim()
        .to_owned();
    let send = |who: &str, dst_mac: &str, src_mac: &str, src: &str, dst: &str, port: &str, what: &str, vlan: Option<&str>| {
        let mut args = vec!["exec", who, "frames", "send", "eth0", dst_mac, src_mac, src, dst, port, what];
        args.extend(vlan);
        let o = env.run(&args);
        assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    };
    // A host service on loopback that no container may reach.
    let host = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let host_port = host.local_addr().unwrap().port().to_string();
    std::thread::sleep(Duration::from_millis(500));

    // What the rule allows, from the container it names, with its own addresses, arrives.
    send(
        "client",
        &s(&web, "mac"),
        &s(&client, "mac"),
        &s(&client, "ip"),
        &s(&web, "ip"),
        "5000",
        "LEGIT",
        None,
    );
    // The attacker, with NET_RAW: as itself without a rule, VLAN-0-tagged, as the client (address,
    // then address and MAC), and to the host's loopback through the bridge.
    send(
        "attacker",
        &s(&web, "mac"),
        &s(&attacker, "mac"),
        &s(&attacker, "ip"),
        &s(&web, "ip"),
        "5000",
        "PLAIN",
        None,
    );
    send(
        "attacker",
        &s(&web, "mac"),
        &s(&attacker, "mac"),
        &s(&attacker, "ip"),
        &s(&web, "ip"),
        "5000",
        "VLAN0",
        Some("0"),
    );
    send(
        "attacker",
        &s(&web, "mac"),
        &s(&attacker, "mac"),
        &s(&client, "ip"),
        &s(&web, "ip"),
        "5000",
        "SPOOF-IP",
        None,
    );
    send(
        "attacker",
        &s(&web, "mac"),
        &s(&client, "mac"),
        &s(&client, "ip"),
        &s(&web, "ip"),
        "5000",
        "SPOOF-MAC",
        None,
    );
    send(
        "attacker",
        &s(&web, "mac"),
        &s(&client, "mac"),
        &s(&client, "ip"),
        &s(&web, "ip"),
        "5000",
        "SPOOF-VLAN",
        Some("0"),
    );
    send(
        "attacker",
        &bridge_mac,
        &s(&attacker, "mac"),
        &s(&attacker, "ip"),
        "127.0.0.1",
        &host_port,
        "LOOPBACK",
        None,
    );
    send(
        "attacker",
        &bridge_mac,
        &s(&attacker, "mac"),
        &s(&attacker, "ip"),
        "127.0.0.1",
        &host_port,
        "LOOPBACK-VLAN",
        Some("0"),
    );
    std::thread::sleep(Duration::from_millis(700));
    let got = env.ok(&["exec", "web", "cat", "/tmp/got"]);
    assert!(got.contains("LEGIT"), "the allowed datagram did not arrive: {got:?}");
    for bad in ["PLAIN", "VLAN0", "SPOOF-IP", "SPOOF-MAC", "SPOOF-VLAN"] {
        assert!(!got.contains(bad), "{bad} reached web: {got:?}");
    }
    let mut buf = [0u8; 64];
    assert!(host.recv(&mut buf).is_err(), "a container reached the host's loopback");

    // Names stay on their network: a container on lan2 asking lan's resolver gets nothing.
    env.ok(&["run", "-d", "--name", "other", "--network", "lan2", "raw", "sleep", "1000"]);
    let o = env.run_bounded(
        20,
        &["exec", "other", "timeout", "-s", "KILL", "3", "nslookup", "web", "198.18.253.1"],
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains(&s(&web, "ip")),
        "lan's names answered lan2"
    );
    // No alias takes another container's name (and its rules and answers).
    let err = env.fails(&[
        "run",
        "-d",
        "--name",
        "evil",
        "--network",
        "lan",
        "--network-alias",
        "web",
        "raw",
        "sleep",
        "1",
    ]);
    assert!(err.contains("--network-alias web"), "{err}");
    // A port-specific deny inside a wider allow closes that port.
    env.ok(&["network", "allow", "attacker", "web"]);
    env.ok(&["network", "deny", "attacker", "web:5000/udp"]);
    send(
        "attacker",
        &s(&web, "mac"),
        &s(&attacker, "mac"),
        &s(&attacker, "ip"),
        &s(&web, "ip"),
        "5000",
        "DENIED-PORT",
        None,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !env.ok(&["exec", "web", "cat", "/tmp/got"]).contains("DENIED-PORT"),
        "a deny inside an allow did nothing"
    );
    env.ok(&["rm", "-f", "web", "client", "attacker", "other"]);
}

#[test]
fn connect_disconnect_and_prune() {
    let env = Env::new();
    let img = image(&env);
    env.ok(&["network", "create", "--subnet", "198.18.245.0/24", "n1"]);
    env.ok(&["network", "create", "--subnet", "198.18.246.0/24", "n2"]);
    env.ok(&["network", "create", "--subnet", "198.18.247.0/24", "unused"]);
    let serve = "httpd -f -p 80 -h /www";
    env.ok(&["run", "-d", "--name", "a", "--network", "n1", img, "sh", "-c", serve]);
    env.ok(&["run", "-d", "--name", "b", "--network", "n2", img, "sh", "-c", serve]);
    let b = ip_of(&env, "n2", "b");
    wait_served(&env, "b", &b);
    env.ok(&["network", "allow", "a", "b:80"]);
    assert!(!fetch(&env, "a", &format!("http://{b}/")).0, "a reached b across networks");
    // Joined while running: a second interface, the network's names, the rule applies there.
    env.ok(&["network", "connect", "n2", "a"]);
    let a2 = ip_of(&env, "n2", "a");
    assert!(a2.starts_with("198.18.246."), "{a2}");
    let addrs = env.ok(&["exec", "a", "ip", "-4", "addr"]);
    assert!(addrs.contains("eth1") && addrs.contains(&a2), "{addrs}");
    assert!(reaches(&env, "a", "http://b/"), "a cannot reach b by name once on n2");
    let err = env.fails(&["network", "connect", "n2", "a"]);
    assert!(err.contains("already"), "{err}");
    // A name is checked on the network joined: an alias taken there is refused.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "twin",
        "--network",
        "n1",
        "--network-alias",
        "b",
        img,
        "sleep",
        "100",
    ]);
    let err = env.fails(&["network", "connect", "n2", "twin"]);
    assert!(err.contains("--network-alias b: the name of container b already"), "{err}");
    env.ok(&["rm", "-f", "twin"]);
    // Prune keeps what a container uses (running or not).
    let pruned = env.ok(&["network", "prune"]);
    assert_eq!(pruned.trim(), "unused");
    // Left while running: gone at once, and at the next start.
    env.ok(&["network", "disconnect", "n2", "a"]);
    assert!(!fetch(&env, "a", &format!("http://{b}/")).0, "a still reaches b after leaving n2");
    assert!(!env.ok(&["exec", "a", "ip", "-4", "addr"]).contains("eth1"));
    env.ok(&["stop", "-t", "1", "a"]);
    env.ok(&["start", "a"]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", "n2"])).unwrap();
    assert!(v[0]["containers"].as_array().unwrap().iter().all(|l| l["name"] != "a"), "{v:#}");
    let err = env.fails(&["network", "disconnect", "n1", "a"]);
    assert!(err.contains("first"), "{err}");
    // --ip: that address, at every start; taken or outside the subnet: refused in one line.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "s",
        "--network",
        "n1",
        "--ip",
        "198.18.245.50",
        img,
        "sh",
        "-c",
        serve,
    ]);
    assert_eq!(ip_of(&env, "n1", "s"), "198.18.245.50");
    let err = env.fails(&[
        "run",
        "-d",
        "--name",
        "s2",
        "--network",
        "n1",
        "--ip",
        "198.18.245.50",
        img,
        "sh",
        "-c",
        serve,
    ]);
    assert!(err.contains("container s has it"), "{err}");
    let err = env.fails(&[
        "run",
        "-d",
        "--name",
        "s3",
        "--network",
        "n1",
        "--ip",
        "198.18.9.9",
        img,
        "sh",
        "-c",
        serve,
    ]);
    assert!(err.contains("not a host address"), "{err}");
    env.ok(&["rm", "-f", "a", "b", "s", "s2", "s3"]);
}

#[test]
fn a_rule_taken_back_cuts_the_connection_it_allowed() {
    let env = Env::new();
    let img = image(&env);
    env.ok(&["network", "create", "--subnet", "198.18.244.0/24", "cut"]);
    env.ok(&[
        "run",
        "-d",
        "--name",
        "b",
        "--network",
        "cut",
        img,
        "sh",
        "-c",
        "sleep 1000 | nc -l -p 7000 > /tmp/in",
    ]);
    let b = ip_of(&env, "cut", "b");
    env.ok(&["network", "allow", "a", "b:7000"]);
    let stream = format!("while true; do echo tick; sleep 0.2; done | nc {b} 7000");
    env.ok(&["run", "-d", "--name", "a", "--network", "cut", img, "sh", "-c", &stream]);
    let ticks = || {
        env.ok(&["exec", "b", "wc", "-l", "/tmp/in"])
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let mut n = 0;
    for _ in 0..50 {
        n = ticks();
        if n >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(n >= 3, "the allowed stream never flowed ({n} lines)");
    // Taken back: the connection already open stops too, not only new ones.
    env.ok(&["network", "deny", "a", "b:7000"]);
    std::thread::sleep(Duration::from_millis(500));
    let after = ticks();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        ticks(),
        after,
        "the established connection kept flowing after its rule was taken back"
    );
    env.ok(&["rm", "-f", "a", "b"]);
}

#[test]
fn a_noisy_container_does_not_crowd_others_out_of_the_events() {
    let env = Env::new();
    busybox_image(&env, "noise", &["sleep", "timeout", "wget", "httpd"], true);
    env.ok(&["network", "create", "--subnet", "198.18.243.0/24", "loud"]);
    env.ok(&["run", "-d", "--name", "target", "--network", "loud", "noise", "sleep", "1000"]);
    let t = lease_of(&env, "loud", "target");
    env.ok(&[
        "run",
        "-d",
        "--name",
        "noisy",
        "--network",
        "loud",
        "--cap-add",
        "NET_RAW",
        "noise",
        "sleep",
        "1000",
    ]);
    let n = lease_of(&env, "loud", "noisy");
    let script = format!(
        "frames flood eth0 {} {} {} {} 9 6",
        t["mac"].as_str().unwrap(),
        n["mac"].as_str().unwrap(),
        n["ip"].as_str().unwrap(),
        t["ip"].as_str().unwrap()
    );
    let mut flooder = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--root")
        .arg(env.root())
        .arg("--config")
        .arg(env.path("config"))
        .args(["exec", "noisy", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // A quiet container's one refused attempt, in the middle of the flood.
    env.ok(&["run", "-d", "--name", "quiet", "--network", "loud", "noise", "sleep", "1000"]);
    let _ = env.run_bounded(
        20,
        &[
            "exec",
            "quiet",
            "timeout",
            "-s",
            "KILL",
            "2",
            "wget",
            "-qO-",
            &format!("http://{}:82/", t["ip"].as_str().unwrap()),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = flooder.kill();
    let _ = flooder.wait();
    let events = env.ok(&["network", "events"]);
    let parsed: Vec<serde_json::Value> = events.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let noisy = parsed.iter().filter(|e| e["from"]["owner"]["container"] == "noisy").count();
    assert!(noisy > 0, "the flood was not logged at all");
    assert!(
        parsed
            .iter()
            .any(|e| e["from"]["owner"]["container"] == "quiet" && e["to"]["port"] == 82),
        "the quiet container's denial was crowded out ({noisy} of the noisy one's logged)"
    );
    env.ok(&["rm", "-f", "noisy", "quiet", "target"]);
}

#[test]
fn icmp_errors_pass_only_between_the_two_ends_of_an_allowed_connection() {
    let env = Env::new();
    busybox_image(&env, "icmp", &["sleep"], true);
    env.ok(&["network", "create", "--subnet", "198.18.242.0/24", "err"]);
    for n in ["x", "z", "y"] {
        env.ok(&[
            "run",
            "-d",
            "--name",
            n,
            "--network",
            "err",
            "--cap-add",
            "NET_RAW",
            "icmp",
            "sh",
            "-c",
            "frames icmplisten 30 > /tmp/icmp",
        ]);
    }
    let (x, z, y) = (lease_of(&env, "err", "x"), lease_of(&env, "err", "z"), lease_of(&env, "err", "y"));
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap().to_owned();
    env.ok(&["network", "allow", "x", "z:9999/udp"]);
    // x's datagram to z:9999 (source port 40000) makes the connection the errors will name.
    let o = env.run(&[
        "exec",
        "x",
        "frames",
        "send",
        "eth0",
        &s(&z, "mac"),
        &s(&x, "mac"),
        &s(&x, "ip"),
        &s(&z, "ip"),
        "9999",
        "hello",
    ]);
    assert!(o.status.success());
    std::thread::sleep(Duration::from_millis(300));
    let icmp = |from: &serde_json::Value, who: &str, what: &str| {
        let o = env.run(&[
            "exec",
            who,
            "frames",
            "icmp",
            "eth0",
            &s(&x, "mac"),
            &s(from, "mac"),
            &s(from, "ip"),
            &s(&x, "ip"),
            &s(&x, "ip"),
            &s(&z, "ip"),
            "40000",
            "9999",
            what,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // z's own port-unreachable for it reaches x; y's forged one, naming the same connection, not.
    icmp(&z, "z", "FROM-Z");
    icmp(&y, "y", "FROM-Y");
    std::thread::sleep(Duration::from_millis(700));
    let got = env.ok(&["exec", "x", "cat", "/tmp/icmp"]);
    assert!(got.contains("FROM-Z"), "the error of an allowed connection was dropped: {got:?}");
    assert!(!got.contains("FROM-Y"), "a third container's forged error passed: {got:?}");
    env.ok(&["rm", "-f", "x", "y", "z"]);
}

/// The host's first global IPv6 address (from /proc/net/if_inet6), not on a bridge.
fn host_global6() -> Option<String> {
    let t = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    t.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 6 && f[3] == "00" && f[5] != "lo" && !f[5].starts_with("bh") && !f[5].starts_with("xto"))
            .then(|| std::net::Ipv6Addr::from(u128::from_str_radix(f[0], 16).unwrap()).to_string())
    })
}

#[test]
fn ipv6_is_isolated_pinned_and_routed_like_ipv4() {
    if !bulkhead_network::host_has_ipv6() {
        eprintln!("skipped: this host has no IPv6 (disabled, or no address beyond link-local)");
        return;
    }
    let env = Env::new();
    busybox_image(&env, "v6", &["sleep", "timeout", "nslookup", "httpd", "wget", "ip"], true);
    let outside = Outside::new(7);
    env.ok(&["network", "create", "--ipv6", "--subnet", "198.18.240.0/24", "lan6"]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", "lan6"])).unwrap();
    let subnet6 = v[0]["subnet6"].as_str().unwrap().to_owned();
    assert!(subnet6.starts_with("fd") && subnet6.ends_with("::/64"), "{v:#}");
    // The default network has IPv6 too, as the host does.
    env.ok(&["run", "--rm", "v6", "sh", "-c", ":"]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", "bulkhead"])).unwrap();
    assert!(v[0]["subnet6"].is_string(), "{v:#}");

    let serve = "httpd -p 80 -h /www; frames listen 5000 120 > /tmp/got";
    env.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "lan6",
        "-p",
        "18096:80",
        "v6",
        "sh",
        "-c",
        serve,
    ]);
    for c in ["client", "attacker"] {
        env.ok(&[
            "run",
            "-d",
            "--name",
            c,
            "--network",
            "lan6",
            "--cap-add",
            "NET_RAW",
            "v6",
            "sleep",
            "1000",
        ]);
    }
    let lease = |c: &str| lease_of(&env, "lan6", c);
    let (web, client, attacker) = (lease("web"), lease("client"), lease("attacker"));
    let ip6 = |l: &serde_json::Value| l["ip6"].as_str().unwrap_or_else(|| panic!("no ip6: {l:#}")).to_owned();
    let (web6, client6, attacker6) = (ip6(&web), ip6(&client), ip6(&attacker));
    let mac = |l: &serde_json::Value| l["mac"].as_str().unwrap().to_owned();

    // From inside: its address on eth0, its name files, names resolve to both families.
    let o = env.ok(&["exec", "web", "ip", "-6", "addr", "show", "eth0"]);
    assert!(o.contains(&format!("{web6}/64")), "{o}");
    assert!(env.ok(&["exec", "web", "cat", "/etc/hosts"]).contains(&web6));
    let o = env.ok(&["exec", "client", "timeout", "-s", "KILL", "5", "nslookup", "web"]);
    assert!(o.contains(&web6), "{o}");

    // Denied without a rule (and logged with both ends), allowed by one, denied again.
    let url = format!("http://[{web6}]/");
    assert!(!fetch(&env, "client", &url).0, "client reached web over IPv6 without a rule");
    let events = env.ok(&["network", "events"]);
    assert!(
        events
            .lines()
            .any(|l| l.contains(&format!("\"ip\":\"{client6}\"")) && l.contains(&format!("\"ip\":\"{web6}\""))),
        "{events}"
    );
    env.ok(&["network", "allow", "client", "web:80"]);
    let (ok, text) = fetch(&env, "client", &url);
    assert!(ok && text.contains("hello"), "{text}");
    assert!(!fetch(&env, "attacker", &url).0, "the rule let a third container in");
    env.ok(&["network", "deny", "client", "web:80"]);
    assert!(!fetch(&env, "client", &url).0, "a deny did not take the rule back");

    // Out through NAT66; a published port answers on the host's IPv6 addresses and to other
    // hosts.
    let (ok, text) = fetch(&env, "client", &format!("http://[{}]:8080/", outside.addr6));
    assert!(ok && text.contains("outside"), "{text}");
    if let Some(h) = host_global6() {
        let r = http_get_eventually(&format!("[{h}]:18096")).unwrap_or_default();
        assert!(r.ends_with("\r\n\r\nhello\n"), "via {h}: {r}");
    }
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &outside.ns,
            "busybox",
            "timeout",
            "-s",
            "KILL",
            "5",
            "busybox",
            "wget",
            "-qO-",
        ])
        .arg(format!("http://[{}]:18096/", outside.host6))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Spoofing over IPv6. An allowed UDP flow, client -> web:5000; the attacker forges client's
    // address (with its own MAC, then with client's): web gets only the real one.
    env.ok(&["network", "allow", "client", "web:5000/udp"]);
    let send = |c: &str, smac: &str, src: &str, payload: &str| {
        env.ok(&["exec", c, "frames", "send6", "eth0", &mac(&web), smac, src, &web6, "5000", payload]);
    };
    send("client", &mac(&client), &client6, "legit");
    send("attacker", &mac(&attacker), &client6, "forged-address");
    send("attacker", &mac(&client), &client6, "forged-both");
    std::thread::sleep(Duration::from_millis(500));
    let got = env.ok(&["exec", "web", "cat", "/tmp/got"]);
    assert!(got.contains("legit") && !got.contains("forged"), "{got}");

    // A neighbour advertisement claiming client's address for the attacker's MAC: web keeps
    // client's. (web learns client's MAC first: its SYN is dropped, the neighbour lookup is not.)
    let _ = fetch(&env, "web", &format!("http://[{client6}]/"));
    let neigh = |c: &str| env.ok(&["exec", c, "ip", "-6", "neigh", "show"]);
    let before = neigh("web");
    assert!(before.contains(&mac(&client)), "web never learnt client's MAC: {before}");
    env.ok(&[
        "exec",
        "attacker",
        "frames",
        "na",
        "eth0",
        &mac(&web),
        &mac(&attacker),
        &attacker6,
        &web6,
        &client6,
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let after = neigh("web");
    let line = after
        .lines()
        .find(|l| l.starts_with(&format!("{client6} ")))
        .unwrap_or_default()
        .to_owned();
    assert!(
        !line.contains(&mac(&attacker)),
        "the forged advertisement took client's address: {after}"
    );

    // A router advertisement from a container: nobody takes its prefix or its route (two layers
    // stop it: its port drops router advertisements, and between containers only neighbour
    // solicitations and advertisements pass without a rule).
    let ll = env.ok(&["exec", "attacker", "ip", "-6", "addr", "show", "eth0"]);
    let attacker_ll = ll
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fe80::").map(|r| format!("fe80::{}", r.split('/').next().unwrap())))
        .unwrap_or_else(|| panic!("no link-local address: {ll}"));
    env.ok(&["exec", "attacker", "frames", "ra", "eth0", &mac(&attacker), &attacker_ll]);
    std::thread::sleep(Duration::from_millis(500));
    for c in ["web", "client"] {
        let addrs = env.ok(&["exec", c, "ip", "-6", "addr"]);
        let routes = env.ok(&["exec", c, "ip", "-6", "route"]);
        assert!(
            !addrs.contains("2001:db8:bad") && !routes.contains("2001:db8:bad"),
            "{c}: {addrs}{routes}"
        );
        assert!(!routes.contains(&attacker_ll), "{c} routes through the attacker: {routes}");
    }

    // An internal network with IPv6 has no way out either.
    env.ok(&["network", "create", "--internal", "--ipv6", "--subnet", "198.18.241.0/24", "in6"]);
    env.ok(&["run", "-d", "--name", "inner", "--network", "in6", "v6", "sleep", "1000"]);
    let (ok, text) = fetch(&env, "inner", &format!("http://[{}]:8080/", outside.addr6));
    assert!(!ok, "an internal network reached the outside over IPv6: {text}");

    env.ok(&["rm", "-f", "web", "client", "attacker", "inner"]);
    env.ok(&["network", "rm", "lan6", "in6", "bulkhead"]);
    let routes = String::from_utf8(Command::new("ip").args(["-6", "route"]).output().unwrap().stdout).unwrap();
    assert!(!routes.contains(subnet6.trim_end_matches("/64")), "{routes}");
}

/// The store's tables' name (see bulkhead_network::Networks::table).
fn table_of(env: &Env) -> String {
    let h = sha2::Sha256::digest([env.root().to_string_lossy().as_bytes(), &[0]].concat());
    format!("bulkhead_{}", &hex(&h)[..8])
}

#[test]
fn elements_of_dead_ports_are_swept_and_a_restart_keeps_no_old_address() {
    let env = Env::new();
    let img = busybox_image(&env, "sweep", &["sleep"], false);
    env.ok(&["network", "create", "--subnet", "198.18.238.0/24", "churn"]);
    let own4 = || {
        let o = Command::new("nft")
            .args(["-j", "list", "set", "bridge", &table_of(&env), "own4"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["nftables"][1]["set"]["elem"].as_array().cloned().unwrap_or_default()
    };
    // A dead container's elements stay (deleting costs an RCU grace period), at most 64 of them.
    for _ in 0..70 {
        env.ok(&["run", "--rm", "--network", "churn", img, "sh", "-c", ":"]);
    }
    let n = own4().len();
    assert!((1..=65).contains(&n), "{n} elements after 70 short-lived containers");
    // A container restarted with another address keeps none of its old one.
    env.ok(&["run", "-d", "--name", "r", "--network", "churn", img, "sleep", "1000"]);
    env.ok(&["run", "-d", "--name", "s", "--network", "churn", img, "sleep", "1000"]);
    let before = lease_of(&env, "churn", "r");
    env.ok(&["stop", "-t", "1", "r"]);
    env.ok(&["stop", "-t", "1", "s"]);
    env.ok(&["start", "s"]);
    env.ok(&["start", "r"]);
    let after = lease_of(&env, "churn", "r");
    assert_ne!(before["ip"], after["ip"], "the test needs r to come back on another address");
    let host_if = after["host_if"].as_str().unwrap();
    let mine: Vec<String> = own4()
        .iter()
        .filter(|e| e["concat"][0] == host_if)
        .map(|e| e["concat"][2].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        mine,
        vec![after["ip"].as_str().unwrap().to_owned()],
        "r's port still pins its old address"
    );
    assert!(!env.ok(&["system", "check"]).contains("nftables"));
    env.ok(&["rm", "-f", "r", "s"]);
}

#[test]
fn link_local_frames_neither_reach_the_host_nor_teach_the_bridge() {
    let env = Env::new();
    let img = busybox_image(&env, "ll", &["sleep"], true);
    env.ok(&["network", "create", "--subnet", "198.18.236.0/24", "lan"]);
    env.ok(&["network", "create", "--internal", "--subnet", "198.18.235.0/24", "sealed"]);
    for (n, net) in [("victim", "lan"), ("attacker", "lan"), ("jailed", "sealed")] {
        env.ok(&[
            "run",
            "-d",
            "--name",
            n,
            "--network",
            net,
            "--cap-add",
            "NET_RAW",
            img,
            "sleep",
            "1000",
        ]);
    }
    let (victim, attacker, jailed) = (
        lease_of(&env, "lan", "victim"),
        lease_of(&env, "lan", "attacker"),
        lease_of(&env, "sealed", "jailed"),
    );
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap().to_owned();
    let lan: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", "lan"])).unwrap();
    let bridge = lan[0]["bridge"].as_str().unwrap().to_owned();
    let gw_mac = std::fs::read_to_string(format!("/sys/class/net/{bridge}/address"))
        .unwrap()
        .trim()
        .to_owned();
    // A UDP service of the host's, on all addresses.
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = sock.local_addr().unwrap().port().to_string();
    sock.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let received = || {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got
    };
    let send = |c: &str, dmac: &str, smac: &str, src: &str, dst: &str, payload: &str| {
        env.ok(&["exec", c, "frames", "send", "eth0", dmac, smac, src, dst, &port, payload]);
    };
    // Control: an ordinary frame to the gateway reaches the service (lan is not internal).
    send(
        "attacker",
        &gw_mac,
        &s(&attacker, "mac"),
        &s(&attacker, "ip"),
        "198.18.236.1",
        "control",
    );
    assert_eq!(received(), vec!["control".to_owned()], "the control datagram did not arrive");
    // From the internal network, to link-local group addresses the bridge keeps for itself
    // (they bypass the prerouting hook, and would be handed to the host on the port itself):
    // nothing arrives, forged source or not.
    for dmac in ["01:80:c2:00:00:03", "01:80:c2:00:00:0e", "01:80:c2:00:00:02"] {
        send(
            "jailed",
            dmac,
            &s(&jailed, "mac"),
            &s(&jailed, "ip"),
            "198.18.236.1",
            &format!("escape-{dmac}"),
        );
        send(
            "jailed",
            dmac,
            &s(&jailed, "mac"),
            "198.18.236.77",
            "198.18.236.1",
            &format!("forged-{dmac}"),
        );
    }
    let got = received();
    assert!(
        got.is_empty(),
        "link-local frames reached the host from an internal network: {got:?}"
    );
    // Nor does the bridge learn the victim's MAC behind the attacker's port from them.
    for dmac in ["01:80:c2:00:00:0e", "01:80:c2:00:00:03"] {
        send("attacker", dmac, &s(&victim, "mac"), &s(&victim, "ip"), "198.18.236.1", "poison");
    }
    let fdb = String::from_utf8(Command::new("bridge").args(["fdb", "show", "br", &bridge]).output().unwrap().stdout).unwrap();
    assert!(
        !fdb.lines()
            .any(|l| l.starts_with(&s(&victim, "mac")) && l.contains(&s(&attacker, "host_if"))),
        "the bridge learnt the victim's MAC behind the attacker's port: {fdb}"
    );
    env.ok(&["rm", "-f", "victim", "attacker", "jailed"]);
}

#[test]
fn a_released_address_takes_its_connections_with_it() {
    let env = Env::new();
    let img = busybox_image(&env, "flows", &["sleep"], true);
    let outside = Outside::new(5);
    env.ok(&["network", "create", "--subnet", "198.18.234.0/24", "reuse"]);
    let net: serde_json::Value = serde_json::from_str(&env.ok(&["network", "inspect", "reuse"])).unwrap();
    let gw_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", net[0]["bridge"].as_str().unwrap()))
        .unwrap()
        .trim()
        .to_owned();
    // The first holder of .9 opens a UDP flow to a server outside (masqueraded: it lives in the
    // host's connection tracking)...
    env.ok(&[
        "run",
        "-d",
        "--name",
        "first",
        "--network",
        "reuse",
        "--ip",
        "198.18.234.9",
        "--cap-add",
        "NET_RAW",
        img,
        "sleep",
        "1000",
    ]);
    let first = lease_of(&env, "reuse", "first");
    env.ok(&[
        "exec",
        "first",
        "frames",
        "send",
        "eth0",
        &gw_mac,
        first["mac"].as_str().unwrap(),
        "198.18.234.9",
        &outside.addr,
        "9999",
        "hello",
    ]);
    // (The port the host's side of the flow got: masquerading may have changed it.)
    let entry = std::fs::read_to_string("/proc/net/nf_conntrack")
        .unwrap()
        .lines()
        .find(|l| l.contains("src=198.18.234.9 ") && l.contains("dport=9999 "))
        .map(str::to_owned)
        .expect("the flow is not tracked");
    let mapped = entry.rsplit("dport=").next().unwrap().split_whitespace().next().unwrap().to_owned();
    // ...and goes. The next holder of .9 listens on the flow's port.
    env.ok(&["rm", "-f", "first"]);
    env.ok(&[
        "run",
        "-d",
        "--name",
        "next",
        "--network",
        "reuse",
        "--ip",
        "198.18.234.9",
        img,
        "sh",
        "-c",
        "frames listen 40000 60 > /tmp/got",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    // The server answers the old flow: nothing of it reaches the new container.
    let host_side = outside.addr.replace(".2", ".1");
    let o = Command::new("ip")
        .args(["netns", "exec", &outside.ns, "python3", "-c"])
        .arg(format!(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('{}', 9999)); [s.sendto(b'stale', ('{host_side}', {mapped})) for _ in range(3)]",
            outside.addr
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(500));
    let got = env.ok(&["exec", "next", "cat", "/tmp/got"]);
    assert!(!got.contains("stale"), "the old holder's flow reached the new one: {got}");
    env.ok(&["rm", "-f", "next"]);
}

#[test]
fn hostile_files_in_a_store_and_reserved_subnets_are_refused() {
    let env = Env::new();
    // Subnets where the host's own traffic goes (the cloud metadata service, loopback).
    for bad in ["169.254.169.0/24", "127.1.0.0/16", "224.1.1.0/24", "0.1.2.0/24"] {
        let err = env.fails(&["network", "create", "--subnet", bad, "x"]);
        assert!(err.contains("refused"), "{bad}: {err}");
    }
    env.ok(&["network", "create", "--subnet", "198.18.233.0/24", "real"]);
    let dir = env.root().join("networks");
    // A FIFO where a network's file is: a clear error, no hang (`list` runs under the host-wide
    // lock every store's `network create` takes).
    sh(Command::new("mkfifo").arg(dir.join("evil.json")));
    let o = env.run_bounded(10, &["network", "ls"]);
    assert_ne!(o.status.code(), Some(124), "network ls hung on a FIFO");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a regular file"));
    std::fs::remove_file(dir.join("evil.json")).unwrap();
    // A network file naming another store's bridge.
    let mut forged: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("real.json")).unwrap()).unwrap();
    forged["name"] = "forged".into();
    forged["bridge"] = "bulkhead0".into();
    std::fs::write(dir.join("forged.json"), forged.to_string()).unwrap();
    let err = env.fails(&["network", "inspect", "forged"]);
    assert!(err.contains("not this store's"), "{err}");
    std::fs::remove_file(dir.join("forged.json")).unwrap();
    // The resolver's directory made a link to somewhere else: nothing there is removed.
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("precious"), "keep").unwrap();
    let _ = std::fs::remove_dir_all(dir.join("dns"));
    std::os::unix::fs::symlink(&elsewhere, dir.join("dns")).unwrap();
    let o = env.run(&["system", "check", "--repair"]);
    assert!(!o.status.success(), "a linked resolver directory was used");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a directory of ours"));
    assert_eq!(std::fs::read_to_string(elsewhere.join("precious")).unwrap(), "keep");
    std::fs::remove_file(dir.join("dns")).unwrap();
    env.ok(&["network", "rm", "real"]);
}
