//! The replicated store against openraft's own storage test suite, and what reaches the disk.

use bulkhead_cluster::crypt::Key;
use bulkhead_cluster::store::{self, LogStore, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let d = tempfile::tempdir().unwrap();
        let (log, sm) = store::open(&d.path().join("raft.redb"), Key::generate().unwrap())?;
        Ok((d, log, sm))
    }
}

#[test]
fn passes_openrafts_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

mod net {
    //! An in-process network between Raft nodes (the gRPC transport has tests of its own): each
    //! call goes straight to the target's Raft, or fails as unreachable when either end is cut.
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    use bulkhead_cluster::store::{NodeId, TypeConfig};
    use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::BasicNode;

    pub type Raft = openraft::Raft<TypeConfig>;

    #[derive(Clone, Default)]
    pub struct Router {
        pub nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
        pub cut: Arc<Mutex<BTreeSet<NodeId>>>,
        /// Chunks of snapshots delivered (to see them sent in pieces).
        pub snapshot_chunks: Arc<Mutex<usize>>,
    }

    pub struct Conn {
        from: NodeId,
        to: NodeId,
        r: Router,
    }

    impl RaftNetworkFactory<TypeConfig> for Router {
        type Network = Conn;
        async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Conn {
            Conn {
                from: 0,
                to: target,
                r: self.clone(),
            }
        }
    }

    impl Router {
        pub fn for_node(&self, id: NodeId) -> NodeRouter {
            NodeRouter { id, r: self.clone() }
        }
    }

    /// The factory each node gets (knows who is calling, so a cut node can neither send nor
    /// receive).
    pub struct NodeRouter {
        id: NodeId,
        r: Router,
    }

    impl RaftNetworkFactory<TypeConfig> for NodeRouter {
        type Network = Conn;
        async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Conn {
            Conn {
                from: self.id,
                to: target,
                r: self.r.clone(),
            }
        }
    }

    impl Conn {
        #[allow(clippy::result_large_err)] // openraft's RPCError
        fn target<E: std::error::Error>(&self) -> Result<Raft, RPCError<NodeId, BasicNode, E>> {
            let cut = self.r.cut.lock().unwrap();
            if cut.contains(&self.from) || cut.contains(&self.to) {
                return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other("cut"))));
            }
            self.r
                .nodes
                .lock()
                .unwrap()
                .get(&self.to)
                .cloned()
                .ok_or_else(|| RPCError::Unreachable(Unreachable::new(&std::io::Error::other("down"))))
        }
    }

    impl RaftNetwork<TypeConfig> for Conn {
        async fn append_entries(
            &mut self,
            rpc: AppendEntriesRequest<TypeConfig>,
            _o: RPCOption,
        ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
            let t = self.target()?;
            t.append_entries(rpc).await.map_err(|e| RPCError::Network(NetworkError::new(&e)))
        }

        async fn install_snapshot(
            &mut self,
            rpc: InstallSnapshotRequest<TypeConfig>,
            _o: RPCOption,
        ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>> {
            let t = self.target()?;
            *self.r.snapshot_chunks.lock().unwrap() += 1;
            t.install_snapshot(rpc).await.map_err(|e| RPCError::Network(NetworkError::new(&e)))
        }

        async fn vote(
            &mut self,
            rpc: VoteRequest<NodeId>,
            _o: RPCOption,
        ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
            let t = self.target()?;
            t.vote(rpc).await.map_err(|e| RPCError::Network(NetworkError::new(&e)))
        }
    }
}

use bulkhead_cluster::store::{Op, Request};
use std::collections::BTreeMap;
use std::time::Duration;

async fn start(
    router: &net::Router,
    dir: &std::path::Path,
    id: u64,
    key: &Key,
    config: std::sync::Arc<openraft::Config>,
) -> (net::Raft, StateMachine) {
    // (A Raft just shut down lets go of its file when its last task has ended.)
    let mut opened = store::open(&dir.join(format!("n{id}.redb")), key.clone());
    for _ in 0..100 {
        if opened.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        opened = store::open(&dir.join(format!("n{id}.redb")), key.clone());
    }
    let (log, sm) = opened.unwrap();
    let raft = net::Raft::new(id, config, router.for_node(id), log, sm.clone()).await.unwrap();
    router.nodes.lock().unwrap().insert(id, raft.clone());
    (raft, sm)
}

