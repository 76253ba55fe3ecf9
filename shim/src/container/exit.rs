//! The end of init: its exit handled and published, the output of a finished process
//! drained.

use super::*;

impl Container {
    /// Handles init's reaped exit: kills what a shared PID namespace leaves behind, waits
    /// (bounded) for its execs' exits to be reported first, as containerd requires, lets
    /// the output drain, then publishes TaskExit.
    pub async fn init_exited(&self, shared: &Shared) {
        if !self.own_pid_namespace {
            // Without its own PID namespace nothing reaps the container's other processes.
            if let Err(e) = self.runc.kill(&self.id, libc::SIGKILL, true).await {
                log::debug!("container {}: kill --all after init exit: {e}", self.id);
            }
        }
        let execs: Vec<Arc<Process>> = self.execs().values().map(|e| e.process.clone()).collect();
        // An exec still in `runc exec` never waits for runc's deadline: its Start ends now
        // (it never ran, or it is killed right after it started).
        for p in &execs {
            p.abort_start("its container's end");
        }
        let all_execs = async {
            for p in execs {
                let pending = !matches!(p.state(), State::Created | State::Deleted);
                if pending && !p.is_reported() {
                    p.wait_reported().await;
                }
            }
        };
        if tokio::time::timeout(EXEC_EXIT_LIMIT, all_execs)
            .await
            .is_err()
        {
            log::warn!("container {}: execs still alive after init exit", self.id);
        }
        let progress = self.init.copiers.lock().await.progress();
        progress.drain(IO_DRAIN_LIMIT).await;
        let _lifecycle = self.init.lifecycle.lock().await;
        // A Kill still in runc answers first (bounded). Taken under the lifecycle lock, so
        // a Kill never waits behind a Start stuck in runc.
        let kills = tokio::time::timeout(KILL_ANSWER_LIMIT, self.init.kills.write()).await;
        if kills.is_err() {
            log::warn!(
                "container {}: a Kill is still in runc after {KILL_ANSWER_LIMIT:?}; exit published",
                self.id
            );
        }
        // After the drain, and checked once more for an OOM counted late.
        self.report_init_exit_locked(shared);
        crate::memory::trim_heap();
    }
}

/// Publishes the exit of exec `p` once, under its lifecycle lock (so after its start
/// event); init's goes through [`Container::report_init_exit_locked`] and its OOM gate.
pub async fn report_exit(shared: &Shared, p: &Process) {
    let _lifecycle = p.lifecycle.lock().await;
    report_exit_locked(shared, p);
}

/// [`report_exit`] for a caller that already holds the lifecycle lock.
pub fn report_exit_locked(shared: &Shared, p: &Process) {
    if p.is_reported() {
        return;
    }
    let Some(e) = p.exited() else { return };
    // Queued before Wait answers, so TaskExit always precedes the TaskDelete that a
    // Delete following Wait publishes.
    shared.events.publish(Event::Exit {
        id: p.container.clone(),
        exec_id: if p.is_init() {
            p.container.clone()
        } else {
            p.exec_id.clone()
        },
        pid: p.pid(),
        status: e.status,
        at: e.at,
    });
    p.mark_reported();
}

/// Lets the output of a finished process reach containerd, then stops its copy loops.
///
/// containerd (CRI's exit monitor) calls Delete as soon as Wait returns, which can be
/// before the exit handler finished draining; aborting then would cut off the tail.
///
/// A logging binary is stopped last, once its pipes are closed, and waited for (SIGTERM,
/// SIGKILL after [`io::logger::STOP_GRACE`]), as the Go shim's Delete does.
pub async fn finish_io(p: &Process) {
    let progress = p.copiers.lock().await.progress();
    progress.drain_moving(DELETE_DRAIN_LIMIT).await;
    let logger = {
        let mut copiers = p.copiers.lock().await;
        let logger = copiers.take_logger();
        copiers.abort();
        logger
    };
    if let Some(logger) = logger {
        logger.stop(io::logger::STOP_GRACE).await;
    }
}
