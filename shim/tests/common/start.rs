//! Helpers for the tests that drive `start`: bundles, the command line containerd passes,
//! and cleanup of the daemons a test started (by pid, never by name).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use super::{alive, kill_and_wait};

/// The containerd namespace every start test uses.
pub const NAMESPACE: &str = "sturdy-proto-test";

/// Kills the daemons a test started (by the pid they wrote) and removes their sockets.
///
/// Pids are read when tracked: the bundles may be gone by the time this drops.
pub struct Daemons(pub Vec<(Option<i32>, Option<PathBuf>)>);

impl Daemons {
    pub fn track(&mut self, bundle: &Path, address: &str) {
        let pid = std::fs::read_to_string(bundle.join("shim.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let sock = address.strip_prefix("unix://").map(PathBuf::from);
        self.0.push((pid, sock));
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (pid, sock) in &self.0 {
            if let Some(pid) = *pid {
                kill_and_wait(pid);
            }
            if let Some(sock) = sock {
                let _ = std::fs::remove_file(sock);
            }
        }
    }
}

pub fn bundle_with(annotations: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::json!({ "ociVersion": "1.0.2", "annotations": annotations }).to_string(),
    )
    .unwrap();
    dir
}

pub fn start_args<'a>(id: &'a str, address: &'a str) -> Vec<&'a str> {
    vec![
        "-namespace",
        NAMESPACE,
        "-id",
        id,
        "-address",
        address,
        "-publish-binary",
        "/bin/true",
        "start",
    ]
}

/// Live (non-zombie) processes whose command line holds `arg` as one whole argument.
pub fn processes_with_arg(arg: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// Kills whatever daemon a test's unique id names (only ever processes the test started)
/// and removes its socket, even when an assertion failed first.
pub struct Leftovers {
    pub id: String,
    pub sock: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in processes_with_arg(&self.id) {
            kill_and_wait(pid);
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// A unique id, so that `Leftovers` finds only this test's daemon.
pub fn unique_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

pub fn leftovers(id: &str, address: &str) -> Leftovers {
    let sock = containerd_shim::socket_address(address, NAMESPACE, id);
    Leftovers {
        id: id.to_string(),
        sock: PathBuf::from(sock.strip_prefix("unix://").unwrap()),
    }
}
