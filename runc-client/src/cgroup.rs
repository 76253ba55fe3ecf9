//! A container's cgroups, found the way runc placed them, and killing everything in them.
//!
//! When a shim dies, runc's own `delete --force` may not reach every process: without a
//! PID namespace of their own, a container's processes outlive its init. Its cgroups
//! still hold them all, so cleanup kills through the cgroups: on cgroup v1 the freezer is
//! frozen first so nothing can fork while it is emptied, then every process gets SIGKILL
//! and the freezer is thawed (a frozen process only dies once thawed); on cgroup v2
//! `cgroup.kill` does the same in one write (Linux 5.14+), with a per-process fallback.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup directories of one container (one per v1 hierarchy, or the v2 one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupSet {
    dirs: BTreeSet<PathBuf>,
}

/// What [`CgroupSet::kill_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillReport {
    /// Processes found and sent SIGKILL.
    pub killed: Vec<i32>,
    /// Processes still there when the deadline passed.
    pub survivors: Vec<i32>,
}

/// runc's own record of a container, as far as cleanup needs it (`<root>/<id>/state.json`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RuncStateFile {
    /// Container id.
    pub id: String,
    /// Host pid of the container's init.
    #[serde(default)]
    pub init_process_pid: i32,
    /// Start time of init in clock ticks since boot (field 22 of /proc/PID/stat).
    #[serde(default)]
    pub init_process_start: u64,
    /// Controller (v1) or "" (v2) → cgroup directory.
    #[serde(default)]
    pub cgroup_paths: std::collections::HashMap<String, PathBuf>,
}

impl RuncStateFile {
    /// Reads `<root>/<id>/state.json`; `Ok(None)` when runc has no state for `id`.
    pub fn load(root: &Path, id: &str) -> std::io::Result<Option<Self>> {
        match std::fs::read(root.join(id).join("state.json")) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The container's cgroups as runc recorded them.
    pub fn cgroups(&self) -> CgroupSet {
        CgroupSet {
            dirs: self.cgroup_paths.values().cloned().collect(),
        }
    }
}

/// A mounted cgroup hierarchy: v1 with its controllers, or v2.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    mountpoint: PathBuf,
    v2: bool,
}

/// The cgroup hierarchies mounted in this mount namespace, from mountinfo text.
fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "<id> <parent> <maj:min> <root> <mountpoint> <opts> [optional...] - <fstype> <src> <super>"
            let (left, right) = line.split_once(" - ")?;
            let mountpoint = left.split_whitespace().nth(4)?;
            let fstype = right.split_whitespace().next()?;
            let v2 = match fstype {
                "cgroup" => false,
                "cgroup2" => true,
                _ => return None,
            };
            Some(Hierarchy {
                mountpoint: PathBuf::from(unescape(mountpoint)),
                v2,
            })
        })
        .collect()
}

