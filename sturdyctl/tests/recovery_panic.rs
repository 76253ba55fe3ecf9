//! A recovery that panics ends its incident in the journal and frees its shim: the next
//! scan recovers the shim anew instead of skipping it for ever (code read 2026-12).
//! Its own test binary: the fault is switched on for the whole process.

use std::time::Duration;

use sturdyctl::journal::Phase;

mod common;
use common::{
    config, journal, ran_delete, recording_shim, run_until, shim_bundle, trusted_tempdir,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_recovery_is_ended_and_the_shim_recovered_by_a_later_scan() {
    // The debug build's fault hook: the first recovery of this process panics.
    std::env::set_var("STURDY_WATCHDOG_FAULT", "recovery-panic");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let calls = dir.path().join("delete-calls");
    let bin_dir = trusted_tempdir();
    let shim_bin = recording_shim(bin_dir.path(), &calls);
    shim_bundle(
        dir.path(),
        &cfg,
        &dir.path().join("dead.sock"),
        999999,
        &shim_bin,
    );

    run_until(
        &cfg,
        Duration::from_secs(15),
        "never recovered after the panic",
        ran_delete,
    )
    .await;

    let entries = journal(&cfg);
    let panicked = entries
        .iter()
        .position(|e| {
            matches!(&e.phase, Phase::Finished { ok: false, summary, .. }
                if summary.contains("recovery panicked") && summary.contains("injected fault"))
        })
        .unwrap_or_else(|| panic!("the panic did not end its incident: {entries:#?}"));
    let redone = entries
        .iter()
        .position(|e| matches!(&e.phase, Phase::Step { step, .. } if step == "delete c1"))
        .unwrap();
    assert!(panicked < redone, "{entries:#?}");
    assert!(std::fs::read_to_string(&calls).is_ok_and(|c| c.contains("-id c1")));
}
