//! The typed client: one method per runc command.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::command::{run, Call, Output};
use crate::config::{RuncConfig, PS_OUTPUT_LIMIT};
use crate::error::{Error, Result};
use crate::events::EventStream;
use crate::options::{CheckpointOpts, CreateOpts, ExecOpts, RestoreOpts};
use crate::private::PrivateDir;
use crate::reaper::Reaper;
use crate::types::{Event, State, Stats};
use crate::version::Version;

struct Inner {
    config: RuncConfig,
    global: Vec<OsString>,
    reaper: Reaper,
}

/// A runc (or runc-compatible runtime) client; cheap to clone.
#[derive(Clone)]
pub struct Runc {
    inner: Arc<Inner>,
}

/// Builds argument vectors without a forest of `.into()`s.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn new(subcommand: &str) -> Args {
        Args(vec![subcommand.into()])
    }
    fn arg(mut self, a: impl AsRef<OsStr>) -> Args {
        self.0.push(a.as_ref().to_os_string());
        self
    }
    fn flag(self, on: bool, name: &str) -> Args {
        if on {
            self.arg(name)
        } else {
            self
        }
    }
    fn opt(self, name: &str, value: Option<impl AsRef<OsStr>>) -> Args {
        match value {
            Some(v) => self.arg(name).arg(v),
            None => self,
        }
    }
    fn path(self, name: &str, value: &Path) -> Args {
        self.opt(name, (!value.as_os_str().is_empty()).then_some(value))
    }
    /// Ends the flags, then the id: whatever the id is, the runtime cannot take it for a flag.
    fn id(self, id: &str) -> Args {
        self.arg("--").arg(id)
    }
}

/// Refuse an id that is not a containerd identifier, before anything is spawned.
fn check_id(command: &'static str, id: &str) -> Result<()> {
    crate::id::validate_id(id).map_err(|reason| Error::InvalidId {
        command,
        id: id.to_string(),
        reason,
    })
}

/// Highest signal number Linux knows (SIGRTMAX).
const MAX_SIGNAL: i32 = 64;

