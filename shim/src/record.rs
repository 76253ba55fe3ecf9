//! What the shim keeps on disk in the bundle so that a fresh `delete` process (or the
//! watchdog) can finish a container's cleanup after the daemon died.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) so a crash
//! leaves either the old record or the new one, never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// File name of the record inside the bundle.
pub const RECORD_FILE: &str = "sturdy.json";
/// The record format this shim writes and understands.
///
/// Every record ever written carries it (format 1 since the first release). A field
/// added with a default keeps the version: older binaries ignore fields they do not know,
/// so a rollback still reads the record. Any change an older binary would misread (a
/// renamed, removed or reinterpreted field) bumps it, and binaries that do not know the
/// new number refuse the record rather than guess ([`Record::check`]). A bump must come
/// with reading of every earlier version, proven by a fixture file of it in
/// `record/testdata/`.
pub const RECORD_VERSION: u32 = 1;
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

    /// [`Record::save`] on a thread of its own: the fsyncs can take long on a loaded disk,
    /// and must not stall every other task of a current-thread runtime meanwhile.
    pub async fn save_async(&self, bundle: &Path) -> std::io::Result<()> {
        let (record, bundle) = (self.clone(), bundle.to_path_buf());
        runc_client::blocking::run("save-record", move || record.save(&bundle)).await?
    }

    /// Checks that a loaded record can be acted on for container `id`: a record of another
    /// container, of an unknown format, or without a usable runtime and root is as bad as
    /// a corrupt one, and nothing must run on its say-so.
    pub fn check(&self, id: &str) -> Result<(), String> {
        if self.version != RECORD_VERSION {
            return Err(format!(
                "record format version {} is not {RECORD_VERSION}",
                self.version
            ));
        }
        if self.id != id {
            return Err(format!("record is for container {:?}, not {id:?}", self.id));
        }
        if self.runtime.is_empty() {
            return Err("record names no runtime binary".into());
        }
        if !self.root.is_absolute() {
            return Err(format!(
                "record's runtime root {} is not absolute",
                self.root.display()
            ));
        }
        Ok(())
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
///
/// Blocking (two fsyncs): async callers use [`Record::save_async`].
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per call, not only per process: two threads saving the same file must not
    // share (and truncate) one temp file.
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
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

    fn record(id: &str) -> Record {
        Record {
            version: 1,
            id: id.into(),
            namespace: "k8s.io".into(),
            runtime: "runc".into(),
            root: Record::runc_root("", "k8s.io"),
            systemd_cgroup: false,
            mounted_rootfs: false,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn failed_save_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // rename(2) cannot replace a directory with a file.
        fs::create_dir(dir.path().join(RECORD_FILE)).unwrap();
        assert!(record("c1").save(dir.path()).is_err());
        assert_eq!(names(dir.path()), vec![RECORD_FILE.to_string()]);
    }

    #[test]
    fn concurrent_saves_all_succeed_and_leave_one_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let bundle = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        record(&format!("c{t}-{i}")).save(&bundle)?;
                    }
                    Ok::<_, std::io::Error>(())
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().expect("a save failed");
        }
        assert!(Record::load(dir.path()).unwrap().is_some());
        assert_eq!(names(dir.path()), vec![RECORD_FILE.to_string()]);
    }

    #[tokio::test]
    async fn save_async_writes_off_the_runtime_thread_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        record("c1").save_async(dir.path()).await.unwrap();
        assert_eq!(Record::load(dir.path()).unwrap().unwrap().id, "c1");
        let err = record("c1")
            .save_async(&dir.path().join("missing"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn check_refuses_records_nothing_should_act_on() {
        assert_eq!(record("c1").check("c1"), Ok(()));
        assert!(record("c1").check("c2").unwrap_err().contains("\"c1\""));
        let mut r = record("c1");
        r.version = 9;
        assert!(r.check("c1").unwrap_err().contains("version 9"));
        let mut r = record("c1");
        r.runtime.clear();
        assert!(r.check("c1").is_err());
        let mut r = record("c1");
        r.root = PathBuf::from("runc-root");
        assert!(r.check("c1").unwrap_err().contains("not absolute"));
    }

    /// `sturdy.json` exactly as format 1 is written (captured from a CRI container's
    /// bundle, root set to the default): every later binary must read it, so replacing the
    /// shim binary under running containers keeps their `delete` working.
    const V1: &str = include_str!("record/testdata/sturdy-v1.json");

    fn bundle_with(record: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(RECORD_FILE), record).unwrap();
        dir
    }

    #[test]
    fn format_1_records_of_earlier_releases_are_read() {
        let id = "4b1080f9bf4412ec77a23f7538f7a6386a89796dc162d8e2ed17af7303dcabe9";
        let dir = bundle_with(V1);
        let r = Record::load(dir.path()).unwrap().expect("record");
        assert_eq!(
            r,
            Record {
                version: 1,
                id: id.into(),
                namespace: "k8s.io".into(),
                runtime: "runc".into(),
                root: PathBuf::from("/run/containerd/runc/k8s.io"),
                systemd_cgroup: false,
                mounted_rootfs: true,
            }
        );
        assert_eq!(r.check(id), Ok(()));
        // What this binary writes for the same facts is still format 1, field for field.
        let written: serde_json::Value = serde_json::to_value(&r).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(V1).unwrap();
        assert_eq!(written, fixture);
    }

    #[test]
    fn unknown_fields_of_a_later_release_are_ignored_but_a_missing_version_is_not() {
        let mut v: serde_json::Value = serde_json::from_str(V1).unwrap();
        v["added_later"] = serde_json::json!({"anything": [1, 2]});
        let dir = bundle_with(&v.to_string());
        let r = Record::load(dir.path()).unwrap().expect("record");
        assert_eq!(r.check(&r.id.clone()), Ok(()));

        // No sturdy ever wrote a record without a version: such a file is not ours.
        v.as_object_mut().unwrap().remove("version");
        let dir = bundle_with(&v.to_string());
        let err = Record::load(dir.path()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn corrupt_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(RECORD_FILE), b"{not json").unwrap();
        assert!(Record::load(dir.path()).is_err());
    }
}
