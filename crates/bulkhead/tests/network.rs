//! Bridge networks with real namespaces and real traffic: containers on a network are isolated
//! from each other unless a rule allows it, reach the outside through NAT (not from an internal
//! network), and nothing is left on the host afterwards.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// A busybox image with the tools the tests use.
fn image(env: &Env) -> &'static str {
    let rootfs = env.path("rootfs");
    busybox_rootfs(&rootfs);
    for a in ["httpd", "wget", "sleep", "echo", "ip", "hostname", "timeout"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    for d in ["etc", "tmp", "www"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::write(rootfs.join("www/index.html"), "hello\n").unwrap();
    env.ok(&[
        "image",
        "import",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--tag",
        "net",
        "--cmd",
        "/bin/sh",
    ]);
    "net"
}

/// "The outside": a network namespace routed to the host over a veth pair (198.19.N.0/30), with
/// a web server on 198.19.N.2:8080. Removed when dropped.
struct Outside {
    ns: String,
    server: std::process::Child,
    addr: String,
}

impl Outside {
    fn new(n: u8) -> Self {
        let ns = format!("bh-test-out-{}", std::process::id());
        let host_if = format!("bhto{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(Command::new("ip").args(["netns", "add", &ns]));
        sh(Command::new("ip").args(["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns]));
        sh(Command::new("ip").args(["addr", "add", &format!("198.19.{n}.1/30"), "dev", &host_if]));
        sh(Command::new("ip").args(["link", "set", &host_if, "up"]));
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
                &addr,
                "--directory",
            ])
            .arg(dir.keep())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Outside { ns, server, addr }
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
    let table = {
        // The store's own table (see bulkhead_network::Networks::table).
        let h = sha2::Sha256::digest([env.root().to_string_lossy().as_bytes(), &[0]].concat());
        format!("bulkhead_{}", &hex(&h)[..8])
    };
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

    // Everything goes with the containers and the networks.
    env.ok(&["rm", "-f", "a", "b", "c"]);
    env.ok(&["network", "rm", "inner", "bulkhead"]);
    let tables = String::from_utf8(Command::new("nft").args(["list", "tables"]).output().unwrap().stdout).unwrap();
    assert!(!tables.contains(&table), "{tables}");
    let links = String::from_utf8(Command::new("ip").args(["-br", "link"]).output().unwrap().stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["--format", "json", "network", "ls"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0);
    assert!(!links.contains("bv"), "a veth is left: {links}");
    drop(outside);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

use sha2::Digest as _;
