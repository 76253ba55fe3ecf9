//! One shim's watcher: its death through the pidfd, hangs through probes on the shared
//! probe clock.
//!
//! Every watcher probes on the same tick. With a timer per watcher, 100 shims meant 50
//! separate wake-ups a second, and the scheduling around them was most of an idle
//! watchdog's CPU time; on one tick the requests go out together and their replies come
//! back into the same few polls.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::discovery::Shim;
use crate::health::{Health, ProbeResult, Verdict};
use crate::pidfd::Pidfd;
use crate::probe::Prober;
use crate::recovery::Reason;
use crate::upgrading;
use crate::watchdog::Msg;

/// The tick every watcher probes on: a counter bumped once per interval.
pub(crate) struct ProbeClock {
    ticks: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl ProbeClock {
    /// Starts ticking every `interval`.
    pub(crate) fn start(interval: Duration) -> Self {
        let (tx, ticks) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        Self { ticks, task }
    }

    /// A receiver whose first `changed()` is immediate, so a new shim is probed at once.
    fn subscribe(&self) -> watch::Receiver<u64> {
        let mut rx = self.ticks.clone();
        rx.mark_changed();
        rx
    }
}

impl Drop for ProbeClock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Spawns the watcher of one shim; its verdict (dead or hung) goes to `tx`.
pub(crate) fn spawn(
    shim: watch::Receiver<Shim>,
    pidfd: Arc<Pidfd>,
    clock: &ProbeClock,
    interval: Duration,
    misses: u32,
    upgrade_dir: PathBuf,
    tx: mpsc::Sender<Msg>,
) -> JoinHandle<()> {
    let ticks = clock.subscribe();
    tokio::spawn(watch_shim(
        shim,
        pidfd,
        ticks,
        interval,
        misses,
        upgrade_dir,
        tx,
    ))
}

/// Watches one shim: its death through the pidfd, hangs through the probes.
async fn watch_shim(
    shim: watch::Receiver<Shim>,
    pidfd: Arc<Pidfd>,
    ticks: watch::Receiver<u64>,
    interval: Duration,
    misses: u32,
    upgrade_dir: PathBuf,
    tx: mpsc::Sender<Msg>,
) {
    let address = shim.borrow().address.clone();
    let exit = async {
        if let Err(e) = pidfd.wait_exit().await {
            log::error!("shim {address}: {e}; watching it by probes alone");
            std::future::pending::<()>().await;
        }
    };
    let watched = pidfd.identity().pid;
    let start_time = pidfd.identity().start_time;
    let upgrading = move || upgrading::covers(&upgrade_dir, watched, start_time);
    let probing = probe_until_hung(shim, ticks, interval, misses, watched, upgrading);
    let (reason, since) = tokio::select! {
        biased;
        () = exit => {
            log::debug!("shim {address} (pid {watched}) exited");
            (Reason::Dead, Instant::now())
        }
        ended = probing => match ended {
            Ended::Hung { misses, silent_for } => (Reason::Hung { misses, silent_for }, Instant::now()),
            Ended::ServedBy(server) => {
                let _ = tx.send(Msg::NotTheShim { address, watched, server }).await;
                return;
            }
        },
    };
    let _ = tx
        .send(Msg::Verdict {
            address,
            reason,
            pidfd,
            since,
        })
        .await;
}

/// Why probing stopped.
enum Ended {
    /// Too many probes in a row went unanswered.
    Hung { misses: u32, silent_for: Duration },
    /// The socket is served by another process than the watched one (its `Connect`
    /// reply names it): the watched process is not the shim, whatever its command line
    /// says, and must be neither killed for the shim nor trusted as it.
    ServedBy(i32),
}

/// Probes on every tick (deadline: one interval) until `misses` go unanswered in a row.
async fn probe_until_hung(
    shim: watch::Receiver<Shim>,
    mut ticks: watch::Receiver<u64>,
    interval: Duration,
    misses: u32,
    watched: i32,
    upgrading: impl Fn() -> bool,
) -> Ended {
    let mut health = Health::new(misses);
    let epoch = Instant::now();
    let mut prober = Prober::new();
    // The previous probe went unanswered inside an upgrade window.
    let mut shielded = false;
    loop {
        if ticks.changed().await.is_err() {
            // The clock stopped: the watchdog is shutting down and aborts this watcher.
            std::future::pending::<()>().await;
        }
        let (address, id) = {
            let s = shim.borrow();
            (s.address.clone(), s.id.clone())
        };
        let sent = Instant::now();
        let outcome = prober.probe(&address, &id, interval).await;
        if let crate::probe::Outcome::Answered {
            shim_pid: Some(server),
            ..
        } = &outcome
        {
            let server = *server as i32;
            if server != watched {
                return Ended::ServedBy(server);
            }
        }
        let result = if outcome.answered() {
            shielded = false;
            ProbeResult::Answered
        } else if upgrading() {
            // Paused on purpose by `upgrade-shims`, for at most the window: not a hang.
            log::info!("shim {address}: probe unanswered during its upgrade window: not counted");
            shielded = true;
            continue;
        } else if std::mem::take(&mut shielded) {
            // Sent as the last one was judged inside the window, so it waited on the pause
            // too: the new image answers the upgrade's own request (and the window closes)
            // before it serves a connection that waited in its backlog, which can be just
            // after this probe's deadline. Only the next probe's silence counts.
            log::info!(
                "shim {address}: probe sent during its upgrade window unanswered after it: not counted"
            );
            continue;
        } else {
            ProbeResult::Missed
        };
        match health.observe(result, sent - epoch, Instant::now() - epoch) {
            Verdict::Healthy => {}
            Verdict::Recovered { after, silent_for } => log::warn!(
                "shim {address} answered again after {after} missed probes ({:.1} s silent): left alone",
                silent_for.as_secs_f64()
            ),
            Verdict::Missed { misses: n } => {
                log::warn!("shim {address}: probe {n}/{misses} unanswered ({outcome:?})")
            }
            Verdict::Hung { misses, silent_for } => {
                log::error!(
                    "shim {address}: {misses} probes unanswered over {:.1} s: hung",
                    silent_for.as_secs_f64()
                );
                return Ended::Hung { misses, silent_for };
            }
        }
    }
}
