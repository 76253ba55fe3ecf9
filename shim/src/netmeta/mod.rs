//! The durable record of a pod sandbox's network (docs/netmeta.md): for every CRI sandbox
//! container, the shim reads the pod's interfaces, addresses and routes from inside its
//! network namespace and keeps them in a [`sandbox_record::Store`], so the watchdog can tell
//! containerd a pod IP it lost.
//!
//! Each snapshot runs on a short-lived thread of its own that enters the namespace with
//! setns(2): never on a runtime thread (that would move the whole runtime's sockets into
//! the pod's namespace), and without spawning `ip`. Nothing here ever fails the pod: an
//! error is logged and the previous record kept.

pub mod netlink;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use sandbox_record::{Network, Pod, Record, RecordError, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::options::RuntimeOptions;

/// CRI's annotation telling a sandbox container (`sandbox`) from an app one (`container`).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI's annotation naming the pod sandbox a container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";

/// How long a lifecycle event's snapshot waits, so that the events of one pod start
/// (Create, Start) share one snapshot and its fsyncs land after RunPodSandbox answered
/// rather than inside it (docs/benchmarks.md has the measurement).
pub const SETTLE: Duration = Duration::from_millis(200);
/// How long a namespace without an address is snapshotted again (with backoff).
pub const RETRY_FOR: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How often the record is checked against the namespace (and rewritten if it changed, is
/// missing or is corrupt) between lifecycle events.
pub const REFRESH: Duration = Duration::from_secs(60);
/// Longest a sandbox's Delete waits for its record's removal (a hung disk must not hang it).
pub const REMOVE_LIMIT: Duration = Duration::from_secs(3);

/// Why a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum NetmetaError {
    /// The pod's network namespace could not be entered.
    #[error("sandbox {id}: network namespace {path}: {op}: {source}")]
    Netns {
        /// Sandbox id.
        id: String,
        /// The namespace file.
        path: PathBuf,
        /// open or setns.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Reading the namespace failed.
    #[error("sandbox {id}: {source}")]
    Netlink {
        /// Sandbox id.
        id: String,
        /// The error.
        source: netlink::NetlinkError,
    },
    /// The record could not be written.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Where a sandbox's network is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The host's: nothing to enter.
    Host,
    /// A namespace file (CRI's `/var/run/netns/cni-…`).
    Path(PathBuf),
    /// A namespace runc creates for the container: init's `/proc/PID/ns/net`, opened once
    /// when recording starts and kept open (a pid can be reused, the open file cannot).
    OwnNamespace,
}

/// The namespace the snapshots read, resolved when recording starts.
enum Netns {
    Host,
    Path(PathBuf),
    /// init's namespace, held open; the path it was opened by (for the record).
    Held(Arc<File>, PathBuf),
    /// init's namespace could not be opened: every snapshot fails with this.
    Unavailable(PathBuf, std::io::ErrorKind, String),
}

impl Netns {
    fn resolve(source: &Source, pid: i32) -> Netns {
        match source {
            Source::Host => Netns::Host,
            Source::Path(p) => Netns::Path(p.clone()),
            Source::OwnNamespace => {
                let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
                match File::open(&path) {
                    Ok(f) => Netns::Held(Arc::new(f), path),
                    Err(e) => Netns::Unavailable(path, e.kind(), e.to_string()),
                }
            }
        }
    }
}

/// Everything a sandbox's snapshots need, decided at Create from the spec and options.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where records go.
    pub store: Store,
    /// containerd namespace.
    pub namespace: String,
    /// containerd's TTRPC address (`TTRPC_ADDRESS`), naming which containerd this is for.
    pub containerd: String,
    /// Sandbox id.
    pub sandbox_id: String,
    /// The pod.
    pub pod: Pod,
    /// Its network.
    pub source: Source,
}

impl Plan {
    /// The plan for container `id` if it is a CRI pod sandbox and records are on.
    pub fn for_container(
        spec: &Spec,
        id: &str,
        namespace: &str,
        options: &RuntimeOptions,
    ) -> Option<Plan> {
        let empty = HashMap::new();
        let ann = spec.annotations().as_ref().unwrap_or(&empty);
        if ann.get(CONTAINER_TYPE).map(String::as_str) != Some("sandbox")
            || options.no_sandbox_record
        {
            return None;
        }
        let get = |k: &str| ann.get(k).cloned().unwrap_or_default();
        let net = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
        let source = match net {
            None => Source::Host,
            Some(n) => match n.path() {
                Some(p) => Source::Path(p.clone()),
                None => Source::OwnNamespace,
            },
        };
        let dir = if options.sandbox_record_dir.is_empty() {
            sandbox_record::DEFAULT_DIR
        } else {
            &options.sandbox_record_dir
        };
        Some(Plan {
            store: Store::new(dir),
            namespace: namespace.to_string(),
            containerd: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
            sandbox_id: id.to_string(),
            pod: Pod {
                name: get(SANDBOX_NAME),
                namespace: get(SANDBOX_NAMESPACE),
                uid: get(SANDBOX_UID),
            },
            source,
        })
    }
}

/// The pod sandbox an app container belongs to, from CRI's annotations.
pub fn sandbox_of(spec: &Spec, id: &str) -> Option<String> {
    let ann = spec.annotations().as_ref()?;
    if ann.get(CONTAINER_TYPE).map(String::as_str) != Some("container") {
        return None;
    }
    ann.get(SANDBOX_ID).filter(|s| s.as_str() != id).cloned()
}

enum Msg {
    Snapshot(&'static str),
    Remove(oneshot::Sender<()>),
}

/// The one task that snapshots a sandbox and owns its record file: snapshots, retries,
/// refreshes and the final removal are serialised through it, so no late snapshot can
/// bring a removed record back.
#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
    /// Twice the attempts finished, plus one while a snapshot runs.
    attempts: Arc<AtomicU64>,
}

impl Recorder {
    /// Starts recording `plan`'s sandbox, whose init is `pid`; takes the first snapshot.
    /// A namespace of init's own is opened here, once, while `pid` is surely init.
    pub fn start(plan: Plan, pid: i32, trigger: &'static str) -> Recorder {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Msg::Snapshot(trigger));
        let netns = Arc::new(Netns::resolve(&plan.source, pid));
        let attempts = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(Arc::new(plan), netns, rx, attempts.clone()));
        Recorder { tx, attempts }
    }

