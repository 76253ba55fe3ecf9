//! deploy/ applied for real (issue 19, item 3): the sturdy node image built locally (the
//! fixture's OCI image builder: busybox, nsenter, the shim and sturdyctl with the libraries
//! they link), imported into the node's containerd, `kubectl apply -k` of an overlay of
//! deploy/ that only points the DaemonSet's host paths at this node's (its containerd's
//! config dir and bin dir, the node's namespaces instead of PID 1's): the init container
//! installs sturdy into that containerd's config.toml, the watchdog runs and watches the
//! pods, a pod with `runtimeClassName: sturdy` runs on the installed shim once containerd
//! was restarted (the operator's step, docs/operations.md), and deleting the DaemonSet
//! stops the watchdog and leaves the installation and the pods alone.
//!
//! Needs `../shared/tools/kubernetes-node-1.32.13.tar.xz`; skips visibly without it.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sturdy_integration::containerd::{sturdyctl_bin, workspace_dir};
use sturdy_integration::image::{busybox_layer, host_busybox, oci_archive, OciImage};
use sturdy_integration::kube::{pod, KubeBinaries, KubeNode, NODE_NAME};
use sturdy_integration::{until_some, CRI_NAMESPACE};

/// The image deploy/ names, as CRI normalises it.
const IMAGE: &str = "docker.io/library/sturdy:0.1.0";

