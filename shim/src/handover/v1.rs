//! Handover format 1. Frozen once released: a change an older reader would not decode is
//! format 2, with a conversion from this one (docs/upgrade.md, "Versioning").

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_fds, check_path, invalid, HandoverError};

/// Bounds a decoded document must keep; each matches a bound the shim keeps anyway, so a
/// document beyond them was not written by a sturdy shim.
pub struct Limits;

impl Limits {
    /// Accepted connections (the listener's cap plus the one held at it).
    pub const CONNECTIONS: usize = crate::listener::MAX_CONNECTIONS + 1;
    /// Containers in one shim (a pod's sandbox and containers).
    pub const CONTAINERS: usize = 1024;
    /// Execs of one container.
    pub const EXECS: usize = 4096;
    /// Unclaimed exits ([`crate::exits::UNCLAIMED_EXITS_MAX`]).
    pub const UNCLAIMED_EXITS: usize = crate::exits::UNCLAIMED_EXITS_MAX;
    /// Queued events ([`crate::events::OUTBOX`]).
    pub const OUTBOX: usize = crate::events::OUTBOX;
    /// One event's encoded payload.
    pub const EVENT_PAYLOAD: usize = 64 << 10;
    /// Timers.
    pub const TIMERS: usize = 4096;
    /// Unanswered requests of one connection.
    pub const PENDING: usize = 1024;
    /// One unanswered request frame, header included.
    pub const PENDING_FRAME: usize = crate::listener::inflight::KEPT_FRAME + 10;
}

/// A shim daemon's state at the moment it stopped reading requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Always 1 in this format.
    pub version: u32,
    /// The image that wrote it.
    pub writer: Writer,
    /// The daemon's identity: its command line, as containerd started it.
    pub shim: Shim,
    /// The listening Task API socket.
    pub listener: i32,
    /// The old binary, opened when the upgrade began: where a new image that cannot resume
    /// goes back to.
    pub old_binary: Option<i32>,
    /// Accepted ttrpc connections, each stopped at a frame boundary.
    pub connections: Vec<Connection>,
    /// The pod's containers.
    pub containers: Vec<Container>,
    /// Exits the reaper collected that no process claimed yet.
    pub unclaimed_exits: Vec<Exit>,
    /// Events queued and not yet published, oldest first.
    pub outbox: Vec<Event>,
    /// Timers running at the pause, with what was left of them.
    pub timers: Vec<Timer>,
}

/// Who wrote a document, and when it stopped serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Writer {
    /// `-v`'s version.
    pub version: String,
    /// GNU build-id of the writing image, hex.
    pub build_id: Option<String>,
    /// When it stopped reading requests, ms since the Unix epoch.
    pub paused_at_ms: u64,
}

/// The daemon's command line and environment, as `start` gave them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shim {
    /// containerd namespace (`-namespace`).
    pub namespace: String,
    /// The id the shim was started for (`-id`).
    pub id: String,
    /// Its socket address (`-socket`).
    pub socket: String,
    /// containerd's gRPC address (`-address`).
    pub containerd_address: String,
    /// containerd's TTRPC address (`TTRPC_ADDRESS`), "" if none.
    pub ttrpc_address: String,
    /// The binary events are published with (`-publish-binary`).
    pub publish_binary: String,
    /// `-debug`.
    pub debug: bool,
}

/// An accepted ttrpc connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// The socket.
    pub fd: i32,
    /// The peer's pid (`SO_PEERCRED`) when it was accepted.
    pub peer_pid: Option<i32>,
    /// Its unanswered requests (a blocking `Wait`), whole ttrpc frames in hex, in arrival
    /// order: the next image reads them again before the socket's bytes.
    pub pending: Vec<String>,
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// Container id.
    pub id: String,
    /// Its bundle.
    pub bundle: PathBuf,
    /// Its init process.
    pub init: Process,
    /// Its execs.
    pub execs: Vec<Process>,
    /// The OOM watch (eventfd or inotify fd), if one runs.
    pub oom_watch: Option<i32>,
}

/// An init or an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// Exec id; empty for init.
    pub exec_id: String,
    /// Its pid; 0 before runc created it.
    pub pid: i32,
    /// A pidfd of it, if one was opened.
    pub pidfd: Option<i32>,
    /// Its lifecycle state. Transitional states (`creating`, `starting`, …) never appear:
    /// the old image lets lifecycle calls in flight finish before it writes the document.
    pub state: State,
    /// How it ended, once it did.
    pub exit: Option<ExitStatus>,
    /// Whether its exit was published (`Wait` answers then).
    pub exit_published: bool,
    /// Its stdio.
    pub stdio: Stdio,
}

