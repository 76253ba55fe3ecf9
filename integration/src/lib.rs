//! Test harness for sturdy: private containerd instances driven through real shims.
//!
//! Every [`Containerd`] owns a temp dir holding its root, state, sockets, CNI config, runc
//! root and images, plus one /28 of the 198.18.0.0/24 pod network; dropping it (even while
//! unwinding from a panic) removes every process, mount, netns, bridge and cgroup it caused.

pub mod cgroup;
pub mod cleanup;
pub mod containerd;
pub mod cri;
pub mod critest;
pub mod ctr;
pub mod error;
pub mod handler;
pub mod image;
pub mod kube;
pub mod measure;
pub mod registry;
pub mod runc_wrapper;
pub mod shim_upgrade;
pub mod tools;
pub mod wait;
pub mod watchdog;

pub use containerd::{
    Builder, Containerd, ExtraRuntime, Footprint, Generation, OciRuntime, CRI_NAMESPACE,
};
pub use cri::{container_config, Cri};
pub use ctr::{Output, RunOptions};
pub use error::{Error, Result};
pub use handler::Handler;
pub use image::{BUSYBOX_IMAGE, PAUSE_IMAGE};
pub use wait::{until, until_some};

/// Re-exported so tests need no direct dependency on the CRI crate.
pub use k8s_cri;

/// `program` found on PATH, else in /usr/sbin, /usr/bin or /sbin (a test's PATH may lack
/// the sbin directories).
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
