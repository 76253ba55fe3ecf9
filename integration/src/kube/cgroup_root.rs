//! The kubelet's `cgroupRoot`: one private subtree per node in every hierarchy, which the
//! kubelet must find already there and which teardown removes with all it holds.

use std::path::PathBuf;

use crate::cleanup;
use crate::error::{IoContext, Result};

/// `/<name>` in every mounted cgroup hierarchy.
#[derive(Debug)]
pub struct CgroupRoot {
    name: String,
    created: Vec<PathBuf>,
}

impl CgroupRoot {
    /// Creates `/<name>` in every hierarchy; cpuset needs its cpus and mems filled in
    /// before anything can join a child of it.
    pub fn create(name: &str) -> Result<CgroupRoot> {
        let mut root = CgroupRoot {
            name: name.into(),
            created: Vec::new(),
        };
        for hierarchy in cleanup::cgroup_roots() {
            let dir = hierarchy.join(name);
            std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
            root.created.push(dir.clone());
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let parent = hierarchy.join(file);
                if let Ok(value) = std::fs::read_to_string(&parent) {
                    std::fs::write(dir.join(file), value.trim())
                        .ctx(|| format!("writing {}/{file}", dir.display()))?;
                }
            }
        }
        Ok(root)
    }

    /// The kubelet's `cgroupRoot` value.
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// Kills whatever is left in the subtree and removes it everywhere; what remains.
    pub fn remove(&mut self) -> Vec<PathBuf> {
        for dir in self.created.drain(..) {
            cleanup::remove_cgroup_tree(&dir);
        }
        cleanup::cgroup_dirs(&self.name)
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        self.remove();
    }
}
