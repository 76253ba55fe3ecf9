//! Discovery from fixture bundle trees.

use super::*;
use crate::testing::wait_for;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn runtime_binary_mapping() {
    assert_eq!(
        binary_name("io.containerd.sturdy.v2").as_deref(),
        Some("containerd-shim-sturdy-v2")
    );
    assert_eq!(
        binary_name("io.containerd.runc.v2").as_deref(),
        Some("containerd-shim-runc-v2")
    );
    assert_eq!(binary_name("x"), None);
    assert_eq!(
        runtime_of_binary(Path::new("/usr/bin/containerd-shim-runc-v2")).as_deref(),
        Some("io.containerd.runc.v2")
    );
}

/// A cached bundle is read again once a file is added to it, and forgotten once gone;
/// an unchanged one is not parsed again (its spec edited in place is not seen: nothing
/// does that to a live bundle).
#[test]
fn bundle_cache_rereads_only_changed_bundles() {
    let state = tempfile::tempdir().unwrap();
    let b = state.path().join(TASK_DIR).join("k8s.io").join("c1");
    write(&b, "address", "unix:///run/containerd/s/aaa");
    write(&b, "config.json", r#"{"linux":{"cgroupsPath":"/a"}}"#);
    let mut cache = BundleCache::default();
    let first = cache.bundles(state.path());
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].cgroups_path.as_deref(), Some("/a"));
    assert_eq!(first[0].shim_pid, None);
    // Rewritten in place: the directory's mtime does not move, the cached task stays.
    let mtime = std::fs::metadata(&b).unwrap().modified().unwrap();
    std::fs::write(b.join("config.json"), r#"{"linux":{"cgroupsPath":"/b"}}"#).unwrap();
    assert_eq!(std::fs::metadata(&b).unwrap().modified().unwrap(), mtime);
    assert_eq!(
        cache.bundles(state.path())[0].cgroups_path.as_deref(),
        Some("/a")
    );
    // A new file (as shims write theirs: created or renamed in) is picked up.
    write(&b, "shim.pid", "4242");
    let again = cache.bundles(state.path());
    assert_eq!(again[0].shim_pid, Some(4242));
    assert_eq!(again[0].cgroups_path.as_deref(), Some("/b"));
    std::fs::remove_dir_all(&b).unwrap();
    assert!(cache.bundles(state.path()).is_empty());
    assert!(cache.entries.is_empty());
}

/// A shim the caller follows keeps its process without /proc (a pid no process has
/// here stands for it); one whose bundle names another pid is looked up again.
#[test]
fn followed_shims_are_not_looked_up_in_proc() {
    let state = tempfile::tempdir().unwrap();
    let b = state.path().join(TASK_DIR).join("k8s.io").join("pod1");
    write(&b, "address", "unix:///run/containerd/s/aaa");
    write(&b, "shim.pid", "999999999");
    write(&b, "sturdy.json", r#"{"root":"/r/k8s.io"}"#);
    let scope = Scope {
        state_dir: state.path().to_path_buf(),
        containerd_address: "/run/containerd/containerd.sock".into(),
        runtimes: vec!["io.containerd.sturdy.v2".into()],
    };
    let mut cache = BundleCache::default();
    let looked_up = discover_cached(&scope, None, &mut cache);
    assert_eq!(looked_up[0].process, None, "no such process in /proc");
    let followed = ProcIdentity {
        pid: 999_999_999,
        start_time: 7,
        exe: "/bin/containerd-shim-sturdy-v2".into(),
    };
    let known = Shim {
        address: "unix:///run/containerd/s/aaa".into(),
        id: "pod1".into(),
        namespace: "k8s.io".into(),
        process: Some(followed.clone()),
        ..Default::default()
    };
    cache.alive.insert(known.address.clone(), known.clone());
    let shims = discover_cached(&scope, None, &mut cache);
    assert_eq!(shims[0].process, Some(followed));
    assert_eq!(shims[0].tasks.len(), 1);
    // Another pid in the bundle: not the followed process, back to /proc.
    let mut other = known;
    other.process.as_mut().unwrap().pid = 999_999_998;
    cache.alive.insert(other.address.clone(), other);
    assert_eq!(discover_cached(&scope, None, &mut cache)[0].process, None);
}

#[test]
fn containerd_2_go_shim_address_comes_from_bootstrap_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bootstrap.json"),
        r#"{"version":3,"address":"unix:///run/containerd/s/abc","protocol":"ttrpc"}"#,
    )
    .unwrap();
    let t = read_bundle(dir.path(), "k8s.io", "c1").expect("bundle");
    assert_eq!(t.address, "unix:///run/containerd/s/abc");
}

