//! What containerd tells the watchdog, each followed by its own task so a slow containerd
//! never delays a verdict: the runtime name of every container, and its task events.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::containerd::{event_container_id, Api};
use crate::discovery::Runtimes;
use crate::recovery::SeenExits;
use crate::watchdog::Msg;

/// Keeps the runtime names of containerd's containers current, away from the main loop
/// (a slow containerd must not delay verdicts).
///
/// A container's runtime never changes, so the list (which carries every container's whole
/// spec: the largest cost of an idle watchdog when it ran every interval) is taken again
/// only when a task is created or a rescan finds one it lacks, at the latest after
/// [`RELIST_AFTER`], and every interval while containerd does not answer.
pub(crate) async fn refresh_runtimes(
    api: Arc<Api>,
    cache: Arc<std::sync::Mutex<Option<Runtimes>>>,
    relist: Arc<Notify>,
    interval: Duration,
) {
    let mut down = false;
    let mut first = true;
    loop {
        if !first {
            let wait = if down { interval } else { RELIST_AFTER };
            tokio::select! {
                _ = relist.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        first = false;
        let listed = api.runtimes().await;
        let value = match listed {
            Ok(r) => {
                if down {
                    log::info!("containerd answers again");
                    down = false;
                }
                Some(r)
            }
            Err(e) => {
                if !down {
                    log::warn!("{e}; discovering from the bundles alone until it answers");
                    down = true;
                }
                None
            }
        };
        *cache.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

/// The longest containerd's runtime names go without being listed again.
const RELIST_AFTER: Duration = Duration::from_secs(60);

/// Follows containerd's task events: records exits and deletes, and asks for a rescan.
pub(crate) async fn follow_events(
    api: Arc<Api>,
    seen: Arc<SeenExits>,
    tx: mpsc::Sender<Msg>,
    relist: Arc<Notify>,
) {
    let mut warned = false;
    loop {
        match api.subscribe_tasks().await {
            Ok(mut stream) => {
                if warned {
                    log::info!("following containerd's task events again");
                    warned = false;
                }
                loop {
                    match stream.message().await {
                        Ok(Some(env)) => {
                            if env.topic == "/tasks/exit" || env.topic == "/tasks/delete" {
                                if let Some(id) = event_container_id(&env) {
                                    seen.record(&env.namespace, &id);
                                }
                            }
                            if env.topic == "/tasks/create" {
                                relist.notify_one();
                            }
                            if env.topic == "/tasks/create" || env.topic == "/tasks/start" {
                                let _ = tx.try_send(Msg::Rescan);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            log::debug!("task events: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                if !warned {
                    log::warn!("cannot follow containerd's task events: {e}; retrying");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
