//! What of an unfinished incident a restarted watchdog may redo.
//!
//! The journal holds everything needed to redo a recovery: bundles, cgroups, the shim's
//! process. A recovery kills processes and runs binaries as root, so a journalled
//! incident is redone only if what it names is still what the watchdog itself would have
//! taken: bundles where containerd keeps them, binaries and a live process only root can
//! have changed. Anything else is refused with the reason, and the next rescan recovers
//! the shim from what it finds on disk.

use std::path::Path;

use crate::discovery::{Shim, TASK_DIR};
use crate::procfs;
use crate::trust;

/// Why `shim`, as a journal entry names it, must not be recovered from that entry; `None`
/// if it may.
pub fn refusal(shim: &Shim, state_dir: &Path) -> Option<String> {
    for t in &shim.tasks {
        let plain = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
        if !plain(&t.namespace) || !plain(&t.id) {
            return Some(format!(
                "task {:?}/{:?}: not a plain name",
                t.namespace, t.id
            ));
        }
        let expected = state_dir.join(TASK_DIR).join(&t.namespace).join(&t.id);
        if t.bundle != expected {
            return Some(format!(
                "task {}/{}: bundle {} is not containerd's {}",
                t.namespace,
                t.id,
                t.bundle.display(),
                expected.display()
            ));
        }
        if let Some(bin) = t.shim_binary.as_deref().filter(|b| b.exists()) {
            if let Err(e) = trust::executable(bin) {
                return Some(format!("task {}/{}: shim binary {e}", t.namespace, t.id));
            }
        }
    }
    let p = shim.process.as_ref()?;
    let exe = procfs::live_path(&p.exe);
    if exe.exists() {
        if let Err(e) = trust::executable(&exe) {
            return Some(format!(
                "shim process {} ran an untrusted executable: {e}",
                p.pid
            ));
        }
    }
    let same_process = procfs::stat(p.pid).is_ok_and(|(_, start)| start == p.start_time);
    if same_process && procfs::alive(p.pid) {
        if let Err(e) = trust::process(p.pid) {
            return Some(format!("shim process: {e}"));
        }
    }
    None
}
