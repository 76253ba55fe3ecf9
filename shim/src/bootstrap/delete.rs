//! `delete`: cleaning up after a task without its daemon (containerd runs it after a shim
//! exited or died), acting only on what the bundle's record says.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use containerd_shim::Flags;
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use runc_client::{Reaper, Runc, RuncConfig};

use super::{socket_path, ADDRESS_FILE, SHIM_PID_FILE};
use crate::events::timestamp;
use crate::mount;
use crate::record::{Record, RECORD_FILE};

/// Cleans up after a task without its daemon, acting only on what the bundle's record
/// says: a record that cannot be read is an error, never a reason to guess.
pub(super) fn delete(flags: &Flags) -> Result<(), String> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(|e| format!("cwd: {e}"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let record_path = bundle.join(RECORD_FILE);
    let record = Record::load(&bundle)
        .map_err(|e| e.to_string())
        .and_then(|r| match r {
            Some(r) => r.check(&flags.id).map(|()| Some(r)),
            None => Ok(None),
        })
        .map_err(|e| {
            format!(
                "{}: {e}; refusing to guess the runtime and its root: nothing was deleted, \
                 the bundle is kept as evidence",
                record_path.display()
            )
        })?;
    let pid = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);

    match &record {
        Some(r) => runtime_delete(r, &flags.id)?,
        // containerd shows a successful delete's stderr as "cleanup warnings".
        None => eprintln!(
            "containerd-shim-sturdy-v2 delete: no {} for {}: an earlier delete finished, or \
             the shim never reached the runtime (it writes the record before mounting or \
             running anything); only local leftovers are removed",
            record_path.display(),
            flags.id
        ),
    }
    mount::unmount(&bundle.join("rootfs")).map_err(|e| {
        let kept = if record.is_some() {
            "; bundle record kept for a retry"
        } else {
            ""
        };
        format!("{e}{kept}")
    })?;
    if remove_stale_socket(&bundle) {
        remove_if_present(&bundle.join(SHIM_PID_FILE))?;
    }
    remove_if_present(&bundle.join("init.pid"))?;
    // Last: while anything above can still fail, a retry needs the record.
    remove_if_present(&record_path)?;

    let resp = DeleteResponse {
        pid,
        exit_status: 137,
        exited_at: Some(timestamp(SystemTime::now())).into(),
        ..Default::default()
    };
    let bytes = resp.write_to_bytes().map_err(|e| e.to_string())?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| format!("write delete response: {e}"))
}

/// `<runtime> delete --force`, where "not found" only counts once `state` agrees: runc
/// errors are classified by their text, and a "does not exist" about a cgroup or a file
/// must not pass for the container being gone.
fn runtime_delete(record: &Record, id: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let command = format!("{} delete --force {id}", record.runtime);
    rt.block_on(async {
        let runc = Runc::new(
            RuncConfig {
                binary: PathBuf::from(&record.runtime),
                root: Some(record.root.clone()),
                systemd_cgroup: record.systemd_cgroup,
                ..RuncConfig::default()
            },
            Reaper::global(),
        );
        // Keep the record so a retry (containerd's, or the watchdog's) knows what to do.
        let deleted = match runc.delete(id, true).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_not_found() => e,
            Err(e) => return Err(format!("{command}: {e}; bundle record kept for a retry")),
        };
        match runc.state(id).await {
            Err(e) if e.is_not_found() => Ok(()),
            Ok(state) => Err(format!(
                "{command}: {deleted}; but {} state {id} still shows it {}: bundle record \
                 kept for a retry",
                record.runtime, state.status
            )),
            Err(e) => Err(format!(
                "{command}: {deleted}; and {} state {id} could not confirm it is gone: {e}; \
                 bundle record kept for a retry",
                record.runtime
            )),
        }
    })
}

fn remove_if_present(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("remove {}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes the group's socket if no shim answers on it any more (a live shim may still
/// serve other containers of the pod, and keeps it). True when no shim is left.
fn remove_stale_socket(bundle: &Path) -> bool {
    let Ok(address) = std::fs::read_to_string(bundle.join(ADDRESS_FILE)) else {
        return true;
    };
    let path = Path::new(socket_path(address.trim()));
    if UnixStream::connect(path).is_ok() {
        return false;
    }
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!(
                "containerd-shim-sturdy-v2 delete: remove stale socket {}: {e}",
                path.display()
            );
        }
    }
    true
}
