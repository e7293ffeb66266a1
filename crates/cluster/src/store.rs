//! The replicated store: openraft's log storage and state machine (storage-v2), on redb, every
//! record sealed (see [`crate::crypt`]).
//!
//! - The log: one redb table keyed by index. Each value is the entry's term and leader in clear
//!   (16 bytes: they are not secret, and they are what the entry is sealed to), then the entry
//!   (see [`crate::codec`]) sealed with `log ‖ index ‖ term ‖ leader` as associated data.
//! - The vote, the committed log id and the last purged log id: sealed, each under its own name.
//! - The state machine: a map of keys to values, in memory (the only place its contents are in
//!   clear); persisted by snapshots, sealed with the snapshot's id, in the same file. A restart
//!   loads the last snapshot, and openraft applies the committed entries after it again (the
//!   committed log id is saved for that).
//! - A request is a list of operations applied atomically, with optional preconditions (a key
//!   holds a value, or is absent): what a join token's use count or a node's certificate serial
//!   need.
//!
//! Snapshots travel in chunks (openraft's `install_snapshot` with `snapshot_max_chunk_size`), so
//! no message limit bounds the store's size (moby/swarmkit#2374).

// openraft's storage traits return its StorageError (224 bytes); the helpers beside them do too.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::crypt::Key;

/// A node's id in Raft (its certificate's common name is this, in hex).
pub type NodeId = u64;

/// One change to the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Starts one part of a request that carries several (see [`Request::batch`]): the ops
    /// after it, up to the next part, apply if its checks hold, whatever the other parts do.
    /// Not recursive, so that no message nests deeper than this.
    Part {
        checks: Vec<Check>,
    },
}

impl Op {
    /// Roughly how many bytes it takes in the log.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len() + 8,
            Op::Delete { key } => key.len() + 8,
            Op::Part { checks } => checks.iter().map(Check::size).sum::<usize>() + 8,
        }
    }

    /// The key an op changes (none for a part's start).
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => Some(key),
            Op::Part { .. } => None,
        }
    }
}

/// What must hold for a request to apply (else nothing of it does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// The key holds exactly this value (`None`: the key is absent).
    Is {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
    },
}

/// A request: every check holds, then every op applies; or nothing happens. Ops after an
/// [`Op::Part`] apply only if that part's checks hold too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub checks: Vec<Check>,
    pub ops: Vec<Op>,
}

impl Request {
    /// Several requests as one entry of the log, each applied or not on its own checks, in
    /// order (one append, one fsync and one round of replication for all of them). Requests
    /// that carry parts of their own are not taken: a part cannot hold parts.
    pub fn batch(reqs: Vec<Request>) -> Option<Request> {
        if reqs.iter().any(Request::has_parts) {
            return None;
        }
        let ops = reqs
            .into_iter()
            .flat_map(|r| std::iter::once(Op::Part { checks: r.checks }).chain(r.ops))
            .collect();
        Some(Request { checks: vec![], ops })
    }

    pub fn has_parts(&self) -> bool {
        self.ops.iter().any(|o| matches!(o, Op::Part { .. }))
    }

    /// Roughly how many bytes it takes in the log.
    pub fn size(&self) -> usize {
        self.checks.iter().map(Check::size).sum::<usize>() + self.ops.iter().map(Op::size).sum::<usize>()
    }
}

impl Check {
    /// Roughly how many bytes it takes in the log.
    pub fn size(&self) -> usize {
        let Check::Is { key, value } = self;
        key.len() + value.as_ref().map_or(0, Vec::len) + 8
    }
}

/// Whether the request applied (its checks held), and each of its parts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub applied: bool,
    /// For each [`Op::Part`], in order: whether its checks held (and its ops applied).
    #[serde(default)]
    pub parts: Vec<bool>,
}

openraft::declare_raft_types!(
    /// The cluster's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = SnapshotBuf,
        AsyncRuntime = openraft::TokioRuntime,
);

type SError = StorageError<NodeId>;

/// The largest snapshot a manager takes (received in chunks, held in memory).
pub const MAX_SNAPSHOT: u64 = 1 << 30;

/// A snapshot's bytes, being sent or received: written only in order (a chunk may start only
/// where the data has reached, as openraft sends them) and at most [`MAX_SNAPSHOT`], so a chunk
/// with a far offset cannot make a manager reserve memory it does not have.
#[derive(Debug, Default)]
pub struct SnapshotBuf {
    inner: Cursor<Vec<u8>>,
}

