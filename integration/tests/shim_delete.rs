//! `containerd-shim-sturdy-v2 ... delete` after the shim was SIGKILLed leaves nothing of
//! the container behind, even when the container's processes do not die with its init
//! (a pod-shared PID namespace), when two deletes run at the same moment, and when runc
//! lost the container's state (only the cgroups still know its processes).
//!
//! containerd is frozen (SIGSTOP, by its pid) while the shim dies and our delete runs, so
//! its own dead-shim cleanup cannot do (or hide) the work under test; it is thawed
//! afterwards and cleans up the rest the normal way.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sturdy_integration::k8s_cri::v1::{
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption,
};
use sturdy_integration::{cleanup, container_config, Containerd, Handler, CRI_NAMESPACE};

const T: Duration = Duration::from_secs(30);

/// Thaws containerd and kills the container processes the test recorded (by pid, only if
/// still alive) however the test ends, so a failed assertion leaks nothing.
struct Guard {
    containerd: i32,
    frozen: bool,
    pids: Vec<i32>,
}

impl Guard {
    fn freeze(&mut self) {
        kill(Pid::from_raw(self.containerd), Signal::SIGSTOP).expect("SIGSTOP containerd");
        self.frozen = true;
    }

    fn thaw(&mut self) {
        if std::mem::take(&mut self.frozen) {
            let _ = kill(Pid::from_raw(self.containerd), Signal::SIGCONT);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.thaw();
        let alive: Vec<i32> = self
            .pids
            .iter()
            .copied()
            .filter(|p| cleanup::pid_alive(*p))
            .collect();
        cleanup::kill_pids(&alive);
    }
}

fn shared_pid_ns() -> Option<NamespaceOption> {
    Some(NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..Default::default()
    })
}

/// What a running container consists of, read from runc's state before the shim dies.
struct Victim {
    id: String,
    bundle: PathBuf,
    shim_pid: i32,
    cgroups: Vec<PathBuf>,
    pids: Vec<i32>,
}

fn cgroup_pids(cgroups: &[PathBuf]) -> Vec<i32> {
    let mut pids: Vec<i32> = cgroups
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// A sturdy pod sharing one PID namespace, with a container whose init forks two sleepers
/// (they outlive a SIGKILL of init, which is not the namespace's pid 1).
async fn start_victim(fx: &Containerd, guard: &mut Guard, name: &str) -> Victim {
    let mut cri = fx.cri().await.expect("cri client");
    let mut pod_config = fx.pod_config(name);
    pod_config.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: shared_pid_ns(),
        ..Default::default()
    });
    let pod = cri
        .run_pod(Handler::Sturdy, &pod_config)
        .await
        .expect("RunPodSandbox");
    let mut config = container_config(
        "forker",
        &["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"],
    );
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: shared_pid_ns(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = cri
        .create_container(&pod, config, &pod_config)
        .await
        .expect("CreateContainer");
    cri.start_container(&id).await.expect("StartContainer");

    let bundle = fx.bundle(CRI_NAMESPACE, &id).expect("container bundle");
    // The pod's containers share the shim its sandbox started.
    let shim_pid = fx.shim_pid(CRI_NAMESPACE, &pod).expect("shim of the pod");
    let root = fx.runc_root().join(CRI_NAMESPACE);
    let (_, _, cgroups) = cleanup::runc_states(&root)
        .into_iter()
        .find(|(i, _, _)| *i == id)
        .expect("runc state of the container");
    assert!(!cgroups.is_empty(), "runc recorded no cgroups");
    let mut pids = Vec::new();
    for _ in 0..200 {
        pids = cgroup_pids(&cgroups);
        guard.pids.extend(&pids);
        if pids.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pids.len() >= 3, "sh and two sleepers expected: {pids:?}");
    Victim {
        id,
        bundle: bundle.dir,
        shim_pid,
        cgroups,
        pids,
    }
}

