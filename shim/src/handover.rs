//! The handover document: everything a shim daemon holds that is not on disk, written by
//! the old image and read by the new one when a shim re-executes itself into a new binary
//! (`sturdyctl upgrade-shims`, docs/upgrade.md).
//!
//! What cannot be written down (sockets, pipes, pidfds, spill files, OOM watches) is
//! inherited across the exec and named in the document by fd number; the document itself
//! travels in a sealed memfd ([`memfd`]), so neither image can change it once written.
//!
//! The discipline is that of `sturdy.json`, made stricter: every document carries a
//! `version`; a binary reads every version listed in [`READS`] (each proven by a fixture in
//! `handover/testdata/`) and refuses any other before anything is touched. Unlike the
//! record, an unknown field is refused, not ignored: a field the reader does not know is
//! state it would silently drop (an fd left open, an exit never published), so any added
//! field bumps the version.
//!
//! This module knows no wire types and no live objects: the shim's core builds a
//! [`Document`] from its state and rebuilds its state from one.

pub mod memfd;
pub mod v2;

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

/// The format this binary writes.
pub const WRITES: u32 = 2;
/// The formats this binary reads, oldest first.
pub const READS: &[u32] = &[2];
/// Largest document read: bulk bytes (spooled output) travel in fds, not in the document,
/// so even a pod at every bound of [`v2::Limits`] stays far below this.
pub const MAX_DOCUMENT: usize = 16 << 20;

/// The newest format, the one the rest of the shim works with.
pub type Document = v2::Document;

/// Why a handover document was refused.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// Larger than [`MAX_DOCUMENT`].
    #[error("handover document of {len} bytes exceeds the limit of {MAX_DOCUMENT}")]
    TooLarge {
        /// Its size.
        len: u64,
    },
    /// Not JSON, or no `version` number.
    #[error("handover document is not readable: {0}")]
    Syntax(String),
    /// A version this binary does not read.
    #[error(
        "handover format version {found} is not one this binary reads ({}); \
         upgrade to a binary that knows it",
        known_versions()
    )]
    Unsupported {
        /// The version the document carries.
        found: u64,
    },
    /// Decoded, but inconsistent or beyond a bound.
    #[error("handover document (format {version}) is invalid: {why}")]
    Invalid {
        /// Its version.
        version: u32,
        /// What is wrong.
        why: String,
    },
    /// The document could not be read or written.
    #[error("handover {what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// An fd that must be a sealed memfd is not sealed against change.
    #[error("handover fd {fd} is not sealed (seals {seals:#x}, need {needed:#x})")]
    Unsealed {
        /// The fd.
        fd: i32,
        /// Its seals.
        seals: i32,
        /// The seals required.
        needed: i32,
    },
}

fn known_versions() -> String {
    READS
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Encodes `doc` in the format this binary writes, after checking it.
pub fn encode(doc: &Document) -> Result<Vec<u8>, HandoverError> {
    doc.validate()?;
    let bytes = serde_json::to_vec(doc).map_err(|e| HandoverError::Syntax(e.to_string()))?;
    if bytes.len() > MAX_DOCUMENT {
        return Err(HandoverError::TooLarge {
            len: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Decodes a document of any version in [`READS`] into the newest format and checks it.
pub fn decode(bytes: &[u8]) -> Result<Document, HandoverError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(HandoverError::TooLarge {
            len: bytes.len() as u64,
        });
    }
    #[derive(Deserialize)]
    struct Versioned {
        version: Option<u64>,
    }
    let probe: Versioned =
        serde_json::from_slice(bytes).map_err(|e| HandoverError::Syntax(e.to_string()))?;
    let found = probe
        .version
        .ok_or_else(|| HandoverError::Syntax("no version field".into()))?;
    let doc = match found {
        2 => serde_json::from_slice::<v2::Document>(bytes)
            .map_err(|e| HandoverError::Syntax(format!("format 2: {e}")))?,
        found => return Err(HandoverError::Unsupported { found }),
    };
    doc.validate()?;
    Ok(doc)
}

/// What `--check-handover` prints about a document it accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// The format it was written in.
    pub version: u32,
    /// The binary that wrote it.
    pub written_by: String,
    /// Containers, processes (inits and execs), connections and fds it hands over.
    pub containers: usize,
    /// Inits and execs.
    pub processes: usize,
    /// Accepted ttrpc connections.
    pub connections: usize,
    /// Every fd it names.
    pub fds: usize,
    /// Exits not yet claimed by a process.
    pub unclaimed_exits: usize,
    /// The build the upgrade goes to.
    pub target_build_id: String,
}

impl Document {
    /// A summary for `--check-handover`.
    pub fn summary(&self) -> Summary {
        Summary {
            version: self.version,
            written_by: format!(
                "{} (build {})",
                self.writer.version,
                self.writer.build_id.as_deref().unwrap_or("unknown")
            ),
            containers: self.containers.len(),
            processes: self.containers.iter().map(|c| 1 + c.execs.len()).sum(),
            connections: self.connections.len(),
            fds: self.fds().len(),
            unclaimed_exits: self.unclaimed_exits.len(),
            target_build_id: self.upgrade.target_build_id.clone(),
        }
    }
}

/// Checks that every fd is above stdio and named once.
fn check_fds(version: u32, fds: &[(String, i32)]) -> Result<(), HandoverError> {
    let mut seen = HashSet::new();
    for (what, fd) in fds {
        if *fd <= 2 {
            return Err(invalid(version, format!("{what}: fd {fd} is stdio")));
        }
        if !seen.insert(*fd) {
            return Err(invalid(version, format!("{what}: fd {fd} is named twice")));
        }
    }
    Ok(())
}

fn invalid(version: u32, why: impl Into<String>) -> HandoverError {
    HandoverError::Invalid {
        version,
        why: why.into(),
    }
}

fn check_path(version: u32, what: &str, path: &Path) -> Result<(), HandoverError> {
    if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
        return Err(invalid(
            version,
            format!("{what} {} is not a plain absolute path", path.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
