//! `sturdyctl upgrade-shims`: moving running shims onto a new binary in place (issue 20,
//! docs/upgrade.md). Everything that can be checked before a shim is touched is: the new
//! binary is trusted, answers `-v` and `-info`, reads the handover format each shim's
//! running image writes, and decodes a document that image wrote. Unless a dry run, each
//! shim that passed is then asked to execute the new binary in place ([`live`]), one at a
//! time, and what runs afterwards is looked at rather than taken from its answer.
//!
//! Every binary is opened once, checked, and run only through the open file
//! ([`binary::Binary`]); a running shim's image is read through `/proc/PID/exe` only after
//! the process passed [`crate::trust::process`].

pub mod binary;
pub mod control;
pub mod live;
mod memfd;
pub mod version;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::discovery::Shim;
use binary::Binary;
use version::VersionInfo;

/// The fd number the document is handed to `--check-handover` on: high enough to collide
/// with nothing the child inherits.
const CHECK_FD: i32 = 100;

/// Why a binary or a shim cannot be upgraded, or why the upgrade did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// The binary is not one only root can change.
    #[error("{binary}: not trusted: {reason}", binary = binary.display())]
    Untrusted {
        /// The binary.
        binary: PathBuf,
        /// Why.
        reason: String,
    },
    /// Running the binary failed.
    #[error("{binary} {what}: {reason}", binary = binary.display())]
    Run {
        /// The binary.
        binary: PathBuf,
        /// The arguments.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// Its `-v` does not say what it is.
    #[error("{binary} -v: no version in its output", binary = binary.display())]
    NoVersion {
        /// The binary.
        binary: PathBuf,
    },
    /// Its `-v` names another build than the file holds.
    #[error(
        "{binary}: -v says build {claimed:?}, the file is build {file:?}",
        binary = binary.display()
    )]
    BuildMismatch {
        /// The binary.
        binary: PathBuf,
        /// What `-v` said.
        claimed: Option<String>,
        /// What the file holds.
        file: Option<String>,
    },
    /// A binary from before handover existed.
    #[error(
        "{binary}: names no handover format (a build from before in-place upgrade)",
        binary = binary.display()
    )]
    NoHandover {
        /// The binary.
        binary: PathBuf,
    },
    /// The running shim's image cannot be used.
    #[error("shim pid {pid}: {reason}")]
    OldImage {
        /// The shim's pid.
        pid: i32,
        /// Why.
        reason: String,
    },
    /// The new binary does not read the format the running shim writes.
    #[error("the new binary reads handover formats {reads:?}; the running shim writes {writes}")]
    FormatUnknown {
        /// What the shim writes.
        writes: u32,
        /// What the new binary reads.
        reads: Vec<u32>,
    },
    /// No binary to upgrade to.
    #[error("no binary to upgrade to: {0}")]
    NoBinary(String),
    /// The shim has no live process.
    #[error("no live shim process")]
    NoProcess,
    /// The rehearsal of the pause failed (the shim serves on, unpaused).
    #[error("rehearsal: {0}")]
    Rehearsal(String),
}

/// The binary shims are moved onto, checked and described.
#[derive(Debug)]
pub struct Candidate {
    /// The opened binary.
    pub binary: Binary,
    /// Its `-v`.
    pub info: VersionInfo,
}

/// Opens and checks the new binary at `path`: trusted, `-v` names a version, the build
/// the file holds and the handover formats it reads, and `-info` answers.
pub fn inspect(path: &Path) -> Result<Candidate, UpgradeError> {
    let binary = Binary::installed(path)?;
    let out = binary.run(&["-v"], true, None)?;
    let info = version::parse(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        UpgradeError::NoVersion {
            binary: path.to_path_buf(),
        }
    })?;
    if info.build_id != binary.build_id {
        return Err(UpgradeError::BuildMismatch {
            binary: path.to_path_buf(),
            claimed: info.build_id,
            file: binary.build_id.clone(),
        });
    }
    if info.reads.is_empty() {
        return Err(UpgradeError::NoHandover {
            binary: path.to_path_buf(),
        });
    }
    binary.run(&["-info"], true, None)?;
    Ok(Candidate { binary, info })
}

