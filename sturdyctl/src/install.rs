//! `sturdyctl install` / `uninstall`: put sturdy's binaries into a directory on containerd's
//! PATH and add (or remove) the `sturdy` runtime in containerd's config.toml.
//!
//! Both are idempotent and check everything before they change anything. Files are replaced
//! by rename, never rewritten in place: a running shim keeps its old binary (its inode), and
//! a crash leaves the old file or the new one.
//!
//! Install writes only into directories only root can change ([`crate::trust::directory`]):
//! containerd runs as root whatever it finds in the bin dir and whatever config.toml says, so
//! a directory another user may write would hand that user root (security review 2026-12,
//! L19). Paths are host paths under `host_root`, the host's `/` as mounted where install
//! runs, and symlinks resolve as on the host ([`hostpath`]).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ctrconfig::{Config, ConfigError, RUNTIME_TYPE, SHIM_BINARY};
use crate::host::{Proc, Runner};
use crate::trust::Untrusted;

mod hostpath;

/// What `install` / `uninstall` act on.
#[derive(Debug, Clone)]
pub struct Options {
    /// The host's `/` as mounted here (`/` unless in a container); `config` and `bin_dir`
    /// are host paths under it.
    pub host_root: PathBuf,
    /// containerd's config.toml.
    pub config: PathBuf,
    /// Where the binaries go (must be on containerd's PATH).
    pub bin_dir: PathBuf,
    /// The shim binary to install (`containerd-shim-sturdy-v2` next to sturdyctl by default).
    pub shim: PathBuf,
    /// sturdyctl itself, installed next to the shim so the host can run `doctor` and the
    /// watchdog; `None` leaves it out.
    pub sturdyctl: Option<PathBuf>,
    /// The CRI handler name.
    pub handler: String,
    /// Say what would change, change nothing.
    pub dry_run: bool,
    /// Uninstall even while sturdy shims run.
    pub force: bool,
}

/// Why nothing (or not everything) was done.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The config cannot be edited.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file could not be read, written or removed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The binary given as the shim is not sturdy's.
    #[error("{path} is not sturdy's shim ({reason}); pass --shim PATH")]
    NotSturdyShim {
        /// The file.
        path: PathBuf,
        /// What `-v` said or why it could not run.
        reason: String,
    },
    /// A directory install would write to can be changed by others than root.
    #[error(
        "{what} {path} is not root's alone ({source}): containerd would run as root what \
         others put there; make it root-owned and not group- or world-writable \
         (chown root: DIR; chmod go-w DIR), or choose another"
    )]
    Untrusted {
        /// Which directory (`--bin-dir`, the config's directory).
        what: &'static str,
        /// The directory.
        path: PathBuf,
        /// Why it is not trusted.
        source: Untrusted,
    },
    /// sturdy shims still run: removing the runtime would strand their pods.
    #[error(
        "{count} sturdy shim(s) still run from {path} (pids {pids:?}): drain the node or delete \
         their pods first, or pass --force",
        count = pids.len()
    )]
    ShimsRunning {
        /// The installed shim.
        path: PathBuf,
        /// Their pids.
        pids: Vec<i32>,
    },
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { path, op, source }
}

/// What happened to one binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// It was not there and now is.
    Installed,
    /// A different file was replaced.
    Replaced,
    /// The same bytes were already there.
    Unchanged,
    /// It was removed.
    Removed,
    /// There was nothing to remove.
    Absent,
}

/// One binary's fate.
#[derive(Debug, Clone, Serialize)]
pub struct BinaryChange {
    /// Where it is (or was) installed.
    pub path: PathBuf,
    /// What was (or, in a dry run, would be) done.
    pub action: Action,
}

/// The result of an install or uninstall.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Nothing was written.
    pub dry_run: bool,
    /// The binaries.
    pub binaries: Vec<BinaryChange>,
    /// The config file.
    pub config: PathBuf,
    /// Whether the config changed (or would).
    pub config_changed: bool,
    /// Unified diff of the config change ("" when none).
    pub diff: String,
    /// Whether containerd must be restarted for the change to take effect.
    pub restart_needed: bool,
    /// Things the operator should know.
    pub notes: Vec<String>,
}

