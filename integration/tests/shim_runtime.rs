//! The shim under operational stress: containerd restarts, both runtime-option encodings
//! (with runc and crun), bad options, and a slow runc that must not stall other RPCs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::GetRequest;
use containerd_client::with_namespace;
use sturdy_integration::containerd::default_shim_bin;
use sturdy_integration::k8s_cri::v1::ContainerState;
use sturdy_integration::{
    container_config, parity_tests, until, Containerd, ExtraRuntime, Handler, BUSYBOX_IMAGE,
    CRI_NAMESPACE,
};
use tonic::Request;

const T: Duration = Duration::from_secs(60);

/// Writes to stdout forever; exits 99 if a write fails (e.g. EPIPE), and a SIGPIPE kill
/// would show as 141.
const TICKER: &str = "i=0; while :; do echo tick $i || exit 99; i=$((i+1)); sleep 0.05; done";

async fn wait_state(cri: &mut sturdy_integration::Cri, id: &str, want: ContainerState) -> i32 {
    let end = Instant::now() + T;
    loop {
        let s = cri.container_status(id).await.expect("ContainerStatus");
        if s.state == want as i32 {
            return s.exit_code;
        }
        assert!(
            Instant::now() < end,
            "{id} never reached {want:?}: state {}",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

parity_tests! {
    /// containerd restarts under 5 running pods: every task keeps running under the same
    /// shim, State/Kill/Delete still work through it, and no container saw EPIPE.
    async fn containerd_restart_keeps_pods(h: Handler) {
        let mut fx = Containerd::start().await.expect("start containerd");
        let mut cri = fx.cri().await.expect("cri client");
        let mut pods = Vec::new();
        for i in 0..5 {
            let cfg = fx.pod_config(&format!("survivor{i}"));
            let pod = cri.run_pod(h, &cfg).await.expect("RunPodSandbox");
            let c = cri
                .create_container(&pod, container_config("ticker", &["/bin/sh", "-c", TICKER]), &cfg)
                .await
                .expect("CreateContainer");
            cri.start_container(&c).await.expect("StartContainer");
            pods.push((pod, c));
        }
        let shims_before: BTreeSet<i32> = pods
            .iter()
            .map(|(pod, _)| fx.shim_pid(CRI_NAMESPACE, pod).expect("pod shim"))
            .collect();
        assert_eq!(shims_before.len(), 5);

        fx.restart().await.expect("restart containerd");
        // Let the containers write while containerd comes back and re-attaches.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut cri = fx.cri().await.expect("cri client after restart");
        let client = fx.client().await.expect("containerd client");
        for (pod, c) in &pods {
            let status = cri.container_status(c).await.expect("ContainerStatus");
            assert_eq!(status.state, ContainerState::ContainerRunning as i32, "{c} after restart");
            let mut tasks = client.tasks();
            let req = GetRequest { container_id: c.clone(), ..Default::default() };
            let task = tasks
                .get(with_namespace!(req, CRI_NAMESPACE))
                .await
                .expect("Tasks.Get through the old shim")
                .into_inner()
                .process
                .expect("process");
            assert_eq!(task.status, 2, "task {c} not RUNNING: {task:?}");
            assert_eq!(
                fx.shim_pid(CRI_NAMESPACE, pod),
                shims_before.iter().copied().find(|p| fx.shim_pid(CRI_NAMESPACE, pod) == Some(*p)),
                "pod {pod} changed shim"
            );
        }
        let shims_after: BTreeSet<i32> = pods
            .iter()
            .filter_map(|(pod, _)| fx.shim_pid(CRI_NAMESPACE, pod))
            .collect();
        assert_eq!(shims_before, shims_after, "shims were replaced");

        for (pod, c) in &pods {
            cri.stop_container(c, 0).await.expect("StopContainer (Kill) after restart");
            let code = wait_state(&mut cri, c, ContainerState::ContainerExited).await;
            assert_eq!(code, 137, "{c}: exit {code} (99 or 141 would mean EPIPE)");
            cri.stop_pod(pod).await.expect("StopPodSandbox");
            cri.remove_pod(pod).await.expect("RemovePodSandbox (Delete) after restart");
        }
    }
}

/// Which runc-compatible runtime keeps state for `id` under `root`: runc writes
/// `state.json`, crun a `status` file.
fn runtime_that_ran(root: &Path, id: &str) -> &'static str {
    let dir = root.join(CRI_NAMESPACE).join(id);
    if dir.join("state.json").exists() {
        "runc"
    } else if dir.join("status").exists() {
        "crun"
    } else {
        "none"
    }
}

/// Both encodings of runtime options reach the shim with the same meaning, with runc and
/// with crun: `runtimeoptions.v1.Options` (runtime_type io.containerd.sturdy.v2) and
/// `containerd.runc.v1.Options` (runtime_type io.containerd.runc.v2, with sturdy installed
/// as a drop-in `containerd-shim-runc-v2`: containerd 1.6 ignores `runtime_path`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_encodings_select_the_runtime() {
    let conf = tempfile::tempdir().expect("tempdir");
    let roots = conf.path().join("roots");
    let shim = default_shim_bin();
    let mut builder = Containerd::builder().sturdy_as_runc_v2();
    let mut cases = Vec::new();
    for binary in ["runc", "crun"] {
        let root = roots.join(format!("generic-{binary}"));
        let file = conf.path().join(format!("{binary}.toml"));
        let name = format!("gen-{binary}");
        builder = builder.runtime(
            ExtraRuntime::sturdy_with_runc(&name, &file, Path::new(binary), &root).unwrap(),
        );
        cases.push((name, binary, root));

        let root = roots.join(format!("runcopts-{binary}"));
        let name = format!("runcopts-{binary}");
        builder = builder.runtime(ExtraRuntime::go_with_runc(&name, Path::new(binary), &root));
        cases.push((name, binary, root));
    }
    let fx = builder.start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let sturdy_exe = std::fs::canonicalize(&shim).unwrap_or(shim.clone());
    for (handler, binary, root) in &cases {
        let mut cfg = fx.pod_config(handler);
        cfg.metadata.as_mut().unwrap().uid = format!("{handler}-uid");
        let created = cri.run_pod_with(handler, &cfg).await;
        if *binary == "crun" {
            // crun 1.8 refuses this host's hybrid cgroup layout (its cgroup2 mount carries
            // hugetlb) whatever its flags, so a crun pod cannot run here. Its own refusal,
            // passed through unchanged, proves the option selected crun.
            let err = created
                .expect_err("crun cannot run containers on a hybrid cgroup host")
                .to_string();
            // containerd 2.x writes OCI spec 1.2.x, which crun 1.8 refuses even earlier.
            assert!(
                err.contains("cgroups in hybrid mode not supported")
                    || err.contains("unknown version specified"),
                "{handler}: not crun's error: {err}"
            );
            assert!(
                err.contains("(runtime binary crun)"),
                "{handler}: the error does not name the runtime: {err}"
            );
            continue;
        }
        let pod = created
            .unwrap_or_else(|e| panic!("RunPodSandbox via {handler}: {e}\n{}", fx.log_tail(30)));
        let exe = fx.shim_exe(CRI_NAMESPACE, &pod).expect("pod shim");
        assert_eq!(exe, sturdy_exe, "{handler} not served by sturdy");
        let c = cri
            .create_container(
                &pod,
                container_config("main", &["/bin/sleep", "3600"]),
                &cfg,
            )
            .await
            .expect("CreateContainer");
        cri.start_container(&c).await.expect("StartContainer");
        assert_eq!(
            runtime_that_ran(root, &c),
            *binary,
            "{handler}: wrong runtime under {}",
            root.display()
        );
        cri.stop_pod(&pod).await.expect("StopPodSandbox");
        cri.remove_pod(&pod).await.expect("RemovePodSandbox");
    }
}

/// A bad value or an unknown key is a clear error at Create, never a silent misparse,
/// and leaves no task or shim behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_runtime_options_are_clear_errors() {
    let conf = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("bad-type", "SystemdCgroup = \"yes\"\n", "SystemdCgroup"),
        ("bad-key", "BinaryNme = \"runc\"\n", "BinaryNme"),
        ("bad-cgroup", "ShimCgroup = \"true\"\n", "ShimCgroup"),
    ];
    let mut builder = Containerd::builder();
    for (name, body, _) in &cases {
        let file = conf.path().join(format!("{name}.toml"));
        std::fs::write(&file, body).unwrap();
        builder = builder.runtime(ExtraRuntime {
            name: name.to_string(),
            runtime_type: "io.containerd.sturdy.v2".into(),
            runtime_path: None,
            options: format!("  ConfigPath = \"{}\"", file.display()),
        });
    }
    let fx = builder.start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    for (name, _, key) in &cases {
        let cfg = fx.pod_config(name);
        let err = cri
            .run_pod_with(name, &cfg)
            .await
            .expect_err("bad options must fail the pod")
            .to_string();
        assert!(
            err.contains(key),
            "{name}: error does not name {key}: {err}"
        );
        assert!(err.contains("runtime option"), "{name}: {err}");
    }
    assert!(cri.list_pods().await.expect("list").is_empty());
    let end = Instant::now() + Duration::from_secs(10);
    while !fx.footprint().shim_pids.is_empty() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fx.footprint().shim_pids.is_empty(),
        "shims left: {:?}",
        fx.footprint().shim_pids
    );
}

