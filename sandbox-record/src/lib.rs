//! sturdy's durable record of a pod sandbox's network: what the pod's network namespace
//! held (interfaces, addresses, routes) and who the pod is, kept on disk by the shim so that
//! a runtime which lost the pod's IP can be told it again (docs/netmeta.md).
//!
//! This crate knows the file format and the store, nothing of containerd or of the shim:
//! [`format`] encodes and checks one record (versioned JSON with a SHA-256 of its canonical
//! form), [`store`] keeps them at `<dir>/<namespace>/<sandbox id>.json` with crash-safe
//! writes, listing, removal and garbage collection; [`limits`] bounds what a record holds
//! and [`summary`] is the little a watcher keeps of each.

pub mod error;
pub mod fault;
pub mod format;
pub mod limits;
pub mod model;
pub mod store;
pub mod summary;

pub use error::RecordError;
pub use format::{decode, encode, FORMAT, FORMAT_VERSION};
pub use limits::{MAX_ADDRESSES, MAX_INTERFACES, MAX_RECORD_BYTES, MAX_ROUTES};
pub use model::{Address, Interface, Network, Pod, Record, Route};
pub use store::{Entry, GcReport, ScanCache, Scanned, Store, DEFAULT_DIR};
pub use summary::Summary;
