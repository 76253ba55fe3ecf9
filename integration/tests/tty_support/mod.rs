//! Helpers of the terminal tests: an exec driven through containerd's Tasks API with FIFOs
//! the test owns (as `ctr` and CRI make them), and `crictl` run under a pty the test owns.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, ResizePtyRequest, StartRequest,
    WaitRequest,
};
use containerd_client::with_namespace;
use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
pub use sturdy_integration::until as wait_for;
use sturdy_integration::Containerd;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Longest any single step may take on a loaded 2-core machine.
pub const T: Duration = Duration::from_secs(60);

/// Everything a reader took from a FIFO or pty so far.
#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    fn push(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
    }

    /// The bytes so far, lossily as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Times `needle` occurs so far.
    pub fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

/// Reads a FIFO into a [`Collected`] until dropped. Opened read-write, like containerd's
/// own end, so opening never waits and the shim's writer never sees EPIPE.
pub struct FifoReader {
    pub out: Collected,
    task: tokio::task::JoinHandle<()>,
}

impl FifoReader {
    pub fn start(path: &Path) -> FifoReader {
        let mut fifo = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(path)
            .expect("open output fifo");
        let out = Collected::default();
        let sink = out.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = fifo.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.push(&buf[..n]);
            }
        });
        FifoReader { out, task }
    }
}

impl Drop for FifoReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

/// An exec of container `id` in the fixture's namespace, driven through the Tasks API.
pub struct TaskExec {
    pub tasks: TasksClient<Channel>,
    ns: String,
    pub id: String,
    pub exec_id: String,
    _dir: tempfile::TempDir,
    stdin: Option<File>,
    /// What the process wrote to its stdout (with a terminal: everything, echo included).
    pub stdout: FifoReader,
    /// What it wrote to its stderr (never opened with a terminal).
    pub stderr: Option<FifoReader>,
}

impl TaskExec {
    /// Execs `args` in container `id` with a stdin FIFO and with or without a terminal,
    /// and starts it. The process spec is the container's, as `ctr tasks exec` makes it.
    pub async fn start(
        fx: &Containerd,
        ns: &str,
        id: &str,
        exec_id: &str,
        args: &[&str],
        terminal: bool,
    ) -> TaskExec {
        Self::start_with_spec_terminal(fx, ns, id, exec_id, args, terminal, terminal).await
    }

    /// [`TaskExec::start`] with a process spec whose `terminal` may contradict the request.
    pub async fn start_with_spec_terminal(
        fx: &Containerd,
        ns: &str,
        id: &str,
        exec_id: &str,
        args: &[&str],
        terminal: bool,
        spec_terminal: bool,
    ) -> TaskExec {
        let client = fx.client().await.expect("client");
        let spec = fx.container_spec(ns, id).await.expect("the spec");
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(spec_terminal);

        let dir = tempfile::Builder::new()
            .prefix("tty-fifos")
            .tempdir_in(fx.dir())
            .expect("fifo dir");
        let path = |name: &str| dir.path().join(format!("{exec_id}-{name}"));
        let (stdin, stdout, stderr) = (path("stdin"), path("stdout"), path("stderr"));
        mkfifo(&stdin);
        mkfifo(&stdout);
        if !terminal {
            mkfifo(&stderr);
        }
        // Read-write: opening never waits for the shim, and the FIFO keeps what is written
        // before the shim reads it.
        let stdin_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&stdin)
            .expect("open stdin fifo");
        let stdout_reader = FifoReader::start(&stdout);
        let stderr_reader = (!terminal).then(|| FifoReader::start(&stderr));
        let shown = |p: &PathBuf| p.to_string_lossy().into_owned();
        let mut tasks = client.tasks();
        let req = ExecProcessRequest {
            container_id: id.into(),
            stdin: shown(&stdin),
            stdout: shown(&stdout),
            stderr: if terminal {
                String::new()
            } else {
                shown(&stderr)
            },
            terminal,
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&process).expect("process json"),
            }),
            exec_id: exec_id.into(),
        };
        tasks
            .exec(with_namespace!(req, ns))
            .await
            .expect("Tasks.Exec");
        let req = StartRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        };
        tasks
            .start(with_namespace!(req, ns))
            .await
            .expect("Tasks.Start");
        TaskExec {
            tasks,
            ns: ns.to_string(),
            id: id.into(),
            exec_id: exec_id.into(),
            _dir: dir,
            stdin: Some(stdin_file),
            stdout: stdout_reader,
            stderr: stderr_reader,
        }
    }

    /// Writes into the stdin FIFO.
    pub fn write(&mut self, bytes: &[u8]) {
        self.stdin
            .as_mut()
            .expect("stdin still open")
            .write_all(bytes)
            .expect("write stdin fifo");
    }

    /// Ends stdin as containerd's clients do: close our end of the FIFO, then CloseIO.
    pub async fn close_stdin(&mut self) {
        drop(self.stdin.take());
        let req = CloseIoRequest {
            container_id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            stdin: true,
        };
        self.tasks
            .close_io(with_namespace!(req, self.ns))
            .await
            .expect("Tasks.CloseIO");
    }

    /// ResizePty on this exec.
    pub async fn resize(&mut self, width: u32, height: u32) -> Result<(), Status> {
        resize(
            &mut self.tasks,
            &self.ns,
            &self.id,
            &self.exec_id,
            width,
            height,
        )
        .await
    }

    /// Waits (bounded) for the exit; returns its status.
    pub async fn wait(&mut self, limit: Duration) -> Option<u32> {
        let req = WaitRequest {
            container_id: self.id.clone(),
            exec_id: self.exec_id.clone(),
        };
        let mut tasks = self.tasks.clone();
        let ns = self.ns.clone();
        match tokio::time::timeout(limit, tasks.wait(with_namespace!(req, ns))).await {
            Ok(r) => Some(r.expect("Tasks.Wait").into_inner().exit_status),
            Err(_) => None,
        }
    }

    /// Deletes the finished exec.
    pub async fn delete(&mut self) {
        let req = DeleteProcessRequest {
            container_id: self.id.clone(),
            exec_id: self.exec_id.clone(),
        };
        self.tasks
            .delete_process(with_namespace!(req, self.ns))
            .await
            .expect("Tasks.DeleteProcess");
    }
}

