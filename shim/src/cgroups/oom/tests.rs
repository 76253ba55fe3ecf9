//! The OOM watch: v2 against a fixture memory.events (inotify works on any file), and v1
//! and v2 against a real memory cgroup, with a process that really runs out of memory (v1
//! on this host kind, v2 in the VM tier's guest, docs/testing.md "VM tier").

use super::*;
use crate::testing::until;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn events(oom_kill: u64) -> String {
    format!("low 0\nhigh 0\nmax 3\noom 1\noom_kill {oom_kill}\noom_group_kill 0\n")
}

/// A watch task counting its reports.
fn spawn_watch(m: &Arc<OomMonitor>) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<io::Result<()>>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let (m, s) = (m.clone(), seen.clone());
    let task = tokio::spawn(async move {
        m.watch(|| {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .await
    });
    (seen, task)
}

fn check_count(m: &OomMonitor) -> (Pending, usize) {
    let mut n = 0;
    let p = m.check(|| n += 1).unwrap();
    (p, n)
}

#[tokio::test]
async fn v2_reports_each_new_oom_kill_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("memory.events"), events(0)).unwrap();
    let m = Arc::new(OomMonitor::v2(dir.path()).unwrap());
    assert_eq!(check_count(&m), (Pending::Quiet, 0));
    let (seen, task) = spawn_watch(&m);

    std::fs::write(dir.path().join("memory.events"), events(1)).unwrap();
    assert!(
        until(T, || seen.load(Ordering::SeqCst) == 1).await,
        "watch missed the kill"
    );

    // A kill the exit path takes before the watch task runs is not reported twice.
    std::fs::write(dir.path().join("memory.events"), events(2)).unwrap();
    assert_eq!(check_count(&m), (Pending::Oom, 1));
    assert_eq!(check_count(&m), (Pending::Quiet, 0));
    // Other counters changing is no OOM kill. The check above drained the notifications
    // and this single-threaded runtime runs the watch only at an await, so the pass
    // waited for here read the file after the write.
    let passes = m.passes();
    std::fs::write(
        dir.path().join("memory.events"),
        events(2).replace("max 3", "max 4"),
    )
    .unwrap();
    assert!(
        until(T, || m.passes() > passes).await,
        "the watch never looked at the change"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // The cgroup going away ends the watch.
    std::fs::remove_file(dir.path().join("memory.events")).unwrap();
    tokio::time::timeout(T, task)
        .await
        .expect("watch did not end with its cgroup")
        .unwrap()
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(check_count(&m), (Pending::Gone, 0));
}

/// The same on a real v2 cgroup: a process killed at `memory.max` is one OOM, found by the
/// exit path alone (memory.events' `oom_kill`), then by the watch, each reported once.
#[tokio::test]
async fn v2_oom_of_a_real_cgroup_is_reported_once() {
    let Some(cg) = TestCgroup::new_v2() else {
        test_skip::skip!(
            "no cgroup v2 memory controller delegated from the root here (the VM tier runs this)"
        );
    };
    let m = Arc::new(OomMonitor::v2(&cg.0).unwrap());
    assert_eq!(check_count(&m), (Pending::Quiet, 0));

    assert_eq!(run_out_of_memory(&cg.0).await, 128 + libc::SIGKILL);
    assert_eq!(check_count(&m), (Pending::Oom, 1));
    assert_eq!(check_count(&m), (Pending::Quiet, 0));

    let (seen, task) = spawn_watch(&m);
    assert_eq!(run_out_of_memory(&cg.0).await, 128 + libc::SIGKILL);
    assert!(
        until(T, || seen.load(Ordering::SeqCst) >= 1).await,
        "watch missed the OOM"
    );
    assert_eq!(check_count(&m), (Pending::Quiet, 0));
    let reported = seen.load(Ordering::SeqCst);
    assert_eq!(reported, 1, "one kill, one report");
    task.abort();
}

