//! Idmapped rootfs mounts: the `uidmap=`/`gidmap=` options of a `hostUsers: false` pod,
//! made the way containerd's own mount code makes them (2.2 and later).
//!
//! - overlay: the lower layers are idmapped, the overlay itself is not. A detached,
//!   read-only, idmapped copy of the layers' common parent directory (the snapshotter's
//!   `snapshots`; recursive, as containerd 2.3 does) is attached in a private scratch
//!   directory of the bundle, the lowerdir list is rewritten through it, overlayfs is
//!   mounted, and the scratch mount is removed again: overlayfs holds private clones of
//!   its layers, so the overlay outlives it. The upper and work directories are left
//!   alone: the snapshotter made the upper directory's root owned by the mapped root, the
//!   container's writes land there with their host ids, and containerd's diff and commit
//!   of the snapshot expect exactly that.
//! - bind (a snapshot without parents): the source tree is cloned, idmapped (with the
//!   bind's flags as mount attributes) and attached on the target in one step, so the
//!   target is never visible unmapped or writable when it should not be.
//!
//! The layers are attached rather than handed to overlayfs as `/proc/self/fd/N` of the
//! detached mounts: that works on this Linux 6.18 machine, but overlayfs takes layers on
//! detached mounts only since 6.15, while idmapped layers work since 5.19.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use containerd_shim_protos::types::mount::Mount;
use nix::errno::Errno;
use nix::mount::MsFlags;
use runc_client::Reaper;

use super::detached::{self, Attrs};
use super::idmap::{IdMapError, IdMaps, Range};
use super::overlay::{common_parent, split_layers};
use super::plan::{self, Plan};
use super::{detach_once, userns, MountError, UNMOUNT_FLAGS};

/// What the kernel lacks, when a failed call's errno says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    UserNamespaces,
    MountApi,
    MountSetattr,
    FilesystemIdmap,
    OverlayIdmappedLayers,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Missing::UserNamespaces => {
                "user namespaces (CONFIG_USER_NS, or user.max_user_namespaces is used up)"
            }
            Missing::MountApi => "open_tree(2)/move_mount(2), Linux 5.2+",
            Missing::MountSetattr => "mount_setattr(2), Linux 5.12+",
            Missing::FilesystemIdmap => {
                "idmapped-mount support (MOUNT_ATTR_IDMAP) in this filesystem or kernel"
            }
            Missing::OverlayIdmappedLayers => {
                "overlayfs on idmapped lower layers (Linux 5.19+), if the options are otherwise valid"
            }
        })
    }
}

const OPEN_TREE: &str = "open_tree";
const SETATTR: &str = "mount_setattr";
const MOVE: &str = "move_mount";
const OVERLAY: &str = "mount overlay on the idmapped layers";

fn missing(step: &str, errno: Option<i32>) -> Option<Missing> {
    Some(match (step, errno?) {
        (userns::CLONE_STEP, libc::EINVAL | libc::ENOSPC | libc::EUSERS) => Missing::UserNamespaces,
        (OPEN_TREE | MOVE, libc::ENOSYS) => Missing::MountApi,
        (SETATTR, libc::ENOSYS) => Missing::MountSetattr,
        (SETATTR, libc::EINVAL) => Missing::FilesystemIdmap,
        (OVERLAY, libc::EINVAL) => Missing::OverlayIdmappedLayers,
        _ => return None,
    })
}

fn failed(mount: &str, step: &'static str, path: &Path, source: std::io::Error) -> MountError {
    MountError::Idmapped {
        mount: mount.to_string(),
        step,
        path: path.to_path_buf(),
        missing: missing(step, source.raw_os_error()),
        source,
    }
}

fn invalid(mount: &str, reason: String) -> MountError {
    MountError::Invalid {
        mount: mount.to_string(),
        reason,
    }
}

fn thread_failed(mount: &str, e: std::io::Error) -> MountError {
    MountError::Helper {
        mount: mount.to_string(),
        reason: format!("idmap thread: {e}"),
    }
}

/// Makes `m` (its uidmap/gidmap words already taken out as `maps`) idmapped under
/// `rootfs`, whose parent directory (the bundle) holds the scratch directory.
pub(super) async fn mount(
    m: &Mount,
    maps: IdMaps,
    rootfs: &Path,
    reaper: &Reaper,
) -> Result<PathBuf, MountError> {
    if m.type_ == "overlay" {
        return overlay(m, maps, rootfs, reaper).await;
    }
    let plan = Plan::new(m, rootfs)?;
    if !plan.bind_parts().2.contains(MsFlags::MS_BIND) {
        return Err(MountError::IdMap {
            mount: plan.name().to_string(),
            source: IdMapError::UnsupportedType {
                kind: m.type_.clone(),
            },
        });
    }
    let target = plan.target_path().to_path_buf();
    let name = plan.name().to_string();
    let reaper = reaper.clone();
    runc_client::blocking::run("idmap", move || {
        let ns = new_userns(plan.name(), &maps, &reaper)?;
        idmapped_bind(&plan, ns.as_fd())
    })
    .await
    .map_err(|e| thread_failed(&name, e))??;
    Ok(target)
}

