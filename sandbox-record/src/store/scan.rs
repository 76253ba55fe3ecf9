//! Listing the records again and again (the watchdog, every interval) without reading and
//! decoding the ones that did not change: a [`ScanCache`] keeps each file's identity
//! (device, inode, size, modification and change times) with the [`Summary`] decoded from
//! it. Every write renames a new file over the record, so a changed record is a new inode.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::RecordError;
use crate::summary::Summary;

use super::{check_identity, read_file, Store};

/// A record file as [`Store::scan`] found it.
#[derive(Debug)]
pub struct Scanned {
    /// containerd namespace (the directory it is in).
    pub namespace: String,
    /// Sandbox id (the file name without `.json`).
    pub sandbox_id: String,
    /// The file.
    pub path: PathBuf,
    /// What the record says, or why it cannot be trusted.
    pub summary: Result<Arc<Summary>, RecordError>,
}

/// The identity of a file's content as far as `stat(2)` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(path: &Path) -> Option<FileKey> {
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(FileKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// What the last scans decoded, by file.
#[derive(Debug, Default)]
pub struct ScanCache {
    files: HashMap<PathBuf, (FileKey, Result<Arc<Summary>, RecordError>)>,
    decoded: u64,
}

impl ScanCache {
    /// How many record files have been read and decoded through this cache.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }
}

fn copy(r: &Result<Arc<Summary>, RecordError>) -> Option<Result<Arc<Summary>, RecordError>> {
    match r {
        Ok(s) => Some(Ok(s.clone())),
        Err(e) => e.lasting_copy().map(Err),
    }
}

impl Store {
    /// Every record file, sorted by namespace and id, each summarised: decoded only when
    /// `cache` has not seen the file as it is now. A missing store directory is an empty
    /// store; a record directory another user could write to is an error.
    pub fn scan(&self, cache: &mut ScanCache) -> Result<Vec<Scanned>, RecordError> {
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for (namespace, id, path) in self.record_files()? {
            let key = FileKey::of(&path);
            let cached = key
                .and_then(|k| cache.files.get(&path).filter(|(old, _)| *old == k))
                .and_then(|(_, r)| copy(r));
            let summary = match cached {
                Some(r) => r,
                None => {
                    cache.decoded += 1;
                    match read_file(&path) {
                        Ok(Some((r, _))) => {
                            check_identity(&path, r, &namespace, &id).map(|r| Arc::new(r.into()))
                        }
                        // Removed between listing and reading.
                        Ok(None) => continue,
                        Err(e) => Err(e),
                    }
                }
            };
            if let (Some(k), Some(r)) = (key, copy(&summary)) {
                seen.insert(path.clone(), (k, r));
            }
            out.push(Scanned {
                namespace,
                sandbox_id: id,
                path,
                summary,
            });
        }
        // Files gone since are forgotten.
        cache.files = seen;
        Ok(out)
    }
}