/// A memory cgroup of this host's v1 hierarchy, or of a pure v2 one, removed (with
/// whatever this test put in it, by pid) on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> Option<TestCgroup> {
        let root = Path::new(crate::cgroups::CGROUP_ROOT).join("memory");
        if !root.join("cgroup.event_control").exists() {
            return None;
        }
        Self::create(&root)
    }

    /// A child of the unified hierarchy's root with the memory controller, where the root
    /// delegates it (a pure v2 host; a hybrid host's v2 mount has no controllers).
    fn new_v2() -> Option<TestCgroup> {
        let root = Path::new(crate::cgroups::CGROUP_ROOT);
        let offers = |f: &str| {
            std::fs::read_to_string(root.join(f))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        };
        if !offers("cgroup.controllers") || !offers("cgroup.subtree_control") {
            return None;
        }
        let cg = Self::create(root)?;
        std::fs::write(cg.0.join("memory.max"), "16M").ok()?;
        // The kill must come from the limit, not from swapping it away.
        let _ = std::fs::write(cg.0.join("memory.swap.max"), "0");
        Some(cg)
    }

    fn create(root: &Path) -> Option<TestCgroup> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = root.join(format!("sturdy-oom-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        Some(TestCgroup(dir))
    }

    fn remove(&self) {
        let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) of a process this test placed in its own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let end = Instant::now() + T;
        while self.0.exists() && std::fs::remove_dir(&self.0).is_err() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs a shell in `cg` that doubles a string until the kernel kills it; returns its
/// exit status.
async fn run_out_of_memory(cg: &Path) -> i32 {
    let reaper = runc_client::Reaper::global();
    let mut exits = reaper.subscribe();
    let child = {
        let _hold = reaper.hold();
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && x=a && while :; do x=$x$x; done"#)
            .arg("sh")
            .arg(cg)
            .spawn()
            .unwrap()
    };
    runc_client::Reaper::notify_spawned();
    let pid = child.id() as i32;
    tokio::time::timeout(T, exits.wait_for(pid))
        .await
        .expect("the shell never ran out of memory")
        .status
}

#[tokio::test]
async fn v1_oom_is_pending_once_the_killed_process_is_reaped() {
    let Some(cg) = TestCgroup::new() else {
        test_skip::skip!("no writable cgroup v1 memory hierarchy on this host");
    };
    std::fs::write(cg.0.join("memory.limit_in_bytes"), "16M").unwrap();
    // Without swap accounting there is no memsw; with swap the limit must cover it too.
    let _ = std::fs::write(cg.0.join("memory.memsw.limit_in_bytes"), "16M");
    let m = Arc::new(OomMonitor::v1(&cg.0).unwrap());
    assert_eq!(check_count(&m), (Pending::Quiet, 0));

    // No watch task runs: the exit path alone must find the OOM.
    assert_eq!(run_out_of_memory(&cg.0).await, 128 + libc::SIGKILL);
    assert_eq!(check_count(&m), (Pending::Oom, 1));
    assert_eq!(check_count(&m), (Pending::Quiet, 0));

    let (seen, task) = spawn_watch(&m);
    assert_eq!(run_out_of_memory(&cg.0).await, 128 + libc::SIGKILL);
    assert!(
        until(T, || seen.load(Ordering::SeqCst) >= 1).await,
        "watch missed the OOM"
    );
    let reported = seen.load(Ordering::SeqCst);

    // Removing the cgroup signals the eventfd too: that ends the watch, and is no OOM.
    cg.remove();
    tokio::time::timeout(T, task)
        .await
        .expect("watch did not end with its cgroup")
        .unwrap()
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), reported);
}

/// A pod's cgroup with one container's under it, as fixture files.
struct Pod {
    dir: tempfile::TempDir,
}

impl Pod {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("memory.events"),
            events(0).replace("oom 1", "oom 0"),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("ctr")).unwrap();
        std::fs::write(
            dir.path().join("ctr/memory.events"),
            events(0).replace("oom 1", "oom 0"),
        )
        .unwrap();
        Self { dir }
    }

    fn monitor(&self) -> OomMonitor {
        OomMonitor::v2(&self.dir.path().join("ctr")).unwrap()
    }

    fn set(&self, file: &str, oom: u64, oom_kill: u64) {
        let text = events(oom_kill).replace("oom 1", &format!("oom {oom}"));
        std::fs::write(self.dir.path().join(file), text).unwrap();
    }

    /// systemd removing the container's scope: the file goes.
    fn remove_ctr(&self) {
        std::fs::remove_dir_all(self.dir.path().join("ctr")).unwrap();
    }
}

