//! What a live upgrade waits for: a lifecycle call under way.

use super::*;

#[tokio::test]
async fn a_start_under_way_is_busy_until_it_is_done() {
    let rig = Rig::new();
    rig.create("c1", &[("start-sleep", "1")]).await.unwrap();
    assert!(
        rig.tasks.lifecycle_busy().is_empty(),
        "busy before any call"
    );
    let tasks = rig.tasks.clone();
    let start = tokio::spawn(async move { tasks.start("c1", "").await });
    let tasks = rig.tasks.clone();
    assert!(
        until(T, || tasks.lifecycle_busy() == ["c1/"]).await,
        "a Start in runc never showed as busy: {:?}",
        rig.tasks.lifecycle_busy()
    );
    start.await.unwrap().unwrap();
    assert!(
        rig.tasks.lifecycle_busy().is_empty(),
        "still busy after the Start returned: {:?}",
        rig.tasks.lifecycle_busy()
    );
}

#[tokio::test]
async fn a_rehearsal_does_not_settle_while_a_start_is_under_way() {
    use crate::control::{Control, ControlError};
    use crate::listener::Gate;
    let rig = Rig::new();
    rig.create("c1", &[("start-sleep", "2")]).await.unwrap();
    let control = Control::new(Gate::new(), Some(rig.tasks.clone()));
    let tasks = rig.tasks.clone();
    let start = tokio::spawn(async move { tasks.start("c1", "").await });
    let tasks = rig.tasks.clone();
    assert!(until(T, || !tasks.lifecycle_busy().is_empty()).await);
    match control.rehearse(Duration::from_millis(300)).await {
        Err(ControlError::NotSettled { busy, .. }) => assert_eq!(busy, ["c1/"]),
        other => panic!("settled with a Start under way: {other:?}"),
    }
    start.await.unwrap().unwrap();
    let done = control.rehearse(Duration::from_secs(2)).await.unwrap();
    assert_eq!(done.connections, 0);
}

#[tokio::test]
async fn a_hold_takes_every_lifecycle_or_none() {
    let rig = Rig::new();
    rig.create("c1", &[("start-sleep", "1")]).await.unwrap();
    rig.create("c2", &[]).await.unwrap();
    let hold = rig.tasks.try_hold_lifecycles().unwrap();
    assert_eq!(hold.held, ["c1/", "c2/"]);
    // A lifecycle call waits for the hold to end.
    let tasks = rig.tasks.clone();
    let mut start = tokio::spawn(async move { tasks.start("c2", "").await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut start)
            .await
            .is_err(),
        "a Start ran during the hold"
    );
    assert_eq!(rig.count("start c2"), 0);
    drop(hold);
    start.await.unwrap().unwrap();

    // A call under way: nothing is taken, and the call under way is named.
    let tasks = rig.tasks.clone();
    let start = tokio::spawn(async move { tasks.start("c1", "").await });
    let tasks = rig.tasks.clone();
    assert!(until(T, || !tasks.lifecycle_busy().is_empty()).await);
    match rig.tasks.try_hold_lifecycles() {
        Err(busy) => assert_eq!(busy, ["c1/"]),
        Ok(h) => panic!("held {:?} with a Start under way", h.held),
    }
    assert_eq!(
        rig.tasks.lifecycle_busy(),
        ["c1/"],
        "c2's lock kept after a refusal"
    );
    start.await.unwrap().unwrap();
    assert!(rig.tasks.try_hold_lifecycles().is_ok());
}

/// An exit reaped during a hold (as during an upgrade's exec) is decided, and published
/// only once the hold ends, in its place after TaskStart.
#[tokio::test]
async fn an_exit_during_a_hold_is_published_after_it() {
    let rig = Rig::new();
    rig.create("c", &[]).await.unwrap();
    let pid = rig.tasks.start("c", "").await.unwrap();
    let hold = rig.tasks.try_hold_lifecycles().unwrap();
    let mut exits = Reaper::global().subscribe();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::timeout(T, exits.wait_for(pid))
        .await
        .expect("init never reaped");
    let exited = || rig.topics("c").iter().any(|t| t == "/tasks/exit");
    assert!(
        !until(Duration::from_millis(300), exited).await,
        "TaskExit published during the hold"
    );
    drop(hold);
    assert!(
        until(T, exited).await,
        "TaskExit never published after the hold"
    );
    assert_eq!(
        rig.topics("c"),
        ["/tasks/create", "/tasks/start", "/tasks/exit"]
    );
    assert_eq!(rig.wait("c", "").await.unwrap().status, 137);
}
