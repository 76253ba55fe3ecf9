//! Idmapped mounts on the real kernel: layer trees in a temp dir (ext4 or a tmpfs), the
//! rootfs mounted through `mount_all` as containerd 2.x asks for a `hostUsers: false` pod.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use containerd_shim_protos::types::mount::Mount;
use nix::mount::{MntFlags, MsFlags};
use runc_client::Reaper;

use super::*;
use crate::mount::{mount_all, unmount};

const MAPPED: u32 = 100000;
const UIDMAP: &str = "uidmap=0:100000:65536";
const GIDMAP: &str = "gidmap=0:100000:65536";

/// Mount points under `dir`, from /proc/self/mountinfo (what findmnt reads).
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Entries of `dir` that are scratch directories.
fn scratch_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(SCRATCH_PREFIX))
        .collect()
}

/// A snapshotter-like layout: `snapshots/N/fs` layers owned by root, an upper layer
/// whose root the snapshotter gave to the mapped root, and a bundle with `rootfs`.
/// Everything mounted below it is lazily unmounted when it drops, however a test ends.
struct Layout {
    dir: tempfile::TempDir,
    /// The tmpfs the layers live on, when asked for.
    tmpfs: Option<PathBuf>,
}

impl Layout {
    /// None (after a SKIPPED line) when this host cannot mount at all.
    fn new(on_tmpfs: bool) -> Option<Layout> {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        std::fs::create_dir(&probe).unwrap();
        let mounted = nix::mount::mount(
            Some("tmpfs"),
            &probe,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        );
        if let Err(e) = mounted {
            test_skip::skip(format!("cannot mount here: {e}"));
            return None;
        }
        let layout = Layout {
            tmpfs: on_tmpfs.then(|| probe.clone()),
            dir,
        };
        if !on_tmpfs {
            nix::mount::umount2(&probe, MntFlags::MNT_DETACH).unwrap();
        }
        std::fs::create_dir_all(layout.bundle().join("rootfs")).unwrap();
        Some(layout)
    }

    fn root(&self) -> PathBuf {
        self.tmpfs
            .clone()
            .unwrap_or_else(|| self.dir.path().to_path_buf())
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }

    fn layer(&self, n: usize) -> PathBuf {
        self.root().join(format!("snapshots/{n}/fs"))
    }

    /// Lower layer `n` with `files` (owned by root, mode 0644) in it.
    fn lower(&self, n: usize, files: &[&str]) -> PathBuf {
        let fs = self.layer(n);
        for f in files {
            let path = fs.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("{f} from layer {n}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::create_dir_all(&fs).unwrap();
        fs
    }

    /// The container's upper layer `n` with its work dir, as the snapshotter leaves them.
    fn upper(&self, n: usize) -> (PathBuf, PathBuf) {
        let fs = self.layer(n);
        let work = fs.with_file_name("work");
        std::fs::create_dir_all(&fs).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        std::os::unix::fs::chown(&fs, Some(MAPPED), Some(MAPPED)).unwrap();
        (fs, work)
    }

    /// The overlay mount containerd sends for lowers `lowers` (top first) and upper `upper`.
    fn overlay(&self, lowers: &[PathBuf], upper: usize, extra: &[&str]) -> Mount {
        let (fs, work) = self.upper(upper);
        let lowers: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let mut options: Vec<String> = [UIDMAP, GIDMAP]
            .iter()
            .map(|s| s.to_string())
            .chain([
                format!("workdir={}", work.display()),
                format!("upperdir={}", fs.display()),
                format!("lowerdir={}", lowers.join(":")),
                "index=off".to_string(),
            ])
            .collect();
        options.extend(extra.iter().map(|s| s.to_string()));
        Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options,
            ..Default::default()
        }
    }

    /// Mounts below the temp dir, except the layers' own tmpfs.
    fn mounts(&self) -> Vec<String> {
        let own = self.tmpfs.as_ref().map(|t| t.display().to_string());
        mounts_under(self.dir.path())
            .into_iter()
            .filter(|m| Some(m) != own.as_ref())
            .collect()
    }

    /// Nothing of ours is left: no mount below the temp dir, no scratch directory.
    fn assert_clean(&self) {
        assert_eq!(self.mounts(), Vec::<String>::new());
        assert_eq!(scratch_dirs(&self.bundle()), Vec::<String>::new());
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        let mut left = mounts_under(self.dir.path());
        left.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in left {
            while nix::mount::umount2(Path::new(&p), MntFlags::MNT_DETACH).is_ok() {}
        }
    }
}

fn owner(path: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (md.uid(), md.gid())
}

/// Runs `f` on a thread whose filesystem ids are the container root's on the host (the
/// kernel drops the file capabilities with fsuid 0), as the container's root would act.
fn as_mapped_root<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setfsuid/setfsgid change only this thread's filesystem ids.
            unsafe {
                libc::setfsgid(MAPPED);
                libc::setfsuid(MAPPED);
            }
            f()
        })
        .join()
        .unwrap()
    })
}

