//! Recovering the pod of a dead or hung shim: kill the shim (if hung), kill every process
//! in its containers' cgroups, run the shim binary's `delete` for each container, and make
//! sure containerd learned the exits. Each step is journalled with its duration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runc_client::cgroup::{CgroupSet, RuncStateFile};
use tokio::sync::{watch, Notify};

use crate::confirm::{self, Confirmed};
use crate::containerd::Api;
use crate::discovery::{Shim, Task};
use crate::journal::{now_ms, Entry, Journal, Phase};
use crate::pidfd::Pidfd;
use crate::probe;

mod delete;
pub use delete::{delete_binary, run_delete, Deleted};

/// How long the kill of a container's cgroups may take before survivors are reported.
pub const CGROUP_KILL_LIMIT: Duration = Duration::from_secs(2);

/// Why a shim is being recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Its pidfd reported its exit while its containers still had state.
    Dead,
    /// It missed this many probes in a row.
    Hung {
        /// Consecutive misses.
        misses: u32,
        /// How long it had not answered.
        silent_for: Duration,
    },
    /// Found dead with leftovers by discovery (e.g. it died while no watchdog ran).
    DeadAtDiscovery,
    /// An incident a previous watchdog journalled as started but not finished.
    Resumed {
        /// The original reason.
        original: String,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Dead => write!(f, "dead"),
            Reason::Hung { misses, silent_for } => write!(
                f,
                "hung: {misses} probes unanswered for {:.1} s",
                silent_for.as_secs_f64()
            ),
            Reason::DeadAtDiscovery => write!(f, "dead at discovery"),
            Reason::Resumed { original } => write!(f, "resumed after restart ({original})"),
        }
    }
}

/// Task exits and deletes containerd announced, so a recovery can tell whether containerd
/// learned of its tasks' ends by itself.
#[derive(Debug, Default)]
pub struct SeenExits {
    seen: Mutex<HashMap<(String, String), Instant>>,
    notify: Notify,
}

impl SeenExits {
    /// Records an exit or delete of `id` in `ns`.
    pub fn record(&self, ns: &str, id: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        seen.retain(|_, at| now.duration_since(*at) < Duration::from_secs(600));
        seen.insert((ns.to_string(), id.to_string()), now);
        drop(seen);
        self.notify.notify_waiters();
    }

    fn seen_since(&self, ns: &str, id: &str, since: Instant) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_string(), id.to_string()))
            .is_some_and(|at| *at >= since)
    }

    /// Waits until every one of `ids` was seen since `since`, or until `until`; returns
    /// those not seen.
    pub async fn wait_all(
        &self,
        ns: &str,
        ids: &[String],
        since: Instant,
        until: Instant,
    ) -> Vec<String> {
        loop {
            let notified = self.notify.notified();
            let missing: Vec<String> = ids
                .iter()
                .filter(|id| !self.seen_since(ns, id, since))
                .cloned()
                .collect();
            if missing.is_empty() || Instant::now() >= until {
                return missing;
            }
            let _ = tokio::time::timeout_at(until.into(), notified).await;
        }
    }
}

/// What recovery needs besides the shim.
#[derive(Debug, Clone)]
pub struct Context {
    /// containerd's API.
    pub api: Arc<Api>,
    /// The incident journal.
    pub journal: Arc<Journal>,
    /// Exits containerd announced.
    pub seen: Arc<SeenExits>,
    /// How long containerd gets, from the shim's death, to announce the exits itself.
    pub containerd_grace: Duration,
    /// Deadline of one shim `delete` run.
    pub delete_timeout: Duration,
    /// Probe deadline (used when a resumed incident's shim is still alive).
    pub probe_deadline: Duration,
    /// Shim binaries the operator named per runtime, for `delete` where containerd
    /// recorded none.
    pub shim_binaries: HashMap<String, std::path::PathBuf>,
    /// Turns true when the watchdog shuts down: a recovery waiting for containerd stops
    /// waiting and leaves its incident unfinished for the next start.
    pub shutdown: watch::Receiver<bool>,
}

/// How a recovery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The shim exited after its containers were gone: nothing to recover.
    CleanExit,
    /// Recovered (ok is whether every step succeeded).
    Recovered {
        /// Every step succeeded.
        ok: bool,
    },
    /// A resumed incident whose shim answers again: nothing done.
    Abandoned,
    /// Shutdown came while containerd could not confirm the exits: left unfinished in
    /// the journal for the next start.
    Interrupted,
}

