//! What the cluster's benchmark harnesses share: managers over real mutual TLS in this process,
//! each with its own sealed redb file, and percentiles. Each harness uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_cluster::crypt::Key;
use bulkhead_cluster::manager::{self, Manager, NodeRecord};
use bulkhead_cluster::pki::{self, Ca, JoinToken, Role};
use bulkhead_cluster::store;
use bulkhead_cluster::tls;
use bulkhead_cluster::transport::{self, Auth, Network};

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A manager of cluster "bench" listening on `ip`, with the leader's dispatcher and
/// orchestration if `dispatch`, on the caller's runtime.
pub async fn start_manager(
    dir: &std::path::Path,
    raft_id: u64,
    cert: &str,
    key: &str,
    ca: &str,
    ip: &str,
    dispatch: bool,
) -> (Manager, String) {
    let me = tls::Identity::new(cert, key).unwrap();
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (log, sm) = store::open(&dir.join(format!("{raft_id}.redb")), Key::generate().unwrap()).unwrap();
    let config = store::raft_config("bench").unwrap();
    let client_tls = tls::client_config(ca, Some(me.clone())).unwrap();
    let raft = transport::Raft::new(raft_id, config, Network { tls: client_tls.clone() }, log, sm.clone())
        .await
        .unwrap();
    let m = Manager::new(raft, sm.clone(), Auth::new("bench").with_store(sm), client_tls);
    let hub = dispatch.then(|| {
        let hub = bulkhead_cluster::dispatcher::Hub::new();
        tokio::spawn(hub.clone().follow(m.clone()));
        tokio::spawn(hub.clone().orchestrate(m.clone()));
        hub
    });
    manager::serve_manager(&m, listener, tls::server_config(ca, me).unwrap(), None, hub);
    (m, addr)
}

/// Runs `f` on a runtime of its own (two worker threads, as a manager on a machine of its own
/// would have) that lives until the process ends; its result comes back here. Managers that
/// share the harness's runtime starve each other's heartbeats under load and hold elections
/// that a cluster would not.
pub async fn on_own_runtime<F, T>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let _ = tx.send(f().await);
            std::future::pending::<()>().await
        });
    });
    rx.await.unwrap()
}

/// A new cluster's CA, and its first manager's credentials and Raft id.
pub struct First {
    pub ca: Ca,
    pub cert: String,
    pub key: String,
    pub raft_id: u64,
}

pub fn first_identity() -> First {
    let ca = Ca::create("bench", now(), 10).unwrap();
    let (k, csr) = pki::key_and_request().unwrap();
    let cert = ca
        .issue(&csr, &manager::new_node_id().unwrap(), Role::Manager, "bench", now(), 86400)
        .unwrap();
    First {
        ca,
        cert,
        key: k.serialize_pem(),
        raft_id: manager::new_raft_id().unwrap(),
    }
}

/// Raft initialised with the first manager `m1` (at `a1`), which leads, and the cluster's state
/// put: the (worker, manager) join tokens.
pub async fn bootstrap(m1: &Manager, a1: &str, f: &First) -> (JoinToken, JoinToken) {
    let mut members = BTreeMap::new();
    members.insert(f.raft_id, openraft::BasicNode { addr: a1.to_owned() });
    m1.raft.initialize(members).await.unwrap();
    while m1.raft.metrics().borrow().current_leader != Some(f.raft_id) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ident = pki::identity(f.cert.as_bytes()).unwrap();
    let first = NodeRecord::new(&ident, Some(f.raft_id), Some(a1.to_owned()), now());
    m1.init_state(&f.ca, &first).await.unwrap()
}

/// The first manager of a new cluster on `ip`: it, its address, and the (worker, manager) join
/// tokens.
pub async fn first_manager(dir: &std::path::Path, ip: &str, dispatch: bool) -> (Manager, String, JoinToken, JoinToken) {
    let f = first_identity();
    let (m1, a1) = start_manager(dir, f.raft_id, &f.cert, &f.key, f.ca.cert_pem(), ip, dispatch).await;
    let (worker, manager) = bootstrap(&m1, &a1, &f).await;
    (m1, a1, worker, manager)
}

/// `n` joins with `token` through `addr`, 32 at a time.
pub async fn join_many(addr: &str, token: &str, n: usize) -> Vec<manager::Joined> {
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut joins = Vec::new();
    for _ in 0..n {
        let (sem, addr, tok) = (sem.clone(), addr.to_owned(), token.to_owned());
        joins.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            manager::join_cluster(&addr, &tok).await.unwrap()
        }));
    }
    let mut joined = Vec::new();
    for j in joins {
        joined.push(j.await.unwrap());
    }
    joined
}

pub fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}
