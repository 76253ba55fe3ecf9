//! What the watchdog tests without containerd share.
#![allow(dead_code)] // each test binary uses its own part of it

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sturdyctl::discovery::{Shim, TASK_DIR};
use sturdyctl::journal::{Entry, Journal, Phase, DEFAULT_MAX_BYTES};
use sturdyctl::watchdog::{self, Config};

/// A watchdog on `dir`: containerd's socket does not exist there (as while containerd is
/// down), probes every 100 ms.
pub fn config(dir: &Path) -> Config {
    Config {
        address: dir.join("containerd.sock"),
        state_dir: dir.join("state"),
        runtimes: vec!["io.containerd.sturdy.v2".into()],
        interval: Duration::from_millis(100),
        misses: 3,
        journal: dir.join("watchdog.journal"),
        journal_max_bytes: DEFAULT_MAX_BYTES,
        containerd_grace: Duration::from_millis(100),
        delete_timeout: Duration::from_secs(5),
        shim_binaries: Default::default(),
        sandboxes: None,
        upgrade_dir: dir.join("upgrading"),
    }
}

/// A scratch directory only root can change, for binaries the watchdog may run (nothing
/// under the world-writable /tmp is ever trusted). The suite runs as root, which owns /run.
pub fn trusted_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sturdy-trusted-")
        .tempdir_in("/run")
        .expect("a scratch dir in /run (the tests run as root)");
    sturdyctl::trust::directory(dir.path()).expect("/run and the scratch dir are root's");
    dir
}

/// A fake shim binary in `dir` that appends "$PWD $*" to `calls` when run.
pub fn recording_shim(dir: &Path, calls: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("containerd-shim-sturdy-v2");
    std::fs::write(
        &bin,
        format!("#!/bin/sh\necho \"$PWD $*\" >> {}\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// The bundle dir of task `default/c1` under `cfg`'s state dir, and a runc root (under
/// `dir`) whose state still has the container: what a shim that died leaves.
pub fn bundle_runc_still_has(dir: &Path, cfg: &Config) -> (PathBuf, PathBuf) {
    let bundle = cfg.state_dir.join(TASK_DIR).join("default").join("c1");
    std::fs::create_dir_all(&bundle).unwrap();
    let runc_root = dir.join("runc/default");
    std::fs::create_dir_all(runc_root.join("c1")).unwrap();
    std::fs::write(
        runc_root.join("c1/state.json"),
        r#"{"id":"c1","init_process_pid":0,"cgroup_paths":{}}"#,
    )
    .unwrap();
    (bundle, runc_root)
}

/// [`bundle_runc_still_has`]'s bundle as containerd and a shim leave it: the shim's
/// `socket` address, its pid, the binary containerd started it from, sturdy's options
/// naming the runc root, and an OCI config. Returns the bundle.
pub fn shim_bundle(
    dir: &Path,
    cfg: &Config,
    socket: &Path,
    shim_pid: impl Display,
    shim_binary: &Path,
) -> PathBuf {
    let (bundle, runc_root) = bundle_runc_still_has(dir, cfg);
    let w = |name: &str, text: String| std::fs::write(bundle.join(name), text).unwrap();
    w("address", format!("unix://{}", socket.display()));
    w("shim.pid", shim_pid.to_string());
    w("shim-binary-path", shim_binary.display().to_string());
    w(
        "sturdy.json",
        format!(r#"{{"root":"{}"}}"#, runc_root.display()),
    );
    w("config.json", "{}".into());
    bundle
}

/// What the journal of `cfg` holds (nothing while it cannot be read).
pub fn journal(cfg: &Config) -> Vec<Entry> {
    Journal::new(&cfg.journal, DEFAULT_MAX_BYTES)
        .read()
        .unwrap_or_default()
}

/// Journals an incident of `shim` as started, as a watchdog that died mid-recovery leaves
/// it; the incident's id.
pub fn journal_started(cfg: &Config, shim: Shim) -> String {
    let incident = shim.incident_id();
    Journal::new(&cfg.journal, DEFAULT_MAX_BYTES)
        .append(&Entry {
            at_ms: 1,
            incident: incident.clone(),
            phase: Phase::Started {
                reason: "dead".into(),
                shim,
            },
        })
        .unwrap();
    incident
}

/// Whether the watchdog ran the delete of task c1.
pub fn ran_delete(entries: &[Entry]) -> bool {
    entries
        .iter()
        .any(|e| matches!(&e.phase, Phase::Step { step, .. } if step == "delete c1"))
}

/// Runs the watchdog until `done` holds for its journal, then shuts it down; panics with
/// `what` and the journal unless both happened within `limit`.
pub async fn run_until(cfg: &Config, limit: Duration, what: &str, done: impl Fn(&[Entry]) -> bool) {
    let reached = async {
        until(limit, || done(&journal(cfg))).await;
    };
    tokio::time::timeout(limit, watchdog::run(cfg.clone(), reached))
        .await
        .unwrap_or_else(|_| panic!("{what}: {:#?}", journal(cfg)))
        .unwrap();
    let entries = journal(cfg);
    assert!(done(&entries), "{what}: {entries:#?}");
}

/// Polls `f` until it holds or `limit` has passed; whether it held (checked once more at
/// the end, so a condition met at the deadline counts). These tests' one wait helper, as
/// `sturdy_integration::until` is the integration tests'.
pub async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}