    /// How many snapshots have been attempted to the end (taken, written or failed): a
    /// test waits for it to move before asserting that a snapshot changed nothing.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst) / 2
    }

    /// Whether no snapshot is running right now.
    pub fn idle(&self) -> bool {
        self.attempts.load(Ordering::SeqCst).is_multiple_of(2)
    }

    /// Whether the recording has ended (its record removed): nothing can write it again.
    pub fn stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Asks for a snapshot (it runs in the background; the caller never waits).
    pub fn trigger(&self, why: &'static str) {
        let _ = self.tx.send(Msg::Snapshot(why));
    }

    /// Removes the record (after any snapshot in flight) and stops recording; waits at most
    /// [`REMOVE_LIMIT`].
    pub async fn remove(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Remove(ack)).is_err() {
            return;
        }
        if tokio::time::timeout(REMOVE_LIMIT, done).await.is_err() {
            log::error!("sandbox record: removal still not done after {REMOVE_LIMIT:?}; the watchdog's gc will take it");
        }
    }
}

/// What one snapshot found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// A namespace with at least one pod IP, or the host network: nothing to wait for.
    Complete,
    /// A namespace without a pod IP yet (CNI may not have run).
    NoAddress,
    /// The snapshot failed (logged).
    Failed,
}

async fn run(
    plan: Arc<Plan>,
    netns: Arc<Netns>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    attempts: Arc<AtomicU64>,
) {
    // (when the namespace was first seen without an address, the current backoff)
    let mut retry: Option<(Instant, Duration)> = None;
    let mut next_retry = Instant::now();
    let mut refresh = tokio::time::interval_at(Instant::now() + REFRESH, REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A lifecycle event's snapshot waits SETTLE: later events within it share it.
    let mut pending: Option<(&'static str, Instant)> = None;
    loop {
        let due = pending.map(|(_, at)| at).unwrap_or_else(Instant::now);
        let why = tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Snapshot(why)) => {
                    let at = pending.map(|(_, at)| at).unwrap_or_else(|| Instant::now() + SETTLE);
                    pending = Some((why, at));
                    continue;
                }
                Some(Msg::Remove(ack)) => {
                    let p = plan.clone();
                    match runc_client::blocking::run("sandbox-record", move || p.store.remove(&p.namespace, &p.sandbox_id)).await {
                        Ok(Ok(_)) => log::debug!("sandbox {}: record removed", plan.sandbox_id),
                        Ok(Err(e)) => log::error!("sandbox {}: {e}", plan.sandbox_id),
                        Err(e) => log::error!("sandbox {}: record removal: {e}", plan.sandbox_id),
                    }
                    let _ = ack.send(());
                    return;
                }
                None => return,
            },
            _ = tokio::time::sleep_until(due), if pending.is_some() => {
                pending.take().map(|(why, _)| why).unwrap_or("start")
            }
            _ = tokio::time::sleep_until(next_retry), if retry.is_some() => "retry",
            _ = refresh.tick() => "refresh",
        };
        attempts.fetch_add(1, Ordering::SeqCst);
        let found = snapshot(plan.clone(), netns.clone(), why).await;
        attempts.fetch_add(1, Ordering::SeqCst);
        retry = match (found, retry) {
            (Found::NoAddress | Found::Failed, None) => Some((Instant::now(), FIRST_BACKOFF)),
            (Found::NoAddress | Found::Failed, Some((since, backoff))) => {
                if since.elapsed() >= RETRY_FOR {
                    log::warn!(
                        "sandbox {}: still no pod address after {RETRY_FOR:?}; next snapshot at the next container start or refresh",
                        plan.sandbox_id
                    );
                    None
                } else {
                    Some((since, (backoff * 2).min(MAX_BACKOFF)))
                }
            }
            (Found::Complete, _) => None,
        };
        if let Some((_, backoff)) = retry {
            next_retry = Instant::now() + backoff;
        }
    }
}

