//! The daemon started by a handover: the same process, re-executed into this binary by a
//! live upgrade (or back into the old one when the new one could not resume). It reads
//! the document, rebuilds the core, and serves the connections it inherited
//! (docs/upgrade.md).
//!
//! Whatever fails before the core owns an fd sends the process back to the old binary
//! with the same document and fds, so the pod keeps running on the old code; the way back
//! is taken once only (a binary gone back to that cannot resume either gives up).

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use containerd_shim::Flags;
use runc_client::{ReapHold, Reaper};

use crate::control::upgrade::{resumed, Resumed};
use crate::handover::{self, memfd, v2};
use crate::listener::Handed;
use crate::reexec::{set_cloexec, Handover};
use crate::tasks::Tasks;

/// Test-only (debug builds): a file in the daemon's working directory holding a build-id;
/// an image of that build refuses to resume, so tests can see the way back taken.
#[cfg(debug_assertions)]
const FAIL_RESUME_FILE: &str = ".sturdy-test-fail-resume";

/// Test-only (debug builds): a file in the daemon's working directory holding a number of
/// milliseconds (at most 10 000) a new image waits before it resumes, so tests can make
/// the pause of a real upgrade outlast a watchdog's hang detection.
#[cfg(debug_assertions)]
const SLOW_RESUME_FILE: &str = ".sturdy-test-slow-resume";

/// A handover on its way into the core.
pub struct Resuming {
    document: RawFd,
    old_binary: RawFd,
    rollback: Option<String>,
    doc: v2::Document,
    reaper: ReapHold,
}

/// Serves as the image a handover started.
pub(super) fn serve_resumed(
    flags: &Flags,
    document: RawFd,
    old_binary: RawFd,
    rollback: Option<String>,
) -> Result<(), String> {
    match &rollback {
        Some(why) => {
            log::warn!("handover: back on this binary: the new one could not resume: {why}")
        }
        None => log::info!("handover: resuming from fd {document}"),
    }
    // Held until every process is known, so exits that waited as zombies find them.
    let (reaper, hold) = match Reaper::start_held() {
        Ok(r) => r,
        Err(e) => {
            return go_back(
                document,
                old_binary,
                &[],
                rollback.as_deref(),
                &format!("start the reaper: {e}"),
            )
        }
    };
    let doc = match read(document).and_then(|doc| check(flags, doc)) {
        Ok(doc) => doc,
        Err(why) => return go_back(document, old_binary, &[], rollback.as_deref(), &why),
    };
    #[cfg(debug_assertions)]
    if rollback.is_none() {
        test_slow_resume();
    }
    let fds: Vec<RawFd> = doc.fds().into_iter().map(|(_, fd)| fd).collect();
    for fd in fds.iter().chain([&document, &old_binary]) {
        // Nothing this image starts (runc, above all) may inherit them.
        if let Err(e) = set_cloexec(*fd, true) {
            let why = format!("fd {fd}: {e}");
            return go_back(document, old_binary, &fds, rollback.as_deref(), &why);
        }
    }
    // SAFETY: the document names the listener once; the way back does not need it owned.
    let listener = unsafe { UnixListener::from_raw_fd(doc.listener) };
    let listener = ManuallyDrop::new(listener);
    let resuming = Resuming {
        document,
        old_binary,
        rollback,
        doc,
        reaper: hold,
    };
    super::serve::run(
        flags,
        reaper,
        ManuallyDrop::into_inner(listener),
        Some(resuming),
    )
}

fn read(fd: RawFd) -> Result<v2::Document, String> {
    // SAFETY: an inherited fd named by the environment; kept open for the way back.
    let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let bytes = memfd::read_sealed(&file).map_err(|e| e.to_string())?;
    handover::decode(&bytes).map_err(|e| e.to_string())
}

/// Whether `fd` is a listening Unix socket.
fn listening(fd: RawFd) -> Result<(), String> {
    crate::listener::check_sockopts(
        fd,
        &[
            (libc::SO_DOMAIN, libc::AF_UNIX, "not a Unix socket"),
            (libc::SO_ACCEPTCONN, 1, "not listening"),
        ],
    )
    .map_err(|e| format!("listener {e}"))
}

