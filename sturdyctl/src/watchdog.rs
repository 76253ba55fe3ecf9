//! The watchdog loop: rescan every interval (and on containerd's task events), watch each
//! shim's pidfd for its death and probe it for hangs, and recover what died or hung.
//!
//! It keeps no state of its own besides the journal: a restarted watchdog rediscovers every
//! shim, recovers bundles whose shim died meanwhile, and finishes incidents the journal
//! shows as started but not finished.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::containerd::Api;
use crate::discovery::{self, BundleCache, Runtimes, Scope, Shim};
use crate::feeds;
use crate::journal::{Journal, JournalError};
use crate::pidfd::Pidfd;
use crate::probe::{self, Outcome as Probe};
use crate::procfs::ProcIdentity;
use crate::recovery::{self, Context, Reason, SeenExits};
use crate::watcher::{self, ProbeClock};

mod incidents;

/// How long a dead shim's socket may take to show it is not answering any more.
const DEAD_RECHECK: Duration = Duration::from_millis(300);

/// Watchdog settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// containerd's state dir.
    pub state_dir: PathBuf,
    /// Runtime names whose shims are watched.
    pub runtimes: Vec<String>,
    /// Probe (and rescan) interval; also each probe's deadline.
    pub interval: Duration,
    /// Consecutive unanswered probes that make a shim hung.
    pub misses: u32,
    /// The incident journal.
    pub journal: PathBuf,
    /// Bound of the journal file.
    pub journal_max_bytes: u64,
    /// How long containerd gets to announce a dead shim's task exits itself.
    pub containerd_grace: Duration,
    /// Deadline of one shim `delete`.
    pub delete_timeout: Duration,
    /// Shim binary per runtime name for `delete`, where containerd recorded none in the
    /// bundle (checked like every binary the watchdog runs).
    pub shim_binaries: HashMap<String, PathBuf>,
    /// Sandbox network records to check (and repair from) every interval, if any.
    pub sandboxes: Option<crate::netmeta::SandboxWatch>,
    /// Where `upgrade-shims` marks the shims it pauses: their misses are not counted
    /// while the window is open ([`crate::upgrading`]).
    pub upgrade_dir: PathBuf,
}

/// Why the watchdog could not run.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The journal could not be locked or read.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

pub(crate) enum Msg {
    /// A watcher saw its shim exit, or found it hung.
    Verdict {
        address: String,
        reason: Reason,
        pidfd: Arc<Pidfd>,
        since: Instant,
    },
    /// A task event: rescan soon.
    Rescan,
    /// A watched process is not the one serving its shim's socket.
    NotTheShim {
        address: String,
        watched: i32,
        server: i32,
    },
}

struct Watched {
    identity: ProcIdentity,
    shim: watch::Sender<Shim>,
    task: JoinHandle<()>,
}

