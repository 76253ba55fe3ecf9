//! A live upgrade's part in the core (docs/upgrade.md): the containers written into a
//! handover document ([`Tasks::capture`]) and rebuilt from one ([`Tasks::restore`]).
//!
//! Capture runs with the listener parked and every lifecycle lock held, so no transition
//! and no exit publication is under way. It then stops the reaper (exits that come wait
//! as zombies, which the next image reaps), dispatches the exits already delivered (they
//! become "decided, not published"), stops the OOM watches and the copy loops at a write
//! boundary, and refuses while an event is still on its way to containerd. Until the exec,
//! [`Captured::undo`] puts everything back in this image.
//!
//! Restore does everything that can fail before it owns an fd or starts a copy loop, so a
//! new image that cannot resume hands the very same fds to the old binary untouched.

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::types::mount::Mount;
use runc_client::ReapHold;

use super::{LifecycleHold, Tasks};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::handover::memfd;
use crate::handover::v2::{self, from_hex, to_hex};
use crate::io::{Copiers, HandedIo, HandedStdin, HandedStream, StdioPaths};
use crate::process::{Exited, Process, State};

/// Most pending bytes of one stream read back: a stream's memory bound and spill limit,
/// and one read of its pipe.
const PENDING_MAX: u64 =
    crate::io::OUTPUT_MEMORY_BOUND as u64 + crate::io::OUTPUT_SPILL_LIMIT + (64 << 10);

/// The core's state, stopped for an exec: the document's containers and exits, and what
/// keeps the fds they name open until then.
pub struct Captured {
    /// The containers, as the document names them.
    pub containers: Vec<v2::Container>,
    /// Exits nobody claimed yet.
    pub unclaimed_exits: Vec<v2::Exit>,
    handed: Vec<(Arc<Process>, std::path::PathBuf, HandedIo)>,
    memfds: Vec<OwnedFd>,
    watched: Vec<Arc<Container>>,
    _reaper: ReapHold,
}

