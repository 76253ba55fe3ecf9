//! `delete`: cleaning up after a task without its daemon (containerd runs it after a shim
//! exited or died, sturdy's watchdog may too), acting only on what the bundle's record says.
//!
//! In order, under the bundle's delete lock ([`lock`]): read the record (unusable → fail,
//! touching nothing); learn the container's cgroups ([`sweep`]); `<runtime> delete --force`
//! (its "not found" confirmed with `state`); kill what is left in the cgroups and remove
//! them; remove the runtime's state directory if it left one; unmount the rootfs and any
//! idmapped-layer scratch directory a killed shim left (`mount::idmapped`); remove
//! `init.pid`, `execs/`, the group socket and `shim.pid` once no shim answers on it, and
//! the record last. Any failure keeps the record, so a retry knows what to do.

mod locate;
mod lock;
mod sweep;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use containerd_shim::Flags;
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use runc_client::{Reaper, Runc, RuncConfig};

use super::{socket_path, ADDRESS_FILE, SHIM_PID_FILE};
use crate::events::timestamp;
use crate::exec::EXEC_DIR;
use crate::mount;
use crate::record::{Record, RECORD_FILE};

/// The report delete writes on stderr, one short line per step that did something:
/// containerd logs a successful delete's stderr as "cleanup warnings".
struct Steps {
    id: String,
    /// Said before the first line, if there is one (why no runtime ran).
    preamble: Option<String>,
    lines: usize,
}

impl Steps {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            preamble: None,
            lines: 0,
        }
    }

    fn line(&mut self, msg: &str) {
        if let Some(p) = self.preamble.take() {
            eprintln!("containerd-shim-sturdy-v2 delete {}: {p}", self.id);
        }
        eprintln!("containerd-shim-sturdy-v2 delete {}: {msg}", self.id);
        self.lines += 1;
    }

    /// A step that changed something.
    fn did(&mut self, msg: String) {
        self.line(&msg);
    }

    /// Something found that delete leaves alone or cannot use.
    fn warn(&mut self, msg: String) {
        self.line(&format!("warning: {msg}"));
    }

    /// Whether any line was written.
    #[cfg(test)]
    fn any(&self) -> bool {
        self.lines > 0
    }
}

/// Cleans up after a task without its daemon, acting only on what the bundle's record
/// says: a record that cannot be read is an error, never a reason to guess.
pub(super) fn delete(flags: &Flags) -> Result<(), String> {
    runc_client::validate_id(&flags.id).map_err(|e| format!("container id {:?}: {e}", flags.id))?;
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(|e| format!("cwd: {e}"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let mut steps = Steps::new(&flags.id);
    let pid = match lock::acquire(&bundle, lock::wait_limit())? {
        lock::Acquired::BundleGone => {
            remove_socket_without_bundle(flags, &mut steps);
            0
        }
        lock::Acquired::Locked(held) => {
            let cleaned = clean_bundle(flags, &bundle, &mut steps);
            // Released after a failure too: the next delete must be able to retry.
            let released = held.release();
            let pid = cleaned?;
            released?;
            pid
        }
    };

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

/// Everything delete does inside an existing bundle; returns init's pid for the response.
fn clean_bundle(flags: &Flags, bundle: &Path, steps: &mut Steps) -> Result<u32, String> {
    let id = flags.id.as_str();
    let record_path = bundle.join(RECORD_FILE);
    let record = Record::load(bundle)
        .map_err(|e| e.to_string())
        .and_then(|r| match r {
            Some(r) => r.check(id).map(|()| Some(r)),
            None => Ok(None),
        })
        .map_err(|e| {
            let found = locate::runtime_states(bundle, &flags.namespace, id);
            let hint = locate::describe(&found)
                .map(|s| format!("; {s}"))
                .unwrap_or_default();
            format!(
                "{}: {e}; refusing to guess the runtime and its root: nothing was deleted, \
                 the bundle is kept as evidence{hint}",
                record_path.display()
            )
        })?;
    let pid = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let kept = "; bundle record kept for a retry";

    match &record {
        Some(r) => {
            let cgroups = sweep::container_cgroups(&r.root, bundle, id, steps);
            if runtime_delete(r, id)? {
                steps.did(format!("{} delete --force: deleted", r.runtime));
            }
            sweep::sweep_cgroups(&cgroups, steps).map_err(|e| format!("{e}{kept}"))?;
            sweep::remove_runtime_state(&r.root, id, steps).map_err(|e| format!("{e}{kept}"))?;
        }
        None => {
            steps.preamble = Some(format!(
                "no {RECORD_FILE}: an earlier delete finished, or the shim never reached \
                 the runtime (it writes the record before mounting or running anything); \
                 no runtime is run, only local leftovers are removed"
            ));
            if let Some(s) = locate::describe(&locate::runtime_states(bundle, &flags.namespace, id))
            {
                steps.warn(s);
            }
        }
    }
    let rootfs = bundle.join("rootfs");
    // Unmounted even when not listed (another mount namespace may show it): harmless.
    let mounted = sweep::is_mount_point(&rootfs);
    mount::unmount(&rootfs).map_err(|e| {
        let kept = if record.is_some() { kept } else { "" };
        format!("{e}{kept}")
    })?;
    if mounted {
        steps.did("unmounted rootfs".into());
    }
    let swept = sweep::idmap_scratch(bundle).map_err(|e| {
        let kept = if record.is_some() { kept } else { "" };
        format!("{e}{kept}")
    })?;
    if swept > 0 {
        steps.did(format!(
            "removed {swept} leftover idmapped-layer scratch dir(s)"
        ));
    }

    let mut removed = Vec::new();
    if remove_if_present(&bundle.join("init.pid"))? {
        removed.push("init.pid");
    }
    if remove_dir_if_present(&bundle.join(EXEC_DIR))? {
        removed.push("execs/");
    }
    if remove_stale_socket(bundle, steps) && remove_if_present(&bundle.join(SHIM_PID_FILE))? {
        removed.push(SHIM_PID_FILE);
    }
    // Last: while anything above can still fail, a retry needs the record.
    if remove_if_present(&record_path)? {
        removed.push(RECORD_FILE);
    }
    if !removed.is_empty() {
        steps.did(format!("removed {}", removed.join(", ")));
    }
    Ok(pid)
}

/// `<runtime> delete --force`, where "not found" only counts once `state` agrees: runc
/// errors are classified by their text, and a "does not exist" about a cgroup or a file
/// must not pass for the container being gone. True if the runtime deleted something.
fn runtime_delete(record: &Record, id: &str) -> Result<bool, String> {
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
            Ok(()) => return Ok(true),
            Err(e) if e.is_not_found() => e,
            Err(e) => return Err(format!("{command}: {e}; bundle record kept for a retry")),
        };
        match runc.state(id).await {
            Err(e) if e.is_not_found() => Ok(false),
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

/// True if the file was there and is now gone.
fn remove_if_present(path: &Path) -> Result<bool, String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("remove {}: {e}", path.display())),
    }
}

/// Removes a directory of ours and what is in it; a symlink in its place is an error.
fn remove_dir_if_present(path: &Path) -> Result<bool, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("stat {}: {e}", path.display())),
        Ok(m) if !m.file_type().is_dir() => {
            Err(format!("{} is not a directory: left alone", path.display()))
        }
        Ok(_) => std::fs::remove_dir_all(path)
            .map(|()| true)
            .map_err(|e| format!("remove {}: {e}", path.display())),
    }
}

