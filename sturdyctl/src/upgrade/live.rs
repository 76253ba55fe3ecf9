//! The in-place move of one shim that passed every check: the shim's `Upgrade` call under
//! an upgrade window, then a look at the process that does not take the shim's word for
//! it. The answer comes from whichever image serves after the exec, so a shim that claims
//! success while still running the old image, or a process that restarted under the same
//! pid, must not pass for an upgrade.

use std::time::Duration;

use crate::discovery::Shim;
use crate::procfs::{self, ProcIdentity};
use crate::{builds, trust, upgrading};

use super::control::{self, Upgraded, UPGRADE_GRACE};
use super::{Candidate, Mode, Outcome, Report};

/// Longest an upgrade may wait for a shim's calls in flight before giving up (the same
/// as a rehearsal's: what it measured is what the exec adds to).
pub const UPGRADE_SETTLE: Duration = Duration::from_secs(2);

/// What the shim's error message says happened (its contract's prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `refused:` nothing was touched; the shim serves on its old image.
    Refused,
    /// `rolled back:` the new image did not resume; the old one was executed again with
    /// the same state and serves on.
    RolledBack,
    /// Anything else: the pause did not settle, or no answer came at all. Requests flow
    /// again if the shim answered; if it did not, nobody knows what runs until it is
    /// looked at.
    Failed,
}

/// Sorts an `Upgrade` error by its prefix.
pub fn classify(message: &str) -> Failure {
    if message.starts_with("refused:") {
        Failure::Refused
    } else if message.starts_with("rolled back:") {
        Failure::RolledBack
    } else {
        Failure::Failed
    }
}

/// Moves `shim` onto `new` and records in `report` what it answered and what runs now.
pub(super) fn apply(shim: &Shim, new: &Candidate, mode: &Mode, report: &mut Report) -> Outcome {
    let Some(process) = shim.process.as_ref() else {
        return Outcome::Refused(super::UpgradeError::NoProcess.to_string());
    };
    let Some(new_build) = new.binary.build_id.as_deref() else {
        return Outcome::Refused(format!(
            "{}: no build-id, which the shim needs to know it opened the file checked",
            new.binary.path.display()
        ));
    };
    // The watchdog must not take the pause and the exec for a hang; the window covers the
    // longest the shim may take to answer.
    let window = match upgrading::open(
        &mode.upgrade_dir,
        process.pid,
        process.start_time,
        UPGRADE_SETTLE + UPGRADE_GRACE,
    ) {
        Ok(w) => w,
        Err(e) => return Outcome::Refused(format!("marking the upgrade window: {e}")),
    };
    let answer = control::upgrade(
        &shim.address,
        &new.binary.resolved,
        new_build,
        UPGRADE_SETTLE,
    );
    drop(window);
    let after = running_build(process);
    report.running_build = after.as_ref().ok().cloned().flatten();
    match answer {
        Ok(u) => {
            report.pause_ms = Some(u.paused_us as f64 / 1000.0);
            let outcome = judge_upgraded(process.pid, new_build, &u, after);
            report.upgrade = Some(u);
            outcome
        }
        Err(message) => {
            report.error = Some(message.clone());
            judge_failed(&message, report.old_build.as_deref(), after)
        }
    }
}

/// The build the shim's process runs now, after checking it is the process that was
/// asked (same pid, same start time, alive) and still one sturdyctl trusts.
fn running_build(process: &ProcIdentity) -> Result<Option<String>, String> {
    let pid = process.pid;
    match procfs::stat(pid) {
        Ok((state, start)) if state != 'Z' && start == process.start_time => {}
        Ok(_) | Err(_) => {
            return Err(format!(
                "the shim's process {pid} is gone or another process has its pid"
            ))
        }
    }
    trust::process(pid).map_err(|e| format!("the shim's process is not trusted now: {e}"))?;
    builds::of_process(pid).map_err(|e| format!("the shim's running image: {e}"))
}

/// An answered upgrade is one only if the process confirms it.
pub fn judge_upgraded(
    pid: i32,
    new_build: &str,
    u: &Upgraded,
    after: Result<Option<String>, String>,
) -> Outcome {
    let running = match after {
        Ok(r) => r,
        Err(why) => return Outcome::Failed(format!("answered as upgraded, but {why}")),
    };
    if running.as_deref() != Some(new_build) {
        return Outcome::Failed(format!(
            "answered as upgraded, but pid {pid} runs build {}",
            running.as_deref().unwrap_or("(none)")
        ));
    }
    if u.pid != pid || u.new_build_id != new_build {
        return Outcome::Failed(format!(
            "answered as pid {} on build {}, not pid {pid} on build {new_build}",
            u.pid, u.new_build_id
        ));
    }
    if u.paused_us == 0 && u.old_build_id == u.new_build_id {
        // It ran the build already (upgraded by someone else since the checks).
        return Outcome::Current;
    }
    Outcome::Upgraded
}

