//! The incident journal: JSON lines, one per step, fsync'd, bounded in size.
//!
//! A recovery writes `started` (with everything needed to redo it) before it acts and
//! `finished` after, so a watchdog that died in between finds the incident unfinished on
//! its next start and completes it once. When the file grows past its bound it is rewritten
//! with the newest entries that fit in half of it, always keeping unfinished incidents.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::discovery::Shim;
use crate::private;

/// Default bound of the journal file.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

/// Errors reading or writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal {path}: {op}: {source}")]
    Io {
        /// The journal (or its temp/lock file).
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Another watchdog holds the journal.
    #[error("journal {path} is in use by another watchdog (lock {lock})")]
    Locked {
        /// The journal.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Incident id: namespace, shim id and the shim's pid and start time.
    pub incident: String,
    /// What happened.
    #[serde(flatten)]
    pub phase: Phase,
}

/// The kinds of journal lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// A recovery begins; `shim` is enough to redo it after a restart.
    Started {
        /// Why: "dead", "hung", "dead at discovery", "resumed after restart".
        reason: String,
        /// The shim and its tasks as discovered.
        shim: Shim,
    },
    /// One step of a recovery.
    Step {
        /// Step name ("kill shim", "kill cgroups", "delete <id>", "containerd").
        step: String,
        /// Whether it succeeded.
        ok: bool,
        /// How long it took.
        ms: u64,
        /// What it saw or did.
        detail: String,
    },
    /// The recovery is over.
    Finished {
        /// Whether every step succeeded.
        ok: bool,
        /// Time from the shim's death (or the hung verdict) to the end.
        total_ms: u64,
        /// One-line summary.
        summary: String,
    },
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An incident's entries, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Incident {
    /// Incident id.
    pub id: String,
    /// Its entries.
    pub entries: Vec<Entry>,
}

impl Incident {
    /// The latest `started` entry's shim and reason, if present. An incident id can be
    /// started again after it finished (a recovery that failed or panicked is retried).
    pub fn started(&self) -> Option<(&str, &Shim)> {
        self.entries.iter().rev().find_map(|e| match &e.phase {
            Phase::Started { reason, shim } => Some((reason.as_str(), shim)),
            _ => None,
        })
    }

    /// Whether it finished: a `finished` entry and no `started` after it.
    pub fn finished(&self) -> bool {
        self.entries
            .iter()
            .rev()
            .find_map(|e| match e.phase {
                Phase::Finished { .. } => Some(true),
                Phase::Started { .. } => Some(false),
                _ => None,
            })
            .unwrap_or(false)
    }
}

/// The journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    max_bytes: u64,
    write: Mutex<()>,
    lock: Mutex<Option<File>>,
}

impl Journal {
    /// A journal at `path`, rewritten when it grows past `max_bytes`.
    pub fn new(path: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self {
            path: path.into(),
            max_bytes: max_bytes.max(4096),
            write: Mutex::new(()),
            lock: Mutex::new(None),
        }
    }

