//! Pods with their own user namespace (`hostUsers: false`, issue 17). containerd 2.x hands
//! the shim `uidmap=`/`gidmap=` options for such a pod's rootfs, and its CRI `Status`
//! reports a handler's user-namespace support from the shim's `-info`. The Go shim and
//! sturdy registered two ways run on the same containerd with runc 1.4.3 (runc 1.1,
//! Debian's, cannot idmap); which registrations containerd can serve such pods through is
//! in docs/operations.md, "User namespaces".
//!
//! It runs on every 2.x generation the fixture knows: 2.1, 2.2, 2.3 (the LTS line the
//! issue names) and 2.4.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use sturdy_integration::containerd::default_shim_bin;
use sturdy_integration::handler::run_on;
use sturdy_integration::k8s_cri::v1::{
    IdMapping, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, StatusRequest, UserNamespace,
};
use sturdy_integration::{
    container_config, Containerd, ExtraRuntime, Generation, Handler, OciRuntime, CRI_NAMESPACE,
};

/// The host ids the pod's ids 0..65536 stand for (a kubelet picks a multiple of 65536).
const HOST_ID: u32 = 7 * 65536;
const LENGTH: u32 = 65536;

/// How a handler of this file's fixtures is registered; all run the same runc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    /// containerd's Go shim.
    Go,
    /// sturdy as `io.containerd.runc.v2` with `runtime_path` and runc's options.
    SturdyRuncType,
    /// sturdy as `sturdyctl install` writes it: `io.containerd.sturdy.v2`, no options.
    SturdyInstalled,
}

impl Registration {
    /// The CRI handler name.
    fn handler(self) -> &'static str {
        match self {
            Registration::Go => "userns-runc",
            Registration::SturdyRuncType => "userns-sturdy",
            Registration::SturdyInstalled => "userns-sturdy-installed",
        }
    }
}

/// containerd `g` with an extra handler per [`Registration`], all running `oci` (a runc
/// from ../shared/tools). None (after a SKIPPED line) without that runc.
async fn containerd_with(g: Generation, oci: OciRuntime, conf: &Path) -> Option<Containerd> {
    let runc = match oci.binary() {
        Ok(runc) => runc,
        Err(e) => {
            test_skip::skip(format!("no {oci}: {e}"));
            return None;
        }
    };
    let roots = conf.join("roots");
    // With runc's options, as 2.1 needs (see ExtraRuntime::sturdy_as_runc_v2_with_runc).
    let sturdy = ExtraRuntime::sturdy_as_runc_v2_with_runc(
        Registration::SturdyRuncType.handler(),
        &default_shim_bin(),
        &runc,
        &roots.join("sturdy"),
    );
    let go = ExtraRuntime::go_with_runc(Registration::Go.handler(), &runc, &roots.join("go"));
    // Without options this one runs `runc` from containerd's PATH: the fixture's bin/ puts
    // `oci` there (oci_runtime below).
    let installed = ExtraRuntime::sturdy_as_installed(Registration::SturdyInstalled.handler());
    let fx = Containerd::builder()
        .generation(g)
        .oci_runtime(oci)
        .runtime(sturdy)
        .runtime(go)
        .runtime(installed)
        .start()
        .await
        .unwrap_or_else(|e| panic!("start containerd {g} with {oci}: {e}"));
    Some(fx)
}

/// The namespace options a kubelet sends for a `hostUsers: false` pod, on the pod and on
/// each of its containers.
fn own_user_namespace() -> NamespaceOption {
    let map = IdMapping {
        host_id: HOST_ID,
        container_id: 0,
        length: LENGTH,
    };
    NamespaceOption {
        userns_options: Some(UserNamespace {
            mode: NamespaceMode::Pod as i32,
            uids: vec![map],
            gids: vec![map],
        }),
        ..Default::default()
    }
}

/// Mount points below `dir` (the fixture's task bundles, where sturdy puts its
/// idmapped-layer scratch directories; the Go shim uses /tmp, shared with other tests).
fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

