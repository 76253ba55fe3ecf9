//! Running a shim binary's `delete` for one task of a dead or hung shim, the way containerd
//! does for a shim it lost.
//!
//! The binary is never taken from the dead shim's process: its command line and its
//! `/proc/PID/exe` say whatever whoever started it wanted (security review 2026-12, H1).
//! It is, in order, the binary containerd recorded in the bundle (`shim-binary-path`), the
//! one the operator configured for the runtime, or `containerd-shim-<name>-<version>` in a
//! directory of the watchdog's own `PATH`; whichever it is must pass
//! [`trust::executable`] right before it runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;

use crate::discovery::{binary_name, Shim, Task};
use crate::trust;

/// What one shim `delete` run returned.
#[derive(Debug, Clone, Default)]
pub struct Deleted {
    /// Init pid from the DeleteResponse.
    pub pid: u32,
    /// Exit status from the DeleteResponse.
    pub exit_status: u32,
    /// Exit time from the DeleteResponse.
    pub exited_at: Option<SystemTime>,
}

/// The binary to run `delete` of `task` with, checked: containerd's record for the task's
/// bundle (or another task of the same shim), else `configured[runtime]`, else
/// `containerd-shim-<name>-<version>` on the watchdog's `PATH`. An error says why each
/// candidate was refused.
pub fn delete_binary(
    shim: &Shim,
    task: &Task,
    configured: &HashMap<String, PathBuf>,
) -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    candidates.extend(task.shim_binary.clone());
    candidates.extend(shim.tasks.iter().filter_map(|t| t.shim_binary.clone()));
    candidates.extend(configured.get(&shim.runtime).cloned());
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|c| seen.insert(c.clone()));
    let name = binary_name(&shim.runtime);
    let mut refused = Vec::new();
    for c in candidates {
        match trust::executable(&c) {
            Ok(_) => return Ok(c),
            Err(e) => refused.push(format!("{}: {e}", c.display())),
        }
    }
    if let Some(name) = &name {
        let path = std::env::var_os("PATH").unwrap_or_default();
        if let Some(found) = trust::find_executable(std::env::split_paths(&path), name) {
            return Ok(found);
        }
        refused.push(format!("no trusted {name} on the watchdog's PATH"));
    }
    Err(format!(
        "no trusted shim binary to run delete with ({})",
        if refused.is_empty() {
            format!("runtime {:?} names none", shim.runtime)
        } else {
            refused.join("; ")
        }
    ))
}

/// Runs `<binary> … -id ID -bundle B delete` in the bundle, under a deadline. `binary` is
/// checked once more right here.
pub async fn run_delete(
    binary: &Path,
    shim: &Shim,
    task: &Task,
    deadline: Duration,
) -> Result<Deleted, String> {
    trust::executable(binary)
        .map_err(|e| format!("refusing to run {} delete: {e}", binary.display()))?;
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(["-namespace", &task.namespace])
        .args(["-address", &shim.containerd_address])
        .args(["-publish-binary", &shim.publish_binary])
        .args(["-id", &task.id])
        .arg("-bundle")
        .arg(&task.bundle)
        .arg("delete")
        .current_dir(&task.bundle)
        .env("NAMESPACE", &task.namespace)
        .env("GRPC_ADDRESS", &shim.containerd_address)
        .env(
            "TTRPC_ADDRESS",
            format!("{}.ttrpc", shim.containerd_address),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("{} delete: spawn: {e}", binary.display()))?;
    let out = tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .map_err(|_| format!("{} delete: no exit within {deadline:?}", binary.display()))?
        .map_err(|e| format!("{} delete: {e}", binary.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    if !out.status.success() {
        return Err(format!(
            "{} delete exited with {}: {stderr}",
            binary.display(),
            out.status
        ));
    }
    if !stderr.is_empty() {
        log::info!("{}/{}: delete said: {stderr}", task.namespace, task.id);
    }
    let resp = DeleteResponse::parse_from_bytes(&out.stdout).map_err(|e| {
        format!(
            "{} delete: undecodable DeleteResponse: {e}",
            binary.display()
        )
    })?;
    Ok(Deleted {
        pid: resp.pid,
        exit_status: resp.exit_status,
        exited_at: resp.exited_at.as_ref().and_then(|t| {
            let since = Duration::new(u64::try_from(t.seconds).ok()?, t.nanos.max(0) as u32);
            UNIX_EPOCH.checked_add(since)
        }),
    })
}