/// Reads and parses the config, refusing a missing one. Returns where the file is here.
fn read_config(opts: &Options) -> Result<(PathBuf, String, Config), InstallError> {
    let path = &opts.config;
    // Edit the file a symlinked config points at, never replace the link.
    let real = hostpath::resolve_in_root(&opts.host_root, path).map_err(io(
        path,
        "read (create it with `containerd config default`)",
    ))?;
    let text = std::fs::read_to_string(&real).map_err(io(&real, "read"))?;
    let config = Config::parse(path, &text)?;
    Ok((real, text, config))
}

/// Checks that only root can change the directory `here`.
fn trusted_dir(what: &'static str, here: &Path) -> Result<(), InstallError> {
    crate::trust::directory(here)
        .map(|_| ())
        .map_err(|source| InstallError::Untrusted {
            what,
            path: here.to_path_buf(),
            source,
        })
}

/// The config's directories (where the name is and where the file is) and the bin dir (or
/// its deepest existing ancestor) must be root's alone. Returns where the bin dir is here.
fn check_dirs(opts: &Options, config_here: &Path) -> Result<PathBuf, InstallError> {
    let root = &opts.host_root;
    if let Some(dir) = opts.config.parent() {
        let here = hostpath::resolve_in_root(root, dir).map_err(io(dir, "resolve"))?;
        trusted_dir("the config's directory", &here)?;
    }
    if let Some(dir) = config_here.parent() {
        trusted_dir("the config's directory", dir)?;
    }
    let (base, missing) =
        hostpath::existing_ancestor(root, &opts.bin_dir).map_err(io(&opts.bin_dir, "resolve"))?;
    trusted_dir("--bin-dir", &base)?;
    Ok(base.join(missing))
}

fn diff(path: &Path, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let name = path.display().to_string();
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&name, &name)
        .to_string()
}

/// Checks that `shim` answers `-v` as sturdy's shim.
pub fn verify_shim(shim: &Path, runner: &dyn Runner) -> Result<(), InstallError> {
    match runner.run(shim, &["-v"]) {
        Ok(text) if text.contains(RUNTIME_TYPE) => Ok(()),
        Ok(text) => Err(InstallError::NotSturdyShim {
            path: shim.to_path_buf(),
            reason: format!("-v said {:?}", text.lines().next().unwrap_or_default()),
        }),
        Err(e) => Err(InstallError::NotSturdyShim {
            path: shim.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Installs the binaries and adds the runtime.
pub fn install(opts: &Options, runner: &dyn Runner) -> Result<Outcome, InstallError> {
    let (real, old, mut config) = read_config(opts)?;
    let bin_dir = check_dirs(opts, &real)?;
    let changed = config.add_runtime(&opts.handler, &old)?;
    let new = config.render();
    verify_shim(&opts.shim, runner)?;
    let mut sources = vec![(opts.shim.clone(), SHIM_BINARY)];
    if let Some(ctl) = &opts.sturdyctl {
        sources.push((ctl.clone(), "sturdyctl"));
    }
    if !opts.dry_run && !bin_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&bin_dir)
            .map_err(io(&bin_dir, "create directory"))?;
        trusted_dir("--bin-dir", &bin_dir)?;
    }
    let mut binaries = Vec::new();
    for (src, name) in sources {
        let action = place_binary(&src, &bin_dir.join(name), opts.dry_run)?;
        binaries.push(BinaryChange {
            path: opts.bin_dir.join(name),
            action,
        });
    }
    if changed && !opts.dry_run {
        write_atomic(&real, new.as_bytes(), None)?;
    }
    let mut notes = Vec::new();
    if changed {
        notes.push(
            "restart containerd to load the runtime (running containers keep running), then \
             check with `sturdyctl doctor`"
                .to_string(),
        );
    }
    if !config.imports().is_empty() {
        notes.push(format!(
            "{} imports other files; a `{}` runtime defined there as well would override this one",
            opts.config.display(),
            opts.handler
        ));
    }
    Ok(Outcome {
        dry_run: opts.dry_run,
        binaries,
        config: opts.config.clone(),
        config_changed: changed,
        diff: diff(&opts.config, &old, &new),
        restart_needed: changed,
        notes,
    })
}

/// Removes the runtime, then the binaries.
pub fn uninstall(opts: &Options, processes: &[Proc]) -> Result<Outcome, InstallError> {
    let shim = opts.bin_dir.join(SHIM_BINARY);
    // Only root's processes are shims of containerd: anyone may run the installed binary,
    // and that must not stop an uninstall (security review 2026-12, L18).
    let pids: Vec<i32> = processes
        .iter()
        .filter(|p| {
            p.uids == Some((0, 0))
                && p.exe
                    .as_ref()
                    .is_some_and(|e| crate::procfs::live_path(e) == shim)
        })
        .map(|p| p.pid)
        .collect();
    if !pids.is_empty() && !opts.force {
        return Err(InstallError::ShimsRunning { path: shim, pids });
    }
    let mut notes = Vec::new();
    let (changed, diff_text) = match read_config(opts) {
        Ok((real, old, mut config)) => {
            let changed = config.remove_runtime(&opts.handler, &old)?;
            let new = config.render();
            if changed && !opts.dry_run {
                write_atomic(&real, new.as_bytes(), None)?;
            }
            (changed, diff(&opts.config, &old, &new))
        }
        Err(InstallError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            notes.push(format!(
                "{} does not exist: no runtime to remove",
                opts.config.display()
            ));
            (false, String::new())
        }
        Err(e) => return Err(e),
    };
    let mut binaries = Vec::new();
    let mut names = vec![SHIM_BINARY];
    if opts.sturdyctl.is_some() {
        names.push("sturdyctl");
    }
    let bin_dir = match hostpath::resolve_in_root(&opts.host_root, &opts.bin_dir) {
        Ok(here) => Some(here),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&opts.bin_dir, "resolve")(e)),
    };
    for name in names {
        let path = opts.bin_dir.join(name);
        let here = bin_dir.as_ref().map(|d| d.join(name));
        let action = match here.as_ref().map(std::fs::symlink_metadata) {
            None => Action::Absent,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Action::Absent,
            Some(Err(e)) => return Err(io(&path, "stat")(e)),
            Some(Ok(_)) => {
                if !opts.dry_run {
                    if let Some(here) = &here {
                        std::fs::remove_file(here).map_err(io(here, "remove"))?;
                    }
                }
                Action::Removed
            }
        };
        binaries.push(BinaryChange { path, action });
    }
    if !pids.is_empty() {
        notes.push(format!(
            "shims {pids:?} still run from the removed binary; containerd cannot run their \
             `delete` any more: stop their pods soon"
        ));
    }
    if changed {
        notes.push("restart containerd: it still routes the handler until then".to_string());
    }
    Ok(Outcome {
        dry_run: opts.dry_run,
        binaries,
        config: opts.config.clone(),
        config_changed: changed,
        diff: diff_text,
        restart_needed: changed,
        notes,
    })
}

