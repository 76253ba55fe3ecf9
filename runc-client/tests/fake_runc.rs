//! The client's process discipline, exercised against fake runc scripts.
//!
//! All clients here shrink their pipes to one page, so any failure to drain shows up
//! as a hang rather than hiding in a 64 KiB kernel buffer.

mod common;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::fake::{alive, next, until, wait_dead, Fake, KillOnDrop};
use runc_client::{CreateOpts, Pipe, ProcessIo, Reaper, Runc, RuncConfig};
use tokio::sync::RwLock;

/// The fd-leak test needs the process to itself; every other test holds this for reading.
static FD_COUNT: RwLock<()> = RwLock::const_new(());

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_on_both_streams_completes_with_bounded_output() {
    let _shared = FD_COUNT.read().await;
    // stderr first: a client that only reads stdout until EOF would deadlock here.
    let fake = Fake::new(
        "printf ERR-HEAD >&2; head -c 1048576 /dev/zero | tr '\\0' e >&2; printf ERR-TAIL >&2\n\
         printf OUT-HEAD; head -c 1048576 /dev/zero | tr '\\0' o; printf OUT-TAIL\nexit 0",
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        fake.runc
            .raw("flood", "c1", &["flood"], Duration::from_secs(30)),
    )
    .await
    .expect("flood call hung")
    .unwrap();
    let limit = fake.runc.config().output_limit;
    for (stream, name, fill) in [(&out.stdout, "OUT", b'o'), (&out.stderr, "ERR", b'e')] {
        assert_eq!(stream.total(), (MIB + 16) as u64, "{name}");
        assert_eq!(
            stream.to_vec().len(),
            limit,
            "{name}: retention must be bounded"
        );
        assert_eq!(stream.dropped(), (MIB + 16 - limit) as u64, "{name}");
        let head = stream.head();
        assert!(
            head.starts_with(format!("{name}-HEAD").as_bytes()),
            "{name}"
        );
        assert!(head[8..].iter().all(|&b| b == fill), "{name}");
        let tail = stream.tail();
        assert!(tail.ends_with(format!("{name}-TAIL").as_bytes()), "{name}");
        assert!(tail[..tail.len() - 8].iter().all(|&b| b == fill), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_runtime_is_killed_at_the_deadline_with_all_it_spawned() {
    let _shared = FD_COUNT.read().await;
    // One child stays in runc's process group, one escapes it with setsid.
    let fake = Fake::new(
        "echo $$ > \"$DIR/pids\"\n\
         sleep 1000 & echo $! >> \"$DIR/pids\"\n\
         setsid sleep 1000 & echo $! >> \"$DIR/pids\"\n\
         touch \"$DIR/ready\"\n\
         exec sleep 1000",
    );
    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let mut guard = KillOnDrop(Vec::new());
    let err = fake
        .runc
        .raw("hang", "c-hang", &["hang"], deadline)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    guard.0 = fake.pids("pids");
    assert!(err.is_timeout(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("hang") && text.contains("c-hang") && text.contains("2s"),
        "{text}"
    );
    assert!(
        elapsed < deadline + Duration::from_secs(1),
        "took {elapsed:?}"
    );
    assert!(fake.path("ready").exists(), "the fake never got going");
    assert_eq!(guard.0.len(), 3, "pids: {:?}", guard.0);
    for &pid in &guard.0 {
        assert!(
            wait_dead(pid, Duration::from_millis(500)).await,
            "pid {pid} survived the deadline"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_call_kills_what_it_started() {
    let _shared = FD_COUNT.read().await;
    let fake = Fake::new(
        "echo $$ > \"$DIR/pids\"\n\
         sleep 1000 & echo $! >> \"$DIR/pids\"\n\
         touch \"$DIR/ready\"\n\
         exec sleep 1000",
    );
    let call = fake
        .runc
        .raw("hang", "c-cancel", &["hang"], Duration::from_secs(60));
    let ready = fake.path("ready");
    let mut guard = KillOnDrop(Vec::new());
    tokio::select! {
        r = call => panic!("the fake cannot finish: {r:?}"),
        _ = async {
            while !ready.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } => {}
    }
    guard.0 = fake.pids("pids");
    assert_eq!(guard.0.len(), 2, "pids: {:?}", guard.0);
    for &pid in &guard.0 {
        assert!(
            wait_dead(pid, Duration::from_secs(1)).await,
            "pid {pid} survived cancellation"
        );
    }
}

/// Waits until `path` exists.
async fn appears(path: &Path) {
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An exec the caller gives up on (a Kill of an exec whose `runc exec` hangs) ends at
/// once: runc and what it started are killed, and the call says it was aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_exec_kills_runc_and_what_it_started() {
    let _shared = FD_COUNT.read().await;
    let fake = Fake::new(
        "echo $$ > \"$DIR/pids\"\n\
         sleep 1000 & echo $! >> \"$DIR/pids\"\n\
         touch \"$DIR/ready\"\n\
         exec sleep 1000",
    );
    let process = oci_spec::runtime::Process::default();
    let opts = runc_client::ExecOpts::default();
    let ready = fake.path("ready");
    let mut guard = KillOnDrop(Vec::new());
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        fake.runc
            .exec_until("c-abort", &process, &opts, appears(&ready)),
    )
    .await
    .expect("the aborted exec did not end")
    .unwrap_err();
    let elapsed = started.elapsed();
    guard.0 = fake.pids("pids");
    assert!(err.is_aborted(), "{err}");
    assert_eq!(err.command(), Some("exec"));
    assert_eq!(err.id(), Some("c-abort"));
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(guard.0.len(), 2, "pids: {:?}", guard.0);
    for &pid in &guard.0 {
        assert!(
            wait_dead(pid, Duration::from_secs(1)).await,
            "pid {pid} survived the abort"
        );
    }
}

/// An abort that comes when runc has already exited on its own changes nothing: the
/// call returns runc's own result (here: success), so the caller knows the process runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_runc_exited_returns_its_result() {
    let _shared = FD_COUNT.read().await;
    let fake = Fake::new("echo $$ > \"$DIR/pids\"\nexit 0");
    let process = oci_spec::runtime::Process::default();
    let opts = runc_client::ExecOpts::default();
    let pids = fake.path("pids");
    // Nothing is reaped until the abort: runc's exit cannot reach the call before it.
    let hold = Reaper::global().hold();
    let aborted = std::sync::atomic::AtomicBool::new(false);
    let abort = async {
        appears(&pids).await;
        let pid = fake.pids("pids")[0];
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        aborted.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(hold);
    };
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        fake.runc.exec_until("c-late", &process, &opts, abort),
    )
    .await
    .expect("the exec did not end");
    assert!(
        aborted.load(std::sync::atomic::Ordering::SeqCst),
        "the abort never came; the test proves nothing"
    );
    r.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchild_holding_stdout_does_not_hold_the_call() {
    let _shared = FD_COUNT.read().await;
    let fake = Fake::new("sleep 1000 & echo $! > \"$DIR/pids\"\necho done\nexit 0");
    let started = Instant::now();
    let result = fake
        .runc
        .raw("bg", "c-bg", &["bg"], Duration::from_secs(20))
        .await;
    let elapsed = started.elapsed();
    let _guard = KillOnDrop(fake.pids("pids"));
    let out = result.unwrap();
    assert!(
        elapsed < Duration::from_secs(1),
        "returned {elapsed:?} after start"
    );
    assert_eq!(fake.pids("pids").len(), 1);
    assert!(
        alive(fake.pids("pids")[0]),
        "the grandchild should still be running"
    );
    assert_eq!(out.stdout.to_vec(), b"done\n");
}

const LOG_ERROR: &str = r#"
while [ $# -gt 0 ]; do
  if [ "$1" = --log ]; then LOG="$2"; fi
  shift
done
# Like runc: JSON log entries go to --log when given, else to stderr.
if [ -n "$LOG" ]; then exec 3>>"$LOG"; else exec 3>&2; fi
echo '{"level":"info","msg":"about to fail","time":"2026-01-01T00:00:00Z"}' >&3
echo "{\"level\":\"error\",\"msg\":\"$MSG\",\"time\":\"2026-01-01T00:00:00Z\"}" >&3
echo 'unrelated stderr noise' >&2
exit 1
"#;

#[tokio::test]
async fn json_log_error_becomes_the_error_message() {
    let _shared = FD_COUNT.read().await;
    let fake = Fake::new(&format!("MSG='cgroup went sideways: boom 42'\n{LOG_ERROR}"));
    let err = fake.runc.start("c-log").await.unwrap_err();
    match &err {
        runc_client::Error::Runc {
            command,
            id,
            status,
            message,
        } => {
            assert_eq!((*command, id.as_str(), *status), ("start", "c-log", 1));
            assert_eq!(message, "cgroup went sideways: boom 42");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(!err.is_not_found());
    assert!(err.to_string().contains("cgroup went sideways: boom 42"));

    // create hands its stdio to the container, so runc's message must come from the log file.
    let err = fake
        .runc
        .create("c-log", Path::new("/b"), &CreateOpts::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, runc_client::Error::Runc { command: "create", message, .. } if message == "cgroup went sideways: boom 42"),
        "{err:?}"
    );

    let fake = Fake::new(&format!("MSG='container does not exist'\n{LOG_ERROR}"));
    let err = fake.runc.state("c-gone").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test]
async fn stderr_is_the_fallback_message() {
    let _shared = FD_COUNT.read().await;
    let fake = Fake::new("echo 'nothing logged, only said' >&2\nexit 3");
    let err = fake.runc.pause("c-err").await.unwrap_err();
    assert!(
        matches!(err, runc_client::Error::Runc { status: 3, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("nothing logged, only said"),
        "{err}"
    );
}

/// `ProcessIo` and preserved fds reach the runtime as 0/1/2 and 3.., and nothing else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_passes_exactly_the_intended_fds() {
    let _shared = FD_COUNT.read().await;
    let fake = Fake::new(
        "echo \"$@\" > \"$DIR/args\"\n\
         (ls -l /proc/$$/fd) > \"$DIR/fds\"\n\
         echo to-stdout\necho to-extra >&3\nexit 0",
    );
    let stdout = Pipe::new().unwrap();
    let extra = Pipe::new().unwrap();
    // Occupy low fd numbers with unrelated close-on-exec fds the child must not see.
    let _decoys: Vec<OwnedFd> = (0..4).map(|_| Pipe::new().unwrap().read).collect();
    let opts = CreateOpts {
        pid_file: fake.path("pid"),
        no_pivot: true,
        io: ProcessIo {
            stdout: Some(stdout.write.try_clone().unwrap()),
            ..Default::default()
        },
        extra_files: vec![extra.write.try_clone().unwrap()],
        ..Default::default()
    };
    fake.runc
        .create("c-fd", Path::new("/bundle"), &opts)
        .await
        .unwrap();
    drop(opts);
    drop(stdout.write);
    drop(extra.write);
    let read_all = |fd: OwnedFd| {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).unwrap();
        s
    };
    assert_eq!(read_all(stdout.read), "to-stdout\n");
    assert_eq!(read_all(extra.read), "to-extra\n");
    let args = std::fs::read_to_string(fake.path("args")).unwrap();
    assert!(
        args.contains(&format!(
            "create --bundle /bundle --pid-file {} --no-pivot --preserve-fds 1 -- c-fd",
            fake.path("pid").display()
        )),
        "{args}"
    );
    // Whatever this test process itself inherits without close-on-exec (e.g. a jobserver
    // pipe from cargo) legitimately reaches every child; anything else must not.
    let inherited = inheritable_fd_targets();
    let listing = std::fs::read_to_string(fake.path("fds")).unwrap();
    let fds: Vec<(i32, String)> = listing
        .lines()
        .filter_map(|l| {
            let (left, target) = l.split_once(" -> ")?;
            Some((left.rsplit(' ').next()?.parse().ok()?, target.to_string()))
        })
        .collect();
    assert!(fds.len() >= 4, "{listing}");
    for (fd, target) in &fds {
        // dash keeps the script it runs open on a high fd.
        if *fd > 3 && !target.ends_with("/runc") {
            assert!(
                inherited.contains(target),
                "leaked fd {fd} -> {target} into runc:\n{listing}"
            );
        }
    }
    let has = |n: i32, prefix: &str| fds.iter().any(|(fd, t)| *fd == n && t.starts_with(prefix));
    assert!(has(0, "/dev/null"), "{listing}");
    assert!(has(1, "pipe:"), "{listing}");
    assert!(has(3, "pipe:"), "{listing}");
}

/// Targets of this process's fds that lack close-on-exec.
fn inheritable_fd_targets() -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{name}")) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        if flags & libc::O_CLOEXEC as u32 == 0 {
            if let Ok(t) = std::fs::read_link(e.path()) {
                v.push(t.display().to_string());
            }
        }
    }
    v
}

#[tokio::test]
async fn missing_binary_is_a_spawn_error() {
    let _shared = FD_COUNT.read().await;
    let runc = Runc::new(
        RuncConfig::with_binary("/nonexistent/runc-client-test/runc"),
        Reaper::global(),
    );
    let err = runc.state("c1").await.unwrap_err();
    assert!(
        matches!(
            err,
            runc_client::Error::Spawn {
                command: "state",
                ..
            }
        ),
        "{err:?}"
    );
    let opts = CreateOpts {
        extra_files: vec![Pipe::new().unwrap().write],
        ..Default::default()
    };
    let err = runc.create("c1", Path::new("/b"), &opts).await.unwrap_err();
    assert!(
        matches!(
            err,
            runc_client::Error::Spawn {
                command: "create",
                ..
            }
        ),
        "{err:?}"
    );
}

fn open_fds() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            format!("{} {target}", e.file_name().to_string_lossy())
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_floods_complete_without_leaking_fds() {
    let _exclusive = FD_COUNT.write().await;
    let fake = Fake::new("head -c 262144 /dev/zero >&2 & head -c 262144 /dev/zero; wait\nexit 0");
    // Warm up lazily created runtime resources so they do not count as leaks.
    fake.runc
        .raw("flood", "warm", &["flood"], Duration::from_secs(60))
        .await
        .unwrap();
    let before = open_fds();
    let started = Instant::now();
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let runc = fake.runc.clone();
            tokio::spawn(async move {
                let id = format!("c{i}");
                runc.raw("flood", &id, &["flood"], Duration::from_secs(90))
                    .await
            })
        })
        .collect();
    // The tasks already run concurrently; awaiting them in order only collects results.
    for call in calls {
        let out = call.await.unwrap().unwrap();
        assert_eq!(out.stdout.total(), 262144);
        assert_eq!(out.stderr.total(), 262144);
    }
    eprintln!("200 concurrent floods took {:?}", started.elapsed());
    // Closing is synchronous on drop; polled all the same, so a late deregistration is no
    // false failure.
    let settled = until(Duration::from_secs(5), || open_fds() == before).await;
    assert!(settled, "fd leak: {:?} -> {:?}", before, open_fds());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_yields_events_then_runcs_error() {
    let _shared = FD_COUNT.read().await;
    let fake = Fake::new(
        "echo \"$@\" > \"$DIR/args\"\n\
         echo '{\"type\":\"stats\",\"id\":\"c-ev\",\"data\":{\"pids\":{\"current\":4}}}'\n\
         echo\n\
         echo '{\"type\":\"oom\",\"id\":\"c-ev\"}'\n\
         echo '{\"level\":\"error\",\"msg\":\"events went away\",\"time\":\"t\"}' >&2\n\
         exit 1",
    );
    let mut events = fake
        .runc
        .events("c-ev", Duration::from_millis(1500))
        .await
        .unwrap();
    let first = next(&mut events).await.unwrap().unwrap();
    assert_eq!(first.stats().unwrap().pids.current, 4);
    let second = next(&mut events).await.unwrap().unwrap();
    assert_eq!((second.kind.as_str(), second.stats()), ("oom", None));
    let err = next(&mut events).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("events went away"), "{err}");
    assert!(next(&mut events).await.is_none());
    let args = std::fs::read_to_string(fake.path("args")).unwrap();
    assert!(
        args.ends_with("events --interval=1500ms -- c-ev\n"),
        "{args}"
    );
}
