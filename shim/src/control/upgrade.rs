//! `Upgrade`: the shim re-executes itself into a new binary in place (docs/upgrade.md).
//!
//! The request names the binary by path and by the build-id `sturdyctl` checked. The
//! shim opens the path itself without following a final symlink, checks the open file
//! (a regular root-owned executable nobody else may write) and reads the build-id from
//! that file, so what it executes (`fexecve` of the same fd) is what it checked. It then
//! pauses as `Rehearse` does, captures the core, writes the document and executes. The
//! request stays unanswered across the exec: the next image reads it again and answers
//! it with the outcome it was handed ([`Resumed`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{may_wait, Control, ControlError, MAX_DEADLINE, SETTLE_POLL};
use crate::handover::{self, memfd, v2};
use crate::listener::quiesce::Parked;
use crate::reexec::Handover;

/// What `Upgrade` takes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// The new binary.
    pub binary: PathBuf,
    /// Its build-id as the caller checked it, hex.
    pub build_id: String,
    /// Longest to wait for the shim to settle, at most [`MAX_DEADLINE`].
    pub deadline_ms: u64,
}

/// What `Upgrade` answers, from the new image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgraded {
    /// The daemon's pid (the same before and after).
    pub pid: i32,
    /// Version of the image that wrote the handover.
    pub old_version: String,
    /// Its build-id.
    pub old_build_id: Option<String>,
    /// Version of the image answering.
    pub new_version: String,
    /// Its build-id.
    pub new_build_id: Option<String>,
    /// From the pause's start to this image serving, µs.
    pub paused_us: u64,
    /// Lifecycles held during the pause.
    pub held: usize,
    /// Connections handed over.
    pub connections: usize,
    /// Unanswered `Wait`s handed over.
    pub waits: usize,
}

/// How the handover this image was started with ended: told to the `Upgrade` request
/// that asked for it, which this image reads again.
#[derive(Debug, Clone)]
pub enum Resumed {
    /// The new image resumed.
    Upgraded {
        /// The answer, but for `paused_us`, counted when it goes out.
        answer: Upgraded,
        /// When the pause began, µs since the Unix epoch.
        paused_since_us: u64,
    },
    /// The new image could not resume; this (old) image was gone back to.
    RolledBack {
        /// The build the upgrade went to.
        target: String,
        /// Why it could not resume.
        why: String,
    },
}

/// What the daemon knows of itself that the document must carry.
pub struct Identity {
    /// Its command line and environment.
    pub shim: v2::Shim,
    /// The listening socket.
    pub listener: i32,
}