/// How one shim fared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum Outcome {
    /// Every check passed (a dry run stops here).
    Ready,
    /// It already runs the new build.
    Current,
    /// A check failed, or the shim refused before touching anything: it runs on its old
    /// image, never paused long.
    Refused(String),
    /// It runs the new build, same process: said by the shim and seen in `/proc`.
    Upgraded,
    /// The new image did not resume; the shim re-executed the old one, with the same
    /// state, and runs on it (seen in `/proc`).
    RolledBack(String),
    /// Anything else: the pause did not settle, no answer came, or what runs is not what
    /// the answer says. The detail says what runs now, as far as it could be seen.
    Failed(String),
}

impl Outcome {
    /// Whether the shim ends up where the command was to take it (or a dry run found it
    /// could).
    pub fn ok(&self, dry_run: bool) -> bool {
        match self {
            Outcome::Current => true,
            Outcome::Ready => dry_run,
            Outcome::Upgraded => !dry_run,
            Outcome::Refused(_) | Outcome::RolledBack(_) | Outcome::Failed(_) => false,
        }
    }
}

/// One shim's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// containerd namespace.
    pub namespace: String,
    /// The id it was started for (the pod's sandbox).
    pub id: String,
    /// Its socket.
    pub address: String,
    /// Its pid.
    pub pid: Option<i32>,
    /// The version its Connect reply names.
    pub old_version: Option<String>,
    /// Build-id of its running image.
    pub old_build: Option<String>,
    /// The handover format its image writes.
    pub old_writes: Option<u32>,
    /// The new binary's version.
    pub new_version: String,
    /// The new binary's build-id.
    pub new_build: Option<String>,
    /// How long it stopped serving, from the pause's start to the new image serving (the
    /// shim's measure, in ms at µs precision); none without an upgrade answer.
    pub pause_ms: Option<f64>,
    /// With `--rehearse`: the pause without the exec, as the shim measured it.
    pub rehearsal: Option<control::Rehearsal>,
    /// The shim's answer to `Upgrade`, when it answered one.
    pub upgrade: Option<control::Upgraded>,
    /// The `Upgrade` call's error (the shim's message, or why no answer came).
    pub error: Option<String>,
    /// Build-id of the shim's running image after the upgrade call, read from
    /// `/proc/PID/exe` of the same process.
    pub running_build: Option<String>,
    /// The result.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What to do beyond the checks.
#[derive(Debug, Clone, Default)]
pub struct Mode {
    /// Check only.
    pub dry_run: bool,
    /// Rehearse the pause on each shim that passed the checks (holds its requests for
    /// as long as it takes to settle, at most [`REHEARSAL_SETTLE`]).
    pub rehearse: bool,
    /// Where a pause is marked for the watchdog ([`crate::upgrading`]).
    pub upgrade_dir: PathBuf,
}

/// Longest a rehearsal may wait for a shim's calls in flight.
pub const REHEARSAL_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks that `shim` (whose Connect reply named `old_version`) can move onto `new`,
/// rehearses its pause if asked, and unless a dry run moves it ([`live::apply`]).
pub fn upgrade_shim(
    shim: &Shim,
    old_version: Option<String>,
    new: &Candidate,
    mode: Mode,
) -> Report {
    let mut report = Report {
        namespace: shim.namespace.clone(),
        id: shim.id.clone(),
        address: shim.address.clone(),
        pid: shim.process.as_ref().map(|p| p.pid),
        old_version,
        old_build: None,
        old_writes: None,
        new_version: new.info.version.clone(),
        new_build: new.binary.build_id.clone(),
        pause_ms: None,
        rehearsal: None,
        upgrade: None,
        error: None,
        running_build: None,
        outcome: Outcome::Ready,
    };
    let checked = check(new, &mut report).and_then(|o| match o {
        Outcome::Ready if mode.rehearse => {
            let process = shim.process.as_ref().ok_or(UpgradeError::NoProcess)?;
            // The watchdog must not take the pause for a hang: marked first, for the
            // longest the rehearsal may take, and closed when it is over.
            let _window = crate::upgrading::open(
                &mode.upgrade_dir,
                process.pid,
                process.start_time,
                REHEARSAL_SETTLE + std::time::Duration::from_secs(3),
            )
            .map_err(|e| UpgradeError::Rehearsal(format!("marking the upgrade window: {e}")))?;
            let target = new.binary.build_id.as_deref();
            let mut r = control::rehearse(&shim.address, REHEARSAL_SETTLE, target)
                .map_err(UpgradeError::Rehearsal)?;
            // The live state, as the shim would hand it over now, decoded by the new binary.
            match r.document.take() {
                Some(Ok(doc)) => {
                    let writes = report.old_writes.unwrap_or_default();
                    r.live_state = Some(decode_with(new, doc.as_bytes(), writes, "live state")?);
                }
                Some(Err(why)) => {
                    return Err(UpgradeError::Rehearsal(format!(
                        "the live state cannot be handed over: {why}"
                    )))
                }
                None => {}
            }
            report.rehearsal = Some(r);
            Ok(Outcome::Ready)
        }
        o => Ok(o),
    });
    report.outcome = match checked {
        Ok(Outcome::Ready) if !mode.dry_run => live::apply(shim, new, &mode, &mut report),
        Ok(o) => o,
        Err(e) => Outcome::Refused(e.to_string()),
    };
    report
}