/// A refusal or a rollback leaves the old build running; anything else about what runs is
/// said as it is.
pub fn judge_failed(
    message: &str,
    old_build: Option<&str>,
    after: Result<Option<String>, String>,
) -> Outcome {
    let kind = classify(message);
    let running = match after {
        Ok(r) => r,
        Err(why) => return Outcome::Failed(format!("{message}; and {why}")),
    };
    let on_old = running.as_deref() == old_build;
    match kind {
        Failure::Refused if on_old => Outcome::Refused(message.to_string()),
        Failure::RolledBack if on_old => Outcome::RolledBack(message.to_string()),
        Failure::Failed => Outcome::Failed(match running {
            Some(b) if on_old => format!("{message} (still on the old build {b})"),
            Some(b) => format!("{message} (now runs build {b})"),
            None => format!("{message} (its image has no build-id)"),
        }),
        Failure::Refused | Failure::RolledBack => Outcome::Failed(format!(
            "{message}; but it runs build {}, not the old {}",
            running.as_deref().unwrap_or("(none)"),
            old_build.unwrap_or("(none)")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(pid: i32, old: &str, new: &str, paused_us: u64) -> Upgraded {
        Upgraded {
            pid,
            old_version: "0.1.0".into(),
            old_build_id: old.into(),
            new_version: "0.1.0".into(),
            new_build_id: new.into(),
            paused_us,
            held: 2,
            connections: 3,
            waits: 2,
        }
    }

    #[test]
    fn error_prefixes_say_what_happened() {
        assert_eq!(classify("refused: build differs"), Failure::Refused);
        assert_eq!(classify("rolled back: resume: hook"), Failure::RolledBack);
        assert_eq!(classify("not settled within 2s"), Failure::Failed);
        assert_eq!(classify("Upgrade: no answer: timed out"), Failure::Failed);
        // The prefix, not a mention.
        assert_eq!(classify("not settled; refused: x"), Failure::Failed);
    }

    #[test]
    fn a_rollback_or_refusal_counts_only_on_the_old_build() {
        let old = Some("aa01");
        let on = |b: &str| Ok(Some(b.to_string()));
        assert_eq!(
            judge_failed("rolled back: no resume", old, on("aa01")),
            Outcome::RolledBack("rolled back: no resume".into())
        );
        assert_eq!(
            judge_failed("refused: not root's", old, on("aa01")),
            Outcome::Refused("refused: not root's".into())
        );
        let o = judge_failed("rolled back: no resume", old, on("bb02"));
        assert!(
            matches!(&o, Outcome::Failed(m) if m.contains("runs build bb02, not the old aa01")),
            "{o:?}"
        );
        let o = judge_failed("rolled back: x", old, Err("process 7 is gone".into()));
        assert!(
            matches!(&o, Outcome::Failed(m) if m.contains("7 is gone")),
            "{o:?}"
        );
        let o = judge_failed("not settled within 2s", old, on("aa01"));
        assert_eq!(
            o,
            Outcome::Failed("not settled within 2s (still on the old build aa01)".into())
        );
        let o = judge_failed("Upgrade: no answer: timed out", old, on("bb02"));
        assert!(matches!(&o, Outcome::Failed(m) if m.ends_with("(now runs build bb02)")));
    }

    #[test]
    fn an_answered_upgrade_must_show_in_the_process() {
        let u = answer(7, "aa01", "bb02", 800);
        let on = |b: &str| Ok(Some(b.to_string()));
        assert_eq!(judge_upgraded(7, "bb02", &u, on("bb02")), Outcome::Upgraded);
        let o = judge_upgraded(7, "bb02", &u, on("aa01"));
        assert!(
            matches!(&o, Outcome::Failed(m) if m.contains("runs build aa01")),
            "{o:?}"
        );
        let o = judge_upgraded(7, "bb02", &u, Err("the shim's process 7 is gone".into()));
        assert!(
            matches!(&o, Outcome::Failed(m) if m.contains("is gone")),
            "{o:?}"
        );
        let o = judge_upgraded(7, "bb02", &answer(8, "aa01", "bb02", 800), on("bb02"));
        assert!(
            matches!(&o, Outcome::Failed(m) if m.contains("pid 8")),
            "{o:?}"
        );
        assert_eq!(
            judge_upgraded(7, "bb02", &answer(7, "bb02", "bb02", 0), on("bb02")),
            Outcome::Current
        );
    }
}