async fn mount_rootfs(layout: &Layout, m: Mount) -> Result<(), MountError> {
    mount_all(&[m], &layout.rootfs(), &Reaper::global()).await
}

async fn overlay_files_look_mapped_and_writes_land_mapped(on_tmpfs: bool) {
    let Some(l) = Layout::new(on_tmpfs) else {
        return;
    };
    let bottom = l.lower(1, &["etc/passwd", "bin/sh"]);
    let top = l.lower(2, &["etc/hostname"]);
    let m = l.overlay(&[top, bottom.clone()], 3, &[]);
    mount_rootfs(&l, m).await.unwrap();
    let rootfs = l.rootfs();

    // Root's files look like the mapped root's on the host (and like root's inside).
    for f in ["etc/passwd", "bin/sh", "etc/hostname", "etc"] {
        assert_eq!(owner(&rootfs.join(f)), (MAPPED, MAPPED), "{f}");
    }
    // The layers themselves were not chowned.
    assert_eq!(owner(&bottom.join("etc/passwd")), (0, 0));
    // The scratch mount is gone already; the overlay stays.
    assert_eq!(l.mounts(), vec![rootfs.display().to_string()]);
    assert_eq!(scratch_dirs(&l.bundle()), Vec::<String>::new());

    // The container's root (the mapped uid on the host) can write, both a new file and a
    // copy-up of a lower one, and both land in the upper layer with the mapped owner.
    as_mapped_root(|| {
        std::fs::write(rootfs.join("new"), "new\n").unwrap();
        std::fs::write(rootfs.join("etc/passwd"), "changed\n").unwrap();
    });
    let upper = l.layer(3);
    assert_eq!(owner(&upper.join("new")), (MAPPED, MAPPED));
    assert_eq!(owner(&upper.join("etc/passwd")), (MAPPED, MAPPED));
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/passwd")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        std::fs::read_to_string(bottom.join("etc/passwd")).unwrap(),
        "etc/passwd from layer 1\n"
    );

    unmount(&rootfs).unwrap();
    l.assert_clean();
}

#[tokio::test]
async fn overlay_on_ext4_layers_is_idmapped() {
    overlay_files_look_mapped_and_writes_land_mapped(false).await;
}

#[tokio::test]
async fn overlay_on_tmpfs_layers_is_idmapped() {
    overlay_files_look_mapped_and_writes_land_mapped(true).await;
}

/// Without the idmapping the container's root could not even write into /etc: the check
/// above would fail on the old code, which passed the options to overlayfs (EINVAL).
#[tokio::test]
async fn without_the_options_the_layers_stay_root_owned() {
    let Some(l) = Layout::new(false) else {
        return;
    };
    let bottom = l.lower(1, &["etc/passwd"]);
    let mut m = l.overlay(&[bottom], 2, &[]);
    m.options.retain(|o| o != UIDMAP && o != GIDMAP);
    mount_rootfs(&l, m).await.unwrap();
    assert_eq!(owner(&l.rootfs().join("etc/passwd")), (0, 0));
    let denied = as_mapped_root(|| std::fs::write(l.rootfs().join("etc/passwd"), "x"));
    assert!(denied.is_err(), "the unmapped lower layer was writable");
    unmount(&l.rootfs()).unwrap();
    l.assert_clean();
}

