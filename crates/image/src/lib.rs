//! # bulkhead-image
//!
//! The image store of bulkhead: everything that comes from outside as an image passes through
//! here, and nothing is trusted before it is verified.
//!
//! The principal type is [`Store`], a directory holding content by digest. Data flows one way:
//!
//! 1. [`import`] (or, later, a registry pull) reads a source through a [`import::BlobSource`]; every
//!    blob is copied to a temporary file, its digest and size checked, then renamed into
//!    `blobs/sha256/<hex>` ([`Store::put_blob`]).
//! 2. Each layer is unpacked once into `layers/<chain-id>/diff` by [`unpack::extract`], an extractor
//!    that resolves every path with `openat2` so that no entry can leave its root, and whose
//!    uncompressed digest must equal the config's diff_id ([`Store::unpack_layer`]).
//! 3. An [`store::ImageRecord`] is written once all of that is in place, and the reference (`name:tag`)
//!    last, each atomically.
//! 4. [`mount::mount_overlay`] stacks the layers for a container or for `image mount`; [`export`] writes
//!    images back out; [`Store::check`] verifies all of it after a crash.
//!
//! ```no_run
//! use bulkhead_image::{import::{import_path, ImportOptions}, Store};
//! let store = Store::open("/var/lib/bulkhead")?;
//! let _lock = store.lock_shared()?;
//! let imported = import_path(&store, "image.tar".as_ref(), &ImportOptions::default(), &|_| {})?;
//! println!("{}", imported[0].record.config);
//! # Ok::<(), bulkhead_image::Error>(())
//! ```
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod digest;
pub mod docker_archive;
pub mod error;
pub mod export;
pub mod images;
pub mod import;
pub mod layer;
pub mod limits;
pub mod mount;
pub mod names;
pub mod pipe;
pub mod reference;
pub mod rootfs;
pub mod spec;
pub mod store;
pub mod tree;
pub mod unpack;

pub use digest::Digest;
pub use error::{Error, Result};
pub use reference::Reference;
pub use store::{ImageRecord, Store};
