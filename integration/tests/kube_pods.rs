//! Pod features at the kubelet level through RuntimeClass `runc` (the Go shim) and `sturdy`,
//! the same pod specs through both (issue 19, item 2): Running on the shim the class names,
//! `kubectl exec` and `logs`, deletion with the grace period honoured, an init container, an exec liveness
//! probe that fails and the kubelet restarting the container, a crashing container
//! restarted by its restart policy, resource limits and an in-place resize, `kubectl exec
//! -it` with a tty, `kubectl attach`, `kubectl logs -f`, and the pod's CPU and memory in
//! the kubelet's `/stats/summary`.
//!
//! Needs `../shared/tools/kubernetes-node-1.32.13.tar.xz`; skips visibly without it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sturdy_integration::cleanup::pid_alive;
use sturdy_integration::kube::{pod, KubeBinaries, KubeNode, Kubectl};
use sturdy_integration::{until, until_some};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const RUNNING_WITHIN: Duration = Duration::from_secs(90);

async fn start(k: &Kubectl, name: &str, manifest: &Value) -> Value {
    k.apply(name, &manifest.to_string()).await.unwrap();
    match pod::wait_for(k, name, RUNNING_WITHIN, pod::running_ready).await {
        Some(p) => p,
        None => {
            let desc = k.run(&["describe", "pod", name]).await.unwrap_or_default();
            panic!("{name} not Running within {RUNNING_WITHIN:?}:\n{desc}");
        }
    }
}

/// A cgroup v1 file of the container `id` below the kubelet's cgroup root, read on the host.
fn container_cgroup_file(root: &str, controller: &str, id: &str, file: &str) -> Option<String> {
    let base = std::path::Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(root.trim_start_matches('/'));
    let mut stack = vec![base];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = e.path();
            if !path.is_dir() {
                continue;
            }
            if e.file_name().to_string_lossy() == id {
                return std::fs::read_to_string(path.join(file))
                    .ok()
                    .map(|s| s.trim().to_string());
            }
            stack.push(path);
        }
    }
    None
}

