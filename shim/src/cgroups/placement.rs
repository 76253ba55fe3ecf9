//! Placing the shim daemon into the operator's `ShimCgroup` and adjusting its OOM score.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Moves `pid` into the cgroup `path` (relative to each hierarchy's root).
///
/// On cgroup v2 (unified) that is one `cgroup.procs`; on v1 every mounted controller
/// hierarchy gets the pid, creating the directory where it is missing, like the Go shim.
pub fn add_process(root: &Path, path: &str, pid: u32) -> io::Result<()> {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("shim cgroup {path:?} is not a valid cgroup path"),
        ));
    }
    if root.join("cgroup.controllers").exists() {
        let dir = root.join(rel);
        fs::create_dir_all(&dir)?;
        return fs::write(dir.join("cgroup.procs"), pid.to_string());
    }
    let mut placed = 0;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let hierarchy: PathBuf = entry.path();
        // Only real hierarchies (directories with a cgroup.procs), not the co-mount symlinks
        // such as cpu,cpuacct, nor the controller-less unified mount of a hybrid host.
        if entry.file_type()?.is_symlink()
            || !hierarchy.join("cgroup.procs").exists()
            || entry.file_name() == "unified"
        {
            continue;
        }
        let dir = hierarchy.join(rel);
        fs::create_dir_all(&dir)?;
        if hierarchy.join("cpuset.cpus").exists() {
            inherit_cpuset(&hierarchy, rel)?;
        }
        fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        placed += 1;
    }
    if placed == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no cgroup hierarchy under {}", root.display()),
        ));
    }
    Ok(())
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and the kernel refuses
/// tasks there (ENOSPC); fill each empty level from its parent, as runc does.
fn inherit_cpuset(hierarchy: &Path, rel: &str) -> io::Result<()> {
    let mut parent = hierarchy.to_path_buf();
    for component in rel.split('/').filter(|c| !c.is_empty()) {
        let dir = parent.join(component);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = fs::read_to_string(dir.join(file))?;
            if current.trim().is_empty() {
                let inherited = fs::read_to_string(parent.join(file))?;
                fs::write(dir.join(file), inherited.trim())?;
            }
        }
        parent = dir;
    }
    Ok(())
}

/// Moves `pid` into `path` under the host's cgroup root.
pub fn add_shim_process(path: &str, pid: u32) -> io::Result<()> {
    add_process(Path::new(super::CGROUP_ROOT), path, pid)
}

/// Sets `pid`'s oom_score_adj to the containerd's (our parent's) + 1, so the kernel picks
/// the shim before containerd. Lacking CAP_SYS_RESOURCE only logs: raising the score of
/// our own child is normally allowed, but the host may still refuse.
pub fn adjust_oom_score(pid: u32) {
    let parent = std::os::unix::process::parent_id();
    let score = match fs::read_to_string(format!("/proc/{parent}/oom_score_adj")) {
        Ok(s) => s.trim().parse::<i32>().unwrap_or(0),
        Err(e) => {
            log::warn!("read containerd oom_score_adj: {e}");
            return;
        }
    };
    let target = (score + 1).min(1000);
    match fs::write(format!("/proc/{pid}/oom_score_adj"), target.to_string()) {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
            log::info!("oom_score_adj not adjusted (no permission): {e}");
        }
        Err(e) => log::warn!("set shim oom_score_adj: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // cgroup v2 placement can only be tested against fixture files on this cgroup v1 host.
    #[test]
    fn v2_fixture() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        add_process(root.path(), "/shims/pod1", 1234).unwrap();
        let procs = fs::read_to_string(root.path().join("shims/pod1/cgroup.procs")).unwrap();
        assert_eq!(procs, "1234");
    }

    #[test]
    fn v1_fixture_each_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        for c in ["cpu", "memory", "unified"] {
            fs::create_dir(root.path().join(c)).unwrap();
            fs::write(root.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        add_process(root.path(), "shims", 7).unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("cpu/shims/cgroup.procs")).unwrap(),
            "7"
        );
        assert_eq!(
            fs::read_to_string(root.path().join("memory/shims/cgroup.procs")).unwrap(),
            "7"
        );
        assert!(!root.path().join("unified/shims").exists());
    }

    #[test]
    fn v1_cpuset_levels_inherit_cpus_and_mems() {
        let root = tempfile::tempdir().unwrap();
        let cpuset = root.path().join("cpuset");
        fs::create_dir(&cpuset).unwrap();
        fs::write(cpuset.join("cgroup.procs"), "").unwrap();
        fs::write(cpuset.join("cpuset.cpus"), "0-1\n").unwrap();
        fs::write(cpuset.join("cpuset.mems"), "0\n").unwrap();
        // The fixture is a plain directory, so pre-create the files the kernel would.
        for level in ["a", "a/b"] {
            fs::create_dir_all(cpuset.join(level)).unwrap();
            fs::write(cpuset.join(level).join("cpuset.cpus"), "").unwrap();
            fs::write(cpuset.join(level).join("cpuset.mems"), "").unwrap();
        }
        add_process(root.path(), "/a/b", 9).unwrap();
        assert_eq!(
            fs::read_to_string(cpuset.join("a/b/cpuset.cpus")).unwrap(),
            "0-1"
        );
        assert_eq!(
            fs::read_to_string(cpuset.join("a/b/cpuset.mems")).unwrap(),
            "0"
        );
        assert_eq!(
            fs::read_to_string(cpuset.join("a/b/cgroup.procs")).unwrap(),
            "9"
        );
    }

    #[test]
    fn bad_paths_rejected() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["", "/", "../etc", "a/../../b"] {
            assert!(add_process(root.path(), bad, 1).is_err(), "{bad}");
        }
    }
}
