//! What `delete` cleans beyond the runtime's own `delete --force`: the processes and
//! cgroups a container left behind, the runtime's state directory, whether the rootfs
//! is still mounted, and idmapped-layer scratch directories a killed shim left.
//!
//! A container without a PID namespace of its own keeps processes after its init died, and
//! a runtime whose delete crashed, timed out or lost its state forgets them; the cgroups
//! still hold them all. So delete learns the cgroups before the runtime's delete (from
//! runc's `state.json`, and from the bundle's `linux.cgroupsPath`, which survives a lost
//! runtime state), and sweeps them afterwards.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use runc_client::cgroup::{is_container_scope, CgroupSet, RuncStateFile};

use super::Steps;
use crate::mount;

/// How long processes left in the cgroups get to die after SIGKILL.
pub const KILL_LIMIT: Duration = Duration::from_secs(5);
/// How long an emptied cgroup may stay busy (its last processes still exiting).
const REMOVE_LIMIT: Duration = Duration::from_secs(2);

/// The container's cgroups, learnt before the runtime's delete forgets them. Sources that
/// cannot be read are reported and skipped: the runtime's delete decides whether the
/// container is gone, this only widens the sweep after it.
pub fn container_cgroups(root: &Path, bundle: &Path, id: &str, steps: &mut Steps) -> CgroupSet {
    let mut set = CgroupSet::default();
    let state_file = root.join(id).join("state.json");
    match RuncStateFile::load(root, id) {
        Ok(Some(mut state)) if state.id == id => {
            state
                .cgroup_paths
                .retain(|_, dir| below_hierarchy_root(dir));
            let mut own = state.cgroups();
            for dir in own.retain_container(id) {
                steps.warn(format!(
                    "runc's cgroup {} is not the container's own: not swept",
                    dir.display()
                ));
            }
            set.merge(own);
        }
        Ok(Some(state)) => steps.warn(format!(
            "{} is for container {:?}: its cgroups are not swept",
            state_file.display(),
            state.id
        )),
        Ok(None) => {}
        Err(e) => steps.warn(format!(
            "read {}: {e}: its cgroups are not swept",
            state_file.display()
        )),
    }
    match spec_cgroups_path(bundle) {
        Ok(Some(path)) if is_container_scope(&path, id) => {
            match CgroupSet::from_cgroups_path(&path) {
                Ok(dirs) => set.merge(dirs),
                Err(e) => steps.warn(format!("cgroups of {path:?}: {e}: not swept")),
            }
        }
        Ok(Some(path)) => steps.warn(format!(
            "config.json cgroupsPath {path:?} names no cgroup of its own: not swept"
        )),
        Ok(None) => {}
        Err(e) => steps.warn(format!("{e}: its cgroupsPath is not swept")),
    }
    set
}

/// `linux.cgroupsPath` from the bundle's config.json; `None` without a spec or a path.
fn spec_cgroups_path(bundle: &Path) -> Result<Option<String>, String> {
    let path = bundle.join("config.json");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("read {}: {e}", path.display())),
    };
    let spec: serde_json::Value =
        serde_json::from_slice(&data).map_err(|e| format!("parse {}: {e}", path.display()))?;
    Ok(spec["linux"]["cgroupsPath"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(String::from))
}

/// A cgroup directory from runc's state that is not the root of its hierarchy: its
/// parent is a cgroup too (has `cgroup.procs`).
fn below_hierarchy_root(dir: &Path) -> bool {
    dir.is_absolute()
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && dir
            .parent()
            .is_some_and(|p| p.join("cgroup.procs").exists())
}