/// A runc wrapper whose `create` hangs for `secs` seconds, for fault injection; it creates
/// `dir/create-hangs` when a create starts hanging.
fn slow_runc(dir: &Path, secs: u32) -> PathBuf {
    let path = dir.join("slow-runc");
    let marker = dir.join("create-hangs");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = create ] && {{ : > '{}'; sleep {secs}; }}; done\nexec runc \"$@\"\n",
            marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// While one container's Create hangs in runc, State of another container served by the
/// same shim answers well inside containerd's 2 s task-state timeout. Sturdy-only: it pins
/// down sturdy's locking (no lock across a runc call); the Go shim is not measured here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_create_does_not_block_state() {
    let fx = Containerd::start().await.expect("start containerd");
    let conf = tempfile::tempdir().expect("tempdir");
    let slow = slow_runc(conf.path(), 6);
    let slow_conf = conf.path().join("slow.toml");
    std::fs::write(
        &slow_conf,
        format!(
            "BinaryName = \"{}\"\nRoot = \"{}\"\n",
            slow.display(),
            fx.runc_root().display()
        ),
    )
    .unwrap();
    let group = "io.containerd.runc.v2.group=slowgroup";
    let fifo = fx.fifo_dir().to_string_lossy().into_owned();
    let base = |conf: &Path| -> Vec<String> {
        vec![
            "run".into(),
            "-d".into(),
            "--fifo-dir".into(),
            fifo.clone(),
            "--runtime".into(),
            Handler::Sturdy.runtime_type().into(),
            "--runtime-config-path".into(),
            conf.to_string_lossy().into_owned(),
            "--annotation".into(),
            group.into(),
        ]
    };
    let mut fast: Vec<String> = base(&fx.sturdy_options_path());
    fast.extend([
        BUSYBOX_IMAGE.to_string(),
        "fast".into(),
        "/bin/sleep".into(),
        "300".into(),
    ]);
    let fast_args: Vec<&str> = fast.iter().map(String::as_str).collect();
    fx.ctr_in(fx.namespace(), &fast_args, T)
        .await
        .expect("run fast container");

    let mut slow_args: Vec<String> = base(&slow_conf);
    slow_args.extend([
        BUSYBOX_IMAGE.to_string(),
        "slow".into(),
        "/bin/sleep".into(),
        "300".into(),
    ]);
    let started = Instant::now();
    let slow_run = {
        let socket = fx.socket().to_path_buf();
        let ns = fx.namespace().to_string();
        tokio::spawn(async move {
            let mut full = vec![
                "-a".to_string(),
                socket.to_string_lossy().into_owned(),
                "-n".into(),
                ns,
            ];
            full.extend(slow_args);
            sturdy_integration::ctr::run_command("ctr", &full, T).await
        })
    };
    assert!(
        until(T, || conf.path().join("create-hangs").exists()).await,
        "the slow create never reached the wrapper"
    );
    // The create hangs 6 s from here; State is asked during the first 3.
    let hanging = Instant::now();
    let client = fx.client().await.expect("client");
    let mut worst = Duration::ZERO;
    while hanging.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let mut tasks = client.tasks();
        let req = GetRequest {
            container_id: "fast".into(),
            ..Default::default()
        };
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            tasks.get(with_namespace!(req, fx.namespace())),
        )
        .await
        .expect("State did not answer within 5 s")
        .expect("Tasks.Get");
        assert_eq!(got.into_inner().process.expect("process").status, 2);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !slow_run.is_finished(),
        "the slow create was not slow; the test proves nothing"
    );
    assert!(
        worst < Duration::from_millis(500),
        "State took {worst:?} during a slow Create"
    );
    let out = slow_run.await.expect("join").expect("ctr run slow");
    assert_eq!(out.exit_code, 0, "{}", out.stderr);
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "slow-runc did not delay create"
    );
    for id in ["fast", "slow"] {
        fx.ctr_in(fx.namespace(), &["tasks", "kill", "-s", "SIGKILL", id], T)
            .await
            .expect("kill");
    }
    for id in ["fast", "slow"] {
        let end = Instant::now() + T;
        while fx
            .ctr_raw(fx.namespace(), &["tasks", "rm", id], T)
            .await
            .expect("tasks rm")
            .exit_code
            != 0
        {
            assert!(Instant::now() < end, "task {id} never stopped");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        fx.ctr_in(fx.namespace(), &["containers", "rm", id], T)
            .await
            .expect("containers rm");
    }
}

