//! The records on disk: `<dir>/<namespace>/<sandbox id>.json`.
//!
//! A write goes to a temp file in the same directory, is fsynced, renamed over the record
//! and the directory fsynced, so a crash at any instant leaves the old record or the new
//! one, never a torn one; a failed write (ENOSPC, EIO) leaves the old record as it was.
//! Temp files start with a dot and are never listed as records. Directories are 0700 and
//! files 0600, and a directory another user could write to is refused ([`secure`]).

mod scan;
mod secure;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::RecordError;
use crate::fault::{self, Step};
use crate::format;
use crate::model::Record;

pub use scan::{ScanCache, Scanned};

/// Where records live unless the runtime options say otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/sturdy/sandboxes";
/// Suffix of record files.
const SUFFIX: &str = ".json";
/// Temp files younger than this may belong to a write in progress and are left alone by
/// [`Store::gc`].
pub const TEMP_GRACE: Duration = Duration::from_secs(600);

/// The record directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    dir: PathBuf,
}

/// One record file found by [`Store::list`], read and checked.
#[derive(Debug)]
pub struct Entry {
    /// containerd namespace (the directory it is in).
    pub namespace: String,
    /// Sandbox id (the file name without `.json`).
    pub sandbox_id: String,
    /// The file.
    pub path: PathBuf,
    /// The record, or why it cannot be trusted.
    pub record: Result<Record, RecordError>,
}

