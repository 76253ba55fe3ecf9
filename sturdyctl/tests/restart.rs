//! A restarted watchdog is stateless but for its journal: it finishes the recoveries an
//! earlier one started (exactly once) and recovers shims that died while none ran.
//! No containerd here: its socket does not exist, as while containerd is down.

use std::path::Path;
use std::time::Duration;

use sturdyctl::discovery::{Shim, Task, TASK_DIR};
use sturdyctl::journal::{Journal, Phase, DEFAULT_MAX_BYTES};
use sturdyctl::watchdog;

mod common;
use common::{
    config, journal_started, ran_delete, recording_shim, run_until, shim_bundle, trusted_tempdir,
};

fn finished_count(journal: &Path, incident: &str) -> usize {
    Journal::new(journal, DEFAULT_MAX_BYTES)
        .read()
        .unwrap()
        .iter()
        .filter(|e| e.incident == incident && matches!(e.phase, Phase::Finished { .. }))
        .count()
}

/// An incident journalled as started (the watchdog died mid-recovery) is finished by the
/// next watchdog, and not again by the one after.
#[tokio::test]
async fn unfinished_incident_is_finished_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let shim = Shim {
        address: "unix:///nonexistent/shim.sock".into(),
        namespace: "default".into(),
        id: "c1".into(),
        runtime: "io.containerd.sturdy.v2".into(),
        tasks: vec![Task {
            namespace: "default".into(),
            id: "c1".into(),
            // Where containerd keeps it (a resumed incident names no other place), gone.
            bundle: cfg.state_dir.join(TASK_DIR).join("default").join("c1"),
            ..Default::default()
        }],
        ..Default::default()
    };
    let incident = journal_started(&cfg, shim);

    // Shut down at once: resumed recoveries are still carried to their end.
    watchdog::run(cfg.clone(), async {}).await.unwrap();
    assert_eq!(finished_count(&cfg.journal, &incident), 1);
    let entries = Journal::new(&cfg.journal, DEFAULT_MAX_BYTES)
        .read()
        .unwrap();
    assert!(
        entries.iter().any(|e| matches!(&e.phase,
            Phase::Step { step, .. } if step == "remove socket")),
        "the incident was not redone: {entries:#?}"
    );
    watchdog::run(cfg.clone(), async {}).await.unwrap();
    assert_eq!(
        finished_count(&cfg.journal, &incident),
        1,
        "a finished incident was redone"
    );
}

/// A bundle whose shim died while no watchdog ran (its socket refuses, runc still has the
/// container) is recovered by the next watchdog: delete runs with containerd's arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_found_dead_at_start_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let calls = dir.path().join("delete-calls");
    let bin_dir = trusted_tempdir();
    let fake_shim = recording_shim(bin_dir.path(), &calls);
    let socket = dir.path().join("dead.sock");
    let bundle = shim_bundle(dir.path(), &cfg, &socket, 999999, &fake_shim);

    // containerd never comes back here: the recovery waits for it after the delete.
    // The shutdown does not wait for containerd (its drain would take 20 s).
    run_until(
        &cfg,
        Duration::from_secs(10),
        "the dead shim was never recovered, or shutdown waited for containerd",
        ran_delete,
    )
    .await;

    let entries = Journal::new(&cfg.journal, DEFAULT_MAX_BYTES)
        .read()
        .unwrap();
    assert!(
        entries.iter().any(|e| matches!(&e.phase,
            Phase::Started { reason, .. } if reason == "dead at discovery")),
        "{entries:#?}"
    );
    // Unconfirmed by containerd: left open for the next start, and the journal says why.
    assert!(
        !entries
            .iter()
            .any(|e| matches!(e.phase, Phase::Finished { .. })),
        "{entries:#?}"
    );
    assert!(
        entries.iter().any(|e| matches!(&e.phase,
            Phase::Step { step, ok: false, detail, .. }
                if step == "containerd" && detail.contains("the next start finishes"))),
        "{entries:#?}"
    );
    let calls = std::fs::read_to_string(&calls).expect("delete never ran");
    let line = calls.lines().next().unwrap();
    let expected_args = format!(
        "-namespace default -address {} -publish-binary  -id c1 -bundle {} delete",
        cfg.address.display(),
        bundle.display()
    );
    assert_eq!(
        line,
        format!("{} {expected_args}", bundle.display()),
        "delete ran in the wrong place or with the wrong arguments"
    );
    assert_eq!(calls.lines().count(), 1, "delete ran more than once");
}
