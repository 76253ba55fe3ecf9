//! sturdy's durable record of a pod sandbox's network: what the pod's network namespace
//! held (interfaces, addresses, routes) and who the pod is, kept on disk by the shim so that
//! a runtime which lost the pod's IP can be told it again (docs/netmeta.md).
//!
//! This crate knows the file format and the store, nothing of containerd or of the shim:
//! [`format`] encodes and checks one record (versioned JSON with a SHA-256 of its canonical
//! form), [`store`] keeps them at `<dir>/<namespace>/<sandbox id>.json` with crash-safe
//! writes, listing, removal and garbage collection.

pub mod error;
pub mod fault;
pub mod format;
pub mod model;
pub mod store;

pub use error::RecordError;
pub use format::{decode, encode, FORMAT, FORMAT_VERSION};
pub use model::{Address, Interface, Network, Pod, Record, Route};
pub use store::{Entry, GcReport, Store, DEFAULT_DIR};