async fn hostusers_false_pod(g: Generation, oci: OciRuntime, r: Registration) {
    let conf = tempfile::tempdir().expect("tempdir");
    let Some(fx) = containerd_with(g, oci, conf.path()).await else {
        return;
    };
    let handler = r.handler();
    let mut cri = fx.cri().await.expect("cri client");

    // CRI Status: the handler supports user namespaces (runc 1.4.3 has idmap, this
    // kernel can idmap, and -info says both).
    let status = cri
        .runtime
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let features = status
        .runtime_handlers
        .iter()
        .find(|h| h.name == handler)
        .unwrap_or_else(|| panic!("{handler} not in Status: {:?}", status.runtime_handlers))
        .features;
    if r == Registration::SturdyInstalled && g == Generation::V2_1 {
        // 2.1 introspects only io.containerd.runc.v2 handlers: no claim, so kubelet would
        // refuse the pod. 2.1 is end of life; docs/operations.md says so.
        assert_eq!(features, None, "{handler} on 2.1");
        return;
    }
    let features =
        features.unwrap_or_else(|| panic!("{handler}: no features\n{}", fx.log_tail(30)));
    assert!(
        features.user_namespaces,
        "{handler}: user namespaces not reported\n{}",
        fx.log_tail(30)
    );

    if r == Registration::SturdyRuncType {
        // The fixture's own `sturdy` handler (io.containerd.sturdy.v2 with an options
        // table) cannot run these pods: 2.1 does not introspect it at all, and on 2.2+
        // sturdy's -info withdraws the claim, so kubelet refuses such a pod up front.
        let plain = status
            .runtime_handlers
            .iter()
            .find(|r| r.name == Handler::Sturdy.name())
            .expect("the fixture's sturdy handler in Status");
        match g {
            Generation::V2_1 => assert_eq!(plain.features, None),
            _ => assert!(
                !plain
                    .features
                    .expect("features of the sturdy handler")
                    .user_namespaces,
                "the sturdy.v2 handler with options claims user namespaces"
            ),
        }
    }

    let mut pod_config = fx.pod_config("userns");
    pod_config
        .linux
        .get_or_insert_with(Default::default)
        .security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(own_user_namespace()),
        ..Default::default()
    });
    let pod = cri
        .run_pod_with(handler, &pod_config)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox via {handler}: {e}\n{}", fx.log_tail(30)));
    let mut ctr_config = container_config("main", &["/bin/sleep", "3600"]);
    ctr_config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(own_user_namespace()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let ctr = cri
        .create_container(&pod, ctr_config, &pod_config)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer via {handler}: {e}\n{}", fx.log_tail(30)));
    cri.start_container(&ctr).await.expect("StartContainer");
    if r != Registration::Go {
        // Make sure it is sturdy that serves the pod, however registered.
        let shim = fx.shim_pid(CRI_NAMESPACE, &pod).expect("the pod's shim");
        let exe = std::fs::read_link(format!("/proc/{shim}/exe")).expect("shim exe");
        let ours = std::fs::canonicalize(default_shim_bin()).expect("shim binary");
        assert_eq!(exe, ours, "{handler}: not served by sturdy");
    }

    // Inside: root, in a namespace mapping it to HOST_ID, over root-owned files, and what
    // it writes is root's.
    let exec = |cmd: &'static str| {
        let mut cri = cri.clone();
        let ctr = ctr.clone();
        async move {
            let out = cri
                .exec_sync(&ctr, &["/bin/sh", "-c", cmd], Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("exec {cmd}: {e}"));
            assert_eq!(out.exit_code, 0, "{cmd}: {}", out.stderr);
            out.stdout
        }
    };
    let uid_map: Vec<String> = exec("cat /proc/self/uid_map")
        .await
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(uid_map, ["0", &HOST_ID.to_string(), &LENGTH.to_string()]);
    assert_eq!(exec("id -u; id -g").await, "0\n0\n");
    assert_eq!(
        exec("stat -c %u:%g /bin/busybox /etc /; touch /written; stat -c %u:%g /written").await,
        "0:0\n0:0\n0:0\n0:0\n"
    );

    // On the host: the container's root is HOST_ID, and so are its rootfs files, those of
    // the image's layer and the one it wrote.
    let (_, pid) = fx
        .task_process(CRI_NAMESPACE, &ctr)
        .await
        .expect("container task");
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uids: Vec<String> = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        uids,
        vec![HOST_ID.to_string(); 4],
        "{handler}: root is not unprivileged"
    );
    for f in ["bin/busybox", "etc", "written"] {
        let md = std::fs::symlink_metadata(format!("/proc/{pid}/root/{f}")).expect(f);
        assert_eq!((md.uid(), md.gid()), (HOST_ID, HOST_ID), "{handler}: {f}");
    }

    cri.stop_pod(&pod).await.expect("StopPodSandbox");
    cri.remove_pod(&pod).await.expect("RemovePodSandbox");
    assert_eq!(mounts_below(&fx.state_dir()), Vec::<String>::new());
    assert!(
        fx.bundle(CRI_NAMESPACE, &ctr).is_none(),
        "the container's bundle survived"
    );
}

macro_rules! userns_tests {
    ($($module:ident => $generation:expr, $oci:expr;)*) => {$(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runc() {
                run_on($generation, |g| hostusers_false_pod(g, $oci, Registration::Go)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sturdy() {
                run_on($generation, |g| {
                    hostusers_false_pod(g, $oci, Registration::SturdyRuncType)
                })
                .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sturdy_installed() {
                run_on($generation, |g| {
                    hostusers_false_pod(g, $oci, Registration::SturdyInstalled)
                })
                .await
            }
        }
    )*};
}

// Today's nodes: containerd 2.2 to 2.4 with runc 1.3 or 1.4 (and 2.1, end of life).
userns_tests! {
    containerd_2_1 => Generation::V2_1, OciRuntime::Runc1_4;
    containerd_2_2_runc_1_3 => Generation::V2_2, OciRuntime::Runc1_3;
    containerd_2_2_runc_1_4 => Generation::V2_2, OciRuntime::Runc1_4;
    containerd_2_3_runc_1_3 => Generation::V2_3, OciRuntime::Runc1_3;
    containerd_2_3_runc_1_4 => Generation::V2_3, OciRuntime::Runc1_4;
    containerd_2_4 => Generation::V2_4, OciRuntime::Runc1_4;
}
