//! The client against the real runc, with busybox bundles and a private --root.
//!
//! Needs root, runc and busybox; skipped (with a message) otherwise.

mod common;

use std::time::{Duration, Instant};

use common::{
    process, read_to_string, require_runc, unique_id, wait_status, Bundle, CgroupGuard,
    ContainerGuard, Root, SysctlGuard,
};
use runc_client::{ConsoleSocket, CreateOpts, ExecOpts, Pipe, ProcessIo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle() {
    require_runc!();
    let root = Root::new();
    let runc = root.client();
    let id = unique_id("life");
    let bundle = Bundle::new(&id, &["sleep", "1000"], |_| {});
    let _guard = ContainerGuard::new(&runc, &id);

    let pid_file = bundle.path().join("init.pid");
    let opts = CreateOpts {
        pid_file: pid_file.clone(),
        ..Default::default()
    };
    runc.create(&id, bundle.path(), &opts).await.unwrap();
    let state = runc.state(&id).await.unwrap();
    assert_eq!(state.status, "created");
    assert_eq!(state.id, id);
    assert_eq!(state.bundle, bundle.path());
    let init: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(state.pid, init);

    runc.start(&id).await.unwrap();
    assert_eq!(runc.state(&id).await.unwrap().status, "running");
    assert_eq!(runc.ps(&id).await.unwrap(), vec![init]);

    // Attached exec: its stdout is our pipe, not something the client drains.
    let out = Pipe::new().unwrap();
    let exec = ExecOpts {
        io: ProcessIo {
            stdout: Some(out.write.try_clone().unwrap()),
            ..Default::default()
        },
        ..Default::default()
    };
    runc.exec(&id, &process(&["sh", "-c", "echo exec-says-hi"]), &exec)
        .await
        .unwrap();
    drop(exec);
    drop(out.write);
    assert_eq!(read_to_string(out.read), "exec-says-hi\n");

    let exec_pid_file = bundle.path().join("exec.pid");
    let exec = ExecOpts {
        pid_file: exec_pid_file.clone(),
        detach: true,
        ..Default::default()
    };
    runc.exec(&id, &process(&["sleep", "1000"]), &exec)
        .await
        .unwrap();
    let exec_pid: i32 = std::fs::read_to_string(&exec_pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut pids = runc.ps(&id).await.unwrap();
    pids.sort();
    let mut want = vec![init, exec_pid];
    want.sort();
    assert_eq!(pids, want);

    runc.pause(&id).await.unwrap();
    assert_eq!(runc.state(&id).await.unwrap().status, "paused");
    runc.resume(&id).await.unwrap();
    assert_eq!(runc.state(&id).await.unwrap().status, "running");

    let resources = oci_spec::runtime::LinuxResourcesBuilder::default()
        .pids(
            oci_spec::runtime::LinuxPidsBuilder::default()
                .limit(57i64)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    runc.update(&id, &resources).await.unwrap();
    let pids_max = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/pids/runc-client-test-{id}/pids.max"
    ));
    assert_eq!(pids_max.unwrap().trim(), "57");

    let stats = runc.stats(&id).await.unwrap();
    assert_eq!(stats.pids.current, 2, "{stats:?}");
    assert_eq!(stats.pids.limit, 57);
    assert!(stats.memory.usage.usage > 0, "{stats:?}");
    assert!(stats.cpu.usage.total > 0, "{stats:?}");

    let mut events = runc.events(&id, Duration::from_millis(100)).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("no event within 5s")
        .expect("stream ended")
        .unwrap();
    assert_eq!(event.kind, "stats");
    assert_eq!(event.id, id);
    assert_eq!(event.stats().unwrap().pids.limit, 57);
    let events_pid = events.pid();
    drop(events);
    let end = Instant::now() + Duration::from_secs(2);
    while std::path::Path::new(&format!("/proc/{events_pid}")).exists() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{events_pid}")).exists(),
        "runc events survived dropping its stream"
    );

    runc.kill(&id, libc::SIGKILL, true).await.unwrap();
    assert_eq!(wait_status(&runc, &id, "stopped").await, "stopped");
    runc.delete(&id, false).await.unwrap();
    let err = runc.state(&id).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err = runc.start(&id).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_errors_carry_runcs_message() {
    require_runc!();
    let root = Root::new();
    let runc = root.client();
    let id = unique_id("bad");
    // A bundle whose process does not exist: create succeeds, start must fail with runc's reason.
    let bundle = Bundle::new(&id, &["/no/such/binary"], |_| {});
    let _guard = ContainerGuard::new(&runc, &id);
    let err = runc
        .create(&id, bundle.path(), &CreateOpts::default())
        .await;
    let err = match err {
        Err(e) => e,
        Ok(()) => runc.start(&id).await.unwrap_err(),
    };
    let text = err.to_string();
    assert!(
        text.contains("/no/such/binary") || text.contains("no such file"),
        "{text}"
    );
    assert!(!err.is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_create_reports_runcs_reason() {
    require_runc!();
    let root = Root::new();
    let runc = root.client();
    let id = unique_id("nobundle");
    let _guard = ContainerGuard::new(&runc, &id);
    let missing = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // Stdio is handed over (here: to /dev/null), so the reason must come from runc's log.
    let err = runc
        .create(&id, missing.path(), &CreateOpts::default())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(
            err,
            runc_client::Error::Runc {
                command: "create",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("config.json"), "{err}");
}

/// A create that hangs (here: in a createRuntime hook, while `runc init` waits) is killed
/// at its deadline together with the hook and `runc init`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_create_is_killed_with_runc_init() {
    require_runc!();
    let root = Root::new();
    let id = unique_id("hang");
    let runc = root.client_with(|c| {
        c.deadlines = runc_client::Deadlines {
            create: Duration::from_secs(3),
            ..Default::default()
        }
    });
    let cgroup = CgroupGuard {
        name: format!("runc-client-test-{id}"),
    };
    let placeholder = tempfile::tempdir().unwrap();
    let hook_pid = placeholder.path().join("hook.pid");
    let hook_script = format!("echo $$ > {}; exec sleep 1000", hook_pid.display());
    let bundle = Bundle::new(&id, &["true"], |c| {
        c["hooks"] = serde_json::json!({
            "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", hook_script]}]
        });
    });
    let _guard = ContainerGuard::new(&runc, &id);
    let started = Instant::now();
    let err = runc
        .create(&id, bundle.path(), &CreateOpts::default())
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    let hook: i32 = std::fs::read_to_string(&hook_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    // Everything runc started sits in the container's cgroup or is the hook.
    let end = Instant::now() + Duration::from_secs(2);
    let leftovers = loop {
        let mut alive: Vec<i32> = cgroup
            .dirs()
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|procs| {
                procs
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .filter(|&p| !gone(p))
            .collect();
        if !gone(hook) {
            alive.push(hook);
        }
        if alive.is_empty() || Instant::now() > end {
            break alive;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for &pid in &leftovers {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    assert!(leftovers.is_empty(), "survived the deadline: {leftovers:?}");
    assert!(
        !cgroup.dirs().is_empty(),
        "runc init never reached its cgroup; the test proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_socket_delivers_the_pty_master() {
    require_runc!();
    let root = Root::new();
    let runc = root.client();
    let id = unique_id("tty");
    let bundle = Bundle::new(&id, &["sh", "-c", "echo tty-ok; sleep 1000"], |c| {
        c["process"]["terminal"] = true.into();
    });
    let _guard = ContainerGuard::new(&runc, &id);
    let console = ConsoleSocket::new().unwrap();
    let opts = CreateOpts {
        console_socket: Some(console.path().to_path_buf()),
        ..Default::default()
    };
    let (created, master) = tokio::join!(
        runc.create(&id, bundle.path(), &opts),
        console.receive_master()
    );
    created.unwrap();
    let master = master.unwrap();
    runc.start(&id).await.unwrap();
    let mut reader = runc_client::io::async_reader(master).unwrap();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("tty-ok") {
            let n = tokio::io::AsyncReadExt::read(&mut reader, &mut buf)
                .await
                .unwrap();
            assert!(n > 0, "pty closed early");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "pty output so far: {:?}",
        String::from_utf8_lossy(&seen)
    );
}

#[tokio::test]
async fn version_and_features() {
    require_runc!();
    let root = Root::new();
    let runc = root.client();
    let version = runc.version().await.unwrap();
    assert_eq!(version.runtime, "runc");
    assert!(version.semver().is_some(), "{version:?}");
    assert!(version.spec.is_some());
    let known: Vec<_> = version.known_issues().iter().map(|i| i.id).collect();
    eprintln!("runc {} known issues: {known:?}", version.runc);
    let features = runc.features().await.unwrap();
    assert!(features.get("ociVersionMin").is_some(), "{features}");
}

/// Seed incident 002: runc init hanging on a full pipe under fs.pipe-user-pages-soft
/// pressure with noNewPrivileges and a big seccomp filter. No call may hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_seccomp_nnp_containers_under_pipe_pressure() {
    require_runc!();
    let root = Root::new();
    let runc = root.client_with(|c| {
        c.deadlines = runc_client::Deadlines {
            create: Duration::from_secs(20),
            start: Duration::from_secs(20),
            delete: Duration::from_secs(20),
            ..Default::default()
        }
    });
    // Several hundred rules: argument-conditioned denials of personality(2) values nobody uses.
    let rules: Vec<serde_json::Value> = (0..300)
        .map(|i| {
            serde_json::json!({
                "names": ["personality"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "value": 0x0dead000u64 + i, "op": "SCMP_CMP_EQ"}]
            })
        })
        .collect();
    let seccomp = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    });

    let _pressure = SysctlGuard::set("/proc/sys/fs/pipe-user-pages-soft", "1");
    let started = Instant::now();
    for n in 0..50 {
        let id = unique_id("seed2");
        let bundle = Bundle::new(&id, &["true"], |c| {
            c["process"]["noNewPrivileges"] = true.into();
            c["linux"]["seccomp"] = seccomp.clone();
        });
        let guard = ContainerGuard::new(&runc, &id);
        runc.create(&id, bundle.path(), &CreateOpts::default())
            .await
            .unwrap_or_else(|e| panic!("container {n}: create: {e}"));
        runc.start(&id)
            .await
            .unwrap_or_else(|e| panic!("container {n}: start: {e}"));
        runc.delete(&id, true)
            .await
            .unwrap_or_else(|e| panic!("container {n}: delete: {e}"));
        drop(guard);
    }
    eprintln!(
        "50 seccomp+NNP containers under pipe pressure: {:?}",
        started.elapsed()
    );
}

/// crun speaks the same CLI; its "no such container" wording must classify the same way.
#[tokio::test]
async fn crun_is_a_drop_in_runtime() {
    require_runc!();
    let root = Root::new();
    let Some(crun) = root.crun() else {
        return;
    };
    let version = crun.version().await.unwrap();
    assert_eq!(version.runtime, "crun");
    assert!(version.semver().is_some(), "{version:?}");
    let err = crun.state("no-such-container").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains("no-such-container"), "{err}");
}