impl SnapshotBuf {
    pub fn new(data: Vec<u8>) -> Self {
        SnapshotBuf { inner: Cursor::new(data) }
    }

    pub fn into_inner(self) -> Vec<u8> {
        self.inner.into_inner()
    }
}

impl tokio::io::AsyncRead for SnapshotBuf {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SnapshotBuf {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if me.inner.position().saturating_add(buf.len() as u64) > MAX_SNAPSHOT {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a snapshot larger than 1 GiB",
            )));
        }
        std::pin::Pin::new(&mut me.inner).poll_write(cx, buf)
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl tokio::io::AsyncSeek for SnapshotBuf {
    fn start_seek(self: std::pin::Pin<&mut Self>, pos: std::io::SeekFrom) -> std::io::Result<()> {
        let me = self.get_mut();
        let len = me.inner.get_ref().len() as u64;
        let target = match pos {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => len.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => me.inner.position().checked_add_signed(d),
        };
        match target {
            Some(t) if t <= len => std::pin::Pin::new(&mut me.inner).start_seek(std::io::SeekFrom::Start(t)),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a snapshot chunk out of order",
            )),
        }
    }
    fn poll_complete(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<u64>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_complete(cx)
    }
}

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

fn log_aad(index: u64, term: u64, leader: NodeId) -> Vec<u8> {
    let mut a = b"log".to_vec();
    a.extend_from_slice(&index.to_be_bytes());
    a.extend_from_slice(&term.to_be_bytes());
    a.extend_from_slice(&leader.to_be_bytes());
    a
}

/// The file and the key, shared by the log storage, its readers, the state machine and its
/// snapshot builders.
struct Shared {
    db: redb::Database,
    /// Held for reading through each whole read or write (seal, then commit), and for writing
    /// through a rotation (every record sealed anew in one transaction, then the new key): no
    /// record is ever sealed or opened with a key the file no longer uses.
    key: std::sync::RwLock<Key>,
}

impl Shared {
    /// Writes a sealed meta record; `durable`: forced to disk before returning (the vote must be;
    /// the committed log id need not: it only spares a restart re-reading, and openraft finds
    /// the committed entries again from its peers).
    fn put_meta<T: Serialize>(&self, name: &str, v: &T, durable: bool) -> Result<(), AnyError> {
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(v).map_err(any)?);
        let key = self.key();
        let sealed = key.seal(format!("meta:{name}").as_bytes(), &plain).map_err(any)?;
        let mut tx = self.db.begin_write().map_err(any)?;
        if !durable {
            tx.set_durability(redb::Durability::Eventual);
        }
        tx.open_table(META).map_err(any)?.insert(name, sealed.as_slice()).map_err(any)?;
        tx.commit().map_err(any)
    }

    fn key(&self) -> std::sync::RwLockReadGuard<'_, Key> {
        self.key.read().expect("not poisoned")
    }

    /// Seals every record anew with `new` in one transaction, then uses it: the log, the meta
    /// records and the snapshot. (redb may keep the old pages in its free space until they are
    /// reused: ciphertext under the old key, useless without it.)
    fn rotate(&self, new: Key) -> Result<(), AnyError> {
        let mut key = self.key.write().expect("not poisoned");
        let tx = self.db.begin_write().map_err(any)?;
        {
            let mut log = tx.open_table(LOG).map_err(any)?;
            let rows: Vec<(u64, Vec<u8>)> = log
                .iter()
                .map_err(any)?
                .map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())))
                .collect::<Result<_, _>>()
                .map_err(any)?;
            for (i, v) in rows {
                let e = self.open_entry(&key, i, &v)?;
                log.insert(i, self.seal_entry(&new, &e)?.as_slice()).map_err(any)?;
            }
            for (table, aad) in [(META, None), (SNAPSHOT, Some(b"snapshot".as_slice()))] {
                let mut t = tx.open_table(table).map_err(any)?;
                let rows: Vec<(String, Vec<u8>)> = t
                    .iter()
                    .map_err(any)?
                    .map(|r| r.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())))
                    .collect::<Result<_, _>>()
                    .map_err(any)?;
                for (name, v) in rows {
                    let a = aad.map(<[u8]>::to_vec).unwrap_or_else(|| format!("meta:{name}").into_bytes());
                    let plain = key.open(&a, &v, &name).map_err(any)?;
                    t.insert(name.as_str(), new.seal(&a, &plain).map_err(any)?.as_slice())
                        .map_err(any)?;
                }
            }
        }
        tx.commit().map_err(any)?;
        *key = new;
        Ok(())
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, AnyError> {
        let key = self.key();
        let tx = self.db.begin_read().map_err(any)?;
        let t = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(any(e)),
        };
        let Some(v) = t.get(name).map_err(any)? else { return Ok(None) };
        let plain = key.open(format!("meta:{name}").as_bytes(), v.value(), name).map_err(any)?;
        serde_json::from_slice(&plain).map(Some).map_err(any)
    }

    fn read_entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry<TypeConfig>>, AnyError> {
        let key = self.key();
        let tx = self.db.begin_read().map_err(any)?;
        let t = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(any(e)),
        };
        let mut out = Vec::new();
        for row in t.range(range).map_err(any)? {
            let (k, v) = row.map_err(any)?;
            out.push(self.open_entry(&key, k.value(), v.value())?);
        }
        Ok(out)
    }

    fn open_entry(&self, key: &Key, index: u64, v: &[u8]) -> Result<Entry<TypeConfig>, AnyError> {
        let what = format!("log entry {index}");
        if v.len() < 16 {
            return Err(any(format!("{what}: cut short")));
        }
        let term = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
        let leader = u64::from_be_bytes(v[8..16].try_into().expect("8 bytes"));
        let plain = key.open(&log_aad(index, term, leader), &v[16..], &what).map_err(any)?;
        let e: Entry<TypeConfig> = crate::codec::decode(&plain).map_err(|e| any(format!("{what}: {e}")))?;
        // The clear prefix and the sealed entry agree (a prefix is bound by the seal anyway).
        if e.log_id.index != index || e.log_id.leader_id.term != term {
            return Err(any(format!("{what}: its id does not match its place")));
        }
        Ok(e)
    }

    fn seal_entry(&self, key: &Key, e: &Entry<TypeConfig>) -> Result<Vec<u8>, AnyError> {
        let (index, term, leader) = (e.log_id.index, e.log_id.leader_id.term, e.log_id.leader_id.node_id);
        let plain = zeroize::Zeroizing::new(crate::codec::encode(e).map_err(any)?);
        let mut v = Vec::with_capacity(16 + plain.len() + 41);
        v.extend_from_slice(&term.to_be_bytes());
        v.extend_from_slice(&leader.to_be_bytes());
        v.extend_from_slice(&key.seal(&log_aad(index, term, leader), &plain).map_err(any)?);
        Ok(v)
    }
}

