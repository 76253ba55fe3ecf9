//! Fake runtimes: shell scripts standing in for runc, and guards for what they start.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use runc_client::{Reaper, Runc, RuncConfig};

/// A runtime that is a shell script in a private directory.
pub struct Fake {
    pub dir: tempfile::TempDir,
    pub runc: Runc,
}

impl Fake {
    /// A client whose runtime is `body`, run by /bin/sh; `$DIR` is the fake's private dir.
    pub fn new(body: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("runc");
        let text = format!("#!/bin/sh\nDIR='{}'\n{body}\n", dir.path().display());
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = RuncConfig {
            binary: script,
            pipe_size: Some(4096),
            ..Default::default()
        };
        Fake {
            runc: Runc::new(config, Reaper::global()),
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A stand-in CRIU in its own directory (runc runs `criu` from PATH, so the name counts;
    /// the fakes never run it).
    pub fn criu(&self) -> PathBuf {
        let criu = self.path("criu-bin").join("criu");
        if !criu.exists() {
            std::fs::create_dir_all(criu.parent().unwrap()).unwrap();
            std::fs::write(&criu, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&criu, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        criu
    }

    pub fn pids(&self, name: &str) -> Vec<i32> {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }
}

/// Kills, by pid, processes a fake started, even when the test fails first.
pub struct KillOnDrop(pub Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
    }
}

/// Running or sleeping; a zombie has already died and only waits for its reaper.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            state != Some(Some('Z')) && state != Some(Some('X'))
        }
        Err(_) => false,
    }
}

/// Polls `f` until it holds or `within` has passed; whether it held (checked once more at
/// the end).
pub async fn until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

pub async fn wait_dead(pid: i32, within: Duration) -> bool {
    until(within, || !alive(pid)).await
}

/// The next event, failing the test if the stream stalls.
pub async fn next(
    e: &mut runc_client::EventStream,
) -> Option<runc_client::Result<runc_client::Event>> {
    tokio::time::timeout(Duration::from_secs(5), e.next())
        .await
        .expect("event stream stalled")
}