/// `containerd-shim-sturdy-v2 delete` as containerd runs it for a dead shim.
fn delete_command(fx: &Containerd, v: &Victim) -> Command {
    let mut cmd = Command::new(fx.shim_on_path());
    cmd.args(["-namespace", CRI_NAMESPACE, "-address"])
        .arg(fx.socket())
        .args(["-publish-binary", "containerd", "-id", &v.id, "-bundle"])
        .arg(&v.bundle)
        .arg("delete")
        .current_dir(&v.bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_mounted(path: &Path) -> bool {
    cleanup::mounts().iter().any(|(p, _)| p == path)
}

/// Kills the shim and waits until it is gone (it is nobody's child here, so a zombie
/// counts as gone).
fn kill_shim(v: &Victim) {
    kill(Pid::from_raw(v.shim_pid), Signal::SIGKILL).expect("SIGKILL shim");
    let left = cleanup::wait_gone(&[v.shim_pid], T);
    assert!(left.is_empty(), "shim {} survived SIGKILL", v.shim_pid);
}

/// Everything of the container is gone: processes, cgroups, rootfs mount, runc state.
fn assert_nothing_left(fx: &Containerd, v: &Victim) {
    let alive: Vec<i32> = v
        .pids
        .iter()
        .copied()
        .filter(|p| cleanup::pid_alive(*p))
        .collect();
    assert!(
        alive.is_empty(),
        "container processes survived delete: {alive:?}"
    );
    let cgroups: Vec<&PathBuf> = v.cgroups.iter().filter(|d| d.exists()).collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let rootfs = v.bundle.join("rootfs");
    assert!(!is_mounted(&rootfs), "{} still mounted", rootfs.display());
    let state = fx.runc_root().join(CRI_NAMESPACE).join(&v.id);
    assert!(!state.exists(), "runc state {} left", state.display());
    let out = Command::new(fx.oci_runtime_binary())
        .arg("--root")
        .arg(fx.runc_root().join(CRI_NAMESPACE))
        .args(["state", &v.id])
        .output()
        .expect("runc state");
    assert!(!out.status.success(), "runc still knows {}", v.id);
    assert!(
        !v.bundle.join("sturdy.json").exists(),
        "record left although delete succeeded"
    );
}

/// How the deletes are run after the shim died.
#[derive(Clone, Copy, PartialEq)]
enum Case {
    /// One delete, then a second one that must find nothing to do.
    Once,
    /// Two deletes started at the same moment.
    Concurrent,
    /// runc's state of the container is lost before delete runs (so `runc delete` knows
    /// nothing of it): delete must find the processes through the spec's cgroupsPath.
    LostRuntimeState,
}

async fn kill_shim_and_delete(name: &str, case: Case) {
    let mut fx = Containerd::start().await.expect("start containerd");
    let mut guard = Guard {
        containerd: fx.pid(),
        frozen: false,
        pids: Vec::new(),
    };
    let v = start_victim(&fx, &mut guard, name).await;

    guard.freeze();
    kill_shim(&v);
    match case {
        Case::Once | Case::LostRuntimeState => {
            if case == Case::LostRuntimeState {
                let state = fx.runc_root().join(CRI_NAMESPACE).join(&v.id);
                std::fs::remove_dir_all(&state).expect("remove runc state");
            }
            let out = delete_command(&fx, &v).output().expect("run delete");
            assert_ok("delete", &out);
            assert_nothing_left(&fx, &v);
            let again = delete_command(&fx, &v).output().expect("run delete again");
            assert_ok("second delete", &again);
        }
        Case::Concurrent => {
            let a = delete_command(&fx, &v).spawn().expect("spawn delete a");
            let b = delete_command(&fx, &v).spawn().expect("spawn delete b");
            let a = a.wait_with_output().expect("wait delete a");
            let b = b.wait_with_output().expect("wait delete b");
            assert_ok("delete a", &a);
            assert_ok("delete b", &b);
            assert_nothing_left(&fx, &v);
        }
    }
    guard.thaw();

    drop(guard);
    let problems = fx.stop();
    assert!(problems.is_empty(), "{problems:?}");
}

/// The shim dies; one delete leaves no process, cgroup, mount or runc state, and a second
/// delete succeeds. (runc 1.1.5's own `delete --force` already kills every process of a
/// container that joined another's PID namespace; this guards that it stays so.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_shim_kill_leaves_nothing() {
    kill_shim_and_delete("del-one", Case::Once).await;
}

/// Two deletes of one container at the same moment both succeed and leave nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deletes_after_shim_kill_leave_nothing() {
    kill_shim_and_delete("del-two", Case::Concurrent).await;
}

/// runc lost the container's state (runc says "does not exist"), but its processes run on
/// in its cgroups: delete finds and kills them through the spec's cgroupsPath.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_shim_kill_and_lost_runtime_state_leaves_nothing() {
    kill_shim_and_delete("del-lost", Case::LostRuntimeState).await;
}