/// A lowerdir list too long for one page once it goes through the scratch directory is
/// shortened (lower layers only: the upper layer lives elsewhere) and mounted by the helper.
#[tokio::test]
async fn many_layers_go_through_the_helper() {
    let Some(l) = Layout::new(false) else {
        return;
    };
    let lowers: Vec<PathBuf> = (1..=150)
        .rev()
        .map(|n| l.lower(n, &[&format!("layer{n}")]))
        .collect();
    let m = l.overlay(&lowers, 1000, &[]);
    mount_rootfs(&l, m).await.unwrap();
    assert_eq!(owner(&l.rootfs().join("layer1")), (MAPPED, MAPPED));
    assert_eq!(owner(&l.rootfs().join("layer150")), (MAPPED, MAPPED));
    unmount(&l.rootfs()).unwrap();
    l.assert_clean();
}

/// Every failure after the layers were idmapped leaves nothing behind.
#[tokio::test]
async fn failures_leave_no_mounts_and_no_scratch() {
    let Some(l) = Layout::new(false) else {
        return;
    };
    let bottom = l.lower(1, &["etc/passwd"]);

    // The overlay mount itself fails (its work dir is gone) after the idmapping.
    let m = l.overlay(std::slice::from_ref(&bottom), 2, &[]);
    std::fs::remove_dir(l.layer(2).with_file_name("work")).unwrap();
    let e = mount_rootfs(&l, m).await.unwrap_err();
    assert!(
        matches!(e, MountError::Idmapped { step: OVERLAY, .. }),
        "{e}"
    );
    l.assert_clean();

    // Layers with nothing in common are idmapped one by one; the second does not exist,
    // so the first is already attached when it fails.
    let m = l.overlay(
        &[
            bottom.clone(),
            PathBuf::from("/nonexistent-sturdy-layer/fs"),
        ],
        3,
        &[],
    );
    let e = mount_rootfs(&l, m).await.unwrap_err();
    assert!(
        matches!(&e, MountError::Idmapped { step: OPEN_TREE, path, .. }
            if path == Path::new("/nonexistent-sturdy-layer/fs")),
        "{e}"
    );
    l.assert_clean();

    // A later mount of the same rootfs list fails: the idmapped overlay is undone too.
    let good = l.overlay(std::slice::from_ref(&bottom), 4, &[]);
    let bad = Mount {
        type_: "tmpfs".into(),
        source: "tmpfs".into(),
        target: "../escape".into(),
        ..Default::default()
    };
    let e = mount_all(&[good, bad], &l.rootfs(), &Reaper::global())
        .await
        .unwrap_err();
    assert!(matches!(e, MountError::Invalid { .. }), "{e}");
    l.assert_clean();
}

/// Bad options are refused before anything is mounted, with the option named.
#[tokio::test]
async fn bad_options_mount_nothing() {
    let Some(l) = Layout::new(false) else {
        return;
    };
    let bottom = l.lower(1, &["etc/passwd"]);
    let with = |uid: &str, gid: Option<&str>| {
        let mut m = l.overlay(std::slice::from_ref(&bottom), 2, &[]);
        m.options.retain(|o| o != UIDMAP && o != GIDMAP);
        m.options.push(format!("uidmap={uid}"));
        if let Some(g) = gid {
            m.options.push(format!("gidmap={g}"));
        }
        m
    };
    let too_many: Vec<String> = (0..=crate::mount::MAX_RANGES as u32)
        .map(|i| format!("{i}:{}:1", 100000 + i))
        .collect();
    let cases = [
        (
            with("0:100000", Some("0:100000:65536")),
            "expected container-id:host-id:size",
        ),
        (with("0:100000:65536", None), "gidmap="),
        (
            with(&too_many.join(","), Some("0:1:1")),
            "more than 340 ranges",
        ),
        (with("0:4294967295:1", Some("0:1:1")), "run past"),
        (
            with("0:99999999999:1", Some("0:1:1")),
            "not a decimal number below 2^32",
        ),
        (
            with("0:100000:65536", Some("0:100000:0")),
            "size must be at least 1",
        ),
    ];
    for (m, expected) in cases {
        let e = mount_rootfs(&l, m).await.unwrap_err();
        assert!(matches!(e, MountError::IdMap { .. }), "{e}");
        assert!(e.to_string().contains(expected), "{e} lacks {expected:?}");
        assert_eq!(
            std::io::Error::from(e).kind(),
            std::io::ErrorKind::InvalidInput
        );
        l.assert_clean();
    }
    let tmpfs = Mount {
        type_: "tmpfs".into(),
        source: "tmpfs".into(),
        options: vec![UIDMAP.into(), GIDMAP.into()],
        ..Default::default()
    };
    let e = mount_rootfs(&l, tmpfs).await.unwrap_err();
    assert!(e.to_string().contains("only overlay and bind"), "{e}");
    l.assert_clean();
}