    /// Its directory, created private (0700) if missing and checked.
    fn directory(&self) -> Result<(), JournalError> {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => {
                private::directory(dir).map_err(self.io("directory"))
            }
            _ => Ok(()),
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
        move |source| JournalError::Io {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// Takes the exclusive lock (`<journal>.lock`) for this process's lifetime, so two
    /// watchdogs never recover the same shims at once.
    pub fn lock_exclusive(&self) -> Result<(), JournalError> {
        self.directory()?;
        let lock_path = lock_path(&self.path);
        let file = private::lock_file(&lock_path).map_err(self.io("open lock file"))?;
        // SAFETY: flock(2) on an fd we own.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc != 0 {
            return Err(JournalError::Locked {
                path: self.path.clone(),
                lock: lock_path,
            });
        }
        *self.lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
        Ok(())
    }

    /// Appends one entry durably (write + fsync), trimming the file if it grew too big.
    pub fn append(&self, entry: &Entry) -> Result<(), JournalError> {
        let _serial = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.directory()?;
        let mut line = serde_json::to_vec(entry)
            .map_err(|e| self.io("encode entry")(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut file = private::open(&self.path, OpenOptions::new().read(true).append(true), true)
            .map_err(self.io("open"))?;
        let len = file.metadata().map_err(self.io("stat"))?.len();
        if len > 0 && !ends_with_newline(&mut file, len).map_err(self.io("read tail"))? {
            // A crash mid-line left a torn entry: never glue the next one onto it.
            line.insert(0, b'\n');
        }
        file.write_all(&line).map_err(self.io("append"))?;
        file.sync_data().map_err(self.io("fsync"))?;
        if len + line.len() as u64 > self.max_bytes {
            self.trim_locked()?;
        }
        Ok(())
    }

    /// Every readable entry, oldest first (torn or foreign lines are skipped and logged).
    pub fn read(&self) -> Result<Vec<Entry>, JournalError> {
        let file = match private::open(&self.path, OpenOptions::new().read(true), false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("open")(e)),
        };
        // Appends may overshoot the bound by one entry before the trim; anything far
        // beyond it is not the journal this code wrote, and is not read whole.
        let mut raw = Vec::new();
        file.take(self.max_bytes.saturating_mul(4))
            .read_to_end(&mut raw)
            .map_err(self.io("read"))?;
        Ok(parse(&String::from_utf8_lossy(&raw), &self.path))
    }

    /// Entries grouped by incident, in order of their first entry.
    pub fn incidents(&self) -> Result<Vec<Incident>, JournalError> {
        Ok(group(self.read()?))
    }

    /// Rewrites the file with the newest entries fitting in half the bound, plus every
    /// entry of an unfinished incident.
    pub fn trim(&self) -> Result<(), JournalError> {
        let _serial = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.trim_locked()
    }

    fn trim_locked(&self) -> Result<(), JournalError> {
        let entries = self.read()?;
        let keep = select_kept(&entries, self.max_bytes / 2);
        let mut out = Vec::new();
        for e in &keep {
            out.extend(serde_json::to_vec(e).unwrap_or_default());
            out.push(b'\n');
        }
        let tmp = self.path.with_extension("journal.tmp");
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(self.io("remove stale temp")(e))
            }
            _ => {}
        }
        let mut f = private::open(&tmp, OpenOptions::new().write(true).create_new(true), true)
            .map_err(self.io("create temp"))?;
        f.write_all(&out).map_err(self.io("write temp"))?;
        f.sync_all().map_err(self.io("fsync temp"))?;
        std::fs::rename(&tmp, &self.path).map_err(self.io("rename temp"))?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                d.sync_all().map_err(self.io("fsync directory"))?;
            }
        }
        log::info!(
            "journal {}: trimmed from {} to {} entries",
            self.path.display(),
            entries.len(),
            keep.len()
        );
        Ok(())
    }
}

/// The lock file next to a journal.
pub fn lock_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn ends_with_newline(file: &mut File, len: u64) -> std::io::Result<bool> {
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

fn parse(text: &str, path: &Path) -> Vec<Entry> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .filter_map(|(n, l)| match serde_json::from_str(l) {
            Ok(e) => Some(e),
            Err(e) => {
                log::warn!("journal {}: line {} skipped: {e}", path.display(), n + 1);
                None
            }
        })
        .collect()
}

