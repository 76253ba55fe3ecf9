//! An exec whose `runc exec` hangs (incident 002's shape): its Start fails at the setup
//! deadline on its own, and a Kill or Delete of the exec, or the container's end, ends it
//! at once, with runc and what it started killed.

use super::*;
use crate::exec::EXEC_START_LIMIT;
use containerd_shim_protos::ttrpc::Code;

/// A running container "c" whose `runc exec` hangs, with exec "e" registered.
async fn hanging_exec(rig: &Rig) {
    rig.create("c", &[("exec-sleep", "1000")]).await.unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.exec("c", "e", SPEC, Default::default()).unwrap();
}

/// Starts exec "e" in a task of its own; returns once its `runc exec` runs (and hangs),
/// with the Start and the pid of that runc.
async fn start_hanging(rig: &Rig) -> (tokio::task::JoinHandle<Result<i32>>, i32) {
    let start = {
        let tasks = rig.tasks.clone();
        tokio::spawn(async move { tasks.start("c", "e").await })
    };
    let pid_file = rig.root().join("test").join("exec-c.pid");
    let pid = || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
    };
    // The fake writes its pid with a shell redirection: the file is empty for a moment.
    rig.wait_for("runc exec to run", || pid().is_some()).await;
    (start, pid().unwrap())
}

/// Whether anything of the process group `pgid` (runc and what it started) is left.
fn group_alive(pgid: i32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
}

async fn ended_within(
    rig: &Rig,
    start: tokio::task::JoinHandle<Result<i32>>,
    limit: Duration,
) -> Result<i32> {
    tokio::time::timeout(limit, start)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the exec's Start still hangs after {limit:?}: {:?}, events {:?}",
                rig.tasks.state("c", "e"),
                rig.events.summary()
            )
        })
        .unwrap()
}

/// Nobody asks: the Start fails at the setup deadline with runc's error (a timeout,
/// DEADLINE_EXCEEDED, naming the container, the exec and the runc command), and runc is
/// killed with what it started.
#[tokio::test]
async fn a_hung_runc_exec_fails_the_start_at_its_deadline() {
    let rig = Rig::new();
    hanging_exec(&rig).await;
    let began = Instant::now();
    let (start, runc) = start_hanging(&rig).await;
    let err = ended_within(&rig, start, EXEC_START_LIMIT + Duration::from_secs(10))
        .await
        .unwrap_err();
    let took = began.elapsed();
    assert!(
        matches!(&err, Error::Exec { source, .. } if source.is_timeout()),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::DEADLINE_EXCEEDED);
    let text = err.to_string();
    assert!(
        text.contains("container c") && text.contains("exec e") && text.contains("runc exec c"),
        "{text}"
    );
    assert!(took >= EXEC_START_LIMIT, "failed after {took:?}");
    rig.wait_for("runc and what it started to die", || !group_alive(runc))
        .await;
    assert_eq!(rig.wait("c", "e").await.unwrap().status, NEVER_RAN);
    rig.tasks.delete("c", "e").await.unwrap();
    rig.tasks.kill("c", "", 9, false).await.unwrap();
}

/// A Kill of an exec whose `runc exec` hangs ends its Start at once: the exec never ran.
#[tokio::test]
async fn a_kill_ends_a_start_stuck_in_runc_exec_at_once() {
    let rig = Rig::new();
    hanging_exec(&rig).await;
    let (start, runc) = start_hanging(&rig).await;
    rig.tasks.kill("c", "e", 9, false).await.unwrap();
    let err = ended_within(&rig, start, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ExecAborted { by: "a Kill", .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::ABORTED);
    rig.wait_for("runc and what it started to die", || !group_alive(runc))
        .await;
    assert_eq!(rig.wait("c", "e").await.unwrap().status, NEVER_RAN);
    assert_eq!(
        rig.topics("c")[2..],
        ["/tasks/exec-added e"],
        "an exec that never ran has no other event"
    );
    rig.tasks.kill("c", "", 9, false).await.unwrap();
}

/// A Delete of an exec whose `runc exec` hangs does not wait for runc's deadline.
#[tokio::test]
async fn a_delete_ends_a_start_stuck_in_runc_exec_at_once() {
    let rig = Rig::new();
    hanging_exec(&rig).await;
    let (start, runc) = start_hanging(&rig).await;
    let deleted = tokio::time::timeout(Duration::from_secs(2), rig.tasks.delete("c", "e"))
        .await
        .expect("Delete waited for the hung runc exec");
    assert_eq!(deleted.unwrap().1.status, NEVER_RAN);
    let err = ended_within(&rig, start, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ExecAborted { by: "a Delete", .. }),
        "{err:?}"
    );
    rig.wait_for("runc and what it started to die", || !group_alive(runc))
        .await;
    assert!(is(&rig.tasks.state("c", "e"), not_found));
    rig.tasks.kill("c", "", 9, false).await.unwrap();
}

/// init's exit is published at once, not after the hung exec's deadline (StopPodSandbox
/// waited 10 s for it): an exec that never started has no exit to wait for.
#[tokio::test]
async fn init_exit_never_waits_for_an_exec_that_never_started() {
    let rig = Rig::new();
    hanging_exec(&rig).await;
    let (start, runc) = start_hanging(&rig).await;
    rig.tasks.kill("c", "", 9, false).await.unwrap();
    let init = tokio::time::timeout(Duration::from_secs(2), rig.tasks.wait("c", ""))
        .await
        .expect("init's exit waited for the hung exec");
    assert_eq!(init.unwrap().status, 137);
    let err = ended_within(&rig, start, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ExecAborted {
                by: "its container's end",
                ..
            }
        ),
        "{err:?}"
    );
    rig.wait_for("runc and what it started to die", || !group_alive(runc))
        .await;
    assert_eq!(
        rig.topics("c"),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added e",
            "/tasks/exit"
        ]
    );
    rig.tasks.delete("c", "").await.unwrap();
}

/// A Kill that comes when `runc exec` has already started the process (runc exited, its
/// exit not yet collected) cannot undo the start: the Start succeeds and the process is
/// killed right after, its exit reported as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_runc_exec_started_the_process_kills_it() {
    let rig = Rig::new();
    rig.create("c", &[]).await.unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.exec("c", "e", SPEC, Default::default()).unwrap();
    // Nothing is reaped until the Kill: runc's exit cannot reach the Start before it.
    let hold = Reaper::global().hold();
    let (start, runc) = start_hanging(&rig).await;
    let zombie = format!("/proc/{runc}/stat");
    rig.wait_for("runc exec to exit", || {
        std::fs::read_to_string(&zombie)
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    })
    .await;
    assert_eq!(rig.tasks.state("c", "e").unwrap().state, State::Starting);
    rig.tasks.kill("c", "e", 9, false).await.unwrap();
    drop(hold);
    let pid = ended_within(&rig, start, Duration::from_secs(5))
        .await
        .expect("runc exec had succeeded: so does the Start");
    let exited = rig.wait("c", "e").await.unwrap();
    assert_eq!(exited.status, 137, "the started exec was not killed");
    assert_eq!(rig.tasks.state("c", "e").unwrap().pid, pid);
    assert_eq!(
        rig.topics("c")[2..],
        [
            "/tasks/exec-added e",
            "/tasks/exec-started e",
            "/tasks/exit e"
        ]
    );
    rig.tasks.kill("c", "", 9, false).await.unwrap();
}
