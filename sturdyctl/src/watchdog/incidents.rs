//! The incidents of the watchdog loop: resuming those an earlier watchdog left
//! unfinished, running recoveries, and ending them in the journal however they end.

use std::sync::Arc;
use std::time::Instant;

use super::{State, WatchdogError};
use crate::discovery::Shim;
use crate::journal::{Entry, JournalError, Phase};
use crate::pidfd::Pidfd;
use crate::recovery::{self, Reason};

impl State {
    pub(super) async fn resume_unfinished(&mut self) -> Result<(), WatchdogError> {
        let journal = self.ctx.journal.clone();
        let incidents = tokio::task::spawn_blocking(move || journal.incidents())
            .await
            .map_err(|e| JournalError::Io {
                path: self.cfg.journal.clone(),
                op: "read",
                source: std::io::Error::other(e.to_string()),
            })??;
        for inc in incidents {
            if inc.finished() {
                self.done.insert(inc.id.clone());
                continue;
            }
            let Some((reason, shim)) = inc.started() else {
                continue;
            };
            if let Some(why) = crate::replay::refusal(shim, &self.cfg.state_dir) {
                log::error!(
                    "incident {}: journalled by an earlier watchdog, NOT resumed: {why}",
                    inc.id
                );
                self.end_incident(&inc.id, format!("refused on resume: {why}"))
                    .await;
                continue;
            }
            log::warn!("incident {}: started by an earlier watchdog ({reason}), not finished: finishing it", inc.id);
            self.spawn_recovery(
                shim.clone(),
                Reason::Resumed {
                    original: reason.to_string(),
                },
                None,
                Instant::now(),
            );
        }
        Ok(())
    }

    pub(super) fn spawn_recovery(
        &mut self,
        shim: Shim,
        reason: Reason,
        pidfd: Option<Arc<Pidfd>>,
        since: Instant,
    ) {
        let id = shim.incident_id();
        if self.done.contains(&id) || !self.recovering.insert(shim.address.clone()) {
            return;
        }
        let ctx = self.ctx.clone();
        let address = shim.address.clone();
        let task = self
            .recoveries
            .spawn(async move { recovery::recover(&ctx, shim, reason, pidfd, since).await });
        self.recovery_of.insert(task.id(), (address, id));
    }

    /// Frees the shim of a finished recovery for later scans. A recovery that panicked (or
    /// was cancelled) ends its incident in the journal as failed; the shim is then found
    /// again by a scan and recovered anew, instead of being skipped for ever.
    pub(super) async fn recovery_done(
        &mut self,
        res: Result<(tokio::task::Id, recovery::Outcome), tokio::task::JoinError>,
    ) {
        let task = match &res {
            Ok((task, _)) => *task,
            Err(e) => e.id(),
        };
        let Some((address, id)) = self.recovery_of.remove(&task) else {
            log::error!("a recovery task ended that no shim is known for");
            return;
        };
        self.recovering.remove(&address);
        match res {
            Ok((_, outcome)) => {
                if matches!(
                    outcome,
                    recovery::Outcome::Recovered { .. } | recovery::Outcome::Abandoned
                ) {
                    self.done.insert(id);
                }
            }
            Err(e) => {
                let why = if e.is_panic() {
                    let payload = e.into_panic();
                    let text = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into());
                    format!("recovery panicked: {text}")
                } else {
                    format!("recovery task ended: {e}")
                };
                log::error!("incident {id}: {why}; shim {address} is looked at again");
                self.end_incident(&id, why).await;
            }
        }
    }

    /// Journals `id` as finished and failed, with `why`.
    pub(super) async fn end_incident(&self, id: &str, why: String) {
        let entry = Entry {
            at_ms: crate::journal::now_ms(),
            incident: id.to_string(),
            phase: Phase::Finished {
                ok: false,
                total_ms: 0,
                summary: why,
            },
        };
        let journal = self.ctx.journal.clone();
        match tokio::task::spawn_blocking(move || journal.append(&entry)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::error!("incident {id}: {e}"),
            Err(e) => log::error!("incident {id}: journal task failed: {e}"),
        }
    }
}
