//! The streaming form of `runc events`.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::pipe::Receiver;

use crate::command::{
    base_command, client_pipe, kill_process_tree, spawn_reaped, text_of, LogTarget,
};
use crate::drain::Retained;
use crate::error::{Error, Result};
use crate::io::async_reader;
use crate::reaper::ExitSubscription;
use crate::types::Event;
use crate::Runc;

/// Longest event line accepted; runc's are a few KiB, anything larger is not runc talking.
const MAX_LINE: usize = 1024 * 1024;

/// Events from a running `runc events`; dropping it kills runc.
pub struct EventStream {
    id: String,
    pid: i32,
    stdout: BufReader<Receiver>,
    exits: ExitSubscription,
    stderr: Arc<Mutex<Retained>>,
    /// The stderr drain; awaited (briefly) before an exit is turned into an error, so the
    /// error carries runc's last words rather than racing them.
    stderr_drain: Option<tokio::task::JoinHandle<()>>,
    log: LogTarget,
    /// The configured --root, which crun names in its not-found message.
    root: Option<std::path::PathBuf>,
    finished: bool,
    exited: bool,
}

impl EventStream {
    pub(crate) fn spawn(runc: &Runc, id: &str, interval: Duration) -> Result<EventStream> {
        let cfg = runc.config();
        let ctx = |what: &str| format!("runc events {id}: {what}");
        // Drained stderr: never a per-call file, so nothing here can fail or needs a directory.
        let log = LogTarget::prepare(cfg, true, None)
            .map_err(|e| Error::io(ctx("preparing the log"), e))?;
        let mut cmd = base_command(cfg, runc.global_args(), &log);
        // Go durations accept "ms"; whole milliseconds are plenty for a poll interval.
        cmd.arg("events")
            .arg(format!("--interval={}ms", interval.as_millis().max(1)))
            .arg("--")
            .arg(id);
        let out = client_pipe(cfg, &ctx)?;
        let err = client_pipe(cfg, &ctx)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out.write))
            .stderr(Stdio::from(err.write));
        let out_r = async_reader(out.read)?;
        let err_r = async_reader(err.read)?;
        let exits = runc.reaper().subscribe();
        let pid = spawn_reaped(cmd, "events", id, cfg, runc.reaper())?;

        let stderr = Arc::new(Mutex::new(Retained::new(cfg.output_limit)));
        let sink = stderr.clone();
        let stderr_drain = tokio::spawn(async move {
            let mut r = err_r;
            let mut buf = [0u8; 4096];
            loop {
                match tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    // The lock is taken only between reads, never across an await.
                    Ok(n) => sink.lock().unwrap().push(&buf[..n]),
                }
            }
        });
        Ok(EventStream {
            id: id.to_string(),
            pid,
            stdout: BufReader::new(out_r),
            exits,
            stderr,
            stderr_drain: Some(stderr_drain),
            log,
            root: cfg.root.clone(),
            finished: false,
            exited: false,
        })
    }

    /// Pid of the `runc events` process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The next event, `None` once runc has exited cleanly.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        if self.finished {
            return None;
        }
        loop {
            let mut line = Vec::new();
            // Bounded so a runaway runtime cannot make us buffer without limit.
            let read = (&mut self.stdout)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await;
            match read {
                Ok(0) => return self.finish().await,
                Ok(_) if line.len() > MAX_LINE => {
                    self.finished = true;
                    return Some(Err(self.parse_error("event line too long".into())));
                }
                Ok(_) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(_) => {
                    return Some(
                        serde_json::from_slice(&line).map_err(|e| self.parse_error(e.to_string())),
                    )
                }
                Err(e) => {
                    self.finished = true;
                    return Some(Err(Error::io(
                        format!("runc events {}: reading", self.id),
                        e,
                    )));
                }
            }
        }
    }

    fn parse_error(&self, message: String) -> Error {
        Error::Parse {
            command: "events",
            id: self.id.clone(),
            message,
        }
    }

    async fn finish(&mut self) -> Option<Result<Event>> {
        self.finished = true;
        let exit = tokio::time::timeout(Duration::from_secs(1), self.exits.wait_for(self.pid))
            .await
            .ok()?;
        self.exited = true;
        if exit.status == 0 {
            return None;
        }
        if let Some(drain) = self.stderr_drain.take() {
            // runc has exited, so stderr reaches EOF unless a descendant still holds it.
            let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
        }
        let stderr = self.stderr.lock().unwrap().clone();
        let message = self
            .log
            .last_error(&stderr)
            .or_else(|| text_of(&stderr))
            .unwrap_or_else(|| format!("exited with status {}", exit.status));
        Some(Err(Error::from_exit(
            "events",
            &self.id,
            exit.status,
            message,
            self.root.as_deref(),
        )))
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // Once runc is reaped its pid may be reused: only kill what is provably still ours.
        let mut reaped = self.exited;
        while let Some(exit) = self.exits.try_recv() {
            reaped |= exit.pid == self.pid;
        }
        if !reaped {
            kill_process_tree(self.pid);
        }
    }
}
