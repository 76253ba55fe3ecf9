//! containerd's Shutdown, sent many times to a shim with several containers
//! (docs/bootstrap.md): answered while containers remain, ending the shim once none does.

use super::*;
use futures::FutureExt;

/// Whether the shim was told to exit (consumes the notification).
fn told_to_exit(n: &Notify) -> bool {
    n.notified().now_or_never().is_some()
}

/// containerd 2.3 / 2.4.0-beta.0 with Task API 3: the pause task's Delete sends a Shutdown
/// while an app container still runs, the app's Delete sends none. The shim still ends.
#[tokio::test]
async fn a_refused_shutdown_ends_the_shim_once_the_last_container_is_gone() {
    let rig = Rig::new();
    rig.tasks.set_shutdown_grace(Duration::from_millis(50));
    let shutdown = rig.tasks.shutdown.clone();
    rig.create("pause", &[]).await.unwrap();
    rig.create("app", &[]).await.unwrap();

    rig.tasks.delete("pause", "").await.unwrap();
    for _ in 0..3 {
        assert!(
            !rig.tasks.request_shutdown(),
            "Shutdown with a container left"
        );
    }
    assert!(
        !told_to_exit(&shutdown),
        "the shim was told to exit under a container"
    );

    rig.tasks.delete("app", "").await.unwrap();
    assert!(
        tokio::time::timeout(T, shutdown.notified()).await.is_ok(),
        "the shim stayed with no container after a refused Shutdown"
    );
}

/// Task API 2 (every containerd before 2.3 for sturdy): Shutdown after every Delete; the one
/// after the last Delete ends the shim at once, not after the grace.
#[tokio::test]
async fn the_shutdown_after_the_last_delete_ends_the_shim_at_once() {
    let rig = Rig::new();
    rig.tasks.set_shutdown_grace(Duration::from_secs(3600));
    let shutdown = rig.tasks.shutdown.clone();
    rig.create("a", &[]).await.unwrap();
    rig.create("b", &[]).await.unwrap();

    rig.tasks.delete("a", "").await.unwrap();
    assert!(!rig.tasks.request_shutdown());
    assert!(!told_to_exit(&shutdown));
    rig.tasks.delete("b", "").await.unwrap();
    assert!(
        rig.tasks.request_shutdown(),
        "Shutdown with no container left"
    );
    assert!(told_to_exit(&shutdown));
}
