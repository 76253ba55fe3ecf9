//! cgroups: placing the shim daemon ([`add_shim_process`]), a container's cgroup
//! statistics as the typed metrics containerd expects from Stats, and watching a
//! container's cgroup for OOM kills ([`oom`]).
//!
//! The container's cgroup files are read directly: `runc events --stats` would cost a fork
//! and ~10 ms per Stats call (kubelet asks every few seconds for every container), and the
//! cgroups-rs crate would add ~155 KiB to the binary, which is resident memory in every
//! shim, while covering less than is read here (docs/dependencies.md).

mod files;
pub mod oom;
mod placement;
mod stats_v1;
mod stats_v2;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;

pub use oom::{OomMonitor, Pending};
pub use placement::{add_process, add_shim_process, adjust_oom_score};

/// Root of the cgroup filesystems.
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Type URL of cgroup v1 metrics, as containerd registers `cgroups/v1/stats.Metrics`
/// (CRI and the metrics API match the Any on it).
pub const METRICS_V1_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
/// Type URL of cgroup v2 metrics (`cgroups/v2/stats.Metrics`).
pub const METRICS_V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// v1 controllers whose files the metrics come from; a container with none of them in its
/// record is taken to be on cgroup v2.
const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "blkio", "hugetlb"];

/// Why a container's cgroup could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup no longer exists (runc removed it when the container was deleted).
    #[error("cgroup {} does not exist", .0.display())]
    Gone(PathBuf),
    /// Neither runc's record nor init's /proc entry names the container's cgroup.
    #[error("no cgroup is known for the container")]
    Unknown,
    /// A cgroup file could not be read.
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A cgroup file held something else than the kernel's format.
    #[error("{}: unexpected content {text:?}", path.display())]
    Parse { path: PathBuf, text: String },
    /// The metrics message could not be encoded.
    #[error("encode metrics: {0}")]
    Encode(String),
}

/// Where one container's cgroup lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// cgroup v1: controller → directory (co-mounted controllers share one).
    V1(BTreeMap<String, PathBuf>),
    /// cgroup v2: the container's directory in the unified hierarchy.
    V2(PathBuf),
}

impl Cgroup {
    /// From runc's `cgroup_paths` (state.json): controller → directory, `""` being the
    /// unified hierarchy (the only entry on a cgroup v2 host, a controller-less extra on
    /// a hybrid one).
    pub fn from_runc_paths(paths: &HashMap<String, PathBuf>) -> Option<Cgroup> {
        let v1: BTreeMap<String, PathBuf> = paths
            .iter()
            .filter(|(k, _)| V1_CONTROLLERS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !v1.is_empty() {
            return Some(Cgroup::V1(v1));
        }
        paths.get("").map(|p| Cgroup::V2(p.clone()))
    }

    /// From a process's `/proc/<pid>/cgroup` text, with the hierarchies mounted where
    /// systemd and cgroupfs-mount put them under `root` (`<root>/<controllers>`, and
    /// `<root>` itself or `<root>/unified` for v2).
    pub fn from_proc(text: &str, root: &Path) -> Option<Cgroup> {
        let mut paths = HashMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if controllers.is_empty() {
                let unified = if root.join("cgroup.controllers").exists() {
                    root.to_path_buf()
                } else {
                    root.join("unified")
                };
                paths.insert(String::new(), unified.join(rel));
                continue;
            }
            for c in controllers.split(',') {
                paths.insert(c.to_string(), root.join(controllers).join(rel));
            }
        }
        Self::from_runc_paths(&paths)
    }

    /// Locates container `id`'s cgroup: runc's record under `runc_root`, or else the
    /// cgroup its init (`pid`) is in, for runtimes that keep no runc state.json.
    pub fn locate(runc_root: &Path, id: &str, pid: i32) -> Result<Cgroup, CgroupError> {
        let state = runc_client::cgroup::RuncStateFile::load(runc_root, id).map_err(|source| {
            CgroupError::Read {
                path: runc_root.join(id).join("state.json"),
                source,
            }
        })?;
        if let Some(cg) = state.and_then(|s| Self::from_runc_paths(&s.cgroup_paths)) {
            return Ok(cg);
        }
        if pid <= 0 {
            return Err(CgroupError::Unknown);
        }
        let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
        match files::read(&path)? {
            Some(text) => {
                Self::from_proc(&text, Path::new(CGROUP_ROOT)).ok_or(CgroupError::Unknown)
            }
            None => Err(CgroupError::Unknown),
        }
    }

    /// The v1 directory of `controller`.
    pub fn v1_dir(&self, controller: &str) -> Option<&Path> {
        match self {
            Cgroup::V1(map) => map.get(controller).map(PathBuf::as_path),
            Cgroup::V2(_) => None,
        }
    }

    /// Whether the cgroup still exists (any of its directories).
    fn exists(&self) -> bool {
        match self {
            Cgroup::V1(map) => map.values().any(|d| d.is_dir()),
            Cgroup::V2(dir) => dir.is_dir(),
        }
    }

    /// The directory named in messages about the whole cgroup.
    fn main_dir(&self) -> &Path {
        match self {
            Cgroup::V1(map) => map
                .get("memory")
                .or_else(|| map.values().next())
                .map(PathBuf::as_path)
                .unwrap_or(Path::new(CGROUP_ROOT)),
            Cgroup::V2(dir) => dir,
        }
    }

    /// The statistics as the Any containerd expects in StatsResponse.
    pub fn metrics(&self) -> Result<Any, CgroupError> {
        if !self.exists() {
            return Err(CgroupError::Gone(self.main_dir().to_path_buf()));
        }
        let (type_url, value) = match self {
            Cgroup::V1(_) => (METRICS_V1_TYPE, stats_v1::collect(self)?.write_to_bytes()),
            Cgroup::V2(dir) => (METRICS_V2_TYPE, stats_v2::collect(dir)?.write_to_bytes()),
        };
        // Files that vanished half-way read as absent: a cgroup removed meanwhile must not
        // pass for one with zero usage.
        if !self.exists() {
            return Err(CgroupError::Gone(self.main_dir().to_path_buf()));
        }
        Ok(Any {
            type_url: type_url.to_string(),
            value: value.map_err(|e| CgroupError::Encode(e.to_string()))?,
            ..Default::default()
        })
    }

    /// An OOM watch on the cgroup's memory controller.
    pub fn oom_monitor(&self) -> io::Result<OomMonitor> {
        match self {
            Cgroup::V1(_) => match self.v1_dir("memory") {
                Some(dir) => OomMonitor::v1(dir),
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no memory cgroup to watch",
                )),
            },
            Cgroup::V2(dir) => OomMonitor::v2(dir),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