fn check(new: &Candidate, report: &mut Report) -> Result<Outcome, UpgradeError> {
    let pid = report.pid.ok_or(UpgradeError::NoProcess)?;
    let old = Binary::running(pid)?;
    report.old_build = old.build_id.clone();
    if old.build_id.is_some() && old.build_id == new.binary.build_id {
        return Ok(Outcome::Current);
    }
    let out = old.run(&["-v"], true, None)?;
    let info = version::parse(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        UpgradeError::NoVersion {
            binary: old.path.clone(),
        }
    })?;
    let writes = info.writes.ok_or_else(|| UpgradeError::NoHandover {
        binary: old.path.clone(),
    })?;
    report.old_writes = Some(writes);
    if !new.info.reads.contains(&writes) {
        return Err(UpgradeError::FormatUnknown {
            writes,
            reads: new.info.reads.clone(),
        });
    }
    // What the running image writes, decoded by the new binary the way the handover hands
    // it over (a sealed memfd). The live state is decoded too with `--rehearse`.
    let sample = old.run(&["--handover-sample"], true, None)?;
    decode_with(new, &sample.stdout, writes, "--handover-sample")?;
    Ok(Outcome::Ready)
}

/// `bytes` (a handover document of format `writes`, from `what`) handed to the new binary's
/// `--check-handover` in a sealed memfd, as the real handover hands it; its summary.
fn decode_with(
    new: &Candidate,
    bytes: &[u8],
    writes: u32,
    what: &str,
) -> Result<serde_json::Value, UpgradeError> {
    let doc = memfd::sealed(bytes).map_err(|e| UpgradeError::Run {
        binary: new.binary.path.clone(),
        what: what.into(),
        reason: format!("sealed memfd: {e}"),
    })?;
    let fd = CHECK_FD.to_string();
    let summary = new.binary.run(
        &["--check-handover", &fd],
        true,
        Some((doc.as_raw_fd(), CHECK_FD)),
    )?;
    let decoded: serde_json::Value =
        serde_json::from_slice(&summary.stdout).map_err(|e| UpgradeError::Run {
            binary: new.binary.path.clone(),
            what: "--check-handover".into(),
            reason: format!("summary: {e}"),
        })?;
    if decoded["version"].as_u64() != Some(u64::from(writes)) {
        return Err(UpgradeError::Run {
            binary: new.binary.path.clone(),
            what: format!("--check-handover of {what}"),
            reason: format!("decoded format {} instead of {writes}", decoded["version"]),
        });
    }
    Ok(decoded)
}

/// Whether `shim` is one `--pod` names: its own id or one of its tasks'.
pub fn selected(shim: &Shim, pods: &[String]) -> bool {
    pods.is_empty()
        || pods
            .iter()
            .any(|p| *p == shim.id || shim.tasks.iter().any(|t| t.id == *p))
}

#[cfg(test)]
mod tests;
