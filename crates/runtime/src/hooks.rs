//! What the embedding program does around a container's life that the runtime knows nothing of
//! (its networks): called when the container's namespaces exist but its process has not started,
//! and when it has exited. The binary installs them once; without them nothing is called.

use std::sync::OnceLock;

use crate::error::Result;

pub trait ContainerHooks: Send + Sync {
    /// The container's first process exists, created and not yet started.
    fn created(&self, id: &str, pid: i32) -> Result<()>;
    /// The container's first process is gone (or never started).
    fn exited(&self, id: &str);
    /// The container is removed.
    fn removed(&self, id: &str);
}

static HOOKS: OnceLock<Box<dyn ContainerHooks>> = OnceLock::new();

/// Installs the hooks (once per process; later calls are ignored).
pub fn install(h: Box<dyn ContainerHooks>) {
    let _ = HOOKS.set(h);
}

pub(crate) fn created(id: &str, pid: i32) -> Result<()> {
    match HOOKS.get() {
        Some(h) => h.created(id, pid),
        None => Ok(()),
    }
}

pub(crate) fn exited(id: &str) {
    if let Some(h) = HOOKS.get() {
        h.exited(id);
    }
}

pub(crate) fn removed(id: &str) {
    if let Some(h) = HOOKS.get() {
        h.removed(id);
    }
}