fn refused(why: impl Into<String>) -> Error {
    Error::NotHandable(why.into())
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn state_of(name: &str, s: State) -> Result<v2::State> {
    Ok(match s {
        State::Created => v2::State::Created,
        State::Running => v2::State::Running,
        State::Paused => v2::State::Paused,
        State::Stopped => v2::State::Stopped,
        State::Deleted => v2::State::Deleted,
        other => {
            return Err(Error::Internal(format!(
                "{name} is {other} under the lifecycle hold"
            )))
        }
    })
}

fn state_from(s: v2::State) -> State {
    match s {
        v2::State::Created => State::Created,
        v2::State::Running => State::Running,
        v2::State::Paused => State::Paused,
        v2::State::Stopped => State::Stopped,
        v2::State::Deleted => State::Deleted,
    }
}

impl Tasks {
    fn containers_sorted(&self) -> Vec<Arc<Container>> {
        let mut all: Vec<Arc<Container>> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// What keeps this shim from being handed over at all while it lasts: a container
    /// waiting to be restored from a checkpoint, a terminal, output to a logging binary or
    /// a file. Touches nothing, so an upgrade refuses at once, before any pause.
    pub async fn handover_refusal(&self) -> Option<String> {
        for c in self.containers_sorted() {
            if c.restores() && c.init.state() == State::Created {
                return Some(format!(
                    "container {} waits to be restored from a checkpoint",
                    c.id
                ));
            }
            for p in processes_of(&c) {
                if p.stdio.terminal && p.state() != State::Deleted {
                    return Some(format!("{}: a terminal is not handed over", p.name()));
                }
                if let Some(why) = p.copiers.lock().await.handover_refusal() {
                    return Some(format!("{}: {why}", p.name()));
                }
            }
        }
        None
    }

    /// What keeps this shim from being handed over right now, if anything: events
    /// containerd has not taken yet (a moment, or for as long as containerd is away).
    pub fn handover_blocker(&self) -> Option<String> {
        let pending = self.shared.events.pending();
        (pending > 0).then(|| format!("{pending} event(s) not yet taken by containerd"))
    }

    /// Stops the core for an exec; see the module docs. `_hold` proves every lifecycle
    /// lock is held.
    pub async fn capture(self: &Arc<Self>, _hold: &LifecycleHold) -> Result<Captured> {
        if let Some(why) = self.handover_refusal().await {
            return Err(refused(why));
        }
        if let Some(why) = self.handover_blocker() {
            return Err(refused(why));
        }
        // Blocks only while one exit is being delivered (microseconds).
        let reaper = self.shared.reaper.hold_settled();
        self.flush_exits().await?;
        let containers = self.containers_sorted();
        let mut cap = Captured {
            containers: Vec::new(),
            unclaimed_exits: Vec::new(),
            handed: Vec::new(),
            memfds: Vec::new(),
            watched: Vec::new(),
            _reaper: reaper,
        };
        for c in &containers {
            c.stop_oom_watch();
            cap.watched.push(c.clone());
        }
        for c in &containers {
            for p in processes_of(c) {
                let handed = p.copiers.lock().await.hand_over().await;
                match handed {
                    Ok(h) => cap.handed.push((p, c.bundle.clone(), h)),
                    Err(e) => {
                        let why = format!("{}: {e}", p.name());
                        cap.undo(self).await;
                        return Err(refused(why));
                    }
                }
            }
        }
        // An OOM flushed with an exit above may have queued an event.
        if let Some(why) = self.handover_blocker() {
            cap.undo(self).await;
            return Err(refused(why));
        }
        if let Err(e) = cap.describe(self, &containers) {
            cap.undo(self).await;
            return Err(e);
        }
        Ok(cap)
    }
}

fn processes_of(c: &Container) -> Vec<Arc<Process>> {
    let mut execs: Vec<(String, Arc<Process>)> = c
        .execs()
        .iter()
        .map(|(id, e)| (id.clone(), e.process.clone()))
        .collect();
    execs.sort_by(|a, b| a.0.cmp(&b.0));
    std::iter::once(c.init.clone())
        .chain(execs.into_iter().map(|(_, p)| p))
        .collect()
}

impl Captured {
    /// Every fd the document's containers name, for the exec to keep open.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.handed.iter().flat_map(|(_, _, h)| h.fds()).collect();
        fds.extend(self.memfds.iter().map(|m| m.as_raw_fd()));
        fds
    }

    fn sealed(&mut self, bytes: &[u8]) -> Result<Option<i32>> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let fd = memfd::write_sealed(bytes)
            .map_err(|e| Error::Internal(format!("handover of pending output: {e}")))?;
        let raw = fd.as_raw_fd();
        self.memfds.push(fd);
        Ok(Some(raw))
    }

    fn stdio(&mut self, p: &Arc<Process>) -> Result<v2::Stdio> {
        let pos = self
            .handed
            .iter()
            .position(|(q, _, _)| Arc::ptr_eq(q, p))
            .ok_or_else(|| Error::Internal(format!("{}: stdio not handed over", p.name())))?;
        let stdin_bytes = self.handed[pos].2.stdin.as_ref().map(|s| s.pending.clone());
        let out_bytes: Vec<Option<Vec<u8>>> = {
            let h = &self.handed[pos].2;
            [&h.stdout, &h.stderr]
                .iter()
                .map(|s| s.as_ref().map(|s| s.pending.clone()))
                .collect()
        };
        let stdin_pending = match &stdin_bytes {
            Some(b) => self.sealed(b)?,
            None => None,
        };
        let mut pending = Vec::new();
        for b in &out_bytes {
            pending.push(match b {
                Some(b) => self.sealed(b)?,
                None => None,
            });
        }
        let h = &self.handed[pos].2;
        let stream = |s: &Option<HandedStream>, fd: Option<i32>| {
            s.as_ref().map(|s| v2::Stream {
                source: s.source.as_ref().map(|f| f.as_raw_fd()),
                sink: s.sink.as_raw_fd(),
                pending: fd,
                pending_len: s.pending.len() as u64,
            })
        };
        Ok(v2::Stdio {
            stdin_path: p.stdio.stdin.clone(),
            stdout_path: p.stdio.stdout.clone(),
            stderr_path: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            stdin: h.stdin.as_ref().map(|s| v2::Stdin {
                fifo: s.fifo.as_raw_fd(),
                pipe: s.to.as_raw_fd(),
                pending: stdin_pending,
                pending_len: s.pending.len() as u64,
                closing: s.closing,
            }),
            stdout: stream(&h.stdout, pending[0]),
            stderr: stream(&h.stderr, pending[1]),
        })
    }

    fn process(&mut self, p: &Arc<Process>, spec: Option<String>) -> Result<v2::Process> {
        let (state, pid, exited, reported) = p.settled();
        Ok(v2::Process {
            exec_id: p.exec_id.clone(),
            pid,
            state: state_of(&p.name(), state)?,
            exit: exited.map(|e| v2::ExitStatus {
                status: e.status,
                at_ms: ms(e.at),
            }),
            exit_published: exited.is_some() && reported,
            exec_spec: spec,
            stdio: self.stdio(p)?,
        })
    }

    fn describe(&mut self, tasks: &Tasks, containers: &[Arc<Container>]) -> Result<()> {
        for c in containers {
            let (options, rootfs) = c.create_parts();
            let init = self.process(&c.init, None)?;
            let mut execs = Vec::new();
            let mut entries: Vec<_> = c
                .execs()
                .iter()
                .map(|(id, e)| (id.clone(), e.clone()))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, e) in entries {
                execs.push(self.process(&e.process, Some(e.spec_json()?))?);
            }
            self.containers.push(v2::Container {
                id: c.id.clone(),
                bundle: c.bundle.clone(),
                options: options.map(|o| v2::Options {
                    type_url: o.type_url.clone(),
                    value_hex: to_hex(&o.value),
                }),
                rootfs: rootfs
                    .iter()
                    .map(|m| v2::Mount {
                        kind: m.type_.clone(),
                        source: m.source.clone(),
                        target: m.target.clone(),
                        options: m.options.to_vec(),
                    })
                    .collect(),
                init,
                execs,
            });
        }
        self.unclaimed_exits = tasks
            .shared
            .router
            .unclaimed()
            .into_iter()
            .map(|e| v2::Exit {
                pid: e.pid,
                status: v2::ExitStatus {
                    status: e.status as u32,
                    at_ms: ms(e.at),
                },
            })
            .collect();
        Ok(())
    }

    /// Test-only: what an exec does to this image's hold on the fds (they stay open, for
    /// the next core to take) and gives back the reaper's hold to drop once that core runs.
    #[cfg(test)]
    pub fn forget_fds(self) -> ReapHold {
        for (_, _, h) in self.handed {
            std::mem::forget(h);
        }
        std::mem::forget(self.memfds);
        self._reaper
    }

    /// Puts the core back as it was before [`Tasks::capture`] (the exec did not happen):
    /// copy loops and OOM watches run again, the reaper collects again.
    pub async fn undo(self, tasks: &Arc<Tasks>) {
        for (p, bundle, h) in self.handed {
            match Copiers::resume(&p.container, h, &bundle) {
                Ok(copiers) => *p.copiers.lock().await = copiers,
                Err(e) => log::error!("{}: stdio copy not resumed: {e}", p.name()),
            }
        }
        for c in &self.watched {
            if c.init.state() != State::Deleted {
                c.watch_oom(&tasks.shared);
            }
        }
    }
}