/// mountinfo escapes spaces and a few other bytes as \ooo.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.clone().take(3).collect();
            if oct.len() == 3 && oct.chars().all(|d| ('0'..='7').contains(&d)) {
                if let Ok(b) = u8::from_str_radix(&oct, 8) {
                    out.push(b as char);
                    for _ in 0..3 {
                        chars.next();
                    }
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// Turns an OCI `linux.cgroupsPath` into the path below each hierarchy's root: a
/// cgroupfs path as is, a systemd one (`slice:prefix:name`) the way runc expands it.
pub fn relative_path(cgroups_path: &str) -> PathBuf {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if parts.len() != 3 || cgroups_path.starts_with('/') {
        return PathBuf::from(cgroups_path.trim_start_matches('/'));
    }
    let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
    let mut path = PathBuf::new();
    // "a-b-c.slice" lives in /a.slice/a-b.slice/a-b-c.slice.
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    if slice != "-.slice" {
        let stem = slice.trim_end_matches(".slice");
        let mut acc = String::new();
        for (i, part) in stem.split('-').enumerate() {
            if i > 0 {
                acc.push('-');
            }
            acc.push_str(part);
            path.push(format!("{acc}.slice"));
        }
    }
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    path
}

/// Whether the last component of `path` names container `id`: `<id>` (cgroupfs),
/// `<prefix>-<id>.scope` (systemd), `<anything>-<id>`. Not merely containing it: a short id
/// (`ctr run … k`) is part of many names (`kubepods`).
fn names_container(path: &Path, id: &str) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !id.is_empty()
        && (name == id
            || name.ends_with(&format!("-{id}.scope"))
            || name.ends_with(&format!("-{id}")))
}

/// Whether `cgroups_path` names container `id`'s own cgroup: below the hierarchies' roots,
/// without `.` or `..`, its last component naming the container. Killing "the container's
/// cgroup" through a shared ancestor (`/kubepods`, `kubepods.slice`) or a path that climbs
/// out (`/..`) would kill other pods, or the node.
pub fn is_container_scope(cgroups_path: &str, id: &str) -> bool {
    let rel = relative_path(cgroups_path);
    rel.components().next().is_some()
        && rel.components().all(|c| matches!(c, Component::Normal(_)))
        && names_container(&rel, id)
}

impl CgroupSet {
    /// Keeps only the directories that are container `id`'s own (absolute, plain
    /// components, the last one naming the container), for a set read from files others
    /// may have written (runc's state, a journal); returns those dropped.
    pub fn retain_container(&mut self, id: &str) -> Vec<PathBuf> {
        let (keep, dropped): (BTreeSet<PathBuf>, BTreeSet<PathBuf>) =
            std::mem::take(&mut self.dirs).into_iter().partition(|d| {
                d.is_absolute()
                    && d.components()
                        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
                    && names_container(d, id)
            });
        self.dirs = keep;
        dropped.into_iter().collect()
    }

    /// The container's cgroups for an OCI `linux.cgroupsPath`, in every hierarchy mounted
    /// here (only the directories that exist).
    pub fn from_cgroups_path(cgroups_path: &str) -> std::io::Result<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Self::resolve(&mountinfo, cgroups_path))
    }

    fn resolve(mountinfo: &str, cgroups_path: &str) -> Self {
        let rel = relative_path(cgroups_path);
        let dirs = hierarchies(mountinfo)
            .into_iter()
            .map(|h| h.mountpoint.join(&rel))
            .filter(|d| d.is_dir())
            .collect();
        Self { dirs }
    }

    /// Adds the directories of `other`.
    pub fn merge(&mut self, other: CgroupSet) {
        self.dirs.extend(other.dirs);
    }

    /// The directories, for messages.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(PathBuf::as_path)
    }

    /// Whether no directory is known.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Every pid in any of the cgroups, their descendants included.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = BTreeSet::new();
        for dir in &self.dirs {
            collect_pids(dir, &mut pids);
        }
        pids.into_iter().collect()
    }

    /// The v1 freezer directory, else the v2 cgroup (which freezes through
    /// `cgroup.freeze`): frozen, the processes can neither fork nor exit, so a pid read
    /// from `cgroup.procs` still names the same process when it is signalled.
    fn freezer(&self) -> Option<Freezer<'_>> {
        let find = |file: &str| {
            self.dirs
                .iter()
                .find(|d| d.join(file).exists())
                .map(PathBuf::as_path)
        };
        find("freezer.state")
            .map(Freezer::V1)
            .or_else(|| find("cgroup.freeze").map(Freezer::V2))
    }

    /// SIGKILLs every process in the cgroups and waits (up to `limit`) until they are gone.
    pub fn kill_all(&self, limit: Duration) -> KillReport {
        let mut report = KillReport::default();
        let freezer = self.freezer();
        if let Some(f) = &freezer {
            f.freeze(true);
        }
        let end = Instant::now() + limit;
        loop {
            // Read before the kill: after a v2 `cgroup.kill` the dead are gone from
            // cgroup.procs at once, and the report would name nobody.
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            // v2: one write kills the whole subtree. Where every directory took it, no pid
            // is signalled one by one: a dead one's number could be reused meanwhile.
            let mut whole = !self.dirs.is_empty();
            for dir in &self.dirs {
                whole &= std::fs::write(dir.join("cgroup.kill"), "1").is_ok();
            }
            for pid in &pids {
                if !whole {
                    // SAFETY: kill(2) on a pid read from the container's own cgroup, frozen
                    // where a freezer exists (so the pid cannot have been reused since).
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                }
                if !report.killed.contains(pid) {
                    report.killed.push(*pid);
                }
            }
            if let Some(f) = &freezer {
                // Frozen processes (v1) take the SIGKILL only once thawed.
                f.freeze(false);
            }
            if Instant::now() >= end {
                report.survivors = pids;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            if let Some(f) = &freezer {
                f.freeze(true);
            }
        }
        if let Some(f) = &freezer {
            f.freeze(false);
        }
        report
    }

    /// Removes the (empty) cgroup directories, deepest first; returns those that stay.
    pub fn remove(&self) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for dir in self.dirs.iter().rev() {
            if let Err(e) = remove_tree(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    left.push(dir.clone());
                }
            }
        }
        left
    }
}