/// Opens (or makes) the store in `path` with the data key `key`: the log storage and the state
/// machine, the latter loaded from the last snapshot.
pub fn open(path: &Path, key: Key) -> Result<(LogStore, StateMachine), SError> {
    let db = redb::Database::create(path).map_err(|e| StorageIOError::read(any(format!("{}: {e}", path.display()))))?;
    let shared = Arc::new(Shared {
        db,
        key: std::sync::RwLock::new(key),
    });
    // Every table exists from the start (readers need not tell "none yet" from an error).
    {
        let tx = shared.db.begin_write().map_err(|e| StorageIOError::write(any(e)))?;
        for t in [META, SNAPSHOT] {
            tx.open_table(t).map_err(|e| StorageIOError::write(any(e)))?;
        }
        tx.open_table(LOG).map_err(|e| StorageIOError::write(any(e)))?;
        tx.commit().map_err(|e| StorageIOError::write(any(e)))?;
    }
    if shared.get_meta::<String>("check").map_err(StorageIOError::read)?.is_none() {
        shared.put_meta("check", &"bulkhead", true).map_err(StorageIOError::write)?;
    }
    let sm = StateMachine {
        shared: shared.clone(),
        state: Arc::new(Mutex::new(SmState::default())),
        tasks: Default::default(),
        changes: tokio::sync::broadcast::channel(4096).0,
    };
    if let Some(snap) = sm.read_snapshot()? {
        sm.load(&snap.meta, &snap.data)?;
    }
    Ok((LogStore { shared }, sm))
}

/// Everything a manager's files hold: the last snapshot, and every entry of the log after it
/// applied, known to be committed or not (as etcd's `--force-new-cluster` does: a sole
/// survivor's log is all there is). For `cluster init --force-new-cluster`.
pub fn recover(path: &Path, key: Key) -> Result<BTreeMap<String, Vec<u8>>, SError> {
    if !path.exists() {
        return Err(StorageIOError::read(any(format!("{}: no store to recover", path.display()))).into());
    }
    let (_log, sm) = open(path, key)?;
    let from = sm.state.lock().expect("not poisoned").last_applied.map_or(0, |l| l.index + 1);
    let entries = sm.shared.read_entries(from..).map_err(StorageIOError::read_logs)?;
    let mut s = sm.state.lock().expect("not poisoned");
    for e in &entries {
        if let EntryPayload::Normal(req) = &e.payload {
            apply_one(&mut s.data, req);
        }
    }
    Ok(std::mem::take(&mut s.data))
}