/// Removes the group's socket if no shim answers on it any more (a live shim may still
/// serve other containers of the pod, and keeps it). True when no shim is left.
fn remove_stale_socket(bundle: &Path, steps: &mut Steps) -> bool {
    let Ok(address) = std::fs::read_to_string(bundle.join(ADDRESS_FILE)) else {
        return true;
    };
    remove_socket_if_stale(Path::new(socket_path(address.trim())), steps)
}

/// With the bundle gone, the only trace of ours delete can still find is the socket a
/// shim of this id alone (not one of a pod's group) would have had.
fn remove_socket_without_bundle(flags: &Flags, steps: &mut Steps) {
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &flags.id);
    remove_socket_if_stale(Path::new(socket_path(&address)), steps);
}

/// True when no shim answers on `path` (and the socket file, if any, is gone). Only a
/// socket that refuses connections is removed: `connect` to a regular file is refused
/// too (security review 2026-12, L5). The connect never blocks: a live shim whose backlog
/// is full answers EAGAIN and keeps its socket.
fn remove_socket_if_stale(path: &Path, steps: &mut Steps) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
        Err(e) => {
            steps.warn(format!("stat {}: {e}: left alone", path.display()));
            return true;
        }
        Ok(m) if !m.file_type().is_socket() => {
            steps.warn(format!("{} is not a socket: left alone", path.display()));
            return true;
        }
        Ok(_) => {}
    }
    let refused = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|fd| {
        let addr = UnixAddr::new(path)?;
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)
    });
    match refused {
        Ok(()) | Err(nix::errno::Errno::EAGAIN) => return false,
        Err(nix::errno::Errno::ENOENT) => return true,
        Err(nix::errno::Errno::ECONNREFUSED) => {}
        Err(e) => {
            steps.warn(format!("connect {}: {e}: left alone", path.display()));
            return true;
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => steps.did(format!("removed stale socket {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => steps.warn(format!("remove stale socket {}: {e}", path.display())),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Security review 2026-12, L5.
    #[test]
    fn only_a_socket_nobody_serves_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut steps = Steps::new("t");
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "precious").unwrap();
        assert!(remove_socket_if_stale(&file, &mut steps));
        assert!(file.exists(), "a regular file was removed");
        let sock = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(!remove_socket_if_stale(&sock, &mut steps), "a live socket");
        assert!(sock.exists());
        drop(listener);
        assert!(remove_socket_if_stale(&sock, &mut steps));
        assert!(!sock.exists(), "a dead socket was kept");
    }
}
