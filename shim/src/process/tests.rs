//! The process state machine's transitions and its Wait.

use super::*;
use std::sync::Arc;
use std::time::Duration;

fn init() -> Process {
    let p = Process::creating("c", StdioPaths::default());
    p.created(42).unwrap();
    p
}

fn now() -> SystemTime {
    SystemTime::now()
}

#[test]
fn start_only_from_created_and_a_duplicate_changes_nothing() {
    let p = init();
    p.begin_start().unwrap();
    let err = p.begin_start().unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
    assert_eq!(p.state(), State::Starting);
    p.start_succeeded(42).unwrap();
    assert_eq!(p.state(), State::Running);
    assert!(p.begin_start().is_err());
}

#[test]
fn exit_during_start_wins() {
    let p = init();
    p.begin_start().unwrap();
    p.reaped(3, now()).unwrap();
    p.start_succeeded(42).unwrap();
    assert_eq!(p.state(), State::Stopped);
    assert_eq!(p.exited().unwrap().status, 3);
}

#[test]
fn first_exit_wins() {
    let p = init();
    p.reaped(0, now()).unwrap();
    assert!(p.reaped(137, now()).is_err());
    assert_eq!(p.exited().unwrap().status, 0);
}

#[test]
fn failed_init_start_stays_created_failed_exec_start_is_stopped() {
    let p = init();
    p.begin_start().unwrap();
    p.start_failed();
    assert_eq!(p.state(), State::Created);
    assert!(!p.is_reported());

    let e = Process::exec("c", "e1", StdioPaths::default());
    e.begin_start().unwrap();
    e.start_failed();
    assert_eq!(e.state(), State::Stopped);
    assert!(e.is_reported());
    assert_eq!(e.exited().unwrap().status, NEVER_RAN);
}

#[tokio::test]
async fn only_a_start_in_flight_can_be_aborted() {
    let e = Process::exec("c", "e1", StdioPaths::default());
    assert_eq!(e.abort_start("a Kill"), State::Created);
    assert_eq!(
        e.abort_requested(),
        None,
        "nothing to abort before the start"
    );
    e.begin_start().unwrap();
    let start = e.start_aborted();
    tokio::pin!(start);
    assert!(futures::poll!(start.as_mut()).is_pending());
    assert_eq!(e.abort_start("a Delete"), State::Starting);
    assert_eq!(e.abort_start("a Kill"), State::Starting);
    assert_eq!(
        start.await,
        "a Delete",
        "the first request names who ended it"
    );
    e.start_failed();
    assert_eq!(e.state(), State::Stopped);
    assert_eq!(e.exited().unwrap().status, NEVER_RAN);
    assert_eq!(e.abort_start("a Kill"), State::Stopped);
}

#[test]
fn pause_and_resume_only_from_their_states() {
    let p = init();
    assert!(p.begin_pause().is_err());
    p.begin_start().unwrap();
    p.start_succeeded(42).unwrap();
    assert!(p.begin_resume().is_err());
    p.begin_pause().unwrap();
    assert!(p.begin_pause().is_err());
    p.pause_done(true);
    assert_eq!(p.state(), State::Paused);
    p.begin_resume().unwrap();
    p.resume_done(false);
    assert_eq!(p.state(), State::Paused);
    p.begin_resume().unwrap();
    p.resume_done(true);
    assert_eq!(p.state(), State::Running);
}

#[test]
fn delete_only_when_created_or_stopped() {
    let p = init();
    p.begin_start().unwrap();
    p.start_succeeded(42).unwrap();
    let err = p.begin_delete().unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
    p.reaped(1, now()).unwrap();
    assert_eq!(p.begin_delete().unwrap(), State::Stopped);
    assert!(p.begin_delete().is_err(), "a second delete while deleting");
    p.delete_done(Exited {
        status: 137,
        at: now(),
    });
    let err = p.begin_delete().unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[test]
fn exit_while_deleting_a_created_process_stays_deleting() {
    let p = init();
    assert_eq!(p.begin_delete().unwrap(), State::Created);
    p.reaped(137, now()).unwrap();
    assert_eq!(p.state(), State::Deleting);
    p.delete_failed(State::Created);
    assert_eq!(p.state(), State::Stopped, "the exit is known now");
}

#[tokio::test]
async fn wait_returns_for_a_deleted_never_started_exec() {
    let e = Arc::new(Process::exec("c", "e1", StdioPaths::default()));
    let waiter = {
        let e = e.clone();
        tokio::spawn(async move { e.wait_reported().await })
    };
    e.begin_delete().unwrap();
    e.delete_done(Exited {
        status: NEVER_RAN,
        at: now(),
    });
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("Wait never returned")
        .unwrap();
    assert_eq!(got.status, NEVER_RAN);
}

#[tokio::test]
async fn wait_answers_only_once_reported() {
    let p = Arc::new(init());
    let waiter = {
        let p = p.clone();
        tokio::spawn(async move { p.wait_reported().await })
    };
    p.reaped(4, now()).unwrap();
    assert_eq!(p.wait_reaped().await.status, 4);
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "Wait answered before the report");
    assert!(p.mark_reported());
    assert!(!p.mark_reported(), "reported twice");
    assert_eq!(waiter.await.unwrap().status, 4);
}