struct Incident<'a> {
    ctx: &'a Context,
    id: String,
    ok: bool,
}

impl Incident<'_> {
    async fn journal(&self, phase: Phase) {
        let entry = Entry {
            at_ms: now_ms(),
            incident: self.id.clone(),
            phase,
        };
        let journal = self.ctx.journal.clone();
        let res = tokio::task::spawn_blocking(move || journal.append(&entry)).await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::error!("incident {}: {e}", self.id),
            Err(e) => log::error!("incident {}: journal task failed: {e}", self.id),
        }
    }

    async fn step(&mut self, step: String, ok: bool, took: Duration, detail: String) {
        if ok {
            log::info!(
                "incident {}: {step}: {detail} ({} ms)",
                self.id,
                took.as_millis()
            );
        } else {
            log::error!(
                "incident {}: {step} FAILED: {detail} ({} ms)",
                self.id,
                took.as_millis()
            );
            self.ok = false;
        }
        self.journal(Phase::Step {
            step,
            ok,
            ms: took.as_millis() as u64,
            detail,
        })
        .await;
    }
}

/// Whether any of the shim's containers still has runc state or live processes: a shim
/// that exits normally does so only after its containers were deleted.
pub fn has_leftovers(shim: &Shim) -> bool {
    shim.tasks.iter().any(|t| {
        let state = t
            .runc_root
            .as_deref()
            .map(|root| matches!(RuncStateFile::load(root, &t.id), Ok(Some(_))))
            .unwrap_or(false);
        state || !cgroups_of(t).pids().is_empty()
    })
}

/// A container's cgroups: runc's record first, the spec's cgroupsPath as a second source.
pub fn cgroups_of(task: &Task) -> CgroupSet {
    let mut set = CgroupSet::default();
    if let Some(root) = task.runc_root.as_deref() {
        match RuncStateFile::load(root, &task.id) {
            Ok(Some(state)) => set.merge(state.cgroups()),
            Ok(None) => {}
            Err(e) => log::warn!(
                "{}/{}: runc state in {}: {e}",
                task.namespace,
                task.id,
                root.display()
            ),
        }
    }
    if let Some(path) = task.cgroups_path.as_deref() {
        // A root, a shared ancestor or a path climbing out would name other pods'
        // processes, or every process of the node.
        if runc_client::cgroup::is_container_scope(path, &task.id) {
            match CgroupSet::from_cgroups_path(path) {
                Ok(s) => set.merge(s),
                Err(e) => log::warn!("{}/{}: cgroups of {path}: {e}", task.namespace, task.id),
            }
        } else {
            log::warn!(
                "{}/{}: cgroupsPath {path:?} names no cgroup of the container alone: not killed",
                task.namespace,
                task.id
            );
        }
    }
    for dir in set.retain_container(&task.id) {
        log::warn!(
            "{}/{}: cgroup {} is not the container's own: not killed",
            task.namespace,
            task.id,
            dir.display()
        );
    }
    set
}

/// Kills every process of every container of the shim through their cgroups (blocking).
pub fn kill_cgroups(tasks: &[Task]) -> (bool, String) {
    let mut killed = 0;
    let mut survivors = Vec::new();
    let mut dirs = 0;
    for t in tasks {
        let set = cgroups_of(t);
        dirs += set.dirs().count();
        if set.is_empty() {
            continue;
        }
        let report = set.kill_all(CGROUP_KILL_LIMIT);
        killed += report.killed.len();
        survivors.extend(report.survivors);
    }
    let detail = format!(
        "{killed} processes killed in {dirs} cgroup dirs of {} containers{}",
        tasks.len(),
        if survivors.is_empty() {
            String::new()
        } else {
            format!("; SURVIVORS {survivors:?}")
        }
    );
    (survivors.is_empty(), detail)
}