/// A snapshot without parents comes as an idmapped bind: mapped, read-only when asked,
/// one mount to unmount.
#[tokio::test]
async fn bind_mounts_are_idmapped_in_one_step() {
    let Some(l) = Layout::new(false) else {
        return;
    };
    let source = l.lower(1, &["etc/passwd"]);
    let bind = |ro: &str| Mount {
        type_: "bind".into(),
        source: source.display().to_string(),
        options: vec![UIDMAP.into(), GIDMAP.into(), ro.into(), "rbind".into()],
        ..Default::default()
    };
    mount_rootfs(&l, bind("ro")).await.unwrap();
    assert_eq!(owner(&l.rootfs().join("etc/passwd")), (MAPPED, MAPPED));
    let e = std::fs::write(l.rootfs().join("etc/passwd"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert_eq!(l.mounts().len(), 1);
    unmount(&l.rootfs()).unwrap();
    l.assert_clean();

    mount_rootfs(&l, bind("rw")).await.unwrap();
    as_mapped_root(|| std::fs::write(l.rootfs().join("etc/passwd"), "x")).unwrap();
    unmount(&l.rootfs()).unwrap();
    l.assert_clean();

    let mut sync = bind("rw");
    sync.options.push("sync".into());
    let e = mount_rootfs(&l, sync).await.unwrap_err();
    assert!(e.to_string().contains("idmapped bind"), "{e}");
    l.assert_clean();
}

#[test]
fn this_kernel_supports_idmapped_mounts() {
    if let Err(e) = idmap_support(&Reaper::global()) {
        if matches!(
            &e,
            MountError::Idmapped {
                missing: Some(Missing::UserNamespaces),
                ..
            }
        ) {
            test_skip::skip!("{e}");
        }
        panic!("{e}");
    }
}

#[test]
fn errnos_name_what_the_kernel_lacks() {
    let e = failed(
        "overlay overlay on /b/rootfs",
        SETATTR,
        Path::new("/var/lib/snapshots"),
        std::io::Error::from_raw_os_error(libc::ENOSYS),
    );
    assert_eq!(
        e.to_string(),
        "mount overlay overlay on /b/rootfs: idmapped mount: mount_setattr /var/lib/snapshots: \
         Function not implemented (os error 38) (the kernel lacks mount_setattr(2), Linux 5.12+)"
    );
    assert_eq!(
        missing(SETATTR, Some(libc::EINVAL)),
        Some(Missing::FilesystemIdmap)
    );
    assert_eq!(
        missing(OPEN_TREE, Some(libc::ENOSYS)),
        Some(Missing::MountApi)
    );
    assert_eq!(
        missing(userns::CLONE_STEP, Some(libc::ENOSPC)),
        Some(Missing::UserNamespaces)
    );
    assert_eq!(
        missing(OVERLAY, Some(libc::EINVAL)),
        Some(Missing::OverlayIdmappedLayers)
    );
    assert_eq!(missing(OPEN_TREE, Some(libc::ENOENT)), None);
}

#[test]
fn bind_flags_become_mount_attributes() {
    use MsFlags as F;
    assert_eq!(
        bind_attrs(F::MS_BIND | F::MS_REC | F::MS_RDONLY | F::MS_NOSUID | F::MS_NOATIME),
        Ok((
            libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOATIME,
            libc::MOUNT_ATTR__ATIME
        ))
    );
    assert_eq!(bind_attrs(F::MS_BIND), Ok((0, 0)));
    assert_eq!(
        bind_attrs(F::MS_BIND | F::MS_SYNCHRONOUS | F::MS_MANDLOCK),
        Err(F::MS_SYNCHRONOUS | F::MS_MANDLOCK)
    );
}