/// Settled lifecycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Created, not started.
    Created,
    /// Started, not reaped.
    Running,
    /// Frozen.
    Paused,
    /// Reaped or never ran.
    Stopped,
    /// Removed; only its exit status remains.
    Deleted,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    /// Exit code, or 128 + signal.
    pub status: u32,
    /// When it was reaped, ms since the Unix epoch.
    pub at_ms: u64,
}

/// A process's stdio as the shim holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stdio {
    /// containerd's stdio URIs or FIFO paths, as Create or Exec named them.
    pub stdin_path: String,
    /// See `stdin_path`.
    pub stdout_path: String,
    /// See `stdin_path`.
    pub stderr_path: String,
    /// Whether it has a terminal.
    pub terminal: bool,
    /// The pty master, for a terminal.
    pub console: Option<i32>,
    /// The write end the shim copies stdin into the process through.
    pub stdin: Option<i32>,
    /// Output copied from the process.
    pub stdout: Option<Stream>,
    /// See `stdout`.
    pub stderr: Option<Stream>,
}

/// One output stream: where it comes from, where it goes, what waits in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    /// The read end of the process's pipe (or of the pty).
    pub source: i32,
    /// Where it is copied (FIFO, file, logger's pipe); none while it is not open.
    pub sink: Option<i32>,
    /// Bytes read and not yet written.
    pub spool: Spool,
}

/// Bytes read from a stream and not yet written, oldest first: memory, then spill file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spool {
    /// A sealed memfd holding what was in memory.
    pub memory: Option<i32>,
    /// Bytes in `memory`.
    pub memory_len: u64,
    /// The spill file.
    pub spill: Option<i32>,
    /// Where the unwritten bytes of `spill` start.
    pub spill_offset: u64,
    /// How many there are.
    pub spill_len: u64,
}

/// An exit collected and not yet claimed by a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exit {
    /// The pid reaped.
    pub pid: i32,
    /// Its status.
    pub status: ExitStatus,
}

/// A queued event: the encoded payload containerd receives, as the old image built it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// `/tasks/exit` etc.
    pub topic: String,
    /// The payload's protobuf type URL.
    pub type_url: String,
    /// The encoded payload, hex.
    pub payload_hex: String,
}

/// A timer still running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timer {
    /// What it is for (e.g. `exec-start-deadline`).
    pub purpose: String,
    /// Container id.
    pub container: String,
    /// Exec id, "" for init or none.
    pub exec_id: String,
    /// Time left at the pause, ms.
    pub remaining_ms: u64,
}

impl Document {
    /// Every fd the document names, with what it is.
    pub fn fds(&self) -> Vec<(String, i32)> {
        let mut fds = vec![("listener".to_string(), self.listener)];
        fds.extend(self.old_binary.map(|fd| ("old binary".to_string(), fd)));
        for c in &self.connections {
            fds.push(("connection".into(), c.fd));
        }
        for c in &self.containers {
            fds.extend(c.oom_watch.map(|fd| (format!("{} oom watch", c.id), fd)));
            for p in std::iter::once(&c.init).chain(&c.execs) {
                let who = format!("{}/{}", c.id, p.exec_id);
                fds.extend(p.pidfd.map(|fd| (format!("{who} pidfd"), fd)));
                let s = &p.stdio;
                fds.extend(s.console.map(|fd| (format!("{who} console"), fd)));
                fds.extend(s.stdin.map(|fd| (format!("{who} stdin"), fd)));
                for (name, stream) in [("stdout", &s.stdout), ("stderr", &s.stderr)] {
                    let Some(st) = stream else { continue };
                    fds.push((format!("{who} {name}"), st.source));
                    fds.extend(st.sink.map(|fd| (format!("{who} {name} sink"), fd)));
                    fds.extend(
                        st.spool
                            .memory
                            .map(|fd| (format!("{who} {name} spool"), fd)),
                    );
                    fds.extend(st.spool.spill.map(|fd| (format!("{who} {name} spill"), fd)));
                }
            }
        }
        fds
    }