/// Removes a dead shim's socket file if nothing listens on it any more. Only a socket is
/// ever removed, and only in a directory no one but root can change: the bundle's
/// `address` may name anything, and `connect` to a regular file is refused just like a
/// dead socket (security review 2026-12, L5). The connect never blocks: a live shim whose
/// backlog is full makes it fail with EAGAIN, which keeps the socket.
pub async fn remove_stale_socket(address: &str) -> (bool, String) {
    use std::os::unix::fs::FileTypeExt;
    let path = probe::socket_path(address);
    if path.starts_with('\0') {
        return (true, "abstract socket: nothing to remove".into());
    }
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (true, format!("{path}: already gone"))
        }
        Err(e) => return (false, format!("{path}: {e}; kept")),
        Ok(m) if !m.file_type().is_socket() => {
            return (false, format!("{path}: not a socket; kept"))
        }
        Ok(_) => {}
    }
    if let Some(dir) = std::path::Path::new(&path).parent() {
        if let Err(e) = crate::trust::directory(dir) {
            return (false, format!("{path}: {e}; kept"));
        }
    }
    let connect = tokio::net::UnixStream::connect(&path);
    match tokio::time::timeout(Duration::from_secs(1), connect).await {
        Err(_) => (true, format!("{path}: a connect is pending; kept")),
        Ok(Ok(_)) => (true, format!("{path}: something listens there again; kept")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            (true, format!("{path}: already gone"))
        }
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            match std::fs::remove_file(&path) {
                Ok(()) => (true, format!("{path}: removed")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (true, format!("{path}: already gone"))
                }
                Err(e) => (false, format!("{path}: remove: {e}")),
            }
        }
        Ok(Err(e)) => (false, format!("{path}: connect: {e}; kept")),
    }
}

/// Fault injection for tests (debug builds only): `STURDY_WATCHDOG_FAULT=recovery-panic`
/// makes the first recovery of the process panic.
fn injected_panic() {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static DONE: AtomicBool = AtomicBool::new(false);
        if std::env::var_os("STURDY_WATCHDOG_FAULT").is_some_and(|v| v == "recovery-panic")
            && !DONE.swap(true, Ordering::SeqCst)
        {
            panic!("injected fault: recovery-panic");
        }
    }
}

