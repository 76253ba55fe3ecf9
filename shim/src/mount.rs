//! Mounting a container's rootfs from containerd's `Mount` list, and unmounting it.
//!
//! Every failure comes back as a [`MountError`] naming the mount: nothing here may end the
//! daemon, which serves other containers. Overlay options longer than mount(2) accepts (one
//! page) are shortened to paths relative to the layers' common parent directory, and that
//! mount is made by a forked helper which changes into that directory first, so the
//! daemon's own working directory never moves (see [`helper`]). Mounts carrying
//! containerd's `uidmap=`/`gidmap=` options (pods with their own user namespace) are made
//! idmapped (see [`idmapped`]).

mod detached;
mod helper;
mod idmap;
mod idmapped;
mod overlay;
mod plan;
mod userns;

use std::path::{Path, PathBuf};

use containerd_shim_protos::types::mount::Mount;
use nix::errno::Errno;
use nix::mount::MntFlags;
use runc_client::Reaper;

pub use idmap::{IdMapError, IdMaps, Range, MAX_RANGES};
pub use idmapped::{idmap_support, Missing, SCRATCH_PREFIX};
pub use plan::{parse_options, MountOptions};

/// Most mounts stacked on one target that [`unmount`] will peel off.
const MAX_STACKED: usize = 64;

