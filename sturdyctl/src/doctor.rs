//! `sturdyctl doctor`: checks a node for what makes sturdy (or containerd under it) fail, and
//! says for each finding how bad it is and the one thing to do about it.
//!
//! Every check reads the node through a [`Host`] (a root directory, a command runner and the
//! trust in paths and processes), so tests run them against fixture trees and canned version
//! strings.
//!
//! containerd is the process that listens on its socket (peer credentials of a connection,
//! taken by the caller), never a process that merely calls itself `containerd`: anyone can
//! name a process so, and doctor runs as root what it finds through containerd (security
//! review 2026-12, H2). Everything doctor runs is checked with [`Host::run`] at use.

use std::ffi::OsString;
use std::path::PathBuf;

use serde::Serialize;

use crate::ctrconfig::{Config, Runtime};
use crate::host::{Host, Proc, RunError};

pub mod known;
mod node;
mod routing;
mod versions;

/// How bad a finding is. The worst one decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// As it should be.
    Ok,
    /// Worth knowing; nothing to fix.
    Info,
    /// Works now, but is a risk or a half-finished change.
    Warn,
    /// Broken, or a release with a known serious bug.
    Error,
}

impl Severity {
    /// The process exit code for a run whose worst finding is this (0, 0, 1, 2).
    pub fn exit_code(self) -> u8 {
        match self {
            Severity::Ok | Severity::Info => 0,
            Severity::Warn => 1,
            Severity::Error => 2,
        }
    }

    /// Upper-case label for text output.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Ok => "OK",
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
            Severity::Error => "ERROR",
        }
    }
}

/// One thing doctor found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which check (`runc`, `containerd`, `pipes`, `cgroup`, `routing`, `criu`,
    /// `watchdog`, `records`).
    pub check: &'static str,
    /// How bad.
    pub severity: Severity,
    /// What was found, one line.
    pub summary: String,
    /// What to do, one line (absent when nothing is to be done).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Where the knowledge comes from (advisory, issue), when it is a known bug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Finding {
    /// A finding without fix or source.
    pub fn new(check: &'static str, severity: Severity, summary: impl Into<String>) -> Self {
        Finding {
            check,
            severity,
            summary: summary.into(),
            fix: None,
            source: None,
        }
    }

    /// Adds the one-line fix.
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    /// Adds the source.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
}

/// The process at the other end of a connection to a Unix socket (SO_PEERCRED): for a
/// listening socket, the process that called `listen()`, which containerd does itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its pid (in doctor's pid namespace).
    pub pid: i32,
    /// Its effective uid when it called `listen()`.
    pub uid: u32,
}

/// What doctor looks at, besides the node itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// containerd's config.toml.
    pub config: PathBuf,
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// Who listens on `address`, or why that is unknown; `None` when not asked.
    pub listener: Option<Result<Peer, String>>,
    /// The CRI handler sturdy is installed under.
    pub handler: String,
    /// sturdy's record directory.
    pub record_dir: PathBuf,
    /// The watchdog's journal.
    pub journal: PathBuf,
    /// The running containerd's version from its API (`Ok("1.6.20~ds1 <revision>")`
    /// style version and revision), or why it could not be asked; `None` when not asked.
    pub api_version: Option<Result<(String, String), String>>,
    /// This sturdyctl's version.
    pub sturdyctl_version: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: "/etc/containerd/config.toml".into(),
            address: "/run/containerd/containerd.sock".into(),
            listener: None,
            handler: crate::ctrconfig::HANDLER.into(),
            record_dir: "/var/lib/sturdy".into(),
            journal: "/var/lib/sturdy/watchdog.journal".into(),
            api_version: None,
            sturdyctl_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// What every check may need, gathered once.
pub(crate) struct Context<'a> {
    pub host: &'a Host,
    pub opts: &'a Options,
    /// The config, or the finding that says why there is none.
    pub config: Result<Config, Finding>,
    /// sturdy's runtime in it.
    pub runtime: Option<Runtime>,
    /// sturdy's effective options: the `ConfigPath` file's table if it names one, else
    /// the inline `options` table.
    pub options: toml::Table,
    /// The running containerd, found through its socket and trusted; else the finding that
    /// says why there is none.
    pub containerd: Result<Daemon, Finding>,
    pub processes: Vec<Proc>,
}

/// The containerd that listens on `--address`, a root process running a binary only root
/// can change.
#[derive(Debug, Clone)]
pub(crate) struct Daemon {
    pub pid: i32,
    /// Its binary (the path it was started from; " (deleted)" stripped).
    pub exe: Option<PathBuf>,
    /// The PATH it runs with: shims and runc are found on it.
    pub path_env: Option<OsString>,
}

impl Context<'_> {
    /// The PATH containerd runs with (shims and runc are found on it), else sturdyctl's.
    pub fn containerd_path(&self) -> &OsString {
        self.containerd_path_env().unwrap_or(&self.host.path_env)
    }

    /// containerd's own PATH, when containerd was found.
    pub fn containerd_path_env(&self) -> Option<&OsString> {
        self.containerd
            .as_ref()
            .ok()
            .and_then(|d| d.path_env.as_ref())
    }

    /// A string option of sturdy's runtime.
    pub fn option_str(&self, key: &str) -> Option<&str> {
        self.options
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    }

    /// A boolean option of sturdy's runtime.
    pub fn option_bool(&self, key: &str) -> Option<bool> {
        self.options.get(key).and_then(|v| v.as_bool())
    }
}

