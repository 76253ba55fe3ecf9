//! sturdyctl's library: the containerd-side shim watchdog and what it is built from, so
//! tests can drive each piece on its own.

#![warn(missing_docs)]

pub mod builds;
pub mod confirm;
pub mod containerd;
pub mod ctrconfig;
pub mod discovery;
pub mod doctor;
mod feeds;
pub mod health;
pub mod host;
pub mod install;
pub mod journal;
pub mod logger;
pub mod netmeta;
pub mod pidfd;
mod private;
pub mod probe;
pub mod procfs;
pub mod recovery;
pub mod replay;
#[cfg(test)]
mod testing;
pub mod trust;
pub mod units;
pub mod upgrade;
pub mod upgrading;
pub mod watchdog;
mod watcher;
