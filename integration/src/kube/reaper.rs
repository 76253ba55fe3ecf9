//! Nodes of test processes that died without unwinding (SIGKILL, Ctrl-C of `cargo test`):
//! their components died with them (parent-death signal), the namespaces with the last of
//! those, and the next containerd fixture reaps their containerd; what is left on the host
//! is the kubelet's cgroup root and the node dir, removed here by the next node.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::cleanup;
use crate::containerd::fixture_base;
use crate::error::{Error, IoContext, Result};

/// Prefix of every node dir in the fixture base.
pub const NODE_DIR_PREFIX: &str = "sturdy-kube-";

/// Takes the node dir's `owner.lock`: held for the node's lifetime; lockable means the
/// owner died.
pub(super) fn lock_owner(dir: &Path, arg: FlockArg) -> Result<Flock<File>> {
    let path = dir.join("owner.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    Flock::lock(file, arg).map_err(|(_, e)| Error::Io {
        context: format!("locking {}", path.display()),
        source: e.into(),
    })
}

/// Removes what dead owners' nodes left; the dirs it removed.
pub fn reap_stale_nodes() -> Vec<PathBuf> {
    let Ok(base) = fixture_base() else {
        return Vec::new();
    };
    let mut reaped = Vec::new();
    for name in cleanup::read_dir_names(&base) {
        let dir = base.join(&name);
        if !name.starts_with(NODE_DIR_PREFIX) || !dir.join("owner.lock").is_file() {
            continue;
        }
        let Ok(_lock) = lock_owner(&dir, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        eprintln!(
            "sturdy-integration: reaping Kubernetes node {} left by a dead test process",
            dir.display()
        );
        let record: serde_json::Value = std::fs::read(dir.join("node.json"))
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default();
        if let Some(root) = record["cgroup_root"].as_str() {
            for cg in cleanup::cgroup_dirs(root) {
                cleanup::remove_cgroup_tree(&cg);
            }
        }
        cleanup::kill_pids(&cleanup::pids_referencing(&dir));
        if cleanup::mounts_under(&dir).is_empty() && std::fs::remove_dir_all(&dir).is_ok() {
            reaped.push(dir);
        }
    }
    reaped
}
