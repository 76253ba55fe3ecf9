//! Incident 002 at the kubelet level: every `runc exec` hangs while a pod has an exec
//! liveness probe, and separately every `runc create` hangs while a pod is being created,
//! through sturdy and through containerd's Go shim (each with a runc wrapper that hangs
//! while a switch file exists, as in the fault tests). Watched: the probe (events, the
//! kubelet restarting the container), the node's Ready condition (PLEG), and what is left
//! hanging. Asserted for sturdy: the node stays Ready, the probe fails by its timeout and
//! the kubelet restarts the container, a hung create fails by sturdy's deadline (60 s) and
//! the pod starts once runc answers again, and no hung runc is left. The Go shim's
//! behaviour is printed, not asserted.
//!
//! Windows: `STURDY_KUBE_WINDOW` seconds per exec phase (default 30; the 5-minute
//! observation is `STURDY_KUBE_WINDOW=300`, recorded in docs/testing.md); the Go shim's
//! create hang is watched only when it is at least 150 (it needs the kubelet's 2-minute
//! runtime request timeout to show anything).
//! Needs `../shared/tools/kubernetes-node-1.32.13.tar.xz`; skips visibly without it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sturdy_integration::cleanup::pid_alive;
use sturdy_integration::kube::{condition, pod, KubeBinaries, KubeNode, Kubectl, NODE_NAME};
use sturdy_integration::{runc_wrapper, until, until_some, ExtraRuntime};

/// What the wrapper's hung runc sleeps (a number nothing else uses, to recognise them).
const HANG: &str = "3589";
/// sturdy's deadline on `runc create` (runc-client's `Deadlines::create`).
const CREATE_DEADLINE: Duration = Duration::from_secs(60);

