//! Real mounts through `sturdy_shim::mount`, as Create makes them: tmpfs, a read-only
//! bind, a 130-layer overlay whose options do not fit in one page, and a helper whose
//! chdir fails. Needs root with mount rights; skips (saying why) otherwise. Every test
//! unmounts what it mounted through a guard, also when an assertion fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use containerd_shim_protos::types::mount::Mount;
use nix::sys::statfs::{statfs, OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC};
use runc_client::Reaper;
use sturdy_shim::mount::{mount_all, unmount, MountError};

/// Unmounts its targets on drop, so a failed assertion leaves no mount behind.
struct Unmounts(Vec<PathBuf>);

impl Drop for Unmounts {
    fn drop(&mut self) {
        for t in self.0.iter().rev() {
            if let Err(e) = unmount(t) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

fn mount(type_: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        type_: type_.into(),
        source: source.into(),
        options: options.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Whether this host lets the test mount; a visible skip (`test_skip`) when not.
fn can_mount() -> bool {
    if !nix::unistd::geteuid().is_root() {
        test_skip::skip("mount tests need root");
        return false;
    }
    let dir = tempfile::tempdir().unwrap();
    match nix::mount::mount(
        Some("tmpfs"),
        dir.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) => {
            unmount(dir.path()).unwrap();
            true
        }
        Err(e) => {
            test_skip::skip(format!("cannot mount here: {e}"));
            false
        }
    }
}

/// Whether `path` is a mount point right now (per /proc/self/mountinfo).
fn is_mount_point(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_str().unwrap();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == want))
}

fn rootfs(dir: &Path) -> PathBuf {
    let r = dir.join("rootfs");
    std::fs::create_dir(&r).unwrap();
    r
}

#[tokio::test]
async fn tmpfs_with_flags_and_data() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = rootfs(dir.path());
    let _guard = Unmounts(vec![target.clone()]);
    let m = mount(
        "tmpfs",
        "tmpfs",
        &["nosuid", "nodev", "size=1m", "mode=711"],
    );
    mount_all(&[m], &target, &Reaper::global()).await.unwrap();
    assert_eq!(statfs(&target).unwrap().filesystem_type(), TMPFS_MAGIC);
    let mode = std::fs::metadata(&target).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o711);
    let vfs = nix::sys::statvfs::statvfs(&target).unwrap();
    use nix::sys::statvfs::FsFlags;
    assert!(vfs.flags().contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV));
    // Unmounting twice is fine: "not mounted" counts as done.
    unmount(&target).unwrap();
    assert!(!is_mount_point(&target));
    unmount(&target).unwrap();
    unmount(&dir.path().join("missing")).unwrap();
}

