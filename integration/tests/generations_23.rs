//! sturdy started by containerd 2.2, 2.3 and 2.4 (docs/bootstrap.md): version skew is where
//! users get hurt (a 2.2 daemon could not start 2.3's own shim, containerd#13763). 2.2
//! speaks the legacy protocol and records Task API 2 for sturdy's bare address; 2.3 and 2.4
//! send `BootstrapParams` and record the Task API 2 that sturdy's `BootstrapResult`
//! announces, so they run `start` (and, after a shim died, `delete`) for every container,
//! as 2.2 does (docs/bootstrap.md, "Why Task API 2").

use std::path::Path;
use std::time::Duration;

use sturdy_integration::k8s_cri::v1::{
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxState,
};
use sturdy_integration::{
    cleanup, container_config, until, until_some, Containerd, Generation, Handler,
};
use sturdy_integration::{Cri, CRI_NAMESPACE};

/// The generation, or None (with a visible skip) when this host cannot run it.
fn runnable(name: &str) -> Option<Generation> {
    let g = Generation::parse(name).unwrap_or_else(|| panic!("no containerd {name} generation"));
    if g.available() {
        return Some(g);
    }
    test_skip::skip(format!(
        "containerd {name}: {} has no {}.tar.xz",
        sturdy_integration::tools::tools_dir().display(),
        g.archive().unwrap_or_default()
    ));
    None
}

/// What containerd recorded for a bundle's shim, and the files next to it.
struct Recorded {
    bootstrap: serde_json::Value,
    address_file: Option<String>,
    sandbox_file: Option<String>,
    shim_pid_file: bool,
}

fn recorded(bundle: &Path) -> Recorded {
    let raw = std::fs::read(bundle.join("bootstrap.json")).expect("bootstrap.json");
    Recorded {
        bootstrap: serde_json::from_slice(&raw).expect("bootstrap.json is JSON"),
        address_file: std::fs::read_to_string(bundle.join("address")).ok(),
        sandbox_file: std::fs::read_to_string(bundle.join("sandbox")).ok(),
        shim_pid_file: bundle.join("shim.pid").exists(),
    }
}

/// A sturdy pod with one running container on generation `g`. Each container has its own
/// pid namespace, as a kubelet asks unless `shareProcessNamespace` is set (CRI's zero value
/// is the pod's, where the pause process's death kills the app with it).
async fn pod_with_app(fx: &Containerd, cri: &mut Cri, name: &str) -> (String, String) {
    let own_pids = || NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    };
    let mut cfg = fx.pod_config(name);
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(own_pids()),
        ..Default::default()
    });
    let mut app_config = container_config("app", &["/bin/sleep", "3600"]);
    app_config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(own_pids()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = cri
        .run_pod(Handler::Sturdy, &cfg)
        .await
        .expect("RunPodSandbox");
    let app = cri
        .create_container(&pod, app_config, &cfg)
        .await
        .expect("CreateContainer");
    cri.start_container(&app).await.expect("StartContainer");
    (pod, app)
}

/// A containerd of generation `g` running a sturdy pod named `<prefix>-<g>` with an app.
async fn containerd_with_pod(g: Generation, prefix: &str) -> (Containerd, Cri, String, String) {
    let fx = Containerd::builder()
        .generation(g)
        .start()
        .await
        .expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let name = format!("{prefix}-{}", g.name().replace('.', "-"));
    let (pod, app) = pod_with_app(&fx, &mut cri, &name).await;
    (fx, cri, pod, app)
}

/// ExecSync of `echo text` in `app` answers `text`.
async fn echo_through(cri: &mut Cri, app: &str, text: &str) {
    let out = cri
        .exec_sync(app, &["/bin/echo", text], Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("ExecSync echo {text:?}: {e}"));
    assert_eq!(out.stdout, format!("{text}\n"));
}