/// What [`Store::gc`] did.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Records removed: (namespace, sandbox id).
    pub removed: Vec<(String, String)>,
    /// Leftover temp files of interrupted writes removed.
    pub temp_removed: Vec<PathBuf>,
    /// Removals that failed.
    pub errors: Vec<RecordError>,
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> RecordError + 'a {
    move |source| RecordError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn check_name(what: &'static str, value: &str) -> Result<(), RecordError> {
    let bad = value.is_empty()
        || value.starts_with('.')
        || value.len() > 200
        || value.chars().any(|c| c == '/' || c == '\0');
    if bad {
        return Err(RecordError::InvalidName {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

/// fsyncs a directory, so a rename or removal inside it is durable.
fn sync_dir(dir: &Path) -> Result<(), RecordError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "fsync directory"))
}

impl Store {
    /// The store rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of sandbox `id` in `namespace`.
    pub fn path(&self, namespace: &str, id: &str) -> Result<PathBuf, RecordError> {
        check_name("namespace", namespace)?;
        check_name("sandbox id", id)?;
        Ok(self.dir.join(namespace).join(format!("{id}{SUFFIX}")))
    }

    /// Writes `record` durably over the previous one (see the module doc). Blocking: two
    /// fsyncs at least.
    pub fn write(&self, record: &Record) -> Result<PathBuf, RecordError> {
        let path = self.path(&record.namespace, &record.sandbox_id)?;
        let bytes = format::encode(record)?;
        let ns_dir = self.dir.join(&record.namespace);
        let new_ns = secure::check_dir(&self.dir, true)?.is_none()
            || secure::check_dir(&ns_dir, false)?.is_none();
        secure::private_dir(&self.dir, true)?;
        secure::private_dir(&ns_dir, false)?;
        if new_ns {
            // The new directory's own entry must be durable too.
            sync_dir(&self.dir)?;
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // Unique per call: two writers of one record must not share a temp file.
        let tmp = ns_dir.join(format!(
            ".{}{SUFFIX}.tmp.{}.{}",
            record.sandbox_id,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = secure::create_file(&tmp)?;
            f.write_all(&bytes).map_err(io(&tmp, "write"))?;
            fault::at(Step::Written);
            f.sync_all().map_err(io(&tmp, "fsync"))?;
            drop(f);
            fault::at(Step::Synced);
            fs::rename(&tmp, &path).map_err(io(&path, "rename temp file over"))?;
            fault::at(Step::Renamed);
            sync_dir(&ns_dir)
        })();
        if result.is_err() {
            // Best effort: a temp file that cannot be removed now is gc's later.
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }

    /// Reads and checks the record of sandbox `id`; `Ok(None)` when there is none.
    pub fn read(&self, namespace: &str, id: &str) -> Result<Option<Record>, RecordError> {
        let path = self.path(namespace, id)?;
        if !self.checked_dirs(namespace)? {
            return Ok(None);
        }
        read_file(&path).map(|r| r.map(|(record, _)| record))
    }

    /// Removes the record of sandbox `id`; `Ok(false)` when there was none.
    pub fn remove(&self, namespace: &str, id: &str) -> Result<bool, RecordError> {
        let path = self.path(namespace, id)?;
        if !self.checked_dirs(namespace)? {
            return Ok(false);
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(&path, "remove")(e)),
        }
        sync_dir(&self.dir.join(namespace))?;
        Ok(true)
    }

    /// Whether the store's and `namespace`'s directories exist; an error if either is one
    /// another user could change.
    fn checked_dirs(&self, namespace: &str) -> Result<bool, RecordError> {
        Ok(secure::check_dir(&self.dir, true)?.is_some()
            && secure::check_dir(&self.dir.join(namespace), false)?.is_some())
    }

    /// The namespace directories, each checked; none if the store directory is missing.
    fn namespace_dirs(&self) -> Result<Vec<PathBuf>, RecordError> {
        if secure::check_dir(&self.dir, true)?.is_none() {
            return Ok(Vec::new());
        }
        let dirs = subdirs(&self.dir)?;
        for d in &dirs {
            secure::check_dir(d, false)?;
        }
        Ok(dirs)
    }

    /// (namespace, sandbox id, file) of every record file, sorted.
    fn record_files(&self) -> Result<Vec<(String, String, PathBuf)>, RecordError> {
        let mut out = Vec::new();
        for ns_dir in self.namespace_dirs()? {
            let namespace = file_name(&ns_dir);
            if check_name("namespace", &namespace).is_err() {
                continue;
            }
            for path in files(&ns_dir)? {
                let name = file_name(&path);
                let Some(id) = name.strip_suffix(SUFFIX) else {
                    continue;
                };
                if name.starts_with('.') || id.is_empty() {
                    continue;
                }
                out.push((namespace.clone(), id.to_string(), path));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

    /// Every record file, each read and checked in full, sorted by namespace and id. A
    /// missing store directory is an empty store. ([`Store::scan`] is the way to look at
    /// every record repeatedly.)
    pub fn list(&self) -> Result<Vec<Entry>, RecordError> {
        let mut out = Vec::new();
        for (namespace, id, path) in self.record_files()? {
            let record = match read_file(&path) {
                Ok(Some((r, _))) => check_identity(&path, r, &namespace, &id),
                // Removed between listing and reading.
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            out.push(Entry {
                namespace,
                sandbox_id: id,
                path,
                record,
            });
        }
        Ok(out)
    }

    /// Removes the records of sandboxes `known(namespace, id)` says no longer exist (corrupt
    /// ones included), and temp files older than [`TEMP_GRACE`]. Only call it with a
    /// complete view of the sandboxes: a record wrongly collected is a record lost.
    pub fn gc(&self, known: impl Fn(&str, &str) -> bool) -> Result<GcReport, RecordError> {
        let mut report = GcReport::default();
        for ns_dir in self.namespace_dirs()? {
            let namespace = file_name(&ns_dir);
            let mut changed = false;
            for path in files(&ns_dir)? {
                let name = file_name(&path);
                if name.starts_with('.') {
                    if name.contains(".tmp.") && older_than(&path, TEMP_GRACE) {
                        match fs::remove_file(&path) {
                            Ok(()) => {
                                report.temp_removed.push(path);
                                changed = true;
                            }
                            Err(e) => report.errors.push(io(&path, "remove temp file")(e)),
                        }
                    }
                    continue;
                }
                let Some(id) = name.strip_suffix(SUFFIX) else {
                    continue;
                };
                if known(&namespace, id) {
                    continue;
                }
                match fs::remove_file(&path) {
                    Ok(()) => {
                        report.removed.push((namespace.clone(), id.to_string()));
                        changed = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => report.errors.push(io(&path, "remove")(e)),
                }
            }
            if changed {
                if let Err(e) = sync_dir(&ns_dir) {
                    report.errors.push(e);
                }
            }
        }
        Ok(report)
    }
}

/// Reads and decodes one record file; `Ok(None)` if it does not exist.
fn read_file(path: &Path) -> Result<Option<(Record, usize)>, RecordError> {
    match secure::read_bounded(path)? {
        Some(bytes) => format::decode(path, &bytes).map(|r| Some((r, bytes.len()))),
        None => Ok(None),
    }
}

/// A record whose content names another sandbox than its file is as bad as a corrupt one.
fn check_identity(
    path: &Path,
    r: Record,
    namespace: &str,
    id: &str,
) -> Result<Record, RecordError> {
    if r.namespace != namespace || r.sandbox_id != id {
        return Err(RecordError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "its record is for {}/{}, its file name for {namespace}/{id}",
                r.namespace, r.sandbox_id
            ),
        });
    }
    Ok(r)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn entries(dir: &Path, want_dirs: bool) -> Result<Vec<PathBuf>, RecordError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir, "list")(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io(dir, "list"))?;
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir == want_dirs {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, RecordError> {
    entries(dir, true)
}

fn files(dir: &Path) -> Result<Vec<PathBuf>, RecordError> {
    entries(dir, false)
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|d| d >= age)
}

#[cfg(test)]
mod tests;