/// Groups entries by incident, keeping the order of first appearance.
pub fn group(entries: Vec<Entry>) -> Vec<Incident> {
    let mut order = Vec::new();
    let mut by_id: BTreeMap<String, Incident> = BTreeMap::new();
    for e in entries {
        let inc = by_id.entry(e.incident.clone()).or_insert_with(|| {
            order.push(e.incident.clone());
            Incident {
                id: e.incident.clone(),
                entries: Vec::new(),
            }
        });
        inc.entries.push(e);
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect()
}

fn select_kept(entries: &[Entry], budget: u64) -> Vec<Entry> {
    let unfinished: BTreeSet<String> = group(entries.to_vec())
        .into_iter()
        .filter(|i| !i.finished())
        .map(|i| i.id)
        .collect();
    let mut used = 0u64;
    let mut keep = vec![false; entries.len()];
    for (i, e) in entries.iter().enumerate().rev() {
        let size = serde_json::to_vec(e)
            .map(|v| v.len() as u64 + 1)
            .unwrap_or(0);
        if unfinished.contains(e.incident.as_str()) {
            keep[i] = true;
        } else if used + size <= budget {
            used += size;
            keep[i] = true;
        } else {
            // Older entries are dropped from here on (but unfinished ones stay).
            used = budget;
        }
    }
    entries
        .iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(e, _)| e.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(incident: &str, n: usize) -> Entry {
        Entry {
            at_ms: n as u64,
            incident: incident.into(),
            phase: Phase::Step {
                step: format!("step {n}"),
                ok: true,
                ms: 1,
                detail: "x".repeat(100),
            },
        }
    }

    fn started(incident: &str) -> Entry {
        Entry {
            at_ms: 0,
            incident: incident.into(),
            phase: Phase::Started {
                reason: "dead".into(),
                shim: Shim::default(),
            },
        }
    }

    fn finished(incident: &str) -> Entry {
        Entry {
            at_ms: 0,
            incident: incident.into(),
            phase: Phase::Finished {
                ok: true,
                total_ms: 3,
                summary: "done".into(),
            },
        }
    }

    #[test]
    fn write_read_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("sub/w.journal"), DEFAULT_MAX_BYTES);
        j.append(&started("a")).unwrap();
        j.append(&step("a", 1)).unwrap();
        j.append(&started("b")).unwrap();
        j.append(&finished("a")).unwrap();
        let incidents = j.incidents().unwrap();
        assert_eq!(incidents.len(), 2);
        assert_eq!(incidents[0].id, "a");
        assert!(incidents[0].finished());
        assert_eq!(incidents[0].entries.len(), 3);
        assert!(!incidents[1].finished());
        assert_eq!(incidents[1].started().unwrap().0, "dead");
    }

    /// A recovery that failed or panicked is started again under the same id: the retry
    /// is unfinished until its own `finished`.
    #[test]
    fn an_incident_started_again_after_it_finished_is_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("w.journal"), DEFAULT_MAX_BYTES);
        j.append(&started("a")).unwrap();
        j.append(&finished("a")).unwrap();
        j.append(&started("a")).unwrap();
        j.append(&step("a", 1)).unwrap();
        let incidents = j.incidents().unwrap();
        assert!(!incidents[0].finished(), "the retry counts as done");
        j.append(&finished("a")).unwrap();
        assert!(j.incidents().unwrap()[0].finished());
    }

    #[test]
    fn torn_line_is_skipped_and_not_glued_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.journal");
        let j = Journal::new(&path, DEFAULT_MAX_BYTES);
        j.append(&started("a")).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"at_ms":1,"incident":"a","pha"#).unwrap();
        j.append(&finished("a")).unwrap();
        let entries = j.read().unwrap();
        assert_eq!(entries, vec![started("a"), finished("a")]);
    }

    #[test]
    fn trim_keeps_newest_and_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.journal");
        let j = Journal::new(&path, 8192);
        j.append(&started("old-unfinished")).unwrap();
        for n in 0..200 {
            let id = format!("i{n}");
            j.append(&started(&id)).unwrap();
            j.append(&step(&id, n)).unwrap();
            j.append(&finished(&id)).unwrap();
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 8192, "journal grew to {size} bytes");
        let incidents = j.incidents().unwrap();
        assert_eq!(incidents[0].id, "old-unfinished");
        assert!(!incidents[0].finished());
        let last = incidents.last().unwrap();
        assert_eq!(last.id, "i199");
        assert!(last.finished());
        assert!(incidents.iter().all(|i| i.id != "i0"));
    }

    #[test]
    fn second_watchdog_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.journal");
        let a = Journal::new(&path, DEFAULT_MAX_BYTES);
        a.lock_exclusive().unwrap();
        let b = Journal::new(&path, DEFAULT_MAX_BYTES);
        assert!(matches!(
            b.lock_exclusive(),
            Err(JournalError::Locked { .. })
        ));
        drop(a);
        b.lock_exclusive().unwrap();
    }
}
