//! A real cluster: each node a `bulkhead node serve` process in a network namespace of its own,
//! joined to the others through a bridge (198.18.200.0/24), made with `cluster init` and
//! `cluster join` as a user would.

mod common;

use std::process::Command;
use std::time::Duration;

use common::sh;

/// Mounts the network namespace's own sysfs on /sys (as `ip netns exec` does), with the host's
/// cgroup tree kept at /sys/fs/cgroup, then runs the command given.
const SYSFS_OF_THE_NAMESPACE: &str = "d=$(mktemp -d) && mount --rbind /sys/fs/cgroup \"$d\" && mount -t sysfs sysfs /sys \
    && mount --rbind \"$d\" /sys/fs/cgroup && umount -l \"$d\" && rmdir \"$d\" && exec \"$@\"";

/// Hosts on one LAN: a namespace per host, each with a veth on a bridge in a "switch" namespace.
struct Lan {
    tag: String,
    hosts: usize,
    dir: tempfile::TempDir,
}

impl Lan {
    fn new(hosts: usize) -> Lan {
        // Unique per LAN: tests run side by side in one process.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tag = format!(
            "{}-{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let lan = Lan {
            tag,
            hosts,
            dir: tempfile::Builder::new().prefix("bulkhead-test-cluster-").tempdir().unwrap(),
        };
        let sw = lan.switch();
        let _ = Command::new("ip").args(["netns", "del", &sw]).output();
        sh(Command::new("ip").args(["netns", "add", &sw]));
        sh(Command::new("ip").args(["-n", &sw, "link", "add", "br0", "type", "bridge"]));
        sh(Command::new("ip").args(["-n", &sw, "link", "set", "br0", "up"]));
        for i in 1..=hosts {
            let ns = lan.ns(i);
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            sh(Command::new("ip").args(["netns", "add", &ns]));
            let port = format!("p{i}");
            sh(Command::new("ip").args([
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]));
            sh(Command::new("ip").args(["-n", &sw, "link", "set", &port, "master", "br0", "up"]));
            sh(Command::new("ip").args(["-n", &ns, "addr", "add", &format!("{}/24", lan.addr(i)), "dev", "eth0"]));
            sh(Command::new("ip").args(["-n", &ns, "link", "set", "eth0", "up"]));
            sh(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
        }
        lan
    }

    fn switch(&self) -> String {
        format!("bh-t-sw-{}", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("bh-t-h{i}-{}", self.tag)
    }

    fn addr(&self, i: usize) -> String {
        format!("198.18.200.{i}")
    }

    fn root(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("h{i}"))
    }

    /// bulkhead on host `i` (in its namespace, with its root).
    fn run(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.run_as(i, &self.root(i), args)
    }

    /// bulkhead on host `i` with another root (another node on the same host).
    fn run_as(&self, i: usize, root: &std::path::Path, args: &[&str]) -> std::process::Output {
        // Not `ip netns exec`: that one mounts the namespace's sysfs over /sys and with it hides
        // the host's cgroup tree, which the node's containers need. The same, keeping the tree.
        Command::new("timeout")
            .args(["-s", "KILL", "90", "nsenter", &format!("--net=/run/netns/{}", self.ns(i))])
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "slave",
                "sh",
                "-c",
                SYSFS_OF_THE_NAMESPACE,
                "sh",
            ])
            .arg(env!("CARGO_BIN_EXE_bulkhead"))
            .arg("--root")
            .arg(root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, i: usize, args: &[&str]) -> String {
        let o = self.run(i, args);
        assert!(
            o.status.success(),
            "h{i}: bulkhead {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn fails(&self, i: usize, args: &[&str]) -> String {
        let o = self.run(i, args);
        assert!(!o.status.success(), "h{i}: bulkhead {args:?} should have failed");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("bulkhead: error:")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        lines[0].to_owned()
    }

    /// The node process of host `i`.
    fn pid(&self, i: usize) -> Option<i32> {
        std::fs::read_to_string(self.root(i).join("cluster/node.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn kill(&self, i: usize) {
        if let Some(p) = self.pid(i) {
            // SAFETY: kill(2) of the node process this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for i in 1..=self.hosts {
            self.kill(i);
        }
        // The tasks' containers outlive their node process (their shims are their own).
        for i in 1..=self.hosts {
            if self.root(i).join("containers").exists() {
                let ids = String::from_utf8_lossy(&self.run(i, &["-q", "ps", "-a"]).stdout).into_owned();
                for id in ids.split_whitespace() {
                    let _ = self.run(i, &["rm", "-f", id]);
                }
            }
        }
        // The name servers of the hosts' networks (a node killed, or a network removed while its
        // server was being told, leaves one; it would keep its namespace alive).
        for i in 1..=self.hosts {
            let _ = Command::new("pkill")
                .args([
                    "-KILL",
                    "-f",
                    &format!("aardvark-dns --config {}/networks/dns ", self.root(i).display()),
                ])
                .output();
        }
        std::thread::sleep(Duration::from_millis(200));
        for i in 1..=self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.switch()]).output();
    }
}

fn node_ids(ls: &str) -> Vec<String> {
    let mut v: Vec<String> = ls
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    v.sort();
    v
}