fn new_userns(mount: &str, maps: &IdMaps, reaper: &Reaper) -> Result<OwnedFd, MountError> {
    userns::create(maps, reaper).map_err(|e| failed(mount, e.step, Path::new(""), e.source))
}

async fn overlay(
    m: &Mount,
    maps: IdMaps,
    rootfs: &Path,
    reaper: &Reaper,
) -> Result<PathBuf, MountError> {
    let name = plan::describe(m, rootfs);
    let bundle = rootfs.parent().unwrap_or(rootfs).to_path_buf();
    let (options, thread_name, thread_reaper) = (m.options.clone(), name.clone(), reaper.clone());
    let (scratch, options) = runc_client::blocking::run("idmap", move || {
        let ns = new_userns(&thread_name, &maps, &thread_reaper)?;
        idmap_lowers(&thread_name, &options, &bundle, ns.as_fd())
    })
    .await
    .map_err(|e| thread_failed(&name, e))??;
    let rewritten = Mount {
        options,
        ..m.clone()
    };
    let mounted = match Plan::new(&rewritten, rootfs) {
        Ok(plan) => super::run(plan, reaper).await.map_err(|e| match e {
            MountError::Syscall {
                mount,
                step: "mount",
                source,
            } => failed(&mount, OVERLAY, rootfs, source),
            e => e,
        }),
        Err(e) => Err(e),
    };
    match (mounted, scratch.remove()) {
        (Ok(target), Ok(())) => Ok(target),
        (Ok(target), Err(e)) => {
            // A scratch mount left behind would keep the bundle busy: fail, undone.
            if let Err(undo) = detach_once(&target) {
                log::warn!("undoing the overlay after \"{e}\": {undo}");
            }
            Err(e)
        }
        (Err(e), cleaned) => {
            if let Err(c) = cleaned {
                log::warn!("after \"{e}\": {c}");
            }
            Err(e)
        }
    }
}

const LOWER: &str = "lowerdir=";

/// Idmaps the lower layers named in `options` into a scratch directory in `bundle` and
/// returns it with the options rewritten through it.
fn idmap_lowers(
    name: &str,
    options: &[String],
    bundle: &Path,
    ns: BorrowedFd<'_>,
) -> Result<(Scratch, Vec<String>), MountError> {
    let mut index = None;
    for (i, w) in options.iter().enumerate() {
        if w.starts_with("lowerdir+=") || w.starts_with("datadir+=") {
            return Err(invalid(
                name,
                format!("{w:?}: only lowerdir= layers can be idmapped"),
            ));
        }
        if w.starts_with(LOWER) && index.replace(i).is_some() {
            return Err(invalid(name, "more than one lowerdir= option".into()));
        }
    }
    let index = index.ok_or_else(|| invalid(name, "an idmapped overlay needs lowerdir=".into()))?;
    let layers = split_layers(&options[index][LOWER.len()..]);
    let paths: Vec<&str> = layers.iter().copied().filter(|p| !p.is_empty()).collect();
    for p in &paths {
        let path = Path::new(p);
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(invalid(
                name,
                format!("lower layer {p:?} is not an absolute path without '..'"),
            ));
        }
    }
    // One idmapped mount for all layers when they share a directory (the snapshotter's
    // `snapshots`), one per layer otherwise.
    let roots: Vec<PathBuf> = match common_parent(&paths) {
        Some(dir) => vec![dir],
        None => {
            let mut each: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
            each.dedup();
            each
        }
    };
    if roots.is_empty() {
        return Err(invalid(name, "lowerdir= names no layer".into()));
    }
    if let Some(r) = roots
        .iter()
        .find(|r| r.as_os_str().as_bytes().contains(&b'\\'))
    {
        return Err(invalid(
            name,
            format!(
                "cannot idmap {}: escaped characters in its path",
                r.display()
            ),
        ));
    }
    let mut scratch = Scratch::create(name, bundle)?;
    let mut points = Vec::with_capacity(roots.len());
    for root in &roots {
        points.push(scratch.idmap(root, ns)?);
    }
    let through = |p: &str| -> Option<String> {
        roots.iter().zip(&points).find_map(|(root, point)| {
            let rel = Path::new(p).strip_prefix(root).ok()?;
            point.join(rel).to_str().map(str::to_owned)
        })
    };
    let mut rewritten = Vec::with_capacity(layers.len());
    for p in layers {
        rewritten.push(if p.is_empty() {
            String::new()
        } else {
            through(p)
                .ok_or_else(|| invalid(name, format!("lower layer {p:?} not under its root")))?
        });
    }
    let mut out = options.to_vec();
    out[index] = format!("{LOWER}{}", rewritten.join(":"));
    Ok((scratch, out))
}

