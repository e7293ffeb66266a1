//! # bulkhead-runtime
//!
//! How a container is isolated. The principal type is [`profile::SecurityProfile`]: every default of
//! SECURITY-DEFAULTS.md (a user namespace, Podman's 11 capabilities, no_new_privs, a deny-by-default
//! seccomp filter, masked and read-only paths, a pids limit, private namespaces), and the explicit
//! flags that weaken it, each of which yields a warning.
//!
//! [`engine::Runtime`] is the one entry for what is done with a container (create, start, stop,
//! status, logs, remove); the CLI and the cluster's agent both use it.
//!
//! Data flows one way: an image config and the user's flags give a [`spec::ProcessConfig`]
//! ([`spec::command_line`], [`spec::environment`]); with the profile and [`spec::Resources`] it
//! becomes one OCI runtime spec ([`spec::build_spec`]), the only thing an executor ever sees.
//!
//! ```
//! use bulkhead_runtime::{profile::SecurityProfile, spec::{build_spec, ProcessConfig, Resources}};
//! let process = ProcessConfig {
//!     args: vec!["/bin/sh".into()], env: vec![], cwd: "/".into(), uid: 0, gid: 0,
//!     additional_gids: vec![], terminal: false, hostname: "c1".into(),
//! };
//! let spec = build_spec(&SecurityProfile::default(), &process, &Resources::default(), "rootfs")?;
//! assert_eq!(spec.process().as_ref().unwrap().no_new_privileges(), Some(true));
//! # Ok::<(), bulkhead_runtime::error::Error>(())
//! ```
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod cgroup;
pub mod check;
pub mod container;
pub mod diff;
pub mod engine;
pub mod error;
pub mod exec;
pub mod executor;
pub mod files;
pub mod fsutil;
pub mod hooks;
pub mod idmap;
pub mod inspect_fs;
pub mod lifecycle;
/// Container logs: the format the shim writes (crate bulkhead-shim).
pub use bulkhead_shim::logs;
pub mod mounts;
pub mod profile;
pub mod run;
pub mod sealed;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod subid;
pub mod tty;
pub mod user;
pub mod volumes;
