//! What the shim keeps on disk in the bundle so that a fresh `delete` process (or the
//! watchdog) can finish a container's cleanup after the daemon died.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) so a crash
//! leaves either the old record or the new one, never a torn file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the record inside the bundle.
pub const RECORD_FILE: &str = "sturdy.json";
/// Where runc state lives when the options name no root, as in containerd's Go shim.
pub const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";

/// The facts needed to clean a container up without the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version, bumped on incompatible change.
    pub version: u32,
    /// Container id.
    pub id: String,
    /// containerd namespace.
    pub namespace: String,
    /// runc-compatible binary used for this container.
    pub runtime: String,
    /// runc `--root` (already including the namespace).
    pub root: PathBuf,
    /// Whether runc was called with `--systemd-cgroup`.
    pub systemd_cgroup: bool,
    /// Whether the shim mounted the rootfs itself (and so must unmount it).
    pub mounted_rootfs: bool,
}

impl Record {
    /// runc root for a namespace, honouring the `Root` option.
    pub fn runc_root(option_root: &str, namespace: &str) -> PathBuf {
        let base = if option_root.is_empty() {
            DEFAULT_RUNC_ROOT
        } else {
            option_root
        };
        Path::new(base).join(namespace)
    }

    /// Writes the record into `bundle` atomically and durably.
    pub fn save(&self, bundle: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(self)?;
        write_atomic(&bundle.join(RECORD_FILE), &data)
    }

    /// Reads the record from `bundle`, `Ok(None)` if there is none.
    pub fn load(bundle: &Path) -> std::io::Result<Option<Self>> {
        match fs::read(bundle.join(RECORD_FILE)) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Replaces `path` with `data` so that readers see the old or the new content, durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Record::load(dir.path()).unwrap().is_none());
        let r = Record {
            version: 1,
            id: "c1".into(),
            namespace: "k8s.io".into(),
            runtime: "crun".into(),
            root: Record::runc_root("", "k8s.io"),
            systemd_cgroup: false,
            mounted_rootfs: true,
        };
        r.save(dir.path()).unwrap();
        assert_eq!(Record::load(dir.path()).unwrap().unwrap(), r);
        assert_eq!(r.root, PathBuf::from("/run/containerd/runc/k8s.io"));
        // no temp file left behind
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn corrupt_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(RECORD_FILE), b"{not json").unwrap();
        assert!(Record::load(dir.path()).is_err());
    }
}