fn settle(m: &OomMonitor, sigkilled: bool) -> usize {
    let mut n = 0;
    assert_eq!(m.settle_gone(sigkilled, || n += 1), n == 1);
    n
}

#[tokio::test]
async fn v2_kill_counted_only_in_the_parent_after_the_cgroup_went() {
    // The OOM under way is read (oom rose, no kill yet), then the kill is counted and
    // the scope removed before the file is read again.
    let pod = Pod::new();
    let m = pod.monitor();
    pod.set("ctr/memory.events", 1, 0);
    assert_eq!(check_count(&m), (Pending::Quiet, 0));
    pod.set("memory.events", 1, 1);
    pod.remove_ctr();
    assert_eq!(check_count(&m), (Pending::Gone, 0));
    assert_eq!(settle(&m, true), 1, "the parent's rise is this kill");
    assert_eq!(settle(&m, true), 0, "decided once");

    // Woken for a change, and the scope gone before anything was read.
    let pod = Pod::new();
    let m = pod.monitor();
    pod.set("ctr/memory.events", 1, 1);
    pod.set("memory.events", 1, 1);
    pod.remove_ctr();
    assert_eq!(check_count(&m), (Pending::Gone, 0));
    assert_eq!(settle(&m, true), 1);
}

#[tokio::test]
async fn v2_parent_decides_nothing_without_evidence_of_our_own() {
    // Not killed by SIGKILL: no OOM kill, whatever the parent says.
    let pod = Pod::new();
    let m = pod.monitor();
    pod.set("ctr/memory.events", 1, 0);
    assert_eq!(check_count(&m), (Pending::Quiet, 0));
    pod.set("memory.events", 1, 1);
    pod.remove_ctr();
    assert_eq!(check_count(&m), (Pending::Gone, 0));
    assert_eq!(settle(&m, false), 0);

    // A sibling's kill (the parent rose) while ours saw nothing, then ours went (the
    // removal alone is no evidence): not ours, even for an init killed by SIGKILL.
    let pod = Pod::new();
    let m = pod.monitor();
    assert_eq!(check_count(&m), (Pending::Quiet, 0));
    pod.set("memory.events", 1, 1);
    pod.remove_ctr();
    assert_eq!(check_count(&m), (Pending::Gone, 0));
    assert_eq!(settle(&m, true), 0);

    // Our OOM under way, but the kill before our last read was a sibling's: the parent
    // has not risen since, so nothing.
    let pod = Pod::new();
    let m = pod.monitor();
    pod.set("memory.events", 1, 1);
    pod.set("ctr/memory.events", 1, 0);
    assert_eq!(check_count(&m), (Pending::Quiet, 0));
    pod.remove_ctr();
    assert_eq!(check_count(&m), (Pending::Gone, 0));
    assert_eq!(settle(&m, true), 0);

    // An OOM of ours that ended without a kill (a later read shows no new one), then a
    // sibling's kill, then ours went: not ours.
    let pod = Pod::new();
    let m = pod.monitor();
    pod.set("ctr/memory.events", 1, 0);
    assert_eq!(check_count(&m), (Pending::Quiet, 0));
    std::fs::write(
        pod.dir.path().join("ctr/memory.events"),
        events(0).replace("max 3", "max 9"),
    )
    .unwrap();
    assert_eq!(check_count(&m), (Pending::Quiet, 0));
    pod.set("memory.events", 1, 1);
    pod.remove_ctr();
    assert_eq!(check_count(&m), (Pending::Gone, 0));
    assert_eq!(settle(&m, true), 0);

    // A kill our own file showed is reported by the check, never again by the parent.
    let pod = Pod::new();
    let m = pod.monitor();
    pod.set("ctr/memory.events", 1, 1);
    pod.set("memory.events", 1, 1);
    assert_eq!(check_count(&m), (Pending::Oom, 1));
    pod.remove_ctr();
    assert_eq!(check_count(&m), (Pending::Gone, 0));
    assert_eq!(settle(&m, true), 0);
}