    /// Checks bounds, identifiers, paths, fds and that each process's state agrees with
    /// what it carries.
    pub fn validate(&self) -> Result<(), HandoverError> {
        let v = self.version;
        if v != 1 {
            return Err(invalid(v, "a format 1 document must say version 1"));
        }
        let over = |what: &str, n: usize, max: usize| {
            if n > max {
                Err(invalid(v, format!("{n} {what}, at most {max}")))
            } else {
                Ok(())
            }
        };
        over("connections", self.connections.len(), Limits::CONNECTIONS)?;
        over("containers", self.containers.len(), Limits::CONTAINERS)?;
        over(
            "unclaimed exits",
            self.unclaimed_exits.len(),
            Limits::UNCLAIMED_EXITS,
        )?;
        over("queued events", self.outbox.len(), Limits::OUTBOX)?;
        over("timers", self.timers.len(), Limits::TIMERS)?;
        let id = |kind: &'static str, s: &str| {
            crate::ids::validate(kind, s).map_err(|e| invalid(v, e.to_string()))
        };
        id("shim", &self.shim.id)?;
        let mut containers = std::collections::HashSet::new();
        for c in &self.containers {
            id("container", &c.id)?;
            if !containers.insert(c.id.as_str()) {
                return Err(invalid(v, format!("container {} is listed twice", c.id)));
            }
            check_path(v, &format!("container {} bundle", c.id), &c.bundle)?;
            over(&format!("execs of {}", c.id), c.execs.len(), Limits::EXECS)?;
            if !c.init.exec_id.is_empty() {
                return Err(invalid(
                    v,
                    format!("container {}: init has an exec id", c.id),
                ));
            }
            let mut execs = std::collections::HashSet::new();
            for e in &c.execs {
                id("exec", &e.exec_id)?;
                if !execs.insert(e.exec_id.as_str()) {
                    return Err(invalid(
                        v,
                        format!("container {}: exec {} is listed twice", c.id, e.exec_id),
                    ));
                }
            }
            for p in std::iter::once(&c.init).chain(&c.execs) {
                p.check(v, &c.id)?;
            }
        }
        for c in &self.connections {
            over("unanswered requests", c.pending.len(), Limits::PENDING)?;
            for f in &c.pending {
                check_request_frame(v, c.fd, f)?;
            }
        }
        for e in &self.unclaimed_exits {
            if e.pid <= 0 {
                return Err(invalid(v, format!("unclaimed exit of pid {}", e.pid)));
            }
        }
        for e in &self.outbox {
            if !e.topic.starts_with("/tasks/") || !is_hex(&e.payload_hex) {
                return Err(invalid(
                    v,
                    format!("queued event {:?} is malformed", e.topic),
                ));
            }
            over(
                "payload bytes",
                e.payload_hex.len() / 2,
                Limits::EVENT_PAYLOAD,
            )?;
        }
        check_fds(v, &self.fds())
    }
}

