//! Busybox bundles and cleanup guards for tests and benches that drive the real runc.
#![allow(dead_code)]

pub mod fake;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use std::time::{Duration, Instant};

use runc_client::{Reaper, Runc, RuncConfig};

/// Whether real-runc tests can run here; they need root, runc and busybox.
pub fn runc_available() -> bool {
    nix::unistd::geteuid().is_root()
        && Path::new("/usr/bin/busybox").exists()
        && std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("runc").exists()))
            .unwrap_or(false)
}

/// Returns from the test, saying why, where real-runc tests cannot run.
#[allow(unused_macros)]
macro_rules! require_runc {
    () => {
        if !common::runc_available() {
            test_skip::skip!("needs root, runc and /usr/bin/busybox");
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_runc;

/// A private runc state root, removed with everything in it.
pub struct Root {
    pub dir: tempfile::TempDir,
}

impl Root {
    pub fn new() -> Root {
        Root {
            dir: tempfile::Builder::new()
                .prefix("runc-client-root")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn client(&self) -> Runc {
        self.client_with(|_| {})
    }

    /// A client of this root whose configuration `edit` changes further.
    pub fn client_with(&self, edit: impl FnOnce(&mut RuncConfig)) -> Runc {
        let mut config = RuncConfig {
            root: Some(self.dir.path().to_path_buf()),
            pipe_size: Some(4096),
            ..Default::default()
        };
        edit(&mut config);
        Runc::new(config, Reaper::global())
    }

    /// A crun client of this root, or `None` (a visible skip, see `test_skip`) where
    /// /usr/bin/crun is missing.
    pub fn crun(&self) -> Option<Runc> {
        if !Path::new("/usr/bin/crun").exists() {
            test_skip::skip("no /usr/bin/crun");
            return None;
        }
        Some(self.client_with(|c| c.binary = "/usr/bin/crun".into()))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique container id (also used for its cgroup path).
pub fn unique_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// An OCI bundle with a busybox rootfs, removed on drop.
pub struct Bundle {
    pub dir: tempfile::TempDir,
}

impl Bundle {
    /// A bundle running `args`; `edit` may adjust the config JSON further.
    pub fn new(id: &str, args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("runc-client-bundle")
            .tempdir()
            .unwrap();
        let bin = dir.path().join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        for d in ["proc", "dev", "sys", "tmp", "etc"] {
            std::fs::create_dir_all(dir.path().join("rootfs").join(d)).unwrap();
        }
        std::fs::copy("/usr/bin/busybox", bin.join("busybox")).unwrap();
        for applet in ["sh", "sleep", "cat", "echo", "true", "ls"] {
            std::fs::hard_link(bin.join("busybox"), bin.join(applet)).unwrap();
        }
        let mut config = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
        config["process"]["args"] = serde_json::json!(args);
        config["process"]["terminal"] = false.into();
        config["root"] = serde_json::json!({"path": "rootfs", "readonly": false});
        config["hostname"] = "runc-client-test".into();
        // A cgroup of its own, so update and stats observe only this container.
        config["linux"]["cgroupsPath"] = format!("/runc-client-test-{id}").into();
        edit(&mut config);
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        Bundle { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }
}

/// Force-deletes a container when dropped, even while a test is panicking.
pub struct ContainerGuard {
    pub runc: Runc,
    pub id: String,
}

impl ContainerGuard {
    /// A guard that force-deletes `id` through `runc`.
    pub fn new(runc: &Runc, id: &str) -> ContainerGuard {
        ContainerGuard {
            runc: runc.clone(),
            id: id.to_string(),
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let runc = self.runc.clone();
        let id = self.id.clone();
        // Drop may run inside a runtime, where blocking on another future is not allowed.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                match runc.delete(&id, true).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => eprintln!("cleanup of container {id} failed: {e}"),
                }
            })
        });
        let _ = cleanup.join();
    }
}

/// Sets a sysctl for the guard's lifetime and restores the old value on drop, panics included.
pub struct SysctlGuard {
    path: PathBuf,
    old: String,
}

impl SysctlGuard {
    pub fn set(path: &str, value: &str) -> SysctlGuard {
        let old = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, value).unwrap();
        SysctlGuard {
            path: path.into(),
            old,
        }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, self.old.trim()) {
            eprintln!("could not restore {}: {e}", self.path.display());
        }
    }
}

/// Removes a container's cgroup directories (every v1 hierarchy) on drop, for containers
/// whose creation was killed before runc recorded enough state to delete them.
pub struct CgroupGuard {
    pub name: String,
}

impl CgroupGuard {
    /// Directories of this cgroup that currently exist.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path().join(&self.name))
            .filter(|p| p.is_dir())
            .collect()
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for dir in self.dirs() {
            if let Err(e) = std::fs::remove_dir(&dir) {
                eprintln!("could not remove {}: {e}", dir.display());
            }
        }
    }
}

/// Polls `runc state` until the container reaches `want` (10 s at most); the last status seen.
pub async fn wait_status(runc: &Runc, id: &str, want: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let status = runc.state(id).await.unwrap().status;
        if status == want || Instant::now() > end {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process spec running `args` as root in /.
pub fn process(args: &[&str]) -> oci_spec::runtime::Process {
    let mut p = serde_json::to_value(oci_spec::runtime::Process::default()).unwrap();
    p["args"] = serde_json::json!(args);
    serde_json::from_value(p).unwrap()
}

/// Creates `id` from `bundle` with default options and starts it.
pub async fn create_and_start(runc: &Runc, id: &str, bundle: &Bundle) {
    runc.create(id, bundle.path(), &runc_client::CreateOpts::default())
        .await
        .unwrap();
    runc.start(id).await.unwrap();
}

/// Everything written to the pipe end `fd` until its last writer closes.
pub fn read_to_string(fd: OwnedFd) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).unwrap();
    s
}