#[tokio::test]
async fn read_only_bind_is_read_only() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("hello"), "world").unwrap();
    let target = rootfs(dir.path());
    let _guard = Unmounts(vec![target.clone()]);
    let m = mount("bind", source.to_str().unwrap(), &["rbind", "ro"]);
    mount_all(&[m], &target, &Reaper::global()).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(target.join("hello")).unwrap(),
        "world"
    );
    let err = std::fs::write(target.join("new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // Only the bind is read-only, not its source.
    std::fs::write(source.join("new"), "x").unwrap();
}

/// `n` overlay layers with long, containerd-like paths under `base`; layer i holds
/// `layer-i` and its own version of `shared`. Returns the lowerdir list, highest first.
fn layers(base: &Path, n: usize) -> Vec<PathBuf> {
    let snapshots = base.join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    (1..=n)
        .rev()
        .map(|i| {
            let fs = snapshots.join(i.to_string()).join("fs");
            std::fs::create_dir_all(&fs).unwrap();
            std::fs::write(fs.join(format!("layer-{i}")), i.to_string()).unwrap();
            std::fs::write(fs.join("shared"), i.to_string()).unwrap();
            fs
        })
        .collect()
}

fn overlay(lowers: &[PathBuf], upper: &Path, work: &Path) -> Mount {
    let lowerdir = lowers
        .iter()
        .map(|p| p.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let options = [
        "index=off".to_string(),
        format!("lowerdir={lowerdir}"),
        format!("upperdir={}", upper.display()),
        format!("workdir={}", work.display()),
    ];
    let mut m = mount("overlay", "overlay", &[]);
    m.options = options.to_vec();
    m
}

#[tokio::test]
async fn overlay_with_130_layers_beyond_one_page() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lowers = layers(dir.path(), 130);
    let snap = dir
        .path()
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots/131");
    let (upper, work) = (snap.join("fs"), snap.join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let m = overlay(&lowers, &upper, &work);
    let len: usize = m.options.iter().map(|o| o.len() + 1).sum();
    assert!(
        len > 4096,
        "options are only {len} bytes: the test proves nothing"
    );

    let target = rootfs(dir.path());
    let _guard = Unmounts(vec![target.clone()]);
    mount_all(&[m], &target, &Reaper::global()).await.unwrap();
    assert_eq!(
        statfs(&target).unwrap().filesystem_type(),
        OVERLAYFS_SUPER_MAGIC
    );
    // The lowest and the highest layer are both visible, and the highest wins.
    assert_eq!(
        std::fs::read_to_string(target.join("layer-1")).unwrap(),
        "1"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("layer-130")).unwrap(),
        "130"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("shared")).unwrap(),
        "130"
    );
    // Writes land in the upper directory, which was also given relative.
    std::fs::write(target.join("written"), "up").unwrap();
    assert_eq!(
        std::fs::read_to_string(upper.join("written")).unwrap(),
        "up"
    );
    // The helper's chdir did not move this process.
    assert_ne!(
        std::env::current_dir().unwrap(),
        dir.path()
            .join("io.containerd.snapshotter.v1.overlayfs/snapshots")
    );
}

#[tokio::test]
async fn helper_chdir_failure_is_an_error_not_an_exit() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Long paths (so the options need shortening) whose common parent does not exist.
    let gone = dir
        .path()
        .join("no-such-parent/io.containerd.snapshotter.v1.overlayfs/snapshots");
    let lowers: Vec<PathBuf> = (1..=130).map(|i| gone.join(format!("{i}/fs"))).collect();
    let m = overlay(&lowers, &gone.join("131/fs"), &gone.join("131/work"));
    let target = rootfs(dir.path());
    let _guard = Unmounts(vec![target.clone()]);
    // A mount before it must be undone when the overlay fails.
    let first = mount("tmpfs", "tmpfs", &["size=1m"]);
    let err = mount_all(&[first, m], &target, &Reaper::global())
        .await
        .unwrap_err();
    match &err {
        MountError::Chdir { dir, source, .. } => {
            assert_eq!(dir, &gone);
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
        }
        other => panic!("expected a chdir error, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("overlay overlay on"), "{text}");
    assert!(text.contains("no-such-parent"), "{text}");
    assert!(!is_mount_point(&target), "the tmpfs below was not undone");
}

#[tokio::test]
async fn a_failed_mount_names_it() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = rootfs(dir.path());
    let _guard = Unmounts(vec![target.clone()]);
    let m = mount("bind", "/nonexistent-sturdy-source", &["rbind", "ro"]);
    let err = mount_all(&[m], &target, &Reaper::global())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MountError::Syscall { step: "mount", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("/nonexistent-sturdy-source"),
        "{err}"
    );
    assert!(!is_mount_point(&target));
}

#[test]
fn the_guard_unmounts_after_a_failed_assertion() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = rootfs(dir.path());
    let inner = target.clone();
    let failed = std::thread::spawn(move || {
        let _guard = Unmounts(vec![inner.clone()]);
        nix::mount::mount(
            Some("tmpfs"),
            &inner,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        assert!(is_mount_point(&inner));
        panic!("an assertion failed while mounted");
    })
    .join();
    assert!(failed.is_err());
    assert!(!is_mount_point(&target), "the guard left the mount behind");
}
