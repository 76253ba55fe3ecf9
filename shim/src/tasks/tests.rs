//! The lifecycle core without containerd: real processes started by a fake runc
//! (fake-runc.sh), events caught by a recording sink.

use super::*;
use crate::testing::until;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_shim_protos::protobuf::{well_known_types::any::Any, Message};
use containerd_shim_protos::shim::oci::Options as RuncOptions;

use crate::error::Error;
use crate::events::Recorder;
use crate::process::{Exited, NEVER_RAN};

mod checkpoint;
mod create;
mod handover;
mod hung_exec;
mod kill;
mod lifecycle_busy;
mod oom_order;
mod resources;
mod shutdown;

const FAKE_RUNC: &str = include_str!("fake-runc.sh");
const T: Duration = Duration::from_secs(20);
/// The smallest process spec an exec may carry.
const SPEC: &[u8] = br#"{"cwd":"/","user":{"uid":0,"gid":0}}"#;

/// A Tasks instance over the fake runc, with everything it started killed on drop.
struct Rig {
    dir: tempfile::TempDir,
    tasks: Arc<Tasks>,
    events: Recorder,
}

impl Rig {
    fn new() -> Rig {
        // Orphans of the fake runc must become our children, as in the shim daemon.
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("sturdy-shim-tasks")
            .tempdir()
            .unwrap();
        let script = dir.path().join("runc");
        std::fs::write(&script, FAKE_RUNC).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (events, recorder) = Events::recording("test");
        let tasks = Tasks::new("test", events, Reaper::global(), Arc::new(Notify::new()));
        Rig {
            dir,
            tasks,
            events: recorder,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A bundle for container `id`; `steer` writes fake-* files into it.
    fn bundle(&self, id: &str, steer: &[(&str, &str)]) -> PathBuf {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        oci_spec::runtime::Spec::default()
            .save(bundle.join("config.json"))
            .unwrap();
        for (name, content) in steer {
            std::fs::write(bundle.join(format!("fake-{name}")), content).unwrap();
        }
        bundle
    }

    fn request(&self, id: &str, bundle: &Path) -> CreateTaskRequest {
        let options = RuncOptions {
            binary_name: self.dir.path().join("runc").display().to_string(),
            root: self.root().display().to_string(),
            ..Default::default()
        };
        CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            options: Some(Any {
                type_url: crate::options::RUNC_OPTIONS_TYPE.into(),
                value: options.write_to_bytes().unwrap(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    async fn create(&self, id: &str, steer: &[(&str, &str)]) -> Result<i32> {
        let bundle = self.bundle(id, steer);
        self.tasks.create(self.request(id, &bundle)).await
    }

    /// runc calls so far, as "command id" (the namespace dir is the root here).
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.root().join("test").join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn count(&self, call: &str) -> usize {
        self.calls().iter().filter(|c| *c == call).count()
    }

    /// Topics of the events about container `id`, exec exits as "/tasks/exit <exec>".
    fn topics(&self, id: &str) -> Vec<String> {
        self.events
            .summary()
            .into_iter()
            .filter(|(_, c, _)| c == id)
            .map(|(t, _, exec)| {
                if exec.is_empty() {
                    t.to_string()
                } else {
                    format!("{t} {exec}")
                }
            })
            .collect()
    }

    /// Wait RPC, bounded so that a bug fails the test instead of hanging it.
    async fn wait(&self, id: &str, exec: &str) -> Result<Exited> {
        tokio::time::timeout(T, self.tasks.wait(id, exec))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "Wait({id}, {exec}) never returned: {:?}, events {:?}, calls {:?}",
                    self.tasks.state(id, exec),
                    self.events.summary(),
                    self.calls()
                )
            })
    }

    async fn wait_for(&self, what: &str, f: impl FnMut() -> bool) {
        if until(T, f).await {
            return;
        }
        panic!(
            "timed out waiting for {what}; events {:?}",
            self.events.summary()
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Kill by pid what the fake runc started (inits and execs), even after a failure.
        let Ok(entries) = std::fs::read_dir(self.root().join("test")) else {
            return;
        };
        for e in entries.flatten() {
            for file in ["pid", "execs"] {
                let text = std::fs::read_to_string(e.path().join(file)).unwrap_or_default();
                for pid in text
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

fn is<T: std::fmt::Debug>(r: &Result<T>, want: fn(&Error) -> bool) -> bool {
    matches!(r, Err(e) if want(e))
}

fn not_found(e: &Error) -> bool {
    matches!(e, Error::NotFound { .. })
}

fn precondition(e: &Error) -> bool {
    matches!(e, Error::FailedPrecondition { .. })
}

fn invalid(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument(_))
}

#[tokio::test]
async fn init_that_exits_before_its_pid_is_registered_is_reported() {
    let rig = Rig::new();
    rig.create("early", &[("init", "exit 3"), ("init-now", "")])
        .await
        .unwrap();
    let exited = rig.wait("early", "").await.unwrap();
    assert_eq!(exited.status, 3);
    assert_eq!(rig.tasks.state("early", "").unwrap().state, State::Stopped);
    assert_eq!(rig.topics("early"), ["/tasks/create", "/tasks/exit"]);
}

#[tokio::test]
async fn exec_exits_are_published_before_inits() {
    let rig = Rig::new();
    rig.create("c", &[("exec", "exit 5")]).await.unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.exec("c", "e1", SPEC, Default::default()).unwrap();
    rig.tasks.start("c", "e1").await.unwrap();
    assert_eq!(rig.wait("c", "e1").await.unwrap().status, 5);
    rig.tasks.kill("c", "", 9, false).await.unwrap();
    assert_eq!(rig.wait("c", "").await.unwrap().status, 137);
    let (_, e) = rig.tasks.delete("c", "e1").await.unwrap();
    assert_eq!(e.status, 5);
    rig.tasks.delete("c", "").await.unwrap();
    assert_eq!(
        rig.topics("c"),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added e1",
            "/tasks/exec-started e1",
            "/tasks/exit e1",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    assert!(rig.tasks.is_empty());
    assert_eq!(rig.tasks.shared().router.live(), 0);
}

#[tokio::test]
async fn init_exit_waits_for_a_running_execs_exit() {
    let rig = Rig::new();
    // Init exits 0.3 s after start while an exec runs. Without its own PID namespace
    // the shim kills the rest (`kill --all`, which the fake applies to its execs), and
    // the exec's exit must still be published before init's.
    let bundle = rig.bundle("c", &[("init", "sleep 0.3; exit 2")]);
    let mut spec = oci_spec::runtime::Spec::default();
    let mut linux = spec.linux().clone().unwrap();
    let ns: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Pid)
        .collect();
    linux.set_namespaces(Some(ns));
    spec.set_linux(Some(linux));
    spec.save(bundle.join("config.json")).unwrap();
    rig.tasks.create(rig.request("c", &bundle)).await.unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.exec("c", "e1", SPEC, Default::default()).unwrap();
    rig.tasks.start("c", "e1").await.unwrap();
    assert_eq!(rig.wait("c", "").await.unwrap().status, 2);
    assert_eq!(rig.wait("c", "e1").await.unwrap().status, 137);
    assert_eq!(
        rig.topics("c")[4..],
        ["/tasks/exit e1", "/tasks/exit"],
        "{:?}",
        rig.topics("c")
    );
}

#[tokio::test]
async fn duplicate_create_is_refused_without_reaching_runc() {
    let rig = Rig::new();
    let bundle = rig.bundle("dup", &[("create-sleep", "0.3")]);
    let (a, b) = tokio::join!(
        rig.tasks.create(rig.request("dup", &bundle)),
        rig.tasks.create(rig.request("dup", &bundle)),
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    let err = a.err().or(b.err()).unwrap();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert_eq!(rig.count("create dup"), 1);
    assert_eq!(
        rig.count("delete dup"),
        0,
        "the duplicate deleted the original"
    );
    assert_eq!(rig.tasks.state("dup", "").unwrap().state, State::Created);
}

#[tokio::test]
async fn duplicate_start_changes_nothing_and_exit_follows_start() {
    let rig = Rig::new();
    // runc start is slow and init dies during it: the exit must wait for TaskStart, and a
    // refused duplicate Start must not release that wait.
    rig.create("c", &[("init", "exit 7"), ("start-sleep", "0.3")])
        .await
        .unwrap();
    let (a, b) = tokio::join!(rig.tasks.start("c", ""), rig.tasks.start("c", ""));
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    assert!(is(&a.and(b), precondition));
    assert_eq!(rig.count("start c"), 1);
    assert_eq!(rig.wait("c", "").await.unwrap().status, 7);
    assert_eq!(
        rig.topics("c"),
        ["/tasks/create", "/tasks/start", "/tasks/exit"]
    );
}

#[tokio::test]
async fn two_starts_of_one_exec_run_it_once() {
    let rig = Rig::new();
    rig.create("c", &[("exec-sleep", "0.2")]).await.unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.exec("c", "e", SPEC, Default::default()).unwrap();
    let (a, b) = tokio::join!(rig.tasks.start("c", "e"), rig.tasks.start("c", "e"));
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    assert_eq!(rig.count("exec c"), 1);
    rig.tasks.kill("c", "e", 9, false).await.unwrap();
}

#[tokio::test]
async fn start_racing_delete_never_starts_a_deleted_container() {
    let rig = Rig::new();
    rig.create("c", &[("delete-sleep", "0.2")]).await.unwrap();
    let (s, d) = tokio::join!(rig.tasks.start("c", ""), rig.tasks.delete("c", ""));
    match (&s, &d) {
        (Ok(_), Err(e)) => assert!(precondition(e), "{e}"),
        (Err(e), Ok(_)) => {
            assert!(not_found(e), "{e}");
            assert_eq!(rig.count("start c"), 0, "runc start after delete");
        }
        other => panic!("both or neither succeeded: {other:?}"),
    }
}

#[tokio::test]
async fn delete_while_created_kills_init_and_reports_its_exit() {
    let rig = Rig::new();
    rig.create("c", &[]).await.unwrap();
    let waiter = {
        let tasks = rig.tasks.clone();
        tokio::spawn(async move { tasks.wait("c", "").await })
    };
    let (_, exited) = rig.tasks.delete("c", "").await.unwrap();
    assert_eq!(exited.status, 137);
    let waited = tokio::time::timeout(T, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(waited.status, 137);
    assert_eq!(
        rig.topics("c"),
        ["/tasks/create", "/tasks/exit", "/tasks/delete"]
    );
    assert!(is(&rig.tasks.delete("c", "").await, not_found));
    assert!(rig.tasks.is_empty());
}

#[tokio::test]
async fn duplicate_delete_deletes_once() {
    let rig = Rig::new();
    rig.create("c", &[("init", "exit 4"), ("delete-sleep", "0.2")])
        .await
        .unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.wait("c", "").await.unwrap();
    let (a, b) = tokio::join!(rig.tasks.delete("c", ""), rig.tasks.delete("c", ""));
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    assert!(is(&a.and(b), not_found));
    assert_eq!(rig.count("delete c"), 1);
    let deletes = rig
        .topics("c")
        .iter()
        .filter(|t| *t == "/tasks/delete")
        .count();
    assert_eq!(deletes, 1);
}

#[tokio::test]
async fn deleting_the_container_releases_waiters_of_its_execs() {
    let rig = Rig::new();
    rig.create("c", &[]).await.unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.exec("c", "e", SPEC, Default::default()).unwrap();
    let waiter = {
        let tasks = rig.tasks.clone();
        tokio::spawn(async move { tasks.wait("c", "e").await })
    };
    rig.tasks.kill("c", "", 9, false).await.unwrap();
    rig.wait("c", "").await.unwrap();
    rig.tasks.delete("c", "").await.unwrap();
    let got = tokio::time::timeout(T, waiter)
        .await
        .expect("Wait on an exec of a deleted container never returned")
        .unwrap();
    assert!(got.is_ok(), "{got:?}");
}

#[tokio::test]
async fn kill_of_a_stopped_process_is_not_found() {
    let rig = Rig::new();
    rig.create("c", &[("init", "exit 0")]).await.unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.wait("c", "").await.unwrap();
    assert!(is(&rig.tasks.kill("c", "", 15, false).await, not_found));
}

/// A Kill answers before the TaskExit it caused goes out: containerd deletes the task on
/// that exit and closes the connection the Kill's answer still needed (StopPodSandbox
/// failed with "ttrpc: closed" when runc kill returned late on a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_answers_before_the_exit_it_caused() {
    let rig = Rig::new();
    rig.create("c", &[("kill-after", "2")]).await.unwrap();
    rig.tasks.start("c", "").await.unwrap();
    let answered = Arc::new(std::sync::Mutex::new(None));
    let killer = {
        let (tasks, answered) = (rig.tasks.clone(), answered.clone());
        tokio::spawn(async move {
            let r = tasks.kill("c", "", 9, false).await;
            *answered.lock().unwrap() = Some(Instant::now());
            r
        })
    };
    rig.wait_for("TaskExit", || {
        rig.topics("c").iter().any(|t| t.starts_with("/tasks/exit"))
    })
    .await;
    let published = Instant::now();
    tokio::time::timeout(T, killer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let answered = answered.lock().unwrap().expect("Kill answered");
    // The fake runc returns 2 s after the signal; the exit may only follow its answer.
    assert!(
        answered <= published || answered - published < Duration::from_millis(500),
        "TaskExit went out {:?} before Kill answered",
        answered - published
    );
}

#[tokio::test]
async fn wait_on_a_failed_exec_returns_and_delete_forgets_it() {
    let rig = Rig::new();
    rig.create("c", &[("exec-fail", "exec failed: no such file")])
        .await
        .unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.exec("c", "e", SPEC, Default::default()).unwrap();
    let waiter = {
        let tasks = rig.tasks.clone();
        tokio::spawn(async move { tasks.wait("c", "e").await })
    };
    assert!(rig.tasks.start("c", "e").await.is_err());
    let waited = tokio::time::timeout(T, waiter)
        .await
        .expect("Wait on a failed exec never returned")
        .unwrap()
        .unwrap();
    assert_eq!(waited.status, NEVER_RAN);
    rig.tasks.delete("c", "e").await.unwrap();
    assert!(is(&rig.wait("c", "e").await, not_found));
    assert!(
        !rig.topics("c").iter().any(|t| t.starts_with("/tasks/exit")),
        "no exit event for a process that never ran"
    );
}

#[tokio::test]
async fn pause_and_resume_publish_their_events() {
    let rig = Rig::new();
    rig.create("c", &[]).await.unwrap();
    assert!(is(&rig.tasks.pause("c").await, precondition));
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.pause("c").await.unwrap();
    assert_eq!(rig.tasks.state("c", "").unwrap().state, State::Paused);
    assert!(is(&rig.tasks.pause("c").await, precondition));
    rig.tasks.resume("c").await.unwrap();
    assert_eq!(rig.tasks.state("c", "").unwrap().state, State::Running);
    let topics = rig.topics("c");
    assert_eq!(&topics[2..], ["/tasks/paused", "/tasks/resumed"]);
    rig.tasks.kill("c", "", 9, false).await.unwrap();
}

/// containerd's deadline drops a Create mid-way: runc is not killed half-way, and the
/// container, which containerd will never know, is rolled back.
#[tokio::test]
async fn a_create_whose_request_is_dropped_is_rolled_back() {
    let rig = Rig::new();
    let bundle = rig.bundle("c", &[("create-sleep", "0.5")]);
    let req = rig.request("c", &bundle);
    let r = tokio::time::timeout(Duration::from_millis(100), rig.tasks.create(req)).await;
    assert!(r.is_err(), "create should still be running");
    rig.wait_for("the rollback", || rig.tasks.is_empty()).await;
    assert_eq!(rig.count("create c"), 1);
    assert_eq!(rig.count("delete c"), 1, "calls: {:?}", rig.calls());
    assert!(!bundle.join(crate::record::RECORD_FILE).exists());
    assert!(rig.topics("c").is_empty(), "{:?}", rig.topics("c"));
}

#[tokio::test]
async fn a_failed_create_removes_its_record_and_deletes_only_what_it_made() {
    let rig = Rig::new();
    // Fails before runc create: nothing to delete in runc.
    let bundle = rig.bundle("c", &[]);
    let mut req = rig.request("c", &bundle);
    req.stdout = "binary:///nonexistent/logger".into();
    assert!(rig.tasks.create(req).await.is_err());
    assert!(rig.calls().is_empty(), "runc called: {:?}", rig.calls());
    assert!(!bundle.join(crate::record::RECORD_FILE).exists());

    // runc create fails: cleaned up in runc, record gone, id free again.
    let err = rig
        .create("d", &[("create-fail", "bad rootfs")])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad rootfs"), "{err}");
    assert_eq!(rig.count("delete d"), 1);
    assert!(!rig
        .dir
        .path()
        .join("d")
        .join(crate::record::RECORD_FILE)
        .exists());
    assert!(rig.tasks.is_empty());
}

#[tokio::test]
async fn ids_and_signals_are_checked() {
    let rig = Rig::new();
    let bundle = rig.bundle("ok", &[]);
    for bad in ["--help", "../../x", ""] {
        let r = rig.tasks.create(rig.request(bad, &bundle)).await;
        assert!(is(&r, invalid), "{bad}: {r:?}");
    }
    assert!(rig.calls().is_empty(), "runc called: {:?}", rig.calls());
    // The exec ignores signal 40, so it is still there for the SIGKILL at the end.
    std::fs::write(bundle.join("fake-exec"), "trap '' 40; exec sleep 1000").unwrap();
    rig.tasks.create(rig.request("ok", &bundle)).await.unwrap();
    rig.tasks.start("ok", "").await.unwrap();
    for bad in ["../../../../tmp/x", "--help", "a/b"] {
        let r = rig.tasks.exec("ok", bad, SPEC, Default::default());
        assert!(is(&r, invalid), "{bad}: {r:?}");
    }
    rig.tasks
        .exec("ok", "init", SPEC, Default::default())
        .unwrap();
    let pid = rig.tasks.start("ok", "init").await.unwrap();
    assert!(
        bundle.join("init.pid").exists(),
        "exec 'init' clobbered init.pid"
    );
    // The fake's wrapper runs the exec's command only a moment after runc exits.
    let ignores_40 = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & (1 << (40 - 1)) != 0)
    };
    rig.wait_for("the exec to ignore signal 40", ignores_40)
        .await;
    for sig in [0, 40] {
        rig.tasks.kill("ok", "init", sig, false).await.unwrap();
    }
    assert!(is(
        &rig.tasks.kill("ok", "init", u32::MAX, false).await,
        invalid
    ));
    assert!(is(&rig.tasks.kill("ok", "", 65, false).await, invalid));
    rig.tasks.kill("ok", "init", 9, false).await.unwrap();
}