/// The Raft log (and the vote), sealed.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        self.shared.read_entries(range).map_err(|e| StorageIOError::read_logs(e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        let last_purged: Option<LogId<NodeId>> = self.shared.get_meta("last_purged").map_err(StorageIOError::read_logs)?;
        let last = {
            let key = self.shared.key();
            let tx = self.shared.db.begin_read().map_err(|e| StorageIOError::read_logs(any(e)))?;
            let t = tx.open_table(LOG).map_err(|e| StorageIOError::read_logs(any(e)))?;
            let last = t.last().map_err(|e| StorageIOError::read_logs(any(e)))?;
            match last {
                Some((k, v)) => Some(
                    self.shared
                        .open_entry(&key, k.value(), v.value())
                        .map_err(StorageIOError::read_logs)?
                        .log_id,
                ),
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        self.shared
            .put_meta("vote", vote, true)
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        self.shared.get_meta("vote").map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        self.shared
            .put_meta("committed", &committed, false)
            .map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        Ok(self
            .shared
            .get_meta::<Option<LogId<NodeId>>>("committed")
            .map_err(StorageIOError::read)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let written = (|| -> Result<(), AnyError> {
            let key = self.shared.key();
            let tx = self.shared.db.begin_write().map_err(any)?;
            {
                let mut t = tx.open_table(LOG).map_err(any)?;
                for e in entries {
                    let v = self.shared.seal_entry(&key, &e)?;
                    t.insert(e.log_id.index, v.as_slice()).map_err(any)?;
                }
            }
            // Durable (redb's default: fsync) before openraft is told.
            tx.commit().map_err(any)
        })();
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        // Removes log_id.index and everything after it.
        self.remove(log_id.index..).map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        self.shared
            .put_meta("last_purged", &log_id, true)
            .map_err(StorageIOError::write_logs)?;
        self.remove(..=log_id.index).map_err(|e| StorageIOError::write_logs(e).into())
    }
}

impl LogStore {
    fn remove(&self, range: impl RangeBounds<u64>) -> Result<(), AnyError> {
        let tx = self.shared.db.begin_write().map_err(any)?;
        {
            let mut t = tx.open_table(LOG).map_err(any)?;
            t.retain_in(range, |_, _| false).map_err(any)?;
        }
        tx.commit().map_err(any)
    }
}

/// The state machine's contents.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SmState {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    data: BTreeMap<String, Vec<u8>>,
}

/// A snapshot as kept in the file: its meta and the state machine, sealed together.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

impl Drop for StoredSnapshot {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

/// The state machine: in memory, in clear; persisted by sealed snapshots.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
    state: Arc<Mutex<SmState>>,
    /// The tasks, decoded, as each apply leaves them.
    pub tasks: crate::taskindex::TaskIndex,
    /// The keys each applied batch of entries changed (a snapshot installed: `*`).
    changes: tokio::sync::broadcast::Sender<Arc<Vec<String>>>,
}

