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
