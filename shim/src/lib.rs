//! containerd-shim-sturdy-v2: a containerd shim v2 that wraps runc.
//!
//! Layers: [`bootstrap`] speaks containerd's shim binary protocol, [`service`] maps the
//! ttrpc Task API onto [`tasks`], which runs the lifecycle of [`container`]s and their
//! [`exec`]s on each [`process`]'s state machine; they drive runc only through the
//! `runc-client` crate.

pub mod bootstrap;
pub mod cgroups;
pub mod container;
pub mod control;
pub mod error;
pub mod events;
pub mod exec;
pub mod exits;
pub mod handover;
pub mod ids;
pub mod io;
pub mod listener;
pub mod logging;
pub mod memory;
pub mod mount;
pub mod netmeta;
pub mod options;
pub mod peer;
pub mod process;
pub mod record;
pub mod reexec;
pub mod service;
pub mod tasks;
#[cfg(test)]
mod testing;

/// Version reported by `-v` and Connect.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Source revision, when the build knew it.
pub const REVISION: &str = match option_env!("STURDY_REVISION") {
    Some(r) => r,
    None => "unknown",
};