impl StateMachine {
    /// The keys changed from now on, a batch per apply (`*`: everything may have changed). A
    /// receiver that lags gets `Lagged` and should assume everything changed.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<String>>> {
        self.changes.subscribe()
    }

    /// A value of the store, as applied here.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.state.lock().expect("not poisoned").data.get(key).cloned()
    }

    /// Seals the whole file anew with the data key `new` (a data key rotation), in one
    /// transaction; reads and writes wait meanwhile.
    pub fn rotate_key(&self, new: Key) -> Result<(), SError> {
        self.shared.rotate(new).map_err(|e| StorageIOError::write(e).into())
    }

    /// Whether `key` opens the file's check record (written at the first open): which of two
    /// keys a file uses, after a rotation cut short. An error when it cannot tell (the file
    /// would not open, or has no check record).
    pub fn key_fits(path: &Path, key: &Key) -> Result<bool, String> {
        let db = redb::Database::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let t = tx.open_table(META).map_err(|e| e.to_string())?;
        let v = t.get("check").map_err(|e| e.to_string())?.ok_or("no check record")?;
        Ok(key.open(b"meta:check", v.value(), "check").is_ok())
    }

    /// Every key starting with `prefix`, with its value.
    pub fn scan(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let s = self.state.lock().expect("not poisoned");
        s.data
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn read_snapshot(&self) -> Result<Option<StoredSnapshot>, SError> {
        let read = (|| -> Result<Option<StoredSnapshot>, AnyError> {
            let key = self.shared.key();
            let tx = self.shared.db.begin_read().map_err(any)?;
            let t = tx.open_table(SNAPSHOT).map_err(any)?;
            let Some(v) = t.get("current").map_err(any)? else { return Ok(None) };
            let plain = zeroize::Zeroizing::new(key.open(b"snapshot", v.value(), "the snapshot").map_err(any)?);
            crate::codec::decode(&plain)
                .map(Some)
                .map_err(|e| any(format!("the snapshot: {e}")))
        })();
        read.map_err(|e| StorageIOError::read_snapshot(None, e).into())
    }

    fn write_snapshot(&self, snap: &StoredSnapshot) -> Result<(), SError> {
        let write = (|| -> Result<(), AnyError> {
            let plain = zeroize::Zeroizing::new(crate::codec::encode(snap).map_err(any)?);
            let key = self.shared.key();
            let sealed = key.seal(b"snapshot", &plain).map_err(any)?;
            let tx = self.shared.db.begin_write().map_err(any)?;
            tx.open_table(SNAPSHOT)
                .map_err(any)?
                .insert("current", sealed.as_slice())
                .map_err(any)?;
            tx.commit().map_err(any)
        })();
        write.map_err(|e| StorageIOError::write_snapshot(Some(snap.meta.signature()), e).into())
    }

    /// Replaces the state machine with a snapshot's contents.
    fn load(&self, meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> Result<(), SError> {
        let data: BTreeMap<String, serde_bytes::ByteBuf> =
            crate::codec::decode(data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
        let data = data.into_iter().map(|(k, v)| (k, v.into_vec())).collect();
        let mut s = self.state.lock().expect("not poisoned");
        self.tasks.reset(&data);
        *s = SmState {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            data,
        };
        Ok(())
    }
}

/// The state machine's map as a snapshot holds it (values as bytes, not as sequences).
fn encode_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, String> {
    struct AsBytes<'a>(&'a BTreeMap<String, Vec<u8>>);
    impl Serialize for AsBytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(k, v)| (k, serde_bytes::Bytes::new(v))))
        }
    }
    crate::codec::encode(&AsBytes(data))
}

/// Applies `req` to `data`; returns its response and the ops that applied, in order.
fn apply_one<'a>(data: &mut BTreeMap<String, Vec<u8>>, req: &'a Request) -> (Response, Vec<&'a Op>) {
    let holds = |data: &BTreeMap<String, Vec<u8>>, checks: &[Check]| {
        checks.iter().all(|c| match c {
            Check::Is { key, value } => data.get(key) == value.as_ref(),
        })
    };
    let mut r = Response::default();
    let mut applied = Vec::new();
    if !holds(data, &req.checks) {
        return (r, applied);
    }
    r.applied = true;
    // Whether the ops of the current part apply (before any part: those of the request).
    let mut on = true;
    for op in &req.ops {
        match op {
            Op::Part { checks } => {
                on = holds(data, checks);
                r.parts.push(on);
            }
            _ if !on => {}
            Op::Put { key, value } => {
                data.insert(key.clone(), value.clone());
                applied.push(op);
            }
            Op::Delete { key } => {
                data.remove(key);
                applied.push(op);
            }
        }
    }
    (r, applied)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let (meta, data) = {
            let s = self.state.lock().expect("not poisoned");
            let data = encode_data(&s.data).map_err(|e| StorageIOError::write_snapshot(None, any(e)))?;
            let id = match s.last_applied {
                Some(l) => format!(
                    "{}-{}-{}",
                    l.leader_id.term,
                    l.index,
                    hex::encode(crate::crypt::random::<4>().map_err(|e| StorageIOError::write_snapshot(None, any(e)))?)
                ),
                None => format!(
                    "empty-{}",
                    hex::encode(crate::crypt::random::<4>().map_err(|e| StorageIOError::write_snapshot(None, any(e)))?)
                ),
            };
            let meta = SnapshotMeta {
                last_log_id: s.last_applied,
                last_membership: s.last_membership.clone(),
                snapshot_id: id,
            };
            (meta, data)
        };
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.write_snapshot(&stored)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotBuf::new(stored.data.clone())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SError> {
        let s = self.state.lock().expect("not poisoned");
        Ok((s.last_applied, s.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut s = self.state.lock().expect("not poisoned");
        let mut out = Vec::new();
        let mut changed = Vec::new();
        for e in entries {
            s.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Response::default()),
                EntryPayload::Normal(req) => {
                    let (r, applied) = apply_one(&mut s.data, &req);
                    self.tasks.apply(applied.iter().copied());
                    changed.extend(applied.iter().filter_map(|op| op.key()).map(str::to_owned));
                    out.push(r)
                }
                EntryPayload::Membership(m) => {
                    s.last_membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Response::default());
                }
            }
        }
        drop(s);
        if !changed.is_empty() {
            // No receiver is no error: nobody watches on a node without a dispatcher.
            let _ = self.changes.send(Arc::new(changed));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBuf>, SError> {
        Ok(Box::new(SnapshotBuf::default()))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<NodeId, BasicNode>, snapshot: Box<SnapshotBuf>) -> Result<(), SError> {
        let data = snapshot.into_inner();
        self.load(meta, &data)?;
        let _ = self.changes.send(Arc::new(vec!["*".to_owned()]));
        self.write_snapshot(&StoredSnapshot { meta: meta.clone(), data })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        Ok(self.read_snapshot()?.map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(SnapshotBuf::new(s.data.clone())),
        }))
    }
}