fn own_build() -> Option<String> {
    build_id::of_self().ok().flatten().map(|b| b.to_string())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn refused(why: impl std::fmt::Display) -> ControlError {
    ControlError::Upgrade(format!("refused: {why}"))
}

/// Opens the new binary and checks the open file; see the module docs.
fn open_binary(req: &UpgradeRequest) -> Result<File, ControlError> {
    let path = &req.binary;
    if !path.is_absolute() {
        return Err(refused(format!(
            "{} is not an absolute path",
            path.display()
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| refused(format!("open {}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| refused(format!("stat {}: {e}", path.display())))?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 || meta.mode() & 0o100 == 0 {
        return Err(refused(format!(
            "{} is not a root-owned executable only root may write (uid {}, mode {:o})",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    let id = build_id::of_file(&file)
        .map_err(|e| refused(format!("{}: {e}", path.display())))?
        .map(|b| b.to_string());
    if id.as_deref() != Some(req.build_id.as_str()) {
        return Err(refused(format!(
            "{} is build {}, not the {} that was checked",
            path.display(),
            id.as_deref().unwrap_or("(none)"),
            req.build_id
        )));
    }
    Ok(file)
}

impl Control {
    /// `Upgrade`; see the module docs. Returns only when no exec happened (or this is the
    /// image the request was handed to).
    pub async fn upgrade(&self, req: UpgradeRequest) -> Result<Upgraded, ControlError> {
        let _one = self.busy.try_lock().map_err(|_| ControlError::Busy)?;
        let own = own_build();
        // The request read again by the image it asked for, or by the one gone back to.
        let resumed = self
            .resumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match resumed {
            Some(Resumed::Upgraded {
                mut answer,
                paused_since_us,
            }) if own.as_deref() == Some(req.build_id.as_str()) => {
                // The pause lasts until this answer: the server started, the request replayed.
                answer.paused_us = now_us().saturating_sub(paused_since_us);
                return Ok(answer);
            }
            Some(Resumed::RolledBack { target, why }) if target == req.build_id => {
                return Err(ControlError::Upgrade(format!(
                    "rolled back: the new binary could not resume ({why}); the shim runs \
                     on its old binary"
                )))
            }
            _ => {}
        }
        if own.as_deref() == Some(req.build_id.as_str()) {
            return Ok(Upgraded {
                pid: std::process::id() as i32,
                old_version: crate::VERSION.into(),
                old_build_id: own.clone(),
                new_version: crate::VERSION.into(),
                new_build_id: own,
                paused_us: 0,
                held: 0,
                connections: self.gate.connections(),
                waits: 0,
            });
        }
        let (Some(tasks), Some(identity)) = (&self.tasks, &self.identity) else {
            return Err(refused("this shim was not started to be upgraded"));
        };
        if let Some(why) = tasks.handover_refusal().await {
            return Err(refused(format!("cannot hand over: {why}")));
        }
        let binary = open_binary(&req)?;
        // What runs now, even if its path was replaced since: the way back.
        let old =
            File::open("/proc/self/exe").map_err(|e| refused(format!("open own image: {e}")))?;
        let deadline = Duration::from_millis(req.deadline_ms).min(MAX_DEADLINE);
        let started = Instant::now();
        let since_us = now_us();
        // Only the wait for the gate is cancelled at the deadline: a capture must never be
        // dropped half-way (it holds the copy loops' fds), so the loop checks it itself.
        if tokio::time::timeout(deadline, self.gate.close())
            .await
            .is_err()
        {
            self.gate.open();
            return Err(ControlError::Upgrade(format!(
                "not settled within {deadline:?}: a connection was not parked at a frame \
                 boundary; requests flow again"
            )));
        }
        let mut last = String::from("connections not parked at a frame boundary");
        let captured = loop {
            if started.elapsed() >= deadline {
                self.gate.open();
                return Err(ControlError::Upgrade(format!(
                    "not settled within {deadline:?}: {last}; requests flow again"
                )));
            }
            let Some(parked) = self.gate.settled(may_wait) else {
                tokio::time::sleep(SETTLE_POLL).await;
                continue;
            };
            let hold = match tasks.try_hold_lifecycles() {
                Ok(h) => h,
                Err(busy) => {
                    last = format!("lifecycle under way: {busy:?}");
                    tokio::time::sleep(SETTLE_POLL).await;
                    continue;
                }
            };
            match tasks.capture(&hold).await {
                Ok(c) => break (parked, hold, c),
                Err(e) => {
                    last = e.to_string();
                    drop(hold);
                    tokio::time::sleep(SETTLE_POLL * 10).await;
                }
            }
        };
        let (parked, hold, captured) = captured;
        let waits = parked
            .iter()
            .flat_map(|p| p.pending.iter().flatten())
            .filter(|f| crate::listener::inflight::replay_safe(f))
            .count();
        let doc = match document(
            identity,
            &old,
            &req,
            since_us,
            hold.held.len(),
            waits,
            &parked,
            &captured,
        ) {
            Ok(d) => d,
            Err(why) => {
                captured.undo(tasks).await;
                drop(hold);
                self.gate.open();
                return Err(refused(why));
            }
        };
        let written = handover::encode(&doc).and_then(|b| memfd::write_sealed(&b));
        let memfd = match written {
            Ok(fd) => fd,
            Err(e) => {
                captured.undo(tasks).await;
                drop(hold);
                self.gate.open();
                return Err(refused(e));
            }
        };
        let mut fds = captured.fds();
        fds.push(identity.listener);
        fds.extend(parked.iter().map(|p| p.fd));
        log::info!(
            "upgrade: executing {} (build {}) with {} container(s), {} connection(s), \
             paused {} us so far",
            req.binary.display(),
            req.build_id,
            doc.containers.len(),
            parked.len(),
            started.elapsed().as_micros()
        );
        let err = Handover {
            document: memfd.as_raw_fd(),
            old_binary: old.as_raw_fd(),
            fds: &fds,
            rollback: None,
        }
        .exec(&binary);
        log::error!("upgrade: exec of {} failed: {err}", req.binary.display());
        captured.undo(tasks).await;
        drop(hold);
        self.gate.open();
        Err(refused(format!("exec {}: {err}", req.binary.display())))
    }
}

/// Largest document a rehearsal answers (a pod's is a few KiB; pending bytes are in fds).
const MAX_DUMP: usize = 1 << 20;

impl Control {
    /// During a rehearsal's pause (`hold` taken, `parked` at the gate): the document an
    /// upgrade to `target` would write, with the core captured and put back at once.
    pub(super) async fn dump(
        &self,
        hold: &crate::tasks::LifecycleHold,
        parked: &[Parked],
        target: &str,
    ) -> Result<String, String> {
        let (Some(tasks), Some(identity)) = (&self.tasks, &self.identity) else {
            return Err("this shim was not started to be upgraded".into());
        };
        let old = File::open("/proc/self/exe").map_err(|e| format!("open own image: {e}"))?;
        let req = UpgradeRequest {
            binary: PathBuf::from("/proc/self/exe"),
            build_id: target.to_string(),
            deadline_ms: 0,
        };
        let captured = tasks
            .capture(hold)
            .await
            .map_err(|e| format!("refused: {e}"))?;
        let waits = parked
            .iter()
            .flat_map(|p| p.pending.iter().flatten())
            .filter(|f| crate::listener::inflight::replay_safe(f))
            .count();
        let doc = document(
            identity,
            &old,
            &req,
            now_us(),
            hold.held.len(),
            waits,
            parked,
            &captured,
        );
        captured.undo(tasks).await;
        let bytes = handover::encode(&doc?).map_err(|e| e.to_string())?;
        if bytes.len() > MAX_DUMP {
            return Err(format!(
                "the document is {} bytes, more than a rehearsal answers ({MAX_DUMP})",
                bytes.len()
            ));
        }
        String::from_utf8(bytes).map_err(|e| e.to_string())
    }
}

/// The handover document of this daemon, stopped.
#[allow(clippy::too_many_arguments)]
fn document(
    identity: &Identity,
    old: &File,
    req: &UpgradeRequest,
    since_us: u64,
    held: usize,
    waits: usize,
    parked: &[Parked],
    captured: &crate::tasks::handover::Captured,
) -> Result<v2::Document, String> {
    let mut connections = Vec::new();
    for p in parked {
        let pending = p
            .pending
            .as_ref()
            .map_err(|e| format!("connection fd {}: {e}", p.fd))?;
        connections.push(v2::Connection {
            fd: p.fd,
            peer_pid: p.peer_pid,
            pending: pending.iter().map(|f| v2::to_hex(f)).collect(),
        });
    }
    Ok(v2::Document {
        version: handover::WRITES,
        writer: v2::Writer {
            version: crate::VERSION.into(),
            build_id: own_build(),
            paused_at_ms: since_us / 1000,
        },
        shim: identity.shim.clone(),
        upgrade: v2::Upgrade {
            target_build_id: req.build_id.clone(),
            paused_since_us: since_us,
            held,
            waits,
        },
        listener: identity.listener,
        old_binary: old.as_raw_fd(),
        connections,
        containers: captured.containers.clone(),
        unclaimed_exits: captured.unclaimed_exits.clone(),
    })
}

/// The outcome the next image answers the replayed request with.
pub fn resumed(doc: &v2::Document) -> Resumed {
    let answer = Upgraded {
        pid: std::process::id() as i32,
        old_version: doc.writer.version.clone(),
        old_build_id: doc.writer.build_id.clone(),
        new_version: crate::VERSION.into(),
        new_build_id: own_build(),
        paused_us: 0,
        held: doc.upgrade.held,
        connections: doc.connections.len(),
        waits: doc.upgrade.waits,
    };
    Resumed::Upgraded {
        answer,
        paused_since_us: doc.upgrade.paused_since_us,
    }
}