fn container_id(p: &Value, index: usize) -> String {
    p["status"]["containerStatuses"][index]["containerID"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("containerd://")
        .to_string()
}

#[tokio::test]
#[ignore = "brings up a whole cluster: scripts/test.sh's kubernetes node step runs it"]
async fn pod_features_through_runc_and_sturdy() {
    if !KubeBinaries::available() {
        test_skip::skip!("no ../shared/tools/kubernetes-node-1.32.13.tar.xz");
    }
    let node = KubeNode::start().await.unwrap();
    let k = node.kubectl();
    eprintln!(
        "kubernetes node up in {:.1}s",
        node.startup_time().as_secs_f64()
    );
    for class in ["runc", "sturdy"] {
        let t = Instant::now();
        runs_and_is_deleted_with_grace(&node, class).await;
        init_container(k, class).await;
        liveness_probe_restarts(k, class).await;
        crash_restarted(k, class).await;
        resize(&node, class).await;
        streams(k, class).await;
        stats_summary(k, class).await;
        eprintln!(
            "{class}: all pod features in {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
}

async fn init_container(k: &Kubectl, class: &str) {
    let name = format!("init-{class}");
    let mut m = pod::busybox_pod(&name, class, "cat /work/x; sleep 3600");
    m["spec"]["volumes"] = json!([{"name": "work", "emptyDir": {}}]);
    m["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "work", "mountPath": "/work"}]);
    m["spec"]["initContainers"] = json!([{
        "name": "init",
        "image": sturdy_integration::kube::POD_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", "echo init-done-$(hostname) > /work/x"],
        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
    }]);
    let p = start(k, &name, &m).await;
    let init = &p["status"]["initContainerStatuses"][0]["state"]["terminated"];
    assert_eq!(init["exitCode"], 0, "{name}: init container {init}");
    let logs = k.run(&["logs", &name, "-c", "c"]).await.unwrap();
    assert_eq!(
        logs.trim(),
        format!("init-done-{name}"),
        "{name}: main container saw"
    );
    k.run(&["delete", "pod", &name, "--grace-period=1", "--wait=false"])
        .await
        .unwrap();
    eprintln!("{class}: init container ran before the main one");
}

async fn liveness_probe_restarts(k: &Kubectl, class: &str) {
    let name = format!("probe-{class}");
    let mut m = pod::busybox_pod(&name, class, "touch /tmp/alive; exec sleep 3600");
    m["spec"]["containers"][0]["livenessProbe"] = json!({
        "exec": {"command": ["cat", "/tmp/alive"]},
        "periodSeconds": 1,
        "timeoutSeconds": 2,
        "failureThreshold": 2,
    });
    m["spec"]["terminationGracePeriodSeconds"] = 1.into();
    start(k, &name, &m).await;
    let t0 = Instant::now();
    k.run(&["exec", &name, "--", "rm", "/tmp/alive"])
        .await
        .unwrap();
    let restarted = pod::wait_for(k, &name, Duration::from_secs(60), |p| {
        pod::restart_count(p) >= 1 && pod::running_ready(p)
    })
    .await;
    assert!(
        restarted.is_some(),
        "{name}: the failing liveness probe did not get the container restarted in 60 s"
    );
    let events = k
        .run(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
        ])
        .await
        .unwrap();
    assert!(
        events.contains("Liveness probe failed"),
        "{name}: no probe failure event:\n{events}"
    );
    eprintln!(
        "{class}: liveness probe failure -> container restarted and Ready in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    k.run(&["delete", "pod", &name, "--grace-period=1", "--wait=false"])
        .await
        .unwrap();
}

async fn crash_restarted(k: &Kubectl, class: &str) {
    let name = format!("crash-{class}");
    let m = pod::busybox_pod(&name, class, "echo started; sleep 1; exit 3");
    k.apply(&name, &m.to_string()).await.unwrap();
    let p = pod::wait_for(k, &name, Duration::from_secs(90), |p| {
        pod::restart_count(p) >= 1
    })
    .await
    .unwrap_or_else(|| panic!("{name}: never restarted"));
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 3, "{name}: last state {last}");
    eprintln!("{class}: a container exiting 3 was restarted by the kubelet (restartPolicy Always)");
    k.run(&["delete", "pod", &name, "--grace-period=1", "--wait=false"])
        .await
        .unwrap();
}

async fn resize(node: &KubeNode, class: &str) {
    let k = node.kubectl();
    let root = node.cgroup_root().unwrap();
    let name = format!("resize-{class}");
    let mut m = pod::busybox_pod(&name, class, "exec sleep 3600");
    m["spec"]["containers"][0]["resources"] = json!({
        "requests": {"cpu": "100m", "memory": "32Mi"},
        "limits": {"cpu": "200m", "memory": "64Mi"},
    });
    let p = start(k, &name, &m).await;
    let id = container_id(&p, 0);
    let mem = || container_cgroup_file(&root, "memory", &id, "memory.limit_in_bytes");
    let quota = || container_cgroup_file(&root, "cpu", &id, "cpu.cfs_quota_us");
    assert_eq!(mem().as_deref(), Some("67108864"), "{name}: memory limit");
    assert_eq!(quota().as_deref(), Some("20000"), "{name}: cpu quota");
    let patch = json!({"spec": {"containers": [{"name": "c", "resources": {
        "limits": {"cpu": "300m", "memory": "96Mi"}}}]}});
    k.run(&[
        "patch",
        "pod",
        &name,
        "--subresource",
        "resize",
        "--patch",
        &patch.to_string(),
    ])
    .await
    .unwrap();
    let resized = until_some(Duration::from_secs(60), || async {
        (mem().as_deref() == Some("100663296") && quota().as_deref() == Some("30000")).then_some(())
    })
    .await;
    assert!(
        resized.is_some(),
        "{name}: cgroup not resized in place: memory {:?}, quota {:?}",
        mem(),
        quota()
    );
    let p = pod::get(k, &name).await.unwrap();
    assert_eq!(
        pod::restart_count(&p),
        0,
        "{name}: resize restarted the container"
    );
    assert_eq!(
        container_id(&p, 0),
        id,
        "{name}: resize replaced the container"
    );
    eprintln!("{class}: in-place resize 64Mi/200m -> 96Mi/300m reached the container's cgroup");
    k.run(&["delete", "pod", &name, "--grace-period=1", "--wait=false"])
        .await
        .unwrap();
}

/// `kubectl exec -it` (a tty through the API server's streaming), `kubectl attach` and
/// `kubectl logs -f`.
async fn streams(k: &Kubectl, class: &str) {
    let name = format!("streams-{class}");
    // The reader in the foreground: sh gives a background job /dev/null as its stdin.
    let script = "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.3; done & \
                  while read l; do echo \"got-$l\"; done; wait";
    let mut m = pod::busybox_pod(&name, class, script);
    m["spec"]["containers"][0]["stdin"] = true.into();
    m["spec"]["terminationGracePeriodSeconds"] = 1.into();
    start(k, &name, &m).await;

    // exec -it needs a terminal on kubectl's side: script(1) gives it one.
    let inner = format!(
        "'{}' exec -it {name} -- sh -c 'tty; echo tty-ok'",
        k.path().display()
    );
    let out = sturdy_integration::ctr::run_command(
        "script",
        &["-qec".into(), inner, "/dev/null".into()],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(
        out.stdout.contains("/dev/pts/") && out.stdout.contains("tty-ok"),
        "{name}: exec -it gave {out:?}"
    );

    // logs -f streams new lines as they come.
    let mut follow = k.spawn(&["logs", "-f", &name]).unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let followed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
            if seen.len() >= 5 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(followed, Ok(true), "{name}: logs -f gave only {seen:?}");
    drop(follow);

    // attach -i: what we write reaches the container's stdin, its answer comes back.
    let mut attach = k.spawn(&["attach", "-i", &name, "-c", "c"]).unwrap();
    let mut stdin = attach.stdin.take().unwrap();
    let mut lines = BufReader::new(attach.stdout.take().unwrap()).lines();
    let answered = tokio::time::timeout(Duration::from_secs(30), async {
        // Written again until answered: the attach may still be connecting.
        loop {
            stdin.write_all(b"hello\n").await.ok()?;
            let line = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    match lines.next_line().await {
                        Ok(Some(l)) if l == "got-hello" => return Some(()),
                        Ok(Some(_)) => continue,
                        _ => return None,
                    }
                }
            })
            .await;
            match line {
                Ok(Some(())) => return Some(()),
                Ok(None) => return None,
                Err(_) => continue,
            }
        }
    })
    .await;
    assert_eq!(answered, Ok(Some(())), "{name}: attach got no answer");
    drop(attach);
    eprintln!("{class}: exec -it (tty), logs -f and attach -i work");
    k.run(&["delete", "pod", &name, "--grace-period=1", "--wait=false"])
        .await
        .unwrap();
}

/// The kubelet's summary API has the pod's CPU and memory.
async fn stats_summary(k: &Kubectl, class: &str) {
    let name = format!("stats-{class}");
    // Burns a little CPU and holds a little memory, so neither figure can be zero.
    let m = pod::busybox_pod(
        &name,
        class,
        "head -c 8000000 /dev/zero > /dev/shm/fill; while :; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; sleep 0.2; done",
    );
    start(k, &name, &m).await;
    let path = format!(
        "/api/v1/nodes/{}/proxy/stats/summary",
        sturdy_integration::kube::NODE_NAME
    );
    let stats = until_some(Duration::from_secs(90), || async {
        let raw = k.run(&["get", "--raw", &path]).await.ok()?;
        let summary: Value = serde_json::from_str(&raw).ok()?;
        let p = summary["pods"]
            .as_array()?
            .iter()
            .find(|p| p["podRef"]["name"] == name.as_str())?
            .clone();
        let cpu = p["cpu"]["usageNanoCores"].as_u64()?;
        let mem = p["memory"]["workingSetBytes"].as_u64()?;
        (cpu > 0 && mem > 0).then_some((cpu, mem))
    })
    .await;
    let (cpu, mem) = stats.unwrap_or_else(|| panic!("{name}: no CPU and memory in /stats/summary"));
    eprintln!("{class}: /stats/summary: {cpu} nanocores, {mem} bytes working set");
    k.run(&["delete", "pod", &name, "--grace-period=1", "--wait=false"])
        .await
        .unwrap();
}

/// The same busybox pod reaches Running on the shim its RuntimeClass names, answers `kubectl
/// exec` and `kubectl logs`, and is deleted with its grace period honoured.
async fn runs_and_is_deleted_with_grace(node: &KubeNode, class: &str) {
    let k = node.kubectl();
    let name = format!("hello-{class}");
    // PID 1 ignores SIGTERM (no handler): deletion must wait out the grace period.
    let script = format!("echo hello-from-{class}; while :; do sleep 1; done");
    let mut manifest = pod::busybox_pod(&name, class, &script);
    manifest["spec"]["terminationGracePeriodSeconds"] = 4.into();
    let t0 = Instant::now();
    k.apply(&name, &manifest.to_string()).await.unwrap();
    let running = pod::wait_for(k, &name, RUNNING_WITHIN, pod::running_ready).await;
    let Some(p) = running else {
        let desc = k.run(&["describe", "pod", &name]).await.unwrap_or_default();
        panic!("{name} not Running within {RUNNING_WITHIN:?}:\n{desc}");
    };
    eprintln!(
        "{class}: pod Running/Ready in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // The sandbox really runs on the shim the RuntimeClass names.
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let sandbox = pod::sandbox_of(node.containerd(), &uid).await.unwrap();
    let (shim_pid, shim) = pod::shim_of(node.containerd(), &sandbox)
        .unwrap_or_else(|| panic!("no shim found for sandbox {sandbox}"));
    let expected = if class == "sturdy" {
        "containerd-shim-sturdy-v2"
    } else {
        "containerd-shim-runc-v2"
    };
    assert_eq!(shim, expected, "{name}'s shim");

    let out = k
        .run(&["exec", &name, "--", "sh", "-c", "echo exec-ok; id -u"])
        .await
        .unwrap();
    assert_eq!(out, "exec-ok\n0\n", "kubectl exec through {class}");
    let logs = k.run(&["logs", &name]).await.unwrap();
    assert!(
        logs.contains(&format!("hello-from-{class}")),
        "logs: {logs:?}"
    );

    let t0 = Instant::now();
    k.run(&["delete", "pod", &name, "--wait=false"])
        .await
        .unwrap();
    assert!(
        pod::wait_gone(k, &name, Duration::from_secs(60)).await,
        "{name} still there a minute after delete"
    );
    let took = t0.elapsed();
    eprintln!(
        "{class}: delete with a 4 s grace period took {:.1}s",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_secs(4),
        "{name} was gone after {took:?}, before its 4 s grace period"
    );
    assert!(
        until(Duration::from_secs(30), || !pid_alive(shim_pid)).await,
        "{name}'s shim {shim_pid} outlived the pod"
    );
}