impl Runc {
    /// A client running `config.binary`, whose children are reaped by `reaper`.
    pub fn new(config: RuncConfig, reaper: Reaper) -> Runc {
        let global = config.global_args();
        Runc {
            inner: Arc::new(Inner {
                config,
                global,
                reaper,
            }),
        }
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &RuncConfig {
        &self.inner.config
    }

    pub(crate) fn global_args(&self) -> &[OsString] {
        &self.inner.global
    }

    pub(crate) fn reaper(&self) -> &Reaper {
        &self.inner.reaper
    }

    async fn call(&self, call: Call<'_>) -> Result<Output> {
        run(
            &self.inner.config,
            &self.inner.global,
            &self.inner.reaper,
            call,
        )
        .await
    }

    async fn simple(
        &self,
        command: &'static str,
        id: &str,
        args: Args,
        deadline: Duration,
    ) -> Result<Output> {
        self.call(Call {
            command,
            id,
            args: args.0,
            deadline,
            stdin: None,
            io: None,
            extra_files: Vec::new(),
            scratch: None,
            stdout_limit: None,
            abort: None,
        })
        .await
    }

    fn parse<T: serde::de::DeserializeOwned>(
        command: &'static str,
        id: &str,
        out: &Output,
    ) -> Result<T> {
        if out.stdout.is_truncated() {
            return Err(Error::Parse {
                command,
                id: id.to_string(),
                message: format!(
                    "output of {} bytes exceeds the retention limit",
                    out.stdout.total()
                ),
            });
        }
        serde_json::from_slice(&out.stdout.to_vec()).map_err(|e| Error::Parse {
            command,
            id: id.to_string(),
            message: e.to_string(),
        })
    }

    /// Run any runc subcommand (`args` starts with it) under the same discipline as the typed calls.
    ///
    /// `args` are passed verbatim: put `--` before positional arguments yourself. A non-empty
    /// `id` (the container the call is about, used in errors) must still be a valid id.
    /// Like every call, dropping the future before runc exits kills runc and what it started.
    pub async fn raw(
        &self,
        command: &'static str,
        id: &str,
        args: &[&str],
        deadline: Duration,
    ) -> Result<Output> {
        if !id.is_empty() {
            check_id(command, id)?;
        }
        self.simple(
            command,
            id,
            Args(args.iter().map(OsString::from).collect()),
            deadline,
        )
        .await
    }

    /// `runc create`: set up the container and leave its init waiting for `start`.
    pub async fn create(&self, id: &str, bundle: &Path, opts: &CreateOpts) -> Result<()> {
        check_id("create", id)?;
        // The fds must be moved into the child; the caller keeps its own through `opts`.
        let extra_files = opts
            .extra_files
            .iter()
            .map(|fd| fd.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| Error::io(format!("runc create {id}: dup preserved fd"), e))?;
        let io = clone_io(&opts.io, "create", id)?;
        let args = Args::new("create")
            .arg("--bundle")
            .arg(bundle)
            .path("--pid-file", &opts.pid_file)
            .opt("--console-socket", opts.console_socket.as_ref())
            .flag(opts.no_pivot, "--no-pivot")
            .flag(opts.no_new_keyring, "--no-new-keyring")
            .opt(
                "--preserve-fds",
                (!extra_files.is_empty()).then(|| extra_files.len().to_string()),
            )
            .id(id);
        self.call(Call {
            command: "create",
            id,
            args: args.0,
            deadline: self.config().deadlines.create,
            stdin: None,
            io: Some(io),
            extra_files,
            scratch: None,
            stdout_limit: None,
            abort: None,
        })
        .await
        .map(drop)
    }

    /// `runc start`: run the created container's process.
    pub async fn start(&self, id: &str) -> Result<()> {
        check_id("start", id)?;
        let d = self.config().deadlines.start;
        self.simple("start", id, Args::new("start").id(id), d)
            .await
            .map(drop)
    }

    /// `runc exec --process <spec.json>`: run an extra process in the container.
    pub async fn exec(
        &self,
        id: &str,
        process: &oci_spec::runtime::Process,
        opts: &ExecOpts,
    ) -> Result<()> {
        self.exec_until(id, process, opts, std::future::pending())
            .await
    }

    /// [`Runc::exec`], ended early when `abort` resolves: runc is killed with everything
    /// it started and the call returns [`Error::Aborted`], unless runc had already exited
    /// on its own, whose result is then returned as it would have been.
    pub async fn exec_until(
        &self,
        id: &str,
        process: &oci_spec::runtime::Process,
        opts: &ExecOpts,
        abort: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        check_id("exec", id)?;
        let json = serde_json::to_vec(process).map_err(|e| Error::Parse {
            command: "exec",
            id: id.to_string(),
            message: format!("serializing process spec: {e}"),
        })?;
        // The env may hold secrets: a fresh private directory, never a guessable /tmp name.
        let parent = opts.spec_dir.clone().unwrap_or_else(std::env::temp_dir);
        let scratch = PrivateDir::new(&parent, "runc-exec").map_err(|e| {
            Error::io(
                format!(
                    "runc exec {id}: creating a private directory in {}",
                    parent.display()
                ),
                e,
            )
        })?;
        let spec = scratch
            .create_file("process.json", &json)
            .map_err(|e| Error::io(format!("runc exec {id}: writing the process spec"), e))?;
        let io = clone_io(&opts.io, "exec", id)?;
        let args = Args::new("exec")
            .arg("--process")
            .arg(&spec)
            .flag(opts.detach, "--detach")
            .path("--pid-file", &opts.pid_file)
            .opt("--console-socket", opts.console_socket.as_ref())
            .id(id);
        self.call(Call {
            command: "exec",
            id,
            args: args.0,
            deadline: self.config().deadlines.exec,
            stdin: None,
            io: Some(io),
            extra_files: Vec::new(),
            scratch: Some(scratch),
            stdout_limit: None,
            abort: Some(Box::pin(abort)),
        })
        .await
        .map(drop)
    }

    /// `runc kill [--all] <id> <signal>`; `signal` must be within 0..=64 (0 only checks
    /// that the init process exists; runc 1.1 refuses it for a stopped container).
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        check_id("kill", id)?;
        if !(0..=MAX_SIGNAL).contains(&signal) {
            return Err(Error::InvalidSignal {
                command: "kill",
                id: id.to_string(),
                signal,
            });
        }
        let args = Args::new("kill")
            .flag(all, "--all")
            .id(id)
            .arg(signal.to_string());
        let d = self.config().deadlines.kill;
        self.simple("kill", id, args, d).await.map(drop)
    }

