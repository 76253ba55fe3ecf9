//! The subcommands, one module each, and the options they share.

use std::path::PathBuf;

pub mod doctor;
pub mod install;
pub mod sandboxes;
pub mod status;
pub mod upgrade;
pub mod watchdog;

/// Where containerd and the journal are; shared by every subcommand that looks at shims.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// containerd's state directory (holding io.containerd.runtime.v2.task).
    #[arg(long, default_value = "/run/containerd")]
    pub state_dir: PathBuf,
    /// The watchdog's incident journal.
    #[arg(long, default_value = "/var/lib/sturdy/watchdog.journal")]
    pub journal: PathBuf,
    /// Runtime to watch (repeat to add more; io.containerd.sturdy.v2 is always watched).
    #[arg(long = "runtime", value_name = "NAME")]
    pub runtimes: Vec<String>,
    /// Where `upgrade-shims` marks the shims it pauses, for the watchdog.
    #[arg(long, default_value = sturdyctl::upgrading::DEFAULT_DIR)]
    pub upgrade_dir: PathBuf,
}

impl Target {
    /// The watched runtimes: sturdy plus every `--runtime`.
    pub fn runtimes(&self) -> Vec<String> {
        let mut all = vec!["io.containerd.sturdy.v2".to_string()];
        for r in &self.runtimes {
            if !all.contains(r) {
                all.push(r.clone());
            }
        }
        all
    }
}