/// ResizePty on any process of the namespace (`exec_id` empty: init).
pub async fn resize(
    tasks: &mut TasksClient<Channel>,
    ns: &str,
    id: &str,
    exec_id: &str,
    width: u32,
    height: u32,
) -> Result<(), Status> {
    let req = ResizePtyRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        width,
        height,
    };
    tasks.resize_pty(with_namespace!(req, ns)).await.map(drop)
}

/// A pty pair, both ends close-on-exec from the start: a child spawned meanwhile by
/// another test must not inherit the master, or closing ours would not hang it up.
fn open_pty() -> (OwnedFd, OwnedFd) {
    let master =
        posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).expect("posix_openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname_r(&master).expect("ptsname");
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .expect("open pty slave");
    (master.into(), slave.into())
}

/// Sets a terminal's size through its master (TIOCSWINSZ).
fn set_size(master: &impl AsRawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

/// A program (crictl) run in a terminal the test owns, as its controlling terminal: we
/// type into its master, read what it shows, and resize it (the kernel sends SIGWINCH).
pub struct PtyClient {
    child: Option<Child>,
    master: File,
    /// Everything the program wrote to the terminal.
    pub shown: Collected,
}

impl PtyClient {
    pub fn spawn(program: &Path, args: &[&str], rows: u16, cols: u16) -> PtyClient {
        let (master, slave) = open_pty();
        set_size(&master, rows, cols);
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(slave.try_clone().expect("dup slave"))
            .stdout(slave.try_clone().expect("dup slave"))
            .stderr(slave.try_clone().expect("dup slave"));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn under a pty");
        // Only the child may hold the slave, or the master never reads EIO at its exit.
        drop(slave);
        let master = File::from(master);
        let shown = Collected::default();
        let mut reader = master.try_clone().expect("dup master");
        let sink = shown.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the program and its children closed the slave.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.push(&buf[..n]);
            }
        });
        PtyClient {
            child: Some(child),
            master,
            shown,
        }
    }

    /// Types `bytes` at the terminal.
    pub fn type_in(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write pty master");
    }

    /// Resizes the terminal; the kernel signals its foreground process group.
    pub fn resize(&self, rows: u16, cols: u16) {
        set_size(&self.master, rows, cols);
    }

    /// Waits (bounded) for the program to exit; its exit code, or None if it still runs.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                use std::os::unix::process::ExitStatusExt;
                return Some(
                    status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                );
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PtyClient {
    fn drop(&mut self) {
        // Our own child, ended by its pid.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