/// Distinguishes scratch directories of one shim process.
static SCRATCH_SEQ: AtomicU64 = AtomicU64::new(0);
/// Prefix of a scratch directory in the bundle; `delete` sweeps leftovers by it.
pub const SCRATCH_PREFIX: &str = ".sturdy-idmap-";

/// A private directory in the bundle holding idmapped layer mounts while the overlay is
/// mounted. Removed with everything in it by [`Scratch::remove`], or when dropped on an
/// early return, a cancelled create or a panic.
pub(super) struct Scratch {
    mount: String,
    dir: PathBuf,
    dirfd: OwnedFd,
    /// Mount points made so far, with whether something is attached there.
    points: Vec<(PathBuf, bool)>,
    removed: bool,
}

impl Scratch {
    fn create(mount: &str, bundle: &Path) -> Result<Scratch, MountError> {
        let pid = std::process::id();
        let mut last = None;
        for _ in 0..16 {
            let n = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
            let dir = bundle.join(format!("{SCRATCH_PREFIX}{pid}-{n}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let opened = nix::fcntl::open(
                        &dir,
                        nix::fcntl::OFlag::O_DIRECTORY
                            | nix::fcntl::OFlag::O_NOFOLLOW
                            | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    );
                    return match opened {
                        Ok(dirfd) => Ok(Scratch {
                            mount: mount.to_string(),
                            dir,
                            dirfd,
                            points: Vec::new(),
                            removed: false,
                        }),
                        Err(e) => {
                            let _ = std::fs::remove_dir(&dir);
                            Err(failed(mount, "open scratch directory", &dir, e.into()))
                        }
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(failed(mount, "create scratch directory", &dir, e)),
            }
        }
        let e = last.unwrap_or_else(|| std::io::Error::other("no free name"));
        Err(failed(mount, "create scratch directory", bundle, e))
    }

    /// Attaches a read-only, idmapped copy of the tree at `root` on a new mount point here.
    fn idmap(&mut self, root: &Path, ns: BorrowedFd<'_>) -> Result<PathBuf, MountError> {
        let k = self.points.len();
        let point = self.dir.join(k.to_string());
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&point)
            .map_err(|e| failed(&self.mount, "create scratch mount point", &point, e))?;
        self.points.push((point.clone(), false));
        let root_c = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| invalid(&self.mount, "a layer path contains a NUL byte".into()))?;
        let tree = detached::clone_tree(&root_c, true)
            .map_err(|e| failed(&self.mount, OPEN_TREE, root, e))?;
        let attrs = Attrs {
            set: libc::MOUNT_ATTR_RDONLY,
            clear: 0,
            propagation: MsFlags::MS_PRIVATE.bits(),
            recursive: true,
        };
        detached::set_attrs(tree.as_fd(), attrs, Some(ns))
            .map_err(|e| failed(&self.mount, SETATTR, root, e))?;
        let name = CString::new(k.to_string()).unwrap_or_default();
        detached::attach(tree.as_fd(), self.dirfd.as_fd(), &name)
            .map_err(|e| failed(&self.mount, MOVE, &point, e))?;
        self.points[k].1 = true;
        Ok(point)
    }

    /// Unmounts and removes everything; the first failure is returned, the rest is still
    /// tried.
    pub(super) fn remove(mut self) -> Result<(), MountError> {
        self.remove_all()
    }

    fn remove_all(&mut self) -> Result<(), MountError> {
        self.removed = true;
        let mut first = None;
        for (point, attached) in self.points.iter().rev() {
            if *attached {
                match nix::mount::umount2(point, UNMOUNT_FLAGS) {
                    Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                    Err(e) => {
                        first.get_or_insert(MountError::Unmount {
                            target: point.clone(),
                            source: e.into(),
                        });
                        // Never remove a directory that may still show the layers.
                        continue;
                    }
                }
            }
            if let Err(e) = remove_dir(point) {
                first.get_or_insert(failed(&self.mount, "remove scratch mount point", point, e));
            }
        }
        if first.is_none() {
            if let Err(e) = remove_dir(&self.dir) {
                first = Some(failed(
                    &self.mount,
                    "remove scratch directory",
                    &self.dir,
                    e,
                ));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn remove_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.remove_all() {
                log::warn!("{e}");
            }
        }
    }
}

