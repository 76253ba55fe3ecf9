//! A container's cgroup: Update (`runc update`) and Stats (read from the cgroup files).
//! The OOM watch on the same cgroup is in [`super::oom`].

use std::sync::{Arc, Mutex};

use containerd_shim_protos::protobuf::well_known_types::any::Any;

use super::Container;
use crate::cgroups::{Cgroup, CgroupError};
use crate::error::{Error, Result};
use crate::process::State;

/// The resources of an Update on their way to runc, in the bundle.
const UPDATE_FILE: &str = "update-resources.json";

/// What a container knows of its cgroup; located once, on first use.
#[derive(Default)]
pub struct CgroupState {
    cgroup: Mutex<Option<Arc<Cgroup>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Container {
    /// The container's cgroup: from runc's state.json, or where init is.
    pub(super) fn cgroup(&self) -> Result<Arc<Cgroup>> {
        if let Some(cg) = lock(&self.cgroups.cgroup).as_ref() {
            return Ok(cg.clone());
        }
        let root = self.runc.config().root.clone().unwrap_or_default();
        let cg = Arc::new(
            Cgroup::locate(&root, &self.id, self.init.pid()).map_err(|e| self.cgroup_error(e))?,
        );
        *lock(&self.cgroups.cgroup) = Some(cg.clone());
        Ok(cg)
    }

    fn cgroup_error(&self, e: CgroupError) -> Error {
        match e {
            CgroupError::Gone(_) | CgroupError::Unknown => {
                log::debug!("container {}: {e}", self.id);
                Error::NotFound {
                    kind: "cgroup of container",
                    id: self.id.clone(),
                }
            }
            CgroupError::Read { path, source } => {
                Error::io(&self.id, format!("read {}", path.display()), source)
            }
            e => Error::Internal(format!("container {}: {e}", self.id)),
        }
    }

    /// The cgroup statistics, typed for containerd (v1 or v2 metrics in an Any).
    pub fn stats(&self) -> Result<Any> {
        let cg = self.cgroup()?;
        cg.metrics().map_err(|e| self.cgroup_error(e))
    }

    /// `runc update --resources FILE` with `resources`, an OCI `LinuxResources` in JSON,
    /// for a created, running or paused container.
    ///
    /// The JSON goes to runc as containerd sent it: runc reads the same runtime-spec type,
    /// and not parsing it into oci-spec's types and back keeps ~50 KiB of serde code out
    /// of the binary (resident in every shim) and loses no field oci-spec does not know.
    ///
    /// Holds init's lifecycle lock although it changes no lifecycle state: with the
    /// systemd cgroup driver runc freezes the container around the update and thaws it
    /// after, which would undo a Pause that ran in between; the state checked here must
    /// still hold (no Delete removing the container) while runc works; and one file
    /// suffices for the resources.
    pub async fn update(&self, resources: &[u8]) -> Result<()> {
        let _lifecycle = self.init.lifecycle.lock().await;
        match self.init.state() {
            State::Created | State::Running | State::Paused => {}
            State::Deleted => {
                return Err(Error::NotFound {
                    kind: "container",
                    id: self.id.clone(),
                })
            }
            state => {
                return Err(Error::FailedPrecondition {
                    id: self.id.clone(),
                    op: "update resources",
                    state: state.to_string(),
                })
            }
        }
        let file = self.bundle.join(UPDATE_FILE);
        let path = file.to_str().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "container {}: bundle path {} is not UTF-8",
                self.id,
                self.bundle.display()
            ))
        })?;
        write_private(&file, resources)
            .map_err(|e| Error::io(&self.id, format!("write {path}"), e))?;
        let deadline = self.runc.config().deadlines.default;
        let args = ["update", "--resources", path, "--", &self.id];
        let r = self.runc.raw("update", &self.id, &args, deadline).await;
        if let Err(e) = std::fs::remove_file(&file) {
            log::warn!("container {}: remove {path}: {e}", self.id);
        }
        r.map(drop).map_err(|e| self.runc_error(e))
    }
}

/// Writes `data` into a new file only root can read (resources may name devices), never
/// through a symlink planted at `path`.
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .write_all(data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_resources_file_is_never_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join(super::UPDATE_FILE);
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = super::write_private(&path, b"{}").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