/// Why a mount or unmount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// An option word this shim recognises but does not implement.
    #[error("mount {mount}: option {option:?} is not supported by containerd-shim-sturdy-v2")]
    Unsupported { mount: String, option: String },
    /// The mount's `target` would leave the rootfs, or a value cannot be passed to the kernel.
    #[error("mount {mount}: {reason}")]
    Invalid { mount: String, reason: String },
    /// The filesystem data does not fit in the page mount(2) copies, even shortened.
    #[error("mount {mount}: options are {len} bytes, more than the {limit} bytes mount(2) accepts{hint}")]
    TooLong {
        mount: String,
        len: usize,
        limit: usize,
        hint: &'static str,
    },
    /// The mount helper could not change into the layers' common directory.
    #[error("mount {mount}: chdir to {}: {source}", dir.display())]
    Chdir {
        mount: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A mount(2) call failed; `step` says which one.
    #[error("mount {mount}: {step}: {source}")]
    Syscall {
        mount: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The `uidmap=`/`gidmap=` options cannot be used as given.
    #[error("mount {mount}: {source}")]
    IdMap {
        mount: String,
        #[source]
        source: IdMapError,
    },
    /// A step of making an idmapped mount failed; `missing` names what the kernel lacks
    /// when the errno says so.
    #[error(
        "mount {mount}: idmapped mount: {step}{}: {source}{}",
        at(path),
        lacks(missing)
    )]
    Idmapped {
        mount: String,
        step: &'static str,
        path: PathBuf,
        missing: Option<Missing>,
        #[source]
        source: std::io::Error,
    },
    /// The forked mount helper could not be run or did not report properly.
    #[error("mount {mount}: mount helper: {reason}")]
    Helper { mount: String, reason: String },
    /// Unmounting failed for another reason than "not mounted".
    #[error("unmount {}: {source}", target.display())]
    Unmount {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<MountError> for std::io::Error {
    /// Keeps the typed error inside, with a kind the ttrpc mapping understands.
    fn from(e: MountError) -> Self {
        let kind = match &e {
            MountError::Unsupported { .. }
            | MountError::Invalid { .. }
            | MountError::IdMap { .. }
            | MountError::TooLong { .. } => std::io::ErrorKind::InvalidInput,
            MountError::Chdir { source, .. }
            | MountError::Idmapped { source, .. }
            | MountError::Syscall { source, .. }
            | MountError::Unmount { source, .. } => source.kind(),
            MountError::Helper { .. } => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// " PATH" after a step, or nothing for a step without one.
fn at(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!(" {}", path.display())
    }
}

/// What the kernel lacks, when known.
fn lacks(missing: &Option<Missing>) -> String {
    missing
        .map(|m| format!(" (the kernel lacks {m})"))
        .unwrap_or_default()
}

/// Mounts `mounts` in order onto `rootfs` (or, for a mount with a `target`, onto that path
/// inside it). On failure the mounts made so far are undone, newest first.
pub async fn mount_all(mounts: &[Mount], rootfs: &Path, reaper: &Reaper) -> Result<(), MountError> {
    let rootfs = absolute(rootfs);
    let mut done: Vec<PathBuf> = Vec::new();
    for m in mounts {
        match mount_one(m, &rootfs, reaper).await {
            Ok(target) => done.push(target),
            Err(e) => {
                for target in done.iter().rev() {
                    if let Err(undo) = detach_once(target) {
                        log::warn!("undoing mounts after \"{e}\": {undo}");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Makes one mount and returns where it went.
async fn mount_one(m: &Mount, rootfs: &Path, reaper: &Reaper) -> Result<PathBuf, MountError> {
    let (maps, options) = IdMaps::take(&m.options).map_err(|source| MountError::IdMap {
        mount: plan::describe(m, rootfs),
        source,
    })?;
    if let Some(maps) = maps {
        let stripped = Mount {
            options,
            ..m.clone()
        };
        return idmapped::mount(&stripped, maps, rootfs, reaper).await;
    }
    run(plan::Plan::new(m, rootfs)?, reaper).await
}

/// Makes the mount `plan` describes and returns where it went.
async fn run(plan: plan::Plan, reaper: &Reaper) -> Result<PathBuf, MountError> {
    let target = plan.target_path().to_path_buf();
    if plan.needs_helper() {
        helper::run(&plan, reaper).await?;
    } else {
        // mount(2) can take long (a journal replay, a slow bind source): keep it off the
        // runtime thread.
        let name = plan.name().to_string();
        runc_client::blocking::run("mount", move || plan.run_here())
            .await
            .map_err(|e| MountError::Helper {
                mount: name,
                reason: format!("mount thread: {e}"),
            })??;
    }
    Ok(target)
}

/// How every unmount here is made: lazily, and never through a symlink, so a path swapped
/// for a link cannot make the shim unmount something else (nothing is mounted on the link
/// itself, which counts as "not mounted").
const UNMOUNT_FLAGS: MntFlags = MntFlags::MNT_DETACH.union(MntFlags::UMOUNT_NOFOLLOW);

/// Unmounts everything stacked on `target` (lazily, MNT_DETACH); "not mounted" and a
/// missing target count as done.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    for _ in 0..MAX_STACKED {
        match nix::mount::umount2(target, UNMOUNT_FLAGS) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(MountError::Unmount {
                    target: target.to_path_buf(),
                    source: e.into(),
                })
            }
        }
    }
    Err(MountError::Unmount {
        target: target.to_path_buf(),
        source: std::io::Error::other(format!("still mounted after {MAX_STACKED} unmounts")),
    })
}

/// Removes the topmost mount at `target` only: layers below may not be ours.
fn detach_once(target: &Path) -> Result<(), MountError> {
    match nix::mount::umount2(target, UNMOUNT_FLAGS) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(MountError::Unmount {
            target: target.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// The helper changes directory before mounting, so relative targets would move with it.
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(path),
        Err(_) => path.to_path_buf(),
    }
}

/// Largest filesystem data mount(2) takes: one page, NUL included.
fn data_limit() -> usize {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096);
    page as usize - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `path` is a mount point (its own line in /proc/self/mountinfo).
    fn is_mount_point(path: &Path) -> bool {
        let path = path.to_string_lossy();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&*path))
    }

    /// Unmounts what the test mounted, however it ends.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            while nix::mount::umount2(&self.0, MntFlags::MNT_DETACH).is_ok() {}
        }
    }

    /// A symlink in place of the rootfs is not followed: what it points to stays mounted,
    /// while the mount point itself is unmounted, however many mounts are stacked on it.
    #[test]
    fn unmount_never_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        let tmpfs = || {
            nix::mount::mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("size=64k"),
            )
        };
        if let Err(e) = tmpfs() {
            test_skip::skip!("cannot mount a tmpfs here: {e}");
        }
        let _mounted = Mounted(target.clone());
        tmpfs().unwrap();
        let link = dir.path().join("rootfs");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        unmount(&link).unwrap();
        detach_once(&link).unwrap();
        assert!(is_mount_point(&target), "unmounted through the symlink");
        unmount(&target).unwrap();
        assert!(
            !is_mount_point(&target),
            "both stacked mounts should be gone"
        );
    }
}