/// Takes one snapshot on a thread of its own and stores it.
async fn snapshot(plan: Arc<Plan>, netns: Arc<Netns>, why: &'static str) -> Found {
    let (tx, rx) = oneshot::channel();
    let id = plan.sandbox_id.clone();
    let spawned = std::thread::Builder::new()
        .name("sturdy-netns".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let _ = tx.send(snapshot_and_store(&plan, &netns, why));
        });
    if let Err(e) = spawned {
        log::error!("sandbox {id}: cannot start the snapshot thread: {e}");
        return Found::Failed;
    }
    match rx.await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            log::error!("{e}; the previous record (if any) is kept, the pod is not affected");
            Found::Failed
        }
        Err(_) => {
            log::error!("sandbox {id}: the snapshot thread ended without an answer");
            Found::Failed
        }
    }
}

/// Runs on the dedicated thread: enters the namespace, dumps it, writes the record if it
/// changed (or the one on disk is missing or cannot be trusted).
fn snapshot_and_store(
    plan: &Plan,
    netns: &Netns,
    why: &'static str,
) -> Result<Found, NetmetaError> {
    let netns_err = |path: &PathBuf, op, source| NetmetaError::Netns {
        id: plan.sandbox_id.clone(),
        path: path.clone(),
        op,
        source,
    };
    let (network, truncated) = match netns {
        Netns::Host => (Network::Host, Vec::new()),
        Netns::Path(p) => {
            let file = File::open(p).map_err(|e| netns_err(p, "open", e))?;
            read_namespace(plan, &file, p)?
        }
        Netns::Held(file, p) => read_namespace(plan, file, p)?,
        Netns::Unavailable(p, kind, e) => {
            return Err(netns_err(p, "open", std::io::Error::new(*kind, e.clone())))
        }
    };
    let mut record = Record {
        sandbox_id: plan.sandbox_id.clone(),
        namespace: plan.namespace.clone(),
        containerd: plan.containerd.clone(),
        pod: plan.pod.clone(),
        network,
        taken_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
        trigger: why.to_string(),
        truncated: (!truncated.is_empty()).then(|| truncated.join("; ")),
    };
    record.fit()?;
    let found = if record.host_network() || !record.pod_ips().is_empty() {
        Found::Complete
    } else {
        Found::NoAddress
    };
    match plan.store.read(&plan.namespace, &plan.sandbox_id) {
        Ok(Some(old)) if old.same_network(&record) => return Ok(found),
        // A namespace that lost every pod IP is a pod being torn down (CNI DEL runs before
        // the sandbox's task is deleted), not a network worth recording over a good one.
        Ok(Some(old)) if found == Found::NoAddress && !old.pod_ips().is_empty() => {
            log::debug!(
                "sandbox {}: no pod IP in the namespace now ({why}); keeping the record of {:?}",
                plan.sandbox_id,
                old.pod_ips()
            );
            return Ok(Found::Complete);
        }
        Ok(_) => {}
        Err(e) if e.is_corrupt() => {
            log::error!("{e}; replacing it with a fresh snapshot ({why})")
        }
        Err(e) => log::warn!("{e}; writing a fresh snapshot ({why})"),
    }
    let path = plan.store.write(&record)?;
    if let Some(t) = &record.truncated {
        log::warn!(
            "sandbox {}: its network namespace holds more than a record keeps: {t}",
            plan.sandbox_id
        );
    }
    log::info!(
        "sandbox {}: network recorded in {} ({why}): {}",
        plan.sandbox_id,
        path.display(),
        if record.host_network() {
            "host network".to_string()
        } else {
            format!("pod IPs {:?}", record.pod_ips())
        }
    );
    Ok(found)
}

/// Moves the calling (dedicated) thread into the namespace `file` (opened by `path`) and
/// dumps it; with what the dump left out.
fn read_namespace(
    plan: &Plan,
    file: &File,
    path: &std::path::Path,
) -> Result<(Network, Vec<String>), NetmetaError> {
    // SAFETY: setns(2) on an fd we own; it changes only this thread's network namespace,
    // and this thread ends after the snapshot.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetmetaError::Netns {
            id: plan.sandbox_id.clone(),
            path: path.to_path_buf(),
            op: "setns",
            source: std::io::Error::last_os_error(),
        });
    }
    let dump = netlink::dump().map_err(|source| NetmetaError::Netlink {
        id: plan.sandbox_id.clone(),
        source,
    })?;
    let network = Network::Namespace {
        path: path.to_string_lossy().into_owned(),
        interfaces: dump.interfaces,
        routes: dump.routes,
    };
    Ok((network, dump.truncated))
}

#[cfg(test)]
mod tests;
