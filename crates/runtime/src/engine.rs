//! The runtime's one entry: what the CLI and the cluster's agent do with a container (create,
//! start, stop, kill, status, wait, logs, remove), with mounts, secrets and identity files handed
//! in through [`CreateRequest`].
//!
//! The modules below it point one way: `cgroup`, `profile`, `spec` and the other leaves; then
//! `container` (records and root filesystems); `executor` (processes); `lifecycle` (signals,
//! waiting, removal); `shim` and `run` (supervising and creating); and this module on top. No module
//! below imports one above it.

use std::time::Duration;

use bulkhead_image::Store;

use crate::container::Containers;
pub use crate::container::{ContainerRecord, State};
use crate::error::Result;
use crate::executor::{Executor, Exit};
pub use crate::run::CreateRequest;

/// How long a start waits for the shim to report the container running.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The containers of one store.
pub struct Runtime {
    store: Store,
    containers: Containers,
}

impl Runtime {
    /// The runtime of `store` (opened by the caller, with its names key and lock wait).
    pub fn new(store: Store) -> Result<Self> {
        let containers = Containers::open(&store)?;
        Ok(Self { store, containers })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn containers(&self) -> &Containers {
        &self.containers
    }

    /// Creates a container (record, root filesystem, bundle) under the store's shared lock, so that
    /// no garbage collection takes its layers meanwhile. Nothing runs yet; its root filesystem stays
    /// mounted for the start that usually follows.
    pub fn create(&self, req: CreateRequest) -> Result<ContainerRecord> {
        let _shared = self.store.lock_shared()?;
        crate::run::create(&self.store, &self.containers, req)
    }

    /// Starts a created or stopped container under a new shim and waits until it runs. One that
    /// runs already, or that its restart policy is starting right now, is left as it is.
    pub fn start(&self, key: &str) -> Result<ContainerRecord> {
        let rec = self.status(key)?;
        if crate::lifecycle::is_running(&rec) {
            return Ok(rec);
        }
        {
            let _shared = self.store.lock_shared()?;
            let _lock = self.containers.lock()?;
            let mut r = crate::lifecycle::refresh(&self.containers, self.containers.load(&rec.id)?)?;
            // Its restart policy is starting it right now (created again by a restart; a container
            // that `create` made has never been restarted): that start is this one.
            let restarting = matches!(r.state, State::Created) && r.restart.is_some() && r.restart_count > 0;
            if restarting || matches!(r.state, State::Running { .. }) {
                drop(_lock);
                crate::lifecycle::wait_started(&self.containers, &rec.id, START_TIMEOUT)?;
                return self.status(&rec.id);
            }
            r.state = State::Created;
            r.error = None;
            // A user's start: the restart policy applies again, counting from zero.
            r.stopped_by_user = false;
            r.restart_count = 0;
            self.containers.save(&r)?;
        }
        crate::lifecycle::spawn_shim(self.store.root(), &rec.id)?;
        crate::lifecycle::wait_started(&self.containers, &rec.id, START_TIMEOUT)?;
        self.status(&rec.id)
    }

    /// Runs a created container in this process, its output on ours, and records its exit.
    /// The embedded executor clones: call it while this process is single-threaded.
    pub fn run_foreground(&self, rec: &mut ContainerRecord, executor: &Executor) -> Result<Exit> {
        crate::run::run_foreground(&self.containers, rec, executor)
    }

    /// Sends the container's stop signal, then SIGKILL after `timeout` (else its own stop timeout),
    /// and waits for its exit. A container with a restart policy is not restarted after this.
    pub fn stop(&self, key: &str, timeout: Option<Duration>) -> Result<ContainerRecord> {
        let rec = self.containers.find(key)?;
        let t = timeout.unwrap_or(Duration::from_secs(rec.stop_timeout));
        crate::lifecycle::stop(&self.containers, &rec, rec.stop_signal, t)
    }

    /// Sends `signal` to the container's first process.
    pub fn kill(&self, key: &str, signal: i32) -> Result<()> {
        crate::lifecycle::signal(&self.containers.find(key)?, signal)
    }

    /// The container's record, its state checked against its processes (a container whose shim
    /// died is recorded as exited).
    pub fn status(&self, key: &str) -> Result<ContainerRecord> {
        crate::lifecycle::refresh(&self.containers, self.containers.find(key)?)
    }

    /// Whether the container's first process is alive.
    pub fn is_running(&self, rec: &ContainerRecord) -> bool {
        crate::lifecycle::is_running(rec)
    }

    /// Waits until the container has exited (at most `timeout`).
    pub fn wait(&self, key: &str, timeout: Option<Duration>) -> Result<ContainerRecord> {
        let id = self.containers.find(key)?.id;
        crate::lifecycle::wait_exited(&self.containers, &id, timeout)
    }

    /// The container's log, read from its start; `poll` again for what follows.
    pub fn logs(&self, key: &str) -> Result<crate::logs::Follower> {
        let rec = self.containers.find(key)?;
        Ok(crate::logs::Follower::new(&self.containers.dir(&rec.id).join("logs")))
    }

    /// Every container.
    pub fn list(&self) -> Result<Vec<ContainerRecord>> {
        self.containers.list()
    }

    /// Removes a stopped container (with `force`, kills a running one first): mounts, cgroup,
    /// directory and its lease on the image.
    pub fn remove(&self, key: &str, force: bool) -> Result<ContainerRecord> {
        crate::lifecycle::remove(&self.store, &self.containers, key, force)
    }
}