/// Kills whatever is still in the container's cgroups and removes them. An error (a
/// process that survived SIGKILL, a cgroup that stays) fails delete, keeping the record.
pub fn sweep_cgroups(set: &CgroupSet, steps: &mut Steps) -> Result<(), String> {
    let present: Vec<PathBuf> = set
        .dirs()
        .filter(|d| d.is_dir())
        .map(Path::to_path_buf)
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let report = set.kill_all(KILL_LIMIT);
    if !report.killed.is_empty() {
        steps.did(format!(
            "killed {} processes left in its cgroups: {:?}",
            report.killed.len(),
            report.killed
        ));
    }
    if !report.survivors.is_empty() {
        return Err(format!(
            "processes {:?} are still in the container's cgroups ({}) {KILL_LIMIT:?} after \
             SIGKILL",
            report.survivors,
            present[0].display()
        ));
    }
    let end = Instant::now() + REMOVE_LIMIT;
    let mut left = set.remove();
    while !left.is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        left = set.remove();
    }
    let removed: Vec<&PathBuf> = present.iter().filter(|d| !d.exists()).collect();
    if !removed.is_empty() {
        steps.did(format!(
            "removed {} cgroup directories ({} ...)",
            removed.len(),
            removed[0].display()
        ));
    }
    match left.first() {
        None => Ok(()),
        Some(first) => {
            let why = std::fs::remove_dir(first)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "still present".into());
            Err(format!(
                "cgroups {left:?} could not be removed ({}: {why})",
                first.display()
            ))
        }
    }
}

/// Removes the runtime's state directory `<root>/<id>` if its delete left one (runc
/// leaves it when a create was killed before `state.json` was written). Only that exact
/// directory: `id` was validated (no `/`, no `..`), and a symlink or file there is an error.
pub fn remove_runtime_state(root: &Path, id: &str, steps: &mut Steps) -> Result<(), String> {
    let dir = root.join(id);
    let meta = match std::fs::symlink_metadata(&dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("stat {}: {e}", dir.display())),
    };
    if !meta.file_type().is_dir() {
        return Err(format!(
            "{} is not a directory (a {:?}): left alone",
            dir.display(),
            meta.file_type()
        ));
    }
    std::fs::remove_dir_all(&dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    steps.did(format!(
        "removed the runtime state {} it left",
        dir.display()
    ));
    Ok(())
}

/// Most scratch directories, and mount points in each, one delete looks at.
const MAX_SCRATCH: usize = 64;

/// Unmounts and removes the scratch directories ([`mount::SCRATCH_PREFIX`]) a shim killed
/// while mounting an idmapped rootfs left in the bundle; returns how many. What is mounted
/// there is a read-only idmapped copy of the snapshotter's layers: it is only ever
/// unmounted, never removed recursively, and a symlink in a scratch directory's place is
/// left alone.
pub fn idmap_scratch(bundle: &Path) -> Result<usize, String> {
    let names = |dir: &Path| -> Result<Vec<PathBuf>, String> {
        match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("read {}: {e}", dir.display())),
            Ok(entries) => Ok(entries.filter_map(|e| e.ok()).map(|e| e.path()).collect()),
        }
    };
    let mut removed = 0;
    let scratch = names(bundle)?.into_iter().filter(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(mount::SCRATCH_PREFIX))
    });
    for dir in scratch.take(MAX_SCRATCH) {
        if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        for point in names(&dir)?.into_iter().take(MAX_SCRATCH) {
            mount::unmount(&point).map_err(|e| e.to_string())?;
            std::fs::remove_dir(&point).map_err(|e| format!("remove {}: {e}", point.display()))?;
        }
        std::fs::remove_dir(&dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
        removed += 1;
    }
    Ok(removed)
}