/// Recovers `shim`. `since` is when it died or was found hung; `pidfd` names the shim
/// process when one is known.
pub async fn recover(
    ctx: &Context,
    shim: Shim,
    reason: Reason,
    pidfd: Option<Arc<Pidfd>>,
    since: Instant,
) -> Outcome {
    let id = shim.incident_id();
    injected_panic();
    if reason == Reason::Dead && !has_leftovers(&shim) {
        log::debug!("shim {id} exited after its containers were deleted");
        return Outcome::CleanExit;
    }
    log::warn!(
        "incident {id}: shim {} ({}) serving {} containers: {reason}",
        shim.address,
        shim.runtime,
        shim.tasks.len()
    );
    let mut inc = Incident {
        ctx,
        id: id.clone(),
        ok: true,
    };
    if !matches!(reason, Reason::Resumed { .. }) {
        inc.journal(Phase::Started {
            reason: reason.to_string(),
            shim: shim.clone(),
        })
        .await;
    }

    // A resumed incident's shim may be alive: finish only if it still does not answer.
    let mut pidfd = pidfd;
    if pidfd.is_none() {
        if let Some(p) = &shim.process {
            // Known from the journal: signalled only if it is still a process the shim
            // could be (the journal names it; a pid is not an identity).
            match crate::trust::process(p.pid) {
                Ok(()) => pidfd = Pidfd::open(p).ok().map(Arc::new),
                Err(e) if crate::procfs::alive(p.pid) => {
                    inc.step(
                        "kill shim".into(),
                        false,
                        Duration::ZERO,
                        format!("pid {} not signalled: {e}", p.pid),
                    )
                    .await
                }
                Err(_) => {}
            }
        }
    }
    if let (Reason::Resumed { .. }, Some(fd)) = (&reason, &pidfd) {
        if !fd.exited() {
            let outcome = probe::probe(&shim.address, &shim.id, ctx.probe_deadline).await;
            if outcome.answered() {
                inc.step(
                    "probe".into(),
                    true,
                    Duration::ZERO,
                    format!("shim answers again ({outcome:?}): nothing to do"),
                )
                .await;
                inc.journal(Phase::Finished {
                    ok: true,
                    total_ms: since.elapsed().as_millis() as u64,
                    summary: "abandoned: the shim answers".into(),
                })
                .await;
                return Outcome::Abandoned;
            }
        }
    }
    if let Some(fd) = &pidfd {
        if !fd.exited() {
            let t = Instant::now();
            let res = fd.signal(libc::SIGKILL);
            let waited = tokio::time::timeout(Duration::from_secs(2), fd.wait_exit()).await;
            let (ok, detail) = match (res, waited) {
                (Ok(()), Ok(Ok(()))) => (
                    true,
                    format!(
                        "SIGKILL to pid {} through its pidfd; it exited",
                        fd.identity().pid
                    ),
                ),
                (Ok(()), Ok(Err(e))) => (false, format!("SIGKILL sent; waiting for the exit: {e}")),
                (Ok(()), Err(_)) => (false, "SIGKILL sent; no exit within 2 s".into()),
                (Err(e), _) => (false, format!("SIGKILL: {e}")),
            };
            inc.step("kill shim".into(), ok, t.elapsed(), detail).await;
        }
    }

    let t = Instant::now();
    let tasks = shim.tasks.clone();
    let (ok, detail) = match tokio::task::spawn_blocking(move || kill_cgroups(&tasks)).await {
        Ok(r) => r,
        Err(e) => (false, format!("cgroup kill task failed: {e}")),
    };
    let detail = format!(
        "{detail}; {} ms after the {}",
        since.elapsed().as_millis(),
        if matches!(reason, Reason::Hung { .. }) {
            "verdict"
        } else {
            "death"
        }
    );
    inc.step("kill cgroups".into(), ok, t.elapsed(), detail)
        .await;

    // containerd's own dead-shim cleanup (it sees the shim's connection close) runs the
    // shim's delete, removes the bundle, then announces the exit. A delete of ours running
    // while containerd removes a bundle could recreate the delete lock inside it, and
    // containerd would leave the renamed bundle behind: containerd goes first, and what it
    // has not done within its grace (down, hung, or its delete failed) is ours.
    let ids: Vec<String> = shim.tasks.iter().map(|t| t.id.clone()).collect();
    let unannounced = ctx
        .seen
        .wait_all(&shim.namespace, &ids, since, since + ctx.containerd_grace)
        .await;
    let mut deletes = tokio::task::JoinSet::new();
    for task in shim.tasks.iter().cloned() {
        let (shim, timeout) = (shim.clone(), ctx.delete_timeout);
        let binary = delete_binary(&shim, &task, &ctx.shim_binaries);
        deletes.spawn(async move {
            let t = Instant::now();
            let res = if task.bundle.exists() {
                match binary {
                    Ok(binary) => run_delete(&binary, &shim, &task, timeout).await.map(Some),
                    Err(e) => Err(e),
                }
            } else {
                Ok(None)
            };
            (task.id, res, t.elapsed())
        });
    }
    let mut deleted: HashMap<String, Deleted> = HashMap::new();
    while let Some(joined) = deletes.join_next().await {
        let Ok((id, res, took)) = joined else {
            inc.step(
                "delete".into(),
                false,
                Duration::ZERO,
                "delete task failed".into(),
            )
            .await;
            continue;
        };
        let step = format!("delete {id}");
        match res {
            Ok(Some(d)) => {
                let detail = format!("ran: pid {} exit status {}", d.pid, d.exit_status);
                deleted.insert(id, d);
                inc.step(step, true, took, detail).await;
            }
            Ok(None) => {
                let detail = "bundle removed: containerd's dead-shim cleanup ran the shim's \
                              delete"
                    .to_string();
                inc.step(step, true, took, detail).await;
            }
            Err(e) => inc.step(step, false, took, e).await,
        }
    }

    // A killed shim never removes its socket, and containerd 1.6 leaves it for the Go shim.
    let t = Instant::now();
    let (ok, detail) = remove_stale_socket(&shim.address).await;
    inc.step("remove socket".into(), ok, t.elapsed(), detail)
        .await;

    let t = Instant::now();
    match confirm::confirm_containerd(ctx, &shim, since, unannounced, &deleted).await {
        Confirmed::Done { ok, detail } => {
            inc.step("containerd".into(), ok, t.elapsed(), detail).await;
        }
        Confirmed::Interrupted { detail } => {
            inc.step("containerd".into(), false, t.elapsed(), detail)
                .await;
            log::warn!("incident {id}: left unfinished for the next start");
            return Outcome::Interrupted;
        }
    }

    let total = since.elapsed();
    let summary = format!(
        "{} containers of shim {} recovered{}",
        shim.tasks.len(),
        shim.address,
        if inc.ok { "" } else { " with errors" }
    );
    log::warn!(
        "incident {id}: finished in {} ms: {summary}",
        total.as_millis()
    );
    let ok = inc.ok;
    inc.journal(Phase::Finished {
        ok,
        total_ms: total.as_millis() as u64,
        summary,
    })
    .await;
    Outcome::Recovered { ok }
}

#[cfg(test)]
mod tests;
