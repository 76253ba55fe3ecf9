//! sturdy's sandbox network records (written by the shim, docs/netmeta.md) compared with
//! containerd CRI's own record of each sandbox; the watchdog repairs what containerd lost.

pub mod api;
pub mod authority;
pub mod cni;
pub mod cri;
pub mod inspect;
pub mod repair;

pub use authority::{authorised, Authorised};
pub use inspect::{inspect, verify, Row, State};
pub use repair::{pass, watch, PassReport, SandboxWatch};