/// Copies `src` to `dest` (mode 0755) unless the same bytes are already there.
fn place_binary(src: &Path, dest: &Path, dry_run: bool) -> Result<Action, InstallError> {
    // Installing the running sturdyctl onto itself is a no-op, not a self-overwrite.
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(src), std::fs::canonicalize(dest)) {
        if a == b {
            return Ok(Action::Unchanged);
        }
    }
    let bytes = std::fs::read(src).map_err(io(src, "read"))?;
    let action = match std::fs::read(dest) {
        Ok(existing) if existing == bytes => {
            let mode = std::fs::metadata(dest).map_err(io(dest, "stat"))?.mode() & 0o7777;
            if mode == 0o755 {
                return Ok(Action::Unchanged);
            }
            Action::Replaced
        }
        Ok(_) => Action::Replaced,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Action::Installed,
        Err(e) => return Err(io(dest, "read")(e)),
    };
    if !dry_run {
        write_atomic(dest, &bytes, Some(0o755))?;
    }
    Ok(action)
}

/// Writes `bytes` to a temp file next to `path`, syncs it, renames it over `path` and syncs
/// the directory. The mode (and owner) are `mode`, else those of the file replaced.
fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.sturdyctl-{}", std::process::id()));
    let old = std::fs::metadata(path).ok();
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp, "create"))?;
        f.write_all(bytes).map_err(io(&tmp, "write"))?;
        let perm = mode
            .or(old.as_ref().map(|m| m.mode() & 0o7777))
            .unwrap_or(0o644);
        f.set_permissions(std::fs::Permissions::from_mode(perm))
            .map_err(io(&tmp, "chmod"))?;
        if let (None, Some(m)) = (mode, &old) {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))
                .map_err(io(&tmp, "chown"))?;
        }
        f.sync_all().map_err(io(&tmp, "fsync"))?;
        std::fs::rename(&tmp, path).map_err(io(path, "rename into place"))
    })();
    if result.is_err() {
        if let Err(e) = std::fs::remove_file(&tmp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("{}: remove temp file: {e}", tmp.display());
            }
        }
        return result;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "fsync directory"))
}

#[cfg(test)]
mod tests;
