//! delete kills what a container left in its cgroups and removes them, whether runc
//! recorded the cgroups in its state or only the bundle's spec still names them (the
//! runtime lost its state), and removes a state directory the runtime left. Real cgroups,
//! a real process in them, a fake runtime.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::common::{calls_of, delete_args, fake_runtime, run, wait_for, write_record};

/// The v1 hierarchies the tests put their process in (the freezer makes the sweep freeze).
const HIERARCHIES: [&str; 2] = ["pids", "freezer"];

/// A cgroup of the test's own in each hierarchy, with one `sleep` in it; on drop the
/// sleeper is killed (if delete did not) and the cgroups removed.
struct Victim {
    name: String,
    child: Child,
}

impl Victim {
    /// `None` (a visible skip, `test_skip`) where the test cannot run.
    /// A sleeper in cgroups named for container `id` (delete sweeps only a container's
    /// own cgroups: the last component names it).
    fn start(id: &str) -> Option<Victim> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        if !nix::unistd::geteuid().is_root() {
            test_skip::skip("needs root to create cgroups");
            return None;
        }
        if let Some(h) = HIERARCHIES.iter().find(|h| {
            !Path::new("/sys/fs/cgroup")
                .join(h)
                .join("cgroup.procs")
                .exists()
        }) {
            test_skip::skip(format!("no cgroup v1 {h} hierarchy at /sys/fs/cgroup/{h}"));
            return None;
        }
        let name = format!(
            "sturdy-delete-test-{}-{}-{id}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let child = Command::new("sleep").arg("1000").spawn().unwrap();
        let v = Victim { name, child };
        for dir in v.dirs() {
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("cgroup.procs"), v.child.id().to_string()).unwrap();
        }
        Some(v)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        HIERARCHIES
            .iter()
            .map(|h| Path::new("/sys/fs/cgroup").join(h).join(&self.name))
            .collect()
    }

    /// Whether the sleeper was killed (collecting it if so).
    fn killed(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in self.dirs() {
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir(&dir) {
                    eprintln!("could not remove {}: {e}", dir.display());
                }
            }
        }
    }
}

fn assert_swept(v: &mut Victim, out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        wait_for(Duration::from_secs(5), || v.killed()),
        "the process delete should have killed lives on; stderr: {err}"
    );
    for dir in v.dirs() {
        assert!(!dir.exists(), "{} left; stderr: {err}", dir.display());
    }
    assert!(err.contains("killed 1 processes"), "{err}");
}

/// The runtime's delete "succeeds" but leaves a process in the cgroups runc recorded in
/// its state.json (runc only logs its own cgroup cleanup errors): delete kills it, removes
/// the cgroups and the state directory runc left.
#[test]
fn delete_sweeps_the_cgroups_runc_recorded() {
    let Some(mut v) = Victim::start("swept") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let state = root.join("swept");
    std::fs::create_dir_all(&state).unwrap();
    let paths: serde_json::Map<String, serde_json::Value> = HIERARCHIES
        .iter()
        .zip(v.dirs())
        .map(|(h, d)| (h.to_string(), d.to_string_lossy().into()))
        .collect();
    std::fs::write(
        state.join("state.json"),
        serde_json::json!({"id": "swept", "init_process_pid": 0, "cgroup_paths": paths})
            .to_string(),
    )
    .unwrap();
    let (runtime, calls) = fake_runtime(dir.path(), "runc", "exit 0");
    write_record(dir.path(), "swept", &runtime, &root);
    let out = run(
        dir.path(),
        &delete_args("swept", dir.path().to_str().unwrap()),
        b"",
        &[],
    );
    assert_swept(&mut v, &out);
    assert_eq!(calls_of(&calls, "delete"), 1);
    assert!(!state.exists(), "runc's state directory left");
    assert!(!dir.path().join("sturdy.json").exists());
}

/// The runtime lost the container (no state at all, only a directory a killed create
/// left): delete still finds the cgroups through config.json's cgroupsPath.
#[test]
fn delete_sweeps_the_spec_cgroups_when_the_runtime_lost_its_state() {
    let Some(mut v) = Victim::start("lost") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let leftover = root.join("lost");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("exec.fifo"), "").unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::json!({"linux": {"cgroupsPath": format!("/{}", v.name)}}).to_string(),
    )
    .unwrap();
    let not_found = r#"echo '{"level":"error","msg":"container does not exist","time":"2024-01-01T00:00:00Z"}' >&2; exit 1"#;
    let (runtime, calls) = fake_runtime(dir.path(), "runc", not_found);
    write_record(dir.path(), "lost", &runtime, &root);
    let out = run(
        dir.path(),
        &delete_args("lost", dir.path().to_str().unwrap()),
        b"",
        &[],
    );
    assert_swept(&mut v, &out);
    assert_eq!(calls_of(&calls, "state"), 1, "not-found was not confirmed");
    assert!(
        !leftover.exists(),
        "the runtime's leftover state directory stays"
    );
    assert!(!dir.path().join("sturdy.json").exists());
}
