//! containerd-API-level parity tests: containers run with `ctr run` through each shim.

use sturdy_integration::{parity_tests, Containerd, BUSYBOX_IMAGE, PAUSE_IMAGE};

parity_tests! {
    /// stdout reaches the client and a clean exit reports 0.
    async fn run_captures_stdout(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let out = fx
            .ctr_run(h, "hello", &["/bin/echo", "hello from", "busybox"])
            .await
            .expect("ctr run");
        assert_eq!(out.exit_code, 0, "stderr: {}", out.stderr);
        assert_eq!(out.stdout, "hello from busybox\n");
    }

    /// A container's non-zero exit code is propagated unchanged.
    async fn run_propagates_exit_code(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let out = fx
            .ctr_run(h, "fails", &["/bin/sh", "-c", "echo partial; exit 42"])
            .await
            .expect("ctr run");
        assert_eq!(out.exit_code, 42, "stderr: {}", out.stderr);
        assert_eq!(out.stdout, "partial\n");
        let out = fx.ctr_run(h, "false", &["/bin/false"]).await.expect("ctr run");
        assert_eq!(out.exit_code, 1, "stderr: {}", out.stderr);
    }

    /// The task really runs under the handler's shim binary, with runc state in the private
    /// root the fixture configured (so a misrouted runtime cannot pass as parity).
    async fn task_runs_under_its_shim(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        fx.ctr_run_detached(h, "resident", &["/bin/sleep", "3600"])
            .await
            .expect("ctr run -d");
        let bundle = fx.bundle(fx.namespace(), "resident").expect("task bundle");
        let exe = fx.shim_exe(fx.namespace(), "resident").expect("shim process");
        assert_eq!(exe, fx.expected_shim_exe(h), "task served by the wrong shim");
        let state = fx.runc_root().join(fx.namespace()).join("resident").join("state.json");
        assert!(state.exists(), "runc state not in the private root: {}", state.display());
        let init = bundle.init_pid.expect("init.pid in bundle");
        // Start returns once runc was told to go; the exec of the entrypoint lands just after.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let comm = loop {
            let comm = std::fs::read_to_string(format!("/proc/{init}/comm")).expect("init comm");
            if comm.trim() == "sleep" || std::time::Instant::now() > deadline {
                break comm;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(comm.trim(), "sleep");
    }

    /// Applets are real hard-linked executables, and the container is really isolated.
    async fn run_execs_real_binaries(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let out = fx
            .ctr_run(h, "ps", &["/bin/sh", "-c", "ls -i /bin/busybox /bin/cat | wc -l; ps -o pid,comm; true"])
            .await
            .expect("ctr run");
        assert_eq!(out.exit_code, 0, "stderr: {}", out.stderr);
        let mut lines = out.stdout.lines();
        assert_eq!(lines.next().map(str::trim), Some("2"));
        // A private PID namespace: the shell is PID 1 and ps is a separately exec'd binary.
        let rest: Vec<&str> = lines.collect();
        assert!(rest.iter().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "sh"]), "{rest:?}");
        assert!(rest.iter().any(|l| l.ends_with(" ps")), "{rest:?}");
    }
}

/// The fixture imports both test images into its own namespace and CRI's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_imported_into_both_namespaces() {
    let fx = Containerd::start().await.expect("start containerd");
    assert!(!fx.version().await.expect("version").is_empty());
    for ns in [fx.namespace(), sturdy_integration::CRI_NAMESPACE] {
        let names = fx.image_names(ns).await.expect("list images");
        for want in [BUSYBOX_IMAGE, PAUSE_IMAGE] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing in {ns}: {names:?}"
            );
        }
    }
}