fn window() -> Duration {
    let secs = std::env::var("STURDY_KUBE_WINDOW")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// A runc wrapper whose `exec` or `create` hangs (recording its pids) while a switch
/// file exists.
struct Hang {
    wrapper: PathBuf,
    switch: PathBuf,
    pids: PathBuf,
}

impl Hang {
    fn new(dir: &Path, name: &str, subcommand: &str) -> Hang {
        let switch = dir.join(format!("{name}.on"));
        let pids = dir.join(format!("{name}.pids"));
        let wrapper = dir.join(format!("{name}-runc"));
        let hang = format!(
            "echo $$ >> '{pids}'; sleep {HANG} & echo $! >> '{pids}'; wait; exit 1",
            pids = pids.display()
        );
        runc_wrapper::write(&wrapper, &switch, &[(subcommand, hang)]).unwrap();
        Hang {
            wrapper,
            switch,
            pids,
        }
    }
    fn on(&self) {
        std::fs::write(&self.switch, b"").unwrap();
    }
    fn off(&self) {
        let _ = std::fs::remove_file(&self.switch);
    }
    fn hung(&self) -> Vec<i32> {
        std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
    fn alive(&self) -> Vec<i32> {
        self.hung().into_iter().filter(|p| pid_alive(*p)).collect()
    }
}

impl Drop for Hang {
    fn drop(&mut self) {
        self.off();
        drop_hung(self);
    }
}

/// What one phase saw, as seconds after the hang was switched on.
#[derive(Debug, Default)]
struct Seen {
    /// Node Ready condition changes: (t, status, reason/message).
    node: Vec<(f64, String, String)>,
    /// First event of each reason on the pod: (t, reason, message).
    events: Vec<(f64, String, String)>,
    /// First restart of the pod's container.
    restarted: Option<f64>,
    /// First time the pod was Running and Ready (create phases).
    running: Option<f64>,
    /// Hung runc processes still alive when the phase's window ended.
    hanging_at_end: usize,
    /// Seconds after the switch went off until no hung runc was left (None: some remain).
    cleared: Option<f64>,
}

async fn observe(k: &Kubectl, name: &str, t0: Instant, window: Duration) -> Seen {
    let seen = RefCell::new(Seen::default());
    let s = &seen;
    let field = format!("involvedObject.name={name}");
    let field = &field;
    until_some(window.saturating_sub(t0.elapsed()), move || async move {
        let now = t0.elapsed().as_secs_f64();
        let node = k.get_json(&["node", NODE_NAME]).await.ok();
        let p = pod::get(k, name).await;
        let events = k
            .get_json(&["events", "--field-selector", field])
            .await
            .unwrap_or(Value::Null);
        let mut s = s.borrow_mut();
        if let Some((st, reason, msg)) = node.as_ref().and_then(|n| condition(n, "Ready")) {
            let text = if msg.is_empty() {
                reason
            } else {
                format!("{reason}: {msg}")
            };
            if s.node
                .last()
                .is_none_or(|(_, s0, m0)| (s0, m0) != (&st, &text))
            {
                s.node.push((now, st, text));
            }
        }
        if let Some(p) = &p {
            if s.restarted.is_none() && pod::restart_count(p) > 0 {
                s.restarted = Some(now);
            }
            if s.running.is_none() && pod::running_ready(p) {
                s.running = Some(now);
            }
        }
        for e in events["items"].as_array().into_iter().flatten() {
            let reason = e["reason"].as_str().unwrap_or_default().to_string();
            if matches!(
                reason.as_str(),
                "Scheduled" | "Pulled" | "Created" | "Started"
            ) {
                continue;
            }
            if !s.events.iter().any(|(_, r, _)| *r == reason) {
                let msg = e["message"].as_str().unwrap_or_default();
                s.events
                    .push((now, reason, msg.chars().take(160).collect()));
            }
        }
        None::<()>
    })
    .await;
    seen.into_inner()
}

fn print_seen(title: &str, seen: &Seen) {
    println!("\n### {title}");
    for (t, s, m) in &seen.node {
        println!("- {t:6.1} s  node Ready={s} ({m})");
    }
    for (t, r, m) in &seen.events {
        println!("- {t:6.1} s  event {r}: {m}");
    }
    if let Some(t) = seen.restarted {
        println!("- {t:6.1} s  container restarted by the kubelet");
    }
    if let Some(t) = seen.running {
        println!("- {t:6.1} s  pod Running and Ready");
    }
    println!(
        "- hung runc processes alive at the window's end: {}; none left {}",
        seen.hanging_at_end,
        match seen.cleared {
            Some(t) => format!("{t:.1} s after runc answered again (create: the first attempt's, by the window's end)"),
            None => "— some were still there after 10 s (killed by the test)".into(),
        }
    );
}

fn node_always_ready(seen: &Seen) -> bool {
    !seen.node.is_empty() && seen.node.iter().all(|(_, s, _)| s == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "brings up a whole cluster: scripts/test.sh's kubernetes node step runs it"]
async fn incident_002_hung_runc_exec_and_create_under_kubelet() {
    if !KubeBinaries::available() {
        test_skip::skip!("no ../shared/tools/kubernetes-node-1.32.13.tar.xz");
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let hangs = [
        Hang::new(&d, "sturdy-exec", "exec"),
        Hang::new(&d, "go-exec", "exec"),
        Hang::new(&d, "sturdy-create", "create"),
        Hang::new(&d, "go-create", "create"),
    ];
    let handlers = [
        ("sturdy-exec", true),
        ("go-exec", false),
        ("sturdy-create", true),
        ("go-create", false),
    ];
    let wrappers: Vec<PathBuf> = hangs.iter().map(|h| h.wrapper.clone()).collect();
    let node = KubeNode::builder()
        .containerd(move |mut b| {
            for ((name, sturdy), wrapper) in handlers.iter().zip(&wrappers) {
                let root = d.join(format!("{name}-root"));
                b = b.runtime(if *sturdy {
                    ExtraRuntime::sturdy_with_runc(
                        name,
                        &d.join(format!("{name}.toml")),
                        wrapper,
                        &root,
                    )
                    .unwrap()
                } else {
                    ExtraRuntime::go_with_runc(name, wrapper, &root)
                });
            }
            b
        })
        .start()
        .await
        .unwrap();
    let k = node.kubectl();
    eprintln!(
        "kubernetes node up in {:.1}s",
        node.startup_time().as_secs_f64()
    );
    let classes: String = handlers
        .iter()
        .map(|(h, _)| format!("apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: {h}\nhandler: {h}\n---\n"))
        .collect();
    k.apply("hang-classes", &classes).await.unwrap();

    let w = window();
    let t = Instant::now();
    let sturdy_exec = exec_phase(k, &hangs[0], "sturdy-exec", w).await;
    eprintln!("(phase took {:.0} s)", t.elapsed().as_secs_f64());
    print_seen(
        &format!("002 exec hang, sturdy ({}s window)", w.as_secs()),
        &sturdy_exec,
    );
    let t = Instant::now();
    let go_exec = exec_phase(k, &hangs[1], "go-exec", w).await;
    eprintln!("(phase took {:.0} s)", t.elapsed().as_secs_f64());
    print_seen(
        &format!("002 exec hang, Go shim ({}s window)", w.as_secs()),
        &go_exec,
    );
    let create_window = CREATE_DEADLINE + Duration::from_secs(10);
    let t = Instant::now();
    let sturdy_create = create_phase(
        k,
        &hangs[2],
        "sturdy-create",
        create_window,
        Duration::from_secs(90),
    )
    .await;
    print_seen(
        &format!(
            "002 create hang, sturdy ({}s window, then runc answers)",
            create_window.as_secs()
        ),
        &sturdy_create,
    );
    eprintln!("(phase took {:.0} s)", t.elapsed().as_secs_f64());
    if w >= Duration::from_secs(150) {
        let go_create = create_phase(k, &hangs[3], "go-create", w, Duration::from_secs(90)).await;
        print_seen(
            &format!(
                "002 create hang, Go shim ({}s window, then runc answers)",
                w.as_secs()
            ),
            &go_create,
        );
    } else {
        println!("\n(002 create hang through the Go shim: watched only with STURDY_KUBE_WINDOW >= 150; see docs/testing.md)");
    }

    assert!(
        node_always_ready(&sturdy_exec),
        "sturdy exec hang: the node left Ready: {:?}",
        sturdy_exec.node
    );
    assert!(
        sturdy_exec
            .events
            .iter()
            .any(|(t, r, m)| r == "Unhealthy" && m.contains("Liveness") && *t < 30.0),
        "sturdy exec hang: no liveness probe failure within 30 s: {:?}",
        sturdy_exec.events
    );
    assert!(
        sturdy_exec.restarted.is_some(),
        "sturdy exec hang: the kubelet never restarted the container"
    );
    assert!(
        sturdy_exec.cleared.is_some(),
        "sturdy exec hang: hung runc exec left behind"
    );
    assert!(
        node_always_ready(&sturdy_create),
        "sturdy create hang: the node left Ready: {:?}",
        sturdy_create.node
    );
    let failed = sturdy_create
        .events
        .iter()
        .find(|(_, r, _)| r == "FailedCreatePodSandBox");
    assert!(
        failed.is_some_and(|(t, _, _)| *t < (CREATE_DEADLINE + Duration::from_secs(20)).as_secs_f64()),
        "sturdy create hang: RunPodSandbox did not fail by sturdy's deadline: {:?}",
        sturdy_create.events
    );
    assert!(
        sturdy_create.running.is_some(),
        "sturdy create hang: the pod never started once runc answered"
    );
    assert!(
        sturdy_create.cleared.is_some(),
        "sturdy create hang: the first attempt's hung runc create was not ended by the shim"
    );
}

/// A pod with an exec liveness probe through `class`; every `runc exec` hangs for `window`.
async fn exec_phase(k: &Kubectl, hang: &Hang, class: &str, window: Duration) -> Seen {
    let name = format!("probe-{class}");
    let mut m = pod::busybox_pod(&name, class, "exec sleep 3600");
    m["spec"]["containers"][0]["livenessProbe"] = serde_json::json!({
        "exec": {"command": ["true"]},
        "periodSeconds": 3,
        "timeoutSeconds": 2,
        "failureThreshold": 2,
    });
    m["spec"]["terminationGracePeriodSeconds"] = 1.into();
    k.apply(&name, &m.to_string()).await.unwrap();
    pod::wait_for(k, &name, Duration::from_secs(90), pod::running_ready)
        .await
        .unwrap_or_else(|| panic!("{name} not Running"));
    let t0 = Instant::now();
    hang.on();
    let mut seen = observe(k, &name, t0, window).await;
    finish(k, hang, &name, &mut seen).await;
    seen
}

/// A pod through `class` created while every `runc create` hangs, watched for `window`;
/// then runc answers again (the switch goes off and the hung runc processes are ended, as a
/// recovered runc would return) and the pod gets `then` to start.
async fn create_phase(
    k: &Kubectl,
    hang: &Hang,
    class: &str,
    window: Duration,
    then: Duration,
) -> Seen {
    let name = format!("create-{class}");
    let mut m = pod::busybox_pod(&name, class, "exec sleep 3600");
    m["spec"]["terminationGracePeriodSeconds"] = 1.into();
    hang.on();
    let t0 = Instant::now();
    k.apply(&name, &m.to_string()).await.unwrap();
    let mut seen = observe(k, &name, t0, window).await;
    // The first attempt's hung `runc create` (the wrapper and its sleep): gone by the end of
    // the window only if the shim ended it itself.
    let first: Vec<i32> = hang.hung().into_iter().take(2).collect();
    let first_gone = !first.is_empty() && first.iter().all(|p| !pid_alive(*p));
    seen.hanging_at_end = hang.alive().len();
    hang.off();
    drop_hung(hang);
    if pod::wait_for(k, &name, then, pod::running_ready)
        .await
        .is_some()
    {
        seen.running = Some(t0.elapsed().as_secs_f64());
    }
    seen.cleared = first_gone.then_some(0.0);
    k.run(&["delete", "pod", &name, "--grace-period=1", "--wait=false"])
        .await
        .unwrap();
    assert!(
        pod::wait_gone(k, &name, Duration::from_secs(180)).await,
        "{name}: not deleted"
    );
    seen
}

/// Switches the hang off, waits for hung runc processes to go, deletes the pod.
async fn finish(k: &Kubectl, hang: &Hang, name: &str, seen: &mut Seen) {
    if seen.hanging_at_end == 0 {
        seen.hanging_at_end = hang.alive().len();
    }
    hang.off();
    let t1 = Instant::now();
    if until(Duration::from_secs(10), || hang.alive().is_empty()).await {
        seen.cleared = Some(t1.elapsed().as_secs_f64());
    } else {
        drop_hung(hang);
    }
    k.run(&["delete", "pod", name, "--grace-period=1", "--wait=false"])
        .await
        .unwrap();
    assert!(
        pod::wait_gone(k, name, Duration::from_secs(180)).await,
        "{name}: not deleted"
    );
}

/// The test's own cleanup of what a shim left hanging (only the wrapper's processes).
fn drop_hung(hang: &Hang) {
    for pid in hang.alive() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("-runc") || cmdline.contains(HANG) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
