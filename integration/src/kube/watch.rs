//! Timelines of what the API server shows after a fault: when a pod's containers went not
//! ready, when the kubelet restarted them, when the node went NotReady and back.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{condition, pod, Kubectl, NODE_NAME};
use crate::until_some;

/// What became of one pod after `t0`, as seconds after it (`None`: not within the window).
#[derive(Debug, Clone, Default)]
pub struct PodTimeline {
    /// The API server first showed the fault: the pod's Ready condition false, or (when the
    /// kubelet was quicker than one poll) its container already restarted.
    pub noticed: Option<f64>,
    /// The pod's container restarted by the kubelet (its restart count grew, or its
    /// container id changed).
    pub restarted: Option<f64>,
    /// Running and Ready again after a restart.
    pub ready_again: Option<f64>,
    /// Length of the window watched.
    pub window: f64,
}

/// Watches pod `name` from `t0` for at most `window`, until it was restarted and is Ready
/// again. `before` is the pod object before the fault.
pub async fn pod_after_fault(
    k: &Kubectl,
    name: &str,
    before: &Value,
    t0: Instant,
    window: Duration,
) -> PodTimeline {
    let restarts0 = pod::restart_count(before);
    let id0 = before["status"]["containerStatuses"][0]["containerID"].clone();
    let timeline = RefCell::new(PodTimeline {
        window: window.as_secs_f64(),
        ..Default::default()
    });
    let tl = &timeline;
    let id0 = &id0;
    let limit = window.saturating_sub(t0.elapsed());
    until_some(limit, move || async move {
        let p = pod::get(k, name).await?;
        let now = t0.elapsed().as_secs_f64();
        let mut tl = tl.borrow_mut();
        let ready = condition(&p, "Ready").is_some_and(|(s, _, _)| s == "True");
        if !ready && tl.noticed.is_none() {
            tl.noticed = Some(now);
        }
        let id = &p["status"]["containerStatuses"][0]["containerID"];
        if tl.restarted.is_none()
            && (pod::restart_count(&p) > restarts0 || (id != id0 && !id.is_null()))
        {
            tl.restarted = Some(now);
            tl.noticed.get_or_insert(now);
        }
        if tl.restarted.is_some() && pod::running_ready(&p) && tl.ready_again.is_none() {
            tl.ready_again = Some(now);
        }
        tl.ready_again.map(|_| ())
    })
    .await;
    timeline.into_inner()
}

/// The node's Ready condition over a window: `(seconds after t0, status, reason, message)`
/// at every change.
pub async fn node_ready_changes(
    k: &Kubectl,
    t0: Instant,
    window: Duration,
    mut stop: impl FnMut(&[(f64, String, String, String)]) -> bool,
) -> Vec<(f64, String, String, String)> {
    let changes = RefCell::new(Vec::<(f64, String, String, String)>::new());
    let ch = &changes;
    let limit = window.saturating_sub(t0.elapsed());
    let stop = RefCell::new(&mut stop);
    let st = &stop;
    until_some(limit, move || async move {
        let node = k.get_json(&["node", NODE_NAME]).await.ok()?;
        let (s, r, m) = condition(&node, "Ready")?;
        let mut ch = ch.borrow_mut();
        if ch
            .last()
            .is_none_or(|(_, s0, r0, m0)| (s0, r0, m0) != (&s, &r, &m))
        {
            ch.push((t0.elapsed().as_secs_f64(), s, r, m));
        }
        (st.borrow_mut())(&ch).then_some(())
    })
    .await;
    changes.into_inner()
}

/// `12.3 s`, or `— (>W s)` for something that did not happen within the window.
pub fn secs(t: Option<f64>, window: f64) -> String {
    match t {
        Some(t) => format!("{t:.1} s"),
        None => format!("— (>{window:.0} s)"),
    }
}
