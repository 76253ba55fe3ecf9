//! The last step of a recovery: making sure containerd learned that the dead shim's tasks
//! exited. containerd usually announces the exits itself (it sees the shim's connection
//! close, or finds the shim dead when it starts); the watchdog waits for that, waits for a
//! containerd that is down or hung to come back, and only then announces what is still
//! missing in containerd's place.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use crate::discovery::Shim;
use crate::recovery::{Context, Deleted};

/// How the containerd step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmed {
    /// containerd knows every exit (`ok`), or could not be told some (`!ok`).
    Done {
        /// Whether containerd knows every exit.
        ok: bool,
        /// What happened, for the journal.
        detail: String,
    },
    /// The watchdog is shutting down while containerd still does not answer.
    Interrupted {
        /// What happened, for the journal.
        detail: String,
    },
}

fn done(ok: bool, detail: String) -> Confirmed {
    Confirmed::Done { ok, detail }
}

/// Makes sure containerd knows the exits of `missing` (the shim's tasks whose exits it
/// did not announce within its grace): waits for containerd while it does not answer,
/// gives it the grace again once back, and announces what is still missing in its place.
pub async fn confirm_containerd(
    ctx: &Context,
    shim: &Shim,
    since: Instant,
    missing: Vec<String>,
    deleted: &HashMap<String, Deleted>,
) -> Confirmed {
    let total = shim.tasks.len();
    let ns = shim.namespace.as_str();
    let mut missing = missing;
    if missing.is_empty() {
        return done(
            true,
            "containerd announced every exit within its grace".into(),
        );
    }
    let mut notes = Vec::new();
    let bundle_exists = |id: &str| shim.tasks.iter().any(|t| t.id == id && t.bundle.exists());
    // containerd removes a bundle only once it is done with the task: nothing to confirm.
    missing.retain(|id| {
        let kept = bundle_exists(id);
        if !kept {
            notes.push(format!("{id}: bundle removed by containerd"));
        }
        kept
    });
    if missing.is_empty() {
        return done(true, notes.join("; "));
    }
    // Nothing can be confirmed with a containerd that is down or hung. Once back it cleans
    // up after the dead shim by itself (when it starts, or when it reads the closed
    // connection), so it gets the grace again before anything is announced in its place.
    let t = Instant::now();
    if let Err(e) = ctx.api.ping().await {
        log::warn!(
            "shim {}: containerd does not answer ({e}); waiting for containerd to confirm the exits",
            shim.address
        );
        let mut shutdown = ctx.shutdown.clone();
        loop {
            if *shutdown.borrow_and_update() {
                notes.push(format!(
                    "containerd did not answer for {} ms; shutting down: the next start \
                     finishes this incident",
                    t.elapsed().as_millis()
                ));
                return Confirmed::Interrupted {
                    detail: notes.join("; "),
                };
            }
            tokio::select! {
                _ = shutdown.changed() => continue,
                answered = ctx.api.ping() => if answered.is_ok() { break },
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(ctx.probe_deadline) => {}
            }
        }
        log::info!(
            "shim {}: containerd answers again after {} ms",
            shim.address,
            t.elapsed().as_millis()
        );
        notes.push(format!(
            "containerd did not answer for {} ms",
            t.elapsed().as_millis()
        ));
        let back = Instant::now();
        missing = ctx
            .seen
            .wait_all(ns, &missing, since, back + ctx.containerd_grace)
            .await;
        if missing.is_empty() {
            notes.push(format!(
                "then it announced every exit within {} ms",
                back.elapsed().as_millis()
            ));
            return done(true, notes.join("; "));
        }
    }
    let mut ok = true;
    for id in &missing {
        let status = ctx.api.task_status(ns, id).await;
        if let Ok(None) = status {
            if !bundle_exists(id) {
                notes.push(format!("{id}: gone from containerd"));
                continue;
            }
        }
        let d = deleted.get(id).cloned().unwrap_or_default();
        let exited_at = d.exited_at.unwrap_or_else(SystemTime::now);
        let exit_status = if deleted.contains_key(id) {
            d.exit_status
        } else {
            137
        };
        match ctx
            .api
            .publish_exit(ns, id, d.pid, exit_status, exited_at)
            .await
        {
            Ok(()) => notes.push(format!("{id}: TaskExit published (status was {status:?})")),
            Err(e) => {
                ok = false;
                notes.push(format!("{id}: publishing TaskExit: {e}"));
            }
        }
        match ctx.api.delete_task(ns, id).await {
            Ok(()) => notes.push(format!("{id}: task deleted")),
            Err(e) => {
                // A dead shim's task delete reports the closed connection after
                // containerd removed the task: check before calling it a failure.
                match ctx.api.task_status(ns, id).await {
                    Ok(None) => notes.push(format!("{id}: task delete said {e}; task gone")),
                    other => {
                        ok = false;
                        notes.push(format!("{id}: task delete: {e}; status now {other:?}"));
                    }
                }
            }
        }
    }
    done(
        ok,
        format!(
            "containerd did not announce {} of {} exits within {:?}: {}",
            missing.len(),
            total,
            ctx.containerd_grace,
            notes.join("; ")
        ),
    )
}