/// Whole bytes in hex.
fn is_hex(s: &str) -> bool {
    s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A whole ttrpc request frame in hex, of at most [`Limits::PENDING_FRAME`] bytes.
fn check_request_frame(v: u32, fd: i32, hex: &str) -> Result<(), HandoverError> {
    let bad = |why: &str| invalid(v, format!("connection fd {fd}: unanswered request {why}"));
    if !is_hex(hex) {
        return Err(bad("is not hex"));
    }
    let len = hex.len() / 2;
    if len > Limits::PENDING_FRAME {
        return Err(bad("is too large"));
    }
    let byte = |i: usize| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
    if len < 10 {
        return Err(bad("is shorter than a frame header"));
    }
    let announced = u32::from_be_bytes([byte(0), byte(1), byte(2), byte(3)]) as usize;
    if announced + 10 != len || byte(8) != 1 {
        return Err(bad("is not one whole request frame"));
    }
    Ok(())
}

impl Process {
    fn check(&self, v: u32, container: &str) -> Result<(), HandoverError> {
        let who = format!("{container}/{}", self.exec_id);
        let started = matches!(self.state, State::Running | State::Paused);
        if self.pid < 0 || (started && self.pid == 0) {
            return Err(invalid(
                v,
                format!("{who}: pid {} in state {:?}", self.pid, self.state),
            ));
        }
        let ended = matches!(self.state, State::Stopped | State::Deleted);
        if ended != self.exit.is_some() {
            return Err(invalid(
                v,
                format!("{who}: state {:?} with exit {:?}", self.state, self.exit),
            ));
        }
        if self.exit_published && !ended {
            return Err(invalid(v, format!("{who}: exit published but not ended")));
        }
        if self.stdio.terminal != self.stdio.console.is_some() && started {
            return Err(invalid(v, format!("{who}: terminal without a console fd")));
        }
        for (name, s) in [
            ("stdout", &self.stdio.stdout),
            ("stderr", &self.stdio.stderr),
        ] {
            let Some(s) = s else { continue };
            let sp = &s.spool;
            if (sp.memory.is_none() && sp.memory_len > 0)
                || (sp.spill.is_none() && sp.spill_len > 0)
            {
                return Err(invalid(
                    v,
                    format!("{who} {name}: spooled bytes without an fd"),
                ));
            }
        }
        Ok(())
    }
}

/// A document exercising every field: the fixture of this format
/// (`testdata/handover-v1.json`) and the sample `--handover-sample` prints, so a new binary
/// can be checked against what an old one writes.
pub fn sample() -> Document {
    let stream = |source, sink, memory, spill| Stream {
        source,
        sink: Some(sink),
        spool: Spool {
            memory: Some(memory),
            memory_len: 4096,
            spill: Some(spill),
            spill_offset: 1 << 20,
            spill_len: 65536,
        },
    };
    let exec = Process {
        exec_id: "exec-1".into(),
        pid: 4243,
        pidfd: Some(20),
        state: State::Running,
        exit: None,
        exit_published: false,
        stdio: Stdio {
            stdin_path: String::new(),
            stdout_path: String::new(),
            stderr_path: String::new(),
            terminal: true,
            console: Some(21),
            stdin: None,
            stdout: None,
            stderr: None,
        },
    };
    let done = Process {
        exec_id: "exec-2".into(),
        pid: 4250,
        pidfd: None,
        state: State::Stopped,
        exit: Some(ExitStatus {
            status: 137,
            at_ms: 1_796_000_000_500,
        }),
        exit_published: true,
        stdio: Stdio {
            stdin_path: String::new(),
            stdout_path: String::new(),
            stderr_path: String::new(),
            terminal: false,
            console: None,
            stdin: None,
            stdout: None,
            stderr: None,
        },
    };
    Document {
        version: 1,
        writer: Writer {
            version: "0.1.0".into(),
            build_id: Some("5b04cecdfd2875543d83780c023a9041bbe2e2a7".into()),
            paused_at_ms: 1_796_000_001_000,
        },
        shim: Shim {
            namespace: "k8s.io".into(),
            id: "pod-1".into(),
            socket: "unix:///run/containerd/s/0123abcd".into(),
            containerd_address: "/run/containerd/containerd.sock".into(),
            ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            publish_binary: "/usr/bin/containerd".into(),
            debug: false,
        },
        listener: 3,
        old_binary: Some(4),
        connections: vec![
            Connection {
                fd: 5,
                peer_pid: Some(812),
                // A Wait on stream 7 (payload shortened to two bytes).
                pending: vec!["00000002000000070100abcd".into()],
            },
            Connection {
                fd: 6,
                peer_pid: None,
                pending: Vec::new(),
            },
        ],
        containers: vec![Container {
            id: "ctr-1".into(),
            bundle: "/run/containerd/io.containerd.runtime.v2.task/k8s.io/ctr-1".into(),
            init: Process {
                exec_id: String::new(),
                pid: 4242,
                pidfd: Some(10),
                state: State::Running,
                exit: None,
                exit_published: false,
                stdio: Stdio {
                    stdin_path: "/run/containerd/fifo/1/ctr-1-stdin".into(),
                    stdout_path: "/run/containerd/fifo/1/ctr-1-stdout".into(),
                    stderr_path: "/run/containerd/fifo/1/ctr-1-stderr".into(),
                    terminal: false,
                    console: None,
                    stdin: Some(11),
                    stdout: Some(stream(12, 13, 14, 15)),
                    stderr: Some(stream(16, 17, 18, 19)),
                },
            },
            execs: vec![exec, done],
            oom_watch: Some(22),
        }],
        unclaimed_exits: vec![Exit {
            pid: 4299,
            status: ExitStatus {
                status: 0,
                at_ms: 1_796_000_000_900,
            },
        }],
        outbox: vec![Event {
            topic: "/tasks/exit".into(),
            type_url: "containerd.events.TaskExit".into(),
            payload_hex: "0a056374722d31".into(),
        }],
        timers: vec![Timer {
            purpose: "exec-start-deadline".into(),
            container: "ctr-1".into(),
            exec_id: "exec-1".into(),
            remaining_ms: 7500,
        }],
    }
}
