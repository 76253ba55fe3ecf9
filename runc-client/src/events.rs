//! The streaming form of `runc events`.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::unix::pipe::Receiver;

use crate::command::{base_command, client_pipe, kill_process_tree, text_of, LogTarget};
use crate::drain::Retained;
use crate::error::{Error, Result};
use crate::io::async_reader;
use crate::reaper::{ExitSubscription, Reaper};
use crate::types::Event;
use crate::Runc;

/// Longest event line accepted; runc's are a few KiB, anything larger is not runc talking.
const MAX_LINE: usize = 1024 * 1024;

/// Events from a running `runc events`; dropping it kills runc.
pub struct EventStream {
    id: String,
    pid: i32,
    lines: Lines<BufReader<Receiver>>,
    exits: ExitSubscription,
    stderr: Arc<Mutex<Retained>>,
    log: LogTarget,
    finished: bool,
    exited: bool,
}

impl EventStream {
    pub(crate) fn spawn(runc: &Runc, id: &str, interval: Duration) -> Result<EventStream> {
        let cfg = runc.config();
        let ctx = |what: &str| format!("runc events {id}: {what}");
        let log = LogTarget::prepare(cfg, true);
        let mut cmd = base_command(cfg, runc.global_args(), &log);
        // Go durations accept "ms"; whole milliseconds are plenty for a poll interval.
        cmd.arg("events")
            .arg(format!("--interval={}ms", interval.as_millis().max(1)))
            .arg(id);
        let out = client_pipe(cfg, &ctx)?;
        let err = client_pipe(cfg, &ctx)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out.write))
            .stderr(Stdio::from(err.write));
        let out_r = async_reader(out.read)?;
        let err_r = async_reader(err.read)?;
        let exits = runc.reaper().subscribe();
        let spawned = cmd.spawn();
        drop(cmd);
        let child = spawned.map_err(|source| Error::Spawn {
            command: "events",
            id: id.to_string(),
            binary: cfg.binary.clone(),
            source,
        })?;
        Reaper::notify_spawned();
        let pid = child.id() as i32;
        drop(child);

        let stderr = Arc::new(Mutex::new(Retained::new(cfg.output_limit)));
        let sink = stderr.clone();
        tokio::spawn(async move {
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
            lines: BufReader::new(out_r).lines(),
            exits,
            stderr,
            log,
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
            match self.lines.next_line().await {
                Ok(Some(line)) if line.trim().is_empty() => continue,
                Ok(Some(line)) if line.len() > MAX_LINE => {
                    return Some(Err(self.parse_error("event line too long".into())))
                }
                Ok(Some(line)) => {
                    return Some(
                        serde_json::from_str(&line).map_err(|e| self.parse_error(e.to_string())),
                    )
                }
                Ok(None) => return self.finish().await,
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