/// Raft's timing for links slower than a data centre's (openraft's defaults are a 50 ms heartbeat
/// and a 150–300 ms election timeout): a heartbeat every 500 ms, an election after 2–4 s of
/// silence; snapshots after 20,000 entries, sent in 1 MiB chunks. (A snapshot copies and seals
/// the whole store: at 30,000 tasks, snapshots every 5,000 entries took over a third of the
/// managers' time.)
pub fn raft_config(cluster: &str) -> Result<std::sync::Arc<openraft::Config>, openraft::ConfigError> {
    let c = openraft::Config {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: 500,
        election_timeout_min: 2000,
        election_timeout_max: 4000,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
        snapshot_max_chunk_size: 1 << 20,
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    };
    c.validate().map(std::sync::Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: v.as_bytes().to_vec(),
        }
    }

    fn is(k: &str, v: Option<&str>) -> Check {
        Check::Is {
            key: k.into(),
            value: v.map(|v| v.as_bytes().to_vec()),
        }
    }

    #[test]
    fn each_part_applies_on_its_own_checks_in_order() {
        let mut data = BTreeMap::new();
        let batch = Request::batch(vec![
            Request {
                checks: vec![is("a", None)],
                ops: vec![put("a", "1")],
            },
            // Sees the part before it: "a" is now 1.
            Request {
                checks: vec![is("a", None)],
                ops: vec![put("b", "lost")],
            },
            Request {
                checks: vec![is("a", Some("1"))],
                ops: vec![put("c", "3"), Op::Delete { key: "a".into() }],
            },
        ])
        .unwrap();
        let (r, applied) = apply_one(&mut data, &batch);
        assert!(r.applied);
        assert_eq!(r.parts, vec![true, false, true]);
        assert_eq!(applied.len(), 3, "the ops of parts that held, and no part's start");
        assert_eq!(data.get("b"), None);
        assert_eq!(data.get("c").map(Vec::as_slice), Some(&b"3"[..]));
        assert_eq!(data.get("a"), None);
        // A request whose own checks fail applies none of its parts.
        let gated = Request {
            checks: vec![is("z", Some("never"))],
            ops: vec![Op::Part { checks: vec![] }, put("d", "4")],
        };
        let (r, applied) = apply_one(&mut data, &gated);
        assert!(!r.applied && r.parts.is_empty() && applied.is_empty());
        assert_eq!(data.get("d"), None);
        // A part cannot carry parts of its own.
        assert!(Request::batch(vec![gated]).is_none());
    }

    #[test]
    fn a_plain_request_answers_without_parts() {
        let mut data = BTreeMap::new();
        let plain = Request {
            checks: vec![],
            ops: vec![put("a", "1")],
        };
        let (r, applied) = apply_one(&mut data, &plain);
        assert_eq!(
            r,
            Response {
                applied: true,
                parts: vec![]
            }
        );
        assert_eq!(applied.len(), 1);
        // What an earlier version sent still reads: a response without parts.
        let old: Response = serde_json::from_slice(br#"{"applied":true}"#).unwrap();
        assert!(old.applied && old.parts.is_empty());
    }
}