/// `g` starts sturdy for a pod and its container, records what sturdy announced, talks to
/// it (exec), and the shim is gone once the pod is.
async fn starts_sturdy(name: &str) {
    let Some(g) = runnable(name) else { return };
    let (mut fx, mut cri, pod, app) = containerd_with_pod(g, "boot").await;
    echo_through(&mut cri, &app, "through sturdy").await;

    let pod_bundle = fx.bundle(CRI_NAMESPACE, &pod).expect("pod bundle");
    let shim = pod_bundle.shim_pid.expect("pod shim");
    let p = recorded(&pod_bundle.dir);
    let address = p.address_file.clone().expect("sturdy writes `address`");
    assert_eq!(
        p.bootstrap,
        serde_json::json!({ "version": 2, "address": address, "protocol": "ttrpc" }),
        "{name}: the pod's bootstrap.json"
    );

    let a = recorded(&fx.bundle(CRI_NAMESPACE, &app).expect("app bundle").dir);
    assert_eq!(
        a.bootstrap["address"],
        address.as_str(),
        "{name}: one shim per pod"
    );
    // `start` ran and found the pod's live daemon, on every generation: sturdy announces
    // Task API 2, so 2.3+ does not attach containers without it (docs/bootstrap.md).
    assert_eq!(a.bootstrap["version"], 2);
    assert_eq!(a.address_file.as_deref(), Some(address.as_str()));
    assert_eq!(a.sandbox_file, None, "{name}: attached without start");
    assert!(!a.shim_pid_file, "{name}: a second daemon for the app");
    assert_eq!(
        fx.shim_pid(CRI_NAMESPACE, &app),
        None,
        "{name}: a shim of its own"
    );

    cri.stop_pod(&pod).await.expect("StopPodSandbox");
    cri.remove_pod(&pod).await.expect("RemovePodSandbox");
    assert!(
        until(Duration::from_secs(20), || !cleanup::pid_alive(shim)).await,
        "{name}: the shim outlived its pod"
    );
    let left = fx.stop();
    assert!(left.is_empty(), "{name}: leaked: {left:?}");
}

/// The pause process dies first: CRI deletes the pause task at once (its Shutdown finds the
/// app and is refused); then the pod is removed, and on 2.3 / 2.4 the app's Delete sends no
/// Shutdown. The shim must still end (docs/bootstrap.md: 10 s after its last container).
async fn pause_gone_first_still_ends_the_shim(name: &str) {
    let Some(g) = runnable(name) else { return };
    let (mut fx, mut cri, pod, app) = containerd_with_pod(g, "pause-first").await;
    let shim = fx.shim_pid(CRI_NAMESPACE, &pod).expect("pod shim");
    let (_, pause) = fx
        .task_process(CRI_NAMESPACE, &pod)
        .await
        .expect("pause task");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pause as i32),
        nix::sys::signal::SIGKILL,
    )
    .expect("kill pause");
    assert!(
        until(Duration::from_secs(30), || fx
            .bundle(CRI_NAMESPACE, &pod)
            .is_none())
        .await,
        "{name}: CRI never deleted the dead pause task"
    );
    // CRI removes the bundle before it marks the sandbox NotReady.
    let not_ready = until_some(Duration::from_secs(10), || {
        let mut cri = cri.clone();
        let pod = pod.clone();
        async move {
            let state = cri.pod_status(&pod).await.ok()?.state;
            (state == PodSandboxState::SandboxNotready as i32).then_some(())
        }
    })
    .await;
    assert!(not_ready.is_some(), "{name}: the pod stayed Ready");
    assert!(
        cleanup::pid_alive(shim),
        "{name}: the shim left its app container"
    );
    echo_through(&mut cri, &app, "still served").await;

    cri.stop_pod(&pod).await.expect("StopPodSandbox");
    cri.remove_pod(&pod).await.expect("RemovePodSandbox");
    assert!(
        until(Duration::from_secs(40), || !cleanup::pid_alive(shim)).await,
        "{name}: the shim stayed with no container"
    );
    let left = fx.stop();
    assert!(left.is_empty(), "{name}: leaked: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_2_starts_sturdy() {
    starts_sturdy("2.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_3_starts_sturdy() {
    starts_sturdy("2.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_4_starts_sturdy() {
    starts_sturdy("2.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_2_pause_gone_first() {
    pause_gone_first_still_ends_the_shim("2.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_3_pause_gone_first() {
    pause_gone_first_still_ends_the_shim("2.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_4_pause_gone_first() {
    pause_gone_first_still_ends_the_shim("2.4").await;
}