fn check(flags: &Flags, doc: v2::Document) -> Result<v2::Document, String> {
    // Everything the daemon needs before the core takes an fd, checked while the way back
    // is still open.
    if std::env::var_os(super::TTRPC_ADDRESS_ENV).is_none() {
        return Err("TTRPC_ADDRESS is not set".into());
    }
    listening(doc.listener)?;
    if doc.shim.namespace != flags.namespace
        || doc.shim.id != flags.id
        || doc.shim.socket != flags.socket
    {
        return Err(format!(
            "the document is of shim {}/{} on {}, not this one",
            doc.shim.namespace, doc.shim.id, doc.shim.socket
        ));
    }
    #[cfg(debug_assertions)]
    if let (Ok(want), Some(own)) = (
        std::fs::read_to_string(FAIL_RESUME_FILE),
        build_id::of_self().ok().flatten(),
    ) {
        if want.trim() == own.to_string() {
            return Err(format!("test hook {FAIL_RESUME_FILE} names this build"));
        }
    }
    Ok(doc)
}

#[cfg(debug_assertions)]
fn test_slow_resume() {
    let Ok(ms) = std::fs::read_to_string(SLOW_RESUME_FILE) else {
        return;
    };
    match ms.trim().parse::<u64>() {
        Ok(ms) => {
            let ms = ms.min(10_000);
            log::warn!("handover: test hook {SLOW_RESUME_FILE}: resuming in {ms} ms");
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        Err(e) => log::warn!("handover: test hook {SLOW_RESUME_FILE}: {e}"),
    }
}

/// Re-executes the old binary with the same document, unless this already is the way back.
fn go_back(
    document: RawFd,
    old_binary: RawFd,
    fds: &[RawFd],
    rollback: Option<&str>,
    why: &str,
) -> Result<(), String> {
    if let Some(first) = rollback {
        return Err(format!(
            "handover: cannot resume ({why}) on the binary gone back to after {first}; giving up"
        ));
    }
    log::error!("handover: cannot resume: {why}; going back to the old binary");
    // SAFETY: the inherited fd of the old binary; only executed.
    let old = ManuallyDrop::new(unsafe { File::from_raw_fd(old_binary) });
    let err = Handover {
        document,
        old_binary,
        fds,
        rollback: Some(why),
    }
    .exec(&old);
    Err(format!(
        "handover: cannot resume ({why}) and cannot go back: {err}"
    ))
}

impl Resuming {
    /// Rebuilds the core in `tasks`; the connections to serve and the outcome the
    /// replayed `Upgrade` is answered with. Goes back to the old binary if the core
    /// cannot be rebuilt.
    pub async fn restore(
        self,
        tasks: &std::sync::Arc<Tasks>,
    ) -> Result<(Vec<Handed>, Option<Resumed>), String> {
        if let Err(e) = tasks.restore(&self.doc).await {
            let fds: Vec<RawFd> = self.doc.fds().into_iter().map(|(_, fd)| fd).collect();
            return go_back(
                self.document,
                self.old_binary,
                &fds,
                self.rollback.as_deref(),
                &e.to_string(),
            )
            .map(|()| (Vec::new(), None));
        }
        drop(self.reaper);
        let connections = self
            .doc
            .connections
            .iter()
            .map(|c| Handed {
                // SAFETY: named once by the validated document; this image owns it now.
                fd: unsafe { OwnedFd::from_raw_fd(c.fd) },
                replay: c
                    .pending
                    .iter()
                    .filter_map(|f| v2::from_hex(f))
                    .flatten()
                    .collect(),
            })
            .collect();
        // SAFETY: the document and the old binary are ours to close now.
        drop(unsafe { OwnedFd::from_raw_fd(self.document) });
        drop(unsafe { OwnedFd::from_raw_fd(self.old_binary) });
        let outcome = match self.rollback {
            Some(why) => Resumed::RolledBack {
                target: self.doc.upgrade.target_build_id.clone(),
                why,
            },
            None => resumed(&self.doc),
        };
        log::info!(
            "handover: resumed {} container(s) and {} connection(s)",
            self.doc.containers.len(),
            self.doc.connections.len()
        );
        Ok((connections, Some(outcome)))
    }
}
