//! Handover format 2, the first a real handover writes (format 1 was only ever printed as a
//! sample, by builds that could not exec). Frozen once released: a change an older reader
//! would not decode is format 3, with a conversion from this one (docs/upgrade.md,
//! "Versioning").

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
    /// Unanswered requests of one connection.
    pub const PENDING: usize = 1024;
    /// One unanswered request frame, header included.
    pub const PENDING_FRAME: usize = crate::listener::inflight::KEPT_FRAME + 10;
}

/// A shim daemon's state at the moment it stopped reading requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Always 2 in this format.
    pub version: u32,
    /// The image that wrote it.
    pub writer: Writer,
    /// The daemon's identity: its command line, as containerd started it.
    pub shim: Shim,
    /// The upgrade that wrote it.
    pub upgrade: Upgrade,
    /// The listening Task API socket.
    pub listener: i32,
    /// The old binary, opened when the upgrade began: where a new image that cannot resume
    /// goes back to.
    pub old_binary: i32,
    /// Accepted ttrpc connections, each stopped at a frame boundary.
    pub connections: Vec<Connection>,
    /// The pod's containers.
    pub containers: Vec<Container>,
    /// Exits the reaper collected that no process claimed yet.
    pub unclaimed_exits: Vec<Exit>,
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

/// What the upgrade that wrote the document was asked for, and what the pause found: the
/// next image answers the replayed `Upgrade` request with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    /// The build the upgrade goes to, hex.
    pub target_build_id: String,
    /// When the pause began, µs since the Unix epoch (the next image measures the whole
    /// pause against it).
    pub paused_since_us: u64,
    /// Processes whose lifecycle lock the pause held.
    pub held: usize,
    /// Unanswered `Wait`s handed over.
    pub waits: usize,
}

/// An accepted ttrpc connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// The socket.
    pub fd: i32,
    /// The peer's pid (`SO_PEERCRED`) when it was accepted.
    pub peer_pid: Option<i32>,
    /// Its unanswered requests (a blocking `Wait`, the `Upgrade` itself), whole ttrpc
    /// frames in hex, in arrival order: the next image reads them again before the
    /// socket's bytes.
    pub pending: Vec<String>,
}

/// One container, with what its Create carried that the next image needs again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// Container id.
    pub id: String,
    /// Its bundle.
    pub bundle: PathBuf,
    /// Create's runtime options, as containerd encoded them.
    pub options: Option<Options>,
    /// Create's rootfs mounts.
    pub rootfs: Vec<Mount>,
    /// Its init process.
    pub init: Process,
    /// Its execs.
    pub execs: Vec<Process>,
}

/// A protobuf `Any`, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Its type URL.
    pub type_url: String,
    /// Its value, hex.
    pub value_hex: String,
}

/// A rootfs mount of Create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Its type (`overlay`, `bind`, …).
    pub kind: String,
    /// Its source.
    pub source: String,
    /// Its target, usually empty (the bundle's rootfs).
    pub target: String,
    /// Its options.
    pub options: Vec<String>,
}

/// An init or an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// Exec id; empty for init.
    pub exec_id: String,
    /// Its pid; 0 before runc created it.
    pub pid: i32,
    /// Its lifecycle state. Transitional states (`creating`, `starting`, …) never appear:
    /// the old image lets lifecycle calls in flight finish before it writes the document.
    pub state: State,
    /// How it ended, once it did.
    pub exit: Option<ExitStatus>,
    /// Whether its exit was published (`Wait` answers then). An exit decided and not yet
    /// published is published by the next image.
    pub exit_published: bool,
    /// An exec's process spec (JSON, as Exec gave it); none for init.
    pub exec_spec: Option<String>,
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

/// A process's stdio as the shim holds it. Only pipes to containerd's FIFOs (or none) are
/// handed over in this format: a terminal or a logging binary refuses the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stdio {
    /// containerd's stdio URIs or FIFO paths, as Create or Exec named them.
    pub stdin_path: String,
    /// See `stdin_path`.
    pub stdout_path: String,
    /// See `stdin_path`.
    pub stderr_path: String,
    /// Whether it has a terminal (always false in this format).
    pub terminal: bool,
    /// The stdin copy, while it runs.
    pub stdin: Option<Stdin>,
    /// Output copied from the process.
    pub stdout: Option<Stream>,
    /// See `stdout`.
    pub stderr: Option<Stream>,
}

/// The stdin copy: containerd's FIFO into the process's pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stdin {
    /// containerd's stdin FIFO, read end.
    pub fifo: i32,
    /// The process's stdin pipe, write end.
    pub pipe: i32,
    /// A sealed memfd with bytes read from the FIFO and not yet written.
    pub pending: Option<i32>,
    /// Bytes in `pending`.
    pub pending_len: u64,
    /// CloseIO came while bytes were still on their way: after them and what the FIFO
    /// holds now, the pipe is closed.
    pub closing: bool,
}