/// An fd named by the document, checked open, not yet owned.
fn borrowed(fd: i32) -> Result<RawFd> {
    // SAFETY: F_GETFD only reads the fd's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Error::Internal(format!(
            "handover: fd {fd} is not open: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(fd)
}

/// The bytes of a pending memfd, read without taking the fd.
fn pending_bytes(fd: Option<i32>, len: u64) -> Result<Vec<u8>> {
    let Some(fd) = fd else { return Ok(Vec::new()) };
    if len > PENDING_MAX {
        return Err(Error::Internal(format!(
            "handover: {len} pending bytes, at most {PENDING_MAX}"
        )));
    }
    // SAFETY: checked open above; ManuallyDrop keeps it open for a rollback.
    let file = ManuallyDrop::new(unsafe { File::from_raw_fd(borrowed(fd)?) });
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::Internal(format!("handover: read pending bytes of fd {fd}: {e}")))?;
    Ok(buf)
}

/// An output stream's source (none at its end), sink and pending bytes, not owned yet.
type PlannedStream = (Option<RawFd>, RawFd, Vec<u8>);

/// Stdio of a process, every fd checked and every pending byte read, nothing owned yet.
struct Planned {
    stdin: Option<(RawFd, RawFd, Vec<u8>, bool)>,
    streams: [Option<PlannedStream>; 2],
    /// The memfds the pending bytes came in, read already: closed once owned.
    memfds: Vec<RawFd>,
}