/// A cgroup that can be frozen: v1's freezer controller or v2's `cgroup.freeze`.
enum Freezer<'a> {
    V1(&'a Path),
    V2(&'a Path),
}

impl Freezer<'_> {
    fn freeze(&self, frozen: bool) {
        let (file, state) = match (self, frozen) {
            (Freezer::V1(d), true) => (d.join("freezer.state"), "FROZEN"),
            (Freezer::V1(d), false) => (d.join("freezer.state"), "THAWED"),
            (Freezer::V2(d), true) => (d.join("cgroup.freeze"), "1"),
            (Freezer::V2(d), false) => (d.join("cgroup.freeze"), "0"),
        };
        if let Err(e) = std::fs::write(&file, state) {
            log::debug!("{}: {state}: {e}", file.display());
        }
    }
}

fn collect_pids(dir: &Path, pids: &mut BTreeSet<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&e.path(), pids);
            }
        }
    }
}

/// rmdir of a cgroup and its child cgroups (cgroup dirs only hold kernel files).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_containers_own_cgroup_is_its_scope() {
        let id = "c0ffee";
        for own in [
            "/kubepods/besteffort/pod1/c0ffee",
            "/default/c0ffee",
            "kubepods-besteffort-pod1.slice:cri-containerd:c0ffee",
        ] {
            assert!(is_container_scope(own, id), "{own}");
        }
        for shared in [
            "/",
            "",
            "/..",
            "/kubepods/../c0ffee",
            "/kubepods",
            "/kubepods/besteffort",
            "kubepods.slice:cri-containerd:other",
            "-.slice::kubepods.slice",
        ] {
            assert!(!is_container_scope(shared, id), "{shared:?}");
        }
        assert!(!is_container_scope("/default/x", ""));
        // A short id is part of many names; only the whole name (or its suffix) counts.
        assert!(!is_container_scope("/kubepods", "k"));
        assert!(!is_container_scope("/kubepods/podk1", "k"));
        assert!(is_container_scope("/default/k", "k"));

        let mut set = CgroupSet {
            dirs: [
                "/sys/fs/cgroup/memory/kubepods/pod1/c0ffee",
                "/sys/fs/cgroup/memory/kubepods",
                "/sys/fs/cgroup/memory/..",
                "relative/c0ffee",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        };
        let dropped = set.retain_container(id);
        assert_eq!(
            set.dirs().collect::<Vec<_>>(),
            vec![Path::new("/sys/fs/cgroup/memory/kubepods/pod1/c0ffee")]
        );
        assert_eq!(dropped.len(), 3);
    }

    const MOUNTINFO: &str = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/memory rw,nosuid shared:9 - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,pids
30 1 8:1 / / rw - ext4 /dev/vda1 rw";

    #[test]
    fn hierarchies_from_mountinfo() {
        let h = hierarchies(MOUNTINFO);
        let points: Vec<_> = h
            .iter()
            .map(|h| h.mountpoint.display().to_string())
            .collect();
        assert_eq!(
            points,
            [
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/with space"
            ]
        );
        assert!(h[0].v2 && !h[1].v2);
    }

    #[test]
    fn cgroups_paths_as_runc_expands_them() {
        assert_eq!(relative_path("/k8s.io/abc"), PathBuf::from("k8s.io/abc"));
        assert_eq!(relative_path("k8s.io/abc"), PathBuf::from("k8s.io/abc"));
        assert_eq!(
            relative_path("kubepods-besteffort-pod1.slice:cri-containerd:abc"),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            relative_path(":cri-containerd:abc"),
            PathBuf::from("system.slice/cri-containerd-abc.scope")
        );
    }

    #[test]
    fn runc_state_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("c1")).unwrap();
        std::fs::write(
            dir.path().join("c1/state.json"),
            r#"{"id":"c1","init_process_pid":42,"init_process_start":777,
                "cgroup_paths":{"memory":"/sys/fs/cgroup/memory/x/c1","":"/sys/fs/cgroup/unified/x/c1"},
                "config":{"rootfs":"/r"}}"#,
        )
        .unwrap();
        let s = RuncStateFile::load(dir.path(), "c1").unwrap().unwrap();
        assert_eq!((s.init_process_pid, s.init_process_start), (42, 777));
        assert_eq!(s.cgroups().dirs().count(), 2);
        assert!(RuncStateFile::load(dir.path(), "nope").unwrap().is_none());
    }
}