/// One output stream: where it comes from, where it goes, what waits in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    /// The read end of the process's pipe; none once it reached its end.
    pub source: Option<i32>,
    /// Where it is copied (containerd's FIFO).
    pub sink: i32,
    /// A sealed memfd with the bytes read and not yet written, oldest first.
    pub pending: Option<i32>,
    /// Bytes in `pending`.
    pub pending_len: u64,
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

impl Document {
    /// Every fd the document names, with what it is.
    pub fn fds(&self) -> Vec<(String, i32)> {
        let mut fds = vec![
            ("listener".to_string(), self.listener),
            ("old binary".to_string(), self.old_binary),
        ];
        for c in &self.connections {
            fds.push(("connection".into(), c.fd));
        }
        for c in &self.containers {
            for p in std::iter::once(&c.init).chain(&c.execs) {
                let who = format!("{}/{}", c.id, p.exec_id);
                let s = &p.stdio;
                if let Some(i) = &s.stdin {
                    fds.push((format!("{who} stdin fifo"), i.fifo));
                    fds.push((format!("{who} stdin pipe"), i.pipe));
                    fds.extend(i.pending.map(|fd| (format!("{who} stdin pending"), fd)));
                }
                for (name, stream) in [("stdout", &s.stdout), ("stderr", &s.stderr)] {
                    let Some(st) = stream else { continue };
                    fds.extend(st.source.map(|fd| (format!("{who} {name}"), fd)));
                    fds.push((format!("{who} {name} sink"), st.sink));
                    fds.extend(st.pending.map(|fd| (format!("{who} {name} pending"), fd)));
                }
            }
        }
        fds
    }

    /// Checks bounds, identifiers, paths, fds and that each process's state agrees with
    /// what it carries.
    pub fn validate(&self) -> Result<(), HandoverError> {
        let v = self.version;
        if v != 2 {
            return Err(invalid(v, "a format 2 document must say version 2"));
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
        let id = |kind: &'static str, s: &str| {
            crate::ids::validate(kind, s).map_err(|e| invalid(v, e.to_string()))
        };
        id("shim", &self.shim.id)?;
        if !is_hex(&self.upgrade.target_build_id) || self.upgrade.target_build_id.is_empty() {
            return Err(invalid(v, "the upgrade's target build-id is not hex"));
        }
        let mut containers = std::collections::HashSet::new();
        for c in &self.containers {
            id("container", &c.id)?;
            if !containers.insert(c.id.as_str()) {
                return Err(invalid(v, format!("container {} is listed twice", c.id)));
            }
            check_path(v, &format!("container {} bundle", c.id), &c.bundle)?;
            if c.options.as_ref().is_some_and(|o| !is_hex(&o.value_hex)) {
                return Err(invalid(v, format!("container {}: options not hex", c.id)));
            }
            over(&format!("execs of {}", c.id), c.execs.len(), Limits::EXECS)?;
            if !c.init.exec_id.is_empty() || c.init.exec_spec.is_some() {
                return Err(invalid(
                    v,
                    format!("container {}: init has an exec id or spec", c.id),
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
                if e.exec_spec.is_none() {
                    return Err(invalid(
                        v,
                        format!("container {}: exec {} has no spec", c.id, e.exec_id),
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
        check_fds(v, &self.fds())
    }
}

/// Whole bytes in hex.
pub fn is_hex(s: &str) -> bool {
    s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Bytes as lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex as bytes; None if it is not whole bytes of hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !is_hex(s) {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// A whole ttrpc request frame in hex, of at most [`Limits::PENDING_FRAME`] bytes.
fn check_request_frame(v: u32, fd: i32, hex: &str) -> Result<(), HandoverError> {
    let bad = |why: &str| invalid(v, format!("connection fd {fd}: unanswered request {why}"));
    let Some(bytes) = from_hex(hex) else {
        return Err(bad("is not hex"));
    };
    if bytes.len() > Limits::PENDING_FRAME {
        return Err(bad("is too large"));
    }
    if bytes.len() < 10 {
        return Err(bad("is shorter than a frame header"));
    }
    let announced = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if announced + 10 != bytes.len() || bytes[8] != 1 {
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
        if self.stdio.terminal {
            return Err(invalid(v, format!("{who}: a terminal is not handed over")));
        }
        let pending = [
            self.stdio
                .stdin
                .as_ref()
                .map(|s| (s.pending, s.pending_len)),
            self.stdio
                .stdout
                .as_ref()
                .map(|s| (s.pending, s.pending_len)),
            self.stdio
                .stderr
                .as_ref()
                .map(|s| (s.pending, s.pending_len)),
        ];
        if pending
            .into_iter()
            .flatten()
            .any(|(fd, len)| fd.is_none() && len > 0)
        {
            return Err(invalid(v, format!("{who}: pending bytes without an fd")));
        }
        Ok(())
    }
}

mod sample;
pub use sample::sample;
