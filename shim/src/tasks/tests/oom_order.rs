//! TaskOOM in its place among a container's events: after TaskStart, before init's
//! TaskExit, never outside them, however the OOM watch and the lifecycle race.

use super::resources::{memory_events, v2_paths};
use super::*;

const IN_ORDER: [&str; 5] = [
    "/tasks/create",
    "/tasks/start",
    "/tasks/oom",
    "/tasks/exit",
    "/tasks/delete",
];

/// A v2 cgroup fixture: a directory with a `memory.events` whose `oom_kill` is 0.
fn cgroup() -> (tempfile::TempDir, PathBuf) {
    let cg = tempfile::tempdir().unwrap();
    let events = cg.path().join("memory.events");
    std::fs::write(&events, memory_events(0)).unwrap();
    (cg, events)
}

/// Writes `oom_kill` into the fixture, then waits until container `id`'s OOM watch has
/// made a pass over it (published or not, whatever it decided is decided then).
async fn oom_seen_by_the_watch(rig: &Rig, id: &str, events: &Path, oom_kill: u64) {
    let c = rig.tasks.container(id).unwrap();
    rig.wait_for("the OOM watch", || c.oom_passes().is_some())
        .await;
    let before = c.oom_passes().unwrap_or_default();
    // One synchronous write: the watch (on this test's thread) reads it whole.
    std::fs::write(events, memory_events(oom_kill)).unwrap();
    rig.wait_for("a pass of the OOM watch", || {
        c.oom_passes().unwrap_or_default() > before
    })
    .await;
}

/// An OOM in a created container (runc init or a hook ran out of memory) is held until
/// the container's TaskStart is out, and then published at once.
#[tokio::test]
async fn an_oom_before_the_start_is_published_right_after_it() {
    let rig = Rig::new();
    let (cg, events) = cgroup();
    rig.create("c", &[("cgroups", &v2_paths(cg.path()))])
        .await
        .unwrap();
    oom_seen_by_the_watch(&rig, "c", &events, 1).await;
    assert_eq!(
        rig.topics("c"),
        ["/tasks/create"],
        "TaskOOM before TaskStart"
    );
    rig.tasks.start("c", "").await.unwrap();
    assert_eq!(
        rig.topics("c"),
        IN_ORDER[..3],
        "held TaskOOM not out after Start"
    );
    rig.tasks.kill("c", "", 9, false).await.unwrap();
    rig.wait("c", "").await.unwrap();
    rig.tasks.delete("c", "").await.unwrap();
    assert_eq!(rig.topics("c"), IN_ORDER);
}

/// A container deleted without ever starting says nothing of an OOM, as containerd's Go
/// shim (which watches only from Start): CRI would take it for the reason of an exit of a
/// process that never ran.
#[tokio::test]
async fn an_oom_of_a_container_that_never_started_is_not_published() {
    let rig = Rig::new();
    let (cg, events) = cgroup();
    rig.create("c", &[("cgroups", &v2_paths(cg.path()))])
        .await
        .unwrap();
    oom_seen_by_the_watch(&rig, "c", &events, 1).await;
    rig.tasks.delete("c", "").await.unwrap();
    assert_eq!(
        rig.topics("c"),
        ["/tasks/create", "/tasks/exit", "/tasks/delete"]
    );
}

/// Once init's TaskExit is out, an OOM (of a process left in a shared PID namespace, say)
/// is not published: CRI would rewrite the reason of an exit it already recorded.
#[tokio::test]
async fn no_oom_is_published_after_the_exit() {
    let rig = Rig::new();
    let (cg, events) = cgroup();
    rig.create("c", &[("cgroups", &v2_paths(cg.path()))])
        .await
        .unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.kill("c", "", 9, false).await.unwrap();
    rig.wait("c", "").await.unwrap();
    oom_seen_by_the_watch(&rig, "c", &events, 1).await;
    assert_eq!(
        rig.topics("c"),
        ["/tasks/create", "/tasks/start", "/tasks/exit"],
        "TaskOOM after TaskExit"
    );
    rig.tasks.delete("c", "").await.unwrap();
}

/// One container whose init runs out of memory after `delay` (shell), while `runc start`
/// takes `start_after` seconds more after letting init run; its events in order, or why
/// not.
async fn one_oom_kill(
    rig: &Rig,
    id: &str,
    delay: &str,
    start_after: &str,
) -> std::result::Result<(), String> {
    let (cg, events) = cgroup();
    let init = format!(
        "{delay} printf 'oom 1\\noom_kill 1\\n' > {} && kill -9 $$",
        events.display()
    );
    let paths = v2_paths(cg.path());
    let mut steer = vec![("cgroups", paths.as_str()), ("init", init.as_str())];
    if !start_after.is_empty() {
        steer.push(("start-after", start_after));
    }
    let why = |what: &str, e: Error| format!("{id}: {what}: {e}");
    rig.create(id, &steer).await.map_err(|e| why("create", e))?;
    rig.tasks.start(id, "").await.map_err(|e| why("start", e))?;
    let exited = rig.wait(id, "").await.map_err(|e| why("wait", e))?;
    rig.tasks
        .delete(id, "")
        .await
        .map_err(|e| why("delete", e))?;
    let topics = rig.topics(id);
    if exited.status != 137 || topics != IN_ORDER {
        return Err(format!(
            "{id} (init `{delay}`, start after {start_after:?}): status {}, {topics:?}",
            exited.status
        ));
    }
    Ok(())
}

/// The race `scripts/test.sh` once lost on a busy machine (TaskOOM before TaskStart),
/// run hundreds of times with init's OOM landing before, during and after `runc start`
/// returns, several containers at once: the order is kept every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oom_is_published_between_start_and_exit_however_they_race() {
    const ROUNDS: usize = 200;
    const AT_ONCE: usize = 8;
    // (what init does before its OOM, seconds `runc start` takes after init may run)
    const TIMINGS: [(&str, &str); 6] = [
        ("", ""),
        ("", "0.002"),
        ("", "0.02"),
        ("sleep 0.002;", "0.005"),
        ("sleep 0.01;", ""),
        ("sleep 0.01;", "0.03"),
    ];
    let rig = &Rig::new();
    let started = Instant::now();
    let mut failed = Vec::new();
    let rounds: Vec<usize> = (0..ROUNDS).collect();
    for batch in rounds.chunks(AT_ONCE) {
        let runs = batch.iter().map(|&i| {
            let (delay, start_after) = TIMINGS[i % TIMINGS.len()];
            let id = format!("c{i}");
            async move { one_oom_kill(rig, &id, delay, start_after).await }
        });
        failed.extend(
            futures::future::join_all(runs)
                .await
                .into_iter()
                .filter_map(std::result::Result::err),
        );
    }
    eprintln!(
        "{ROUNDS} OOM kills in {:?}, {} out of order",
        started.elapsed(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {ROUNDS} out of order, e.g. {:#?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}