fn put(k: &str, v: &[u8]) -> Request {
    Request {
        checks: vec![],
        ops: vec![Op::Put {
            key: k.into(),
            value: v.to_vec(),
        }],
    }
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_sealed_survive_a_restart_and_catch_up_by_chunked_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let router = net::Router::default();
    // Quick timing for the test, and a snapshot every 20 entries sent in 512-byte chunks.
    let config = std::sync::Arc::new(
        openraft::Config {
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20),
            snapshot_max_chunk_size: 512,
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    );
    let keys: Vec<Key> = (0..3).map(|_| Key::generate().unwrap()).collect();
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        nodes.insert(id, start(&router, dir.path(), id, &keys[id as usize - 1], config.clone()).await);
    }
    let members: BTreeMap<u64, openraft::BasicNode> = (1..=3).map(|i| (i, openraft::BasicNode { addr: format!("n{i}") })).collect();
    nodes[&1].0.initialize(members).await.unwrap();
    until("a leader", || nodes[&1].0.metrics().borrow().current_leader.is_some()).await;
    let leader = nodes[&1].0.metrics().borrow().current_leader.unwrap();
    let marker = b"MARKER-0123456789-plaintext";
    nodes[&leader].0.client_write(put("secret/db", marker)).await.unwrap();
    // A precondition that fails applies nothing.
    let r = nodes[&leader]
        .0
        .client_write(Request {
            checks: vec![bulkhead_cluster::store::Check::Is {
                key: "secret/db".into(),
                value: None,
            }],
            ops: vec![Op::Delete { key: "secret/db".into() }],
        })
        .await
        .unwrap();
    assert!(!r.data.applied);
    for id in 1..=3u64 {
        let sm = nodes[&id].1.clone();
        until("replication", || sm.get("secret/db").as_deref() == Some(&marker[..])).await;
    }
    // Node 3 cut off: the other two commit without it, past a snapshot and a purge.
    router.cut.lock().unwrap().insert(3);
    let live: Vec<u64> = (1..=2).collect();
    until("a leader among 1 and 2", || {
        live.iter()
            .any(|i| nodes[i].0.metrics().borrow().current_leader.is_some_and(|l| l != 3))
    })
    .await;
    let leader = nodes[&1].0.metrics().borrow().current_leader.unwrap();
    for i in 0..60 {
        nodes[&leader].0.client_write(put(&format!("k{i}"), &[b'x'; 100])).await.unwrap();
    }
    until("a snapshot and a purge on the leader", || {
        nodes[&leader].0.metrics().borrow().purged.is_some()
    })
    .await;
    assert_eq!(nodes[&3].1.get("k59"), None, "a cut node got writes");
    // Healed: node 3 catches up through the snapshot, in chunks.
    router.cut.lock().unwrap().clear();
    let sm3 = nodes[&3].1.clone();
    until("node 3 to catch up", || sm3.get("k59").is_some()).await;
    assert!(*router.snapshot_chunks.lock().unwrap() > 1, "the snapshot was not sent in chunks");
    // Restarted from its files, a node has everything (snapshot, then the committed entries).
    let (raft1, _) = nodes.remove(&1).unwrap();
    raft1.shutdown().await.unwrap();
    router.nodes.lock().unwrap().remove(&1);
    drop(raft1);
    let (raft1, sm1) = start(&router, dir.path(), 1, &keys[0], config.clone()).await;
    until("node 1 to have its state back", || {
        sm1.get("k59").is_some() && sm1.get("secret/db").is_some()
    })
    .await;
    // Node 2's data key rotated while it runs: the whole file sealed anew, writes going on.
    let new2 = Key::generate().unwrap();
    nodes[&2].1.rotate_key(new2.clone()).unwrap();
    let leader = raft1.metrics().borrow().current_leader.unwrap();
    let lr = if leader == 1 { raft1.clone() } else { nodes[&leader].0.clone() };
    lr.client_write(put("after/rotation", b"y")).await.unwrap();
    let sm2 = nodes[&2].1.clone();
    until("node 2 to apply after its rotation", || sm2.get("after/rotation").is_some()).await;
    raft1.shutdown().await.unwrap();
    for (_, (r, _)) in nodes {
        r.shutdown().await.unwrap();
    }
    let n2 = dir.path().join("n2.redb");
    drop((sm1, sm2, sm3, lr));
    router.nodes.lock().unwrap().clear();
    // (The file is let go of when the last task of its Raft has ended.)
    until("node 2's file to open under its new key", || {
        StateMachine::key_fits(&n2, &new2) == Ok(true)
    })
    .await;
    assert_eq!(StateMachine::key_fits(&n2, &keys[1]), Ok(false));
    assert!(store::open(&n2, keys[1].clone()).is_err(), "the old key still opens node 2's file");
    let recovered = store::recover(&n2, new2.clone()).unwrap();
    assert!(recovered.contains_key("after/rotation") && recovered.contains_key("k59"));
    // No file holds the marker in clear; each opens only under its own key.
    for id in 1..=3 {
        let p = dir.path().join(format!("n{id}.redb"));
        let bytes = std::fs::read(&p).unwrap();
        assert!(!bytes.windows(marker.len()).any(|w| w == marker), "n{id} holds the marker in clear");
        assert!(!bytes.windows(6).any(|w| w == b"secret"), "n{id} holds a key name in clear");
    }
    let wrong = store::open(&dir.path().join("n3.redb"), keys[0].clone());
    let err = match wrong {
        Ok(_) => panic!("opened under another key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("does not decrypt"), "{err}");
}

#[tokio::test]
async fn a_snapshot_chunk_out_of_order_is_refused_not_allocated() {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    let mut b = bulkhead_cluster::store::SnapshotBuf::default();
    b.write_all(b"chunk one").await.unwrap();
    b.seek(std::io::SeekFrom::Start(9)).await.unwrap();
    b.write_all(b"two").await.unwrap();
    assert!(b.seek(std::io::SeekFrom::Start(1 << 45)).await.is_err(), "a far offset was taken");
    assert_eq!(b.into_inner(), b"chunk onetwo");
}

fn soon() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_proposed_at_once_share_entries_and_each_applies_on_its_own_checks() {
    use bulkhead_cluster::manager::Proposer;
    use bulkhead_cluster::store::Check;
    let dir = tempfile::tempdir().unwrap();
    let router = net::Router::default();
    let config = std::sync::Arc::new(
        openraft::Config {
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    );
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        nodes.insert(id, start(&router, dir.path(), id, &Key::generate().unwrap(), config.clone()).await);
    }
    let members: BTreeMap<u64, openraft::BasicNode> = (1..=3).map(|i| (i, openraft::BasicNode { addr: format!("n{i}") })).collect();
    nodes[&1].0.initialize(members).await.unwrap();
    until("a leader", || nodes[&1].0.metrics().borrow().current_leader.is_some()).await;
    let leader = nodes[&1].0.metrics().borrow().current_leader.unwrap();
    let raft = nodes[&leader].0.clone();
    raft.client_write(put("gate", b"open")).await.unwrap();
    let before = raft.metrics().borrow().last_log_index.unwrap();
    let proposer = Proposer::start(raft.clone());
    // 400 writes at once: the even ones hold, the odd ones check a value "gate" does not have.
    let n = 400;
    let writes = (0..n).map(|i| {
        let p = proposer.clone();
        let gate = if i % 2 == 0 { b"open".to_vec() } else { b"shut".to_vec() };
        tokio::spawn(async move {
            p.propose(
                Request {
                    checks: vec![Check::Is {
                        key: "gate".into(),
                        value: Some(gate),
                    }],
                    ops: vec![Op::Put {
                        key: format!("k{i}"),
                        value: vec![b'v'; 64],
                    }],
                },
                soon(),
            )
            .await
            .unwrap()
            .unwrap()
        })
    });
    let answers = futures_util::future::join_all(writes).await;
    for (i, a) in answers.into_iter().enumerate() {
        let r = a.unwrap();
        assert_eq!(r.applied, i % 2 == 0, "write {i}");
        assert!(r.parts.is_empty(), "a caller sees its own answer, not the batch's");
    }
    let entries = raft.metrics().borrow().last_log_index.unwrap() - before;
    assert!(entries < n as u64 / 4, "{n} writes at once took {entries} entries");
    for id in 1..=3u64 {
        let sm = nodes[&id].1.clone();
        until("replication", || sm.get(&format!("k{}", n - 2)).is_some()).await;
        for i in 0..n {
            assert_eq!(sm.get(&format!("k{i}")).is_some(), i % 2 == 0, "n{id} k{i}");
        }
    }
    // A write that brings parts of its own is refused, not merged.
    let forged = Request {
        checks: vec![],
        ops: vec![Op::Part { checks: vec![] }, Op::Delete { key: "gate".into() }],
    };
    assert!(proposer.propose(forged, soon()).await.is_err());
    assert_eq!(nodes[&leader].1.get("gate").as_deref(), Some(&b"open"[..]));
    // A write whose caller gave up before it was proposed is dropped, not proposed late (it
    // could land after the caller's retry).
    // (Entries keep the order of their writes: had "late" been proposed, it would have applied
    // before "after" did.)
    let late = proposer
        .propose(put("late", b"x"), tokio::time::Instant::now() - Duration::from_millis(1))
        .await;
    assert!(late.is_err(), "a write past its deadline was answered");
    proposer.propose(put("after", b"y"), soon()).await.unwrap().unwrap();
    assert!(nodes[&leader].1.get("after").is_some());
    assert!(nodes[&leader].1.get("late").is_none(), "a write past its deadline was proposed");
    // A write too big to replicate in time is refused, not proposed.
    let huge = put("huge", &vec![0u8; bulkhead_cluster::manager::MAX_WRITE_BYTES + 1]);
    let e = proposer.propose(huge, soon()).await.unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
    assert!(nodes[&leader].1.get("huge").is_none());
    // On a follower, every write of a batch learns where the leader is.
    let follower = (1..=3u64).find(|i| *i != leader).unwrap();
    let on_follower = Proposer::start(nodes[&follower].0.clone());
    let answers = futures_util::future::join_all((0..50).map(|i| {
        let p = on_follower.clone();
        async move { p.propose(put(&format!("f{i}"), b"z"), soon()).await.unwrap() }
    }))
    .await;
    for a in answers {
        match a {
            Err(openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                assert!(f.leader_id.is_some_and(|l| l != follower), "{f:?}")
            }
            other => panic!("a follower took a write: {other:?}"),
        }
    }
    for (_, (r, _)) in nodes {
        r.shutdown().await.unwrap();
    }
}