#[test]
fn three_managers_and_two_workers_form_a_cluster_that_survives_its_leader() {
    let lan = Lan::new(5);
    let init = lan.ok(1, &["cluster", "init", "--advertise-addr", &lan.addr(1)]);
    assert!(init.contains("bulkhead cluster join --token BKTKN-1-"), "{init}");
    let manager_token = lan.ok(1, &["-q", "cluster", "join-token", "manager"]).trim().to_owned();
    let worker_token = lan.ok(1, &["-q", "cluster", "join-token", "worker"]).trim().to_owned();
    let first = format!("{}:2377", lan.addr(1));
    for i in 2..=3 {
        let out = lan.ok(
            i,
            &[
                "cluster",
                "join",
                "--token",
                &manager_token,
                "--advertise-addr",
                &lan.addr(i),
                &first,
            ],
        );
        assert!(out.contains("as a manager"), "{out}");
    }
    for i in 4..=5 {
        let out = lan.ok(i, &["cluster", "join", "--token", &worker_token, &first]);
        assert!(out.contains("as a worker"), "{out}");
    }
    // node ls agrees on every manager.
    let ls1 = lan.ok(1, &["node", "ls"]);
    assert_eq!(node_ids(&ls1).len(), 5, "{ls1}");
    assert_eq!(ls1.matches(" manager ").count(), 3, "{ls1}");
    for i in 2..=3 {
        let mut ls = String::new();
        for _ in 0..50 {
            ls = lan.ok(i, &["node", "ls"]);
            if node_ids(&ls) == node_ids(&ls1) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(node_ids(&ls), node_ids(&ls1), "h{i}: {ls}");
    }
    assert!(lan.fails(4, &["node", "ls"]).contains("worker"));
    // A node's availability and labels, changed on one manager, seen on another.
    let worker_id = ls1
        .lines()
        .find(|l| l.contains(" worker "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    lan.ok(
        1,
        &["node", "update", "--availability", "drain", "--label-add", "zone=a", &worker_id],
    );
    let mut seen = String::new();
    for _ in 0..50 {
        seen = lan.ok(2, &["node", "inspect", &worker_id]);
        if seen.contains("drain") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        seen.contains("\"availability\": \"drain\"") && seen.contains("\"zone\": \"a\""),
        "{seen}"
    );
    assert!(lan
        .fails(1, &["node", "update", "--availability", "gone", &worker_id])
        .contains("active, pause or drain"));
    assert!(lan.ok(1, &["node", "inspect", "self"]).contains("\"role\": \"manager\""));
    // A wrong token and a rotated one are refused, in one line.
    let mut wrong = worker_token.clone();
    wrong.replace_range(wrong.len() - 4.., "0000");
    // (From host 4 again, as another node with a root of its own.)
    let join_again = |token: &str| {
        let o = Command::new("ip")
            .args(["netns", "exec", &lan.ns(4)])
            .arg(env!("CARGO_BIN_EXE_bulkhead"))
            .arg("--root")
            .arg(lan.root(4).join("again"))
            .args(["cluster", "join", "--token", token, &first])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = join_again(&wrong);
    assert!(e.contains("wrong or rotated"), "{e}");
    lan.ok(1, &["cluster", "join-token", "worker", "--rotate"]);
    let e = join_again(&worker_token);
    assert!(e.contains("wrong or rotated"), "{e}");
    // No Raft file holds a token (they are in the store) in clear.
    let secret = &manager_token[manager_token.len() - 64..];
    for i in 1..=3 {
        let raft = std::fs::read(lan.root(i).join("cluster/raft.redb")).unwrap();
        assert!(
            !raft.windows(64).any(|w| w == secret.as_bytes()),
            "h{i}'s Raft file holds the token"
        );
    }
    // The leader is killed: another is elected, and writes (a token rotation) go on.
    let leader_status = |i: usize| {
        let ls = lan.ok(i, &["node", "ls"]);
        ls.lines()
            .find(|l| l.contains(" leader "))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
    };
    let old = leader_status(1).expect("a leader");
    let leader_host = (1..=3)
        .find(|i| {
            std::fs::read_to_string(lan.root(*i).join("cluster/node.json"))
                .unwrap()
                .contains(&old)
        })
        .unwrap();
    lan.kill(leader_host);
    let other = (1..=3).find(|i| *i != leader_host).unwrap();
    let mut new = None;
    for _ in 0..150 {
        if let Some(l) = leader_status(other).filter(|l| *l != old) {
            new = Some(l);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(new.is_some(), "no new leader after the old one was killed");
    let t = lan.ok(other, &["-q", "cluster", "join-token", "worker", "--rotate"]);
    assert!(t.starts_with("BKTKN-1-"), "{t}");
    // No acknowledged write was lost with the old leader.
    let seen = lan.ok(other, &["node", "inspect", &worker_id]);
    assert!(seen.contains("\"zone\": \"a\"") && seen.contains("drain"), "{seen}");
}

/// Runs `f` on a thread inside host `i`'s network namespace, with a runtime of its own.
fn in_host<T: Send + 'static>(lan: &Lan, i: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(format!("/var/run/netns/{}", lan.ns(i))).unwrap();
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(&ns), Some(rustix::thread::LinkNameSpaceType::Network)).unwrap();
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn certificates_renew_themselves_and_a_removed_node_is_refused_at_once() {
    let lan = Lan::new(2);
    lan.ok(1, &["cluster", "init", "--advertise-addr", &lan.addr(1), "--cert-expiry", "60s"]);
    let token = lan.ok(1, &["-q", "cluster", "join-token", "worker"]).trim().to_owned();
    let first = format!("{}:2377", lan.addr(1));
    lan.ok(2, &["cluster", "join", "--token", &token, &first]);
    let cert = |i: usize| std::fs::read_to_string(lan.root(i).join("cluster/node.crt")).unwrap();
    let key = |i: usize| std::fs::read_to_string(lan.root(i).join("cluster/node.key")).unwrap();
    let serial = |i: usize| bulkhead_cluster::pki::identity(cert(i).as_bytes()).unwrap().serial;
    let (s1, s2, k2) = (serial(1), serial(2), key(2));
    let id2 = bulkhead_cluster::pki::identity(cert(2).as_bytes()).unwrap();
    assert_eq!(id2.not_after - (id2.not_before + 3600), 60, "the lifetime given to init");
    // Both renew within 30–48 s (50–80 % of 60 s), each with a fresh key, same id and role.
    for _ in 0..700 {
        if serial(1) != s1 && serial(2) != s2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(serial(1), s1, "the manager's certificate did not renew");
    assert_ne!(serial(2), s2, "the worker's certificate did not renew");
    assert_ne!(key(2), k2, "renewed without a fresh key");
    let renewed = bulkhead_cluster::pki::identity(cert(2).as_bytes()).unwrap();
    assert_eq!(
        (renewed.node_id.as_str(), renewed.role),
        (id2.node_id.as_str(), bulkhead_cluster::pki::Role::Worker)
    );
    // The manager knows the new serial.
    let ls = lan.ok(1, &["--format", "json", "node", "ls"]);
    assert!(ls.contains(&renewed.serial), "{ls}");
    // Removed: the worker's certificate is refused from then on (here, its renewal).
    lan.ok(1, &["node", "rm", &renewed.node_id]);
    let ls = lan.ok(1, &["node", "ls"]);
    assert!(!ls.contains(&renewed.node_id), "{ls}");
    std::thread::sleep(Duration::from_millis(1500));
    let (ca, c2, k2) = (
        std::fs::read_to_string(lan.root(2).join("cluster/ca.crt")).unwrap(),
        cert(2),
        key(2),
    );
    let addr = first.clone();
    let err = in_host(&lan, 2, move || {
        let id = bulkhead_cluster::tls::Identity::new(&c2, &k2).unwrap();
        let tls = bulkhead_cluster::tls::client_config(&ca, Some(id)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(bulkhead_cluster::manager::renew_at(&addr, tls))
            .err()
            .map(|e| e.to_string())
    });
    let err = err.expect("a removed node renewed its certificate");
    assert!(err.contains("removed from the cluster"), "{err}");
}

#[test]
fn autolock_keeps_a_restarted_manager_locked_until_it_is_given_its_key() {
    let lan = Lan::new(1);
    let init = lan.ok(1, &["cluster", "init", "--advertise-addr", &lan.addr(1), "--autolock"]);
    let key = init
        .split_whitespace()
        .find(|w| w.starts_with("BKUNLOCK-1-"))
        .unwrap_or_else(|| panic!("no unlock key printed: {init}"))
        .to_owned();
    let dir = lan.root(1).join("cluster");
    // Neither the data key nor the node's key is on disk in clear.
    let data = std::fs::read_to_string(dir.join("data.key")).unwrap();
    assert!(data.contains("\"locked\""), "{data}");
    let node_key = std::fs::read_to_string(dir.join("node.key")).unwrap();
    assert!(
        node_key.starts_with("BKSEALED-1:") && !node_key.contains("PRIVATE KEY"),
        "{node_key}"
    );
    let token = lan.ok(1, &["-q", "cluster", "join-token", "worker", "--rotate"]).trim().to_owned();
    // Killed and started again: locked, answering nothing but unlock.
    let restart = |lan: &Lan| {
        lan.kill(1);
        std::thread::sleep(Duration::from_millis(300));
        let out = lan.ok(1, &["node", "start"]);
        assert!(out.contains("locked"), "{out}");
    };
    restart(&lan);
    assert!(lan.fails(1, &["node", "ls"]).contains("locked"));
    let wrong = lan.root(1).join("wrong.key");
    std::fs::write(&wrong, format!("BKUNLOCK-1-{}\n", "00".repeat(32))).unwrap();
    assert!(lan
        .fails(1, &["cluster", "unlock", "--key-file", wrong.to_str().unwrap()])
        .contains("wrong unlock key"));
    let right = lan.root(1).join("right.key");
    std::fs::write(&right, &key).unwrap();
    assert!(lan
        .ok(1, &["cluster", "unlock", "--key-file", right.to_str().unwrap()])
        .contains("unlocked"));
    // Its state came back with it.
    assert_eq!(lan.ok(1, &["-q", "cluster", "join-token", "worker"]).trim(), token);
    assert_eq!(lan.ok(1, &["-q", "cluster", "unlock-key"]).trim(), key);
    let raft = std::fs::read(dir.join("raft.redb")).unwrap();
    assert!(!raft.windows(64).any(|w| w == &token.as_bytes()[token.len() - 64..]));
    // A new unlock key: the old one opens nothing any more.
    let new_key = lan.ok(1, &["-q", "cluster", "unlock-key", "--rotate"]).trim().to_owned();
    assert_ne!(new_key, key);
    let before = bulkhead_cluster::crypt::read_data_key(
        &dir.join("data.key"),
        Some(&bulkhead_cluster::crypt::parse_unlock_key(&key).unwrap()),
    )
    .unwrap();
    for _ in 0..50 {
        if !std::fs::read_to_string(dir.join("data.key")).unwrap().eq(&data) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let new_unlock = bulkhead_cluster::crypt::parse_unlock_key(&new_key).unwrap();
    let mut after = None;
    for _ in 0..50 {
        after = bulkhead_cluster::crypt::read_data_key(&dir.join("data.key"), Some(&new_unlock)).ok();
        if after.as_ref().is_some_and(|a| a.as_bytes() != before.as_bytes()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        after.is_some_and(|a| a.as_bytes() != before.as_bytes()),
        "the data key did not change with the unlock key"
    );
    restart(&lan);
    assert!(lan
        .fails(1, &["cluster", "unlock", "--key-file", right.to_str().unwrap()])
        .contains("wrong unlock key"));
    std::fs::write(&right, &new_key).unwrap();
    lan.ok(1, &["cluster", "unlock", "--key-file", right.to_str().unwrap()]);
    assert_eq!(lan.ok(1, &["-q", "cluster", "join-token", "worker"]).trim(), token);
    // A new unlock key brought a new data key; `cluster data-key --rotate` makes another. The
    // store, sealed anew each time, opens after a restart with what it holds.
    let unlock = bulkhead_cluster::crypt::parse_unlock_key(&new_key).unwrap();
    let data_key = || bulkhead_cluster::crypt::read_data_key(&dir.join("data.key"), Some(&unlock)).unwrap();
    let k1 = data_key();
    lan.ok(1, &["cluster", "data-key", "--rotate"]);
    let k2 = data_key();
    assert_ne!(k1.as_bytes(), k2.as_bytes());
    assert!(!dir.join("data.key.next").exists());
    restart(&lan);
    lan.ok(1, &["cluster", "unlock", "--key-file", right.to_str().unwrap()]);
    assert_eq!(lan.ok(1, &["-q", "cluster", "join-token", "worker"]).trim(), token);
}

#[test]
fn a_worker_away_past_its_certificates_expiry_comes_back_as_itself() {
    let lan = Lan::new(2);
    lan.ok(1, &["cluster", "init", "--advertise-addr", &lan.addr(1), "--cert-expiry", "60s"]);
    let token = lan.ok(1, &["-q", "cluster", "join-token", "worker"]).trim().to_owned();
    let first = format!("{}:2377", lan.addr(1));
    lan.ok(2, &["cluster", "join", "--token", &token, &first]);
    // Away (killed before its first renewal) until its certificate has expired.
    lan.kill(2);
    let cert = std::fs::read_to_string(lan.root(2).join("cluster/node.crt")).unwrap();
    let id = bulkhead_cluster::pki::identity(cert.as_bytes()).unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    while now() <= id.not_after {
        std::thread::sleep(Duration::from_millis(500));
    }
    // A valid certificate does not rejoin (host 1's is renewed); an expired one does, with a new
    // token, keeping its id.
    assert!(lan
        .fails(1, &["cluster", "join", "--token", &token, &first])
        .contains("certificate is valid"));
    let fresh = lan.ok(1, &["-q", "cluster", "join-token", "worker", "--rotate"]).trim().to_owned();
    let out = lan.ok(2, &["cluster", "join", "--token", &fresh, &first]);
    assert!(out.contains(&format!("as {}", id.node_id)), "{out}");
    let ls = lan.ok(1, &["node", "ls"]);
    assert_eq!(node_ids(&ls).len(), 2, "{ls}");
    assert!(ls.contains(&id.node_id), "{ls}");
    let back = bulkhead_cluster::pki::identity(std::fs::read_to_string(lan.root(2).join("cluster/node.crt")).unwrap().as_bytes()).unwrap();
    assert!(back.not_after > now() && back.node_id == id.node_id);
}

#[test]
fn the_ca_rotates_to_a_new_root_every_node_moves_to_and_old_tokens_stop_working() {
    let lan = Lan::new(3);
    lan.ok(
        1,
        &[
            "cluster",
            "init",
            "--advertise-addr",
            &lan.addr(1),
            "--dispatcher-heartbeat",
            "500ms",
        ],
    );
    let first = format!("{}:2377", lan.addr(1));
    let manager_token = lan.ok(1, &["-q", "cluster", "join-token", "manager"]).trim().to_owned();
    let worker_token = lan.ok(1, &["-q", "cluster", "join-token", "worker"]).trim().to_owned();
    lan.ok(
        2,
        &[
            "cluster",
            "join",
            "--token",
            &manager_token,
            "--advertise-addr",
            &lan.addr(2),
            &first,
        ],
    );
    lan.ok(3, &["cluster", "join", "--token", &worker_token, &first]);
    let file = |i: usize, f: &str| std::fs::read_to_string(lan.root(i).join("cluster").join(f)).unwrap();
    let old_root = lan.ok(1, &["cluster", "ca"]);
    assert_eq!(old_root, file(3, "ca.crt"));
    // Rotated: the command returns when every node has a certificate of the new root.
    lan.ok(1, &["cluster", "ca", "--rotate"]);
    let new_root = lan.ok(2, &["cluster", "ca"]);
    let new_der = bulkhead_cluster::tls::certs(&new_root).unwrap();
    assert_eq!(new_der.len(), 1, "{new_root}");
    assert_ne!(new_root, old_root);
    let key_id = bulkhead_cluster::pki::key_id(&new_der[0]).unwrap();
    for i in 1..=3 {
        let id = bulkhead_cluster::pki::identity(file(i, "node.crt").as_bytes()).unwrap();
        assert_eq!(id.issuer_key.as_deref(), Some(key_id.as_str()), "h{i}'s certificate");
        // Each node drops the old root within a heartbeat or two.
        for _ in 0..50 {
            if file(i, "ca.crt") == new_root {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            file(i, "ca.crt"),
            new_root,
            "h{i} still trusts the old root: {}",
            file(i, "node.log")
        );
    }
    // The managers still reach each other (a write from the follower goes through the leader).
    lan.ok(2, &["cluster", "join-token", "worker", "--rotate"]);
    let ls = lan.ok(2, &["node", "ls"]);
    assert_eq!(node_ids(&ls).len(), 3, "{ls}");
    // The old tokens pin the old root: refused. The new ones work.
    let join_again = |token: &str, dir: &str| lan.run_as(3, &lan.root(3).join(dir), &["cluster", "join", "--token", token, &first]);
    let o = join_again(&worker_token, "again");
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("not the one the token names"), "{e}");
    let fresh = lan.ok(1, &["-q", "cluster", "join-token", "worker"]).trim().to_owned();
    let o = join_again(&fresh, "again2");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lan.run_as(3, &lan.root(3).join("again2"), &["cluster", "leave"]);
}

/// Cuts host `i` off the LAN, or puts it back.
fn cable(lan: &Lan, i: usize, up: bool) {
    sh(Command::new("ip").args(["-n", &lan.ns(i), "link", "set", "eth0", if up { "up" } else { "down" }]));
}

#[test]
fn a_partitioned_manager_cannot_commit_and_a_lone_survivor_recovers_as_a_new_cluster() {
    let lan = Lan::new(5);
    let init = lan.ok(
        1,
        &[
            "cluster",
            "init",
            "--advertise-addr",
            &lan.addr(1),
            "--autolock",
            "--dispatcher-heartbeat",
            "500ms",
        ],
    );
    let unlock = init.split_whitespace().find(|w| w.starts_with("BKUNLOCK-1-")).unwrap().to_owned();
    let key_file = lan.root(1).with_extension("unlock");
    std::fs::write(&key_file, &unlock).unwrap();
    let first = format!("{}:2377", lan.addr(1));
    let mt = lan.ok(1, &["-q", "cluster", "join-token", "manager"]).trim().to_owned();
    let wt = lan.ok(1, &["-q", "cluster", "join-token", "worker"]).trim().to_owned();
    for i in 2..=3 {
        lan.ok(i, &["cluster", "join", "--token", &mt, "--advertise-addr", &lan.addr(i), &first]);
    }
    lan.ok(4, &["cluster", "join", "--token", &wt, &first]);
    let worker_id: String = serde_json::from_str::<serde_json::Value>(&lan.ok(1, &["--format", "json", "node", "ls"]))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["role"] == "worker")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let marker = format!("MARKER{}", std::process::id());
    lan.ok(1, &["node", "update", "--label-add", &format!("before={marker}"), &worker_id]);
    // Cut off, h3 cannot commit (a clear error, within the write deadline); h1 and h2 can.
    cable(&lan, 3, false);
    let e = lan.fails(3, &["node", "update", "--label-add", "cut=1", &worker_id]);
    assert!(e.contains("no quorum") && e.contains("read-only"), "{e}");
    lan.ok(1, &["node", "update", "--label-add", &format!("during={marker}"), &worker_id]);
    // Healed, it catches up.
    cable(&lan, 3, true);
    let mut seen = String::new();
    for _ in 0..150 {
        seen = lan
            .run(3, &["node", "inspect", &worker_id])
            .stdout
            .iter()
            .map(|b| *b as char)
            .collect();
        if seen.contains("during") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen.contains("\"during\"") && !seen.contains("\"cut\""), "{seen}");
    // Two of three lost: reads go on, writes fail in one clear line.
    lan.kill(2);
    lan.kill(3);
    let e = lan.fails(1, &["cluster", "join-token", "worker", "--rotate"]);
    assert!(e.contains("no quorum") && e.contains("--force-new-cluster"), "{e}");
    assert!(lan.ok(1, &["node", "ls"]).contains(&worker_id));
    // The survivor starts a new cluster of itself, with its store (autolock: locked until
    // unlocked); the lost managers are gone, the worker and what was written stay.
    let out = lan.ok(1, &["cluster", "init", "--force-new-cluster"]);
    assert!(out.contains("locked"), "{out}");
    lan.ok(1, &["cluster", "unlock", "--key-file", key_file.to_str().unwrap()]);
    let ls = lan.ok(1, &["node", "ls"]);
    assert_eq!(node_ids(&ls).len(), 2, "{ls}");
    let w = lan.ok(1, &["node", "inspect", &worker_id]);
    assert!(w.contains(&format!("\"before\": \"{marker}\"")) && w.contains("\"during\""), "{w}");
    let t = lan.ok(1, &["-q", "cluster", "join-token", "worker", "--rotate"]);
    assert!(t.starts_with("BKTKN-1-"));
    assert!(!lan.root(1).join("cluster/recover.sealed").exists());
    // A backup, sealed (no marker in it), restored on another host at another address.
    let backup = lan.root(1).with_extension("backup");
    let out = lan.ok(1, &["cluster", "backup", backup.to_str().unwrap()]);
    let backup_key = lan.root(1).with_extension("backupkey");
    std::fs::write(&backup_key, out.split_whitespace().find(|w| w.starts_with("BKUNLOCK-1-")).unwrap()).unwrap();
    let bytes = std::fs::read(&backup).unwrap();
    assert!(!bytes.windows(marker.len()).any(|w| w == marker.as_bytes()));
    for f in ["raft.redb", "node.key", "data.key"] {
        let b = std::fs::read(lan.root(1).join("cluster").join(f)).unwrap();
        assert!(!b.windows(marker.len()).any(|w| w == marker.as_bytes()), "{f}");
    }
    let out = lan.ok(
        5,
        &[
            "cluster",
            "restore",
            backup.to_str().unwrap(),
            "--key-file",
            backup_key.to_str().unwrap(),
            "--advertise-addr",
            &lan.addr(5),
        ],
    );
    assert!(out.contains("restored"), "{out}");
    let w = lan.ok(5, &["node", "inspect", &worker_id]);
    assert!(w.contains(&marker), "{w}");
    let ls = lan.ok(5, &["node", "ls"]);
    assert_eq!(node_ids(&ls).len(), 2, "{ls}");
    assert!(ls.contains(&lan.addr(5)), "{ls}");
    lan.ok(5, &["cluster", "join-token", "worker", "--rotate"]);
    // A backup with a wrong key: one line, nothing made.
    let wrong = lan.root(5).with_extension("wrong");
    std::fs::write(&wrong, format!("BKUNLOCK-1-{}", "11".repeat(32))).unwrap();
    let o = lan.run_as(
        5,
        &lan.root(5).join("other"),
        &[
            "cluster",
            "restore",
            backup.to_str().unwrap(),
            "--key-file",
            wrong.to_str().unwrap(),
            "--advertise-addr",
            &lan.addr(5),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not open"));
    assert!(!lan.root(5).join("other/cluster").exists());
}

#[test]
fn a_promoted_worker_becomes_a_manager_and_a_demoted_manager_a_worker() {
    let lan = Lan::new(3);
    lan.ok(
        1,
        &[
            "cluster",
            "init",
            "--advertise-addr",
            &lan.addr(1),
            "--dispatcher-heartbeat",
            "500ms",
        ],
    );
    let first = format!("{}:2377", lan.addr(1));
    let wt = lan.ok(1, &["-q", "cluster", "join-token", "worker"]).trim().to_owned();
    lan.ok(2, &["cluster", "join", "--token", &wt, &first]);
    lan.ok(3, &["cluster", "join", "--token", &wt, &first]);
    let config = |i: usize| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(lan.root(i).join("cluster/node.json")).unwrap()).unwrap()
    };
    let (id1, id2) = (
        config(1)["node_id"].as_str().unwrap().to_owned(),
        config(2)["node_id"].as_str().unwrap().to_owned(),
    );
    let role_of = |i: usize| {
        bulkhead_cluster::pki::identity(&std::fs::read(lan.root(i).join("cluster/node.crt")).unwrap())
            .unwrap()
            .role
    };
    let until = |what: &str, f: &dyn Fn() -> bool| {
        for _ in 0..300 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{what}: {}{}",
            std::fs::read_to_string(lan.root(1).join("cluster/node.log")).unwrap(),
            std::fs::read_to_string(lan.root(2).join("cluster/node.log")).unwrap()
        );
    };
    // Promoted: a manager's certificate, a voter in Raft, answering as a manager.
    assert!(lan.ok(1, &["node", "promote", &id2]).contains("manager"));
    until("h2 a manager in Raft", &|| {
        let ls = lan.ok(1, &["node", "ls"]);
        ls.lines()
            .any(|l| l.starts_with(&id2) && l.contains(" manager ") && l.contains("reachable"))
    });
    assert_eq!(role_of(2), bulkhead_cluster::pki::Role::Manager);
    until("h2 answers as a manager", &|| {
        let o = lan.run(2, &["node", "ls"]);
        o.status.success() && node_ids(&String::from_utf8_lossy(&o.stdout)).len() == 3
    });
    // The worker learns where the managers are.
    until("h3 knows of h2", &|| config(3)["managers"].to_string().contains(&lan.addr(2)));
    // The first manager demoted: it leaves Raft, renews into a worker, and its store is gone.
    lan.ok(2, &["node", "demote", &id1]);
    until("h1 a worker", &|| {
        role_of(1) == bulkhead_cluster::pki::Role::Worker
            && config(1)["role"] == "worker"
            && lan.run(1, &["node", "ls"]).status.code() != Some(0)
    });
    until("h1's Raft file gone", &|| !lan.root(1).join("cluster/raft.redb").exists());
    until("h2 the leader", &|| {
        lan.ok(2, &["node", "ls"])
            .lines()
            .any(|l| l.starts_with(&id2) && l.contains("leader"))
    });
    assert!(lan.fails(1, &["node", "ls"]).contains("worker"));
    lan.ok(2, &["cluster", "join-token", "worker", "--rotate"]);
    let inspect = lan.ok(2, &["cluster", "inspect"]);
    let voters: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(voters["voters"].as_array().unwrap().len(), 1, "{inspect}");
    // The last manager cannot be demoted.
    assert!(lan.fails(2, &["node", "demote", &id2]).contains("last manager"));
}

#[test]
fn an_admin_certificate_administers_from_another_host_and_nothing_else_does() {
    let lan = Lan::new(2);
    lan.ok(1, &["cluster", "init", "--advertise-addr", &lan.addr(1)]);
    let file = lan.root(2).with_extension("admin.json");
    let out = lan.ok(1, &["cluster", "ca", "--issue-admin", file.to_str().unwrap()]);
    let name = out.split(['(', ')']).nth(1).unwrap().to_owned();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    // From host 2, which is in no cluster: reads and writes.
    let remote = |admin: &std::path::Path, args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &lan.ns(2)])
            .arg(env!("CARGO_BIN_EXE_bulkhead"))
            .arg("--root")
            .arg(lan.root(2))
            .args(args)
            .env("BULKHEAD_MANAGER", lan.addr(1))
            .env("BULKHEAD_ADMIN_CERT", admin)
            .output()
            .unwrap()
    };
    let o = remote(&file, &["node", "ls"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(node_ids(&String::from_utf8_lossy(&o.stdout)).len(), 1);
    let before = lan.ok(1, &["-q", "cluster", "join-token", "worker"]);
    let o = remote(&file, &["-q", "cluster", "join-token", "worker", "--rotate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(lan.ok(1, &["-q", "cluster", "join-token", "worker"]), before);
    // What hands out the cluster's secrets (a backup holds the CA's key, the unlock key) stays
    // on the manager's machine: the manager refuses it to an admin certificate.
    for req in [
        bulkhead_cluster::node::ControlRequest::Backup,
        bulkhead_cluster::node::ControlRequest::UnlockKey { rotate: false },
    ] {
        let (addr, f) = (format!("{}:2377", lan.addr(1)), file.clone());
        let e = in_host(&lan, 2, move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(bulkhead_cluster::node::call_remote(&addr, &f, &req))
                .unwrap_err()
                .to_string()
        });
        assert!(e.contains("own machine"), "{e}");
    }
    // A node's own certificate is no admin's.
    let node = serde_json::json!({
        "cluster_id": "x",
        "cert": std::fs::read_to_string(lan.root(1).join("cluster/node.crt")).unwrap(),
        "key": std::fs::read_to_string(lan.root(1).join("cluster/node.key")).unwrap(),
        "ca": std::fs::read_to_string(lan.root(1).join("cluster/ca.crt")).unwrap(),
    });
    let forged = lan.root(2).with_extension("node.json");
    std::fs::write(&forged, node.to_string()).unwrap();
    let o = remote(&forged, &["node", "ls"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bulkhead-admin only"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Revoked: refused from then on.
    lan.ok(1, &["cluster", "ca", "--revoke-admin", &name]);
    let o = remote(&file, &["node", "ls"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn secrets_are_sealed_in_the_store_and_never_shown_and_configs_are() {
    let lan = Lan::new(2);
    lan.ok(1, &["cluster", "init", "--advertise-addr", &lan.addr(1)]);
    let marker = format!("MARKER{}secret", std::process::id());
    let f = lan.root(1).with_extension("pw");
    std::fs::write(&f, &marker).unwrap();
    let id = lan.ok(1, &["secret", "create", "db_pw", f.to_str().unwrap()]);
    assert_eq!(id.trim().len(), 16, "{id}");
    for args in [
        &["secret", "ls"][..],
        &["--format", "json", "secret", "ls"],
        &["secret", "inspect", "db_pw"],
    ] {
        let out = lan.ok(1, args);
        assert!(out.contains("db_pw") && !out.contains(&marker), "{args:?}: {out}");
    }
    assert!(lan
        .fails(1, &["secret", "create", "db_pw", f.to_str().unwrap()])
        .contains("exists already"));
    // A new version under the same name.
    std::fs::write(&f, format!("{marker}2")).unwrap();
    assert!(lan.ok(1, &["secret", "rotate", "db_pw", f.to_str().unwrap()]).contains("version 2"));
    assert!(lan.ok(1, &["secret", "inspect", "db_pw"]).contains("\"version\": 2"));
    // Bad input: one line each, nothing made.
    let fifo = lan.root(1).with_extension("fifo");
    sh(Command::new("mkfifo").arg(&fifo));
    assert!(lan
        .fails(1, &["secret", "create", "f", fifo.to_str().unwrap()])
        .contains("not a regular file"));
    let big = lan.root(1).with_extension("big");
    std::fs::write(&big, vec![b'x'; 600 << 10]).unwrap();
    assert!(lan
        .fails(1, &["secret", "create", "big", big.to_str().unwrap()])
        .contains("500 KiB"));
    assert!(lan.fails(1, &["secret", "create", "../x", f.to_str().unwrap()]).contains("name"));
    assert_eq!(lan.ok(1, &["-q", "secret", "ls"]).trim(), "db_pw");
    // A config shows its data.
    let c = lan.root(1).with_extension("conf");
    std::fs::write(&c, "listen 80;\n").unwrap();
    lan.ok(1, &["config", "create", "nginx", c.to_str().unwrap()]);
    assert!(lan.ok(1, &["config", "inspect", "nginx"]).contains("listen 80;"));
    // From another host with an admin certificate: 400 KiB through the Admin service.
    let admin = lan.root(2).with_extension("admin.json");
    lan.ok(1, &["cluster", "ca", "--issue-admin", admin.to_str().unwrap()]);
    let large = lan.root(2).with_extension("large");
    std::fs::write(&large, vec![b'y'; 400 << 10]).unwrap();
    let o = Command::new("ip")
        .args(["netns", "exec", &lan.ns(2)])
        .arg(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["secret", "create", "large", large.to_str().unwrap()])
        .env("BULKHEAD_MANAGER", lan.addr(1))
        .env("BULKHEAD_ADMIN_CERT", &admin)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lan.ok(1, &["secret", "inspect", "large"]).contains("409600"));
    // Sealed at rest; in no log.
    for f in ["raft.redb", "node.log"] {
        let b = std::fs::read(lan.root(1).join("cluster").join(f)).unwrap();
        assert!(!b.windows(marker.len()).any(|w| w == marker.as_bytes()), "{f} holds the secret");
    }
    lan.ok(1, &["secret", "rm", "db_pw", "large"]);
    assert_eq!(lan.ok(1, &["-q", "secret", "ls"]).trim(), "");
}

/// A node's id, from its files.
fn node_id(lan: &Lan, i: usize) -> String {
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(lan.root(i).join("cluster/node.json")).unwrap()).unwrap();
    cfg["node_id"].as_str().unwrap().to_owned()
}

/// `service ps NAME` as JSON: each task's node, desired state and state.
fn tasks(lan: &Lan, i: usize, service: &str) -> Vec<serde_json::Value> {
    let out = lan.ok(i, &["--format", "json", "service", "ps", service]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits (at most 60 s) until `service`'s tasks meant to run are `n` running ones, on nodes that
/// `on` accepts; returns them.
fn wait_running(lan: &Lan, service: &str, n: usize, on: impl Fn(&str) -> bool) -> Vec<serde_json::Value> {
    let mut last = Vec::new();
    for _ in 0..300 {
        last = tasks(lan, 1, service)
            .into_iter()
            .filter(|t| t["task"]["desired"] == "running")
            .collect();
        if last.len() == n
            && last
                .iter()
                .all(|t| t["state"] == "running" && on(t["task"]["node"].as_str().unwrap_or("")))
        {
            return last;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{service}: not {n} running tasks: {}", serde_json::to_string_pretty(&last).unwrap());
}

/// Whether any regular file under `dir` holds `marker`.
fn holds(dir: &std::path::Path, marker: &[u8]) -> Option<std::path::PathBuf> {
    let rd = std::fs::read_dir(dir).ok()?;
    for e in rd.flatten() {
        let ft = e.file_type().ok()?;
        let p = e.path();
        if ft.is_dir() {
            if let Some(f) = holds(&p, marker) {
                return Some(f);
            }
        } else if ft.is_file() {
            if let Ok(b) = std::fs::read(&p) {
                if b.windows(marker.len()).any(|w| w == marker) {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// A manager (host 1) and the other hosts of `lan` as workers, heartbeats every second, and on
/// each a busybox image `tag` with `applets` and a /www/index.html (imported by name on each
/// node: no registry).
fn cluster_with_image(lan: &Lan, tag: &str, applets: &[&str]) {
    // Containers' roots are unprivileged host users: the roots must be searchable.
    std::fs::set_permissions(lan.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    lan.ok(
        1,
        &["cluster", "init", "--advertise-addr", &lan.addr(1), "--dispatcher-heartbeat", "1s"],
    );
    let token = lan.ok(1, &["-q", "cluster", "join-token", "worker"]).trim().to_owned();
    let first = format!("{}:2377", lan.addr(1));
    for i in 2..=lan.hosts {
        lan.ok(i, &["cluster", "join", "--token", &token, &first]);
    }
    let rootfs = lan.dir.path().join(format!("rootfs-{tag}"));
    common::busybox_rootfs(&rootfs);
    for a in applets {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
    }
    for d in ["etc", "tmp", "www"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::write(rootfs.join("www/index.html"), "hello\n").unwrap();
    for i in 1..=lan.hosts {
        lan.ok(
            i,
            &[
                "image",
                "import",
                "--rootfs",
                rootfs.to_str().unwrap(),
                "--tag",
                tag,
                "--cmd",
                "/bin/sh",
            ],
        );
    }
}

#[test]
fn services_run_hardened_on_the_nodes_their_secrets_only_where_needed_and_move_when_nodes_go() {
    let lan = Lan::new(3);
    cluster_with_image(&lan, "svcbox", &["sleep", "cat", "grep", "sh"]);
    let (h2, h3) = (node_id(&lan, 2), node_id(&lan, 3));
    lan.ok(1, &["node", "update", "--label-add", "disk=ssd", &h2]);

    // Three replicas on the two workers, spread.
    lan.ok(
        1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--constraint",
            "node.role==worker",
            "svcbox",
            "sleep",
            "3600",
        ],
    );
    let running = wait_running(&lan, "web", 3, |n| n == h2 || n == h3);
    let on2 = running.iter().filter(|t| t["task"]["node"] == h2.as_str()).count();
    assert!(on2 == 1 || on2 == 2, "not spread: {running:?}");
    // An ordinary container of its node, labelled, with the hardened defaults, seen from inside.
    let host_of = |t: &serde_json::Value| if t["task"]["node"] == h2.as_str() { 2 } else { 3 };
    let t0 = &running[0];
    let container = t0["status"]["container"].as_str().unwrap().to_owned();
    let h = host_of(t0);
    let inspect = lan.ok(h, &["inspect", &container]);
    assert!(
        inspect.contains("com.bulkhead.service.name") && inspect.contains(t0["task"]["id"].as_str().unwrap()),
        "{inspect}"
    );
    let status = lan.ok(h, &["exec", &container, "cat", "/proc/self/status"]);
    assert!(status.contains("NoNewPrivs:\t1") && status.contains("Seccomp:\t2"), "{status}");
    let uid_map = lan.ok(h, &["exec", &container, "cat", "/proc/self/uid_map"]);
    assert!(
        uid_map.split_whitespace().nth(1).is_some_and(|o| o != "0"),
        "a user namespace: {uid_map}"
    );

    // A secret for a service pinned to h2: there only, in the task's tmpfs, and nowhere else.
    let marker = format!("MARKER{}svc", std::process::id());
    let f = lan.dir.path().join("pw");
    std::fs::write(&f, &marker).unwrap();
    lan.ok(1, &["secret", "create", "pw", f.to_str().unwrap()]);
    lan.ok(
        1,
        &[
            "service",
            "create",
            "--name",
            "db",
            "--secret",
            "pw",
            "--constraint",
            "node.labels.disk==ssd",
            "svcbox",
            "sleep",
            "3600",
        ],
    );
    let db = wait_running(&lan, "db", 1, |n| n == h2);
    let dbc = db[0]["status"]["container"].as_str().unwrap().to_owned();
    assert_eq!(lan.ok(2, &["exec", &dbc, "cat", "/run/secrets/pw"]), marker);
    let mounts = lan.ok(2, &["exec", &dbc, "grep", "/run/secrets/pw", "/proc/self/mounts"]);
    assert!(
        mounts.contains("ro,") && mounts.contains("nosuid") && mounts.contains("nodev") && mounts.contains("noexec"),
        "{mounts}"
    );
    assert!(lan.fails(1, &["secret", "rm", "pw"]).contains("in use by service db"));
    // h2 has it only through the task's mounts; the others have nothing of it.
    for i in [1, 3] {
        assert_eq!(holds(&lan.root(i), marker.as_bytes()), None, "h{i}'s files hold the secret");
    }
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains("bulkhead-task"),
        "the agent's tmpfs outlived the start: {host_mounts}"
    );

    // Drained: h2's tasks move to h3 (db has nowhere to go and waits), and its secret goes with
    // its task.
    lan.ok(1, &["node", "update", "--availability", "drain", &h2]);
    wait_running(&lan, "web", 3, |n| n == h3);
    for _ in 0..150 {
        if lan.ok(2, &["-q", "ps"]).trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lan.ok(2, &["-q", "ps"]).trim(), "", "h2 still runs tasks");
    assert!(tasks(&lan, 1, "db")
        .iter()
        .any(|t| t["task"]["desired"] == "running" && t["state"] == "pending"));

    // A node that dies: its tasks are rescheduled after 3 missed heartbeats.
    lan.ok(1, &["node", "update", "--availability", "active", &h2]);
    wait_running(&lan, "db", 1, |n| n == h2);
    lan.kill(3);
    wait_running(&lan, "web", 3, |n| n == h2);

    // A failing update rolls back: the new image exists nowhere.
    lan.ok(
        1,
        &[
            "service",
            "update",
            "--image",
            "nosuch:1",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "1s",
            "web",
        ],
    );
    let mut state = serde_json::Value::Null;
    for _ in 0..300 {
        let v: serde_json::Value = serde_json::from_str(&lan.ok(1, &["service", "inspect", "web"])).unwrap();
        state = v[0]["update"].clone();
        if state.get("rolled_back").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(state.get("rolled_back").is_some(), "{state}");
    let back = wait_running(&lan, "web", 3, |n| n == h2);
    assert!(back.iter().all(|t| t["task"]["template"]["image"] == "svcbox"), "{back:?}");

    // Removed: its tasks stop and their containers go.
    lan.ok(1, &["service", "rm", "web", "db"]);
    for _ in 0..150 {
        if lan.ok(2, &["-q", "ps", "-a"]).trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lan.ok(2, &["-q", "ps", "-a"]).trim(), "", "h2 keeps containers of removed services");
    lan.ok(1, &["secret", "rm", "pw"]);
}

/// A docker-registry inside host `i`'s namespace, on its address, with TLS from a CA made here;
/// stopped when dropped.
struct LanRegistry {
    child: std::process::Child,
    host: String,
    ns: String,
    certs: std::path::PathBuf,
}

impl LanRegistry {
    fn start(lan: &Lan, i: usize) -> LanRegistry {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
        let dir = lan.dir.path().join("registry");
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(SanType::IpAddress(lan.addr(i).parse().unwrap()));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("ca.crt"), ca.pem()).unwrap();
        let host = format!("{}:5000", lan.addr(i));
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("data").display(),
                dir.join("server.crt").display(),
                dir.join("server.key").display()
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &lan.ns(i), "docker-registry", "serve"])
            .arg(dir.join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.err")).unwrap())
            .spawn()
            .unwrap();
        let r = LanRegistry {
            child,
            host,
            ns: lan.ns(i),
            certs,
        };
        for _ in 0..150 {
            if r.skopeo_try(&["inspect", "--raw", &format!("docker://{}/none/none:0", r.host)])
                .contains("manifest unknown")
            {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the registry did not come up: {}",
            std::fs::read_to_string(dir.join("registry.err")).unwrap_or_default()
        );
    }

    /// skopeo in the registry's namespace; its stdout, or its stderr when it fails.
    fn skopeo_try(&self, args: &[&str]) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns, "skopeo"])
            .args(args)
            .args(if args[0] == "copy" { ["--dest-cert-dir"] } else { ["--cert-dir"] })
            .arg(&self.certs)
            .output()
            .unwrap();
        String::from_utf8_lossy(if o.status.success() { &o.stdout } else { &o.stderr }).into_owned()
    }

    /// Pushes an image whose /etc/greeting says `greeting` as `repo`; its manifest digest.
    fn push(&self, dir: &std::path::Path, repo: &str, greeting: &str) -> String {
        let layout = dir.join(format!("layout-{greeting}"));
        let g = greeting.to_owned();
        common::umoci_image(
            &layout,
            &[&|r: &std::path::Path| common::busybox_rootfs(r), &move |r: &std::path::Path| {
                std::fs::create_dir_all(r.join("etc")).unwrap();
                std::fs::write(r.join("etc/greeting"), &g).unwrap();
                let _ = std::os::unix::fs::symlink("busybox", r.join("bin/sleep"));
            }],
        );
        let to = format!("docker://{}/{repo}", self.host);
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns, "skopeo", "copy", "--quiet", "--dest-cert-dir"])
            .arg(&self.certs)
            .arg(format!("oci:{}:t", layout.display()))
            .arg(&to)
            .output()
            .unwrap();
        assert!(o.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&o.stderr));
        self.skopeo_try(&["inspect", "--format", "{{.Digest}}", &to]).trim().to_owned()
    }
}

impl Drop for LanRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The manager resolves a service's tag to a digest once, through its registry (and the trust
/// policy): every task runs that digest, also after the tag moves, until `service update
/// --image` resolves it again; a policy that denies the repository refuses the service.
#[test]
fn services_run_the_digest_their_tag_had_until_an_update_resolves_it_again() {
    let lan = Lan::new(2);
    std::fs::set_permissions(lan.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let reg = LanRegistry::start(&lan, 2);
    let config = lan.dir.path().join("config");
    let certs = config.join("certs.d").join(&reg.host);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(reg.certs.join("ca.crt"), certs.join("ca.crt")).unwrap();
    let cfg = config.to_str().unwrap();
    let bh = |args: &[&str]| -> String { lan.ok(1, &[&["--config", cfg], args].concat()) };
    bh(&["cluster", "init", "--advertise-addr", &lan.addr(1), "--dispatcher-heartbeat", "1s"]);

    let image = format!("{}/test/app:v1", reg.host);
    let first = reg.push(lan.dir.path(), "test/app:v1", "first");
    bh(&["service", "create", "--name", "app", &image, "sleep", "3600"]);
    let spec: serde_json::Value = serde_json::from_str(&bh(&["service", "inspect", "app"])).unwrap();
    assert_eq!(spec[0]["spec"]["task"]["digest"], first.as_str(), "{spec}");
    let greeting = |t: &serde_json::Value| bh(&["exec", t["status"]["container"].as_str().unwrap(), "cat", "/etc/greeting"]);
    let running = wait_running(&lan, "app", 1, |_| true);
    assert_eq!(greeting(&running[0]), "first");

    // The tag moves; a new task still runs what the service was created with.
    let second = reg.push(lan.dir.path(), "test/app:v1", "second");
    assert_ne!(first, second);
    bh(&["service", "scale", "app=2"]);
    let running = wait_running(&lan, "app", 2, |_| true);
    for t in &running {
        assert_eq!(greeting(t), "first", "{t}");
    }
    // `update --image` resolves the tag again, and the tasks roll to it.
    bh(&["service", "update", "--image", &image, "--update-monitor", "1s", "app"]);
    let mut rolled = Vec::new();
    for _ in 0..300 {
        rolled = wait_running(&lan, "app", 2, |_| true);
        if rolled.iter().all(|t| t["task"]["template"]["digest"] == second.as_str()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for t in &rolled {
        assert_eq!(greeting(t), "second", "{t}");
    }

    // A trust policy whose default is deny refuses the service, and nothing is created.
    std::fs::write(config.join("policy.toml"), "default = \"deny\"\n").unwrap();
    let err = lan.fails(1, &["--config", cfg, "service", "create", "--name", "denied", &image]);
    assert!(err.contains("not covered by the trust policy"), "{err}");
    std::fs::remove_file(config.join("policy.toml")).unwrap();
    assert!(!bh(&["service", "ls"]).contains("denied"));
    bh(&["service", "rm", "app"]);
}

/// Mutual TLS between two workloads with nothing but their SVIDs and bundles: each side verifies
/// the other's chain against its bundle (rustls's WebPKI verifier) and accepts exactly one
/// SPIFFE ID.
mod spiffe_tls {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
    use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

    /// The files of a task's /run/secrets/identity.
    pub struct Creds {
        pub chain: String,
        pub key: String,
        pub bundle: String,
    }

    #[derive(Debug)]
    struct Expect {
        inner: Arc<dyn ClientCertVerifier>,
        id: String,
    }

    impl Expect {
        fn check(&self, end: &CertificateDer<'_>, inter: &[CertificateDer<'_>], now: UnixTime) -> Result<(), rustls::Error> {
            self.inner.verify_client_cert(end, inter, now)?;
            let uris = bulkhead_cluster::pki::uri_names(end);
            if uris != [self.id.clone()] {
                return Err(rustls::Error::General(format!("peer is {uris:?}, not {}", self.id)));
            }
            Ok(())
        }
    }

    impl ClientCertVerifier for Expect {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.inner.root_hint_subjects()
        }
        fn verify_client_cert(
            &self,
            end: &CertificateDer<'_>,
            inter: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.check(end, inter, now).map(|()| ClientCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(m, c, d)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(m, c, d)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    impl ServerCertVerifier for Expect {
        fn verify_server_cert(
            &self,
            end: &CertificateDer<'_>,
            inter: &[CertificateDer<'_>],
            _name: &ServerName<'_>,
            _ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.check(end, inter, now).map(|()| ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(m, c, d)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(m, c, d)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.unwrap()).collect()
    }

    fn expect(bundle: &str, id: &str) -> Arc<Expect> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(bundle) {
            roots.add(c).unwrap();
        }
        Arc::new(Expect {
            inner: rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap(),
            id: id.to_owned(),
        })
    }

    /// A TLS 1.3 handshake in memory between a server with `server`'s credentials that accepts
    /// only `client_id` and a client with `client`'s that accepts only `server_id`.
    pub fn handshake(server: &Creds, client_id: &str, client: &Creds, server_id: &str) -> Result<(), String> {
        use rustls::pki_types::pem::PemObject;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let key = |c: &Creds| PrivateKeyDer::from_pem_slice(c.key.as_bytes()).unwrap();
        let scfg = rustls::ServerConfig::builder()
            .with_client_cert_verifier(expect(&server.bundle, client_id))
            .with_single_cert(certs(&server.chain), key(server))
            .unwrap();
        let ccfg = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(expect(&client.bundle, server_id))
            .with_client_auth_cert(certs(&client.chain), key(client))
            .unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(ccfg), ServerName::try_from("workload").unwrap()).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(scfg)).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().map_err(|e| format!("server: {e}"))?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().map_err(|e| format!("client: {e}"))?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err("the handshake did not finish".into())
    }
}

/// Run by [`tasks_have_identities_they_renew_and_use_for_mutual_tls`] in a process of its own:
/// moves itself into the cgroup `BULKHEAD_PROBE_CGROUP` names (if any), then asks the Workload
/// API at `BULKHEAD_PROBE_SOCKET` for its SVID with the `spiffe` crate's client, and prints the
/// SPIFFE ID or the error.
#[test]
#[ignore = "a probe, run by another test"]
fn workload_api_probe() {
    let Ok(socket) = std::env::var("BULKHEAD_PROBE_SOCKET") else {
        return;
    };
    if let Ok(procs) = std::env::var("BULKHEAD_PROBE_CGROUP") {
        std::fs::write(procs, std::process::id().to_string()).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{socket}")).await.unwrap();
        match client.fetch_x509_svid().await {
            Ok(svid) => println!("PROBE SPIFFE_ID={}", svid.spiffe_id()),
            Err(e) => println!("PROBE ERROR={e}"),
        }
    });
}

/// The probe's answer, from the cgroup of container `container` (or none).
fn probe(socket: &std::path::Path, container: Option<&str>) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "workload_api_probe", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("BULKHEAD_PROBE_SOCKET", socket);
    if let Some(c) = container {
        let procs = ["/sys/fs/cgroup/pids/bulkhead", "/sys/fs/cgroup/bulkhead"]
            .iter()
            .map(|d| std::path::Path::new(d).join(c).join("cgroup.procs"))
            .find(|p| p.exists())
            .expect("the container's cgroup");
        cmd.env("BULKHEAD_PROBE_CGROUP", procs);
    }
    let out = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
    out.lines()
        .find_map(|l| Some(&l[l.find("PROBE ")? + 6..]))
        .unwrap_or_else(|| panic!("the probe said nothing: {out}"))
        .to_owned()
}

/// Every task has an identity, seen from inside: its SVID, key and bundle at
/// /run/secrets/identity, read-only, owned by its user, renewed in place at half its life; the
/// Workload API answers a process in the task's cgroup with that task's SVID and anyone else
/// with nothing; two services' tasks complete a mutual TLS handshake with these files alone, and
/// a peer that expects one service refuses the other; the identity goes with the task.
#[test]
fn tasks_have_identities_they_renew_and_use_for_mutual_tls() {
    let lan = Lan::new(1);
    std::fs::set_permissions(lan.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    lan.ok(
        1,
        &["cluster", "init", "--advertise-addr", &lan.addr(1), "--dispatcher-heartbeat", "1s"],
    );
    lan.ok(1, &["cluster", "ca", "--svid-expiry", "12s"]);
    let cluster_id = node_cluster_id(&lan, 1);
    let rootfs = lan.dir.path().join("rootfs");
    common::busybox_rootfs(&rootfs);
    for a in ["sleep", "ls", "sh", "env"] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
    }
    lan.ok(
        1,
        &[
            "image",
            "import",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--tag",
            "idbox",
            "--cmd",
            "/bin/sh",
        ],
    );
    for s in ["web", "api"] {
        lan.ok(1, &["service", "create", "--name", s, "idbox", "sleep", "3600"]);
    }
    let web = wait_running(&lan, "web", 1, |_| true).remove(0);
    let api = wait_running(&lan, "api", 1, |_| true).remove(0);
    let container = |t: &serde_json::Value| t["status"]["container"].as_str().unwrap().to_owned();
    let (cw, ca) = (container(&web), container(&api));
    let read = |c: &str, f: &str| lan.ok(1, &["exec", c, "cat", &format!("/run/secrets/identity/{f}")]);
    let creds = |c: &str| spiffe_tls::Creds {
        chain: read(c, "svid.pem"),
        key: read(c, "svid_key.pem"),
        bundle: read(c, "bundle.pem"),
    };
    let id = |s: &str| format!("spiffe://{cluster_id}/ns/default/svc/{s}");
    let (w, a) = (creds(&cw), creds(&ca));
    assert_eq!(bulkhead_cluster::pki::uri_names(w.chain.as_bytes()), [id("web")]);
    assert_eq!(bulkhead_cluster::pki::uri_names(a.chain.as_bytes()), [id("api")]);
    // Owned by the task's user (root in its namespace), the key 0400, and read-only.
    let ls = lan.ok(1, &["exec", &cw, "ls", "-lnL", "/run/secrets/identity"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("-r--------") && l.contains(" 0 ") && l.ends_with("svid_key.pem")),
        "{ls}"
    );
    let o = lan.run(1, &["exec", &cw, "sh", "-c", "echo x > /run/secrets/identity/svid.pem"]);
    assert!(!o.status.success(), "the identity files are writable from the task");
    let env = lan.ok(1, &["exec", &cw, "env"]);
    assert!(env.contains("SPIFFE_ENDPOINT_SOCKET=unix:///run/spiffe/workload/api.sock"), "{env}");

    // Mutual TLS with the files alone; a peer that expects api refuses web.
    spiffe_tls::handshake(&w, &id("api"), &a, &id("web")).expect("web serves api");
    let e = spiffe_tls::handshake(&w, &id("api"), &w, &id("web")).unwrap_err();
    assert!(e.contains("not"), "{e}");

    // The Workload API: the task's own SVID from its cgroup, nothing from elsewhere.
    let socket = lan.root(1).join("identity/api/api.sock");
    assert_eq!(probe(&socket, Some(&cw)), format!("SPIFFE_ID={}", id("web")));
    assert_eq!(probe(&socket, Some(&ca)), format!("SPIFFE_ID={}", id("api")));
    let outside = probe(&socket, None);
    assert!(outside.starts_with("ERROR=") && outside.contains("no identity"), "{outside}");

    // Renewed in place before it expires (12 s: at 6 s), and still valid for mTLS.
    let mut renewed = None;
    for _ in 0..100 {
        let now = read(&cw, "svid.pem");
        if now != w.chain {
            renewed = Some(now);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let renewed = renewed.expect("web's SVID renewed within 20 s");
    let w2 = spiffe_tls::Creds {
        chain: renewed,
        key: read(&cw, "svid_key.pem"),
        bundle: read(&cw, "bundle.pem"),
    };
    spiffe_tls::handshake(&a, &id("web"), &w2, &id("api")).expect("api serves web's renewed SVID");

    // The identity goes with the task.
    let task = web["task"]["id"].as_str().unwrap().to_owned();
    lan.ok(1, &["service", "rm", "web"]);
    let dir = lan.root(1).join("identity/tasks").join(&task);
    for _ in 0..100 {
        if !dir.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!dir.exists(), "web's identity tmpfs is left at {}", dir.display());
    lan.ok(1, &["service", "rm", "api"]);
}

fn node_cluster_id(lan: &Lan, i: usize) -> String {
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(lan.root(i).join("cluster/node.json")).unwrap()).unwrap();
    cfg["cluster_id"].as_str().unwrap().to_owned()
}

/// A node verifies a repository its trust policy covers itself: a service pinned to a digest
/// the signed tag does not name (by a CLI that ran without the policy, after the registry moved
/// the tag) is refused on the node; pinned through the policy, it runs the signed image.
#[test]
fn nodes_verify_a_covered_tag_against_the_digest_a_service_is_pinned_to() {
    for role in ["ROOT", "TARGETS", "SNAPSHOT", "TIMESTAMP"] {
        std::env::set_var(format!("BULKHEAD_TRUST_{role}_PASSPHRASE"), format!("{role} passphrase"));
    }
    let lan = Lan::new(2);
    std::fs::set_permissions(lan.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let reg = LanRegistry::start(&lan, 2);
    // The node's configuration (with the trust policy), and one without any.
    let config = |name: &str| {
        let c = lan.dir.path().join(name);
        let certs = c.join("certs.d").join(&reg.host);
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(reg.certs.join("ca.crt"), certs.join("ca.crt")).unwrap();
        c.to_str().unwrap().to_owned()
    };
    let (signed_cfg, bare_cfg) = (config("config"), config("bare"));
    let with = |cfg: &str, args: &[&str]| -> String { lan.ok(1, &[&["--config", cfg], args].concat()) };
    let signed = reg.push(lan.dir.path(), "test/app:1", "signed");
    let repo = format!("{}/test/app", reg.host);
    with(&signed_cfg, &["trust", "init", &repo]);
    with(&signed_cfg, &["trust", "sign", &format!("{repo}:1")]);
    with(
        &signed_cfg,
        &["cluster", "init", "--advertise-addr", &lan.addr(1), "--dispatcher-heartbeat", "1s"],
    );
    // The registry moves the tag; a CLI without the policy pins what it now says.
    let moved = reg.push(lan.dir.path(), "test/app:1", "moved");
    assert_ne!(signed, moved);
    let image = format!("{repo}:1");
    with(&bare_cfg, &["service", "create", "--name", "unsigned", &image, "sleep", "3600"]);
    let spec: serde_json::Value = serde_json::from_str(&with(&bare_cfg, &["service", "inspect", "unsigned"])).unwrap();
    assert_eq!(spec[0]["spec"]["task"]["digest"], moved.as_str());
    let mut message = String::new();
    for _ in 0..150 {
        let t = tasks(&lan, 1, "unsigned");
        if let Some(m) = t
            .iter()
            .find_map(|t| t["status"]["message"].as_str().filter(|m| m.contains("signed as another image")))
        {
            message = m.to_owned();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !message.is_empty(),
        "the node ran an image its trust policy does not sign: {:?}",
        tasks(&lan, 1, "unsigned")
    );
    assert!(wait_running_none(&lan, "unsigned"));
    with(&bare_cfg, &["service", "rm", "unsigned"]);
    // Through the policy: pinned to the signed image, which runs.
    with(&signed_cfg, &["service", "create", "--name", "app", &image, "sleep", "3600"]);
    let spec: serde_json::Value = serde_json::from_str(&with(&signed_cfg, &["service", "inspect", "app"])).unwrap();
    assert_eq!(spec[0]["spec"]["task"]["digest"], signed.as_str());
    let t = wait_running(&lan, "app", 1, |_| true).remove(0);
    let c = t["status"]["container"].as_str().unwrap();
    assert_eq!(with(&signed_cfg, &["exec", c, "cat", "/etc/greeting"]), "signed");
    with(&signed_cfg, &["service", "rm", "app"]);
}

/// Whether no task of `service` is running.
fn wait_running_none(lan: &Lan, service: &str) -> bool {
    tasks(lan, 1, service).iter().all(|t| t["state"] != "running")
}

const STACK: &str = r#"services:
  web:
    image: stackbox
    command: httpd -f -p 80 -h /www
    depends_on: [app]
    deploy:
      mode: global
  app:
    image: stackbox
    command: httpd -f -p 8080 -h /www
    expose: ["8080"]
    depends_on: [db]
    secrets: [token]
    deploy:
      mode: global
      update_config:
        parallelism: 3
  db:
    image: stackbox
    command: ["sh", "-c", "echo db ready; while true; do echo pong | nc -l -p 5432; echo served; done"]
    expose: ["5432"]
    deploy:
      mode: global
      resources:
        limits:
          memory: 64M
secrets:
  token:
    file: ./token
"#;

#[test]
fn a_stack_runs_across_three_nodes_with_its_derived_policy_on_each_and_leaves_nothing() {
    let lan = Lan::new(3);
    cluster_with_image(&lan, "stackbox", &["httpd", "nc", "sleep", "timeout", "echo", "wget"]);
    let dir = lan.dir.path().join("shop");
    std::fs::create_dir_all(&dir).unwrap();
    let marker = format!("STACKTOKEN{}", std::process::id());
    std::fs::write(dir.join("token"), &marker).unwrap();
    let file = dir.join("compose.yaml");
    std::fs::write(&file, STACK).unwrap();
    let f = file.to_str().unwrap();

    // A file a stack cannot honour changes nothing.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "services:\n  x:\n    image: stackbox\n    volumes: [\"/:/host\"]\n").unwrap();
    let err = lan.fails(1, &["stack", "deploy", "-c", bad.to_str().unwrap(), "bad"]);
    assert!(err.contains("services.x.volumes") && err.lines().count() <= 2, "{err}");
    assert!(!lan.ok(1, &["service", "ls"]).contains("bad_x"));
    // A file naming one of the cluster's secrets gets it only when the deployer says so.
    lan.ok(1, &["secret", "create", "prod_pw", file_of(&lan, "prodpw", "PRODPW")]);
    std::fs::write(
        &bad,
        "services:\n  x:\n    image: stackbox\n    secrets: [pw]\nsecrets:\n  pw:\n    external: true\n    name: prod_pw\n",
    )
    .unwrap();
    let err = lan.fails(1, &["stack", "deploy", "-c", bad.to_str().unwrap(), "bad"]);
    assert!(err.contains("--allow-external"), "{err}");
    assert!(!lan.ok(1, &["service", "ls"]).contains("bad_x"));

    let out = lan.ok(1, &["stack", "deploy", "-c", f, "shop"]);
    assert!(
        out.contains("secret shop_token created") && out.contains("service shop_web created"),
        "{out}"
    );
    assert!(lan
        .ok(1, &["stack", "ls"])
        .lines()
        .any(|l| l.starts_with("shop ") && l.trim_end().ends_with('3')));
    let ids: Vec<String> = (1..=3).map(|i| node_id(&lan, i)).collect();
    let mut on: std::collections::BTreeMap<(String, String), String> = std::collections::BTreeMap::new();
    for svc in ["shop_web", "shop_app", "shop_db"] {
        for t in wait_running(&lan, svc, 3, |_| true) {
            let node = t["task"]["node"].as_str().unwrap().to_owned();
            on.insert((svc.to_owned(), node), t["status"]["container"].as_str().unwrap().to_owned());
        }
    }
    assert!(lan.ok(1, &["stack", "services", "shop"]).contains("3/global"));
    assert_eq!(
        lan.ok(1, &["stack", "ps", "shop"])
            .lines()
            .filter(|l| l.contains("running"))
            .count(),
        9
    );
    // The same file again changes nothing.
    let again = lan.ok(1, &["stack", "deploy", "-c", f, "shop"]);
    assert!(again.contains("service shop_db unchanged") && !again.contains("created"), "{again}");

    // On every node: what the file declares passes, nothing else does, seen from inside.
    for (i, node) in ids.iter().enumerate() {
        let h = i + 1;
        let c = |svc: &str| on[&(svc.to_owned(), node.clone())].clone();
        let tcp = |from: &str, to: &str, port: &str| {
            let o = lan.run(h, &["exec", &c(from), "timeout", "-s", "KILL", "3", "nc", to, port]);
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let http = |from: &str, url: &str| {
            let o = lan.run(h, &["exec", &c(from), "timeout", "-s", "KILL", "3", "wget", "-qO-", url]);
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let mut pong = false;
        for _ in 0..10 {
            pong = tcp("shop_app", "db", "5432").contains("pong");
            if pong {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(pong, "host {h}: app cannot reach db:5432");
        assert!(
            http("shop_web", "http://app:8080/").contains("hello"),
            "host {h}: web cannot reach app:8080"
        );
        assert!(!tcp("shop_web", "db", "5432").contains("pong"), "host {h}: web reached db");
        assert!(!http("shop_db", "http://app:8080/").contains("hello"), "host {h}: db reached app");
        assert!(!http("shop_app", "http://web:80/").contains("hello"), "host {h}: app reached web");
        let rules = lan.ok(h, &["network", "rules"]);
        assert!(
            rules.contains("stack shop: ") && rules.contains("compose.yaml:5 depends_on"),
            "{rules}"
        );
        assert!(lan.ok(h, &["network", "ls"]).contains("shop_default"));
        // The secret the file brings, in the app's task only.
        assert_eq!(lan.ok(h, &["exec", &c("shop_app"), "cat", "/run/secrets/token"]), marker);
        // The stack's network is its tasks' alone.
        let err = lan.fails(h, &["run", "--rm", "--network", "shop_default", "stackbox", "true"]);
        assert!(err.contains("stack shop's"), "{err}");
        let status = lan.ok(h, &["exec", &c("shop_db"), "cat", "/proc/self/status"]);
        assert!(status.contains("NoNewPrivs:\t1") && status.contains("Seccomp:\t2"), "{status}");
    }
    // Its services carry their stack (the namespace of their SPIFFE IDs, the rules' selector).
    let spec = lan.ok(1, &["service", "inspect", "shop_db"]);
    assert!(spec.contains("\"stack\": \"shop\""), "{spec}");

    // `service logs`: every task's output, from the nodes that run them, named by task and node.
    let logs = lan.ok(1, &["service", "logs", "shop_db"]);
    assert_eq!(
        logs.lines()
            .filter(|l| l.starts_with("shop_db.") && l.ends_with("| db ready"))
            .count(),
        3,
        "{logs}"
    );
    // Following: what a task writes later reaches the user (from another node than the leader's).
    let mut follow = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--root")
        .arg(lan.root(1))
        .args(["service", "logs", "-f", "--tail", "0", "shop_db"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // (db writes `served` after each connection; app on host 2 makes one.)
    let app2 = on[&("shop_app".to_owned(), ids[1].clone())].clone();
    let mut late = None;
    for _ in 0..20 {
        lan.run(2, &["exec", &app2, "timeout", "-s", "KILL", "3", "nc", "db", "5432"]);
        if let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
            late = Some(l);
            break;
        }
    }
    let late = late.expect("no line followed");
    assert!(late.starts_with("shop_db.") && late.ends_with("| served"), "{late}");
    // Still following past the calls' deadlines (a node sends in calls of 8 s).
    std::thread::sleep(Duration::from_secs(20));
    while rx.try_recv().is_ok() {}
    lan.run(2, &["exec", &app2, "timeout", "-s", "KILL", "3", "nc", "db", "5432"]);
    let later = rx.recv_timeout(Duration::from_secs(10));
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(later.as_deref().is_ok_and(|l| l.ends_with("| served")), "{later:?}");

    // `stack rm`: no task, container, network, rule or secret of it is left on any node.
    lan.ok(1, &["stack", "rm", "shop"]);
    for h in 1..=3 {
        let mut clean = false;
        for _ in 0..150 {
            let ps = lan.ok(h, &["ps", "-a"]);
            let nets = lan.ok(h, &["network", "ls"]);
            let rules = lan.ok(h, &["network", "rules"]);
            clean = !ps.contains("shop_") && !nets.contains("shop_default") && !rules.contains("stack shop");
            if clean {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(clean, "host {h}: the stack left something");
    }
    assert!(!lan.ok(1, &["secret", "ls"]).contains("shop_token"));
    assert!(!lan.ok(1, &["stack", "ls"]).contains("shop"));
    assert!(lan.ok(1, &["service", "ls"]).lines().count() <= 1);
}

/// A task with a healthcheck is `starting` until it passes; an update whose new task fails its
/// healthcheck rolls back, and the unhealthy task is stopped.
#[test]
fn tasks_run_once_healthy_and_an_update_that_is_not_rolls_back() {
    let lan = Lan::new(1);
    cluster_with_image(&lan, "hbox", &["sleep", "touch", "test", "false"]);
    lan.ok(
        1,
        &[
            "service",
            "create",
            "--name",
            "slow",
            "--health-cmd",
            "test -f /tmp/ready",
            "--health-interval",
            "300ms",
            "--health-start-period",
            "5s",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "1s",
            "hbox",
            "sh",
            "-c",
            "sleep 3; touch /tmp/ready; sleep 3600",
        ],
    );
    // Started, but not running before its healthcheck passes.
    let mut seen_starting = false;
    for _ in 0..100 {
        let t = tasks(&lan, 1, "slow");
        if t.iter().any(|t| t["state"] == "starting" && t["status"]["container"].is_string()) {
            seen_starting = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen_starting, "{:?}", tasks(&lan, 1, "slow"));
    wait_running(&lan, "slow", 1, |_| true);
    // An update whose tasks never become healthy: rolled back, its task stopped and failed.
    lan.ok(1, &["service", "update", "--health-cmd", "false", "slow"]);
    let mut inspect = serde_json::Value::Null;
    for _ in 0..300 {
        inspect = serde_json::from_str(&lan.ok(1, &["service", "inspect", "slow"])).unwrap();
        if inspect[0]["update"]["rolled_back"].is_object() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(inspect[0]["update"]["rolled_back"].is_object(), "{inspect}");
    assert_eq!(inspect[0]["spec"]["task"]["health_cmd"], "test -f /tmp/ready");
    let all = tasks(&lan, 1, "slow");
    assert!(
        all.iter().any(|t| t["state"] == "failed"
            && t["task"]["template"]["health_cmd"] == "false"
            && t["status"]["message"].as_str().unwrap_or("").contains("healthcheck")),
        "{all:?}"
    );
    let again = wait_running(&lan, "slow", 1, |_| true);
    assert_eq!(again[0]["task"]["template"]["health_cmd"], "test -f /tmp/ready");
    // The unhealthy task's container is stopped (not left running beside its replacement).
    for t in all
        .iter()
        .filter(|t| t["task"]["template"]["health_cmd"] == "false" && t["state"] == "failed")
    {
        if let Some(c) = t["status"]["container"].as_str() {
            let o = lan.run(1, &["inspect", c]);
            let text = String::from_utf8_lossy(&o.stdout);
            let running = o.status.success() && text.contains("\"Running\": true");
            assert!(!running, "{}: {text}", serde_json::to_string(&all).unwrap());
        }
    }
    lan.ok(1, &["service", "rm", "slow"]);
}

/// A file under the test's directory holding `data`; its path.
fn file_of(lan: &Lan, name: &str, data: &str) -> &'static str {
    let p = lan.dir.path().join(name);
    std::fs::write(&p, data).unwrap();
    Box::leak(p.to_string_lossy().into_owned().into_boxed_str())
}
