//! A recovery that panics ends its incident in the journal and frees its shim: the next
//! scan recovers the shim anew instead of skipping it for ever (code read 2026-12).
//! Its own test binary: the fault is switched on for the whole process.

use std::time::Duration;

use sturdyctl::journal::{Journal, Phase, DEFAULT_MAX_BYTES};
use sturdyctl::watchdog;

mod common;
use common::{bundle_runc_still_has, config, recording_shim, trusted_tempdir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_recovery_is_ended_and_the_shim_recovered_by_a_later_scan() {
    // The debug build's fault hook: the first recovery of this process panics.
    std::env::set_var("STURDY_WATCHDOG_FAULT", "recovery-panic");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (bundle, runc_root) = bundle_runc_still_has(dir.path(), &cfg);
    let calls = dir.path().join("delete-calls");
    let bin_dir = trusted_tempdir();
    let shim_bin = recording_shim(bin_dir.path(), &calls);
    let w = |name: &str, text: String| std::fs::write(bundle.join(name), text).unwrap();
    w(
        "address",
        format!("unix://{}", dir.path().join("dead.sock").display()),
    );
    w("shim.pid", "999999".into());
    w("shim-binary-path", shim_bin.display().to_string());
    w(
        "sturdy.json",
        format!(r#"{{"root":"{}"}}"#, runc_root.display()),
    );
    w("config.json", "{}".into());

    let journal = cfg.journal.clone();
    let redone = async move {
        loop {
            let entries = Journal::new(&journal, DEFAULT_MAX_BYTES)
                .read()
                .unwrap_or_default();
            if entries
                .iter()
                .any(|e| matches!(&e.phase, Phase::Step { step, .. } if step == "delete c1"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let entries = || {
        Journal::new(&cfg.journal, DEFAULT_MAX_BYTES)
            .read()
            .unwrap_or_default()
    };
    tokio::time::timeout(Duration::from_secs(15), watchdog::run(cfg.clone(), redone))
        .await
        .unwrap_or_else(|_| panic!("never recovered after the panic: {:#?}", entries()))
        .unwrap();

    let entries = entries();
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
