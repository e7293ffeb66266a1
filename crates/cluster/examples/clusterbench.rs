//! bench/cluster's harness: three managers of the replicated store in this process, over real
//! mutual TLS, each with its own sealed redb file; then
//! - commit latency: sequential writes of 256 bytes through the leader (median, p99);
//! - throughput: concurrent writers;
//! - 500 worker agents joining with a token (CA fetch, CSR, certificate), 32 at a time;
//! - a renewal storm: the same 500 renewing at once, 32 at a time.
//!
//! With `CLUSTERBENCH_NETNS=client,m1,m2,m3` and `CLUSTERBENCH_ADDRS=a1,a2,a3`, each manager
//! runs on threads of its own inside its network namespace, listening on its address, and the
//! writers and agents run in the client's: every message crosses veths and a bridge, as between
//! hosts. Without them, everything is on loopback.
//!
//! Prints one JSON object. Not a test: bench/cluster runs it beside etcd.

use std::sync::Arc;
use std::time::Instant;

use bulkhead_cluster::manager::{self, Manager};
use bulkhead_cluster::store::{Op, Request};
use bulkhead_cluster::tls;

mod benchkit;
use benchkit::{join_many, pct, start_manager};

/// Moves this thread into the network namespace `ns` (threads it starts later are there too).
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(&f), Some(rustix::thread::LinkNameSpaceType::Network)).unwrap();
}

/// Where the managers run: (namespace, address) each, or loopback.
fn placement() -> Option<(String, Vec<(String, String)>)> {
    let ns: Vec<String> = std::env::var("CLUSTERBENCH_NETNS").ok()?.split(',').map(str::to_owned).collect();
    let addrs: Vec<String> = std::env::var("CLUSTERBENCH_ADDRS").ok()?.split(',').map(str::to_owned).collect();
    assert!(
        ns.len() == 4 && addrs.len() == 3,
        "CLUSTERBENCH_NETNS: client and 3 managers; CLUSTERBENCH_ADDRS: 3"
    );
    Some((ns[0].clone(), ns[1..].iter().cloned().zip(addrs).collect()))
}

/// A manager listening on loopback, or (`at`: a namespace and an address) on a runtime of its
/// own whose threads are in that namespace, until the process ends.
async fn manager(dir: &std::path::Path, raft_id: u64, cert: &str, key: &str, ca: &str, at: Option<(String, String)>) -> (Manager, String) {
    let Some(at) = at else {
        // On loopback, on the harness's own runtime.
        return start_manager(dir, raft_id, cert, key, ca, "127.0.0.1", false).await;
    };
    let (dir, cert, key, ca) = (dir.to_owned(), cert.to_owned(), key.to_owned(), ca.to_owned());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let (ns, ip) = at;
        enter(&ns);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let _ = tx.send(start_manager(&dir, raft_id, &cert, &key, &ca, &ip, false).await);
            std::future::pending::<()>().await
        });
    });
    rx.await.unwrap()
}

fn main() {
    let place = placement();
    if let Some((client, _)) = &place {
        enter(client);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(place.map(|p| p.1)));
}

async fn bench(at: Option<Vec<(String, String)>>) {
    let at = |i: usize| at.as_ref().map(|a| a[i].clone());
    let writes: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let agents: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(500);
    let dir = tempfile::Builder::new().prefix("clusterbench-").tempdir_in("/var/tmp").unwrap();
    // Three managers.
    let f = benchkit::first_identity();
    let (m1, a1) = manager(dir.path(), f.raft_id, &f.cert, &f.key, f.ca.cert_pem(), at(0)).await;
    let (worker_token, manager_token) = benchkit::bootstrap(&m1, &a1, &f).await;
    let mut others = Vec::new();
    for i in 1..=2 {
        let j = manager::join_cluster(&a1, &manager_token.text()).await.unwrap();
        let (m, a) = manager(dir.path(), j.raft_id.unwrap(), &j.cert_pem, &j.key_pem, &j.ca_pem, at(i)).await;
        manager::request_membership(&a1, m.tls.clone(), j.raft_id.unwrap(), &a)
            .await
            .unwrap();
        others.push(m);
    }
    let value = vec![b'v'; 256];
    // Commit latency: one write at a time through the leader.
    let mut lat = Vec::with_capacity(writes);
    for i in 0..writes {
        let t = Instant::now();
        let r = m1
            .write(Request {
                checks: vec![],
                ops: vec![Op::Put {
                    key: format!("bench/seq/{i}"),
                    value: value.clone(),
                }],
            })
            .await
            .unwrap();
        assert!(r.applied);
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99) = (pct(&mut lat.clone(), 0.5), pct(&mut lat, 0.99));
    // Throughput: 16 writers.
    let total = writes * 4;
    let t = Instant::now();
    let m = Arc::new(m1.clone());
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (m, value) = (m.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(16) {
                m.write(Request {
                    checks: vec![],
                    ops: vec![Op::Put {
                        key: format!("bench/par/{i}"),
                        value: value.clone(),
                    }],
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let per_sec = total as f64 / t.elapsed().as_secs_f64();
    // 500 agents join, 32 at a time.
    let t = Instant::now();
    let joined = join_many(&a1, &worker_token.text(), agents).await;
    let join_s = t.elapsed().as_secs_f64();
    // A renewal storm: all of them at once, 32 at a time.
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let t = Instant::now();
    let mut renews = Vec::new();
    for j in &joined {
        let id = tls::Identity::new(&j.cert_pem, &j.key_pem).unwrap();
        let ctls = tls::client_config(&j.ca_pem, Some(id)).unwrap();
        let (sem, a1) = (sem.clone(), a1.clone());
        renews.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            manager::renew_at(&a1, ctls).await.unwrap()
        }));
    }
    for r in renews {
        r.await.unwrap();
    }
    let renew_s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "writes": writes, "commit_ms_p50": p50, "commit_ms_p99": p99,
            "concurrent_writes": total, "writers": 16, "writes_per_s": per_sec,
            "agents": agents, "join_s": join_s, "renew_s": renew_s,
        })
    );
    for m in others.into_iter().chain(std::iter::once(m1)) {
        let _ = m.raft.shutdown().await;
    }
    drop(dir);
    std::process::exit(0);
}