/// The fix for a program doctor did not run because others than root may change it.
pub(crate) const UNTRUSTED_FIX: &str = "only root may be able to change what runs as root: \
    chown root and chmod go-w the file and every directory above it, or take that directory \
    off containerd's PATH";

/// The finding for a command that could not be run: `fix` unless it was not trusted.
pub(crate) fn run_failed(check: &'static str, e: &RunError, fix: impl Into<String>) -> Finding {
    let finding = Finding::new(check, Severity::Error, e.to_string());
    match e {
        RunError::Untrusted { .. } => finding.fix(UNTRUSTED_FIX),
        _ => finding.fix(fix),
    }
}

/// containerd through its socket: the listener must be a trusted root process.
fn find_containerd(host: &Host, opts: &Options) -> Result<Daemon, Finding> {
    const CHECK: &str = "containerd";
    let socket = opts.address.display();
    let fix_address = "pass --address with containerd's socket (its [grpc] address)";
    let peer = match &opts.listener {
        None => {
            return Err(Finding::new(
                CHECK,
                Severity::Warn,
                format!(
                    "{socket} was not asked who listens on it: containerd's own PATH is unknown"
                ),
            )
            .fix(fix_address))
        }
        Some(Err(e)) => {
            return Err(Finding::new(
                CHECK,
                Severity::Warn,
                format!(
                    "containerd not found through its socket {socket} ({e}): runc, criu and the \
                     shim are looked up on sturdyctl's PATH instead of containerd's"
                ),
            )
            .fix(fix_address))
        }
        Some(Ok(peer)) => *peer,
    };
    let untrusted = |why: String| {
        Finding::new(
            CHECK,
            Severity::Error,
            format!(
                "pid {} listening on {socket} is not a trusted containerd ({why}): doctor runs \
                 nothing of it and ignores its PATH",
                peer.pid
            ),
        )
        .fix(format!(
            "find out what listens on {socket}; containerd runs as root from a binary only root \
             can change"
        ))
    };
    if peer.uid != 0 {
        return Err(untrusted(format!("it listened as uid {}", peer.uid)));
    }
    host.trust
        .process(peer.pid)
        .map_err(|e| untrusted(e.to_string()))?;
    let exe = std::fs::read_link(host.path(format!("/proc/{}/exe", peer.pid)))
        .ok()
        .map(|e| crate::procfs::live_path(&e));
    Ok(Daemon {
        pid: peer.pid,
        exe,
        path_env: host.path_env_of(peer.pid),
    })
}

fn gather<'a>(host: &'a Host, opts: &'a Options) -> Context<'a> {
    let config = match host.read(&opts.config) {
        Ok(text) => Config::parse(&opts.config, &text).map_err(|e| {
            Finding::new("routing", Severity::Error, e.to_string())
                .fix(format!("fix {} by hand", opts.config.display()))
        }),
        Err(e) => Err(Finding::new(
            "routing",
            Severity::Error,
            format!(
                "no containerd config at {} ({e}): containerd runs on its defaults, without sturdy",
                opts.config.display()
            ),
        )
        .fix("`containerd config default > FILE`, then `sturdyctl install --config FILE`")),
    };
    let runtime = config
        .as_ref()
        .ok()
        .and_then(|c| routing::find_runtime(host, c, &opts.handler));
    let mut options = toml::Table::new();
    if let Some(rt) = &runtime {
        for (k, v) in &rt.options {
            if let Ok(t) = format!("x = {v}").parse::<toml::Table>() {
                if let Some(v) = t.get("x") {
                    options.insert(k.clone(), v.clone());
                }
            }
        }
        if let Some(path) = rt.option_str("ConfigPath").filter(|p| !p.is_empty()) {
            if let Some(file) = host.read(path).ok().and_then(|t| t.parse().ok()) {
                options = file;
            }
        }
    }
    let processes = host.processes();
    let containerd = find_containerd(host, opts);
    Context {
        host,
        opts,
        config,
        runtime,
        options,
        containerd,
        processes,
    }
}

/// Runs every check.
pub fn run(host: &Host, opts: &Options) -> Vec<Finding> {
    let ctx = gather(host, opts);
    let mut out = Vec::new();
    out.extend(versions::runc(&ctx));
    out.extend(versions::containerd(&ctx));
    out.extend(node::pipes(&ctx));
    out.extend(node::cgroup(&ctx));
    out.extend(routing::routing(&ctx));
    out.extend(node::criu(&ctx));
    out.extend(routing::watchdog(&ctx));
    out.extend(node::records(&ctx));
    out
}

/// The worst severity among `findings` (Ok when there are none).
pub fn worst(findings: &[Finding]) -> Severity {
    findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Ok)
}

#[cfg(test)]
mod tests;
