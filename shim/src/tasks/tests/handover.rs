//! The core's part of a live upgrade without the exec: a captured core is written into a
//! document and rebuilt from it in another `Tasks`, as the next image would, with an exit
//! that happened in between reaped and published by the new core only.

use super::*;
use crate::handover::{self as doc, v2};

/// A document around what `capture` wrote; the listener and old binary are stand-ins.
fn document(cap: &crate::tasks::handover::Captured, spare: &[std::fs::File; 2]) -> v2::Document {
    use std::os::fd::AsRawFd;
    let mut d = v2::sample();
    d.listener = spare[0].as_raw_fd();
    d.old_binary = spare[1].as_raw_fd();
    d.connections.clear();
    d.containers = cap.containers.clone();
    d.unclaimed_exits = cap.unclaimed_exits.clone();
    // What the image after the exec reads: encoded, decoded, validated.
    doc::decode(&doc::encode(&d).unwrap()).unwrap()
}

#[tokio::test]
async fn a_captured_core_is_rebuilt_and_an_exit_during_the_exec_is_published_once() {
    let rig = Rig::new();
    rig.create("c1", &[]).await.unwrap();
    let pid = rig.tasks.start("c1", "").await.unwrap();
    rig.tasks
        .exec("c1", "e1", SPEC, Default::default())
        .unwrap();
    let exec_pid = rig.tasks.start("c1", "e1").await.unwrap();
    rig.create("c2", &[]).await.unwrap();
    let created = rig.tasks.init_pid("c2");

    let hold = rig.tasks.try_hold_lifecycles().unwrap();
    let cap = rig.tasks.capture(&hold).await.unwrap();
    let spare = [
        std::fs::File::open("/dev/null").unwrap(),
        std::fs::File::open("/dev/null").unwrap(),
    ];
    let d = document(&cap, &spare);
    assert_eq!(d.containers.len(), 2);
    let c1 = &d.containers[0];
    assert_eq!((c1.init.pid, c1.init.state), (pid, v2::State::Running));
    assert_eq!(c1.execs[0].exec_id, "e1");
    assert_eq!(
        (c1.execs[0].pid, c1.execs[0].state),
        (exec_pid, v2::State::Running)
    );
    assert_eq!(d.containers[1].init.state, v2::State::Created);

    // init and its exec die while "the exec" runs: the reaper is stopped, so they wait as
    // zombies.
    for p in [exec_pid, pid] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let reaping = cap.forget_fds();

    // The next image: a new core, rebuilt from the document, then the reaper let go.
    let (events, recorder) = Events::recording("test");
    let next = Tasks::new("test", events, Reaper::global(), Arc::new(Notify::new()));
    next.restore(&d).await.unwrap();
    assert_eq!(next.state("c1", "e1").unwrap().pid, exec_pid);
    assert_eq!(next.state("c2", "").unwrap().state, State::Created);
    assert_eq!(next.init_pid("c2"), created);
    drop(reaping);

    for exec in ["e1", ""] {
        let exited = tokio::time::timeout(T, next.wait("c1", exec))
            .await
            .unwrap_or_else(|_| panic!("exit of c1/{exec} during the exec never published"))
            .unwrap();
        assert_eq!(exited.status, 137);
    }
    let exits: Vec<_> = recorder
        .summary()
        .into_iter()
        .filter(|(t, c, _)| *t == "/tasks/exit" && c == "c1")
        .map(|(_, _, e)| e)
        .collect();
    assert_eq!(exits, ["e1", ""], "{:?}", recorder.summary());
    // The old core never published them: its lifecycles are still held.
    assert!(
        rig.topics("c1")
            .iter()
            .all(|t| !t.starts_with("/tasks/exit")),
        "{:?}",
        rig.topics("c1")
    );

    // The new core runs lifecycle calls on what it rebuilt.
    next.start("c2", "").await.unwrap();
    next.exec("c2", "e2", SPEC, Default::default()).unwrap();
    next.start("c2", "e2").await.unwrap();
    next.kill("c2", "e2", 9, false).await.unwrap();
    let e = tokio::time::timeout(T, next.wait("c2", "e2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.status, 137);
    next.kill("c2", "", 9, false).await.unwrap();
    drop(hold);
}

#[tokio::test]
async fn an_undone_capture_leaves_the_core_working() {
    let rig = Rig::new();
    rig.create("c1", &[]).await.unwrap();
    rig.tasks.start("c1", "").await.unwrap();
    let hold = rig.tasks.try_hold_lifecycles().unwrap();
    let cap = rig.tasks.capture(&hold).await.unwrap();
    cap.undo(&rig.tasks).await;
    drop(hold);
    rig.tasks.kill("c1", "", 9, false).await.unwrap();
    assert_eq!(rig.wait("c1", "").await.unwrap().status, 137);
}
