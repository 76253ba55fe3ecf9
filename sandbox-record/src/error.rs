//! Why a record could not be written, read or removed.

use std::path::PathBuf;

/// A failed record operation; every variant names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file system call failed (ENOSPC and EIO land here: the previous record is kept).
    #[error("sandbox record {path}: {op}: {source}")]
    Io {
        /// The record, its temp file or its directory.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a record this crate can trust: torn, edited, or bit-rotted.
    #[error("sandbox record {path} is corrupt: {reason}")]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The file was written by a newer format this crate does not know.
    #[error(
        "sandbox record {path} has format version {version}, this build reads up to {supported}"
    )]
    UnsupportedVersion {
        /// The record.
        path: PathBuf,
        /// The version found.
        version: u64,
        /// The newest version understood.
        supported: u32,
    },
    /// A namespace or sandbox id that cannot be a file name (empty, `.`-led, with a `/`).
    #[error("sandbox record: {what} {value:?} cannot name a record file")]
    InvalidName {
        /// "namespace" or "sandbox id".
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The record does not fit in a record file even with everything optional left out.
    #[error("sandbox record {id}: {bytes} bytes, more than a record may have")]
    TooLarge {
        /// The sandbox id.
        id: String,
        /// Its size.
        bytes: usize,
    },
    /// A record directory another user could change: nothing in it is trusted or written.
    #[error("sandbox record directory {path}: {reason}; refusing to use it")]
    Insecure {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The record could not be encoded.
    #[error("sandbox record {id}: encode: {source}")]
    Encode {
        /// The sandbox id.
        id: String,
        /// The error.
        source: serde_json::Error,
    },
}

impl RecordError {
    /// Whether the record on disk exists but cannot be trusted (as opposed to an I/O error).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, RecordError::Corrupt { .. })
    }

    /// A copy of a verdict on a file's content (corrupt, newer version), which stays true
    /// as long as the file is unchanged; `None` for errors of the moment (I/O).
    pub fn lasting_copy(&self) -> Option<RecordError> {
        match self {
            RecordError::Corrupt { path, reason } => Some(RecordError::Corrupt {
                path: path.clone(),
                reason: reason.clone(),
            }),
            RecordError::UnsupportedVersion {
                path,
                version,
                supported,
            } => Some(RecordError::UnsupportedVersion {
                path: path.clone(),
                version: *version,
                supported: *supported,
            }),
            _ => None,
        }
    }

    /// The underlying OS error number, if this is an I/O error that has one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            RecordError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
