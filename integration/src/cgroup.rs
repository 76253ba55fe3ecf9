//! Where a container's cgroup lives on this host, cgroup v1 or v2, so a test checks the
//! kernel's view of Pause or Update on either instead of passing without a check on one.
//!
//! On a v1 (or hybrid) host a controller has its own hierarchy,
//! `/sys/fs/cgroup/<controllers>/<path>` from the `N:<controllers>:<path>` line of
//! `/proc/PID/cgroup`. On a v2 host there is one hierarchy (the `cgroup2` mount, from the
//! `0::<path>` line); a controller is usable in a cgroup when its `cgroup.controllers` lists
//! it, and the freezer is no controller but the core files `cgroup.freeze` /
//! `cgroup.events` (kernel 5.2+, Documentation/admin-guide/cgroup-v2.rst).

use std::path::{Path, PathBuf};

/// A process's cgroup directory for one controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupDir {
    /// The controller's own v1 hierarchy.
    V1(PathBuf),
    /// The unified hierarchy, where the controller is enabled for this cgroup.
    V2(PathBuf),
}

/// The directory of `pid`'s cgroup for `controller` (`"freezer"` meaning v2's core freezer
/// there): its v1 hierarchy when one exists, else the v2 cgroup when it offers the
/// controller; `None` when neither does.
pub fn cgroup_of(pid: u32, controller: &str) -> Option<CgroupDir> {
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    locate(
        &proc_cgroup,
        Path::new("/sys/fs/cgroup"),
        cgroup2_mount(&mountinfo).as_deref(),
        controller,
    )
}

/// [`cgroup_of`] on given texts: `v1_root` holds the v1 hierarchies, `v2_mount` is where
/// `cgroup2` is mounted (if it is).
pub fn locate(
    proc_cgroup: &str,
    v1_root: &Path,
    v2_mount: Option<&Path>,
    controller: &str,
) -> Option<CgroupDir> {
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            unified = Some(path);
        } else if controllers.split(',').any(|c| c == controller) {
            let dir = v1_root.join(controllers).join(path.trim_start_matches('/'));
            return dir.is_dir().then_some(CgroupDir::V1(dir));
        }
    }
    let dir = v2_mount?.join(unified?.trim_start_matches('/'));
    let offered = if controller == "freezer" {
        dir.join("cgroup.freeze").exists()
    } else {
        std::fs::read_to_string(dir.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == controller))
    };
    offered.then_some(CgroupDir::V2(dir))
}

/// Where the `cgroup2` file system is mounted, from `/proc/self/mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// Whether the cgroup is frozen, as v1's freezer names it: `FROZEN`, `THAWED` (or v1's
/// `FREEZING`). v2's `cgroup.events` says `frozen 1` once every process is stopped, which
/// is what v1 calls `FROZEN`; until then `frozen 0`.
pub fn freezer_state(dir: &CgroupDir) -> Option<String> {
    match dir {
        CgroupDir::V1(d) => std::fs::read_to_string(d.join("freezer.state"))
            .ok()
            .map(|s| s.trim().to_owned()),
        CgroupDir::V2(d) => {
            let events = std::fs::read_to_string(d.join("cgroup.events")).ok()?;
            let frozen = events
                .lines()
                .find_map(|l| l.strip_prefix("frozen "))?
                .trim();
            Some(if frozen == "1" { "FROZEN" } else { "THAWED" }.to_owned())
        }
    }
}

/// The trimmed content of `file` in the cgroup directory.
pub fn read(dir: &CgroupDir, file: &str) -> std::io::Result<String> {
    let d = match dir {
        CgroupDir::V1(d) | CgroupDir::V2(d) => d,
    };
    std::fs::read_to_string(d.join(file)).map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "12:freezer:/sturdy-1/c1\n5:cpu,cpuacct:/sturdy-1/c1\n\
                          4:memory:/sturdy-1/c1\n0::/sturdy-1/c1\n";
    const V2: &str = "0::/sturdy-1/c1\n";

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = root.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        root
    }

    #[test]
    fn a_v1_hierarchy_wins_on_a_hybrid_host() {
        let root = tree(&[
            ("v1/cpu,cpuacct/sturdy-1/c1/cpu.shares", "1024\n"),
            ("v1/freezer/sturdy-1/c1/freezer.state", "FROZEN\n"),
            ("unified/sturdy-1/c1/cgroup.freeze", "0\n"),
        ]);
        let (v1, v2) = (root.path().join("v1"), root.path().join("unified"));
        let cpu = locate(HYBRID, &v1, Some(&v2), "cpu").unwrap();
        assert_eq!(cpu, CgroupDir::V1(v1.join("cpu,cpuacct/sturdy-1/c1")));
        assert_eq!(read(&cpu, "cpu.shares").unwrap(), "1024");
        let freezer = locate(HYBRID, &v1, Some(&v2), "freezer").unwrap();
        assert_eq!(freezer_state(&freezer).as_deref(), Some("FROZEN"));
        // A v1 line whose directory is missing is no cgroup to check, not a v2 one.
        assert_eq!(locate(HYBRID, &v1, Some(&v2), "memory"), None);
    }

    #[test]
    fn on_v2_a_controller_must_be_offered_and_the_freezer_is_cgroup_events() {
        let root = tree(&[
            (
                "cg/sturdy-1/c1/cgroup.controllers",
                "cpuset cpu io memory pids\n",
            ),
            ("cg/sturdy-1/c1/cgroup.freeze", "1\n"),
            ("cg/sturdy-1/c1/cgroup.events", "populated 1\nfrozen 1\n"),
            ("cg/sturdy-1/c1/memory.max", "67108864\n"),
        ]);
        let (none, mount) = (root.path().join("v1"), root.path().join("cg"));
        let dir = mount.join("sturdy-1/c1");
        let memory = locate(V2, &none, Some(&mount), "memory").unwrap();
        assert_eq!(memory, CgroupDir::V2(dir.clone()));
        assert_eq!(read(&memory, "memory.max").unwrap(), "67108864");
        assert_eq!(locate(V2, &none, Some(&mount), "hugetlb"), None);
        let freezer = locate(V2, &none, Some(&mount), "freezer").unwrap();
        assert_eq!(freezer_state(&freezer).as_deref(), Some("FROZEN"));
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert_eq!(freezer_state(&freezer).as_deref(), Some("THAWED"));
        assert_eq!(locate(V2, &none, None, "memory"), None, "no cgroup2 mount");
    }

    #[test]
    fn the_cgroup2_mount_comes_from_mountinfo() {
        let info = "30 23 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                    31 23 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("31 23 0:27 / /x rw - cgroup cgroup rw\n"),
            None
        );
    }
}