/// Runs the watchdog until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), WatchdogError> {
    let journal = Arc::new(Journal::new(&cfg.journal, cfg.journal_max_bytes));
    journal.lock_exclusive()?;
    let api = Arc::new(Api::new(&cfg.address));
    let seen = Arc::new(SeenExits::default());
    let (stopping, shutdown_rx) = watch::channel(false);
    let ctx = Context {
        api: api.clone(),
        journal: journal.clone(),
        seen: seen.clone(),
        containerd_grace: cfg.containerd_grace,
        delete_timeout: cfg.delete_timeout,
        probe_deadline: cfg.interval,
        shim_binaries: cfg.shim_binaries.clone(),
        shutdown: shutdown_rx,
    };
    let scope = Scope {
        state_dir: cfg.state_dir.clone(),
        containerd_address: cfg.address.to_string_lossy().into_owned(),
        runtimes: cfg.runtimes.clone(),
    };
    log::info!(
        "watching shims of {:?} for containerd {} (state {}), probe every {:?}, hung after {} misses, journal {}",
        cfg.runtimes,
        cfg.address.display(),
        cfg.state_dir.display(),
        cfg.interval,
        cfg.misses,
        cfg.journal.display()
    );

    let (tx, mut rx) = mpsc::channel::<Msg>(256);
    let relist = Arc::new(Notify::new());
    let events = tokio::spawn(feeds::follow_events(
        api.clone(),
        seen.clone(),
        tx.clone(),
        relist.clone(),
    ));
    // Its own task: a slow containerd or disk must never delay a verdict.
    let sandboxes = cfg.sandboxes.clone().map(|sw| {
        tokio::spawn(crate::netmeta::watch(
            api.clone(),
            journal.clone(),
            sw,
            cfg.runtimes.clone(),
            cfg.interval,
        ))
    });
    let runtimes = Arc::new(std::sync::Mutex::new(None));
    let refresher = tokio::spawn(feeds::refresh_runtimes(
        api.clone(),
        runtimes.clone(),
        relist.clone(),
        cfg.interval,
    ));
    let mut state = State {
        cfg: cfg.clone(),
        scope,
        ctx,
        tx,
        watched: HashMap::new(),
        recovering: HashSet::new(),
        done: HashSet::new(),
        dead_seen: HashSet::new(),
        recoveries: JoinSet::new(),
        recovery_of: HashMap::new(),
        runtimes,
        relist,
        unlisted: HashSet::new(),
        bundles: Arc::default(),
        clock: ProbeClock::start(cfg.interval),
    };
    state.resume_unfinished().await?;

    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        // Verdicts first: a recovery must never wait behind a rescan.
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(msg) = rx.recv() => match msg {
                Msg::Verdict { address, reason, pidfd, since } => {
                    state.start_recovery(address, reason, Some(pidfd), since).await;
                }
                Msg::NotTheShim { address, watched, server } => {
                    state.not_the_shim(address, watched, server);
                }
                Msg::Rescan => {
                    // Coalesce a burst of events into one rescan.
                    while let Ok(Msg::Rescan) = rx.try_recv() {}
                    state.rescan().await;
                }
            },
            Some(res) = state.recoveries.join_next_with_id(), if !state.recoveries.is_empty() => {
                state.recovery_done(res).await;
            }
            _ = ticker.tick() => state.rescan().await,
        }
    }
    log::info!("shutting down");
    // Recoveries waiting only for containerd stop waiting (their incidents stay open).
    let _ = stopping.send(true);
    events.abort();
    refresher.abort();
    if let Some(t) = sandboxes {
        t.abort();
    }
    for (_, w) in state.watched.drain() {
        w.task.abort();
    }
    // Recoveries in flight finish (they are bounded); a second signal is not awaited:
    // the journal lets the next watchdog finish what remains.
    let drain = async {
        while let Some(res) = state.recoveries.join_next_with_id().await {
            state.recovery_done(res).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .is_err()
    {
        log::warn!("recoveries still running at exit: the next start finishes them");
    }
    Ok(())
}

struct State {
    cfg: Config,
    scope: Scope,
    ctx: Context,
    tx: mpsc::Sender<Msg>,
    watched: HashMap<String, Watched>,
    recovering: HashSet<String>,
    /// Incidents recovered or found finished in the journal: never redone.
    done: HashSet<String>,
    /// Shims found dead (and unrecovered) by the previous scan.
    dead_seen: HashSet<String>,
    recoveries: JoinSet<recovery::Outcome>,
    /// The shim address and incident of each recovery task, by task id.
    recovery_of: HashMap<tokio::task::Id, (String, String)>,
    /// containerd's runtime names, as last listed (None while it does not answer).
    runtimes: Arc<std::sync::Mutex<Option<Runtimes>>>,
    /// Asks for containerd's runtime names to be listed again.
    relist: Arc<Notify>,
    /// Tasks the last rescan found that containerd's list lacked.
    unlisted: HashSet<(String, String)>,
    /// Bundles read by earlier rescans.
    bundles: Arc<std::sync::Mutex<BundleCache>>,
    /// The tick every watcher probes on.
    clock: ProbeClock,
}

impl State {
    async fn rescan(&mut self) {
        let runtimes = self
            .runtimes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let scope = self.scope.clone();
        let cache = self.bundles.clone();
        // Shims whose watcher still runs: their pidfd tells a death, /proc need not.
        let alive: HashMap<String, Shim> = self
            .watched
            .iter()
            .filter(|(_, w)| !w.task.is_finished())
            .map(|(a, w)| {
                let mut shim = w.shim.borrow().clone();
                shim.process = Some(w.identity.clone());
                (a.clone(), shim)
            })
            .collect();
        let (shims, runtimes) = match tokio::task::spawn_blocking(move || {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.alive = alive;
            let shims = discovery::discover_cached(&scope, runtimes.as_ref(), &mut cache);
            (shims, runtimes)
        })
        .await
        {
            Ok(found) => found,
            Err(e) => {
                log::error!("discovery failed: {e}");
                return;
            }
        };
        let present: HashSet<String> = shims.iter().map(|s| s.address.clone()).collect();
        // A task containerd's last list did not have (its create event was missed): list
        // again, once per such task (a bundle containerd forgot must not relist every scan).
        let unlisted: HashSet<(String, String)> = match runtimes.as_ref() {
            Some(r) => shims
                .iter()
                .flat_map(|s| &s.tasks)
                .map(|t| (t.namespace.clone(), t.id.clone()))
                .filter(|k| !r.contains_key(k))
                .collect(),
            None => HashSet::new(),
        };
        if unlisted.iter().any(|k| !self.unlisted.contains(k)) {
            self.relist.notify_one();
        }
        self.unlisted = unlisted;
        let mut dead_now = HashSet::new();
        for shim in shims {
            if self.recovering.contains(&shim.address) {
                continue;
            }
            match shim.process.clone() {
                Some(identity) => self.watch(shim, identity),
                None => {
                    if let Some(w) = self.watched.get(&shim.address) {
                        // Its watcher's pidfd tells a death; keep the tasks current.
                        w.shim.send_if_modified(|s| merge_tasks(s, &shim));
                        continue;
                    }
                    self.found_dead(shim, &mut dead_now).await;
                }
            }
        }
        self.dead_seen = dead_now;
        // Bundles gone: containerd is done with that shim.
        self.watched.retain(|address, w| {
            // A finished watcher's verdict is still on its way to the loop: keep it for that.
            let keep = present.contains(address) || w.task.is_finished();
            if !keep {
                log::debug!("shim {address}: its bundles are gone; no longer watched");
                w.task.abort();
            }
            keep
        });
    }

    fn watch(&mut self, shim: Shim, identity: ProcIdentity) {
        if let Some(w) = self.watched.get(&shim.address) {
            if w.identity == identity {
                // A finished watcher has sent its verdict, which is on its way: keep it.
                w.shim.send_if_modified(|s| merge_tasks(s, &shim));
                return;
            }
            w.task.abort();
        }
        let pidfd = match Pidfd::open(&identity) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                // Died between discovery and here: the next scan finds it dead.
                log::info!("shim {} (pid {}): {e}", shim.address, identity.pid);
                self.watched.remove(&shim.address);
                return;
            }
        };
        log::info!(
            "watching shim {} pid {} ({}, {} containers: {})",
            shim.address,
            identity.pid,
            shim.runtime,
            shim.tasks.len(),
            shim.tasks
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let address = shim.address.clone();
        let (shim_tx, shim_rx) = watch::channel(shim);
        let task = watcher::spawn(
            shim_rx,
            pidfd,
            &self.clock,
            self.cfg.interval,
            self.cfg.misses,
            self.cfg.upgrade_dir.clone(),
            self.tx.clone(),
        );
        self.watched.insert(
            address,
            Watched {
                identity,
                shim: shim_tx,
                task,
            },
        );
    }

    async fn found_dead(&mut self, shim: Shim, dead_now: &mut HashSet<String>) {
        let id = shim.incident_id();
        if self.done.contains(&id) {
            return;
        }
        // A shim that is starting or exiting normally has no live socket for a moment:
        // act only on one that refuses connections with containers left, twice in a row.
        let leftovers = {
            let s = shim.clone();
            tokio::task::spawn_blocking(move || recovery::has_leftovers(&s))
                .await
                .unwrap_or(false)
        };
        if !leftovers {
            return;
        }
        match probe::probe(&shim.address, &shim.id, self.cfg.interval).await {
            Probe::Refused(why) => {
                if self.dead_seen.contains(&shim.address) {
                    log::warn!(
                        "shim {} is gone ({why}) but its containers are not",
                        shim.address
                    );
                    self.spawn_recovery(shim, Reason::DeadAtDiscovery, None, Instant::now());
                } else {
                    dead_now.insert(shim.address.clone());
                }
            }
            Probe::Answered {
                shim_pid: Some(pid),
                ..
            } => self.adopt_answering(shim, pid as i32),
            other => log::debug!(
                "shim {}: no process found but its socket gave {other:?}",
                shim.address
            ),
        }
    }

    /// A watched process turned out not to serve its shim's socket: stop watching it
    /// (it is never killed for the shim) and watch the server instead, if it is trusted.
    fn not_the_shim(&mut self, address: String, watched: i32, server: i32) {
        let Some(w) = self.watched.remove(&address) else {
            return;
        };
        w.task.abort();
        log::error!(
            "shim {address}: watched pid {watched} is not its server (the socket names pid \
             {server}); it is no longer taken for the shim"
        );
        let mut shim = w.shim.borrow().clone();
        shim.process = None;
        self.adopt_answering(shim, server);
    }

    /// Watches the process a shim's socket names as its server (its `Connect` reply),
    /// when discovery found none it could prove to be the shim, e.g. after the clock
    /// moved and start times no longer compare with the bundle's.
    fn adopt_answering(&mut self, mut shim: Shim, pid: i32) {
        match crate::trust::process(pid).and_then(|()| {
            crate::procfs::identity(pid).map_err(|e| crate::trust::Untrusted::Process {
                pid,
                error: e.to_string(),
            })
        }) {
            Ok(identity) => {
                log::info!(
                    "shim {}: its socket names pid {pid} as its server",
                    shim.address
                );
                shim.process = Some(identity.clone());
                self.watch(shim, identity);
            }
            Err(e) => log::warn!(
                "shim {}: its socket names pid {pid}, which is not trusted: {e}",
                shim.address
            ),
        }
    }

    async fn start_recovery(
        &mut self,
        address: String,
        reason: Reason,
        pidfd: Option<Arc<Pidfd>>,
        since: Instant,
    ) {
        let Some(w) = self.watched.remove(&address) else {
            return;
        };
        w.task.abort();
        let mut shim = w.shim.borrow().clone();
        if matches!(reason, Reason::Dead) {
            // A dead shim's socket refuses at once. One that still answers was served by
            // another process than the one watched: never kill a pod for that. The next
            // rescan finds the shim again.
            let out = probe::probe(&address, &shim.id, DEAD_RECHECK).await;
            if out.answered() {
                log::error!(
                    "shim {address}: process {} exited but the socket still answers: it was not the \
                     shim; looking for the shim again",
                    w.identity.pid
                );
                return;
            }
        }
        // Containers added since the last scan share the address: include them.
        let scope = self.scope.clone();
        let fresh = tokio::task::spawn_blocking(move || discovery::bundles(&scope.state_dir))
            .await
            .unwrap_or_default();
        for t in fresh.into_iter().filter(|t| t.address == address) {
            if !shim
                .tasks
                .iter()
                .any(|x| x.id == t.id && x.namespace == t.namespace)
            {
                let mut t = t;
                if t.runtime.is_empty() {
                    t.runtime = shim.runtime.clone();
                }
                shim.tasks.push(t);
            }
        }
        self.spawn_recovery(shim, reason, pidfd, since);
    }
}

/// Adopts `new`'s tasks into `current`; true if anything changed.
fn merge_tasks(current: &mut Shim, new: &Shim) -> bool {
    if current.tasks == new.tasks {
        return false;
    }
    current.tasks = new.tasks.clone();
    true
}