#[test]
fn sturdy_and_go_bundles_grouped_by_address() {
    let state = tempfile::tempdir().unwrap();
    let base = state.path().join(TASK_DIR).join("k8s.io");
    let sandbox = base.join("pod1");
    write(&sandbox, "address", "unix:///run/containerd/s/aaa\n");
    write(&sandbox, "shim.pid", "4242");
    write(
        &sandbox,
        "config.json",
        r#"{"linux":{"cgroupsPath":"/kubepods/pod1"}}"#,
    );
    write(
        &sandbox,
        "sturdy.json",
        r#"{"version":1,"id":"pod1","namespace":"k8s.io","runtime":"runc","root":"/r/k8s.io"}"#,
    );
    let ctr = base.join("ctr1");
    write(&ctr, "address", "unix:///run/containerd/s/aaa");
    write(&ctr, "sturdy.json", r#"{"root":"/r/k8s.io"}"#);
    let go = base.join("go1");
    write(&go, "address", "unix:///run/containerd/s/bbb");
    write(&go, "options.json", r#"{"root":"/custom/runc"}"#);
    write(&go, "shim-binary-path", "/usr/bin/containerd-shim-runc-v2");
    let go_default = base.join("go2");
    write(&go_default, "address", "unix:///run/containerd/s/ccc");
    write(&go_default, "options.json", "{}");
    write(
        &go_default,
        "shim-binary-path",
        "/usr/bin/containerd-shim-runc-v2",
    );
    // Not started yet: no address.
    write(&base.join("starting"), "config.json", "{}");

    let tasks = bundles(state.path());
    assert_eq!(tasks.len(), 4);
    let pod = tasks.iter().find(|t| t.id == "pod1").unwrap();
    assert_eq!(pod.shim_pid, Some(4242));
    assert_eq!(pod.cgroups_path.as_deref(), Some("/kubepods/pod1"));
    assert_eq!(pod.runc_root.as_deref(), Some(Path::new("/r/k8s.io")));
    assert_eq!(pod.runtime, "io.containerd.sturdy.v2");
    let go = tasks.iter().find(|t| t.id == "go1").unwrap();
    assert_eq!(go.runtime, "io.containerd.runc.v2");
    assert_eq!(
        go.runc_root.as_deref(),
        Some(Path::new("/custom/runc/k8s.io"))
    );
    let go2 = tasks.iter().find(|t| t.id == "go2").unwrap();
    assert_eq!(
        go2.runc_root.as_deref(),
        Some(Path::new("/run/containerd/runc/k8s.io"))
    );

    let scope = Scope {
        state_dir: state.path().into(),
        containerd_address: "/nonexistent/containerd.sock".into(),
        runtimes: vec!["io.containerd.sturdy.v2".into()],
    };
    let shims = discover(&scope, None);
    assert_eq!(shims.len(), 1, "{shims:?}");
    let s = &shims[0];
    assert_eq!(s.address, "unix:///run/containerd/s/aaa");
    assert_eq!(s.id, "pod1", "the shim.pid holder is the shim's own id");
    assert_eq!(s.tasks[0].id, "pod1");
    assert_eq!(s.tasks.len(), 2);
    assert!(
        s.process.is_none(),
        "pid 4242 is no shim of this containerd"
    );
    assert_eq!(s.incident_id(), "k8s.io/pod1@dead.4242");

    // The API's runtime names win over what the bundle suggests.
    let mut api = Runtimes::new();
    api.insert(
        ("k8s.io".into(), "go1".into()),
        "io.containerd.runc.v2".into(),
    );
    let scope = Scope {
        runtimes: vec![
            "io.containerd.sturdy.v2".into(),
            "io.containerd.runc.v2".into(),
        ],
        ..scope
    };
    assert_eq!(discover(&scope, Some(&api)).len(), 3);
}

#[test]
fn shim_daemon_command_lines() {
    let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    let daemon = args("/x/containerd-shim-sturdy-v2 -namespace k8s.io -id p -address /c.sock -publish-binary /usr/bin/containerd -socket unix:///s -debug");
    assert!(is_shim_daemon(&daemon, "/c.sock"));
    assert!(is_shim_daemon(&daemon, "unix:///c.sock"));
    assert!(!is_shim_daemon(&daemon, "/other.sock"));
    let start = args("/x/containerd-shim-runc-v2 -namespace k8s.io -id p -address /c.sock start");
    assert!(!is_shim_daemon(&start, "/c.sock"));
    let other = args("/bin/sleep -id p -address /c.sock");
    assert!(!is_shim_daemon(&other, "/c.sock"));
}

#[test]
fn the_daemon_is_the_candidate_whose_parent_is_no_candidate() {
    let daemon = Candidate {
        pid: 100,
        ppid: 1,
        start_time: 50,
    };
    // Forked by the daemon to exec runc, still showing the daemon's command line.
    let child = Candidate {
        pid: 120,
        ppid: 100,
        start_time: 60,
    };
    assert_eq!(pick_daemon(&[daemon.clone(), child.clone()]), Some(&daemon));
    assert_eq!(pick_daemon(&[child.clone(), daemon.clone()]), Some(&daemon));
    // Two unrelated ones (should not happen): the older.
    let other = Candidate {
        pid: 90,
        ppid: 1,
        start_time: 70,
    };
    assert_eq!(pick_daemon(&[other, daemon.clone()]), Some(&daemon));
    assert_eq!(pick_daemon(&[]), None);
}

/// A real shim-like process with a forked child that has not exec'd (a shell subshell shows
/// its parent's command line, as a Go shim's child does before it execs runc): the parent is
/// found, never the child. Taking the child made its exit look like the shim's death.
#[test]
fn a_forked_child_of_the_shim_is_not_taken_for_it() {
    use std::os::unix::process::CommandExt;
    // Only a binary no one but root can change can be a shim's (trust::process).
    let dir = tempfile::Builder::new()
        .prefix("sturdy-discovery-")
        .tempdir_in("/run")
        .unwrap();
    let bin = dir.path().join("containerd-shim-fake-v2");
    std::fs::copy("/bin/sh", &bin).unwrap();
    let address = dir.path().join("containerd.sock");
    let address = address.to_str().unwrap().to_string();
    let mut child = std::process::Command::new(&bin)
        .args(["-c", "(sleep 100; :) & wait", "sh"])
        .args(["-namespace", "ns1", "-id", "c1", "-address", &address])
        .process_group(0)
        .spawn()
        .unwrap();
    let parent = child.id() as i32;
    // Kills the shell, its subshell and the sleep (our own process group) however the test ends.
    struct Group(i32);
    impl Drop for Group {
        fn drop(&mut self) {
            // SAFETY: killpg(2) of the process group this test created.
            unsafe { libc::killpg(self.0, libc::SIGKILL) };
        }
    }
    let _group = Group(parent);
    let key = ("ns1".to_string(), "c1".to_string());
    let same_cmdline = || {
        procfs::pids()
            .into_iter()
            .filter(|p| is_shim_daemon(&procfs::cmdline(*p), &address))
            .count()
    };
    assert!(
        wait_for(std::time::Duration::from_secs(10), || same_cmdline() >= 2),
        "the subshell never appeared"
    );
    let found = shim_processes(&address);
    assert_eq!(found.get(&key).map(|p| p.pid), Some(parent));
    drop(_group);
    let _ = child.wait();
}
