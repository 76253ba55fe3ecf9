//! How to invoke runc: binary, global flags, deadlines and output bounds.

use std::path::PathBuf;
use std::time::Duration;

/// Per-command deadlines; a call still running at its deadline is killed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// Commands without a deadline of their own (pause, resume, update, ...).
    pub default: Duration,
    /// `create` (also bounds `runc init` setup).
    pub create: Duration,
    /// `start`.
    pub start: Duration,
    /// `exec` (the whole process when not detached).
    pub exec: Duration,
    /// `delete`.
    pub delete: Duration,
    /// `kill`.
    pub kill: Duration,
    /// Queries: `state`, `ps`, `events --stats`, `features`, `--version`.
    pub state: Duration,
    /// `checkpoint` and `restore`.
    pub checkpoint: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            default: Duration::from_secs(30),
            create: Duration::from_secs(60),
            start: Duration::from_secs(30),
            exec: Duration::from_secs(60),
            delete: Duration::from_secs(30),
            kill: Duration::from_secs(10),
            state: Duration::from_secs(10),
            checkpoint: Duration::from_secs(300),
        }
    }
}

/// Default number of bytes retained per output stream (head plus tail).
pub const DEFAULT_OUTPUT_LIMIT: usize = 64 * 1024;
/// Bytes of `runc ps` output retained: its JSON list must parse whole. 4 MiB lists over
/// 500,000 processes of 7-digit pids (64 KiB listed only ~9,000), more than any one
/// container holds in practice; memory is only taken as the output really comes.
pub const PS_OUTPUT_LIMIT: usize = 4 << 20;

/// Static configuration shared by every call a [`crate::Runc`] makes.
#[derive(Clone, Debug)]
pub struct RuncConfig {
    /// "runc", "crun", or a path to a runc-compatible binary.
    pub binary: PathBuf,
    /// --root: where the runtime keeps container state.
    pub root: Option<PathBuf>,
    /// --systemd-cgroup.
    pub systemd_cgroup: bool,
    /// `--rootless=true|false`; None leaves runc to decide.
    pub rootless: Option<bool>,
    /// --debug.
    pub debug: bool,
    /// --log file (always JSON); None uses stderr or a per-call temp file.
    pub log: Option<PathBuf>,
    /// Per-command deadlines.
    pub deadlines: Deadlines,
    /// Bytes retained per output stream (head plus tail).
    pub output_limit: usize,
    /// F_SETPIPE_SZ for the client's pipes; None keeps the kernel default.
    pub pipe_size: Option<usize>,
    /// The CRIU binary runc runs for checkpoint and restore: `criu` on PATH, or a path to a
    /// file named `criu`, whose directory is put first on runc's PATH. Not `--criu`: runc
    /// 1.2 and 1.3 ignore that flag (they run `criu` from PATH) and 1.4 rejects it, for
    /// every command. None leaves runc's default, `criu` on PATH.
    pub criu: Option<PathBuf>,
}

impl Default for RuncConfig {
    fn default() -> Self {
        RuncConfig {
            binary: PathBuf::from("runc"),
            root: None,
            systemd_cgroup: false,
            rootless: None,
            debug: false,
            log: None,
            deadlines: Deadlines::default(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
            pipe_size: None,
            criu: None,
        }
    }
}

impl RuncConfig {
    /// Defaults with another binary (e.g. "crun" or an absolute path).
    pub fn with_binary(binary: impl Into<PathBuf>) -> Self {
        RuncConfig {
            binary: binary.into(),
            ..Default::default()
        }
    }

    /// Global flags placed before every subcommand, except --log which is per call.
    pub(crate) fn global_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if let Some(root) = &self.root {
            args.push("--root".into());
            args.push(root.clone().into_os_string());
        }
        if self.systemd_cgroup {
            args.push("--systemd-cgroup".into());
        }
        if let Some(rootless) = self.rootless {
            args.push(format!("--rootless={rootless}").into());
        }
        if self.debug {
            args.push("--debug".into());
        }
        args
    }

    /// The PATH runc gets when [`Self::criu`] is a path: its directory first.
    pub(crate) fn criu_search_path(&self) -> Option<std::ffi::OsString> {
        let dir = self.criu.as_deref()?.parent()?;
        if dir.as_os_str().is_empty() {
            return None;
        }
        let inherited = std::env::var_os("PATH").unwrap_or_else(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        std::env::join_paths(
            std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&inherited)),
        )
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_args_follow_config() {
        let c = RuncConfig {
            root: Some("/run/x".into()),
            systemd_cgroup: true,
            rootless: Some(false),
            debug: true,
            criu: Some("/opt/criu".into()),
            ..Default::default()
        };
        let args: Vec<String> = c
            .global_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--root",
                "/run/x",
                "--systemd-cgroup",
                "--rootless=false",
                "--debug",
            ]
        );
        assert!(RuncConfig::default().global_args().is_empty());
        let path = c.criu_search_path().expect("a PATH");
        assert_eq!(
            std::env::split_paths(&path).next(),
            Some(std::path::PathBuf::from("/opt"))
        );
        let bare = RuncConfig {
            criu: Some("criu".into()),
            ..Default::default()
        };
        assert_eq!(bare.criu_search_path(), None);
    }
}