fn plan(s: &v2::Stdio) -> Result<Planned> {
    let stdin = match &s.stdin {
        Some(i) => Some((
            borrowed(i.fifo)?,
            borrowed(i.pipe)?,
            pending_bytes(i.pending, i.pending_len)?,
            i.closing,
        )),
        None => None,
    };
    let stream = |st: &Option<v2::Stream>| -> Result<_> {
        let Some(st) = st else { return Ok(None) };
        let source = st.source.map(borrowed).transpose()?;
        Ok(Some((
            source,
            borrowed(st.sink)?,
            pending_bytes(st.pending, st.pending_len)?,
        )))
    };
    let memfds = [
        s.stdin.as_ref().and_then(|i| i.pending),
        s.stdout.as_ref().and_then(|o| o.pending),
        s.stderr.as_ref().and_then(|e| e.pending),
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(Planned {
        stdin,
        streams: [stream(&s.stdout)?, stream(&s.stderr)?],
        memfds,
    })
}

impl Planned {
    /// Takes the fds (each named once: the document was validated).
    fn own(self) -> HandedIo {
        // SAFETY: every fd was checked open and the document names each once; from here
        // this image owns them.
        let own = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
        for fd in self.memfds {
            drop(own(fd));
        }
        let [out, err] = self.streams;
        let stream = |s: Option<PlannedStream>| {
            s.map(|(source, sink, pending)| HandedStream {
                eof: source.is_none(),
                source: source.map(own),
                sink: own(sink),
                pending,
            })
        };
        HandedIo {
            stdin: self
                .stdin
                .map(|(fifo, pipe, pending, closing)| HandedStdin {
                    fifo: own(fifo),
                    to: own(pipe),
                    pending,
                    closing,
                }),
            stdout: stream(out),
            stderr: stream(err),
        }
    }
}

fn stdio_paths(s: &v2::Stdio) -> StdioPaths {
    StdioPaths {
        stdin: s.stdin_path.clone(),
        stdout: s.stdout_path.clone(),
        stderr: s.stderr_path.clone(),
        terminal: s.terminal,
    }
}

fn create_request(dc: &v2::Container) -> Result<CreateTaskRequest> {
    let mut req = CreateTaskRequest::new();
    req.id = dc.id.clone();
    req.bundle = dc.bundle.display().to_string();
    let s = &dc.init.stdio;
    req.stdin = s.stdin_path.clone();
    req.stdout = s.stdout_path.clone();
    req.stderr = s.stderr_path.clone();
    req.terminal = s.terminal;
    req.rootfs = dc
        .rootfs
        .iter()
        .map(|m| {
            let mut mount = Mount::new();
            mount.type_ = m.kind.clone();
            mount.source = m.source.clone();
            mount.target = m.target.clone();
            mount.options = m.options.clone();
            mount
        })
        .collect();
    if let Some(o) = &dc.options {
        let mut any = Any::new();
        any.type_url = o.type_url.clone();
        any.value = from_hex(&o.value_hex)
            .ok_or_else(|| Error::InvalidArgument(format!("{}: options not hex", dc.id)))?;
        req.options = Some(any).into();
    }
    Ok(req)
}

fn restore_process(p: &Process, dp: &v2::Process) {
    let exited = dp.exit.map(|e| Exited {
        status: e.status,
        at: UNIX_EPOCH + Duration::from_millis(e.at_ms),
    });
    p.restore(state_from(dp.state), dp.pid, exited, dp.exit_published);
}

/// A rebuilt process with its stdio plan.
struct Rebuilt {
    container: Arc<Container>,
    process: Arc<Process>,
    stdio: Planned,
}

impl Tasks {
    /// Rebuilds the containers of a handover document in this (new) image. Everything that
    /// can fail happens before any fd is taken or any copy loop starts; `Err` leaves the
    /// document's fds as they were, for the old binary. The reaper must be held by the
    /// caller until this returns, so exits that waited as zombies reach registered pids.
    pub async fn restore(self: &Arc<Self>, doc: &v2::Document) -> Result<()> {
        let mut built = Vec::new();
        let mut rebuilt = Vec::new();
        for dc in &doc.containers {
            let req = create_request(dc)?;
            let c = Arc::new(Container::new(
                &req,
                &self.shared.namespace,
                self.shared.reaper.clone(),
            )?);
            restore_process(&c.init, &dc.init);
            rebuilt.push(Rebuilt {
                container: c.clone(),
                process: c.init.clone(),
                stdio: plan(&dc.init.stdio)?,
            });
            for de in &dc.execs {
                let spec: oci_spec::runtime::Process =
                    serde_json::from_str(de.exec_spec.as_deref().unwrap_or("")).map_err(|e| {
                        Error::InvalidArgument(format!("{}/{}: spec: {e}", dc.id, de.exec_id))
                    })?;
                let p = c.restore_exec(&de.exec_id, spec, stdio_paths(&de.stdio))?;
                restore_process(&p, de);
                rebuilt.push(Rebuilt {
                    container: c.clone(),
                    process: p,
                    stdio: plan(&de.stdio)?,
                });
            }
            built.push((c, dc));
        }
        // No way back from here: the copy loops take the pipes.
        {
            let mut map = self.lock();
            for (c, _) in &built {
                map.insert(c.id.clone(), c.clone());
            }
        }
        let mut decided = Vec::new();
        for r in rebuilt {
            let p = r.process;
            match Copiers::resume(&p.container, r.stdio.own(), &r.container.bundle) {
                Ok(copiers) => *p.copiers.lock().await = copiers,
                Err(e) => log::error!("{}: stdio copy not resumed: {e}", p.name()),
            }
            let (state, pid, exited, reported) = p.settled();
            let live = matches!(state, State::Created | State::Running | State::Paused);
            if live && pid > 0 {
                if let Some(exit) = self.shared.router.register(pid, &p, UNIX_EPOCH) {
                    if let Err(e) = p.reaped(exit.status as u32, exit.at) {
                        log::warn!("exit of pid {pid}: {e}");
                    }
                    decided.push(p.clone());
                }
            } else if exited.is_some() && !reported {
                decided.push(p.clone());
            }
        }
        // After the registrations: an unclaimed exit of a pid a live process holds is an
        // older process's (the old image would have matched a real one at registration),
        // and registering with no start time must not take it.
        self.shared
            .router
            .restore_unclaimed(doc.unclaimed_exits.iter().map(|e| runc_client::Exit {
                pid: e.pid,
                status: e.status.status as i32,
                at: UNIX_EPOCH + Duration::from_millis(e.status.at_ms),
            }));
        for (c, dc) in &built {
            let started = !matches!(dc.init.state, v2::State::Created);
            c.restore_oom_gate(started, dc.init.exit_published);
            if dc.init.state != v2::State::Deleted {
                c.watch_oom(&self.shared);
            }
            if matches!(dc.init.state, v2::State::Running | v2::State::Paused) {
                c.record_network("shim upgrade");
            }
        }
        for p in decided {
            self.handle_exit(p);
        }
        Ok(())
    }
}