    /// `runc delete [--force]`.
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        check_id("delete", id)?;
        let args = Args::new("delete").flag(force, "--force").id(id);
        let d = self.config().deadlines.delete;
        self.simple("delete", id, args, d).await.map(drop)
    }

    /// `runc state`, typed.
    pub async fn state(&self, id: &str) -> Result<State> {
        check_id("state", id)?;
        let d = self.config().deadlines.state;
        let out = self
            .simple("state", id, Args::new("state").id(id), d)
            .await?;
        Self::parse("state", id, &out)
    }

    /// `runc ps --format json`: host pids of the container's processes, however many (up
    /// to [`PS_OUTPUT_LIMIT`](crate::config::PS_OUTPUT_LIMIT) of output).
    pub async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        check_id("ps", id)?;
        let args = Args::new("ps").arg("--format").arg("json").id(id);
        let out = self
            .call(Call {
                command: "ps",
                id,
                args: args.0,
                deadline: self.config().deadlines.state,
                stdin: None,
                io: None,
                extra_files: Vec::new(),
                scratch: None,
                stdout_limit: Some(self.config().output_limit.max(PS_OUTPUT_LIMIT)),
                abort: None,
            })
            .await?;
        Ok(Self::parse::<Option<Vec<i32>>>("ps", id, &out)?.unwrap_or_default())
    }

    /// `runc pause`.
    pub async fn pause(&self, id: &str) -> Result<()> {
        check_id("pause", id)?;
        let d = self.config().deadlines.default;
        self.simple("pause", id, Args::new("pause").id(id), d)
            .await
            .map(drop)
    }

    /// `runc resume`.
    pub async fn resume(&self, id: &str) -> Result<()> {
        check_id("resume", id)?;
        let d = self.config().deadlines.default;
        self.simple("resume", id, Args::new("resume").id(id), d)
            .await
            .map(drop)
    }

    /// `runc update --resources -`, with the resources as JSON on stdin.
    pub async fn update(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<()> {
        check_id("update", id)?;
        let json = serde_json::to_vec(resources).map_err(|e| Error::Parse {
            command: "update",
            id: id.to_string(),
            message: format!("serializing resources: {e}"),
        })?;
        self.call(Call {
            command: "update",
            id,
            args: Args::new("update").arg("--resources").arg("-").id(id).0,
            deadline: self.config().deadlines.default,
            stdin: Some(json),
            io: None,
            extra_files: Vec::new(),
            scratch: None,
            stdout_limit: None,
            abort: None,
        })
        .await
        .map(drop)
    }

    /// `runc events --stats`: one snapshot of the container's cgroup statistics.
    pub async fn stats(&self, id: &str) -> Result<Stats> {
        check_id("events", id)?;
        let d = self.config().deadlines.state;
        let out = self
            .simple("events", id, Args::new("events").arg("--stats").id(id), d)
            .await?;
        let event: Event = Self::parse("events", id, &out)?;
        let data = event.data.ok_or_else(|| Error::Parse {
            command: "events",
            id: id.to_string(),
            message: "stats event without data".into(),
        })?;
        serde_json::from_value(data).map_err(|e| Error::Parse {
            command: "events",
            id: id.to_string(),
            message: e.to_string(),
        })
    }

    /// `runc events --interval`: a stream of events, runc is killed when the stream is dropped.
    pub async fn events(&self, id: &str, interval: Duration) -> Result<EventStream> {
        check_id("events", id)?;
        EventStream::spawn(self, id, interval)
    }

    /// `runc checkpoint` with CRIU options.
    ///
    /// Refused with [`Error::CriuNotFound`] before anything runs when the CRIU binary runc
    /// would use is not there; a CRIU failure is an [`Error::Criu`] naming CRIU's log.
    pub async fn checkpoint(&self, id: &str, opts: &CheckpointOpts) -> Result<()> {
        check_id("checkpoint", id)?;
        crate::criu::locate(self.config(), "checkpoint", id)?;
        let mut args = Args::new("checkpoint");
        opts.checkpoint_args(&mut args.0);
        let args = args.id(id);
        let d = self.config().deadlines.checkpoint;
        self.simple("checkpoint", id, args, d)
            .await
            .map(drop)
            .map_err(|e| e.with_criu_work_dir(opts.work_path.as_deref()))
    }

    /// `runc restore` from a checkpoint image into `bundle` (`opts.checkpoint.parent_path`
    /// and `page_server` are checkpoint-only and not passed).
    ///
    /// Refused with [`Error::CriuNotFound`] before anything runs when the CRIU binary runc
    /// would use is not there; a CRIU failure is an [`Error::Criu`] naming CRIU's log.
    pub async fn restore(&self, id: &str, bundle: &Path, opts: &RestoreOpts) -> Result<()> {
        check_id("restore", id)?;
        crate::criu::locate(self.config(), "restore", id)?;
        let io = clone_io(&opts.io, "restore", id)?;
        let mut args = Args::new("restore")
            .arg("--bundle")
            .arg(bundle)
            .flag(opts.detach, "--detach")
            .path("--pid-file", &opts.pid_file)
            .opt("--console-socket", opts.console_socket.as_ref())
            .flag(opts.no_pivot, "--no-pivot")
            .flag(opts.no_subreaper, "--no-subreaper")
            .opt("--lsm-profile", opts.lsm_profile.as_ref())
            .opt("--lsm-mount-context", opts.lsm_mount_context.as_ref());
        opts.checkpoint.common_args(&mut args.0);
        let args = args.id(id);
        self.call(Call {
            command: "restore",
            id,
            args: args.0,
            deadline: self.config().deadlines.checkpoint,
            stdin: None,
            io: Some(io),
            extra_files: Vec::new(),
            scratch: None,
            stdout_limit: None,
            abort: None,
        })
        .await
        .map(drop)
        .map_err(|e| e.with_criu_work_dir(opts.checkpoint.work_path.as_deref()))
    }

    /// `runc features`: what this runtime supports, as raw JSON.
    pub async fn features(&self) -> Result<serde_json::Value> {
        let d = self.config().deadlines.state;
        let out = self
            .simple("features", "", Args::new("features"), d)
            .await?;
        Self::parse("features", "", &out)
    }

    /// `runc --version`, parsed.
    pub async fn version(&self) -> Result<Version> {
        let d = self.config().deadlines.state;
        let out = self
            .simple("version", "", Args::new("--version"), d)
            .await?;
        let text = out.stdout.to_string_lossy();
        Version::parse(&text).ok_or_else(|| Error::Parse {
            command: "version",
            id: String::new(),
            message: format!("unrecognised version output {text:?}"),
        })
    }
}

/// Duplicate the caller's stdio so `opts` can be passed by reference and reused.
fn clone_io(
    io: &crate::io::ProcessIo,
    command: &'static str,
    id: &str,
) -> Result<crate::io::ProcessIo> {
    let dup = |fd: &Option<std::os::fd::OwnedFd>| {
        fd.as_ref()
            .map(|f| f.try_clone())
            .transpose()
            .map_err(|e| Error::io(format!("runc {command} {id}: dup stdio"), e))
    };
    Ok(crate::io::ProcessIo {
        stdin: dup(&io.stdin)?,
        stdout: dup(&io.stdout)?,
        stderr: dup(&io.stderr)?,
    })
}
