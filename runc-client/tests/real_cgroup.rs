//! Killing through cgroups, on this host's real cgroup hierarchies (root needed).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use runc_client::cgroup::CgroupSet;

/// A private cgroup in every hierarchy, removed (after killing what is left) on drop.
struct Scratch {
    rel: String,
    set: CgroupSet,
}

impl Scratch {
    fn new() -> Option<Scratch> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let rel = format!("/runc-client-test-{}", std::process::id());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            if right.starts_with("cgroup ") || right.starts_with("cgroup2 ") {
                let mp = left.split_whitespace().nth(4)?;
                let _ = std::fs::create_dir(PathBuf::from(mp).join(rel.trim_start_matches('/')));
            }
        }
        let set = CgroupSet::from_cgroups_path(&rel).ok()?;
        (!set.is_empty()).then_some(Scratch { rel, set })
    }

    /// Moves `pid` into every hierarchy of the scratch cgroup.
    fn enter(&self, pid: u32) {
        for dir in self.set.dirs() {
            // The v2 mount of a hybrid host may refuse (no controllers delegated); v1 is enough.
            let _ = std::fs::write(dir.join("cgroup.procs"), pid.to_string());
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.set.kill_all(Duration::from_secs(5));
        let left = self.set.remove();
        assert!(
            left.is_empty() || std::thread::panicking(),
            "{} left: {left:?}",
            self.rel
        );
    }
}

#[test]
fn kill_all_empties_the_cgroups_even_of_forking_processes() {
    let Some(scratch) = Scratch::new() else {
        test_skip::skip!("needs root and a writable cgroup hierarchy");
    };
    // A process that keeps forking children: without the freezer some could escape a
    // one-pass kill.
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("read x; while :; do sleep 1000 & sleep 0.01; done")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    scratch.enter(child.id());
    // Let it start forking inside the cgroup.
    drop(child.stdin.take());
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while scratch.set.pids().len() < 5 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(scratch.set.pids().len() >= 5, "{:?}", scratch.set.pids());

    let report = scratch.set.kill_all(Duration::from_secs(5));
    assert!(report.survivors.is_empty(), "{report:?}");
    assert!(report.killed.contains(&(child.id() as i32)));
    assert!(scratch.set.pids().is_empty());
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    // The sleeps were reparented to init (not our children); the cgroup being empty
    // shows they are gone.
}