/// A layer holding `files` (host path, path in the image), each with its mode kept.
fn files_layer(files: &[(&Path, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (src, dst) in files {
        let data = std::fs::read(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, dst, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// The node image deploy/ expects: `/bin/sh`, `nsenter` and both binaries on its PATH.
fn node_image(dir: &Path) -> std::path::PathBuf {
    let sturdyctl = sturdyctl_bin();
    let shim = sturdyctl.with_file_name("containerd-shim-sturdy-v2");
    let lib = Path::new("/lib/x86_64-linux-gnu");
    let libs = [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "libselinux.so.1",
        "libpcre2-8.so.0",
    ];
    let lib_paths: Vec<(std::path::PathBuf, String)> = libs
        .iter()
        .map(|l| (lib.join(l), format!("lib/x86_64-linux-gnu/{l}")))
        .collect();
    let mut files: Vec<(&Path, &str)> = vec![
        (sturdyctl.as_path(), "usr/local/bin/sturdyctl"),
        (shim.as_path(), "usr/local/bin/containerd-shim-sturdy-v2"),
        (Path::new("/usr/bin/nsenter"), "usr/bin/nsenter"),
        (
            Path::new("/lib64/ld-linux-x86-64.so.2"),
            "lib64/ld-linux-x86-64.so.2",
        ),
    ];
    files.extend(lib_paths.iter().map(|(p, d)| (p.as_path(), d.as_str())));
    let image = OciImage {
        name: IMAGE.into(),
        config: json!({
            "Env": ["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        }),
        layers: vec![
            busybox_layer(&host_busybox().unwrap()).unwrap(),
            files_layer(&files),
        ],
    };
    let tar = dir.join("sturdy-node-image.tar");
    std::fs::write(&tar, oci_archive(&[image]).unwrap()).unwrap();
    tar
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "brings up a whole cluster: scripts/test.sh's kubernetes node step runs it"]
async fn deploy_installs_sturdy_and_runs_the_watchdog() {
    if !KubeBinaries::available() {
        test_skip::skip!("no ../shared/tools/kubernetes-node-1.32.13.tar.xz");
    }
    // containerd without the sturdy handler: the DaemonSet adds it.
    let mut node = KubeNode::builder()
        .containerd(|b| b.without_sturdy_handler())
        .start()
        .await
        .unwrap();
    eprintln!(
        "kubernetes node up in {:.1}s",
        node.startup_time().as_secs_f64()
    );
    let fx_dir = node.containerd().dir().to_path_buf();
    let config = node.containerd().config_path();
    assert!(!std::fs::read_to_string(&config)
        .unwrap()
        .contains("io.containerd.sturdy.v2"));

    let tar = node_image(node.dir());
    node.containerd()
        .ctr_in(
            CRI_NAMESPACE,
            &["images", "import", &tar.to_string_lossy()],
            Duration::from_secs(300),
        )
        .await
        .unwrap();

    // The overlay: deploy/ as it is, with this node's paths.
    let overlay = node.dir().join("deploy-overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    // kustomize takes no absolute base: the way up from the overlay to / and down again.
    let up = "../".repeat(overlay.components().count() - 1);
    let deploy = format!(
        "{up}{}",
        workspace_dir()
            .join("deploy")
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\npatches:\n  - path: node-paths.yaml\n",
            deploy
        ),
    )
    .unwrap();
    let holder = node.namespace_pid().unwrap();
    let fx = node.containerd();
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "sturdy", "namespace": "sturdy-system"},
        "spec": {"template": {"spec": {
            "containers": [{
                "name": "watchdog",
                "command": [
                    "nsenter", format!("--target={holder}"), "--mount", "--cgroup", "--",
                    fx.dir().join("bin/sturdyctl"), "watchdog",
                    format!("--address={}", fx.socket().display()),
                    format!("--state-dir={}", fx.state_dir().display()),
                ],
            }],
            "volumes": [
                {"name": "containerd-config", "hostPath": {"path": fx_dir, "type": "Directory"}},
                {"name": "host-bin", "hostPath": {"path": fx_dir.join("bin"), "type": "DirectoryOrCreate"}},
            ],
        }}},
    });
    std::fs::write(overlay.join("node-paths.yaml"), patch.to_string()).unwrap();

    let k = node.kubectl();
    k.run(&["label", "node", NODE_NAME, "sturdy/enabled=true"])
        .await
        .unwrap();
    let applied = k
        .run(&["apply", "-k", &overlay.to_string_lossy()])
        .await
        .unwrap();
    eprintln!("kubectl apply -k:\n{applied}");

    // The DaemonSet's pod: install done, watchdog running.
    let ds_pod = until_some(Duration::from_secs(120), || async {
        let pods = k.get_json(&["pods", "-n", "sturdy-system"]).await.ok()?;
        let p = pods["items"].as_array()?.first()?.clone();
        (p["status"]["containerStatuses"][0]["state"]["running"].is_object()).then_some(p)
    })
    .await;
    let Some(ds_pod) = ds_pod else {
        let desc = k
            .run(&["describe", "pods", "-n", "sturdy-system"])
            .await
            .unwrap_or_default();
        panic!("the DaemonSet's pod never ran its watchdog:\n{desc}");
    };
    let ds_name = ds_pod["metadata"]["name"].as_str().unwrap().to_string();
    let install_log = k
        .run(&["logs", "-n", "sturdy-system", &ds_name, "-c", "install"])
        .await
        .unwrap();
    eprintln!("install container:\n{install_log}");
    assert!(
        install_log.contains("\"restart_needed\": true"),
        "install log: {install_log}"
    );
    let cfg = std::fs::read_to_string(&config).unwrap();
    assert!(
        cfg.contains("io.containerd.sturdy.v2"),
        "config.toml after install:\n{cfg}"
    );
    let installed_shim = fx_dir.join("bin/containerd-shim-sturdy-v2");
    assert!(installed_shim.is_file() && fx_dir.join("bin/sturdyctl").is_file());

    // The operator's restart (docs/operations.md), then a sturdy pod on the installed shim.
    node.containerd_mut().restart().await.unwrap();
    let k = node.kubectl();
    let mut m = pod::busybox_pod("on-sturdy", "sturdy", "echo deployed; exec sleep 3600");
    m["spec"]["terminationGracePeriodSeconds"] = 1.into();
    k.apply("on-sturdy", &m.to_string()).await.unwrap();
    let p = pod::wait_for(k, "on-sturdy", Duration::from_secs(120), pod::running_ready)
        .await
        .unwrap_or_else(|| panic!("on-sturdy not Running"));
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let sandbox = pod::sandbox_of(node.containerd(), uid).await.unwrap();
    let (shim_pid, _) = pod::shim_of(node.containerd(), &sandbox).expect("the pod's shim");
    let exe = std::fs::read_link(format!("/proc/{shim_pid}/exe")).unwrap();
    assert_eq!(
        exe, installed_shim,
        "the pod's shim is not the installed one"
    );
    let watched = until_some(Duration::from_secs(60), || async {
        let log = k
            .run(&["logs", "-n", "sturdy-system", &ds_name, "-c", "watchdog"])
            .await
            .ok()?;
        log.contains(&format!("pid {shim_pid} ")).then_some(())
    })
    .await;
    assert!(
        watched.is_some(),
        "the DaemonSet's watchdog never watched the pod's shim"
    );
    eprintln!(
        "a sturdy pod runs on the installed shim {} and the watchdog watches it",
        exe.display()
    );

    // Deleting the DaemonSet stops the watchdog; the installation and the pods stay.
    k.run(&["delete", "daemonset", "-n", "sturdy-system", "sturdy"])
        .await
        .unwrap();
    let gone = until_some(Duration::from_secs(90), || async {
        let pods = k.get_json(&["pods", "-n", "sturdy-system"]).await.ok()?;
        pods["items"].as_array()?.is_empty().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the DaemonSet's pod outlived it");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("io.containerd.sturdy.v2"));
    assert!(installed_shim.is_file());
    let p = pod::get(k, "on-sturdy").await.unwrap();
    assert!(
        pod::running_ready(&p),
        "the sturdy pod did not survive the DaemonSet's deletion"
    );
    eprintln!("DaemonSet deleted: watchdog gone, sturdy still installed, the pod still Running");
    k.run(&["delete", "pod", "on-sturdy", "--grace-period=1"])
        .await
        .unwrap();
}