/// Whether `path` is a mount point here (so unmounting it does something).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let points: HashSet<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect();
    points.contains(path)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let oct = bytes.get(i + 1..i + 4);
        match oct {
            Some(o) if bytes[i] == b'\\' && o.iter().all(|b| (b'0'..=b'7').contains(b)) => {
                let v = o.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(v as u8);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_containers_own_cgroups_path_is_swept() {
        for ok in [
            "/k8s.io/abc",
            "pod/abc",
            "kubepods.slice:cri-containerd:abc",
        ] {
            assert!(is_container_scope(ok, "abc"), "{ok}");
        }
        // Roots, climbing out, and the shared ancestors of many pods (security review
        // 2026-12, L3).
        for bad in [
            "/",
            "",
            "/..",
            "/a/../..",
            "./",
            "/kubepods",
            "/kubepods/burstable",
            "-.slice::kubepods.slice",
            "/k8s.io/other",
        ] {
            assert!(!is_container_scope(bad, "abc"), "{bad:?}");
        }
    }

    #[test]
    fn hierarchy_roots_are_never_swept() {
        assert!(!below_hierarchy_root(Path::new("/sys/fs/cgroup/memory")));
        assert!(!below_hierarchy_root(Path::new("/sys/fs/cgroup")));
        assert!(!below_hierarchy_root(Path::new("relative/x")));
        assert!(!below_hierarchy_root(Path::new(
            "/sys/fs/cgroup/memory/../x"
        )));
        // A child of any mounted hierarchy qualifies (whether it exists or not).
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.contains(" - cgroup"))
            .and_then(|l| l.split(' ').nth(4).map(PathBuf::from));
        match root {
            Some(r) => assert!(below_hierarchy_root(&r.join("some-container"))),
            None => test_skip::skip("no cgroup hierarchy mounted here: positive case skipped"),
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape(r"/x\9"), r"/x\9");
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(Path::new("/proc/self")));
    }

    #[test]
    fn runtime_state_dir_only_if_a_real_directory() {
        let root = tempfile::tempdir().unwrap();
        let mut steps = Steps::new("c1");
        remove_runtime_state(root.path(), "c1", &mut steps).unwrap();
        assert!(!steps.any());
        std::fs::create_dir_all(root.path().join("c1/sub")).unwrap();
        remove_runtime_state(root.path(), "c1", &mut steps).unwrap();
        assert!(!root.path().join("c1").exists());
        assert!(steps.any());

        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join("keep"), "x").unwrap();
        std::os::unix::fs::symlink(target.path(), root.path().join("c2")).unwrap();
        let err = remove_runtime_state(root.path(), "c2", &mut steps).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        assert!(target.path().join("keep").exists());
    }

    /// A shim killed between attaching the idmapped layers and removing them leaves a
    /// scratch directory with a mount in it: delete unmounts and removes it, and touches
    /// nothing else.
    #[test]
    fn leftover_idmap_scratch_is_unmounted_and_removed() {
        let bundle = tempfile::tempdir().unwrap();
        let scratch = bundle.path().join(format!("{}1-0", mount::SCRATCH_PREFIX));
        let point = scratch.join("0");
        std::fs::create_dir_all(&point).unwrap();
        let mounted = nix::mount::mount(
            Some("tmpfs"),
            &point,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_RDONLY,
            Some("size=64k"),
        );
        if let Err(e) = mounted {
            test_skip::skip!("cannot mount a tmpfs here: {e}");
        }
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("keep"), "x").unwrap();
        let planted = bundle.path().join(format!("{}2-0", mount::SCRATCH_PREFIX));
        std::os::unix::fs::symlink(elsewhere.path(), &planted).unwrap();
        std::fs::create_dir(bundle.path().join("rootfs")).unwrap();

        let swept = idmap_scratch(bundle.path());
        let still = is_mount_point(&point);
        if still {
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
        }
        assert_eq!(swept, Ok(1));
        assert!(!still, "the scratch mount is still there");
        assert!(!scratch.exists());
        assert!(elsewhere.path().join("keep").exists());
        assert!(bundle.path().join("rootfs").exists());
        assert_eq!(idmap_scratch(bundle.path()), Ok(0));
        assert_eq!(idmap_scratch(&bundle.path().join("gone")), Ok(0));
    }
}
