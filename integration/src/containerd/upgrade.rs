//! What an operator changes on a live node, done to a running fixture: containerd replaced
//! by another generation on the same root and state, the runc binary swapped through
//! `BinaryName`, the sturdy binary replaced. Shims and containers keep running throughout.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Containerd, Generation, GO_SHIM_BINARY};
use crate::error::{IoContext, Result};

impl Containerd {
    /// Stops containerd and starts generation `g` on the same root, state, sockets and CNI
    /// network, with a config in `g`'s schema and `g`'s own Go shim as the `runc` handler,
    /// as an in-place upgrade (or downgrade) does. Shims and containers keep running.
    pub async fn restart_as(&mut self, g: Generation) -> Result<()> {
        // Before stopping anything: a generation this host cannot run leaves the old one up.
        let bins = g.binaries()?;
        self.stop_daemon();
        self.generation = g;
        self.bins = bins;
        if !self.sturdy_as_runc_v2 {
            // 1.6's Go shim is Debian's /usr/bin one; linking it too makes the swap explicit.
            let go_shim = self.bins.go_shim.clone();
            replace_symlink(&go_shim, &self.dir.join("bin").join(GO_SHIM_BINARY))?;
        }
        self.write_config()?;
        let _ = std::fs::remove_file(&self.socket);
        self.spawn()?;
        self.write_record()?;
        self.wait_ready(Duration::from_secs(30)).await?;
        self.wait_cri_ready(Duration::from_secs(30)).await
    }

    /// Waits until CRI answers: it says "server is not initialized yet" while it recovers
    /// pods after a start, for a moment after the gRPC Version call already answers.
    pub async fn wait_cri_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match self.cri().await {
                Ok(mut cri) => match cri.list_pods().await {
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(self.start_error(format!("CRI not ready after {timeout:?}: {err}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes both handlers run `binary` as their runc (`BinaryName`; `None`: `runc` on
    /// PATH) from now on. The sturdy handler's `ConfigPath` file is read at every create,
    /// so it takes effect for sturdy's next container at once; the `config.toml` change
    /// needs a [`Containerd::restart`], as on a real node.
    pub fn set_runc_binary(&mut self, binary: Option<PathBuf>) -> Result<()> {
        self.runc_binary = binary;
        self.write_config()
    }

    /// The runc binary both handlers are configured with (`None`: `runc` on PATH).
    pub fn runc_binary(&self) -> Option<&Path> {
        self.runc_binary.as_deref()
    }

    /// Points `<dir>/bin/containerd-shim-sturdy-v2` at another sturdy binary, as an
    /// operator replacing the installed file does. containerd caches the symlink's path,
    /// not its target, so the next shim it starts (and the next `delete` it runs) is the
    /// new binary, without a containerd restart; running shims keep their old binary.
    pub fn replace_shim_bin(&mut self, binary: impl Into<PathBuf>) -> Result<()> {
        self.shim_bin = binary.into();
        replace_symlink(&self.shim_bin, &self.shim_on_path())?;
        self.write_record()
    }

    /// Rewrites `config.toml` and `sturdy-runtime.toml` from the fixture's current settings
    /// (each replaced by a rename, so a shim reading it never sees half a file).
    fn write_config(&self) -> Result<()> {
        replace_file(&self.dir.join("config.toml"), &self.config_toml())?;
        replace_file(&self.sturdy_options_path(), &self.sturdy_options_toml())
    }
}

fn replace_file(path: &Path, content: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).ctx(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("renaming {} into place", tmp.display()))
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).ctx(|| format!("linking {}", tmp.display()))?;
    std::fs::rename(&tmp, link).ctx(|| format!("renaming {} into place", tmp.display()))
}