/// `ShimCgroup` moves the pod's shim into that cgroup (every v1 hierarchy, or the v2 one), and the
/// shim's oom_score_adj is containerd's + 1 so the kernel kills it before containerd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_cgroup_and_oom_score() {
    let conf = tempfile::tempdir().expect("tempdir");
    let file = conf.path().join("placed.toml");
    let fx = Containerd::builder()
        .runtime(ExtraRuntime {
            name: "placed".into(),
            runtime_type: "io.containerd.sturdy.v2".into(),
            runtime_path: None,
            options: format!("  ConfigPath = \"{}\"", file.display()),
        })
        .start()
        .await
        .expect("start containerd");
    // Under the fixture's own cgroup name, so its teardown removes it; a plain cgroup
    // directory under either driver, as ShimCgroup is.
    let shim_cgroup = format!("{}/sturdy-shims", fx.cgroupfs_parent());
    std::fs::write(
        &file,
        format!(
            "ShimCgroup = \"{shim_cgroup}\"\nRoot = \"{}\"\nSystemdCgroup = {}\n",
            fx.runc_root().display(),
            fx.cgroup_driver().systemd_cgroup()
        ),
    )
    .unwrap();
    let mut cri = fx.cri().await.expect("cri client");
    let cfg = fx.pod_config("placed");
    let pod = cri
        .run_pod_with("placed", &cfg)
        .await
        .expect("RunPodSandbox");
    let shim = fx.shim_pid(CRI_NAMESPACE, &pod).expect("pod shim");
    let cgroups = std::fs::read_to_string(format!("/proc/{shim}/cgroup")).expect("shim cgroups");
    // cgroup v2 has one line for every controller: `0::<path>`.
    let unified = cgroups.lines().all(|l| l.starts_with("0::"));
    if unified {
        assert_eq!(cgroups.trim(), format!("0::{shim_cgroup}"));
    }
    for controller in ["memory", "pids", "cpu"].into_iter().filter(|_| !unified) {
        let line = cgroups
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == controller))
            })
            .unwrap_or_else(|| panic!("no {controller} line in {cgroups}"));
        assert!(
            line.ends_with(&shim_cgroup),
            "{controller}: {line} (want {shim_cgroup})"
        );
    }
    let score = |pid: i32| -> i32 {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(score(shim), (score(fx.pid()) + 1).min(1000));
    cri.stop_pod(&pod).await.expect("StopPodSandbox");
    cri.remove_pod(&pod).await.expect("RemovePodSandbox");
}