/// The bind's flags as mount attributes (set, clear), or the flags that have none.
fn bind_attrs(flags: MsFlags) -> Result<(u64, u64), MsFlags> {
    use MsFlags as F;
    let extra = flags
        - (F::MS_BIND
            | F::MS_REC
            | F::MS_RDONLY
            | F::MS_NOSUID
            | F::MS_NODEV
            | F::MS_NOEXEC
            | F::MS_NOATIME
            | F::MS_NODIRATIME
            | F::MS_RELATIME
            | F::MS_STRICTATIME);
    if !extra.is_empty() {
        return Err(extra);
    }
    let mut set = 0;
    for (flag, attr) in [
        (F::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
        (F::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
        (F::MS_NODEV, libc::MOUNT_ATTR_NODEV),
        (F::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
        (F::MS_NODIRATIME, libc::MOUNT_ATTR_NODIRATIME),
    ] {
        if flags.contains(flag) {
            set |= attr;
        }
    }
    // The atime modes are one field: setting one means clearing the field first.
    let atime = if flags.contains(F::MS_NOATIME) {
        Some(libc::MOUNT_ATTR_NOATIME)
    } else if flags.contains(F::MS_STRICTATIME) {
        Some(libc::MOUNT_ATTR_STRICTATIME)
    } else if flags.contains(F::MS_RELATIME) {
        Some(libc::MOUNT_ATTR_RELATIME)
    } else {
        None
    };
    Ok(match atime {
        Some(a) => (set | a, libc::MOUNT_ATTR__ATIME),
        None => (set, 0),
    })
}

fn idmapped_bind(plan: &Plan, ns: BorrowedFd<'_>) -> Result<(), MountError> {
    let name = plan.name();
    let (source, target, flags, propagation) = plan.bind_parts();
    let source = source.ok_or_else(|| invalid(name, "a bind mount needs a source".into()))?;
    let source_path = Path::new(std::ffi::OsStr::from_bytes(source.to_bytes()));
    let (set, clear) = bind_attrs(flags).map_err(|extra| {
        invalid(
            name,
            format!("{extra:?} cannot be applied to an idmapped bind mount"),
        )
    })?;
    let recursive = flags.contains(MsFlags::MS_REC);
    let tree = detached::clone_tree(source, recursive)
        .map_err(|e| failed(name, OPEN_TREE, source_path, e))?;
    // mount_setattr takes the propagation type alone; recursion is AT_RECURSIVE.
    let propagation = match propagation - MsFlags::MS_REC {
        p if p.is_empty() => MsFlags::MS_PRIVATE,
        p => p,
    };
    let attrs = Attrs {
        set,
        clear,
        propagation: propagation.bits(),
        recursive,
    };
    detached::set_attrs(tree.as_fd(), attrs, Some(ns))
        .map_err(|e| failed(name, SETATTR, source_path, e))?;
    detached::attach_at(tree.as_fd(), target).map_err(|e| failed(name, MOVE, plan.target_path(), e))
}

/// Whether this kernel can make idmapped mounts: a user namespace, and
/// mount_setattr(MOUNT_ATTR_IDMAP) on a detached tmpfs (Linux 6.3+) or, failing that, on
/// a detached copy of `/`. Nothing is ever attached; closing the fds removes it all.
pub fn idmap_support(reaper: &Reaper) -> Result<(), MountError> {
    const NAME: &str = "(idmap probe)";
    let nobody = Range {
        container: 0,
        host: 65534,
        size: 1,
    };
    let maps = IdMaps {
        uid: vec![nobody],
        gid: vec![nobody],
    };
    let ns = new_userns(NAME, &maps, reaper)?;
    let idmap = |fd: OwnedFd| detached::set_attrs(fd.as_fd(), Attrs::default(), Some(ns.as_fd()));
    let tmpfs = detached::detached_tmpfs().and_then(idmap);
    if tmpfs.is_ok() {
        return Ok(());
    }
    let root = detached::clone_tree(c"/", false)
        .map_err(|e| failed(NAME, OPEN_TREE, Path::new("/"), e))?;
    idmap(root).map_err(|e| failed(NAME, SETATTR, Path::new("/"), e))
}

#[cfg(test)]
mod tests;
