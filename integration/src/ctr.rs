//! Driving containerd through `ctr`, where the CLI is simpler than the raw API
//! (running a container with captured output needs fifos, task and container bookkeeping).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::containerd::Containerd;
use crate::error::{Error, IoContext, Result};
use crate::image::BUSYBOX_IMAGE;
use crate::Handler;

/// Outcome of a finished command or container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Exit code (128 + signal if killed).
    pub exit_code: i32,
}

/// Run a command with a deadline; on timeout the child is killed (it is our own child).
pub async fn run_command(program: &str, args: &[String], timeout: Duration) -> Result<Output> {
    let command = format!("{program} {}", args.join(" "));
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ctx(|| format!("spawning `{command}`"))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.ctx(|| format!("waiting for `{command}`"))?,
        Err(_) => {
            return Err(Error::Timeout {
                command,
                secs: timeout.as_secs(),
            })
        }
    };
    let exit_code = out.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + out.status.signal().unwrap_or(0)
    });
    Ok(Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit_code,
    })
}

/// Options of [`Containerd::ctr_run`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Image reference (default: the busybox test image).
    pub image: String,
    /// How long the container may run.
    pub timeout: Duration,
    /// Extra `ctr run` flags placed before the image (e.g. `--env`, `--cwd`).
    pub extra_flags: Vec<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            image: BUSYBOX_IMAGE.into(),
            timeout: Duration::from_secs(60),
            extra_flags: Vec::new(),
        }
    }
}

/// ctr flags selecting a handler's shim and keeping its runc state in our temp dir.
pub fn runtime_flags(fx: &Containerd, handler: Handler) -> Vec<String> {
    let mut flags = vec!["--runtime".to_string(), handler.runtime_type().to_string()];
    match handler {
        Handler::Runc => {
            flags.push("--runc-root".into());
            flags.push(fx.runc_root().to_string_lossy().into_owned());
        }
        // ctr 1.6 only turns --runc-root into options for the runc runtime type.
        Handler::Sturdy => {
            flags.push("--runtime-config-path".into());
            flags.push(fx.sturdy_options_path().to_string_lossy().into_owned());
        }
    }
    flags
}

impl Containerd {
    /// `ctr -a <socket> -n <ns> <args…>`; fails unless ctr exits 0.
    pub async fn ctr_in(&self, ns: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let out = self.ctr_raw(ns, args, timeout).await?;
        if out.exit_code != 0 {
            return Err(Error::Command {
                command: format!("ctr -n {ns} {}", args.join(" ")),
                status: format!("exit code {}", out.exit_code),
                stderr: out.stderr,
            });
        }
        Ok(out)
    }

    /// `ctr -a <socket> -n <ns> <args…>`, whatever its exit code.
    pub async fn ctr_raw(&self, ns: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut full = vec![
            "-a".to_string(),
            self.socket().to_string_lossy().into_owned(),
            "-n".to_string(),
            ns.to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        run_command("ctr", &full, timeout).await
    }

    /// `ctr run --rm` a busybox container through `handler`, capturing output and exit code.
    ///
    /// A non-zero exit code of the container is a normal [`Output`], not an error.
    pub async fn ctr_run(&self, handler: Handler, id: &str, cmd: &[&str]) -> Result<Output> {
        self.ctr_run_with(handler, id, cmd, RunOptions::default())
            .await
    }

    /// [`Containerd::ctr_run`] with options.
    pub async fn ctr_run_with(
        &self,
        handler: Handler,
        id: &str,
        cmd: &[&str],
        opts: RunOptions,
    ) -> Result<Output> {
        let mut args: Vec<String> = vec![
            "-a".into(),
            self.socket().to_string_lossy().into_owned(),
            "-n".into(),
            self.namespace().into(),
            "run".into(),
            "--rm".into(),
            "--fifo-dir".into(),
            self.fifo_dir().to_string_lossy().into_owned(),
        ];
        args.extend(runtime_flags(self, handler));
        // ctr's default cgroup path (/<namespace>/<id>) is no systemd `slice:prefix:name`.
        args.extend(self.ctr_cgroup_flags(handler, id));
        args.extend(opts.extra_flags.iter().cloned());
        args.push(opts.image.clone());
        args.push(id.into());
        args.extend(cmd.iter().map(|s| s.to_string()));
        run_command("ctr", &args, opts.timeout).await
    }

    /// `ctr run -d`: start a busybox container through `handler` and leave it running.
    pub async fn ctr_run_detached(&self, handler: Handler, id: &str, cmd: &[&str]) -> Result<()> {
        let mut args: Vec<String> = vec!["run".into(), "-d".into()];
        args.extend(runtime_flags(self, handler));
        args.extend(self.ctr_cgroup_flags(handler, id));
        args.push(BUSYBOX_IMAGE.into());
        args.push(id.into());
        args.extend(cmd.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr_in(self.namespace(), &args, Duration::from_secs(60))
            .await?;
        Ok(())
    }

    /// Names of the images in a namespace.
    pub async fn image_names(&self, ns: &str) -> Result<Vec<String>> {
        let out = self
            .ctr_in(ns, &["images", "ls", "-q"], Duration::from_secs(30))
            .await?;
        Ok(out.stdout.lines().map(|l| l.trim().to_string()).collect())
    }
}

/// True if `path` looks like a usable shim: it exists and answers `-v` with some output
/// (the workspace's placeholder `fn main() {}` prints nothing).
pub fn shim_looks_real(path: &Path) -> bool {
    let Ok(out) = std::process::Command::new(path)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
    else {
        return false;
    };
    out.status.success() && !(out.stdout.is_empty() && out.stderr.is_empty())
}
